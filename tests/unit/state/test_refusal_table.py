"""The refusal table (``signald.state.refusals``) and ``retry_after_s``, without sockets."""

from __future__ import annotations

import msgspec
import pytest

from signald.protocol import json_encoder, msgpack_encoder
from signald.state.ratelimit import ConnectionRateLimiter, TokenBucket
from signald.state.refusals import USER_LIMIT_RETRY_AFTER_S, Cause, RefusalMode, cause_of_status, decide

TABLE = [
    # cause, code, close code ("close" mode), HTTP status
    (Cause.UNAUTHORIZED, "UNAUTHORIZED", 4401, 401),
    (Cause.FORBIDDEN, "FORBIDDEN", 4403, 403),
    (Cause.RATE_LIMITED_ADDRESS, "RATE_LIMITED", 4429, 429),
    (Cause.RATE_LIMITED_USER, "RATE_LIMITED", 4429, 429),
]


@pytest.mark.parametrize(("cause", "code", "close_code", "status"), TABLE)
def test_close_mode_closes_with_the_code_of_the_cause(cause: Cause, code: str, close_code: int, status: int) -> None:
    refusal = decide(cause, "close", "why")
    assert (refusal.code, refusal.close_code, refusal.http_status, refusal.message) == (code, close_code, status, "why")
    assert refusal.headers() == ()  # no HTTP answer to put them in


@pytest.mark.parametrize(("cause", "code", "close_code", "status"), TABLE)
def test_http_mode_answers_the_status_of_the_cause(cause: Cause, code: str, close_code: int, status: int) -> None:
    refusal = decide(cause, "http", "why")
    assert (refusal.code, refusal.close_code, refusal.http_status) == (code, None, status)


@pytest.mark.parametrize("mode", ["close", "http"])
def test_a_subprotocol_mismatch_is_http_400_in_both_modes(mode: RefusalMode) -> None:
    refusal = decide(Cause.SUBPROTOCOL, mode, "use signald.v1")
    assert (refusal.code, refusal.close_code, refusal.http_status, refusal.retry_after_s) == (
        "BAD_REQUEST", None, 400, None)


def test_retry_after_is_kept_only_for_rate_limits() -> None:
    assert decide(Cause.UNAUTHORIZED, "close", "x", retry_after_s=3.0).retry_after_s is None
    assert decide(Cause.FORBIDDEN, "http", "x", retry_after_s=3.0).headers() == ()
    assert decide(Cause.RATE_LIMITED_ADDRESS, "close", "x", retry_after_s=0.25).retry_after_s == 0.25
    assert decide(Cause.RATE_LIMITED_USER, "close", "x").retry_after_s == USER_LIMIT_RETRY_AFTER_S


@pytest.mark.parametrize(("wait", "rounded"), [(0.3, 0.3), (0.0001, 0.001), (0.0, 0.001), (1 / 3, 0.334), (0.5, 0.5)])
def test_retry_after_is_rounded_up_to_the_millisecond_and_never_zero(wait: float, rounded: float) -> None:
    assert decide(Cause.RATE_LIMITED_ADDRESS, "close", "x", retry_after_s=wait).retry_after_s == rounded


@pytest.mark.parametrize(("wait", "header"), [(0.02, b"1"), (1.0, b"1"), (1.2, b"2"), (None, b"5")])
def test_http_429_says_retry_after_in_whole_seconds(wait: float | None, header: bytes) -> None:
    refusal = decide(Cause.RATE_LIMITED_USER, "http", "x", retry_after_s=wait)
    assert refusal.headers() == ((b"retry-after", header),)


def test_an_authenticators_own_status_is_kept_in_http_mode_and_mapped_in_close_mode() -> None:
    assert [cause_of_status(s) for s in (401, 403, 429, 400, 500)] == [
        Cause.UNAUTHORIZED, Cause.FORBIDDEN, Cause.RATE_LIMITED_USER, Cause.UNAUTHORIZED, Cause.UNAUTHORIZED]
    assert decide(cause_of_status(400), "http", "x", http_status=400).http_status == 400
    assert decide(cause_of_status(400), "close", "x", http_status=400).close_code == 4401


def test_the_error_frame_has_a_null_op_id_and_retry_after_only_when_set() -> None:
    unauthorized = json_encoder.encode(decide(Cause.UNAUTHORIZED, "close", "token expired").error())
    assert msgspec.json.decode(unauthorized) == {
        "type": "error", "data": {"op_id": None, "code": "UNAUTHORIZED", "message": "token expired"}}
    limited = msgpack_encoder.encode(decide(Cause.RATE_LIMITED_ADDRESS, "close", "slow", retry_after_s=0.5).error())
    assert msgspec.msgpack.decode(limited) == {
        "type": "error", "data": {"op_id": None, "code": "RATE_LIMITED", "message": "slow", "retry_after_s": 0.5}}


def test_a_token_bucket_says_how_long_until_its_next_token() -> None:
    bucket = TokenBucket(4.0, 2)
    assert bucket.wait_s(0.0) == 0.0
    assert bucket.allow(0.0) and bucket.allow(0.0) and not bucket.allow(0.0)
    assert bucket.wait_s(0.0) == pytest.approx(0.25)
    assert bucket.wait_s(0.1) == pytest.approx(0.15)
    assert bucket.wait_s(0.25) == 0.0


def test_the_address_limiter_says_when_a_refused_address_may_come_back_without_counting() -> None:
    limiter = ConnectionRateLimiter(2.0, 2)
    assert limiter.retry_after_s("10.0.0.1", 0.0) == 0.0  # never seen
    assert limiter.allow("10.0.0.1", 0.0) and limiter.allow("10.0.0.1", 0.0)
    assert not limiter.allow("10.0.0.1", 0.0)  # refused, and counted
    for _ in range(3):
        assert limiter.retry_after_s("10.0.0.1", 0.0) == pytest.approx(0.5)  # asking takes nothing
    assert limiter.retry_after_s("10.0.0.1", 0.4) == pytest.approx(0.1)
    assert limiter.retry_after_s("10.0.0.2", 0.0) == 0.0
    assert limiter.allow("10.0.0.1", 0.5)
