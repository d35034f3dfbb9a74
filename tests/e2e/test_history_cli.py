"""``signald history export|stats`` only read: no file is created, migrated or written."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from signald.cli import main
from signald.history.schema import migrate
from signald.history.store import HistoryStore


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", ["export", "stats"])
def test_a_missing_database_is_an_error_naming_it_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    missing = tmp_path / "typo.db"
    assert main(["history", command, "--db", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_exit_status_of_a_missing_database_from_the_command_line(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    done = subprocess.run([sys.executable, "-m", "signald", "history", "stats", "--db", str(missing)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and str(missing) in done.stderr
    assert not missing.exists()


def test_an_old_schema_is_refused_with_what_to_do_and_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=1)
    conn.close()
    before = digest(path)
    assert main(["history", "export", "--db", str(path)]) == 2
    err = capsys.readouterr().err
    assert "schema version 1" in err and "start the daemon" in err
    assert digest(path) == before
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (1,)


def test_a_file_that_is_no_history_database_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    assert main(["history", "stats", "--db", str(path)]) == 2
    assert "not a signald history database" in capsys.readouterr().err
    assert path.read_bytes() == b""


def test_counts_what_a_killed_daemon_left_unwritten_without_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "h.db"

    async def fill() -> None:
        async with HistoryStore(path) as store:
            for room, n in (("a", 3), ("b", 2)):
                for i in range(n):
                    await store.send(room=room, user_id="u", body=f"{room}{i}")

    trio.run(fill)
    with sqlite3.connect(path, isolation_level=None) as conn:  # as if the counters were never written
        conn.execute("UPDATE rooms SET last_seq = 0, count = 0")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = digest(path)

    assert main(["history", "stats", "--db", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["rooms"], stats["messages"]) == (2, 5)
    assert main(["history", "export", "--db", str(path)]) == 0
    bodies = [json.loads(line)["body"] for line in capsys.readouterr().out.splitlines()]
    assert bodies == ["a0", "a1", "a2", "b0", "b1"]
    assert digest(path) == before
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT sum(count) FROM rooms").fetchone() == (0,)  # not reconciled
