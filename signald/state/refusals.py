"""How a refused handshake is answered: the refusal table of docs/protocol.md, sans-IO.

A browser's ``WebSocket`` cannot read the HTTP status of a refused handshake, so by default
(``server.refusals = "close"``) a connection refused for who it is or how often it comes completes
the handshake, gets exactly one ``error`` frame (``op_id`` null, ``retry_after_s`` on 4429) and is
closed with the matching close code. With ``"http"`` the same refusals are HTTP statuses (429 with
``Retry-After``). A subprotocol mismatch is HTTP 400 in both modes: a browser fails a handshake
whose subprotocol it did not offer by itself, so a close code could never reach it.

| cause | code | close | HTTP |
|---|---|---|---|
| ``unauthorized`` (token, authenticator, reserved user id) | ``UNAUTHORIZED`` | 4401 | 401 |
| ``forbidden`` (``Origin`` not allowed; an authenticator's 403) | ``FORBIDDEN`` | 4403 | 403 |
| ``rate_limited_address`` (new connections from this address) | ``RATE_LIMITED`` | 4429 | 429 |
| ``rate_limited_user`` (connections of this user; an authenticator's 429) | ``RATE_LIMITED`` | 4429 | 429 |
| ``subprotocol`` (none of ours offered) | ``BAD_REQUEST`` | — | 400 |

:func:`decide` turns a cause into a :class:`Refusal`; the server only carries it out. Nothing here
does I/O or reads a clock.
"""

from __future__ import annotations

import enum
import math
from typing import Final, Literal

import attrs

from signald.errors import ErrorCode
from signald.protocol import Error, ErrorData

RefusalMode = Literal["close", "http"]

#: ``retry_after_s`` of a refusal for too many connections of one user. Nothing in the daemon knows
#: when one of them will end (a closed tab goes at once; a vanished phone only after a heartbeat
#: interval and its timeout), so a client retries every few seconds: one cheap refused handshake.
USER_LIMIT_RETRY_AFTER_S: Final = 5.0


class Cause(enum.Enum):
    """Why a handshake is refused; the value is the ``cause`` label of ``signald_refusals_total``."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED_ADDRESS = "rate_limited_address"
    RATE_LIMITED_USER = "rate_limited_user"
    SUBPROTOCOL = "subprotocol"


_TABLE: Final[dict[Cause, tuple[ErrorCode, int | None, int]]] = {
    # cause: (error code, close code in "close" mode (None: always HTTP), HTTP status)
    Cause.UNAUTHORIZED: ("UNAUTHORIZED", 4401, 401),
    Cause.FORBIDDEN: ("FORBIDDEN", 4403, 403),
    Cause.RATE_LIMITED_ADDRESS: ("RATE_LIMITED", 4429, 429),
    Cause.RATE_LIMITED_USER: ("RATE_LIMITED", 4429, 429),
    Cause.SUBPROTOCOL: ("BAD_REQUEST", None, 400),
}


@attrs.frozen
class Refusal:
    """One refused handshake, decided: how to answer it and what to log.

    ``close_code`` set: complete the handshake, send :meth:`error`, close with it. Else answer
    ``http_status`` with ``message`` as the body and :meth:`headers`.
    """

    cause: Cause
    code: ErrorCode
    message: str
    http_status: int
    close_code: int | None
    retry_after_s: float | None

    def error(self) -> Error:
        """The one frame a refusal in "close" mode sends (``retry_after_s`` only when set)."""
        return Error(data=ErrorData(op_id=None, code=self.code, message=self.message,
                                    retry_after_s=self.retry_after_s))

    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """Extra headers of the HTTP answer: ``Retry-After`` (whole seconds, at least 1) on a 429."""
        if self.close_code is not None or self.http_status != 429 or self.retry_after_s is None:
            return ()
        return ((b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode()),)


def cause_of_status(status: int) -> Cause:
    """The cause of an authenticator's ``AuthRefused(status, ...)``: 403 forbids, 429 limits, else unauthorized."""
    if status == 403:
        return Cause.FORBIDDEN
    if status == 429:
        return Cause.RATE_LIMITED_USER
    return Cause.UNAUTHORIZED


def decide(
    cause: Cause, mode: RefusalMode, message: str, *, retry_after_s: float | None = None,
    http_status: int | None = None,
) -> Refusal:
    """How to refuse a handshake for ``cause`` under ``server.refusals = mode``.

    ``message`` is the short reason for humans (never a token). ``retry_after_s`` is kept only for
    the rate-limit causes (``USER_LIMIT_RETRY_AFTER_S`` when the caller has none), rounded up to
    the millisecond. ``http_status`` replaces the table's status in "http" mode (an authenticator
    that refuses with its own status keeps it there).
    """
    code, close_code, status = _TABLE[cause]
    if code == "RATE_LIMITED":
        wait = USER_LIMIT_RETRY_AFTER_S if retry_after_s is None else retry_after_s
        retry_after_s = max(1, math.ceil(wait * 1000 - 1e-6)) / 1000  # float noise must not add a ms
    else:
        retry_after_s = None
    if mode == "http":
        close_code, status = None, http_status or status
    return Refusal(cause, code, message, status, close_code, retry_after_s)
