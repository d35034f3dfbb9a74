"""Rate limits: per-connection frame limiting with abuse detection, per-IP connection limiting (sans-IO).

Nothing here reads a clock: every call takes ``now`` in seconds from one monotonic source (e.g.
``trio.current_time()``). Rules and choices:

- **TokenBucket**: holds up to ``burst`` tokens and starts full; tokens refill continuously at
  ``rate_per_s``. :meth:`TokenBucket.allow` takes one token if at least one is there. A clock that
  goes backwards refills nothing (and does not push the refill time back). Comparisons tolerate 1e-9
  of float drift, so polling in steps that sum to one token's interval is not rounded down.
- **FloodGuard** (docs/protocol.md "Limits and close codes"): every inbound frame, garbage included, calls
  :meth:`FloodGuard.check` once, before anything else is done with it. ``ALLOW``: carry it out.
  ``LIMITED``: reply ``RATE_LIMITED`` and do not carry it out (a rejected frame costs no token).
  ``CLOSE``: this rejection is the (``burst`` + 1)-th within a sliding window of 10 s (``window_s``;
  a rejection at ``t`` counts while ``now - t < 10``); close the connection with 1008. ``CLOSE`` is
  sticky: every later call returns it too. Memory is bounded: at most ``burst`` + 1 timestamps are kept.
- **Fragments and control frames** (docs/protocol.md "Limits"): every inbound frame is counted.
  A ping or pong is checked like a message (``LIMITED``: not answered). A fragment before the last
  of a message is charged (:meth:`FloodGuard.charge`): it takes a token, in debt if need be (down to
  ``-burst``), so a message sent in k frames costs k tokens and is ``LIMITED`` when complete if
  its fragments ran the bucket dry. (The transport also caps fragments per message.)
- **Per user** (``shared``): a FloodGuard may also draw on a budget that all of a user's
  connections share (:class:`UserRateLimiter`, ``limits.user_rate_per_s`` / ``user_rate_burst``).
  A frame is allowed only when both the connection's bucket and the shared budget have a token;
  it then takes one from each. A frame the shared budget refuses is rejected like any other
  (``LIMITED``, counting toward ``CLOSE``) and costs the connection's bucket nothing. The shared
  budget outlives the connections: a user who reconnects finds it as they left it (reconnecting
  refills nothing; a new connection's own bucket starts full, but the shared one does not).
- **UserRateLimiter**: one :class:`TokenBucket` per user id, remembered as long as it is not full,
  with the same bounded memory as the per-address limiter below (a forgotten bucket was full, so
  forgetting it changes nothing).
- **Several nodes** (docs/cluster.md): each node holds a *share* of a user's budget, the fraction
  of the user's connections that are its own (``share_of``: 1 on one node), and its bucket's rate
  and capacity are the budget's times that share (a capacity of at least one token). When the
  share changes the bucket keeps its *level* (tokens ÷ capacity), so the shares always add up to
  one budget. Nodes tell each other a user's level when a connection closes or appears elsewhere
  (:meth:`UserRateLimiter.level`); :meth:`UserRateLimiter.cap` lowers this node's level to
  the one told, never raises it, so moving to another node refills nothing.
- **ConnectionRateLimiter**: one :class:`TokenBucket` per client address for new connections.
  IPv6 addresses are keyed by their /64 (one subscriber usually owns a whole /64, so rotating through
  it gains nothing); IPv4-mapped IPv6 counts as the IPv4 address; anything unparsable is keyed as
  given. Memory stays bounded two ways: (1) a bucket that has refilled to full behaves exactly like a
  fresh one, so it is forgotten (buckets are kept in least-recently-used order and the full ones at
  the old end are dropped on every call, amortised O(1)); therefore only addresses seen within the
  last ``burst / per_ip_per_s`` seconds are remembered; (2) a hard cap ``max_tracked`` (default
  65,536) drops the least recently used address when exceeded — under a flood from more addresses
  than that, a dropped address starts afresh (lenient, never wrongly strict).
  :meth:`ConnectionRateLimiter.retry_after_s` says when a refused address gets its next token
  (the ``retry_after_s`` of its refusal).
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import deque
from collections.abc import Callable
from typing import Final

CLOSE_WINDOW_S: Final = 10.0
DEFAULT_MAX_TRACKED: Final = 65_536
_EPSILON: Final = 1e-9


def _check_rate(rate_per_s: float, burst: float) -> None:
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise ValueError("rate_per_s must be a finite number > 0")
    if burst < 1:
        raise ValueError("burst must be >= 1")


class TokenBucket:
    """A token bucket of capacity ``burst`` refilled at ``rate_per_s`` tokens per second."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        _check_rate(rate_per_s, burst)
        self._rate = float(rate_per_s)
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    @property
    def capacity(self) -> float:
        return self._burst

    def tokens(self, now: float) -> float:
        """The tokens available at ``now`` (without taking any)."""
        if self._last is None or now <= self._last:
            return self._tokens
        return min(self._burst, self._tokens + (now - self._last) * self._rate)

    def is_full(self, now: float) -> bool:
        return self.tokens(now) >= self._burst - _EPSILON

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until a token is available (0 if one is)."""
        missing = 1.0 - self.tokens(now)
        return 0.0 if missing <= _EPSILON else missing / self._rate

    def spend(self, now: float, tokens: float) -> None:
        """Take ``tokens`` whether they are there or not: the bucket may go into debt, down to
        ``-burst`` (what is owed must refill before anything is allowed again)."""
        self._tokens = max(-self._burst, self.tokens(now) - tokens)
        if self._last is None or now > self._last:
            self._last = now

    def has_token(self, now: float) -> bool:
        """Whether :meth:`allow` at ``now`` would succeed (takes nothing)."""
        return self.tokens(now) >= 1.0 - _EPSILON

    def level(self, now: float) -> float:
        """The tokens at ``now`` over the capacity: 1 when full, below 0 in debt."""
        return self.tokens(now) / self._burst

    def rescale(self, rate_per_s: float, burst: float, now: float) -> None:
        """Change the rate and the capacity, keeping the :meth:`level`."""
        level = self.level(now)
        self._rate, self._burst = float(rate_per_s), float(burst)
        self._tokens = level * self._burst
        if self._last is None or now > self._last:
            self._last = now

    def cap_level(self, level: float, now: float) -> None:
        """Lower the :meth:`level` to ``level`` if it is above (never raise it)."""
        self._tokens = min(self.tokens(now), max(-1.0, level) * self._burst)
        if self._last is None or now > self._last:
            self._last = now

    def allow(self, now: float) -> bool:
        """Take one token if available; True when the action may proceed."""
        self._tokens = self.tokens(now)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0 - _EPSILON:  # tolerate float drift from summed time steps
            self._tokens -= 1.0
            return True
        return False


class Verdict(enum.Enum):
    """What to do with one inbound frame."""

    ALLOW = "allow"  # carry it out
    LIMITED = "limited"  # reply RATE_LIMITED, do not carry it out
    CLOSE = "close"  # close the connection with 1008


class FloodGuard:
    """Per-connection frame limiter: a token bucket plus the "keeps sending while limited" rule."""

    __slots__ = ("_bucket", "_closed", "_max_rejects", "_rejects", "_shared", "_window")

    def __init__(self, rate_per_s: float, burst: int, *, window_s: float = CLOSE_WINDOW_S,
                 shared: Callable[[float], bool] | None = None) -> None:
        if not (window_s > 0):
            raise ValueError("window_s must be > 0")
        self._bucket = TokenBucket(rate_per_s, burst)
        self._shared = shared  # takes a token of the user's budget at ``now`` if there is one
        self._max_rejects = burst
        self._window = float(window_s)
        self._rejects: deque[float] | None = None  # made on the first rejection (most never see one)
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`check` has returned ``CLOSE``."""
        return self._closed

    def charge(self, now: float) -> None:
        """Account for one frame that is part of a message still under way (a fragment before the
        last): it costs a token now, in debt if need be, and the message's own :meth:`check` pays
        for its last frame. A message sent in k frames so costs k tokens, and one whose fragments
        ran the bucket dry is ``LIMITED`` when it is complete."""
        self._bucket.spend(now, 1.0)

    def check(self, now: float) -> Verdict:
        """Account for one inbound frame received at ``now``."""
        if self._closed:
            return Verdict.CLOSE
        bucket, shared = self._bucket, self._shared
        if shared is None:
            if bucket.allow(now):
                return Verdict.ALLOW
        elif bucket.has_token(now) and shared(now):
            bucket.allow(now)
            return Verdict.ALLOW
        rejects = self._rejects
        if rejects is None:
            rejects = self._rejects = deque(maxlen=self._max_rejects + 1)
        rejects.append(now)
        while rejects and now - rejects[0] >= self._window:
            rejects.popleft()
        if len(rejects) > self._max_rejects:
            self._closed = True
            return Verdict.CLOSE
        return Verdict.LIMITED


