"""The SQLite file misbehaving under a running daemon: locked by another process (the ``sqlite3``
shell in ``BEGIN EXCLUSIVE``), its filesystem full (a small tmpfs: root only). Writes get INTERNAL
("history storage failed") in bounded time (the lock: after the store's 5 s busy timeout), reads
and ``/readyz`` go on, the daemon stays up, nothing acked is lost, and sends work again once the
cause is gone. (A read-only directory is not tested: permissions do not bind
root, and a filesystem with a file open for writing cannot be remounted read-only.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from conftest import make_config, start_server
from test_durability import all_history

from signald.app.httpapi import READY_TIMEOUT_S
from signald.client.raw import connect

FAILED = ("INTERNAL", "history storage failed")
BUSY_TIMEOUT_S = 5.0  # the SQLite store's wait for another connection's lock


@contextlib.contextmanager
def locked(db: Path) -> Iterator[None]:
    """The ``sqlite3`` shell holding an exclusive transaction on ``db`` inside the block."""
    if shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 shell")
    shell = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert shell.stdin is not None and shell.stdout is not None
    try:
        shell.stdin.write("BEGIN EXCLUSIVE;\nSELECT 'locked';\n")
        shell.stdin.flush()
        assert shell.stdout.readline().strip() == "locked"  # the lock is held from here
        yield
    finally:
        shell.communicate("ROLLBACK;\n.quit\n", timeout=10)


async def test_a_database_locked_by_another_process_refuses_sends_in_bounded_time_then_takes_them(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery, make_config(tmp_path))
    async with connect(server.url, user="ann") as ann, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        await ann.request("room.join", {"room": "lobby"})
        acked = [await ann.request("chat.send", {"scope": "lobby", "body": "before"})]
        with locked(tmp_path / "signald.db"):
            with trio.fail_after(2 * BUSY_TIMEOUT_S):
                reply = await ann.request_raw("chat.send", {"scope": "lobby", "body": "while locked"})
            assert (reply["data"]["code"], reply["data"]["message"]) == FAILED, reply
            with trio.fail_after(READY_TIMEOUT_S + 1):  # reads go on beside the lock (WAL): ready
                assert (await http.get("/readyz")).status_code == 200
                assert (await ann.request("chat.history", {"room": "lobby"}))["messages"] == acked
        with trio.fail_after(BUSY_TIMEOUT_S + 2):
            acked.append(await ann.request("chat.send", {"scope": "lobby", "body": "after"}))
            assert (await http.get("/readyz")).status_code == 200
            assert await all_history(ann, "lobby") == acked


@contextlib.contextmanager
def small_filesystem(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on a new directory (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="signald-small-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)
        where.rmdir()


async def test_a_full_disk_refuses_sends_and_they_work_again_once_there_is_room(nursery: trio.Nursery) -> None:
    with small_filesystem("4m") as where, trio.fail_after(15):
        server = await start_server(nursery, make_config(where))
        async with connect(server.url, user="ann") as ann:
            await ann.request("room.join", {"room": "lobby"})
            acked = [await ann.request("chat.send", {"scope": "lobby", "body": "before"})]
            filler = where / "filler"
            with filler.open("wb") as out, contextlib.suppress(OSError):  # ENOSPC: full
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            for i in range(1000):  # until the pages the database still had are full too
                reply = await ann.request_raw("chat.send", {"scope": "lobby", "body": f"{i:04} " + "x" * 3000})
                if reply["type"] == "error":
                    assert (reply["data"]["code"], reply["data"]["message"]) == FAILED, reply
                    break
                acked.append(reply["data"]["data"])
            else:
                raise AssertionError("no send was refused")
            filler.unlink()
            acked.append(await ann.request("chat.send", {"scope": "lobby", "body": "after"}))
            assert await all_history(ann, "lobby") == acked
