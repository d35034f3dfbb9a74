"""Several nodes on a Redis Cluster (``redis+cluster://``): real daemons, a private cluster of three
primaries and three replicas (tests/redis_cluster.py), a private PostgreSQL. (Representative
end-to-end tests of rooms, presence, chat, resume and calls also run on three in-process nodes on
the cluster: ``@pytest.mark.on_redis_cluster``, tests/over_nodes.py.)

signald keeps everything in one hash slot, so one shard carries it; the cluster gives failover: the
primary owning that slot is killed, or switched over for maintenance, its replica takes over and
every node follows it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import test_cluster as on_one_redis
import trio
from redis_cluster import TAG, Cluster, started_cluster
from redis_fixture import RedisServer, free_port
from redis_sentinel import cli
from test_cluster import Event, alice_and_bob_in_lobby, nodes, of, ready, until_ready, wait_for
from test_cluster_sentinel import after_the_failover, lobby_changes
from trio_websocket import ConnectionClosed

from signald.cli import main
from signald.client.raw import SignaldClient, connect
from signald.cluster.resp import Endpoint, open_link, pack

pytestmark = pytest.mark.timeout(90)

LATE_S = 0.25  # a live event later than this after its ack was filled from the store (after 0.5 s)


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    """The session's cluster (tests/redis_cluster.py), emptied."""
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def cluster_url(cluster: Cluster) -> str:
    return cluster.url()


def on_one_shard(cluster: Cluster) -> None:
    """Everything signald wrote is on the shard that owns its slot, and the nodes hear that shard's
    sharded channels (not the cluster-wide pub/sub)."""
    owner = cluster.owner()
    for _, _, ports in cluster.slot_map():
        keys = cli(ports[0], "DBSIZE")
        assert (keys != "0") == (ports[0] == owner), (ports[0], owner, keys)
    assert f"{TAG}.state" in cli(owner, "PUBSUB", "SHARDCHANNELS").split()
    assert not cli(owner, "PUBSUB", "CHANNELS")


async def test_chat_from_every_node_reaches_every_connection_once_in_seq_order(
    tmp_path: Path, cluster: Cluster, cluster_url: str, postgres_url: str
) -> None:
    await on_one_redis.test_chat_from_every_node_reaches_every_connection_once_in_seq_order(
        tmp_path, cluster_url, postgres_url)


async def test_a_failover_for_maintenance_loses_no_acked_message(
    tmp_path: Path, cluster: Cluster, cluster_url: str, postgres_url: str
) -> None:
    """``CLUSTER FAILOVER`` on the owner's replica while one node sends every 50 ms: Redis
    unsubscribes the nodes from the demoted primary and refuses their writes there (``MOVED``); they
    follow the new one, and every acked message reaches the other node's client once and in order."""
    old = cluster.owner()
    replica = cluster.replica_of_owner()
    assert replica is not None
    async with nodes(tmp_path, cluster_url, postgres_url, 2, ttl=1.0) as started, AsyncExitStack() as stack:
        (_, url0), (_, url1) = started
        alice, bob = await alice_and_bob_in_lobby(stack, url0, url1)
        on_one_shard(cluster)
        assert cli(replica, "CLUSTER", "FAILOVER") == "OK"
        acked = []
        with trio.fail_after(20):
            while cluster.owner(via=replica) != replica or len(acked) < 10:  # and a few once it switched
                try:
                    ack = await bob.request("chat.send", {"scope": "lobby", "body": f"message {len(acked)}"})
                except ConnectionClosed:  # its node's resync can race its own send in flight: 1012, resume
                    assert bob.ws.closed is not None and bob.ws.closed.code == 1012
                    bob = await stack.enter_async_context(connect(url1, user="bob"))
                    await bob.request("room.join", {"room": "lobby"})
                    continue
                acked.append(ack["id"])
                await trio.sleep(0.05)
        await until_ready(url0, True, within=20)
        await until_ready(url1, True, within=20)
        seen: list[Event] = []
        try:
            await wait_for(alice, seen, lambda s: acked[-1] in [m["id"] for m in of("chat.message", s)])
            got = [m["id"] for m in of("chat.message", seen)]
        except ConnectionClosed:
            assert alice.ws.closed is not None and alice.ws.closed.code == 1012
            alice = await stack.enter_async_context(connect(url0, user="alice"))
            got = [m["id"] for m in await lobby_changes(alice)]
        # (a send cut off by bob's 1012 may have been stored without its ack: alice may have it too)
        assert [i for i in got if i in set(acked)] == acked and len(set(got)) == len(got)
        back = await alice.request("chat.send", {"scope": "lobby", "body": "after the switch"})
        await wait_for(bob, [], lambda s: back["id"] in [m["id"] for m in of("chat.message", s)])
        assert cluster.owner() == replica and old != replica
        on_one_shard(cluster)


