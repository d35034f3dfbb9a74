"""A private Redis server in a temporary directory, on a free loopback port: start, use, stop.

The test suite (``tests/redis_fixture.py``, session fixtures) and the benchmark (the broker of
workload (h)) both run one; this module is the one place that knows how. It uses Debian's
``redis-server`` (``apt-get install redis-server`` when it is missing), daemonized, persisting
nothing, and shuts it down (``SHUTDOWN NOSAVE``) and removes its directory on the way out.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.leftovers import claim, sweep

__all__ = ["RedisServer", "bench_broker_url", "bench_redis", "for_bench", "free_port", "new_directory",
           "private_server", "redis_binary"]


def redis_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                             else None)
    if found is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
                       check=True, env=env, capture_output=True)
        found = shutil.which("redis-server") or "/usr/bin/redis-server"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One private ``redis-server`` (the tests of a broker that goes away stop and start it)."""

    def __init__(self, binary: str, directory: Path, port: int, *, cpu: int | None = None) -> None:
        self.binary, self.dir, self.port, self.cpu = binary, directory, port, cpu

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        cpu = self.cpu
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))  # the daemon inherits it
        subprocess.run([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--daemonize", "yes", "--dir", str(self.dir),
                        "--pidfile", str(self.dir / "redis.pid"), "--logfile", str(self.dir / "redis.log")],
                       check=True, capture_output=True, timeout=30, preexec_fn=pin)
        deadline = time.monotonic() + 10
        while not self.answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}: "
                                   f"{(self.dir / 'redis.log').read_text(errors='replace')[-500:]}")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in RESP, its raw reply (enough for FLUSHDB and SHUTDOWN)."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request.encode())
            try:
                return sock.recv(4096)
            except OSError:
                return b""

    def flush(self, db: int) -> None:
        """Empty logical database ``db``."""
        request = f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request.encode())
            replies = b""
            while replies.count(b"\r\n") < 2:  # +OK for SELECT, +OK for FLUSHDB
                chunk = sock.recv(64)
                if not chunk:
                    raise RuntimeError(f"redis-server closed the connection: {replies!r}")
                replies += chunk

    def pid(self) -> int | None:
        pidfile = self.dir / "redis.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text())
        return None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far."""
        import psutil

        pid = self.pid()
        try:
            times = psutil.Process(pid).cpu_times() if pid else None
        except psutil.Error:
            return 0.0
        return float(times.user + times.system) if times else 0.0

    def stop(self) -> None:
        pid = self.pid()
        self.command("SHUTDOWN", "NOSAVE")
        deadline = time.monotonic() + 10
        while pid is not None and time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs. A daemonized server's parent is init, which may reap it a second
    after it exited (1.15 s here): a zombie has stopped, its port and files are free."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    return True


PREFIX = "signald-redis-"


def _kill_left(directory: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((directory / "redis.pid").read_text()), signal.SIGKILL)


def new_directory() -> Path:
    """A private server's directory, claimed by this process; the servers that killed runs left
    behind are stopped and their directories removed first (:mod:`bench.leftovers`)."""
    sweep(PREFIX, _kill_left)
    directory = Path(tempfile.mkdtemp(prefix=PREFIX))
    claim(directory)
    return directory


@contextlib.contextmanager
def private_server(*, cpu: int | None = None) -> Iterator[RedisServer]:
    """Start one on a free port (pinned to ``cpu`` if given); stop it and remove its directory on exit."""
    directory = new_directory()
    try:
        server = RedisServer(redis_binary(), directory, free_port(), cpu=cpu)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- the benchmark's server

_bench: list[RedisServer] = []  # the one ``for_bench`` started, while it runs
_databases = itertools.count(1)


@contextlib.contextmanager
def for_bench(cpu: int | None) -> Iterator[RedisServer]:
    """The benchmark's broker for the length of a run; :func:`bench_broker_url` uses it."""
    with private_server(cpu=cpu) as server:
        _bench.append(server)
        try:
            yield server
        finally:
            _bench.remove(server)


def bench_redis() -> RedisServer | None:
    """The server :func:`for_bench` is running, if any."""
    return _bench[-1] if _bench else None


def bench_broker_url() -> str:
    """An emptied logical database on the benchmark's Redis (the next of 1..15: one per cluster)."""
    server = bench_redis()
    if server is None:
        raise RuntimeError("no Redis server for the bench (bench.runner starts one when a workload needs it)")
    db = next(_databases) % 16 or next(_databases) % 16
    server.flush(db)
    return server.url(db)
