"""The frozen surface: the one place where the set of message ``type`` strings is decided.

docs/protocol.md lists exactly these sets (tests/unit/protocol/test_frozen_surface.py holds both to it). A type
is added, removed or renamed here, in the docs, the handlers and the tests together. Embedders'
types live under :data:`APP_EVENT_PREFIX`, outside the frozen set.
"""

from __future__ import annotations

from typing import Final

from msgspec import Struct

from signald.protocol.inbound import INBOUND_MESSAGES, Inbound
from signald.protocol.outbound import OUTBOUND_MESSAGES

__all__ = [
    "type_of", "INBOUND_TYPES", "OUTBOUND_TYPES", "APP_EVENT_PREFIX", "INBOUND_BY_TYPE"
]


def type_of(cls: type[Struct]) -> str:
    """The wire ``type`` string of a message class."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


INBOUND_TYPES: Final[frozenset[str]] = frozenset(type_of(c) for c in INBOUND_MESSAGES)
OUTBOUND_TYPES: Final[frozenset[str]] = frozenset(type_of(c) for c in OUTBOUND_MESSAGES)
APP_EVENT_PREFIX: Final = "app."
INBOUND_BY_TYPE: Final[dict[str, type[Inbound]]] = {type_of(c): c for c in INBOUND_MESSAGES}
