"""From a decoded message to exactly one reply.

The router maps each inbound message class to a handler ``async (ctx, msg) -> result``.
Whatever happens, a message that carries an ``id`` gets exactly one reply: ``ack`` with the
handler's result, ``error`` with the code of the :class:`SignalError` it raised, or ``INTERNAL``
for any other exception (logged with its traceback; the connection stays open). A message
without ``id`` gets no ack, but still gets an ``error`` (``op_id: null``) if it fails.

A handler may return :class:`Reply` to answer with another message type instead of ``ack``
(``presence.ping`` answers ``presence.pong``), or :data:`LATER` when it has held a place in the
session's reply order (:meth:`signald.app.context.Context.defer`) and fills it once the work is
done (``chat.send`` answers from the history store's commit callback, so the connection goes on
reading meanwhile). Replies always leave in request order. Which reply a result or an exception
gets is decided in :mod:`signald.state.replies`.

Embedders add their own inbound types under the ``app.`` namespace with :meth:`Router.add_custom`;
the frozen protocol types cannot be redefined.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast

import attrs
import msgspec

from signald.errors import SignalError
from signald.protocol import (
    APP_EVENT_PREFIX,
    INBOUND_TYPES,
    FrameDecoder,
    Inbound,
    OpId,
    Outbound,
    decode_frame,
    type_of,
)
from signald.state.replies import Reply, error_reply, failed_reply, succeeded_reply

if TYPE_CHECKING:
    from signald.app.context import Context

__all__ = ["LATER", "CustomMessage", "Later", "Reply", "Router", "error_reply"]

M = TypeVar("M")
Handler = Callable[["Context", Any], Awaitable[Any]]


@attrs.frozen
class Later:
    """A handler result: the reply is sent later, once, through :meth:`Context.defer`'s handle."""


LATER: Final = Later()


@attrs.frozen
class CustomMessage:
    """An embedder-defined inbound message (type under ``app.``) with its decoded ``data``."""

    type: str
    id: OpId
    data: Any


class _AppEnvelope(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of the Struct :meth:`Router.add_custom` builds per type, tagged like protocol messages.

    Sharing the tag lets one union decoder read protocol and custom frames alike in one pass.
    """

    id: OpId = None
    data: Any = None


class _Decode(Protocol):
    def __call__(self, frame: bytes | str, *, msgpack: bool = ...) -> Inbound | CustomMessage: ...


def _decode_with_custom(frames: FrameDecoder, frame: bytes | str, *, msgpack: bool = False) -> Inbound | CustomMessage:
    """Decode with the union that includes the custom types; their envelopes become :class:`CustomMessage`."""
    message = frames.decode(frame, msgpack=msgpack)
    if isinstance(message, _AppEnvelope):
        return CustomMessage(type_of(type(message)), message.id, message.data)
    return cast(Inbound, message)


class Router:
    """Dispatches inbound messages to handlers and builds the one reply each gets."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._envelopes: dict[str, type[_AppEnvelope]] = {}
        # Protocol frames alone decode with the protocol's own union; once custom types exist,
        # with a union that includes them (rebuilt on registration, never per frame).
        self._decode: _Decode = decode_frame

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
        # No protocol type starts with "app.", so none can be redefined here.
        if not type_name.startswith(APP_EVENT_PREFIX) or len(type_name) <= len(APP_EVENT_PREFIX):
            raise ValueError(f"custom types must be named 'app.<name>', got {type_name!r}")
        self._envelopes[type_name] = cast(type[_AppEnvelope], msgspec.defstruct(
            "CustomEnvelope", [("data", data_type, None)], bases=(_AppEnvelope,), tag=type_name
        ))
        self._decode = partial(_decode_with_custom, FrameDecoder(self._envelopes.values()))
        self._handlers[type_name] = handler

    @property
    def handled_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def decode(self, frame: str | bytes, *, binary: bool) -> Inbound | CustomMessage:
        """Decode a frame into a protocol message or a registered custom message.

        Raises :class:`~signald.protocol.FrameError` with the code the reply will carry.
        """
        return self._decode(frame, msgpack=binary)

    async def dispatch(self, ctx: Context, message: Inbound | CustomMessage) -> Outbound | None:
        """Run the message's handler and return the reply to send, or None (no id, success, later)."""
        kind = _kind(message)
        handler = self._handlers.get(kind)
        ctx.hub.metrics.messages_in_by[kind].inc()
        try:
            if handler is None:
                raise SignalError("UNKNOWN_TYPE", f"unknown message type {kind!r}")
            result = await handler(ctx, message)
        except Exception as exc:
            session = ctx.session
            return failed_reply(kind, message.id, exc, user_id=session.user_id, remote=session.remote,
                                 session_id=session.session_id, may_audit=session.may_audit)
        if result is LATER:
            return None
        return succeeded_reply(message.id, result)


def _kind(message: Inbound | CustomMessage) -> str:
    return message.type if isinstance(message, CustomMessage) else type_of(type(message))
