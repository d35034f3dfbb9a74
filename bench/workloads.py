"""Workloads (a) to (h). Each runs against one freshly started server and returns its metrics.

All of them drive the server through :mod:`bench.wsclient` from this (load client) process,
except (f), which spreads its connections over :mod:`bench.holder` processes. Names used:
a distinct user per connection (signald limits connections per user), rooms unique per run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.cluster import cluster_workload
from bench.holders import read_report, start_holder, stop_holders
from bench.pgserver import bench_server
from bench.procs import Server, client_cpu_seconds
from bench.redisserver import bench_redis
from bench.storm import storm_workload
from bench.wsclient import Conn, Stats, connect, connect_many, quiet

BODY = "the quick brown fox jumps over the lazy dog while the daemon fans it out"  # 72 chars
LOCAL_HOSTS = [f"127.0.0.{i}" for i in range(2, 10)]  # source addresses for handshake-heavy runs

Metrics = dict[str, Any]
ISSUE_SCALE = 50_000  # (f): the connection count the issue's budget is stated for


@dataclass(frozen=True)
class Sizes:
    rounds: int = 3
    # (a) ack round trip
    rtt_warmup: int = 200
    rtt_messages: int = 3000
    # (b) fan-out
    fanout_members: tuple[int, ...] = (50, 500)
    fanout_deliveries: int = 300_000
    fanout_senders: int = 5
    fanout_window: int = 8
    # (c), (f), (h): the pause before a server's RSS is read, after its connections came or went
    rss_settle_s: float = 1.0
    # (c) idle memory
    idle_sizes: tuple[int, ...] = (1000, 5000)
    idle_room_size: int = 50
    idle_cpu_window_s: float = 50.0  # at the largest size: two socket.io, 2.5 signald/websockets heartbeats
    # (d) connection rate
    connect_count: int = 2000
    connect_concurrency: int = 50
    # (e) durable acked sends
    durable_senders: int = 50
    durable_messages: int = 400  # per sender
    # (f) scale
    scale_connections: int = 50_000
    scale_per_holder: int = 10_000
    scale_window_s: float = 40.0  # two signald heartbeat intervals
    scale_settle_s: float = 5.0
    # (g) reconnect storm
    storm_sizes: tuple[int, ...] = (1000, 5000)  # --storm-sizes 1000,5000,19000 for the issue's largest
    storm_send_rate: float = 10.0  # messages/s of each of the 10 senders, all through the storm
    storm_timeout_s: float = 120.0  # a storm not resumed by then is reported as such
    # SIGTERM to SIGKILL of the server restarted mid-storm. --quick, whose figures mean nothing, cuts
    # it short for python-socketio on aiohttp, which holds its sockets open 10 s (aiohttp's close
    # timeout: the handlers' reads are cancelled, so no peer's close reply is read) and meanwhile
    # grows every client's backoff: 23 of the test suite's 27 s for that run. signald is gone in 0.6 s.
    storm_stop_grace_s: float = 30.0
    # (h) several nodes (fan-out: fanout_members; idle: scale_per_holder, scale_settle_s, scale_window_s)
    cluster_rate: float = 5000.0  # chat.send/s, paced, for the cross-node latency
    cluster_seconds: float = 6.0
    cluster_idle: int = 50_000  # idle connections over the three nodes


FULL = Sizes()
QUICK = Sizes(
    rounds=1, rtt_warmup=5, rtt_messages=20, fanout_members=(5,), fanout_deliveries=80, fanout_senders=2,
    rss_settle_s=0.2, idle_sizes=(50,), idle_room_size=10, idle_cpu_window_s=1.0, connect_count=50,
    connect_concurrency=10, durable_senders=5, durable_messages=10, scale_connections=200, scale_per_holder=100,
    scale_window_s=1.0, scale_settle_s=0.5, storm_sizes=(60,), storm_send_rate=20.0, storm_timeout_s=30.0,
    storm_stop_grace_s=2.0, cluster_rate=500.0, cluster_seconds=0.6, cluster_idle=150,
)


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def abort_all(conns: list[Conn]) -> None:
    """Reset every connection (no TIME_WAIT). Before stopping the server, also let it notice."""
    for conn in conns:
        conn.abort()


async def drop_all(conns: list[Conn]) -> None:
    """Reset every connection and give the server a moment to see the resets before it is stopped
    (a daemon asked to stop while it still believes a client is there waits for that client's close)."""
    abort_all(conns)
    await asyncio.sleep(0.3)


async def until_idle(server: Server, *, interval: float = 0.2, limit_s: float = 10.0) -> None:
    """Wait until the server has used no CPU for ``interval`` seconds: done with what came before
    (the resets of :func:`drop_all` take a server about 0.2 ms of CPU each: 2000 of them outlast its
    0.3 s), so a measurement that follows counts its own work only."""
    deadline = time.monotonic() + limit_s
    last = server.cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        now = server.cpu_seconds()
        if now == last:
            return
        last = now


# ---------------------------------------------------------------------------------------- (a)

async def ack_rtt(server: Server, sizes: Sizes, tag: str) -> Metrics:
    """One client, sequential ``chat.send``: the time from send to ack, p50 and p99."""
    stats = Stats()
    conns, _ = await connect_many(server.spec.dialect, server.host, server.port, [f"rtt-{tag}"], stats,
                                  rooms=[f"rtt-{tag}"])
    conn = conns[0]
    await quiet(stats, interval=0.2)
    for _ in range(sizes.rtt_warmup):
        await conn.chat(f"rtt-{tag}", BODY)
    rtts: list[float] = []
    main0, other0 = server.thread_cpu_seconds()
    for _ in range(sizes.rtt_messages):
        start = time.perf_counter()
        await conn.chat(f"rtt-{tag}", BODY)
        rtts.append(time.perf_counter() - start)
    main1, other1 = server.thread_cpu_seconds()
    await drop_all(conns)
    rtts.sort()
    n = len(rtts)
    return {"p50_ms": quantile(rtts, 0.50) * 1e3, "p99_ms": quantile(rtts, 0.99) * 1e3,
            # the tail beyond p99: a stall every N sends (a checkpoint) shows here, not in p99
            "p999_ms": quantile(rtts, 0.999) * 1e3, "max_ms": rtts[-1] * 1e3 if rtts else math.nan,
            "mean_ms": sum(rtts) / n * 1e3, "samples": n,
            # server CPU per acked send: all threads, and the main (event loop) thread's part
            "cpu_us_per_send": (main1 - main0 + other1 - other0) / n * 1e6,
            "main_cpu_us_per_send": (main1 - main0) / n * 1e6}


# ---------------------------------------------------------------------------------------- (b)

async def fanout(server: Server, sizes: Sizes, tag: str) -> Metrics:
    """N members in one room; a few of them send with a window of unacked messages each.

    Delivered = chat events received by all connections (each message reaches N-1 of them).
    Rate = delivered / time from the first send to the last delivery; server CPU per delivery
    = the server process's CPU time over that interval / delivered.
    """
    metrics: Metrics = {}
    for members in sizes.fanout_members:
        metrics.update(await _fanout_one(server, sizes, tag, members))
    return metrics


async def _fanout_one(server: Server, sizes: Sizes, tag: str, members: int) -> Metrics:
    stats = Stats()
    room = f"fan{members}-{tag}"
    users = [f"f{members}-{tag}-{i}" for i in range(members)]
    conns, failed = await connect_many(server.spec.dialect, server.host, server.port, users, stats,
                                       rooms=[room] * members, concurrency=50, timeout_s=120)
    if failed:
        abort_all(conns)
        raise RuntimeError(f"fan-out {members}: {failed} connections failed")
    # Longer than signald's hold of a room's member events (members/100 s, at most 1 s; docs/protocol.md
    # "Member events in busy rooms"): the joins' events are delivered before the measured window opens.
    await quiet(stats, interval=min(1.2, 0.5 + members / 100))
    senders = conns[:min(sizes.fanout_senders, members)]
    per_sender = max(1, math.ceil(sizes.fanout_deliveries / (members - 1) / len(senders)))
    expected = per_sender * len(senders) * (members - 1)
    stats.expect(expected)

    async def send_all(conn: Conn) -> None:
        window = asyncio.Semaphore(sizes.fanout_window)
        futures = []
        for _ in range(per_sender):
            await window.acquire()
            future = conn.chat(room, BODY)
            future.add_done_callback(lambda _f: window.release())
            futures.append(future)
        await asyncio.gather(*futures)

    cpu0, client0, t0 = server.cpu_seconds(), client_cpu_seconds(), time.perf_counter()
    complete = True
    try:
        await asyncio.wait_for(asyncio.gather(stats.done.wait(), *(send_all(c) for c in senders)),
                               timeout=max(60.0, expected / 2000))
    except TimeoutError:
        complete = False
    elapsed = time.perf_counter() - t0
    cpu = server.cpu_seconds() - cpu0
    client_cpu = client_cpu_seconds() - client0
    delivered = stats.events
    await drop_all(conns)
    return {
        f"rate_{members}": delivered / elapsed,
        f"cpu_us_{members}": cpu / max(1, delivered) * 1e6,
        f"per_core_{members}": delivered / cpu if cpu > 0 else math.nan,
        f"server_cpu_pct_{members}": cpu / elapsed * 100,
        f"client_cpu_pct_{members}": client_cpu / elapsed * 100,
        f"elapsed_s_{members}": elapsed,
        f"delivered_{members}": delivered,
        f"expected_{members}": expected,
        f"complete_{members}": complete and delivered == expected,
    }


# ---------------------------------------------------------------------------------------- (c)

async def idle_memory(server: Server, sizes: Sizes, tag: str) -> Metrics:
    """RSS growth per idle connection (handshake done, joined one room of ``idle_room_size``).

    At the largest size the server's CPU is also sampled over ``idle_cpu_window_s`` of idleness:
    what keeping those connections alive (heartbeats) costs.
    """
    stats = Stats()
    dialect = server.spec.dialect
    warm, _ = await connect_many(dialect, server.host, server.port, [f"w-{tag}-{i}" for i in range(20)], stats,
                                 rooms=[f"warm-{tag}"] * 20)
    await quiet(stats)
    abort_all(warm)
    await asyncio.sleep(sizes.rss_settle_s)
    base = server.rss()
    metrics: Metrics = {"base_rss_mb": base / 2**20}
    conns: list[Conn] = []
    for size in sizes.idle_sizes:
        start = len(conns)
        users = [f"i-{tag}-{i}" for i in range(start, size)]
        rooms = [f"idle-{tag}-{i // sizes.idle_room_size}" for i in range(start, size)]
        more, failed = await connect_many(dialect, server.host, server.port, users, stats, rooms=rooms,
                                          concurrency=100, local_hosts=LOCAL_HOSTS, timeout_s=120)
        conns += more
        await quiet(stats, interval=0.5)
        await asyncio.sleep(sizes.rss_settle_s)
        rss = server.rss()
        metrics[f"rss_kb_{size}"] = (rss - base) / max(1, len(conns)) / 1024
        metrics[f"rss_mb_{size}"] = rss / 2**20
        metrics[f"failed_{size}"] = failed
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(sizes.idle_cpu_window_s)
    window = time.perf_counter() - t0
    metrics[f"idle_cpu_pct_{sizes.idle_sizes[-1]}"] = (server.cpu_seconds() - cpu0) / window * 100
    metrics["lost"] = stats.closed - len(warm)  # connections that dropped by themselves
    await drop_all(conns)
    return metrics


# ---------------------------------------------------------------------------------------- (d)

async def connect_rate(server: Server, sizes: Sizes, tag: str) -> Metrics:
    """Handshake + welcome per second with ``connect_concurrency`` handshakes in flight."""
    stats = Stats()
    users = [f"c-{tag}-{i}" for i in range(sizes.connect_count)]
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    conns, failed = await connect_many(server.spec.dialect, server.host, server.port, users, stats,
                                       concurrency=sizes.connect_concurrency, local_hosts=LOCAL_HOSTS)
    elapsed = time.perf_counter() - t0
    cpu = server.cpu_seconds() - cpu0
    await drop_all(conns)
    await until_idle(server)  # the resets' tear-down is not counted as the next part's
    metrics: Metrics = {"rate": len(conns) / elapsed, "cpu_ms_per_conn": cpu / max(1, len(conns)) * 1e3,
                        "failed": failed}
    metrics.update(await _connect_close_rate(server, sizes, tag))
    return metrics


async def _connect_close_rate(server: Server, sizes: Sizes, tag: str) -> Metrics:
    """The same, each connection closed cleanly once its welcome arrived (close frame, the server's
    reply and TCP close): set-up and tear-down, counted when the connection is gone."""
    stats = Stats()
    dialect = server.spec.dialect
    count = sizes.connect_count
    done = failed = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, done, failed
        while next_index < count:
            i = next_index
            next_index += 1
            try:
                conn = await connect(dialect, server.host, server.port, f"cc-{tag}-{i}", stats,
                                     local_host=LOCAL_HOSTS[i % len(LOCAL_HOSTS)])
                await asyncio.wait_for(conn.close(), 30)
                done += 1
            except (OSError, TimeoutError):
                failed += 1

    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(sizes.connect_concurrency, count))))
    elapsed = time.perf_counter() - t0
    cpu = server.cpu_seconds() - cpu0
    return {"closed_rate": done / elapsed, "closed_cpu_ms_per_conn": cpu / max(1, done) * 1e3,
            "closed_failed": failed}


