"""What docs/client.md promises of both Python clients and no other test held, against a real daemon.

- ``close()``: a waiting request raises ``ClientClosed``, the ``events()`` iterators end quietly (a
  ``client.state`` iterator hands over ``"closed"`` first), and the server sees close 1000;
  ``events.close()`` ends one iterator, ``events.pending()`` takes without waiting;
- an ``events()`` iterator whose program does not read delivers ``events_limit`` events, then raises
  ``EventsOverflow``, while the room view, the other iterators and the requests go on;
- a kick is respected (the view is dropped and the room never rejoined, even after a reconnect), so is
  ``leave()``; ``session_id`` is new after the reconnect; an error reply raises ``SignalError``;
- with ``reconnect=False`` a daemon restart closes the client (``ClientClosed`` with the close code);
- the token goes as ``Authorization: Bearer`` (never in the URL); an async ``get_token`` is awaited;
  an authenticator's refusal reaches ``connect`` as ``ClientClosed`` with the close code (``"close"``)
  or the HTTP status (``"http"``); any status but 403 and 429 is a 4401 (docs/embedding.md);
- an expired session (4001) makes the client call ``get_token`` and come back;
- a connection that stays silent (the daemon stopped with SIGSTOP) is taken for dead after twice
  ``heartbeat_s`` plus 5 s and replaced, even when nothing at all came after the welcome;
- a server ping that crosses the client's close is no error ("plain exceptions", nothing logged).

Each test runs the Trio client in this task and the asyncio one in a thread (``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import trio
from conftest import daemon, make_config, start_server
from test_client_live import ADAPTERS, FAST, Connect, run_in

from signald import Context, CustomMessage, default_router
from signald.auth import AuthRefused, HandshakeRequest, Identity
from signald.client import ClientClosed, EventsOverflow, SignalError
from signald.logfmt import FIELDS

Sleep = Callable[[float], Awaitable[None]]


class Slow(msgspec.Struct):
    seconds: float


async def slow(ctx: Context, msg: CustomMessage) -> dict[str, Any]:
    await trio.sleep(msg.data.seconds)
    return {"slept": msg.data.seconds}


async def wait_until(sleep: Sleep, check: Callable[[], bool], what: str, limit_s: float = 10.0) -> None:
    for _ in range(int(limit_s / 0.01)):
        if check():
            return
        await sleep(0.01)
    raise AssertionError(f"never: {what}")


async def close_during(connect: Connect, sleep: Sleep, client: Any, waiting: Callable[[], Awaitable[None]],
                       *, after_s: float) -> None:
    """Run ``waiting`` beside the client's own tasks (either adapter's event loop), close the client
    ``after_s`` later, and return once ``waiting`` has ended."""
    if connect.__module__.startswith("signald.client.aio"):
        task = asyncio.ensure_future(waiting())
        await sleep(after_s)
        await client.close()
        await task
    else:
        async with trio.open_nursery() as tasks:
            tasks.start_soon(waiting)
            await sleep(after_s)
            await client.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_close_fails_what_waits_ends_the_iterators_and_closes_with_1000(
        nursery: trio.Nursery, tmp_path: Path, adapter: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "signald.audit")
    router = default_router()
    router.add_custom("app.slow", Slow, slow)
    srv = await start_server(nursery, make_config(tmp_path), router=router)

    async def program(connect: Connect, sleep: Sleep) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with connect(srv.url, user="closer") as client:
            states = client.events("client.state")
            everything = client.events()
            dropped = client.events()
            assert await client.request("app.slow", {"seconds": 0}) == {"slept": 0}
            dropped.close()  # ends this one iterator: the next read says so
            try:
                await dropped.next()
            except StopAsyncIteration:
                seen["dropped"] = "ended"
            seen["pending"] = [e.type for e in everything.pending()]  # nothing arrived: nothing, and no wait

            async def waiting() -> None:
                try:
                    await client.request("app.slow", {"seconds": 4}, timeout=30)
                    seen["waiting"] = "answered"
                except ClientClosed as exc:
                    seen["waiting"] = ("ClientClosed", exc.code)

            await close_during(connect, sleep, client, waiting, after_s=0.2)  # the request is out by then
            seen["state"] = client.state
            seen["states"] = [e.data["state"] async for e in states]  # ends quietly after "closed"
            seen["everything"] = [e.type async for e in everything]
            try:
                await client.request("session.info")
            except ClientClosed:
                seen["after"] = "ClientClosed"
        return seen

    with trio.fail_after(20):
        started = trio.current_time()
        seen = await run_in(adapter, program)
        assert trio.current_time() - started < 3.5, "close() waited for the reply (or more than 2 s for the close)"
    assert seen == {"dropped": "ended", "pending": [], "waiting": ("ClientClosed", None), "state": "closed",
                    "states": ["closed"], "everything": ["client.state"], "after": "ClientClosed"}
    def closed() -> list[dict[str, Any]]:
        return [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "connection closed"]

    await wait_until(trio.sleep, lambda: bool(closed()), "the server logged the close")
    assert (closed()[0]["close_code"], closed()[0]["closed_by"]) == (1000, "client")


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_an_unread_iterator_overflows_after_its_limit_and_nothing_else_suffers(
        nursery: trio.Nursery, tmp_path: Path, adapter: str) -> None:
    srv = await start_server(nursery, make_config(tmp_path))

    async def program(connect: Connect, sleep: Sleep) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with connect(srv.url, user="bot", events_limit=3) as bot, connect(srv.url, user="alice") as alice:
            unread = bot.events("chat.message")
            room = await bot.join("lobby")
            await alice.join("lobby")
            for i in range(5):
                await alice.request("chat.send", {"scope": "lobby", "body": f"m{i}"})
            await wait_until(sleep, lambda: len(room.messages) == 5, "the view holds the 5 messages")
            later = bot.events("chat.message")  # a new iterator after the overflow works
            seen["delivered"] = []
            try:
                async for event in unread:
                    seen["delivered"].append(event.data["body"])
            except EventsOverflow as exc:
                seen["overflow"] = exc.limit
            await alice.request("chat.send", {"scope": "lobby", "body": "m5"})
            seen["later"] = (await later.next()).data["body"]
            seen["view"] = [m["body"] for m in room.messages]
            seen["info"] = (await bot.request("session.info"))["user_id"]
        return seen

    with trio.fail_after(20):
        seen = await run_in(adapter, program)
    assert seen == {"delivered": ["m0", "m1", "m2"], "overflow": 3, "later": "m5",
                    "view": ["m0", "m1", "m2", "m3", "m4", "m5"], "info": "bot"}


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_kick_and_a_leave_are_respected_across_a_reconnect(tmp_path: Path, adapter: str) -> None:
    token = trio.lowlevel.current_trio_token()
    db = str(tmp_path / "d.db")

    async with AsyncExitStack() as stack:
        process, url = await stack.enter_async_context(
            daemon(tmp_path, "first", "--db", db, config_text='[auth]\nmods = ["mod"]\n'))
        port = urlsplit(url).port
        assert port

        async def restart() -> None:
            process.send_signal(signal.SIGTERM)
            await process.wait()
            await stack.enter_async_context(daemon(tmp_path, "second", "--db", db, port=port,
                                                   config_text='[auth]\nmods = ["mod"]\n'))

        async def program(connect: Connect, sleep: Sleep) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            async with connect(url, user="bot", backoff=FAST) as bot, connect(url, user="mod", backoff=FAST) as mod:
                kicked = bot.events("room.kicked")
                for name in ("lobby", "side", "kept"):
                    await bot.join(name)
                await mod.join("lobby")
                await mod.request("room.kick", {"room": "lobby", "user_id": "bot", "reason": "spam"})
                seen["kicked"] = (await kicked.next()).data["room"]
                await bot.leave("side")
                seen["rooms"] = sorted(bot.rooms)
                first_session = bot.session_id
                if connect.__module__.startswith("signald.client.aio"):
                    await asyncio.to_thread(trio.from_thread.run, restart, trio_token=token)
                else:
                    await restart()
                await wait_until(sleep, lambda: bot.state == "open" and bot.rooms["kept"].synced, "rejoined")
                seen["new_session"] = bot.session_id != first_session
                seen["rooms_after"] = sorted(bot.rooms)
                seen["refused"] = []
                for name in ("lobby", "side"):  # sent after the rejoins on the same connection
                    try:
                        await bot.request("chat.send", {"scope": name, "body": "still here?"})
                    except SignalError as exc:
                        seen["refused"].append(exc.code)
            return seen

        with trio.fail_after(30):
            seen = await run_in(adapter, program)
    assert seen == {"kicked": "lobby", "rooms": ["kept"], "new_session": True, "rooms_after": ["kept"],
                    "refused": ["NOT_IN_ROOM", "NOT_IN_ROOM"]}


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_without_reconnect_a_restart_closes_the_client(tmp_path: Path, adapter: str) -> None:
    async with daemon(tmp_path, "once", "--db", str(tmp_path / "d.db")) as (process, url):

        async def program(connect: Connect, sleep: Sleep) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            async with connect(url, user="once", reconnect=False) as client:
                events = client.events()
                process.send_signal(signal.SIGTERM)  # closes every connection with 1001
                try:
                    async for _ in events:
                        pass
                except ClientClosed as exc:
                    seen["events"] = exc.code
                seen["state"] = client.state
                try:
                    await client.request("session.info")
                except ClientClosed as exc:
                    seen["request"] = exc.code
            return seen

        with trio.fail_after(20):
            seen = await run_in(adapter, program)
    assert seen == {"events": 1001, "state": "closed", "request": 1001}


class Recording:
    """An authenticator that records each handshake and lets in only ``good``; ``status`` for the rest."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, request: HandshakeRequest) -> Identity:
        self.seen.append((request.path, request.header("authorization")))
        if request.token() != "good":
            raise AuthRefused(self.status, "not this one")
        return Identity("alice")


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("refusals", "status", "code"), [
    ("close", 418, 4401), ("close", 403, 4403), ("http", 418, 418), ("http", 403, 403)])
