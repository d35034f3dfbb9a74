"""``python -m bench --profile [WORKLOAD]``: where signald's CPU goes under one workload.

Starts signald under ``cProfile`` (pinned like in the benchmark), runs one round of the workload
(by default (b), the fan-out, at the largest member count; ``d`` is the connection rate, ``g`` the
reconnect storm at its smallest size), stops the daemon with SIGTERM (cProfile writes its stats on
the clean exit), and prints the top functions by own time and by cumulative time. The raw stats
are kept in ``bench/results/<server>-<name>.prof`` (open with ``python -m pstats`` or snakeviz).
A storm restarts the daemon: the profile is the restarted process's (the storm itself).

``WORKLOAD:SERVER`` profiles another of the bench's signald servers, e.g. ``e:signald-pg`` (the
durable sends on PostgreSQL: the bench's private PostgreSQL is started for it, pinned like the
daemon; for ``signald-broker`` also its Redis). cProfile sees the main (Trio) thread only, not a store's writer thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pstats
from pathlib import Path

from bench.pgserver import for_bench
from bench.procs import SERVER_CPU, SPECS, running
from bench.redisserver import for_bench as redis_for_bench
from bench.runner import RESULTS_DIR
from bench.workloads import WORKLOADS, Sizes

NAMES = {"b": "fanout", "d": "connect", "g": "storm"}
ON_POSTGRES = {"signald-pg", "signald-broker", "signald-cluster"}


def paths(key: str, server: str = "signald") -> tuple[Path, Path]:
    name = NAMES.get(key, key)
    return RESULTS_DIR / f"{server}-{name}.prof", RESULTS_DIR / f"{server}-{name}-profile.txt"


async def profile_workload(sizes: Sizes, key: str = "b") -> int:
    key, _, server_name = key.partition(":")
    spec = SPECS.get(server_name or "signald")
    if spec is None or spec.dialect_name != "signald" or key not in WORKLOADS:
        print(f"--profile {key}:{server_name}: choose a workload from {', '.join(WORKLOADS)} and a signald server "
              f"from {', '.join(n for n, s in SPECS.items() if s.dialect_name == 'signald')}")
        return 2
    if key == "b":
        sizes = dataclasses.replace(sizes, fanout_members=(max(sizes.fanout_members),))
    if key == "g":
        sizes = dataclasses.replace(sizes, storm_sizes=(min(sizes.storm_sizes),))
    profile, summary = paths(key, spec.name)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if spec.name in ON_POSTGRES:
            stack.enter_context(for_bench(SERVER_CPU))
        if spec.name in ON_POSTGRES - {"signald-pg"}:  # and the broker
            stack.enter_context(redis_for_bench(SERVER_CPU))
        async with running(spec, wrap=["-m", "cProfile", "-o", str(profile)]) as server:
            metrics = await WORKLOADS[key].run(server, sizes, "profile")
    print(f"({key}) {spec.name} under cProfile: {metrics}")
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.strip_dirs()
    out.write(f"{spec.name} under cProfile, workload ({key}): {metrics}\n\n== by own time ==\n")
    stats.sort_stats("tottime").print_stats(30)
    out.write("\n== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(40)
    summary.write_text(out.getvalue())
    print(out.getvalue()[:6000])
    print(f"full stats: {profile}\nsummary: {summary}")
    return 0