def client_key(address: str) -> str:
    """The rate-limit key of a peer address: IPv6 collapsed to its /64, IPv4-mapped to IPv4."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _KeyedBuckets:
    """One token bucket per key, with bounded memory (see the module docstring)."""

    __slots__ = ("_buckets", "_burst", "_max_tracked", "_rate")

    def __init__(self, rate_per_s: float, burst: int, *, max_tracked: int = DEFAULT_MAX_TRACKED) -> None:
        _check_rate(rate_per_s, burst)
        if max_tracked < 1:
            raise ValueError("max_tracked must be >= 1")
        self._rate = rate_per_s
        self._burst = burst
        self._max_tracked = max_tracked
        self._buckets: dict[str, TokenBucket] = {}  # least recently used first

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._buckets)

    def _allow(self, key: str, now: float) -> bool:
        return self._bucket(key, now).allow(now)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        """``key``'s bucket (a full one if none is remembered), moved to the recent end."""
        self._forget_idle(now)
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst)
        buckets[key] = bucket
        while len(buckets) > self._max_tracked:
            del buckets[next(iter(buckets))]
        return bucket

    def retry_after_s(self, ip: str, now: float) -> float:
        """Seconds from ``now`` until ``ip`` may connect again (0 if it may now); counts nothing."""
        bucket = self._buckets.get(client_key(ip))
        return 0.0 if bucket is None else bucket.wait_s(now)

    def _forget_idle(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets))
            if not buckets[oldest].is_full(now):
                return
            del buckets[oldest]


