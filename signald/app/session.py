"""One connected device: who it is, what it may do, and its outbox.

A ``Session`` is created after a successful handshake and lives as long as the WebSocket.
Its ``session_id`` is also the ``device_id`` other clients see in ``device.*`` events and in
``members[].devices``.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable
from functools import partial
from typing import Final, Protocol

import attrs
import trio

from signald.app.beside import Beside
from signald.auth import Identity
from signald.delivery.cork import Cork
from signald.delivery.frames import Frame
from signald.delivery.outbox import CLOSE_SLOW_CONSUMER, Outbox
from signald.state.ratelimit import FloodGuard, TokenBucket
from signald.state.replies import HeldReply, ReplyOrder

CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_SESSION_EXPIRED: Final = 4001
CLOSE_SESSION_REVOKED: Final = 4003
AUDIT_LINES_PER_S: Final = 0.5
AUDIT_BURST: Final = 10


def new_session_id() -> str:
    return "s-" + secrets.token_hex(8)


class Heard(Protocol):
    """A connection's reader (:class:`signald.transport.websocket.ServerWebSocket`)."""

    heard_at: float  # trio.current_time() when bytes last arrived


@attrs.define(eq=False)
class Session:
    """State of one connection; mutated only from the Trio thread."""

    session_id: str
    identity: Identity  # roles, allowed rooms, token expiry: replaced as a whole by auth.refresh
    remote: str
    binary: bool
    connected_at: str
    send_queue: int
    flood: FloodGuard
    cork: Cork | None = None
    outbox: Outbox = attrs.field(init=False)
    close_code: int | None = None  # set when the server closes (or decided to)
    close_reason: str = ""
    peer_close_code: int | None = None  # the client's close frame, when it closed first (for the logs)
    detached: bool = False
    on_close: Callable[[Session], None] | None = None  # given the session: the hub keeps no closure of it
    cancel_scope: trio.CancelScope | None = None
    beside: Beside | None = None  # an embedder's handler running beside the reader (signald.app.beside)
    # When a request of it last waited for the history store in vain, and what reads its bytes (by weak
    # reference: it refers to the session); the frames read before then that need the store fail at once.
    store_late_at: float = float("-inf")
    reader: weakref.ref[Heard] | None = None
    # Replies go out in request order (see signald.state.replies).
    replies: ReplyOrder = attrs.field(init=False, factory=ReplyOrder)
    # Audit lines about this connection's refused requests: 10 at once, then one every 2 s.
    audit_lines: TokenBucket = attrs.field(init=False, factory=lambda: TokenBucket(AUDIT_LINES_PER_S, AUDIT_BURST))
    # Read on every message, so a plain attribute; auth.refresh never changes the user.
    user_id: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.user_id = self.identity.user_id
        # The outbox reaches back to its session only weakly (and on_close is given the session):
        # nothing the session holds refers to it, so it is freed when its connection's task ends,
        # without waiting for a garbage collection that would have to find the cycle first.
        self.outbox = Outbox(self.send_queue, binary=self.binary, on_overflow=partial(_overflowed, weakref.ref(self)),
                             cork=self.cork)

    def heard_at(self) -> float:
        """``trio.current_time()`` when its reader last read bytes (infinity without a reader)."""
        reader = self.reader() if self.reader is not None else None
        return reader.heard_at if reader is not None else float("inf")

    @property
    def device_id(self) -> str:
        return self.session_id

    @property
    def roles(self) -> frozenset[str]:
        return self.identity.roles

    @property
    def expires_at(self) -> float | None:
        return self.identity.expires_at

    @property
    def is_moderator(self) -> bool:
        return self.identity.is_moderator()

    @property
    def is_admin(self) -> bool:
        return self.identity.is_admin()

    def may_join(self, room: str) -> bool:
        """Whether the session's token allows joining ``room`` (its room globs)."""
        return self.identity.may_join(room)

    def may_audit(self) -> bool:
        """Whether one more audit line about this connection's refused requests may be logged now."""
        return self.audit_lines.allow(trio.current_time())

    def send(self, frame: Frame) -> bool:
        """Queue a frame for this connection alone (replies go this way)."""
        return self.outbox.push(frame)

    def release(self, place: HeldReply, run: Callable[[], None] | None) -> None:
        """The held reply is ready: run it and whatever waited behind it, in order.

        A close that waited for the held replies (:meth:`close` with ``flush``) happens once the
        last of them has left.
        """
        if self.replies.release(place, run):
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
                self.on_close(self)
        if self.replies.close(flush=flush):  # else the held replies go out first (within grace_s)
            self.outbox.close(drop=not flush)
        if self.cancel_scope is not None:
            self.cancel_scope.deadline = min(self.cancel_scope.deadline, trio.current_time() + grace_s)


def _overflowed(session: weakref.ref[Session]) -> None:
    """The outbox of ``session`` overflowed: close it (1013), unless it is gone already."""
    live = session()
    if live is not None:
        live.close(CLOSE_SLOW_CONSUMER, "send queue full", flush=False)
