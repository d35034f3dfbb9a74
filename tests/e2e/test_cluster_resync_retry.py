"""A node back on Redis whose resync meets its own history store down tries the store check again
(docs/cluster.md, "Redis restarts or is unreachable"): two in-process nodes on one Redis and one
PostgreSQL database, node A reaching PostgreSQL through :class:`CuttableLink`, a TCP proxy the test
cuts and mends. Redis restarts (its pub/sub loses what node B publishes meanwhile) while A's store
is cut; A's resync cannot find the rooms that missed events then, and must find them once its store
is back, so that its client in such a room is closed with 1012 and resumes exactly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
from conftest import make_config
from redis_fixture import RedisServer, free_port, redis_binary

from signald.client.raw import connect
from signald.server import RunningServer, serve_signald

pytestmark = pytest.mark.timeout(60)


class CuttableLink:
    """A TCP proxy to ``host:port``: :meth:`cut` closes every connection through it and refuses new
    ones (accepted, then closed at once: a server that went away), :meth:`mend` lets them through."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.refusing = False
        self._relays: set[trio.CancelScope] = set()

    def cut(self) -> None:
        self.refusing = True
        for relay in self._relays:
            relay.cancel()

    def mend(self) -> None:
        self.refusing = False

    async def relay(self, client: trio.SocketStream) -> None:
        """Copy both ways between ``client`` and the server until either side closes or a cut."""
        try:
            if self.refusing:
                return
            with trio.CancelScope() as scope:
                self._relays.add(scope)
                try:
                    server = await trio.open_tcp_stream(self.host, self.port)
                    async with server, trio.open_nursery() as nursery:
                        for source, sink in ((client, server), (server, client)):
                            nursery.start_soon(self._pump, source, sink, scope)
                finally:
                    self._relays.discard(scope)
        finally:
            await client.aclose()

    @staticmethod
    async def _pump(source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # either side closed: so does the other


@contextlib.asynccontextmanager
async def cuttable(postgres_url: str) -> AsyncIterator[tuple[str, CuttableLink]]:
    """``postgres_url`` through a :class:`CuttableLink`: the URL to give a node, and the link."""
    prefix, _, rest = postgres_url.partition("@")
    host_port, _, database = rest.partition("/")
    host, _, port = host_port.rpartition(":")
    link = CuttableLink(host, int(port))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, link.relay, 0, host="127.0.0.1"))
        yield f"{prefix}@127.0.0.1:{listeners[0].socket.getsockname()[1]}/{database}", link
        nursery.cancel_scope.cancel()


async def node(nursery: trio.Nursery, where: Path, index: int, history_url: str, broker_url: str) -> RunningServer:
    config = make_config(where / f"node{index}", history={"url": history_url},
                         cluster={"broker_url": broker_url, "node_id": f"node-{index}", "node_ttl_s": 2.0})
    running: RunningServer = await nursery.start(lambda task_status: serve_signald(config, task_status=task_status))
    return running


def resync_met_the_store_down(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.name == "signald.cluster" and "the history store failed" in r.getMessage() for r in caplog.records)


async def test_a_resync_that_met_its_store_down_closes_the_rooms_behind_once_the_store_is_back(
    nursery: trio.Nursery, tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ann (node A) misses bob's (node B) messages sent while Redis restarts; A's store is down when
    A is back on Redis and comes back a moment later: ann is closed with 1012 then, and her exact
    resume brings each of them once. Before, A logged that its store failed and never looked again:
    ann stayed connected without them."""
    caplog.set_level(logging.INFO, logger="signald.cluster")
    redis = RedisServer(redis_binary(), tmp_path, free_port())  # its own: the session's stays up
    redis.start()
    try:
        async with cuttable(postgres_url) as (a_history, link), contextlib.AsyncExitStack() as stack:
            a = await node(nursery, tmp_path, 0, a_history, redis.url(0))
            b = await node(nursery, tmp_path, 1, postgres_url, redis.url(0))
            ann = await stack.enter_async_context(connect(a.url, user="ann"))
            bob = await stack.enter_async_context(connect(b.url, user="bob"))
            for client in (ann, bob):
                await client.request("room.join", {"room": "lobby"})
            with trio.fail_after(15):
                before = await bob.request("chat.send", {"scope": "lobby", "body": "before"})
                assert (await ann.next_event("chat.message"))["data"]["id"] == before["id"]

                link.cut()  # A's store is down from now on, B's is fine
                redis.stop()
                for replica in (a.hub.replica, b.hub.replica):
                    while replica.problem() is None:  # type: ignore[union-attr]  # noqa: ASYNC110
                        await trio.sleep(0.02)
                missed = [await bob.request("chat.send", {"scope": "lobby", "body": f"lost {i}"}) for i in range(3)]

                redis.start()  # empty: what B published meanwhile is lost to A
                while not resync_met_the_store_down(caplog):  # noqa: ASYNC110 - a log line, nothing to wait on
                    await trio.sleep(0.02)
                assert not ann.closed.is_set()
                link.mend()

                await ann.closed.wait()  # A looked again: ann's room is behind
            assert ann.ws.closed is not None and ann.ws.closed.code == 1012
            live = [e["data"]["id"] for e in ann.pending_events() if e["type"] == "chat.message"]
            async with connect(a.url, user="ann") as again:
                ack = await again.request("room.join", {"room": "lobby", "since_rev": before["rev"]})
            resumed = [m["id"] for m in ack["changes"]]
            assert sorted(live + resumed) == sorted(m["id"] for m in missed)  # each once
            assert not bob.closed.is_set()  # node B missed nothing
    finally:
        redis.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "signald.cluster"]
    assert [line for line in lines if "the history store answers again; 1 connections closed" in line], lines
