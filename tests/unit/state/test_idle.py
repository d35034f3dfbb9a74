"""Automatic away's deadlines, with activities learned late (another node's): signald.state.idle."""

from __future__ import annotations

from test_presence import World, fs, norm

from signald.state.idle import Idleness


def test_deadlines_come_in_activity_order_and_a_late_activity_neither_waits_nor_blocks() -> None:
    idle = Idleness(away_after_s=10)
    for user, when in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        assert idle.touch(user, when)
    assert idle.touch("late", 0.5)  # heard now, happened before everyone else's
    assert idle.next_deadline() == 10.5
    assert idle.expire(10.5) == ["late"]  # not held up behind a, b and c
    assert idle.expire(11.0) == ["a"]  # ... and holding none of them up
    assert idle.next_deadline() == 12.0
    assert idle.expire(20.0) == ["b", "c"]
    assert idle.next_deadline() is None


def test_an_activity_older_than_the_one_known_changes_nothing() -> None:
    idle = Idleness(away_after_s=10)
    idle.touch("a", 5.0)
    idle.touch("b", 6.0)
    assert not idle.touch("a", 4.0)
    assert idle.next_deadline() == 15.0
    assert idle.touch("b", 5.5) is False and idle.expire(15.9) == ["a"]


def test_a_later_activity_supersedes_a_late_one_and_going_offline_forgets_both() -> None:
    idle = Idleness(away_after_s=10)
    idle.touch("a", 5.0)
    idle.touch("b", 1.0)  # late
    idle.touch("b", 7.0)  # in order again: the heap's entry is stale
    assert idle.next_deadline() == 15.0
    assert idle.expire(16.0) == ["a"]
    idle.touch("c", 2.0)  # late behind b
    idle.forget("c")
    idle.forget("b")
    assert idle.next_deadline() is None and idle.expire(100.0) == []


def test_no_deadlines_when_automatic_away_is_off() -> None:
    idle = Idleness(away_after_s=0)
    assert idle.touch("a", 1.0)
    assert idle.next_deadline() is None and idle.expire(1e9) == []


def test_another_nodes_activity_counts_from_when_it_happened() -> None:
    w = World(away_after_s=60)
    w.arrive("a1", "alice", "r")
    w.arrive("b1", "bob", "r", now=30.0)
    # alice was active on another node at 45, heard here at 50
    assert w.p.activity("alice", 50.0, 1050.0, ago=5.0) == []
    assert w.p.last_seen("alice") == 1045.0
    assert w.p.next_deadline() == 90.0  # bob's (30 + 60) first
    assert norm(w.p.tick(90.0)) == [("presence.update", ("bob", "away"), fs("a1", "b1"))]
    assert w.p.next_deadline() == 105.0  # 45 + 60, not 50 + 60
    assert norm(w.p.tick(105.0)) == [("presence.update", ("alice", "away"), fs("a1", "b1"))]


def test_an_activity_heard_after_it_went_idle_again_ends_no_idleness() -> None:
    w = World(away_after_s=60)
    w.arrive("a1", "alice", "r")
    w.arrive("b1", "bob", "r")
    assert norm(w.p.tick(60.0))[0] == ("presence.update", ("alice", "away"), fs("a1", "b1"))
    assert w.p.activity("alice", 200.0, 2000.0, ago=61.0) == []  # 139 + 60 < 200: idle again by now
    assert w.p.status_of("alice") == "away" and w.p.last_seen("alice") == 1939.0
    back = norm(w.p.activity("alice", 200.0, 2000.0, ago=1.0))
    assert back == [("presence.update", ("alice", "online"), fs("a1", "b1"))]
