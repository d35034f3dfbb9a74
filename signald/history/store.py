"""Durable chat history: SQLite behind one writer thread, driven from Trio.

Design
------
One dedicated :class:`threading.Thread` opens the only ``sqlite3`` connection and runs everything
on it, with one exception described below (a lone ``chat.send`` on an idle store). Trio tasks put
work items on a thread-safe queue (synchronously, when the call starts, so operations are applied in
the order the calls were made) and wait on a :class:`trio.Event`. The thread takes everything
queued (up to :data:`MAX_BATCH` items), runs it in ONE transaction (group commit), commits, and
only then hands the whole batch back to Trio with one ``TrioToken.run_sync_soon`` call. There the
``on_commit`` callbacks of the batch run in commit order, each just before its waiter is woken, so
a caller that fans events out from ``on_commit`` delivers them in ``seq`` order even when many
connections send at once (Trio does not wake tasks in FIFO order, so fan-out after ``await`` could
reorder). A caller that does not wait (:meth:`HistoryStore.send_nowait`, used by ``chat.send`` so
a connection's reader can go on while its message is stored) gets a ``then(result, error)``
callback there instead of a wake-up; the batch's callbacks run inside ``completion_scope`` (the
hub's fan-out cork, so the batch reaches each connection in one write). ``on_commit`` runs only
when the operation changed something: not for an idempotent
``send`` retry, a repeated soft delete, or a reaction/read receipt that was already in place. It
runs inside a ``run_sync_soon`` callback, so it must be quick and cannot await (it should queue
events with ``send_nowait``-style calls).

Inline commits. A message sent with :meth:`HistoryStore.send_nowait` while the store is idle
(nothing queued, running or waiting for its callbacks) and no other Trio task is waiting to run
is stored and committed right in the Trio thread: handing it to the thread and back costs two
context switches, more than the ~30-60 us the transaction itself takes, and that is the whole ack
latency of a client sending one message at a time. Under load (other tasks runnable, e.g. readers
with frames of their own) messages queue, so they still share transactions; at most one message
per turn of the Trio loop goes inline. Inline commits never wait and never copy the WAL on the
event loop: between the thread's transactions the connection has ``busy_timeout = 0`` (if another
connection holds the write lock the message is queued instead) and ``wal_autocheckpoint = 0`` (the
thread restores both for its own turns, and checkpoints after :data:`CHECKPOINT_INLINE` inline
commits). With ``synchronous`` ``FULL`` or ``EXTRA`` (an fsync per commit), or ``inline=False``
(a disk that can stall writes would stall the event loop), nothing is inline. A
:class:`threading.Lock` keeps the two threads from ever using the connection at once.

Each write runs inside a ``SAVEPOINT``: one that fails (e.g. ``SignalError("FORBIDDEN")``) is
rolled back alone and the rest of the batch still commits. Reads go through the same thread, in
order with the writes; they may run inside a batch's transaction but their result, too, is
released only after that transaction committed.

Durability
----------
The database runs in WAL mode. ``synchronous`` defaults to ``NORMAL``: a commit is written to the
WAL with ``write()`` but not fsync'ed, so a committed (and therefore acked) message survives the
process being killed, ``kill -9`` included, but the last commits before an OS crash or power loss
may be lost (the database itself stays consistent). Only checkpoints fsync; they run automatically
every :data:`WAL_CHECKPOINT_PAGES` WAL pages, so that cost is amortised over many commits.
``FULL`` also survives power loss at the cost of one fsync per commit - with group commit that is
one fsync per batch, not per message, but it still bounds throughput by the disk's fsync latency
(see ``bench/history.py``). ``OFF`` and ``EXTRA`` are accepted too. ``":memory:"`` gives a
non-durable store (tests, benchmarks).

Semantics chosen where the protocol is silent
---------------------------------------------
- ``seq`` is assigned when the message is stored, from a per-room counter kept in memory and
  written to ``rooms`` by the writer thread (:mod:`signald.history.counters`): gap-free per room at
  assignment time, never reused after hard deletes, retention or a crash.
- Message ids are 24 hex digits: 12 of creation time in milliseconds, 12 random.
- ``send`` with a ``parent_id`` that is not a stored message of the same room: ``NOT_FOUND``.
  A retry (same user, room and ``client_msg_id``) returns the original message, folded, with
  ``created=False`` and no ``on_commit``; if the original was hard-deleted meanwhile: ``CONFLICT``
  (never silently re-created).
- ``edit``: author only (``FORBIDDEN``); unknown or hard-deleted: ``NOT_FOUND``; soft-deleted or
  redacted: ``CONFLICT`` (an author cannot undo a moderator's redaction by editing).
- ``delete``: author or moderator; a soft delete empties ``body``, ``attachments`` and
  ``reactions`` and sets ``deleted_at``; repeating it returns the first ``deleted_at``.
- ``redact``: sets ``body`` to the mask, empties ``attachments`` (the content being removed may be
  the attachment), sets ``redacted``; a soft-deleted message: ``CONFLICT``.
- ``react``: ``add`` on a soft-deleted message is ``CONFLICT``; reactions map each reaction to its
  users in the order they reacted; keys are ordered by their earliest current reaction.
- ``mark_read`` never moves a receipt backwards; ``unread`` counts not-deleted messages above it.

Retention
---------
``retention_max_age_s`` and ``retention_max_count`` (0 = off) apply to every room. The writer
thread enforces them in transactions of at most :data:`RETENTION_BATCH` rows: when the queue is
idle, after every :data:`RETENTION_EVERY` write batches under sustained load, and at least every
``retention_interval_s``. Removed messages take their reactions and idempotency keys with them.
Age retention removes each room's messages in ``seq`` order up to the first one that is not
expired (``seq`` order is creation order unless the wall clock stepped back; then a message may
outlive its age until the ones before it expire). It looks at every room's oldest message, so it
runs once per ``retention_interval_s`` (until it is done), not every :data:`RETENTION_EVERY` batches.

Resource handling
-----------------
:meth:`HistoryStore.open` (or ``async with``) starts the thread, which opens the connection and
runs the migrations of :mod:`signald.history.schema`. :meth:`HistoryStore.aclose` refuses new work, lets
the thread finish everything queued before it, commit, close the connection (SQLite checkpoints
the WAL on the last close) and exit; it waits at most ``close_timeout_s`` and is shielded from
cancellation. The thread is a daemon thread, so a wedged disk cannot keep the process alive. The
queue is unbounded: callers are expected to be rate-limited (the server's token buckets). SQLite's
page cache is capped at :data:`CACHE_KIB`; the WAL file is truncated to 64 MiB after checkpoints.
A store is bound to the Trio run that opened it.

Error handling
--------------
Expected failures raise :class:`~signald.errors.SignalError` (``NOT_FOUND``, ``FORBIDDEN``,
``CONFLICT``, ``INVALID_PAYLOAD`` for a bad ``limit``). SQLite failures (disk full, I/O errors,
a failed commit) raise :class:`StorageError` (a ``SignalError`` with code ``INTERNAL``); a failed
commit fails every operation of its batch, none of which is then acked or announced. Using a
closed store raises :class:`StorageError`. Opening a database written by a newer signald raises
:class:`~signald.history.schema.SchemaError`. An exception from an ``on_commit`` callback is logged and
does not affect the other callbacks or the waiter. Cancelling a waiting caller does not cancel its
operation: once submitted it is carried out (and its ``on_commit`` runs), only the result is lost.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final, Generic, NamedTuple, TypedDict, TypeVar

import msgspec
import trio

from signald.errors import SignalError
from signald.history.counters import RECONCILE_SQL, RoomCounters
from signald.history.schema import SCHEMA_VERSION, migrate
from signald.protocol import Attachment, ChatMessage, DeleteMode, HistoryPage, ReactionAction
from signald.timefmt import iso_utc

try:  # the run queue's length, read directly: the public statistics also count every fd (O(fds))
    from trio._core import _run as _trio_run

    _TRIO_RUN_CONTEXT: Any = _trio_run.GLOBAL_RUN_CONTEXT
except (ImportError, AttributeError):  # pragma: no cover - a trio release moved it (a test says so)
    _TRIO_RUN_CONTEXT = None

__all__ = [
    "MAX_BATCH",
    "RETENTION_BATCH",
    "RETENTION_EVERY",
    "Deleted",
    "HistoryStats",
    "HistoryStore",
    "Rejoin",
    "StorageError",
    "iso_utc",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH: Final = 1024
"""Most work items run in one transaction."""
RETENTION_BATCH: Final = 500
"""Most messages one retention transaction removes."""
RETENTION_EVERY: Final = 64
"""Under sustained load, one retention step runs after this many write batches."""
CACHE_KIB: Final = 32 * 1024
"""Upper bound of SQLite's page cache (it grows only as pages are used)."""
WAL_CHECKPOINT_PAGES: Final = 10_000
"""WAL pages (~40 MiB) that trigger an automatic checkpoint; fewer checkpoints = fewer fsyncs."""
CHECKPOINT_INLINE: Final = 1_000
"""Inline commits after which the writer thread checkpoints (they never do: it would block Trio)."""
INLINE_SYNC_MODES: Final = frozenset({"OFF", "NORMAL"})
"""``synchronous`` modes whose commit does not fsync, so that a lone ``send`` may commit inline."""
SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_CHUNK: Final = 500  # bound variables per IN (...) query
_SKIP: Final[Any] = object()  # "do not call on_commit"
_NO_WAITER: Final = trio.Event()  # the ``done`` of ops completed by a callback: nobody waits on it
_COLUMNS: Final = (
    "id, room, seq, user_id, body, attachments, parent_id, created_at, edited_at, deleted_at, redacted"
)
_attachments_decoder: Final = msgspec.json.Decoder(list[Attachment])


