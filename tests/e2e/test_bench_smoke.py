"""The benchmark harness keeps working: CI runs it at tiny sizes (its numbers mean nothing here)."""

from __future__ import annotations

import dataclasses
import json
import pstats
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_runs_every_workload_against_every_server(tmp_path: Path) -> None:
    pytest.importorskip("socketio", reason="the bench extra is not installed (./dev test installs it)")
    pytest.importorskip("websockets")
    out = tmp_path / "quick.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["summary"]) >= {"a", "b", "c", "d", "e", "f", "g", "h"}
    assert {"signald", "socketio", "websockets"} <= set(results["summary"]["a"])
    # (g) the reconnect storm: every client came back after the restart, holding exactly the history
    storm = results["raw"]["g"]["signald"][0]
    n = results["sizes"]["storm_sizes"][0]
    assert (storm[f"resumed_{n}"], storm[f"exact_{n}"], storm[f"missed_{n}"], storm[f"duplicated_{n}"]) == (
        n, 1, 0, 0), storm
    assert results["raw"]["g"]["socketio"][0][f"resumed_{n}"] == n
    on_pg = results["summary"]["e"]["signald-pg"]  # the daemon on the bench's own PostgreSQL, beside SQLite
    assert on_pg["rate"] > 0 and on_pg["p99_ms"] >= on_pg["p50_ms"] > 0
    assert "durable acked chat.send/s on PostgreSQL vs on SQLite" in done.stdout
    # (h) several nodes: every paced event reached the receiver on the sender's node and those on the two
    # others; every idle connection was held across the three; the broker's fan-out ratio was printed
    nodes = results["raw"]["h"]["signald-cluster"][0]
    assert (nodes["x_missing"], nodes["x_failed_acks"], nodes["idle_held"], nodes["idle_lost"]) == (
        0, 0, results["sizes"]["cluster_idle"], 0), nodes
    assert nodes["x_cross_p50_ms"] > 0 and nodes["x_same_p50_ms"] > 0
    assert all(nodes[f"idle_rss_mb_node{i}"] > 0 for i in range(3))
    broker = results["summary"]["h"]["signald-broker"]
    assert broker["rate_5"] > 0 and results["summary"]["h"]["signald-pg"]["rate_5"] > 0
    assert re.search(r"one node with the Redis broker vs without \(both on PostgreSQL\): "
                     r"signald-broker/signald-pg = \d+\.\d\d", done.stdout), done.stdout


