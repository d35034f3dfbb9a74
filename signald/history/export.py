"""Every stored message, page by page: what ``signald history export`` prints."""

from __future__ import annotations

from collections.abc import AsyncIterator

from signald.history.contract import ChatStore
from signald.protocol import ChatMessage

__all__ = ["export"]


async def export(store: ChatStore, room: str | None = None, *, batch: int = 500) -> AsyncIterator[ChatMessage]:
    """Every stored message of ``room`` (or of all rooms, by room name), ascending ``seq``.

    Pages of ``batch`` through the store's ``history``: memory stays bounded whatever the size.
    """
    for name in [room] if room is not None else await store.rooms():
        after = 0
        while True:
            page = await store.history(room=name, after=after, limit=batch)
            for message in page.messages:
                yield message
            if not page.has_more:
                break
            after = page.messages[-1].seq
