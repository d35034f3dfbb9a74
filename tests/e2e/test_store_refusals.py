"""PostgreSQL up but refusing: its connection limit reached at start and while running, a
``statement_timeout``, a full disk (a tablespace on a small tmpfs: root only). Requests get the
documented error (INTERNAL "history store unavailable"), the daemon stays up, nothing acked is
lost, and everything works again once the cause is gone (docs/configuration.md "On PostgreSQL").
A table that refuses writes (a trigger) fails each send (INTERNAL "history storage failed"), and
the log says so once with a traceback, not once per send (docs/deploy.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, LiteralString

import httpx
import psycopg
import pytest
import trio
from conftest import make_config, start_server
from postgres import PostgresServer, create_database
from test_durability import all_history

from signald.client.raw import SignaldClient, connect
from signald.errors import SignalError
from signald.server import RunningServer

UNAVAILABLE = ("INTERNAL", "history store unavailable")


def admin(server: PostgresServer, *statements: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


@contextlib.contextmanager
def own_role(server: PostgresServer, name: str) -> Iterator[str]:
    """A database owned by a login role that is no superuser (a superuser ignores connection limits);
    the URL signald uses. Both dropped after."""
    database = create_database(server).rsplit("/", 1)[1]
    admin(server, f"CREATE ROLE {name} LOGIN", f"ALTER DATABASE {database} OWNER TO {name}")
    try:
        yield server.url(database).replace("postgres@", f"{name}@")
    finally:
        admin(server, f"DROP DATABASE {database} WITH (FORCE)", f"DROP ROLE {name}")


def end_sessions(server: PostgresServer, role: str) -> None:
    admin(server, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")


async def sent_once_back(c: SignaldClient, body: str) -> Any:
    """The ack of a ``chat.send`` to lobby tried every 0.1 s, each refusal the documented one, until
    the store takes it (the caller bounds the wait)."""
    while True:
        try:
            return await c.request("chat.send", {"scope": "lobby", "body": body})
        except SignalError as exc:
            assert (exc.code, exc.message) == UNAVAILABLE
            await trio.sleep(0.1)


async def refused(c: SignaldClient, kind: str, data: dict[str, Any]) -> None:
    with pytest.raises(SignalError) as info:
        await c.request(kind, data)
    assert (info.value.code, info.value.message) == UNAVAILABLE


async def ready(server: RunningServer) -> int:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        return (await http.get("/readyz")).status_code


def test_no_connection_left_at_start_is_one_line_and_exit_1(tmp_path: Path, postgres_server: PostgresServer) -> None:
    with own_role(postgres_server, "signald_none") as url:
        admin(postgres_server, "ALTER ROLE signald_none CONNECTION LIMIT 0")
        done = subprocess.run([sys.executable, "-m", "signald", "serve", "--port", "0", "--history-url", url],
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "too many connections" in lines[0], done.stderr


async def test_too_few_connections_at_start_and_while_running(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """Two connections (the writer's and the send path's, none for reads): the daemon starts,
    sends are stored, reads and /readyz fail until the limit is raised. Then none at all while
    running: every request refused, nothing acked lost, all back once the limit is lifted."""
    with own_role(postgres_server, "signald_few") as url, trio.fail_after(15):
        admin(postgres_server, "ALTER ROLE signald_few CONNECTION LIMIT 2")
        server = await start_server(nursery, make_config(tmp_path, history={"url": url}))
        async with connect(server.url, user="ann") as ann:
            await refused(ann, "room.join", {"room": "lobby"})  # the rejoin read needs a reader
            assert await ready(server) == 503
            admin(postgres_server, "ALTER ROLE signald_few CONNECTION LIMIT -1")
            await ann.request("room.join", {"room": "lobby"})
            acked = [await ann.request("chat.send", {"scope": "lobby", "body": f"{i}"}) for i in range(3)]
            assert await ready(server) == 200

            admin(postgres_server, "ALTER ROLE signald_few CONNECTION LIMIT 0")
            end_sessions(postgres_server, "signald_few")
            await refused(ann, "chat.send", {"scope": "lobby", "body": "refused"})
            await refused(ann, "chat.history", {"room": "lobby"})
            assert await ready(server) == 503
            admin(postgres_server, "ALTER ROLE signald_few CONNECTION LIMIT -1")
            with trio.fail_after(8):  # the writer's backoff (0.2 s doubling) and the send path's 2 s
                acked.append(await sent_once_back(ann, "back"))
            assert await all_history(ann, "lobby") == acked
            assert await ready(server) == 200


async def test_a_statement_timeout_refuses_sends_while_a_lock_is_held(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    with own_role(postgres_server, "signald_hurried") as url, trio.fail_after(15):
        admin(postgres_server, "ALTER ROLE signald_hurried SET statement_timeout = '200ms'")
        server = await start_server(nursery, make_config(tmp_path, history={"url": url}))
        async with connect(server.url, user="ann") as ann:
            await ann.request("room.join", {"room": "lobby"})
            acked = [await ann.request("chat.send", {"scope": "lobby", "body": "first"})]
            with psycopg.connect(url) as locker:  # a DBA's long transaction on signald's rooms
                locker.execute("LOCK TABLE signald.rooms IN EXCLUSIVE MODE")
                await refused(ann, "chat.send", {"scope": "lobby", "body": "timed out"})
                assert await ready(server) == 200  # reads go on: the store is there
            acked.append(await ann.request("chat.send", {"scope": "lobby", "body": "after"}))
            assert await all_history(ann, "lobby") == acked


@contextlib.contextmanager
def tiny_tablespace(server: PostgresServer) -> Iterator[str]:
    """A database whose tablespace is a 16 MiB tmpfs (mounting needs root); its URL."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="signald-tiny-"))  # in /tmp: the postgres user can reach it
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        shutil.chown(where, "postgres", "postgres")
        name = f"tiny_{os.getpid()}"
        admin(server, f"CREATE TABLESPACE {name} LOCATION '{where}'")
        try:
            url = create_database(server).rsplit("/", 1)[1]
            admin(server, f"ALTER DATABASE {url} SET TABLESPACE {name}")
            try:
                yield server.url(url)
            finally:
                admin(server, f"DROP DATABASE {url} WITH (FORCE)")
        finally:
            admin(server, f"DROP TABLESPACE {name}")
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)
        where.rmdir()


