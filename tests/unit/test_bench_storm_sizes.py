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