class ConnectionRateLimiter(_KeyedBuckets):
    """Limits new connections per client address with bounded memory."""

    __slots__ = ()

    def __init__(self, per_ip_per_s: float, burst: int, *, max_tracked: int = DEFAULT_MAX_TRACKED) -> None:
        super().__init__(per_ip_per_s, burst, max_tracked=max_tracked)

    def allow(self, ip: str, now: float) -> bool:
        """True if a new connection from ``ip`` may proceed at ``now`` (and count it)."""
        return self._allow(client_key(ip), now)


class UserRateLimiter(_KeyedBuckets):
    """The frame budget all connections of one user share; a FloodGuard's ``shared``.

    ``share_of`` (several nodes) gives the fraction of a user's budget this node holds; each
    bucket is rescaled to it when it is used (see the module docstring)."""

    __slots__ = ("share_of",)

    def __init__(self, rate_per_s: float, burst: int, *, max_tracked: int = DEFAULT_MAX_TRACKED,
                 share_of: Callable[[str], float] | None = None) -> None:
        super().__init__(rate_per_s, burst, max_tracked=max_tracked)
        self.share_of = share_of

    def allow(self, user_id: str, now: float) -> bool:
        """Take one token of ``user_id``'s budget at ``now``; False if there is none."""
        return self._shared_bucket(user_id, now).allow(now)

    def for_user(self, user_id: str) -> Callable[[float], bool]:
        """``allow`` bound to ``user_id``: what a connection's FloodGuard draws on."""
        if self.share_of is None:  # one node (a replica sets it before any connection): no share to fit
            return lambda now: self._allow(user_id, now)
        return lambda now: self._shared_bucket(user_id, now).allow(now)

    def level(self, user_id: str, now: float) -> float | None:
        """``user_id``'s level at ``now`` (tokens over capacity), None when the budget is full."""
        bucket = self._buckets.get(user_id)
        if bucket is None or bucket.is_full(now):
            return None
        return bucket.level(now)

    def cap(self, user_id: str, level: float, now: float) -> None:
        """Another node told ``user_id``'s level: lower this node's to it (never raise it)."""
        if level < 1.0:
            self._shared_bucket(user_id, now).cap_level(level, now)

    def _shared_bucket(self, user_id: str, now: float) -> TokenBucket:
        """The user's bucket, at this node's share of the budget (a new one made full at it)."""
        bucket = self._bucket(user_id, now)
        if self.share_of is not None:
            share = self.share_of(user_id)
            burst = max(1.0, self._burst * share)
            if bucket.capacity != burst:
                bucket.rescale(self._rate * share, burst, now)
        return bucket
