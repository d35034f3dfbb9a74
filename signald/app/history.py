"""What the app adds around the history store: room events, join enrichment, last seen.

These are effects of the app, not of one request type, so they live here rather than in a
handler module: the hub runs the last-seen flusher, the chat handlers and the call log announce
what the store committed through :meth:`HistoryService.announce`, and ``room.join`` reads its
rejoin data with :meth:`HistoryService.capturing` around the read.

Joining a room with history
    The join takes effect where the rejoin read sits in the store's commit order: the ack's
    ``rev`` is the room's revision there, ``missed`` and ``changes`` are read there, and the joiner
    gets live exactly the changes above that revision, never one the ack reported. While the read
    is under way the connection is not a member yet: nobody is told of a join that may still
    fail, and what the store commits for the room meanwhile is kept for the joiner
    (:meth:`capturing`). Once the read is back the handler joins and :meth:`replay` delivers what
    was kept and committed after the read (a higher ``rev``; read receipts, which have none, all).

A store that does not answer
    A request waits for the store at most ``history.request_timeout_s`` (below the heartbeat's
    ``heartbeat_s`` + ``heartbeat_timeout_s``, so that a reader waiting on a hung store is back to
    reading before its healthy client is taken for dead), then gets ``INTERNAL``. An awaited call
    is bounded by :meth:`answered` (one cancel scope around the wait; the store's operation is not
    cancelled, its result is dropped). Once a connection's request timed out, those of its requests
    that were read before that (they waited behind it) and need the store fail at once: requests
    sent together (a client rejoining its rooms after a reconnect) would otherwise hold its reader
    ``request_timeout_s`` each, one after the other, and the heartbeat would give up on it all the
    same. What it reads next is tried again.

    A ``chat.send`` is not awaited (its ack follows the commit): :meth:`watch` keeps those not
    acked when ``send_nowait`` returned, oldest first, and :meth:`run` answers the ones still
    unacked at their deadline (a late commit then sends nothing: a deferred reply is sent once).
    One task for the daemon, no timer per send; it wakes every :data:`PRUNE_S` while sends are
    watched, to drop those acked meanwhile.

Last seen
    Presence keeps last-seen times in memory (capped for offline users); every
    ``LAST_SEEN_FLUSH_S`` the changed ones are written to the store, except those of the guest ids
    auth mode ``none`` makes up for anonymous connections (one per connection, never seen again:
    persisting them would grow the table without bound). :meth:`last_seen` reads back what memory
    no longer (or not yet, after a restart) holds. A flush the store fails (it is down) is logged
    and its times are written by the next one; the one at shutdown is then lost, logged.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol, TypeVar

import attrs
import trio

from signald.delivery.frames import Frame
from signald.errors import SignalError
from signald.history.contract import ChatStore, Rejoin, StorageError
from signald.protocol import HistoryPage, Outbound, RoomJoinResult
from signald.state.presence import PresenceTracker
from signald.state.rooms import RoomRegistry
from signald.timefmt import epoch_of, iso_utc

__all__ = ["DEFAULT_PAGE_LIMIT", "LAST_SEEN_FLUSH_S", "HistoryService", "is_guest"]

logger = logging.getLogger(__name__)

LAST_SEEN_FLUSH_S: Final = 30.0
LAST_SEEN_AT_CLOSE_S: Final = 2.0
"""The longest a stopping daemon waits for its last flush of last-seen times."""
DEFAULT_PAGE_LIMIT: Final = 50  # a page without limit: 50, or history_page_max if that is lower
PRUNE_S: Final = 0.5
"""While sends are watched, how often the ones acked meanwhile are dropped from the watch."""
MAY_BE_DONE: Final = "; the change may still be made"
MAY_BE_STORED: Final = "; the message may still be stored: send it again with the same client_msg_id"
MAY_BE_PUBLISHED: Final = "; the event may still be stored and delivered"
GUEST_ID: Final = re.compile(r"guest-[0-9a-f]{8}")  # what auth mode none gives a connection without ?user=

T = TypeVar("T")


class Unanswered(Protocol):
    """A reply still to send (:class:`signald.app.context.DeferredReply`): ``sent`` once answered."""

    @property
    def sent(self) -> bool: ...

    def failed(self, exc: BaseException) -> None: ...


class Waiter(Protocol):
    """The connection a request came on (:class:`signald.app.session.Session`)."""

    store_late_at: float

    def heard_at(self) -> float: ...


Deliver = Callable[[Iterable[str], Outbound | Frame], int]
Forward = Callable[[str, Frame, "str | None"], None]  # Replica.history_event


def is_guest(user_id: str) -> bool:
    """Whether ``user_id`` has the shape of an anonymous guest id of auth mode ``none``."""
    return GUEST_ID.fullmatch(user_id) is not None


@attrs.define(eq=False)
class HistoryService:
    """The app's view of the history store: room events, rejoin data and last-seen persistence.

    ``deliver`` is the hub's ``send_to`` (encode once, queue for each connection). With
    ``skip_guests`` (auth mode ``none``) guest ids' last-seen times stay in memory only.
    """

    store: ChatStore
    _presence: PresenceTracker
    _rooms: RoomRegistry
    _deliver: Deliver
    _page_max: int = attrs.field(kw_only=True)
    _skip_guests: bool = attrs.field(default=False, kw_only=True)
    # With several nodes: hands each announced change to the other nodes (signald.app.replica).
    _forward: Forward | None = attrs.field(default=None, kw_only=True)
    # room -> joining conn -> events kept for it while its join reads history
    _joining: dict[str, dict[str, list[Frame]]] = attrs.field(init=False, factory=dict)
    request_timeout_s: float = attrs.field(default=10.0, kw_only=True)
    # (perf_counter at the send, its reply by weak reference: an acked one, freed, keeps no session alive)
    _watched: deque[tuple[float, weakref.ref[Unanswered]]] = attrs.field(init=False, factory=deque)
    _watching: trio.Event = attrs.field(init=False, factory=trio.Event)  # set once a send is watched

    # ------------------------------------------------------------------ a store that does not answer

    def too_late(self, then: str = "") -> SignalError:
        """The ``INTERNAL`` error of a request the store did not answer in time (``then``: what may still happen)."""
        return SignalError("INTERNAL", f"the history store did not answer within {self.request_timeout_s:g} s{then}")

    async def answered(self, call: Coroutine[Any, Any, T], then: str = "", by: Waiter | None = None) -> T:
        """``await call``, at most ``request_timeout_s``; then ``INTERNAL`` (``then`` says what may still
        happen). For a request of connection ``by``: at once if it was read before one of ``by``'s
        requests timed out (it waited behind it: a reader is never held up more than once in a row)."""
        if by is not None and by.store_late_at >= by.heard_at():
            call.close()
            raise self.too_late(then)
        with trio.move_on_after(self.request_timeout_s):
            return await call
        if by is not None:
            by.store_late_at = trio.current_time()
        raise self.too_late(then)

    def watch(self, started: float, reply: Unanswered) -> None:
        """Answer ``reply`` (a send, made at ``time.perf_counter()`` ``started``) with ``INTERNAL``
        unless it is sent within ``request_timeout_s``."""
        self._watched.append((started, weakref.ref(reply)))
        self._watching.set()

    async def run(self) -> None:
        """The app's history tasks: the last-seen flusher and the sends' deadline."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run_last_seen_flusher)
            nursery.start_soon(self._answer_late_sends)

    async def _answer_late_sends(self) -> None:
        watched, limit = self._watched, self.request_timeout_s
        while True:
            while watched and ((reply := watched[0][1]()) is None or reply.sent):
                watched.popleft()
            if not watched:
                self._watching = trio.Event()
                await self._watching.wait()
                continue
            started, ref = watched[0]
            left = started + limit - time.perf_counter()
            if left > 0:
                del reply  # not kept while asleep
                await trio.sleep(min(left, PRUNE_S))
                continue
            watched.popleft()
            if (reply := ref()) is not None:
                reply.failed(self.too_late(MAY_BE_STORED))

    # ------------------------------------------------------------------ room events

    def announce(self, room: str, event: Outbound | Frame, exclude: str | None = None) -> None:
        """Deliver an event the store committed for ``room`` to its connections but ``exclude``.

        Called from ``on_commit`` callbacks, so in commit order. With several nodes the replica
        takes it instead: it goes to the other nodes, and comes back to :meth:`deliver_now` in the
        room's ``rev`` order across nodes.
        """
        frame = event if isinstance(event, Frame) else Frame(event)
        if self._forward is not None:
            self._forward(room, frame, exclude)
        else:
            self.deliver_now(room, frame, exclude)

    def deliver_now(self, room: str, frame: Frame, exclude: str | None) -> None:
        """Deliver a committed change to ``room``'s connections but ``exclude``; a connection whose
        join is reading history keeps it for :meth:`replay`."""
        conns = self._rooms.conns_in(room)
        self._deliver(conns - {exclude} if exclude is not None else conns, frame)
        if self._joining:
            joiners = self._joining.get(room)
            if joiners:
                for kept in joiners.values():
                    kept.append(frame)

    @contextmanager
    def capturing(self, room: str, conn: str) -> Iterator[list[Frame]]:
        """Keep what is announced to ``room`` for ``conn`` (not yet a member) inside the block."""
        joiners = self._joining.setdefault(room, {})
        kept: list[Frame] = []
        joiners[conn] = kept
        try:
            yield kept
        finally:
            del joiners[conn]
            if not joiners:
                del self._joining[room]

    def joining(self, room: str) -> list[str]:
        """The connections whose join of ``room`` is reading history now (not members yet)."""
        return list(self._joining.get(room, ()))

    def replay(self, conn: str, kept: list[Frame], rejoin: Rejoin) -> None:
        """Deliver to a fresh member what was committed for its room after its join's read."""
        for frame in kept:
            rev = getattr(getattr(frame.message, "data", None), "rev", None)  # every chat.* change event has one
            if rev is None or rev > rejoin.rev:
                self._deliver((conn,), frame)

    # ------------------------------------------------------------------ pages (chat.history, the server API)

    def page_limit(self, limit: int | None, where: str = "$.data.limit") -> int:
        """A page's ``limit``: the default when None, ``INVALID_PAYLOAD`` (naming ``where``) above
        ``history_page_max``."""
        if limit is None:
            return min(DEFAULT_PAGE_LIMIT, self._page_max)
        if limit > self._page_max:
            raise SignalError("INVALID_PAYLOAD", f"`{where}` must be at most history_page_max ({self._page_max})")
        return limit

    async def page(self, room: str, before: int | None, after: int | None, limit: int | None,
                   where: str = "$.data.limit", by: Waiter | None = None) -> HistoryPage:
        """One history page of ``room``, as ``chat.history`` and ``GET /api/v1/history`` answer it."""
        count = self.page_limit(limit, where)
        if before is not None and after is not None and before <= after + 1:
            return HistoryPage(messages=[], has_more=False)  # an empty interval: no read needed
        return await self.answered(self.store.history(room=room, before=before, after=after, limit=count), by=by)

    # ------------------------------------------------------------------ room.join

    async def rejoin(self, user_id: str, room: str, since: int | None, since_rev: int | None,
                     by: Waiter | None = None) -> Rejoin:
        """``unread``, ``rev`` and, with ``since``/``since_rev``, what was missed (at most
        ``history_page_max`` of each)."""
        return await self.answered(self.store.rejoin(user_id=user_id, room=room, since=since, since_rev=since_rev,
                                                     limit=self._page_max), by=by)

    @staticmethod
    def fill_join_result(result: RoomJoinResult, rejoin: Rejoin) -> None:
        """Add ``unread``, ``rev`` and what the join asked to recover to a join ack."""
        result.unread, result.rev = rejoin.unread, rejoin.rev
        result.missed, result.missed_truncated = rejoin.missed, rejoin.truncated
        if rejoin.changes_reset:
            result.changes_reset = True
        else:
            result.changes, result.changes_truncated = rejoin.changes, rejoin.changes_truncated

    # ------------------------------------------------------------------ last seen

    async def last_seen(self, user_ids: Iterable[str]) -> dict[str, float]:
        """Last-seen times (wall-clock epoch seconds) of those of ``user_ids`` that have one.

        From memory first; the others are read from the store and kept in presence's map, whose
        cap bounds what reading back can add to memory.
        """
        presence = self._presence
        found: dict[str, float] = {}
        ask: list[str] = []
        for user in dict.fromkeys(user_ids):
            seen = presence.last_seen(user)
            if seen is None:
                ask.append(user)
            else:
                found[user] = seen
        if ask:
            stored = {user: epoch_of(at) for user, at in (await self.answered(self.store.last_seen(ask))).items()}
            presence.load_last_seen(stored)
            for user, at in stored.items():
                fresher = presence.last_seen(user)  # activity while the store was read wins
                found[user] = at if fresher is None else fresher
        return found

    async def flush_last_seen(self) -> None:
        changed = self._presence.drain_last_seen()
        as_text = functools.cache(iso_utc)  # a stopping server's users all left at one time: formatted once
        entries = {user: as_text(when) for user, when in changed.items() if not (self._skip_guests and is_guest(user))}
        if entries:
            try:
                await self.store.set_last_seen(entries)
            except StorageError as exc:  # the store is down: the next flush writes them
                logger.error("last-seen times not written (%d users, kept for the next flush): %s",
                             len(entries), exc.message)
                self._presence.undrain_last_seen(changed)

    async def flush_last_seen_at_close(self) -> None:
        """The last flush of a stopping daemon: shielded, but bounded (a hung store would hold the
        stop up for ever)."""
        with trio.move_on_after(LAST_SEEN_AT_CLOSE_S, shield=True) as flushing:
            await self.flush_last_seen()
        if flushing.cancelled_caught:
            logger.error("last-seen times not written: the history store did not answer within %g s",
                         LAST_SEEN_AT_CLOSE_S)

    async def run_last_seen_flusher(self) -> None:
        """Persist last-seen times every ``LAST_SEEN_FLUSH_S`` seconds."""
        while True:
            await trio.sleep(LAST_SEEN_FLUSH_S)
            await self.flush_last_seen()