async def test_after_the_owner_is_killed_every_node_follows_its_promoted_replica(
    tmp_path: Path, postgres_url: str
) -> None:
    """``kill -9`` of the primary that owns signald's slot (a cluster of the test's own)."""
    with started_cluster(tmp_path / "redis") as cluster:
        owner, replica = cluster.owner(), cluster.replica_of_owner()
        assert replica is not None
        async with nodes(tmp_path, cluster.url(), postgres_url, 2, ttl=1.0) as started, AsyncExitStack() as stack:
            (_, url0), (_, url1) = started
            alice, bob = await alice_and_bob_in_lobby(stack, url0, url1)
            before = await bob.request("chat.send", {"scope": "lobby", "body": "before the failover"})
            await wait_for(alice, [], lambda s: before["id"] in [m["id"] for m in of("chat.message", s)])

            cluster.kill(owner)
            line = await until_ready(url1, False)
            assert line.startswith("503") and "broker" in line, line
            during = await bob.request("chat.send", {"scope": "lobby", "body": "while the owner is gone"})

            await until_ready(url0, True, within=20)
            await until_ready(url1, True, within=20)
            assert cluster.owner(via=replica) == replica  # promoted, and the nodes found it

            await after_the_failover(stack, url0, url1, alice, bob, before, during)


async def in_lobby(url: str, user: str, *, task_status: trio.TaskStatus[SignaldClient]) -> None:
    """``user`` connected to ``url`` and in the lobby until cancelled (a task: a connection opened
    in the middle of a test, closed at its end)."""
    async with connect(url, user=user) as client:
        await client.request("room.join", {"room": "lobby"})
        task_status.started(client)
        await trio.sleep_forever()


class Sender:
    """A user on ``url`` who sends to the lobby every 50 ms (:meth:`run`, until cancelled): the ids
    acked, and the connections used (after a 1012, its node resynchronising, it connects again in
    ``held``, as a client would)."""

    def __init__(self, held: trio.Nursery, url: str, client: SignaldClient, first: str) -> None:
        self.held, self.url, self.clients, self.acked = held, url, [client], [first]
        self.acked_at: dict[str, float] = {}  # id -> when its ack arrived (trio time)
        self._acked = trio.Event()

    async def run(self) -> None:
        while True:
            client = self.clients[-1]
            try:
                ack = await client.request("chat.send", {"scope": "lobby", "body": f"message {len(self.acked)}"})
            except ConnectionClosed:
                assert client.ws.closed is not None and client.ws.closed.code == 1012
                self.clients.append(await self.held.start(in_lobby, self.url, client.user_id))
                continue
            self.acked.append(ack["id"])
            self.acked_at[ack["id"]] = trio.current_time()
            self._acked.set()
            self._acked = trio.Event()
            await trio.sleep(0.05)

    async def more(self, count: int) -> None:
        """Returns once ``count`` more sends were acked (fails after 10 s)."""
        with trio.fail_after(10):
            wanted = len(self.acked) + count
            while len(self.acked) < wanted:
                await self._acked.wait()


