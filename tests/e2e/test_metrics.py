"""Prometheus metrics on ``server.metrics_port`` and JSON logs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.request
from pathlib import Path

import pytest
import trio
from conftest import make_config, start_server

from signald.app.hub import Hub
from signald.app.metrics import Gauges
from signald.cli import JsonFormatter
from signald.client.raw import connect


async def scrape(port: int) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    return await trio.to_thread.run_sync(fetch)


def value(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_prefix} not in metrics")


async def test_metrics_count_what_clients_do(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, make_config(tmp_path, server={"metrics_port": 0}))
    assert server.metrics_port
    async with connect(server.url, user="alice") as alice, connect(server.url, user="bob") as bob:
        await alice.request("room.join", {"room": "lobby"})
        await bob.request("room.join", {"room": "lobby"})
        await alice.request("chat.send", {"scope": "lobby", "body": "hi"})
        await alice.request_raw("room.leave", {"room": "nowhere"})
        await bob.next_event("chat.message")
        text = await scrape(server.metrics_port)
    assert value(text, "signald_connections") == 2
    assert value(text, "signald_users") == 2
    assert value(text, "signald_rooms") == 1
    assert value(text, "signald_active_calls") == 0
    assert value(text, 'signald_messages_in_total{type="chat.send"}') == 1
    assert value(text, 'signald_messages_in_total{type="room.join"}') == 2
    assert value(text, 'signald_messages_out_total{type="chat.message"}') == 1
    assert value(text, 'signald_errors_total{code="NOT_IN_ROOM"}') == 1
    assert value(text, "signald_history_commit_seconds_count") == 1
    assert value(text, "signald_history_db_bytes") > 0


async def test_no_metrics_port_by_default(server) -> None:  # type: ignore[no-untyped-def]
    assert server.metrics_port is None


def test_json_log_lines_are_objects_with_level_logger_and_message() -> None:
    record = logging.LogRecord("signald.audit", logging.WARNING, __file__, 1, "refused status=%d", (401,), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning"
    assert entry["logger"] == "signald.audit"
    assert entry["message"] == "refused status=401"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_cli_accepts_each_log_format(log_format: str) -> None:
    from signald.cli import build_parser

    args = build_parser().parse_args(["serve", "--log-format", log_format])
    assert args.log_format == log_format


def test_cli_refuses_an_unknown_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    from signald.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--log-format", "xml"])
    assert "--log-format" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("db", ["missing-dir/signald.db", "not-a-database"])
async def test_a_store_that_cannot_open_leaves_no_metrics_port_listening(tmp_path: Path, db: str) -> None:
    (tmp_path / "not-a-database").write_bytes(b"this is not SQLite\n" * 100)
    port = free_port()
    config = make_config(tmp_path, server={"metrics_port": port, "db": str(tmp_path / db)})
    with pytest.raises(Exception):  # noqa: B017 - whatever the store raises; the point is what is left behind
        async with trio.open_nursery() as nursery:
            await start_server(nursery, config)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_gauges_are_taken_on_the_trio_thread(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daemon state is read on the Trio thread only, even though Prometheus scrapes from its own."""
    threads: list[int] = []
    gauges = Hub.gauges

    def recording(hub: Hub) -> Gauges:
        threads.append(threading.get_ident())
        return gauges(hub)

    monkeypatch.setattr(Hub, "gauges", recording)
    server = await start_server(nursery, make_config(tmp_path, server={"metrics_port": 0}))
    assert server.metrics_port
    async with connect(server.url, user="alice"):
        text = await scrape(server.metrics_port)
    assert value(text, "signald_connections") == 1
    assert threads == [threading.get_ident()]
