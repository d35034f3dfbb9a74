"""The life of one accepted WebSocket: a nursery of reader and writer.

- The **reader** (the connection's own task) takes frames one at a time, checks rate and size,
  decodes, dispatches through the router and queues the single reply. Frames of one connection are
  handled in order, so a client may pipeline requests: their effects (and ``seq`` numbers) follow
  the order it sent them.
- The **writer** drains what the session's bounded outbox could not write directly.
- The **heartbeat** is not a task here: the hub pings connections silent for ``heartbeat_s`` from
  one sweep (:mod:`signald.state.heartbeat`); no sign of life within ``heartbeat_timeout_s`` after the
  ping closes the connection (1001, "heartbeat timeout").
- Sessions with a token expiry get an **expiry** task.

Resource handling: when any of them ends (peer closed, outbox overflow, heartbeat timeout,
session expiry, server shutdown) the nursery is cancelled; the caller then closes the WebSocket
with the recorded code within a bounded time.

Error handling: nothing a client sends can end the connection except the abuse rules of
PROTOCOL.md (flooding: 1008; frames over the transport cap: 1009; not reading: 1013).
"""

from __future__ import annotations

import logging
import math
from functools import partial

import trio

from signald.app.hub import Context, Hub
from signald.app.session import CLOSE_POLICY, Session
from signald.protocol import FrameError
from signald.router import error_reply
from signald.state.ratelimit import Verdict
from signald.transport.websocket import ServerWebSocket, direct_writer

log = logging.getLogger("signald.connection")
audit = logging.getLogger("signald.audit")

def frame_size(frame: str | bytes) -> int:
    """Size of a frame in bytes as it travelled (UTF-8 for text frames)."""
    if isinstance(frame, bytes) or frame.isascii():
        return len(frame)
    return len(frame.encode("utf-8", "surrogatepass"))


async def run_connection(hub: Hub, ws: ServerWebSocket, session: Session) -> None:
    """Serve ``session`` on ``ws`` until either side ends it."""
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        nursery.start_soon(_writer, ws, session, nursery.cancel_scope)
        if session.expires_at is not None:
            nursery.start_soon(_expiry, hub, session)
        await _reader(hub, ws, session)
        nursery.cancel_scope.cancel()


async def _reader(hub: Hub, ws: ServerWebSocket, session: Session) -> None:
    while True:
        frame = await ws.receive_message()
        if frame is None:
            if ws.failure is not None:
                code, reason = ws.failure
                log.info("session %s: closing %d (%s)", session.session_id, code, reason)
                session.close(code, reason, flush=False)
            return
        await handle_frame(hub, session, frame)
        del frame  # not kept alive while waiting for the next one (idle connections are most)


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
    if ctx.after_reply:  # events that must follow the reply, in its turn
        session.in_turn(partial(hub.publish, ctx.after_reply))


async def _writer(ws: ServerWebSocket, session: Session, scope: trio.CancelScope) -> None:
    """Write what the outbox could not write directly, each batch with one ``send_all``.

    This task is the connection's only writer besides the outbox's direct writes, which only
    happen while it is idle (see :class:`signald.delivery.fanout.Outbox`).
    """
    outbox = session.outbox
    outbox.direct_write = direct_writer(ws.stream)
    try:
        while True:
            batch = await outbox.get_batch()
            if not batch:
                break
            outbox.writing = True
            await ws.stream.send_all(batch[0] if len(batch) == 1 else b"".join(batch))
            outbox.writing = False
            del batch
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        outbox.writing = False
        ws.broken = True
    finally:
        outbox.direct_write = None
    scope.cancel()


async def _expiry(hub: Hub, session: Session) -> None:
    """Close the session when its token expires; ``auth.refresh`` moves the expiry either way."""
    while session.expires_at is not None:
        delay = session.expires_at - hub.wall_clock()
        if delay <= 0:
            hub.expire_session(session)
            return
        changed = session.expiry_changed = trio.Event()
        with trio.move_on_after(min(delay, 3600.0) if math.isfinite(delay) else 3600.0):
            await changed.wait()
