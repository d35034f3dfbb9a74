"""Room feeds: a busy room's ``member.joined``/``member.left`` events, sent to its members in batches.

Why: in a reconnect storm every rejoin is a user's first device in, so every member of the room
gets a ``member.joined``. N clients coming back into rooms of M cost N*M deliveries and, one at
a time, as many socket writes: at 19,000 clients in rooms of 380 that is 7 million writes, most of
a storm's time. A :class:`RoomFeed` keeps a room's member events (each encoded once) and later
hands every member its share in one piece: per event one append, per flush one write per member.

The rules (``docs/protocol.md``, "Member events in busy rooms"):

- a quiet room's event leaves at the end of the scheduler pass, as any event does;
- after a flush, the room's next member events wait until :func:`interval_for` the room's size has
  passed since it (50 ms for 5 members, 1 s for 100 or more) and then leave together, each still
  its own message, in order;
- a connection gets exactly the events it was a recipient of (a joiner does not get events from
  before its join, whose member list already holds them; a leaver gets those from before it left);
- any other frame for a connection first takes that connection's waiting share: what a connection
  receives is in the order it would have been without the feed.

Without :meth:`RoomFeeds.run` running (a hub that is not serving) events are delivered at once.
"""

from __future__ import annotations

import math
from typing import Final

import trio

from signald.delivery.broker import Broker
from signald.delivery.cork import Cork
from signald.delivery.frames import Frame
from signald.delivery.outbox import Outbox

# A busy room's member events leave at most every interval_for(members) seconds: each flush is
# a write per member, so a room's flushes cost at most about WRITES_PER_S writes a second.
WRITES_PER_S: Final = 100
MIN_INTERVAL_S: Final = 0.05
MAX_INTERVAL_S: Final = 1.0


def interval_for(members: int) -> float:
    """How long a busy room with ``members`` local recipients holds its member events."""
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, members / WRITES_PER_S))


class RoomFeed:
    """One room's member events not yet sent, and who gets which of them.

    ``readers`` maps each local recipient's outbox to the index of its first frame in ``frames``;
    ``conns`` are the recipients of the latest event (to see who joined or left since); ``order``
    numbers each frame across all rooms, so a connection in several busy rooms gets their frames
    in the order they were published. A reader that took its share early (:meth:`give`) stops
    being checked on each of its pushes (``Outbox.reading``) until the feed has a new frame:
    ``caught_up`` lists them.
    """

    __slots__ = ("_shares", "_shares_end", "caught_up", "conns", "due", "flushed_at", "frames", "order", "readers",
                 "room")

    def __init__(self, room: str) -> None:
        self.room = room
        self.frames: list[Frame] = []
        self.order: list[int] = []
        self.readers: dict[Outbox, int] = {}
        self.caught_up: set[Outbox] = set()
        self.conns: frozenset[str] = frozenset()
        self.due = 0.0
        self.flushed_at = -math.inf
        # The bytes of frames[start:] by (start, binary), for the frames as they are now: every reader
        # that came before the feed's first event has the same share, so a live message in a busy room
        # (each recipient takes its share first) joins it once, not once per member.
        self._shares: dict[tuple[int, bool], bytes] = {}
        self._shares_end = 0

    def give(self, outbox: Outbox) -> None:
        """Hand ``outbox`` its waiting share now (it has another frame to send behind it), with its
        shares of the other feeds it reads, in publication order."""
        reading = outbox.reading
        if not reading or (len(reading) == 1 and reading[0] is self):  # one busy room: its share as it is
            outbox.reading = None  # (before the push below, which would look at the feeds again)
            start, end = self.readers.get(outbox), len(self.frames)
            if start is None:
                return
            self.caught_up.add(outbox)
            if start < end:
                self.readers[outbox] = end
                outbox.push_batch(self.share(start, outbox.binary))
            return
        pending: list[tuple[int, Frame]] = []
        for feed in reading:
            assert isinstance(feed, RoomFeed)
            start, end = feed.readers.get(outbox), len(feed.frames)
            if start is None:
                continue
            if start < end:
                pending += zip(feed.order[start:], feed.frames[start:], strict=True)
                feed.readers[outbox] = end
            feed.caught_up.add(outbox)
        outbox.reading = None  # nothing waits for it any more: its pushes skip the feeds
        if pending:
            pending.sort(key=lambda item: item[0])
            binary = outbox.binary
            outbox.push_batch(b"".join(f.wire_binary if binary else f.wire_text for _, f in pending))

    def share(self, start: int, binary: bool) -> bytes:
        """``frames[start:]`` as one piece, in the reader's format; joined once per start and format."""
        end = len(self.frames)
        if self._shares_end != end:
            self._shares.clear()
            self._shares_end = end
        data = self._shares.get((start, binary))
        if data is None:
            data = self._shares[start, binary] = b"".join(
                f.wire_binary if binary else f.wire_text for f in self.frames[start:])
        return data

    def flush(self, now: float) -> None:
        """Every reader gets its share; the feed is empty after."""
        end = len(self.frames)
        for outbox, start in self.readers.items():
            if start >= end:
                outbox.stop_reading(self)
                continue
            if outbox.reading is not None and len(outbox.reading) > 1:  # in several busy rooms
                self.give(outbox)  # (which takes it off every feed's waiting list)
                continue
            outbox.stop_reading(self)
            outbox.push_batch(self.share(start, outbox.binary))
        self.frames, self.order, self.readers, self.conns = [], [], {}, frozenset()
        self.caught_up.clear()
        self._shares.clear()
        self.flushed_at = now


