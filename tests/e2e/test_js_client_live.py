"""The JavaScript client (clients/js/signald.js) against a real daemon, run by Node.

Node 20 has no global WebSocket, so the script injects the `ws` package, which ``./dev test``
installs into ``.venv/node`` with TypeScript; without node or that package the test is skipped
with the reason. What it checks: two clients come up, join, a message and its edit reach the other
one live and its room view, and a refused connection (an invalid ``?user=``: 4401 after one error
frame) rejects ``ready`` with the close code.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import trio
from conftest import make_config, start_server

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = Path(os.environ.get("SIGNALD_NODE_MODULES", Path(sys.prefix) / "node" / "node_modules"))


async def test_the_js_client_chats_and_reads_a_refusal_against_a_real_daemon(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "ws").is_dir():
        pytest.skip("node or the ws package is missing (./dev test installs ws into .venv/node)")
    srv = await start_server(nursery, make_config(tmp_path))
    with trio.fail_after(30):
        done = await trio.run_process(
            [node, str(ROOT / "tests" / "e2e" / "js" / "live.mjs"), srv.url], capture_stdout=True,
            capture_stderr=True, check=False, env={**os.environ, "SIGNALD_NODE_MODULES": str(NODE_MODULES)})
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    sent = result["sent"]
    assert (sent["body"], sent["seq"], sent["rev"]) == ("hello from js", 1, 1)
    assert result["event"] == sent  # bob got alice's message live, as stored
    assert [(m["id"], m["body"], m["rev"]) for m in result["view"]] == [(sent["id"], "edited", 2)]
    assert result["rev"] == 2
    assert result["refused"] == {"name": "ClientClosed", "code": 4401}
