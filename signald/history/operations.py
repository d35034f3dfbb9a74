"""The store operations both stores run the same way: the rules, the SQL and the hand-off shape.

A store subclasses :class:`StoreOperations` and provides four primitives; everything else of
:class:`~signald.history.contract.ChatStore` that does not differ per database is written once
here (the contract's docstrings say what each call promises):

``_alloc``
    The :class:`~signald.history.writes.Allocator` its writes number changes with.
``_write(fn, on_commit)``
    Runs ``fn`` as one write on the writer thread, in order with every other operation, and
    returns its result once committed.
``_read(fn)``
    Runs ``fn`` as a read (SQLite: on the writer thread, in order; PostgreSQL: on a reader
    connection in one snapshot).
``_submit(op)``
    Hands a ready :class:`~signald.history.work.Op` over without waiting; raises
    :class:`StorageError` at once if the store is not open (SQLite may commit it inline).

What differs stays in the store: opening, ``rejoin`` (SQLite shares queued reads), ``rooms``,
``stats``, ``db_bytes`` and retention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar, Unpack

from signald.history import queries, rules, writes
from signald.history.contract import NewMessage, SendDone
from signald.history.lifecycle import ThreadedStore
from signald.history.queries import Connection
from signald.history.rules import Deleted
from signald.history.work import Op, complete
from signald.protocol import ChangesPage, ChatMessage, DeleteMode, HistoryPage, ReactionAction

__all__ = ["StoreOperations"]

T = TypeVar("T")


class StoreOperations(ThreadedStore):
    """The writes and reads of the contract over a store's ``_write``, ``_read`` and ``_submit``."""

    _alloc: writes.Allocator
    _completion_scope: AbstractContextManager[Any] | None  # each batch's callbacks run inside it

    async def _write(self, fn: Callable[[Connection], tuple[T, Any]], on_commit: Callable[[Any], None] | None) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError

    def _submit(self, op: Op[Any]) -> None:
        raise NotImplementedError

    def _complete(self, batch: list[Op[Any]]) -> None:
        """A finished batch's callbacks and wake-ups, inside the completion scope (the hub's
        fan-out cork: one write per member per batch)."""
        scope = self._completion_scope
        if scope is None:
            complete(batch)
            return
        with scope:
            complete(batch)

    # ------------------------------------------------------------------ writes

    def _send_op(self, message: NewMessage) -> writes.SendOp:
        return writes.send_fn(self._alloc, message["room"], message["user_id"], message["body"],
                              message.get("attachments", ()), message.get("parent_id"), message.get("client_msg_id"))

    async def send(
        self, *, on_commit: Callable[[ChatMessage], None] | None = None, **message: Unpack[NewMessage]
    ) -> tuple[ChatMessage, bool]:
        return await self._write(self._send_op(message), on_commit)

    def send_nowait(
        self, *, then: SendDone, on_commit: Callable[[ChatMessage], None] | None = None,
        **message: Unpack[NewMessage],
    ) -> None:
        self._submit(Op("write", self._send_op(message), on_commit, then))

    async def edit(
        self, *, message_id: str, user_id: str, new_body: str, on_commit: Callable[[ChatMessage], None] | None = None
    ) -> ChatMessage:
        return await self._write(lambda c: writes.edit(c, self._alloc, message_id, user_id, new_body), on_commit)

    async def delete(
        self, *, message_id: str, user_id: str, mode: DeleteMode = "soft", moderator: bool = False,
        on_commit: Callable[[Deleted], None] | None = None,
    ) -> Deleted:
        rules.check_delete_mode(mode)
        return await self._write(
            lambda c: writes.delete(c, self._alloc, message_id, user_id, mode, moderator), on_commit)

    async def redact(
        self, *, message_id: str, mask: str, on_commit: Callable[[ChatMessage], None] | None = None
    ) -> ChatMessage:
        return await self._write(lambda c: writes.redact(c, self._alloc, message_id, mask), on_commit)

    async def react(
        self, *, message_id: str, user_id: str, reaction: str, action: ReactionAction, room: str,
        on_commit: Callable[[int], None] | None = None,
    ) -> int | None:
        rules.check_action(action)
        return await self._write(
            lambda c: writes.react(c, self._alloc, message_id, user_id, reaction, action, room), on_commit)

    async def mark_read(
        self, *, user_id: str, room: str, message_id: str, on_commit: Callable[[bool], None] | None = None
    ) -> bool:
        return await self._write(lambda c: writes.mark_read(c, user_id, room, message_id), on_commit)

    async def set_last_seen(self, entries: Mapping[str, str]) -> None:
        rows = sorted(entries.items())  # one order for every daemon sharing a database: no crosswise row locks
        if rows:
            await self._write(lambda c: writes.set_last_seen(c, rows), None)

    # ------------------------------------------------------------------ reads

    async def get(self, message_id: str) -> ChatMessage | None:
        return await self._read(lambda c: queries.get_message(c, message_id))

    async def history(
        self, *, room: str, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> HistoryPage:
        rules.check_limit(limit)

        def fn(conn: Connection) -> HistoryPage:
            messages, more = queries.page(conn, room, before, after, limit)
            return HistoryPage(messages=messages, has_more=more)

        return await self._read(fn)

    async def unread(self, *, user_id: str, room: str) -> int:
        return await self._read(lambda c: queries.unread(c, user_id, room))

    async def changes(self, *, room: str, after_rev: int, limit: int) -> ChangesPage:
        rules.check_limit(limit)
        return await self._read(lambda c: queries.changes_page(c, room, after_rev, limit))

    async def last_read(self, *, user_id: str, room: str) -> int | None:
        return await self._read(lambda c: queries.last_read(c, user_id, room))

    async def last_seen(self, user_ids: Iterable[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(user_ids))
        return await self._read(lambda c: queries.last_seen(c, ids)) if ids else {}
