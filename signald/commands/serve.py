"""``signald serve``: the configuration from file, environment and flags, the checks before start-up,
and the daemon run until SIGINT or SIGTERM.

Exit status: 0 on a clean stop (SIGINT/SIGTERM), 2 for bad configuration or usage, 1 when the
daemon cannot start (e.g. the port is taken). :mod:`signald.cli` imports this module only for
``signald serve``: it loads trio and the whole daemon.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from signald.auth import is_loopback
from signald.config import Config, ConfigError, load_config
from signald.errors import StartupError
from signald.logfmt import announce, log_event, setup_logging
from signald.server import RunningServer, build_authenticator, build_ssl_context, serve_signald
from signald.workers import run_workers, watch_parent

log = logging.getLogger("signald")


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
        return "configuration error: server.certfile and server.keyfile go together"
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


def serve(args: argparse.Namespace) -> int:
    """``signald serve``: check the configuration, then run until a signal; the exit status."""
    warnings: list[str] = []  # logged once logging is set up, so they take the configured format
    try:
        config = config_from_args(args, warn=warnings.append)
    except ConfigError as exc:
        print(f"signald: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1 or (args.workers > 1 and not config.cluster.enabled):
        wrong = ("--workers: more than one node needs cluster.broker_url (and a PostgreSQL history.url)"
                 if args.workers > 1 else "--workers must be 1 or more")
        print(f"signald: configuration error: {wrong}", file=sys.stderr)
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
