"""``history.url``: which history store to open, and how to print its URL without the password.

``sqlite:///PATH`` (everything after the third slash is the path, as SQLAlchemy reads it:
``sqlite:///./signald.db`` relative, ``sqlite:////var/lib/signald.db`` absolute,
``sqlite:///:memory:``) or ``postgresql://user:password@host:port/dbname`` (``postgres://`` too;
query parameters such as ``?sslmode=require`` go to libpq unchanged).

Error handling: :func:`parse_history_url` raises :class:`ValueError` with a message that never
contains the password; :func:`redact` is what logs and errors print instead of a URL.
"""

from __future__ import annotations

import urllib.parse
from typing import Final, Literal, NamedTuple

__all__ = ["HistoryURL", "parse_history_url", "redact", "sqlite_url"]

SQLITE_PREFIX: Final = "sqlite:///"
POSTGRES_SCHEMES: Final = ("postgresql", "postgres")


class HistoryURL(NamedTuple):
    """A parsed ``history.url``: ``target`` is the SQLite path or the libpq connection URL."""

    backend: Literal["sqlite", "postgresql"]
    target: str
    shown: str
    """The URL as logs and errors may show it (password replaced by ``***``)."""


def sqlite_url(path: str) -> str:
    """The URL of a SQLite file (what ``server.db`` / ``--db`` mean)."""
    return SQLITE_PREFIX + path


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, also a query option whose name holds
    "password" (libpq's ``?password=``, a broker's ``?sentinel_password=``); unparsable URLs are
    hidden whole."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if "password" in parts.query.lower():
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        hidden = [(key, "***" if "password" in key.lower() else value) for key, value in pairs]
        parts = parts._replace(query=urllib.parse.urlencode(hidden, safe="*"))
    if password is None:
        return urllib.parse.urlunsplit(parts)
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def parse_history_url(url: str) -> HistoryURL:
    """What ``url`` selects; :class:`ValueError` (without the password) if it selects nothing."""
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX):]
        if not path:
            raise ValueError("a sqlite URL needs a path: sqlite:///./signald.db")
        return HistoryURL("sqlite", path, url)
    shown = redact(url)
    scheme = url.partition(":")[0].lower()
    if scheme in POSTGRES_SCHEMES:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise ValueError(f"not a valid PostgreSQL URL: {shown}") from None
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError(f"a PostgreSQL URL needs a host: {shown}")
        return HistoryURL("postgresql", url, shown)
    raise ValueError(f"expected sqlite:///PATH or postgresql://user:password@host:port/dbname, got {shown}")
