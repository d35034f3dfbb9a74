"""When and how a client reconnects: the close-code table and the jittered, capped backoff.

Pure: :func:`decide` takes how the connection ended, the attempt count and a random number in
[0, 1) and returns a :class:`Decision`. The same table is implemented by the JavaScript client and
both are checked against ``tests/data/client_cases.json``.

The rules, by close code (a refused handshake maps its HTTP status onto the same codes: 401 → 4401,
403 → 4403, 429 → 4429). With ``reconnect=False`` every close stops the client.

- 4401 (token refused), 4001 (session expired): ``refresh`` — get a new token with ``get_token``
  and reconnect, at once the first time, with backoff if it keeps happening; ``stop`` without
  ``get_token``.
- 4403 (forbidden), 4003 (session revoked): ``stop``.
- 4429 (too many connections): wait ``retry_after_s`` (from the one error frame the server sends
  before the close), else back off harder.
- 1013 (slow consumer), 1008 (flooding): back off harder — at least ``harder_min_s``, four times
  the usual.
- Any other 4xx HTTP status (a wrong path, subprotocol or origin): ``stop``.
- Anything else — shutdown (1001), network loss (1006, no code), 5xx: back off.

Backoff: ``min(max_s, initial_s * factor ** attempt)``, shortened by up to ``jitter`` of itself
(``delay * (1 - jitter * rand)``) so that clients of a restarted daemon do not come back at once.
The attempt count starts again at 0 after a connection that stayed open ``healthy_after_s``.

:class:`Rejoins` applies the same backoff to a room whose rejoin the server refused for now
(:data:`TRANSIENT` codes) on a connection that stays open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

Action = Literal["reconnect", "refresh", "stop"]

REFRESH_CODES: Final = frozenset({4401, 4001})
STOP_CODES: Final = frozenset({4403, 4003})
RETRY_AFTER_CODES: Final = frozenset({4429})
HARDER_CODES: Final = frozenset({1013, 1008})
HTTP_TO_CLOSE: Final = {401: 4401, 403: 4403, 429: 4429}
# Error codes that say "not now" rather than "no" (docs/protocol.md, "Error codes"): INTERNAL is also
# what a failing or hung history store answers, RATE_LIMITED a frame over the connection's rate.
TRANSIENT: Final = frozenset({"INTERNAL", "RATE_LIMITED"})


@dataclass(frozen=True)
class Backoff:
    """The reconnect timing; the defaults suit a daemon restart (back within a second or two)."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.5
    harder_min_s: float = 5.0
    healthy_after_s: float = 10.0

    def delay(self, attempt: int, rand: float, *, harder: bool = False) -> float:
        """The wait before reconnect attempt number ``attempt`` (0 first)."""
        exponent = attempt + 2 if harder else attempt
        base = min(self.max_s, self.initial_s * self.factor ** min(exponent, 64))
        if harder:
            base = min(self.max_s, max(self.harder_min_s, base))
        return base * (1.0 - self.jitter * rand)


@dataclass(frozen=True)
class Closed:
    """How a connection (or a connection attempt) ended.

    ``code``: the WebSocket close code (None when the TCP connection died or never came up);
    ``http_status``: the status of a refused handshake; ``open_for_s``: how long it was open
    (0 for a failed attempt); ``retry_after_s``: from the error frame before a 4429 close, or
    the ``Retry-After`` header of an HTTP 429.
    """

    code: int | None = None
    http_status: int | None = None
    open_for_s: float = 0.0
    retry_after_s: float | None = None

    @property
    def effective_code(self) -> int | None:
        if self.http_status is not None:
            return HTTP_TO_CLOSE.get(self.http_status, self.http_status)
        return self.code


@dataclass(frozen=True)
class Decision:
    """What to do next: ``action``, after ``delay_s``, with ``next_attempt`` as the new attempt count."""

    action: Action
    delay_s: float
    next_attempt: int
    reason: str


def decide(closed: Closed, *, attempt: int, rand: float, policy: Backoff, can_refresh: bool,
           reconnect: bool = True) -> Decision:
    """The decision table above, for one ended connection."""
    if closed.open_for_s >= policy.healthy_after_s:
        attempt = 0  # the last connection was healthy: this is a fresh failure, not a repeat
    code = closed.effective_code
    after = attempt + 1
    if code in STOP_CODES:
        return Decision("stop", 0.0, after, "revoked" if code == 4003 else "forbidden")
    if not reconnect:
        return Decision("stop", 0.0, after, "connection closed and reconnect is off")
    if code in REFRESH_CODES:
        if not can_refresh:
            return Decision("stop", 0.0, after, "token refused and no get_token to get a new one")
        delay = 0.0 if attempt == 0 else policy.delay(attempt - 1, rand)
        return Decision("refresh", delay, after, "session expired" if code == 4001 else "token refused")
    if closed.http_status is not None and 400 <= closed.http_status < 500 and code not in RETRY_AFTER_CODES:
        return Decision("stop", 0.0, after, f"handshake refused with HTTP {closed.http_status}")
    if code in RETRY_AFTER_CODES:
        if closed.retry_after_s is not None:
            return Decision("reconnect", closed.retry_after_s + policy.jitter * rand * policy.initial_s, after,
                            "too many connections: waiting as told")
        return Decision("reconnect", policy.delay(attempt, rand, harder=True), after, "too many connections")
    if code in HARDER_CODES:
        return Decision("reconnect", policy.delay(attempt, rand, harder=True), after,
                        "slow consumer" if code == 1013 else "flooding")
    return Decision("reconnect", policy.delay(attempt, rand), after, "connection lost")


class Rejoins:
    """The (re)joins not finished yet, and those refused with a :data:`TRANSIENT` code waiting to be tried again.

    Per room: the ``since_rev`` the first unfinished try started from (every try resumes from there:
    an ack moves the view's ``rev`` past pages that a failure then leaves unread), an attempt count
    and the time of the next try. All of it is forgotten once the room is in sync (:meth:`done`).
    """

    def __init__(self) -> None:
        self._since: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._due: dict[str, float] = {}

    def since(self, name: str, rev: int) -> int:
        """The ``since_rev`` to (re)join ``name`` with: ``rev`` unless an unfinished try started lower."""
        return self._since.setdefault(name, rev)

    def refused(self, name: str, now: float, *, rand: float, policy: Backoff,
                retry_after_s: float | None = None) -> float:
        """Plan the next try of ``name``: after ``retry_after_s`` if the refusal said so, else backoff."""
        attempt = self._attempts.get(name, 0)
        self._attempts[name] = attempt + 1
        if retry_after_s is not None:
            delay = retry_after_s + policy.jitter * rand * policy.initial_s
        else:
            delay = policy.delay(attempt, rand)
        self._due[name] = now + delay
        return delay

    def due(self, now: float) -> list[str]:
        """The rooms to try again now (and forgets their times)."""
        names = [name for name, at in self._due.items() if at <= now]
        for name in names:
            del self._due[name]
        return names

    def next_deadline(self) -> float:
        return min(self._due.values(), default=math.inf)

    def cancel_waits(self) -> None:
        """The connection dropped: the next one rejoins every room at once (attempt counts stay)."""
        self._due.clear()

    def done(self, name: str) -> None:
        """``name`` is in sync again, or no longer ours: forget its tries."""
        self._since.pop(name, None)
        self._attempts.pop(name, None)
        self._due.pop(name, None)
