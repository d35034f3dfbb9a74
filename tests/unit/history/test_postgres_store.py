"""The PostgreSQL store's own mechanics, on the session's private server (tests/postgres.py).

The contract is tested on both stores in test_history_store.py; here is what only PostgreSQL
has: sends of a batch stored by one statement (and what happens when one of them is bad), row
locks taken by two stores on one database (sorted for sends, a deadlock retried for the rest),
retention in bounded steps, and the database size kept current without anyone asking stats().
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from signald.errors import SignalError
from signald.history.contract import StorageError
from signald.history.postgres import retention
from signald.history.postgres.schema import migrate
from signald.history.postgres.store import PostgresStore
from signald.history.postgres.writer import connect
from signald.protocol import ChatMessage

Outcome = tuple[Any, BaseException | None]


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    """Sends on the writer thread too: these tests hold that thread on a row lock."""
    async with PostgresStore(postgres_url, trio_sends=False) as s:
        yield s


@pytest.fixture
def raw(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own (autocommit, tables qualified with ``signald.``)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def monitor(postgres_url: str) -> Iterator[Callable[[], int]]:
    """How many sessions of the test's database wait for a lock now (asked outside any
    transaction: ``pg_stat_activity`` is read once per transaction)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        def waiting() -> int:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                               " AND datname = current_database()").fetchone()
            return int(row[0]) if row else 0
        yield waiting


async def until(check: Callable[[], bool], what: str, limit_s: float = 10.0) -> None:
    """Poll ``check`` (state of another thread or of the server) until it holds, at most ``limit_s``."""
    for _ in range(int(limit_s / 0.01)):
        if check():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def send_together(store: PostgresStore, rooms: tuple[str, ...], user: str, body: str) -> list[Outcome]:
    """Queue one send per room in the same turn (one batch, unless the writer is quick) and wait."""
    outcomes: list[Outcome] = []
    done = trio.Event()

    def then(value: Any, error: BaseException | None) -> None:
        outcomes.append((value, error))
        if len(outcomes) == len(rooms):
            done.set()

    for room in rooms:
        store.send_nowait(room=room, user_id=user, body=body, then=then)
    await done.wait()
    return outcomes


def collect(outcomes: list[Outcome]) -> Callable[[Any, BaseException | None], None]:
    return lambda value, error: outcomes.append((value, error))


@asynccontextmanager
async def writer_held(store: PostgresStore, raw: psycopg.Connection[Any], waiting: Callable[[], int]
                      ) -> AsyncIterator[None]:
    """The writer thread stuck on a row lock of ``raw``'s for the body of the ``with``: what the
    body queues is taken as one batch when it ends."""
    await store.send(room="gate", user_id="ann", body="opens the gate's row")
    raw.execute("BEGIN")
    raw.execute("SELECT * FROM signald.rooms WHERE room = 'gate' FOR UPDATE")
    gate: list[Outcome] = []
    store.send_nowait(room="gate", user_id="ann", body="waits", then=collect(gate))
    await until(lambda: waiting() == 1, "the writer waits for the gate")
    yield
    raw.execute("COMMIT")
    await until(lambda: bool(gate), "the gate's send")
    assert gate[0][1] is None


async def held_batch(store: PostgresStore, raw: psycopg.Connection[Any], waiting: Callable[[], int],
                     queue: Callable[[], None], count: int) -> None:
    """Run ``queue`` (which queues ``count`` operations) while the writer is held: one batch."""
    async with writer_held(store, raw, waiting):
        queue()
        assert store._writer.queue.qsize() == count


# --------------------------------------------------------------------------- sends of a batch


