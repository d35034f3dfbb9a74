"""Command line: ``signald serve``, ``signald history export|stats|migrate``, ``signald health URL``, ``--version``.

``main(argv=None) -> int`` never calls ``sys.exit`` itself, so tests call it directly.
Exit status: 0 on a clean stop (SIGINT/SIGTERM), 2 for bad configuration or usage, 1 when the
daemon cannot start (e.g. the port is taken); ``signald health``: 0 on HTTP 200, else 1.

This module loads only the parser (:mod:`signald.commands.parser`); a subcommand's module is
imported when it runs. ``signald health`` is what a container's HEALTHCHECK runs every few
seconds, next to the daemon: it loads the standard library's HTTP client and nothing of trio,
msgspec or the daemon (tests/e2e/test_health_probe.py). The names that lived here before
(``tune_gc``, ``config_from_args``, ...) load from their modules on first use (PEP 562).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from signald.commands.parser import build_parser
from signald.lazy import exports

# name -> the module that defines it, loaded on first use (all of them import trio or the daemon)
_EXPORTS: dict[str, str] = {
    "DAEMON_GC_THRESHOLDS": "signald.commands.serve",
    "check_exposure": "signald.commands.serve",
    "config_from_args": "signald.commands.serve",
    "run_daemon": "signald.commands.serve",
    "tune_gc": "signald.commands.serve",
    "JsonFormatter": "signald.logfmt",  # the formatters live in signald.logfmt
    "setup_logging": "signald.logfmt",
}

__all__ = ["DAEMON_GC_THRESHOLDS", "JsonFormatter", "build_parser", "check_exposure", "config_from_args", "main",
           "run_daemon", "setup_logging", "tune_gc"]

if TYPE_CHECKING:
    from signald.commands.serve import DAEMON_GC_THRESHOLDS, check_exposure, config_from_args, run_daemon, tune_gc
    from signald.logfmt import JsonFormatter, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``signald`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --workers repeats for the other nodes
    if args.command == "serve":
        from signald.commands.serve import serve

        return serve(args)
    if args.command == "health":
        from signald.api.health import check

        healthy, line = check(args.url, args.timeout)
        print(line, file=sys.stdout if healthy else sys.stderr)
        return 0 if healthy else 1
    from signald.commands.history import history

    return history(args)


__getattr__, __dir__ = exports(__name__, _EXPORTS)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
