"""The JSON Schema of the wire types, generated from the msgspec types: ``docs/protocol.schema.json``.

``python -m signald.protocol.schema > docs/protocol.schema.json`` writes it; a test
(tests/unit/protocol/test_schema.py) fails when the file is not what this module generates, so the
schema cannot drift from the types. ``$defs/Inbound`` is any client-to-server frame,
``$defs/Outbound`` any server-to-client frame; both are discriminated by ``type``.
"""

from __future__ import annotations

import json
from typing import Any, Union

import msgspec

from signald.protocol.inbound import INBOUND_MESSAGES
from signald.protocol.outbound import OUTBOUND_MESSAGES


def protocol_schema() -> dict[str, Any]:
    """The schema: a frame in either direction, with ``$defs`` for every message and payload type."""
    inbound: Any = Union[tuple(INBOUND_MESSAGES)]  # a Union built from a tuple at run time
    outbound: Any = Union[tuple(OUTBOUND_MESSAGES)]
    (inbound_schema, outbound_schema), components = msgspec.json.schema_components(
        [inbound, outbound], ref_template="#/$defs/{name}")
    defs = {"Inbound": inbound_schema, "Outbound": outbound_schema, **dict(sorted(components.items()))}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "signald wire protocol (signald.v1)",
        "description": "Generated from signald/protocol by signald.protocol.schema; see docs/protocol.md. "
                       "Inbound: client to server; Outbound: server to client.",
        "anyOf": [{"$ref": "#/$defs/Inbound"}, {"$ref": "#/$defs/Outbound"}],
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(protocol_schema(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
