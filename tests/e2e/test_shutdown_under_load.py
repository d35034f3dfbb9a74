"""SIGTERM in the middle of traffic: a real daemon stopped while its clients pipeline every request type.

``test_daemon.py`` stops a daemon once the last ack is in. Here the signal comes while 72
clients in nine rooms (some users on two devices, some mods, one admin) keep a window of
requests of every inbound type in flight without waiting for their replies: chat sends (some
retried with their ``client_msg_id``), edits, deletes, redactions, reactions and receipts of the
messages they have seen, joins and leaves, typing, room signals, kicks, presence, session
requests, and calls offered, answered, ICE'd and ended between clients. That is when the races of
a shutdown live: a request handled while its connection is being closed, a send committed after
the hub stopped, a call rung on a callee being closed, a join while rooms are torn down.

What an operator and the users would notice is asserted, nothing about timing but generous bounds:

- the daemon exits 0 and its log has no traceback, no ERROR/CRITICAL line and no "Exception";
- every connection ends with 1001 "server shutting down" (no client closes on its own; none is
  reset, although the clients keep sending while the server closes);
- each connection's replies are exactly one per request, in request order: the requests answered
  are a prefix of those sent, none answered twice, no reply to something never sent;
- after a restart on the same SQLite file every acked ``chat.send`` is there with its acked
  ``seq`` (unless a hard delete of it was sent), with its body or one a later request gave it, and
  no message is stored twice (every body that a send or an edit wrote is unique).
"""

from __future__ import annotations

import random
import re
import signal
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import daemon
from trio_websocket import ConnectionClosed

from signald.client.raw import REPLY_TYPES, SignaldClient, connect

CLIENTS = 72  # in ROOMS rooms of 8 (client i starts in room i % 9): CLIENTS // len(ROOMS) per room
USERS = 60  # clients past USERS are second devices (u0..u11): calls ring on two devices
ROOMS = [f"r{n}" for n in range(9)]
# Requests a client has sent and not yet had answered: pipelined, but few enough that this one test
# process reads what ~70 connections receive (every member of a room gets each request's events)
# well within the 1.5 s a stopping server gives a client to read its close frame (0.5 s for the
# replies, then the linger: a client behind on its reads that kept sending is not reset, see
# test_close_linger.py); a client that is seconds behind on its reads is a slow consumer, which is
# not what this test is about.
WINDOW = 4
SDP = {"type": "offer", "sdp": "v=0\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host"}
# The errors a valid request can get from the rules alone (a message gone, a room left, a kick,
# no role, a call already over...). INTERNAL, UNKNOWN_TYPE, INVALID_PAYLOAD, RATE_LIMITED are not.
RULE_ERRORS = frozenset({"NOT_IN_ROOM", "NOT_FOUND", "FORBIDDEN", "CONFLICT", "TARGET_OFFLINE", "UNAUTHORIZED"})
# Appended to conftest's ``[limits]`` (no rate limit): a send queue that a test process sharing
# two cores with the daemon cannot overflow while it decodes every fan-out (a 1013 slow-consumer
# close is not what this test is about), mods for kicks and redactions, an admin for system.stats.
CONFIG = ('send_queue = 65536\n[server]\nnew_connections_per_ip_per_s = 0\n'
          '[auth]\nadmins = ["u0"]\nmods = ["u1", "u2", "u3", "u4", "u5", "u6"]\n')
LOG_TROUBLE = re.compile(r"Traceback|ERROR|CRITICAL|Exception")
KINDS = {  # request type -> weight in the mix
    "chat.send": 14, "chat.edit": 3, "chat.delete": 2, "chat.redact": 1, "chat.reaction": 3, "chat.read": 2,
    "chat.typing": 3, "chat.history": 2, "chat.changes": 1, "room.join": 2, "room.leave": 2, "room.signal": 3,
    "room.kick": 1, "presence.set": 2, "presence.ping": 2, "session.info": 1, "system.stats": 1,
    "auth.refresh": 1, "call.offer": 3, "call.answer": 3, "call.ice": 3, "call.end": 2,
}


