"""Calls across nodes: what two nodes could decide at once is decided once (docs/cluster.md, "Calls").

Real daemons on one private Redis and one PostgreSQL database (``nodes`` of test_cluster.py),
clients spread over them. Each race is run many times in a loop, with both sides' frames sent in
the same scheduler pass, and every run must end with exactly one outcome told to everyone once.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cluster import Event, nodes, wait_for

from signald.client.raw import SignaldClient, connect

pytestmark = pytest.mark.timeout(120)

SDP = {"type": "offer", "sdp": "v=0"}
ANSWER_SDP = {"type": "answer", "sdp": "v=0"}
RING_TIMEOUT_S = 0.6
_ids = itertools.count()


@asynccontextmanager
async def spread(tmp_path: Path, redis_url: str, postgres_url: str, places: list[tuple[str, int]], *,
                 ring_timeout_s: float = 30.0, ttl: float = 10.0,
                 ) -> AsyncIterator[tuple[list[Any], list[SignaldClient]]]:
    """Three nodes; one client per ``(user, node)``, all in one room. Only the tests of the ring
    timeout make it short: on a loaded machine a call of another test could time out first. Only
    the test of a dead node makes ``ttl`` short: a node stalled that long by a loaded machine
    takes the broker for away and closes its rooms' connections (1012)."""
    limits = f"ring_timeout_s = {ring_timeout_s}"
    async with nodes(tmp_path, redis_url, postgres_url, 3, ttl=ttl, limits=limits) as started, \
            AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(started[node][1], user=user)) for user, node in places]
        for client in clients:
            await client.request("room.join", {"room": "lobby"})
        users = {user for user, _ in places}
        for client in clients:  # every node has heard every device before the calls start
            with trio.fail_after(10):
                while True:
                    ack = await client.request("room.join", {"room": "lobby"})
                    devices = sum(len(m["devices"]) for m in ack["members"])
                    if {m["user_id"] for m in ack["members"]} == users and devices == len(places):
                        break
                    await trio.sleep(0.02)
        yield started, clients


async def settle(*clients: SignaldClient) -> list[list[Event]]:
    """Each client's call events so far: a ping round trip on every node, then what is pending."""
    seen = []
    for client in clients:
        assert (await client.request_raw("presence.ping"))["type"] == "presence.pong"
        seen.append([(e["type"], e["data"]) for e in client.pending_events() if e["type"].startswith("call.")])
    return seen


def end(call_id: str, reason: str, from_user: str) -> Event:
    return ("call.end", {"from_user": from_user, "call_id": call_id, "reason": reason})


async def offer(caller: SignaldClient, target: str, call_id: str) -> None:
    await caller.request("call.offer", {"target_id": target, "call_type": "audio", "sdp": SDP, "call_id": call_id})


async def rung(call_id: str, *devices: SignaldClient) -> None:
    for device in devices:
        await wait_for(device, [], lambda s: any(t == "call.offer" and d["call_id"] == call_id for t, d in s))


