"""The one place that turns ``history.url`` into a store: SQLite or PostgreSQL.

Error handling: a URL that selects nothing raises :class:`ValueError` (without the password);
PostgreSQL without the ``psycopg`` driver installed raises
:class:`~signald.history.contract.StorageError` that says which extra to install. :func:`make_store`
opens nothing; :func:`opened_store` opens one for a daemon, turning a database it cannot open into
one :class:`~signald.errors.StartupError` line that names the setting.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

from signald.errors import StartupError
from signald.history.contract import ChatStore, SchemaError, StorageError
from signald.history.store import HistoryStore
from signald.state.dburl import parse_history_url

__all__ = ["make_store", "opened_store"]


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


@asynccontextmanager
async def opened_store(store: ChatStore, where: str, *, own_message: bool) -> AsyncIterator[ChatStore]:
    """``async with store``, where a store that cannot be opened is a :class:`StartupError` naming
    the setting (``where``: ``server.db PATH`` or ``history.url``).

    ``own_message``: say the store's own error message (a server database's: it names the store by
    its URL without the password, where the driver's error might hold it) rather than the
    underlying SQLite or OS error.
    """
    try:
        await store.open()
    except (StorageError, SchemaError, OSError) as exc:
        if own_message and isinstance(exc, StorageError):
            raise StartupError(f"{where}: {exc.message}") from None
        cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc
        raise StartupError(f"{where}: {getattr(cause, 'strerror', None) or cause}") from None
    try:
        yield store
    finally:
        await store.aclose()