class RoomFeeds:
    """The room feeds of one hub and the task that flushes them (:meth:`run`).

    ``broker`` finds a local connection's outbox (None for one on another node or gone) and
    delivers at once while :meth:`run` is not running; ``cork`` is held around each flush, so a
    connection gets all rooms' shares in one write.
    """

    def __init__(self, broker: Broker, cork: Cork) -> None:
        self.broker = broker
        self.outbox_of = broker.outbox
        self.cork = cork
        self._feeds: dict[str, RoomFeed] = {}  # rooms with waiting events or flushed within MAX_INTERVAL_S
        self._pending: dict[str, RoomFeed] = {}
        self._running = False
        self._task: trio.lowlevel.Task | None = None  # run(), parked
        self._wake_at = math.inf  # when the parked run() wakes by itself
        self._published = 0  # frames published so far: each one's place in the order

    def publish(self, room: str, conns: frozenset[str], frame: Frame) -> int:
        """``frame`` goes to ``conns`` (every connection in ``room``, as of now); returns how many are local."""
        if not self._running:
            return self.broker.deliver(conns, frame)
        feed = self._feeds.get(room)
        if feed is None:
            feed = self._feeds[room] = RoomFeed(room)
        if not feed.frames:
            self._open(feed, conns, frame)
        elif conns != feed.conns:
            self._recipients_changed(feed, conns)
        feed.conns = conns
        feed.frames.append(frame)
        if feed.caught_up:  # readers that took their share early: this frame waits for them again
            for outbox in feed.caught_up:
                if outbox in feed.readers:
                    outbox.start_reading(feed)
            feed.caught_up.clear()
        self._published += 1
        feed.order.append(self._published)
        return len(feed.readers)

    def entered(self, room: str, conn: str) -> None:
        """``conn`` joined ``room`` (again): it has the member list, so no waiting event is its own."""
        feed = self._pending.get(room)
        outbox = self.outbox_of(conn)
        if feed is not None and outbox is not None and outbox in feed.readers:
            feed.readers[outbox] = len(feed.frames)

    def _open(self, feed: RoomFeed, conns: frozenset[str], frame: Frame) -> None:
        """The room's first waiting event: its recipients become the readers."""
        readers = feed.readers
        for conn in conns:
            outbox = self.outbox_of(conn)
            if outbox is not None and not outbox.closed:
                readers[outbox] = 0
                outbox.start_reading(feed)
        now = trio.current_time()
        feed.due = max(now, feed.flushed_at + interval_for(len(readers)))
        self._pending[feed.room] = feed
        if feed.due < self._wake_at and self._task is not None:
            task, self._task = self._task, None
            trio.lowlevel.reschedule(task)

    def _recipients_changed(self, feed: RoomFeed, conns: frozenset[str]) -> None:
        """Since the previous event some connections joined (they read from here) or left (their
        share goes now: they were recipients of everything before)."""
        end = len(feed.frames)
        for conn in feed.conns - conns:
            outbox = self.outbox_of(conn)
            if outbox is not None and outbox in feed.readers:
                feed.give(outbox)  # (which takes it off every feed's waiting list)
                del feed.readers[outbox]
        for conn in conns - feed.conns:
            outbox = self.outbox_of(conn)
            if outbox is not None and not outbox.closed and outbox not in feed.readers:
                feed.readers[outbox] = end
                outbox.start_reading(feed)

    def flush_due(self, now: float) -> None:
        """Flush the feeds whose time has come (all of them once ``now`` is infinite)."""
        due = [feed for feed in self._pending.values() if feed.due <= now]
        if not due:
            return
        with self.cork:
            for feed in due:
                del self._pending[feed.room]
                feed.flush(min(now, trio.current_time()))
        horizon = trio.current_time() - MAX_INTERVAL_S
        if len(self._feeds) > 2 * len(self._pending) + 64:  # forget rooms quiet for a while
            self._feeds = {room: feed for room, feed in self._feeds.items()
                           if room in self._pending or feed.flushed_at > horizon}

    async def run(self) -> None:
        """Flush each feed when it is due; everything waiting goes on the way out."""
        self._running = True
        try:
            while True:
                now = trio.current_time()
                self.flush_due(now)
                self._wake_at = min((feed.due for feed in self._pending.values()), default=math.inf)
                if self._wake_at > now:
                    with trio.move_on_at(self._wake_at):
                        await self._park()
                else:  # published during the flush: next pass
                    await trio.lowlevel.checkpoint()
                self._wake_at = math.inf
        finally:
            self._running = False
            self._task = None
            self.flush_due(math.inf)

    async def _park(self) -> None:
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
