"""Exit statuses and outputs of the ``signald`` command that docs/configuration.md promises and no
other test held: the cross-key checks of ``signald serve`` (status 2 before anything starts),
``--workers``, the JWT algorithm rules, ``signald history migrate|stats`` on SQLite (``--url``
from ``$SIGNALD_HISTORY_URL``, status 1 for a file SQLite cannot read), and SIGINT never draining
(docs/deploy.md); a broker with a SQLite history is status 1 naming cluster.broker_url (docs/cluster.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from conftest import daemon

from signald.cli import main
from signald.client.raw import connect
from signald.history.schema import SCHEMA_VERSION

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


@pytest.fixture(autouse=True)
def no_signald_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SIGNALD_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("toml", "flags", "said"), [
    ("", ["--certfile", "c.pem"], "signald: configuration error: server.certfile and server.keyfile go together"),
    ("", ["--keyfile", "k.pem"], "signald: configuration error: server.certfile and server.keyfile go together"),
    ("", ["--workers", "2"], "signald: configuration error: --workers: more than one node needs cluster.broker_url"),
    ("", ["--workers", "0"], "signald: configuration error: --workers must be 1 or more"),
    (f'[auth]\nmode = "jwt"\njwt_secret = "{SECRET}"\njwt_algorithms = ["none"]\n', [],
     "signald: configuration error: auth: algorithms:"),
    (f'[auth]\nmode = "jwt"\njwt_secret = "{SECRET}"\njwt_algorithms = ["HS256", "RS256"]\n', [],
     "signald: configuration error: auth: algorithms:"),
    ('[auth]\nmode = "jwt"\njwt_secret = "short"\n', [], "signald: configuration error: auth: "),
    ("[server]\nheartbeat_s = 5.0\nheartbeat_timeout_s = 3.0\n", [],
     "signald: configuration error: history.request_timeout_s: 10 s must be below server.heartbeat_s"
     " + server.heartbeat_timeout_s (5 + 3 = 8 s)"),
])
def test_serve_refuses_before_starting_with_status_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, flags: list[str], said: str) -> None:
    config = tmp_path / "signald.toml"
    config.write_text(toml)
    assert main(["serve", "--config", str(config), "--port", "0", "--db", ":memory:", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1, err


def test_history_migrate_creates_the_schema_and_stats_reads_it_from_the_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "new.db"
    assert main(["history", "migrate", "--db", str(db)]) == 0
    assert capsys.readouterr().out == f"signald: {db}: schema version {SCHEMA_VERSION}\n"
    monkeypatch.setenv("SIGNALD_HISTORY_URL", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)  # no ./signald.db here: only the variable names the database
    assert main(["history", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["schema_version"], stats["messages"], stats["backend"]) == (SCHEMA_VERSION, 0, "sqlite")
    assert not (tmp_path / "signald.db").exists()


def test_history_of_a_file_sqlite_cannot_read_is_status_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x13" * 4096)
    assert main(["history", "stats", "--db", str(garbage)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"signald: cannot read {garbage}: ") and err.count("\n") == 1, err


async def test_sigint_never_drains(tmp_path: Path) -> None:
    async with daemon(tmp_path, "ctrl-c", "--db", ":memory:", config_text="[server]\ndrain_s = 600.0\n") as (
            process, url):
        async with connect(url, user="alice") as alice:
            process.send_signal(signal.SIGINT)
            with trio.fail_after(10):  # not the 600 s drain
                await alice.closed.wait()
                assert await process.wait() == 0
        assert alice.ws.closed is not None and alice.ws.closed.code == 1001
    assert "draining" not in (tmp_path / "ctrl-c.log").read_text()


def test_a_broker_with_a_sqlite_history_cannot_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALD_")}
    done = subprocess.run([sys.executable, "-m", "signald", "serve", "--port", "0", "--db", "h.db",
                           "--broker-url", "redis://127.0.0.1:1/0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.startswith("signald: cannot start: cluster.broker_url: several nodes need one shared "
                                  "PostgreSQL history store"), done.stderr
    assert done.stderr.count("\n") == 1
