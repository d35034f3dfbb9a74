"""Workload (h), several nodes: three signald daemons sharing the bench's PostgreSQL and Redis.

Against ``signald-cluster`` (node 0, started by the runner; this module starts nodes 1 and 2 with
the same ``--history-url`` and ``--broker-url``):

- **cross-node delivery**: one sender on node 0 sends ``chat.send`` paced at ``cluster_rate`` per
  second without waiting for the acks; one receiver sits on node 0 (the same node: what one node
  alone does) and one on each of nodes 1 and 2 (across Redis). Each body carries its send time
  (``perf_counter`` of this process, which also receives); the latency figures are per receiver,
  "added" is across-nodes minus same-node, at p50 and p99;
- **idle connections**: ``cluster_idle`` connections (rooms of 50) spread evenly over the three
  nodes by :mod:`bench.holder` processes (each node stays under its file limit), then each node's
  RSS and its heartbeat CPU over ``scale_window_s`` of idleness.

The fan-out half of (h) (``signald-broker`` vs ``signald-pg``, the broker's cost on one node) is
workload (b)'s code: :func:`bench.workloads.several_nodes` dispatches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import resource
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import psutil

from bench.holders import read_report, start_holder, stop_holders
from bench.pgserver import bench_server
from bench.procs import Server, running
from bench.redisserver import bench_redis
from bench.wsclient import Conn, Stats, connect_many, quiet

if TYPE_CHECKING:
    from bench.workloads import Sizes

NODES = 3
_BODY = b'"body":"'


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@contextlib.asynccontextmanager
async def more_nodes(first: Server, count: int) -> AsyncIterator[list[Server]]:
    """``count`` more nodes of ``first``'s cluster, started together: the same command line, so the
    same store (``--history-url``) and broker (``--broker-url``), each on a port of its own."""
    argv = first.ps.cmdline()

    def spec(index: int) -> Any:
        return dataclasses.replace(first.spec, name=f"{first.spec.name}-{index}", argv=lambda tmp: list(argv))

    async with contextlib.AsyncExitStack() as stack:
        nodes = await asyncio.gather(*(stack.enter_async_context(running(spec(i + 1), nofile=first.nofile))
                                       for i in range(count)))
        yield list(nodes)


class ServerCPU:
    """CPU so far of what serves the cluster: each node, Redis, PostgreSQL (:meth:`each`)."""

    def __init__(self, nodes: list[Server]) -> None:
        self.nodes = nodes
        self.redis, self.pg = bench_redis(), bench_server()

    def each(self) -> dict[str, float]:
        out = {f"node{i}": node.cpu_seconds() for i, node in enumerate(self.nodes)}
        out["redis"] = self.redis.cpu_seconds() if self.redis else 0.0
        out["pg"] = self.pg.cpu_seconds() if self.pg else 0.0
        return out


async def cluster_workload(server: Server, sizes: Sizes, tag: str) -> dict[str, Any]:
    async with more_nodes(server, NODES - 1) as others:
        nodes = [server, *others]
        helpers = ServerCPU(nodes)
        start = helpers.each()
        metrics = await cross_node(nodes, helpers, sizes, tag)
        metrics.update(await idle_across(nodes, helpers, sizes, tag))
        end = helpers.each()
        # everything but node 0 (the runner's server) is the workload's own: not noise
        metrics["helper_cpu_s"] = sum(end[k] - start[k] for k in end if k != "node0") + metrics.pop("holder_cpu_s", 0.0)
        return metrics


# ------------------------------------------------------------------------------ cross-node delivery

async def cross_node(nodes: list[Server], helpers: ServerCPU, sizes: Sizes, tag: str) -> dict[str, Any]:
    room = f"x-{tag}"
    stats = Stats()
    names = ["sender", "near", *(f"far{i}" for i in range(1, len(nodes)))]
    conns: list[Conn] = []
    for name, node in zip(names, [nodes[0], *nodes], strict=True):
        made, failed = await connect_many(node.spec.dialect, node.host, node.port, [f"{name}-{tag}"], stats,
                                          rooms=[room])
        if failed:
            raise RuntimeError(f"cross-node: {name} could not connect and join")
        conns += made
    await quiet(stats, interval=0.3)
    count = int(sizes.cluster_rate * sizes.cluster_seconds)
    warm = int(count * 0.1)  # the first tenth warms the path up (connections, allocations) and is not counted
    latencies: list[list[float]] = [[] for _ in conns[1:]]
    done = asyncio.Event()

    def receiver(into: list[float]) -> Any:
        def on_event(payload: bytes) -> None:
            now = time.perf_counter()
            at = payload.find(_BODY) + len(_BODY)
            index, _, sent = payload[at:payload.index(b'"', at)].partition(b" ")
            if int(index) >= warm:
                into.append(now - float(sent))
            if all(len(values) >= count - warm for values in latencies):
                done.set()
        return on_event

    for conn, into in zip(conns[1:], latencies, strict=True):
        conn.on_event = receiver(into)
    sender = conns[0]
    acks: list[asyncio.Future[bytes]] = []
    cpu0, client0, t0 = helpers.each(), _own_cpu_s(), time.perf_counter()
    sent = 0
    while sent < count:  # paced by the clock, never waiting for an ack
        due = min(count, int((time.perf_counter() - t0) * sizes.cluster_rate) + 1)
        while sent < due:
            acks.append(sender.chat(room, f"{sent} {time.perf_counter():.7f}"))
            sent += 1
        await asyncio.sleep(0.0002)
    send_s = time.perf_counter() - t0
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 10 + count / sizes.cluster_rate)
    cpu1, client1 = helpers.each(), _own_cpu_s()
    failed_acks = sum(1 for r in await asyncio.gather(*acks, return_exceptions=True) if isinstance(r, BaseException))
    for conn in conns:
        conn.abort()
    same, cross = latencies[0], [v for values in latencies[1:] for v in values]
    metrics: dict[str, Any] = {
        "x_events": count - warm, "x_rate": count / send_s, "x_elapsed_s": time.perf_counter() - t0,
        "x_failed_acks": failed_acks,
        "x_missing": sum(count - warm - len(values) for values in latencies),
        "x_same_p50_ms": _quantile(same, 0.5) * 1e3, "x_same_p99_ms": _quantile(same, 0.99) * 1e3,
        "x_cross_p50_ms": _quantile(cross, 0.5) * 1e3, "x_cross_p99_ms": _quantile(cross, 0.99) * 1e3,
    }
    metrics["x_added_p50_ms"] = metrics["x_cross_p50_ms"] - metrics["x_same_p50_ms"]
    metrics["x_added_p99_ms"] = metrics["x_cross_p99_ms"] - metrics["x_same_p99_ms"]
    for key in cpu1:  # who was busy during the paced run: CPU per event sent (µs), robust to a busy machine
        metrics[f"x_cpu_us_{key}"] = (cpu1[key] - cpu0[key]) / count * 1e6
    metrics["x_cpu_us_client"] = (client1 - client0) / count * 1e6  # this load client: did it keep up?
    await asyncio.sleep(0.3)  # let the nodes see the resets
    return metrics


# ------------------------------------------------------------------------------ idle connections

async def idle_across(nodes: list[Server], helpers: ServerCPU, sizes: Sizes, tag: str) -> dict[str, Any]:
    total = sizes.cluster_idle
    per_node = [total // len(nodes) + (1 if i < total % len(nodes) else 0) for i in range(len(nodes))]
    await asyncio.sleep(sizes.rss_settle_s)
    base = [node.rss() for node in nodes]
    procs: list[asyncio.subprocess.Process] = []
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"idle_target": total}
    try:
        for n, (node, count) in enumerate(zip(nodes, per_node, strict=True)):
            holders = max(1, math.ceil(count / sizes.scale_per_holder))
            for h in range(holders):
                share = count // holders + (1 if h < count % holders else 0)
                procs.append(await start_holder(
                    node.host, node.port, "--count", str(share), "--src", f"127.0.2.{len(procs) + 1}",
                    "--prefix", f"n{tag}-{n}-{h}", "--room-size", "50"))
        reports = await asyncio.wait_for(asyncio.gather(*(read_report(p) for p in procs)),
                                         timeout=max(300.0, total / 50))
        metrics["idle_connect_s"] = time.perf_counter() - t0
        metrics["idle_held"] = sum(r["held"] for r in reports)
        metrics["idle_failed"] = sum(r["failed"] for r in reports)
        await asyncio.sleep(sizes.scale_settle_s)
        rss = [node.rss() for node in nodes]
        for i, node in enumerate(nodes):
            metrics[f"idle_fds_node{i}"] = node.ps.num_fds()
            metrics[f"idle_rss_mb_node{i}"] = rss[i] / 2**20
        metrics["idle_rss_mb_total"] = sum(rss) / 2**20
        metrics["idle_rss_kb_per_conn"] = (sum(rss) - sum(base)) / max(1, metrics["idle_held"]) / 1024
        redis = helpers.redis
        if redis is not None and redis.pid():
            metrics["idle_rss_mb_redis"] = psutil.Process(redis.pid()).memory_info().rss / 2**20
        cpu0, w0 = helpers.each(), time.perf_counter()
        await asyncio.sleep(sizes.scale_window_s)
        window = time.perf_counter() - w0
        cpu1 = helpers.each()
        for key in cpu1:
            metrics[f"idle_cpu_pct_{key}"] = (cpu1[key] - cpu0[key]) / window * 100
        metrics["idle_cpu_pct_max_node"] = max(metrics[f"idle_cpu_pct_node{i}"] for i in range(len(nodes)))
    finally:
        metrics["holder_cpu_s"], lost = await stop_holders(
            procs, tolerate=(TimeoutError, ValueError, KeyError, RuntimeError))
        metrics["idle_lost"] = lost
        await asyncio.sleep(0.3)
    return metrics