async def test_one_bad_send_fails_alone_and_the_rest_of_its_batch_is_stored(
    store: PostgresStore, raw: psycopg.Connection[Any], monitor: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    """A row the database refuses (here a CHECK constraint a DBA added) fails its own send with a
    clear error; the other sends of the same batch are stored, numbered without a gap."""
    raw.execute("ALTER TABLE signald.messages ADD CONSTRAINT no_forbidden_word CHECK (body <> 'forbidden')")
    outcomes: list[Outcome] = []
    bodies = ["one", "two", "forbidden", "three", "four"]

    def queue() -> None:
        for i, body in enumerate(bodies):
            store.send_nowait(room="lobby", user_id="ann", body=body, client_msg_id=f"c{i}", then=collect(outcomes))

    with caplog.at_level(logging.WARNING, logger="signald.history.postgres.writer"):
        await held_batch(store, raw, monitor, queue, len(bodies))
        await until(lambda: len(outcomes) == len(bodies), "the batch")
    assert "history batch of 5 sends is stored one by one: CheckViolation" in caplog.text
    bad = outcomes[2][1]
    assert isinstance(bad, StorageError) and bad.code == "INTERNAL" and bad.message == "history storage failed"
    stored = [value[0] for value, error in outcomes if error is None]
    assert [(m.body, m.seq, m.rev) for m in stored] == [("one", 1, 1), ("two", 2, 2), ("three", 3, 3),
                                                        ("four", 4, 4)]
    page = await store.history(room="lobby")
    assert [(m.body, m.seq) for m in page.messages] == [("one", 1), ("two", 2), ("three", 3), ("four", 4)]
    assert store.available  # a bad row is not a lost server
    message, created = await store.send(room="lobby", user_id="ann", body="five", client_msg_id="c2")
    assert created and message.seq == 5  # the failed send's key was not kept


async def test_a_send_whose_commit_fails_is_refused_not_acked(postgres_url: str, raw: psycopg.Connection[Any]) -> None:
    """A deferred constraint (here a DBA's trigger) fails the COMMIT of the send path's statement
    after its rows came back. The send path took those rows for the outcome: the send was acked
    with a ``seq`` though nothing was stored."""
    async with PostgresStore(postgres_url) as store:
        await store.send(room="lobby", user_id="ann", body="stored")
        raw.execute("CREATE FUNCTION signald.refuse() RETURNS trigger LANGUAGE plpgsql"
                    " AS $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$")
        raw.execute("CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON signald.messages"
                    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION signald.refuse()")
        with pytest.raises(StorageError) as info:
            await store.send(room="lobby", user_id="ann", body="refused", client_msg_id="k")
        assert (info.value.code, info.value.message) == ("INTERNAL", "history storage failed")
        raw.execute("DROP TRIGGER refuse ON signald.messages")
        again, created = await store.send(room="lobby", user_id="ann", body="refused", client_msg_id="k")
        assert created and again.seq == 2
        page = await store.history(room="lobby")
        assert [(m.body, m.seq) for m in page.messages] == [("stored", 1), ("refused", 2)]


async def test_a_batch_of_sends_is_one_commit(
    store: PostgresStore, raw: psycopg.Connection[Any], monitor: Callable[[], int]
) -> None:
    outcomes: list[Outcome] = []

    def queue() -> None:
        for i in range(30):
            store.send_nowait(room=f"r{i % 3}", user_id="ann", body=f"{i}", then=collect(outcomes))

    await held_batch(store, raw, monitor, queue, 30)
    before = store.commits
    await until(lambda: len(outcomes) == 30, "the batch")
    assert all(error is None for _, error in outcomes)
    assert store.commits - before <= 1  # (the count may have moved on before ``before`` was read)
    for r in range(3):
        page = await store.history(room=f"r{r}")
        assert [m.seq for m in page.messages] == list(range(1, 11))


async def test_a_mixed_batch_commits_and_is_announced_in_the_order_it_was_queued(
    store: PostgresStore, raw: psycopg.Connection[Any], monitor: Callable[[], int]
) -> None:
    """Sends, an edit, sends: each run of sends is one statement, but nothing overtakes what was
    queued before it, so the room's ``rev`` is announced rising and in call order."""
    first, _ = await store.send(room="lobby", user_id="ann", body="v1")
    events: list[Any] = []
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery, writer_held(store, raw, monitor):
        store.send_nowait(room="lobby", user_id="bob", body="a", then=collect(outcomes), on_commit=events.append)
        nursery.start_soon(partial(store.edit, message_id=first.id, user_id="ann", new_body="v2",
                                   on_commit=events.append))
        await trio.testing.wait_all_tasks_blocked()
        for body in ("b", "c"):
            store.send_nowait(room="lobby", user_id="bob", body=body, then=collect(outcomes),
                              on_commit=events.append)
        assert store._writer.queue.qsize() == 4
    assert [(e.body, e.rev) for e in events] == [("a", 2), ("v2", 3), ("b", 4), ("c", 5)]
    assert [(value[0].body, value[0].seq) for value, _ in outcomes] == [("a", 2), ("b", 3), ("c", 4)]


# --------------------------------------------------------------------------- two stores, row locks


async def test_two_stores_sending_to_two_rooms_in_opposite_orders_never_deadlock(postgres_url: str) -> None:
    rooms = ("alpha", "beta")
    errors: list[BaseException] = []
    async with PostgresStore(postgres_url) as one, PostgresStore(postgres_url) as two:

        async def sender(store: PostgresStore, order: tuple[str, ...], user: str) -> None:
            for i in range(40):
                outcomes = await send_together(store, order, user, f"{i}")  # one batch touching both rooms
                errors.extend(e for _, e in outcomes if e is not None)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(sender, one, rooms, f"one{n}")
                nursery.start_soon(sender, two, rooms[::-1], f"two{n}")
        assert errors == []
        for room in rooms:
            page = await one.history(room=room, limit=500)
            assert [m.seq for m in page.messages] == list(range(1, 241))
            assert sorted(m.rev for m in page.messages) == list(range(1, 241))


async def test_a_deadlock_with_another_writer_is_retried_and_nothing_is_lost(
    postgres_url: str, monitor: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    """Edits of rooms x, g, y in one batch, while another client holds y and wants x: the cycle is
    closed by the store, PostgreSQL aborts its transaction, the store runs it again."""
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {postgres_url.rsplit('/', 1)[1]} SET deadlock_timeout = '50ms'")
    async with PostgresStore(postgres_url) as store:
        sent = {room: (await store.send(room=room, user_id="ann", body="v1"))[0] for room in ("x", "g", "y", "k")}
        other = psycopg.connect(postgres_url, autocommit=True)  # holds y, then wants x
        gate = psycopg.connect(postgres_url, autocommit=True)  # holds g (and k, to gather the batch)
        try:
            other.execute("BEGIN")
            other.execute("SET LOCAL deadlock_timeout = '20s'")  # so that the store is the one to detect it
            other.execute("UPDATE signald.rooms SET last_rev = last_rev WHERE room = 'y'")
            gate.execute("BEGIN")
            gate.execute("SET LOCAL deadlock_timeout = '20s'")
            gate.execute("UPDATE signald.rooms SET last_rev = last_rev WHERE room = 'g'")
            gate.execute("SAVEPOINT k")
            gate.execute("UPDATE signald.rooms SET last_rev = last_rev WHERE room = 'k'")
            edits: list[Outcome] = []

            async def edit(room: str) -> None:
                try:
                    edits.append((await store.edit(message_id=sent[room].id, user_id="ann", new_body="v2"), None))
                except SignalError as exc:
                    edits.append((room, exc))

            with caplog.at_level(logging.WARNING, logger="signald.history.postgres.writer"):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(edit, "k")  # the writer waits for k
                    await until(lambda: monitor() == 1, "the writer waits for k")
                    for room in ("x", "g", "y"):
                        nursery.start_soon(edit, room)
                        await trio.testing.wait_all_tasks_blocked()
                    assert store._writer.queue.qsize() == 3
                    gate.execute("ROLLBACK TO SAVEPOINT k")  # k goes: the batch x, g, y locks x, waits for g
                    await until(lambda: len(edits) == 1 and monitor() == 1, "the writer waits for g")
                    done = trio.Event()

                    async def take_x() -> None:  # the other client now waits for x, which the store holds
                        await trio.to_thread.run_sync(
                            other.execute, "UPDATE signald.rooms SET last_rev = last_rev WHERE room = 'x'")
                        done.set()

                    nursery.start_soon(take_x)
                    await until(lambda: monitor() == 2, "the other client waits for x")
                    gate.execute("ROLLBACK")  # g goes: the store takes g, then waits for y: a cycle
                    await done.wait()  # the store's transaction was aborted, which released x
                    other.execute("COMMIT")
            assert "history batch of 3 retried: DeadlockDetected" in caplog.text
            assert [e for _, e in edits if e is not None] == []
            for room in ("x", "g", "y", "k"):
                page = await store.history(room=room)
                assert [(m.body, m.rev) for m in page.messages] == [("v2", 2)]
        finally:
            other.close()
            gate.close()


# --------------------------------------------------------------------------- retention


def test_retention_removes_at_most_one_batch_per_step(postgres_url: str) -> None:
    now = 1795694400.0
    with connect(postgres_url, 5, "test") as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO messages (id, room, seq, rev, user_id, body, created_at, created_ts)"
            " SELECT 'id' || i, 'lobby', i, i, 'ann', 'x', 't', %s - 2000 * (i <= 600)::int"
            " FROM generate_series(1, 1200) AS i", (now,))
        conn.execute("INSERT INTO rooms VALUES ('lobby', 1200, 1200, 1200, 0)")
        steps = []
        more = True
        while more:  # as the writer thread does it: one transaction per step
            with conn.transaction():
                removed, more = retention.step(conn, now, 1000, 100)
            steps.append(removed)
        assert steps == [500, 500, 100] and retention.RETENTION_BATCH == 500  # age 600, then count 500
        assert conn.execute("SELECT min(seq), max(seq), count(*) FROM messages").fetchone() == (1101, 1200, 100)
        assert conn.execute("SELECT count, pruned_rev FROM rooms").fetchone() == (100, 1100)


async def test_retention_runs_by_itself_under_load(postgres_url: str) -> None:
    """Count retention keeps up while sends never let the writer thread idle."""
    async with PostgresStore(postgres_url, retention_max_count=5, retention_interval_s=0.01) as store:
        stop = trio.Event()
        reached = trio.Event()
        acked = [0]

        async def keep_sending() -> None:
            while not stop.is_set():
                await store.send(room="busy", user_id="ann", body="x")
                acked[0] += 1
                if acked[0] >= 400:
                    reached.set()

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(keep_sending)
            with trio.fail_after(20):
                await reached.wait()
            # Still sending: without retention there would be 400 or more. Between two steps come
            # at most RETENTION_EVERY batches of (here) at most 4 sends.
            assert (await store.stats())["messages"] < 5 + 64 * 4 + 8
            stop.set()
        await store.run_retention()
        page = await store.history(room="busy", limit=100)
        assert len(page.messages) == 5 and (await store.stats())["messages"] == 5


# --------------------------------------------------------------------------- db_bytes


async def test_db_bytes_follows_the_database_without_stats(postgres_url: str) -> None:
    async with PostgresStore(postgres_url, db_bytes_max_age_s=0) as store:
        first = store.db_bytes()
        assert first > 1_000_000  # measured when the store opened (an empty database is ~7 MB)
        outcomes: list[Outcome] = []
        for _ in range(2000):
            body = os.urandom(750).hex()  # 1,500 characters that do not compress
            store.send_nowait(room="big", user_id="ann", body=body, then=collect(outcomes))
        await until(lambda: len(outcomes) == 2000, "the sends")
        await until(lambda: store.db_bytes() > first + 2_000_000, "a larger size")
        assert store.db_bytes() <= (await store.stats())["db_bytes"]


async def test_messages_of_a_batch_come_back_as_stored(store: PostgresStore) -> None:
    """What a send of a batch returns is what a read finds (id, numbering, attachments, time)."""
    outcomes: list[Outcome] = []
    for i in range(5):
        store.send_nowait(room="lobby", user_id=f"u{i}", body=f"b{i}", client_msg_id=f"k{i}", then=collect(outcomes))
    await until(lambda: len(outcomes) == 5, "the sends")
    returned: list[ChatMessage] = [value[0] for value, _ in outcomes]
    assert (await store.history(room="lobby")).messages == returned
