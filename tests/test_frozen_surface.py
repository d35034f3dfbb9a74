"""The set of message types is a public contract: code, docs and tests must agree."""

from __future__ import annotations

import re
from pathlib import Path

from signald.handlers import default_router
from signald.protocol import INBOUND_TYPES, OUTBOUND_TYPES
from signald.router import NOT_YET_IMPLEMENTED

ROOT = Path(__file__).resolve().parent.parent
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


def test_every_inbound_type_is_handled_or_explicitly_not_yet() -> None:
    handled = default_router().handled_types
    assert handled.isdisjoint(NOT_YET_IMPLEMENTED)
    assert handled | NOT_YET_IMPLEMENTED == INBOUND_TYPES


def test_every_inbound_type_is_exercised_by_a_test() -> None:
    sources = "\n".join(
        path.read_text(encoding="utf-8") for path in (ROOT / "tests").glob("test_*.py")
        if path.name != Path(__file__).name
    )
    untested = {kind for kind in INBOUND_TYPES if f'"{kind}"' not in sources}
    assert not untested, f"no test sends {sorted(untested)}"
