"""The results table: rows per workload, medians per server, and the ratios of signald to the others.

Shared by the run's printed summary (:mod:`bench.runner`) and the page (:mod:`bench.report`).
"""

from __future__ import annotations

from typing import Any

from bench.baseline import BEFORE, BROKER_BEFORE
from bench.workloads import WORKLOADS, Sizes

ROWS: dict[str, list[tuple[str, str, str]]] = {  # workload -> (metric, label, format)
    "a": [("p50_ms", "ack p50 (ms)", ".3f"), ("p99_ms", "ack p99 (ms)", ".3f"),
          ("p999_ms", "ack p99.9 (ms)", ".2f"), ("max_ms", "slowest ack (ms)", ".2f"),
          ("cpu_us_per_send", "server CPU per acked send (µs)", ".0f"),
          ("main_cpu_us_per_send", "of it, the main thread's (µs)", ".0f")],
    "c": [],
    "d": [("rate", "connections/s", ",.0f"), ("cpu_ms_per_conn", "server CPU per connection (ms)", ".2f"),
          ("closed_rate", "connections/s, each closed after set-up", ",.0f"),
          ("closed_cpu_ms_per_conn", "server CPU per connection, closed after set-up (ms)", ".2f")],
    "e": [("rate", "acked chat.send/s", ",.0f"), ("p50_ms", "ack p50 (ms)", ".2f"), ("p99_ms", "ack p99 (ms)", ".2f"),
          ("p999_ms", "ack p99.9 (ms)", ".2f"), ("max_ms", "slowest ack (ms)", ".2f"),
          ("cpu_us_per_send", "server CPU per send (µs)", ".0f"),
          ("main_cpu_us_per_send", "of it, the main thread's (µs)", ".0f"),
          ("db_cpu_us_per_send", "PostgreSQL's CPU per send (µs)", ".0f")],
    "f": [("held", "connections held", ",.0f"), ("rss_mb", "RSS (MiB)", ",.0f"),
          ("rss_kb_per_conn", "RSS per connection (KiB)", ".1f"), ("idle_cpu_pct", "idle CPU (% of a core)", ".2f"),
          ("rss_mb_at_50k", "RSS at 50,000, linear from held (MiB)", ",.0f"),
          ("idle_cpu_pct_at_50k", "idle CPU at 50,000, linear from held (%)", ".2f"),
          ("lost_while_idle", "connections lost while idle", ",.0f")],
    "h": [("x_same_p50_ms", "cross-node: same node p50 (ms)", ".2f"),
          ("x_same_p99_ms", "cross-node: same node p99 (ms)", ".2f"),
          ("x_cross_p50_ms", "cross-node: other nodes p50 (ms)", ".2f"),
          ("x_cross_p99_ms", "cross-node: other nodes p99 (ms)", ".2f"),
          ("x_added_p50_ms", "cross-node: added p50 (ms)", ".2f"),
          ("x_added_p99_ms", "cross-node: added p99 (ms)", ".2f"),
          ("x_rate", "cross-node: chat.send/s sent (paced)", ",.0f"),
          ("x_missing", "cross-node: events missing at the receivers", ",.0f"),
          ("idle_held", "idle connections held by three nodes", ",.0f"),
          ("idle_rss_mb_total", "idle: RSS of the three nodes (MiB)", ",.0f"),
          ("idle_rss_kb_per_conn", "idle: RSS per connection, all nodes (KiB)", ".1f"),
          ("idle_cpu_pct_node0", "idle: node 0 CPU (% of a core)", ".2f"),
          ("idle_cpu_pct_node1", "idle: node 1 CPU (% of a core)", ".2f"),
          ("idle_cpu_pct_node2", "idle: node 2 CPU (% of a core)", ".2f"),
          ("idle_cpu_pct_redis", "idle: Redis CPU (% of a core)", ".2f"),
          ("idle_lost", "idle: connections lost while idle", ",.0f")],
}


