"""How long a daemon with N connected clients takes from SIGTERM to its exit, and what the clients see.

    python -m bench.shutdown --sizes 5000 19000 [--baseline REV] [--mute K] [--profile] [--json OUT]

N clients (one process, the storm's cheap client) connect from 40 source addresses and join one of
:data:`bench.storm.STORM_ROOMS` rooms, as before the reconnect storm (g); once the join chatter has
drained the daemon gets SIGTERM. Reported, in seconds from the SIGTERM: when the port could be
bound again by a new daemon (a probe binds it with ``SO_REUSEADDR``, as trio's listeners do), when
the last client saw its connection end, and when the process was gone; and how many clients got
the close code 1001 (the contract's "server shutting down"). With ``--baseline REV`` the same is
measured for that commit in the same run (server order alternates per size); ``--mute K`` makes K of
the clients stop reading just before the SIGTERM (they never answer the close frame: a stuck or
vanished client, which the daemon waits for at most until its deadlines); ``--profile`` runs
each daemon under :mod:`bench.sigprofile`, which profiles only from the SIGTERM on, and prints the
top functions of the shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import pstats
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baseline import before_spec as baseline_spec
from bench.baseline import check_imports, checkout, resolve
from bench.procs import CLIENT_CPU, SPECS, Server, ServerSpec, pin_to, raise_nofile, running
from bench.runner import RESULTS_DIR
from bench.storm import SOURCES, STORM_ROOMS
from bench.wsclient import Conn, Stats, connect_many, quiet, run_loop


@dataclass
class Ends:
    """When each client's connection ended (perf_counter), and with which close code."""

    at: list[float]
    codes: dict[int | None, int]


def _bindable(host: str, port: int) -> bool:
    """Could a restarted daemon bind ``host:port`` now (the old listener closed)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def at_level(spec: ServerSpec, level: str) -> ServerSpec:
    """``spec`` with ``--log-level LEVEL`` (the bench's servers log at ``warning``; ``info``, the
    default, adds an audit line per connection closed)."""
    def argv(tmp: str) -> list[str]:
        args = spec.argv(tmp)
        i = args.index("--log-level")
        return [*args[:i + 1], level, *args[i + 2:]]
    return dataclasses.replace(spec, argv=argv)


async def measure(spec: ServerSpec, n: int, tag: str, profile: Path | None, mute: int = 0) -> dict[str, Any]:
    """Connect ``n`` clients to a fresh daemon of ``spec``, SIGTERM it, time what follows."""
    wrap = ["-m", "bench.sigprofile", "-o", str(profile)] if profile is not None else None
    async with running(spec, wrap=wrap) as server:
        stats = Stats()
        users = [f"sd{n}-{tag}-u{i}" for i in range(n)]
        rooms = [f"sd{n}-{tag}-r{i % STORM_ROOMS}" for i in range(n)]
        t_connect = time.perf_counter()
        conns, failed = await connect_many(spec.dialect, server.host, server.port, users, stats, concurrency=100,
                                           local_hosts=SOURCES, rooms=rooms, timeout_s=120)
        connect_s = time.perf_counter() - t_connect
        await quiet(stats, interval=0.5, limit_s=300)
        for conn in conns[:mute]:  # stuck: the close frame waits in its socket, unanswered
            assert conn.transport is not None
            conn.transport.pause_reading()
        result = await _sigterm(server, conns[mute:], profile is not None)
        for conn in conns[:mute]:
            assert conn.transport is not None
            conn.transport.abort()
        return {"connected": len(conns), "failed": failed, "connect_s": round(connect_s, 2), "mute": mute, **result}


async def _sigterm(server: Server, conns: list[Conn], profiled: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ends = Ends([], {})
    all_gone = loop.create_future()

    def lost(conn: Conn) -> None:
        ends.at.append(time.perf_counter())
        ends.codes[conn.close_code] = ends.codes.get(conn.close_code, 0) + 1
        if len(ends.at) == len(conns) and not all_gone.done():
            all_gone.set_result(None)

    for conn in conns:
        conn.on_lost = lost
    proc = server.proc
    if profiled:
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.2)
    cpu0 = server.process_cpu_seconds()
    exit_at: list[float] = []

    def wait_exit() -> None:
        proc.wait()
        exit_at.append(time.perf_counter())

    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    exited = asyncio.ensure_future(asyncio.to_thread(wait_exit))
    cpu = cpu0
    bindable_s: float | None = None
    while not exited.done():
        with contextlib.suppress(Exception):
            cpu = server.process_cpu_seconds()
        if bindable_s is None and _bindable(server.host, server.port):
            bindable_s = time.perf_counter() - t0
        await asyncio.sleep(0.005)
    await exited
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(all_gone, 30)
    if bindable_s is None and _bindable(server.host, server.port):
        bindable_s = exit_at[0] - t0
    return {
        "exit_s": round(exit_at[0] - t0, 3),
        "port_free_s": None if bindable_s is None else round(bindable_s, 3),
        "clients_closed_s": round(max(ends.at) - t0, 3) if ends.at else None,
        "clients_closed_p50_s": round(sorted(ends.at)[len(ends.at) // 2] - t0, 3) if ends.at else None,
        "close_1001": ends.codes.get(1001, 0),
        "close_other": {str(k): v for k, v in ends.codes.items() if k != 1001},
        "not_closed": len(conns) - len(ends.at),
        "shutdown_cpu_s": round(cpu - cpu0, 3),
        "exit_code": proc.returncode,
    }


def summary(profile: Path, top: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top + 10)
    return out.getvalue()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    specs: list[ServerSpec] = [SPECS["signald"]]
    results: dict[str, Any] = {"sizes": args.sizes, "rooms": STORM_ROOMS}
    with contextlib.ExitStack() as stack:
        if args.baseline:
            commit = resolve(args.baseline)
            tree = stack.enter_context(checkout(commit))
            specs.append(baseline_spec(tree, commit))
            results["baseline"] = commit
        check_imports(specs)
        specs = [at_level(spec, args.log_level) for spec in specs]
        results["log_level"] = args.log_level
        for k, n in enumerate(args.sizes):
            order = specs if k % 2 == 0 else specs[::-1]
            for spec in order:
                where = args.json.parent if args.json else RESULTS_DIR
                profile = where / f"shutdown-{spec.name}-{n}.prof" if args.profile else None
                metrics = await measure(spec, n, f"{spec.name[-1]}{k}", profile, args.mute)
                key = f"{spec.name}_{n}"
                results[key if key not in results else f"{key}_{k}"] = metrics  # a size given again: kept too
                print(f"{spec.name} n={n}: {json.dumps(metrics)}", flush=True)
                if profile is not None:
                    text = summary(profile)
                    profile.with_suffix(".txt").write_text(text)
                    print(text[:5000], flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000])
    parser.add_argument("--baseline", help="also measure this commit, in the same run")
    parser.add_argument("--profile", action="store_true",
                        help="profile each daemon from its SIGTERM on (stats beside --json, else in bench/results)")
    parser.add_argument("--mute", type=int, default=0, help="clients that stop reading before the SIGTERM")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--log-level", default="warning", help="the daemons' (default warning, as in the bench)")
    args = parser.parse_args()
    pin_to(CLIENT_CPU)
    raise_nofile()
    results = run_loop(run(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
