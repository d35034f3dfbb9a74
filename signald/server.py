"""``serve_signald``: listen, vet each handshake, and run one connection nursery per client.

Handshake checks, in order: subprotocol (HTTP 400 when the client offers only subprotocols that
are not ours), new connections per address (RATE_LIMITED; every handshake counts, refused or not),
``Origin`` allowlist (FORBIDDEN), authentication (UNAUTHORIZED), connections per user
(RATE_LIMITED). How a refusal is answered is decided by :func:`signald.state.refusals.decide`
(``server.refusals``): by default the handshake completes, one ``error`` frame goes out and the
connection closes with 4401 / 4403 / 4429, so that a browser can see why; with ``"http"`` it is
HTTP 401 / 403 / 429. A refused connection never reaches the hub: no ``welcome``, no presence, not
counted as connected. Every refusal is logged on ``signald.audit`` with the peer address and
reason, never the token, and counted in ``signald_refusals_total{cause}``.
"""

from __future__ import annotations

import logging
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import trio

from signald.app.connections import Connections, close_all, run_connections
from signald.app.facade import Signald
from signald.app.httpapi import HttpApi, serve_api_port
from signald.app.hub import Hub
from signald.app.replica import Replica
from signald.app.session import CLOSE_GOING_AWAY, Session, new_session_id
from signald.auth import (
    Authenticator,
    AuthRefused,
    HandshakeRequest,
    JwtAuthenticator,
    NoneAuthenticator,
    origins_allowed,
)
from signald.config import Config
from signald.delivery.frames import Frame
from signald.errors import StartupError
from signald.handlers import default_router
from signald.inbound import handle_message
from signald.logfmt import log_event
from signald.protocol import (
    PROTOCOL_VERSION,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    Limits,
    Welcome,
    WelcomeData,
    json_encoder,
    msgpack_encoder,
)
from signald.router import Router
from signald.state.dburl import parse_history_url, redact
from signald.state.proxies import client_address
from signald.state.ratelimit import ConnectionRateLimiter, FloodGuard
from signald.state.refusals import Cause, Refusal, cause_of_status, decide
from signald.timefmt import iso_utc
from signald.transport.connection import run_connection
from signald.transport.handshake import Handshake, peer_address, send_now, stream_closed
from signald.transport.listeners import reuse_port_listeners, serve_streams
from signald.transport.websocket import ServerWebSocket

log = logging.getLogger("signald.server")
audit = logging.getLogger("signald.audit")

OUR_SUBPROTOCOLS = (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)
SHUTDOWN_CLOSE_WAIT_S = 0.5
# How long a connection whose close reply did not come in time is given after that wait to read
# our close frame and close its end (ServerWebSocket.close's linger): when the server stops, one
# deadline for all of them, at most this long after the wait (docs/benchmarks.md "lingering close").
CLOSE_LINGER_S = 1.0
REFUSAL_WAIT_S = 2.0  # the most a refused handshake may take to answer (and, in "close" mode, to close)
RESERVED_USER_PREFIX = "$"  # "$system" writes the call log; no client may be it


