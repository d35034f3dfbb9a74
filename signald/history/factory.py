"""The one place that turns ``history.url`` into a store: SQLite or PostgreSQL.

Error handling: a URL that selects nothing raises :class:`ValueError` (without the password);
PostgreSQL without the ``psycopg`` driver installed raises
:class:`~signald.history.contract.StorageError` that says which extra to install. Nothing is
opened here: the caller opens the store (``async with``), which is where an unreachable database
is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from signald.history.contract import ChatStore, StorageError
from signald.history.store import HistoryStore
from signald.state.dburl import parse_history_url

__all__ = ["make_store"]


def make_store(
    url: str, *, read_only: bool = False, synchronous: str = "NORMAL", inline: bool = True,
    retention_max_age_s: float = 0, retention_max_count: int = 0, clock: Callable[[], float] = time.time,
    completion_scope: AbstractContextManager[Any] | None = None,
) -> ChatStore:
    """The store ``url`` selects, not opened yet. ``synchronous`` and ``inline`` are SQLite's."""
    parsed = parse_history_url(url)
    if parsed.backend == "sqlite":
        return HistoryStore(
            parsed.target, synchronous=synchronous, inline=inline, read_only=read_only,
            retention_max_age_s=retention_max_age_s, retention_max_count=retention_max_count, clock=clock,
            completion_scope=completion_scope,
        )
    try:
        from signald.history.postgres.store import PostgresStore
    except ImportError as exc:  # the optional extra is not installed
        raise StorageError("history.url is PostgreSQL, which needs psycopg: pip install 'signald[postgres]'"
                           ) from exc
    return PostgresStore(
        parsed.target, shown=parsed.shown, read_only=read_only, retention_max_age_s=retention_max_age_s,
        retention_max_count=retention_max_count, clock=clock, completion_scope=completion_scope,
    )