@dataclass
class World:
    """What every client did that the history check after the restart needs, and the SIGTERM trigger."""

    threshold: int  # replies seen before the signal: traffic is surely flowing
    flowing: trio.Event = field(default_factory=trio.Event)
    replies: int = 0
    edited: dict[str, set[str]] = field(default_factory=dict)  # message id -> new bodies sent for it
    deleted: set[str] = field(default_factory=set)  # a delete (any mode) was sent for these
    hard_deleted: set[str] = field(default_factory=set)
    redacted: set[str] = field(default_factory=set)


@dataclass
class Traffic:
    """One client: what it sent (in order) and every reply and event it read."""

    index: int
    client: SignaldClient
    rng: random.Random
    sent: list[str] = field(default_factory=list)  # op ids, in send order
    kinds: dict[str, str] = field(default_factory=dict)  # op id -> request type
    sends: dict[str, dict[str, Any]] = field(default_factory=dict)  # op id -> chat.send data
    replies: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)  # (op_id, frame), as read
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # chat.send op id -> its ChatMessage
    known: list[tuple[str, str]] = field(default_factory=list)  # (message id, room) seen in acks and events
    own: list[tuple[str, str]] = field(default_factory=list)  # (message id, room) of its acked sends
    rung: list[tuple[str, str]] = field(default_factory=list)  # (call_id, caller) offered to this device
    placed: list[tuple[str, str]] = field(default_factory=list)  # (call_id, callee) this device offered

    @property
    def user(self) -> str:
        return f"u{self.index % USERS}"