class Arrivals:
    """When each ``chat.message`` reached a client (:meth:`run`, a task, until its connection
    closes), by id, in the order they came: how late the live events were."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}  # id -> trio time
        self.closed = False
        self._came = trio.Event()

    async def run(self, client: SignaldClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        try:
            while True:
                event = await client.next_event("chat.message")
                self.at.setdefault(event["data"]["id"], trio.current_time())
                self._came.set()
                self._came = trio.Event()
        except ConnectionClosed:
            self.closed = True
            self._came.set()

    async def until(self, message_id: str, within: float = 10.0) -> None:
        with trio.fail_after(within):
            while message_id not in self.at:
                assert not self.closed, "the connection was closed (a 1012: resume)"
                await self._came.wait()


async def move_slot(cluster: Cluster, source: int, target: int, urls: list[str],
                    while_split: Callable[[], Awaitable[None]],
                    after_each: Callable[[], Awaitable[None]] | None = None) -> None:
    """Move signald's slot from ``source`` to ``target`` the standard way (Redis's cluster
    specification; ``redis-cli --cluster reshard`` takes these steps): ``IMPORTING`` on the target,
    ``MIGRATING`` on the owner, the keys ``MIGRATE``d (one at a time here, ``after_each`` awaited
    after each), then ``SETSLOT NODE`` on the target and on the owner. Once the
    first key went (the owner answers ``ASK`` for it, and still serves the others) ``while_split``
    runs. The nodes at ``urls`` stay ready throughout (until the ``NODE``s: then Redis unsubscribes them)."""
    slot, source_id, target_id = cluster.slot(), cluster.node_id(source), cluster.node_id(target)
    keys = cluster.keys_in_slot(source, slot)
    assert len(keys) >= 3, keys  # nodes, conns, stats, status...
    assert cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id) == "OK"
    assert cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id) == "OK"
    try:
        for i, key in enumerate(sorted(keys)):
            reply = cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", key)
            assert reply in ("OK", "NOKEY"), reply
            if i == 0:
                assert cluster.keys_in_slot(target, slot) and cluster.keys_in_slot(source, slot)
                await while_split()
            if after_each is not None:
                await after_each()
            for url in urls:
                assert (await ready(url))[0], url
        assert cluster.keys_in_slot(source, slot) == []  # nothing written there meanwhile (ASK sent it on)
    finally:  # the move is finished even after a failed check: the session's cluster stays whole
        for key in cluster.keys_in_slot(source, slot):
            cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", key)
        for port in (target, source):
            assert cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id) == "OK"


async def test_a_resharding_that_moves_signalds_slot_loses_no_acked_message(
    tmp_path: Path, cluster: Cluster, cluster_url: str, postgres_url: str
) -> None:
    """signald's slot moved to another primary (:func:`move_slot`) while node 1 sends every 50 ms;
    with the keys split between the two, a user joins on node 0 and another changes status (their
    records are keys the owner now answers with ``ASK``). Every acked message reaches the other
    node's client once and in order, both nodes are ready again, chat goes both ways, and the
    nodes' records are whole on the new owner."""
    source = cluster.owner()
    # not the first seed of the URL either: the node the nodes ask first learns the move by gossip
    target = next(ports[0] for _, _, ports in cluster.slot_map() if ports[0] not in (source, cluster.ports[0]))
    async with nodes(tmp_path, cluster_url, postgres_url, 2, ttl=1.0) as started, trio.open_nursery() as held:
        (_, url0), (_, url1) = started
        alice, bob = await held.start(in_lobby, url0, "alice"), await held.start(in_lobby, url1, "bob")
        await bob.request("presence.set", {"status": "busy"})
        before = await bob.request("chat.send", {"scope": "lobby", "body": "before the move"})
        await wait_for(alice, [], lambda s: before["id"] in [m["id"] for m in of("chat.message", s)])
        on_one_shard(cluster)
        arrived = Arrivals()
        await held.start(arrived.run, alice)

        daves: list[SignaldClient] = []

        async def while_split() -> None:
            daves.append(await held.start(in_lobby, url0, "dave"))
            await alice.request("presence.set", {"status": "away"})

        sender = Sender(held, url1, bob, before["id"])
        async with trio.open_nursery() as sending:
            sending.start_soon(sender.run)
            await sender.more(3)
            await move_slot(cluster, source, target, [url0, url1], while_split, partial(sender.more, 3))
            await until_ready(url0, True, within=20)
            await until_ready(url1, True, within=20)
            await sender.more(3)
            sending.cancel_scope.cancel()
        acked, bobs = sender.acked, sender.clients
        assert cluster.owner(via=source) == target and cluster.owner(via=target) == target

        await arrived.until(acked[-1])
        got = [before["id"], *arrived.at]
        # (a send cut off by bob's 1012 may have been stored without its ack: alice may have it too)
        assert [i for i in got if i in set(acked)] == acked and len(set(got)) == len(got)
        # and live: the publish refused with MOVED when the move ended went to the new owner at once,
        # and what alice's node missed while its pub/sub moved there came from the store at once
        # (not 0.5 s later from the gap filler, nor by closing her connection to resume)
        late = {i: round(arrived.at[i] - sender.acked_at[i], 3) for i in sender.acked_at}
        assert max(late.values()) < LATE_S, late
        back = await alice.request("chat.send", {"scope": "lobby", "body": "after the move"})
        await wait_for(bobs[-1], [], lambda s: back["id"] in [m["id"] for m in of("chat.message", s)])
        if daves[-1].closed.is_set():  # told to resume (1012), as alice may have been: back in
            daves.append(await held.start(in_lobby, url0, "dave"))
        async with connect(url1, user="carol") as carol:
            ack = await carol.request("room.join", {"room": "lobby"})
            members = {m["user_id"]: m["status"] for m in ack["members"]}
            # a chosen status lasts while the user has a device (a 1012 closed the last one)
            assert members == {"alice": "away", "bob": "online" if len(bobs) > 1 else "busy",
                               "carol": "online", "dave": "online"}, members
        on_one_shard(cluster)
        # the records written while the keys were split (answered ASK) are on the new owner: dave's
        # device, alice's chosen status (what nodes read when they start or come back after an outage)
        link = await open_link(Endpoint("127.0.0.1", target))
        try:
            (records,) = await link.call(pack("HVALS", f"{TAG}.conns"), 1)
        finally:
            await link.aclose()
        assert any(b"dave" in record for record in records), records
        assert cli(target, "HGET", f"{TAG}.status", "alice") == "away"
        held.cancel_scope.cancel()
    # while the keys were split the nodes' writes followed ASK, and at the end MOVED: none was
    # refused, none lost (each would be an outage for the node: its pub/sub reconnects, what it
    # missed comes late, and its records wait for the resync)
    logs = "".join(path.read_text(errors="replace") for path in sorted(tmp_path.glob("node*/*.log")))  # noqa: ASYNC240
    assert re.search(r"\bASK \d", logs) is None, logs
    assert "broker writes lost" not in logs, logs


