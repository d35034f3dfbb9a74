"""Keys that changed since their reader last looked: how a cache above a state module stays exact."""

from __future__ import annotations

from typing import Final, Generic, TypeVar

K = TypeVar("K")

CHANGES_CAP: Final = 65536  # past this many, the reader starts over instead of the set growing


class Changes(Generic[K]):
    """The keys a state module changed since :meth:`drain`; bounded: past ``cap`` keys the set is
    dropped and the next drain says "everything" (``None``), so a reader that rarely looks costs
    no memory."""

    __slots__ = ("_cap", "_keys", "_lost")

    def __init__(self, cap: int = CHANGES_CAP) -> None:
        self._cap = cap
        self._keys: set[K] = set()
        self._lost = False

    def add(self, key: K) -> None:
        """``key`` changed."""
        if self._lost:
            return
        keys = self._keys
        keys.add(key)
        if len(keys) > self._cap:
            keys.clear()
            self._lost = True

    def drain(self) -> set[K] | None:
        """What changed since the previous drain; ``None`` when too much did (forget everything)."""
        if self._lost:
            self._lost = False
            return None
        keys, self._keys = self._keys, set()
        return keys