class StorageError(SignalError):
    """The database failed (or the store is closed); answered as ``INTERNAL``."""

    def __init__(self, message: str) -> None:
        super().__init__("INTERNAL", message)


class Deleted(NamedTuple):
    """Result of :meth:`HistoryStore.delete`."""

    room: str
    deleted_at: str


class Rejoin(NamedTuple):
    """What ``room.join`` needs from history: ``missed``/``truncated`` are None without ``since``."""

    missed: list[ChatMessage] | None
    truncated: bool | None
    unread: int


class HistoryStats(TypedDict):
    rooms: int
    messages: int
    db_bytes: int
    schema_version: int
    commits: int
    pending: int
    synchronous: str


def tasks_runnable() -> int:
    """How many tasks of the current Trio run are waiting for their turn (not counting the caller)."""
    runq = getattr(getattr(_TRIO_RUN_CONTEXT, "runner", None), "runq", None)
    if runq is None:  # pragma: no cover - see the import
        return trio.lowlevel.current_statistics().tasks_runnable
    return len(runq)


def _new_id(now: float) -> str:
    return f"{math.floor(now * 1000) & 0xFFFFFFFFFFFF:012x}{os.urandom(6).hex()}"


def _decode_attachments(text: str) -> list[Attachment]:
    return [] if text == "[]" else _attachments_decoder.decode(text)


def _message(row: Sequence[Any], reactions: dict[str, list[str]]) -> ChatMessage:
    return ChatMessage(
        id=row[0], room=row[1], seq=row[2], user_id=row[3], body=row[4],
        attachments=_decode_attachments(row[5]), parent_id=row[6], created_at=row[7],
        edited_at=row[8], deleted_at=row[9], redacted=bool(row[10]), reactions=reactions,
    )


def _storage_error(exc: BaseException, *, detail: bool = False) -> StorageError:
    """Wrap a sqlite error; the detail is for operators (logs, startup), not for clients."""
    err = StorageError(f"history storage failed: {type(exc).__name__}: {exc}" if detail
                       else "history storage failed")
    err.__cause__ = exc
    return err


class _Op(Generic[T]):
    """One work item. ``fn`` runs in the writer thread and returns ``(value, on_commit argument)``."""

    __slots__ = ("done", "error", "event", "fn", "kind", "on_commit", "then", "value")

    def __init__(
        self,
        kind: str,
        fn: Callable[[sqlite3.Connection], tuple[T, Any]] | None = None,
        on_commit: Callable[[Any], None] | None = None,
        then: Callable[[T | None, BaseException | None], None] | None = None,
    ) -> None:
        self.kind = kind  # "read" | "write" | "counts" (a read of the rooms table) | "open" | "close" | "checkpoint"
        self.fn = fn
        self.on_commit = on_commit
        self.value: T | None = None
        self.event: Any = _SKIP
        self.error: BaseException | None = None
        # Completion: either ``then(value, error)`` is called in the Trio thread, or ``done`` is set
        # for a task waiting on it.
        self.then = then
        self.done = trio.Event() if then is None else _NO_WAITER


