"""RoomCounters without SQLite: what an operation, a transaction and a rollback leave behind."""

from __future__ import annotations

import pytest

import signald.history.counters
from signald.history.counters import RoomCounters

TABLE = {"lobby": (7, 5, 7)}  # what the rooms table says: last_seq, count, last_rev


def load(room: str) -> tuple[int, int, int]:
    loads.append(room)
    return TABLE.get(room, (0, 0, 0))


loads: list[str] = []


@pytest.fixture(autouse=True)
def _reset_loads() -> None:
    loads.clear()


def send(counters: RoomCounters, room: str) -> int:
    """What signald.history.rules.send does with a room's counter."""
    counter = counters.get(room, load)
    counter[0], counter[1], counter[2] = counter[0] + 1, counter[1] + 1, counter[2] + 1
    return counter[0]


def test_committed_sends_continue_from_the_table_and_load_it_once() -> None:
    counters = RoomCounters()
    for expected in (8, 9):
        assert send(counters, "lobby") == expected
        counters.end_op(ok=True)
        counters.end_transaction(committed=True)
    assert loads == ["lobby"]
    assert counters.pending == 1
    assert counters.unwritten() == [("lobby", 9, 7, 9)]


def test_a_failed_operation_leaves_no_trace_but_the_others_of_its_transaction_stay() -> None:
    counters = RoomCounters()
    assert send(counters, "lobby") == 8
    counters.end_op(ok=True)
    assert send(counters, "lobby") == 9
    counters.end_op(ok=False)  # rolled back to its savepoint
    assert send(counters, "lobby") == 9
    counters.end_op(ok=True)
    counters.end_transaction(committed=True)
    assert counters.unwritten() == [("lobby", 9, 7, 9)]


def test_a_rolled_back_transaction_gives_its_seqs_out_again() -> None:
    counters = RoomCounters()
    send(counters, "lobby")
    counters.end_op(ok=True)
    counters.end_transaction(committed=True)
    send(counters, "lobby")
    counters.end_op(ok=True)
    assert counters.changed() == {"lobby"}
    counters.end_transaction(committed=False)  # e.g. COMMIT failed: disk full
    assert counters.changed() == {"lobby"}  # its committed value is still not in the table
    assert send(counters, "lobby") == 9
    counters.end_op(ok=True)
    counters.end_transaction(committed=True)
    assert counters.unwritten() == [("lobby", 9, 7, 9)]


def test_a_new_room_loaded_in_a_failed_operation_is_loaded_again() -> None:
    # loading creates the room's row inside the operation; rolled back, it must be created again
    counters = RoomCounters()
    send(counters, "kitchen")
    counters.end_op(ok=False)
    send(counters, "kitchen")
    counters.end_op(ok=True)
    assert loads == ["kitchen", "kitchen"]


def test_written_counters_are_no_longer_pending_once_committed() -> None:
    counters = RoomCounters()
    send(counters, "lobby")
    counters.end_op(ok=True)
    counters.end_transaction(committed=True)  # an inline commit: nothing written
    send(counters, "kitchen")
    counters.end_op(ok=True)
    assert sorted(counters.unwritten()) == [("kitchen", 1, 1, 1), ("lobby", 8, 6, 8)]
    assert counters.unwritten() == []  # written already in this transaction
    counters.end_transaction(committed=True)
    assert counters.pending == 0


def test_a_change_after_the_write_in_the_same_transaction_stays_pending() -> None:
    counters = RoomCounters()
    send(counters, "lobby")
    counters.end_op(ok=True)
    assert counters.unwritten() == [("lobby", 8, 6, 8)]
    send(counters, "lobby")
    counters.end_op(ok=True)
    counters.end_transaction(committed=True)
    assert counters.pending == 1
    assert counters.unwritten() == [("lobby", 9, 7, 9)]


def test_written_counters_rolled_back_are_pending_again() -> None:
    counters = RoomCounters()
    send(counters, "lobby")
    counters.end_op(ok=True)
    counters.end_transaction(committed=True)
    assert counters.unwritten() == [("lobby", 8, 6, 8)]
    counters.end_transaction(committed=False)  # the write went with the rollback
    assert counters.pending == 1
    assert counters.unwritten() == [("lobby", 8, 6, 8)]


def test_clean_rooms_are_forgotten_beyond_the_cap_pending_ones_never(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signald.history.counters, "MAX_CLEAN", 3)
    counters = RoomCounters()
    for i in range(5):
        send(counters, f"r{i}")
        counters.end_op(ok=True)
        counters.unwritten()
        counters.end_transaction(committed=True)
    send(counters, "lobby")  # committed, never written
    counters.end_op(ok=True)
    counters.end_transaction(committed=True)
    loads.clear()
    assert send(counters, "lobby") == 9  # still in memory: the table's 7 would repeat seq 8
    assert loads == []
    send(counters, "r0")
    assert loads == ["r0"]  # forgotten, read again from its (written) row
