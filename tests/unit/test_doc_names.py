"""Every Python name the docs cite (```signald.client.connect```, ```signald.cli.tune_gc()```) exists.

A renamed or moved class leaves the prose behind: docs/embedding.md and docs/protocol.md sent users
to ``signald.client.Refused`` after it moved to ``signald.client.raw``. Logger names
(``signald.audit``) and the subprotocols (``signald.v1``) read like module paths and are not.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
NAME = re.compile(r"`(signald(?:\.[A-Za-z_]\w*)+)(?:\(|`)")
LOGGERS = {match.group(1) for path in (ROOT / "signald").rglob("*.py")
           for match in re.finditer(r'getLogger\("(signald[\w.]*)"\)', path.read_text())}
NOT_PYTHON = LOGGERS | {"signald.v1", "signald.v1.msgpack", "signald.toml"}


def resolve(dotted: str) -> Any:
    """The object ``dotted`` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


def test_every_python_name_the_docs_cite_exists() -> None:
    missing = []
    for doc in DOCS:
        for name in sorted({match.group(1) for match in NAME.finditer(doc.read_text(encoding="utf-8"))}):
            if name in NOT_PYTHON:
                continue
            try:
                resolve(name)
            except (ImportError, AttributeError) as exc:
                missing.append(f"{doc.name}: {name} ({exc})")
    assert not missing, "\n".join(missing)
