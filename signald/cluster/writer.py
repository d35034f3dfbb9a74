"""Everything a node sends to Redis, in order, many commands per round trip.

:meth:`Writer.put` never blocks (the Trio thread calls it from wherever a change happens); the
:meth:`Writer.run` task sends what waits in one pipeline (records first, then the ``PUBLISH`` that
announces them, as they were put), and then runs the callbacks put behind them
(:meth:`Writer.after_sent`: an ack that must not leave before its event did). A pipeline that fails
is lost (pub/sub would have lost it anyway): ``down`` hears of it, the node's recovery after the
outage repairs the records (:mod:`signald.cluster.recovery`), and the connection is opened again
for the next one. On a Redis Cluster the publishes are ``SPUBLISH`` (``publish``): everything goes
to the one shard that owns signald's slot, in the order it was put. While a resharding moves that
slot, the owner answers ``ASK`` for the keys it already handed over (the rest, and the publishes, it
still serves): those writes go to the node named, each after ``ASKING`` (``redirect``), as a cluster
client does, so the move is no outage for the node. They land after the publishes of their pipeline,
not before: while the keys are split, a record may follow the event that announces it by a round
trip (no node reads a record to apply an event, only to load the cluster's state after an outage or
at start). When the move is done (or a failover moved the slot to a replica), the old owner
answers ``MOVED``: the writes refused so go, in their order, to the node named (``redirect``), which
serves the writer from then on, so the end of a move loses no write either.
A batch taken off the queue is sent whole even when :meth:`run` is cancelled (a node that stops
cancels it with the last ``Disconnect`` writes in flight; its goodbye follows that batch on the link),
unless :meth:`abandon` gives up on a broker that does not answer.
The pipeline goes over signald's own connection (:mod:`signald.cluster.resp`): through coredis
one ``PUBLISH`` cost a node about four times the CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from signald.cluster.resp import Link, pack, raise_on_error

log = logging.getLogger("signald.cluster")

BATCH: Final = 512  # commands per pipeline
REPLY_S: Final = 10.0  # connecting and a pipeline's replies; a broker silent this long is taken for lost

Command = tuple[str, str, Any]  # ("hset" | "hdel" | "zrem" | "publish" | "callback", key or channel, value)


class Writer:
    """The ordered queue of commands to the broker, and the task that sends them."""

    def __init__(self, connect: Callable[[], Awaitable[Link]], *, up: Callable[[], None],
                 down: Callable[[BaseException], None], publish: str = "PUBLISH",
                 redirect: Callable[[str, int], Awaitable[Link]] | None = None) -> None:
        self._connect, self._up, self._down, self._publish = connect, up, down, publish
        self._redirect = redirect  # a connection to another node of a Redis Cluster (ASK)
        self._asked: dict[str, Link] = {}  # "host:port" -> the link to the node a migration's ASK named
        self._link: Link | None = None
        self._lock = trio.Lock()
        self._sending: trio.CancelScope | None = None
        self._renew = False  # the next pipeline goes over a new connection (renew())
        self._put, self._queue = trio.open_memory_channel[list[Command]](math.inf)

    def put(self, commands: list[Command]) -> None:
        self._put.send_nowait(commands)

    def renew(self) -> None:
        """Send the next pipeline over a new connection: the pub/sub lost its own, and what closed
        it (Redis restarting, a failover) most likely closed this idle one too. Sent on that one,
        the pipeline would be lost, and the node would drop its new pub/sub once more."""
        self._renew = True

    def after_sent(self, callback: Callable[[], None]) -> None:
        self._put.send_nowait([("callback", "", callback)])

    def drain(self) -> list[Command]:
        """Everything still waiting (a node that stops sends it itself)."""
        pending: list[Command] = []
        while True:
            try:
                pending.extend(self._queue.receive_nowait())
            except trio.WouldBlock:
                return pending

    async def run(self) -> None:
        async for commands in self._queue:
            while len(commands) < BATCH:
                try:
                    commands.extend(self._queue.receive_nowait())
                except trio.WouldBlock:
                    break
            with trio.CancelScope(shield=True) as self._sending:
                try:
                    await self.execute(commands)
                except Exception as exc:
                    log.warning("cluster: %d broker writes lost: %s", len(commands), exc)
            self._sending = None
            for verb, _, callback in commands:
                if verb == "callback":
                    callback()

    def abandon(self) -> None:
        """Stop sending the batch in flight (a stopping node that waited long enough for the broker)."""
        if self._sending is not None:
            self._sending.cancel()

    async def execute(self, commands: list[Command], *, fresh: bool = False) -> None:
        """Send ``commands`` now, in one pipeline (callbacks among them are not run here);
        :class:`~signald.cluster.resp.LinkError` if the connection fails or Redis refuses one
        (``down`` hears of it first). One pipeline at a time (:meth:`run`, a resync and the goodbye
        share the connection). ``fresh``: on a new connection (a resync: the pub/sub found Redis
        again, and this one may still reach a server that is no longer the primary or the slot's
        owner, which would refuse it and cost another round of reconnects)."""
        publish = self._publish
        packed = [_packed(verb, key, value, publish) for verb, key, value in commands if verb != "callback"]
        if not packed:
            return
        async with self._lock:
            if fresh or self._renew:
                self._renew = False
                await self.close()
            try:
                with trio.fail_after(REPLY_S):
                    if self._link is None:
                        self._link = await self._connect()
                    replies = await self._link.call(b"".join(packed), len(packed))
                    if self._redirect is not None:
                        await self._follow_ask(packed, replies, self._redirect)
                        await self._follow_moved(packed, replies, self._redirect)
                    raise_on_error(replies)
            except BaseException as exc:  # its replies are not all read (or one is an error, e.g. READONLY
                await self.close()  # or MOVED after a failover): the next pipeline starts on a new connection
                if isinstance(exc, Exception):
                    self._down(exc)
                raise
        self._up()

    async def _follow_ask(self, packed: list[bytes], replies: list[Any],
                          redirect: Callable[[str, int], Awaitable[Link]]) -> None:
        """Send again, to the node each ``ASK`` names, the commands refused with it (each after
        ``ASKING``, which admits one command to a slot still being imported), and put their replies
        in ``replies``. Those keys are written a moment after the publishes of the same pipeline:
        no node reads them to apply a publish, only to load the cluster's state.

        The link to that node is kept while the migration lasts (one that stops halfway can last
        for hours: a connection per pipeline would pile up sockets in TIME_WAIT), and closed with
        the first pipeline that gets no ``ASK``, or with the writer's own."""
        asked: dict[str, list[int]] = {}
        for i, reply in enumerate(replies):
            if isinstance(reply, Exception) and str(reply).startswith("ASK "):
                asked.setdefault(str(reply).split()[2], []).append(i)  # "ASK <slot> <host>:<port>"
        if not asked:
            if self._asked:
                await self._close_asked()
            return
        for where, indexes in asked.items():
            link = self._asked.get(where)
            if link is None:
                log.info("cluster: signald's slot is moving to %s: writes of keys moved already go there", where)
                host, _, port = where.rpartition(":")
                link = self._asked[where] = await redirect(host, int(port))
            answered = await link.call(b"".join(pack("ASKING") + packed[i] for i in indexes), 2 * len(indexes))
            for i, reply in zip(indexes, answered[1::2], strict=True):
                replies[i] = reply

    async def _follow_moved(self, packed: list[bytes], replies: list[Any],
                            redirect: Callable[[str, int], Awaitable[Link]]) -> None:
        """The slot moved (a resharding that ended, a failover): send the commands refused with
        ``MOVED`` again, in their order, to the node it names, which serves the writer from now on,
        and put their replies in ``replies``. Redis runs a pipeline's commands in order, so those
        refused are the ones after the move: sent on now, they keep the order they were put in."""
        moved = [i for i, reply in enumerate(replies) if isinstance(reply, Exception) and _moved(reply)]
        if not moved:
            return
        where = {str(replies[i]).split()[2] for i in moved}  # "MOVED <slot> <host>:<port>"
        if len(where) != 1:  # not signald's one slot: nothing to follow
            return
        (to,) = where
        log.info("cluster: signald's slot moved to %s: the writer follows it", to)
        host, _, port = to.rpartition(":")
        await self.close()  # the old owner's link, and the migration's to the new one
        self._link = await redirect(host, int(port))
        answered = await self._link.call(b"".join(packed[i] for i in moved), len(moved))
        for i, reply in zip(moved, answered, strict=True):
            replies[i] = reply

    async def _close_asked(self) -> None:
        asked, self._asked = self._asked, {}
        for link in asked.values():
            await link.aclose()

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.aclose()
        await self._close_asked()


def _moved(reply: Exception) -> bool:
    return str(reply).startswith("MOVED ")


def _packed(verb: str, key: str, value: Any, publish: str) -> bytes:
    if verb == "publish":
        return pack(publish, key, value)
    if verb == "hset":
        return pack("HSET", key, *(item for pair in value.items() for item in pair))
    if verb == "hdel":
        return pack("HDEL", key, *(value if isinstance(value, list) else [value]))
    if verb == "zrem":
        return pack("ZREM", key, value)
    raise ValueError(f"not a broker write: {verb}")
