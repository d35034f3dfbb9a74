"""Chat: every ``chat.*`` type except typing, on top of the durable history store (``ChatStore``).

Events are fanned out from the store's ``on_commit`` callbacks, which run in commit order in
the Trio thread: every member of a room sees its messages in ``seq`` order, and an event never
announces something that is not on disk. The requesting connection gets the ack with the
result and not the event; the sender's other devices get the event.

Edits, deletions and redactions are checked by role and authorship, not by room membership:
an author may edit a message after leaving its room. Events still go to the room's members.
"""

from __future__ import annotations

import time

from signald.app.context import Context
from signald.app.history import MAY_BE_DONE, HistoryService
from signald.errors import SignalError
from signald.handlers.rooms import require_member
from signald.history.contract import ChatStore, Deleted
from signald.protocol import (
    ChangesPage,
    ChatChanges,
    ChatDelete,
    ChatDeletedEvent,
    ChatEdit,
    ChatEditedEvent,
    ChatHistory,
    ChatMessage,
    ChatMessageEvent,
    ChatReaction,
    ChatReactionUpdateEvent,
    ChatRead,
    ChatReadUpdateEvent,
    ChatRedact,
    ChatRedactedEvent,
    ChatSend,
    DeletedData,
    DeleteResult,
    HistoryPage,
    Outbound,
    ReactionResult,
    ReactionUpdateData,
    ReadUpdateData,
    RedactedData,
    RedactResult,
)
from signald.router import LATER, Later


def _service(ctx: Context) -> HistoryService:
    if ctx.hub.history is None:  # pragma: no cover - the server always opens a store
        raise SignalError("INTERNAL", "no history store")
    return ctx.hub.history


def _history(ctx: Context) -> ChatStore:
    return _service(ctx).store


def _check_body(ctx: Context, body: str, field: str) -> None:
    limit = ctx.hub.config.limits.max_body_chars
    if len(body) > limit:
        raise SignalError("TOO_LARGE", f"`$.data.{field}` is longer than max_body_chars ({limit})")


def _announce(ctx: Context, room: str, event: Outbound) -> None:
    """Deliver a committed change of ``room`` to its other connections (and to joins under way)."""
    _service(ctx).announce(room, event, ctx.session.session_id)


async def chat_send(ctx: Context, msg: ChatSend) -> Later:
    """Store and announce a message; the ack follows the commit (:meth:`Context.defer`).

    On an idle store the message is committed right away and acked before this returns. Otherwise
    the connection's reader does not wait for the commit: a client that pipelines sends has them
    stored together (one transaction per batch). Its replies still leave in request order: the
    replies to what it sent after this wait for this ack (:mod:`signald.state.replies`).
    """
    data = msg.data
    require_member(ctx, data.scope)
    _check_body(ctx, data.body, "body")
    if not data.body.strip() and not data.attachments:
        raise SignalError("INVALID_PAYLOAD", "`$.data.body` is empty and there are no attachments")
    hub, service, conn = ctx.hub, _service(ctx), ctx.session.session_id

    def announce(message: ChatMessage) -> None:
        service.announce(message.room, ChatMessageEvent(data=message), conn)

    def then(stored: tuple[ChatMessage, bool] | None, error: BaseException | None) -> None:
        hub.metrics.history_seconds.observe(time.perf_counter() - started)
        if error is not None:
            reply.failed(error)
        elif hub.replica is not None:  # several nodes: acked once the other nodes' copy is on its way
            hub.replica.after_sent(lambda: reply.done(stored[0] if stored is not None else None))
        else:
            reply.done(stored[0] if stored is not None else None)

    store = service.store
    started = time.perf_counter()
    reply = ctx.defer(msg)  # ``then`` finishes it: later, or before send_nowait returns
    try:
        store.send_nowait(
            room=data.scope, user_id=ctx.session.user_id, body=data.body, attachments=data.attachments,
            parent_id=data.parent_id, client_msg_id=data.client_msg_id, on_commit=announce, then=then,
        )
    except Exception as exc:  # e.g. the store is closed: the reply still takes its place
        reply.failed(exc)
    if not reply.sent:  # not committed inline: INTERNAL if the store does not answer in time
        service.watch(started, reply)
    return LATER


