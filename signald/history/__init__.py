"""Durable chat history: the store contract, and the two stores that keep it.

:class:`~signald.history.contract.ChatStore` (:mod:`signald.history.contract`) is what the app and
the handlers use, with the guarantees of every call; :func:`signald.history.factory.make_store`
turns ``history.url`` into a store. Shared by both stores: ``rules`` (the chat rules, pure
decisions), ``writes`` and ``queries`` (the writes and reads in SQL both dialects run, sans-IO)
and ``work`` (work items and their completion on the Trio thread).

SQLite (:class:`HistoryStore`, :mod:`signald.history.store`): ``writer`` (its thread, group
commit), ``transactions`` (a batch, its savepoints and commit), ``inline`` (sends on an idle store
committed on the Trio thread: a lone one at once, those of a busy scheduler pass together in the
next), ``retention``, ``counters`` (per-room ``seq``/count kept in memory) and
``schema`` (migrations). PostgreSQL: :mod:`signald.history.postgres` (needs ``signald[postgres]``).
"""

from signald.history.contract import ChatStore, Deleted, HistoryStats, Rejoin, StorageError
from signald.history.store import HistoryStore

__all__ = ["ChatStore", "Deleted", "HistoryStats", "HistoryStore", "Rejoin", "StorageError"]