@attrs.frozen
class RunningServer(Signald):
    """What :func:`serve_signald` reports once it listens: where it listens, and the embedding API.

    It is a :class:`~signald.app.facade.Signald`: ``publish_to_room``, ``kick``, ``members``,
    ``on_connect``... (docs/embedding.md). ``hub`` is internal and may change between releases.
    """

    host: str
    port: int
    tls: bool = False
    api_port: int | None = None  # where the server API is served when ``api.port`` is set (docs/server-api.md)

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` is served (``server.metrics_port``), or None."""
        return self.hub.metrics_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.tls else 'ws'}://{host}:{self.port}/"


def build_authenticator(config: Config, wall_clock: Callable[[], float] = time.time) -> Authenticator:
    """The authenticator ``auth.mode`` selects."""
    auth = config.auth
    if auth.mode == "none":
        return NoneAuthenticator(admins=auth.admins, mods=auth.mods)
    public_key = Path(auth.jwt_public_key_file).read_text() if auth.jwt_public_key_file else None
    return JwtAuthenticator(
        secret=auth.jwt_secret,
        public_key=public_key,
        algorithms=auth.jwt_algorithms,
        audience=auth.jwt_audience,
        issuer=auth.jwt_issuer,
        leeway_s=auth.leeway_s,
        now=wall_clock,
    )


def build_ssl_context(config: Config) -> ssl.SSLContext | None:
    server = config.server
    if not server.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.certfile, server.keyfile)
    return context


async def serve_signald(
    config: Config,
    *,
    authenticator: Authenticator | None = None,
    router: Router | None = None,
    wall_clock: Callable[[], float] | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a signald daemon until cancelled.

    Binds ``config.server.host:port`` (port 0 picks a free one), opens the history store, then
    reports a :class:`RunningServer` (bound port, URL, embedding API) through ``task_status``, so tests and
    embedders can ``await nursery.start(serve_signald, config)``.

    ``authenticator`` replaces the one ``config.auth.mode`` selects; ``router`` replaces the
    default router (start from :func:`signald.handlers.default_router` to keep the protocol and
    add ``app.*`` types); ``wall_clock`` replaces ``time.time`` for token expiry; ``reuse_port``
    binds with ``SO_REUSEPORT``, so other node processes can serve the same port.

    Resource handling: on cancellation the listener stops accepting, every connection is closed
    with 1001 "server shutting down" (all close frames in one pass, then one shared wait for the
    replies of at most 0.5 s or ``server.shutdown_timeout_s`` if lower: :mod:`signald.app.connections`;
    a connection not answered by then lingers until one shared deadline at most :data:`CLOSE_LINGER_S`
    later: :meth:`ServerWebSocket.close`), and the history store is flushed and closed before this
    function returns.

    Error handling: a failing handler answers ``INTERNAL`` to its client and is logged; it never
    ends the server or touches other connections. Bind errors (``OSError``) and a history store
    that cannot be opened raise before ``task_status.started``, leaving no thread or port behind.
    """
    router = router or default_router()
    hub = Hub(config, wall_clock=wall_clock)
    hub.replica = _replica(hub, config)
    authenticate = authenticator or build_authenticator(config, hub.wall_clock)
    hub.authenticator = authenticate
    ssl_context = build_ssl_context(config)
    per_ip = ConnectionRateLimiter(
        config.server.new_connections_per_ip_per_s, max(1, int(config.server.new_connections_per_ip_per_s))
    ) if config.server.new_connections_per_ip_per_s > 0 else None
    async with hub.running(), _cluster(hub.replica), trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener]  # TLS is added to each accepted stream (serve_streams)
        if reuse_port:  # one of several node processes on this port (signald serve --workers N)
            listeners = await reuse_port_listeners(config.server.host, config.server.port, config.server.backlog)
        else:
            listeners = list(await trio.open_tcp_listeners(config.server.port, host=config.server.host,
                                                           backlog=config.server.backlog))
        connections: Connections = await nursery.start(run_connections)
        try:
            http = HttpApi(Signald(hub), api_calls=config.api.port is None, websocket_port=True, per_ip=per_ip)
            serving = _Serving(hub, router, authenticate, per_ip, http, config.limits.to_wire(), connections)
            handler = partial(_handle_stream, serving)
            await nursery.start(partial(serve_streams, handler, listeners, handler_nursery=connections.nursery,
                                        ssl_context=ssl_context))
            api_port = None if config.api.port is None else await nursery.start(
                serve_api_port, HttpApi(Signald(hub), api_calls=True, websocket_port=False, per_ip=per_ip),
                config.server.host, config.api.port, ssl_context)
            running = RunningServer(hub, config.server.host, _bound_port(listeners[0]), ssl_context is not None,
                                    api_port)
            log.debug("signald listening on %s", running.url)
            task_status.started(running)
            await trio.sleep_forever()
        finally:  # shutdown (or a failure to start): the listeners stop, then every connection closes
            hub.shutting_down = True  # before the connections close: departures are not announced
            with trio.CancelScope(shield=True):  # one pass first: the listeners close, the port is free at once
                await trio.lowlevel.checkpoint()
            hub.disconnect_all(close_all(connections, CLOSE_GOING_AWAY, "server shutting down",
                                         min(config.server.shutdown_timeout_s, SHUTDOWN_CLOSE_WAIT_S)))


def _replica(hub: Hub, config: Config) -> Replica | None:
    """With ``cluster.broker_url``: the link to the other nodes (Redis), after checking what it needs."""
    if not config.cluster.enabled:
        return None
    if parse_history_url(config.history_url()).backend != "postgresql":
        raise StartupError("cluster.broker_url: several nodes need one shared PostgreSQL history store; "
                           "set history.url = postgresql://... (each node's own SQLite file cannot be shared)")
    try:
        from signald.cluster.redis_replica import RedisReplica
    except ImportError as exc:
        raise StartupError(f"cluster.broker_url needs the redis extra (pip install 'signald[redis]'): {exc}") from None
    return RedisReplica(hub, config.cluster)


@asynccontextmanager
async def _cluster(replica: Replica | None) -> AsyncIterator[None]:
    """Run the link to the other nodes while the daemon serves (nothing with one node)."""
    if replica is None:
        yield
        return
    async with replica.running():
        log.info("cluster: node %s joined through %s", replica.node_id, redact(replica.url))
        yield


def _bound_port(listener: trio.SocketListener) -> int:
    port: int = listener.socket.getsockname()[1]
    return port


def _choose_subprotocol(offered: tuple[str, ...]) -> tuple[bool, str | None, bool]:
    """(acceptable, subprotocol to select, binary frames)."""
    for name in offered:
        if name in OUR_SUBPROTOCOLS:
            return True, name, name == SUBPROTOCOL_MSGPACK
    return not offered, None, False


async def _refuse(
    hub: Hub, handshake: Handshake, refusal: Refusal, peer: str, *, user: str = "-", subprotocol: str | None = None,
    binary: bool = False,
) -> None:
    """Carry out ``refusal``: audit it, count it, then answer within :data:`REFUSAL_WAIT_S`.

    Resource handling: a peer that does not read, or never sends its close reply, is given up on
    when the wait runs out; the caller closes the stream.
    """
    log_event(audit, logging.WARNING, "connection refused", cause=refusal.cause.value, status=refusal.http_status,
              close_code=refusal.close_code, user=user, peer=peer, reason=refusal.message)
    hub.metrics.refusals_by[refusal.cause.value].inc()
    with trio.move_on_after(REFUSAL_WAIT_S):
        if refusal.close_code is None:
            await handshake.reject(refusal.http_status, refusal.message.encode() + b"\n", headers=refusal.headers())
            return
        error = refusal.error()
        frame = msgpack_encoder.encode(error) if binary else json_encoder.encode(error).decode()
        await handshake.refuse_with_close(subprotocol, frame, refusal.close_code, refusal.message)


@attrs.frozen
class _Serving:
    """What serving one client needs of the running server (the same for every client)."""

    hub: Hub
    router: Router
    authenticate: Authenticator
    per_ip: ConnectionRateLimiter | None
    http: HttpApi | None  # plain HTTP requests (not upgrades): health checks, the server API
    limits: Limits  # the welcome's ``limits``, built once (the same for every client)
    connections: Connections  # where the connections are listed for a shutdown's close_all


async def _handle_stream(serving: _Serving, stream: trio.abc.Stream) -> None:
    """Serve one client; whatever goes wrong with it never reaches the listener (or other clients).

    Resource handling: the stream is closed on the way out, whatever happened.
    """
    try:
        await _serve_client(serving, stream)
    except Exception:
        log.exception("connection from %s failed", peer_address(stream))
    finally:
        if not stream_closed(stream):  # a WebSocket's close closed it already (a second close costs a Cancelled)
            await trio.aclose_forcefully(stream)


async def _serve_client(serving: _Serving, stream: trio.abc.Stream) -> None:
    hub, router, authenticate, per_ip = serving.hub, serving.router, serving.authenticate, serving.per_ip
    config = hub.config
    peer = peer_address(stream)
    handshake = Handshake(stream, keep_plain=serving.http is not None)
    request = handshake.read_now()  # usually all there: no timeout needed
    if handshake.abandoned:
        hub.metrics.abandoned.inc()
        return
    if request is None:  # stays None when the connect timeout fires first
        with trio.move_on_after(config.server.connect_timeout_s):
            request = await handshake.read_request()
    if request is None:
        if handshake.plain is not None and serving.http is not None:
            await serving.http.serve(stream, handshake.plain, peer)
        return  # timed out, plain HTTP (served), or gone
    peer = client_address(peer, request.headers, config.server.trusted_proxies)  # behind trusted proxies
    handshake_request = HandshakeRequest(
        path=request.path,
        headers=tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers),
        remote=peer,
    )
    now, mode = trio.current_time(), config.server.refusals
    address_allowed = per_ip is None or per_ip.allow(peer, now)  # counted whatever happens next
    acceptable, subprotocol, binary = _choose_subprotocol(request.subprotocols)
    refuse = partial(_refuse, hub, handshake, peer=peer, subprotocol=subprotocol, binary=binary)
    if not acceptable:
        return await refuse(decide(Cause.SUBPROTOCOL, mode, f"unsupported subprotocol; use {SUBPROTOCOL_JSON}"))
    if not address_allowed:
        assert per_ip is not None
        return await refuse(decide(Cause.RATE_LIMITED_ADDRESS, mode, "too many new connections from this address",
                                   retry_after_s=per_ip.retry_after_s(peer, now)))
    if not origins_allowed(handshake_request, config.server.allowed_origins):
        return await refuse(decide(Cause.FORBIDDEN, mode, "origin not allowed"))
    try:
        identity = authenticate(handshake_request)
        if identity.user_id.startswith(RESERVED_USER_PREFIX):
            raise AuthRefused(401, "reserved user id")
    except AuthRefused as exc:
        return await refuse(decide(cause_of_status(exc.status), mode, exc.reason, http_status=exc.status))
    user = identity.user_id
    if hub.connection_count(user) + hub.handshaking.get(user, 0) >= config.limits.max_connections_per_user:
        return await refuse(decide(Cause.RATE_LIMITED_USER, mode, "too many connections for this user"), user=user)
    del request, handshake_request  # the headers are not kept for the connection's lifetime
    if hub.shutting_down:  # close_all has been: no welcome now (the stream is closed, as if cancelled)
        return
    response, connection = handshake.upgrade(subprotocol)
    limits = config.limits
    now_iso = iso_utc(hub.wall_clock())
    session = Session(
        session_id=new_session_id(),
        identity=identity,
        remote=peer,
        binary=binary,
        connected_at=now_iso,
        send_queue=limits.send_queue,
        flood=FloodGuard(limits.rate_per_s, limits.rate_burst, shared=hub.user_rates.for_user(identity.user_id)),
        cork=hub.cork,
    )
    ws = ServerWebSocket(stream, connection, session.outbox, max_message_bytes=config.server.max_transport_bytes)
    ws.on_silent = partial(_silent, session)
    ws.parking = hub.parking
    ws.flood = session.flood  # pings, pongs and fragments count too
    session.reader = weakref.ref(ws)  # when it last read: see HistoryService.answered
    welcome = Frame(Welcome(data=WelcomeData(
        protocol_version=PROTOCOL_VERSION,
        session_id=session.session_id,
        user_id=session.user_id,
        server_time=now_iso,
        heartbeat_s=config.server.heartbeat_s,
        limits=serving.limits,
    )))
    # The 101 and the welcome leave in one write (one system call; the client has its welcome
    # with the upgrade's answer); the session joins the hub after it, so the welcome comes first.
    hub.handshaking[user] = hub.handshaking.get(user, 0) + 1  # hold the slot while we answer
    try:
        await send_now(stream, response + (welcome.wire_binary if binary else welcome.wire_text))
    finally:
        hub.handshaking[user] -= 1
        if not hub.handshaking[user]:
            del hub.handshaking[user]
    hub.connect(session)
    hub.watch(ws)
    hub.expiries.watch(session)
    serving.connections.add(session, ws)
    try:
        await run_connection(ws, session, partial(handle_message, hub, router, session,
                                                  spawn=serving.connections.nursery.start_soon),
                             helpers=serving.connections.nursery)
    finally:
        if session.beside is not None:  # an embedder's handler still running: its reply has nowhere to go
            session.beside.cancel()
        serving.connections.remove(session)
        if hub.shutting_down and session.close_code is None:  # close_all came too late for it
            session.close_code, session.close_reason = CLOSE_GOING_AWAY, "server shutting down"
        if not session.detached:  # (a stopping server's connections whose close frames went out left together)
            session.peer_close_code = ws.peer_close_code
            hub.disconnect(session)
        if not ws.close_now():  # else: gone or answered at once, nothing to wait for
            wait_s, now = config.server.shutdown_timeout_s, trio.current_time()
            reply_by = now + wait_s
            if hub.shutting_down:  # one wait for all: close_all's deadline (0.5 s after the close frames at most)
                reply_by = min(reply_by, now + SHUTDOWN_CLOSE_WAIT_S, serving.connections.scope.deadline)
            with trio.CancelScope(shield=True):  # then the linger, also shared when stopping
                await ws.close(session.close_code or 1000, session.close_reason, reply_by=reply_by,
                               linger_until=reply_by + min(wait_s, CLOSE_LINGER_S))


def _silent(session: Session) -> None:
    log.info("session %s: no sign of life after a heartbeat ping, closing", session.session_id)
    session.close(CLOSE_GOING_AWAY, "heartbeat timeout", flush=False)
