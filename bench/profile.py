"""``python -m bench --profile``: where signald's CPU goes under the largest fan-out workload.

Starts signald under ``cProfile`` (pinned like in the benchmark), runs one round of workload (b)
at the largest member count, stops the daemon with SIGTERM (cProfile writes its stats on the
clean exit), and prints the top functions by own time and by cumulative time. The raw stats are
kept in ``bench/results/signald-fanout.prof`` (open with ``python -m pstats`` or snakeviz).
"""

from __future__ import annotations

import dataclasses
import io
import pstats

from bench.procs import SPECS, running
from bench.runner import RESULTS_DIR
from bench.workloads import Sizes, fanout

PROFILE = RESULTS_DIR / "signald-fanout.prof"
SUMMARY = RESULTS_DIR / "signald-fanout-profile.txt"


async def profile_fanout(sizes: Sizes) -> int:
    members = max(sizes.fanout_members)
    sizes = dataclasses.replace(sizes, fanout_members=(members,))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    async with running(SPECS["signald"], wrap=["-m", "cProfile", "-o", str(PROFILE)]) as server:
        metrics = await fanout(server, sizes, "profile")
    print(f"fan-out under cProfile ({members} members): {metrics}")
    out = io.StringIO()
    stats = pstats.Stats(str(PROFILE), stream=out)
    stats.strip_dirs()
    out.write(f"signald under cProfile, workload (b), {members} members: {metrics}\n\n== by own time ==\n")
    stats.sort_stats("tottime").print_stats(30)
    out.write("\n== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(40)
    SUMMARY.write_text(out.getvalue())
    print(out.getvalue()[:6000])
    print(f"full stats: {PROFILE}\nsummary: {SUMMARY}")
    return 0
