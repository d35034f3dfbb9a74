"""Private servers (PostgreSQL, Redis) that a killed test or benchmark run left behind.

A run that is killed (``kill -9``, a CI timeout) never reaches its ``finally``: its private
servers keep running and their directories stay in the temporary folder. Each private server's
directory therefore holds ``owner.pid``, the process that started it; before starting a new one,
:func:`sweep` stops the servers of owners that are gone and removes their directories. Servers of
runs still alive (another test session, a benchmark running beside it) are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

OWNER_FILE = "owner.pid"

log = logging.getLogger(__name__)


def claim(directory: Path) -> None:
    """Mark ``directory`` as this process's private server."""
    (directory / OWNER_FILE).write_text(str(os.getpid()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as gone as a dead process
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep(prefix: str, stop: Callable[[Path], None]) -> int:
    """Stop (``stop(directory)``) and remove every ``<tmp>/<prefix>*`` whose owner is gone; how many."""
    swept = 0
    for directory in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not claimed (yet): being set up by a live run, or not ours
        if _alive(owner):
            continue
        with contextlib.suppress(Exception):
            stop(directory)
        shutil.rmtree(directory, ignore_errors=True)
        log.info("removed a private server left by process %d: %s", owner, directory)
        swept += 1
    return swept
