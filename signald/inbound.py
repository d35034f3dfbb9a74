"""What happens to one message a client sent: rate check, size check, decode, dispatch, reply.

The transport reads messages (:mod:`signald.transport.connection`) and knows nothing of their
meaning; the server hands it :func:`handle_message` bound to the hub, the router and the session
as its ``on_message``. This module sits with the router and handlers: it decodes and dispatches
through the router, and queues the single reply through the hub.

Error handling: nothing a client sends ends its connection except flooding (1008); a message
over ``limits.max_frame_bytes``, one that does not decode, or one sent too fast is answered with
an error reply. A decoder bug costs the client an error reply, not the connection. Every such
reply carries the frame's ``id`` as ``op_id`` whenever it can be read, so a client's pending
request always completes: a refused frame (rate limited, too large) is not decoded, only its
``id`` is read (:func:`signald.protocol.codec.read_op_id`, one pass that builds nothing else; the
transport already bounds the frame to ``server.max_transport_bytes`` and the flood guard the
number of refusals).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from signald.app.beside import Beside
from signald.app.context import Context
from signald.app.hub import Hub
from signald.app.session import CLOSE_POLICY, Session
from signald.protocol import FrameError, Inbound
from signald.protocol.codec import read_op_id
from signald.router import CustomMessage, Router
from signald.state.ratelimit import Verdict
from signald.state.replies import error_reply

log = logging.getLogger("signald.connection")  # the logger name operators already filter on
audit = logging.getLogger("signald.audit")
Spawn = Callable[..., Any]  # trio.Nursery.start_soon: (async function, *args)


def message_size(message: str | bytes) -> int:
    """Size of a message in bytes as it travelled (UTF-8 for text)."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))


async def handle_message(hub: Hub, router: Router, session: Session, message: str | bytes,
                         spawn: Spawn | None = None) -> None:
    """Carry out one inbound message and queue its reply (if it gets one).

    With ``spawn`` (the server's nursery of connection tasks), an embedder's ``app.*`` handler runs
    in a task of its own while the connection goes on reading (:mod:`signald.app.beside`); the
    frames read meanwhile are carried out after it, in order.
    """
    if session.close_code is not None:
        return  # closing: nothing more is carried out
    verdict = session.flood.check(trio.current_time())
    beside = session.beside
    if beside is not None:  # a flood's close too waits its turn: the replies before it go out first
        if beside.hold(message, verdict):
            return
        await beside.done.wait()  # full: read nothing more until what it holds is carried out
        if session.close_code is not None:
            return
    request = _decoded(hub, router, session, message, verdict)
    if request is None:
        return
    if spawn is not None and isinstance(request, CustomMessage):
        session.beside = beside = Beside()
        spawn(_beside, hub, router, session, beside, request)
        return
    await _dispatch(hub, router, session, request)


def _decoded(hub: Hub, router: Router, session: Session, message: str | bytes,
             verdict: Verdict) -> Inbound | CustomMessage | None:
    """The request ``message`` holds, or None when it was refused (its error reply queued, or the
    connection closed for flooding)."""
    hub.counters.messages_in += 1
    if verdict is not Verdict.ALLOW:
        if verdict is Verdict.CLOSE:
            audit.warning("close 1008 user=%s peer=%s reason=flooding", session.user_id, session.remote)
            session.close(CLOSE_POLICY, "rate limit exceeded repeatedly", flush=True, grace_s=1.0)
            return None
        op_id = read_op_id(message, msgpack=session.binary)
        hub.reply(session, error_reply(op_id, "RATE_LIMITED", "too many messages; slow down"))
        return None
    limit = hub.config.limits.max_frame_bytes
    if message_size(message) > limit:
        op_id = read_op_id(message, msgpack=session.binary)
        hub.reply(session, error_reply(op_id, "TOO_LARGE", f"frame exceeds max_frame_bytes ({limit})"))
        return None
    try:
        request = router.decode(message, binary=session.binary)
    except FrameError as exc:
        hub.reply(session, error_reply(exc.op_id, exc.code, exc.message))
        return None
    except Exception:  # a decoder bug must not cost the connection (or the server)
        log.exception("could not decode a frame from session %s", session.session_id)
        hub.reply(session, error_reply(read_op_id(message, msgpack=session.binary), "BAD_REQUEST",
                                       "frame could not be decoded"))
        return None
    hub.on_activity(session)
    return request


async def _dispatch(hub: Hub, router: Router, session: Session, request: Inbound | CustomMessage) -> None:
    ctx = Context(hub, session)
    reply = await router.dispatch(ctx, request)
    if reply is not None:
        hub.reply(session, reply)
    if ctx.after_reply:  # events that must follow the reply, in its turn
        session.replies.in_turn(partial(hub.publish, ctx.after_reply))


async def _beside(hub: Hub, router: Router, session: Session, beside: Beside, request: CustomMessage) -> None:
    """Run an embedder's handler, then carry out the frames read meanwhile (their own ``app.*`` inline)."""
    try:
        with beside.scope:
            await _dispatch(hub, router, session, request)
            while (held := beside.next()) is not None:
                if session.close_code is None and (later := _decoded(hub, router, session, *held)) is not None:
                    await _dispatch(hub, router, session, later)
    except Exception:  # as if the reader had raised it: logged, and this connection ends (never the server)
        log.exception("connection of session %s failed", session.session_id)
        if session.cancel_scope is not None:
            session.cancel_scope.cancel()
    finally:
        session.beside = None
        beside.done.set()