# ---------------------------------------------------------------------------------------- (e)

async def durable_sends(server: Server, sizes: Sizes, tag: str) -> Metrics:
    """``durable_senders`` connections, each alone in its room, each awaiting every ack."""
    stats = Stats()
    n = sizes.durable_senders
    rooms = [f"dur-{tag}-{i}" for i in range(n)]
    conns, failed = await connect_many(server.spec.dialect, server.host, server.port,
                                       [f"d-{tag}-{i}" for i in range(n)], stats, rooms=rooms)
    if failed:
        abort_all(conns)
        raise RuntimeError(f"durable sends: {failed} connections failed")
    await quiet(stats, interval=0.2)

    acks: list[float] = []

    async def send_all(conn: Conn, room: str) -> None:
        for _ in range(sizes.durable_messages):
            t = time.perf_counter()
            await conn.chat(room, BODY)
            acks.append(time.perf_counter() - t)

    database = bench_server() if server.spec.name in ("signald-pg", "signald-pg-before") else None
    db0 = database.cpu_seconds() if database else 0.0
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    main0, _ = server.thread_cpu_seconds()
    await asyncio.gather(*(send_all(c, r) for c, r in zip(conns, rooms, strict=True)))
    elapsed = time.perf_counter() - t0
    cpu = server.cpu_seconds() - cpu0
    main_cpu = server.thread_cpu_seconds()[0] - main0
    await drop_all(conns)
    total = n * sizes.durable_messages
    acks.sort()
    metrics: Metrics = {"rate": total / elapsed, "cpu_us_per_send": cpu / total * 1e6,
                        "main_cpu_us_per_send": main_cpu / total * 1e6,
                        "p50_ms": quantile(acks, 0.50) * 1e3, "p99_ms": quantile(acks, 0.99) * 1e3,
                        "p999_ms": quantile(acks, 0.999) * 1e3, "max_ms": acks[-1] * 1e3 if acks else math.nan}
    if database:  # PostgreSQL's own processes: the daemon's work too, not noise from elsewhere
        metrics["helper_cpu_s"] = database.cpu_seconds() - db0
        metrics["db_cpu_us_per_send"] = metrics["helper_cpu_s"] / total * 1e6
    return metrics


