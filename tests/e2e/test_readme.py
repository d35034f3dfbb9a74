"""The README's examples are true: its transcript replays against a real daemon, its scripts run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import trio
from trio_websocket import open_websocket_url

from signald.server import RunningServer

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ANY = "…"


def transcript() -> list[tuple[str, Any]]:
    block = re.search(r"```text\n(.*?)```", README, re.S)
    assert block, "README has no transcript block"
    lines = []
    for line in block.group(1).splitlines():
        direction, _, frame = line.partition(" ")
        assert direction in "<>", line
        lines.append((direction, msgspec.json.decode(frame)))
    return lines


def matches(expected: Any, actual: Any) -> bool:
    """Equal, except that ``"…"`` in ``expected`` stands for any value."""
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return isinstance(actual, dict) and expected.keys() == actual.keys() and all(
            matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            matches(e, a) for e, a in zip(expected, actual, strict=True))
    return bool(expected == actual and type(expected) is type(actual))


async def test_readme_transcript_replays_against_the_daemon(server: RunningServer) -> None:
    steps = transcript()
    assert len(steps) >= 10
    async with open_websocket_url(server.url + "?user=alice", subprotocols=["signald.v1"]) as ws:
        for direction, frame in steps:
            if direction == ">":
                await ws.send_message(msgspec.json.encode(frame).decode())
            else:
                with trio.fail_after(5):
                    actual = msgspec.json.decode(await ws.get_message())
                assert matches(frame, actual), f"expected {frame}\n     got {actual}"


def test_readme_names_exactly_two_quickstart_commands() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"```sh\n(.*?)\n```", quickstart, re.S) == ["./dev serve", "./dev test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in ci


def test_embedding_example_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "embed.py")], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "alice received app.tally: {'trio': 1}" in done.stdout


def test_custom_authenticator_example_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_auth.py")], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "connected as alice with roles ['mod']" in done.stdout
    assert "a wrong key is refused with close code 4401" in done.stdout


def test_every_example_is_listed_with_the_venv_python() -> None:
    """A bare ``python examples/...`` fails with ModuleNotFoundError outside the venv: say which python."""
    listed = set(re.findall(r"`examples/(\w+\.py)`", README))
    assert listed == {p.name for p in (ROOT / "examples").glob("*.py")}
    assert not re.search(r"(?<![/\w])python examples/", README)
    assert set(re.findall(r"\.venv/bin/python examples/(\w+\.py)", README)) == listed
