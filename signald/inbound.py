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
from functools import partial

import trio

from signald.app.context import Context
from signald.app.hub import Hub
from signald.app.session import CLOSE_POLICY, Session
from signald.protocol import FrameError
from signald.protocol.codec import read_op_id
from signald.router import Router
from signald.state.ratelimit import Verdict
from signald.state.replies import error_reply

log = logging.getLogger("signald.connection")  # the logger name operators already filter on
audit = logging.getLogger("signald.audit")


def message_size(message: str | bytes) -> int:
    """Size of a message in bytes as it travelled (UTF-8 for text)."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))


async def handle_message(hub: Hub, router: Router, session: Session, message: str | bytes) -> None:
    """Carry out one inbound message and queue its reply (if it gets one)."""
    if session.close_code is not None:
        return  # closing: nothing more is carried out
    hub.counters.messages_in += 1
    verdict = session.flood.check(trio.current_time())
    if verdict is not Verdict.ALLOW:
        if verdict is Verdict.CLOSE:
            audit.warning("close 1008 user=%s peer=%s reason=flooding", session.user_id, session.remote)
            session.close(CLOSE_POLICY, "rate limit exceeded repeatedly", flush=True, grace_s=1.0)
            return
        op_id = read_op_id(message, msgpack=session.binary)
        hub.reply(session, error_reply(op_id, "RATE_LIMITED", "too many messages; slow down"))
        return
    limit = hub.config.limits.max_frame_bytes
    if message_size(message) > limit:
        op_id = read_op_id(message, msgpack=session.binary)
        hub.reply(session, error_reply(op_id, "TOO_LARGE", f"frame exceeds max_frame_bytes ({limit})"))
        return
    try:
        request = router.decode(message, binary=session.binary)
    except FrameError as exc:
        hub.reply(session, error_reply(exc.op_id, exc.code, exc.message))
        return
    except Exception:  # a decoder bug must not cost the connection (or the server)
        log.exception("could not decode a frame from session %s", session.session_id)
        hub.reply(session, error_reply(read_op_id(message, msgpack=session.binary), "BAD_REQUEST",
                                       "frame could not be decoded"))
        return
    hub.on_activity(session)
    ctx = Context(hub, session)
    reply = await router.dispatch(ctx, request)
    if reply is not None:
        hub.reply(session, reply)
    if ctx.after_reply:  # events that must follow the reply, in its turn
        session.replies.in_turn(partial(hub.publish, ctx.after_reply))
