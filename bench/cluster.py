"""Benchmark: the latency a second node adds to a chat event (docs/cluster.md).

Two daemon processes share a Redis (``--broker-url``) and a PostgreSQL database (``--history-url``,
a scratch database: its ``signald`` schema is emptied first). One client sends ``chat.send`` at a
paced rate on node 0; one receiver sits on node 0 (same node) and one on node 1 (across Redis).
Each body carries the send time (``time.monotonic``, one clock for every process of the machine);
the receivers' p50/p99 and their difference are the figures.

    .venv/bin/python -m bench.cluster --history-url postgresql://postgres@127.0.0.1:5432/bench \\
        --broker-url redis://127.0.0.1:6379/0 --rate 1000 --seconds 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from signald.client.raw import SignaldClient, connect

READY = re.compile(rb"signald ready on (ws://\S+)")


def _empty(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS signald CASCADE")


@asynccontextmanager
async def node(workdir: Path, index: int, history_url: str, broker_url: str) -> AsyncIterator[str]:
    config = workdir / f"node{index}.toml"
    config.write_text("[limits]\nrate_per_s = 100000.0\nrate_burst = 100000\nsend_queue = 100000\n"
                      f'[cluster]\nnode_id = "bench-{index}"\n')
    log = workdir / f"node{index}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALD_")}
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "signald", "serve", "--port", "0", "--config", str(config),
             "--history-url", history_url, "--broker-url", broker_url, "--log-level", "warning"],
            stderr=stderr, env=env)
    try:
        with trio.fail_after(20):
            while not (match := READY.search(log.read_bytes())):
                if process.poll() is not None:
                    raise SystemExit(f"node {index} exited: {log.read_text(errors='replace')}")
                await trio.sleep(0.05)
        yield match.group(1).decode()
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()


def p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def receive(client: SignaldClient, count: int, into: list[float]) -> None:
    while len(into) < count:
        event = await client.next_event("chat.message")
        into.append(time.monotonic() - float(event["data"]["body"]))


async def run(history_url: str, broker_url: str, rate: float, seconds: float) -> None:
    _empty(history_url)
    count = int(rate * seconds)
    same: list[float] = []
    cross: list[float] = []
    with tempfile.TemporaryDirectory(prefix="signald-bench-cluster-") as tmp:
        async with AsyncExitStack() as stack:
            url0 = await stack.enter_async_context(node(Path(tmp), 0, history_url, broker_url))
            url1 = await stack.enter_async_context(node(Path(tmp), 1, history_url, broker_url))
            sender = await stack.enter_async_context(connect(url0, user="sender"))
            near = await stack.enter_async_context(connect(url0, user="near"))
            far = await stack.enter_async_context(connect(url1, user="far"))
            for client in (sender, near, far):
                await client.request("room.join", {"room": "bench"})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, near, count, same)
                nursery.start_soon(receive, far, count, cross)
                start = time.monotonic()
                for i in range(count):  # paced, not waiting for acks (they are drained below)
                    await trio.sleep_until(start + i / rate)
                    await sender.send({"type": "chat.send", "data": {"scope": "bench", "body": repr(time.monotonic())}})
    print(f"{count} events at {rate:g}/s, sender and 'near' on node 0, 'far' on node 1")
    same.sort()
    cross.sort()
    for name, values in (("same node", same), ("across nodes", cross)):
        print(f"  {name:13} p50 {statistics.median(values) * 1e3:7.2f} ms   p99 {p99(values) * 1e3:7.2f} ms")
    added50 = (statistics.median(cross) - statistics.median(same)) * 1e3
    added99 = (p99(cross) - p99(same)) * 1e3
    print(f"  added by the second node: p50 {added50:+.2f} ms, p99 {added99:+.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history-url", required=True, help="a scratch PostgreSQL database (emptied)")
    parser.add_argument("--broker-url", required=True, help="redis://host:port/db")
    parser.add_argument("--rate", type=float, default=1000.0, help="chat.send per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    trio.run(run, args.history_url, args.broker_url, args.rate, args.seconds)


if __name__ == "__main__":
    main()
