"""The life of one accepted WebSocket: a nursery of reader, writer and heartbeat.

- The **reader** takes frames one at a time, checks rate and size, decodes, dispatches through the
  router and queues the single reply. Frames of one connection are handled in order, so a client
  may pipeline requests: their effects (and ``seq`` numbers) follow the order it sent them.
- The **writer** drains the session's bounded outbox onto the socket.
- The **heartbeat** pings every ``heartbeat_s``; no pong within ``heartbeat_timeout_s`` closes
  the connection (1001, "heartbeat timeout").

Resource handling: when any of the three ends (peer closed, outbox overflow, heartbeat timeout,
session expiry, server shutdown) the nursery is cancelled; the caller then closes the WebSocket
with the recorded code within a bounded time.

Error handling: nothing a client sends can end the connection except the abuse rules of
PROTOCOL.md (flooding: 1008; frames over the transport cap: 1009; not reading: 1013).
"""

from __future__ import annotations

import logging
import math

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from signald.hub import Context, Hub
from signald.protocol import FrameError
from signald.ratelimit import Verdict
from signald.router import error_reply
from signald.session import CLOSE_GOING_AWAY, CLOSE_POLICY, Session
from signald.transport import attach

log = logging.getLogger("signald.connection")
audit = logging.getLogger("signald.audit")

def frame_size(frame: str | bytes) -> int:
    """Size of a frame in bytes as it travelled (UTF-8 for text frames)."""
    if isinstance(frame, bytes) or frame.isascii():
        return len(frame)
    return len(frame.encode("utf-8", "surrogatepass"))


async def run_connection(hub: Hub, ws: WebSocketConnection, session: Session) -> None:
    """Serve ``session`` on ``ws`` until either side ends it."""
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        nursery.start_soon(_writer, ws, session, nursery.cancel_scope)
        nursery.start_soon(_heartbeat, hub, ws, session)
        if session.expires_at is not None:
            nursery.start_soon(_expiry, hub, session)
        await _reader(hub, ws, session)
        nursery.cancel_scope.cancel()


async def _reader(hub: Hub, ws: WebSocketConnection, session: Session) -> None:
    while True:
        try:
            frame = await ws.get_message()
        except ConnectionClosed:
            return
        await handle_frame(hub, session, frame)


async def handle_frame(hub: Hub, session: Session, frame: str | bytes) -> None:
    """Carry out one inbound frame and queue its reply (if it gets one)."""
    if session.close_code is not None:
        return  # closing: nothing more is carried out
    hub.counters.messages_in += 1
    verdict = session.flood.check(trio.current_time())
    if verdict is not Verdict.ALLOW:
        if verdict is Verdict.CLOSE:
            audit.warning("close 1008 user=%s peer=%s reason=flooding", session.user_id, session.remote)
            session.close(CLOSE_POLICY, "rate limit exceeded repeatedly", flush=True, grace_s=1.0)
            return
        hub.reply(session, error_reply(None, "RATE_LIMITED", "too many messages; slow down"))
        return
    limit = hub.config.limits.max_frame_bytes
    if frame_size(frame) > limit:
        hub.reply(session, error_reply(None, "TOO_LARGE", f"frame exceeds max_frame_bytes ({limit})"))
        return
    try:
        message = hub.router.decode(frame, binary=session.binary)
    except FrameError as exc:
        hub.reply(session, error_reply(exc.op_id, exc.code, exc.message))
        return
    except Exception:  # a decoder bug must not cost the connection (or the server)
        log.exception("could not decode a frame from session %s", session.session_id)
        hub.reply(session, error_reply(None, "BAD_REQUEST", "frame could not be decoded"))
        return
    hub.on_activity(session)
    ctx = Context(hub, session)
    reply = await hub.router.dispatch(ctx, message)
    if reply is not None:
        hub.reply(session, reply)
    if ctx.after_reply:
        hub.publish(ctx.after_reply)


async def _writer(ws: WebSocketConnection, session: Session, scope: trio.CancelScope) -> None:
    """Write what the outbox could not write directly, each batch with one ``send_all``.

    This task is the connection's only writer (see :mod:`signald.transport`): trio-websocket's own
    frames reach the socket through the same outbox, in order.
    """
    outbox = session.outbox
    routed = attach(ws, outbox)
    routed.writer_running = True
    try:
        while True:
            batch = await outbox.get_batch()
            if not batch:
                break
            outbox.writing = True
            await routed.real.send_all(batch[0] if len(batch) == 1 else b"".join(batch))
            outbox.writing = False
            outbox.batch_written()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        outbox.writing = False
        routed.broken = True
    finally:
        routed.writer_running = False
        outbox.direct_write = None
        outbox.release_controls()
    scope.cancel()


async def _heartbeat(hub: Hub, ws: WebSocketConnection, session: Session) -> None:
    interval = hub.config.server.heartbeat_s
    timeout = hub.config.server.heartbeat_timeout_s
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(timeout) as waited:
            try:
                await ws.ping()
            except ConnectionClosed:
                return
        if waited.cancelled_caught:
            log.info("session %s: no pong within %ss, closing", session.session_id, timeout)
            session.close(CLOSE_GOING_AWAY, "heartbeat timeout", flush=False)
            return


async def _expiry(hub: Hub, session: Session) -> None:
    """Close the session when its token expires; ``auth.refresh`` moves the expiry either way."""
    while session.expires_at is not None:
        delay = session.expires_at - hub.wall_clock()
        if delay <= 0:
            hub.expire_session(session)
            return
        with trio.move_on_after(min(delay, 3600.0) if math.isfinite(delay) else 3600.0):
            await session.expiry_changed.wait()
        if session.expiry_changed.is_set():
            session.expiry_changed = trio.Event()
