"""The client core against tests/data/client_cases.json, the cases the JavaScript client runs too.

Each section is a decision table: ``schedule`` (what to do after each kind of close), ``resend``
(which requests go out again after a drop), ``rooms`` (a room view fed acks, pages and events),
``core`` (the whole core driven frame by frame, with a fake clock).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from signald.client.core import ClientCore
from signald.client.model import RESEND, USER_EVENTS, Call
from signald.client.schedule import Backoff, Closed, decide
from signald.client.view import Room, own_change

CASES: dict[str, Any] = json.loads((Path(__file__).resolve().parents[2] / "data" / "client_cases.json").read_text())


def ids(section: str) -> list[str]:
    return [case["name"] for case in CASES[section]]


@pytest.mark.parametrize("case", CASES["schedule"], ids=ids("schedule"))
def test_schedule(case: dict[str, Any]) -> None:
    decision = decide(Closed(**case["closed"]), attempt=case["attempt"], rand=case["rand"], policy=Backoff(),
                      can_refresh=case["can_refresh"], reconnect=case["reconnect"])
    expect = case["expect"]
    assert (decision.action, decision.next_attempt) == (expect["action"], expect["next_attempt"])
    assert decision.delay_s == pytest.approx(expect["delay_s"])


@pytest.mark.parametrize(("kind", "resend"), sorted(CASES["resend"].items()))
def test_resend(kind: str, resend: bool) -> None:
    assert (kind in RESEND) is resend


def subset(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and subset(actual[k], v) for k, v in expected.items())
    return bool(actual == expected)


def check_room(room: Room, expect: dict[str, Any]) -> None:
    assert room.rev == expect["rev"]
    messages = room.messages
    assert len(messages) == len(expect["messages"]), messages
    for message, wanted in zip(messages, expect["messages"], strict=True):
        assert subset(message, wanted), (message, wanted)
    if "presence" in expect:
        assert room.presence == expect["presence"]
    if "typing" in expect:
        assert sorted(room.typing) == expect["typing"]
    for user, devices in expect.get("devices", {}).items():
        assert room.members[user]["devices"] == devices


@pytest.mark.parametrize("case", CASES["rooms"], ids=ids("rooms"))
def test_room_view(case: dict[str, Any]) -> None:
    room = Room("r")
    room.synced = True  # a view in sync: the core's (re)joins and their waiting deltas are the "core" cases
    for step in case["steps"]:
        if "join" in step:
            room.joined(step["join"])
            for entry in step["join"].get("changes", []):
                room.apply_entry(entry)
        elif "entries" in step:
            for entry in step["entries"]:
                room.apply_entry(entry)
        elif "reset" in step:
            room.reset()
        elif "own" in step:
            if step["own"] in ("chat.send", "chat.edit"):
                room.apply_entry(step["result"])
            else:
                change = own_change(step["own"], step["request"], step["result"], "bot")
                assert change is not None
                room.apply_event(*change, live=False)
        elif step["event"] in USER_EVENTS:  # they name a user, not a room: the core gives them to every view
            room.apply_user_event(step["event"], step["data"])
        else:
            changed = room.apply_event(step["event"], step["data"])
            if "changed" in step:
                assert changed is step["changed"], step
    check_room(room, case["expect"])


class Driver:
    """Runs one ``core`` case: the core, its calls by name, the clock, what it sent and emitted."""

    def __init__(self) -> None:
        self.core = ClientCore(rand=lambda: self.rand)
        self.rand = 0.0
        self.now = 0.0
        self.calls: dict[str, Call] = {}
        self.events = self.core.subscribe(frozenset())

    def step(self, step: dict[str, Any]) -> None:
        self.now = step.get("now", self.now)
        self.rand = step.get("rand", self.rand)
        core = self.core
        if "request" in step:
            self.calls[step["as"]] = core.request(step["request"], step.get("data"), now=self.now,
                                                  timeout=step.get("timeout", 10.0))
        elif "join" in step:
            self.calls[step["as"]] = core.join(step["join"], now=self.now, timeout=step.get("timeout", 10.0))
        elif "open" in step:
            core.opened(step["open"], self.now)
        elif "receive" in step:
            core.received(step["receive"], self.now)
        elif "close" in step:
            decision = core.closed(Closed(**step["close"]), self.now)
            assert subset({"action": decision.action, "delay_s": decision.delay_s}, step["decision"]), decision
        elif "tick" in step:
            self.now = step["tick"]
            assert core.tick(self.now) is step["dead"]
        elif "expect_sent" in step:
            assert core.take_outgoing() == step["expect_sent"]
        elif "expect_result" in step:
            call = self.calls[step["expect_result"]]
            assert call.done and call.error is None, call
            if "result" in step:
                assert call.result == step["result"]
        elif "expect_error" in step:
            call = self.calls[step["expect_error"]]
            assert call.done and type(call.error).__name__ == step["error"], call
            if "code" in step:
                assert getattr(call.error, "code", None) == step["code"]
        elif "expect_pending" in step:
            assert not self.calls[step["expect_pending"]].done
        elif "expect_state" in step:
            assert core.state == step["expect_state"]
        elif "expect_room" in step:
            room = core.rooms[step["expect_room"]]
            assert room.rev == step["rev"]
            assert [m["id"] for m in room.messages] == step["ids"]
            for message, wanted in zip(room.messages, step.get("messages", []), strict=False):
                assert subset(message, wanted), (message, wanted)
            if "synced" in step:
                assert room.synced is step["synced"]
        elif "expect_no_room" in step:
            assert step["expect_no_room"] not in core.rooms
        elif "expect_deadline" in step:
            assert core.next_deadline() == pytest.approx(step["expect_deadline"])
        elif "expect_events" in step:
            chat = [e for e in self.events.buffer if e.type.startswith("chat.")]
            self.events.buffer.clear()
            seen = [{"type": e.type, "id": e.data.get("id"), "replayed": e.replayed} for e in chat]
            assert seen == step["expect_events"]
        else:
            raise AssertionError(f"unknown step {step}")


@pytest.mark.parametrize("case", CASES["core"], ids=ids("core"))
def test_core(case: dict[str, Any]) -> None:
    driver = Driver()
    for step in case["steps"]:
        driver.step(step)
