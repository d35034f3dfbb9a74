"""``python -m bench --report``: write ``docs/benchmarks.md`` and ``docs/benchmarks.png`` from saved results.

Everything in the page comes from the results JSON (``bench/results/latest.json`` by default) and,
when present, the profile summary of ``python -m bench --profile``; edit this module, not the page.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.baseline import BEFORE
from bench.runner import RESULTS_DIR
from bench.table import fmt, table_rows
from bench.workloads import Sizes

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SERVERS = ("signald", "signald-mem", "signald-pg", "signald-broker", "signald-cluster", "socketio", "websockets")
COLORS = {"signald": "#1f77b4", "signald-mem": "#9ecae1", "signald-pg": "#6a51a3", "socketio": "#ff7f0e",
          "websockets": "#2ca02c", "signald-broker": "#d62728", "signald-cluster": "#8c564b", BEFORE: "#7f7f7f"}
GB_BUDGET_MIB = 1.5 * 1024
LABELS = {"signald": "signald", "signald-mem": "signald :memory:", "signald-pg": "signald on PostgreSQL",
          "signald-broker": "signald on PostgreSQL + Redis broker", "signald-cluster": "signald, three nodes",
          "socketio": "python-socketio", "websockets": "websockets", BEFORE: "signald before (--baseline)"}


def servers_of(result: dict[str, Any]) -> tuple[str, ...]:
    """The server columns of the page: signald-before only in a ``--baseline`` run."""
    return ("signald", BEFORE, *SERVERS[1:]) if "baseline" in result else SERVERS


def _value(result: dict[str, Any], wl: str, server: str, metric: str) -> float:
    value = result["summary"].get(wl, {}).get(server, {}).get(metric)
    return float(value) if isinstance(value, int | float) else math.nan


def nice(value: float | None) -> str:
    """A number as a person would write it: 48,312 / 812 / 35.3 / 0.412."""
    if value is None or not math.isfinite(value):
        return "—"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def write_plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.5))
    env = result["environment"]
    fig.suptitle(f"signald vs python-socketio vs websockets - {env['date']}, {env['cores']} cores "
                 f"({env['cpu_model']}), server and load client pinned to one core each, median of "
                 f"{sizes['rounds']} round(s)", fontsize=10)

    def grouped(ax: Any, wl: str, metrics: list[tuple[str, str]], servers: tuple[str, ...], title: str,
                ylabel: str) -> None:
        width = 0.8 / len(servers)
        for i, server in enumerate(servers):
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(metrics))]
            ys = [_value(result, wl, server, m) for m, _ in metrics]
            bars = ax.bar(xs, ys, width, label=LABELS[server], color=COLORS[server])
            for bar, y in zip(bars, ys, strict=True):
                if math.isfinite(y):
                    ax.annotate(nice(y), (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                                fontsize=7)
        ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)

    def scale_panel(ax: Any) -> None:
        f = result["summary"].get("f", {}).get("signald", {})
        held = f.get("held", 0)
        labels = [f"RSS at {held:,.0f}\n(measured)", "RSS at 50,000\n(linear)"]
        ys = [f.get("rss_mb", math.nan), f.get("rss_mb_at_50k", math.nan)]
        bars = ax.bar(labels, ys, 0.5, color=COLORS["signald"])
        for bar, y in zip(bars, ys, strict=True):
            ax.annotate(f"{nice(y)} MiB", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=7)
        ax.axhline(GB_BUDGET_MIB, color="red", linestyle="--", linewidth=1)
        ax.annotate("budget 1.5 GB", (1.25, GB_BUDGET_MIB), color="red", fontsize=7, va="bottom", ha="right")
        ax.set_ylabel("MiB")
        cpu = f.get("idle_cpu_pct", math.nan)
        cpu50 = f.get("idle_cpu_pct_at_50k", math.nan)
        ax.set_title(f"(f) signald, idle: CPU {nice(cpu)}% of a core at {held:,.0f},\n"
                     f"{nice(cpu50)}% at 50,000 (linear; target < 5%)", fontsize=10)

    wls = result["workloads"]
    peers = ("signald", *((BEFORE,) if "baseline" in result else ()), "socketio", "websockets")
    panels = [
        ("a", lambda ax: grouped(ax, "a", [("p50_ms", "p50"), ("p99_ms", "p99")], peers,
                                 "(a) chat.send ack round trip (lower is better)", "ms")),
        ("b", lambda ax: grouped(ax, "b", [(f"rate_{n}", f"{n} members") for n in sizes["fanout_members"]], peers,
                                 "(b) fan-out delivered msgs/s (higher is better)", "msgs/s")),
        ("b", lambda ax: grouped(ax, "b", [(f"cpu_us_{n}", f"{n} members") for n in sizes["fanout_members"]],
                                 peers, "(b) server CPU per delivery (lower is better)", "µs")),
        ("c", lambda ax: grouped(ax, "c", [(f"rss_kb_{n}", f"{n:,} conns") for n in sizes["idle_sizes"]], peers,
                                 "(c) RSS per idle connection (lower is better)", "KiB")),
        ("d", lambda ax: grouped(ax, "d", [("rate", "handshake + welcome")], peers,
                                 "(d) connection rate (higher is better)", "connections/s")),
        ("e", lambda ax: grouped(ax, "e", [("rate", f"{sizes['durable_senders']} senders")], servers_of(result),
                                 "(e) acked chat.send/s (higher is better)", "sends/s")),
        ("c", lambda ax: grouped(ax, "c", [(f"idle_cpu_pct_{sizes['idle_sizes'][-1]}",
                                            f"{sizes['idle_sizes'][-1]:,} idle conns")], peers,
                                 "(c) idle CPU: heartbeats (lower is better)", "% of one core")),
        ("f", scale_panel),
    ]
    for ax, (wl, draw) in zip(axes.flat, panels, strict=True):
        if wl in wls:
            draw(ax)
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"({wl}) not run", ha="center")
    handles = [matplotlib.patches.Patch(color=COLORS[s], label=LABELS[s]) for s in servers_of(result)]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 0.955), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _md_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":--" if a == "l" else "--:" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _load(env: dict[str, Any]) -> str:
    start, end = env.get("loadavg_at_start"), env.get("loadavg_at_end")
    return f"{start[0]:.2f} at the start, {end[0]:.2f} at the end" if start and end else "not recorded"


def _source(env: dict[str, Any]) -> str:
    src = env.get("signald_source")
    if not src:
        return "not recorded"
    text = f"commit {src.get('commit', '?')}"
    text += " with local changes in signald/" if src.get("dirty") else " (signald/ as committed)"
    return text + f", code digest {src['digest']}"


def _rounds(result: dict[str, Any], wl: str, metric: str, spec: str) -> str:
    values = [r[metric] for r in result["raw"].get(wl, {}).get("signald", []) if isinstance(r.get(metric), int | float)]
    return " / ".join(fmt(v, spec) for v in values)


def render(result: dict[str, Any], plot_name: str) -> str:
    env = result["environment"]
    sizes = result["sizes"]
    v = env["versions"]
    out = [
        "# Benchmarks",
        "",
        "signald against what a Python team would otherwise use, on the same machine in the same run:",
        "[python-socketio](https://python-socketio.readthedocs.io/) (`AsyncServer` on aiohttp) and a minimal asyncio",
        "[`websockets`](https://websockets.readthedocs.io/) broadcast server (the transport ceiling a Python user",
        "could reach). The sections from \"This run\" on are from one full run (its date is there); they are",
        "regenerated, plot included, by",
        "",
        "    ./dev bench             # full run (over an hour): prints the table, saves bench/results/latest.json",
        "    ./dev bench --report    # rewrites this page and benchmarks.png from bench/results/latest.json",
        "",
        "`./dev bench --quick` runs every workload at tiny sizes in about a minute (CI smoke: it checks the",
        "harness works, its numbers mean nothing; its (g) kills a server still up 2 s after the SIGTERM, where",
        "python-socketio would take 10 s); `--only b,e` picks workloads; `--profile [b|d|g]`",
        "runs signald under cProfile during one workload (the largest fan-out by default). The harness",
        "lives in `bench/` and its dependencies in the `bench` extra (`pip install -e '.[bench]'`); none of it",
        "is a runtime dependency. The dated sections between \"Comparing two commits\" and \"This run\" are",
        "written by hand: before/after measurements of one change each, usually newer than the full run.",
        "",
        COMPARING.rstrip(),
        "",
        "## This run",
        "",
        f"- Date: {env['date']}; mode: {result['mode']}; {sizes['rounds']} round(s) per server, value = median;"
        f" took {result['duration_s'] / 60:.0f} min.",
        f"- Machine: {env['cores']} cores ({env['cpu_model']}), {env['memory_gib']} GiB RAM, {env['platform']}.",
        f"- Servers pinned to CPU {env['server_cpu']}, the load client (and its helper processes) to CPU"
        f" {env['client_cpu']}. Load average {_load(env)}; a run during which other processes used more"
        " than a quarter of a core is repeated (up to twice).",
        f"- signald measured: {_source(env)}.",
        f"- Python {env['python']}; trio {v.get('trio')}, trio-websocket {v.get('trio-websocket')} (clients only),"
        " wsproto"
        f" {v.get('wsproto')}, msgspec {v.get('msgspec')}; python-socketio {v.get('python-socketio')} /"
        f" python-engineio {v.get('python-engineio')} on aiohttp {v.get('aiohttp')}; websockets {v.get('websockets')}.",
        "",
        "## Targets",
        "",
        "Ratios are signald's median over the peer's median in this run.",
        "",
    ]
    target_rows = []
    for t in result["verdicts"]:
        if t["peer"]:
            measured = f"{nice(t['signald'])} vs {nice(t['peer_value'])} → **{fmt(t['value'], '.2f')}x**"
            bound = f"{t['op']} {t['bound']:g}x {LABELS.get(t['peer'], t['peer'])}"
        else:
            measured = f"**{nice(t['value'])}** {t['unit']}"
            bound = f"{t['op']} {t['bound']:,.0f} {t['unit']}" if t["bound"] >= 100 else \
                f"{t['op']} {t['bound']:g} {t['unit']}"
        target_rows.append([f"({t['workload']}) {t['text']}", measured, bound, f"**{t['verdict']}**"])
    out += _md_table(["target", "measured", "target", "verdict"], target_rows, "llll")
    out += ["", f"![benchmark plot]({plot_name})", "", "## All results", ""]
    rows = []
    servers = servers_of(result)
    peers = ("socketio", "websockets", "signald-mem", "signald-pg", "signald-broker",
             *((BEFORE,) if "baseline" in result else ()))
    for row in table_rows(result):
        values = row["values"]
        ratios = row["ratios"]
        rows.append([f"({row['workload']}) {row['label']}"]
                    + [fmt(values.get(s), row["format"]) if s in values else "" for s in servers]
                    + [_rounds(result, row["workload"], row["metric"], row["format"])]
                    + [fmt(ratios.get(p), ".2f") if p in ratios else "" for p in peers])
    out += _md_table(["metric"] + [LABELS[s] for s in servers]
                     + ["signald, each round", "signald ÷ socketio", "signald ÷ websockets", "signald ÷ :memory:",
                        "PostgreSQL ÷ SQLite", "Redis broker ÷ none"]
                     + (["signald ÷ before"] if "baseline" in result else []),
                     rows, "l" + "r" * (len(servers) + len(peers) + 1))
    scale = result["summary"].get("f", {}).get("signald", {})
    if scale:
        out += ["", "(f) detail (median): " + ", ".join(f"{k} = {nice(val)}" for k, val in scale.items()) + "."]
    if result.get("notes"):
        out += ["", "Notes from this run:", ""] + [f"- {n}" for n in result["notes"]]
    # A results file from before a size existed still renders: that size takes today's full default.
    known = {**asdict(Sizes()), **sizes}
    out += ["", METHOD.format(**{k: (f"{v:,}" if isinstance(v, int) else v)
                                 for k, v in known.items() if not isinstance(v, (list, tuple))},
                              fanout_members=" and ".join(str(n) for n in sizes["fanout_members"]),
                              idle_sizes=" and ".join(f"{n:,}" for n in sizes["idle_sizes"]),
                              storm_sizes=" and ".join(f"{n:,}" for n in sizes.get("storm_sizes", ())))]
    out += ["", LIMITS]
    profile = RESULTS_DIR / "signald-fanout-profile.txt"
    if profile.exists():
        text = profile.read_text().splitlines()
        out += ["", "## Where signald's fan-out time goes", "",
                "From `./dev bench --profile` (cProfile of the daemon during workload (b) at the largest room;",
                "cProfile slows it down, look at the proportions). Full stats: "
                "`python -m pstats bench/results/signald-fanout.prof`.", "", "```"]
        out += [line.rstrip() for line in text[:60]] + ["```"]
    return "\n".join(out) + "\n"


COMPARING = """## Comparing two commits

    ./dev bench --baseline b80c188 --only a,b,c,d   # before/after of a refactor, in one run

