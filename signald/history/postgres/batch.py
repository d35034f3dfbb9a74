"""Many sends in one go on PostgreSQL: the group commit's fast path.

On SQLite a statement costs microseconds; on PostgreSQL each costs a round trip, so a batch of
sends stored one by one (a savepoint, the idempotency check, the room row, the insert, the key,
the release: six round trips each) is slow. :func:`store_sends` stores a batch made only of sends
with a handful of statements whatever its size: one look-up of the parents (if any), one room row
update per room (taking ``k`` consecutive ``seq`` and ``rev`` at once, rooms in name order so that
daemons lock them in the same order), and the inserts through ``executemany``.

It gives up wherever a send would not simply be stored: a key twice in the batch or a parent that
is not a stored message of the room (returns None, before writing anything), a retry of a stored
``client_msg_id`` (the key's insert fails). The writer then rolls back and stores the batch one
savepoint per send, where the rules (:mod:`signald.history.rules`) answer each case. The writer
runs it in psycopg's pipeline mode: a lone send takes two round trips (the room row, then the
inserts with the commit) instead of six. The results are those :func:`~signald.
history.writes.send` would give: ``seq`` and ``rev`` in the batch's order per room.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from signald.history import rules
from signald.history.postgres.sql import Adapter
from signald.history.writes import SendOp
from signald.protocol import ChatMessage
from signald.timefmt import iso_utc

__all__ = ["store_sends"]

_TAKE: Final = (
    "INSERT INTO rooms (room, last_seq, count, last_rev) VALUES (%(room)s, %(k)s, %(k)s, %(k)s) ON CONFLICT (room)"
    " DO UPDATE SET last_seq = rooms.last_seq + %(k)s, count = rooms.count + %(k)s, last_rev = rooms.last_rev + %(k)s"
    " RETURNING last_seq, last_rev"
)
_INSERT: Final = (
    "INSERT INTO messages (id, room, seq, rev, user_id, body, attachments, parent_id, created_at, created_ts)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_KEY: Final = "INSERT INTO client_msgs (user_id, room, client_msg_id, message_id) VALUES (%s, %s, %s, %s)"


def store_sends(conn: Adapter, sends: list[SendOp]) -> list[tuple[tuple[ChatMessage, bool], Any]] | None:
    """Store every send of the batch in the open transaction, or None (nothing written): see above."""
    raw = conn.raw
    keys = [(s.user_id, s.room, s.client_msg_id) for s in sends if s.client_msg_id is not None]
    if len(set(keys)) != len(keys):
        return None
    # A key already stored (a retry) is not looked up: its insert fails, and the writer rolls the
    # whole batch back and runs it send by send. Retries are rare; the look-up was a round trip.
    parents = {s.parent_id for s in sends if s.parent_id is not None}
    if parents:
        rooms_of = dict(raw.execute("SELECT id, room FROM messages WHERE id = ANY(%s)", (list(parents),)).fetchall())
        if any(s.parent_id is not None and rooms_of.get(s.parent_id) != s.room for s in sends):
            return None
    next_of: dict[str, list[int]] = {}
    for room, k in sorted(Counter(s.room for s in sends).items()):
        row = raw.execute(_TAKE, {"room": room, "k": k}).fetchone()
        assert row is not None
        next_of[room] = [int(row[0]) - k + 1, int(row[1]) - k + 1]
    now = sends[0].alloc.clock()
    created_at = iso_utc(now)
    rows, key_rows, results = [], [], []
    for s in sends:
        counter = next_of[s.room]
        seq, rev = counter
        counter[0], counter[1] = seq + 1, rev + 1
        message_id = rules.new_id(now)
        rows.append((message_id, s.room, seq, rev, s.user_id, s.body, s.encoded, s.parent_id, created_at, now))
        if s.client_msg_id is not None:
            key_rows.append((s.user_id, s.room, s.client_msg_id, message_id))
        message = ChatMessage(
            id=message_id, room=s.room, seq=seq, rev=rev, user_id=s.user_id, body=s.body,
            attachments=s.attachments, parent_id=s.parent_id, created_at=created_at, edited_at=None,
            deleted_at=None, redacted=False, reactions={},
        )
        results.append(((message, True), message))
    with raw.cursor() as cur:
        cur.executemany(_INSERT, rows)
        if key_rows:
            cur.executemany(_KEY, key_rows)
    return results
