"""The Trio client: ``from signald.client import connect`` (docs/client.md).

    async with connect("ws://127.0.0.1:8765/", user="bot") as client:
        room = await client.join("lobby")
        async for event in client.events("chat.message"):
            await client.request("chat.send", {"scope": "lobby", "body": event.data["body"]})

A thin adapter on :class:`signald.client.core.ClientCore`: one background task keeps a connection
(reconnecting by the core's decisions), a reader feeds frames to the core, a writer sends what the
core queues, a ticker drives timeouts and liveness.

Resource handling: the background tasks live in a nursery inside :func:`connect`; leaving the
``async with`` (or :meth:`Client.close`) closes the WebSocket with 1000 and ends them.
Error handling: the API raises plain exceptions — ``SignalError`` (the server's refusal),
``TimeoutError``, :class:`~signald.client.errors.ConnectionLost`,
:class:`~signald.client.errors.ClientClosed` — never an ``ExceptionGroup``; an exception raised by
the program inside ``async with connect(...)`` comes out as itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)
from wsproto.utilities import LocalProtocolError

from signald.client import wire
from signald.client.base import ClientBase
from signald.client.errors import ClientClosed
from signald.client.schedule import Backoff, Closed

log = logging.getLogger("signald.client")


class Client(ClientBase):
    """A signald client that reconnects and resumes by itself; see :func:`connect`."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._ws: WebSocketConnection | None = None
        self._connection: trio.CancelScope | None = None
        self._background = trio.CancelScope()
        self._close_done = trio.Event()  # close() finished its closing handshake

    async def close(self) -> None:
        """Close the connection (1000) and stop; waiting requests raise ``ClientClosed``."""
        self._core.stop()
        self._poke()
        if self._ws is not None:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await self._ws.aclose()
        self._close_done.set()
        self._background.cancel()

    new_waiter = trio.Event

    def _now(self) -> float:
        return trio.current_time()

    # --- the background tasks ----------------------------------------------------------------

    async def _run(self) -> None:
        """Keep a connection until the core says stop. Never raises: failures end up in the core."""
        with self._background:
            await self._keep_connected()

    async def _keep_connected(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker)
            try:
                await self._connections()
            except Exception as exc:  # a bug here must not become the program's ExceptionGroup
                log.exception("signald client stopped")
                self._core.stop(ClientClosed(f"client failed: {exc!r}"))
            self._opened.set()
            nursery.cancel_scope.cancel()

    async def _sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def _connect_once(self) -> Closed:
        """One connection, from handshake to close; how it ended."""
        headers = [(name.encode(), value.encode()) for name, value in wire.auth_headers(self._token)]
        closed = Closed()
        try:
            async with trio.open_nursery() as nursery:
                self._connection = nursery.cancel_scope
                try:
                    with trio.fail_after(wire.OPEN_TIMEOUT_S):  # an upgrade nobody answers: not for ever
                        ws = await connect_websocket_url(nursery, self.url, extra_headers=headers,
                                                         subprotocols=[wire.subprotocol(self.binary)])
                except ConnectionRejected as exc:
                    nursery.cancel_scope.cancel()
                    return Closed(http_status=exc.status_code, retry_after_s=wire.retry_after(exc.headers))
                except trio.TooSlowError:
                    nursery.cancel_scope.cancel()
                    return Closed()
                self._ws = ws
                closed = await self._serve(ws, nursery)
                if self._core.state == "closed":  # close() is in its closing handshake: our nursery runs
                    with trio.move_on_after(2):  # trio_websocket's reader, which completes it
                        await self._close_done.wait()
                nursery.cancel_scope.cancel()
        # LocalProtocolError: trio_websocket answers a ping that crosses our close frame (a pong in
        # the closing state); the connection is over either way
        except* (OSError, HandshakeError, ConnectionClosed, trio.BrokenResourceError, ValueError,
                 LocalProtocolError) as group:
            closed = Closed()
            for leaf in _leaves(group):
                if isinstance(leaf, ConnectionRejected):  # raised by trio_websocket's own task
                    closed = Closed(http_status=leaf.status_code, retry_after_s=wire.retry_after(leaf.headers))
        finally:
            self._ws = self._connection = None
        return closed

    async def _serve(self, ws: WebSocketConnection, nursery: trio.Nursery) -> Closed:
        refused_retry: float | None = None
        try:
            with trio.fail_after(wire.WELCOME_TIMEOUT_S):
                welcome = wire.decode(await ws.get_message())
                if welcome.get("type") != "welcome":  # refused: one error frame, then 4401/4403/4429
                    refused_retry = wire.refusal_retry_after(welcome)
                    while True:
                        await ws.get_message()  # until the server's close, with its code
            self._core.opened(welcome.get("data") or {}, trio.current_time())
            self._poke()  # the ticker had no deadline before the welcome: now the heartbeat's
            self._opened.set()
            nursery.start_soon(self._write_frames, ws.send_message, (ConnectionClosed, trio.BrokenResourceError))
            while True:
                self._core.received(wire.decode(await ws.get_message()), trio.current_time())
                self._poke()
        except ConnectionClosed as exc:
            return Closed(code=exc.reason.code if exc.reason is not None else None, retry_after_s=refused_retry)
        except trio.TooSlowError:
            return Closed()

    async def _ticker(self) -> None:
        while True:
            self._replan = trio.Event()
            with trio.move_on_at(self._core.next_deadline()):
                await self._replan.wait()
            if self._core.tick(trio.current_time()) and self._connection is not None:
                log.info("signald client: no frame for too long, reconnecting")
                self._connection.cancel()
            if self._core.has_outgoing:
                self._changed.set()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [leaf for exc in group.exceptions
            for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner


@asynccontextmanager
async def connect(url: str, *, token: str | None = None, get_token: wire.TokenSource | None = None,
                  user: str | None = None, reconnect: bool = True, binary: bool = False,
                  backoff: Backoff | None = None, events_limit: int = 10_000) -> AsyncIterator[Client]:
    """Connect to signald and yield a :class:`Client` once the first connection is open.

    ``token`` is sent as ``Authorization: Bearer``; ``get_token`` (plain or async) is called for
    one when there is none and whenever the server refuses or expires it (4401, 4001, HTTP 401).
    ``user`` is the ``?user=`` of auth mode none. ``binary`` speaks MessagePack. ``backoff`` tunes
    the reconnect timing; ``events_limit`` bounds each ``events()`` buffer.
    Raises :class:`ClientClosed` if the first connection fails (its ``code``: the HTTP status).
    """
    client = Client(url, token=token, get_token=get_token, user=user, reconnect=reconnect, binary=binary,
                    backoff=backoff, events_limit=events_limit)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            await client._opened.wait()
            if client.state == "closed":
                raise client._core.close_reason or ClientClosed("could not connect")
            try:
                yield client
            finally:
                await client.close()
    except BaseExceptionGroup as group:
        inner = _unwrap(group)
        if inner is group:
            raise
        raise inner from inner.__cause__
