"""From a decoded message to exactly one reply.

The router maps each inbound message class to a handler ``async (ctx, msg) -> result``.
Whatever happens, a message that carries an ``id`` gets exactly one reply: ``ack`` with the
handler's result, ``error`` with the code of the :class:`SignalError` it raised, or ``INTERNAL``
for any other exception (logged with its traceback; the connection stays open). A message
without ``id`` gets no ack, but still gets an ``error`` (``op_id: null``) if it fails.

A handler may return :class:`Reply` to answer with another message type instead of ``ack``
(``presence.ping`` answers ``presence.pong``), or :data:`LATER` when it has held a place in the
session's reply order and arranged for :meth:`Router.finish` to fill it once the work is done
(``chat.send`` answers from the history store's commit callback, so the connection goes on
reading meanwhile). Replies always leave in request order.

Embedders add their own inbound types under the ``app.`` namespace with :meth:`Router.add_custom`;
the frozen protocol types cannot be redefined.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs
import msgspec

from signald.errors import SignalError
from signald.protocol import (
    APP_EVENT_PREFIX,
    INBOUND_TYPES,
    Ack,
    AckData,
    Error,
    ErrorData,
    FrameError,
    Inbound,
    OpId,
    Outbound,
    decode_frame,
    type_of,
)

if TYPE_CHECKING:
    from signald.app.hub import Context
    from signald.app.session import HeldReply

log = logging.getLogger("signald.router")
audit = logging.getLogger("signald.audit")
AUDITED_CODES: Final = frozenset({"FORBIDDEN", "UNAUTHORIZED"})

M = TypeVar("M")
Handler = Callable[["Context", Any], Awaitable[Any]]

# Inbound types whose handlers arrive in a later issue. They answer UNKNOWN_TYPE with
# "not implemented yet"; tests/test_frozen_surface.py keeps this set explicit so it only shrinks.
NOT_YET_IMPLEMENTED: Final[frozenset[str]] = frozenset()


@attrs.frozen
class Reply:
    """A handler result that is sent as-is instead of being wrapped in ``ack``."""

    message: Outbound


@attrs.frozen
class Later:
    """A handler result: the reply is sent later, once, through :meth:`Router.finish`."""


LATER: Final = Later()


@attrs.frozen
class CustomMessage:
    """An embedder-defined inbound message (type under ``app.``) with its decoded ``data``."""

    type: str
    id: OpId
    data: Any


class Router:
    """Dispatches inbound messages to handlers and builds the one reply each gets."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._custom: dict[str, msgspec.json.Decoder[Any]] = {}
        self._custom_msgpack: dict[str, msgspec.msgpack.Decoder[Any]] = {}

    def add(self, message_type: type[M], handler: Callable[[Context, M], Awaitable[Any]]) -> None:
        """Register ``handler`` for one protocol message class."""
        kind = type_of(message_type)  # type: ignore[arg-type]
        if kind not in INBOUND_TYPES:
            raise ValueError(f"{kind!r} is not an inbound protocol type")
        self._handlers[kind] = handler

    def route(self, message_type: type[M]) -> Callable[[Callable[[Context, M], Awaitable[Any]]], Any]:
        """Decorator form of :meth:`add`."""
        def decorate(handler: Callable[[Context, M], Awaitable[Any]]) -> Any:
            self.add(message_type, handler)
            return handler
        return decorate

    def add_custom(
        self, type_name: str, data_type: Any, handler: Callable[[Context, CustomMessage], Awaitable[Any]]
    ) -> None:
        """Register an embedder's inbound type ``app.<name>`` whose ``data`` decodes as ``data_type``.

        ``data_type`` is anything msgspec can decode into (a ``msgspec.Struct``, ``dict``, ...);
        validation failures answer ``INVALID_PAYLOAD`` naming the field like built-in types do.
        """
        if not type_name.startswith(APP_EVENT_PREFIX) or len(type_name) <= len(APP_EVENT_PREFIX):
            raise ValueError(f"custom types must be named 'app.<name>', got {type_name!r}")
        envelope = msgspec.defstruct(
            "CustomEnvelope", [("type", str), ("id", OpId, None), ("data", data_type, None)]
        )
        self._custom[type_name] = msgspec.json.Decoder(envelope)
        self._custom_msgpack[type_name] = msgspec.msgpack.Decoder(envelope)
        self._handlers[type_name] = handler

    @property
    def handled_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def decode(self, frame: str | bytes, *, binary: bool) -> Inbound | CustomMessage:
        """Decode a frame into a protocol message or a registered custom message.

        Raises :class:`FrameError` with the code the reply will carry.
        """
        try:
            return decode_frame(frame, msgpack=binary)
        except FrameError as exc:
            if exc.code != "UNKNOWN_TYPE" or not self._custom:
                raise
            decoders = self._custom_msgpack if binary else self._custom
            kind = self._peek_type(frame, binary)
            decoder = decoders.get(kind or "")
            if decoder is None:
                raise
            try:
                envelope = decoder.decode(cast(Any, frame))
            except msgspec.ValidationError as err:
                raise FrameError("INVALID_PAYLOAD", str(err), exc.op_id) from None
            return CustomMessage(envelope.type, envelope.id, envelope.data)

    @staticmethod
    def _peek_type(frame: str | bytes, binary: bool) -> str | None:
        data = cast(Any, frame)
        value = msgspec.msgpack.decode(data) if binary else msgspec.json.decode(data)
        kind = value.get("type") if isinstance(value, dict) else None
        return kind if isinstance(kind, str) else None

    async def dispatch(self, ctx: Context, message: Inbound | CustomMessage) -> Outbound | None:
        """Run the message's handler and return the reply to send, or None (no id, success, later)."""
        kind = _kind(message)
        handler = self._handlers.get(kind)
        ctx.hub.metrics.messages_in_by[kind].inc()
        try:
            if handler is None:
                if kind in NOT_YET_IMPLEMENTED:
                    raise SignalError("UNKNOWN_TYPE", f"{kind}: not implemented yet")
                raise SignalError("UNKNOWN_TYPE", f"unknown message type {kind!r}")
            result = await handler(ctx, message)
        except Exception as exc:
            return _failed(ctx, kind, message.id, exc)
        if result is LATER:
            return None
        return _succeeded(message.id, result)

    @staticmethod
    def finish(
        ctx: Context, message: Inbound | CustomMessage, place: HeldReply, result: Any, error: BaseException | None
    ) -> None:
        """Send the reply of a message whose handler returned :data:`LATER`, in its ``place``.

        ``place`` is what :meth:`Session.hold_reply` gave the handler; the reply (``ack`` with
        ``result``, or the ``error`` for ``error``) goes out in request order.
        """
        if error is not None:
            reply: Outbound | None = _failed(ctx, _kind(message), message.id, error)
        else:
            reply = _succeeded(message.id, result)
        ctx.session.release(place, partial(ctx.hub.reply_now, ctx.session, reply) if reply is not None else None)


def _kind(message: Inbound | CustomMessage) -> str:
    return message.type if isinstance(message, CustomMessage) else type_of(type(message))


def _failed(ctx: Context, kind: str, op_id: OpId, exc: BaseException) -> Error:
    if isinstance(exc, SignalError):
        if exc.code in AUDITED_CODES:
            audit.warning("refused code=%s type=%s user=%s peer=%s reason=%s", exc.code, kind,
                          ctx.session.user_id, ctx.session.remote, exc.message)
        return error_reply(op_id, exc.code, exc.message)
    log.error("handler for %s failed (session %s)", kind, ctx.session.session_id, exc_info=exc)
    return error_reply(op_id, "INTERNAL", "internal error; the request was not completed")


def _succeeded(op_id: OpId, result: Any) -> Outbound | None:
    if isinstance(result, Reply):
        return result.message
    if op_id is None:
        return None
    return Ack(data=AckData(op_id=op_id, data=result))


def error_reply(op_id: OpId, code: str, message: str) -> Error:
    """The ``error`` reply for ``op_id``."""
    return Error(data=ErrorData(op_id=op_id, code=code, message=message))
