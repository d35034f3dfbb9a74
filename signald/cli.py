"""Command line: ``signald serve``, ``signald history export|stats|migrate``, ``signald health URL``, ``--version``.

``main(argv=None) -> int`` never calls ``sys.exit`` itself, so tests call it directly.
Exit status: 0 on a clean stop (SIGINT/SIGTERM), 2 for bad configuration or usage, 1 when the
daemon cannot start (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import msgspec
import trio

from signald import __version__
from signald.auth import is_loopback
from signald.config import Config, ConfigError, load_config
from signald.errors import StartupError
from signald.history.contract import SchemaError, StorageError
from signald.logfmt import JsonFormatter, announce, log_event, setup_logging
from signald.server import RunningServer, build_authenticator, build_ssl_context, serve_signald
from signald.workers import WORKER_FLAG, run_workers, watch_parent

log = logging.getLogger("signald")

__all__ = ["JsonFormatter", "main", "setup_logging"]  # the formatters live in signald.logfmt


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


def config_from_args(args: argparse.Namespace, warn: Callable[[str], None] | None = None) -> Config:
    """The configuration of ``signald serve``: file, environment, then these flags."""
    server = {
        key: value for key, value in {
            "host": args.host, "port": args.port, "db": args.db, "insecure": args.insecure,
            "certfile": args.certfile, "keyfile": args.keyfile, "metrics_port": args.metrics_port,
            "demo": args.demo,
        }.items() if value is not None
    }
    log_section = {k: v for k, v in {"level": args.log_level, "format": args.log_format}.items() if v}
    history = {"url": args.history_url} if args.history_url is not None else {}
    cluster = {"broker_url": args.broker_url} if args.broker_url is not None else {}
    return load_config(args.config, overrides={"server": server, "log": log_section, "history": history,
                                               "cluster": cluster}, warn=warn)


def check_exposure(config: Config) -> str | None:
    """Refuse auth mode none on a non-loopback address unless --insecure; None if fine."""
    if config.auth.mode == "none" and not is_loopback(config.server.host) and not config.server.insecure:
        return (f"refusing to serve {config.server.host} with auth mode 'none' "
                "(anyone could connect as anyone); pass --insecure to do it anyway")
    if bool(config.server.certfile) != bool(config.server.keyfile):
        return "server.certfile and server.keyfile go together"
    return None


async def run_daemon(config: Config, *, workers: int = 1, argv: Sequence[str] = (), worker: bool = False) -> int:
    """Serve until SIGINT or SIGTERM, then shut down cleanly (with ``workers``: the other nodes too).

    SIGTERM (what systemd, Docker and Kubernetes send) with ``server.drain_s`` > 0 first drains:
    ``/readyz`` answers 503 while everything else goes on for that long, so that a load balancer
    stops sending new clients before the connections close; a second signal ends the drain at once.
    SIGINT (Ctrl-C) stops at once. Once ready, it tunes the garbage collector (:func:`tune_gc`).
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running: RunningServer = await nursery.start(partial(
                serve_signald, config, reuse_port=worker or workers > 1))
            ports = {"api_port": running.api_port, "metrics_port": running.metrics_port}
            announce(log, f"signald ready on {running.url}", url=running.url,
                     **{name: port for name, port in ports.items() if port is not None})
            tune_gc()  # after the ready line: clients connecting meanwhile wait in the listen queue
            if workers > 1:
                nursery.start_soon(run_workers, config, argv, workers, running.port)
            if worker:
                nursery.start_soon(watch_parent)
            async for signum in signals:
                drain_s = config.server.drain_s
                if signum == signal.SIGTERM and drain_s > 0:
                    running.drain()
                    log_event(log, logging.INFO, "received SIGTERM, draining: /readyz answers 503",
                              drain_s=drain_s)
                    with trio.move_on_after(drain_s):
                        async for again in signals:  # a second signal ends the drain at once
                            signum = again
                            break
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


DAEMON_GC_THRESHOLDS = (7000, 20, 100)


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never re-scan what start-up created.

    With many idle connections the default thresholds (700, 10, 10) run young collections so
    often that they cost more CPU than the heartbeats (measured: 19,900 idle connections, 10% of a
    core -> 7%). Only the daemon does this; an embedding program keeps its own GC policy.

    :func:`run_daemon` calls it once the daemon is ready, not before: the full collection takes
    15-25 ms, and a client that tries to connect before the port is bound is refused and backs
    off (after a restart, thousands of them), while one that comes during it waits in the listen
    queue for a few milliseconds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*DAEMON_GC_THRESHOLDS)


