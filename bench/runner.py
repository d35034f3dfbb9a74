"""Run the workloads, servers interleaved (A B C, then C B A, ...), and judge the targets.

Every (workload, round, server) gets a freshly started server process, so a server's earlier
rounds never warm up (or fragment) a later one. The value shown per server is the median over
rounds; ratios are signald's median over the peer's median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.baseline import BEFORE, registered, with_before
from bench.pgserver import for_bench
from bench.procs import (
    CLIENT_CPU,
    SERVER_CPU,
    SPECS,
    client_cpu_seconds,
    machine_busy_seconds,
    pin_to,
    quiet_machine,
    raise_nofile,
    running,
)
from bench.redisserver import for_bench as redis_for_bench
from bench.table import print_table
from bench.workloads import FULL, QUICK, WORKLOADS, Sizes
from bench.wsclient import run_loop

RESULTS_DIR = Path(__file__).resolve().parent / "results"

GB = 1.5 * 1024  # MiB: the (f) memory budget for 50,000 connections


@dataclass(frozen=True)
class Target:
    """One target of the issue, judged on the medians of one run."""

    workload: str
    metric: str
    text: str
    op: str  # ">=", "<=", "<"
    bound: float
    peer: str | None = None  # ratio signald/peer when set, else an absolute value of signald's
    server: str = "signald"
    unit: str = ""


def targets_for(sizes: Sizes) -> list[Target]:
    out: list[Target] = []
    for n in sizes.fanout_members:
        out += [
            Target("b", f"rate_{n}", f"fan-out delivered msgs/s, {n} members, vs python-socketio", ">=", 4.0,
                   "socketio"),
            Target("b", f"rate_{n}", f"fan-out delivered msgs/s, {n} members, vs websockets", ">=", 1.2,
                   "websockets"),
        ]
    for n in sizes.fanout_members:  # the same, free of the load client's ceiling
        out += [
            Target("b", f"per_core_{n}", f"fan-out deliveries per server CPU-second, {n} members, vs python-socketio",
                   ">=", 4.0, "socketio"),
            Target("b", f"per_core_{n}", f"fan-out deliveries per server CPU-second, {n} members, vs websockets",
                   ">=", 1.2, "websockets"),
        ]
    out += [
        Target("a", "p50_ms", "ack round trip p50 (durable) vs python-socketio", "<=", 0.8, "socketio"),
        Target("a", "p99_ms", "ack round trip p99 (durable) vs python-socketio", "<=", 0.7, "socketio"),
        Target("a", "p50_ms", "ack round trip p50 (durable) vs the websockets echo (stores nothing)", "<=", 1.3,
               "websockets"),
        Target("a", "cpu_us_per_send", "server CPU per durable chat.send (one client)", "<=", 80.0, unit="µs"),
    ]
    out += [Target("c", f"rss_kb_{n}", f"idle memory per connection at {n} vs python-socketio", "<=", 0.6,
                   "socketio") for n in sizes.idle_sizes]
    out += [Target("d", "rate", "connections/s (handshake + welcome), kept open, vs websockets", ">=", 1.2,
                   "websockets"),
            Target("d", "closed_rate", "connections/s (handshake + welcome), each closed after set-up, vs websockets",
                   ">=", 1.2, "websockets")]
    out.append(Target("e", "rate", "durable acked chat.send/s vs the same with --db :memory:", ">=", 0.7,
                      "signald-mem"))
    out.append(Target("e", "rate", "durable acked chat.send/s on PostgreSQL vs on SQLite", ">=", 0.8, "signald",
                      server="signald-pg"))
    n = sizes.scale_connections
    out += [
        Target("f", "held", f"{n:,} idle connections held by one process", ">=", n, unit="conns"),
        Target("f", "rss_mb_at_50k", "RSS with 50,000 idle connections (linear from those held)", "<=", GB,
               unit="MiB"),
        Target("f", "idle_cpu_pct_at_50k", "idle CPU with 50,000 connections, % of one core (linear from those "
               "held)", "<", 5.0, unit="%"),
    ]
    for n in sizes.storm_sizes:
        out += [
            Target("g", f"resumed_all_s_{n}", f"storm of {n:,} clients: 100% resumed after SIGTERM", "<=", 10.0,
                   unit="s"),
            Target("g", f"refused_{n}", f"storm of {n:,} clients: handshakes refused", "<=", 0, unit="refused"),
            Target("g", f"missed_{n}", f"storm of {n:,} clients: changes missed", "<=", 0, unit="changes"),
            Target("g", f"duplicated_{n}", f"storm of {n:,} clients: changes duplicated", "<=", 0, unit="changes"),
        ]
    out.append(Target("h", "x_added_p99_ms", f"cross-node delivery at {sizes.cluster_rate:,.0f} events/s: p99 added "
                      "over the same node", "<=", 2.0, server="signald-cluster", unit="ms"))
    out += [Target("h", f"rate_{n}", f"fan-out delivered msgs/s, {n} members, one node with the Redis broker vs "
                   "without (both on PostgreSQL)", ">=", 0.7, "signald-pg", server="signald-broker")
            for n in sizes.fanout_members]
    out.append(Target("h", "idle_held", f"{sizes.cluster_idle:,} idle connections held by three nodes", ">=",
                      sizes.cluster_idle, server="signald-cluster", unit="conns"))
    return out


def _ok(value: float, op: str, bound: float) -> bool:
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]


def median_of(rounds: list[dict[str, Any]], metric: str) -> float | None:
    values = [r[metric] for r in rounds if isinstance(r.get(metric), int | float) and not isinstance(
        r.get(metric), bool) and math.isfinite(r[metric])]
    return statistics.median(values) if values else None


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """workload -> server -> metric -> median over rounds."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for wl, servers in raw.items():
        for server, rounds in servers.items():
            metrics = {k for r in rounds for k in r}
            for metric in sorted(metrics):
                value = median_of(rounds, metric)
                if value is not None:
                    summary.setdefault(wl, {}).setdefault(server, {})[metric] = value
    return summary


