"""Call signalling: ``call.offer``, ``call.answer``, ``call.ice``, ``call.end``.

The call state machine lives in :mod:`signald.state.calls`, with the target checks in the contract's
order (no shared room → ``FORBIDDEN`` whether connected or not, then no connected device →
``TARGET_OFFLINE``: nothing tells a stranger who is online); these handlers run the transition, and
have the hub deliver its events after the ack (:meth:`Hub.apply_call_outcome`: presence shows
``busy`` while a user is in an answered call; the call log is :mod:`signald.app.calls`).
"""

from __future__ import annotations

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


async def call_offer(ctx: Context, msg: CallOffer) -> CallOfferResult:
    hub, session, data = ctx.hub, ctx.session, msg.data
    if data.target_id == session.user_id:
        raise SignalError("INVALID_PAYLOAD", "`$.data.target_id` is yourself")
    callee_devices = hub.devices_of(data.target_id)  # on every node, with several
    outcome = hub.calls.offer(
        caller=session.user_id, caller_device=session.session_id, callee=data.target_id,
        shares_room=hub.rooms.shares_room(session.user_id, data.target_id),
        callee_devices=callee_devices, call_type=data.call_type, sdp=data.sdp, call_id=data.call_id,
        now=trio.current_time(), ring_timeout_s=hub.config.limits.ring_timeout_s,
    )
    hub.apply_call_outcome(outcome, ctx.after_reply)
    assert outcome.call_id is not None
    hub.share(CallOffered(session.user_id, session.session_id, data.target_id, callee_devices, data.call_type,
                          data.sdp, outcome.call_id))
    return CallOfferResult(call_id=outcome.call_id)


def _party(ctx: Context, target_id: str) -> dict[str, str]:
    """Who acts in a call transition: this user and device, towards ``target_id``."""
    return {"user": ctx.session.user_id, "device": ctx.session.session_id, "peer": target_id}


async def call_answer(ctx: Context, msg: CallAnswer) -> None:
    data, calls = msg.data, ctx.hub.calls
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
