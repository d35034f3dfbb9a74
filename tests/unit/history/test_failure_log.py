"""A store's :class:`~signald.history.work.FailureLog` at given times (its clock is the test's): the
first failure with its traceback, one line per interval for the rest, and a line when writes commit
again after failures that were only counted, since otherwise nobody would ever hear of them."""

from __future__ import annotations

import logging

import pytest

from signald.history.work import FailureLog

INTERVAL_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def failures(clock: Clock) -> FailureLog:
    return FailureLog(logging.getLogger("signald.history.test"), clock=clock, interval_s=INTERVAL_S)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, bool]]:
    """Each line logged so far (its message, whether it has a traceback); forgotten after."""
    got = [(r.getMessage(), r.exc_info is not None) for r in caplog.records if r.name == "signald.history.test"]
    caplog.clear()
    return got


def fail(failures: FailureLog, clock: Clock, at: float, error: str = "disk I/O error") -> None:
    clock.now = 1000.0 + at
    failures.failed(OSError(error), "history transaction failed")


def succeed(failures: FailureLog, clock: Clock, at: float) -> None:
    clock.now = 1000.0 + at
    failures.succeeded()


def test_a_write_after_failures_that_were_only_counted_says_how_many(
    failures: FailureLog, clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    for at in (0.0, 1.0, 2.0, 3.0):
        fail(failures, clock, at)
    assert lines(caplog) == [("history transaction failed", True)]
    succeed(failures, clock, 4.0)
    assert lines(caplog) == [("history store recovered after 4 failures (3 not logged before)", False)]
    succeed(failures, clock, 5.0)
    assert lines(caplog) == []  # told once
    fail(failures, clock, 6.0)  # in the same interval: counted, then told by the next success
    succeed(failures, clock, 7.0)
    assert lines(caplog) == []  # at most one recovery line an interval (a store that flaps)
    succeed(failures, clock, 10.0)  # the interval is over
    assert lines(caplog) == [("history store recovered after 1 failure (1 not logged before)", False)]
    fail(failures, clock, 30.0)  # after a quiet interval: a first again, with its traceback
    assert lines(caplog) == [("history transaction failed", True)]


def test_a_write_after_failures_that_were_all_logged_logs_nothing(
    failures: FailureLog, clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    fail(failures, clock, 0.0)
    succeed(failures, clock, 1.0)
    assert lines(caplog) == [("history transaction failed", True)]
    fail(failures, clock, 2.0)  # in the interval: counted
    fail(failures, clock, 12.0, "database or disk is full")  # after it: the count's line, this one included
    assert lines(caplog) == [("2 more store failures like it in the last 10 s; the last: OSError: "
                              "database or disk is full", False)]
    succeed(failures, clock, 13.0)
    assert lines(caplog) == []  # nothing left untold
    succeed(failures, clock, 14.0)
    assert lines(caplog) == []


def test_a_store_that_flaps_logs_at_most_a_traceback_and_two_lines_an_interval(
    failures: FailureLog, clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    """One transaction in two failing for a minute (a disk nearly full): not a line each."""
    caplog.set_level(logging.INFO)
    at = 0.0
    while at < 60.0:
        fail(failures, clock, at)
        succeed(failures, clock, at + 0.005)
        at += 0.01
    logged = lines(caplog)
    assert sum(traceback for _, traceback in logged) == 1, logged
    assert len(logged) <= 1 + 2 * (60.0 / INTERVAL_S + 1), logged