def test_the_cross_node_latency_sweep_runs_each_rate_and_every_event_arrives(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    done = subprocess.run([sys.executable, "-m", "bench.cluster_latency", "--rates", "200,400", "--seconds", "0.5",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rates = json.loads(out.read_text())["rates"]
    assert [m["rate_asked"] for m in rates] == [200, 400]
    assert all(m["x_missing"] == 0 and m["x_failed_acks"] == 0 and m["x_cross_p50_ms"] > 0 for m in rates), rates
    assert all(m["x_cpu_us_node0"] > 0 and m["x_cpu_us_client"] > 0 for m in rates), rates
    assert done.stdout.count("added p99") == 2


def test_bench_baseline_runs_an_older_commit_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("socketio", reason="the bench extra is not installed (./dev test installs it)")
    pytest.importorskip("websockets")
    out = tmp_path / "baseline.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--baseline", "HEAD", "--only", "a",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["baseline"]["rev"] == "HEAD"
    assert results["servers"]["a"] == ["signald", "signald-before", "socketio", "websockets"]
    assert {"signald", "signald-before"} <= set(results["summary"]["a"])
    assert "÷before" in done.stdout
    assert re.search(r"\(a\) ack p50 \(ms\) .* \d+\.\d{3}$", done.stdout, re.MULTILINE), done.stdout


@pytest.fixture
def bench_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench`` is not an installed package: import it from the repository, as ``python -m bench`` does."""
    pytest.importorskip("psutil", reason="the bench extra is not installed (./dev test installs it)")
    monkeypatch.syspath_prepend(str(ROOT))


def test_baseline_spec_imports_signald_from_its_own_tree(tmp_path: Path, bench_importable: None) -> None:
    from bench.baseline import BEFORE, before_spec, check_imports, checkout, imported_from, resolve
    from bench.procs import SPECS

    commit = resolve("HEAD")
    with checkout(commit) as tree:
        spec = before_spec(tree, commit)
        assert (spec.name, spec.env, spec.argv("T")) == (BEFORE, SPECS["signald"].env, SPECS["signald"].argv("T"))
        assert imported_from(spec) == (tree / "signald" / "__init__.py").resolve()
        assert imported_from(SPECS["signald"]) == (ROOT / "signald" / "__init__.py").resolve()
        check_imports([SPECS["signald"], spec])
    empty = dataclasses.replace(spec, cwd=tmp_path)  # no signald here: the installed one would be measured
    with pytest.raises(RuntimeError, match="would import signald from"):
        check_imports([empty])


def test_baseline_ratios_in_the_table(bench_importable: None) -> None:
    from bench.baseline import BEFORE, with_before
    from bench.table import table_rows
    from bench.workloads import QUICK

    assert with_before(("signald", "socketio")) == ("signald", BEFORE, "socketio")
    assert with_before(("signald", "signald-mem")) == ("signald", BEFORE, "signald-mem")
    result = {"sizes": dataclasses.asdict(QUICK), "workloads": ["d"], "servers": {"d": ["signald", BEFORE]},
              "summary": {"d": {"signald": {"rate": 150.0}, BEFORE: {"rate": 100.0}}}}
    rates = [row for row in table_rows(result) if row["metric"] == "rate"]
    assert rates[0]["ratios"] == {BEFORE: 1.5}
    del result["servers"]  # a run without --baseline: the workload's own servers, no such ratio
    assert table_rows(result)[0]["ratios"] == {}


def test_baseline_beside_the_broker_in_h(bench_importable: None) -> None:
    """A change on the Redis broker's path is measured before/after in one run (signald-broker-before)."""
    from bench.baseline import BROKER_BEFORE, PG_BEFORE, with_before
    from bench.table import table_rows
    from bench.workloads import QUICK

    servers = with_before(("signald-pg", "signald-broker", "signald-cluster"))
    assert servers == ("signald-pg", PG_BEFORE, "signald-broker", BROKER_BEFORE, "signald-cluster")
    n = QUICK.fanout_members[0]
    result = {"sizes": dataclasses.asdict(QUICK), "workloads": ["h"], "servers": {"h": list(servers)},
              "summary": {"h": {"signald-pg": {f"rate_{n}": 200.0}, "signald-broker": {f"rate_{n}": 150.0},
                                BROKER_BEFORE: {f"rate_{n}": 100.0}}}}
    rate = next(row for row in table_rows(result) if row["metric"] == f"rate_{n}")
    assert rate["ratios"] == {"signald-broker": 0.75, BROKER_BEFORE: 1.5}


def test_the_abuse_bench_runs_and_prints_its_ratio() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.abuse", "--seconds", "0.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"flooded / alone: p50 x\d+\.\d\d, p99 x\d+\.\d\d", done.stdout), done.stdout
    assert re.search(r"closed with 1008: [1-9]", done.stdout), done.stdout  # the flood was on, and refused


def test_the_report_keeps_the_hand_written_sections_of_the_page(bench_importable: None) -> None:
    from bench.report import GENERATED_SECTIONS, hand_written

    page = (ROOT / "docs" / "benchmarks.md").read_text()
    kept = hand_written(page)
    assert kept and all(not s.startswith(f"## {g}\n") for s in kept for g in GENERATED_SECTIONS)
    assert any(s.startswith("## Before and after the architecture reshaping") for s in kept)
    assert hand_written("# T\n\n## This run\n\nx\n\n## Mine\n\nkept\n\n## Method\n\ny\n") == ["## Mine\n\nkept"]


def test_the_report_renders_a_results_file_from_before_a_size_existed(bench_importable: None) -> None:
    """``./dev bench --report`` on an older full run (no ``cluster_rate`` then) writes the page."""
    import json

    from bench.report import render

    result = json.loads((ROOT / "bench" / "results" / "s14-h-500s.json").read_text())
    del result["sizes"]["cluster_rate"], result["sizes"]["storm_send_rate"]
    page = render(result, "benchmarks.png")
    assert "## Method" in page and "5,000" in page  # today's default rate stands in for the missing one


def test_the_shutdown_bench_times_a_sigterm_and_profiles_only_the_shutdown(tmp_path: Path) -> None:
    out = tmp_path / "shutdown.json"
    done = subprocess.run([sys.executable, "-m", "bench.shutdown", "--sizes", "30", "--profile", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads(out.read_text())["signald_30"]
    assert (run["connected"], run["close_1001"], run["not_closed"], run["exit_code"]) == (30, 30, 0, 0), run
    assert run["exit_s"] >= run["clients_closed_s"] > 0
    assert "close_all" in (tmp_path / "shutdown-signald-30.txt").read_text()  # the summary printed
    functions = pstats.Stats(str(tmp_path / "shutdown-signald-30.prof")).get_stats_profile().func_profiles
    profiled = {(Path(function.file_name).name, name) for name, function in functions.items()}
    assert ("connections.py", "close_all") in profiled  # the shutdown is in the profile...
    assert ("hub.py", "connect") not in profiled  # ... and the 30 connections' set-up before it is not
