"""The set of message types is a public contract: code, docs and handlers must agree.

That every type is also carried out end to end is tests/e2e/test_every_type.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from signald.handlers import default_router
from signald.protocol import INBOUND_TYPES, OUTBOUND_TYPES

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "protocol.md"
TYPE_CELL = re.compile(r"^\|\s*`([a-z][a-z.]*)`")


def documented_types(heading: str) -> set[str]:
    """Types in the first column of the table under ``## <heading>`` in docs/protocol.md."""
    section = DOC.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    types: set[str] = set()
    for line in section.splitlines():
        match = TYPE_CELL.match(line)
        if match:
            types.add(match.group(1))
    return types


def test_inbound_types_equal_the_documented_table() -> None:
    assert documented_types("Inbound messages") == INBOUND_TYPES


def test_outbound_types_equal_the_documented_table() -> None:
    assert documented_types("Outbound messages") == OUTBOUND_TYPES


def test_the_default_router_handles_exactly_the_inbound_types() -> None:
    assert default_router().handled_types == INBOUND_TYPES