def _serve(args: argparse.Namespace) -> int:
    warnings: list[str] = []  # logged once logging is set up, so they take the configured format
    try:
        config = config_from_args(args, warn=warnings.append)
    except ConfigError as exc:
        print(f"signald: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1 or (args.workers > 1 and not config.cluster.enabled):
        print("signald: configuration error: --workers: more than one node needs cluster.broker_url "
              "(and a PostgreSQL history.url)" if args.workers > 1 else "signald: --workers must be 1 or more",
              file=sys.stderr)
        return 2
    if args.workers > 1 and config.cluster.node_id:
        config = config.replace(cluster={"node_id": f"{config.cluster.node_id}-0"})
    problem = check_exposure(config)
    if problem:
        print(f"signald: {problem}", file=sys.stderr)
        return 2
    try:
        build_authenticator(config)
    except (ValueError, OSError) as exc:
        print(f"signald: configuration error: auth: {exc}", file=sys.stderr)
        return 2
    try:
        build_ssl_context(config)
    except OSError as exc:  # ssl.SSLError too: a file that is missing, unreadable or not PEM
        reason = (exc.reason if isinstance(exc, ssl.SSLError) else None) or exc.strerror or exc
        print(f"signald: configuration error: server.certfile/server.keyfile "
              f"({config.server.certfile}, {config.server.keyfile}): {reason}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)
    for warning in warnings:
        log.warning("configuration: %s", warning)
    if config.auth.mode == "none" and not is_loopback(config.server.host):
        log.warning("serving %s with auth mode 'none': anyone can connect as anyone", config.server.host)
    try:
        status = trio.run(partial(run_daemon, config, workers=args.workers, argv=args.argv, worker=args.worker))
    except (OSError, StartupError) as exc:
        print(f"signald: cannot start: {_startup_failure(config, exc)}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        errors = group.subgroup((OSError, StartupError))
        if errors is None:
            raise
        first = next(iter(_leaves(errors)))
        print(f"signald: cannot start: {_startup_failure(config, first)}", file=sys.stderr)
        return 1
    # Stopped, everything closed: the interpreter's exit need not walk what the run left behind in
    # its collections (~0.4 s of SIGTERM-to-exit at 5,000 connections); the memory goes with the process.
    gc.freeze()
    return status


def _startup_failure(config: Config, exc: BaseException) -> str:
    """One line naming the setting: a StartupError says it; an OSError left is the listener's bind."""
    if isinstance(exc, OSError):
        server = config.server
        return f"server.host/server.port {server.host}:{server.port}: {exc.strerror or exc}"
    return str(exc)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _history(args: argparse.Namespace) -> int:
    from signald.history.export import export as export_messages
    from signald.history.factory import make_store
    from signald.state.dburl import parse_history_url, sqlite_url

    url = args.url if args.url else sqlite_url(args.db)
    try:
        parsed = parse_history_url(url)
    except ValueError as exc:
        print(f"signald: --url: {exc}", file=sys.stderr)
        return 2
    # sqlite would create a missing file (read-write) or fail vaguely (read-only)
    if parsed.backend == "sqlite" and args.history_command != "migrate" and not os.path.isfile(parsed.target):
        print(f"signald: no history database at {parsed.target}", file=sys.stderr)
        return 2
    where = parsed.target if parsed.backend == "sqlite" else parsed.shown

    async def run() -> None:
        async with make_store(url, read_only=args.history_command != "migrate") as store:
            if args.history_command == "export":
                async for message in export_messages(store, args.room):
                    sys.stdout.write(msgspec.json.encode(message).decode() + "\n")
                return
            stats = await store.stats()
            if args.history_command == "stats":
                sys.stdout.write(json.dumps(dict(stats), indent=2) + "\n")
            else:
                print(f"signald: {where}: schema version {stats['schema_version']}")

    try:
        trio.run(run)
    except SchemaError as exc:
        print(f"signald: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"signald: cannot {'migrate' if args.history_command == 'migrate' else 'read'} {where}: "
              f"{exc.message}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``signald`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --workers repeats for the other nodes
    if args.command == "serve":
        return _serve(args)
    if args.command == "health":
        from signald.api.health import check

        healthy, line = check(args.url, args.timeout)
        print(line, file=sys.stdout if healthy else sys.stderr)
        return 0 if healthy else 1
    return _history(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
