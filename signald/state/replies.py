"""Replies: the order they leave a connection in, and the reply each handler outcome gets.

**Ordering.** A client may pipeline requests, and their replies leave in request order even when
one of them is answered later (``chat.send`` is acked from the history store's commit callback
while the connection goes on reading). :class:`ReplyOrder` keeps that order without I/O: a
deferred reply *holds* a place; replies after it wait *in turn* behind it; *releasing* the place
runs it and everything that waited behind it, in order. A close asked while places are held
either waits for them (flushing) or drops them.

**Building.** :func:`failed_reply` and :func:`succeeded_reply` turn a handler's outcome into the
one reply of the request: a :class:`~signald.errors.SignalError` answers its code (refusals are
audited), any other exception answers ``INTERNAL`` and is logged with its traceback, a
:class:`Reply` is sent as-is, and a success without ``op_id`` gets no ack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import attrs

from signald.errors import SignalError
from signald.protocol import Ack, AckData, Error, ErrorData, OpId, Outbound

log = logging.getLogger("signald.router")  # the logger name operators already filter on
audit = logging.getLogger("signald.audit")
AUDITED_CODES: Final = frozenset({"FORBIDDEN", "UNAUTHORIZED"})

Turn = Callable[[], None]


class HeldReply:
    """A place in a connection's reply order, for a reply that comes later.

    ``run`` is what to do in its turn (send the reply, publish the events that follow it); it
    is filled when the place is released. Subclasses may carry what they need to build the reply.
    """

    __slots__ = ("ready", "run")

    def __init__(self, ready: bool = False, run: Turn | None = None) -> None:
        self.ready = ready
        self.run = run


class ReplyOrder:
    """The reply order of one connection: held places and the turns waiting behind them.

    ``waiting`` is None while nothing is held (the common case: replies go out at once); callers
    on the hot path check it before anything else.
    """

    __slots__ = ("_close_when_replied", "waiting")

    def __init__(self) -> None:
        self.waiting: list[HeldReply] | None = None
        self._close_when_replied = False

    def hold(self, place: HeldReply | None = None) -> HeldReply:
        """Reserve the next place in the order (``place``, or a new one); :meth:`release` fills it."""
        if place is None:
            place = HeldReply()
        if self.waiting is None:
            self.waiting = []
        self.waiting.append(place)
        return place

    def in_turn(self, run: Turn) -> None:
        """Run ``run`` now if nothing is held, else once the held places before it are released."""
        if self.waiting is None:
            run()
        else:
            self.waiting.append(HeldReply(True, run))

    def release(self, place: HeldReply, run: Turn | None) -> bool:
        """``place`` is ready: run it and whatever waited behind it, in order.

        Returns True when this emptied the order and a flushing close was waiting for it: the
        caller closes now. A place released after the order was dropped (the close did not flush)
        runs nothing.
        """
        place.ready, place.run = True, run
        waiting = self.waiting
        while waiting and waiting[0].ready:
            turn = waiting.pop(0).run
            if turn is not None:
                turn()
        if not waiting:
            self.waiting = None
            return self._close_when_replied
        return False

    def close(self, *, flush: bool) -> bool:
        """The connection is asked to close: True to close now, False to wait for the held replies.

        With ``flush`` the held replies go out first (the close then comes from :meth:`release`);
        without it they are dropped.
        """
        if flush and self.waiting:
            self._close_when_replied = True
            return False
        self.waiting = None
        return True

    @property
    def closing_when_replied(self) -> bool:
        return self._close_when_replied


@attrs.frozen
class Reply:
    """A handler result that is sent as-is instead of being wrapped in ``ack``."""

    message: Outbound


def error_reply(op_id: OpId, code: str, message: str) -> Error:
    """The ``error`` reply for ``op_id``."""
    return Error(data=ErrorData(op_id=op_id, code=code, message=message))


def failed_reply(kind: str, op_id: OpId, exc: BaseException, *, user_id: str, remote: str, session_id: str,
                 may_audit: Callable[[], bool] | None = None) -> Error:
    """The reply of a request whose handler raised ``exc``.

    A :class:`SignalError` answers its own code (``FORBIDDEN``/``UNAUTHORIZED`` are audited, one
    line each, unless ``may_audit`` says this connection has logged enough for now: a client's
    faults never flood the log); anything else is a bug: logged with its traceback, answered ``INTERNAL``.
    """
    if isinstance(exc, SignalError):
        if exc.code in AUDITED_CODES and (may_audit is None or may_audit()):
            audit.warning("refused code=%s type=%s user=%s peer=%s reason=%s", exc.code, kind,
                          user_id, remote, exc.message)
        return error_reply(op_id, exc.code, exc.message)
    log.error("handler for %s failed (session %s)", kind, session_id, exc_info=exc)
    return error_reply(op_id, "INTERNAL", "internal error; the request was not completed")


def succeeded_reply(op_id: OpId, result: Any) -> Outbound | None:
    """The reply of a request whose handler returned ``result``; None: no reply (no ``op_id``)."""
    if isinstance(result, Reply):
        return result.message
    if op_id is None:
        return None
    return Ack(data=AckData(op_id=op_id, data=result))