async def test_a_call_set_up_and_ended_while_signalds_slot_moves(
    tmp_path: Path, cluster: Cluster, cluster_url: str, postgres_url: str
) -> None:
    """With signald's slot migrating (its keys split between the old owner and the new one), alice
    on node 0 calls bob on node 1, he answers, carol's offer to him ends ``busy``, alice hangs up:
    every request gets one reply, at once; both sides see the call set up and ended; the decisions
    were taken in Redis (the claim and the busy marks are on the new owner), and no node took the
    broker for down meanwhile."""
    source = cluster.owner()
    target = next(ports[0] for _, _, ports in cluster.slot_map() if ports[0] not in (source, cluster.ports[0]))
    async with nodes(tmp_path, cluster_url, postgres_url, 2, ttl=1.0) as started, trio.open_nursery() as held:
        (_, url0), (_, url1) = started
        alice, bob = await held.start(in_lobby, url0, "alice"), await held.start(in_lobby, url1, "bob")
        carol = await held.start(in_lobby, url0, "carol")
        call_id, busy_id = f"c-{tmp_path.name}", f"b-{tmp_path.name}"
        offer = {"target_id": "bob", "call_type": "audio", "sdp": {"type": "offer", "sdp": "v=0"}}
        replies: dict[str, tuple[str, float]] = {}
        claims: list[str] = []

        async def request(client: SignaldClient, kind: str, data: dict[str, Any]) -> None:
            start = trio.current_time()
            reply = await client.request_raw(kind, data)
            replies[f"{client.user_id} {kind}"] = (reply["type"], round(trio.current_time() - start, 3))

        async def call_while_split() -> None:
            await request(alice, "call.offer", {**offer, "call_id": call_id})
            await wait_for(bob, [], lambda s: any(t == "call.offer" for t, _ in s))
            await request(bob, "call.answer", {"target_id": "alice", "call_id": call_id,
                                               "sdp": {"type": "answer", "sdp": "v=0"}})
            await wait_for(alice, [], lambda s: any(t == "call.answer" for t, _ in s))
            claims.extend(cluster.keys_in_slot(target, cluster.slot()))  # (the call's keys are new: there)
            await request(carol, "call.offer", {**offer, "call_id": busy_id})
            await wait_for(carol, [], lambda s: (busy_id, "busy") in [(d["call_id"], d["reason"]) for t, d in s
                                                                      if t == "call.end"])
            await request(alice, "call.end", {"target_id": "bob", "call_id": call_id})
            ended = await wait_for(bob, [], lambda s: any(t == "call.end" for t, _ in s))
            assert [d for t, d in ended if t == "call.end"] == [{"from_user": "alice", "call_id": call_id,
                                                                  "reason": "hangup"}]
            for url in (url0, url1):
                assert (await ready(url))[0], url

        await move_slot(cluster, source, target, [url0, url1], call_while_split)
        for client in (alice, bob, carol):  # one reply each: nothing else came for them
            assert (await client.request_raw("presence.ping"))["type"] == "presence.pong"
            assert client.unmatched_errors == [], client.unmatched_errors
        assert {kind: reply for kind, (reply, _) in replies.items()} == {
            "alice call.offer": "ack", "bob call.answer": "ack", "carol call.offer": "ack", "alice call.end": "ack"}
        assert max(took for _, took in replies.values()) < 0.2, replies
        assert f"{TAG}.busy.bob" in claims and any(key.startswith(f"{TAG}.call.{call_id}.") for key in claims), claims
        held.cancel_scope.cancel()
    logs = "".join(path.read_text(errors="replace") for path in sorted(tmp_path.glob("node*/*.log")))  # noqa: ASYNC240
    failed = [line for line in logs.splitlines() if "broker (Redis) failed" in line]
    assert all("hash slot moved" in line for line in failed), failed  # only when the move was done


