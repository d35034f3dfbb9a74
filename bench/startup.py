"""How long ``signald serve`` takes from spawn to its ready line, on an empty or a filled database.

    python -m bench.startup [--runs 15] [--history 2000] [--baseline REV] [--from-source] [--importtime N]
                            [--profile OUT.prof] [--json OUT]

Each run starts the daemon exactly as the bench's ``signald`` server (``SPECS["signald"]``: same
argv, environment and core), on port 0, and times from just before the ``fork`` to the moment the
``ready on ws://...`` line (:data:`bench.procs.READY`) arrives on its stderr, read from a pipe (the
bench's own ``_ready`` polls a file, which adds up to its poll interval); then SIGTERM. Every run of
one server uses the same database, as a restart does. ``--history N`` fills it first with
:data:`bench.storm.STORM_ROOMS` rooms of N messages each (plus read receipts and last-seen times):
the storm's (g) rooms, with far more history than the storm itself leaves in them. With
``--baseline REV`` that commit is started in the same run, alternating with today's.
``--from-source`` starts them without a bytecode cache (every module compiled at every start).
``--importtime N`` adds N starts of each under ``python -X importtime`` and prints the median self
time per top-level package of the modules imported before the ready line. ``--profile OUT`` runs
one more start of today's code under cProfile up to the ready line (the profile ends there) and
prints its top functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.baseline import before_spec, check_imports, checkout, resolve
from bench.procs import READY, SERVER_CPU, SPECS, ServerSpec, spawn_env
from bench.storm import STORM_ROOMS

# Run as ``python -c``: cProfile from the first import to the ready line, then write OUT and stop.
PROFILE_TO_READY = """
import cProfile, os, sys
profile = cProfile.Profile()
profile.enable()
import signald.logfmt as logfmt
announce = logfmt.announce
def ready_then_stop(*args, **kwargs):
    announce(*args, **kwargs)
    profile.disable()
    profile.dump_stats(os.environ["BENCH_STARTUP_PROFILE"])
    os._exit(0)
logfmt.announce = ready_then_stop
from signald.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _preexec() -> None:
    if SERVER_CPU is not None:
        os.sched_setaffinity(0, {SERVER_CPU})


def server_env(spec: ServerSpec, *, from_source: bool = False) -> dict[str, str]:
    """The bench's environment for ``spec``; ``from_source``: no bytecode cache, every module compiled
    at every start (what the bench's servers did before ``spawn_env`` gave them one)."""
    env = spawn_env(spec)
    if from_source:
        env.pop("PYTHONPYCACHEPREFIX", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def start_once(spec: ServerSpec, tmp: str, timeout_s: float = 30.0, *, from_source: bool = False) -> float:
    """Seconds from spawn to the ready line of one daemon of ``spec`` on ``tmp``'s database; stops it."""
    argv = spec.argv(tmp)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=spec.cwd, env=server_env(spec, from_source=from_source), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_preexec)
    assert proc.stderr is not None
    seen: list[bytes] = []
    try:
        for line in proc.stderr:
            if READY.search(line.decode(errors="replace")):
                return time.perf_counter() - t0
            seen.append(line)
            if time.perf_counter() - t0 > timeout_s:
                break
        raise RuntimeError(f"{spec.name} did not start (exit {proc.poll()}):\n{b''.join(seen[-20:]).decode()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def fill_history(db: str, per_room: int) -> int:
    """``STORM_ROOMS`` rooms of ``per_room`` messages each in the SQLite file ``db``; messages stored."""
    import trio

    from signald.history.factory import make_store
    from signald.state.dburl import sqlite_url

    async def fill() -> int:
        sent = 0
        async with make_store(sqlite_url(db)) as store:
            for r in range(STORM_ROOMS):
                room = f"room-{r}"
                last = None
                for i in range(per_room):
                    last, _ = await store.send(room=room, user_id=f"user-{i % 40}", body=f"message {i} of {room}")
                    sent += 1
                assert last is not None
                for u in range(40):
                    await store.mark_read(user_id=f"user-{u}", room=room, message_id=last.id)
            await store.set_last_seen({f"user-{u}": "2026-12-07T08:00:00.000Z" for u in range(40)})
        return sent

    return trio.run(fill)


IMPORTED = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)\s*$")


