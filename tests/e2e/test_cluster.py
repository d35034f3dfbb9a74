"""Several nodes: real daemon processes sharing one private Redis and one PostgreSQL database,
with clients spread over them (docs/cluster.md).

Each test starts its nodes (``python -m signald serve --broker-url ... --history-url ...``) on
its own Redis database and its own PostgreSQL database; cross-node events are awaited with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import daemon
from redis_fixture import RedisServer, free_port, redis_binary
from roomview import RoomView

from signald.api.health import check
from signald.cli import main
from signald.client.raw import Refused, SignaldClient, connect
from signald.errors import SignalError

pytestmark = pytest.mark.timeout(90)

Event = tuple[str, dict[str, Any]]


@asynccontextmanager
async def nodes(tmp_path: Path, redis_url: str, history_url: str, count: int, *, ttl: float = 10.0,
                limits: str = "") -> AsyncIterator[list[tuple[trio.Process, str]]]:
    """``count`` daemons on one broker and one store; ``limits``: more ``[limits]`` lines."""
    async with AsyncExitStack() as stack:
        started = []
        for i in range(count):
            where = tmp_path / f"node{i}"
            where.mkdir()
            config = f'{limits}\n[cluster]\nnode_id = "node-{i}"\nnode_ttl_s = {ttl}\n'
            started.append(await stack.enter_async_context(daemon(
                where, "node", "--broker-url", redis_url, "--history-url", history_url, config_text=config)))
        yield started


async def wait_for(client: SignaldClient, seen: list[Event], done: Callable[[list[Event]], bool],
                   within: float = 10.0) -> list[Event]:
    """Read ``client``'s events into ``seen`` until ``done(seen)``; fail after ``within`` s."""
    with trio.fail_after(within):
        while not done(seen):
            event = await client.next_event()
            seen.append((event["type"], event["data"]))
    return seen


async def alice_and_bob_in_lobby(stack: AsyncExitStack, url0: str, url1: str) -> tuple[SignaldClient, SignaldClient]:
    """alice connected to ``url0`` and bob to ``url1`` (closed with ``stack``), both in ``lobby``."""
    alice = await stack.enter_async_context(connect(url0, user="alice"))
    bob = await stack.enter_async_context(connect(url1, user="bob"))
    for client in (alice, bob):
        await client.request("room.join", {"room": "lobby"})
    return alice, bob


def of(kind: str, events: list[Event]) -> list[dict[str, Any]]:
    return [data for t, data in events if t == kind]


