"""The subcommands of ``signald`` (:mod:`signald.cli`): the parser, and one module per subcommand.

:mod:`signald.cli` imports a subcommand's module only when that subcommand runs, so that
``signald health`` (a container's health check, every few seconds) loads the parser and the
standard library's HTTP client, never trio or the daemon. Keep this file free of imports.
"""
