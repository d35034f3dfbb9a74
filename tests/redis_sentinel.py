"""A private Redis Sentinel set for the failover tests: a primary, a replica of it and one sentinel
(:func:`sentinel_set`); :func:`start_server` / :func:`stop_server` for one server with options of its own.

All three are Debian's ``redis-server`` (``--sentinel`` runs it as a sentinel) on free loopback
ports in one temporary directory, daemonized, nothing persisted, and stopped (``SHUTDOWN NOSAVE``,
then SIGKILL) when the ``with`` ends. The sentinel takes the primary for down after
``DOWN_AFTER_MS`` and fails over at once (quorum 1), so a test sees a promotion within a second or
two of killing the primary. ``redis-cli`` (which comes with ``redis-server``) asks the servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

from redis_fixture import free_port, redis_binary

SERVICE: Final = "signald-test"
DOWN_AFTER_MS: Final = 400
FAILOVER_TIMEOUT_MS: Final = 3000


def cli(port: int, *args: str, password: str | None = None) -> str:
    """One command through ``redis-cli``; its reply as text ("" when the server is gone)."""
    binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    auth = ["-a", password, "--no-auth-warning"] if password else []
    done = subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), *auth, *args], capture_output=True, text=True,
                          timeout=10, check=False)
    return done.stdout.strip()


def poll(what: str, check: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Sentinel test set: {what} within {within:g} s")
        time.sleep(0.05)


class SentinelSet:
    """The three servers; :meth:`kill_primary` for the failover, :meth:`primary_port` to watch it.
    ``password``: the Redis servers' (``requirepass``, and ``masterauth`` for the replication);
    ``sentinel_password``: the sentinel's own ``requirepass``."""

    def __init__(self, directory: Path, password: str | None = None, sentinel_password: str | None = None) -> None:
        self.dir, self.password, self.sentinel_password = directory, password, sentinel_password
        self.primary, self.replica, self.sentinel = free_port(), free_port(), free_port()
        self.ports = (self.primary, self.replica, self.sentinel)

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.sentinel}/{SERVICE}/{db}{query}"

    def start(self) -> None:
        start_server(self.dir, self.primary, password=self.password)
        start_server(self.dir, self.replica, "--replicaof", "127.0.0.1", str(self.primary), password=self.password)
        poll("the replica in sync",
             lambda: "master_link_status:up" in cli(self.replica, "INFO", "replication", password=self.password))
        conf = self.dir / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        conf.write_text(
            f"port {self.sentinel}\nbind 127.0.0.1\ndaemonize yes\ndir {self.dir}\n"
            f"pidfile {self.dir / f'{self.sentinel}.pid'}\nlogfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            + (f"sentinel auth-pass {SERVICE} {self.password}\n" if self.password else "")
            + (f"requirepass {self.sentinel_password}\n" if self.sentinel_password else ""))
        subprocess.run([redis_binary(), str(conf), "--sentinel"], check=True, capture_output=True, timeout=30)
        # a failover needs a replica the sentinel knows of (it learns it from the primary's INFO)
        poll("the sentinel knowing the replica",
             lambda: str(self.replica) in cli(self.sentinel, "SENTINEL", "REPLICAS", SERVICE,
                                              password=self.sentinel_password))

    def primary_port(self) -> int | None:
        """The port the sentinel names as the primary now."""
        reply = cli(self.sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE, password=self.sentinel_password)
        reply = reply.split()
        return int(reply[-1]) if reply and reply[-1].isdigit() else None

    def kill_primary(self) -> None:
        """``kill -9`` the primary (no goodbye to the replica, the sentinel or the clients)."""
        pid = _pid(self.dir, self.primary)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: the switch an operator makes for maintenance (the old primary lives
        on as a replica of the new one)."""
        reply = cli(self.sentinel, "SENTINEL", "FAILOVER", SERVICE, password=self.sentinel_password)
        assert reply == "OK", reply

    def stop(self) -> None:
        for port in self.ports:
            stop_server(self.dir, port, password=self.sentinel_password if port == self.sentinel else self.password)


def start_server(directory: Path, port: int, *extra: str, password: str | None = None) -> None:
    """A daemonized ``redis-server`` on ``port`` with files ``<port>.*`` in ``directory``, nothing
    persisted; ``extra``: more options. Returns once it answers ``PING``."""
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    subprocess.run([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--daemonize", "yes", "--dir", str(directory), "--dbfilename", f"{port}.rdb",
                    "--pidfile", str(directory / f"{port}.pid"), "--logfile", str(directory / f"{port}.log"),
                    "--repl-diskless-sync-delay", "0", *auth, *extra], check=True, capture_output=True, timeout=30)
    poll(f"redis-server answering on {port}", lambda: cli(port, "PING", password=password) == "PONG")


def stop_server(directory: Path, port: int, password: str | None = None) -> None:
    """``SHUTDOWN NOSAVE``, then SIGKILL if it has not exited within 5 s."""
    pid = _pid(directory, port)
    cli(port, "SHUTDOWN", "NOSAVE", password=password)
    if pid is not None and not _gone(pid, within=5.0):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pid(directory: Path, port: int) -> int | None:
    try:
        return int((directory / f"{port}.pid").read_text())
    except (OSError, ValueError):
        return None


def _gone(pid: int, within: float) -> bool:
    """Whether ``pid`` exited within ``within`` s (a zombie waiting for init to reap it counts)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


@contextmanager
def sentinel_set(directory: Path, password: str | None = None,
                 sentinel_password: str | None = None) -> Iterator[SentinelSet]:
    """A started :class:`SentinelSet` in ``directory``; everything stopped after."""
    servers = SentinelSet(directory, password, sentinel_password)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
