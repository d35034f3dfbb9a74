"""The sweep of private servers that killed runs left behind (bench/leftovers.py)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.leftovers import OWNER_FILE, claim, sweep


def test_only_servers_whose_owner_is_gone_are_stopped_and_removed(tmp_path: Path) -> None:
    prefix = f"signald-test-leftovers-{tmp_path.name}-"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    left = Path(tempfile.mkdtemp(prefix=prefix))  # a run that was killed: its owner exited
    (left / OWNER_FILE).write_text(gone.stdout.strip())
    mine = Path(tempfile.mkdtemp(prefix=prefix))  # this run's own: still in use
    claim(mine)
    unclaimed = Path(tempfile.mkdtemp(prefix=prefix))  # being set up by someone: not ours to judge
    stopped: list[Path] = []
    try:
        assert sweep(prefix, stopped.append) == 1
        assert stopped == [left] and not left.exists()
        assert mine.exists() and unclaimed.exists()
    finally:
        for directory in (left, mine, unclaimed):
            subprocess.run(["rm", "-rf", str(directory)], check=True)
