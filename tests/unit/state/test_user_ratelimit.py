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


# --------------------------------------------------------------------------- several nodes


def _node(counts: dict[str, tuple[int, int]], rate: float = 10.0, burst: int = 40) -> UserRateLimiter:
    """One node's limiter; ``counts[user]`` is (the user's connections here, everywhere)."""
    def share_of(user: str) -> float:
        local, total = counts.get(user, (0, 0))
        return local / total if 0 < local < total else 1.0
    return UserRateLimiter(rate_per_s=rate, burst=burst, share_of=share_of)


def _spend(users: UserRateLimiter, user: str, now: float, at_most: int = 1000) -> int:
    return sum(users.allow(user, now) for _ in range(at_most))


def test_connections_on_two_nodes_split_the_budget_so_the_user_gets_one_budget_in_all() -> None:
    a_counts, b_counts = {"alice": (1, 2)}, {"alice": (1, 2)}
    a, b = _node(a_counts), _node(b_counts)
    assert _spend(a, "alice", 0.0) + _spend(b, "alice", 0.0) == 40  # one burst, not two
    assert _spend(a, "alice", 1.0) + _spend(b, "alice", 1.0) == 10  # one rate: 5 a second each
    assert _spend(a, "alice", 1.0) == 0


def test_a_share_that_grows_keeps_the_level_so_the_budget_still_adds_up() -> None:
    counts = {"alice": (1, 2)}
    a = _node(counts)
    assert _spend(a, "alice", 0.0, at_most=10) == 10  # half of its 20
    counts["alice"] = (1, 1)  # the other node's connection closed (it reports its level: see below)
    assert _spend(a, "alice", 0.0) == 20  # still half full: half of 40
    counts["alice"] = (1, 4)  # three more connections elsewhere: a quarter of the budget here
    assert _spend(a, "alice", 4.0) == 10  # empty before; 4 s at 2.5 a second


def test_reconnecting_to_another_node_refills_nothing() -> None:
    a, b = _node({"alice": (1, 1)}), _node({"alice": (1, 1)})
    assert _spend(a, "alice", 0.0) == 40
    level = a.level("alice", 0.0)
    assert level == 0.0
    b.cap("alice", level, 0.0)  # the Disconnect that node a shared, heard by b
    assert _spend(b, "alice", 0.0) == 0
    assert _spend(b, "alice", 0.5) == 5  # what refilled meanwhile, nothing more


def test_a_level_told_never_raises_the_budget_and_a_full_budget_tells_nothing() -> None:
    a = _node({})
    assert a.level("alice", 0.0) is None
    assert _spend(a, "alice", 0.0, at_most=30) == 30
    assert a.level("alice", 0.0) == 0.25
    a.cap("alice", 0.9, 0.0)
    assert a.level("alice", 0.0) == 0.25
    a.cap("alice", 1.0, 0.0)  # full elsewhere: nothing to remember
    a.cap("bob", 1.0, 0.0)
    assert len(a) == 1


def test_a_share_never_leaves_a_node_less_than_one_token() -> None:
    users = _node({"alice": (1, 5)}, rate=1.0, burst=2)  # 2/5 of a token would never allow a frame
    assert _spend(users, "alice", 0.0) == 1
