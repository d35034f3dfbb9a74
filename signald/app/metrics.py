"""Prometheus metrics (``prometheus-client``), served on ``--metrics-port`` when configured.

Counters are updated in the Trio thread as things happen. Gauges (connections, users, rooms,
active calls, history database size) describe daemon state that only the Trio thread may read,
while Prometheus scrapes from prometheus-client's HTTP thread: on each scrape the collector asks
the Trio thread for a :class:`Gauges` snapshot of plain numbers (``TrioToken.run_sync_soon``) and
waits briefly for it; if the Trio thread does not answer in time (busy, or shutting down) it
serves the last snapshot. Nothing is computed per message, and nothing when nobody scrapes.

This module knows nothing of the hub: whoever serves the metrics passes the function that takes
the snapshot. Each :class:`Metrics` has its own registry, so several daemons can live in one
process (tests, embedders).

Serving: prometheus-client's own exposition (``make_wsgi_app``: text or OpenMetrics as the scraper
asks, gzip) at ``/metrics`` only, on a threaded WSGI server as its ``start_http_server`` runs it;
every other path answers 404 (prometheus-client alone answers any path with the metrics).

Resource handling: :meth:`Metrics.serve` starts the HTTP server on a daemon thread;
:meth:`Metrics.close` shuts it down (idempotent).

Start-up: prometheus-client (with the HTTP server, ``wsgiref`` and ``email`` modules its package
imports) is imported when a :class:`Metrics` is first used — the first counted event, or
``serve`` — not when this module is: about 20 ms that a daemon without ``--metrics-port`` no
longer spends before its ready line (tests/e2e/test_startup_imports.py).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.exposition import ThreadingWSGIServer

SNAPSHOT_WAIT_S: Final = 2.0  # how long a scrape waits for the Trio thread before serving the last numbers
METRICS_PATH: Final = "/metrics"
NOT_FOUND: Final = b"Not found: the metrics are at /metrics\n"


@attrs.frozen
class Gauges:
    """The gauges' values at one moment, taken on the Trio thread."""

    connections: int = 0
    users: int = 0
    rooms: int = 0
    active_calls: int = 0
    history_db_bytes: int = 0


