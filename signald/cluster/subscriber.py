"""The node's one pub/sub connection: channels subscribed, messages read, reconnected when lost.

:meth:`Subscriber.run` connects, subscribes again to every channel it holds, and reads. Each
message goes to ``on_message(channel, data)`` (those heard before :meth:`Subscriber.release` wait
for it) and each subscription Redis confirms to ``on_subscribed(channel)`` (a confirmation of a
channel already held means a reconnect: the node resynchronises). A connection that fails, or stays
silent through a ``PING``, is dropped and opened again with exponential backoff (0.1 s to 2 s,
jittered); meanwhile ``down`` says why. :meth:`Subscriber.drop` does the same on request (a write
to Redis failed: the node's records need the same repair as after a lost pub/sub).

``sharded`` (a Redis Cluster): ``SSUBSCRIBE``, every channel on the shard that owns signald's slot.
Redis unsubscribes such a connection itself (a ``sunsubscribe`` nobody asked for) when that slot
moves to another node (a failover, a resharding); that, like a ``MOVED`` error reply, is a lost
connection (:class:`SlotMoved`): the next one goes to the slot's owner of the moment, and
:meth:`Subscriber.moved_only` tells the node's resync that nothing else was lost.

:meth:`Subscriber.subscribe` returns once Redis confirmed the subscription: a join reads the
room's history only after that, so nothing published after the read is missed.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from signald.cluster.resp import Link, LinkError, pack

log = logging.getLogger("signald.cluster")

CONNECT_S: Final = 5.0  # connecting and logging in (a host that vanished does not answer a SYN)
CONFIRM_S: Final = 5.0  # a subscription Redis does not confirm within this fails (the sweeper retries)
IDLE_S: Final = 5.0  # silence this long: PING; silence again as long: the connection is dead
BACKOFF_S: Final = (0.1, 2.0)  # first and longest wait between reconnects (a failover takes seconds)


class SlotMoved(LinkError):
    """Redis unsubscribed the connection, or refused a subscription with ``MOVED``: signald's slot
    moved to another node of the Redis Cluster (a resharding, a failover)."""


class Subscriber:
    """One pub/sub connection and the set of channels it is meant to hear."""

    def __init__(self, connect: Callable[[], Awaitable[Link]], *, on_message: Callable[[str, bytes], None],
                 on_subscribed: Callable[[str], None], down: Callable[[BaseException], None],
                 sharded: bool = False, lost: Callable[[], None] = lambda: None) -> None:
        """``lost``: called as a connection that was open is lost (before ``down``)."""
        self._connect, self._on_message, self._on_subscribed, self._down = connect, on_message, on_subscribed, down
        self._on_lost = lost
        prefix = "S" if sharded else ""
        self._subscribe, self._unsubscribe = prefix + "SUBSCRIBE", prefix + "UNSUBSCRIBE"
        self._message, self._subscribed = (b"smessage", b"ssubscribe") if sharded else (b"message", b"subscribe")
        self._unsubscribed = b"sunsubscribe" if sharded else None  # plain pub/sub: the replies are not read
        self._unsubscribing: dict[str, int] = {}  # channel -> SUNSUBSCRIBEs sent on this link, not yet confirmed
        self._reading: trio.CancelScope | None = None
        self.channels: set[str] = set()  # subscribed, or to be subscribed again on a reconnect
        self._link: Link | None = None
        self._waiting: dict[str, list[trio.Event]] = {}
        self.connects = 0  # connections opened (tests: a reconnect happened)
        self.problem = ""  # why the last connection was lost (Redis's error reply, if it sent one)
        self._held: list[tuple[str, bytes]] | None = []  # messages heard before release()
        self._moved_only = True  # every connection lost since moved_only() was asked: SlotMoved
        self._pings = 0  # caught_up() PINGs sent (their numbers come back in order)
        self._caught_up: dict[int, trio.Event] = {}  # PING number -> set once its answer is read

    def moved_only(self) -> bool:
        """Whether every connection lost since the last call went because signald's slot moved
        (:class:`SlotMoved`: Redis lost nothing, this node only missed what was published between
        the two owners), and none failed to open; starts over."""
        moved_only, self._moved_only = self._moved_only, True
        return moved_only

    def release(self) -> None:
        """Hand over the messages held since the start, in order, and every later one at once (the
        node first loads the cluster's snapshot, then applies what was said meanwhile)."""
        held, self._held = self._held or [], None
        for channel, data in held:
            self._deliver(channel, data)

    async def subscribe(self, channel: str) -> None:
        """Hear ``channel``; returns when Redis confirmed it. :class:`LinkError` if it cannot now:
        the channel is then not held (the caller tries again later)."""
        self.channels.add(channel)
        try:
            await self._confirmed(channel)
        except BaseException:
            self.channels.discard(channel)
            raise

    async def _confirmed(self, channel: str) -> None:
        link = self._link
        if link is None:
            raise LinkError("the pub/sub connection to Redis is down")
        confirmed = trio.Event()
        self._waiting.setdefault(channel, []).append(confirmed)
        try:
            await link.send(pack(self._subscribe, channel))
            with trio.move_on_after(CONFIRM_S):
                await confirmed.wait()
        finally:
            waiting = self._waiting.get(channel, [])
            if confirmed in waiting:
                waiting.remove(confirmed)
            if not waiting:
                self._waiting.pop(channel, None)
        if self._link is not link:
            raise LinkError(f"the pub/sub connection to Redis was lost while subscribing: {self.problem}")
        if not confirmed.is_set():
            raise LinkError(f"Redis did not confirm the subscription within {CONFIRM_S:g} s")

    async def caught_up(self, within: float) -> bool:
        """Wait until every message Redis pushed to this connection before now has been handed on:
        a ``PING`` through it, which Redis answers after what it sent before (so a change another
        node published before this call is applied here when it returns True). False, at once,
        while the connection is down or the messages are still held; False after ``within``
        seconds without the answer (a connection lost meanwhile ends the wait)."""
        link = self._link
        if link is None or self._held is not None:
            return False
        self._pings += 1
        number, answered = self._pings, trio.Event()
        self._caught_up[number] = answered
        try:
            await link.send(pack("PING", str(number)))
            with trio.move_on_after(within):
                await answered.wait()
        except LinkError:
            return False
        finally:
            self._caught_up.pop(number, None)
        return answered.is_set() and self._link is link

    async def unsubscribe(self, channel: str) -> None:
        """Stop hearing ``channel`` (messages already on the way may still arrive). Never fails: a
        connection that is down does not subscribe the channel again when it comes back."""
        self.channels.discard(channel)
        link = self._link
        if link is not None:
            with contextlib.suppress(LinkError):
                await self._send_unsubscribe(link, [channel])

    async def _send_unsubscribe(self, link: Link, channels: list[str]) -> None:
        if self._unsubscribed is not None:  # their confirmations are ours, not the slot moving
            for channel in channels:
                self._unsubscribing[channel] = self._unsubscribing.get(channel, 0) + 1
        await link.send(pack(self._unsubscribe, *channels))

    def drop(self, why: BaseException) -> None:
        """Drop the connection now and open a new one (with backoff), as if it had been lost."""
        if self._reading is not None:
            self.problem = f"dropped after a write to Redis failed: {why or type(why).__name__}"
            self._reading.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and read until cancelled. The first connection's failure is raised (a node that
        cannot reach its broker at start says so); later failures are retried with backoff.

        Resource handling: the connection is closed when this returns or is cancelled.
        """
        link = await self._open()
        task_status.started()
        delay = BACKOFF_S[0]
        while True:
            opened = trio.current_time()
            try:
                with trio.CancelScope() as self._reading:
                    await self._read(link)
                self._lost(link, LinkError(self.problem))  # drop() cancelled it
            except LinkError as exc:
                self._lost(link, exc)
            finally:
                self._reading = None
                await link.aclose()
            if trio.current_time() - opened > BACKOFF_S[1]:  # it served a while: start again quickly
                delay = BACKOFF_S[0]  # (one dropped right after it opened keeps backing off)
            while True:
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(2 * delay, BACKOFF_S[1])
                try:
                    link = await self._open()
                except LinkError as exc:
                    self._moved_only = False
                    self._down(exc)
                    continue
                break

    async def _open(self) -> Link:
        try:
            with trio.fail_after(CONNECT_S):
                link = await self._connect()
        except trio.TooSlowError:
            raise LinkError(f"no connection to Redis within {CONNECT_S:g} s") from None
        self._unsubscribing.clear()
        try:
            if self.channels:
                await link.send(pack(self._subscribe, *sorted(self.channels)))
        except BaseException:
            await link.aclose()
            raise
        self._link = link
        self.connects += 1
        return link

    def _lost(self, link: Link, exc: LinkError) -> None:
        self.problem = str(exc)
        self._on_lost()
        self._moved_only = self._moved_only and isinstance(exc, SlotMoved)
        if self._link is link:
            self._link = None
        for answered in self._caught_up.values():  # each caught_up() sees the link changed
            answered.set()
        for waiting in self._waiting.values():  # each subscribe() sees the link changed and fails
            for event in waiting:
                event.set()
        self._down(exc)

    async def _read(self, link: Link) -> None:
        pinged = False
        while True:
            with trio.move_on_after(IDLE_S) as idle:
                reply = await link.reply()
            if idle.cancelled_caught:
                if pinged:
                    raise LinkError(f"Redis did not answer a PING within {IDLE_S:g} s")
                await link.send(pack("PING"))
                pinged = True
                continue
            pinged = False
            strays: list[str] = []
            while reply is not False:
                self._dispatch(reply, strays)
                reply = link.ready()  # (the next reply() waits on the socket: a checkpoint)
            if strays:  # confirmed after their subscribe() gave up: Redis would send them forever
                await self._send_unsubscribe(link, strays)

    def _deliver(self, channel: str, data: bytes) -> None:
        try:
            self._on_message(channel, data)
        except Exception:
            log.exception("cluster: cannot apply a message from %s", channel)

    def _dispatch(self, reply: Any, strays: list[str]) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            if isinstance(reply, Exception):  # an error reply: the connection is in an unknown state
                raise (SlotMoved if str(reply).startswith("MOVED ") else LinkError)(str(reply))
            if isinstance(reply, bytes):  # a PING answered before any subscription: its argument
                self._pinged(reply)
            return
        kind = reply[0]
        if kind == self._message:
            if self._held is not None:
                self._held.append((reply[1].decode(), reply[2]))
            else:
                self._deliver(reply[1].decode(), reply[2])
        elif kind == self._unsubscribed:
            channel = reply[1].decode()
            if not self._unsubscribing.get(channel):
                raise SlotMoved(f"Redis unsubscribed {channel} (its hash slot moved: a failover or resharding)")
            self._unsubscribing[channel] -= 1
        elif kind == self._subscribed:
            channel = reply[1].decode()
            for event in self._waiting.pop(channel, ()):
                event.set()
            if channel in self.channels:
                self._on_subscribed(channel)
            else:  # its subscribe() timed out or was cancelled, or unsubscribe() came first
                strays.append(channel)
        elif kind == b"pong":  # subscribed: ["pong", argument] (the idle PING's is empty)
            self._pinged(reply[1])

    def _pinged(self, argument: bytes) -> None:
        if argument.isdigit():  # answers come in order: every caught_up() up to this one is done
            number = int(argument)
            for waiting in [n for n in self._caught_up if n <= number]:
                self._caught_up.pop(waiting).set()