class HistoryStore:
    """Chat history in one SQLite file (or ``":memory:"``); see the module docstring.

    Methods prefixed ``_w_`` run only in the writer thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        inline: bool = True,
        retention_max_age_s: float = 0,
        retention_max_count: int = 0,
        clock: Callable[[], float] = time.time,
        retention_interval_s: float = 10.0,
        busy_timeout_s: float = 5.0,
        close_timeout_s: float = 10.0,
        completion_scope: AbstractContextManager[Any] | None = None,
    ) -> None:
        sync = synchronous.upper()
        if sync not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        if retention_max_age_s < 0 or retention_max_count < 0 or retention_interval_s <= 0:
            raise ValueError("retention settings must be >= 0 and the interval > 0")
        self.path = os.fspath(path)
        self.memory = self.path in ("", ":memory:")
        self.synchronous = sync
        self.retention_max_age_s = float(retention_max_age_s)
        self.retention_max_count = int(retention_max_count)
        self.retention_interval_s = float(retention_interval_s)
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._close_timeout_s = close_timeout_s
        # Each batch's callbacks run inside it (the hub's fan-out cork: one write per member per batch).
        self._completion_scope = completion_scope
        self._queue: queue.SimpleQueue[_Op[Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._state = "new"  # new -> open -> closing -> closed (Trio thread only)
        self._dead = False  # set by the writer thread when it stops; guarded by _lock
        self._lock = threading.Lock()
        self._closed = trio.Event()
        self.commits = 0
        """Committed transactions that contained writes (group commit makes it < writes)."""
        self.inline_commits = 0
        """Of ``commits``, those made in the Trio thread by :meth:`send_nowait` on an idle store."""
        self.checkpoints = 0
        """WAL checkpoints run by the writer thread."""
        self._inline = inline and (self.memory or sync in INLINE_SYNC_MODES)
        self._inline_spent = False  # an inline commit ran in this turn of the Trio loop
        self._new_turn = _NewTurn(self)  # clears _inline_spent when the next turn begins
        self._in_flight = 0  # ops handed to the thread and not yet completed (Trio thread only)
        self._conn: sqlite3.Connection | None = None  # set while the writer thread has it open
        self._conn_lock = threading.Lock()  # held by whichever thread is using the connection
        self._inline_since_checkpoint = 0  # inline commits since the thread last checkpointed
        self._w_due = True
        self._w_age_due = True  # age retention looks at every room: once per interval (or if asked)
        self._w_batches_since = 0
        self._w_rooms: set[str] | None = None  # rooms to check for count retention; None = all
        self._counters = RoomCounters()  # per-room last_seq/count; used under _conn_lock only

    # ------------------------------------------------------------------ lifecycle (Trio side)

    async def open(self) -> None:
        """Start the writer thread, open the database and run pending migrations."""
        if self._state != "new":
            raise RuntimeError(f"HistoryStore.open() on a store that is {self._state}")
        self._token = trio.lowlevel.current_trio_token()
        opener: _Op[None] = _Op("open")
        self._thread = threading.Thread(
            target=self._w_main, args=(opener,), name="signald-history", daemon=True
        )
        self._state = "open"
        self._in_flight = 1  # the opener
        self._thread.start()
        if self._inline:
            trio.lowlevel.add_instrument(self._new_turn)
        with trio.CancelScope(shield=True):  # bounded by busy_timeout_s plus the migrations
            await opener.done.wait()
        if opener.error is not None:
            self._forget_turns()
            self._state = "closed"
            self._closed.set()
            await trio.to_thread.run_sync(self._thread.join, self._close_timeout_s)
            raise opener.error

    async def aclose(self) -> None:
        """Finish and commit everything queued, close the database and stop the thread."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._state == "closing":
            await self._closed.wait()
            return
        self._state = "closing"
        self._forget_turns()
        closer: _Op[None] = _Op("close")
        try:
            self._put(closer)
        except StorageError:  # pragma: no cover - the thread is already gone
            self._state = "closed"
            self._closed.set()
            return
        with trio.move_on_after(self._close_timeout_s, shield=True) as scope:
            await closer.done.wait()
            assert self._thread is not None
            await trio.to_thread.run_sync(self._thread.join, self._close_timeout_s, abandon_on_cancel=True)
        if scope.cancelled_caught:
            logger.error("history writer did not stop within %.1f s; abandoning it", self._close_timeout_s)
        self._state = "closed"
        self._closed.set()

    async def __aenter__(self) -> HistoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _put(self, op: _Op[Any]) -> None:
        with self._lock:
            if self._dead:
                raise StorageError("history store is closed")
            self._queue.put(op)
        self._in_flight += 1

    async def _call(
        self,
        fn: Callable[[sqlite3.Connection], tuple[T, Any]],
        *,
        write: bool,
        on_commit: Callable[[Any], None] | None = None,
        counts: bool = False,
    ) -> T:
        """Run ``fn`` in the writer thread; ``counts``: it reads the ``rooms`` table, which is
        brought up to date with the room counters (earlier operations of its batch included) first."""
        if self._state != "open":
            raise StorageError(f"history store is {self._state}")
        op: _Op[T] = _Op("write" if write else "counts" if counts else "read", fn, on_commit)
        self._put(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.value  # type: ignore[return-value]  # set whenever error is None

    # ------------------------------------------------------------------ public API: writes

    async def send(
        self,
        *,
        room: str,
        user_id: str,
        body: str,
        attachments: Sequence[Attachment] = (),
        parent_id: str | None = None,
        client_msg_id: str | None = None,
        on_commit: Callable[[ChatMessage], None] | None = None,
    ) -> tuple[ChatMessage, bool]:
        """Store a message; returns ``(message, created)``. ``created`` is False for a retry."""
        fn = self._send_fn(room, user_id, body, attachments, parent_id, client_msg_id)
        return await self._call(fn, write=True, on_commit=on_commit)

    def send_nowait(
        self,
        *,
        room: str,
        user_id: str,
        body: str,
        then: Callable[[tuple[ChatMessage, bool] | None, BaseException | None], None],
        attachments: Sequence[Attachment] = (),
        parent_id: str | None = None,
        client_msg_id: str | None = None,
        on_commit: Callable[[ChatMessage], None] | None = None,
    ) -> None:
        """:meth:`send` without waiting for it: ``then(result, error)`` runs once it is done.

        ``then`` runs in the Trio thread right after ``on_commit``, once the transaction that
        stored the message has committed (or with the error that failed it). Messages sent one
        after the other are stored, and their callbacks run, in that order. Raises
        :class:`StorageError` at once if the store is not open.

        On an idle store in an idle process (nothing queued or in progress, no other task waiting
        to run and no inline commit yet in this turn of the Trio loop, a ``synchronous`` mode that
        does not fsync, no other connection holding the write lock) the message is stored and
        committed right here, in the Trio thread, and ``on_commit`` and ``then`` have run when this
        returns: a lone message does not pay for two thread hand-offs. Otherwise it is queued for
        the writer thread, which stores what arrives together in one transaction.
        """
        if self._state != "open":
            raise StorageError(f"history store is {self._state}")
        fn = self._send_fn(room, user_id, body, attachments, parent_id, client_msg_id)
        op: _Op[tuple[ChatMessage, bool]] = _Op("write", fn, on_commit, then)
        if (self._in_flight == 0 and self._inline and not self._inline_spent and tasks_runnable() == 0
                and self._commit_inline(op)):
            return
        self._put(op)

    def _commit_inline(self, op: _Op[Any]) -> bool:
        """Run ``op`` in its own transaction in the Trio thread; False if it has to be queued."""
        conn = self._conn
        if conn is None or not self._conn_lock.acquire(blocking=False):
            return False
        try:
            # Between the thread's transactions the connection neither waits for another
            # connection's write lock (busy_timeout 0: queue instead) nor checkpoints on commit.
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            commits = self.commits
            self._w_execute(conn, [op], begun=True, write_counters=False)
        finally:
            self._conn_lock.release()
        self.inline_commits += self.commits - commits
        self._inline_spent = True  # the next inline commit waits for the loop's next turn
        self._inline_since_checkpoint += 1
        if self._inline_since_checkpoint >= CHECKPOINT_INLINE and not self.memory:
            self._inline_since_checkpoint = 0
            self._put(_Op("checkpoint"))
        self._complete([op])
        return True

    def _forget_turns(self) -> None:
        with contextlib.suppress(KeyError):  # not added (inline commits off) or already removed
            trio.lowlevel.remove_instrument(self._new_turn)
        self._inline_spent = True  # no more inline commits

    def _send_fn(
        self, room: str, user_id: str, body: str, attachments: Sequence[Attachment],
        parent_id: str | None, client_msg_id: str | None,
    ) -> Callable[[sqlite3.Connection], tuple[tuple[ChatMessage, bool], Any]]:
        items = list(attachments)
        encoded = msgspec.json.encode(items).decode() if items else "[]"

        def fn(conn: sqlite3.Connection) -> tuple[tuple[ChatMessage, bool], Any]:
            return self._w_send(conn, room, user_id, body, items, encoded, parent_id, client_msg_id)

        return fn

    async def edit(
        self,
        *,
        message_id: str,
        user_id: str,
        new_body: str,
        on_commit: Callable[[ChatMessage], None] | None = None,
    ) -> ChatMessage:
        """Replace the body of the author's message and set ``edited_at``."""

        def fn(conn: sqlite3.Connection) -> tuple[ChatMessage, Any]:
            row = conn.execute(
                "SELECT user_id, deleted_at, redacted FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise SignalError("NOT_FOUND", f"message {message_id!r} not found")
            if row[0] != user_id:
                raise SignalError("FORBIDDEN", "only the author can edit a message")
            if row[1] is not None:
                raise SignalError("CONFLICT", "the message was deleted")
            if row[2]:
                raise SignalError("CONFLICT", "the message was redacted")
            conn.execute(
                "UPDATE messages SET body = ?, edited_at = ? WHERE id = ?",
                (new_body, iso_utc(self._clock()), message_id),
            )
            message = self._w_get(conn, message_id)
            assert message is not None
            return message, message

        return await self._call(fn, write=True, on_commit=on_commit)

    async def delete(
        self,
        *,
        message_id: str,
        user_id: str,
        mode: DeleteMode = "soft",
        moderator: bool = False,
        on_commit: Callable[[Deleted], None] | None = None,
    ) -> Deleted:
        """Soft- or hard-delete a message (author, or anyone with ``moderator``)."""
        if mode not in ("soft", "hard"):
            raise SignalError("INVALID_PAYLOAD", "`$.data.mode` must be 'soft' or 'hard'")

        def fn(conn: sqlite3.Connection) -> tuple[Deleted, Any]:
            row = conn.execute(
                "SELECT room, seq, user_id, deleted_at FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise SignalError("NOT_FOUND", f"message {message_id!r} not found")
            room, seq, author, deleted_at = row
            if author != user_id and not moderator:
                raise SignalError("FORBIDDEN", "only the author or a moderator can delete a message")
            if mode == "soft" and deleted_at is not None:
                return Deleted(room, deleted_at), _SKIP
            now = iso_utc(self._clock())
            conn.execute("DELETE FROM reactions WHERE room = ? AND seq = ?", (room, seq))
            if mode == "soft":
                conn.execute(
                    "UPDATE messages SET body = '', attachments = '[]', deleted_at = ? WHERE id = ?",
                    (now, message_id),
                )
            else:
                conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                self._w_counter(conn, room)[1] -= 1
            result = Deleted(room, now)
            return result, result

        return await self._call(fn, write=True, on_commit=on_commit)

    async def redact(
        self, *, message_id: str, mask: str, on_commit: Callable[[ChatMessage], None] | None = None
    ) -> ChatMessage:
        """Replace the body with ``mask`` and mark it redacted (the caller checks permission)."""

        def fn(conn: sqlite3.Connection) -> tuple[ChatMessage, Any]:
            row = conn.execute("SELECT deleted_at FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise SignalError("NOT_FOUND", f"message {message_id!r} not found")
            if row[0] is not None:
                raise SignalError("CONFLICT", "the message was deleted")
            conn.execute(
                "UPDATE messages SET body = ?, attachments = '[]', redacted = 1 WHERE id = ?",
                (mask, message_id),
            )
            message = self._w_get(conn, message_id)
            assert message is not None
            return message, message

        return await self._call(fn, write=True, on_commit=on_commit)

    async def react(
        self,
        *,
        message_id: str,
        user_id: str,
        reaction: str,
        action: ReactionAction,
        room: str,
        on_commit: Callable[[bool], None] | None = None,
    ) -> bool:
        """Add or remove a reaction (idempotent); returns whether anything changed."""
        if action not in ("add", "remove"):
            raise SignalError("INVALID_PAYLOAD", "`$.data.action` must be 'add' or 'remove'")

        def fn(conn: sqlite3.Connection) -> tuple[bool, Any]:
            row = conn.execute(
                "SELECT room, seq, deleted_at FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None or row[0] != room:
                raise SignalError("NOT_FOUND", f"message {message_id!r} not found in room {room!r}")
            key = (room, row[1], reaction, user_id)
            if action == "add":
                if row[2] is not None:
                    raise SignalError("CONFLICT", "the message was deleted")
                cur = conn.execute(
                    "INSERT OR IGNORE INTO reactions (room, seq, reaction, user_id) VALUES (?, ?, ?, ?)", key
                )
            else:
                cur = conn.execute(
                    "DELETE FROM reactions WHERE room = ? AND seq = ? AND reaction = ? AND user_id = ?", key
                )
            changed = cur.rowcount > 0
            return changed, (True if changed else _SKIP)

        return await self._call(fn, write=True, on_commit=on_commit)

    async def mark_read(
        self,
        *,
        user_id: str,
        room: str,
        message_id: str,
        on_commit: Callable[[bool], None] | None = None,
    ) -> bool:
        """Move the user's read receipt in ``room`` up to the message; returns whether it moved."""

        def fn(conn: sqlite3.Connection) -> tuple[bool, Any]:
            row = conn.execute("SELECT room, seq FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None or row[0] != room:
                raise SignalError("NOT_FOUND", f"message {message_id!r} not found in room {room!r}")
            cur = conn.execute(
                "INSERT INTO read_receipts (user_id, room, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id, room) DO UPDATE SET seq = excluded.seq "
                "WHERE excluded.seq > read_receipts.seq",
                (user_id, room, row[1]),
            )
            moved = cur.rowcount > 0
            return moved, (True if moved else _SKIP)

        return await self._call(fn, write=True, on_commit=on_commit)

    async def set_last_seen(self, entries: Mapping[str, str]) -> None:
        """Record when users were last seen (user id -> ISO 8601 time)."""
        rows = list(entries.items())

        def fn(conn: sqlite3.Connection) -> tuple[None, Any]:
            conn.executemany(
                "INSERT INTO last_seen (user_id, at) VALUES (?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET at = excluded.at",
                rows,
            )
            return None, _SKIP

        if rows:
            await self._call(fn, write=True)

    async def run_retention(self) -> int:
        """Apply retention now, completely; returns how many messages were removed."""

        def fn(conn: sqlite3.Connection) -> tuple[int, Any]:
            total = 0
            self._w_age_due = True
            while True:
                removed, more = self._w_expire(conn)
                total += removed
                if not more:
                    return total, _SKIP

        return await self._call(fn, write=True)

    # ------------------------------------------------------------------ public API: reads

    async def get(self, message_id: str) -> ChatMessage | None:
        """The folded message, or None if it does not exist (or was hard-deleted)."""
        return await self._call(lambda conn: (self._w_get(conn, message_id), _SKIP), write=False)

    async def history(
        self, *, room: str, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> HistoryPage:
        """One page of ``room`` by PROTOCOL.md's ``chat.history`` rules, ascending ``seq``.

        No bounds: the newest ``limit``; ``before``: the newest below it; ``after``: the oldest above
        it; both: the oldest part of the open interval. ``has_more`` is about the paging direction
        (older without ``after``, newer or the rest of the interval with it). The caller enforces
        ``history_page_max``; ``limit < 1`` is ``INVALID_PAYLOAD``.
        """
        if limit < 1:
            raise SignalError("INVALID_PAYLOAD", "`$.data.limit` must be >= 1")

        def fn(conn: sqlite3.Connection) -> tuple[HistoryPage, Any]:
            messages, more = self._w_page(conn, room, before, after, limit)
            return HistoryPage(messages=messages, has_more=more), _SKIP

        return await self._call(fn, write=False)

    async def missed(self, *, room: str, since: int, limit: int) -> tuple[list[ChatMessage], bool]:
        """Messages with ``seq > since``, ascending, at most ``limit``; the bool says truncated."""
        page = await self.history(room=room, after=since, limit=limit)
        return page.messages, page.has_more

    async def unread(self, *, user_id: str, room: str) -> int:
        """Not-deleted messages of ``room`` above the user's read receipt (all if none)."""
        return await self._call(lambda conn: (self._w_unread(conn, user_id, room), _SKIP), write=False)

    async def rejoin(self, *, user_id: str, room: str, since: int | None, limit: int) -> Rejoin:
        """``missed`` (when ``since`` is given) and ``unread`` for ``room.join``, in one round trip."""
        if limit < 1:
            raise SignalError("INVALID_PAYLOAD", "`limit` must be >= 1")

        def fn(conn: sqlite3.Connection) -> tuple[Rejoin, Any]:
            unread = self._w_unread(conn, user_id, room)
            if since is None:
                return Rejoin(None, None, unread), _SKIP
            messages, more = self._w_page(conn, room, None, since, limit)
            return Rejoin(messages, more, unread), _SKIP

        return await self._call(fn, write=False)

    async def last_read(self, *, user_id: str, room: str) -> int | None:
        """The ``seq`` of the user's read receipt in ``room``, or None."""

        def fn(conn: sqlite3.Connection) -> tuple[int | None, Any]:
            row = conn.execute(
                "SELECT seq FROM read_receipts WHERE user_id = ? AND room = ?", (user_id, room)
            ).fetchone()
            return (None if row is None else int(row[0])), _SKIP

        return await self._call(fn, write=False)

    async def last_seen(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Last-seen times of those of ``user_ids`` that were ever recorded."""
        ids = list(dict.fromkeys(user_ids))

        def fn(conn: sqlite3.Connection) -> tuple[dict[str, str], Any]:
            found: dict[str, str] = {}
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT user_id, at FROM last_seen WHERE user_id IN ({marks})"
                found.update(conn.execute(query, chunk))
            return found, _SKIP

        return await self._call(fn, write=False) if ids else {}

    async def rooms(self) -> list[str]:
        """Rooms that have stored messages, sorted by name."""

        def fn(conn: sqlite3.Connection) -> tuple[list[str], Any]:
            rows = conn.execute("SELECT room FROM rooms WHERE count > 0 ORDER BY room")
            return [row[0] for row in rows], _SKIP

        return await self._call(fn, write=False, counts=True)

    async def export(self, room: str | None = None, *, batch: int = 500) -> AsyncIterator[ChatMessage]:
        """Every stored message of ``room`` (or of all rooms, by room name), ascending ``seq``."""
        for name in [room] if room is not None else await self.rooms():
            after = 0
            while True:
                page = await self.history(room=name, after=after, limit=batch)
                for message in page.messages:
                    yield message
                if not page.has_more:
                    break
                after = page.messages[-1].seq

    async def stats(self) -> HistoryStats:
        """Counts for ``system.stats`` and operators."""

        def fn(conn: sqlite3.Connection) -> tuple[tuple[int, int], Any]:
            query = "SELECT count(*), coalesce(sum(count), 0) FROM rooms WHERE count > 0"
            row = conn.execute(query).fetchone()
            return (int(row[0]), int(row[1])), _SKIP

        rooms, messages = await self._call(fn, write=False, counts=True)
        return HistoryStats(
            rooms=rooms, messages=messages, db_bytes=self.db_bytes(), schema_version=SCHEMA_VERSION,
            commits=self.commits, pending=self._queue.qsize(), synchronous=self.synchronous,
        )

    def db_bytes(self) -> int:
        """Size of the database file plus its WAL (0 in memory); no round trip to the thread."""
        if self.memory:
            return 0
        total = 0
        for name in (self.path, self.path + "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(name)
        return total

    # ------------------------------------------------------------------ writer thread

    def _w_main(self, opener: _Op[None]) -> None:
        try:
            conn = self._w_connect()
        except BaseException as exc:
            opener.error = _storage_error(exc, detail=True) if isinstance(exc, sqlite3.Error) else exc
            self._w_stop(None, [opener])
            return
        self._conn = conn
        self._w_deliver([opener])
        closer: _Op[Any] | None = None
        try:
            closer = self._w_loop(conn)
        except BaseException:  # pragma: no cover - a bug; fail what is queued rather than hang
            logger.exception("history writer thread crashed")
        finally:
            with self._conn_lock:
                self._conn = None
                with contextlib.suppress(sqlite3.Error):
                    self._w_settle(conn, waiting=True)  # may wait for another writer, as turns do
                self._w_save_counters(conn)
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover
                    logger.exception("closing the history database failed")
            self._w_stop(closer, [])

    def _w_stop(self, closer: _Op[Any] | None, extra: list[_Op[Any]]) -> None:
        with self._lock:
            self._dead = True
        leftovers = list(extra)
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not closer:
                op.error = StorageError("history store is closed")
            leftovers.append(op)
        if closer is not None:
            leftovers.append(closer)
        self._w_deliver(leftovers)

    def _w_connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            # Used by the Trio thread too (inline commits), never by both at once: see _conn_lock.
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB:d}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES:d}")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA temp_store = MEMORY")
            migrate(conn)
            conn.execute(RECONCILE_SQL)  # counters not written before a crash (see roomcounts)
            if self._inline:
                self._w_settle(conn, waiting=False)
        except BaseException:
            conn.close()
            raise
        return conn

    def _w_loop(self, conn: sqlite3.Connection) -> _Op[Any] | None:
        retention = self.retention_max_age_s > 0 or self.retention_max_count > 0
        next_check = time.monotonic() + self.retention_interval_s
        while True:
            timeout: float | None = None
            if retention:
                now = time.monotonic()
                if now >= next_check:
                    self._w_due, next_check = True, now + self.retention_interval_s
                    self._w_age_due = True
                if self._w_batches_since >= RETENTION_EVERY:
                    self._w_due = True
                if self._w_due and (self._queue.empty() or self._w_batches_since >= RETENTION_EVERY):
                    with self._w_turn(conn):
                        self._w_retention_step(conn)
                    continue
                timeout = max(0.0, next_check - now)
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            batch = [first]
            closer = first if first.kind == "close" else None
            while closer is None and len(batch) < MAX_BATCH:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(op)
                if op.kind == "close":
                    closer = op
            work = batch if closer is None else batch[:-1]
            # Checkpoint requests (from inline commits) only wake the thread; they are not part
            # of the transaction, but are delivered with the batch (the store counts them).
            ops = [op for op in work if op.kind != "checkpoint"]
            try:
                if work:
                    with self._w_turn(conn):
                        if ops:
                            self._w_execute(conn, ops)
                        if len(ops) < len(work):
                            self._w_checkpoint(conn)
            finally:
                if work:
                    self._w_deliver(work)
            if closer is not None:
                return closer

    @contextlib.contextmanager
    def _w_turn(self, conn: sqlite3.Connection) -> Iterator[None]:
        """The thread's use of the connection: exclusive; waits for a busy database, checkpoints.

        Between the thread's turns the connection is left ready for an inline commit (see
        :meth:`send_nowait`): it neither waits for another connection's write lock nor
        checkpoints on commit, so it never blocks the event loop for long.
        """
        with self._conn_lock:
            if not self._inline:
                yield
                return
            self._w_settle(conn, waiting=True)
            try:
                yield
            finally:
                self._w_settle(conn, waiting=False)

    def _w_settle(self, conn: sqlite3.Connection, *, waiting: bool) -> None:
        """``waiting``: the thread's own turn (busy timeout, automatic checkpoints); else neither."""
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000) if waiting else 0:d}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES if waiting else 0:d}")

    def _w_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Write the room counters, then copy the WAL into the database file (PASSIVE: no waiting)."""
        self._w_save_counters(conn)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            logger.exception("history checkpoint failed")
            return
        self.checkpoints += 1

    def _w_execute(
        self, conn: sqlite3.Connection, batch: list[_Op[Any]], *, begun: bool = False, write_counters: bool = True
    ) -> None:
        """Run ``batch`` in one transaction (``begun``: already open) and commit; errors go to the ops.

        ``write_counters``: bring the ``rooms`` table up to date with the room counters before each
        operation that reads it (``counts``) and at the end of a batch that wrote; inline commits
        leave that to the thread.
        The caller holds ``_conn_lock`` and completes the batch afterwards.
        """
        writes = any(op.kind == "write" for op in batch)
        try:
            with self._w_transaction(conn, None if begun else "BEGIN IMMEDIATE" if writes else "BEGIN"):
                alone = len(batch) == 1  # its own transaction: no savepoint needed to undo it alone
                for op in batch:
                    if op.kind == "counts" and write_counters:  # outside any savepoint
                        self._w_write_counters(conn)
                    self._w_run(conn, op, alone=alone)
                if write_counters and writes:
                    self._w_write_counters(conn)
            if writes:
                self.commits += 1
                self._w_batches_since += 1
        except Exception as exc:
            logger.exception("history transaction failed; failing its %d operations", len(batch))
            for op in batch:
                op.error, op.event = _storage_error(exc), _SKIP

    @contextlib.contextmanager
    def _w_transaction(self, conn: sqlite3.Connection, begin: str | None = "BEGIN IMMEDIATE") -> Iterator[None]:
        """Begin (unless ``begin`` is None: already open), then commit; on any error roll the
        transaction and the room counters it changed back, and re-raise."""
        if begin is not None:
            conn.execute(begin)
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._counters.end_transaction(committed=False)
            raise
        self._counters.end_transaction(committed=True)

    def _w_run(self, conn: sqlite3.Connection, op: _Op[Any], *, alone: bool = False) -> None:
        assert op.fn is not None
        write = op.kind == "write"
        if write and alone:
            try:
                op.value, op.event = op.fn(conn)
            except Exception as exc:
                conn.execute("ROLLBACK")  # the failed operation was the whole transaction
                self._counters.end_transaction(committed=False)
                conn.execute("BEGIN")  # so that the COMMIT that follows has one to end
                self._w_failed(op, exc)
                return
            self._counters.end_op(ok=True)
            return
        if write:
            conn.execute("SAVEPOINT op")
        try:
            op.value, op.event = op.fn(conn)
        except Exception as exc:
            if write:  # undo this operation only; the rest of the batch goes on
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            self._counters.end_op(ok=False)
            self._w_failed(op, exc)
            return
        self._counters.end_op(ok=True)
        if write:
            conn.execute("RELEASE op")

    @staticmethod
    def _w_failed(op: _Op[Any], exc: Exception) -> None:
        if isinstance(exc, sqlite3.Error):
            logger.error("history operation failed", exc_info=exc)
            op.error = _storage_error(exc)
        else:
            op.error = exc

    def _w_deliver(self, batch: list[_Op[Any]]) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # the Trio run ended without closing us
            self._token.run_sync_soon(self._delivered, batch)

    def _delivered(self, batch: list[_Op[Any]]) -> None:
        self._in_flight -= len(batch)
        self._complete(batch)

    def _complete(self, batch: list[_Op[Any]]) -> None:
        scope = self._completion_scope
        if scope is None:
            _complete(batch)
            return
        with scope:
            _complete(batch)

    # ------------------------------------------------------------------ writer thread: operations

    def _w_send(
        self,
        conn: sqlite3.Connection,
        room: str,
        user_id: str,
        body: str,
        attachments: list[Attachment],
        encoded: str,
        parent_id: str | None,
        client_msg_id: str | None,
    ) -> tuple[tuple[ChatMessage, bool], Any]:
        if client_msg_id is not None:
            row = conn.execute(
                "SELECT message_id FROM client_msgs WHERE user_id = ? AND room = ? AND client_msg_id = ?",
                (user_id, room, client_msg_id),
            ).fetchone()
            if row is not None:
                original = self._w_get(conn, row[0])
                if original is None:
                    raise SignalError("CONFLICT", "the message sent with this client_msg_id was deleted")
                return (original, False), _SKIP
        if parent_id is not None:
            row = conn.execute("SELECT room FROM messages WHERE id = ?", (parent_id,)).fetchone()
            if row is None or row[0] != room:
                raise SignalError("NOT_FOUND", f"parent message {parent_id!r} not found in room {room!r}")
        now = self._clock()
        created_at = iso_utc(now)
        counter = self._w_counter(conn, room)
        seq = counter[0] + 1
        for attempt in range(5):
            message_id = _new_id(now)
            try:
                conn.execute(
                    "INSERT INTO messages (id, room, seq, user_id, body, attachments, parent_id, created_at,"
                    " created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (message_id, room, seq, user_id, body, encoded, parent_id, created_at, now),
                )
                break
            except sqlite3.IntegrityError as exc:  # pragma: no cover - a 48-bit random id collided
                if attempt == 4 or "messages.id" not in str(exc):  # (room, seq) taken: never retry
                    raise
        if client_msg_id is not None:
            conn.execute(
                "INSERT INTO client_msgs (user_id, room, client_msg_id, message_id) VALUES (?, ?, ?, ?)",
                (user_id, room, client_msg_id, message_id),
            )
        counter[0], counter[1] = seq, counter[1] + 1
        if self._w_rooms is not None:
            self._w_rooms.add(room)
        message = ChatMessage(
            id=message_id, room=room, seq=seq, user_id=user_id, body=body, attachments=attachments,
            parent_id=parent_id, created_at=created_at, edited_at=None, deleted_at=None, redacted=False,
            reactions={},
        )
        return (message, True), message

    def _w_counter(self, conn: sqlite3.Connection, room: str) -> list[int]:
        """``[last_seq, count]`` of ``room`` for the running operation; change it in place."""
        return self._counters.get(room, lambda room: _w_load_counter(conn, room))

    def _w_save_counters(self, conn: sqlite3.Connection) -> None:
        """Write the room counters not in the ``rooms`` table yet, in a transaction of their own."""
        if not self._counters.pending:
            return
        try:
            with self._w_transaction(conn):
                self._w_write_counters(conn)
        except sqlite3.Error:  # they stay pending; the store reconciles them when it next opens
            logger.exception("writing the history room counters failed")

    def _w_write_counters(self, conn: sqlite3.Connection) -> None:
        """Write the room counters that the ``rooms`` table does not have yet (in a transaction)."""
        rows = self._counters.unwritten()
        if rows:
            conn.executemany(
                "INSERT INTO rooms (room, last_seq, count) VALUES (?, ?, ?) ON CONFLICT (room)"
                " DO UPDATE SET last_seq = excluded.last_seq, count = excluded.count",
                rows,
            )

    def _w_get(self, conn: sqlite3.Connection, message_id: str) -> ChatMessage | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return None
        reactions = self._w_reactions(conn, row[1], row[2], row[2])
        return _message(row, reactions.get(row[2], {}))

    def _w_reactions(
        self, conn: sqlite3.Connection, room: str, lo: int, hi: int
    ) -> dict[int, dict[str, list[str]]]:
        found: dict[int, dict[str, list[str]]] = {}
        for seq, reaction, user_id in conn.execute(
            "SELECT seq, reaction, user_id FROM reactions"
            " WHERE room = ? AND seq BETWEEN ? AND ? ORDER BY rowid",
            (room, lo, hi),
        ):
            found.setdefault(seq, {}).setdefault(reaction, []).append(user_id)
        return found

    def _w_page(
        self, conn: sqlite3.Connection, room: str, before: int | None, after: int | None, limit: int
    ) -> tuple[list[ChatMessage], bool]:
        select = f"SELECT {_COLUMNS} FROM messages WHERE room = ?"
        if after is not None:  # oldest first: after alone, or the oldest part of (after, before)
            if before is not None:
                rows = conn.execute(
                    f"{select} AND seq > ? AND seq < ? ORDER BY seq LIMIT ?", (room, after, before, limit + 1)
                ).fetchall()
            else:
                rows = conn.execute(
                    f"{select} AND seq > ? ORDER BY seq LIMIT ?", (room, after, limit + 1)
                ).fetchall()
            more = len(rows) > limit
            del rows[limit:]
        else:  # newest first, then reversed
            if before is not None:
                rows = conn.execute(
                    f"{select} AND seq < ? ORDER BY seq DESC LIMIT ?", (room, before, limit + 1)
                ).fetchall()
            else:
                rows = conn.execute(f"{select} ORDER BY seq DESC LIMIT ?", (room, limit + 1)).fetchall()
            more = len(rows) > limit
            del rows[limit:]
            rows.reverse()
        if not rows:
            return [], more
        reactions = self._w_reactions(conn, room, rows[0][2], rows[-1][2])
        return [_message(row, reactions.get(row[2], {})) for row in rows], more

    def _w_unread(self, conn: sqlite3.Connection, user_id: str, room: str) -> int:
        row = conn.execute(
            "SELECT seq FROM read_receipts WHERE user_id = ? AND room = ?", (user_id, room)
        ).fetchone()
        last = 0 if row is None else int(row[0])
        count = conn.execute(
            "SELECT count(*) FROM messages WHERE room = ? AND seq > ? AND deleted_at IS NULL", (room, last)
        ).fetchone()
        return int(count[0])

    # ------------------------------------------------------------------ writer thread: retention

    def _w_retention_step(self, conn: sqlite3.Connection) -> int:
        """One retention transaction; returns how many messages it removed (``_w_due``: more to do)."""
        self._w_batches_since = 0
        try:
            with self._w_transaction(conn):
                removed, self._w_due = self._w_expire(conn)
                self._counters.end_op(ok=True)
                self._w_write_counters(conn)
        except Exception:
            logger.exception("history retention failed")
            self._w_due, self._w_rooms, self._w_age_due = False, None, True
            return 0
        if removed:
            logger.debug("history retention removed %d messages", removed)
        return removed

    def _w_expire(self, conn: sqlite3.Connection) -> tuple[int, bool]:
        """Remove at most RETENTION_BATCH expired messages; returns (removed, more to do)."""
        budget = RETENTION_BATCH
        if self.retention_max_age_s > 0 and self._w_age_due:
            # Per room, oldest seq first, up to the first message that is not expired (no index on
            # created_ts: it would cost every insert a page; seq order is creation order).
            cutoff = self._clock() - self.retention_max_age_s
            expired = conn.execute(
                "SELECT room FROM rooms WHERE (SELECT created_ts FROM messages m"
                " WHERE m.room = rooms.room ORDER BY m.seq LIMIT 1) < ? ORDER BY room",
                (cutoff,),
            ).fetchall()
            for (room,) in expired:
                rows = []
                for seq, created_ts in conn.execute(
                    "SELECT seq, created_ts FROM messages WHERE room = ? ORDER BY seq LIMIT ?", (room, budget)
                ):
                    if created_ts >= cutoff:
                        break
                    rows.append((room, seq))
                self._w_remove(conn, rows)
                budget -= len(rows)
                if budget == 0:
                    return RETENTION_BATCH, True
            self._w_age_due = False
        if self.retention_max_count > 0:
            keep = self.retention_max_count
            if self._w_rooms is None:
                rows = conn.execute("SELECT room FROM rooms WHERE count > ?", (keep,)).fetchall()
                candidates = {row[0] for row in rows} | self._counters.changed()  # rows may be behind
                self._w_rooms = set()
            else:
                candidates = set(self._w_rooms)
                self._w_rooms.clear()
            over = []
            for room in sorted(candidates):
                count = self._w_counter(conn, room)[1]
                if count > keep:
                    over.append((room, count))
            for room, count in over:
                n = min(count - keep, budget)
                if n > 0:
                    rows = conn.execute(
                        "SELECT room, seq FROM messages WHERE room = ? ORDER BY seq LIMIT ?", (room, n)
                    ).fetchall()
                    self._w_remove(conn, rows)
                    budget -= len(rows)
                if count - n > keep:
                    self._w_rooms.add(room)  # not done with this room yet
            if self._w_rooms:
                return RETENTION_BATCH - budget, True
        return RETENTION_BATCH - budget, False

    def _w_remove(self, conn: sqlite3.Connection, rows: list[tuple[str, int]]) -> None:
        if not rows:
            return
        conn.executemany(
            "DELETE FROM client_msgs WHERE message_id = (SELECT id FROM messages WHERE room = ? AND seq = ?)",
            rows,
        )
        conn.executemany("DELETE FROM reactions WHERE room = ? AND seq = ?", rows)
        conn.executemany("DELETE FROM messages WHERE room = ? AND seq = ?", rows)
        for room, _seq in rows:
            self._w_counter(conn, room)[1] -= 1


def _w_load_counter(conn: sqlite3.Connection, room: str) -> tuple[int, int]:
    """A room's ``(last_seq, count)`` from its ``rooms`` row, which is created if missing.

    The row is up to date when it is read: a room's counters are read only while they are not in
    memory, which they leave only once written (see roomcounts), and after a crash the store
    reconciled the table when it opened.
    """
    row = conn.execute("SELECT last_seq, count FROM rooms WHERE room = ?", (room,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO rooms (room, last_seq, count) VALUES (?, 0, 0)", (room,))
        return 0, 0
    return int(row[0]), int(row[1])


class _NewTurn(trio.abc.Instrument):
    """Allows the store's next inline commit once per turn of the Trio loop.

    Each turn polls for I/O before it runs the tasks that became runnable; a task woken by I/O
    therefore never shares a turn with the inline commit that came before it, whatever order the
    tasks of a turn run in. Trio calls only the hooks an instrument defines: this costs one call
    per turn.
    """

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    def after_io_wait(self, timeout: float) -> None:
        self.store._inline_spent = False


def _complete(batch: list[_Op[Any]]) -> None:
    """In the Trio thread: in commit order, each op's on_commit callback, then its completion."""
    for op in batch:
        if op.error is None and op.on_commit is not None and op.event is not _SKIP:
            try:
                op.on_commit(op.event)
            except Exception:
                logger.exception("history on_commit callback failed")
        then = op.then
        if then is None:
            op.done.set()
            continue
        try:
            then(op.value, op.error)
        except Exception:
            logger.exception("history completion callback failed")