async def test_the_token_goes_in_the_header_and_a_refusal_reaches_connect_with_its_code(
        nursery: trio.Nursery, tmp_path: Path, adapter: str, refusals: str, status: int, code: int) -> None:
    auth = Recording(status)
    srv = await start_server(nursery, make_config(tmp_path, server={"refusals": refusals}), authenticator=auth)

    async def program(connect: Connect, sleep: Sleep) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        try:
            async with connect(srv.url, token="bad"):
                pass
        except ClientClosed as exc:
            seen["refused"] = exc.code

        async def get_token() -> str:  # an async get_token is awaited
            await sleep(0)
            return "good"

        async with connect(srv.url, get_token=get_token) as client:
            seen["user"] = (await client.request("session.info"))["user_id"]
        return seen

    with trio.fail_after(20):
        seen = await run_in(adapter, program)
    assert seen == {"refused": code, "user": "alice"}
    assert auth.seen == [("/", "Bearer bad"), ("/", "Bearer good")]


class Expiring:
    """Token ``short`` makes a session that expires in 0.6 s; ``long`` one that never does."""

    def __init__(self) -> None:
        self.tokens: list[str | None] = []

    def __call__(self, request: HandshakeRequest) -> Identity:
        self.tokens.append(request.token())
        if request.token() == "short":
            return Identity("alice", expires_at=time.time() + 0.6)
        if request.token() == "long":
            return Identity("alice")
        raise AuthRefused(401, "unknown token")


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_an_expired_session_gets_a_new_token_and_comes_back(
        nursery: trio.Nursery, tmp_path: Path, adapter: str) -> None:
    auth = Expiring()
    srv = await start_server(nursery, make_config(tmp_path), authenticator=auth)

    async def program(connect: Connect, sleep: Sleep) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        asked: list[str] = []

        def get_token() -> str:
            asked.append("long")
            return "long"

        async with connect(srv.url, token="short", get_token=get_token, backoff=FAST) as client:
            expired = client.events("session.expired")
            states = client.events("client.state")
            first = client.session_id
            await expired.next()  # then close 4001: get_token, and in again
            await wait_until(sleep, lambda: client.state == "open" and client.session_id != first, "back in")
            seen["states"] = [e.data["state"] for e in states.pending()]
            seen["user"] = (await client.request("session.info"))["user_id"]
            seen["asked"] = asked
        return seen

    with trio.fail_after(20):
        seen = await run_in(adapter, program)
    assert seen == {"states": ["reconnecting", "open"], "user": "alice", "asked": ["long"]}
    assert auth.tokens == ["short", "long"]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_silent_connection_is_taken_for_dead_and_replaced(tmp_path: Path, adapter: str) -> None:
    # heartbeat_s 0.5: after 0.5 s of silence the client pings; after 2 x 0.5 + 5 s it gives up
    async with daemon(tmp_path, "hangs", "--db", str(tmp_path / "d.db"),
                      config_text="[server]\nheartbeat_s = 0.5\n") as (process, url):

        async def program(connect: Connect, sleep: Sleep) -> dict[str, Any]:
            async with connect(url, user="patient", backoff=FAST) as client:
                first = client.session_id
                process.send_signal(signal.SIGSTOP)  # the socket stays up, nothing answers
                try:
                    await wait_until(sleep, lambda: client.state == "reconnecting", "taken for dead", 15)
                finally:
                    process.send_signal(signal.SIGCONT)
                await wait_until(sleep, lambda: client.state == "open" and client.session_id != first, "replaced")
                return {"user": (await client.request("session.info"))["user_id"]}

        with trio.fail_after(30):
            started = trio.current_time()
            assert await run_in(adapter, program) == {"user": "patient"}
            assert trio.current_time() - started >= 6  # not before 2 x heartbeat_s + 5 s


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_ping_that_crosses_the_close_is_no_error(
        nursery: trio.Nursery, tmp_path: Path, adapter: str, caplog: pytest.LogCaptureFixture) -> None:
    # The server answers a slow request, then pings the silent client (heartbeat_s 0.1) before it
    # reads the client's close: the client's WebSocket library must not answer that ping.
    router = default_router()
    router.add_custom("app.slow", Slow, slow)
    srv = await start_server(nursery, make_config(tmp_path, server={"heartbeat_s": 0.1}), router=router)

    async def program(connect: Connect, sleep: Sleep) -> None:
        async with connect(srv.url, user="closer") as client:
            async def waiting() -> None:
                with contextlib.suppress(ClientClosed):
                    await client.request("app.slow", {"seconds": 0.5})

            await close_during(connect, sleep, client, waiting, after_s=0.1)

    with trio.fail_after(20):
        for _ in range(3):
            await run_in(adapter, program)
    assert not [r.getMessage() for r in caplog.records if r.name == "signald.client" and r.levelno >= logging.ERROR]
