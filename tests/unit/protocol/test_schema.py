"""docs/protocol.schema.json is what signald.protocol.schema generates from the msgspec types.

When this fails after a change to the protocol types, regenerate it:
``.venv/bin/python -m signald.protocol.schema > docs/protocol.schema.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from signald.protocol.schema import protocol_schema, render
from signald.protocol.types import INBOUND_TYPES, OUTBOUND_TYPES

SCHEMA = Path(__file__).resolve().parents[3] / "docs" / "protocol.schema.json"


def test_schema_file_is_current() -> None:
    assert SCHEMA.read_text() == render(), "regenerate: python -m signald.protocol.schema > docs/protocol.schema.json"


def test_schema_covers_every_type() -> None:
    defs = protocol_schema()["$defs"]
    for union, types in (("Inbound", INBOUND_TYPES), ("Outbound", OUTBOUND_TYPES)):
        mapping = defs[union]["discriminator"]["mapping"]
        assert set(mapping) == set(types)
    json.dumps(defs)  # plain JSON all the way down
