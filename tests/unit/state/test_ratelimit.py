"""Rate limits: token bucket, flood guard (RATE_LIMITED then 1008), per-IP connection limiter."""

from __future__ import annotations

import pytest

from signald.state.ratelimit import ConnectionRateLimiter, FloodGuard, TokenBucket, Verdict, client_key


def test_bucket_burst_cap_and_refill() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(0.4)  # 0.8 token
    assert bucket.allow(0.5)  # 1.0 token
    assert not bucket.allow(0.5)
    # a long pause refills to the burst, never beyond
    assert bucket.tokens(100.0) == 3.0
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_steady_rate() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=1)
    allowed = sum(bucket.allow(i * 0.01) for i in range(1000))  # 100 tries per second for 10 s
    assert 100 <= allowed <= 101


def test_bucket_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)
    assert not bucket.allow(10.5)
    assert bucket.allow(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)])
def test_bad_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError):
        ConnectionRateLimiter(rate, burst)


def test_flood_guard_limited_then_close() -> None:
    guard = FloodGuard(rate_per_s=1.0, burst=5)
    verdicts = [guard.check(0.0) for _ in range(5 + 5)]
    assert verdicts == [Verdict.ALLOW] * 5 + [Verdict.LIMITED] * 5
    assert not guard.closed
    assert guard.check(0.1) is Verdict.CLOSE  # the 6th rejection within 10 s
    assert guard.closed
    assert guard.check(1000.0) is Verdict.CLOSE  # sticky


def test_flood_guard_spread_out_rejections_do_not_close() -> None:
    guard = FloodGuard(rate_per_s=0.001, burst=2)  # practically no refill
    assert guard.check(0.0) is Verdict.ALLOW
    assert guard.check(0.0) is Verdict.ALLOW
    now = 0.0
    results = []
    for _ in range(20):
        now += 5.0  # at most 2 rejections within any 10 s window
        results.append(guard.check(now))
    assert Verdict.CLOSE not in results
    assert Verdict.LIMITED in results
    # three rejections inside 10 s close it
    assert guard.check(now + 0.1) is Verdict.CLOSE


def test_flood_guard_window_edge() -> None:
    guard = FloodGuard(rate_per_s=0.001, burst=1)
    assert guard.check(0.0) is Verdict.ALLOW
    assert guard.check(1.0) is Verdict.LIMITED
    assert guard.check(11.0) is Verdict.LIMITED  # the rejection at 1.0 is exactly 10 s old: gone
    assert guard.check(20.9) is Verdict.CLOSE


def test_flood_guard_allows_again_after_refill() -> None:
    guard = FloodGuard(rate_per_s=10.0, burst=3)
    assert [guard.check(0.0) for _ in range(4)] == [Verdict.ALLOW] * 3 + [Verdict.LIMITED]
    assert guard.check(0.1) is Verdict.ALLOW
    assert guard.check(1.0) is Verdict.ALLOW


def test_connection_limiter_per_ip() -> None:
    limiter = ConnectionRateLimiter(per_ip_per_s=1.0, burst=2)
    assert limiter.allow("10.0.0.1", 0.0)
    assert limiter.allow("10.0.0.1", 0.0)
    assert not limiter.allow("10.0.0.1", 0.0)
    assert limiter.allow("10.0.0.2", 0.0)  # another address has its own bucket
    assert limiter.allow("10.0.0.1", 1.0)


def test_connection_limiter_ipv6_keyed_by_64() -> None:
    limiter = ConnectionRateLimiter(per_ip_per_s=1.0, burst=1)
    assert limiter.allow("2001:db8:1:2::1", 0.0)
    assert not limiter.allow("2001:db8:1:2:ffff::9", 0.0)  # same /64
    assert limiter.allow("2001:db8:1:3::1", 0.0)
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("[2001:db8::1]") == "2001:db8::/64"
    assert client_key("some-unix-socket") == "some-unix-socket"


def test_connection_limiter_forgets_idle_addresses() -> None:
    limiter = ConnectionRateLimiter(per_ip_per_s=10.0, burst=5)  # full again 0.5 s after last use
    for i in range(50_000):
        limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i * 0.001)
    # only addresses seen within the last 0.5 s are remembered
    assert len(limiter) <= 501
    limiter.allow("192.0.2.1", 10_000.0)
    assert len(limiter) == 1


def test_connection_limiter_hard_cap() -> None:
    limiter = ConnectionRateLimiter(per_ip_per_s=0.001, burst=1, max_tracked=1000)
    for i in range(20_000):
        assert limiter.allow(f"ip-{i}", 0.0)
    assert len(limiter) == 1000
    assert not limiter.allow("ip-19999", 0.0)  # recent ones are still limited
