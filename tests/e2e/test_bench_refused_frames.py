"""``python -m bench.refused_frames`` keeps working (tiny sizes: its numbers mean nothing here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_refused_frames_micro_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.refused_frames", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("id only, too-large frame") == 4  # id first and last, JSON and MessagePack
