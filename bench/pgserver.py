"""A private PostgreSQL server in a temporary directory, on a free loopback port: start, use, stop.

The test suite (``tests/postgres.py``, session fixtures) and the benchmark (``bench.pg_sends``)
both run one; this module is the one place that knows how. It uses Debian's PostgreSQL
(``apt-get install postgresql`` when ``initdb`` is missing), runs ``initdb`` as the ``postgres``
user when we are root (it refuses root), puts the socket in the data directory and stops the
server (``immediate``) and removes the directory on the way out.

``durable=False`` (tests) turns ``fsync`` off: the tests check what is committed, not that it
survives a power cut, and a private test server has nothing to lose. The benchmark keeps the
defaults (``fsync`` and ``synchronous_commit`` on), so an ack costs what it costs in production.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.leftovers import claim, sweep

__all__ = ["PostgresServer", "bench_database_url", "bin_dir", "create_database", "for_bench", "private_server"]

_counter = itertools.count()


def bin_dir() -> Path:
    """The newest Debian PostgreSQL's ``bin`` directory, installing the package when it is missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
                       check=True, env=env, capture_output=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise RuntimeError("runuser is missing (initdb refuses to run as root)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PostgresServer:
    """A server in ``data`` listening on 127.0.0.1:``port``; ``pg_ctl`` stops and starts it again."""

    def __init__(self, bin_dir: Path, data: Path, port: int, *, durable: bool = True, cpu: int | None = None) -> None:
        self.bin_dir, self.data, self.port, self.durable, self.cpu = bin_dir, data, port, durable, cpu

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        auth = "postgres" if password is None else f"postgres:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def pg_ctl(self, *args: str) -> None:
        cpu = self.cpu
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))  # the server inherits it
        subprocess.run(_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args]),
                       check=True, capture_output=True, timeout=60, preexec_fn=pin)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes so far (those alive now)."""
        import psutil

        try:
            postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
            total = 0.0
            for proc in [postmaster, *postmaster.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
            return total
        except (OSError, ValueError, IndexError, psutil.Error):
            return 0.0

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data}"
        if not self.durable:
            options += " -c fsync=off"
        self.pg_ctl("-o", options, "-l", str(self.data / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "stop")


PREFIX = "signald-pg-"


@contextlib.contextmanager
def private_server(*, durable: bool = True, cpu: int | None = None) -> Iterator[PostgresServer]:
    """``initdb`` in a temporary directory, start on a free port (its processes pinned to ``cpu``
    if given); stop and remove it on exit."""
    binaries = bin_dir()
    sweep(PREFIX, lambda root: subprocess.run(
        _as_postgres([str(binaries / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"]),
        capture_output=True, timeout=60))
    root = Path(tempfile.mkdtemp(prefix=PREFIX))  # holds owner.pid and the data directory (initdb wants it empty)
    data = root / "data"
    try:
        claim(root)
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(_as_postgres([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                     "-E", "UTF8", "--no-sync"]), check=True, capture_output=True, timeout=120)
        server = PostgresServer(binaries, data, _free_port(), durable=durable, cpu=cpu)
        server.start()
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def create_database(server: PostgresServer, *, file_copy: bool = False) -> str:
    """A new empty database on ``server``; its URL.

    ``file_copy``: copy template1's files (``STRATEGY FILE_COPY``, PostgreSQL 15+; what older ones
    always do) instead of writing each of its pages to the WAL (15's default): 7 MB less WAL per
    database, for a test suite that creates hundreds (its two checkpoints cost little with fsync off).
    """
    import psycopg

    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        strategy = " STRATEGY FILE_COPY" if file_copy and conn.info.server_version >= 150000 else ""
        conn.execute(f"CREATE DATABASE {name}{strategy}")  # type: ignore[arg-type]
    return server.url(name)


# --------------------------------------------------------------------------- the benchmark's server

_bench: list[PostgresServer] = []  # the one ``for_bench`` started, while it runs


@contextlib.contextmanager
def for_bench(cpu: int | None) -> Iterator[PostgresServer]:
    """The benchmark's durable server for the length of a run; :func:`bench_database_url` uses it."""
    with private_server(durable=True, cpu=cpu) as server:
        _bench.append(server)
        try:
            yield server
        finally:
            _bench.remove(server)


def bench_server() -> PostgresServer | None:
    """The server :func:`for_bench` is running, if any."""
    return _bench[-1] if _bench else None


def bench_database_url() -> str:
    """A new empty database on the benchmark's server (one per server process the bench starts)."""
    server = bench_server()
    if server is None:
        raise RuntimeError("no PostgreSQL server for the bench (bench.runner starts one when a workload needs it)")
    return create_database(server)
