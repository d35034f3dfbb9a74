"""``examples/call_peers.py`` run as a user would: a subprocess talking to a live daemon."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from subprocess import CompletedProcess

import trio

from signald.server import RunningServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "call_peers.py"


async def run_example(*args: str) -> CompletedProcess[bytes]:
    with trio.fail_after(20):
        return await trio.run_process([sys.executable, str(EXAMPLE), *args], capture_stdout=True,
                                      capture_stderr=True, check=False)


async def test_call_peers_prints_the_whole_exchange_and_exits_0(server: RunningServer) -> None:
    done = await run_example("--url", server.url)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    call_lines = [line for line in lines if " -> " in line]
    steps = [re.match(r"^(\w+) -> (\w+)\s+(call\.\w+)\s+call_id=(\S+)", line) for line in call_lines]
    assert all(steps), call_lines
    assert [m.group(1, 2, 3) for m in steps if m] == [
        ("alice", "bob", "call.offer"),
        ("alice", "bob", "call.ice"),  # trickled before the answer
        ("bob", "alice", "call.answer"),
        ("bob", "alice", "call.ice"),
        ("alice", "bob", "call.end"),
    ]
    assert len({m.group(4) for m in steps if m}) == 1  # one call, the id alice chose
    assert "reason=hangup" in call_lines[-1]
    assert lines[-1] == "call finished"
    assert len(server.hub.calls) == 0


async def test_call_peers_reports_a_daemon_that_is_not_running_and_exits_1() -> None:
    with socket.socket() as probe:  # a port that was just free: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = await run_example("--url", f"ws://127.0.0.1:{port}/")
    assert done.returncode == 1
    stderr = done.stderr.decode()
    assert stderr.startswith("call_peers: ")
    assert f"ws://127.0.0.1:{port}/" in stderr
    assert " -> " not in done.stdout.decode()
