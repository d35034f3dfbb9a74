"""Benchmark: durable acked ``send``/s and ack p50/p99 from concurrent senders, PostgreSQL beside SQLite.

The store alone, without the daemon (``./dev bench`` workload (e) measures the whole daemon).
Each sender is a Trio task that awaits every ``send`` before the next (a connection waiting for
its ack). The same run is made on a SQLite file (WAL, ``synchronous = NORMAL``) and on
PostgreSQL: a private durable server this script starts (:mod:`bench.pgserver`) or the database
``--url`` (its ``signald`` schema is emptied first: use a scratch database); the ratio is
PostgreSQL's throughput over SQLite's.

    .venv/bin/python -m bench.history_postgres --senders 1 50 --messages 20000
    .venv/bin/python -m bench.history_postgres --url postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import trio

from bench.pgserver import create_database, private_server
from signald.history.factory import make_store
from signald.state.dburl import redact, sqlite_url


def _empty(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS signald CASCADE")


async def one_run(url: str, senders: int, messages: int, body: str, rooms: int) -> tuple[float, list[float]]:
    """Acked sends per second and every ack latency (seconds)."""
    per_sender = max(1, messages // senders)
    latencies: list[float] = []
    store: Any = make_store(url)
    async with store:
        await store.send(room="bench", user_id="warmup", body=body)

        async def sender(n: int) -> None:
            for i in range(per_sender):
                t0 = time.perf_counter()
                await store.send(room=f"bench{n % rooms}", user_id=f"u{n}", body=body, client_msg_id=f"{n}-{i}")
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(senders):
                nursery.start_soon(sender, n)
        elapsed = time.perf_counter() - start
    return per_sender * senders / elapsed, latencies


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a scratch PostgreSQL database (its signald schema is dropped); default: a"
                        " private server started for the run")
    parser.add_argument("--rooms", type=int, default=1, help="rooms the senders spread over (default 1)")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--senders", type=int, nargs="+", default=[50])
    parser.add_argument("--repeat", type=int, default=3, help="runs per store; the median rate is shown")
    args = parser.parse_args(argv)
    if args.url is None:
        with private_server(durable=True) as server:
            args.url = create_database(server)
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    body = "x" * 100
    print(f"acked sends/s, {args.messages} messages per run over {args.rooms} room(s), median of {args.repeat};"
          f" PostgreSQL {redact(args.url)}")
    for senders in args.senders:
        results: dict[str, tuple[float, float, float]] = {}
        for name in ("sqlite", "postgresql"):
            rates, lats = [], []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    if name == "sqlite":
                        url = sqlite_url(os.path.join(tmp, "bench.db"))
                    else:
                        _empty(args.url)
                        url = args.url
                    rate, latencies = trio.run(one_run, url, senders, args.messages, body, args.rooms)
                rates.append(rate)
                lats.extend(latencies)
            results[name] = (statistics.median(rates), _percentile(lats, 0.5), _percentile(lats, 0.99))
        for name, (rate, p50, p99) in results.items():
            print(f"{senders:>3} senders  {name:<10} {rate:>9,.0f}/s"
                  f"  ack p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms")
        ratio = results["postgresql"][0] / results["sqlite"][0]
        print(f"{senders:>3} senders  PostgreSQL / SQLite = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
