"""The per-user frame budget: shared by a user's connections, kept across reconnects (sans-IO)."""

from __future__ import annotations

from signald.state.ratelimit import FloodGuard, UserRateLimiter, Verdict


def test_connections_of_one_user_share_the_budget_and_others_do_not() -> None:
    users = UserRateLimiter(rate_per_s=1.0, burst=4)
    a1 = FloodGuard(10.0, 10, shared=users.for_user("alice"))
    a2 = FloodGuard(10.0, 10, shared=users.for_user("alice"))
    bob = FloodGuard(10.0, 10, shared=users.for_user("bob"))
    assert [a1.check(0.0) for _ in range(3)] == [Verdict.ALLOW] * 3
    assert [a2.check(0.0) for _ in range(2)] == [Verdict.ALLOW, Verdict.LIMITED]
    assert a1.check(0.0) is Verdict.LIMITED
    assert [bob.check(0.0) for _ in range(4)] == [Verdict.ALLOW] * 4
    assert a2.check(1.0) is Verdict.ALLOW  # one token a second, for the user as a whole
    assert a1.check(1.0) is Verdict.LIMITED


def test_a_new_connection_of_the_user_finds_the_budget_as_the_last_one_left_it() -> None:
    users = UserRateLimiter(rate_per_s=2.0, burst=5)
    first = FloodGuard(30.0, 60, shared=users.for_user("alice"))
    assert sum(first.check(0.0) is Verdict.ALLOW for _ in range(20)) == 5
    again = FloodGuard(30.0, 60, shared=users.for_user("alice"))  # reconnect: a fresh, full connection bucket
    assert again.check(0.1) is Verdict.LIMITED
    assert again.check(0.5) is Verdict.ALLOW  # what refilled meanwhile, nothing more


def test_a_frame_the_user_budget_refuses_costs_the_connection_nothing_and_counts_toward_the_close() -> None:
    users = UserRateLimiter(rate_per_s=0.001, burst=1)
    users.allow("alice", 0.0)  # another device spent it
    guard = FloodGuard(0.001, 2, shared=users.for_user("alice"))
    assert [guard.check(0.0) for _ in range(3)] == [Verdict.LIMITED, Verdict.LIMITED, Verdict.CLOSE]
    # The connection's own bucket is still full: with the user's budget back, both of its tokens work.
    refilled = FloodGuard(0.001, 2, shared=lambda now: True)
    assert [refilled.check(0.0) for _ in range(3)] == [Verdict.ALLOW, Verdict.ALLOW, Verdict.LIMITED]


def test_a_refused_connection_bucket_takes_nothing_from_the_user_budget() -> None:
    users = UserRateLimiter(rate_per_s=0.001, burst=4)
    guard = FloodGuard(0.001, 2, shared=users.for_user("alice"))
    assert [guard.check(0.0) for _ in range(4)] == [Verdict.ALLOW, Verdict.ALLOW, Verdict.LIMITED, Verdict.LIMITED]
    other = FloodGuard(0.001, 5, shared=users.for_user("alice"))  # the two refusals took nothing from alice
    assert [other.check(0.0) for _ in range(3)] == [Verdict.ALLOW, Verdict.ALLOW, Verdict.LIMITED]


def test_only_users_with_a_spent_budget_are_remembered_and_never_more_than_max_tracked() -> None:
    users = UserRateLimiter(rate_per_s=1.0, burst=2, max_tracked=3)
    for i in range(10):
        users.allow(f"u{i}", 0.0)
    assert len(users) == 3
    users.allow("late", 10.0)  # everyone else refilled long ago: forgotten
    assert len(users) == 1


def test_the_per_user_budget_defaults_to_twice_the_per_connection_one() -> None:
    from signald.config import LimitsConfig

    assert LimitsConfig().user_rate() == (60.0, 120)
    assert LimitsConfig(rate_per_s=5.0, rate_burst=7).user_rate() == (10.0, 14)
    assert LimitsConfig(user_rate_per_s=3.0, user_rate_burst=4).user_rate() == (3.0, 4)
    assert "user_rate_per_s" not in LimitsConfig(user_rate_per_s=3.0).to_wire().__struct_fields__


def test_fragments_are_charged_in_debt_and_the_message_they_belong_to_pays_for_it() -> None:
    guard = FloodGuard(rate_per_s=1.0, burst=5)
    for _ in range(7):  # a message in 8 frames: 7 fragments charged, more than the bucket holds
        guard.charge(0.0)
    assert guard.check(0.0) is Verdict.LIMITED  # its last frame: the bucket owes 2
    assert guard.check(2.0) is Verdict.LIMITED  # 2 s paid the debt, no more
    assert guard.check(3.0) is Verdict.ALLOW


def test_debt_is_bounded_by_the_burst() -> None:
    guard = FloodGuard(rate_per_s=1.0, burst=2)
    for _ in range(1000):
        guard.charge(0.0)
    assert guard.check(2.5) is Verdict.LIMITED  # owes at most the burst (2), not 998
    assert guard.check(3.5) is Verdict.ALLOW
