"""Calls over real WebSockets: what callers and callees see, end to end through the daemon.

Each test runs an in-process daemon; the users first join the room ``lobby`` (users may only call
someone they share a room with). To assert that an event did *not* arrive, a client pings the
server: the pong is queued after every event already queued for it, so the events before the pong
are all there are (:func:`call_events`). Timed tests use the mock clock standing still except
inside :func:`time_flies` (see ``tests/e2e/test_rooms_ws.py`` for why).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config, start_server, time_flies
from over_nodes import settle
from trio.testing import MockClock

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer

Event = tuple[str, dict[str, Any]]

pytestmark = pytest.mark.usefixtures("nodes")  # every test over 1 node and over 3 nodes

OFFER_SDP: dict[str, Any] = {
    "type": "offer",
    "sdp": "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
    "x-extension": {"nested": [1, {"deep": True, "none": None}], "text": "ünïcødé ☎", "num": 1.5},
}
ANSWER_SDP: dict[str, Any] = {"type": "answer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}


def candidate(n: int) -> dict[str, Any]:
    return {"candidate": f"candidate:{n} 1 udp 2122260223 192.168.1.{n} 5{n:04d} typ host",
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}


# --------------------------------------------------------------------------- helpers


async def serve(nursery: trio.Nursery, tmp_path: Path, **sections: dict[str, Any]) -> RunningServer:
    """Start a daemon with some config keys changed (heartbeats far away, so timed tests stay quiet)."""
    sections.setdefault("server", {}).setdefault("heartbeat_s", 3600.0)
    return await start_server(nursery, make_config(tmp_path, **sections))






@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await serve(nursery, tmp_path)


@asynccontextmanager
async def in_lobby(server: RunningServer, *users: str) -> AsyncIterator[list[SignaldClient]]:
    """One connected client per listed user (repeat a name for another device), all in ``lobby``,
    with the join chatter already drained."""
    async with AsyncExitStack() as stack:
        cs = [await stack.enter_async_context(connect(server.url, user=u)) for u in users]
        for c in cs:
            await c.request("room.join", {"room": "lobby"})
        for c in cs:
            await events_of(c)
        yield cs


async def events_of(c: SignaldClient) -> list[Event]:
    """Every event that reached ``c`` so far, as ``(type, data)``; waits for in-flight ones."""
    await settle()  # those from the other nodes too
    pong = await c.request_raw("presence.ping")
    assert pong["type"] == "presence.pong"
    return [(e["type"], e["data"]) for e in c.pending_events()]


async def call_events(c: SignaldClient) -> list[Event]:
    """The ``call.*`` events among :func:`events_of`."""
    return [e for e in await events_of(c) if e[0].startswith("call.")]


async def next_call_event(c: SignaldClient, within: float = 5) -> Event:
    """The next ``call.*`` event of ``c``, dropping other events (``within`` seconds, mock or real)."""
    with trio.fail_after(within):
        while True:
            event = await c.next_event()
            if event["type"].startswith("call."):
                return event["type"], event["data"]


async def error_of(c: SignaldClient, kind: str, data: Any) -> dict[str, Any]:
    reply = await c.request_raw(kind, data)
    assert reply["type"] == "error", reply
    error: dict[str, Any] = reply["data"]
    return error


async def offer(caller: SignaldClient, target: str, call_id: str | None = None, call_type: str = "audio",
                sdp: dict[str, Any] | None = None) -> str:
    data: dict[str, Any] = {"target_id": target, "call_type": call_type, "sdp": sdp or OFFER_SDP}
    if call_id is not None:
        data["call_id"] = call_id
    # Over several nodes, a user acts on what they saw: the joins and calls before reached the
    # caller's node first, and the offer reaches every node before the test goes on (a few ms
    # each way; docs/cluster.md). No-ops on one node.
    await settle()
    result = await caller.request("call.offer", data)
    await settle()
    assert set(result) == {"call_id"}
    cid: str = result["call_id"]
    return cid


async def answer(callee: SignaldClient, target: str, call_id: str | None) -> None:
    data: dict[str, Any] = {"target_id": target, "sdp": ANSWER_SDP}
    if call_id is not None:
        data["call_id"] = call_id
    assert await callee.request("call.answer", data) is None


async def end(c: SignaldClient, target: str, call_id: str | None, reason: str | None = None) -> None:
    data: dict[str, Any] = {"target_id": target}
    if call_id is not None:
        data["call_id"] = call_id
    if reason is not None:
        data["reason"] = reason
    assert await c.request("call.end", data) is None


def offer_event(from_user: str, call_id: str, call_type: str = "audio") -> Event:
    return ("call.offer", {"from_user": from_user, "call_id": call_id, "call_type": call_type, "sdp": OFFER_SDP})


def answer_event(from_user: str, call_id: str) -> Event:
    return ("call.answer", {"from_user": from_user, "call_id": call_id, "sdp": ANSWER_SDP})


def ice_event(from_user: str, call_id: str, n: int) -> Event:
    return ("call.ice", {"from_user": from_user, "call_id": call_id, "candidate": candidate(n)})


def end_event(from_user: str, call_id: str, reason: str) -> Event:
    return ("call.end", {"from_user": from_user, "call_id": call_id, "reason": reason})


async def answered_call(alice: SignaldClient, bob: SignaldClient, call_id: str = "ab-1") -> str:
    """alice calls bob, bob answers; both event queues drained."""
    await offer(alice, "bob", call_id)
    await next_call_event(bob)
    await answer(bob, "alice", call_id)
    await next_call_event(alice)
    return call_id


async def status_updates(c: SignaldClient) -> list[tuple[str, str]]:
    return [(e[1]["user_id"], e[1]["status"]) for e in await events_of(c) if e[0] == "presence.update"]


@asynccontextmanager
async def real_time_limit(seconds: float) -> AsyncIterator[None]:
    """Fail after ``seconds`` of wall-clock time, even while a mock clock stands still."""

    async def guard() -> None:
        await trio.to_thread.run_sync(time.sleep, seconds, abandon_on_cancel=True)
        raise TimeoutError(f"nothing within {seconds} real seconds")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard)
        yield
        nursery.cancel_scope.cancel()


async def system_messages(c: SignaldClient, n: int) -> list[dict[str, Any]]:
    """The next ``n`` call-log ``chat.message`` events (from ``$system``) that reach ``c``.

    Stored by a background task after the call events went out, so a client that must see them
    may not have its events drained (``call_events``, ``next_call_event``) in the meantime.
    """
    found: list[dict[str, Any]] = []
    async with real_time_limit(5):
        while len(found) < n:
            event = await c.next_event("chat.message")
            if event["data"]["user_id"] == "$system":
                found.append(event["data"])
    return found


# --------------------------------------------------------------------------- the full exchange


async def test_offer_answer_trickle_ice_and_hangup_reach_the_other_side(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, bob):
        cid = await offer(alice, "bob", "7f1c2a9e-call", call_type="video")
        assert cid == "7f1c2a9e-call"
        assert await call_events(bob) == [
            ("call.offer", {"from_user": "alice", "call_id": cid, "call_type": "video", "sdp": OFFER_SDP}),
        ]

        # trickle ICE, both ways, while bob's devices still ring
        assert await alice.request("call.ice", {"target_id": "bob", "call_id": cid, "candidate": candidate(1)}) is None
        assert await bob.request("call.ice", {"target_id": "alice", "call_id": cid, "candidate": candidate(2)}) is None
        assert await call_events(bob) == [ice_event("alice", cid, 1)]
        assert await call_events(alice) == [ice_event("bob", cid, 2)]

        await answer(bob, "alice", cid)
        assert await call_events(alice) == [answer_event("bob", cid)]
        assert await call_events(bob) == []  # the sender gets the ack, not its own event

        # ICE after the answer, both ways
        await alice.request("call.ice", {"target_id": "bob", "call_id": cid, "candidate": candidate(3)})
        await bob.request("call.ice", {"target_id": "alice", "call_id": cid, "candidate": candidate(4)})
        assert await call_events(bob) == [ice_event("alice", cid, 3)]
        assert await call_events(alice) == [ice_event("bob", cid, 4)]

        await end(alice, "bob", cid)
        assert await call_events(bob) == [end_event("alice", cid, "hangup")]
        assert await call_events(alice) == []
        assert len(srv.hub.calls) == 0


async def test_offer_without_call_id_gets_a_server_chosen_id_in_the_ack(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, bob):
        cid = await offer(alice, "bob")
        assert cid
        kind, data = await next_call_event(bob)
        assert (kind, data["call_id"]) == ("call.offer", cid)


async def test_answer_ice_and_end_without_call_id_mean_the_only_call_between_the_two(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, bob):
        cid = await offer(alice, "bob", "only-one")
        await next_call_event(bob)
        await answer(bob, "alice", None)
        assert await call_events(alice) == [answer_event("bob", cid)]
        await bob.request("call.ice", {"target_id": "alice", "candidate": candidate(5)})
        assert await call_events(alice) == [ice_event("bob", cid, 5)]
        await end(bob, "alice", None, reason="network-lost")
        assert await call_events(alice) == [end_event("bob", cid, "network-lost")]  # the client's reason, as given


async def test_a_call_id_already_in_use_is_a_conflict_and_is_free_again_once_ended(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob", "carol") as (alice, bob, carol):
        await offer(alice, "bob", "dup")
        error = await error_of(carol, "call.offer", {"target_id": "bob", "call_type": "audio", "sdp": OFFER_SDP,
                                                      "call_id": "dup"})
        assert error["code"] == "CONFLICT"
        assert [e[1]["from_user"] for e in await call_events(bob)] == ["alice"]  # carol did not ring bob
        await end(alice, "bob", "dup")
        assert await offer(carol, "bob", "dup") == "dup"


# --------------------------------------------------------------------------- targets and payloads


async def test_calling_a_user_with_no_connected_device_is_forbidden_as_for_any_stranger(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice") as (alice,):
        error = await error_of(alice, "call.offer", {"target_id": "nobody", "call_type": "audio", "sdp": OFFER_SDP})
        assert error["code"] == "FORBIDDEN"  # not TARGET_OFFLINE: that would tell a stranger who is online


async def test_calling_an_online_user_who_shares_no_room_is_forbidden_and_does_not_ring(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice") as (alice,), connect(srv.url, user="dave") as dave:
        await dave.request("room.join", {"room": "elsewhere"})
        error = await error_of(alice, "call.offer", {"target_id": "dave", "call_type": "audio", "sdp": OFFER_SDP})
        assert error["code"] == "FORBIDDEN"
        assert await call_events(dave) == []


async def test_calling_yourself_is_an_invalid_payload(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "alice") as (a1, a2):
        error = await error_of(a1, "call.offer", {"target_id": "alice", "call_type": "audio", "sdp": OFFER_SDP})
        assert error["code"] == "INVALID_PAYLOAD"
        assert await call_events(a2) == []


async def test_an_unknown_call_type_is_rejected_naming_the_field(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, bob):
        error = await error_of(alice, "call.offer", {"target_id": "bob", "call_type": "fax", "sdp": OFFER_SDP})
        assert error["code"] == "INVALID_PAYLOAD"
        assert "$.data.call_type" in error["message"]
        assert await call_events(bob) == []


@pytest.mark.parametrize("sdp", ["v=0\r\n", ["v=0"], None, 42])
async def test_an_sdp_that_is_not_an_object_is_rejected(srv: RunningServer, sdp: Any) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, bob):
        error = await error_of(alice, "call.offer", {"target_id": "bob", "call_type": "audio", "sdp": sdp})
        assert error["code"] == "INVALID_PAYLOAD"
        assert "$.data.sdp" in error["message"]
        assert await call_events(bob) == []


# --------------------------------------------------------------------------- several devices


@pytest.mark.on_redis_cluster
async def test_every_callee_device_rings_and_the_first_to_answer_wins(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob", "bob") as (alice, b1, b2):
        cid = await offer(alice, "bob", "multi")
        rung = offer_event("alice", cid)
        assert await call_events(b1) == [rung]
        assert await call_events(b2) == [rung]

        await answer(b2, "alice", cid)
        assert await call_events(alice) == [answer_event("bob", cid)]
        assert await call_events(b1) == [end_event("bob", cid, "answered_elsewhere")]

        error = await error_of(b1, "call.answer", {"target_id": "alice", "call_id": cid, "sdp": ANSWER_SDP})
        assert error["code"] == "CONFLICT"
        error = await error_of(b1, "call.ice", {"target_id": "alice", "call_id": cid, "candidate": candidate(6)})
        assert error["code"] == "FORBIDDEN"
        assert await call_events(alice) == []

        # the winning device still talks to the caller
        await b2.request("call.ice", {"target_id": "alice", "call_id": cid, "candidate": candidate(7)})
        assert await call_events(alice) == [ice_event("bob", cid, 7)]


# --------------------------------------------------------------------------- ring timeout


async def test_an_unanswered_call_times_out_on_both_sides_after_the_ring_timeout(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"ring_timeout_s": 30})
    async with in_lobby(server, "alice", "bob") as (alice, bob):
        cid = await offer(alice, "bob", "ring-ring")
        offered = trio.current_time()
        assert [e[0] for e in await call_events(bob)] == ["call.offer"]

        with time_flies(frozen_clock):
            await trio.sleep(29.5)
        assert await call_events(alice) == []
        assert await call_events(bob) == []

        with time_flies(frozen_clock):
            assert await next_call_event(alice) == end_event("bob", cid, "timeout")
        assert 30 <= trio.current_time() - offered < 31
        assert await call_events(bob) == [end_event("alice", cid, "timeout")]
        assert len(server.hub.calls) == 0


async def test_an_answered_call_does_not_time_out(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"ring_timeout_s": 30})
    async with in_lobby(server, "alice", "bob") as (alice, bob):
        cid = await answered_call(alice, bob)
        with time_flies(frozen_clock):
            await trio.sleep(120)
        assert await call_events(alice) == []
        assert await call_events(bob) == []
        await alice.request("call.ice", {"target_id": "bob", "call_id": cid, "candidate": candidate(1)})
        assert [e[0] for e in await call_events(bob)] == ["call.ice"]


# --------------------------------------------------------------------------- busy


async def test_an_offer_to_a_user_in_an_answered_call_ends_busy_without_ringing(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob", "carol") as (alice, bob, carol):
        await answered_call(alice, bob)
        cid = await offer(carol, "bob", "carol-1")
        assert cid == "carol-1"  # acked first ...
        assert await call_events(carol) == [end_event("bob", cid, "busy")]  # ... then ended
        assert await call_events(bob) == []
        assert await call_events(alice) == []


async def test_with_concurrent_calls_allowed_a_user_in_a_call_is_still_rung(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, calls={"allow_concurrent_calls": True})
    async with in_lobby(server, "alice", "bob", "carol") as (alice, bob, carol):
        await answered_call(alice, bob)
        cid = await offer(carol, "bob", "carol-1")
        assert await call_events(bob) == [offer_event("carol", cid)]
        assert await call_events(carol) == []


# --------------------------------------------------------------------------- reject, glare


async def test_the_callee_ending_a_ringing_call_is_a_reject_for_the_caller(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob", "bob") as (alice, b1, b2):
        cid = await offer(alice, "bob", "nope")
        await call_events(b2)
        await end(b1, "alice", cid, reason="not now")
        assert await call_events(alice) == [end_event("bob", cid, "rejected")]  # the client's reason is dropped
        assert await call_events(b2) == [end_event("bob", cid, "rejected")]  # bob's other device stops ringing
        assert len(srv.hub.calls) == 0


@pytest.mark.parametrize("order", ["alice_first", "bob_first", "simultaneous"])
async def test_glare_keeps_only_the_lower_call_id(srv: RunningServer, order: str) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, bob):
        if order == "alice_first":
            await offer(alice, "bob", "a-1")
            await offer(bob, "alice", "b-1")
        elif order == "bob_first":
            await offer(bob, "alice", "b-1")
            await offer(alice, "bob", "a-1")
        else:
            async with trio.open_nursery() as both:
                both.start_soon(offer, alice, "bob", "a-1")
                both.start_soon(offer, bob, "alice", "b-1")

        assert list(srv.hub.calls.calls_of("alice")) == ["a-1"]
        to_bob = await call_events(bob)
        assert end_event("alice", "b-1", "glare") in to_bob  # the losing call's caller is told
        assert offer_event("alice", "a-1") in to_bob
        assert len(to_bob) == 2
        to_alice = await call_events(alice)
        assert all(e[1]["call_id"] == "b-1" for e in to_alice)  # at most b-1 rang and stopped
        if order == "alice_first":
            assert to_alice == []  # the losing offer never rang
        if order == "bob_first":
            assert [e[0] for e in to_alice] == ["call.offer", "call.end"]
            assert to_alice[1] == end_event("bob", "b-1", "glare")

        await answer(bob, "alice", "a-1")  # the survivor is a normal call
        assert [e[0] for e in await call_events(alice)] == ["call.answer"]


# --------------------------------------------------------------------------- disconnect


async def test_a_callee_disconnecting_mid_call_ends_it_for_the_caller(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice") as (alice,):
        async with connect(srv.url, user="bob") as bob:
            await bob.request("room.join", {"room": "lobby"})
            cid = await answered_call(alice, bob)
        assert await next_call_event(alice) == end_event("bob", cid, "disconnected")
        assert len(srv.hub.calls) == 0
        assert await call_events(alice) == []


async def test_a_caller_disconnecting_while_ringing_stops_every_callee_device(srv: RunningServer) -> None:
    async with in_lobby(srv, "bob", "bob") as (b1, b2):
        async with connect(srv.url, user="alice") as alice:
            await alice.request("room.join", {"room": "lobby"})
            cid = await offer(alice, "bob", "gone")
        for device in (b1, b2):
            assert await next_call_event(device) == offer_event("alice", cid)
            assert await next_call_event(device) == end_event("alice", cid, "disconnected")
        assert len(srv.hub.calls) == 0


# --------------------------------------------------------------------------- presence


async def test_both_parties_show_busy_during_an_answered_call_and_online_after(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob", "carol") as (alice, bob, carol):
        cid = await offer(alice, "bob", "p-1")
        assert await status_updates(carol) == []  # ringing is not busy
        await next_call_event(bob)
        await answer(bob, "alice", cid)
        assert sorted(await status_updates(carol)) == [("alice", "busy"), ("bob", "busy")]
        await end(alice, "bob", cid)
        assert sorted(await status_updates(carol)) == [("alice", "online"), ("bob", "online")]


# --------------------------------------------------------------------------- call log


async def test_the_call_log_posts_start_answer_and_end_to_the_shared_room(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "alice", "bob", "carol") as (alice, a2, bob, carol):
        cid = await offer(alice, "bob", "log-1", call_type="video")
        await next_call_event(bob)
        await answer(bob, "alice", cid)
        await next_call_event(alice)
        await end(alice, "bob", cid)
        log = await system_messages(carol, 3)
        assert [m["room"] for m in log] == ["lobby"] * 3
        assert log[0]["body"] == "video call from alice to bob"
        assert log[1]["body"] == "video call answered by bob"
        assert log[2]["body"].startswith("video call ended (hangup)")
        assert [m["seq"] for m in log] == sorted(m["seq"] for m in log)
        # the parties' own connections are in the room too
        assert [m["body"] for m in await system_messages(a2, 3)] == [m["body"] for m in log]
        history = await carol.request("chat.history", {"room": "lobby"})
        assert [m["body"] for m in history["messages"] if m["user_id"] == "$system"] == [m["body"] for m in log]


async def test_with_the_call_log_off_no_system_messages_are_posted(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await serve(nursery, tmp_path, calls={"call_log": False})
    async with in_lobby(server, "alice", "bob", "carol") as (alice, bob, carol):
        await answered_call(alice, bob)
        await end(alice, "bob", None)
        await alice.request("chat.send", {"scope": "lobby", "body": "after the call"})
        with trio.fail_after(5):
            message = await carol.next_event("chat.message")
        assert (message["data"]["user_id"], message["data"]["body"]) == ("alice", "after the call")
        history = await carol.request("chat.history", {"room": "lobby"})
        assert [m["user_id"] for m in history["messages"]] == ["alice"]


# --------------------------------------------------------------------------- unknown calls, outsiders


async def test_signalling_an_unknown_call_id_is_not_found(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, _bob):
        for kind, extra in [("call.answer", {"sdp": ANSWER_SDP}), ("call.ice", {"candidate": candidate(1)}),
                            ("call.end", {})]:
            error = await error_of(alice, kind, {"target_id": "bob", "call_id": "no-such-call", **extra})
            assert error["code"] == "NOT_FOUND", kind


async def test_a_third_user_cannot_end_someone_elses_call(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob", "carol") as (alice, bob, carol):
        cid = await answered_call(alice, bob)
        error = await error_of(carol, "call.end", {"target_id": "bob", "call_id": cid})
        assert error["code"] == "FORBIDDEN"
        assert await call_events(alice) == []
        assert await call_events(bob) == []
        assert len(srv.hub.calls) == 1


# --------------------------------------------------------------------------- more rules users notice


async def test_an_invisible_user_in_a_call_stays_offline_to_others(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob", "carol") as (alice, bob, carol):
        await alice.request("presence.set", {"status": "offline"})
        assert await status_updates(carol) == [("alice", "offline")]
        cid = await answered_call(alice, bob)
        assert await status_updates(carol) == [("bob", "busy")]
        await end(bob, "alice", cid)
        assert await status_updates(carol) == [("bob", "online")]


async def test_the_call_log_goes_to_the_first_shared_room_by_name(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, bob), connect(srv.url, user="carol") as carol:
        await carol.request("room.join", {"room": "zeta"})
        for c in (alice, bob):
            await c.request("room.join", {"room": "zeta"})
            await c.request("room.join", {"room": "alpha"})
        cid = await offer(alice, "bob", "rooms-1")
        await end(alice, "bob", cid)
        log = await system_messages(alice, 2)
        assert [(m["room"], m["body"]) for m in log] == [
            ("alpha", "audio call from alice to bob"), ("alpha", "audio call ended (hangup)"),
        ]
        zeta = await carol.request("chat.history", {"room": "zeta"})
        assert zeta["messages"] == []
        assert [e for e in await events_of(carol) if e[0] == "chat.message"] == []


async def test_a_busy_offer_is_logged_as_started_and_ended_busy(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob", "carol") as (alice, bob, carol):
        await answered_call(alice, bob)
        # The log is written by the caller's node in the background (docs/cluster.md): over several
        # nodes carol's own call could be logged first unless she has seen alice's call logged.
        bodies = [m["body"] for m in await system_messages(carol, 2)]
        await offer(carol, "bob", "carol-1")
        bodies += [m["body"] for m in await system_messages(carol, 2)]
        assert bodies == ["audio call from alice to bob", "audio call answered by bob",
                          "audio call from carol to bob", "audio call ended (busy)"]


async def test_the_logged_end_of_an_answered_call_tells_its_duration(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path)
    async with in_lobby(server, "alice", "bob", "carol") as (alice, bob, carol):
        cid = await answered_call(alice, bob)
        with time_flies(frozen_clock):
            await trio.sleep(62)
        await end(bob, "alice", cid)
        log = await system_messages(carol, 3)
        assert log[2]["body"] == "audio call ended (hangup), 01:02"


async def test_a_reused_call_id_gets_a_fresh_ring_timeout(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"ring_timeout_s": 30})
    async with in_lobby(server, "alice", "bob") as (alice, bob):
        await offer(alice, "bob", "again")
        await end(alice, "bob", "again")
        with time_flies(frozen_clock):
            await trio.sleep(20)
        await offer(alice, "bob", "again")
        offered = trio.current_time()
        await call_events(bob)
        with time_flies(frozen_clock):
            assert await next_call_event(alice, within=60) == end_event("bob", "again", "timeout")
        assert 30 <= trio.current_time() - offered < 31  # not at the first offer's deadline


async def test_a_caller_disconnecting_mid_call_ends_it_for_the_callee(srv: RunningServer) -> None:
    async with in_lobby(srv, "bob") as (bob,):
        async with connect(srv.url, user="alice") as alice:
            await alice.request("room.join", {"room": "lobby"})
            cid = await answered_call(alice, bob)
        assert await next_call_event(bob) == end_event("alice", cid, "disconnected")
        assert len(srv.hub.calls) == 0


async def test_a_ringing_device_disconnecting_leaves_the_others_ringing(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "bob") as (alice, b1):
        async with connect(srv.url, user="bob") as b2:
            await b2.request("room.join", {"room": "lobby"})
            cid = await offer(alice, "bob", "still-ringing")
            await next_call_event(b2)
        with trio.fail_after(5):
            while srv.hub.connection_count("bob") > 1:  # noqa: ASYNC110 - server state, no event to wait on
                await trio.sleep(0.01)
        assert [e[0] for e in await call_events(b1)] == ["call.offer"]
        assert await call_events(alice) == []
        await answer(b1, "alice", cid)
        assert [e[0] for e in await call_events(alice)] == ["call.answer"]


async def test_a_caller_cannot_answer_its_own_call_nor_signal_from_another_device(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "alice", "bob") as (a1, a2, bob):
        cid = await offer(a1, "bob", "own")
        error = await error_of(a1, "call.answer", {"target_id": "bob", "call_id": cid, "sdp": ANSWER_SDP})
        assert error["code"] == "FORBIDDEN"
        error = await error_of(a2, "call.ice", {"target_id": "bob", "call_id": cid, "candidate": candidate(1)})
        assert error["code"] == "FORBIDDEN"
        assert [e[0] for e in await call_events(bob)] == ["call.offer"]


async def test_without_call_id_several_calls_between_the_two_is_ambiguous(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, calls={"allow_concurrent_calls": True})
    async with in_lobby(server, "alice", "alice", "bob") as (a1, a2, bob):
        await offer(a1, "bob", "one")
        await offer(a2, "bob", "two")
        error = await error_of(bob, "call.answer", {"target_id": "alice", "sdp": ANSWER_SDP})
        assert error["code"] == "INVALID_PAYLOAD"
        await answer(bob, "alice", "two")
        assert [e[0] for e in await call_events(a2)] == ["call.answer"]
        assert await call_events(a1) == []


async def test_an_sdp_over_the_frame_limit_is_too_large_and_does_not_ring(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"max_frame_bytes": 4096})
    async with in_lobby(server, "alice", "bob") as (alice, bob):
        huge = {"type": "offer", "sdp": "a=x\r\n" * 1000}
        await alice.send({"type": "call.offer", "id": "big", "data": {"target_id": "bob", "call_type": "audio",
                                                                       "sdp": huge}})
        with trio.fail_after(5):
            error = await alice.next_event("error")
        assert (error["data"]["code"], error["data"]["op_id"]) == ("TOO_LARGE", "big")
        assert await call_events(bob) == []
        assert len(server.hub.calls) == 0