async def chat_edit(ctx: Context, msg: ChatEdit) -> ChatMessage:
    _check_body(ctx, msg.data.new_body, "new_body")

    def announce(message: ChatMessage) -> None:
        _announce(ctx, message.room, ChatEditedEvent(data=message))

    edited = await _service(ctx).answered(_history(ctx).edit(
        message_id=msg.data.message_id, user_id=ctx.session.user_id, new_body=msg.data.new_body,
        on_commit=announce,
    ), MAY_BE_DONE, ctx.session)
    await ctx.hub.published()
    return edited


async def chat_delete(ctx: Context, msg: ChatDelete) -> DeleteResult:
    data = msg.data

    def announce(deleted: Deleted) -> None:
        event = ChatDeletedEvent(data=DeletedData(
            message_id=data.message_id, room=deleted.room, deleted_at=deleted.deleted_at, mode=data.mode,
            rev=deleted.rev))
        _announce(ctx, deleted.room, event)

    deleted = await _service(ctx).answered(_history(ctx).delete(
        message_id=data.message_id, user_id=ctx.session.user_id, mode=data.mode,
        moderator=ctx.session.is_moderator, on_commit=announce,
    ), MAY_BE_DONE, ctx.session)
    await ctx.hub.published()
    return DeleteResult(message_id=data.message_id, deleted_at=deleted.deleted_at, rev=deleted.rev)


async def chat_redact(ctx: Context, msg: ChatRedact) -> RedactResult:
    if not ctx.session.is_moderator:
        raise SignalError("FORBIDDEN", "chat.redact needs the mod or admin role")

    def announce(message: ChatMessage) -> None:
        event = ChatRedactedEvent(data=RedactedData(
            message_id=message.id, room=message.room, new_body=message.body, rev=message.rev))
        _announce(ctx, message.room, event)

    message = await _service(ctx).answered(_history(ctx).redact(
        message_id=msg.data.message_id, mask=msg.data.mask, on_commit=announce), MAY_BE_DONE, ctx.session)
    await ctx.hub.published()
    return RedactResult(message_id=message.id, new_body=message.body, rev=message.rev)


async def chat_read(ctx: Context, msg: ChatRead) -> None:
    data = msg.data
    require_member(ctx, data.room)

    def announce(moved: bool) -> None:
        event = ChatReadUpdateEvent(data=ReadUpdateData(
            message_id=data.message_id, user_id=ctx.session.user_id, room=data.room))
        _announce(ctx, data.room, event)

    await _service(ctx).answered(_history(ctx).mark_read(
        user_id=ctx.session.user_id, room=data.room, message_id=data.message_id, on_commit=announce,
    ), MAY_BE_DONE, ctx.session)


async def chat_reaction(ctx: Context, msg: ChatReaction) -> ReactionResult | None:
    data = msg.data
    require_member(ctx, data.scope)

    def announce(rev: int) -> None:
        event = ChatReactionUpdateEvent(data=ReactionUpdateData(
            message_id=data.message_id, user_id=ctx.session.user_id, reaction=data.reaction,
            action=data.action, room=data.scope, rev=rev))
        _announce(ctx, data.scope, event)

    rev = await _service(ctx).answered(_history(ctx).react(
        message_id=data.message_id, user_id=ctx.session.user_id, reaction=data.reaction,
        action=data.action, room=data.scope, on_commit=announce,
    ), MAY_BE_DONE, ctx.session)
    await ctx.hub.published()
    return None if rev is None else ReactionResult(rev=rev)


async def chat_changes(ctx: Context, msg: ChatChanges) -> ChangesPage:
    """Page on through an exact resume: every change of the room after ``after_rev``."""
    data = msg.data
    require_member(ctx, data.room)
    limit = _service(ctx).page_limit(data.limit)
    changes = _history(ctx).changes(room=data.room, after_rev=data.after_rev, limit=limit)
    return await _service(ctx).answered(changes, by=ctx.session)


async def chat_history(ctx: Context, msg: ChatHistory) -> HistoryPage:
    """A page of the room's history; ``GET /api/v1/history`` reads it the same way (:meth:`HistoryService.page`)."""
    data = msg.data
    require_member(ctx, data.room)
    return await _service(ctx).page(data.room, data.before, data.after, data.limit, by=ctx.session)
