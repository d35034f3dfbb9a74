"""PostgreSQL going away and coming back under a running daemon (one node): what clients and an
operator see, and that nothing acked is lost (docs/configuration.md "On PostgreSQL", docs/deploy.md).

The session's private server (tests/postgres.py) is stopped, restarted, paused or has some of
signald's connections ended by ``pg_terminate_backend``; each test waits on conditions, not on time.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
import trio
from conftest import daemon, make_config, start_server
from postgres import PostgresServer, create_database

from signald.app.history import LAST_SEEN_AT_CLOSE_S
from signald.app.httpapi import READY_TIMEOUT_S
from signald.client.raw import connect
from signald.errors import SignalError
from signald.server import RunningServer


@asynccontextmanager
async def stopped(postgres_server: PostgresServer, mode: str = "fast") -> AsyncIterator[None]:
    """The session's server stopped inside the block, started again on the way out."""
    await trio.to_thread.run_sync(postgres_server.stop, mode)
    try:
        yield
    finally:
        await trio.to_thread.run_sync(postgres_server.start)


async def on_postgres(nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, history={"url": create_database(postgres_server)}))


async def test_a_last_seen_flush_while_postgres_is_down_neither_stops_the_daemon_nor_loses_the_time(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub writes last-seen times every LAST_SEEN_FLUSH_S: one that fails (the store is gone)
    ended the hub's nursery, so the whole daemon, with a StorageError. Now it is logged, the times
    are written by a later flush once the store is back, and the daemon serves on."""
    monkeypatch.setattr("signald.app.history.LAST_SEEN_FLUSH_S", 0.05)
    server = await on_postgres(nursery, tmp_path, postgres_server)
    store = server.hub.history.store  # type: ignore[union-attr]
    outcomes: list[BaseException | None] = []
    changed = trio.Event()
    write = store.set_last_seen

    async def watched(entries: Any) -> None:
        try:
            await write(entries)
        except BaseException as exc:
            outcomes.append(exc)
            raise
        else:
            outcomes.append(None)
        finally:
            changed.set()

    monkeypatch.setattr(store, "set_last_seen", watched)

    async def until(done: Callable[[], bool]) -> None:
        nonlocal changed
        while not done():
            await changed.wait()
            changed = trio.Event()

    with trio.fail_after(15):
        async with stopped(postgres_server):
            async with connect(server.url, user="ann"):
                pass  # ann was seen, then left: a time to write
            await until(lambda: any(isinstance(o, SignalError) for o in outcomes))
        await until(lambda: outcomes[-1] is None)
        assert (await store.last_seen(["ann"])).keys() == {"ann"}
        async with connect(server.url, user="bob") as bob:
            assert (await bob.request_raw("presence.ping"))["type"] == "presence.pong"


def end_backends(postgres_server: PostgresServer, database: str, role: str) -> int:
    """``pg_terminate_backend`` on signald's connections of ``role`` to ``database``, and wait until
    their processes are gone (their sockets closed); how many."""
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        pids = [pid for pid, in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (database, f"signald-{role}"))]
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=10)
    return len(pids)


@pytest.mark.parametrize("fault", ["restart-fast", "restart-immediate", "sends", "writer", "reader"])
async def test_the_first_requests_after_an_idle_connection_was_lost_succeed(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer, fault: str
) -> None:
    """PostgreSQL restarted while the daemon was idle, or one kind of signald's connections ended
    by ``pg_terminate_backend``: the server is back, so the next send (send path), edit (writer),
    history page and join (readers) and ``/readyz`` succeed at once. Each connection found dead
    was only noticed when used, so the first requests after the outage got ``INTERNAL``."""
    url = create_database(postgres_server)
    server = await start_server(nursery, make_config(tmp_path, history={"url": url}))
    async with connect(server.url, user="ann") as ann, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        await ann.request("room.join", {"room": "lobby"})
        first = await ann.request("chat.send", {"scope": "lobby", "body": "before"})
        await ann.request("chat.edit", {"message_id": first["id"], "new_body": "edited before"})
        for _ in range(4):  # every reader connection in use once
            assert (await http.get("/readyz")).status_code == 200
        with trio.fail_after(15):
            if fault.startswith("restart"):
                async with stopped(postgres_server, fault.split("-")[1]):
                    pass
            else:
                assert await trio.to_thread.run_sync(end_backends, postgres_server, url.rsplit("/", 1)[1], fault)
            sent = await ann.request("chat.send", {"scope": "lobby", "body": "after"})
            assert (await ann.request("chat.edit", {"message_id": sent["id"], "new_body": "edited after"}))["rev"] == 4
            for _ in range(4):
                assert (await http.get("/readyz")).status_code == 200
            page = await ann.request("chat.history", {"room": "lobby"})
            assert [m["body"] for m in page["messages"]] == ["edited before", "edited after"]
            async with connect(server.url, user="bob") as bob:
                assert (await bob.request("room.join", {"room": "lobby"}))["rev"] == 4


@contextlib.contextmanager
def paused(postgres_server: PostgresServer) -> Iterator[None]:
    """The server's postmaster and every backend stopped (SIGSTOP) inside the block: connections
    stay open and the kernel takes what is sent, but nothing answers."""
    postmaster = psutil.Process(int((postgres_server.data / "postmaster.pid").read_text().split()[0]))
    processes = [postmaster, *postmaster.children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)


async def test_a_paused_postgres_makes_readyz_503_in_time_and_every_send_is_answered_once_after(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """While PostgreSQL answers nothing, ``/readyz`` says 503 within READY_TIMEOUT_S (its read was
    not cancellable: it waited, for as long as the pause, and then said 200), however often it
    is asked; the sends made meanwhile wait and each gets its one ack once the server goes on, and
    each is stored once."""
    server = await on_postgres(nursery, tmp_path, postgres_server)
    users = ("ann", "bob", "cat")
    per_user = 30
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}"))
        senders = [await stack.enter_async_context(connect(server.url, user=u)) for u in users]
        for c in senders:
            await c.request("room.join", {"room": "lobby"})
        with paused(postgres_server):
            for c in senders:  # every frame out; the store cannot answer any of them yet
                for i in range(per_user):
                    await c.send({"type": "chat.send", "id": f"{c.user_id}-{i}",
                                  "data": {"scope": "lobby", "body": f"{c.user_id}-{i}"}})
            for _ in range(2):  # the first probe hangs; the next one does not wait behind it for long
                with trio.fail_after(READY_TIMEOUT_S + 1):
                    ready = await http.get("/readyz")
                assert ready.status_code == 503 and "did not answer" in ready.json()["reason"]
        acks: dict[str, dict[str, Any]] = {}
        with trio.fail_after(10):
            for c in senders:
                for _ in range(per_user):
                    reply = await c.next_event(skip=frozenset({"member.joined", "room.active", "room.waiting",
                                                               "chat.message", "presence.update"}))
                    assert reply["type"] == "ack", reply
                    acks[reply["data"]["op_id"]] = reply["data"]["data"]
            assert (await http.get("/readyz")).status_code == 200
            page = await senders[0].request("chat.history", {"room": "lobby", "limit": 200})
        assert sorted(m["body"] for m in page["messages"]) == sorted(acks) and len(acks) == len(users) * per_user
        for c in senders:
            await c.request("presence.ping")
            assert not [e for e in c.pending_events() if e["type"] in ("ack", "error")]


async def test_once_readyz_says_200_again_the_next_send_is_acked(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an outage the writer thread waits out its backoff (up to 5 s) and the send path its
    RECONNECT_S before they try again, while ``/readyz`` (a reader) connects at once: it said 200
    and sends still got INTERNAL for seconds. A reader that connects again now cuts both waits
    short. (Both waits are lengthened here so that the window cannot close by itself.)"""
    monkeypatch.setattr("signald.history.postgres.writer.BACKOFF_MIN_S", 60.0)
    monkeypatch.setattr("signald.history.postgres.sendpath.RECONNECT_S", 60.0)
    server = await on_postgres(nursery, tmp_path, postgres_server)
    async with connect(server.url, user="ann") as ann, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        await ann.request("room.join", {"room": "lobby"})
        first = await ann.request("chat.send", {"scope": "lobby", "body": "before"})
        with trio.fail_after(10):
            async with stopped(postgres_server):
                for body in ("lost", "and the writer backs off"):  # the send path, then the writer, fail
                    with pytest.raises(SignalError):
                        await ann.request("chat.send", {"scope": "lobby", "body": body})
                assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/readyz")).status_code == 200
            after = await ann.request("chat.send", {"scope": "lobby", "body": "after"})
            assert [m["id"] for m in (await ann.request("chat.history", {"room": "lobby"}))["messages"]] == \
                [first["id"], after["id"]]


async def test_sigterm_stops_the_daemon_while_postgres_hangs(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """PostgreSQL paused with a join's read, a send and a /readyz probe waiting on it: SIGTERM ends
    the daemon within its shutdown wait, the last flush of last-seen times (2 s) and the store's
    close limit (10 s). It stayed until the server answered again: the last flush was shielded
    without a limit, the reads waited in threads that could not be abandoned, and the send path's
    wait on its socket could not be cancelled."""
    url = create_database(postgres_server)
    async with daemon(tmp_path, "hung", "--history-url", url, config_text="[server]\nshutdown_timeout_s = 0.5\n"
                      ) as (process, ws_url), connect(ws_url, user="ann") as ann, connect(ws_url, user="bob") as bob:
        await ann.request("room.join", {"room": "lobby"})
        await ann.request("chat.send", {"scope": "lobby", "body": "warm"})
        with paused(postgres_server):
            await ann.send({"type": "chat.send", "id": "hung", "data": {"scope": "lobby", "body": "hung"}})
            await bob.send({"type": "room.join", "id": "hung", "data": {"room": "lobby"}})
            async with httpx.AsyncClient(timeout=0.5) as probe:  # not waiting for it: its read goes on
                with pytest.raises(httpx.ReadTimeout):
                    await probe.get(ws_url.replace("ws://", "http://") + "readyz")
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(0.5 + LAST_SEEN_AT_CLOSE_S + 10 + 1.5):  # shutdown, last seen, the store
                await process.wait()
    assert process.returncode == 0, (tmp_path / "hung.log").read_text()
