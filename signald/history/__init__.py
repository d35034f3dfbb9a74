"""Durable chat history: the store API the handlers use, and what lies behind it.

:class:`HistoryStore` (:mod:`signald.history.store`) is the one entry point. Behind it:
``writer`` (the SQLite thread, group commit), ``transactions`` (a batch, its savepoints and
commit), ``inline`` (lone sends committed on the Trio thread), ``rules`` (what each write does),
``queries`` (SQL and row mapping, sans-IO), ``retention``, ``work`` (work items and their
completion), ``counters`` (per-room ``seq``/count kept in memory) and ``schema`` (migrations).
"""

from signald.history.store import Deleted, HistoryStats, HistoryStore, Rejoin, StorageError

__all__ = ["Deleted", "HistoryStats", "HistoryStore", "Rejoin", "StorageError"]
