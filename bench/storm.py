"""(g) The reconnect storm: every client of a restarted server comes back at once and resumes.

N clients (``Sizes.storm_sizes``) are spread over ``STORM_ROOMS`` rooms and have each seen part of
the history: they join while the rooms fill up (each from the revision its join ack reports), a
fifth of them drop out before the last messages. Then the server is restarted (SIGTERM, then
started again on the same port and database) while ``SENDERS`` senders keep sending, and every
client reconnects with the client library's jittered backoff (:func:`signald.client.schedule.decide`,
the same table) and rejoins its room with ``since_rev`` = the highest revision it holds, paging
with ``chat.changes`` while ``changes_truncated`` / ``has_more`` (docs/protocol.md, "Exact
resume"). The protocol is spoken directly (not through ``signald.client``) so that one process can
drive 19,000 clients.

Reported: time from the SIGTERM until 50 % / 99 % / 100 % of the clients are resumed (join
acknowledged, pages read), handshakes refused, the restarted server's CPU per resumed client (from
its ready line to the last resume), and the check that every client ends with exactly the
server's history: the revisions 1..R of its room, each once (``missed`` and ``duplicated``, both
0 when it holds), where R and the history itself are read from the server by a fresh client at the
end. python-socketio has no resume: against it the storm is reconnect + rejoin only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bench.procs import Server, client_cpu_seconds
from bench.wsclient import DIALECTS, Conn, ServerError, Stats, quiet
from signald.client.schedule import Backoff, Closed, decide

STORM_ROOMS = 50
SENDERS = 10
BACKOFF = Backoff()  # the client library's defaults
SOURCES = [f"127.0.2.{i}" for i in range(1, 41)]  # 40 source addresses: ports to spare for 19,000 x 2
REFUSED_CODES = frozenset({4401, 4403, 4429})
PAGE = 200
Metrics = dict[str, Any]


class _Rev(msgspec.Struct):
    rev: int


class _JoinResult(msgspec.Struct):
    rev: int
    changes: list[_Rev] = []
    changes_truncated: bool = False
    changes_reset: bool = False


class _ChangesResult(msgspec.Struct):
    rev: int
    changes: list[_Rev] = []
    has_more: bool = False
    changes_reset: bool = False


class _JoinAckData(msgspec.Struct):
    data: _JoinResult


class _ChangesAckData(msgspec.Struct):
    data: _ChangesResult


class _JoinAck(msgspec.Struct):
    data: _JoinAckData


class _ChangesAck(msgspec.Struct):
    data: _ChangesAckData


_join_ack = msgspec.json.Decoder(_JoinAck)
_changes_ack = msgspec.json.Decoder(_ChangesAck)
REV_KEY = b'"rev":'
CHANGES_FRAME = b'{"type":"chat.changes","id":%d,"data":{"room":"%s","after_rev":%d,"limit":%d}}'


def rev_of(payload: bytes) -> int:
    """The first ``"rev":N`` of a frame (a chat.message event, or a chat.send ack's message)."""
    i = payload.index(REV_KEY) + len(REV_KEY)
    j = i
    while payload[j] in b"0123456789":
        j += 1
    return int(payload[i:j])


@dataclass(eq=False)
class Client:
    """One storm client: its room, what it holds (contiguous revisions 1..held, plus any above)."""

    user: str
    room: str
    src: str
    held: int = 0
    ahead: set[int] = field(default_factory=set)
    duplicated: int = 0
    conn: Conn | None = None
    last: Conn | None = None  # the latest attempt's connection, welcomed or not
    opened_at: float = 0.0
    resumed_at: float | None = None
    refused: int = 0
    attempts: int = 0
    reset: bool = False
    failure: str = ""

    def take(self, rev: int, *, page: bool = False) -> None:
        """Apply one change by revision; a page read after the join may overlap live events."""
        if rev <= self.held or rev in self.ahead:
            if not page:
                self.duplicated += 1
            return
        if rev != self.held + 1:
            self.ahead.add(rev)
            return
        self.held = rev
        ahead = self.ahead
        while ahead and self.held + 1 in ahead:
            self.held += 1
            ahead.discard(self.held)

    def on_event(self, payload: bytes) -> None:
        self.take(rev_of(payload))

    def missed(self, final: int) -> int:
        return max(0, final - self.held) - sum(1 for r in self.ahead if r <= final)


@dataclass
class Storm:
    """One storm's shared state (one server, one size)."""

    server: Server
    dialect_name: str
    stats: Stats = field(default_factory=Stats)
    sigterm_at: float = 0.0
    stop_sending: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    send_errors: int = 0
    # failed reconnect attempts by where they failed: "no_server" (refused: not listening yet),
    # "tcp" (no TCP connection within the timeout: the listen queue was full), "welcome" (connected,
    # no welcome in time), "join" (no join ack in time), "closed" (closed or refused by the server)
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def envelope(self) -> bool:
        return self.dialect_name != "socketio"


async def open_conn(storm: Storm, client: Client, timeout_s: float = 15.0) -> Conn:
    """Connect and wait for the welcome; raises ConnectionError (refused or lost) or TimeoutError."""
    loop = asyncio.get_running_loop()
    server = storm.server
    dialect = DIALECTS[storm.dialect_name]
    _, conn = await asyncio.wait_for(loop.create_connection(
        lambda: Conn(dialect, storm.stats, f"{server.host}:{server.port}", dialect.path(client.user)),
        server.host, server.port, local_addr=(client.src, 0)), timeout_s)
    client.last = conn
    if storm.envelope:
        conn.on_event = client.on_event
    try:
        await asyncio.wait_for(asyncio.shield(conn.ready), timeout_s)
    except BaseException:
        conn.abort()
        raise
    client.conn, client.opened_at = conn, time.perf_counter()
    return conn


def join_frame(op_id: int, room: str, since_rev: int | None) -> bytes:
    if since_rev is None:
        return b'{"type":"room.join","id":%d,"data":{"room":"%s"}}' % (op_id, room.encode())
    return b'{"type":"room.join","id":%d,"data":{"room":"%s","since_rev":%d}}' % (op_id, room.encode(), since_rev)


async def join(storm: Storm, client: Client, conn: Conn, *, since_rev: int | None, timeout_s: float = 30.0) -> None:
    """Join (or rejoin) the client's room and apply what the ack and the pages after it hold."""
    if not storm.envelope:
        await asyncio.wait_for(conn.join(client.room), timeout_s)
        return
    payload = await asyncio.wait_for(conn.request(lambda i: join_frame(i, client.room, since_rev)), timeout_s)
    result = _join_ack.decode(payload).data.data
    if since_rev is None:  # a first join: it has seen the history up to here
        client.held = max(client.held, result.rev)
        return
    if result.changes_reset:
        client.reset = True
        return
    for change in result.changes:
        client.take(change.rev)
    more, after = result.changes_truncated, result.changes[-1].rev if result.changes else since_rev
    while more:
        page_payload = await asyncio.wait_for(
            conn.request(lambda i, a=after: CHANGES_FRAME % (i, client.room.encode(), a, PAGE)), timeout_s)
        page = _changes_ack.decode(page_payload).data.data
        for change in page.changes:
            client.take(change.rev, page=True)
        more = page.has_more and bool(page.changes)
        after = page.changes[-1].rev if page.changes else after


async def resume(storm: Storm, client: Client, lost: asyncio.Future[None], *, joined: bool = True) -> None:
    """After the restart: reconnect as the client library decides, rejoin with ``since_rev``."""
    conn = client.conn
    if conn is not None:
        await lost
        closed = Closed(code=conn.close_code, open_for_s=time.perf_counter() - client.opened_at)
    else:  # dropped out before the restart: comes back with everybody else
        closed = Closed(code=None, open_for_s=BACKOFF.healthy_after_s)
    attempt = 0
    while True:
        decision = decide(closed, attempt=attempt, rand=random.random(), policy=BACKOFF, can_refresh=False)
        if decision.action != "reconnect":
            client.failure = f"{decision.action}: {decision.reason}"
            return
        await asyncio.sleep(decision.delay_s)
        attempt = decision.next_attempt
        client.attempts += 1
        client.last = None
        phase = "welcome"
        try:
            conn = await open_conn(storm, client)
            phase = "join"
            await join(storm, client, conn, since_rev=client.held if storm.envelope else None)
        except (OSError, TimeoutError, ConnectionError, ServerError) as exc:
            tried = client.last  # None when not even TCP connected (the server is still starting)
            if tried is None:
                phase = "tcp" if isinstance(exc, TimeoutError) else "no_server"
            elif not isinstance(exc, TimeoutError):
                phase = "closed"
            storm.failed[phase] += 1
            code = tried.close_code if tried is not None else None
            status = tried.http_status if tried is not None else None
            if code in REFUSED_CODES or status is not None:
                client.refused += 1  # the handshake was refused (HTTP status, or error frame + 4429...)
            if tried is not None:
                tried.abort()
            client.conn = None
            closed = Closed(code=code, http_status=status)
            continue
        client.resumed_at = time.perf_counter()
        return


async def sender(storm: Storm, me: Client, rooms: list[str], rate: float, finals: dict[str, int]) -> None:
    """Send to ``rooms`` in turn at ``rate`` messages/s, awaiting each ack; reconnects like a client."""
    body = "storm message from a sender that keeps sending while everybody reconnects"
    period = 1.0 / rate if rate > 0 else 0.0
    i = 0
    next_at = time.perf_counter()
    while not storm.stop_sending.is_set():
        conn = me.conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            await _reconnect_sender(storm, me, rooms)
            continue
        room = rooms[i % len(rooms)]
        try:
            payload = await asyncio.wait_for(conn.chat(room, body), 10)
            storm.sent += 1
            i += 1
            if storm.envelope:
                finals[room] = max(finals.get(room, 0), rev_of(payload))
        except (ConnectionError, TimeoutError, ServerError):
            storm.send_errors += 1
            me.conn = None
            conn.abort()
            continue
        next_at += period
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = time.perf_counter()


async def _reconnect_sender(storm: Storm, me: Client, rooms: list[str]) -> None:
    attempt = 0
    closed = Closed(code=None, open_for_s=BACKOFF.healthy_after_s)
    while not storm.stop_sending.is_set():
        decision = decide(closed, attempt=attempt, rand=random.random(), policy=BACKOFF, can_refresh=False)
        await asyncio.sleep(decision.delay_s)
        attempt = decision.next_attempt
        try:
            conn = await open_conn(storm, me)
            for room in rooms:
                await asyncio.wait_for(conn.join(room), 30)
            return
        except (OSError, TimeoutError, ConnectionError, ServerError):
            me.conn = None
            closed = Closed()


async def server_history(storm: Storm, rooms: list[str]) -> tuple[dict[str, int], int]:
    """(room -> its revision R, rooms whose history is not exactly 1..R), read by a fresh client."""
    checker = Client(user=f"storm-check-{random.getrandbits(32):x}", room=rooms[0], src=SOURCES[0])
    conn = await open_conn(storm, checker)
    finals: dict[str, int] = {}
    broken = 0
    try:
        for room in rooms:
            probe = Client(user=checker.user, room=room, src=checker.src)
            await join(storm, probe, conn, since_rev=0)
            final = probe.held + len(probe.ahead)
            finals[room] = final
            if probe.ahead or probe.duplicated or probe.reset:
                broken += 1
    finally:
        conn.abort()
    return finals, broken


def quantile_time(times: list[float], q: float, total: int) -> float:
    """Seconds until ``q`` of ``total`` clients had resumed (nan if fewer did)."""
    need = max(1, int(-(-q * total // 1)))
    return times[need - 1] if len(times) >= need else float("nan")


async def connect_clients(storm: Storm, clients: list[Client], concurrency: int = 100) -> int:
    """First connection and join of each client (no ``since_rev``: it has seen the history up to its ack)."""
    failed = 0
    queue = iter(clients)

    async def worker() -> None:
        nonlocal failed
        for client in queue:
            try:
                conn = await open_conn(storm, client, timeout_s=60)
                await join(storm, client, conn, since_rev=None, timeout_s=60)
            except (OSError, TimeoutError, ConnectionError, ServerError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def send_round(storm: Storm, senders: list[Client], rooms_of: Callable[[int], list[str]], per_room: int,
                     finals: dict[str, int]) -> None:
    """Each sender sends ``per_room`` messages to each of its rooms (setup: all awaited)."""
    async def one(i: int, me: Client) -> None:
        assert me.conn is not None
        for _ in range(per_room):
            for room in rooms_of(i):
                payload = await me.conn.chat(room, "history before the storm")
                if storm.envelope:
                    finals[room] = max(finals.get(room, 0), rev_of(payload))
    await asyncio.gather(*(one(i, s) for i, s in enumerate(senders)))


async def reconnect_storm(server: Server, n: int, tag: str, *, send_rate: float, timeout_s: float,
                          stop_grace_s: float = 30.0) -> Metrics:
    """One storm of ``n`` clients against ``server`` (restarted in the middle); metrics suffixed ``_n``."""
    storm = Storm(server, server.spec.dialect_name)
    rooms = [f"st{n}-{tag}-{r}" for r in range(STORM_ROOMS)]
    clients = [Client(user=f"st{n}-{tag}-u{i}", room=rooms[i % STORM_ROOMS], src=SOURCES[i % len(SOURCES)])
               for i in range(n)]
    senders = [Client(user=f"st{n}-{tag}-s{i}", room=rooms[i], src=SOURCES[i % len(SOURCES)]) for i in range(SENDERS)]

    def rooms_of(i: int) -> list[str]:
        return rooms[i::SENDERS]

    finals: dict[str, int] = {}
    for i, me in enumerate(senders):
        conn = await open_conn(storm, me)
        for room in rooms_of(i):
            await conn.join(room)
    await send_round(storm, senders, rooms_of, 2, finals)  # history before anybody else came
    quarter = max(1, n // 4)
    failed = 0
    for start in range(0, n, quarter):  # clients come in four waves, the history grows between them
        failed += await connect_clients(storm, clients[start:start + quarter])
        await send_round(storm, senders, rooms_of, 1, finals)
    if failed:
        raise RuntimeError(f"storm {n}: {failed} clients could not connect before the restart")
    behind = clients[::5]  # a fifth drop out and miss the last messages before the restart
    for client in behind:
        assert client.conn is not None
        client.conn.abort()
        client.conn = None
    await send_round(storm, senders, rooms_of, 2, finals)
    await quiet(storm.stats, interval=0.5)

    # ------------------------------------------------------------------ the storm
    loop = asyncio.get_running_loop()
    losses: list[asyncio.Future[None]] = []
    for client in clients:
        lost: asyncio.Future[None] = loop.create_future()
        losses.append(lost)
        if client.conn is not None:
            client.conn.on_lost = lambda _c, f=lost: f.done() or f.set_result(None)
    for me in senders:
        assert me.conn is not None
        me.conn.on_lost = lambda _c, m=me: setattr(m, "conn", None)
    sending = [asyncio.create_task(sender(storm, me, rooms_of(i), send_rate, finals)) for i, me in enumerate(senders)]
    client0 = client_cpu_seconds()
    storm.sigterm_at = t0 = time.perf_counter()
    sigterm_wall = time.time()
    resuming = [asyncio.create_task(resume(storm, c, f)) for c, f in zip(clients, losses, strict=True)]
    shutdown_s = await server.restart(grace_s=stop_grace_s)
    ready_s = time.perf_counter() - t0
    cpu0 = server.process_cpu_seconds()
    _, pending = await asyncio.wait(resuming, timeout=timeout_s)
    cpu = server.process_cpu_seconds() - cpu0
    client_cpu = client_cpu_seconds() - client0
    for task in pending:
        task.cancel()
    await asyncio.sleep(1.0)  # live traffic goes on a moment after the last resume
    storm.stop_sending.set()
    await asyncio.gather(*sending, return_exceptions=True)
    await quiet(storm.stats, interval=0.5)

    times = sorted(c.resumed_at - t0 for c in clients if c.resumed_at is not None)
    after_ready = [t - ready_s for t in times]
    metrics: Metrics = {
        f"resumed_{n}": len(times),
        f"resumed_p50_s_{n}": quantile_time(times, 0.50, n),
        f"resumed_p99_s_{n}": quantile_time(times, 0.99, n),
        f"resumed_all_s_{n}": quantile_time(times, 1.0, n),
        f"ready_to_p50_s_{n}": quantile_time(after_ready, 0.50, n),
        f"ready_to_all_s_{n}": quantile_time(after_ready, 1.0, n),
        f"refused_{n}": sum(c.refused for c in clients),
        f"attempts_{n}": sum(c.attempts for c in clients),
        **{f"attempts_failed_{phase}_{n}": storm.failed[phase]
           for phase in ("no_server", "tcp", "welcome", "join", "closed")},
        f"shutdown_s_{n}": shutdown_s,
        f"restart_ready_s_{n}": ready_s,
        # the same two by the daemon's own ready line (the bench, busy with every client, sees it later)
        f"restart_ready_logged_s_{n}": None if server.ready_wall is None else server.ready_wall - sigterm_wall,
        f"restart_start_s_{n}": None if server.ready_wall is None else server.ready_wall - server.spawned_wall,
        f"cpu_ms_per_client_{n}": cpu / max(1, len(times)) * 1e3,
        # what the restarted daemon used before the bench saw it ready (its start-up and the clients
        # it took meanwhile), which cpu_ms_per_client leaves out
        f"restart_cpu_s_{n}": cpu0,
        f"client_cpu_pct_{n}": client_cpu / max(1e-9, (times[-1] if times else timeout_s)) * 100,
        f"sent_during_{n}": storm.sent,
        f"failures_{n}": sum(1 for c in clients if c.failure),
    }
    if storm.envelope:
        truth, broken = await server_history(storm, rooms)
        metrics[f"missed_{n}"] = sum(c.missed(truth[c.room]) for c in clients)
        metrics[f"duplicated_{n}"] = sum(c.duplicated for c in clients)
        metrics[f"beyond_history_{n}"] = sum(1 for c in clients for r in c.ahead if r > truth[c.room]) + sum(
            1 for c in clients if c.held > truth[c.room])
        metrics[f"reset_{n}"] = sum(1 for c in clients if c.reset)
        metrics[f"history_broken_rooms_{n}"] = broken
        metrics[f"exact_{n}"] = int(all(c.held == truth[c.room] and not c.ahead and not c.duplicated for c in clients))
    for c in [*clients, *senders]:
        if c.conn is not None:
            c.conn.abort()
    with contextlib.suppress(Exception):
        await asyncio.sleep(0.3)
    return metrics


async def storm_workload(server: Server, sizes: Any, tag: str) -> Metrics:
    """(g) one storm per size in ``sizes.storm_sizes``, each with its own rooms and a restart."""
    metrics: Metrics = {}
    for n in sizes.storm_sizes:
        try:
            metrics.update(await reconnect_storm(server, n, tag, send_rate=sizes.storm_send_rate,
                                                 timeout_s=sizes.storm_timeout_s,
                                                 stop_grace_s=sizes.storm_stop_grace_s))
        except (OSError, ConnectionError, TimeoutError, RuntimeError, ServerError) as exc:
            # One size a server cannot take (python-socketio loses connections while 19,000 set up)
            # must not take the smaller sizes' results with it; the runner notes it.
            metrics[f"error_{n}"] = f"{type(exc).__name__}: {exc}"
    return metrics
