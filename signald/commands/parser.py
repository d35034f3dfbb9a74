"""The ``signald`` command line: its parser, and the flags other modules repeat.

Standard library only: every subcommand builds this parser first, ``signald health`` included,
which must not load trio, msgspec or the daemon (see :mod:`signald.commands`).
"""

from __future__ import annotations

import argparse
import os

from signald import __version__

WORKER_FLAG = "--worker"  # hidden: this process is one of the further nodes (signald.workers)

HISTORY_DESCRIPTION = (
    "Reads the database read-only (safe next to a running daemon); it is never created or upgraded. "
    "A missing file exits with status 2, and so does a database at another schema version: run "
    "'signald history migrate' (or start the daemon on it once) to upgrade it. The database is "
    "--url (or SIGNALD_HISTORY_URL), else the SQLite file --db."
)
MIGRATE_DESCRIPTION = (
    "Creates the schema or brings it up to this signald's version (the daemon does this when it starts; "
    "several running it at once migrate once), then prints the version."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signald", description="Real-time signalling daemon on Trio.")
    parser.add_argument("--version", action="version", version=f"signald {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    health = commands.add_parser("health", help="GET a health URL: exit 0 on HTTP 200, else 1",
                                 description="For container health checks: signald health http://127.0.0.1:8765/readyz")
    health.add_argument("url")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 8765)")
    serve.add_argument("--db", help="SQLite history database (default ./signald.db)")
    serve.add_argument("--history-url", help="history store: sqlite:///PATH or postgresql://user:password@host:port/db")
    serve.add_argument("--broker-url", help="several nodes: the shared Redis, redis://host:port/db (needs a "
                       "PostgreSQL --history-url)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["text", "json"])
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="allow auth mode 'none' on a non-loopback address")
    serve.add_argument("--certfile", help="TLS certificate chain (PEM)")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    serve.add_argument("--demo", action="store_true", default=None,
                       help="serve the browser demo at http://HOST:PORT/demo/")
    serve.add_argument("--workers", type=int, default=1, help="with --broker-url: run N nodes on this machine "
                       "sharing the port (SO_REUSEPORT), one per core (default 1)")
    serve.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)

    history = commands.add_parser(
        "history", help="look at a history database (read-only)", description=HISTORY_DESCRIPTION)
    history_commands = history.add_subparsers(dest="history_command", required=True)
    export = history_commands.add_parser("export", help="print messages as JSON lines",
                                         description=HISTORY_DESCRIPTION)
    export.add_argument("--room")
    stats = history_commands.add_parser("stats", help="print message and room counts as JSON",
                                        description=HISTORY_DESCRIPTION)
    migrate = history_commands.add_parser("migrate", help="create or upgrade the schema",
                                          description=MIGRATE_DESCRIPTION)
    for command in (export, stats, migrate):
        command.add_argument("--db", default="./signald.db", help="SQLite history database (default ./signald.db)")
        command.add_argument("--url", default=os.environ.get("SIGNALD_HISTORY_URL"),
                             help="history store URL (default $SIGNALD_HISTORY_URL, else sqlite:///DB)")
    return parser
