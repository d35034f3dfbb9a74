"""Durable chat history: the store API the handlers use, and what lies behind it.

:class:`HistoryStore` is the one entry point (SQLite on a writer thread, see
:mod:`signald.history.store`); ``schema`` holds the migrations and ``counters`` the per-room
``seq``/count bookkeeping kept in memory.
"""

from signald.history.store import Deleted, HistoryStats, HistoryStore, Rejoin, StorageError

__all__ = ["Deleted", "HistoryStats", "HistoryStore", "Rejoin", "StorageError"]
