"""One connected device: who it is, what it may do, and its outbox.

A ``Session`` is created after a successful handshake and lives as long as the WebSocket.
Its ``session_id`` is also the ``device_id`` other clients see in ``device.*`` events and in
``members[].devices``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final

import attrs
import trio

from signald.delivery.frames import Frame
from signald.delivery.outbox import CLOSE_SLOW_CONSUMER, Cork, Outbox
from signald.state.ratelimit import FloodGuard

CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_SESSION_EXPIRED: Final = 4001
CLOSE_SESSION_REVOKED: Final = 4003


def new_session_id() -> str:
    return "s-" + secrets.token_hex(8)


@attrs.define(eq=False)
class HeldReply:
    """A place in a session's reply order, for a reply that comes later (``chat.send``'s ack)."""

    ready: bool = False
    run: Callable[[], None] | None = None  # what to do in its turn: send the reply, publish events


@attrs.define(eq=False)
class Session:
    """State of one connection; mutated only from the Trio thread."""

    session_id: str
    user_id: str
    roles: frozenset[str]
    rooms_allowed: tuple[str, ...] | None
    expires_at: float | None
    remote: str
    binary: bool
    connected_at: str
    send_queue: int
    flood: FloodGuard
    cork: Cork | None = None
    outbox: Outbox = attrs.field(init=False)
    close_code: int | None = None
    close_reason: str = ""
    detached: bool = False
    expiry_changed: trio.Event | None = None  # made by the expiry task (only sessions with an expiry have one)
    on_close: Callable[[], None] | None = None
    cancel_scope: trio.CancelScope | None = None
    # Replies go out in request order: once a reply is held (its work is still going on), the
    # replies after it wait here for their turn.
    held: list[HeldReply] | None = None
    _close_when_replied: bool = False

    def __attrs_post_init__(self) -> None:
        self.outbox = Outbox(self.send_queue, binary=self.binary, on_overflow=self._overflow, cork=self.cork)

    @property
    def device_id(self) -> str:
        return self.session_id

    @property
    def is_moderator(self) -> bool:
        return bool(self.roles & {"mod", "admin"})

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def send(self, frame: Frame) -> bool:
        """Queue a frame for this connection alone (replies go this way)."""
        return self.outbox.push(frame)

    def hold_reply(self) -> HeldReply:
        """Reserve the next place in the reply order; :meth:`release` fills it."""
        place = HeldReply()
        if self.held is None:
            self.held = []
        self.held.append(place)
        return place

    def in_turn(self, run: Callable[[], None]) -> None:
        """Run ``run`` (which sends a reply) now, or after the held replies before it."""
        if self.held is None:
            run()
        else:
            self.held.append(HeldReply(True, run))

    def release(self, place: HeldReply, run: Callable[[], None] | None) -> None:
        """The held reply is ready: run it and whatever waited behind it, in order."""
        place.ready, place.run = True, run
        held = self.held
        while held and held[0].ready:
            turn = held.pop(0).run
            if turn is not None:
                turn()
        if not held:
            self.held = None
            if self._close_when_replied:
                self.outbox.close(drop=False)

    def close(self, code: int, reason: str, *, flush: bool = True, grace_s: float = 5.0) -> None:
        """Ask the connection to close with ``code``; never blocks. The first reason wins.

        With ``flush`` the frames already queued (e.g. ``session.expired``) are written first;
        without it they are dropped, and only a frame already being written is finished (so the
        close frame that follows is not garbled). Either way the connection is torn down after
        at most ``grace_s`` seconds, cleanly or not.
        """
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            if self.on_close is not None:
                self.on_close()
        if flush and self.held:
            self._close_when_replied = True  # the held replies go out first (within grace_s)
        else:
            self.held = None
            self.outbox.close(drop=not flush)
        if self.cancel_scope is not None:
            self.cancel_scope.deadline = min(self.cancel_scope.deadline, trio.current_time() + grace_s)

    def _overflow(self) -> None:
        self.close(CLOSE_SLOW_CONSUMER, "send queue full", flush=False)
