"""``python -m bench --profile [WORKLOAD]``: where signald's CPU goes under one workload.

Starts signald under ``cProfile`` (pinned like in the benchmark), runs one round of the workload
(by default (b), the fan-out, at the largest member count; ``d`` is the connection rate, ``g`` the
reconnect storm at its smallest size), stops the daemon with SIGTERM (cProfile writes its stats on
the clean exit), and prints the top functions by own time and by cumulative time. The raw stats
are kept in ``bench/results/signald-<name>.prof`` (open with ``python -m pstats`` or snakeviz).
A storm restarts the daemon: the profile is the restarted process's (the storm itself).
"""

from __future__ import annotations

import dataclasses
import io
import pstats
from pathlib import Path

from bench.procs import SPECS, running
from bench.runner import RESULTS_DIR
from bench.workloads import WORKLOADS, Sizes

NAMES = {"b": "fanout", "d": "connect", "g": "storm"}


def paths(key: str) -> tuple[Path, Path]:
    name = NAMES.get(key, key)
    return RESULTS_DIR / f"signald-{name}.prof", RESULTS_DIR / f"signald-{name}-profile.txt"


async def profile_workload(sizes: Sizes, key: str = "b") -> int:
    if key == "b":
        sizes = dataclasses.replace(sizes, fanout_members=(max(sizes.fanout_members),))
    if key == "g":
        sizes = dataclasses.replace(sizes, storm_sizes=(min(sizes.storm_sizes),))
    profile, summary = paths(key)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    async with running(SPECS["signald"], wrap=["-m", "cProfile", "-o", str(profile)]) as server:
        metrics = await WORKLOADS[key].run(server, sizes, "profile")
    print(f"({key}) under cProfile: {metrics}")
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.strip_dirs()
    out.write(f"signald under cProfile, workload ({key}): {metrics}\n\n== by own time ==\n")
    stats.sort_stats("tottime").print_stats(30)
    out.write("\n== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(40)
    summary.write_text(out.getvalue())
    print(out.getvalue()[:6000])
    print(f"full stats: {profile}\nsummary: {summary}")
    return 0
