"""Prometheus metrics (``prometheus-client``), served on ``--metrics-port`` when configured.

Counters are updated in the Trio thread as things happen; gauges (connections, users, rooms,
active calls, history database size) are read from the hub when Prometheus scrapes. Each hub has
its own registry, so several daemons can live in one process (tests, embedders).

Resource handling: :meth:`Metrics.serve` starts prometheus-client's HTTP server on a daemon
thread; :meth:`Metrics.close` shuts it down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from signald.app.hub import Hub


class _HubGauges(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hub = self.hub
        values = {
            "signald_connections": ("Open WebSocket connections", len(hub.sessions)),
            "signald_users": ("Users with at least one connection", len(hub.sessions_by_user)),
            "signald_rooms": ("Rooms with at least one member", hub.rooms.room_count),
            "signald_active_calls": ("Calls ringing or answered", len(hub.calls)),
            "signald_history_db_bytes": ("History database size on disk",
                                         hub.history.store.db_bytes() if hub.history else 0),
        }
        for name, (text, value) in values.items():
            yield GaugeMetricFamily(name, text, value=value)


class _ByLabel:
    """The children of a one-label counter, looked up once per label value (``labels()`` is slow)."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[str, Counter] = {}

    def __getitem__(self, value: str) -> Counter:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._counter.labels(value)
        return child


class Metrics:
    """The daemon's counters and histograms, on a registry of its own.

    The ``*_by`` attributes give a labelled counter's child for a label value (type, code).
    """

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_HubGauges(hub))
        self.messages_in = Counter("signald_messages_in", "Inbound messages by type", ["type"],
                                   registry=self.registry)
        self.messages_out = Counter("signald_messages_out", "Outbound frames queued, by type", ["type"],
                                    registry=self.registry)
        self.errors = Counter("signald_errors", "Error replies by code", ["code"], registry=self.registry)
        self.closes = Counter("signald_closes", "Connections closed by the server, by close code", ["code"],
                              registry=self.registry)
        self.coalesced = Counter("signald_send_queue_coalesced",
                                 "Ephemeral frames dropped because a newer one superseded them",
                                 registry=self.registry)
        self.history_seconds = Histogram(
            "signald_history_commit_seconds", "Time from submitting a history write until it committed",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.messages_in_by = _ByLabel(self.messages_in)
        self.messages_out_by = _ByLabel(self.messages_out)
        self.errors_by = _ByLabel(self.errors)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose ``/metrics`` over HTTP; returns the bound port (``port`` 0 picks a free one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
