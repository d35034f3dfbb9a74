"""The server API's calls (docs/server-api.md), each on the embedding API that does the same thing.

One implementation, two doors: ``publish`` is :meth:`Signald.publish_to_room` (with ``store``:
:meth:`Signald.publish_and_store`), ``notify``
:meth:`Signald.publish_to_user`, ``disconnect`` :meth:`Signald.revoke_user`, ``kick``
:func:`~signald.app.facade.kick_when_heard` (what ``room.kick`` runs), ``presence`` the members
list of a ``room.join`` ack, ``history`` :meth:`HistoryService.page` (what ``chat.history`` runs),
``stats`` :meth:`Signald.stats` (what ``system.stats`` answers). This module only checks what
HTTP adds and turns results into the wire structs; it knows nothing of HTTP itself.

Error handling: every expected failure raises :class:`~signald.errors.SignalError` with the
protocol's code; the HTTP layer picks the status.
"""

from __future__ import annotations

import logging

import attrs

from signald.app.facade import SERVER_KICKER, Signald, kick_when_heard
from signald.errors import SignalError
from signald.protocol import ChatHistoryData, HistoryPage, RoomKickData, StatsResult
from signald.protocol.serverapi import (
    Delivered,
    DisconnectBody,
    NotifyBody,
    PresenceMember,
    PresenceQuery,
    PresenceResult,
    PublishBody,
    Sessions,
    check_app_type,
)

audit = logging.getLogger("signald.audit")


@attrs.frozen
class ServerApi:
    """The calls of the server API on one running daemon; every method runs on the Trio thread."""

    server: Signald

    async def publish(self, body: PublishBody) -> Delivered:
        check_app_type(body.type)
        if body.store:
            return Delivered(await self.server.publish_and_store(body.room, body.type, body.data))
        return Delivered(self.server.publish_to_room(body.room, body.type, body.data))

    def notify(self, body: NotifyBody) -> Delivered:
        check_app_type(body.type)
        return Delivered(self.server.publish_to_user(body.user_id, body.type, body.data))

    def disconnect(self, body: DisconnectBody) -> Sessions:
        return Sessions(self.server.revoke_user(body.user_id, body.reason))

    async def kick(self, body: RoomKickData) -> Sessions:
        kicked = await kick_when_heard(self.server.hub, body.room, body.user_id, by=SERVER_KICKER, reason=body.reason)
        if not kicked:  # as room.kick answers a moderator
            raise SignalError("NOT_IN_ROOM", f"{body.user_id!r} is not in {body.room!r}")
        return Sessions(len(kicked))

    def presence(self, query: PresenceQuery) -> PresenceResult:
        return PresenceResult([
            PresenceMember(m.user_id, m.status, m.devices, m.last_seen) for m in self.server.hub.member_list(query.room)
        ])

    async def history(self, query: ChatHistoryData) -> HistoryPage:
        service = self.server.hub.history
        if service is None:  # pragma: no cover - a running server always has its store
            raise SignalError("INTERNAL", "no history store")
        return await service.page(query.room, query.before, query.after, query.limit, where="limit")

    def stats(self) -> StatsResult:
        return self.server.stats()
