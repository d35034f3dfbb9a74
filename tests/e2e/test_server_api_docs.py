"""The server API of a real daemon process: the curl examples of docs/server-api.md run as written,
``signald health`` exits 0 (more of it: test_health_probe.py), and the JSON logs carry fields (never the key)."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from test_daemon import daemon, daemon_env

from signald.client.raw import connect

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "server-api.md"
KEY = "doc-test-key-9f8e7d"


def examples() -> list[tuple[str, Any]]:
    """(curl command, documented answer) for each call of the doc, in order."""
    text = DOC.read_text()
    blocks = re.findall(r"```(sh|json)\n(.*?)```", text, re.S)
    found: list[tuple[str, Any]] = []
    for (kind, body), (next_kind, answer) in itertools.pairwise(blocks):
        if kind == "sh" and body.lstrip().startswith("curl") and next_kind == "json":
            found.append((body, json.loads(answer)))
    return found


def test_the_doc_has_a_curl_example_per_call() -> None:
    calls = {re.search(r"/api/v1/(\w+)", command).group(1) for command, _ in examples()}  # type: ignore[union-attr]
    assert calls == {"publish", "notify", "disconnect", "kick", "presence", "history", "stats"}


def shape(value: Any) -> Any:
    """The keys of a JSON answer, recursively (values differ from run to run)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if not isinstance(value, int | float) or isinstance(value, bool) else "number"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (./dev test installs it)")
async def test_the_curl_examples_run_against_a_daemon_and_answer_as_documented(tmp_path: Path) -> None:
    env = daemon_env(SIGNALD_API_KEYS=KEY)
    async with daemon("--db", str(tmp_path / "d.db"), "--log-format", "json", cwd=tmp_path, env=env) as (
            process, url, startup_log):
        base = url.replace("ws://", "http://").rstrip("/")
        ready = json.loads(next(line for line in startup_log.splitlines() if "signald ready" in line))
        assert ready["url"] == url and ready["level"] == "info"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", ready["time"])
        async with connect(url, user="alice") as alice:
            await alice.request("room.join", {"room": "lobby"})
            for command, documented in examples():
                result = await trio.run_process(
                    ["bash", "-c", command], env={**env, "SIGNALD": base, "KEY": KEY}, capture_stdout=True)
                answer = json.loads(result.stdout)
                assert shape(answer) == shape(documented) or (
                    "members" in answer["result"]), (command, answer)  # presence: devices differ in length
            with trio.fail_after(5):
                await alice.closed.wait()  # the last example disconnects alice
        status = await trio.run_process([sys.executable, "-m", "signald", "health", f"{base}/readyz"],
                                        capture_stdout=True, check=False)
        assert status.returncode == 0 and b"200" in status.stdout
        process.terminate()
        assert process.stderr is not None
        log = startup_log
        with trio.fail_after(10):
            while chunk := await process.stderr.receive_some():
                log += chunk.decode()
            await process.wait()
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    opened = [e for e in entries if e["message"] == "connection opened"]
    assert opened and opened[0]["user"] == "alice" and opened[0]["peer"] == "127.0.0.1"
    closed = [e for e in entries if e["message"] == "connection closed"]
    assert closed and closed[0]["close_code"] == 4003 and closed[0]["duration_s"] >= 0
    calls = [e["call"] for e in entries if e["message"] == "api call"]
    assert calls == ["publish", "publish", "notify", "presence", "history", "stats", "kick", "disconnect"]
    assert any(e["message"] == "kicked" and e["by"] == "$system" for e in entries)
    assert KEY not in log


def test_version() -> None:
    import signald

    result = subprocess.run([sys.executable, "-m", "signald", "--version"], capture_output=True, text=True,
                            check=False)
    assert (result.returncode, result.stdout.strip()) == (0, f"signald {signald.__version__}")