async def test_chat_from_every_node_reaches_every_connection_once_in_seq_order(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    per_sender = 25
    async with nodes(tmp_path, redis_url, postgres_url, 3) as started, AsyncExitStack() as stack:
        urls = [url for _, url in started]
        places = [("alice", 0), ("bob", 1), ("carol", 2), ("bob", 0)]  # bob has a second device on node 0
        clients = [await stack.enter_async_context(connect(urls[node], user=user)) for user, node in places]
        for client in clients:
            await client.request("room.join", {"room": "lobby"})
        senders = clients[:3]

        async def send_all(client: SignaldClient, name: str) -> None:
            for i in range(per_sender):  # pipelined: every frame goes out before any ack is read
                await client.send({"type": "chat.send", "id": i, "data": {"scope": "lobby", "body": f"{name} {i}"}})

        async with trio.open_nursery() as nursery:
            for client, (user, _) in zip(senders, places, strict=False):
                nursery.start_soon(send_all, client, user)
        total = 3 * per_sender
        received: list[list[Event]] = [[] for _ in clients]
        acks: list[list[dict[str, Any]]] = [[] for _ in clients]

        def complete(index: int) -> Callable[[list[Event]], bool]:
            expected = total - (per_sender if index < 3 else 0)  # a sender gets acks for its own, not events
            mine = per_sender if index < 3 else 0
            return lambda seen: len(of("chat.message", seen)) >= expected and len(of("ack", seen)) >= mine

        async with trio.open_nursery() as nursery:
            for index, client in enumerate(clients):
                nursery.start_soon(wait_for, client, received[index], complete(index))
        stored = {}
        for index, events in enumerate(received):
            acks[index] = [data["data"] for data in of("ack", events)]
            for message in acks[index]:
                stored[message["seq"]] = message
        assert sorted(stored) == list(range(1, total + 1))  # every send stored once, one seq order
        for index, (client, events) in enumerate(zip(clients, received, strict=True)):
            pong = await client.request_raw("presence.ping")  # anything else already on its way arrives first
            assert pong["type"] == "presence.pong"
            events += [(e["type"], e["data"]) for e in client.pending_events()]
            got = of("chat.message", events)
            own = {m["seq"] for m in acks[index]}
            assert [m["seq"] for m in got] == sorted(set(stored) - own), f"client {index}: seqs out of order or twice"
            assert all(m == stored[m["seq"]] for m in got)


async def test_membership_and_presence_span_the_nodes(tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    limits = 'max_connections_per_user = 2\n[auth]\nadmins = ["root"]'
    async with nodes(tmp_path, redis_url, postgres_url, 3, ttl=1.5, limits=limits) as started:
        urls = [url for _, url in started]
        alice_seen: list[Event] = []
        async with connect(urls[0], user="alice") as alice:
            await alice.request("room.join", {"room": "lobby"})
            async with connect(urls[1], user="bob") as bob:
                ack = await bob.request("room.join", {"room": "lobby"})
                assert [(m["user_id"], m["status"]) for m in ack["members"]] == [("alice", "online"), ("bob", "online")]
                assert ack["active"] is True
                await wait_for(alice, alice_seen, lambda s: ("room.active", {"room": "lobby"}) in s)
                assert of("member.joined", alice_seen) == [{"room": "lobby", "user_id": "bob"}]

                async with connect(urls[2], user="bob") as bob2:  # bob's second device, on a third node
                    ack = await bob2.request("room.join", {"room": "lobby"})
                    assert [len(m["devices"]) for m in ack["members"]] == [1, 2]
                    await wait_for(alice, alice_seen, lambda s: bool(of("device.online", s)))
                    # a third connection of bob, on any node, is over max_connections_per_user = 2
                    with pytest.raises(Refused) as refused:
                        async with connect(urls[0], user="bob"):
                            pass
                    assert refused.value.close_code == 4429
                    async with connect(urls[2], user="root") as root:  # system.stats tells the cluster's
                        asked = 0
                        with trio.fail_after(5):
                            while True:  # the other nodes' counters come with their heartbeats
                                stats = await root.request("system.stats")
                                asked += 1
                                if stats["messages_in"] - asked >= 3:  # the three joins, one per node
                                    break
                                await trio.sleep(0.1)
                        assert (stats["connections"], stats["users"], stats["rooms"]) == (4, 3, 1)

                    await bob.request("presence.set", {"status": "away"})
                    update = {"user_id": "bob", "status": "away"}
                    await wait_for(alice, alice_seen, lambda s: ("presence.update", update) in s)
                    bob2_seen = await wait_for(bob2, [], lambda s: ("presence.update", update) in s)
                    assert not of("member.joined", bob2_seen)
                await wait_for(alice, alice_seen, lambda s: bool(of("device.offline", s)))
                assert not of("member.left", alice_seen)  # bob still has a device in the room
            left, offline = ("member.left", {"room": "lobby", "user_id": "bob"}), ("presence.update", {
                "user_id": "bob", "status": "offline"})
            await wait_for(alice, alice_seen, lambda s: left in s and offline in s)
            assert of("member.joined", alice_seen) == [{"room": "lobby", "user_id": "bob"}]  # once, not per device


async def test_a_killed_node_takes_only_its_connections_and_loses_no_acked_message(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    ttl = 1.0
    async with nodes(tmp_path, redis_url, postgres_url, 3, ttl=ttl) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, url1), (_, url2) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        carol = await stack.enter_async_context(connect(url2, user="carol"))
        for client in (alice, carol):
            await client.request("room.join", {"room": "lobby"})
        async with connect(url1, user="bob") as bob:
            await bob.request("room.join", {"room": "lobby"})
            acked = [await bob.request("chat.send", {"scope": "lobby", "body": f"before {i}"}) for i in range(10)]
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        offline = ("presence.update", {"user_id": "bob", "status": "offline"})
        left = ("member.left", {"room": "lobby", "user_id": "bob"})
        for client in (alice, carol):  # within node_ttl_s plus a heartbeat (and a loaded machine's slack)
            seen = await wait_for(client, [], lambda s: offline in s and left in s, within=ttl * 6)
            assert [m["seq"] for m in of("chat.message", seen)] == [m["seq"] for m in acked]
        async with connect(url2, user="bob") as bob:  # bob comes back through another node
            ack = await bob.request("room.join", {"room": "lobby", "since_rev": 0})
            assert [m["id"] for m in ack["changes"]] == [m["id"] for m in acked]
            assert [m["user_id"] for m in ack["members"]] == ["alice", "bob", "carol"]
            await wait_for(alice, [], lambda s: ("member.joined", {"room": "lobby", "user_id": "bob"}) in s)


def test_several_nodes_on_sqlite_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["serve", "--port", "0", "--db", str(tmp_path / "x.db"), "--broker-url", "redis://127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "cluster.broker_url" in err and "PostgreSQL" in err, err
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


async def ready(url: str) -> tuple[bool, str]:
    http = url.replace("ws://", "http://").rstrip("/") + "/readyz"
    return await trio.to_thread.run_sync(check, http, 3.0)


async def until_ready(url: str, wanted: bool, within: float = 15.0) -> str:
    """Poll ``/readyz`` until it says ``wanted``; the last line it answered."""
    with trio.fail_after(within):
        while True:
            healthy, line = await ready(url)
            if healthy == wanted:
                return line
            await trio.sleep(0.05)


async def test_a_broker_restart_is_503_meanwhile_then_delivery_resumes(tmp_path: Path, postgres_url: str) -> None:
    """Its own Redis (the session's stays up for the other tests): stopped, then started empty."""
    redis = RedisServer(redis_binary(), tmp_path, free_port())
    redis.start()
    try:
        async with nodes(tmp_path, redis.url(0), postgres_url, 2, ttl=1.0) as started, AsyncExitStack() as stack:
            (_, url0), (_, url1) = started
            alice, bob = await alice_and_bob_in_lobby(stack, url0, url1)
            assert (await ready(url0))[0]

            redis.stop()
            line = await until_ready(url0, False)
            assert line.startswith("503") and "broker" in line, line
            sent = await bob.request("chat.send", {"scope": "lobby", "body": "while the broker is down"})
            assert await alice.request("presence.set", {"status": "away"}) is None  # local work goes on

            redis.start()  # empty: every node writes its records back and announces its devices again
            await until_ready(url0, True)
            await until_ready(url1, True)
            # node 0 missed bob's message: alice is told to reconnect (1012) and resumes exactly
            with trio.fail_after(15):
                await alice.closed.wait()
            assert alice.ws.closed is not None and alice.ws.closed.code == 1012
            async with connect(url0, user="alice") as again:
                ack = await again.request("room.join", {"room": "lobby", "since_rev": 0})
                assert [m["id"] for m in ack["changes"]] == [sent["id"]]
                late = await bob.request("chat.send", {"scope": "lobby", "body": "after the restart"})
                await wait_for(again, [], lambda s: late["id"] in [m["id"] for m in of("chat.message", s)])
                async with connect(url1, user="carol") as carol:  # a join on either node sees everyone again
                    ack = await carol.request("room.join", {"room": "lobby", "since": 0})
                    assert [m["user_id"] for m in ack["members"]] == ["alice", "bob", "carol"]
                    assert [m["seq"] for m in ack["missed"]] == [sent["seq"], late["seq"]]
                    await again.request("chat.send", {"scope": "lobby", "body": "hello carol"})
                    await wait_for(carol, [], lambda s: bool(of("chat.message", s)))
            assert not bob.closed.is_set()  # node 1 missed nothing: its clients stay
    finally:
        redis.stop()


async def test_writes_lost_with_their_connection_are_repaired_as_after_an_outage(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, postgres_url: str
) -> None:
    """Only the nodes' command connections break (``CLIENT KILL TYPE normal``; their pub/sub stays):
    the batch that carried carol's join is lost with node 1's writer connection, and node 1
    resynchronises as after an outage (its pub/sub reconnects, it announces its devices again)."""
    async with nodes(tmp_path, redis_url, postgres_url, 2) as started, AsyncExitStack() as stack:
        (_, url0), (_, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        await alice.request("room.join", {"room": "lobby"})
        carol = await stack.enter_async_context(connect(url1, user="carol"))
        await carol.request("room.join", {"room": "elsewhere"})
        await carol.request("chat.send", {"scope": "elsewhere", "body": "x"})  # acked: node 1's writes are out
        assert redis_server.command("CLIENT", "KILL", "TYPE", "normal").startswith(b":")
        await carol.request("room.join", {"room": "lobby"})
        await wait_for(alice, [], lambda s: ("member.joined", {"room": "lobby", "user_id": "carol"}) in s)
        await until_ready(url1, True)


async def test_a_node_that_stalled_past_the_ttl_comes_back_with_its_devices(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    ttl = 1.0
    async with nodes(tmp_path, redis_url, postgres_url, 2, ttl=ttl) as started, AsyncExitStack() as stack:
        (_, url0), (stalled, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        bob = await stack.enter_async_context(connect(url1, user="bob"))
        for client in (alice, bob):
            await client.request("room.join", {"room": "lobby"})
        seen: list[Event] = []
        await wait_for(alice, seen, lambda s: bool(of("member.joined", s)))
        stalled.send_signal(signal.SIGSTOP)  # frozen, not dead: its sockets stay open
        try:
            await wait_for(alice, seen, lambda s: ("member.left", {"room": "lobby", "user_id": "bob"}) in s,
                           within=ttl * 6)
        finally:
            stalled.send_signal(signal.SIGCONT)
        # back: it finds itself out of the cluster and announces bob's device and room again
        await wait_for(alice, seen, lambda s: len(of("member.joined", s)) == 2, within=ttl * 6)
        message = await bob.request("chat.send", {"scope": "lobby", "body": "I was only asleep"})
        await wait_for(alice, seen, lambda s: message["id"] in [m["id"] for m in of("chat.message", s)])


def calls_in(events: list[Event]) -> list[Event]:
    return [(kind, data) for kind, data in events if kind.startswith("call.")]


async def test_a_call_rings_every_device_on_every_node_and_the_first_answer_wins(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    sdp = {"type": "offer", "sdp": "v=0"}
    answer_sdp = {"type": "answer", "sdp": "v=0"}
    candidate = {"candidate": "candidate:1", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"}
    async with nodes(tmp_path, redis_url, postgres_url, 3, ttl=1.0) as started, AsyncExitStack() as stack:
        (_, url0), (_, url1), (callee_node, url2) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        phone = await stack.enter_async_context(connect(url1, user="bob"))
        laptop = await stack.enter_async_context(connect(url2, user="bob"))
        for client in (alice, phone, laptop):
            await client.request("room.join", {"room": "lobby"})
        await wait_for(alice, [], lambda s: bool(of("room.active", s)))

        call_id = (await alice.request("call.offer", {"target_id": "bob", "call_type": "audio", "sdp": sdp}))["call_id"]
        ring = ("call.offer", {"from_user": "alice", "call_id": call_id, "call_type": "audio", "sdp": sdp})
        for device in (phone, laptop):  # both of bob's devices ring, on two other nodes
            await wait_for(device, [], lambda s: ring in s)
        reply = await laptop.request("call.answer", {"target_id": "alice", "sdp": answer_sdp, "call_id": call_id})
        assert reply is None
        answered = ("call.answer", {"from_user": "bob", "call_id": call_id, "sdp": answer_sdp})
        await wait_for(alice, [], lambda s: answered in s)
        elsewhere = ("call.end", {"from_user": "bob", "call_id": call_id, "reason": "answered_elsewhere"})
        await wait_for(phone, [], lambda s: elsewhere in s)
        with pytest.raises(SignalError) as late:  # the phone lost: its answer is refused where it is
            await phone.request("call.answer", {"target_id": "alice", "sdp": answer_sdp, "call_id": call_id})
        assert late.value.code in ("CONFLICT", "NOT_FOUND", "FORBIDDEN")

        await alice.request("call.ice", {"target_id": "bob", "candidate": candidate, "call_id": call_id})
        ice = ("call.ice", {"from_user": "alice", "call_id": call_id, "candidate": candidate})
        await wait_for(laptop, [], lambda s: ice in s)
        busy = ("presence.update", {"user_id": "bob", "status": "busy"})
        await wait_for(alice, [], lambda s: busy in s)

        callee_node.send_signal(signal.SIGKILL)  # the answering device's node dies mid-call
        gone = ("call.end", {"from_user": "bob", "call_id": call_id, "reason": "disconnected"})
        seen = await wait_for(alice, [], lambda s: gone in s, within=6.0)
        assert calls_in(seen) == [gone]  # ended once


async def test_a_node_that_stops_cleanly_says_goodbye_at_once(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """SIGTERM: its clients are closed with 1001 and the others hear of it before any TTL (30 s here)."""
    async with nodes(tmp_path, redis_url, postgres_url, 2, ttl=30.0) as started, AsyncExitStack() as stack:
        (_, url0), (stopping, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        bob = await stack.enter_async_context(connect(url1, user="bob"))
        for client in (alice, bob):
            await client.request("room.join", {"room": "lobby"})
        stopping.send_signal(signal.SIGTERM)
        left = ("member.left", {"room": "lobby", "user_id": "bob"})
        await wait_for(alice, [], lambda s: left in s, within=15.0)  # well under the 30 s TTL
        with trio.fail_after(10):
            assert await stopping.wait() == 0
        assert bob.ws.closed is not None and bob.ws.closed.code == 1001


def test_a_broker_that_does_not_answer_at_start_is_one_line_and_status_1(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = free_port()  # nothing listens there
    status = main(["serve", "--port", "0", "--history-url", postgres_url, "--broker-url",
                   f"redis://:secret@127.0.0.1:{closed}/0"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith(f"signald: cannot start: cluster.broker_url redis://:***@127.0.0.1:{closed}/0: "), err
    assert err.count("\n") == 1 and "secret" not in err


async def nodes_listed(redis: Any, names: Any, count: int) -> None:
    """Wait (20 s at most) until Redis lists ``count`` live nodes."""
    with trio.fail_after(20):
        while True:
            if await redis.zcard(names.nodes) == count:
                return
            await trio.sleep(0.05)


async def test_workers_are_nodes_sharing_one_port(tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    """``--workers 3``: three processes on one port, the kernel spreads the clients, one cluster."""
    import coredis

    from signald.cluster.wire import RECORD_DECODER, Names

    names = Names(redis_url)
    config = '[cluster]\nnode_id = "box"\nnode_ttl_s = 2.0\n'
    async with daemon(tmp_path, "workers", "--workers", "3", "--broker-url", redis_url,
                      "--history-url", postgres_url, config_text=config) as (first, url):
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url)
        async with redis, AsyncExitStack() as stack:
            await nodes_listed(redis, names, 3)
            assert {m.decode() for m in await redis.zrange(names.nodes, 0, -1)} == {"box-0", "box-1", "box-2"}
            clients = [await stack.enter_async_context(connect(url, user=f"u{i}")) for i in range(12)]
            for client in clients:
                await client.request("room.join", {"room": "lobby"})
            records = [RECORD_DECODER.decode(raw) for raw in (await redis.hgetall(names.conns)).values()]
            assert len(records) == 12 and len({record.node for record in records}) >= 2  # spread over nodes
            sent = await clients[0].request("chat.send", {"scope": "lobby", "body": "to every worker"})
            for client in clients[1:]:
                await wait_for(client, [], lambda s: sent["id"] in [m["id"] for m in of("chat.message", s)])
            first.send_signal(signal.SIGTERM)  # stops the other workers too, each leaving the cluster
            with trio.fail_after(20):
                assert await first.wait() == 0
            await nodes_listed(redis, names, 0)


async def test_kill_9_during_traffic_loses_no_acked_message_and_its_client_resumes_exactly_elsewhere(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """A node is killed while its client pipelines sends: every send it acked had already reached the
    broker, so the other node's clients got each one live, once, in order; the store has them all.
    The client comes back through the surviving node with ``since_rev`` and ends holding exactly the
    room the store holds (the sends committed but never acked included), as does the survivor."""
    async with nodes(tmp_path, redis_url, postgres_url, 2, ttl=1.0) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        alice_view, bob_view = RoomView("lobby"), RoomView("lobby")
        await alice_view.join(alice)
        acked: list[dict[str, Any]] = []
        async with connect(url1, user="bob") as bob:
            await bob_view.join(bob)
            for i in range(200):
                await bob.send({"type": "chat.send", "id": i, "data": {"scope": "lobby", "body": f"{i}"}})
            with trio.move_on_after(10):
                while len(acked) < 60:  # kill it somewhere in the middle of the acks
                    reply = await bob.next_event()
                    if reply["type"] == "ack":
                        acked.append(reply["data"]["data"])
                        bob_view.apply_event("chat.message", acked[-1])  # its own sends, as a client keeps them
            assert len(acked) == 60
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        seen = await wait_for(alice, [], lambda s: ("member.left", {"room": "lobby", "user_id": "bob"}) in s,
                              within=6.0)
        live = [m["seq"] for m in of("chat.message", seen)]
        assert live == sorted(set(live)), "out of order or twice"
        assert {m["seq"] for m in acked} <= set(live)  # every acked one arrived live
        stored = (await alice.request("chat.history", {"room": "lobby", "after": 0, "limit": 200}))["messages"]
        assert set(live) <= {m["seq"] for m in stored}  # and nothing live that was not stored
        for kind, data in seen:
            alice_view.apply_event(kind, data)
        async with connect(url0, user="bob") as back:  # through the load balancer, to the node left
            await bob_view.join(back)  # since_rev: the last of its acks
            assert bob_view.as_history() == stored
            await alice_view.join(alice)  # what node 1 committed but never published, if anything
            assert alice_view.as_history() == stored
