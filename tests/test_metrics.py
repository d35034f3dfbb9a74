"""Prometheus metrics on ``server.metrics_port`` and JSON logs."""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import pytest
import trio
from conftest import make_config, start_server

from signald.cli import JsonFormatter
from signald.client import connect


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
