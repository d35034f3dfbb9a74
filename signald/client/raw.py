"""A small Trio client for signald, used by the examples, the tests and the benchmarks.

    async with connect("ws://127.0.0.1:8765/", user="alice") as client:
        await client.request("room.join", {"room": "lobby"})
        await client.request("chat.send", {"scope": "lobby", "body": "hi"})
        event = await client.next_event("chat.message")

A background task reads every frame: replies (``ack``/``error``/``presence.pong``) with an
``op_id`` resolve the matching :meth:`SignaldClient.request`; everything else is queued as an
event for :meth:`SignaldClient.next_event`.

Error handling: :meth:`request` raises :class:`signald.errors.SignalError` with the server's
code when the reply is ``error``; a closed connection raises ``trio_websocket.ConnectionClosed``.
A connection the server refuses raises from :func:`connect`: :class:`Refused` (its one ``error``
frame and close code 4401 / 4403 / 4429) or ``trio_websocket.ConnectionRejected`` (HTTP status,
``server.refusals = "http"`` or a subprotocol mismatch).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from signald.errors import SignalError
from signald.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK

REPLY_TYPES = frozenset({"ack", "error", "presence.pong"})


class Refused(SignalError):
    """The server completed the handshake only to refuse the connection (instead of ``welcome``).

    ``code`` is the error code (``UNAUTHORIZED``, ``FORBIDDEN``, ``RATE_LIMITED``), ``close_code``
    the close code that followed (4401, 4403, 4429), ``retry_after_s`` how long to wait (4429).
    """

    def __init__(self, data: dict[str, Any], close_code: int | None) -> None:
        super().__init__(data["code"], data["message"])
        self.close_code = close_code
        self.retry_after_s: float | None = data.get("retry_after_s")


class SignaldClient:
    """One connection to a signald daemon."""

    def __init__(self, ws: WebSocketConnection, *, binary: bool = False) -> None:
        self.ws = ws
        self.binary = binary
        self.welcome: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[Any, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._events_in, self._events = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.unmatched_errors: list[dict[str, Any]] = []
        self.closed: trio.Event = trio.Event()

    @property
    def user_id(self) -> str:
        return str(self.welcome["data"]["user_id"])

    @property
    def session_id(self) -> str:
        return str(self.welcome["data"]["session_id"])

    def _encode(self, message: dict[str, Any]) -> str | bytes:
        if self.binary:
            return msgspec.msgpack.encode(message)
        return msgspec.json.encode(message).decode()

    def _decode(self, frame: str | bytes) -> dict[str, Any]:
        value = msgspec.msgpack.decode(frame) if isinstance(frame, bytes) else msgspec.json.decode(frame)
        assert isinstance(value, dict)
        return value

    async def _read(self) -> None:
        try:
            while True:
                message = self._decode(await self.ws.get_message())
                kind = message.get("type")
                op_id = message.get("data", {}).get("op_id") if kind in REPLY_TYPES else None
                waiter = self._waiting.pop(op_id, None) if op_id is not None else None
                if waiter is not None:
                    waiter.send_nowait(message)
                elif kind == "error":
                    self.unmatched_errors.append(message)
                    self._events_in.send_nowait(message)
                else:
                    self._events_in.send_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._events_in.close()
            for waiter in self._waiting.values():
                waiter.close()

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a frame as-is (a dict is encoded); no reply is awaited."""
        await self.ws.send_message(message if isinstance(message, str | bytes) else self._encode(message))

    async def request_raw(self, kind: str, data: Any = None, *, op_id: Any = None) -> dict[str, Any]:
        """Send ``kind`` with an id and return the whole reply frame (ack, error or pong)."""
        op_id = op_id if op_id is not None else f"c-{next(self._ids)}"
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[op_id] = send
        message: dict[str, Any] = {"type": kind, "id": op_id}
        if data is not None:
            message["data"] = data
        await self.send(message)
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            raise ConnectionClosed(self.ws.closed) from None

    async def request(self, kind: str, data: Any = None) -> Any:
        """Send ``kind`` and return the ack's result; raises SignalError on an error reply."""
        reply = await self.request_raw(kind, data)
        if reply["type"] == "error":
            raise SignalError(reply["data"]["code"], reply["data"]["message"])
        if reply["type"] == "ack":
            return reply["data"]["data"]
        return reply["data"]

    async def next_event(self, kind: str | None = None, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The next event (optionally the next one of type ``kind``, dropping others before it)."""
        while True:
            try:
                event = await self._events.receive()
            except trio.EndOfChannel:
                raise ConnectionClosed(self.ws.closed) from None
            if event["type"] in skip:
                continue
            if kind is None or event["type"] == kind:
                return event

    def pending_events(self) -> list[dict[str, Any]]:
        """Events received so far and not yet taken, without waiting."""
        events = []
        while True:
            try:
                events.append(self._events.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return events


def build_url(url: str, **query: str | None) -> str:
    params = {k: v for k, v in query.items() if v is not None}
    if not params:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(params)


@asynccontextmanager
async def connect(
    url: str,
    *,
    user: str | None = None,
    token: str | None = None,
    msgpack: bool = False,
    subprotocols: list[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    ssl_context: Any = None,
) -> AsyncIterator[SignaldClient]:
    """Connect, wait for ``welcome`` and yield a :class:`SignaldClient`; closes on exit."""
    protocols = subprotocols if subprotocols is not None else [SUBPROTOCOL_MSGPACK if msgpack else SUBPROTOCOL_JSON]
    async with open_websocket_url(
        build_url(url, user=user, token=token), ssl_context=ssl_context,
        subprotocols=protocols, extra_headers=extra_headers,
    ) as ws:
        client = SignaldClient(ws, binary=msgpack)
        client.welcome = client._decode(await ws.get_message())
        if client.welcome.get("type") == "error":  # refused: the close follows the one error frame
            with contextlib.suppress(ConnectionClosed):
                await ws.get_message()
            raise Refused(client.welcome["data"], ws.closed.code if ws.closed is not None else None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
