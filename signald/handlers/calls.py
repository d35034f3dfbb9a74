"""Call signalling: ``call.offer``, ``call.answer``, ``call.ice``, ``call.end``.

The call state machine lives in :mod:`signald.state.calls`, with the target checks in the contract's
order (no shared room → ``FORBIDDEN`` whether connected or not, then no connected device →
``TARGET_OFFLINE``: nothing tells a stranger who is online); these handlers run the transition, and
have the hub deliver its events after the ack (:meth:`Hub.apply_call_outcome`: presence shows
``busy`` while a user is in an answered call; the call log is :mod:`signald.app.calls`).

With several nodes, what two nodes could decide at once is decided once, by the broker
(:class:`~signald.app.replica.CallDecisions`): whether the callee is busy anywhere, and which
answer won. The node that takes the request then applies that verdict and shares it. One node
alone awaits nothing here.
"""

from __future__ import annotations

from typing import Literal

import trio

from signald.app.context import Context
from signald.app.replica import CallAnswered, CallEnded, CallIced, CallOffered
from signald.errors import SignalError
from signald.protocol import (
    CallAnswer,
    CallEnd,
    CallIce,
    CallOffer,
    CallOfferResult,
)
from signald.state.calls import State


async def call_offer(ctx: Context, msg: CallOffer) -> CallOfferResult:
    hub, session, data = ctx.hub, ctx.session, msg.data
    if data.target_id == session.user_id:
        raise SignalError("INVALID_PAYLOAD", "`$.data.target_id` is yourself")
    shares_room = hub.rooms.shares_room(session.user_id, data.target_id)
    if hub.replica is not None and not (shares_room and hub.devices_of(data.target_id)):
        # a refusal on what this node knows: the callee's join or device, acked on another node a
        # moment ago, may still be on its way here; look again once the broker showed it
        await hub.replica.caught_up()
        shares_room = hub.rooms.shares_room(session.user_id, data.target_id)
    verdict: Literal["busy"] | None = None
    if hub.replica is not None and shares_room and hub.calls.state_of(data.call_id or "") is State.NONE:
        busy = await hub.replica.calls.offer(data.call_id, session.session_id, data.target_id)
        if busy and not hub.config.calls.allow_concurrent_calls and not hub.calls.is_busy(data.target_id):
            verdict = "busy"  # answered on another node a moment ago: this node has not heard it yet
    callee_devices = hub.devices_of(data.target_id)  # on every node, with several
    outcome = hub.calls.offer(
        caller=session.user_id, caller_device=session.session_id, callee=data.target_id, shares_room=shares_room,
        callee_devices=callee_devices, call_type=data.call_type, sdp=data.sdp, call_id=data.call_id,
        now=trio.current_time(), ring_timeout_s=hub.config.limits.ring_timeout_s, verdict=verdict,
    )
    hub.apply_call_outcome(outcome, ctx.after_reply)
    call_id = outcome.call_id
    assert call_id is not None
    if hub.replica is not None:
        ended = [entry.reason for entry in outcome.log if entry.kind == "ended" and entry.call_id == call_id]
        hub.share(CallOffered(session.user_id, session.session_id, data.target_id, callee_devices, data.call_type,
                              data.sdp, call_id, "busy" if ended == ["busy"] else "glare" if ended else "ring"))
    return CallOfferResult(call_id=call_id)


def _party(ctx: Context, target_id: str) -> dict[str, str]:
    """Who acts in a call transition: this user and device, towards ``target_id``."""
    return {"user": ctx.session.user_id, "device": ctx.session.session_id, "peer": target_id}


async def call_answer(ctx: Context, msg: CallAnswer) -> None:
    data, calls, replica = msg.data, ctx.hub.calls, ctx.hub.replica
    if replica is not None:  # several nodes: another device of the callee may be answering on another one
        call_id = calls.check_answer(**_party(ctx, data.target_id), call_id=data.call_id)
        winner = await replica.calls.answer(call_id, ctx.session.session_id)
        if winner == "timeout":
            raise SignalError("NOT_FOUND", f"no call {call_id!r}: it timed out")
        if winner is not None:
            raise SignalError("CONFLICT", "answer: call is active (answered on another device)")
    outcome = calls.answer(**_party(ctx, data.target_id), sdp=data.sdp, call_id=data.call_id, now=trio.current_time())
    ctx.hub.apply_call_outcome(outcome, ctx.after_reply)
    ctx.hub.share(CallAnswered(**_party(ctx, data.target_id), sdp=data.sdp, call_id=outcome.call_id or ""))


async def call_ice(ctx: Context, msg: CallIce) -> None:
    data, calls = msg.data, ctx.hub.calls
    outcome = calls.ice(**_party(ctx, data.target_id), candidate=data.candidate, call_id=data.call_id)
    ctx.hub.apply_call_outcome(outcome, ctx.after_reply)
    ctx.hub.share(CallIced(**_party(ctx, data.target_id), candidate=data.candidate, call_id=outcome.call_id or ""))


async def call_end(ctx: Context, msg: CallEnd) -> None:
    data, calls = msg.data, ctx.hub.calls
    outcome = calls.end(**_party(ctx, data.target_id), reason=data.reason, call_id=data.call_id,
                        now=trio.current_time())
    ctx.hub.apply_call_outcome(outcome, ctx.after_reply)
    ctx.hub.share(CallEnded(**_party(ctx, data.target_id), reason=data.reason, call_id=outcome.call_id or ""))
