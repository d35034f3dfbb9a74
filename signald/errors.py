"""Error codes of the wire protocol and the exception that carries them.

Handlers raise :class:`SignalError` for every expected failure; the router turns it into
exactly one ``error`` reply whose ``code`` is the exception's code.
"""

from __future__ import annotations

from typing import Final, Literal

ErrorCode = Literal[
    "BAD_REQUEST",
    "UNKNOWN_TYPE",
    "INVALID_PAYLOAD",
    "TOO_LARGE",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "NOT_IN_ROOM",
    "TARGET_OFFLINE",
    "RATE_LIMITED",
    "LIMIT_EXCEEDED",
    "CONFLICT",
    "INTERNAL",
]

ERROR_CODES: Final[frozenset[str]] = frozenset(ErrorCode.__args__)  # type: ignore[attr-defined]


class SignalError(Exception):
    """An expected failure, answered to the client as ``error`` with ``code``.

    ``message`` is for humans; clients branch on ``code``.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        if code not in ERROR_CODES:  # pragma: no cover - programming error
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message

    def __repr__(self) -> str:
        return f"SignalError({self.code!r}, {self.message!r})"


class StartupError(Exception):
    """The daemon cannot start; the message is one line naming the setting and the path or address
    (``server.db /var/lib/signald/x.db: unable to open database file``). ``signald serve`` prints it
    after ``signald: cannot start:`` and exits with status 1, without a traceback."""
