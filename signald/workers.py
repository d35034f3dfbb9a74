"""``signald serve --workers N``: N nodes on one machine sharing one port (``SO_REUSEPORT``).

One process uses one core; with a broker configured (``cluster.broker_url``) the first process
serves as a node and starts N - 1 more with the same command line, each binding the same port with
``SO_REUSEPORT`` so the kernel spreads connections over them. They are ordinary nodes of the
cluster (with ``cluster.node_id`` set, named ``<id>-0`` ... ``<id>-<N-1>``). Stopping the first
process (SIGINT/SIGTERM) stops the others (SIGTERM, then SIGKILL after 5 s); one that dies is not
restarted: its clients reconnect to the others, and a supervisor (systemd) restarts the lot.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import trio

from signald.config import Config

log = logging.getLogger("signald.workers")

WORKER_FLAG = "--worker"  # hidden: this process is one of the further nodes


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
    done = await trio.run_process(command, env=env, check=False)
    if done.returncode:
        log.warning("worker %d exited with status %d; it is not restarted", index, done.returncode)
