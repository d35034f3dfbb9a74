"""``commits`` counts transactions that committed a write, and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from signald.errors import SignalError
from signald.history import inline
from signald.history.store import HistoryStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HistoryStore]:
    async with HistoryStore(tmp_path / "h.db") as opened:
        yield opened


async def test_a_write_that_fails_alone_in_its_transaction_is_no_commit(store: HistoryStore) -> None:
    message, _ = await store.send(room="r", user_id="ann", body="x")
    before = (await store.stats())["commits"]
    with pytest.raises(SignalError) as info:
        await store.edit(message_id=message.id, user_id="bob", new_body="y")
    assert info.value.code == "FORBIDDEN"
    with pytest.raises(SignalError):
        await store.send(room="r", user_id="ann", body="reply", parent_id="nope")
    assert (await store.stats())["commits"] == before == store.commits
    await store.send(room="r", user_id="ann", body="next")
    assert store.commits == before + 1


async def test_a_batch_whose_writes_all_fail_is_no_commit(store: HistoryStore) -> None:
    message, _ = await store.send(room="r", user_id="ann", body="x")
    before = store.commits
    codes: list[str] = []

    async def forbidden() -> None:
        try:
            await store.edit(message_id=message.id, user_id="bob", new_body="y")
        except SignalError as exc:
            codes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(forbidden)
    assert codes == ["FORBIDDEN"] * 5
    assert store.commits == before


async def test_a_failed_inline_send_is_neither_an_inline_commit_nor_a_step_towards_a_checkpoint(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline, "CHECKPOINT_INLINE", 2)
    outcomes: list[tuple[Any, BaseException | None]] = []

    def send(parent_id: str | None) -> None:
        store.send_nowait(room="r", user_id="ann", body="b", parent_id=parent_id,
                          then=lambda result, error: outcomes.append((result, error)))

    for parent_id in ("nope", "nope", None, "nope"):
        await trio.lowlevel.checkpoint()  # a new turn: each send goes inline
        send(parent_id)
    assert [None if error is None else getattr(error, "code", error) for _, error in outcomes] == [
        "NOT_FOUND", "NOT_FOUND", None, "NOT_FOUND"]
    assert store.inline_commits == store.commits == 1
    await store.get("none")  # through the writer thread: a checkpoint would have run by now
    assert store.checkpoints == 0
    await trio.lowlevel.checkpoint()
    send(None)  # the second inline commit: now the thread checkpoints
    await store.get("none")
    assert (store.inline_commits, store.checkpoints) == (2, 1)
