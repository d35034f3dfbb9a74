"""``signald serve --workers N``: N nodes on one machine sharing one port (``SO_REUSEPORT``).

One process uses one core; with a broker configured (``cluster.broker_url``) the first process
serves as a node and starts N - 1 more with the same command line, each binding the same port with
``SO_REUSEPORT`` so the kernel spreads connections over them. They are ordinary nodes of the
cluster (with ``cluster.node_id`` set, named ``<id>-0`` ... ``<id>-<N-1>``).

Resource handling: stopping the first process (SIGINT/SIGTERM) stops the others (SIGTERM, then
SIGKILL after 5 s). A further node that dies is started again (after 0.5 s, doubling up to 30 s
while it keeps dying within a minute of its start); its clients reconnect to the others meanwhile.
A further node whose first process is gone (``kill -9``, a crash) stops by itself within a second,
as on SIGTERM, so that a supervisor that restarts the first process never finds the port still
held by orphans.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from signald.commands.parser import WORKER_FLAG
from signald.config import Config

log = logging.getLogger("signald.workers")

RESTART_MIN_S = 0.5  # first wait before a dead node is started again
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a node that ran this long before dying is restarted at once again
PARENT_POLL_S = 1.0


def worker_command(argv: Sequence[str], port: int) -> list[str]:
    """The command line of a further node: this one without ``--workers``, on the bound ``port``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--workers", "--port"):
            skip = True
        elif not arg.startswith(("--workers=", "--port=")):
            kept.append(arg)
    return [sys.executable, "-m", "signald", *kept, "--port", str(port), WORKER_FLAG]


async def run_workers(config: Config, argv: Sequence[str], count: int, port: int) -> None:
    """Run ``count - 1`` further nodes until cancelled; then stop them and wait for them."""
    command = worker_command(argv, port)
    async with trio.open_nursery() as nursery:
        for index in range(1, count):
            env = dict(os.environ)
            if config.cluster.node_id:
                env["SIGNALD_CLUSTER_NODE_ID"] = f"{config.cluster.node_id.rsplit('-', 1)[0]}-{index}"
            nursery.start_soon(_worker, command, env, index)


async def _worker(command: list[str], env: dict[str, str], index: int) -> None:
    failures = 0
    while True:
        started = trio.current_time()
        done = await trio.run_process(command, env=env, check=False)
        failures = 0 if trio.current_time() - started >= HEALTHY_AFTER_S else failures + 1
        delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** min(failures - 1, 16)) if failures else 0.0
        log.warning("worker %d exited with status %d; starting it again in %.1f s", index, done.returncode, delay)
        await trio.sleep(delay)


async def watch_parent(interval_s: float = PARENT_POLL_S) -> None:
    """In a further node: once the first process is gone, stop as on SIGTERM (drain included)."""
    parent = os.getppid()
    # The kernel tells nothing when a parent dies (PR_SET_PDEATHSIG follows the spawning thread,
    # which for trio.run_process is a worker thread that may exit any time): poll, once a second.
    while parent != 1 and os.getppid() == parent:  # noqa: ASYNC110  # re-parented: it died
        await trio.sleep(interval_s)
    log.warning("the first process (pid %d) is gone; this worker stops", parent)
    os.kill(os.getpid(), signal.SIGTERM)
