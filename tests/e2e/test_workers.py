"""``signald serve --workers N`` as processes: a dead worker is started again, and workers whose
first process died stop by themselves (no orphans holding the port). Real daemons, a private
Redis and PostgreSQL (docs/cluster.md)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from conftest import daemon

from signald.client.raw import connect

pytestmark = pytest.mark.timeout(90)

CONFIG = '[cluster]\nnode_id = "box"\nnode_ttl_s = 2.0\n'


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def until(check: Callable[[], bool], within: float = 20.0) -> None:
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110  # processes come and go: /proc is polled
            await trio.sleep(0.05)


async def port_answers(url: str) -> None:
    """A few connections (the kernel spreads them over the workers), each served."""
    for i in range(4):
        async with connect(url, user=f"probe{i}") as client:
            assert (await client.request("session.info", {}))["user_id"] == f"probe{i}"


async def test_a_worker_that_dies_is_started_again(tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    async with daemon(tmp_path, "workers", "--workers", "2", "--broker-url", redis_url,
                      "--history-url", postgres_url, config_text=CONFIG) as (first, url):
        await until(lambda: len(children(first.pid)) == 1)
        [worker] = children(first.pid)
        os.kill(worker, signal.SIGKILL)
        await until(lambda: children(first.pid) not in ([], [worker]))  # a new worker process
        [again] = children(first.pid)
        assert again != worker
        await port_answers(url)
        log = (tmp_path / "workers.log").read_text(errors="replace")
        assert "worker 1 exited with status -9; starting it again in 0.5 s" in log, log[-2000:]


async def test_workers_stop_when_the_first_process_is_killed(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    async with daemon(tmp_path, "orphans", "--workers", "3", "--broker-url", redis_url,
                      "--history-url", postgres_url, config_text=CONFIG) as (first, url):
        await until(lambda: len(children(first.pid)) == 2)
        workers = children(first.pid)
        first.kill()  # SIGKILL: it cannot stop them
        await first.wait()
        await until(lambda: not any(alive(pid) for pid in workers), within=15)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(OSError):  # nobody holds the port any more: connection refused
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_the_users_of_a_worker_that_died_go_offline_when_it_is_started_again(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """The first process starts a dead worker again within a second, under the same node id: its
    heartbeat hardly stops, so the users it had must go offline for the others then, not never."""
    import coredis
    from test_cluster import of, wait_for

    from signald.cluster.wire import RECORD_DECODER, Names

    config = '[cluster]\nnode_id = "box"\nnode_ttl_s = 30.0\n'
    async with daemon(tmp_path, "workers", "--workers", "2", "--broker-url", redis_url,
                      "--history-url", postgres_url, config_text=config) as (first, url), AsyncExitStack() as stack:
        await until(lambda: len(children(first.pid)) == 1)
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url)
        await stack.enter_async_context(redis)
        clients, nodes = [], {}
        while len(set(nodes.values())) < 2:  # the kernel spreads them: some on each worker
            client = await stack.enter_async_context(connect(url, user=f"u{len(clients)}"))
            await client.request("room.join", {"room": "lobby"})
            clients.append(client)
            with trio.fail_after(5):
                while client.session_id not in nodes:  # its node writes the record soon after the ack
                    records = await redis.hgetall(Names(redis_url).conns)
                    nodes = {conn.decode(): RECORD_DECODER.decode(raw).node for conn, raw in records.items()}
                    await trio.sleep(0.01)
        [worker] = children(first.pid)
        os.kill(worker, signal.SIGKILL)  # box-1: the first process is box-0
        gone = {f"u{i}" for i, client in enumerate(clients) if nodes[client.session_id] == "box-1"}
        observer = next(client for client in clients if nodes[client.session_id] == "box-0")
        left = await wait_for(observer, [], lambda s: gone <= {e["user_id"] for e in of("member.left", s)},
                              within=10.0)  # the TTL is 30 s
        assert {e["user_id"] for e in of("member.left", left)} == gone
