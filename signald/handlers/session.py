"""Session-level messages: ``presence.ping`` and ``auth.refresh``."""

from __future__ import annotations

from signald.app.hub import Context
from signald.auth import Identity, refresh_identity
from signald.protocol import AuthRefresh, ExpiresResult, PongData, PresencePing, PresencePongEvent
from signald.router import Reply, Router
from signald.timefmt import iso_utc


async def presence_ping(ctx: Context, msg: PresencePing) -> Reply:
    """Answer with ``presence.pong`` carrying the op id and the server time."""
    return Reply(PresencePongEvent(data=PongData(op_id=msg.id, timestamp=iso_utc(ctx.hub.wall_clock()))))


async def auth_refresh(ctx: Context, msg: AuthRefresh) -> ExpiresResult:
    """Swap the session's token for a fresh one of the same user; extends its expiry.

    The new token's roles and rooms replace the old ones. A token of another user is
    ``FORBIDDEN``; an invalid one ``UNAUTHORIZED`` (the session keeps its old token).
    """
    session = ctx.session
    current = Identity(session.user_id, session.roles, session.rooms_allowed, session.expires_at)
    fresh = refresh_identity(ctx.hub.authenticator, current, msg.data.refresh_token)
    session.roles, session.rooms_allowed, session.expires_at = fresh.roles, fresh.rooms, fresh.expires_at
    if session.expiry_changed is not None:
        session.expiry_changed.set()
    return ExpiresResult(expires_at=iso_utc(fresh.expires_at) if fresh.expires_at is not None else None)


def register(router: Router) -> None:
    router.add(PresencePing, presence_ping)
    router.add(AuthRefresh, auth_refresh)
