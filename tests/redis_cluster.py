"""A private Redis Cluster for the tests of ``redis+cluster://``: three primaries and a replica of each
(:func:`started_cluster`, a context manager; the ``redis_cluster`` fixture shares one per session).

Six ``redis-server --cluster-enabled yes`` (Debian's, as in tests/redis_sentinel.py) on free
loopback ports in one directory, daemonized, nothing persisted, joined by ``redis-cli --cluster
create --cluster-replicas 1`` and stopped (``SHUTDOWN NOSAVE``, then SIGKILL) when the ``with`` ends.
``cluster-node-timeout`` is short (:data:`NODE_TIMEOUT_MS`), so a test that kills a primary sees
its replica promoted within a second or two. Starting the six and creating the cluster takes about
1.5 s here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pytest
from redis_fixture import free_port
from redis_sentinel import _pid, cli, poll, start_server, stop_server

__all__ = ["TAG", "Cluster", "redis_cluster", "started_cluster"]

NODE_TIMEOUT_MS: Final = 500
TAG: Final = "{signald.0}"  # the hash tag of signald's keys and channels on database 0 (signald.cluster.wire)


class Cluster:
    """The six servers (ports in the order given to ``--cluster create``: the first three become the
    primaries); :meth:`owner` says which one holds signald's slot now."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port() for _ in range(6)]

    def url(self, seeds: int = 3) -> str:
        """A ``redis+cluster://`` URL naming the first ``seeds`` servers."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:seeds])

    def start(self) -> None:
        for port in self.ports:
            start_server(self.dir, port, "--cluster-enabled", "yes",
                         "--cluster-config-file", str(self.dir / f"nodes-{port}.conf"),
                         "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                         "--cluster-port", str(free_port()))  # the default (port + 10000) may be past 65535
        binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run([binary, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for port in self.ports:
            poll(f"cluster_state:ok on {port}", lambda port=port: "cluster_state:ok" in cli(port, "CLUSTER", "INFO"))
        poll("a replica of signald's shard in sync", lambda: self.replica_of_owner() is not None)

    def slot_map(self, via: int | None = None) -> list[tuple[int, int, list[int]]]:
        """``CLUSTER SHARDS`` read through ``redis-cli`` (one of the live servers): (first slot, last
        slot, [primary's port, replicas' ports...]) per shard."""
        for port in [via] if via is not None else self.ports:
            lines = cli(port, "CLUSTER", "SLOTS").splitlines()
            if lines:
                return _slots(lines)
        raise RuntimeError("no server of the cluster answers")

    def slot(self) -> int:
        return int(cli(self.ports[0], "CLUSTER", "KEYSLOT", TAG))

    def owner(self, via: int | None = None) -> int:
        """The port of the primary that owns signald's slot (as ``via``, or any server, says)."""
        slot = self.slot()
        for first, last, ports in self.slot_map(via):
            if first <= slot <= last:
                return ports[0]
        raise RuntimeError(f"no server owns slot {slot}")

    def replica_of_owner(self) -> int | None:
        """A replica of the owner whose replication link is up."""
        owner = self.owner()
        for port in self.ports:
            info = cli(port, "INFO", "replication")
            if f"master_port:{owner}" in info and "master_link_status:up" in info:
                return port
        return None

    def node_id(self, port: int) -> str:
        return cli(port, "CLUSTER", "MYID")

    def keys_in_slot(self, port: int, slot: int) -> list[str]:
        """The keys of ``slot`` that the server on ``port`` holds (all of them: signald has a few)."""
        return cli(port, "CLUSTER", "GETKEYSINSLOT", str(slot), "1000").split()

    def kill(self, port: int) -> None:
        """``kill -9`` one server (no goodbye to the cluster or the clients)."""
        pid = _pid(self.dir, port)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def flush(self) -> None:
        """Empty every primary (tests sharing the cluster never see each other's keys)."""
        for _, _, ports in self.slot_map():
            cli(ports[0], "FLUSHALL")

    def stop(self) -> None:
        for port in self.ports:
            stop_server(self.dir, port)


def _slots(lines: list[str]) -> list[tuple[int, int, list[int]]]:
    """redis-cli's flat rendering of ``CLUSTER SLOTS``: first, last, then per node host, port, id
    (and, on Redis 7, a map of extra endpoints: an empty one prints an empty line)."""
    lines = [line for line in lines if line]
    shards: list[tuple[int, int, list[int]]] = []
    i = 0
    while i < len(lines):
        first, last = int(lines[i]), int(lines[i + 1])
        i += 2
        ports = []
        while i + 2 < len(lines) and lines[i] == "127.0.0.1":
            ports.append(int(lines[i + 1]))
            i += 3
        shards.append((first, last, ports))
    return shards


@contextmanager
def started_cluster(directory: Path) -> Iterator[Cluster]:
    """A started :class:`Cluster` in ``directory``; every server stopped after."""
    cluster = Cluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's cluster, for the tests that leave it whole (each empties it first: :meth:`Cluster.flush`).
    Skipped, as the one-Redis tests are (tests/redis_fixture.py), when it cannot start, unless
    ``SIGNALD_TEST_REDIS=require``."""
    cluster = Cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        if os.environ.get("SIGNALD_TEST_REDIS") == "require":
            raise
        pytest.skip(f"no Redis Cluster for the tests: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
