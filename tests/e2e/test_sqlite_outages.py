"""The SQLite file misbehaving under a running daemon: locked by another process (the ``sqlite3``
shell in ``BEGIN EXCLUSIVE``), its filesystem full (a small tmpfs: root only). Writes get INTERNAL
("history storage failed") in bounded time (the lock: after the store's 5 s busy timeout), reads
and ``/readyz`` go on, the daemon stays up, nothing acked is lost, and sends work again once the
cause is gone. (A read-only directory is not tested: permissions do not bind
root, and a filesystem with a file open for writing cannot be remounted read-only.)"""

from __future__ import annotations

import contextlib
import logging
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
from signald.client.raw import SignaldClient, connect

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


def fill_up(where: Path) -> Path:
    """Write a file into the small filesystem ``where`` until it is full (ENOSPC); returns it."""
    filler = where / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):  # ENOSPC: full
        while True:
            out.write(b"\0" * 65536)
    return filler


async def refused_sends(ann: SignaldClient, count: int) -> None:
    """Send big messages until ``count`` were refused (the pages the database still had fill first)."""
    refused = 0
    for i in range(2000):
        reply = await ann.request_raw("chat.send", {"scope": "lobby", "body": f"{i:04} " + "x" * 3000})
        refused += reply["type"] == "error"
        if refused == count:
            return
    raise AssertionError("the full disk did not refuse the sends")


async def test_a_full_disk_refuses_sends_and_they_work_again_once_there_is_room(nursery: trio.Nursery) -> None:
    with small_filesystem("4m") as where, trio.fail_after(15):
        server = await start_server(nursery, make_config(where))
        async with connect(server.url, user="ann") as ann:
            await ann.request("room.join", {"room": "lobby"})
            acked = [await ann.request("chat.send", {"scope": "lobby", "body": "before"})]
            filler = fill_up(where)
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


async def test_a_store_that_keeps_failing_logs_one_traceback_then_a_line_per_interval(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk logged a whole traceback for every failed transaction (~1000 in 3 s), drowning the
    log. Now the first failure has its traceback and then one line per interval counts the rest."""
    interval_s = 0.5
    monkeypatch.setattr("signald.history.work.FAILURE_LOG_INTERVAL_S", interval_s, raising=False)
    caplog.set_level(logging.ERROR, logger="signald.history")
    with small_filesystem("4m") as where, trio.fail_after(20):
        server = await start_server(nursery, make_config(where, limits={"rate_per_s": 1e6, "rate_burst": 1_000_000}))
        async with connect(server.url, user="ann") as ann:
            await ann.request("room.join", {"room": "lobby"})
            filler = fill_up(where)
            await refused_sends(ann, 50)
            started = trio.current_time()

            def store_records() -> list[logging.LogRecord]:
                return [r for r in caplog.records if r.name.startswith("signald.history")]

            while not any("more store failures like it" in r.getMessage() for r in store_records()):
                reply = await ann.request_raw("chat.send", {"scope": "lobby", "body": "y" * 3000})
                assert reply["type"] == "error", reply
            elapsed = trio.current_time() - started
            filler.unlink()
            await ann.request("chat.send", {"scope": "lobby", "body": "after"})
    records = store_records()
    assert len([r for r in records if r.exc_info]) == 1, [r.getMessage() for r in records]
    summaries = [r.getMessage() for r in records if "more store failures like it" in r.getMessage()]
    assert 1 <= len(summaries) <= elapsed / interval_s + 2, summaries
    assert all("Error" in line for line in summaries), summaries  # the last failure named, in one line


async def test_a_store_that_works_again_logs_how_many_failures_it_did_not_log(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture,
) -> None:
    """The failures counted after the first traceback were logged only by the next failure after
    the interval: when the disk had room again before that, nobody ever heard of them. The first
    send stored again logs their count."""
    caplog.set_level(logging.INFO, logger="signald.history")
    with small_filesystem("4m") as where, trio.fail_after(20):
        server = await start_server(nursery, make_config(where, limits={"rate_per_s": 1e6, "rate_burst": 1_000_000}))
        async with connect(server.url, user="ann") as ann:
            await ann.request("room.join", {"room": "lobby"})
            filler = fill_up(where)
            await refused_sends(ann, 20)  # within the first 10 s interval: counted after the first
            filler.unlink()
            await ann.request("chat.send", {"scope": "lobby", "body": "after"})
    records = [r for r in caplog.records if r.name.startswith("signald.history")]
    messages = [r.getMessage() for r in records]
    assert len([r for r in records if r.exc_info]) == 1, messages
    assert [m for m in messages if "recovered" in m] == messages[-1:] == [
        "history store recovered after 20 failures (19 not logged before)"], messages
