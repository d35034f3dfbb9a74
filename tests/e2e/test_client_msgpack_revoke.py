"""Both Python clients (Trio and asyncio) against a real daemon subprocess: MessagePack, and 4003.

- ``binary=True`` speaks ``signald.v1.msgpack``: requests, acks and events (from a JSON client in
  the same room) go through, and across a daemon restart (SIGTERM) the room view resumes exactly
  and every message of the other user reaches the program once.
- An operator revokes the user (``POST /api/v1/disconnect``: ``session.revoked``, then close
  4003): the program gets the ``session.revoked`` event, then its ``events()`` iterator ends with
  ``ClientClosed`` (code 4003); ``client.state`` is ``"closed"``, requests raise ``ClientClosed``,
  leaving ``async with`` raises nothing, and the client does not come back (4003 means stop).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import daemon
from test_client_live import ADAPTERS, FAST, Connect, run_in

from signald.client import ClientClosed
from signald.client.raw import connect as raw_connect
from signald.protocol import SUBPROTOCOL_MSGPACK

KEY = "an-operator-key-for-the-revoke-test-0123"
API = f'[api]\nkeys = ["{KEY}"]\n'
Sleep = Callable[[float], Awaitable[None]]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_msgpack_carries_requests_events_and_an_exact_resume(tmp_path: Path, adapter: str) -> None:
    restarted = threading.Event()  # set from the test's side; the program may run in another thread
    heard_one = threading.Event()
    seen: list[tuple[str, bool]] = []

    async def alice_says(body: str) -> None:  # a JSON client in the same room
        async with raw_connect(url, user="alice") as alice:
            await alice.request("room.join", {"room": "mp"})
            await alice.request("chat.send", {"scope": "mp", "body": body})

    async def program(connect: Connect, sleep: Sleep) -> tuple[str | None, list[tuple[str, int, str]], str]:
        async with connect(url, user="bot", binary=True, backoff=FAST) as client:
            subprotocol = client._ws.subprotocol  # what the handshake agreed on
            chat = client.events("chat.message")
            room = await client.join("mp")
            mine = await client.request("chat.send", {"scope": "mp", "body": "ünïcode ✓ from msgpack"})
            if adapter == "trio":
                await alice_says("one")
            else:
                await asyncio.to_thread(trio.run, alice_says, "one")
            event = await chat.next()
            seen.append((event.data["body"], event.replayed))
            heard_one.set()
            while not restarted.is_set():  # the daemon restarts; alice speaks while the bot is away
                await sleep(0.01)
            event = await chat.next()
            seen.append((event.data["body"], event.replayed))
            while client.state != "open" or not room.synced:
                await sleep(0.01)
            info = await client.request("session.info")
            view = [(m["id"], m["seq"], m["body"]) for m in room.messages]
            return subprotocol, view, f"{mine['body']}|{info['user_id']}"

    result: list[Any] = []
    done = trio.Event()

    async def run() -> None:
        result.append(await run_in(adapter, program))
        done.set()

    with trio.fail_after(40):
        async with daemon(tmp_path, f"{adapter}-1") as (process, url), trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.to_thread.run_sync(heard_one.wait, abandon_on_cancel=True)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            async with daemon(tmp_path, f"{adapter}-2", port=_port(url)):
                await alice_says("two")
                restarted.set()
                await done.wait()
                async with raw_connect(url, user="auditor") as auditor:
                    await auditor.request("room.join", {"room": "mp"})
                    history = await auditor.request("chat.history", {"room": "mp"})
    subprotocol, view, echoed = result[0]
    assert subprotocol == SUBPROTOCOL_MSGPACK
    assert echoed == "ünïcode ✓ from msgpack|bot"
    assert view == [(m["id"], m["seq"], m["body"]) for m in history["messages"]]
    assert [body for _, _, body in view] == ["ünïcode ✓ from msgpack", "one", "two"]
    assert [body for body, _ in seen] == ["one", "two"]  # each once, live or replayed


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_revoked_session_closes_the_client_for_good_with_4003(tmp_path: Path, adapter: str) -> None:
    async def program(connect: Connect, sleep: Sleep) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with connect(url, user="mallory", backoff=FAST) as client:
            events = client.events("session.revoked", "client.state")
            await client.join("ops")
            async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
                reply = await http.post("/api/v1/disconnect", json={"user_id": "mallory", "reason": "banned"},
                                        headers={"Authorization": f"Bearer {KEY}"})
            out["api"] = reply.json()
            out["events"] = []
            try:
                async for event in events:
                    out["events"].append((event.type, event.data))
            except ClientClosed as exc:
                out["ended"] = exc.code
            out["state"] = client.state
            try:
                await client.request("session.info")
            except ClientClosed as exc:
                out["request"] = exc.code
            await sleep(0.3)  # FAST would have reconnected by now, if it did
            out["state_later"] = client.state
            async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
                stats = await http.get("/api/v1/stats", headers={"Authorization": f"Bearer {KEY}"})
            out["connections"] = stats.json()["result"]["connections"]
        return out

    with trio.fail_after(30):
        async with daemon(tmp_path, adapter, config_text=API) as (_, url):
            out = await run_in(adapter, program)
    assert out["api"] == {"result": {"sessions": 1}}
    assert out["events"] == [("session.revoked", {"reason": "banned"}),
                             ("client.state", {"state": "closed"})]
    assert (out["ended"], out["state"], out["request"], out["state_later"]) == (4003, "closed", 4003, "closed")
    assert out["connections"] == 0  # it did not come back
