"""Load: N clients in one room, each sends M messages; delivered messages per second and latency.

    .venv/bin/python examples/load.py --url ws://127.0.0.1:8765/ --clients 20 --messages 50

Every message reaches the N-1 other clients; the latency of one delivery is from the moment its
sender called ``request("chat.send")`` to the moment a receiver's ``events()`` handed it over.
A progress bar goes to stderr; the summary to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import trio

from signald.client import Client, connect


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(url: str, clients: int, messages: int, room: str) -> None:
    expected = clients * messages * (clients - 1)
    latencies: list[float] = []
    all_in = trio.Event()
    joined = 0
    done = trio.Event()

    def progress() -> None:
        width = 40
        filled = width * len(latencies) // max(1, expected)
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {len(latencies)}/{expected}", end="",
              file=sys.stderr, flush=True)

    async def member(index: int) -> None:
        nonlocal joined
        async with connect(url, user=f"load-{index}") as client:
            received = client.events("chat.message")
            await client.join(room)
            joined += 1
            if joined == clients:
                all_in.set()
            await all_in.wait()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all, client)
                async for event in received:
                    sent_at = float(event.data["body"].split(":")[2])
                    latencies.append(trio.current_time() - sent_at)
                    if len(latencies) % max(1, expected // 50) == 0:
                        progress()
                    if len(latencies) == expected:
                        done.set()

    async def send_all(client: Client) -> None:
        for number in range(messages):
            body = f"{client.user_id}:{number}:{trio.current_time():.6f}"
            await client.request("chat.send", {"scope": room, "body": body})

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(member, index)
        await done.wait()
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()  # the members wait for more events that will not come
    progress()
    print(file=sys.stderr)
    ms = [value * 1000 for value in latencies]
    print(f"delivered {len(latencies)} messages in {elapsed:.2f}s: {len(latencies) / elapsed:.0f} msgs/s")
    print(f"latency ms: p50 {percentile(ms, 0.5):.1f}  p90 {percentile(ms, 0.9):.1f}  "
          f"p99 {percentile(ms, 0.99):.1f}  mean {statistics.fmean(ms):.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8765/")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--room", default="load")
    args = parser.parse_args()
    if args.clients < 2:
        parser.error("--clients must be at least 2 (someone has to receive)")
    trio.run(run, args.url, args.clients, args.messages, args.room)
    return 0


if __name__ == "__main__":
    sys.exit(main())
