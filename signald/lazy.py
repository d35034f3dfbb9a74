"""Names a package loads on first use (PEP 562), so that importing one layer loads only that layer.

``signald``, ``signald.client`` and ``signald.api`` re-export names from modules that pull in
trio, asyncio or httpx; each declares ``name -> module`` once and gets its ``__getattr__`` and
``__dir__`` from :func:`exports`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` for ``package``, which re-exports ``table``'s names.

    A name is imported from its module on first use and stored in the package, so later lookups
    skip ``__getattr__``; an unknown name raises ``AttributeError`` as a plain module would.
    """
    namespace = sys.modules[package].__dict__

    def getattr_(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted([*namespace, *table])

    return getattr_, dir_
