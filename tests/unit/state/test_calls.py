"""CallRegistry: the transition table, every call rule, and a random-walk check of its invariants."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from signald.errors import SignalError
from signald.protocol import CallOfferEvent, type_of
from signald.state.call_table import SOURCE_STATES, TRANSITIONS, Event, State
from signald.state.calls import CallOutcome, CallRegistry
from signald.state.send import Send

SDP = {"type": "offer", "sdp": "v=0\r\n"}
ANSWER_SDP = {"type": "answer", "sdp": "v=0\r\n"}
CAND = {"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}

Ev = tuple[str, tuple[str, ...], dict[str, Any]]  # (type, devices in name order, data)


def norm(sends: list[Send]) -> list[Ev]:
    out: list[Ev] = []
    for s in sends:
        assert s.conns, "a Send must have recipients"
        out.append((type_of(type(s.event)), tuple(sorted(s.conns)), msgspec.structs.asdict(s.event.data)))
    return out


def ice_ev(devices: tuple[str, ...], from_user: str, call_id: str = "m") -> Ev:
    return ("call.ice", devices, {"from_user": from_user, "call_id": call_id, "candidate": CAND})


def end_ev(devices: tuple[str, ...], from_user: str, call_id: str, reason: str) -> Ev:
    return ("call.end", devices, {"from_user": from_user, "call_id": call_id, "reason": reason})


def counter_ids() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"g{next(numbers)}"


def offer(reg: CallRegistry, call_id: str | None = "m", caller: str = "alice", device: str = "a1",
          callee: str = "bob", devices: tuple[str, ...] = ("b1", "b2"), now: float = 0.0,
          timeout: float = 30.0) -> CallOutcome:
    return reg.offer(caller=caller, caller_device=device, callee=callee, callee_devices=list(devices),
                     call_type="video", sdp=SDP, call_id=call_id, now=now, ring_timeout_s=timeout)


def answer(reg: CallRegistry, call_id: str | None = "m", user: str = "bob", device: str = "b1",
           peer: str = "alice", now: float = 1.0) -> CallOutcome:
    return reg.answer(user=user, device=device, peer=peer, sdp=ANSWER_SDP, call_id=call_id, now=now)


def ice(reg: CallRegistry, call_id: str | None = "m", user: str = "alice", device: str = "a1",
        peer: str = "bob") -> CallOutcome:
    return reg.ice(user=user, device=device, peer=peer, candidate=CAND, call_id=call_id)


def end(reg: CallRegistry, call_id: str | None = "m", user: str = "alice", device: str = "a1",
        peer: str = "bob", reason: str | None = None, now: float = 2.0) -> CallOutcome:
    return reg.end(user=user, device=device, peer=peer, reason=reason, call_id=call_id, now=now)


def code_of(action: Callable[[], object]) -> str:
    with pytest.raises(SignalError) as info:
        action()
    return info.value.code


def snapshot(reg: CallRegistry) -> Any:
    view = reg.debug_view()
    indexes = [view["by_device"], view["by_user"], view["by_pair"]]
    return view["calls"], indexes, (reg.active_count, reg.ringing_count)


def assert_empty(reg: CallRegistry) -> None:
    assert len(reg) == 0 and reg.active_count == 0 and reg.ringing_count == 0
    view = reg.debug_view()
    assert view["calls"] == view["by_device"] == view["by_user"] == view["by_pair"] == {}


# --------------------------------------------------------------------------- the table, through the API
# (the table itself is walked cell by cell in tests/unit/state/test_call_table.py)


# Bring call "m" (alice on a1 -> bob on b1, b2; offered at 0, ring timeout 30) into a state ...
SETUP: dict[State, Callable[[CallRegistry], object]] = {
    State.NONE: lambda reg: None,
    State.RINGING: lambda reg: offer(reg),
    State.ACTIVE: lambda reg: (offer(reg), answer(reg)),
    State.ENDED: lambda reg: (offer(reg), answer(reg), end(reg)),
}


# ... and fire each event at it through the public API (extra users set up what an event needs).
def _busy_offer(reg: CallRegistry) -> list[CallOutcome]:
    offer(reg, "bg", "frank", "f1", "gina", ("g1",))
    answer(reg, "bg", "gina", "g1", "frank")
    return [offer(reg, "m", "alice", "a1", "gina", ("g1",))]


def _glare_lost_offer(reg: CallRegistry) -> list[CallOutcome]:
    offer(reg, "a", "quinn", "q1", "pat", ("p1",))
    return [offer(reg, "m", "pat", "p1", "quinn", ("q1",))]


FIRE: dict[Event, Callable[[CallRegistry], list[CallOutcome]]] = {
    Event.OFFER: lambda reg: [offer(reg, now=5.0)],
    Event.OFFER_BUSY: _busy_offer,
    Event.OFFER_GLARE_LOST: _glare_lost_offer,
    Event.ANSWER: lambda reg: [answer(reg)],
    Event.ICE_FROM_CALLER: lambda reg: [ice(reg)],
    Event.ICE_FROM_CALLEE: lambda reg: [ice(reg, user="bob", device="b1", peer="alice")],
    Event.END_BY_CALLER: lambda reg: [end(reg)],
    Event.END_BY_CALLEE: lambda reg: [end(reg, user="bob", device="b1", peer="alice")],
    Event.TIMEOUT: lambda reg: [reg.expire(30.0)],
    Event.GLARE: lambda reg: [offer(reg, "0", "bob", "b1", "alice", ("a1",))],  # "0" < "m": the new one wins
    Event.DISCONNECT_CALLER: lambda reg: [reg.device_gone("a1", 3.0)],
    Event.DISCONNECT_CALLEE: lambda reg: [reg.device_gone("b2", 3.0), reg.device_gone("b1", 3.0)],
    Event.RING_DEVICE_GONE: lambda reg: [reg.device_gone("b2", 3.0)],
}


@pytest.mark.parametrize("state", [*SOURCE_STATES, State.ENDED], ids=lambda s: s.name)
@pytest.mark.parametrize("event", list(Event), ids=lambda e: e.name)
def test_every_state_event_pair_through_the_api(state: State, event: Event) -> None:
    """Each cell of the table, driven through the public API. An ended call is freed at once, so
    from then on its id behaves exactly like the NONE column."""
    reg = CallRegistry()
    SETUP[state](reg)
    expected = TRANSITIONS[State.NONE if state is State.ENDED else state, event]
    before = snapshot(reg)
    try:
        outcomes = FIRE[event](reg)
    except SignalError as exc:
        assert exc.code == expected
        if event not in (Event.OFFER_BUSY, Event.OFFER_GLARE_LOST):  # those set up other calls first
            assert snapshot(reg) == before, "a refused message must change nothing"
        return
    ended = any(e.kind == "ended" and e.call_id == "m" for o in outcomes for e in o.log)
    assert (State.ENDED if ended else reg.state_of("m")) is expected


def test_the_table_drives_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = CallRegistry()
    offer(reg)
    monkeypatch.setitem(TRANSITIONS, (State.RINGING, Event.ICE_FROM_CALLER), "FORBIDDEN")
    monkeypatch.setitem(TRANSITIONS, (State.RINGING, Event.ANSWER), "CONFLICT")
    monkeypatch.setitem(TRANSITIONS, (State.NONE, Event.OFFER), "LIMIT_EXCEEDED")
    assert code_of(lambda: ice(reg)) == "FORBIDDEN"
    assert code_of(lambda: answer(reg)) == "CONFLICT"
    assert code_of(lambda: offer(reg, "n", "carol", "c1")) == "LIMIT_EXCEEDED"


# --------------------------------------------------------------------------- offer, ids


def test_offer_rings_every_callee_device_with_sdp_untouched() -> None:
    reg = CallRegistry()
    out = offer(reg, devices=("b1", "b2", "b1"))
    assert out.call_id == "m"
    assert norm(out.sends) == [("call.offer", ("b1", "b2"),
                                {"from_user": "alice", "call_id": "m", "call_type": "video", "sdp": SDP})]
    event = out.sends[0].event
    assert isinstance(event, CallOfferEvent) and event.data.sdp is SDP
    assert [(e.kind, e.call_id, e.caller, e.callee, e.call_type) for e in out.log] == [
        ("started", "m", "alice", "bob", "video")]
    assert out.busy_changed == set() and reg.state_of("m") is State.RINGING and len(reg) == 1
    assert reg.calls_of("alice") == ["m"] == reg.calls_of("bob") and reg.calls_of("carol") == []


def test_generated_ids_skip_ids_in_use_and_are_returned_for_the_ack() -> None:
    reg = CallRegistry(new_call_id=iter(["g1", "g1", "g2", *["x"] * 9]).__next__)
    assert offer(reg, None).call_id == "g1"
    assert offer(reg, None, "carol", "c1").call_id == "g2"
    assert offer(reg, None, "dan", "d1").call_id == "x"
    assert code_of(lambda: offer(reg, None, "erin", "e1")) == "INTERNAL"


def test_duplicate_id_is_conflict_and_an_ended_id_may_be_reused() -> None:
    reg = CallRegistry()
    offer(reg)
    assert code_of(lambda: offer(reg, "m", "carol", "c1", "dan", ("d1",))) == "CONFLICT"
    end(reg)
    assert offer(reg, "m", "carol", "c1", "dan", ("d1",)).call_id == "m"


def test_bad_offers() -> None:
    reg = CallRegistry()
    assert code_of(lambda: offer(reg, callee="alice", devices=("a2",))) == "INVALID_PAYLOAD"
    assert code_of(lambda: offer(reg, devices=())) == "TARGET_OFFLINE"
    assert_empty(reg)


@pytest.mark.parametrize("devices", [(), ("b1",)], ids=["offline", "online"])
def test_an_offer_to_a_stranger_is_forbidden_whether_or_not_they_are_connected(devices: tuple[str, ...]) -> None:
    # No presence oracle: the room check comes before any look at the callee's devices.
    reg = CallRegistry()
    with pytest.raises(SignalError) as refused:
        reg.offer(caller="alice", caller_device="a1", callee="bob", callee_devices=list(devices), call_type="audio",
                  sdp=SDP, call_id="m", now=0.0, ring_timeout_s=30.0, shares_room=False)
    assert (refused.value.code, refused.value.message) == ("FORBIDDEN", "you share no room with 'bob'")
    assert_empty(reg)


# --------------------------------------------------------------------------- answer, ice


def test_first_answer_wins_and_the_others_get_answered_elsewhere() -> None:
    reg = CallRegistry()
    offer(reg, devices=("b1", "b2", "b3"))
    out = answer(reg, device="b2")
    assert norm(out.sends) == [
        ("call.answer", ("a1",), {"from_user": "bob", "call_id": "m", "sdp": ANSWER_SDP}),
        end_ev(("b1", "b3"), "bob", "m", "answered_elsewhere"),
    ]
    assert out.busy_changed == {"alice", "bob"} and reg.is_busy("alice") and reg.is_busy("bob")
    assert [e.kind for e in out.log] == ["answered"] and reg.active_count == 1
    # afterwards only the winner speaks for bob, and gets alice's messages
    assert code_of(lambda: answer(reg, device="b1")) == "CONFLICT"
    assert code_of(lambda: answer(reg, device="b2")) == "CONFLICT"
    assert code_of(lambda: ice(reg, user="bob", device="b1", peer="alice")) == "FORBIDDEN"
    assert code_of(lambda: end(reg, user="bob", device="b3", peer="alice")) == "FORBIDDEN"
    assert norm(ice(reg).sends) == [ice_ev(("b2",), "alice")]
    assert norm(ice(reg, user="bob", device="b2", peer="alice").sends)[0][1] == ("a1",)
    assert reg.device_gone("b1", 3.0).sends == []  # b1 left the call when b2 answered


def test_trickle_ice_both_ways_before_the_answer() -> None:
    reg = CallRegistry()
    offer(reg)
    assert norm(ice(reg).sends) == [ice_ev(("b1", "b2"), "alice")]
    out = ice(reg, user="bob", device="b2", peer="alice")
    assert norm(out.sends) == [ice_ev(("a1",), "bob")]
    assert out.log == [] and out.busy_changed == set()


def test_only_the_offering_device_and_rung_devices_may_speak() -> None:
    reg = CallRegistry()
    offer(reg)
    assert code_of(lambda: ice(reg, device="a2")) == "FORBIDDEN"
    assert code_of(lambda: end(reg, device="a2")) == "FORBIDDEN"
    assert code_of(lambda: answer(reg, device="b3")) == "FORBIDDEN"  # connected after the offer
    assert code_of(lambda: answer(reg, user="alice", device="a1", peer="bob")) == "FORBIDDEN"
    assert reg.state_of("m") is State.RINGING


def test_not_found_forbidden_and_bad_targets() -> None:
    reg = CallRegistry()
    assert code_of(lambda: answer(reg, "nope")) == "NOT_FOUND"
    assert code_of(lambda: end(reg, None)) == "NOT_FOUND"
    offer(reg)
    assert code_of(lambda: ice(reg, user="carol", device="c1", peer="bob")) == "FORBIDDEN"
    assert code_of(lambda: ice(reg, peer="carol")) == "INVALID_PAYLOAD"
    assert code_of(lambda: ice(reg, peer="alice")) == "INVALID_PAYLOAD"
    end(reg)
    assert code_of(lambda: end(reg)) == "NOT_FOUND"
    assert code_of(lambda: end(reg, user="bob", device="b1", peer="alice")) == "NOT_FOUND"
    assert code_of(lambda: ice(reg, None)) == "NOT_FOUND"


def test_messages_without_call_id_resolve_to_the_only_call_either_way() -> None:
    reg = CallRegistry()
    offer(reg, "m1")
    offer(reg, "x", "carol", "c1", "bob", ("b1",))  # another call of bob's, with someone else
    assert ice(reg, None).call_id == "m1"
    assert ice(reg, None, "bob", "b1", "alice").call_id == "m1"
    offer(reg, "m3", "alice", "a2", "bob", ("b2",))  # a second call between the same two users
    assert code_of(lambda: end(reg, None)) == "INVALID_PAYLOAD"
    assert code_of(lambda: answer(reg, None)) == "INVALID_PAYLOAD"
    assert end(reg, "m3", device="a2").call_id == "m3"
    assert answer(reg, None).call_id == "m1"
    assert end(reg, None, "bob", "b1", "alice").call_id == "m1"
    assert code_of(lambda: end(reg, None)) == "NOT_FOUND"


# --------------------------------------------------------------------------- ending


def test_callee_end_while_ringing_is_a_reject() -> None:
    reg = CallRegistry()
    offer(reg, devices=("b1", "b2", "b3"))
    out = end(reg, user="bob", device="b2", peer="alice", reason="declined", now=4.0)
    assert norm(out.sends) == [
        end_ev(("a1",), "bob", "m", "rejected"),
        end_ev(("b1", "b3"), "bob", "m", "rejected"),  # from_user: bob, like answered_elsewhere
    ]
    assert [(e.kind, e.reason, e.duration_s) for e in out.log] == [("ended", "rejected", None)]
    assert_empty(reg)


def test_caller_cancel_while_ringing_relays_its_reason() -> None:
    reg = CallRegistry()
    offer(reg)
    assert norm(end(reg).sends) == [end_ev(("b1", "b2"), "alice", "m", "hangup")]
    offer(reg)
    assert norm(end(reg, reason="oops").sends) == [end_ev(("b1", "b2"), "alice", "m", "oops")]


@pytest.mark.parametrize("by_caller", [True, False])
def test_hangup_after_answer_goes_to_the_peer_device_with_duration(by_caller: bool) -> None:
    reg = CallRegistry()
    offer(reg)
    answer(reg, device="b2", now=10.0)
    who = ("alice", "a1", "bob") if by_caller else ("bob", "b2", "alice")
    out = end(reg, user=who[0], device=who[1], peer=who[2], reason="bye", now=72.5)
    assert norm(out.sends) == [end_ev(("b2",) if by_caller else ("a1",), who[0], "m", "bye")]
    assert out.busy_changed == {"alice", "bob"} and not reg.is_busy("alice") and not reg.is_busy("bob")
    assert [(e.kind, e.reason, e.duration_s) for e in out.log] == [("ended", "bye", 62.5)]
    assert_empty(reg)


def test_ring_timeout_ends_on_both_sides() -> None:
    reg = CallRegistry()
    offer(reg, now=100.0, timeout=30.0)
    offer(reg, "n", "carol", "c1", "dan", ("d1",), now=101.0, timeout=10.0)
    assert reg.next_deadline() == 111.0
    assert reg.expire(110.9).sends == []
    assert norm(reg.expire(111.0).sends) == [end_ev(("c1",), "dan", "n", "timeout"),
                                             end_ev(("d1",), "carol", "n", "timeout")]
    assert reg.next_deadline() == 130.0
    out = reg.expire(500.0)
    assert norm(out.sends) == [
        end_ev(("a1",), "bob", "m", "timeout"),
        end_ev(("b1", "b2"), "alice", "m", "timeout"),
    ]
    assert [(e.kind, e.reason, e.duration_s) for e in out.log] == [("ended", "timeout", None)]
    assert reg.next_deadline() is None
    assert_empty(reg)


def test_answered_calls_do_not_time_out() -> None:
    reg = CallRegistry()
    offer(reg)
    answer(reg)
    assert reg.next_deadline() is None
    assert reg.expire(1e9).sends == [] and reg.state_of("m") is State.ACTIVE


# --------------------------------------------------------------------------- busy, glare


def test_offer_to_a_busy_user_is_acked_then_ended_busy() -> None:
    reg = CallRegistry()
    offer(reg)
    answer(reg)
    out = offer(reg, "c", "carol", "c1", "bob", ("b1", "b2"))
    assert out.call_id == "c"
    assert norm(out.sends) == [end_ev(("c1",), "bob", "c", "busy")]
    assert [(e.kind, e.reason) for e in out.log] == [("started", None), ("ended", "busy")]
    assert out.busy_changed == set() and reg.state_of("c") is State.NONE and len(reg) == 1


def test_concurrent_calls_allowed_ring_a_busy_user() -> None:
    reg = CallRegistry(allow_concurrent_calls=True)
    offer(reg)
    answer(reg)
    out = offer(reg, "c", "carol", "c1", "bob", ("b1", "b2"))
    assert [ev[0] for ev in norm(out.sends)] == ["call.offer"] and reg.state_of("c") is State.RINGING
    out = answer(reg, "c", peer="carol", device="b2")
    assert out.busy_changed == {"carol"}  # bob was busy already
    assert end(reg).busy_changed == {"alice"} and reg.is_busy("bob")


def test_glare_the_new_offer_loses() -> None:
    reg = CallRegistry()
    offer(reg, "m")
    out = offer(reg, "z", "bob", "b1", "alice", ("a1", "a2"))  # "m" < "z": the ringing call survives
    assert out.call_id == "z"
    assert norm(out.sends) == [end_ev(("b1",), "alice", "z", "glare")]
    assert [(e.kind, e.reason) for e in out.log] == [("started", None), ("ended", "glare")]
    assert reg.state_of("m") is State.RINGING and reg.state_of("z") is State.NONE


def test_glare_the_new_offer_wins() -> None:
    reg = CallRegistry()
    offer(reg, "m")
    out = offer(reg, "a", "bob", "b1", "alice", ("a1", "a2"))  # "a" < "m": the ringing call is replaced
    assert norm(out.sends) == [
        end_ev(("a1",), "bob", "m", "glare"),
        end_ev(("b1", "b2"), "alice", "m", "glare"),
        ("call.offer", ("a1", "a2"), {"from_user": "bob", "call_id": "a", "call_type": "video", "sdp": SDP}),
    ]
    log = [(e.kind, e.call_id, e.reason) for e in out.log]
    assert log == [("ended", "m", "glare"), ("started", "a", None)]
    assert reg.state_of("m") is State.NONE and reg.state_of("a") is State.RINGING and len(reg) == 1


# --------------------------------------------------------------------------- decided on another node


def test_due_hands_over_ringing_calls_and_time_out_ends_only_those_still_ringing() -> None:
    reg = CallRegistry()
    offer(reg, "m", now=0.0, timeout=5.0)
    offer(reg, "n", "carol", "c1", "dan", ("d1",), now=1.0, timeout=5.0)
    assert reg.due(4.9) == []
    assert reg.due(6.0) == ["m", "n"] and reg.next_deadline() is None  # off the timer, still ringing
    assert reg.state_of("m") is State.RINGING and reg.due(100.0) == []
    answer(reg, "n", user="dan", device="d1", peer="carol")  # an answer won the race for "n"
    assert reg.time_out("n", 7.0).sends == [] and reg.state_of("n") is State.ACTIVE
    out = reg.time_out("m", 7.0)
    assert norm(out.sends) == [end_ev(("a1",), "bob", "m", "timeout"), end_ev(("b1", "b2"), "alice", "m", "timeout")]
    assert reg.time_out("m", 8.0).log == []  # once


def test_an_offer_without_a_deadline_here_never_expires() -> None:
    reg = CallRegistry()
    offer(reg, timeout=math.inf)
    assert reg.next_deadline() is None and reg.expire(1e12).sends == [] and reg.state_of("m") is State.RINGING


def test_check_answer_says_what_answer_would_and_changes_nothing() -> None:
    reg = CallRegistry()
    offer(reg)
    before = snapshot(reg)
    assert reg.check_answer(user="bob", device="b2", peer="alice", call_id=None) == "m"
    assert snapshot(reg) == before
    assert code_of(lambda: reg.check_answer(user="alice", device="a1", peer="bob", call_id="m")) == "FORBIDDEN"
    assert code_of(lambda: reg.check_answer(user="bob", device="x9", peer="alice", call_id="m")) == "FORBIDDEN"
    answer(reg)
    assert code_of(lambda: reg.check_answer(user="bob", device="b2", peer="alice", call_id="m")) == "CONFLICT"


def test_an_offers_verdict_from_its_node_replaces_the_local_busy_check() -> None:
    reg = CallRegistry()
    out = offer_with(reg, "busy")  # this copy had not heard bob's answer yet: the verdict says busy
    assert norm(out.sends) == [end_ev(("a1",), "bob", "m", "busy")] and len(reg) == 0
    out = offer_with(reg, "glare")
    assert norm(out.sends) == [end_ev(("a1",), "bob", "m", "glare")] and len(reg) == 0
    offer(reg, "x", "carol", "c1", "bob", ("b1",))
    answer(reg, "x", peer="carol")  # bob is busy here; the offer's node did not know yet
    out = offer_with(reg, "ring")
    assert [ev[0] for ev in norm(out.sends)] == ["call.offer"] and reg.state_of("m") is State.RINGING
    out = offer_with(reg, "ring", call_id="z", caller="bob", device="b2", callee="alice", devices=("a1",))
    assert norm(out.sends) == [end_ev(("b2",), "alice", "z", "glare")]  # "m" < "z": glare still holds


def offer_with(reg: CallRegistry, verdict: Literal["ring", "busy", "glare"], *, call_id: str = "m",
               caller: str = "alice", device: str = "a1", callee: str = "bob",
               devices: tuple[str, ...] = ("b1", "b2")) -> CallOutcome:
    return reg.offer(caller=caller, caller_device=device, callee=callee, callee_devices=list(devices),
                     call_type="video", sdp=SDP, call_id=call_id, now=0.0, ring_timeout_s=math.inf, verdict=verdict)


# --------------------------------------------------------------------------- disconnects


def test_holds_says_which_devices_a_disconnect_must_end_calls_for() -> None:
    reg = CallRegistry()
    assert not reg.holds("a1")  # the hub skips device_gone for these (most connections)
    offer(reg)
    assert [d for d in ("a1", "b1", "b2", "b3") if reg.holds(d)] == ["a1", "b1", "b2"]
    answer(reg, device="b2")
    assert [d for d in ("a1", "b1", "b2") if reg.holds(d)] == ["a1", "b2"]  # b1 stopped ringing
    reg.device_gone("b2", 3.0)
    assert not any(reg.holds(d) for d in ("a1", "b1", "b2"))


def test_caller_disconnect_ends_for_ringing_devices_and_for_the_winner() -> None:
    reg = CallRegistry()
    offer(reg)
    assert norm(reg.device_gone("a1", 1.0).sends) == [end_ev(("b1", "b2"), "alice", "m", "disconnected")]
    offer(reg)
    answer(reg, device="b2")
    out = reg.device_gone("a1", 5.0)
    assert norm(out.sends) == [end_ev(("b2",), "alice", "m", "disconnected")]
    assert out.busy_changed == {"alice", "bob"} and out.log[0].duration_s == 4.0
    assert_empty(reg)


def test_callee_disconnects() -> None:
    reg = CallRegistry()
    offer(reg)
    answer(reg)
    out = reg.device_gone("b1", 3.0)
    assert norm(out.sends) == [end_ev(("a1",), "bob", "m", "disconnected")]
    assert out.busy_changed == {"alice", "bob"}
    offer(reg, devices=("b1", "b2", "b3"))
    assert reg.device_gone("b2", 3.0).sends == [] and reg.state_of("m") is State.RINGING
    assert norm(ice(reg).sends)[0][1] == ("b1", "b3")
    assert reg.device_gone("b1", 3.0).sends == []
    out = reg.device_gone("b3", 4.0)
    assert norm(out.sends) == [end_ev(("a1",), "bob", "m", "disconnected")]
    assert [(e.kind, e.reason) for e in out.log] == [("ended", "disconnected")]
    assert reg.device_gone("b3", 4.0) == CallOutcome() and reg.device_gone("zz", 4.0) == CallOutcome()
    assert_empty(reg)


def test_one_device_in_several_calls() -> None:
    reg = CallRegistry(allow_concurrent_calls=True)
    offer(reg, "k2", "alice", "a1", "bob", ("b1",))
    offer(reg, "k1", "carol", "c1", "alice", ("a1", "a2"))
    answer(reg, "k2")
    out = reg.device_gone("a1", 9.0)
    assert norm(out.sends) == [end_ev(("b1",), "alice", "k2", "disconnected")]  # k1 still rings on a2
    assert reg.state_of("k1") is State.RINGING and out.busy_changed == {"alice", "bob"}


# --------------------------------------------------------------------------- no leaks


def test_thousands_of_calls_leave_nothing_behind() -> None:
    reg = CallRegistry(new_call_id=counter_ids())
    log: Counter[str] = Counter()
    now = 0.0
    for i in range(3000):
        now += 1.0
        first = offer(reg, None, now=now, timeout=5.0)
        assert first.call_id is not None
        cid, outcomes = first.call_id, [first]
        match i % 7:
            case 0:
                outcomes += [answer(reg, cid, now=now), end(reg, cid, now=now + 1)]
            case 1:
                outcomes += [end(reg, cid, "bob", "b2", "alice")]  # rejected
            case 2:
                outcomes += [reg.expire(now + 5.0)]
            case 3:
                outcomes += [reg.device_gone("b1", now), reg.device_gone("b2", now)]
            case 4:
                outcomes += [answer(reg, cid, now=now), offer(reg, None, "carol", "c1", "bob", ("b1",))]
                outcomes += [reg.device_gone("a1", now)]  # the offer above was to a busy bob
            case 5:
                outcomes += [offer(reg, "~", "bob", "b1", "alice", ("a1",)), end(reg, cid)]  # glare lost
            case _:
                outcomes += [answer(reg, cid, now=now), reg.device_gone("b1", now)]
        log.update(e.kind for o in outcomes for e in o.log)
    assert log["started"] == log["ended"] == 3000 + 2 * (3000 // 7)
    assert reg.debug_view()["deadlines"] <= 66  # stale ring deadlines are compacted away as calls stop ringing
    assert reg.next_deadline() is None and reg.debug_view()["deadlines"] == 0
    assert_empty(reg)


# --------------------------------------------------------------------------- random walk


@dataclass
class ModelCall:
    caller: str
    callee: str
    caller_device: str
    deadline: float
    rung: tuple[str, ...] = ()
    answered: bool = False
    ends: Counter[str] = field(default_factory=Counter)
    closed_by_self: set[str] = field(default_factory=set)


USERS = ("u0", "u1", "u2", "u3")
EXPLICIT_IDS = ("c0", "c5", "h1", "z9")


class CallMachine(RuleBasedStateMachine):
    """Random offers/answers/ice/ends/disconnects/expiry for 4 users with 1-2 devices each."""

    def __init__(self) -> None:
        super().__init__()
        self.reg = CallRegistry()
        self.now = 0.0
        self.online: dict[str, list[str]] = {"u0": ["u0.0"], "u1": ["u1.0", "u1.1"], "u2": ["u2.0"],
                                             "u3": ["u3.0", "u3.1"]}
        self.gone: set[str] = set()
        self.fresh = itertools.count(2)
        self.live: dict[str, ModelCall] = {}

    @initialize(concurrent=st.booleans())
    def configure(self, concurrent: bool) -> None:
        self.reg = CallRegistry(allow_concurrent_calls=concurrent, new_call_id=counter_ids())

    # ---------------------------------------------------------------- helpers

    def run(self, action: Callable[[], CallOutcome], device: str, timeout: float = 0.0,
            explicit_id: str | None = None, sender_call: bool = True) -> None:
        busy_before = {u: self.reg.is_busy(u) for u in USERS}
        before = snapshot(self.reg)
        try:
            out = action()
        except SignalError as exc:
            assert snapshot(self.reg) == before, f"{exc!r} changed the registry"
            if explicit_id is not None and explicit_id not in self.live:
                assert exc.code == "NOT_FOUND", exc
            return
        assert out.busy_changed == {u for u in USERS if self.reg.is_busy(u) != busy_before[u]}
        for entry in out.log:
            if entry.kind == "started":
                assert entry.call_id not in self.live, "started twice"
                self.live[entry.call_id] = ModelCall(entry.caller, entry.callee, device, self.now + timeout)
        for send in out.sends:
            data = send.event.data
            model = self.live[data.call_id]
            assert not self.gone & send.conns, "sent to a closed connection"
            kind = type_of(type(send.event))
            if kind == "call.offer":
                model.rung = tuple(send.conns)
                assert send.conns == frozenset(self.online[model.callee])
                continue
            assert send.conns <= {model.caller_device, *model.rung}
            if sender_call and data.call_id == out.call_id:
                assert device not in send.conns, "the sender gets its ack, not the event"
            if kind == "call.end":
                model.ends.update(send.conns)
                assert max(model.ends.values()) == 1, "a device got call.end twice"
        for entry in out.log:
            model = self.live[entry.call_id]
            if entry.kind == "answered":
                assert not model.answered
                model.answered = True
            elif entry.kind == "ended":
                assert (entry.duration_s is not None) == model.answered
                if sender_call:
                    model.closed_by_self.add(device)
                for party in (model.caller_device, *model.rung):
                    assert model.ends[party] == 1 or party in self.gone | model.closed_by_self, party
                del self.live[entry.call_id]

    def pick(self, data: st.DataObject) -> tuple[str | None, str, str, str] | None:
        choice: str | None
        if self.live and data.draw(st.integers(0, 4)) > 0:  # mostly a live call, named or not
            choice = data.draw(st.sampled_from(sorted(self.live)))
            model = self.live[choice]
            user, peer = data.draw(st.permutations([model.caller, model.callee]))
            choice = data.draw(st.sampled_from([choice, None]))
        else:  # an unknown id, or no id between two random users
            choice = data.draw(st.one_of(st.none(), st.sampled_from(EXPLICIT_IDS)))
            user, peer = data.draw(st.permutations(USERS))[:2]
        if not self.online[user]:
            return None
        return choice, user, data.draw(st.sampled_from(self.online[user])), peer

    # ---------------------------------------------------------------- rules

    @rule(data=st.data(), timeout=st.sampled_from([2.0, 6.0]))
    def offer(self, data: st.DataObject, timeout: float) -> None:
        caller, callee = data.draw(st.permutations(USERS))[:2]
        if not self.online[caller] or not self.online[callee]:
            return
        device = data.draw(st.sampled_from(self.online[caller]))
        cid = data.draw(st.one_of(st.none(), st.sampled_from(EXPLICIT_IDS)))
        self.run(lambda: offer(self.reg, cid, caller, device, callee, tuple(self.online[callee]), self.now,
                               timeout), device, timeout, sender_call=False)

    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        if (picked := self.pick(data)) is not None:
            cid, user, device, peer = picked
            self.run(lambda: answer(self.reg, cid, user, device, peer, self.now), device, explicit_id=cid)

    @rule(data=st.data())
    def answer_a_ringing_call(self, data: st.DataObject) -> None:
        ringing = sorted(cid for cid, m in self.live.items() if not m.answered)
        if ringing:
            cid = data.draw(st.sampled_from(ringing))
            model = self.live[cid]
            device = data.draw(st.sampled_from(model.rung))
            self.run(lambda: answer(self.reg, cid, model.callee, device, model.caller, self.now), device)

    @rule(data=st.data())
    def ice(self, data: st.DataObject) -> None:
        if (picked := self.pick(data)) is not None:
            cid, user, device, peer = picked
            self.run(lambda: ice(self.reg, cid, user, device, peer), device, explicit_id=cid)

    @rule(data=st.data(), reason=st.sampled_from([None, "hangup", "bye"]))
    def end(self, data: st.DataObject, reason: str | None) -> None:
        if (picked := self.pick(data)) is not None:
            cid, user, device, peer = picked
            self.run(lambda: end(self.reg, cid, user, device, peer, reason, self.now), device,
                     explicit_id=cid)

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        devices = [d for ds in self.online.values() for d in ds]
        if devices:
            device = data.draw(st.sampled_from(devices))
            self.online[device[:2]].remove(device)
            self.gone.add(device)
            self.run(lambda: self.reg.device_gone(device, self.now), device, sender_call=False)

    @rule(user=st.sampled_from(USERS))
    def reconnect(self, user: str) -> None:
        if len(self.online[user]) < 2:
            self.online[user].append(f"{user}.{next(self.fresh)}")

    @rule(dt=st.sampled_from([0.5, 1.0, 2.5]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.run(lambda: self.reg.expire(self.now), "-", sender_call=False)
        deadline = self.reg.next_deadline()
        assert deadline is None or deadline > self.now

    # ---------------------------------------------------------------- invariants

    @invariant()
    def registry_matches_the_model(self) -> None:
        reg = self.reg
        view = reg.debug_view()
        assert set(view["calls"]) == set(self.live), "state left for an ended call (or a live call lost)"
        for index in (view["by_device"], view["by_user"], view["by_pair"]):
            assert all(ids and set(ids) <= set(view["calls"]) for ids in index.values())
        for cid, model in self.live.items():
            assert reg.state_of(cid) is (State.ACTIVE if model.answered else State.RINGING)
        for user in USERS:
            in_call = any(m.answered and user in (m.caller, m.callee) for m in self.live.values())
            assert reg.is_busy(user) == in_call
        assert reg.active_count == sum(m.answered for m in self.live.values())
        ringing = {(m.caller, m.callee) for m in self.live.values() if not m.answered}
        assert not any((callee, caller) in ringing for caller, callee in ringing), "glare left unresolved"
        pending = [m.deadline for m in self.live.values() if not m.answered]
        assert reg.next_deadline() == (min(pending) if pending else None)


TestCallMachine = CallMachine.TestCase
TestCallMachine.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])
