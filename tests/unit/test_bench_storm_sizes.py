"""A storm size one server cannot take keeps the other sizes' results (bench/storm.py, bench/runner.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import bench.storm
from bench.runner import notes_for, summarize
from bench.workloads import Sizes


def test_a_failed_size_is_noted_and_the_other_sizes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    async def storm(server: Any, n: int, tag: str, **kwargs: Any) -> dict[str, Any]:
        if n == 19000:  # as python-socketio: connections lost while 19,000 clients set up
            raise ConnectionError("connection lost")
        return {f"resumed_all_s_{n}": n / 1000}

    monkeypatch.setattr(bench.storm, "reconnect_storm", storm)
    sizes = Sizes(storm_sizes=(1000, 19000, 5000))
    metrics = asyncio.run(bench.storm.storm_workload(object(), sizes, "1"))  # type: ignore[arg-type]

    assert metrics == {"resumed_all_s_1000": 1.0, "error_19000": "ConnectionError: connection lost",
                       "resumed_all_s_5000": 5.0}
    raw = {"g": {"socketio": [metrics]}}
    assert summarize(raw) == {"g": {"socketio": {"resumed_all_s_1000": 1.0, "resumed_all_s_5000": 5.0}}}
    assert notes_for(raw) == ["(g) socketio round 1, size 19000, failed: ConnectionError: connection lost"]


def test_a_size_that_failed_is_not_run_again_in_later_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-socketio's 19,000 storm fails after minutes of set-up: the later rounds skip it."""
    import bench.runner

    asked: list[tuple[str, tuple[int, ...]]] = []

    async def run_one(key: str, name: str, sizes: Sizes, round_no: int, wait_quiet_s: float,
                      log: Any) -> dict[str, Any]:
        asked.append((name, sizes.storm_sizes))
        metrics: dict[str, Any] = {f"resumed_all_s_{n}": n / 1000 for n in sizes.storm_sizes if n != 19000}
        if name == "socketio" and 19000 in sizes.storm_sizes:
            metrics["error_19000"] = "ConnectionError: connection lost"
        return metrics

    monkeypatch.setattr(bench.runner, "run_one", run_one)
    monkeypatch.setattr(bench.runner, "servers_of", lambda key, baseline: ("signald", "socketio"))
    sizes = Sizes(rounds=3, storm_sizes=(1000, 19000))
    raw = asyncio.run(bench.runner.run_all(["g"], sizes, log=lambda line: None))

    assert asked == [("signald", (1000, 19000)), ("socketio", (1000, 19000)),
                     ("socketio", (1000,)), ("signald", (1000, 19000)),
                     ("signald", (1000, 19000)), ("socketio", (1000,))]
    assert [r.get("skipped_19000") for r in raw["g"]["socketio"]] == [
        None, "failed in an earlier round", "failed in an earlier round"]
    assert summarize(raw)["g"]["socketio"] == {"resumed_all_s_1000": 1.0}
    assert notes_for(raw) == [
        "(g) socketio round 1, size 19000, failed: ConnectionError: connection lost",
        "(g) socketio round 2, size 19000, not run: failed in an earlier round",
        "(g) socketio round 3, size 19000, not run: failed in an earlier round",
    ]
