"""SQLite schema of the chat history and its migrations.

The schema version lives in ``PRAGMA user_version``. :data:`MIGRATIONS` is an ordered tuple of small
functions; migration ``k`` (0-based) takes a database at version ``k`` to version ``k + 1``. A new
version is added by appending a function, never by editing an old one, so every database ever
written can be brought up to date. Each migration runs in its own transaction together with the
``user_version`` bump, so a crash mid-migration leaves the previous version intact.

Tables (version 3):

- ``rooms``: per-room ``last_seq`` counter (never decreases, so hard deletes and retention never
  cause a ``seq`` to be reused), ``count`` of stored messages (used by count retention and stats),
  ``last_rev``, the room's revision (raised by every stored change to its history), and
  ``pruned_rev``, the highest revision retention has removed (a resume from below it is incomplete).
  A room's row is created with its first message; after that the history store writes it lazily
  (see :mod:`signald.history.counters`): messages above ``last_seq`` are counted in neither column yet.
- ``messages``: one row per stored message, already folded (edits, redactions and soft deletes
  update the row in place), keyed by ``(room, seq)`` (``WITHOUT ROWID``) with a unique ``id``.
  (A row over about a quarter of a page, e.g. a long body, spills into overflow pages; chat
  messages are mostly far smaller, which is what ``WITHOUT ROWID`` suits.)
  ``created_ts`` is the creation time in epoch seconds for age retention (not indexed).
  ``rev`` is the room revision of the message's latest change, indexed by ``(room, rev)`` for
  ``changes`` (exact resume).
- ``tombstones``: one row per hard-deleted message, keyed by ``(room, rev)`` (the deletion's
  revision), with the message's ``id``, ``seq`` and ``created_ts`` (retention removes it with the
  messages of that age).
- ``reactions``: one row per (message, reaction, user); ``rowid`` order is reaction order.
- ``read_receipts``: the highest ``seq`` each user has read in each room.
- ``last_seen``: when each user was last seen (ISO 8601), for presence after a restart.
- ``client_msgs``: idempotency keys, ``client_msg_id`` unique per (user, room).

Versions: 1 is the initial schema; 2 re-keys ``messages`` by ``(room, seq)`` and drops the
``created_ts`` index, so that storing a message writes two B-tree pages instead of four; 3 adds room
revisions (existing messages get ``rev = seq``: revisions in ``seq`` order, below every later one).

Error handling: :func:`migrate` raises :class:`SchemaError` when the file was written by a newer
signald (``user_version`` above :data:`SCHEMA_VERSION`); sqlite errors propagate unchanged after
the failed migration's transaction has been rolled back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final

from signald.history.contract import SchemaError

__all__ = [
    "CLIENT_MSGS_COLUMNS", "MIGRATIONS", "READ_RECEIPTS_COLUMNS", "REACTIONS_COLUMNS", "SCHEMA_VERSION",
    "SchemaError", "migrate", "user_version",
]

Migration = Callable[[sqlite3.Connection], None]


# The columns of a message after its keys: the same in every schema version so far.
_MESSAGE_FIELDS: Final = """            user_id TEXT NOT NULL,
            body TEXT NOT NULL,
            attachments TEXT NOT NULL DEFAULT '[]',
            parent_id TEXT,
            created_at TEXT NOT NULL,
            created_ts REAL NOT NULL,
            edited_at TEXT,
            deleted_at TEXT,
            redacted INTEGER NOT NULL DEFAULT 0,
"""


# Tables both dialects define alike (PostgreSQL's schema uses these texts too); ``{integer}``
# is the dialect's counter type.
REACTIONS_COLUMNS: Final = """\
            room TEXT NOT NULL,
            seq {integer} NOT NULL,
            reaction TEXT NOT NULL,
            user_id TEXT NOT NULL,
            UNIQUE (room, seq, reaction, user_id)
"""
READ_RECEIPTS_COLUMNS: Final = """\
            user_id TEXT NOT NULL,
            room TEXT NOT NULL,
            seq {integer} NOT NULL,
            PRIMARY KEY (user_id, room)
"""
CLIENT_MSGS_COLUMNS: Final = """\
            user_id TEXT NOT NULL,
            room TEXT NOT NULL,
            client_msg_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            PRIMARY KEY (user_id, room, client_msg_id)
