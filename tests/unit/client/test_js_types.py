"""clients/js/signald.d.ts: it names every server-to-client type, and (when TypeScript is there) it type-checks.

``./dev test`` installs TypeScript with npm into ``.venv/node`` (the venv the suite runs in); the
tsc check is skipped with its reason when neither that nor ``SIGNALD_TSC`` (a tsc path) is present.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from signald.protocol.types import OUTBOUND_TYPES

ROOT = Path(__file__).resolve().parents[3]
DTS = ROOT / "clients" / "js" / "signald.d.ts"


def test_dts_declares_every_outbound_type() -> None:
    text = DTS.read_text()
    body = text[text.index("export interface OutboundTypes {"):]
    body = body[:body.index("\n}")]
    declared = set(re.findall(r'^\s*"([a-z.]+)":', body, re.MULTILINE))
    assert declared == set(OUTBOUND_TYPES)


def tsc() -> str | None:
    candidates = [os.environ.get("SIGNALD_TSC"), str(Path(sys.prefix) / "node" / "node_modules" / ".bin" / "tsc")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.mark.skipif(tsc() is None, reason="TypeScript not installed (./dev test installs it into .venv/node with npm)")
def test_dts_type_checks() -> None:
    command = [str(tsc()), "--noEmit", "--strict", "--target", "es2022", "--module", "es2022",
               "--moduleResolution", "bundler", "--lib", "es2022,dom", "clients/js/signald.d.ts",
               "clients/js/test/usage.ts"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
