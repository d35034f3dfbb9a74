"""The asyncio client: ``from signald.client.aio import connect`` (needs ``signald[asyncio]``).

The same API as the Trio client (docs/client.md), on the ``websockets`` library, for asyncio
programs (FastAPI, aiohttp, Django):

    async with connect("ws://127.0.0.1:8765/", user="bot") as client:
        room = await client.join("lobby")
        async for event in client.events("chat.message"):
            ...

Resource handling: two tasks per client — the connection loop (reader inside, one writer task
per connection) and a ticker for timeouts — cancelled and awaited by :meth:`Client.close`, which
leaving the ``async with`` calls. Error handling: as the Trio client — ``SignalError``,
``TimeoutError``, ``ConnectionLost``, ``ClientClosed``; never an ``ExceptionGroup``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from signald.client import wire
from signald.client.base import ClientBase
from signald.client.errors import ClientClosed
from signald.client.schedule import Backoff, Closed

log = logging.getLogger("signald.client")


class Client(ClientBase):
    """A signald client that reconnects and resumes by itself; see :func:`connect`."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def close(self) -> None:
        """Close the connection (1000) and stop; waiting requests raise ``ClientClosed``."""
        self._core.stop()
        self._poke()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(wire.CLOSE_TIMEOUT_S):
                    await self._ws.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    new_waiter = asyncio.Event

    def _now(self) -> float:
        return _loop_time()

    # --- the background tasks ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connections()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not go unseen, nor kill the program's task
            log.exception("signald client stopped")
            self._core.stop(ClientClosed(f"client failed: {exc!r}"))
        finally:
            self._opened.set()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _connect_once(self) -> Closed:
        try:
            ws = await ws_connect(self.url, subprotocols=[Subprotocol(wire.subprotocol(self.binary))],
                                  additional_headers=wire.auth_headers(self._token), max_size=None,
                                  open_timeout=wire.OPEN_TIMEOUT_S,
                                  close_timeout=wire.CLOSE_TIMEOUT_S)  # every close, the one after a cancel too
        except InvalidStatus as exc:
            headers = exc.response.headers.raw_items()
            return Closed(http_status=exc.response.status_code, retry_after_s=wire.retry_after(headers))
        except (OSError, InvalidHandshake, TimeoutError):
            return Closed()
        self._ws = ws
        writer: asyncio.Task[None] | None = None
        refused_retry: float | None = None
        try:
            async with asyncio.timeout(wire.WELCOME_TIMEOUT_S):
                welcome = wire.decode(await ws.recv())
                if welcome.get("type") != "welcome":  # refused: one error frame, then 4401/4403/4429
                    refused_retry = wire.refusal_retry_after(welcome)
                    while True:
                        await ws.recv()  # until the server's close, with its code
            self._core.opened(welcome.get("data") or {}, _loop_time())
            self._poke()  # the ticker had no deadline before the welcome: now the heartbeat's
            self._opened.set()
            writer = asyncio.create_task(self._write_frames(ws.send, (ConnectionClosed,)))
            while True:
                self._core.received(wire.decode(await ws.recv()), _loop_time())
                self._poke()
        except ConnectionClosed as exc:
            return Closed(code=exc.rcvd.code if exc.rcvd is not None else None, retry_after_s=refused_retry)
        except (TimeoutError, ValueError):
            return Closed()
        finally:
            self._ws = None
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            await ws.close()

    async def _ticker(self) -> None:
        while self._core.state != "closed":
            self._replan = asyncio.Event()
            delay = self._core.next_deadline() - _loop_time()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that meets a set event
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(delay, 3600.0))):
                    await self._replan.wait()
            if self._core.tick(_loop_time()) and self._ws is not None:
                log.info("signald client: no frame for too long, reconnecting")
                self._ws.transport.abort()  # the reader then sees the connection closed (1006)
            if self._core.has_outgoing:
                self._changed.set()


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


@asynccontextmanager
async def connect(url: str, *, token: str | None = None, get_token: wire.TokenSource | None = None,
                  user: str | None = None, reconnect: bool = True, binary: bool = False,
                  backoff: Backoff | None = None, events_limit: int = 10_000) -> AsyncIterator[Client]:
    """Connect to signald and yield a :class:`Client` once the first connection is open.

    The options are those of the Trio ``signald.client.connect``. Raises :class:`ClientClosed` if
    the first connection fails (its ``code``: the HTTP status).
    """
    client = Client(url, token=token, get_token=get_token, user=user, reconnect=reconnect, binary=binary,
                    backoff=backoff, events_limit=events_limit)
    client._tasks = [asyncio.create_task(client._run()), asyncio.create_task(client._ticker())]
    try:
        await client._opened.wait()
        if client.state == "closed":
            raise client._core.close_reason or ClientClosed("could not connect")
        yield client
    finally:
        await client.close()
