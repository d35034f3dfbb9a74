"""What ``signald serve`` imports before its ready line, on its defaults (auth mode none, SQLite).

Every module imported costs start-up time, and after a restart every millisecond before the ready
line is a millisecond in which reconnecting clients are refused and back off (issue #21; the figures
are in docs/benchmarks.md, "Daemon start-up"). The optional parts of the daemon load their heavy
libraries only when configured: PyJWT and cryptography for ``auth.mode = "jwt"``, psycopg for a
PostgreSQL ``history.url``, coredis and hiredis for ``cluster.broker_url``; prometheus-client (and
the HTTP server modules it imports) on the first counted event after the ready line, or for
``server.metrics_port`` before it; httpx is the server API's client, never the daemon's.

The real daemon runs in a subprocess under ``python -X importtime``, which writes a line to stderr
for every module as it is imported: the modules named before the ready line are exactly those the
start-up imported. A daemon in JWT mode, and one with a metrics port, show that the method sees such imports.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from signald.config import ENV_VARIABLES

READY = re.compile(r"signald ready on ws://")
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")

# Libraries the default daemon must not load before it is ready (nor any module of theirs).
NOT_ON_THE_DEFAULT_PATH = ("jwt", "cryptography", "psycopg", "psycopg_binary", "psycopg_c", "coredis", "hiredis",
                           "httpx", "prometheus_client", "wsgiref", "signald.history.postgres", "signald.cluster",
                           "signald.api")


def modules_before_ready(tmp_path: Path, **env_extra: str) -> list[str]:
    """The modules ``python -m signald serve`` (port 0, SQLite in ``tmp_path``) imports up to its ready line."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in ENV_VARIABLES}
    env.update(env_extra)
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "signald", "serve", "--port", "0", "--db",
         str(tmp_path / "start.db")],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    modules: list[str] = []
    seen: list[str] = []
    try:
        for line in process.stderr:
            if READY.search(line):
                return modules
            seen.append(line)
            if match := IMPORTED.match(line):
                modules.append(match.group(1))
        raise AssertionError("the daemon exited before it was ready:\n" + "".join(seen[-30:]))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in NOT_ON_THE_DEFAULT_PATH))


def test_the_default_daemon_is_ready_without_its_optional_libraries(tmp_path: Path) -> None:
    modules = modules_before_ready(tmp_path)
    assert "signald.server" in modules and "trio" in modules  # the daemon itself was seen loading
    assert heavy(modules) == []


def test_a_jwt_daemon_loads_pyjwt_before_it_is_ready(tmp_path: Path) -> None:
    # auth.mode = "jwt" checks its key at start-up (a bad key is a configuration error, exit 2)
    modules = modules_before_ready(tmp_path, SIGNALD_AUTH_MODE="jwt", SIGNALD_AUTH_JWT_SECRET="s" * 32)
    assert "jwt" in heavy(modules)


def test_a_daemon_with_a_metrics_port_loads_prometheus_client_before_it_is_ready(tmp_path: Path) -> None:
    modules = modules_before_ready(tmp_path, SIGNALD_SERVER_METRICS_PORT="0")
    assert "prometheus_client" in heavy(modules) and "jwt" not in heavy(modules)
