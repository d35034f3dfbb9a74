"""Driving ``bench.holder`` processes (the idle-connection workloads (f) and (h)) from the bench.

Each holder opens its share of idle connections, prints one JSON report (``held``, ``failed``)
once they are open, and on stdin's end closes them and prints another (``lost``: connections the
server dropped meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import psutil

from bench.procs import REPO

Holder = asyncio.subprocess.Process


async def start_holder(host: str, port: int, *options: str) -> Holder:
    """One holder against ``host:port``; ``options`` are ``bench.holder``'s (count, source address...)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.holder", "--host", host, "--port", str(port), *options,
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)


async def read_report(proc: Holder) -> dict[str, Any]:
    """The holder's next JSON report; RuntimeError if it exited without one."""
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"holder {proc.pid} exited without reporting (exit {await proc.wait()})")
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


async def stop_holders(
    procs: list[Holder], *, tolerate: tuple[type[Exception], ...] = (TimeoutError, ValueError, KeyError)
) -> tuple[float, int]:
    """Close every holder's connections and wait for it: (their CPU seconds, connections lost).

    A holder whose last report fails with one of ``tolerate`` is killed and counts no loss; any
    other error propagates (after the holders were told to stop).
    """
    cpu = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(p.pid).cpu_times()
            cpu += t.user + t.system
    for p in procs:
        if p.stdin is not None:
            p.stdin.close()
    lost = 0
    for p in procs:
        try:
            lost += (await asyncio.wait_for(read_report(p), 60))["lost"]
        except tolerate:
            p.kill()
        await p.wait()
    return cpu, lost
