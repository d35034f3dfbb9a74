"""Back on the broker after an outage: what a node says again, and whom it asks to resume.

Redis may have restarted empty, and whatever was published while a node was off it is lost to that
node. So once the pub/sub hears the state channel again (or a heartbeat finds the node taken out of
``nodes``), :meth:`Resync.run` writes the node's records back, announces its own devices, rooms and
chosen statuses again (:func:`announcement`: ops the others apply only where they lack them),
reloads everyone else's, and closes with 1012 (service restart) the local connections of every
room whose store moved past what the node delivered and does not catch up within a moment
(:func:`close_rooms_behind`): their clients reconnect and resume exactly with ``since_rev``.
Asked for again while it runs (Redis failed once more, and may have lost what it wrote), it runs
once more when it ends; one that fails on the broker while the pub/sub stays up (a command timed
out: nothing else would ask again) is tried again, with backoff, until it completes.
If the history store fails to say which rooms those are (the node's own link to it is down), that
check is tried again, with backoff, until the store answers: nothing will publish those changes
again, so until then the rooms' clients here go without them.
When the pub/sub was away only because signald's slot moved on a Redis Cluster (Redis lost
nothing; the node missed what was published between the old owner unsubscribing it and its
subscribing on the new one), what its rooms missed is delivered from the store at once instead
(:func:`signald.cluster.gaps.fill_now`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import trio

from signald.app.hub import Hub
from signald.app.replica import Connect, Join, Kick, Op, Resynced, SetStatus
from signald.cluster.catchup import CatchUp
from signald.cluster.channels import Subscriptions
from signald.cluster.nodes import NodeTable
from signald.cluster.order import RoomOrder
from signald.cluster.records import NodeRecords
from signald.cluster.writer import Writer

log = logging.getLogger("signald.cluster")

CLOSE_SERVICE_RESTART: Final = 1012  # RFC 6455 (IANA): clients reconnect with backoff
RETRY_S: Final = (0.5, 5.0)  # first and longest wait between tries of a resync or store check that failed
LOG_EVERY_S: Final = 10.0  # a resync or store check failing again: at most one line this often

class _Tries:
    """The failed tries of one retry loop: counted, and told in a warning at most every
    :data:`LOG_EVERY_S` (a broker or store down for an hour: one line a while)."""

    def __init__(self, logged: float) -> None:
        self.failed, self._logged = 0, logged

    def failed_again(self, exc: Exception, message: str) -> None:
        """One more failed try; ``message`` takes the count and the error (``%d``, ``%s``)."""
        self.failed += 1
        if trio.current_time() - self._logged >= LOG_EVERY_S:
            self._logged = trio.current_time()
            log.warning(message, self.failed, exc or type(exc).__name__)


# (room, rev, delivered): returns once ``rev`` was delivered here, or when it stops waiting
CatchUpWait = Callable[[str, int, "int | None"], Awaitable[None]]


def announcement(hub: Hub, stamp: Callable[[str], tuple[float, str]]) -> list[Op]:
    """This node's devices, their rooms and its users' chosen statuses (each with ``stamp(user)``:
    the stamp of the one applied last, signald.cluster.stamps), as ops."""
    ops: list[Op] = []
    for conn, session in hub.sessions.items():
        ops.append(Connect(conn, session.user_id))
        ops.extend(Join(conn, session.user_id, room) for room in sorted(hub.rooms.rooms_of(conn)))
    ops.extend(SetStatus("", user, hub.presence.chosen_status(user), *stamp(user)) for user in hub.sessions_by_user)
    return ops


async def close_rooms_behind(hub: Hub, rooms: Iterable[str], delivered: Callable[[str], int | None],
                             catch_up: CatchUpWait | None = None,
                             fill: Callable[[str], Awaitable[bool]] | None = None) -> int:
    """Close (1012) this node's connections in each of ``rooms`` whose stored revision is past the
    ``delivered`` one; returns how many were closed.

    A room can be behind only for a moment: a change committed here or on another node just before
    the resync, still on its way (being published, or held back for its order). So each room behind
    is first given ``catch_up`` (:meth:`signald.cluster.catchup.CatchUp.until`: up to
    :data:`~signald.cluster.catchup.WAIT_S`, all rooms at once), and only those still behind after
    it, whose changes were lost with the broker, are closed. A room whose changes were cut by
    retention (``changes_reset``) is closed at once. ``fill`` (the pub/sub was away only while
    signald's slot moved: :func:`signald.cluster.gaps.fill_now`) delivers a room's missed changes
    from the store at once instead; a room it cannot fill waits and may be closed as above.
    """
    if hub.history is None:
        return 0
    behind: dict[str, int] = {}
    reset: set[str] = set()
    for room in sorted(rooms):
        last = delivered(room)
        if last is None:  # nothing delivered here yet: nothing this node could have missed
            continue
        page = await hub.history.store.changes(room=room, after_rev=last, limit=1)
        if page.changes_reset:
            reset.add(room)
        elif page.rev > last:
            behind[room] = page.rev
    async def settle(room: str, rev: int) -> None:
        if fill is not None and await fill(room):
            return
        if catch_up is not None:
            await catch_up(room, rev, delivered(room))

    if behind and (catch_up is not None or fill is not None):
        async with trio.open_nursery() as nursery:
            for room, rev in behind.items():
                nursery.start_soon(settle, room, rev)
    closed = 0
    for room in sorted(reset | {room for room, rev in behind.items() if (delivered(room) or 0) < rev}):
        closed += close_to_resume(hub, hub.rooms.conns_in(room), "room events were missed while the broker was away")
    return closed


def close_to_resume(hub: Hub, conns: Iterable[str], why: str) -> int:
    """Close (1012) those of ``conns`` still open here, saying ``why`` and to resume; returns how many."""
    closed = 0
    for conn in sorted(conns):
        session = hub.sessions.get(conn)
        if session is not None and not session.detached:
            session.close(CLOSE_SERVICE_RESTART, f"{why}: resume")
            closed += 1
    return closed


class Resync:
    """The resynchronisation after a broker outage (:meth:`run`), one at a time: a reconnect and a
    heartbeat that found the node taken out can both ask for it. Asked again while it runs (Redis
    may have restarted once more and lost what it wrote), it runs once more when it ends."""

    def __init__(self, hub: Hub, records: NodeRecords, writer: Writer, nodes: NodeTable, channels: Subscriptions,
                 order: RoomOrder, catch_up: CatchUp, *, beat: Callable[[], Awaitable[None]],
                 down: Callable[[BaseException], None], spawn: Callable[[Callable[[], Awaitable[None]]], None],
                 moved_only: Callable[[], bool] = lambda: False,
                 fill: Callable[[str], Awaitable[bool]] | None = None,
                 again: Callable[[], list[Op]] = list,
                 stamp: Callable[[str], tuple[float, str]] = lambda user: (0.0, "")) -> None:
        """``spawn``: start a task where the replica runs its own (nowhere before it runs);
        ``moved_only``: whether every pub/sub connection lost since it was last asked went because
        signald's slot moved (Redis lost nothing: only this node missed the moment between two
        owners), and then ``fill`` delivers a room's missed changes from the store at once;
        ``again``: the call transitions and kicks to tell again (:class:`signald.cluster.kept.KeptOps`);
        ``stamp``: the stamp to announce a user's status again with (signald.cluster.stamps)."""
        self.hub, self.records, self.writer, self.nodes, self.channels = hub, records, writer, nodes, channels
        self.order, self.catch_up, self._beat, self._down = order, catch_up, beat, down
        self._spawn, self._moved_only, self._fill, self._again = spawn, moved_only, fill, again
        self._stamp = stamp
        self._heard_state_once = False
        self._running = False
        self._asked = trio.Event()  # set by each request; the run under way starts over once it ends
        self._beating = False  # the resync's own heartbeat is being written
        self._retrying: trio.CancelScope | None = None  # the store check tried again after a resync

    def subscribed(self, channel: str) -> None:
        """The pub/sub subscribed to ``channel``: the state channel heard again after a reconnect
        starts :meth:`run`."""
        if channel == self.records.names.state:
            if self._heard_state_once:
                self._spawn(self.run)  # a reconnect: the broker may have lost everything
            self._heard_state_once = True

    def taken_out(self) -> None:
        """A heartbeat found this node taken out of the cluster (the others took it for dead while
        it stalled, or Redis restarted empty): starts :meth:`run`, unless that heartbeat is the
        resync's own, which finds it so after every restart (it is what puts the node back)."""
        if not self._beating:
            log.warning("cluster: this node had been taken out of the cluster; announcing its devices again")
            self._spawn(self.run)

    async def run(self) -> None:
        """After a reconnect: records and ops again, everyone else's reloaded, rooms behind closed.

        Asked while a run is under way, it returns at once, and that run does it all once more when
        it ends (however often it was asked meanwhile). If the broker fails on the way (a command
        times out while the pub/sub stays up), it is tried again with backoff (:data:`RETRY_S`,
        jittered) until it completes, the node stops, or it is asked again (the pub/sub reconnected:
        at once). If the history store fails to say which rooms are behind, that check is tried
        again with backoff (:meth:`_until_checked`) until the store answers, the node stops, or a
        newer run that got as far as that check (it makes the same, with what is delivered by
        then) takes over."""
        self._asked.set()
        if self._running:
            return
        self._running = True
        try:
            fill, checked = await self._until_resynced()
        finally:
            self._running = False
        if not checked:  # (no checkpoint since: a newer run cannot have started before this scope exists)
            with trio.CancelScope() as self._retrying:
                await self._until_checked(fill)

    async def _until_resynced(self) -> tuple[Callable[[str], Awaitable[bool]] | None, bool]:
        """The broker's part (:meth:`_run`) until it succeeds with no request come meanwhile, then
        the first store check; the ``fill`` it used, and whether the store answered it."""
        moved_only, delay, tries = True, RETRY_S[0], _Tries(-LOG_EVERY_S)
        while True:
            if self._asked.is_set():  # (again): from the start, Redis may have lost what was written
                self._asked = trio.Event()
                moved_only = self._moved_only() and moved_only  # (asked every time: it starts over)
                delay = RETRY_S[0]
                self.nodes.grace()
            try:
                rooms = await self._run(self.hub, self.records)
            except Exception as exc:  # nothing else may ask again (the pub/sub can stay up): it tries again
                self._down(exc)
                tries.failed_again(exc, "cluster: the resync after the broker outage failed, so this node's records "
                                        "and its copy of the others' may be stale (trying again; %d tries failed): %s")
                with trio.move_on_after(delay * random.uniform(0.5, 1.0)):
                    await self._asked.wait()  # the pub/sub reconnected meanwhile: at once
                delay = min(2 * delay, RETRY_S[1])
                continue
            if self._asked.is_set():
                continue
            fill = self._fill if moved_only else None
            if self._retrying is not None:
                self._retrying.cancel()  # never two checks at once
            checked = await self._first_check(rooms, fill)
            if not self._asked.is_set():
                return fill, checked
            if checked:  # what the next check must make up for starts over
                moved_only = True

    def _rooms(self) -> list[str]:
        """The rooms this node hears."""
        return [name for kind, name in map(self.records.names.parse, self.channels.heard) if kind == "room"]

    async def _run(self, hub: Hub, records: NodeRecords) -> list[str]:
        """The broker's part; the rooms to check. Raises what the broker (or a step of it) raised."""
        # first what changed here while the writes were lost (closes, leaves), then the rest again;
        # the others are asked to tell their calls' and kicks' transitions again (this node may
        # have missed them)
        commands = [records.published(Resynced())] + records.shared(*await self.nodes.leftovers()) + (
            records.rewritten() + [records.published(op) for op in announcement(hub, self._stamp)])
        again = self._again()
        await self.writer.execute(commands, fresh=True)  # to the server the pub/sub found
        self._beating = True
        try:
            await self._beat()
        finally:
            self._beating = False
        await self.nodes.load(frozenset((op.room, op.user) for op in again if isinstance(op, Kick)))
        # this node's own only after the load: a kick told before it could reach the kicked
        # user's node (which then rewrites its records) while the load still reads the old ones
        if again:
            await self.writer.execute(records.shared(again))
        return self._rooms()

    async def _first_check(self, rooms: list[str], fill: Callable[[str], Awaitable[bool]] | None) -> bool:
        """The first try of :func:`close_rooms_behind` after a resync; False if the store failed."""
        try:
            closed = await close_rooms_behind(self.hub, rooms, self.order.last, self.catch_up.until, fill)
        except Exception as exc:  # the broker is back: this is the history store's failure, not Redis's
            log.warning("cluster: back on the broker, but the history store failed, so the rooms that missed "
                        "events could not be found and closed to resume yet (trying again): %s",
                        exc or type(exc).__name__)
            return False
        log.info("cluster: back on the broker; %d devices announced again, %d closed to resume",
                 len(self.hub.sessions), closed)
        return True

    async def _until_checked(self, fill: Callable[[str], Awaitable[bool]] | None) -> None:
        """Try :func:`close_rooms_behind` again, with backoff, until the store answers it: the rooms
        that missed events while the broker was away are still behind (none of their changes will
        be published again), and their clients get them only by resuming. Each try reads what was
        delivered at its moment, and the rooms heard then: a room that caught up meanwhile (a fill
        from the store, its missing changes arriving late) is not closed."""
        delay, tries = RETRY_S[0], _Tries(trio.current_time())
        while True:
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(2 * delay, RETRY_S[1])
            try:
                closed = await close_rooms_behind(self.hub, self._rooms(), self.order.last, self.catch_up.until, fill)
            except Exception as exc:
                tries.failed_again(exc, "cluster: the history store still fails, so the rooms that missed events "
                                        "while the broker was away are not closed to resume yet (%d tries failed): %s")
                continue
            log.info("cluster: the history store answers again; %d connections closed to resume (their rooms "
                     "missed events while the broker was away)", closed)
            return