async def test_a_full_disk_refuses_sends_and_they_work_again_once_there_is_room(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    with tiny_tablespace(postgres_server) as url, trio.fail_after(15):
        server = await start_server(nursery, make_config(tmp_path, history={"url": url}))
        async with connect(server.url, user="ann") as ann:
            await ann.request("room.join", {"room": "lobby"})
            acked = [await ann.request("chat.send", {"scope": "lobby", "body": "first"})]
            with psycopg.connect(url, autocommit=True) as filler:
                filler.execute("CREATE TABLE filler (x text)")
                with pytest.raises(psycopg.errors.DiskFull):
                    while True:
                        filler.execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
                for i in range(1000):  # until the pages the messages still had are full too
                    reply = await ann.request_raw("chat.send", {"scope": "lobby", "body": f"{i:04} " + "x" * 3000})
                    if reply["type"] == "error":
                        assert (reply["data"]["code"], reply["data"]["message"]) == UNAVAILABLE, reply
                        break
                    acked.append(reply["data"]["data"])
                else:
                    raise AssertionError("no send was refused")
                await refused(ann, "chat.send", {"scope": "lobby", "body": "x" * 3000})
                filler.execute("DROP TABLE filler")
            with trio.fail_after(8):  # the writer's backoff after it took the failure for a lost store
                acked.append(await sent_once_back(ann, "room again"))
            assert await all_history(ann, "lobby") == acked


REFUSE_SQL: Final = ("CREATE FUNCTION signald.refuse() RETURNS trigger LANGUAGE plpgsql"
                     " AS $$ BEGIN RAISE EXCEPTION 'messages are refused'; END $$")
REFUSING: Final[dict[str, LiteralString]] = {
    # each insert fails on its own (the writer tries each send alone in a savepoint)
    "each insert": "CREATE TRIGGER refuse BEFORE INSERT ON signald.messages FOR EACH ROW"
                   " EXECUTE FUNCTION signald.refuse()",
    # the COMMIT fails: the whole transaction does
    "the commit": "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON signald.messages DEFERRABLE INITIALLY DEFERRED"
                  " FOR EACH ROW EXECUTE FUNCTION signald.refuse()",
}


@pytest.mark.parametrize("refused_at", list(REFUSING))
async def test_a_table_that_refuses_writes_logs_one_traceback_then_one_line_once_they_are_taken_again(
    nursery: trio.Nursery, tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture, refused_at: str,
) -> None:
    """Each failed transaction logged its whole traceback (as on SQLite before it: ~1000 a second
    from a full disk). Now the first has it and the rest are counted, the count logged by the first
    send stored again: no failure after it would have told of them."""
    caplog.set_level(logging.INFO, logger="signald.history")
    with trio.fail_after(15):
        server = await start_server(nursery, make_config(tmp_path, history={"url": postgres_url}))
        async with connect(server.url, user="ann") as ann:
            await ann.request("room.join", {"room": "lobby"})
            acked = [await ann.request("chat.send", {"scope": "lobby", "body": "first"})]
            with psycopg.connect(postgres_url, autocommit=True) as dba:
                dba.execute(REFUSE_SQL)
                dba.execute(REFUSING[refused_at])
                for i in range(20):  # well within the 10 s of one interval
                    reply = await ann.request_raw("chat.send", {"scope": "lobby", "body": f"refused {i}"})
                    assert reply["type"] == "error", reply
                    assert (reply["data"]["code"], reply["data"]["message"]) == ("INTERNAL", "history storage failed")
                dba.execute("DROP TRIGGER refuse ON signald.messages")
            acked.append(await ann.request("chat.send", {"scope": "lobby", "body": "taken again"}))
            assert await all_history(ann, "lobby") == acked
    records = [r for r in caplog.records if r.name.startswith("signald.history")]
    assert len([r for r in records if r.exc_info]) == 1, [r.getMessage() for r in records]
    assert [r.getMessage() for r in records if "recovered" in r.getMessage()] == [
        "history store recovered after 20 failures (19 not logged before)"]