def request(t: Traffic, w: World, k: int) -> tuple[str, dict[str, Any] | None]:
    """The ``k``-th request of client ``t``: a valid payload of a type drawn from the mix."""
    r = t.rng
    kind = r.choices(list(KINDS), weights=list(KINDS.values()))[0]
    room = ROOMS[t.index % len(ROOMS)] if r.random() < 0.8 else r.choice(ROOMS)
    mate = (t.index + len(ROOMS) * r.randrange(1, CLIENTS // len(ROOMS))) % CLIENTS  # a client of its first room
    other = f"u{mate % USERS}" if r.random() < 0.75 else f"u{(t.index % USERS + r.randrange(1, USERS)) % USERS}"
    if kind in ("chat.edit", "chat.delete", "chat.redact", "chat.reaction", "chat.read") and t.known:
        mine = kind in ("chat.edit", "chat.delete") and t.own and r.random() < 0.7  # else mostly FORBIDDEN
        message_id, message_room = r.choice(t.own if mine else t.known)
        if kind == "chat.edit":
            new_body = f"e{t.index}.{k}"
            w.edited.setdefault(message_id, set()).add(new_body)
            return kind, {"message_id": message_id, "new_body": new_body}
        if kind == "chat.delete":
            mode = "hard" if r.random() < 0.3 else "soft"
            (w.hard_deleted if mode == "hard" else w.deleted).add(message_id)
            return kind, {"message_id": message_id, "mode": mode}
        if kind == "chat.redact":
            w.redacted.add(message_id)
            return kind, {"message_id": message_id}
        if kind == "chat.reaction":
            return kind, {"message_id": message_id, "reaction": r.choice(["+1", "heart"]),
                          "action": r.choice(["add", "add", "remove"]), "scope": message_room}
        return kind, {"message_id": message_id, "room": message_room}
    if kind == "call.offer":
        call_id = f"k{t.index}.{k}"
        t.placed.append((call_id, other))
        return kind, {"target_id": other, "call_type": r.choice(["audio", "video", "data"]), "sdp": SDP,
                      "call_id": call_id}
    if kind == "call.answer" and t.rung:
        call_id, caller = r.choice(t.rung[-4:])
        return kind, {"target_id": caller, "sdp": SDP, "call_id": call_id}
    if kind in ("call.ice", "call.end") and (t.rung or t.placed):
        call_id, peer = r.choice(t.rung[-3:] + t.placed[-3:])
        data = {"target_id": peer, "call_id": call_id}
        return kind, {**data, "candidate": CANDIDATE} if kind == "call.ice" else {**data, "reason": "hangup"}
    simple: dict[str, dict[str, Any] | None] = {
        "chat.typing": {"scope": room, "typing": r.random() < 0.7},
        "chat.history": {"room": room, "limit": 5},
        "chat.changes": {"room": room, "after_rev": 0, "limit": 5},
        "room.join": r.choice([{"room": room}, {"room": room, "since": 0}, {"room": room, "since_rev": 0}]),
        "room.leave": {"room": r.choice(ROOMS)},
        "room.signal": {"room": room, "kind": "hand", "payload": {"k": k}},
        "room.kick": {"room": room, "user_id": other, "reason": "chaos"},
        "presence.set": {"status": r.choice(["online", "away", "busy", "offline"])},
        "presence.ping": None, "session.info": None, "system.stats": None,
        "auth.refresh": {"refresh_token": "not-a-token"},
    }
    if kind in simple:
        return kind, simple[kind]
    retries = [data for data in t.sends.values() if "client_msg_id" in data]
    if retries and r.random() < 0.1:  # the same send again: stored once, acked with the same message
        return "chat.send", r.choice(retries[-8:])
    data = {"scope": room, "body": f"b{t.index}.{k}"}
    return "chat.send", {**data, "client_msg_id": f"c{t.index}.{k}"} if r.random() < 0.3 else data


def take(t: Traffic, w: World, events: list[dict[str, Any]]) -> None:
    """Record what the client read: its replies, the messages and the calls it learnt of."""
    for event in events:
        kind, data = event["type"], event.get("data") or {}
        if kind in REPLY_TYPES:
            op_id = data.get("op_id")
            t.replies.append((op_id, event))
            w.replies += 1
            if w.replies >= w.threshold:
                w.flowing.set()
            if kind == "ack" and t.kinds.get(op_id) == "chat.send":
                t.acked[op_id] = data["data"]
                t.known.append((data["data"]["id"], data["data"]["room"]))
                t.own.append(t.known[-1])
        elif kind == "chat.message":
            t.known.append((data["id"], data["room"]))
        elif kind == "call.offer":
            t.rung.append((data["call_id"], data["from_user"]))


async def drive(t: Traffic, w: World) -> None:
    """Send requests without waiting for their replies (at most WINDOW unanswered) until closed."""
    k = 0
    try:
        while True:
            take(t, w, t.client.pending_events())
            if len(t.sent) - len(t.replies) >= WINDOW:
                take(t, w, [await t.client.next_event()])
                continue
            kind, data = request(t, w, k)
            op_id, k = f"q{k}", k + 1
            t.sent.append(op_id)
            t.kinds[op_id] = kind
            if kind == "chat.send":
                assert data is not None
                t.sends[op_id] = data
            await t.client.send({"type": kind, "id": op_id, **({"data": data} if data is not None else {})})
    except ConnectionClosed:
        pass
    await t.client.closed.wait()
    take(t, w, t.client.pending_events())


def check_replies(t: Traffic) -> int:
    """Exactly one reply per request, in request order, of a kind the request can get; the unanswered."""
    answered = [op_id for op_id, _ in t.replies]
    assert answered == t.sent[:len(answered)], f"client {t.index}: replies not one per request in order"
    for op_id, frame in t.replies:
        if t.kinds[op_id] == "presence.ping":
            assert frame["type"] == "presence.pong", frame
        elif frame["type"] == "error":
            assert frame["data"]["code"] in RULE_ERRORS, (t.kinds[op_id], frame)
        else:
            assert frame["type"] == "ack", frame
    by_retry: dict[str, set[str]] = {}
    for op_id, message in t.acked.items():
        if "client_msg_id" in t.sends[op_id]:
            by_retry.setdefault(t.sends[op_id]["client_msg_id"], set()).add(message["id"])
    assert all(len(ids) == 1 for ids in by_retry.values()), f"a retry stored twice: {by_retry}"
    return len(t.sent) - len(answered)


async def read_history(url: str) -> dict[str, dict[str, Any]]:
    """Every stored message of every room, by id, paged from the start."""
    stored: dict[str, dict[str, Any]] = {}
    async with connect(url, user="reader") as reader:
        for room in ROOMS:
            await reader.request("room.join", {"room": room})
            after, more = 0, True
            while more:
                page = await reader.request("chat.history", {"room": room, "after": after, "limit": 200})
                for message in page["messages"]:
                    assert message["id"] not in stored
                    stored[message["id"]] = message
                    after = message["seq"]
                more = page["has_more"]
    return stored


def check_log(path: Path) -> None:
    text = path.read_text(errors="replace")
    trouble = [line for line in text.splitlines() if LOG_TROUBLE.search(line)]
    assert not trouble, f"{path.name}:\n" + "\n".join(trouble[:20])


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sigterm_under_pipelined_traffic_of_every_type_loses_no_acked_message_and_exits_0(
    tmp_path: Path, seed: int
) -> None:
    db = str(tmp_path / "d.db")
    w = World(threshold=CLIENTS * (6, 15, 30)[seed - 1])  # each seed stops at another point of the traffic
    async with daemon(tmp_path, "first", "--db", db, config_text=CONFIG) as (process, url), \
            AsyncExitStack() as stack:
        traffic = []
        for i in range(CLIENTS):
            client = await stack.enter_async_context(connect(url, user=f"u{i % USERS}", msgpack=i % 4 == 3))
            await client.request("room.join", {"room": ROOMS[i % len(ROOMS)]})
            traffic.append(Traffic(i, client, random.Random(seed * 1000 + i)))
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for t in traffic:
                    nursery.start_soon(drive, t, w)
                await w.flowing.wait()
                process.send_signal(signal.SIGTERM)
                # every drive() ends once its connection is closed
        closes = Counter((t.client.ws.closed.code, t.client.ws.closed.reason) if t.client.ws.closed else None
                         for t in traffic)
        assert closes == {(1001, "server shutting down"): CLIENTS}, closes
        with trio.fail_after(30):
            assert await process.wait() == 0
    check_log(tmp_path / "first.log")
    unanswered = sum(check_replies(t) for t in traffic)
    assert unanswered > 0  # the signal came while requests were in flight
    acked = {message["id"]: message for t in traffic for message in t.acked.values()}
    async with daemon(tmp_path, "restarted", "--db", db) as (_, again):
        stored = await read_history(again)
    check_log(tmp_path / "restarted.log")
    for message_id, message in acked.items():
        if message_id not in stored:
            assert message_id in w.hard_deleted, f"acked message lost: {message}"
            continue
        kept = stored[message_id]
        assert (kept["room"], kept["seq"]) == (message["room"], message["seq"]), (message, kept)
        bodies = {message["body"], *w.edited.get(message_id, ())}
        if message_id in w.deleted | w.hard_deleted:
            bodies.add("")
        if message_id in w.redacted:
            bodies.add("[redacted]")
        assert kept["body"] in bodies, (message, kept)
    written = Counter(m["body"] for m in stored.values() if m["user_id"] != "$system" and m["body"] and
                      not m["redacted"])
    assert [body for body, count in written.items() if count > 1] == []
    print(f"seed {seed}: {sum(len(t.sent) for t in traffic)} requests sent, {w.replies} replies "
          f"({unanswered} unanswered at the close), {len(acked)} messages acked, {len(stored)} stored")