def imports_to_ready(spec: ServerSpec, tmp: str) -> dict[str, int]:
    """One start under ``-X importtime`` up to the ready line: self time (µs) per imported module."""
    argv = spec.argv(tmp)
    proc = subprocess.Popen([argv[0], "-X", "importtime", *argv[1:]], cwd=spec.cwd, env=server_env(spec),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_preexec)
    assert proc.stderr is not None
    found: dict[str, int] = {}
    try:
        for line in proc.stderr:
            if READY.search(line):
                return found
            if match := IMPORTED.match(line):
                found[match.group(3)] = int(match.group(1))
        raise RuntimeError(f"{spec.name} did not start (exit {proc.poll()})")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def print_importtime(specs: list[ServerSpec], dirs: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    """Median self time (ms) per top-level package over ``runs`` starts of each server; printed, returned."""
    per: dict[str, dict[str, list[float]]] = {spec.name: {} for spec in specs}
    for run in range(runs):
        for spec in specs:
            found = imports_to_ready(spec, dirs[spec.name])
            packages: dict[str, float] = {"(all modules)": sum(found.values()) / 1e3, "(modules, count)": len(found)}
            for name, us in found.items():
                top = name.split(".")[0]
                packages[top] = packages.get(top, 0.0) + us / 1e3
            for key in set(packages) | set(per[spec.name]):
                per[spec.name].setdefault(key, [0.0] * run).append(packages.get(key, 0.0))
    medians = {name: {k: statistics.median(v) for k, v in table.items()} for name, table in per.items()}
    keys = sorted({k for table in medians.values() for k in table},
                  key=lambda k: -max(table.get(k, 0.0) for table in medians.values()))
    print(f"\n-X importtime up to the ready line, self ms per top-level package, median of {runs} starts:")
    print(f"{'':28}" + "".join(f"{spec.name:>16}" for spec in specs))
    for key in keys[:25]:
        print(f"{key:28}" + "".join(f"{medians[spec.name].get(key, 0.0):16.1f}" for spec in specs))
    return medians


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {"runs": len(ordered), "median_s": statistics.median(ordered), "p25_s": quartiles[0],
            "p75_s": quartiles[2], "min_s": ordered[0], "max_s": ordered[-1]}


def profile_start(spec: ServerSpec, tmp: str, out: Path) -> None:
    argv = spec.argv(tmp)
    assert argv[1:3] == ["-m", "signald"], argv
    env = {**spawn_env(spec), "BENCH_STARTUP_PROFILE": str(out)}
    subprocess.run([argv[0], "-c", PROFILE_TO_READY, *argv[3:]], cwd=spec.cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_preexec, timeout=60)
    stats = pstats.Stats(str(out))
    print(f"\ncProfile of one start up to the ready line ({out}), by cumulative time:")
    stats.sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="starts per server (default 15)")
    parser.add_argument("--history", type=int, default=0, metavar="N",
                        help=f"fill the database with {STORM_ROOMS} rooms of N messages first")
    parser.add_argument("--baseline", metavar="REV", help="also start this commit, alternating")
    parser.add_argument("--from-source", action="store_true",
                        help="no bytecode cache: compile every module at every start")
    parser.add_argument("--importtime", type=int, default=0, metavar="N",
                        help="also N starts of each under -X importtime: self time per package")
    parser.add_argument("--profile", type=Path, metavar="OUT", help="cProfile one more start up to ready")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as root, contextlib.ExitStack() as stack:
        before = None
        if args.baseline:
            commit = resolve(args.baseline)
            before = before_spec(stack.enter_context(checkout(commit)), commit)
        specs = [SPECS["signald"], *([before] if before else [])]
        check_imports(specs)
        dirs = {spec.name: os.path.join(root, spec.name) for spec in specs}
        for d in dirs.values():
            os.mkdir(d)
        stored = 0
        if args.history:
            t = time.perf_counter()
            first = dirs[specs[0].name]
            stored = fill_history(os.path.join(first, "bench.db"), args.history)
            for spec in specs[1:]:
                shutil.copy(os.path.join(first, "bench.db"), os.path.join(dirs[spec.name], "bench.db"))
            mib = os.path.getsize(os.path.join(first, "bench.db")) / 2**20
            print(f"filled the database: {stored} messages in {STORM_ROOMS} rooms, {mib:.1f} MiB, "
                  f"{time.perf_counter() - t:.1f} s")
        for spec in specs:  # the first start creates (or migrates) the schema: not counted
            start_once(spec, dirs[spec.name])
        times: dict[str, list[float]] = {spec.name: [] for spec in specs}
        for i in range(args.runs):
            for spec in specs if i % 2 == 0 else specs[::-1]:
                times[spec.name].append(start_once(spec, dirs[spec.name], from_source=args.from_source))
        results: dict[str, Any] = {"history_messages": stored, "runs": args.runs, "from_source": args.from_source,
                                   "baseline": args.baseline, "servers": {}}
        for spec in specs:
            s = summary(times[spec.name])
            results["servers"][spec.name] = {**s, "times_s": times[spec.name]}
            print(f"{spec.name:16} spawn to ready: median {s['median_s'] * 1e3:.0f} ms "
                  f"(p25 {s['p25_s'] * 1e3:.0f}, p75 {s['p75_s'] * 1e3:.0f}, min {s['min_s'] * 1e3:.0f}, "
                  f"max {s['max_s'] * 1e3:.0f}; {s['runs']} runs)")
        if args.importtime:
            results["importtime_ms"] = print_importtime(specs, dirs, args.importtime)
        if args.profile:
            profile_start(specs[0], dirs[specs[0].name], args.profile)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
