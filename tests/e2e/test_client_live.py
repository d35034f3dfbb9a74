"""Both Python clients (Trio and asyncio) against a real daemon subprocess.

- 100 concurrent requests from several tasks correlate; a request to a stopped daemon times out;
- a bot in a room while another user sends, edits, deletes and reacts, and the daemon is restarted
  (SIGTERM) and then killed (``kill -9``), both times with requests in flight: afterwards the bot's
  ``room.messages`` equals the server's history exactly, every message reached it as one
  ``chat.message`` event (live or replayed), and every ``chat.send`` was stored exactly once.

The asyncio client runs in a thread of its own (``asyncio.run``); the test itself is Trio.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from test_durability import all_history, daemon

from signald.client import Backoff, ClientClosed, ConnectionLost, SignalError
from signald.client import connect as trio_connect
from signald.client.aio import connect as aio_connect
from signald.client.raw import connect as raw_connect

FAST = Backoff(initial_s=0.05, max_s=0.5, harder_min_s=0.5)
ADAPTERS = ["trio", "asyncio"]
Msg = dict[str, Any]
Connect = Callable[..., AbstractAsyncContextManager[Any]]


async def run_in(adapter: str, program: Callable[[Connect, Callable[[float], Awaitable[None]]], Awaitable[Any]]) -> Any:
    """Run ``program(connect, sleep)`` with the adapter's client: in this Trio task, or asyncio in a thread."""
    if adapter == "trio":
        return await program(trio_connect, trio.sleep)
    return await trio.to_thread.run_sync(lambda: asyncio.run(program(aio_connect, asyncio.sleep)))


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_hundred_concurrent_requests_from_several_tasks_correlate(tmp_path: Path, adapter: str) -> None:
    async def program(connect: Connect, sleep: Callable[[float], Awaitable[None]]) -> list[tuple[str, str]]:
        async with connect(url, user="many", backoff=FAST) as client:
            await client.join("lobby")

            async def worker(task: int) -> list[tuple[str, str]]:
                out = []
                for i in range(10):
                    body = f"{task}-{i}"
                    message = await client.request("chat.send", {"scope": "lobby", "body": body})
                    out.append((body, message["body"]))
                return out

            if connect is trio_connect:
                results: list[list[tuple[str, str]]] = [[] for _ in range(10)]

                async def into(task: int) -> None:
                    results[task] = await worker(task)

                async with trio.open_nursery() as nursery:
                    for task in range(10):
                        nursery.start_soon(into, task)
            else:
                results = list(await asyncio.gather(*(worker(task) for task in range(10))))
            return [pair for chunk in results for pair in chunk]

    with trio.fail_after(30):
        async with daemon(tmp_path, adapter) as (_, url):
            pairs = await run_in(adapter, program)
    assert len(pairs) == 100
    assert all(sent == echoed for sent, echoed in pairs)
    assert len({sent for sent, _ in pairs}) == 100


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_request_times_out_and_a_first_connection_failure_is_one_plain_exception(
        tmp_path: Path, adapter: str) -> None:
    async def program(connect: Connect, sleep: Callable[[float], Awaitable[None]]) -> list[str]:
        seen = []
        async with connect(url, user="patient", backoff=FAST) as client:
            process.send_signal(signal.SIGSTOP)  # the daemon hears nothing for a while
            try:
                await client.request("session.info", timeout=0.3)
            except TimeoutError:
                seen.append("timeout")
            finally:
                process.send_signal(signal.SIGCONT)
            info = await client.request("session.info", timeout=5)
            seen.append(info["user_id"])
        try:
            async with connect(dead_url, user="nobody"):
                pass
        except ClientClosed as exc:  # not an ExceptionGroup
            seen.append(type(exc).__name__)
        try:
            async with connect(url, user="raiser"):
                raise KeyError("mine")
        except KeyError:  # the program's own exception comes out as itself
            seen.append("KeyError")
        return seen

    with trio.fail_after(30):
        async with daemon(tmp_path, adapter) as (process, url):
            async with daemon(tmp_path, adapter + "-dead") as (dead, dead_url):
                dead.kill()
                await dead.wait()
            assert await run_in(adapter, program) == ["timeout", "patient", "ClientClosed", "KeyError"]


class Shared:
    """What the test thread and a bot (maybe in another thread) tell each other."""

    def __init__(self) -> None:
        self.joined = threading.Event()
        self.finished = threading.Event()
        self.target_rev = 0


