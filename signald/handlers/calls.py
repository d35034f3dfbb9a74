"""Call signalling: ``call.offer``, ``call.answer``, ``call.ice``, ``call.end``.

The call state machine lives in :mod:`signald.state.calls`; these handlers check the target (in
PROTOCOL.md's order: no connected device → ``TARGET_OFFLINE``, no shared room → ``FORBIDDEN``),
run the transition, and deliver its events after the ack. Presence shows ``busy`` while a user
is in an answered call. With ``calls.call_log`` on, the start, answer and end of each call are
stored as system messages (``user_id`` ``$system``) in a room both parties shared when the call
was offered; one task writes them, so they are stored in the order they happened.
"""

from __future__ import annotations

import math
from typing import Final

import trio

from signald.app.hub import Context, Hub
from signald.errors import SignalError
from signald.protocol import (
    CallAnswer,
    CallEnd,
    CallIce,
    CallOffer,
    CallOfferResult,
    ChatMessage,
    ChatMessageEvent,
)
from signald.router import Router
from signald.state.calls import CallLogEntry, CallOutcome
from signald.state.rooms import Send

SYSTEM_USER: Final = "$system"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f", {hours}:{minutes:02d}:{secs:02d}" if hours else f", {minutes:02d}:{secs:02d}"


def describe(entry: CallLogEntry) -> str:
    """The text of a call-log system message."""
    if entry.kind == "started":
        return f"{entry.call_type} call from {entry.caller} to {entry.callee}"
    if entry.kind == "answered":
        return f"{entry.call_type} call answered by {entry.callee}"
    return f"{entry.call_type} call ended ({entry.reason}){_duration(entry.duration_s)}"


class CallLog:
    """Stores call-log entries as system messages, in order, without blocking call handling."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._rooms: dict[str, str] = {}
        self._send, self._receive = trio.open_memory_channel[tuple[str, CallLogEntry]](math.inf)

    def record(self, entries: list[CallLogEntry]) -> None:
        for entry in entries:
            room = self._room_for(entry)
            if entry.kind == "ended":
                self._rooms.pop(entry.call_id, None)
            if room is not None:
                self._send.send_nowait((room, entry))

    def _room_for(self, entry: CallLogEntry) -> str | None:
        if entry.kind == "started":
            shared = sorted(self.hub.rooms.rooms_of_user(entry.caller) & self.hub.rooms.rooms_of_user(entry.callee))
            if not shared:
                return None
            self._rooms[entry.call_id] = shared[0]
        return self._rooms.get(entry.call_id)

    async def run(self) -> None:
        async for room, entry in self._receive:
            history = self.hub.history
            if history is None:  # pragma: no cover - the hub always has a store while running
                continue

            def announce(message: ChatMessage) -> None:
                self.hub.send_to(self.hub.rooms.conns_in(message.room), ChatMessageEvent(data=message))

            try:
                await history.store.send(room=room, user_id=SYSTEM_USER, body=describe(entry), on_commit=announce)
            except SignalError:
                continue


def apply_outcome(hub: Hub, outcome: CallOutcome, after_reply: list[Send] | None = None) -> None:
    """Deliver a transition's events (after the ack when ``after_reply`` is given), update presence."""
    sends = [Send(conns=frozenset(send.devices), event=send.event) for send in outcome.sends]
    for user in sorted(outcome.busy_changed):
        sends.extend(hub.presence.set_in_call(user, hub.calls.is_busy(user)))
    if after_reply is not None:
        after_reply.extend(sends)
    else:
        hub.publish(sends)
    if outcome.log and hub.call_log is not None:
        hub.call_log.record(outcome.log)
    hub.poke_timers()


async def call_offer(ctx: Context, msg: CallOffer) -> CallOfferResult:
    hub, session, data = ctx.hub, ctx.session, msg.data
    if data.target_id == session.user_id:
        raise SignalError("INVALID_PAYLOAD", "`$.data.target_id` is yourself")
    devices = hub.devices_of(data.target_id)
    if not devices:
        raise SignalError("TARGET_OFFLINE", f"{data.target_id!r} has no connected device")
    if not hub.rooms.shares_room(session.user_id, data.target_id):
        raise SignalError("FORBIDDEN", f"you share no room with {data.target_id!r}")
    outcome = hub.calls.offer(
        caller=session.user_id, caller_device=session.session_id, callee=data.target_id,
        callee_devices=devices, call_type=data.call_type, sdp=data.sdp, call_id=data.call_id,
        now=trio.current_time(), ring_timeout_s=hub.config.limits.ring_timeout_s,
    )
    apply_outcome(hub, outcome, ctx.after_reply)
    assert outcome.call_id is not None
    return CallOfferResult(call_id=outcome.call_id)


async def call_answer(ctx: Context, msg: CallAnswer) -> None:
    session, data = ctx.session, msg.data
    outcome = ctx.hub.calls.answer(
        user=session.user_id, device=session.session_id, peer=data.target_id, sdp=data.sdp,
        call_id=data.call_id, now=trio.current_time(),
    )
    apply_outcome(ctx.hub, outcome, ctx.after_reply)


async def call_ice(ctx: Context, msg: CallIce) -> None:
    session, data = ctx.session, msg.data
    outcome = ctx.hub.calls.ice(
        user=session.user_id, device=session.session_id, peer=data.target_id, candidate=data.candidate,
        call_id=data.call_id,
    )
    apply_outcome(ctx.hub, outcome, ctx.after_reply)


async def call_end(ctx: Context, msg: CallEnd) -> None:
    session, data = ctx.session, msg.data
    outcome = ctx.hub.calls.end(
        user=session.user_id, device=session.session_id, peer=data.target_id, reason=data.reason,
        call_id=data.call_id, now=trio.current_time(),
    )
    apply_outcome(ctx.hub, outcome, ctx.after_reply)


def register(router: Router) -> None:
    router.add(CallOffer, call_offer)
    router.add(CallAnswer, call_answer)
    router.add(CallIce, call_ice)
    router.add(CallEnd, call_end)
