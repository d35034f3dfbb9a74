"""History on PostgreSQL with real daemons: several daemons on one database, ``kill -9``, the server
unreachable at start or lost while running, ``signald history`` on a URL, and the password kept out
of every message."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
from conftest import daemon, make_config, start_server
from postgres import FreshDatabases, PostgresServer, create_database
from test_durability import all_history
from trio_websocket import ConnectionClosed, HandshakeError

from signald.client.raw import connect
from signald.config import load_config
from signald.errors import SignalError
from signald.history.factory import make_store
from signald.history.postgres import schema

N = 120  # messages per client


async def pipelined_sends(url: str, user: str, n: int, acks: list[dict[str, Any]]) -> None:
    async with connect(url, user=user) as client:
        await client.request("room.join", {"room": "lobby"})
        for i in range(n):  # every frame goes out before any ack is read
            await client.send({"type": "chat.send", "id": f"{user}-{i}", "data": {"scope": "lobby", "body": f"{i}"}})
        got = 0
        while got < n:
            reply = await client.next_event()
            assert reply["type"] != "error", reply
            if reply["type"] == "ack":
                acks.append(reply["data"]["data"])
                got += 1


async def test_two_daemons_on_one_database_never_gap_nor_duplicate_seq_or_rev(
    tmp_path: Path, postgres_url: str
) -> None:
    with trio.fail_after(60):
        async with daemon(tmp_path, "a", "--history-url", postgres_url) as (_, url_a), \
                daemon(tmp_path, "b", "--history-url", postgres_url) as (_, url_b):
            acks: list[dict[str, Any]] = []
            async with trio.open_nursery() as nursery:
                for user, url in (("ann", url_a), ("bob", url_b), ("cat", url_a), ("dan", url_b)):
                    nursery.start_soon(pipelined_sends, url, user, N, acks)
            total = 4 * N
            assert sorted(m["seq"] for m in acks) == list(range(1, total + 1))
            assert sorted(m["rev"] for m in acks) == list(range(1, total + 1))
            async with connect(url_b, user="eve") as eve:
                await eve.request("room.join", {"room": "lobby"})
                stored = await all_history(eve, "lobby")
            assert stored == sorted(acks, key=lambda m: m["seq"])


async def test_every_acked_message_survives_kill_9_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, "first", "--history-url", postgres_url) as (process, url):
            acks: list[dict[str, Any]] = []
            await pipelined_sends(url, "alice", 300, acks)
            process.kill()  # SIGKILL, right after the last ack arrived
            await process.wait()
        assert process.returncode == -signal.SIGKILL
        async with daemon(tmp_path, "restarted", "--history-url", postgres_url) as (_, again), \
                connect(again, user="alice") as client:
            await client.request("room.join", {"room": "lobby"})
            assert await all_history(client, "lobby") == acks
            assert (await client.request("chat.send", {"scope": "lobby", "body": "on"}))["seq"] == 301


def test_unreachable_postgres_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = "postgresql://signald:s3cret-pw@127.0.0.1:9/nowhere"  # port 9 (discard): nothing listens
    done = subprocess.run([sys.executable, "-m", "signald", "serve", "--port", "0", "--history-url", url],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signald: cannot start: history.url: history store postgresql://signald:***@")
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_the_password_is_in_no_config_repr_or_error() -> None:
    url = "postgresql://u:s3cret-pw@db.example:5432/chat"
    config = load_config(env={"SIGNALD_HISTORY_URL": url})
    assert config.history_url() == url
    assert "s3cret-pw" not in repr(config) and "***" in repr(config.history)
    with pytest.raises(ValueError, match=r"history.url") as info:
        load_config(env={"SIGNALD_HISTORY_URL": "postgresql://u:s3cret-pw@db.example:port/chat"})
    assert "s3cret-pw" not in str(info.value)
    with pytest.raises(ValueError) as info:
        load_config(env={"SIGNALD_HISTORY_URL": "mysql://u:s3cret-pw@db/chat"})
    assert "s3cret-pw" not in str(info.value)
    assert load_config(env={}).history_url() == "sqlite:///./signald.db"


async def test_stores_opening_together_migrate_once(postgres_url: str) -> None:
    opened: list[int] = []

    async def open_one() -> None:
        async with make_store(postgres_url) as store:
            opened.append((await store.stats())["schema_version"])

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(open_one)
    assert opened == [schema.SCHEMA_VERSION] * 4
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM signald.schema_version").fetchall() == [(schema.SCHEMA_VERSION,)]


def test_history_commands_on_a_postgres_url(postgres_server: PostgresServer) -> None:
    url = create_database(postgres_server)
    run = [sys.executable, "-m", "signald", "history"]
    fresh = subprocess.run([*run, "stats", "--url", url], capture_output=True, text=True, timeout=30)
    assert fresh.returncode == 2 and "migrate" in fresh.stderr  # read-only: never creates the schema
    migrated = subprocess.run([*run, "migrate", "--url", url], capture_output=True, text=True, timeout=30)
    assert migrated.returncode == 0 and f"schema version {schema.SCHEMA_VERSION}" in migrated.stdout

    async def fill() -> None:
        async with make_store(url) as store:
            for i in range(3):
                await store.send(room="lobby", user_id="ann", body=f"m{i}")

    trio.run(fill)
    stats = json.loads(subprocess.run([*run, "stats", "--url", url], capture_output=True, text=True,
                                      timeout=30, check=True).stdout)
    assert (stats["rooms"], stats["messages"], stats["backend"]) == (1, 3, "postgresql")
    lines = subprocess.run([*run, "export", "--url", url], capture_output=True, text=True, timeout=30,
                           check=True).stdout.splitlines()
    assert [json.loads(line)["body"] for line in lines] == ["m0", "m1", "m2"]


async def test_postgres_stopped_and_restarted_during_traffic(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """Clear errors while it is gone (INTERNAL, readyz 503), nothing acked lost, back by itself."""
    server = await start_server(nursery, make_config(tmp_path, history={"url": create_database(postgres_server)}))
    async with connect(server.url, user="ann") as ann, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        await ann.request("room.join", {"room": "lobby"})
        acked = [await ann.request("chat.send", {"scope": "lobby", "body": f"{i}"}) for i in range(5)]
        await trio.to_thread.run_sync(postgres_server.stop)
        try:
            with pytest.raises(SignalError) as info:
                await ann.request("chat.send", {"scope": "lobby", "body": "into the void"})
            assert (info.value.code, info.value.message) == ("INTERNAL", "history store unavailable")
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and "history store unavailable" in ready.json()["reason"]
        finally:
            await trio.to_thread.run_sync(postgres_server.start)
        with trio.fail_after(20):  # the writer reconnects after its backoff (at most 5 s)
            while True:
                try:
                    back = await ann.request("chat.send", {"scope": "lobby", "body": "back"})
                    break
                except SignalError as exc:
                    assert exc.code == "INTERNAL"
                    await trio.sleep(0.2)
        assert (await http.get("/readyz")).status_code == 200
        stored = await all_history(ann, "lobby")
        assert stored[:5] == acked and stored[-1] == back
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))


async def test_kill_9_in_the_middle_of_concurrent_batches_loses_no_acked_send_and_stores_each_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """Four clients pipelining into one shared room and rooms of their own (the sends of several
    clients go in one statement, committed from the event loop); ``kill -9`` while sends are still
    in flight. After a restart every acked send is stored once, as acked; each room's ``seq`` runs
    without a gap; a send that was never acked is stored once or not at all."""
    users = ("ann", "bob", "cat", "dan")
    per_client = 200
    acks: dict[str, dict[str, Any]] = {}
    with trio.fail_after(60):
        async with daemon(tmp_path, "first", "--history-url", postgres_url) as (process, url):
            enough = trio.Event()

            async def sender(user: str) -> None:
                try:
                    async with connect(url, user=user) as client:
                        for room in ("shared", f"own-{user}"):
                            await client.request("room.join", {"room": room})
                        for i in range(per_client):  # every frame out before any ack is read
                            room = "shared" if i % 2 else f"own-{user}"
                            await client.send({"type": "chat.send", "id": f"{user}-{i}",
                                               "data": {"scope": room, "body": f"{user}-{i}"}})
                        while True:
                            reply = await client.next_event()
                            assert reply["type"] != "error", reply
                            if reply["type"] == "ack":
                                acks[reply["data"]["op_id"]] = reply["data"]["data"]
                                if len(acks) == len(users) * per_client // 8:
                                    process.kill()  # SIGKILL at once, with most sends unacked
                                    enough.set()
                except* (ConnectionClosed, HandshakeError, OSError):  # the client's nursery groups them
                    if not enough.is_set():  # the kill may find a slower sender anywhere in this, nothing else
                        raise

            async with trio.open_nursery() as nursery:
                for user in users:
                    nursery.start_soon(sender, user)
                await enough.wait()
                await process.wait()
                nursery.cancel_scope.cancel()
        assert process.returncode == -signal.SIGKILL
        assert len(acks) < len(users) * per_client, "every send was acked before the kill: nothing was in flight"
        async with daemon(tmp_path, "restarted", "--history-url", postgres_url) as (_, again), \
                connect(again, user="eve") as eve:
            stored: list[dict[str, Any]] = []
            for room in ("shared", *(f"own-{u}" for u in users)):
                await eve.request("room.join", {"room": room})
                in_room = await all_history(eve, room)
                assert [m["seq"] for m in in_room] == list(range(1, len(in_room) + 1)), room
                stored += in_room
    bodies = [m["body"] for m in stored]
    assert len(bodies) == len(set(bodies)), "a send was stored twice"
    by_body = {m["body"]: m for m in stored}
    for op_id, acked in acks.items():
        assert by_body.get(op_id) == acked, f"acked {op_id} is not stored as acked"


def test_each_test_gets_a_database_no_test_had_and_it_is_dropped_after(postgres_server: PostgresServer) -> None:
    """The suite's own ``postgres_url`` (tests/postgres.py): made ahead on a thread, never handed out
    twice, empty, and gone once given back."""
    databases = FreshDatabases(postgres_server, ahead=2)

    def names() -> set[str]:
        with psycopg.connect(postgres_server.url()) as conn:
            return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}

    try:
        first, second = databases.take(), databases.take()
        assert first != second and {first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]} <= names()
        for url in (first, second):
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                                    " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
                                    ).fetchone() == (0,)
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("CREATE TABLE left_behind (x int)")  # a session still open: dropped all the same
            databases.used(first)
            for _ in range(200):  # the worker drops it soon after
                if first.rsplit("/", 1)[1] not in names():
                    break
                time.sleep(0.05)
            assert first.rsplit("/", 1)[1] not in names()
        assert second.rsplit("/", 1)[1] in names()
    finally:
        databases.close()


async def test_the_shared_database_of_the_3_node_tests_is_emptied_like_a_new_one(postgres_url: str) -> None:
    """``over_nodes.SharedDatabase.emptied``: every signald table empty, identities from 1 again, the
    schema (and its version) kept for the next test's nodes."""
    from over_nodes import SharedDatabase

    async with make_store(postgres_url) as store:
        for room in ("a", "b"):
            message, *_ = await store.send(room=room, user_id="ann", body="hi")
            await store.react(message_id=message.id, user_id="bob", reaction="+1", action="add", room=room)
        await store.mark_read(user_id="bob", room="b", message_id=message.id)
    assert SharedDatabase(postgres_url).emptied() == postgres_url
    with psycopg.connect(postgres_url) as conn:
        tables = [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'signald'")]
        assert len(tables) > 5
        counts = {t: conn.execute(f"SELECT count(*) FROM signald.{t}").fetchone() for t in tables}  # type: ignore[arg-type]
        assert counts == {t: (1,) if t == "schema_version" else (0,) for t in tables}
        assert conn.execute("SELECT nextval('signald.reactions_rowid_seq')").fetchone() == (1,)