def judge(summary: dict[str, dict[str, dict[str, float]]], sizes: Sizes) -> list[dict[str, Any]]:
    verdicts = []
    for t in targets_for(sizes):
        mine = summary.get(t.workload, {}).get(t.server, {}).get(t.metric)
        entry: dict[str, Any] = {**asdict(t), "signald": mine, "peer_value": None, "value": None, "verdict": "n/a"}
        if mine is not None:
            if t.peer is not None:
                peer = summary.get(t.workload, {}).get(t.peer, {}).get(t.metric)
                entry["peer_value"] = peer
                if peer:
                    entry["value"] = mine / peer
            else:
                entry["value"] = mine
            if entry["value"] is not None:
                entry["verdict"] = "PASS" if _ok(entry["value"], t.op, t.bound) else "MISS"
        verdicts.append(entry)
    return verdicts


# ------------------------------------------------------------------------------------ running

def signald_source() -> dict[str, Any]:
    """Which signald was measured: the commit, whether signald/ had local changes, a digest of its code."""
    import hashlib
    import subprocess

    repo = RESULTS_DIR.parent.parent
    digest = hashlib.sha256()
    for path in sorted((repo / "signald").rglob("*.py")):
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes())
    info: dict[str, Any] = {"digest": digest.hexdigest()[:16]}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                        text=True, timeout=10).stdout.strip()
        info["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--", "signald"], cwd=repo,
                                            capture_output=True, text=True, timeout=10).stdout.strip())
    return info


def environment() -> dict[str, Any]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("trio", "trio-websocket", "wsproto", "msgspec", "python-socketio", "python-engineio", "aiohttp",
                 "websockets", "psutil"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    mem_total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model, "cores": os.cpu_count(), "memory_gib": round(mem_total / 2**30, 1),
        "python": platform.python_version(), "platform": platform.platform(terse=True),
        "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU, "versions": versions,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "signald_source": signald_source(),
    }


NOISY_PCT = 25.0  # other processes' CPU during a run, % of one core, above which the run is repeated


def servers_of(key: str, baseline: bool) -> tuple[str, ...]:
    """The servers workload ``key`` runs, in the order of its first round."""
    servers = WORKLOADS[key].servers
    return with_before(servers) if baseline else servers