# ---------------------------------------------------------------------------------------- (f)

async def scale(server: Server, sizes: Sizes, tag: str) -> Metrics:
    """Many idle connections (rooms of 50) held by helper processes; RSS and heartbeat CPU."""
    soft, hard = server.nofile_limit()
    reserve = 100  # listener, database, pipes, epoll...
    target = sizes.scale_connections
    attempt = min(target, soft - reserve)
    metrics: Metrics = {"target": target, "server_nofile_soft": soft, "server_nofile_hard": hard,
                        "attempted": attempt}
    if attempt < target:
        metrics["limited_by"] = (f"the server's RLIMIT_NOFILE is {soft} (hard {hard}) and cannot be raised "
                                 "without CAP_SYS_RESOURCE, so one process cannot hold more sockets")
    await asyncio.sleep(sizes.rss_settle_s)
    base = server.rss()
    holders = math.ceil(attempt / sizes.scale_per_holder)
    counts = [attempt // holders + (1 if i < attempt % holders else 0) for i in range(holders)]
    procs = []
    t0 = time.perf_counter()
    for i, count in enumerate(counts):
        procs.append(await start_holder(
            server.host, server.port, "--dialect", server.spec.dialect_name, "--count", str(count),
            "--src", f"127.0.1.{i + 1}", "--prefix", f"h{tag}-{i}", "--room-size", "50"))
    try:
        reports = await asyncio.wait_for(
            asyncio.gather(*(read_report(p) for p in procs)), timeout=max(300.0, attempt / 50))
        metrics["connect_s"] = time.perf_counter() - t0
        held = sum(r["held"] for r in reports)
        metrics.update(held=held, failed=sum(r["failed"] for r in reports), holders=holders)
        await asyncio.sleep(sizes.scale_settle_s)
        rss = server.rss()
        metrics.update(rss_mb=rss / 2**20, base_rss_mb=base / 2**20,
                       rss_kb_per_conn=(rss - base) / max(1, held) / 1024, server_fds=server.ps.num_fds())
        cpu0, w0 = server.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(sizes.scale_window_s)
        window = time.perf_counter() - w0
        metrics.update(idle_cpu_pct=(server.cpu_seconds() - cpu0) / window * 100, window_s=window)
        if held:  # the issue's budget is for 50,000: scale linearly from what was held
            per_conn_bytes = (rss - base) / held
            metrics["rss_mb_at_50k"] = (base + per_conn_bytes * ISSUE_SCALE) / 2**20
            metrics["idle_cpu_pct_at_50k"] = metrics["idle_cpu_pct"] * ISSUE_SCALE / held
    finally:
        metrics["helper_cpu_s"], lost = await stop_holders(procs)
        metrics["lost_while_idle"] = lost
    return metrics


# ---------------------------------------------------------------------------------------- (h)

async def several_nodes(server: Server, sizes: Sizes, tag: str) -> Metrics:
    """Three nodes (:mod:`bench.cluster`), or (b)'s fan-out on one node with or without the broker."""
    if server.spec.name == "signald-cluster":
        return await cluster_workload(server, sizes, tag)
    stores = [s for s in (bench_server(), bench_redis()) if s is not None]  # the daemon's, not noise
    before = sum(s.cpu_seconds() for s in stores)
    metrics = await fanout(server, sizes, tag)
    metrics["helper_cpu_s"] = sum(s.cpu_seconds() for s in stores) - before
    return metrics


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    servers: tuple[str, ...]
    run: Callable[[Server, Sizes, str], Awaitable[Metrics]]


PEERS = ("signald", "socketio", "websockets")

WORKLOADS: dict[str, Workload] = {w.key: w for w in (
    Workload("a", "ack round trip of chat.send (one client, sequential)", PEERS, ack_rtt),
    Workload("b", "fan-out: delivered msgs/s and server CPU per delivery", PEERS, fanout),
    Workload("c", "RSS per idle connection", PEERS, idle_memory),
    Workload("d", "connection rate (handshake + welcome)", PEERS, connect_rate),
    Workload("e", "acked chat.send/s from 50 senders, durable vs in-memory and on PostgreSQL", (
        "signald", "signald-mem", "signald-pg", "socketio", "websockets"), durable_sends),
    Workload("f", "scale: idle connections held by one daemon process", ("signald",), scale),
    Workload("g", "reconnect storm: restart, every client resumes with since_rev", ("signald", "socketio"),
             storm_workload),
    Workload("h", "several nodes: fan-out with the Redis broker, cross-node latency, idle connections over three",
             ("signald-pg", "signald-broker", "signald-cluster"), several_nodes),
)}