`--baseline REV` adds a `signald-before` server: `git archive REV signald` is unpacked into a
temporary directory and run from there (working directory and first `PYTHONPATH` entry, checked
before the run to import that tree's `signald`, not the installed one), with the same flags and
environment as `signald`. It is interleaved with the other servers like any of them, so both
versions are measured minutes apart on the same machine; the printed table gains a
`signald-before` column and `÷before` = signald / signald-before for every metric (for times and
CPU, below 1 means faster now). The results go to `bench/results/baseline-<commit>.json`, not
`latest.json`. Workloads: (a) ack p50/p99, (b) fan-out, (c) idle KiB per connection and idle CPU,
(d) connections/s (kept open, and closed after set-up), (e) acked sends/s, (f) scale, (g) the
reconnect storm (`--storm-sizes 1000,5000,19000`), (h) several nodes. A full-size run of (c) takes much the longest
(a 50 s idle window per server and round); `--rounds 1` shortens any run.
"""


METHOD = """## Method

- **Servers.** Each (workload, round, server) gets a fresh process, started from the repository and
  pinned with `sched_setaffinity` before `exec` (its threads — signald's SQLite thread — inherit the
  pin). signald runs as `python -m signald serve --port 0 --db <tmp>/bench.db` (SQLite WAL,
  `synchronous=NORMAL`, every acked `chat.send` is committed before its ack) with the abuse limits
  raised so the load client is not throttled: `SIGNALD_LIMITS_RATE_PER_S=1000000`,
  `SIGNALD_LIMITS_RATE_BURST=1000000`, `SIGNALD_LIMITS_SEND_QUEUE=1000000`,
  `SIGNALD_SERVER_NEW_CONNECTIONS_PER_IP_PER_S=0` (every connection has its own user name, so
  `max_connections_per_user` never applies). "signald :memory:" is the same with `--db :memory:`.
  `bench/servers/socketio_server.py` is python-socketio's `AsyncServer` on aiohttp: `join` enters a
  room, `chat` emits to the room with `skip_sid` and returns the message as the ack.
  `bench/servers/websockets_server.py` speaks signald's envelope for `room.join`/`chat.send`, fans
  out with `websockets.broadcast()` and acks. Both peers build the same ChatMessage-shaped record as
  signald (same fields, similar size) and store nothing.
- **Load client.** One asyncio process (`bench/wsclient.py`) on the other core drives all three
  servers with the same code: a lean hand-written WebSocket client that parses frame headers only,
  counts fan-out events by prefix without decoding them, masks with the zero key and offers no
  compression. socket.io is spoken as raw engine.io v4 frames over the WebSocket transport
  (`42<id>["chat",{{...}}]` → `43<id>[...]`), not through python-socketio's client, whose per-frame
  cost would make the client the bottleneck. The client answers WebSocket and engine.io pings.
- **Order.** Workloads run one after the other; within a workload the servers alternate
  (signald, socketio, websockets, then the reverse, ...) for {rounds} round(s), and the value shown
  is the median over rounds.
- **(a) Ack round trip:** one connection joined to its own room sends {rtt_messages} `chat.send`
  one at a time (after {rtt_warmup} warm-up sends), timing send → ack; p50 and p99 (nearest rank).
  Server CPU per acked send: the server process's CPU time (user + system, all threads, and the
  main thread's apart) over the timed sends ÷ sends; it includes the kernel's work for the
  loopback TCP of the request and the ack.
- **(b) Fan-out:** {fanout_members} connections in one room; {fanout_senders} of them send, each
  with at most {fanout_window} unacked messages, until about {fanout_deliveries} deliveries are due.
  Delivered msgs/s = chat events received by all connections ÷ time from the first send to the last
  delivery. Server CPU per delivery = the server process's CPU time (user + system, psutil) over
  that interval ÷ deliveries; "deliveries per server CPU-second" is its inverse, the capacity of
  one core independent of the client. The load client's own CPU is shown: near 100% means the rate
  is client-bound (the server's CPU figure still holds).
- **(c) Idle memory:** after 20 warm-up connections come and go, connections are opened (each joins
  a room of {idle_room_size}) up to {idle_sizes}; RSS growth over the pre-connection RSS ÷ connections,
  measured after the join chatter has drained. At the largest size the server's CPU is sampled over
  {idle_cpu_window_s} s of idleness (heartbeats: signald pings a connection after 20 s of silence,
  socket.io every 25 s, websockets every 20 s).
- **(d) Connection rate:** {connect_count} connections with {connect_concurrency} handshakes in
  flight (source addresses spread over 127.0.0.2-9); a connection counts once its welcome arrived
  (socket.io: the namespace `40{{"sid"}}` after `0{{...}}`/`40`). Then as many again, each closed cleanly
  once welcomed (close frame, the server's reply, its TCP close): set-up and tear-down together.
- **(e) Durable acked sends:** {durable_senders} connections, each alone in its own room, each
  sending {durable_messages} `chat.send` and awaiting every ack; sends/s over all. The target compares
  signald's SQLite file with `--db :memory:`; the peers (which store nothing) are shown for scale.
- **(f) Scale:** one signald process (file limit raised to the hard limit by the bench); idle
  connections (each in a room of 50) are opened by `bench/holder.py` processes of at most
  {scale_per_holder} connections each, one source address 127.0.1.N each (about 28k ephemeral
  ports per address pair); RSS after settling, then idle CPU over {scale_window_s} s (two signald
  heartbeat intervals). The 50,000 budget (1.5 GB, 5% of a core) is checked linearly from the
  connections actually held when fewer than 50,000 could be opened; the note above says why.
- **(g) Reconnect storm:** {storm_sizes} clients over 50 rooms (`bench/storm.py`), joining in four
  waves while the rooms fill up (each holds the history up to its join ack's `rev` and what it
  gets live), a fifth of them dropping out before the last messages; then the server gets SIGTERM
  and is started again on the same port and database while 10 senders keep sending
  ({storm_send_rate} messages/s each). Every client reconnects with `signald.client.schedule`'s
  jittered backoff and rejoins with `since_rev` (paging `chat.changes` while truncated); times
  are from the SIGTERM (and from the restarted server's ready line) to 50/99/100 % resumed;
  server CPU is the restarted process's, from its ready line to the last resume, per client; a
  fresh client reads each room's whole history at the end, and every client must hold exactly
  revisions 1..R (missed and duplicated count the differences). python-socketio: reconnect and
  rejoin only (no resume).
- **(h) Several nodes** (`bench/cluster.py`), on a private Redis (`bench/redisserver.py`) and the
  bench's PostgreSQL, both pinned to the servers' core with the nodes. Fan-out: (b)'s workload
  against one node with `--broker-url` (signald-broker) and one without (signald-pg), both on
  PostgreSQL, so the ratio is the broker's cost alone. Cross-node: three nodes; a sender on node 0
  sends {cluster_rate:,.0f} `chat.send`/s for {cluster_seconds} s (paced, acks not awaited, the
  first tenth not counted), one receiver on node 0 and one on each other node; the body carries
  the send time; added = across-nodes minus same-node latency, at p50 and p99. Idle: {cluster_idle}
  connections (rooms of 50) spread evenly over the three nodes by `bench/holder.py` processes,
  then each node's RSS and CPU over {scale_window_s} s of idleness.
- Connections are closed with a TCP reset between runs, so no TIME_WAIT builds up."""


LIMITS = """## How signald gets its numbers, and what bounds them

- **(b) fan-out.** Each event is encoded once into a complete WebSocket frame shared by all
  recipients, and written with one non-blocking `write` when the connection's socket is idle (its
  writer task only takes what does not fit). A connection's reader does not wait for the commit of
  its `chat.send`, so pipelined sends (the bench keeps 8 in flight per sender) share one
  transaction, and the events of a committed batch reach each member in one `write`
  (`signald.delivery.cork.Cork`). The peers write every message to every member separately; that is most
  of the gap, and why it widens with the room. Over loopback each `write` also pays the receiver's
  TCP processing, charged to the server.
- **(a) ack round trip.** The ack of a `chat.send` leaves after the message is committed; the
  peers store nothing. Four things make that cheap. A lone send on an idle store is committed
  right on the event loop (handing it to the SQLite thread and back costs two context switches,
  about 50 µs with both threads on one core, more than the transaction). The transaction writes
  two B-tree pages (schema v2: messages keyed by (room, seq), no created_ts index; the per-room
  seq and count live in memory and reach the `rooms` table with the writer thread's
  transactions): about 20-25 µs. A request that arrives as one whole frame skips wsproto's
  parser (unmasked with two integer XORs). And the reader of a peer that talks (two messages
  within a second) waits for the next one in Trio rather than in `signald.transport.parking`, saving a
  scheduler pass per message. Under load (other tasks runnable) the sends of one scheduler pass
  are committed together on the event loop in the next pass, without a savepoint each (see
  "Durable sends: CPU per `chat.send` and the ack tail" below); only a busy store (other work
  queued) hands them to the SQLite thread. The ratio moves with python-socketio's own round trip,
  which varies a lot between runs here (p50 0.20-0.43 ms, p99 0.29-1.7 ms on 2026-11-26): in a
  quick (a) run where it was fast (p50 0.25 ms) signald measured 0.59x at p50 and 0.65x at p99.
  Against the websockets peer, which stores nothing, the durable ack is 0.9-1.3x.
- **(f) idle CPU.** Heartbeats are one timing wheel for the whole hub (no task or timer per
  connection) that pings only connections silent for `heartbeat_s`. Readers that drained their
  socket park in one epoll set (`signald.transport.parking`) whose single task reads what arrives and takes a
  lone pong on the spot, without waking the reader or re-arming anything (a talking peer's reader
  waits in Trio instead until the next ping; its pong wakes it one last time). What is left is
  one ping written and one pong read per interval and connection (about 17 µs here): 2,500 round
  trips per second at 50,000 connections and the default 20 s. The sandbox's file limit (20,000)
  caps what one process can hold; (f) extrapolates linearly.
- **(e) durable vs in-memory.** With the server pinned to one core, how many sends share a
  transaction depended on when the SQLite thread got the core (since 2026-12-06 they are the
  sends of one or two scheduler passes, committed on the event loop), so this ratio moved a lot from run
  to run (0.52 to 0.98 across the full runs of 2026-11-26, with code changes in between; 0.74 in
  a quick run while idle-store inline commits still took one send per loop turn under load, 0.81
  and 0.97 once they were limited to an otherwise idle loop). Every extra transaction also costs
  a WAL append, and every 10,000 WAL pages a checkpoint."""


GENERATED_SECTIONS = frozenset({
    "Comparing two commits", "This run", "Targets", "All results", "Method",
    "How signald gets its numbers, and what bounds them", "Where signald's fan-out time goes",
})


def hand_written(page: str) -> list[str]:
    """The ``## `` sections of ``page`` this module does not write (before/after write-ups...), in order."""
    sections: list[list[str]] = []
    for line in page.splitlines():
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    return ["\n".join(lines).rstrip() for lines in sections if lines[0][3:].strip() not in GENERATED_SECTIONS]


def write_report(result: dict[str, Any]) -> list[Path]:
    """Rewrite the page from ``result``; the hand-written sections already on it are kept, after
    "Comparing two commits"."""
    DOCS.mkdir(exist_ok=True)
    plot = write_plot(result, DOCS / "benchmarks.png")
    page = DOCS / "benchmarks.md"
    kept = hand_written(page.read_text()) if page.exists() else []
    text = render(result, plot.name)
    if kept:
        marker = "\n## This run\n"
        before, _, after = text.partition(marker)
        text = before + "\n" + "\n\n".join(kept) + "\n" + marker + after
    page.write_text(text)
    return [page, plot]