class _Snapshots:
    """Serves gauges from snapshots the Trio thread takes; runs on the scraping thread.

    A prometheus-client ``Collector``: that is a protocol (any object with ``collect``)."""

    def __init__(self) -> None:
        self.last = Gauges()
        self.take: Callable[[], Gauges] | None = None
        self.token: trio.lowlevel.TrioToken | None = None

    def _fresh(self) -> Gauges:
        take, token = self.take, self.token
        if take is None or token is None:
            return self.last
        box: list[Gauges] = []
        done = threading.Event()

        def on_trio_thread() -> None:
            try:
                box.append(take())
            finally:
                done.set()

        try:
            token.run_sync_soon(on_trio_thread)
        except trio.RunFinishedError:
            return self.last
        if done.wait(SNAPSHOT_WAIT_S) and box:  # the Event orders the Trio thread's write before our read
            self.last = box[0]
        return self.last

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        gauges = self._fresh()
        values = {
            "signald_connections": ("Open WebSocket connections", gauges.connections),
            "signald_users": ("Users with at least one connection", gauges.users),
            "signald_rooms": ("Rooms with at least one member", gauges.rooms),
            "signald_active_calls": ("Calls ringing or answered", gauges.active_calls),
            "signald_history_db_bytes": ("History database size on disk", gauges.history_db_bytes),
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

    The ``*_by`` attributes give a labelled counter's child for a label value (type, code, cause).
    They are all made together the first time any of them is used: a new ``Metrics`` is an
    :class:`_Unbuilt` until then, whose ``__getattr__`` builds them and makes it a plain
    ``Metrics``. The paths that count then read slots of a class without ``__getattr__``, as fast
    as before (on a class with ``__getattr__`` every attribute read is slower, CPython 3.11: 43
    instead of 19 ns; and an instance dict filled before the class changed is read unspecialized).
    """

    __slots__ = ("_gauges", "_server", "_thread", "abandoned", "closes", "coalesced", "errors", "errors_by",
                 "history_seconds", "messages_in", "messages_in_by", "messages_out", "messages_out_by", "refusals",
                 "refusals_by", "registry")

    registry: CollectorRegistry
    messages_in: Counter
    messages_out: Counter
    errors: Counter
    closes: Counter
    refusals: Counter
    abandoned: Counter
    coalesced: Counter
    history_seconds: Histogram
    messages_in_by: _ByLabel
    messages_out_by: _ByLabel
    errors_by: _ByLabel
    refusals_by: _ByLabel
    _gauges: _Snapshots

    def __new__(cls) -> Metrics:
        return super().__new__(_Unbuilt if cls is Metrics else cls)

    def __init__(self) -> None:
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _build(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self._gauges = _Snapshots()
        self.registry.register(self._gauges)
        self.messages_in = Counter("signald_messages_in", "Inbound messages by type", ["type"],
                                   registry=self.registry)
        self.messages_out = Counter("signald_messages_out", "Outbound frames queued, by type", ["type"],
                                    registry=self.registry)
        self.errors = Counter("signald_errors", "Error replies by code", ["code"], registry=self.registry)
        self.closes = Counter("signald_closes", "Connections closed by the server, by close code", ["code"],
                              registry=self.registry)
        self.refusals = Counter("signald_refusals",
                                "Handshakes and plain HTTP requests refused, by cause (unauthorized, forbidden, "
                                "rate_limited_address, rate_limited_user, subprotocol, http_rate_limited_address)",
                                ["cause"], registry=self.registry)
        self.abandoned = Counter("signald_handshakes_abandoned",
                                 "Connections closed by their client before its upgrade request was read (it gave "
                                 "up waiting to be accepted: the server is not keeping up with new connections)",
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
        self.refusals_by = _ByLabel(self.refusals)

    def serve(self, port: int, host: str, gauges: Callable[[], Gauges]) -> int:
        """Expose ``/metrics`` over HTTP; returns the bound port (``port`` 0 picks a free one).

        Call it from the Trio thread: ``gauges`` is called there, once per scrape.
        """
        from prometheus_client import make_wsgi_app

        self._gauges.take, self._gauges.token = gauges, trio.lowlevel.current_trio_token()
        self._server = _metrics_server(host, port, make_wsgi_app(self.registry))
        self._thread = threading.Thread(target=self._server.serve_forever, name="signald-metrics", daemon=True)
        self._thread.start()
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving; scrapes in flight get the last snapshot. Safe to call more than once."""
        if not isinstance(self, _Unbuilt):  # never used: nothing to stop, and nothing to build now
            self._gauges.take = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# The attributes of Metrics that hold prometheus-client objects, all made on first use.
_BUILT_ON_FIRST_USE: Final = frozenset(Metrics.__slots__) - {"_server", "_thread"}


class _Unbuilt(Metrics):
    """A :class:`Metrics` none of whose metrics was used yet."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        """Only for an attribute not set yet: the metrics, the first time one of them is used."""
        if name not in _BUILT_ON_FIRST_USE:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self._build()
        self.__class__ = Metrics  # type: ignore[assignment]  # from here on a plain Metrics (its docstring)
        return getattr(self, name)


def _metrics_server(host: str, port: int, metrics_app: Any) -> ThreadingWSGIServer:
    """A threaded WSGI server on ``host:port`` (IPv4 or IPv6) serving ``metrics_app`` at /metrics only."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    class Quiet(WSGIRequestHandler):
        """No access log on stderr (a scrape every few seconds would drown the daemon's own lines)."""

        def log_message(self, format: str, *args: Any) -> None:
            pass

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == METRICS_PATH:
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(NOT_FOUND)))])
        return [NOT_FOUND]

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    server: ThreadingWSGIServer = make_server(host, port, app, server_class, handler_class=Quiet)
    return server
