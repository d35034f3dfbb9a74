"""signald.state.replies: which reply a request gets, and the order replies leave in (no sockets)."""

from __future__ import annotations

import logging

import pytest

from signald.errors import SignalError
from signald.protocol import Ack, Error, PongData, PresencePongEvent
from signald.state.replies import Reply, ReplyOrder, error_reply, failed_reply, succeeded_reply

WHO = {"user_id": "alice", "remote": "127.0.0.1", "session_id": "s-1"}


def test_replies_leave_in_request_order_whatever_order_the_held_work_finishes_in() -> None:
    order, sent = ReplyOrder(), []
    first = order.hold()       # request 1: chat.send, acked after its commit
    second = order.hold()      # request 2: another chat.send
    order.in_turn(lambda: sent.append(3))  # request 3 answered at once, but waits its turn
    assert order.release(second, lambda: sent.append(2)) is False
    assert sent == []          # 1 is still held: nothing may overtake it
    order.release(first, lambda: sent.append(1))
    assert sent == [1, 2, 3]
    assert order.waiting is None
    order.in_turn(lambda: sent.append(4))  # nothing held any more: runs at once
    assert sent == [1, 2, 3, 4]


def test_a_place_released_without_a_reply_lets_the_next_ones_go() -> None:
    order, sent = ReplyOrder(), []
    place = order.hold()
    order.in_turn(lambda: sent.append("after"))
    order.release(place, None)  # e.g. a request without id that succeeded
    assert sent == ["after"]


def test_a_flushing_close_waits_for_the_held_replies_then_says_close_now() -> None:
    order, sent = ReplyOrder(), []
    place = order.hold()
    assert order.close(flush=True) is False  # not yet: a reply is still owed
    assert order.closing_when_replied
    assert order.release(place, lambda: sent.append("ack")) is True  # the caller closes now
    assert sent == ["ack"]


def test_a_close_without_flush_drops_what_is_held() -> None:
    order, sent = ReplyOrder(), []
    place = order.hold()
    order.in_turn(lambda: sent.append("queued"))
    assert order.close(flush=False) is True
    order.release(place, lambda: sent.append("late"))  # released after the drop: nothing runs
    assert sent == []


def test_an_idle_order_closes_at_once() -> None:
    assert ReplyOrder().close(flush=True) is True


def test_a_result_is_acked_with_its_op_id() -> None:
    reply = succeeded_reply(7, {"seq": 1})
    assert isinstance(reply, Ack)
    assert (reply.data.op_id, reply.data.data) == (7, {"seq": 1})


def test_no_op_id_means_no_ack_but_a_reply_object_is_sent_as_is() -> None:
    assert succeeded_reply(None, {"x": 1}) is None
    pong = PresencePongEvent(data=PongData(op_id=3, timestamp="t"))
    assert succeeded_reply(3, Reply(pong)) is pong


def test_a_signal_error_answers_its_code_and_refusals_are_audited(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="signald.audit"):
        reply = failed_reply("room.kick", 4, SignalError("FORBIDDEN", "moderators only"), **WHO)
    assert isinstance(reply, Error)
    assert (reply.data.op_id, reply.data.code, reply.data.message) == (4, "FORBIDDEN", "moderators only")
    assert any("code=FORBIDDEN" in r.getMessage() and "user=alice" in r.getMessage() for r in caplog.records)


def test_a_plain_signal_error_is_not_audited(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="signald.audit"):
        reply = failed_reply("room.join", None, SignalError("NOT_IN_ROOM", "join first"), **WHO)
    assert (reply.data.op_id, reply.data.code) == (None, "NOT_IN_ROOM")
    assert not [r for r in caplog.records if r.name == "signald.audit"]


def test_any_other_exception_is_internal_and_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="signald.router"):
        reply = failed_reply("chat.send", 9, KeyError("boom"), **WHO)
    assert (reply.data.op_id, reply.data.code) == (9, "INTERNAL")
    assert "boom" not in reply.data.message  # internals never reach the client
    record = next(r for r in caplog.records if r.name == "signald.router")
    assert record.exc_info is not None and "s-1" in record.getMessage()


def test_error_reply_builds_the_wire_error() -> None:
    reply = error_reply(None, "RATE_LIMITED", "slow down")
    assert (reply.data.op_id, reply.data.code, reply.data.message) == (None, "RATE_LIMITED", "slow down")