def rows_for(workload: str, sizes: Sizes) -> list[tuple[str, str, str]]:
    if workload == "b":
        rows = []
        for n in sizes.fanout_members:
            rows += [(f"rate_{n}", f"delivered msgs/s, {n} members", ",.0f"),
                     (f"cpu_us_{n}", f"server CPU per delivery, {n} members (µs)", ".2f"),
                     (f"per_core_{n}", f"deliveries per server CPU-second, {n} members", ",.0f"),
                     (f"client_cpu_pct_{n}", f"load client CPU, {n} members (% of a core)", ".0f")]
        return rows
    if workload == "h":
        rows = []
        for n in sizes.fanout_members:
            rows += [(f"rate_{n}", f"delivered msgs/s, {n} members", ",.0f"),
                     (f"per_core_{n}", f"deliveries per server CPU-second, {n} members", ",.0f")]
        return rows + ROWS["h"]
    if workload == "c":
        return [(f"rss_kb_{n}", f"RSS per idle connection at {n:,} (KiB)", ".1f") for n in sizes.idle_sizes] + [
            (f"idle_cpu_pct_{sizes.idle_sizes[-1]}", f"idle CPU at {sizes.idle_sizes[-1]:,} (% of a core)", ".2f")]
    if workload == "g":
        rows = []
        for n in sizes.storm_sizes:
            rows += [(f"resumed_p50_s_{n}", f"{n:,} clients: 50% resumed after (s)", ".2f"),
                     (f"resumed_p99_s_{n}", f"{n:,} clients: 99% resumed after (s)", ".2f"),
                     (f"resumed_all_s_{n}", f"{n:,} clients: 100% resumed after (s)", ".2f"),
                     (f"ready_to_all_s_{n}", f"{n:,} clients: 100% resumed after the server was ready (s)",
                      ".2f"),
                     (f"refused_{n}", f"{n:,} clients: handshakes refused", ",.0f"),
                     (f"cpu_ms_per_client_{n}", f"{n:,} clients: server CPU per resumed client (ms)", ".2f"),
                     (f"restart_cpu_s_{n}", f"{n:,} clients: restarted server's CPU until seen ready (s)",
                      ".2f"),
                     (f"restart_ready_s_{n}", f"{n:,} clients: SIGTERM to restarted server ready (s)", ".2f"),
                     (f"restart_ready_logged_s_{n}",
                      f"{n:,} clients: same, by the server's clock (s)", ".2f"),
                     (f"restart_start_s_{n}", f"{n:,} clients: restart: spawn to ready line (s)", ".2f"),
                     (f"missed_{n}", f"{n:,} clients: changes missed (all clients)", ",.0f"),
                     (f"duplicated_{n}", f"{n:,} clients: changes duplicated (all clients)", ",.0f")]
        return rows
    return ROWS[workload]


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the results table: workload, label, value per server, ratios vs the peers."""
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in result["sizes"].items()})
    summary = result["summary"]
    rows = []
    for wl in result["workloads"]:
        servers = result.get("servers", {}).get(wl, WORKLOADS[wl].servers)
        for metric, label, spec in rows_for(wl, sizes):
            values = {s: summary.get(wl, {}).get(s, {}).get(metric) for s in servers}
            mine = values.get("signald")
            ratios = {}
            for peer in ("socketio", "websockets", "signald-mem", BEFORE):
                theirs = values.get(peer)
                if peer in servers and mine is not None and theirs:
                    ratios[peer] = mine / theirs
            on_pg = values.get("signald-pg")
            if on_pg is not None and mine:  # the other way round: PostgreSQL's over SQLite's
                ratios["signald-pg"] = on_pg / mine
            broker = values.get("signald-broker")
            if broker is not None and on_pg:  # (h): one node with the Redis broker over the same without
                ratios["signald-broker"] = broker / on_pg
            broker_before = values.get(BROKER_BEFORE)
            if broker is not None and broker_before:  # (h) with --baseline: the broker's path before/after
                ratios[BROKER_BEFORE] = broker / broker_before
            rows.append({"workload": wl, "metric": metric, "label": label, "format": spec, "values": values,
                         "ratios": ratios})
    return rows


def print_table(result: dict[str, Any]) -> None:
    """The results table; with ``--baseline``, a signald-before column and signald ÷ signald-before."""
    before = "baseline" in result
    several = "h" in result["workloads"]
    columns = ["signald", *([BEFORE] if before else []), "signald-mem", "signald-pg",
               *(["signald-pg-before"] if before and "e" in result["workloads"] else []), "socketio", "websockets"]
    if several:
        columns += ["signald-broker", *([BROKER_BEFORE] if before else []), "signald-cluster"]
    # "signald-before" needs room to stay apart from its neighbour, "signald-broker-before" more
    width = 22 if before and several else 16 if before or several else 14
    print(f"\n{'':4}{'metric':48}" + "".join(f"{c:>{width}}" for c in columns)
          + f"{'÷socketio':>11}{'÷websockets':>13}{'÷mem':>7}{'pg÷':>7}" + (f"{'÷before':>9}" if before else "")
          + (f"{'broker÷pg':>10}" if several else "") + (f"{'broker÷before':>15}" if several and before else ""))
    for row in table_rows(result):
        cells = "".join(f"{fmt(row['values'].get(c), row['format']):>{width}}" for c in columns)
        ratios = row["ratios"]
        print(f"({row['workload']}) {row['label']:48}{cells}"
              f"{fmt(ratios.get('socketio'), '.2f'):>11}{fmt(ratios.get('websockets'), '.2f'):>13}"
              f"{fmt(ratios.get('signald-mem'), '.2f'):>7}{fmt(ratios.get('signald-pg'), '.2f'):>7}"
              + (f"{fmt(ratios.get(BEFORE), '.3f'):>9}" if before else "")
              + (f"{fmt(ratios.get('signald-broker'), '.2f'):>10}" if several else "")
              + (f"{fmt(ratios.get(BROKER_BEFORE), '.3f'):>15}" if several and before else ""))
    if before:
        base = result["baseline"]
        print(f"\nsignald-before is {base['rev']} ({base['commit']}); ÷before = signald / signald-before"
              " (for times and CPU, below 1 means faster now)")
    print("\ntargets:")
    for v in result["verdicts"]:
        what = f"{v.get('server', 'signald')}/{v['peer']}" if v["peer"] else v.get("server", "signald")
        value = fmt(v["value"], ".2f" if v["peer"] else ",.1f")
        print(f"  {v['verdict']:5} ({v['workload']}) {v['text']}: {what} = {value} (target {v['op']} "
              f"{v['bound']:g}{' ' + v['unit'] if v['unit'] else ''})")
    if any("signald-pg" in row["ratios"] for row in table_rows(result)):
        print("\n(signald-pg: the daemon on PostgreSQL; pg÷ = signald-pg / signald, i.e. PostgreSQL over SQLite)")
    if several:
        print("(signald-broker: one node on PostgreSQL with the Redis broker; broker÷pg = signald-broker / signald-pg. "
              "signald-cluster: three nodes, see bench/cluster.py)"
              + ("\n(signald-broker-before: the same at the --baseline commit; broker÷before = signald-broker / "
                 "signald-broker-before)" if before else ""))
    for note in result.get("notes", []):
        print(f"  note: {note}")
