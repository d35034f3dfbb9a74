"""``python -m bench.cluster_latency``: (h)'s cross-node latency alone, at several paced rates.

    python -m bench.cluster_latency --rates 1000,2000,3000,5000 [--seconds 6] [--json OUT]

(h) measures the latency an event gains by crossing nodes once, at ``--cluster-rate``, inside a
run that also holds 50,000 idle connections over the three nodes. This runs only that part
(:func:`bench.cluster.cross_node`), at each rate in turn on one set of three nodes, with the
bench's private PostgreSQL and Redis, every server pinned to the server core and this process to
the client core, as in the bench. Per rate it prints the same-node and other-nodes p50/p99, the
added p50/p99, and the CPU per event sent of each server process and of this load client (which
shares nothing with the servers but tells whether the client kept up). Where the p99 target
stops holding on a machine is what the sweep shows.

For a before/after, run it from a worktree of each commit (``PYTHONPATH=<worktree>``): the nodes
import signald from where this process does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from bench.cluster import ServerCPU, cross_node, more_nodes
from bench.pgserver import for_bench
from bench.procs import CLIENT_CPU, SERVER_CPU, SPECS, pin_to, running
from bench.redisserver import for_bench as redis_for_bench
from bench.workloads import Sizes

SHOWN = [("x_rate", "sent/s", ",.0f"), ("x_same_p50_ms", "same p50", ".2f"), ("x_same_p99_ms", "same p99", ".2f"),
         ("x_cross_p50_ms", "cross p50", ".2f"), ("x_cross_p99_ms", "cross p99", ".2f"),
         ("x_added_p50_ms", "added p50", ".2f"), ("x_added_p99_ms", "added p99", ".2f"),
         ("x_cpu_us_node0", "node0 µs", ".0f"), ("x_cpu_us_node1", "node1 µs", ".0f"),
         ("x_cpu_us_pg", "pg µs", ".0f"), ("x_cpu_us_redis", "redis µs", ".0f"),
         ("x_cpu_us_client", "client µs", ".0f"), ("x_missing", "missing", ".0f")]


async def sweep(rates: list[float], seconds: float) -> list[dict[str, Any]]:
    """One cross-node run per rate on one set of three nodes; each run's metrics."""
    out: list[dict[str, Any]] = []
    async with running(SPECS["signald-cluster"]) as first, more_nodes(first, 2) as others:
        nodes = [first, *others]
        helpers = ServerCPU(nodes)
        for i, rate in enumerate(rates):
            sizes = dataclasses.replace(Sizes(), cluster_rate=rate, cluster_seconds=seconds)
            metrics = await cross_node(nodes, helpers, sizes, f"r{i}")
            metrics["rate_asked"] = rate
            print("  " + "  ".join(f"{label} {metrics[key]:{fmt}}" for key, label, fmt in SHOWN), flush=True)
            out.append(metrics)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="1000,2000,3000,5000", help="paced chat.send/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of sending per rate (default 6)")
    parser.add_argument("--json", type=Path, help="write the metrics of every rate here")
    args = parser.parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",")]
    pin_to(CLIENT_CPU)
    with contextlib.ExitStack() as stack:
        stack.enter_context(for_bench(SERVER_CPU))
        stack.enter_context(redis_for_bench(SERVER_CPU))
        results = asyncio.run(sweep(rates, args.seconds))
    if args.json:
        args.json.write_text(json.dumps({"seconds": args.seconds, "rates": results}, indent=1))
    bad = [m for m in results if m["x_missing"] or m["x_failed_acks"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
