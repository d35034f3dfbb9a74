"""What one ``signald health`` probe costs: spawn to exit, CPU, and its imports, against a real daemon.

    python -m bench.health [--runs 20] [--baseline REV] [--from-source] [--json OUT]

A container's HEALTHCHECK starts ``signald health http://127.0.0.1:8765/readyz`` every 15 s next to
the daemon (Dockerfile), so each probe's CPU is taken from the machine the daemon runs on. One
daemon (today's ``signald serve``, the bench's environment: :func:`bench.procs.spawn_env`) serves
every probe. For each command below, each tree runs it ``--runs`` times for the wall time (spawn
to exit) and the CPU (user + system, from ``wait4``), and ``--runs`` more times under ``python -X
importtime`` for the import time (the sum of every module's self time) and the modules it loads.
``--baseline REV`` runs that commit's ``signald`` alternating with today's (``git archive``, as
``bench.startup`` does); ``python -c pass`` is the interpreter's floor. Bytecode comes from a cache,
as an installed signald's does, unless ``--from-source``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.baseline import before_spec, check_imports, checkout, resolve
from bench.procs import PY, READY, SPECS, ServerSpec, spawn_env
from bench.startup import IMPORTED, server_env

# What the daemon's side of a probe imports when a probe is not light (tests/e2e/test_health_probe.py).
HEAVY = ("trio", "msgspec", "wsproto", "h11", "attr", "cattrs", "sqlite3", "jwt", "cryptography", "prometheus_client",
         "psycopg", "coredis")


def start_daemon(tmp: str) -> tuple[subprocess.Popen[str], str]:
    """Today's ``signald serve`` on port 0 in ``tmp``; (process, its /readyz URL)."""
    spec = SPECS["signald"]
    proc = subprocess.Popen(spec.argv(tmp),  # --log-level warning: the ready line still comes, nothing else
                            cwd=spec.cwd, env=spawn_env(spec), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if match := READY.search(line):
            return proc, f"http://{match.group(1)}:{match.group(2)}/readyz"
    raise RuntimeError(f"the daemon did not start (exit {proc.wait()})")


def run_once(argv: list[str], spec: ServerSpec, want: int, from_source: bool) -> tuple[float, float]:
    """(wall seconds spawn to exit, CPU seconds user + system) of one run; its exit status must be ``want``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=spec.cwd, env=server_env(spec, from_source=from_source),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != want:
        raise RuntimeError(f"{spec.name}: {argv[3:]} exited {proc.returncode}, not {want}")
    return wall, usage.ru_utime + usage.ru_stime


def imports_once(argv: list[str], spec: ServerSpec, from_source: bool) -> dict[str, int]:
    """One run under ``-X importtime``: self time (µs) per imported module."""
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=spec.cwd,
                          env=server_env(spec, from_source=from_source), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    return {m.group(3): int(m.group(1)) for line in done.stderr.splitlines() if (m := IMPORTED.match(line))}


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs per command and tree (default 20)")
    parser.add_argument("--baseline", metavar="REV", help="also run this commit's signald, alternating")
    parser.add_argument("--from-source", action="store_true", help="no bytecode cache: compile at every run")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp, contextlib.ExitStack() as stack:
        specs = [SPECS["signald"]]
        if args.baseline:
            commit = resolve(args.baseline)
            specs.append(before_spec(stack.enter_context(checkout(commit)), commit))
        check_imports(specs)
        daemon, url = start_daemon(tmp)
        with socket_closed() as closed:
            commands: dict[str, tuple[list[str], int]] = {
                "python -c pass": ([PY, "-c", "pass"], 0),
                "health --help": ([PY, "-m", "signald", "health", "--help"], 0),
                "health URL (200)": ([PY, "-m", "signald", "health", url], 0),
                "health, port closed": ([PY, "-m", "signald", "health", closed, "--timeout", "2"], 1),
            }
            try:
                for spec in specs:  # fills the bytecode cache (and the page cache): not counted
                    for argv, want in commands.values():
                        run_once(argv, spec, want, from_source=False)
                results: dict[str, Any] = {"runs": args.runs, "baseline": args.baseline,
                                           "from_source": args.from_source, "commands": {}}
                for label, (argv, want) in commands.items():
                    walls: dict[str, list[float]] = {spec.name: [] for spec in specs}
                    cpus: dict[str, list[float]] = {spec.name: [] for spec in specs}
                    imports: dict[str, list[dict[str, int]]] = {spec.name: [] for spec in specs}
                    for i in range(args.runs):
                        for spec in specs if i % 2 == 0 else specs[::-1]:
                            wall, cpu = run_once(argv, spec, want, args.from_source)
                            walls[spec.name].append(wall)
                            cpus[spec.name].append(cpu)
                            imports[spec.name].append(imports_once(argv, spec, args.from_source))
                    results["commands"][label] = {}
                    for spec in specs:
                        found = imports[spec.name]
                        row = {
                            "wall_ms": median_ms(walls[spec.name]), "wall_min_ms": min(walls[spec.name]) * 1e3,
                            "wall_max_ms": max(walls[spec.name]) * 1e3, "cpu_ms": median_ms(cpus[spec.name]),
                            "import_ms": statistics.median(sum(f.values()) for f in found) / 1e3,
                            "modules": len(found[-1]),
                            "heavy": sorted({m.split(".")[0] for m in found[-1]} & set(HEAVY)),
                        }
                        results["commands"][label][spec.name] = row
                        print(f"{label:20} {spec.name:15} wall {row['wall_ms']:6.1f} ms "
                              f"({row['wall_min_ms']:.1f}-{row['wall_max_ms']:.1f})  cpu {row['cpu_ms']:6.1f} ms  "
                              f"imports {row['import_ms']:6.1f} ms, {row['modules']:3d} modules  {row['heavy']}")
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.communicate(timeout=30)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


@contextlib.contextmanager
def socket_closed() -> Iterator[str]:
    """A /readyz URL on a port bound but not listening (a probe is refused at once)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{holder.getsockname()[1]}/readyz"


if __name__ == "__main__":
    main()
