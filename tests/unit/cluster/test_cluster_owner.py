"""Where signald's hash slot lives on a Redis Cluster (signald.cluster.connect.Broker), asked of the
seed nodes of a ``redis+cluster://`` URL: against the session's private cluster (tests/redis_cluster.py)."""

from __future__ import annotations

import pytest
import trio
from redis_cluster import TAG, Cluster
from redis_fixture import RedisServer, free_port
from redis_sentinel import cli

from signald.cluster.connect import Broker
from signald.cluster.resp import Endpoint, Link, LinkError, open_link, pack
from signald.cluster.writer import Writer

pytest.importorskip("hiredis")


async def test_seeds_are_asked_in_turn_and_the_one_that_answered_is_asked_first_next_time(
        redis_cluster: Cluster) -> None:
    closed, seed = free_port(), redis_cluster.ports[4]  # a replica (unless a failover promoted it) answers too
    broker = Broker(f"redis+cluster://127.0.0.1:{closed},127.0.0.1:{seed}")
    assert await broker.owner() == ("127.0.0.1", redis_cluster.owner())
    seeds = broker._seeds
    assert seeds[:2] == [("127.0.0.1", seed), ("127.0.0.1", closed)]
    primaries = {("127.0.0.1", ports[0]) for _, _, ports in redis_cluster.slot_map()}
    assert primaries <= set(seeds)  # the nodes it named are asked after the seeds


async def test_the_links_go_to_the_owner_of_the_slot_and_are_sharded_there(redis_cluster: Cluster) -> None:
    broker = Broker(redis_cluster.url(seeds=1))
    assert broker.sharded
    link = await broker.open_link()
    try:
        role, slot, published = await link.call(
            pack("ROLE") + pack("CLUSTER", "KEYSLOT", f"{TAG}.state") + pack("SPUBLISH", f"{TAG}.state", b"x"), 3)
        assert role[0] == b"master" and published == 0  # no MOVED: this node owns the slot
        assert slot == redis_cluster.slot()
    finally:
        await link.aclose()


async def test_a_sharded_subscriber_catches_up_through_its_ping(redis_cluster: Cluster) -> None:
    """On a Redis Cluster the pub/sub is ``SSUBSCRIBE``d: :meth:`Subscriber.caught_up` still reads
    its numbered ``PING``'s answer there, after every message sent to the shard before it."""
    from signald.cluster.subscriber import Subscriber

    broker = Broker(redis_cluster.url(seeds=1))
    heard: list[bytes] = []
    subscriber = Subscriber(broker.open_link, on_message=lambda c, d: heard.append(d),
                            on_subscribed=lambda c: None, down=lambda exc: None, sharded=True)
    publisher = await broker.open_link()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber.run)
            subscriber.release()
            await subscriber.subscribe(f"{TAG}.state")
            sent = [str(i).encode() for i in range(50)]
            await publisher.call(b"".join(pack("SPUBLISH", f"{TAG}.state", d) for d in sent), 50)
            assert await subscriber.caught_up(1.0) is True  # (False: its answer not recognised)
            assert heard == sent
            nursery.cancel_scope.cancel()
    finally:
        await publisher.aclose()


async def test_a_server_that_is_not_a_cluster_node_is_named_with_the_reason(redis_server: RedisServer) -> None:
    port = redis_server.port
    broker = Broker(f"redis+cluster://127.0.0.1:{port}")
    with pytest.raises(LinkError, match=rf"127.0.0.1:{port}: not a Redis Cluster node: .*cluster support disabled"):
        await broker.owner()


def connections_received(port: int) -> int:
    stats = dict(line.split(":", 1) for line in cli(port, "INFO", "stats").splitlines() if ":" in line)
    return int(stats["total_connections_received"])


def slot_and_nodes(cluster: Cluster, key: str) -> tuple[int, int, int]:
    """``key``'s slot, the primary that owns it (source) and another primary (target), as ports."""
    slot = int(cli(cluster.ports[0], "CLUSTER", "KEYSLOT", key))
    source = next(ports[0] for first, last, ports in cluster.slot_map() if first <= slot <= last)
    target = next(ports[0] for _, _, ports in cluster.slot_map() if ports[0] != source)
    return slot, source, target


def writer_at(source: int, downs: list[BaseException]) -> Writer:
    """A writer whose link goes to ``source`` and that follows redirections to the node named."""
    async def to_source() -> Link:
        return await open_link(Endpoint("127.0.0.1", source))

    async def to(host: str, port: int) -> Link:
        return await open_link(Endpoint(host, port))

    return Writer(to_source, up=lambda: None, down=downs.append, publish="SPUBLISH", redirect=to)


