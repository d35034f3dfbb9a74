"""What a handler gets besides its message: the hub, the requesting session, and its reply's place.

A handler returns its result (the ``ack``'s data) or raises. One whose work goes on after it
returns (``chat.send`` waits for its commit) calls :meth:`Context.defer`, returns
:data:`signald.router.LATER`, and later finishes the :class:`DeferredReply`: the reply then takes
the place in the connection's reply order that the request had (:mod:`signald.state.replies`).
Handlers never talk to the router for this.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import attrs

from signald.app.facade import Signald
from signald.app.hub import Hub
from signald.app.session import Session
from signald.protocol import Outbound, type_of
from signald.state.replies import HeldReply, failed_reply, succeeded_reply
from signald.state.send import Send


@attrs.frozen
class Context:
    """The daemon and the requesting session, for one request.

    Custom ``app.*`` handlers use ``server`` (the embedding API), ``session`` and ``is_member``;
    ``hub`` is internal and may change between releases.
    ``after_reply`` collects events that must reach clients only after the reply
    (``room.waiting`` after the ``room.join`` ack).
    """

    hub: Hub  # internal, may change between releases: custom handlers use ``server`` and ``session``
    session: Session  # read its user_id, session_id, roles, remote; never change it
    after_reply: list[Send] = attrs.field(factory=list)

    @property
    def server(self) -> Signald:
        """The embedding API (:class:`signald.app.facade.Signald`): publish, kick, look up members..."""
        return Signald(self.hub)

    def is_member(self, room: str) -> bool:
        """Whether the requesting connection is in ``room``."""
        return self.hub.rooms.is_member(self.session.session_id, room)

    def defer(self, request: Any) -> DeferredReply:
        """Hold ``request``'s place in the reply order; its reply is sent when the result is known."""
        kind = getattr(request, "type", None) or type_of(type(request))  # custom app.* messages carry it
        return DeferredReply(self.hub, self.session, self.session.replies.hold(), kind, request.id)


@attrs.define(eq=False)
class DeferredReply:
    """A reply that is sent later, exactly once, in the place its request held."""

    _hub: Hub
    _session: Session
    _place: HeldReply
    _kind: str
    _op_id: Any
    sent: bool = attrs.field(default=False, init=False)  # answered: a later outcome is dropped (one reply)

    def done(self, result: Any) -> None:
        """The work succeeded with ``result``: ``ack`` it (or nothing, for a request without id)."""
        self._send(succeeded_reply(self._op_id, result))

    def failed(self, exc: BaseException) -> None:
        """The work failed: ``error`` with the code of ``exc`` (``INTERNAL`` if not a SignalError)."""
        session = self._session
        self._send(failed_reply(self._kind, self._op_id, exc, user_id=session.user_id, remote=session.remote,
                                 session_id=session.session_id, may_audit=session.may_audit))

    def _send(self, reply: Outbound | None) -> None:
        if self.sent:  # e.g. the store answered after the request's deadline had answered it
            return
        self.sent = True
        session = self._session
        session.release(self._place, partial(self._hub.reply_now, session, reply) if reply is not None else None)
