"""Session-level messages: ``presence.ping``."""

from __future__ import annotations

from signald.hub import Context
from signald.protocol import PongData, PresencePing, PresencePongEvent
from signald.router import Reply, Router
from signald.timefmt import iso_utc


async def presence_ping(ctx: Context, msg: PresencePing) -> Reply:
    """Answer with ``presence.pong`` carrying the op id and the server time."""
    return Reply(PresencePongEvent(data=PongData(op_id=msg.id, timestamp=iso_utc(ctx.hub.wall_clock()))))


def register(router: Router) -> None:
    router.add(PresencePing, presence_ping)
