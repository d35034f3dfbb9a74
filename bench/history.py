"""Benchmark: acknowledged ``HistoryStore.send`` per second, durable file vs ``:memory:``.

Each sender is a Trio task that awaits every ``send`` before the next (like a connection that
waits for its ack). The same run is made against a SQLite file (WAL, ``synchronous`` as given)
and against an in-memory database; the ratio is the throughput the durability costs.

    .venv/bin/python bench/history.py            # 1 and 50 senders, NORMAL
    .venv/bin/python bench/history.py --synchronous FULL --messages 2000
    .venv/bin/python bench/history.py --quick    # tiny run for CI smoke
    .venv/bin/python bench/history.py --check    # exit 1 if durability costs >= 30% at 50 senders
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import trio

from signald.history.store import HistoryStore

TARGET_COST = 0.30


async def one_run(path: str, senders: int, messages: int, synchronous: str, body: str) -> tuple[float, int]:
    """Acked sends per second and the number of commits they took."""
    per_sender = max(1, messages // senders)
    async with HistoryStore(path, synchronous=synchronous) as store:
        await store.send(room="bench", user_id="warmup", body=body)
        commits_before = store.commits

        async def sender(n: int) -> None:
            for i in range(per_sender):
                await store.send(room="bench", user_id=f"u{n}", body=body, client_msg_id=f"{n}-{i}")

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(senders):
                nursery.start_soon(sender, n)
        elapsed = time.perf_counter() - start
        return per_sender * senders / elapsed, store.commits - commits_before


def measure(senders: int, args: argparse.Namespace) -> tuple[tuple[float, int], tuple[float, int]]:
    """Median (rate, commits) of the file store and of the memory store, runs interleaved."""
    file_runs: list[tuple[float, int]] = []
    memory_runs: list[tuple[float, int]] = []
    for _ in range(args.repeat):  # interleaved, so background load hits both alike
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            path = os.path.join(tmp, "bench.db")
            file_runs.append(trio.run(one_run, path, senders, args.messages, args.synchronous, args.body))
        memory_runs.append(trio.run(one_run, ":memory:", senders, args.messages, args.synchronous, args.body))
    return _median(file_runs), _median(memory_runs)


def _median(runs: list[tuple[float, int]]) -> tuple[float, int]:
    return sorted(runs)[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (default 20000)")
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 50], help="concurrent senders (1 50)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per configuration; the median is shown")
    parser.add_argument("--synchronous", default="NORMAL", help="PRAGMA synchronous of the file store")
    parser.add_argument("--body-bytes", type=int, default=100, help="message body size (default 100)")
    parser.add_argument("--dir", default=None, help="directory for the database file (default: $TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="tiny run (CI smoke test)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the cost at the most senders >= 30%%")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.repeat = 200, 1
    args.body = "x" * args.body_bytes

    print(f"acked sends/s, {args.messages} messages per run, median of {args.repeat}, "
          f"file store synchronous={args.synchronous.upper()}")
    print(f"{'senders':>7}  {'file/s':>9}  {'commits':>7}  {'memory/s':>9}  {'commits':>7}  {'file/mem':>8}")
    cost = 0.0
    for senders in args.senders:
        (file_rate, file_commits), (mem_rate, mem_commits) = measure(senders, args)
        ratio = file_rate / mem_rate
        cost = 1 - ratio
        print(f"{senders:>7}  {file_rate:>9.0f}  {file_commits:>7}  {mem_rate:>9.0f}  {mem_commits:>7}"
              f"  {ratio:>8.2f}")
    most = max(args.senders)
    verdict = "ok" if cost < TARGET_COST else "ABOVE TARGET"
    print(f"durability cost at {most} senders: {cost:.0%} of throughput "
          f"(target < {TARGET_COST:.0%}): {verdict}")
    return 1 if args.check and cost >= TARGET_COST else 0


if __name__ == "__main__":
    sys.exit(main())
