"""Everything a node sends to Redis, in order, many commands per round trip.

:meth:`Writer.put` never blocks (the Trio thread calls it from wherever a change happens); the
:meth:`Writer.run` task sends what waits in one pipeline (records first, then the ``PUBLISH`` that
announces them, as they were put), and then runs the callbacks put behind them
(:meth:`Writer.after_sent`: an ack that must not leave before its event did). A room's events put
one after the other (``("room", channel, RoomEvent)``) go out as one ``PUBLISH`` of one
:class:`~signald.cluster.wire.RoomEnvelope`: the Redis command, its encoding and, on every node that
hears the room, the message's trip through coredis and the scheduler are paid once per batch, not
once per event (measured: docs/benchmarks.md, "Several nodes"). A pipeline that fails
is lost (pub/sub would have lost it anyway): the node's recovery after the outage repairs the
records (:mod:`signald.cluster.recovery`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final

import trio

from signald.cluster.wire import STATE_ENCODER, RoomEnvelope, RoomEvent

log = logging.getLogger("signald.cluster")

BATCH: Final = 512  # commands per pipeline

Command = tuple[str, str, Any]  # ("hset" | "hdel" | "zrem" | "publish" | "room" | "callback", key or channel, value)


class Writer:
    """The ordered queue of commands to the broker, and the task that sends them."""

    def __init__(self, client: Any, origin: str, *, up: Callable[[], None],
                 down: Callable[[BaseException], None]) -> None:
        self._client, self._origin, self._up, self._down = client, origin, up, down
        self._put, self._queue = trio.open_memory_channel[list[Command]](math.inf)

    def put(self, commands: list[Command]) -> None:
        self._put.send_nowait(commands)

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
            try:
                await self.execute(commands)
            except Exception as exc:
                self._down(exc)
                log.warning("cluster: %d broker writes lost: %s", len(commands), exc)
            for verb, _, callback in commands:
                if verb == "callback":
                    callback()

    async def execute(self, commands: list[Command]) -> None:
        """Send ``commands`` now, in one pipeline (callbacks among them are not run here)."""
        if all(verb == "callback" for verb, _, _ in commands):
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for verb, key, value in self.coalesced(commands):
                if verb == "publish":
                    pipe.publish(key, value)
                elif verb == "hset":
                    pipe.hset(key, value)
                elif verb == "hdel":
                    pipe.hdel(key, value if isinstance(value, list) else [value])
                elif verb == "zrem":
                    pipe.zrem(key, [value])
        self._up()

    def coalesced(self, commands: list[Command]) -> list[Command]:
        """``commands`` with each run of one room's events turned into one ``publish`` of them all."""
        out: list[Command] = []
        events: list[RoomEvent] = []
        channel = ""
        for command in commands:
            verb, key, value = command
            if verb == "room" and key == channel:
                events.append(value)
                continue
            if events:
                out.append(("publish", channel, STATE_ENCODER.encode(RoomEnvelope(self._origin, events))))
                events, channel = [], ""
            if verb == "room":
                events, channel = [value], key
            else:
                out.append(command)
        if events:
            out.append(("publish", channel, STATE_ENCODER.encode(RoomEnvelope(self._origin, events))))
        return out
