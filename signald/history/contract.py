"""The history store contract: what the handlers, the app and the CLI may ask of a store.

Two implementations keep it: :class:`signald.history.store.HistoryStore` (SQLite, one file, the
embedded default) and :class:`signald.history.postgres.store.PostgresStore` (PostgreSQL, shared
by several daemons). :func:`signald.history.open.open_store` picks one from ``history.url``.
Everything above the history layer is typed against :class:`ChatStore`, never against either.

Guarantees every implementation makes
-------------------------------------
Durability
    A write's result (its return, or ``then`` of :meth:`ChatStore.send_nowait`) is delivered only
    once the transaction that stored it has committed: a message that was acked survives
    ``kill -9`` of the daemon. A failed commit fails every operation it held; none is acked.
``seq`` and ``rev``
    Per room, ``seq`` (messages) and ``rev`` (every change to the history: send, edit, soft delete,
    redaction, reaction that changed the set, hard delete on its tombstone) are assigned by the
    transaction that stores the change: consecutive at assignment (1, 2, 3, ... per room, no gap,
    no duplicate, whatever number of daemons share the database), never reused after a hard
    delete, retention or a crash. A failed write takes none.
``on_commit``
    Runs on the Trio thread after the commit, in commit order of this store, only when the
    operation changed something (not for an idempotent retry, a repeated soft delete, a reaction
    or receipt already in place), then the caller is woken (or ``then`` runs). It must be quick;
    an exception from it is logged and affects nothing else.
Order
    Calls made one after the other by one task are applied in that order; a read made after a
    write returned sees it.
Rules
    Who may edit or delete, what conflicts and what a soft delete or a redaction keeps are
    :mod:`signald.history.rules`, shared by both stores.

Errors: expected failures raise :class:`~signald.errors.SignalError` (``NOT_FOUND``,
``FORBIDDEN``, ``CONFLICT``, ``INVALID_PAYLOAD``); a database failure, an unreachable server or a
closed store raise :class:`StorageError` (``INTERNAL``, a message with no detail a client should
not see); a database written by a newer signald raises :class:`SchemaError` at ``open``.
Cancelling a waiting caller does not cancel its operation, only the result is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, Required, TypedDict, Unpack

from signald.errors import SignalError
from signald.history.queries import Rejoin
from signald.history.rules import Deleted
from signald.protocol import Attachment, ChangesPage, ChatMessage, DeleteMode, HistoryPage, ReactionAction

__all__ = [
    "ChatStore", "Deleted", "HistoryStats", "NewMessage", "Rejoin", "SchemaError", "SendDone", "StorageError",
    "storage_error",
]


class StorageError(SignalError):
    """The database failed, cannot be reached, or the store is closed; answered as ``INTERNAL``."""

    def __init__(self, message: str) -> None:
        super().__init__("INTERNAL", message)


class SchemaError(Exception):
    """The database cannot be used by this version of signald."""


def storage_error(exc: BaseException, *, detail: bool = False) -> StorageError:
    """Wrap a driver error; the detail is for operators (logs, startup), not for clients."""
    err = StorageError(f"history storage failed: {type(exc).__name__}: {exc}" if detail
                       else "history storage failed")
    err.__cause__ = exc
    return err


class HistoryStats(TypedDict):
    """``signald history stats`` and ``system.stats``: what a store holds and how it runs."""

    rooms: int
    messages: int
    db_bytes: int
    schema_version: int
    commits: int
    pending: int
    synchronous: str
    backend: str


class NewMessage(TypedDict, total=False):
    """A message for :meth:`ChatStore.send`: ``room``, ``user_id`` and ``body`` are required."""

    room: Required[str]
    user_id: Required[str]
    body: Required[str]
    attachments: Sequence[Attachment]  # default: none
    parent_id: str | None  # the message this one answers (a thread)
    client_msg_id: str | None  # the sender's id for retries: one message per (user, room, id)


SendDone = Callable[[tuple[ChatMessage, bool] | None, BaseException | None], None]
"""``then(result, error)`` of :meth:`ChatStore.send_nowait`: exactly one of the two is None."""


class ChatStore(Protocol):
    """The store contract (see the module docstring for the guarantees of every call)."""

    async def open(self) -> None:
        """Connect, migrate the schema (a read-only store: check it) and start taking work.

        Raises :class:`StorageError` with the reason (never a password) if the database cannot
        be reached or opened, :class:`SchemaError` if it is newer than this signald.
        """

    async def aclose(self) -> None:
        """Commit what is queued, then close; bounded in time and shielded from cancellation."""

    async def __aenter__(self) -> ChatStore: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    @property
    def commits(self) -> int:
        """Committed transactions in which a write succeeded (group commit makes it < writes)."""

    # ------------------------------------------------------------------ writes

    async def send(
        self, *, on_commit: Callable[[ChatMessage], None] | None = None, **message: Unpack[NewMessage]
    ) -> tuple[ChatMessage, bool]:
        """Store a message with the room's next ``seq`` and ``rev``; ``(message, created)``.

        A retry (same user, room and ``client_msg_id``) returns the original, folded, with
        ``created=False`` and no ``on_commit``; ``CONFLICT`` if it was hard-deleted meanwhile.
        """

    def send_nowait(
        self, *, then: SendDone, on_commit: Callable[[ChatMessage], None] | None = None,
        **message: Unpack[NewMessage],
    ) -> None:
        """:meth:`send` without waiting: ``then(result, error)`` runs on the Trio thread once the
        commit is done (after ``on_commit``); messages sent one after the other are stored, and
        their callbacks run, in that order. :class:`StorageError` at once if the store is not open."""

    async def edit(
        self, *, message_id: str, user_id: str, new_body: str, on_commit: Callable[[ChatMessage], None] | None = None
    ) -> ChatMessage:
        """Replace the body of the author's message, set ``edited_at``, take a ``rev``."""

    async def delete(
        self, *, message_id: str, user_id: str, mode: DeleteMode = "soft", moderator: bool = False,
        on_commit: Callable[[Deleted], None] | None = None,
    ) -> Deleted:
        """Soft- or hard-delete a message (author, or anyone with ``moderator``)."""

    async def redact(
        self, *, message_id: str, mask: str, on_commit: Callable[[ChatMessage], None] | None = None
    ) -> ChatMessage:
        """Replace the body with ``mask`` and mark it redacted (the caller checks permission)."""

    async def react(
        self, *, message_id: str, user_id: str, reaction: str, action: ReactionAction, room: str,
        on_commit: Callable[[int], None] | None = None,
    ) -> int | None:
        """Add or remove a reaction (idempotent); the change's ``rev``, None if nothing changed."""

    async def mark_read(
        self, *, user_id: str, room: str, message_id: str, on_commit: Callable[[bool], None] | None = None
    ) -> bool:
        """Move the user's read receipt up to the message (never back); whether it moved."""

    async def set_last_seen(self, entries: Mapping[str, str]) -> None:
        """Record when users were last seen (user id -> ISO 8601 time)."""

    async def run_retention(self) -> int:
        """Apply retention now, completely; how many messages were removed."""

    # ------------------------------------------------------------------ reads

    async def get(self, message_id: str) -> ChatMessage | None:
        """The folded message, or None if it does not exist (or was hard-deleted)."""

    async def history(
        self, *, room: str, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> HistoryPage:
        """One ``chat.history`` page of ``room``; ``limit >= 1`` (else ``INVALID_PAYLOAD``)."""

    async def unread(self, *, user_id: str, room: str) -> int:
        """Not-deleted messages of ``room`` above the user's read receipt (all if none)."""

    async def rejoin(
        self, *, user_id: str, room: str, since: int | None, limit: int, since_rev: int | None = None
    ) -> Rejoin:
        """``unread``, ``rev``, ``missed`` and ``changes`` for ``room.join``, read from one snapshot."""

    async def changes(self, *, room: str, after_rev: int, limit: int) -> ChangesPage:
        """Every change of ``room`` after ``after_rev``, or ``changes_reset`` if some are gone."""

    async def last_read(self, *, user_id: str, room: str) -> int | None:
        """The ``seq`` of the user's read receipt in ``room``, or None."""

    async def last_seen(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Last-seen times of those of ``user_ids`` that were ever recorded."""

    async def rooms(self) -> list[str]:
        """Rooms that have stored messages, sorted by name."""

    async def stats(self) -> HistoryStats:
        """Counts for ``system.stats`` and operators."""

    def db_bytes(self) -> int:
        """Size of the database on disk as last known; never waits for the database."""

