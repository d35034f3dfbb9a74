"""PostgreSQL schema of the chat history and its migrations, applied under an advisory lock.

Everything lives in the schema ``signald`` (the connection's ``search_path``), so the history can
share a database with other tables. The version is the one row of ``signald.schema_version``.
:data:`MIGRATIONS` is this dialect's ordered list, like SQLite's (:mod:`signald.history.schema`):
migration ``k`` takes version ``k`` to ``k + 1``, appended, never edited; each runs in its own
transaction with the version bump.

:func:`migrate` holds ``pg_advisory_lock`` (:data:`LOCK_KEY`) while it reads the version and
migrates, so daemons starting together migrate once: the others wait, then find it done.

Tables (version 1) are SQLite's version 3 (see there), with ``BIGINT`` counters and a
``rowid`` identity column on ``reactions`` (their order). The ``rooms`` row is written by every
transaction that changes the room (it allocates ``seq`` and ``rev``): always up to date.

Error handling: a database written by a newer signald raises
:class:`~signald.history.contract.SchemaError`; driver errors propagate after the failed
migration's transaction was rolled back.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from signald.history.contract import SchemaError
from signald.history.schema import CLIENT_MSGS_COLUMNS, REACTIONS_COLUMNS, READ_RECEIPTS_COLUMNS

__all__ = ["LOCK_KEY", "MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "migrate", "schema_version"]

SCHEMA: Final = "signald"
LOCK_KEY: Final = 0x5167_6E61_6C64  # "signald"-ish: one advisory lock per database for migrations

_V1: Final = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version (version) VALUES (0)",
    """CREATE TABLE rooms (
        room TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL DEFAULT 0,
        count BIGINT NOT NULL DEFAULT 0,
        last_rev BIGINT NOT NULL DEFAULT 0,
        pruned_rev BIGINT NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE messages (
        room TEXT NOT NULL,
        seq BIGINT NOT NULL,
        id TEXT NOT NULL UNIQUE,
        rev BIGINT NOT NULL,
        user_id TEXT NOT NULL,
        body TEXT NOT NULL,
        attachments TEXT NOT NULL DEFAULT '[]',
        parent_id TEXT,
        created_at TEXT NOT NULL,
        created_ts DOUBLE PRECISION NOT NULL,
        edited_at TEXT,
        deleted_at TEXT,
        redacted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (room, seq)
    )""",
    "CREATE INDEX messages_rev ON messages (room, rev)",
    """CREATE TABLE tombstones (
        room TEXT NOT NULL,
        rev BIGINT NOT NULL,
        id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        created_ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (room, rev)
    )""",
    "CREATE TABLE reactions (\n    rowid BIGINT GENERATED ALWAYS AS IDENTITY,\n"
    f"{REACTIONS_COLUMNS.format(integer='BIGINT')})",
    f"CREATE TABLE read_receipts (\n{READ_RECEIPTS_COLUMNS.format(integer='BIGINT')})",
    "CREATE TABLE last_seen (user_id TEXT PRIMARY KEY, at TEXT NOT NULL)",
    f"CREATE TABLE client_msgs (\n{CLIENT_MSGS_COLUMNS})",
    "CREATE INDEX client_msgs_message ON client_msgs (message_id)",
)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1,)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the database (0: no signald schema yet)."""
    exists = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_version",)).fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = conn.execute(f"SELECT version FROM {SCHEMA}.schema_version").fetchone()
    return 0 if row is None else int(row[0])


def check_version(version: int) -> None:
    """:class:`SchemaError` for a database this signald cannot use as it is."""
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {version} is newer than this signald supports ({SCHEMA_VERSION})")


def migrate(conn: psycopg.Connection[Any], target: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Bring the database up to ``target`` under the advisory lock; ``(version before, after)``.

    ``conn`` is in autocommit mode with ``search_path`` set to :data:`SCHEMA`.
    """
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        before = version = schema_version(conn)
        check_version(before)
        while version < target:
            with conn.transaction():
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"UPDATE {SCHEMA}.schema_version SET version = %s", (version + 1,))
            version += 1
        return before, version
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
