"""Plain HTTP on a running daemon: health checks, the server API, and 426 for the rest.

Served on the WebSocket port (requests that are not upgrades, handed over by the handshake) and,
when ``api.port`` is set, on a port of its own (:func:`serve_api_port`); then the WebSocket port
answers only the health checks and 426, and the API calls live on ``api.port``.

- ``GET /healthz``: 200 ``{"status": "ok"}`` while the process serves.
- ``GET /readyz``: 200 when the history store answers a read within :data:`READY_TIMEOUT_S`, else 503
  ``{"status": "unavailable", "reason": ...}`` (one read at a time: while one hangs, each request
  waits for it at most that long, and a hung store holds one reader, not one per probe); 503
  ``shutting down`` once the daemon drains (:meth:`Signald.drain`).
- ``/api/v1/...``: the calls of :class:`signald.app.serverapi.ServerApi`, JSON in, JSON out, each
  behind ``Authorization: Bearer <key>`` (a key of ``api.keys``). No key configured: the API is off
  and answers 404; a missing or wrong key: 401, and nothing happens.
- ``/demo/...`` on the WebSocket port: the browser demo's files with ``server.demo``, else 404
  (:mod:`signald.app.demo`).
- Anything else on the WebSocket port: 426 with a one-line text body; on ``api.port``: 404.

Per-address limit: every plain request but the health checks and the calls with a valid key takes
a token of its client address (behind ``server.trusted_proxies``, the forwarded one) from the limiter
the WebSocket handshakes use (``server.new_connections_per_ip_per_s``): one budget per address for
both. Over it: 429 ``RATE_LIMITED`` with ``Retry-After``. Health checks are never limited (a load
balancer told 429 would take the node out); a backend holding a key is trusted with the whole API
already, and throttling it would drop its app events, so its calls are not counted.

Each API call is logged on ``signald.audit`` (call, status, client address); the key never is.

Error handling: an expected failure answers ``{"error": {"code", "message"}}`` with the code's
status (:data:`signald.protocol.serverapi.STATUS_OF`); an unexpected one is logged and answers 500.
"""

from __future__ import annotations

import hmac
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import attrs
import msgspec
import trio

from signald.app.demo import is_demo_path, load_demo
from signald.app.facade import Signald
from signald.app.serverapi import ServerApi
from signald.errors import SignalError, StartupError
from signald.history.contract import ChatStore
from signald.logfmt import log_event
from signald.protocol.serverapi import (
    DisconnectBody,
    Health,
    HistoryQuery,
    KickBody,
    NotifyBody,
    PresenceQuery,
    PublishBody,
    StatsQuery,
    decode_body,
    decode_query,
    result_body,
)
from signald.state.proxies import client_address
from signald.state.ratelimit import ConnectionRateLimiter, TokenBucket
from signald.transport.handshake import peer_address
from signald.transport.http import HttpRequest, HttpResponse, Routes, error_response, serve_http
from signald.transport.listeners import serve_streams

audit = logging.getLogger("signald.audit")

READY_TIMEOUT_S: Final = 2.0
API_PREFIX: Final = "/api/"
HEALTH_PATHS: Final = frozenset({"/healthz", "/readyz"})  # never rate-limited
# Lines about requests the per-address limit refused: a flood must not flood the log too; the next
# line logged says how many were left out.
REFUSAL_LINES_PER_S: Final = 5.0
REFUSAL_LINES_BURST: Final = 20
UPGRADE_REQUIRED: Final = (b"This is a signald WebSocket endpoint: connect with a WebSocket client "
                           b"(see docs/protocol.md); health checks are at /healthz and /readyz.\n")

Call = Callable[[HttpRequest], Awaitable[Any]]


HTTP_REFUSED_CAUSE: Final = "http_rate_limited_address"  # signald_refusals_total's label for a 429


@attrs.define
class _Probe:
    """The readiness read in flight: ``done`` once it answered, ``failure`` why it failed."""

    done: trio.Event = attrs.Factory(trio.Event)
    failure: str | None = None


