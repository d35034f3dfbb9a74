"""A private Redis server for the tests that run several nodes.

``redis_server`` (session scope) finds Debian's ``redis-server`` (``apt-get install redis-server``
when it is missing), starts it daemonized on a free loopback port with nothing persisted, and
shuts it down when the session ends. ``redis_url`` gives each test its own logical database
(emptied first), so tests sharing the server never see each other's keys; pub/sub channels are
server-wide in Redis, which is why signald's channel names carry the database number.

Tests that need it are skipped (with the reason) when Redis cannot be installed or started or
coredis is missing, unless ``SIGNALD_TEST_REDIS=require`` (CI), which makes that an error.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_databases = itertools.count(1)  # 0 is left alone; Redis has 16 by default


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
    """One private ``redis-server``; :meth:`restart` for the tests of a broker that goes away."""

    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.binary, self.dir, self.port = binary, directory, port

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        subprocess.run([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--daemonize", "yes", "--dir", str(self.dir),
                        "--pidfile", str(self.dir / "redis.pid"), "--logfile", str(self.dir / "redis.log")],
                       check=True, capture_output=True, timeout=30)
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

    def stop(self) -> None:
        pidfile = self.dir / "redis.pid"
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        self.command("SHUTDOWN", "NOSAVE")
        deadline = time.monotonic() + 10
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    require = os.environ.get("SIGNALD_TEST_REDIS") == "require"
    directory = Path(tempfile.mkdtemp(prefix="signald-redis-"))
    try:
        import coredis  # noqa: F401
        server = RedisServer(redis_binary(), directory, free_port())
        server.start()
    except Exception as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if require:
            raise
        pytest.skip(f"no Redis for the tests: {exc}")
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A logical database of its own for one test, emptied first."""
    db = next(_databases) % 16 or 1
    flush(redis_server, db)
    return redis_server.url(db)


def flush(redis_server: RedisServer, db: int) -> None:
    """Empty logical database ``db``."""
    request = f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n"
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as sock:
        sock.sendall(request.encode())
        replies = b""
        while replies.count(b"\r\n") < 2:  # +OK for SELECT, +OK for FLUSHDB
            chunk = sock.recv(64)
            if not chunk:
                raise RuntimeError(f"redis-server closed the connection: {replies!r}")
            replies += chunk
