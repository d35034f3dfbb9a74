"""What the nodes put into Redis: key and channel names, envelopes and records (sans-IO).

Everything is MessagePack. Pub/sub channels are server-wide in Redis (not per database), so every
name starts with ``{signald.<db>}.``: two clusters on one Redis in different databases never hear
each other. The braces make ``signald.<db>`` the hash tag of every key and channel: on a Redis
Cluster they all live in one hash slot, so one shard carries everything signald writes and
publishes, in the order each node sent it (docs/cluster.md, "Redis Cluster"). One name scheme
everywhere: nodes of one cluster run one version of signald.

Keys
    ``<p>nodes``   sorted set: node id -> wall-clock time of its last heartbeat
    ``<p>conns``   hash: conn id -> :class:`ConnRecord` (node, user, rooms) of every connected device
    ``<p>status``  hash: user id -> the status the user chose (``presence.set``), while connected
Channels
    ``<p>state``       every :data:`~signald.app.replica.Op` (:class:`StateEnvelope`); every node listens
    ``<p>room.<R>``    room R's events (:class:`RoomEnvelope`); only nodes with a member in R listen
    ``<p>user.<U>``    user U's ``app.*`` events (:class:`UserEnvelope`); only nodes with a device of U
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from signald.app.replica import Op
from signald.protocol import OUTBOUND_MESSAGES, Outbound
from signald.state.brokerurl import parse_broker_url

__all__ = ["ConnRecord", "Echo", "Names", "RoomEnvelope", "StateEnvelope", "UserEnvelope", "decode_event"]


class Echo(msgspec.Struct, tag="echo", array_like=True, frozen=True):
    """A node's heartbeat on the state channel: hearing its own proves its pub/sub works."""


class StateEnvelope(msgspec.Struct, array_like=True, frozen=True):
    origin: str
    op: Op | Echo


class RoomEnvelope(msgspec.Struct, array_like=True, frozen=True):
    origin: str
    exclude: str | None
    history: bool  # a change the store committed: goes through the room's capture (and order)
    text: bytes  # the event's JSON, as the origin encoded it once


class UserEnvelope(msgspec.Struct, array_like=True, frozen=True):
    origin: str
    text: bytes


class ConnRecord(msgspec.Struct, array_like=True, frozen=True):
    node: str
    user: str
    rooms: list[str]


STATE_ENCODER: Final = msgspec.msgpack.Encoder()
STATE_DECODER: Final = msgspec.msgpack.Decoder(StateEnvelope)
ROOM_DECODER: Final = msgspec.msgpack.Decoder(RoomEnvelope)
USER_DECODER: Final = msgspec.msgpack.Decoder(UserEnvelope)
RECORD_DECODER: Final = msgspec.msgpack.Decoder(ConnRecord)
COUNTERS_DECODER: Final = msgspec.msgpack.Decoder(tuple[int, int])  # (messages_in, messages_out)

_ANY: Final = msgspec.json.Decoder()
_BY_TAG: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    str(cls.__struct_config__.tag): msgspec.json.Decoder(cls) for cls in OUTBOUND_MESSAGES
}


class _Tag(msgspec.Struct):
    type: str


_TAG: Final = msgspec.json.Decoder(_Tag)


def decode_event(text: bytes) -> Outbound | dict[str, Any]:
    """The outbound message another node encoded: our own types as their Structs (so ``rev`` and
    coalescing work as for a local event), an embedder's ``app.*`` event as a dict."""
    kind = _TAG.decode(text).type
    decoder = _BY_TAG.get(kind)
    if decoder is None:
        return dict(_ANY.decode(text))
    message: Outbound = decoder.decode(text)
    return message


class Names:
    """The key and channel names of one Redis database (see the module docstring)."""

    def __init__(self, broker_url: str) -> None:
        db = parse_broker_url(broker_url).db
        self.tag = f"{{signald.{db}}}"  # the hash tag: one slot for everything on a Redis Cluster
        self.prefix = self.tag + "."
        self.nodes = self.prefix + "nodes"
        self.conns = self.prefix + "conns"
        self.status = self.prefix + "status"
        self.stats = self.prefix + "stats"  # node -> its message counters, written with its heartbeat
        self.state = self.prefix + "state"
        self._room = self.prefix + "room."
        self._user = self.prefix + "user."

    def room(self, room: str) -> str:
        return self._room + room

    def user(self, user: str) -> str:
        return self._user + user

    def parse(self, channel: str) -> tuple[str, str]:
        """``("room", R)``, ``("user", U)`` or ``("state", "")`` for a channel of ours."""
        if channel == self.state:
            return "state", ""
        if channel.startswith(self._room):
            return "room", channel[len(self._room):]
        if channel.startswith(self._user):
            return "user", channel[len(self._user):]
        return "", channel
