"""The client examples run as a user runs them: subprocesses against a live daemon subprocess.

``chat.py`` across a daemon restart, ``bot_asyncio.py`` answering, ``presence_watch.py`` seeing a
user come, go away and type, ``load.py`` printing its summary. Each is bounded in time.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import trio
from test_durability import daemon

from signald.client.raw import connect as raw_connect

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Running:
    """An example's process with its stdout collected line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def collect(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]

    async def line(self, pattern: str) -> str:
        """Wait for a line matching ``pattern`` (a regex)."""
        while True:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            await trio.sleep(0.02)


@asynccontextmanager
async def example(name: str, *args: str, stdin: bool = False) -> AsyncIterator[Running]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / name), *args], stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
    running = Running(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(running.collect)
        try:
            yield running
        finally:
            if process.returncode is None:
                process.kill()  # inside the nursery: the collector then sees the end of stdout
            with trio.CancelScope(shield=True):
                await process.wait()


async def test_chat_shows_others_and_comes_back_after_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "d.db")
    with trio.fail_after(30):
        async with daemon(tmp_path, "first", "--db", db) as (process, url), \
                example("chat.py", "--url", url, "--user", "alice", stdin=True) as chat:
            await chat.line(r"^\[open\] alice in lobby")
            async with raw_connect(url, user="bob") as bob:
                await bob.request("room.join", {"room": "lobby"})
                await bob.request("chat.send", {"scope": "lobby", "body": "hi alice"})
                await chat.line(r"^<bob> hi alice$")
            process.send_signal(signal.SIGTERM)
            await process.wait()
            await chat.line(r"^\[reconnecting\]$")
            port = urlsplit(url).port
            assert port
            async with daemon(tmp_path, "second", "--db", db, port=port), raw_connect(url, user="bob") as bob:
                await bob.request("room.join", {"room": "lobby"})
                await bob.request("chat.send", {"scope": "lobby", "body": "after the restart"})
                await chat.line(r"^<bob> after the restart")
                assert chat.process.stdin is not None
                await chat.process.stdin.send_all(b"hello bob\n")
                await chat.process.stdin.aclose()
                assert await chat.process.wait() == 0
                await chat.line(r"^3 messages in lobby$")
    assert sum(line.startswith("<bob> ") for line in chat.lines) == 2  # each once


async def test_the_asyncio_bot_echoes(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, "d") as (_, url), example("bot_asyncio.py", "--url", url, "--count", "2") as bot:
            await bot.line("^echo-bot listening in lobby$")
            async with raw_connect(url, user="alice") as alice:
                await alice.request("room.join", {"room": "lobby"})
                sent = [await alice.request("chat.send", {"scope": "lobby", "body": body})
                        for body in ("one", "two")]
                echoes = []
                while len(echoes) < 2:
                    event = await alice.next_event("chat.message")
                    echoes.append(event["data"])
            assert await bot.process.wait() == 0
    assert [(e["body"], e["parent_id"]) for e in echoes] == [("echo: one", sent[0]["id"]),
                                                             ("echo: two", sent[1]["id"])]
    assert bot.lines[-1] == "answered alice: two"


async def test_the_asyncio_bot_comes_back_after_a_restart_by_itself(tmp_path: Path) -> None:
    # docs/client.md: the example has no reconnect code, and its test restarts the daemon under it
    db = str(tmp_path / "d.db")
    with trio.fail_after(30):
        async with daemon(tmp_path, "first", "--db", db) as (process, url), \
                example("bot_asyncio.py", "--url", url, "--count", "2") as bot:
            await bot.line("^echo-bot listening in lobby$")
            async with raw_connect(url, user="alice") as alice:
                await alice.request("room.join", {"room": "lobby"})
                await alice.request("chat.send", {"scope": "lobby", "body": "before"})
                await bot.line("^answered alice: before$")
            process.send_signal(signal.SIGTERM)
            await process.wait()
            port = urlsplit(url).port
            assert port
            async with daemon(tmp_path, "second", "--db", db, port=port), raw_connect(url, user="alice") as alice:
                await alice.request("room.join", {"room": "lobby"})
                await alice.request("chat.send", {"scope": "lobby", "body": "after"})
                assert await bot.process.wait() == 0
    assert [line for line in bot.lines if line.startswith("answered")] == ["answered alice: before",
                                                                            "answered alice: after"]


async def test_presence_watch_sees_a_user_come_go_away_and_type(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, "d") as (_, url), \
                example("presence_watch.py", "--url", url, "--seconds", "20") as watch:
            await watch.line(r"^watching lobby: \{'watcher': 'online'\}$")
            async with raw_connect(url, user="bob") as bob:
                await bob.request("room.join", {"room": "lobby"})
                await watch.line(r"^bob joined; now .*'bob': 'online'")
                await bob.request("presence.set", {"status": "away"})
                await watch.line("^bob is away$")
                await bob.request("chat.typing", {"scope": "lobby", "typing": True})
                await watch.line("^bob is typing$")
            await watch.line(r"^bob left; now \{'watcher': 'online'\}$")


async def test_load_prints_throughput_and_latency(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, "d") as (_, url), \
                example("load.py", "--url", url, "--clients", "3", "--messages", "10") as load:
            assert await load.process.wait() == 0
            await load.line(r"^latency ms: p50 [\d.]+  p90 [\d.]+  p99 [\d.]+")
    assert re.match(r"^delivered 60 messages in [\d.]+s: \d+ msgs/s$", load.lines[0]), load.lines
