"""A helper load-client process for workload (f): open and hold many idle connections.

    python -m bench.holder --port 8765 --count 10000 --src 127.0.1.1 --prefix h1

Connects ``--count`` connections from source address ``--src`` (one address per holder, so each
gets its own ~28k ephemeral ports), each joining a room of ``--room-size`` members, waits until
the join chatter has drained, prints ``{"held": N, "failed": M}`` on stdout, then keeps answering
heartbeats until its stdin closes; then prints ``{"lost": K}`` (connections that dropped while
held) and resets them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bench.procs import CLIENT_CPU, pin_to, raise_nofile
from bench.wsclient import DIALECTS, Stats, connect_many, quiet, run_loop


async def hold(args: argparse.Namespace) -> None:
    stats = Stats()
    users = [f"{args.prefix}-{i}" for i in range(args.count)]
    rooms = [f"{args.prefix}-room-{i // args.room_size}" for i in range(args.count)] if args.room_size else None
    conns, failed = await connect_many(
        DIALECTS[args.dialect], args.host, args.port, users, stats,
        concurrency=args.concurrency, local_hosts=[args.src], rooms=rooms, timeout_s=args.timeout,
    )
    await quiet(stats, interval=1.0, limit_s=300)
    closed_while_connecting = stats.closed
    print(json.dumps({"held": len(conns), "failed": failed}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the runner closes our stdin
    print(json.dumps({"lost": stats.closed - closed_while_connecting}), flush=True)
    for conn in conns:
        conn.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dialect", default="signald", choices=sorted(DIALECTS))
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--src", default="127.0.0.1", help="source address (127.0.0.0/8)")
    parser.add_argument("--prefix", default="h", help="user and room name prefix")
    parser.add_argument("--room-size", type=int, default=50, help="members per room (0: join no room)")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--timeout", type=float, default=60.0, help="per connection and join")
    args = parser.parse_args()
    pin_to(CLIENT_CPU)
    raise_nofile()
    run_loop(hold(args))


if __name__ == "__main__":
    main()
