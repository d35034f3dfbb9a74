"""What a node tells again after a broker outage (signald.cluster.kept)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from signald.app.replica import CallAnswered, CallEnded, CallIced, CallOffered, CallTimedOut, Join, Kick
from signald.cluster.kept import KEPT_MAX, KEPT_S, KeptOps
from signald.state.calls import CallRegistry

SDP = {"type": "offer", "sdp": "v=0"}


def kept() -> tuple[KeptOps, CallRegistry]:
    calls = CallRegistry()
    hub: Any = SimpleNamespace(calls=calls)
    return KeptOps(hub), calls


def ring(calls: CallRegistry, call_id: str) -> None:
    calls.offer(caller="alice", caller_device="a1", callee="bob", callee_devices=["b1"], call_type="audio",
                sdp=SDP, call_id=call_id, now=0.0, ring_timeout_s=30.0)


def test_an_answer_is_told_again_while_the_call_is_answered_and_its_end_after() -> None:
    ops, calls = kept()
    ring(calls, "c1")
    ops.shared(CallOffered("alice", "a1", "bob", ["b1"], "audio", SDP, "c1"), 0.0)  # not kept: lost, it rings nobody
    calls.answer(user="bob", device="b1", peer="alice", sdp=SDP, call_id="c1", now=1.0)
    answered = CallAnswered("bob", "b1", "alice", SDP, "c1")
    ops.shared(answered, 1.0)
    ops.shared(CallIced("bob", "b1", "alice", {"candidate": "x"}, "c1"), 1.5)  # best-effort: not kept
    assert ops.again(2.0) == [answered]
    calls.end(user="bob", device="b1", peer="alice", reason=None, call_id="c1", now=3.0)
    ended = CallEnded("bob", "b1", "alice", None, "c1")
    ops.shared(ended, 3.0)
    assert ops.again(4.0) == [ended]
    assert ops.again(3.0 + KEPT_S + 1) == []  # too old


def test_an_answer_whose_call_ended_elsewhere_is_forgotten() -> None:
    ops, calls = kept()
    ring(calls, "c1")
    calls.answer(user="bob", device="b1", peer="alice", sdp=SDP, call_id="c1", now=1.0)
    ops.shared(CallAnswered("bob", "b1", "alice", SDP, "c1"), 1.0)
    calls.end(user="alice", device="a1", peer="bob", reason=None, call_id="c1", now=2.0)  # heard from alice's node
    assert ops.again(3.0) == []


def test_an_end_is_not_told_again_once_its_call_id_is_live_again() -> None:
    ops, calls = kept()
    ops.shared(CallTimedOut("c1"), 0.0)
    ring(calls, "c1")  # the client chose the same call id for a new call
    assert ops.again(1.0) == []
    calls.time_out("c1", 2.0)
    assert ops.again(3.0) == [CallTimedOut("c1")]


def test_a_kick_is_told_again_until_the_user_joins_that_room_again() -> None:
    ops, _ = kept()
    kick, other = Kick("lobby", "dave", "mod1", "spam"), Kick("lobby", "erin", "mod1", None)
    ops.shared(kick, 0.0)
    ops.shared(other, 0.5)
    ops.joined(Join("c9", "dave", "hall"))  # another room
    assert ops.again(1.0) == [kick, other]
    ops.joined(Join("c9", "dave", "lobby"))
    assert ops.again(2.0) == [other]


def test_only_the_last_ones_are_kept() -> None:
    ops, _ = kept()
    for i in range(KEPT_MAX + 5):
        ops.shared(CallTimedOut(f"c{i}"), 0.0)
    told = ops.again(1.0)
    assert len(told) == KEPT_MAX and told[0] == CallTimedOut("c5")