async def run_all(keys: list[str], sizes: Sizes, log: Any = print, *, retries: int = 2,
                  wait_quiet_s: float = 120.0, baseline: bool = False) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every workload, its servers interleaved round by round (with ``signald-before`` if ``baseline``).

    Before each run, wait (at most ``wait_quiet_s``) for the machine to be idle; a run during
    which other processes used more than ``NOISY_PCT`` of a core is repeated (``retries`` times).
    """
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key in keys:
        workload = WORKLOADS[key]
        log(f"({key}) {workload.title}")
        # Storm sizes a server failed at, not run again in its later rounds: python-socketio loses
        # connections while 19,000 clients set up, and each failed try cost six minutes.
        failed_sizes: dict[str, set[int]] = {}
        for round_no in range(sizes.rounds):
            servers = servers_of(key, baseline)
            order = servers if round_no % 2 == 0 else tuple(reversed(servers))
            for name in order:
                skipped = failed_sizes.setdefault(name, set())
                run_sizes = replace(sizes, storm_sizes=tuple(n for n in sizes.storm_sizes if n not in skipped))
                for attempt in range(1, retries + 2):
                    metrics = await run_one(key, name, run_sizes, round_no, wait_quiet_s, log)
                    if metrics.get("foreign_cpu_pct", 0) <= NOISY_PCT or attempt > retries:
                        break
                    log(f"    round {round_no + 1} {name}: other processes used {metrics['foreign_cpu_pct']:.0f}% "
                        "of a core meanwhile; running it again")
                metrics.update({f"skipped_{n}": "failed in an earlier round" for n in sorted(skipped)})
                skipped.update(int(metric[6:]) for metric in metrics if metric.startswith("error_"))
                raw.setdefault(key, {}).setdefault(name, []).append(metrics)
    return raw


async def run_one(key: str, name: str, sizes: Sizes, round_no: int, wait_quiet_s: float, log: Any) -> dict[str, Any]:
    """One workload against one fresh server; adds ``foreign_cpu_pct`` (other processes' CPU meanwhile)."""
    deadline = time.monotonic() + wait_quiet_s
    while wait_quiet_s and time.monotonic() < deadline and not await asyncio.to_thread(quiet_machine):
        pass  # someone else is using the machine: give them a moment
    nofile = {"f": sizes.scale_connections + 1000, "g": max(sizes.storm_sizes, default=0) * 2 + 1000,
              "h": sizes.cluster_idle // 3 + 1000}.get(key)
    t0 = time.perf_counter()
    try:
        async with running(SPECS[name], nofile=nofile) as server:
            busy0, own0, server0, w0 = (machine_busy_seconds(), client_cpu_seconds(), server.cpu_seconds(),
                                        time.perf_counter())
            metrics = await WORKLOADS[key].run(server, sizes, f"{round_no}")
            if not server.alive():
                raise RuntimeError(f"{name} died:\n{server.stderr_tail()}")
            foreign = (machine_busy_seconds() - busy0) - (client_cpu_seconds() - own0) \
                - (server.cpu_seconds() - server0) - metrics.get("helper_cpu_s", 0.0)
            metrics["foreign_cpu_pct"] = max(0.0, foreign) / (time.perf_counter() - w0) * 100
    except Exception as exc:  # one failed run is reported, the others go on
        metrics = {"error": f"{type(exc).__name__}: {exc}"}
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()}
    log(f"    round {round_no + 1}/{sizes.rounds} {name:12} {time.perf_counter() - t0:5.1f}s {shown}")
    return metrics


def notes_for(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    notes = []
    bound: dict[tuple[str, str, str], list[float]] = {}
    for key, servers in raw.items():
        for server, rounds in servers.items():
            for i, r in enumerate(rounds):
                if "error" in r:
                    notes.append(f"({key}) {server} round {i + 1} failed: {r['error']}")
                notes.extend(f"({key}) {server} round {i + 1}, size {metric[6:]}, failed: {value}"
                             for metric, value in r.items() if metric.startswith("error_"))
                notes.extend(f"({key}) {server} round {i + 1}, size {metric[8:]}, not run: {value}"
                             for metric, value in r.items() if metric.startswith("skipped_"))
                for metric, value in r.items():
                    if metric.startswith("complete_") and value is False:
                        notes.append(f"({key}) {server} round {i + 1}: {metric[9:]} members, only "
                                     f"{r.get('delivered_' + metric[9:])} of {r.get('expected_' + metric[9:])} "
                                     "deliveries arrived before the timeout")
                    long_enough = r.get(f"elapsed_s_{metric[15:]}", 0) >= 2.0  # CPU clock ticks are 10 ms
                    if metric.startswith("client_cpu_pct_") and isinstance(value, float) and value > 90 and long_enough:
                        bound.setdefault((key, server, metric[15:]), []).append(value)
                if r.get("foreign_cpu_pct", 0) > NOISY_PCT:
                    notes.append(f"({key}) {server} round {i + 1}: other processes on the machine used "
                                 f"{r['foreign_cpu_pct']:.0f}% of a core during the run (noise)")
                if "limited_by" in r and i == 0:
                    notes.append(f"({key}) {server}: attempted {r['attempted']:,} of {r['target']:,} connections: "
                                 f"{r['limited_by']}")
    for (key, server, members), values in bound.items():
        notes.append(f"({key}) {server}, {members} members: the load client was at {min(values):.0f}-"
                     f"{max(values):.0f}% of its core in {len(values)} of {len(raw[key][server])} rounds, so the "
                     "delivered rate is (partly) the client's ceiling; server CPU per delivery still holds")
    return notes


def source_notes(env: dict[str, Any]) -> list[str]:
    start, end = env.get("signald_source", {}), env.get("signald_source_at_end", {})
    if start.get("digest") != end.get("digest"):
        return ["signald's source changed while this run was going on (started at code digest "
                f"{start.get('digest')}, ended at {end.get('digest')}): servers started later ran the newer code"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="signald vs python-socketio vs websockets, same machine, same run, interleaved.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (CI smoke, about 90 s)")
    parser.add_argument("--only", help="comma-separated workloads to run, from a,b,c,d,e,f,g,h (default: all)")
    parser.add_argument("--rounds", type=int, help="rounds per server (default 3; quick 1)")
    parser.add_argument("--scale", type=int, help="connections to aim for in (f) (default 50000)")
    parser.add_argument("--cluster-idle", type=int, help="idle connections over the three nodes of (h) (default 50000; "
                        "opening 50,000 takes about 10 minutes)")
    parser.add_argument("--storm-timeout", type=float, help="seconds a storm in (g) may take before it is reported "
                        "unfinished (default 120; 19,000 clients needed about 200 s here)")
    parser.add_argument("--cluster-rate", type=float, help="chat.send/s of (h)'s cross-node latency (default 5000, "
                        "the target's rate)")
    parser.add_argument("--storm-sizes", help="clients per reconnect storm in (g), comma-separated (default "
                        "1000,5000; the issue's largest is 19000: the server and this process then need a file limit "
                        "of about 19,100, raised to the hard limit by the bench)")
    parser.add_argument("--out", help="where to save the results JSON (default bench/results/latest.json; "
                        "quick: bench/results/quick.json; --baseline: bench/results/baseline-<commit>[-quick].json)")
    parser.add_argument("--report", action="store_true",
                        help="do not run: write docs/benchmarks.md and docs/benchmarks.png from the saved results")
    parser.add_argument("--results", default=str(RESULTS_DIR / "latest.json"), help="results JSON for --report")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run signald as of git commit REV (server 'signald-before'), interleaved with "
                        "the others, and print signald / signald-before for every metric")
    parser.add_argument("--profile", nargs="?", const="b", metavar="WORKLOAD",
                        help="do not run the workloads: profile signald (cProfile) under one workload (default b, "
                        "the largest fan-out; d: connections; g: the reconnect storm; WORKLOAD:SERVER for another "
                        "signald server, e.g. e:signald-pg, the durable sends on PostgreSQL)")
    args = parser.parse_args(argv)

    if args.report:
        from bench.report import write_report

        result = json.loads(Path(args.results).read_text())
        for path in write_report(result):
            print(f"wrote {path}")
        return 0

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the servers on the way out
    pin_to(CLIENT_CPU)
    raise_nofile()
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**asdict(sizes), "rounds": args.rounds})
    if args.scale:
        sizes = Sizes(**{**asdict(sizes), "scale_connections": args.scale})
    if args.cluster_idle:
        sizes = Sizes(**{**asdict(sizes), "cluster_idle": args.cluster_idle})
    if args.storm_timeout:
        sizes = Sizes(**{**asdict(sizes), "storm_timeout_s": args.storm_timeout})
    if args.cluster_rate:
        sizes = Sizes(**{**asdict(sizes), "cluster_rate": args.cluster_rate})
    if args.storm_sizes:
        sizes = Sizes(**{**asdict(sizes), "storm_sizes": tuple(int(n) for n in args.storm_sizes.split(","))})
    if args.profile:
        from bench.profile import profile_workload

        return run_loop(profile_workload(sizes, args.profile))
    keys = [k.strip() for k in args.only.split(",")] if args.only else list(WORKLOADS)
    unknown = [k for k in keys if k not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")

    env = environment()
    print(f"signald bench: {'quick' if args.quick else 'full'}, workloads {','.join(keys)}, {sizes.rounds} round(s); "
          f"servers on CPU {SERVER_CPU}, load client on CPU {CLIENT_CPU}; {env['cpu_model']}, {env['cores']} cores")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {}
        if args.baseline:
            try:
                extra["baseline"] = stack.enter_context(registered(args.baseline))
            except (ValueError, RuntimeError) as exc:
                parser.error(str(exc))
            extra["servers"] = {key: servers_of(key, True) for key in keys}
            print(f"signald-before: {args.baseline} ({extra['baseline']['commit']}), from {SPECS[BEFORE].cwd}")
        on_pg = {"signald-pg", "signald-broker", "signald-cluster"}
        if any(on_pg & set(servers_of(key, False)) for key in keys):
            try:  # one durable server for the run, on the servers' core: the daemon's database shares its CPU
                pg = stack.enter_context(for_bench(SERVER_CPU))
                print(f"signald-pg: PostgreSQL from {pg.bin_dir} on port {pg.port}, pinned to CPU {SERVER_CPU}")
            except Exception as exc:  # its rounds fail, saying so; the others run
                print(f"signald-pg: no PostgreSQL for the bench ({type(exc).__name__}: {exc})")
        if any({"signald-broker", "signald-cluster"} & set(servers_of(key, False)) for key in keys):
            try:  # the broker of (h), on the servers' core too
                redis = stack.enter_context(redis_for_bench(SERVER_CPU))
                print(f"signald-broker: redis-server on port {redis.port}, pinned to CPU {SERVER_CPU}")
            except Exception as exc:
                print(f"signald-broker: no Redis for the bench ({type(exc).__name__}: {exc})")
        raw = run_loop(run_all(keys, sizes, log=lambda line: print(line, flush=True), baseline=bool(args.baseline),
                               retries=0 if args.quick else 2, wait_quiet_s=0 if args.quick else 120))
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    env["signald_source_at_end"] = signald_source()
    summary = summarize(raw)
    result = {
        "mode": "quick" if args.quick else "full", "environment": env, "sizes": asdict(sizes), "workloads": keys,
        "raw": raw, "summary": summary, "verdicts": judge(summary, sizes),
        "notes": notes_for(raw) + source_notes(env),
        "duration_s": round(time.perf_counter() - started, 1), "command": " ".join(["python -m bench", *sys.argv[1:]]),
        **extra,
    }
    print_table(result)
    default_out = "quick.json" if args.quick else "latest.json"
    if args.baseline:  # not latest.json: --report publishes that one
        default_out = f"baseline-{extra['baseline']['commit']}{'-quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else RESULTS_DIR / default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nsaved {out} ({result['duration_s']} s)")
    errors = [n for n in result["notes"] if "failed:" in n]
    return 1 if errors else 0
