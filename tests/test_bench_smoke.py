"""The benchmark harness keeps working: CI runs it at tiny sizes (its numbers mean nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_every_workload_against_every_server(tmp_path: Path) -> None:
    pytest.importorskip("socketio", reason="the bench extra is not installed (./dev test installs it)")
    pytest.importorskip("websockets")
    out = tmp_path / "quick.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["summary"]) >= {"a", "b", "c", "d", "e", "f"}
    assert {"signald", "socketio", "websockets"} <= set(results["summary"]["a"])
