"""Session-level messages: ``presence.ping`` and ``auth.refresh``."""

from __future__ import annotations

from signald.app.context import Context
from signald.app.facade import leave_rooms_the_token_forbids
from signald.auth import refresh_identity
from signald.protocol import AuthRefresh, ExpiresResult, PongData, PresencePing, PresencePongEvent
from signald.router import Reply
from signald.timefmt import iso_utc


async def presence_ping(ctx: Context, msg: PresencePing) -> Reply:
    """Answer with ``presence.pong`` carrying the op id and the server time."""
    return Reply(PresencePongEvent(data=PongData(op_id=msg.id, timestamp=iso_utc(ctx.hub.wall_clock()))))


async def auth_refresh(ctx: Context, msg: AuthRefresh) -> ExpiresResult:
    """Swap the session's token for a fresh one of the same user; extends its expiry.

    The new token's roles, rooms and expiry replace the old ones at once, whatever the handshake
    gave: a refresh may set an expiry on a session that had none, move it, or remove it; every later
    request is checked against the new claims, and the session leaves each room the new ``rooms``
    no longer allow (``room.kicked`` with reason ``token`` after the ack, ``member.left`` to the
    others). A token of another user is ``FORBIDDEN``; an invalid one ``UNAUTHORIZED`` (the
    session keeps its old token).
    """
    session = ctx.session
    fresh = refresh_identity(ctx.hub.authenticator, session.identity, msg.data.refresh_token)
    session.identity = fresh
    ctx.after_reply.extend(leave_rooms_the_token_forbids(ctx.hub, session))
    ctx.hub.expiries.watch(session)
    return ExpiresResult(expires_at=iso_utc(fresh.expires_at) if fresh.expires_at is not None else None)
