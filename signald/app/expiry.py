"""Session expiry: a connection whose token expires is closed (4001) unless ``auth.refresh`` moves it.

The server runs :func:`run_expiry` beside a connection's reader and writer for sessions that have
an expiry.
"""

from __future__ import annotations

import math

import trio

from signald.app.hub import Hub
from signald.app.session import Session


async def run_expiry(hub: Hub, session: Session) -> None:
    """Close the session when its token expires; ``auth.refresh`` moves the expiry either way."""
    while session.expires_at is not None:
        delay = session.expires_at - hub.wall_clock()
        if delay <= 0:
            hub.expire_session(session)
            return
        changed = session.expiry_changed = trio.Event()
        with trio.move_on_after(min(delay, 3600.0) if math.isfinite(delay) else 3600.0):
            await changed.wait()