async def test_two_devices_answering_at_once_on_two_nodes_have_exactly_one_winner(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    places = [("alice", 0), ("bob", 1), ("bob", 2)]
    async with spread(tmp_path, redis_url, postgres_url, places) as (_, (alice, phone, laptop)):
        winners = []
        for run in range(25):
            call_id = f"race-{run % 3}"  # ids used again once their call ended, as clients may
            await offer(alice, "bob", call_id)
            await rung(call_id, phone, laptop)
            replies: dict[int, dict[str, Any]] = {}

            async def answer(index: int, device: SignaldClient, call_id: str = call_id,
                             replies: dict[int, dict[str, Any]] = replies) -> None:
                replies[index] = await device.request_raw(
                    "call.answer", {"target_id": "alice", "sdp": ANSWER_SDP, "call_id": call_id})

            async with trio.open_nursery() as nursery:  # both frames leave in the same scheduler pass
                nursery.start_soon(answer, 0, phone)
                nursery.start_soon(answer, 1, laptop)
            won = [i for i, reply in replies.items() if reply["type"] == "ack"]
            assert len(won) == 1, f"run {run}: {replies}"
            lost = 1 - won[0]
            assert replies[lost]["type"] == "error" and replies[lost]["data"]["code"] == "CONFLICT", replies
            winners.append(won[0])
            devices = (phone, laptop)
            elsewhere, hangup = end(call_id, "answered_elsewhere", "bob"), end(call_id, "hangup", "alice")
            loser_seen = await wait_for(devices[lost], [], lambda s, e=elsewhere: e in s)
            answered = ("call.answer", {"from_user": "bob", "call_id": call_id, "sdp": ANSWER_SDP})
            alice_seen = await wait_for(alice, [], lambda s, a=answered: a in s)
            await alice.request("call.end", {"target_id": "bob", "call_id": call_id})
            winner_seen = await wait_for(devices[won[0]], [], lambda s, h=hangup: h in s)
            rest = await settle(alice, phone, laptop)
            assert [e for e in alice_seen if e[0].startswith("call.")] + rest[0] == [answered]
            assert [e for e in loser_seen if e[0] == "call.end"] + of_end(rest[1 + lost]) == [
                end(call_id, "answered_elsewhere", "bob")]
            assert [e for e in winner_seen if e[0] == "call.end"] + of_end(rest[1 + won[0]]) == [
                end(call_id, "hangup", "alice")]
        print(f"winners by device: phone {winners.count(0)}, laptop {winners.count(1)}")


def of_end(events: list[Event]) -> list[Event]:
    return [e for e in events if e[0] == "call.end"]


async def test_an_offer_right_after_an_answer_on_another_node_finds_the_callee_busy(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    places = [("alice", 0), ("bob", 1), ("carol", 2)]
    async with spread(tmp_path, redis_url, postgres_url, places) as (_, (alice, bob, carol)):
        for run in range(10):
            first, second = f"first-{run}", f"second-{run}"
            await offer(alice, "bob", first)
            await rung(first, bob)
            await bob.request("call.answer", {"target_id": "alice", "sdp": ANSWER_SDP, "call_id": first})
            await offer(carol, "bob", second)  # node 2 may not have heard the answer yet: Redis has
            await wait_for(carol, [], lambda s, second=second: end(second, "busy", "bob") in s)
            rest = await settle(bob)
            assert not [e for e in rest[0] if e[1]["call_id"] == second], "bob was rung while busy"
            await alice.request("call.end", {"target_id": "bob", "call_id": first})
            await wait_for(bob, [], lambda s, first=first: end(first, "hangup", "alice") in s)
            await settle(alice, bob, carol)


async def test_glare_across_nodes_has_one_winner_everywhere(tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    places = [("alice", 0), ("bob", 1), ("bob", 2), ("alice", 2)]
    async with spread(tmp_path, redis_url, postgres_url, places) as (_, clients):
        alice, bob, bob2, alice2 = clients
        for run in range(10):
            low, high = f"g{run}-a", f"g{run}-b"  # the lower call_id survives the glare
            by_alice, by_bob = (low, high) if run % 2 else (high, low)
            async with trio.open_nursery() as nursery:  # both offers leave in the same scheduler pass
                nursery.start_soon(offer, alice, "bob", by_alice)
                nursery.start_soon(offer, bob, "alice", by_bob)
            seen: list[list[Event]] = [[] for _ in clients]
            loser, winner = (bob, alice) if by_bob == high else (alice, bob)
            loser_callee = "alice" if loser is bob else "bob"
            await wait_for(loser, seen[clients.index(loser)], lambda s, h=high, f=loser_callee: end(h, "glare", f) in s)
            rung_devices = (alice, alice2) if winner is bob else (bob, bob2)
            for device in rung_devices:  # the winner's call rings on
                await wait_for(device, seen[clients.index(device)],
                               lambda s, lo=low: any(t == "call.offer" and d["call_id"] == lo for t, d in s))
            for index, rest in enumerate(await settle(*clients)):
                events = [e for e in seen[index] + rest if e[0].startswith("call.")]
                won = [e for e in events if e[1]["call_id"] == low]
                lost = [e for e in events if e[1]["call_id"] == high]
                assert not [e for e in won if e[0] == "call.end"], (index, won)  # nobody told it ended
                if clients[index] is loser:  # its caller: told once that it lost
                    assert lost == [end(high, "glare", loser_callee)], (index, lost)
                else:  # a device it rang (on a node that had not heard the other offer yet) is told once
                    offered = [e for e in lost if e[0] == "call.offer"]
                    assert lost == offered + [end(high, "glare", _other(loser_callee))] * len(offered), (index, lost)
            await winner.request("call.end", {"target_id": _other(loser_callee), "call_id": low})
            for device in rung_devices:  # every node has heard the end before the next run
                await wait_for(device, [], lambda s, lo=low, f=loser_callee: end(lo, "hangup", f) in s)


def _other(user: str) -> str:
    return "alice" if user == "bob" else "bob"


async def test_a_ring_timeout_is_decided_once_and_told_to_every_party_once(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    places = [("alice", 0), ("bob", 1), ("bob", 2)]
    async with spread(tmp_path, redis_url, postgres_url, places, ring_timeout_s=RING_TIMEOUT_S) as (
            _, (alice, phone, laptop)):
        call_id = "timeout-plain"
        await offer(alice, "bob", call_id)
        for client, from_user in ((alice, "bob"), (phone, "alice"), (laptop, "alice")):
            await wait_for(client, [], lambda s, c=client, f=from_user: end(call_id, "timeout", f) in s)
        rest = await settle(alice, phone, laptop)
        assert rest == [[], [], []]

        outcomes = set()
        for run in range(8):  # an answer sent around the ring deadline: answered or timed out, never both
            call_id = f"deadline-{run}"
            await offer(alice, "bob", call_id)
            await rung(call_id, phone)
            await trio.sleep(RING_TIMEOUT_S - 0.08 + 0.02 * run)
            reply = await phone.request_raw("call.answer", {"target_id": "alice", "sdp": ANSWER_SDP,
                                                            "call_id": call_id})
            alice_seen: list[Event] = []
            if reply["type"] == "ack":
                outcomes.add("answered")
                answered = ("call.answer", {"from_user": "bob", "call_id": call_id, "sdp": ANSWER_SDP})
                await wait_for(alice, alice_seen, lambda s, a=answered: a in s)
                await wait_for(laptop, [], lambda s, c=call_id: end(c, "answered_elsewhere", "bob") in s)
                await alice.request("call.end", {"target_id": "bob", "call_id": call_id})
                await wait_for(phone, [], lambda s, c=call_id: end(c, "hangup", "alice") in s)
            else:
                outcomes.add("timed out")
                assert reply["data"]["code"] in ("NOT_FOUND", "CONFLICT"), reply
                await wait_for(alice, alice_seen, lambda s, c=call_id: end(c, "timeout", "bob") in s)
                for device in (phone, laptop):
                    await wait_for(device, [], lambda s, c=call_id: end(c, "timeout", "alice") in s)
            rest = await settle(alice, phone, laptop)
            assert not [e for e in alice_seen + rest[0] if e[0] == "call.end" and e[1]["reason"] == "timeout"
                        and reply["type"] == "ack"], "answered and timed out"
            assert all(not [e for e in events if e[1]["call_id"] == call_id] for events in rest), rest
        print(f"outcomes around the deadline: {sorted(outcomes)}")


async def test_a_call_whose_callers_node_dies_ends_for_the_callee_with_disconnected(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    places = [("alice", 0), ("bob", 1)]
    async with spread(tmp_path, redis_url, postgres_url, places, ttl=1.0) as (started, (alice, bob)):
        await offer(alice, "bob", "orphan")
        await rung("orphan", bob)
        started[0][0].kill()  # the caller's node, which holds the ring timer, dies
        seen = await wait_for(bob, [], lambda s: end("orphan", "disconnected", "alice") in s, within=8.0)
        assert [e for e in seen if e[0] == "call.end"] == [end("orphan", "disconnected", "alice")]
