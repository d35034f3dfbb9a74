"""The JavaScript client's tests (clients/js/test, ``node --test``) as part of the Python suite.

They run the same tests/data/client_cases.json as test_client_cases.py on the JS port of the core,
plus the WebSocket adapter against a fake socket. Skipped only when ``node`` is not on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not on PATH: the JavaScript client's tests need Node >= 20")
def test_js_client_cases() -> None:
    assert NODE is not None
    done = subprocess.run([NODE, "--test", "clients/js/test"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    assert "# fail 0" in done.stdout, done.stdout[-8000:]