"""


def _v1_initial(conn: sqlite3.Connection) -> None:
    statements = (
        """CREATE TABLE rooms (
            room TEXT PRIMARY KEY,
            last_seq INTEGER NOT NULL,
            count INTEGER NOT NULL
        ) WITHOUT ROWID""",
        f"""CREATE TABLE messages (
            pk INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            room TEXT NOT NULL,
            seq INTEGER NOT NULL,
{_MESSAGE_FIELDS}            UNIQUE (room, seq)
        )""",
        "CREATE INDEX messages_created_ts ON messages (created_ts)",
        f"""CREATE TABLE reactions (
{REACTIONS_COLUMNS.format(integer="INTEGER")}        )""",
        f"""CREATE TABLE read_receipts (
{READ_RECEIPTS_COLUMNS.format(integer="INTEGER")}        ) WITHOUT ROWID""",
        """CREATE TABLE last_seen (
            user_id TEXT PRIMARY KEY,
            at TEXT NOT NULL
        ) WITHOUT ROWID""",
        f"""CREATE TABLE client_msgs (
{CLIENT_MSGS_COLUMNS}        ) WITHOUT ROWID""",
        "CREATE INDEX client_msgs_message ON client_msgs (message_id)",
    )
    for statement in statements:
        conn.execute(statement)


_V2_COLUMNS = (
    "room, seq, id, user_id, body, attachments, parent_id, created_at, created_ts, edited_at, deleted_at, redacted"
)


def _v2_messages_by_room_seq(conn: sqlite3.Connection) -> None:
    # A message is stored in the (room, seq) B-tree itself (WITHOUT ROWID) and in the id index:
    # two pages per insert instead of four (rowid table, id, (room, seq) and created_ts indexes).
    # Age retention walks each room in seq order instead of using a created_ts index.
    conn.execute(
        f"""CREATE TABLE messages_v2 (
            room TEXT NOT NULL,
            seq INTEGER NOT NULL,
            id TEXT NOT NULL UNIQUE,
{_MESSAGE_FIELDS}            PRIMARY KEY (room, seq)
        ) WITHOUT ROWID"""
    )
    conn.execute(f"INSERT INTO messages_v2 ({_V2_COLUMNS}) SELECT {_V2_COLUMNS} FROM messages")
    conn.execute("DROP TABLE messages")  # and its indexes, messages_created_ts included
    conn.execute("ALTER TABLE messages_v2 RENAME TO messages")


def _v3_room_revisions(conn: sqlite3.Connection) -> None:
    # Existing messages take rev = seq: ascending in seq order, unique per room, and at most the
    # room's last_seq, which becomes its last_rev, so every later change takes a higher one.
    conn.execute("ALTER TABLE messages ADD COLUMN rev INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE messages SET rev = seq")
    conn.execute("CREATE INDEX messages_rev ON messages (room, rev)")
    conn.execute("ALTER TABLE rooms ADD COLUMN last_rev INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE rooms ADD COLUMN pruned_rev INTEGER NOT NULL DEFAULT 0")
    # Where messages went before revisions existed (hard deletes, retention) no tombstone tells a
    # resuming client: a resume from below the migration's revision answers changes_reset.
    conn.execute("UPDATE rooms SET last_rev = last_seq, pruned_rev = CASE WHEN count < last_seq"
                 " THEN last_seq ELSE 0 END")
    conn.execute(
        """CREATE TABLE tombstones (
            room TEXT NOT NULL,
            rev INTEGER NOT NULL,
            id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            created_ts REAL NOT NULL,
            PRIMARY KEY (room, rev)
        ) WITHOUT ROWID"""
    )


MIGRATIONS: Final[tuple[Migration, ...]] = (_v1_initial, _v2_messages_by_room_seq, _v3_room_revisions)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the database file (0 for a new file)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Bring the database up to ``target``; returns ``(version before, version after)``.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open transaction.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"target version must be within 0..{SCHEMA_VERSION}, got {target}")
    before = user_version(conn)
    if before > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {before} is newer than this signald supports ({SCHEMA_VERSION})"
        )
    while True:
        # Re-read the version under the write lock: another process may have migrated meanwhile.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = user_version(conn)
            if version >= target:
                conn.execute("COMMIT")
                return before, version
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1:d}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
