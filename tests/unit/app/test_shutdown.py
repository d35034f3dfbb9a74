"""A stopping server's connections leave the hub in one pass: one audit line each, written together.

A real server in-process with real clients; the server's log goes to a stream that counts its
writes (the daemon's handler, :func:`signald.logfmt.setup_logging`).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from conftest import make_config

from signald.app.facade import SessionView
from signald.client.raw import connect
from signald.logfmt import setup_logging
from signald.server import RunningServer, serve_signald

CLIENTS = 12


class CountingStream(io.StringIO):
    """A log stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def log_stream() -> Iterator[CountingStream]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = CountingStream()
    setup_logging("info", "text", stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


async def test_a_stopping_server_writes_one_audit_line_per_connection_all_in_one_write(
    tmp_path: Path, log_stream: CountingStream
) -> None:
    ended: list[str] = []
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await serve_signald(make_config(tmp_path), task_status=task_status)

        running: RunningServer = await nursery.start(serve)

        def on_disconnect(view: SessionView) -> None:
            ended.append(view.session_id)

        running.on_disconnect(on_disconnect)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(running.url, user=f"u{i}")) for i in range(CLIENTS)]
            for i, client in enumerate(clients):
                await client.request("room.join", {"room": f"room-{i % 3}"})
            sessions = {client.session_id for client in clients}
            scope.cancel()
            with trio.fail_after(10):
                for client in clients:
                    await client.closed.wait()
            assert {(c.ws.closed.code, c.ws.closed.reason) for c in clients if c.ws.closed} == {
                (1001, "server shutting down")}
    closed = [line for line in log_stream.getvalue().splitlines() if "signald.audit: connection closed" in line]
    assert sorted(re.search(r" session=(\S+)", line)[1] for line in closed) == sorted(sessions)  # type: ignore[index]
    assert all(" close_code=1001 closed_by=server " in line for line in closed), closed
    assert sorted(ended) == sorted(sessions)  # the embedding program's hook, once for each
    (batch,) = [text for text in log_stream.writes if "connection closed" in text]  # one write, every line in it
    assert batch.count("\n") == CLIENTS
