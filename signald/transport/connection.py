"""The life of one accepted WebSocket: its reader, and its writer when one is needed.

- The **reader** (the connection's own task) takes messages one at a time and hands each to
  ``on_message`` (the app's: rate and size checks, decode, dispatch, reply). Messages of one
  connection are handled in order, so a client may pipeline requests: their effects (and ``seq``
  numbers) follow the order it sent them.
- The **writer** drains what the owner's bounded outbox could not write directly; it is started
  the first time something has to wait (:meth:`Outbox.attach_writer`). In the server it runs in the
  server's nursery of connection tasks (``helpers``) and the reader in a cancel scope; elsewhere
  both run in a nursery of the connection's own.
- The **heartbeat** is not a task here: the hub pings connections silent for ``heartbeat_s`` from
  one sweep (:mod:`signald.state.heartbeat`); no sign of life within ``heartbeat_timeout_s`` after the
  ping closes the connection (1001, "heartbeat timeout").
- ``side_tasks`` run beside them in the connection's own nursery (the server passes none).

This module knows nothing of the app: the session is a :class:`ConnectionOwner`, and what a
message means is ``on_message``'s business.

Resource handling: when any of them ends (peer closed, outbox overflow, heartbeat timeout,
session expiry, server shutdown) the others are cancelled or told to stop, and ended before
:func:`run_connection` returns; the caller then closes the WebSocket with the recorded code within
a bounded time.

Error handling: nothing a client sends can end the connection except the abuse rules of
docs/protocol.md (flooding: 1008; frames over the transport cap: 1009; not reading: 1013).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Protocol

import trio

from signald.delivery.outbox import Outbox, direct_writer
from signald.transport.websocket import ServerWebSocket

log = logging.getLogger("signald.connection")

OnMessage = Callable[[str | bytes], Awaitable[None]]


class ConnectionOwner(Protocol):
    """What the reader and writer need of the session a connection serves (:class:`signald.app.session.Session`)."""

    @property
    def session_id(self) -> str:
        """For the log."""
        ...

    @property
    def outbox(self) -> Outbox:
        """Everything the connection sends goes through it; the writer drains it."""
        ...

    cancel_scope: trio.CancelScope | None  # set to the connection's nursery: closing cancels it (after a grace)

    def close(self, code: int, reason: str, *, flush: bool = ..., grace_s: float = ...) -> None:
        """Ask the connection to close with ``code`` (never blocks)."""
        ...


async def run_connection(
    ws: ServerWebSocket,
    owner: ConnectionOwner,
    on_message: OnMessage,
    *,
    side_tasks: Iterable[Callable[[], Awaitable[object]]] = (),
    helpers: trio.Nursery | None = None,
) -> None:
    """Serve ``owner`` on ``ws`` until either side ends it: each message read goes to ``on_message``.

    With ``helpers`` (the server's nursery of connection tasks) and no ``side_tasks``, the
    connection runs in a cancel scope and its writer, if it ever needs one, in ``helpers``: a
    nursery of its own costs each connection about 15 µs more, and one more task switch at its end
    (19,000 of them when a server stops). Either way the writer has ended when this returns, and
    an error of the writer's is raised here.
    """
    if helpers is None or side_tasks:
        await _in_nursery(ws, owner, on_message, side_tasks)
        return
    outbox = owner.outbox
    writer = _Writer(helpers, ws, outbox)
    try:
        with trio.CancelScope() as scope:
            owner.cancel_scope = writer.reader_scope = scope
            outbox.attach_writer(direct_writer(ws.stream), writer.start)
            try:
                await _reader(ws, owner, on_message)
            finally:  # no writer may start once the reader is done (stopped: by send_close_now)
                if not (outbox.stopped or outbox.stop_writer()):  # one mid-write is cancelled
                    writer.scope.cancel()
    finally:  # however the reader ended (cancelled from outside too), the writer has ended before the close
        if writer.done is not None:
            with trio.CancelScope(shield=True):
                await writer.done.wait()
    if writer.error is not None:
        raise writer.error


class _Writer:
    """A connection's writer task, started in the server's nursery the first time a frame has to wait."""

    __slots__ = ("done", "error", "helpers", "outbox", "reader_scope", "scope", "ws")

    def __init__(self, helpers: trio.Nursery, ws: ServerWebSocket, outbox: Outbox) -> None:
        self.helpers, self.ws, self.outbox = helpers, ws, outbox
        self.scope = trio.CancelScope()  # made now: cancelling it before the task runs is cancelling it
        self.reader_scope: trio.CancelScope | None = None
        self.done: trio.Event | None = None
        self.error: Exception | None = None

    def start(self) -> None:
        self.done = trio.Event()
        self.helpers.start_soon(self._run)

    async def _run(self) -> None:
        assert self.done is not None and self.reader_scope is not None
        try:
            with self.scope:
                await _writer(self.ws, self.outbox, self.reader_scope)
        except Exception as exc:  # the connection's error, raised by run_connection: not the server's
            self.error = exc
            self.reader_scope.cancel()
        finally:
            self.done.set()


async def _in_nursery(ws: ServerWebSocket, owner: ConnectionOwner, on_message: OnMessage,
                      side_tasks: Iterable[Callable[[], Awaitable[object]]]) -> None:
    outbox = owner.outbox
    async with trio.open_nursery() as nursery:
        owner.cancel_scope = nursery.cancel_scope
        # The writer task starts only once a frame has to wait for the socket (most never do):
        # a task less to start and stop per connection.
        outbox.attach_writer(direct_writer(ws.stream), partial(nursery.start_soon, _writer, ws, outbox,
                                                                nursery.cancel_scope))
        alone = True
        for task in side_tasks:
            nursery.start_soon(task)
            alone = False
        try:
            await _reader(ws, owner, on_message)
        finally:  # no writer may start once the reader is done, however it ended (stopped: by send_close_now)
            stopped = outbox.stopped or outbox.stop_writer()
        # An idle writer is told to stop (as if cancelled, but without a Cancelled through the
        # nursery: closing is most of what a short connection costs); one mid-write is cancelled.
        if not (stopped and alone):
            nursery.cancel_scope.cancel()


async def _reader(ws: ServerWebSocket, owner: ConnectionOwner, on_message: OnMessage) -> None:
    while True:
        message = await ws.receive_message()
        if message is None:
            if ws.failure is not None:
                code, reason = ws.failure
                log.info("session %s: closing %d (%s)", owner.session_id, code, reason)
                owner.close(code, reason, flush=False)
            return
        await on_message(message)
        del message  # not kept alive while waiting for the next one (idle connections are most)


async def _writer(ws: ServerWebSocket, outbox: Outbox, scope: trio.CancelScope) -> None:
    """Write what the outbox could not write directly, each batch at once (:meth:`ServerWebSocket.send_wire`:
    cancelled midway, the unsent tail of a ws_frame is kept for the close frame to follow).

    This task is the connection's only writer besides the outbox's direct writes, which only
    happen while it is idle (``outbox.writing`` is False; see :class:`signald.delivery.outbox.Outbox`).
    ``writing`` is cleared however a write ends, cancelled included: the close frame that follows
    depends on it.
    """
    try:
        while True:
            batch = await outbox.get_batch()
            if not batch:
                break
            outbox.writing = True
            try:
                await ws.send_wire(batch[0] if len(batch) == 1 else b"".join(batch))
            finally:
                outbox.writing = False
            del batch
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        ws.broken = True
    finally:
        outbox.direct_write = None
    if not outbox.stopped:  # stopped: the reader is done already, nothing to cancel
        scope.cancel()