class HttpApi:
    """The plain-HTTP side of one running daemon; ``api_calls``: serve ``/api/v1/...`` here.

    ``per_ip``: the per-address limiter of the WebSocket handshakes (None: no limit).
    """

    def __init__(self, server: Signald, *, api_calls: bool, websocket_port: bool,
                 per_ip: ConnectionRateLimiter | None = None) -> None:
        self.server = server
        self.config = server.hub.config
        self.calls = ServerApi(server)
        self.per_ip = per_ip
        self._keys = tuple(key.encode() for key in self.config.api.keys)
        self.demo = load_demo(websocket_port and self.config.server.demo)
        self._refusal_lines = TokenBucket(REFUSAL_LINES_PER_S, REFUSAL_LINES_BURST)
        self._refusals_not_logged = 0
        self._probe: _Probe | None = None  # the readiness read in flight
        self.routes = Routes(self._upgrade_required if websocket_port else self._not_found)
        self.routes.add("GET", "/healthz", self.healthz)
        self.routes.add("GET", "/readyz", self.readyz)
        if api_calls:
            calls = self.calls
            self._call("POST", "publish", lambda r: calls.publish(decode_body(r.body, PublishBody)))
            self._call("POST", "notify", lambda r: _sync(calls.notify, decode_body(r.body, NotifyBody)))
            self._call("POST", "disconnect", lambda r: _sync(calls.disconnect, decode_body(r.body, DisconnectBody)))
            self._call("POST", "kick", lambda r: calls.kick(decode_body(r.body, KickBody)))
            self._call("GET", "presence", lambda r: _sync(calls.presence, decode_query(r.query, PresenceQuery)))
            self._call("GET", "history", lambda r: calls.history(decode_query(r.query, HistoryQuery)))
            self._call("GET", "stats", lambda r: _sync(lambda _: calls.stats(), decode_query(r.query, StatsQuery)))

    async def serve(self, stream: trio.abc.Stream, initial: bytes, peer: str) -> None:
        """Serve the plain HTTP requests of one connection (the first one's bytes in ``initial``)."""
        await serve_http(stream, self.handle, peer=peer, initial=initial,
                         max_body_bytes=self.config.api.max_body_bytes,
                         idle_timeout_s=self.config.server.connect_timeout_s)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """One request: the per-address limit first (see the module docstring), then its route."""
        if self.per_ip is not None and request.path not in HEALTH_PATHS \
                and not (self._keys and self._authorized(request.header("authorization"))):
            client = self._client(request)
            now = trio.current_time()
            if not self.per_ip.allow(client, now):
                wait_s = max(1, math.ceil(self.per_ip.retry_after_s(client, now)))
                self.server.hub.metrics.refusals_by[HTTP_REFUSED_CAUSE].inc()
                if self._refusal_lines.allow(now):
                    log_event(audit, logging.INFO, "http request refused", cause="rate_limited_address",
                              client=client, method=request.method, path=request.path, retry_after_s=wait_s,
                              not_logged_before=self._refusals_not_logged)
                    self._refusals_not_logged = 0
                else:
                    self._refusals_not_logged += 1
                return error_response("RATE_LIMITED", f"too many requests from this address; retry in {wait_s} s",
                                      headers=(("retry-after", str(wait_s)),))
        return await self.routes(request)

    def _client(self, request: HttpRequest) -> str:
        return client_address(request.peer, request.headers, self.config.server.trusted_proxies)

    # ------------------------------------------------------------------ health

    async def healthz(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, _health_body(Health("ok")))

    async def readyz(self, request: HttpRequest) -> HttpResponse:
        reason = await self.not_ready()
        if reason is None:
            return HttpResponse(200, _health_body(Health("ok")))
        return HttpResponse(503, _health_body(Health("unavailable", reason)))

    async def not_ready(self) -> str | None:
        """Why the daemon is not ready, or None: not draining, and the history store answers a read in time."""
        if self.server.hub.draining:
            return "shutting down"
        history = self.server.hub.history
        if history is None:
            return "the history store is not open"
        probe = self._probe
        if probe is None:  # one read at a time: a store that hangs holds one, however often we are asked
            probe = self._probe = _Probe()
            trio.lowlevel.spawn_system_task(self._read_probe, history.store, probe, name="signald-readyz-probe")
        with trio.move_on_after(READY_TIMEOUT_S):
            await probe.done.wait()
            if probe.failure is not None:
                return probe.failure
        if not probe.done.is_set():
            return f"the history store did not answer within {READY_TIMEOUT_S:g} s"
        replica = self.server.hub.replica
        return replica.problem() if replica is not None else None  # several nodes: the broker too

    async def _read_probe(self, store: ChatStore, probe: _Probe) -> None:
        """A real read of the store (a reader connection on PostgreSQL), which may take as long as
        the store hangs: readiness waits for it at most READY_TIMEOUT_S, the read is not cut short."""
        try:
            await store.last_seen(["$readyz"])
        except Exception as exc:  # any failure of the store means: not ready, and why
            probe.failure = f"the history store failed: {exc}"
        finally:
            self._probe = None
            probe.done.set()

    # ------------------------------------------------------------------ other paths

    async def _upgrade_required(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            return await self._not_found(request)
        if is_demo_path(request.path):
            return await self.demo.answer(request)
        return HttpResponse(426, UPGRADE_REQUIRED, "text/plain; charset=utf-8", close=True,
                            headers=(("upgrade", "websocket"), ("sec-websocket-version", "13")))

    async def _not_found(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX) and not self._keys:
            return error_response("NOT_FOUND", "the server API is off (no api.keys configured)")
        if request.path.startswith(API_PREFIX) and self.config.api.port is not None:
            return error_response("NOT_FOUND", "no such call on this port: the server API is served on api.port")
        return error_response("NOT_FOUND", f"no such path: {request.path}")

    # ------------------------------------------------------------------ the API calls

    def _call(self, method: str, name: str, run: Call) -> None:
        self.routes.add(method, f"{API_PREFIX}v1/{name}", partial(self._serve_call, name, run))

    async def _serve_call(self, name: str, run: Call, request: HttpRequest) -> HttpResponse:
        if not self._keys:
            return await self._not_found(request)
        if not self._authorized(request.header("authorization")):
            response = error_response("UNAUTHORIZED", "missing or wrong API key (Authorization: Bearer <key>)",
                                      headers=(("www-authenticate", "Bearer"),))
        else:
            try:
                response = HttpResponse(200, result_body(await run(request)))
            except SignalError as exc:
                response = error_response(exc.code, exc.message)
        log_event(audit, logging.INFO, "api call", call=name, status=response.status, client=self._client(request))
        return response

    def _authorized(self, header: str | None) -> bool:
        scheme, _, key = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return False
        given = key.strip().encode()
        # Compare with every key, in constant time each, so timing tells nothing about any key.
        return any([hmac.compare_digest(given, known) for known in self._keys])


def _health_body(health: Health) -> bytes:
    """The health answer, without the ``result`` envelope (load balancers read it as is)."""
    return msgspec.json.encode(health)


async def _sync(fn: Callable[[Any], Any], arg: Any) -> Any:
    return fn(arg)


async def serve_api_port(
    api: HttpApi, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``api`` on ``host:port`` (``api.port``; 0 picks one) until cancelled; reports the bound port.

    Resource handling: each connection's stream is closed when its requests are done; cancelling
    this closes the listeners and every connection.

    Error handling: a bind error raises :class:`StartupError` naming ``api.port`` before
    ``task_status.started``; a failing connection is logged and never reaches the listener.
    """
    try:
        listeners = list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        raise StartupError(f"api.port {host}:{port}: {exc.strerror or exc}") from None
    bound: int = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await api.serve(stream, b"", peer_address(stream))
        except Exception:
            audit.exception("API connection from %s failed", peer_address(stream))
        finally:
            await trio.aclose_forcefully(stream)

    # The WebSocket port's accept loop, TLS included (trio.serve_listeners closes each stream twice).
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_streams, handle, listeners, handler_nursery=nursery, ssl_context=ssl_context))
        task_status.started(bound)