async def bot(connect: Connect, sleep: Callable[[float], Awaitable[None]], url: str, shared: Shared) -> Msg:
    """Sit in ``lobby`` until told the writers are done and the view reached their last revision."""
    async with connect(url, user="bot", backoff=FAST) as client:
        chat = client.events("chat.message")
        room = await client.join("lobby")
        shared.joined.set()
        delivered: list[str] = []
        states: set[str] = set()
        while not (shared.finished.is_set() and client.state == "open" and room.synced
                   and room.rev >= shared.target_rev):
            delivered += [event.data["id"] for event in chat.pending()]
            states.add(client.state)
            await sleep(0.02)
        delivered += [event.data["id"] for event in chat.pending()]
        return {"messages": room.messages, "delivered": delivered, "rev": room.rev, "states": states}


async def write(client: Any, rng: random.Random, ids: list[str], sent: list[str], prefix: str, count: int) -> None:
    """``count`` random changes by one user: sends, edits, soft and hard deletes, reactions."""
    for i in range(count):
        op = rng.choice(["send", "send", "send", "edit", "soft", "hard", "react", "unreact"]) if ids else "send"
        try:
            if op == "send":
                body = f"{prefix}-{i}"
                sent.append(body)
                message = await client.request("chat.send", {"scope": "lobby", "body": body})
                ids.append(message["id"])
            elif op == "edit":
                await client.request("chat.edit", {"message_id": rng.choice(ids), "new_body": f"{prefix}-{i} edited"})
            elif op in ("soft", "hard"):
                target = rng.choice(ids)
                await client.request("chat.delete", {"message_id": target, "mode": op})
                if op == "hard":
                    ids.remove(target)
            else:
                await client.request("chat.reaction", {"message_id": rng.choice(ids), "reaction": rng.choice("ab"),
                                                       "action": "add" if op == "react" else "remove",
                                                       "scope": "lobby"})
        except (SignalError, ConnectionLost):
            pass  # CONFLICT / NOT_FOUND on a deleted message; an edit or delete cut by the restart


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_bot_keeps_the_exact_room_across_a_restart_and_a_kill_9(tmp_path: Path, adapter: str) -> None:
    db = str(tmp_path / "d.db")
    shared = Shared()
    rng = random.Random(17)
    ids: list[str] = []
    sent: list[str] = []
    result: Msg = {}

    async def run_bot(url: str) -> None:
        result.update(await run_in(adapter, lambda connect, sleep: bot(connect, sleep, url, shared)))

    async def restart(stack: AsyncExitStack, process: trio.Process, how: int, name: str, port: int) -> trio.Process:
        process.send_signal(how)
        await process.wait()
        new, _ = await stack.enter_async_context(daemon(tmp_path, name, "--db", db, port=port))
        return new

    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            process, url = await stack.enter_async_context(daemon(tmp_path, "first", "--db", db))
            port = urlsplit(url).port
            assert port
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_bot, url)
                await trio.to_thread.run_sync(shared.joined.wait)  # a threading.Event: the bot may be asyncio
                async with trio_connect(url, user="alice", backoff=FAST) as alice:
                    await alice.join("lobby")
                    await write(alice, rng, ids, sent, "a", 40)
                    async with trio.open_nursery() as writers:  # requests in flight across the restart
                        writers.start_soon(write, alice, rng, ids, sent, "b", 30)
                        await trio.sleep(0.05)
                        process = await restart(stack, process, signal.SIGTERM, "second", port)
                    await write(alice, rng, ids, sent, "c", 20)
                    async with trio.open_nursery() as writers:
                        writers.start_soon(write, alice, rng, ids, sent, "d", 30)
                        await trio.sleep(0.05)
                        process = await restart(stack, process, signal.SIGKILL, "third", port)
                    await write(alice, rng, ids, sent, "e", 20)
                async with raw_connect(url, user="auditor") as auditor:
                    ack = await auditor.request("room.join", {"room": "lobby"})
                    history = await all_history(auditor, "lobby")
                shared.target_rev = ack["rev"]
                shared.finished.set()

    assert result["messages"] == history
    assert {"open", "reconnecting"} <= result["states"]
    delivered = result["delivered"]
    assert len(delivered) == len(set(delivered)), "a chat.message reached the bot twice"
    assert {m["id"] for m in history} <= set(delivered), "a stored message never reached the bot"
    # every send was stored exactly once (resent after the restarts with its client_msg_id)
    bodies = sorted(m["body"].removesuffix(" edited") for m in history if not m["deleted_at"])
    assert len(bodies) == len(set(bodies))
    assert len(sent) == len(set(sent))
