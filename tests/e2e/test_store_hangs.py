"""A history store that hangs does not hang its clients (docs/deploy.md, "When the history store goes away").

The store is hung for real: PostgreSQL paused (SIGSTOP), or the SQLite file held by the ``sqlite3``
shell in ``BEGIN EXCLUSIVE`` (the store waits its 5 s busy timeout for each batch). A request that
needs the store gets ``INTERNAL`` "the history store did not answer within ..." after
``history.request_timeout_s`` (1 s here), exactly once (the store's late answer sends nothing), and
the connection is not dropped by the heartbeat (2 s + 2 s here) while its reader waited on the
store. Before, the reader waited for the store with no limit: nothing was read meanwhile, the
client got ``1001 heartbeat timeout`` and its requests no reply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config, start_server
from postgres import PostgresServer, create_database
from test_sqlite_outages import BUSY_TIMEOUT_S, locked
from test_store_outages import paused

from signald.app.history import MAY_BE_DONE, MAY_BE_PUBLISHED, MAY_BE_STORED
from signald.client.raw import SignaldClient, connect

REQUEST_TIMEOUT_S = 1.0
HEARTBEAT = {"heartbeat_s": 2.0, "heartbeat_timeout_s": 2.0}  # 4 s: the pipelined waits below take 3 s
LATE = f"the history store did not answer within {REQUEST_TIMEOUT_S:g} s"
NOT_REPLIES = frozenset({"member.joined", "member.left", "room.active", "room.waiting", "presence.update",
                         "chat.message", "chat.edited"})


def config(tmp_path: Path, **history: Any) -> Any:
    return make_config(tmp_path, server=HEARTBEAT, history={"request_timeout_s": REQUEST_TIMEOUT_S, **history})


async def replies_while_hung(ann: SignaldClient, first: dict[str, Any]) -> None:
    """Sent together while the store hangs: a send, an edit, a history page, the joins with
    ``since_rev`` a client sends on reconnecting, and a ping. Each gets its one reply, in order, the
    store-bound ones ``INTERNAL`` in bounded time: the first that waits, after 1 s; those behind it
    at once (their connection's last request just timed out). The reader is back to reading within
    about 1 s, so the connection outlives the heartbeat (4 s) however many were sent together."""
    joins = [(f"j{i}", "room.join", {"room": f"room-{i}", "since_rev": 0}) for i in range(6)]
    frames = [
        ("s1", "chat.send", {"scope": "lobby", "body": "while hung", "client_msg_id": "hung-1"}),
        ("e1", "chat.edit", {"message_id": first["id"], "new_body": "edited while hung"}),
        ("h1", "chat.history", {"room": "lobby"}),
        *joins,
        ("p1", "presence.ping", None),
    ]
    sent_at = trio.current_time()
    for op_id, kind, data in frames:
        frame: dict[str, Any] = {"type": kind, "id": op_id}
        if data is not None:
            frame["data"] = data
        await ann.send(frame)
    expected = {"s1": LATE + MAY_BE_STORED, "e1": LATE + MAY_BE_DONE, "h1": LATE} | {j: LATE for j, _, _ in joins}
    with trio.fail_after(REQUEST_TIMEOUT_S + 2):  # (6 s with a deadline per request: a heartbeat timeout)
        for op_id, _, _ in frames:
            reply = await ann.next_event(skip=NOT_REPLIES)
            assert reply["data"]["op_id"] == op_id, reply
            if op_id == "p1":
                assert reply["type"] == "presence.pong", reply
            else:
                assert reply["type"] == "error", reply
                assert (reply["data"]["code"], reply["data"]["message"]) == ("INTERNAL", expected[op_id])
    await trio.sleep_until(sent_at + 2 * HEARTBEAT["heartbeat_s"] + 0.5)  # past the heartbeat: pinged, pong read
    with trio.fail_after(REQUEST_TIMEOUT_S + 1):  # still hung (SQLite: a write waits 5 s): this one waits 1 s again
        late = await ann.request_raw("chat.edit", {"message_id": first["id"], "new_body": "edited late"})
        assert late["type"] == "error" and late["data"]["message"] == LATE + MAY_BE_DONE, late
        assert (await ann.request_raw("presence.ping"))["type"] == "presence.pong"
    assert not ann.closed.is_set()


async def answered_once_after(ann: SignaldClient, first: dict[str, Any]) -> None:
    """The store is back: the send retried with its ``client_msg_id`` is stored once, the edit made
    while it hung was done or not (but once), and no late reply came for the requests answered."""
    with trio.fail_after(BUSY_TIMEOUT_S + 5):
        again = await ann.request("chat.send", {"scope": "lobby", "body": "while hung", "client_msg_id": "hung-1"})
        after = await ann.request("chat.edit", {"message_id": first["id"], "new_body": "edited after"})
        page = await ann.request("chat.history", {"room": "lobby"})
        assert [m["id"] for m in page["messages"]] == [first["id"], again["id"]]
        assert after["body"] == "edited after" and page["messages"][0]["body"] == "edited after"
        assert (await ann.request_raw("presence.ping"))["type"] == "presence.pong"
    assert not [e for e in ann.pending_events() if e["type"] in ("ack", "error")]
    assert sorted(e["data"]["op_id"] for e in ann.unmatched_errors) == sorted(  # once each
        ["s1", "e1", "h1", *(f"j{i}" for i in range(6))])


async def test_a_locked_sqlite_file_answers_each_request_in_time_and_keeps_the_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery, config(tmp_path))
    async with connect(server.url, user="ann") as ann:
        await ann.request("room.join", {"room": "lobby"})
        first = await ann.request("chat.send", {"scope": "lobby", "body": "before"})
        with locked(tmp_path / "signald.db"):
            await replies_while_hung(ann, first)
        await answered_once_after(ann, first)


async def test_a_paused_postgres_answers_each_request_in_time_and_keeps_the_connection(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    server = await start_server(nursery, config(tmp_path, url=create_database(postgres_server)))
    async with connect(server.url, user="ann") as ann:
        await ann.request("room.join", {"room": "lobby"})
        first = await ann.request("chat.send", {"scope": "lobby", "body": "before"})
        with paused(postgres_server):
            await replies_while_hung(ann, first)
        await answered_once_after(ann, first)


async def test_a_stored_publish_of_the_server_api_is_answered_in_time_while_the_store_hangs(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``POST /api/v1/publish`` with ``store`` (the embedding API's ``publish_and_store``) waited
    for a hung store with no limit: a backend's request hung with it (here, the 5 s busy timeout of
    a locked file, then "history storage failed"). It gets ``INTERNAL`` after ``request_timeout_s``
    like a client's ``chat.send``; the store back, the same call works."""
    import httpx

    key = "test-key-0123456789"
    server = await start_server(nursery, make_config(
        tmp_path, server=HEARTBEAT, history={"request_timeout_s": REQUEST_TIMEOUT_S}, api={"keys": [key]}))
    body = {"room": "lobby", "type": "app.score", "data": {"home": 1}, "store": True}
    async with httpx.AsyncClient(base_url=server.url.replace("ws://", "http://").rstrip("/"),
                                 headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        with locked(tmp_path / "signald.db"):
            started = trio.current_time()
            hung = await http.post("/api/v1/publish", json=body)
            assert trio.current_time() - started < BUSY_TIMEOUT_S - 1
            assert hung.status_code == 500, hung.text
            assert hung.json()["error"] == {"code": "INTERNAL", "message": LATE + MAY_BE_PUBLISHED}
        with trio.fail_after(BUSY_TIMEOUT_S + 5):
            back = await http.post("/api/v1/publish", json=body)
        assert back.status_code == 200, back.text


@pytest.mark.parametrize("timeout_s", [0.5, 29.0])  # below the heartbeat's 20 + 10 s (a configuration error)
def test_request_timeout_s_is_a_history_setting(tmp_path: Path, timeout_s: float) -> None:
    assert make_config(tmp_path, history={"request_timeout_s": timeout_s}).history.request_timeout_s == timeout_s
