"""``signald serve`` that cannot start says so in one line naming the setting and the path, no traceback.

Each case runs the real command in a subprocess: the database in a missing directory, a directory
or a non-database file as the database, the listener's or the metrics port already taken, and
missing or unreadable TLS files. Exit status as docs/configuration.md says: 1 cannot start,
2 configuration error.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def serve(tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALD_")}
    done = subprocess.run([sys.executable, "-m", "signald", "serve", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    return done.returncode, done.stderr


def cases(tmp_path: Path, taken: int) -> list[tuple[list[str], int, str]]:
    """(arguments, exit status, the whole of stderr)."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "garbage.db").write_bytes(os.urandom(4096))
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    (tmp_path / "jwt.toml").write_text('[auth]\nmode = "jwt"\n')  # and neither a secret nor a key
    (tmp_path / "api.toml").write_text(f'[api]\nkeys = ["k"]\nport = {taken}\n')
    missing = tmp_path / "no" / "such" / "dir" / "h.db"
    cannot = "signald: cannot start:"
    return [
        (["--port", "0", "--db", str(missing)], 1, f"{cannot} server.db {missing}: unable to open database file"),
        (["--port", "0", "--db", "a-file/h.db"], 1, f"{cannot} server.db a-file/h.db: unable to open database file"),
        (["--port", "0", "--db", str(tmp_path)], 1, f"{cannot} server.db {tmp_path}: unable to open database file"),
        (["--port", "0", "--db", "garbage.db"], 1, f"{cannot} server.db garbage.db: file is not a database"),
        (["--port", str(taken), "--db", ":memory:"], 1,
         f"{cannot} server.host/server.port 127.0.0.1:{taken}: Address already in use"),
        (["--port", "0", "--metrics-port", str(taken), "--db", ":memory:"], 1,
         f"{cannot} server.metrics_port 127.0.0.1:{taken}: Address already in use"),
        (["--port", "0", "--db", ":memory:", "--config", "api.toml"], 1,
         f"{cannot} api.port 127.0.0.1:{taken}: Address already in use"),
        (["--port", "0", "--db", ":memory:", "--certfile", "nope.pem", "--keyfile", "nope.key"], 2,
         "signald: configuration error: server.certfile/server.keyfile (nope.pem, nope.key): "
         "No such file or directory"),
        (["--port", "0", "--db", ":memory:", "--config", "jwt.toml"], 2,
         'signald: configuration error: auth: jwt_secret or jwt_public_key_file is required when mode = "jwt"'),
    ]


def test_every_start_up_failure_is_one_line_naming_the_setting_and_the_path(tmp_path: Path, taken_port: int) -> None:
    expected = cases(tmp_path, taken_port)
    with ThreadPoolExecutor(len(expected)) as pool:  # a second each: run them side by side
        outcomes = list(pool.map(lambda case: serve(tmp_path, *case[0]), expected))
    for (_, status, line), (code, stderr) in zip(expected, outcomes, strict=True):
        assert (code, stderr.strip()) == (status, line), stderr
        assert "Traceback" not in stderr


def test_a_tls_file_that_is_not_pem_is_one_line_too(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    code, stderr = serve(tmp_path, "--port", "0", "--db", ":memory:", "--certfile", "bad.pem", "--keyfile", "bad.pem")
    assert code == 2
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("signald: configuration error: server.certfile/server.keyfile (bad.pem, bad.pem): ")