def test_a_redis_url_to_a_cluster_node_is_refused_naming_the_cluster_form(
    cluster: Cluster, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``redis://`` means one Redis: on a cluster node it would get ``MOVED`` for most keys and no
    failover, so the start is refused with the URL form to use."""
    url = f"redis://127.0.0.1:{cluster.owner()}/0"
    status = main(["serve", "--port", "0", "--history-url", postgres_url, "--broker-url", url])
    err = capsys.readouterr().err
    assert status == 1
    assert err == (f"signald: cannot start: cluster.broker_url {url}: this Redis runs in cluster mode "
                   "(cluster_enabled:1): give its nodes as redis+cluster://[:password@]host:port[,host:port...] "
                   "(docs/cluster.md, Redis Cluster)\n"), err


def test_a_cluster_url_to_one_redis_is_refused_in_one_line(
    redis_server: RedisServer, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_server.port}"
    status = main(["serve", "--port", "0", "--history-url", postgres_url, "--broker-url", url])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith(f"signald: cannot start: cluster.broker_url {url}: none of the 1 Redis Cluster node(s) "
                          f"named the owner of signald's slot: 127.0.0.1:{redis_server.port}: not a Redis Cluster "
                          "node: "), err
    assert "cluster support disabled" in err and err.count("\n") == 1, err


def test_seed_nodes_that_do_not_answer_are_one_line_without_the_password(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = [free_port(), free_port()]
    url = f"redis+cluster://:hunter2@127.0.0.1:{closed[0]},127.0.0.1:{closed[1]}"
    status = main(["serve", "--port", "0", "--history-url", postgres_url, "--broker-url", url])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith(f"signald: cannot start: cluster.broker_url redis+cluster://:***@127.0.0.1:{closed[0]},"
                          f"127.0.0.1:{closed[1]}: none of the 2 Redis Cluster node(s) named the owner"), err
    assert err.count("\n") == 1 and "hunter2" not in err, err
