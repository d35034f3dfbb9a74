"""Last writer wins for chosen statuses, the same on every node (signald.cluster.stamps)."""

from __future__ import annotations

import time

from signald.cluster.stamps import FIRST, StatusStamps


def test_two_nodes_that_hear_each_others_crossing_statuses_keep_the_same_one() -> None:
    a, b = StatusStamps("node-a"), StatusStamps("node-b")
    sa, sb = a.stamp("alice"), b.stamp("alice")  # set at once, each applied at home first
    a_applies, b_applies = a.later("alice", sb, "node-b"), b.later("alice", sa, "node-a")
    assert a_applies != b_applies  # exactly one of the two is the later, for both
    assert a.mine("alice") != b.mine("alice")


def test_equal_stamps_go_to_the_higher_node_id() -> None:
    a, b = StatusStamps("node-a"), StatusStamps("node-b")
    assert a.later("alice", 5.0, "node-a") and b.later("alice", 5.0, "node-b")
    assert a.later("alice", 5.0, "node-b") and not b.later("alice", 5.0, "node-a")


def test_a_status_set_after_one_was_heard_is_later_even_on_a_clock_behind() -> None:
    behind = StatusStamps("node-a")
    ahead = time.time() + 3600  # another node's clock, an hour ahead
    assert behind.later("alice", ahead, "node-b")
    mine = behind.stamp("alice")
    assert mine > ahead
    assert StatusStamps("node-c").later("alice", ahead, "node-b")


def test_loaded_statuses_always_apply_and_a_user_gone_starts_afresh() -> None:
    stamps = StatusStamps("node-a")
    assert stamps.later("alice", time.time() + 3600, "node-b")
    assert stamps.later("alice", 0.0, "node-c")  # loaded from Redis: unordered
    assert not stamps.later("alice", 1.0, "node-c")
    stamps.forget("alice")
    assert stamps.later("alice", 1.0, "node-c")


def test_a_status_announced_again_after_an_outage_loses_to_one_chosen_meanwhile() -> None:
    cut_off, heard = StatusStamps("node-a"), StatusStamps("node-b")
    assert cut_off.last("alice") == (FIRST, "")  # alice chose nothing yet
    chosen = heard.stamp("alice")  # node-a did not hear it
    assert not heard.later("alice", *cut_off.last("alice"))  # node-a's announcement is older
    assert heard.mine("alice")  # so node-b tells its own again, with its stamp, which node-a takes
    assert cut_off.later("alice", *heard.last("alice")) and cut_off.last("alice") == (chosen, "node-b")
    assert heard.later("alice", *cut_off.last("alice")) and heard.mine("alice")  # the same one again
