"""The peer servers signald is measured against, each run as its own process.

Both implement the same semantics as signald's ``room.join`` / ``chat.send``: a join puts the
connection in a room; a chat message gets a ChatMessage-shaped record (same fields as signald's),
is acked to the sender and fanned out to the room's other connections. Neither stores anything.
Both print ``ready on ws://HOST:PORT/`` on stderr once listening, like ``signald serve``.
"""

from __future__ import annotations

import datetime
import itertools
import os
from typing import Any

_ids = itertools.count(1)
_prefix = os.urandom(4).hex()


def chat_message(room: str, seq: int, user_id: str, body: str) -> dict[str, Any]:
    """A record with the fields (and roughly the size) of signald's ``ChatMessage``."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "id": f"{_prefix}{next(_ids):016x}", "room": room, "seq": seq, "user_id": user_id, "body": body,
        "attachments": [], "parent_id": None, "created_at": now, "edited_at": None, "deleted_at": None,
        "redacted": False, "reactions": {},
    }
