"""Where signald's hash slot lives on a Redis Cluster (signald.cluster.connect.Broker), asked of the
seed nodes of a ``redis+cluster://`` URL: against the session's private cluster (tests/redis_cluster.py)."""

from __future__ import annotations

import pytest
from redis_cluster import TAG, Cluster
from redis_fixture import RedisServer, free_port

from signald.cluster.connect import Broker
from signald.cluster.resp import LinkError, pack

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


async def test_a_server_that_is_not_a_cluster_node_is_named_with_the_reason(redis_server: RedisServer) -> None:
    port = redis_server.port
    broker = Broker(f"redis+cluster://127.0.0.1:{port}")
    with pytest.raises(LinkError, match=rf"127.0.0.1:{port}: not a Redis Cluster node: .*cluster support disabled"):
        await broker.owner()