async def test_the_writer_sends_writes_answered_with_ask_to_the_node_named(redis_cluster: Cluster) -> None:
    """A slot being moved (not signald's: the session's cluster keeps that one where it is): the owner
    answers ``ASK`` for a key it already handed over and still takes the rest; the writer sends the
    refused write to the node named, after ``ASKING``, and the pipeline succeeds."""
    redis_cluster.flush()
    moved, kept = "{ask-test}.moved", "{ask-test}.kept"
    slot, source, target = slot_and_nodes(redis_cluster, moved)
    downs: list[BaseException] = []
    writer = writer_at(source, downs)
    await writer.execute([("hset", moved, {"a": b"0"}), ("hset", kept, {"a": b"0"})])
    source_id, target_id = redis_cluster.node_id(source), redis_cluster.node_id(target)
    assert cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id) == "OK"
    assert cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id) == "OK"
    try:
        assert cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", moved) == "OK"
        await writer.execute([("hset", moved, {"b": b"1"}), ("publish", "{ask-test}.ch", b"x"),
                              ("hset", kept, {"b": b"1"})])
        assert downs == []
        assert redis_cluster.keys_in_slot(target, slot) == [moved]
        assert redis_cluster.keys_in_slot(source, slot) == [kept]
        assert cli(source, "HGET", kept, "b") == "1"
        ask = cli(source, "HGET", moved, "b")
        assert ask.startswith("ASK"), ask  # the source does not have it: the target does, written there
        reader = await open_link(Endpoint("127.0.0.1", target))
        try:
            assert (await reader.call(pack("ASKING") + pack("HGET", moved, "b"), 2))[1] == b"1"
        finally:
            await reader.aclose()
        # a migration that lasts (one stopped halfway): the link to the target is kept, not one per pipeline
        before = connections_received(target)
        for i in range(20):
            await writer.execute([("hset", moved, {"c": str(i).encode()}), ("hset", kept, {"c": b"1"})])
        assert connections_received(target) - before <= 2  # the one before, and INFO's own redis-cli
        assert downs == []
    finally:  # the slot stays with its owner (the moved key is dropped with the import)
        cli(target, "FLUSHALL")
        for port in (target, source):
            cli(port, "CLUSTER", "SETSLOT", str(slot), "STABLE")
        await writer.close()


def move(cluster: Cluster, slot: int, source: int, target: int) -> None:
    """Move ``slot`` and its keys from ``source`` to ``target`` the standard way (as a resharding)."""
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    assert cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id) == "OK"
    assert cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id) == "OK"
    for key in cluster.keys_in_slot(source, slot):
        assert cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", key) == "OK"
    for port in (target, source):
        assert cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id) == "OK"


async def test_the_writer_follows_moved_to_the_new_owner_at_once(redis_cluster: Cluster) -> None:
    """A slot that moved to another primary (a resharding that ended): the old owner refuses the
    writer's next pipeline with ``MOVED``; the writer sends it again, in order, to the node named
    (a subscriber there hears the publish) and stays there; nothing is lost, ``down`` hears nothing."""
    redis_cluster.flush()
    key, channel = "{moved-test}.key", "{moved-test}.channel"
    slot, source, target = slot_and_nodes(redis_cluster, key)
    downs: list[BaseException] = []
    writer = writer_at(source, downs)
    await writer.execute([("hset", key, {"a": b"0"})])
    move(redis_cluster, slot, source, target)
    subscriber = await open_link(Endpoint("127.0.0.1", target))
    try:
        assert (await subscriber.call(pack("SSUBSCRIBE", channel), 1))[0][0] == b"ssubscribe"
        await writer.execute([("hset", key, {"b": b"1"}), ("publish", channel, b"first"),
                              ("publish", channel, b"second")])
        assert downs == []
        with trio.fail_after(5):
            heard = [await subscriber.reply(), await subscriber.reply()]
        assert heard == [[b"smessage", channel.encode(), b"first"], [b"smessage", channel.encode(), b"second"]]
        assert cli(target, "HGET", key, "b") == "1"
        before = connections_received(target)
        for i in range(5):
            await writer.execute([("hset", key, {"c": str(i).encode()})])
        assert connections_received(target) - before <= 1  # INFO's own redis-cli: the writer stayed there
        assert cli(target, "HGET", key, "c") == "4" and downs == []
    finally:  # the slot goes back to its owner, the same way (the session's cluster stays as it was)
        await subscriber.aclose()
        await writer.close()
        move(redis_cluster, slot, target, source)
        cli(source, "FLUSHALL")
