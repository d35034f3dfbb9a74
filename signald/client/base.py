"""What the Trio and asyncio clients share above the core: the API, the reconnect loop, the event iterator.

Pure: each adapter subclasses :class:`ClientBase` with its event loop's clock, event, sleep and connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Self

from signald.client.core import ClientCore
from signald.client.errors import ClientClosed
from signald.client.model import Call, Event, State, Subscription
from signald.client.schedule import Backoff, Closed
from signald.client.view import Msg, Room
from signald.client.wire import TokenSource, encode, fetch_token, url_with_user

log = logging.getLogger("signald.client")


class ClientBase:
    """The client's API over the core; the adapter adds the connection and the event loop's clock.

    An adapter sets :attr:`new_waiter` (``trio.Event`` or ``asyncio.Event``), :meth:`_now` (its
    loop's clock), :meth:`_sleep`, :meth:`_poke` (wake its writer and ticker) and
    :meth:`_connect_once`: the waiting and the reconnect loop are the same.
    """

    new_waiter: Callable[[], Any]

    def _now(self) -> float:
        raise NotImplementedError

    def _poke(self) -> None:
        """Wake the writer (frames queued) and the ticker (a new deadline)."""
        self._changed.set()
        self._replan.set()

    def __init__(self, url: str, *, token: str | None, get_token: TokenSource | None, user: str | None,
                 reconnect: bool, binary: bool, backoff: Backoff | None, events_limit: int) -> None:
        self.url = url_with_user(url, user)
        self.binary = binary
        self._token = token
        self._get_token = get_token
        self._core = ClientCore(reconnect=reconnect, can_refresh=get_token is not None, policy=backoff,
                                events_limit=events_limit, notify=self._wake)
        self._changed = self.new_waiter()  # frames to send (the writer waits on it)
        self._replan = self.new_waiter()  # a new deadline, or frames queued by a tick (the ticker waits on it)
        self._opened = self.new_waiter()  # the first connection came up, or the client gave up before

    @property
    def state(self) -> State:
        """``"connecting"``, ``"open"``, ``"reconnecting"`` or ``"closed"``."""
        return self._core.state

    @property
    def rooms(self) -> dict[str, Room]:
        """The rooms joined with :meth:`join`, by name."""
        return dict(self._core.rooms)

    @property
    def welcome(self) -> Msg:
        """The ``data`` of the current (or last) connection's ``welcome``."""
        return dict(self._core.welcome)

    @property
    def user_id(self) -> str:
        return str(self._core.welcome["user_id"])

    @property
    def session_id(self) -> str:
        """This connection's session id (a new one after every reconnect)."""
        return str(self._core.welcome["session_id"])

    async def request(self, type: str, data: Msg | None = None, *, timeout: float = 10.0) -> Any:  # noqa: ASYNC109 (the API the docs fix)
        """Send ``type`` and return the ack's result (the pong for ``presence.ping``).

        Raises ``SignalError`` on an error reply, ``TimeoutError`` after ``timeout`` seconds,
        ``ConnectionLost`` if the connection dropped and the request is not safe to resend,
        ``ClientClosed`` once the client is closed.
        """
        call = self._core.request(type, data, now=self._now(), timeout=timeout, waiter=self.new_waiter())
        return await self._wait(call)

    async def join(self, name: str, *, timeout: float = 10.0) -> Room:  # noqa: ASYNC109 (the API the docs fix)
        """Join ``name`` and return its live view once it holds the whole room (kept current, rejoined)."""
        call = self._core.join(name, now=self._now(), timeout=timeout, waiter=self.new_waiter())
        room: Room = await self._wait(call)
        return room

    async def leave(self, name: str, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (the API the docs fix)
        """Leave ``name``; its view stops being kept."""
        await self.request("room.leave", {"room": name}, timeout=timeout)

    async def _sleep(self, seconds: float) -> None:
        raise NotImplementedError

    async def _connect_once(self) -> Closed:
        """One connection, from handshake to close; how it ended."""
        raise NotImplementedError

    async def _connections(self) -> None:
        """Connect again and again, as the core decides after each close, until it says stop."""
        if self._token is None and self._get_token is not None:
            self._token = await fetch_token(self._get_token)
        while self._core.state != "closed":
            closed = await self._connect_once()
            decision = self._core.closed(closed, self._now())
            if decision.action == "stop":
                return
            log.info("signald client: %s, reconnecting in %.2fs", decision.reason, decision.delay_s)
            await self._sleep(decision.delay_s)
            if decision.action == "refresh" and self._get_token is not None:
                try:
                    self._token = await fetch_token(self._get_token)
                except Exception as exc:
                    self._core.stop(ClientClosed(f"get_token failed: {exc!r}"))
                    return

    def events(self, *types: str) -> Events:
        """Every event of these types (all without types) from now on; see docs/client.md for the buffer."""
        return Events(self._core, self._core.subscribe(frozenset(types)), self.new_waiter)

    async def _write_frames(self, send: Callable[[str | bytes], Awaitable[object]],
                            closed: tuple[type[BaseException], ...]) -> None:
        """One connection's writer: send what the core queues until ``send`` raises one of ``closed``."""
        while True:
            self._changed = self.new_waiter()  # replaced before draining: a frame queued meanwhile sets the new one
            frames = self._core.take_outgoing()
            try:
                for frame in frames:
                    await send(encode(frame, self.binary))
            except closed:
                return  # the reader sees the close too, with its code
            if not frames:
                await self._changed.wait()

    async def _wait(self, call: Call) -> Any:
        self._poke()
        try:
            await call.waiter.wait()
        finally:
            if not call.done:
                self._core.cancel(call)  # cancelled by the program: a late reply is dropped
        return self._outcome(call)

    def _wake(self, thing: Call | Subscription) -> None:
        if thing.waiter is not None:
            thing.waiter.set()

    @staticmethod
    def _outcome(call: Call) -> Any:
        if call.error is not None:
            raise call.error
        return call.result


class Events:
    """The program's side of one subscription: take buffered events, then end as the core says.

    ``new_waiter`` makes the adapter's event (``trio.Event``, ``asyncio.Event``): the one thing
    the two differ in.
    """

    def __init__(self, core: ClientCore, sub: Subscription, new_waiter: Callable[[], Any]) -> None:
        self._core = core
        self._sub = sub
        self.new_waiter = new_waiter

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        while (event := self._take()) is None:
            self._sub.waiter = self.new_waiter()
            await self._sub.waiter.wait()
        return event

    async def next(self) -> Event:
        """The next event; raises ``StopAsyncIteration`` once the iterator ended."""
        return await self.__anext__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _take(self) -> Event | None:
        """The next buffered event; None when the program must wait; raises when the iterator ended."""
        if self._sub.buffer:
            return self._sub.buffer.popleft()
        if self._sub.finished:
            self._core.unsubscribe(self._sub)
            if self._sub.error is not None:
                raise self._sub.error
            raise StopAsyncIteration
        return None

    def close(self) -> None:
        """Stop this iterator (it ends at the next read); nothing more is buffered for it."""
        self._sub.finished = True
        self._sub.buffer.clear()
        self._core.unsubscribe(self._sub)
        self._core.wake(self._sub)

    def pending(self) -> list[Event]:
        """The events buffered so far, without waiting (and takes them)."""
        events = list(self._sub.buffer)
        self._sub.buffer.clear()
        return events
