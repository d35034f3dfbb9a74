"""A private PostgreSQL server for the test session, and a fresh database per test.

``postgres_server`` (session scope) finds Debian's PostgreSQL (``apt-get install postgresql``
when ``initdb`` is missing), runs ``initdb`` as the ``postgres`` user (it refuses root) in a
temporary directory that user owns, starts it on a free loopback port with its socket in that
directory, and stops it when the session ends. ``postgres_url`` creates an empty database for
one test (``CREATE DATABASE`` is cheap); they all go with the server at the end.

Tests that need it are skipped (with the reason) when PostgreSQL cannot be installed or started
or psycopg is missing, unless ``SIGNALD_TEST_POSTGRES=require`` (CI), which makes that an error.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_counter = itertools.count()


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
                       check=True, env=env, capture_output=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PostgresServer:
    def __init__(self, bin_dir: Path, data: Path, port: int) -> None:
        self.bin_dir, self.data, self.port = bin_dir, data, port

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        auth = "postgres" if password is None else f"postgres:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args]),
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} -c fsync=off"
        self.pg_ctl("-o", options, "-l", str(self.data / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "stop")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    require = os.environ.get("SIGNALD_TEST_POSTGRES") == "require"
    try:
        import psycopg  # noqa: F401
        bin_dir = _bin_dir()
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise RuntimeError("runuser is missing")
    except Exception as exc:
        if require:
            raise
        pytest.skip(f"no PostgreSQL for the tests: {exc}")
    data = Path(tempfile.mkdtemp(prefix="signald-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                 "-E", "UTF8", "--no-sync"]), check=True, capture_output=True, timeout=120)
    server = PostgresServer(bin_dir, data, _free_port())
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(data, ignore_errors=True)


def create_database(server: PostgresServer) -> str:
    """A new empty database; its URL."""
    import psycopg

    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return server.url(name)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return create_database(postgres_server)
