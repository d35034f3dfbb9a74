"""The real daemon process: ``python -m signald serve`` started, used and stopped by a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio
from conftest import daemon as shared_daemon
from trio_websocket import ConnectionClosed

from signald.cli import main
from signald.client.raw import connect
from signald.config import ENV_VARIABLES

READY = re.compile(rb"signald ready on (ws://[^\s\"]+)")  # text or JSON log format


class Daemon(NamedTuple):
    process: trio.Process
    url: str
    startup_log: str  # stderr up to and including the ready line


def daemon_env(**extra: str) -> dict[str, str]:
    """This environment without the variables that configure signald, plus ``extra``.

    Only real configuration variables are dropped: a developer's ``SIGNALD_SERVER_PORT`` or
    ``SIGNALD_AUTH_MODE`` would change the daemon under test. Any other ``SIGNALD_*`` variable
    (``./dev`` passes ``SIGNALD_VENV``) stays, so a daemon that an inherited, unrelated variable
    would stop fails here too.
    """
    env = {k: v for k, v in os.environ.items() if k.upper() not in ENV_VARIABLES}
    return {**env, **extra}


@asynccontextmanager
async def daemon(*args: str, cwd: Path, env: dict[str, str] | None = None) -> AsyncIterator[Daemon]:
    """Start ``python -m signald serve`` and yield (process, url, startup log) once it is ready."""
    env = daemon_env() if env is None else env
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "signald", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE, cwd=cwd, env=env,
    )
    assert process.stderr is not None
    seen = b""
    try:
        with trio.fail_after(15):
            while not (match := READY.search(seen)):
                chunk = await process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"daemon exited early: {seen.decode(errors='replace')}")
                seen += chunk
        yield Daemon(process, match.group(1).decode(), seen.decode(errors="replace"))
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()


CLIENTS = 200  # in ROOMS rooms: a shutdown closes them all in one pass (signald.app.connections)
ROOMS = 4
ACKED = 50


async def test_sigterm_closes_every_client_with_1001_keeps_every_acked_message_and_exits_0(tmp_path: Path) -> None:
    db = str(tmp_path / "d.db")
    no_limit = "[server]\nnew_connections_per_ip_per_s = 0\n"
    async with shared_daemon(tmp_path, "first", "--db", db, config_text=no_limit) as (process, url), \
            AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(url, user=f"u{i}")) for i in range(CLIENTS)]
        for i, client in enumerate(clients):
            await client.request("room.join", {"room": f"room-{i % ROOMS}"})
        sender = clients[0]
        for i in range(ACKED):  # pipelined: all sent before any ack is read
            await sender.send({"type": "chat.send", "id": f"s-{i}", "data": {"scope": "room-0", "body": f"m{i}"}})
        acks: dict[str, dict[str, Any]] = {}
        while len(acks) < ACKED:
            reply = await sender.next_event()
            assert reply["type"] != "error", reply
            if reply["type"] == "ack":
                acks[reply["data"]["op_id"]] = reply["data"]["data"]
        process.send_signal(signal.SIGTERM)  # right after the last ack
        with trio.fail_after(30):
            for client in clients:
                await client.closed.wait()
        assert [client.ws.closed.code if client.ws.closed else None for client in clients] == [1001] * CLIENTS
        assert {client.ws.closed.reason for client in clients if client.ws.closed} == {"server shutting down"}
        with pytest.raises(ConnectionClosed):
            await sender.request("presence.ping")
        with trio.fail_after(30):
            assert await process.wait() == 0
    acked = [(acks[f"s-{i}"]["seq"], acks[f"s-{i}"]["body"]) for i in range(ACKED)]
    assert acked == [(i + 1, f"m{i}") for i in range(ACKED)]
    async with shared_daemon(tmp_path, "restarted", "--db", db) as (_, again), connect(again, user="u0") as client:
        await client.request("room.join", {"room": "room-0"})
        page = await client.request("chat.history", {"room": "room-0", "after": 0, "limit": 200})
        assert [(m["seq"], m["body"]) for m in page["messages"]] == acked
        assert not page["has_more"]


async def test_defaults_put_database_in_working_directory(tmp_path: Path) -> None:
    async with daemon(cwd=tmp_path) as (process, url, _):
        assert url.startswith("ws://127.0.0.1:")
        async with connect(url, user="bob") as client:
            assert client.user_id == "bob"
        process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await process.wait() == 0


def test_bad_config_is_one_line_naming_the_key_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "signald.toml"
    config.write_text("[limits]\nrate_per_s = 'fast'\n")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "limits.rate_per_s" in err


def test_unknown_key_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "signald.toml"
    config.write_text("[server]\nprot = 1\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "server.prot" in capsys.readouterr().err


async def test_unknown_signald_variables_in_the_environment_warn_and_the_daemon_starts(tmp_path: Path) -> None:
    # SIGNALD_VENV is the ./dev launcher's own variable; SIGNALD_SERVR_PORT is a typo.
    env = daemon_env(SIGNALD_VENV="/x", SIGNALD_SERVR_PORT="1")
    async with daemon("--db", str(tmp_path / "d.db"), cwd=tmp_path, env=env) as (process, url, startup_log):
        assert not url.endswith(":1/")
        async with connect(url, user="carol") as client:
            assert client.user_id == "carol"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
    warnings = [line for line in startup_log.splitlines() if "WARNING" in line]
    assert any("SIGNALD_VENV" in line and "ignored" in line for line in warnings), startup_log
    assert any("SIGNALD_SERVR_PORT" in line and "server.port" in line for line in warnings), startup_log


def test_typo_in_the_config_file_still_stops_the_daemon(tmp_path: Path) -> None:
    config = tmp_path / "signald.toml"
    config.write_text("[server]\nport = 0\n\n[limits]\nrate_pers_s = 5\n")
    done = subprocess.run([sys.executable, "-m", "signald", "serve", "--config", str(config)],
                          cwd=tmp_path, env=daemon_env(SIGNALD_VENV="/x"), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        "signald: configuration error: limits.rate_pers_s: unknown key (known: "), done.stderr


def test_none_auth_on_public_address_needs_insecure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--insecure" in capsys.readouterr().err


async def test_sigterm_does_not_wait_for_peers_that_never_answer_the_close(tmp_path: Path) -> None:
    async with daemon("--db", str(tmp_path / "d.db"), cwd=tmp_path) as (process, url, _):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"GET /?user=mute HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert b"101" in await stream.receive_some(4096)  # upgraded; from now on it never answers
        started = trio.current_time()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
        assert trio.current_time() - started < 2.5  # not the 3 s shutdown_timeout_s per connection
        await stream.aclose()


async def test_sigterm_does_not_wait_out_the_linger_of_refused_requests(tmp_path: Path) -> None:
    """A refused upgrade, and a refused plain request, linger (up to 5 s) for clients that keep the
    connection open; a stopping daemon gives them the shutdown's shared wait at most (0.5 s)."""
    async with daemon("--db", str(tmp_path / "d.db"), cwd=tmp_path) as (process, url, _):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        refused = [b"GET /?user=ann HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",  # 426
                   b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n"]  # 400 TOO_LARGE
        streams = []
        for request in refused:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            streams.append(stream)
            await stream.send_all(request + b"b" * 30_000)  # more than the daemon reads: it lingers
            got = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(65536):  # the daemon half-closes after its answer
                    got += chunk
            assert got.startswith((b"HTTP/1.1 426 ", b"HTTP/1.1 400 ")), got
        # Both clients keep their side open: the daemon is still lingering on each.
        started = trio.current_time()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
        took = trio.current_time() - started
        for stream in streams:
            await stream.aclose()
    print(f"exit took {took:.3f} s")
    assert took < 2.5  # not LINGER_S (5 s)
