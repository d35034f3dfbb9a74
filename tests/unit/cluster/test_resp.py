"""signald's own Redis connections (signald.cluster.resp, .subscriber, .writer) against real Redis
servers: the session's, and one of this module's own with a password, a unix socket and TLS."""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from signald.cluster.resp import Link, LinkError, endpoint_of, open_link, pack, raise_on_error
from signald.cluster.subscriber import Subscriber
from signald.cluster.writer import Writer
from signald.state.brokerurl import parse_broker_url
from tests.redis_fixture import RedisServer, free_port, redis_binary

pytest.importorskip("hiredis")


async def until(check: Callable[[], bool], within: float) -> None:
    """Poll ``check`` (what the subscriber's callbacks collected) until it holds."""
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110 - the callbacks append to lists; nothing to wait on
            await trio.sleep(0.01)


def link_to(url: str) -> Callable[[], Awaitable[Link]]:
    """What a Writer or Subscriber connects with: a new connection to ``url`` each call."""
    return lambda: open_link(endpoint_of(parse_broker_url(url)))


class Own:
    """A private redis-server with a password, a unix socket and a TLS port (certificates by trustme)."""

    def __init__(self, directory: Path) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
        cert.private_key_pem.write_to_path(str(directory / "key.pem"))
        self.port, self.tls_port = free_port(), free_port()
        self.socket = directory / "redis.sock"
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory), "--requirepass", "s3cret", "--unixsocket", str(self.socket),
             "--tls-port", str(self.tls_port), "--tls-cert-file", str(directory / "cert.pem"),
             "--tls-key-file", str(directory / "key.pem"), "--tls-ca-cert-file", str(self.ca),
             "--tls-auth-clients", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    directory = tmp_path_factory.mktemp("redis-own")
    server = Own(directory)
    try:
        yield server
    finally:
        server.proc.kill()
        server.proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_pipeline_gets_its_replies_in_order_and_an_error_reply_is_raised(redis_url: str) -> None:
    link = await link_to(redis_url)()
    try:
        replies = await link.call(pack("SET", "k", "v") + pack("GET", "k") + pack("INCR", "k"), 3)
        assert replies[:2] == [b"OK", b"v"]
        assert "not an integer" in str(replies[2])
        with pytest.raises(LinkError, match="unknown command"):
            raise_on_error(await link.call(pack("NOSUCHCOMMAND"), 1))
    finally:
        await link.aclose()


async def test_the_writer_sends_records_and_publishes_and_comes_back_after_its_connection_is_killed(
        redis_url: str, redis_server: RedisServer) -> None:
    db = parse_broker_url(redis_url).db
    ups: list[bool] = []
    writer = Writer(link_to(redis_url), up=lambda: ups.append(True), down=lambda exc: None)
    await writer.execute([("hset", "h", {"a": b"1", "b": b"2"}), ("publish", "ch", b"x"), ("callback", "", None)])
    assert redis_server.command("SELECT", str(db)) == b"+OK\r\n"
    link = await link_to(redis_url)()
    assert await link.call(pack("HGETALL", "h"), 1) == [[b"a", b"1", b"b", b"2"]]  # in the URL's database
    await link.call(pack("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"), 1)  # the writer's connection
    with pytest.raises(LinkError):
        await writer.execute([("hdel", "h", ["a"])])  # lost with its connection
    await writer.execute([("hdel", "h", ["a"]), ("zrem", "z", "m")])  # the next one opens a new one
    assert await link.call(pack("HGETALL", "h"), 1) == [[b"b", b"2"]]
    assert ups == [True, True]
    await link.aclose()
    await writer.close()


async def test_login_database_unix_socket_and_tls_as_the_url_says(own: Own) -> None:
    for url in (f"redis://:s3cret@127.0.0.1:{own.port}/4",
                f"unix://:s3cret@{own.socket}?db=4",
                f"rediss://:s3cret@127.0.0.1:{own.tls_port}/4?ssl_ca_certs={own.ca}&ssl_cert_reqs=required"):
        link = await link_to(url)()
        try:
            await link.call(pack("SET", "where", url), 1)
        finally:
            await link.aclose()
        check = await link_to(f"redis://:s3cret@127.0.0.1:{own.port}/4")()
        assert await check.call(pack("GET", "where"), 1) == [url.encode()]
        await check.aclose()
    with pytest.raises(LinkError, match=r"WRONGPASS|invalid"):
        await link_to(f"redis://:wrong@127.0.0.1:{own.port}/0")()
    with pytest.raises(LinkError, match="cannot connect"):  # TLS with a CA that did not sign the server's
        await link_to(f"rediss://:s3cret@127.0.0.1:{own.tls_port}/0?ssl_cert_reqs=required")()


async def test_subscribe_returns_once_confirmed_and_the_subscriber_resubscribes_after_a_kill(
        redis_url: str) -> None:
    heard: list[tuple[str, bytes]] = []
    confirmed: list[str] = []
    downs: list[str] = []
    subscriber = Subscriber(link_to(redis_url), on_message=lambda c, d: heard.append((c, d)),
                            on_subscribed=confirmed.append, down=lambda exc: downs.append(str(exc)))
    publisher = await link_to(redis_url)()
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        await subscriber.subscribe("a")
        assert await publisher.call(pack("PUBLISH", "a", b"0"), 1) == [1]
        await subscriber.subscribe("b")  # confirmed on the connection after the message: it was read
        assert heard == []  # held until released (the node loads its snapshot first)
        subscriber.release()
        assert heard == [("a", b"0")]
        heard.clear()
        assert confirmed == ["a", "b"]
        assert await publisher.call(pack("PUBLISH", "a", b"1") + pack("PUBLISH", "b", b"2"), 2) == [1, 1]
        await subscriber.unsubscribe("b")
        await subscriber.subscribe("c")  # confirmed after the UNSUBSCRIBE on the same connection: it is done
        await publisher.call(pack("PUBLISH", "b", b"lost") + pack("PUBLISH", "a", b"3"), 2)
        await until(lambda: len(heard) >= 3, 5)
        assert heard == [("a", b"1"), ("b", b"2"), ("a", b"3")]
        await publisher.call(pack("CLIENT", "KILL", "TYPE", "pubsub"), 1)
        await until(lambda: confirmed.count("a") >= 2, 10)  # back, and subscribed again to what it held (only that)
        assert downs and "closed" in downs[0]
        assert sorted(subscriber.channels) == ["a", "c"] and subscriber.connects == 2
        assert await publisher.call(pack("PUBLISH", "a", b"4"), 1) == [1]
        await until(lambda: len(heard) >= 4, 5)
        assert heard[-1] == ("a", b"4")
        nursery.cancel_scope.cancel()
    await publisher.aclose()


async def ask(subscriber: Subscriber, results: list[bool]) -> None:
    results.append(await subscriber.caught_up(1.0))


async def test_caught_up_returns_once_what_was_published_before_it_was_handed_on(redis_url: str) -> None:
    """A node about to refuse a request on what it knows first asks its pub/sub to catch up: every
    message Redis took before the call is handed on when it returns True, with or without a channel
    subscribed, for several callers at once; a connection that is down says False at once."""
    heard: list[tuple[str, bytes]] = []
    subscriber = Subscriber(link_to(redis_url), on_message=lambda c, d: heard.append((c, d)),
                            on_subscribed=lambda c: None, down=lambda exc: None)
    assert await subscriber.caught_up(1.0) is False  # not connected yet
    publisher = await link_to(redis_url)()
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        subscriber.release()
        assert await subscriber.caught_up(1.0) is True  # no channel yet: a plain PONG with its number
        await subscriber.subscribe("a")
        for round_ in range(3):
            sent = [str(round_ * 100 + i).encode() for i in range(100)]
            assert await publisher.call(b"".join(pack("PUBLISH", "a", d) for d in sent), 100) == [1] * 100
            results: list[bool] = []
            async with trio.open_nursery() as asking:
                for _ in range(3):
                    asking.start_soon(ask, subscriber, results)
            assert results == [True] * 3
            assert heard[-100:] == [("a", d) for d in sent]  # all of them, before any answer came back
        await publisher.call(pack("CLIENT", "KILL", "TYPE", "pubsub"), 1)
        await until(lambda: subscriber._link is None, 5)
        assert await subscriber.caught_up(1.0) is False  # down: nothing to wait for
        nursery.cancel_scope.cancel()
    await publisher.aclose()


async def test_a_subscription_confirmed_after_its_subscribe_gave_up_is_dropped(redis_url: str) -> None:
    """A subscribe() that timed out or was cancelled after its SUBSCRIBE went out: Redis confirms it
    later, when the node no longer holds the channel. The node unsubscribes instead of hearing the
    room's messages for nobody until the next reconnect."""
    confirmed: list[str] = []
    subscriber = Subscriber(link_to(redis_url), on_message=lambda c, d: None, on_subscribed=confirmed.append,
                            down=lambda exc: None)
    publisher = await link_to(redis_url)()

    async def listeners(channel: str) -> int:
        reply = await publisher.call(pack("PUBSUB", "NUMSUB", channel), 1)
        return int(reply[0][1])

    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        await subscriber.subscribe("held")
        link = subscriber._link
        assert link is not None
        await link.send(pack("SUBSCRIBE", "given-up"))  # what the abandoned subscribe() left on the wire
        await subscriber.subscribe("after")  # confirmed after it on the same connection: Redis has done it
        for _ in range(200):
            await trio.sleep(0.01)
            if await listeners("given-up") == 0 and "given-up" not in subscriber.channels:
                break
        assert await listeners("given-up") == 0 and await listeners("held") == 1
        assert confirmed == ["held", "after"]  # the stray confirmation is not taken for a reconnect
        nursery.cancel_scope.cancel()
    await publisher.aclose()


async def test_a_subscriber_that_cannot_connect_at_first_says_why() -> None:
    subscriber = Subscriber(link_to(f"redis://127.0.0.1:{free_port()}/0"), on_message=lambda c, d: None,
                            on_subscribed=lambda c: None, down=lambda exc: None)
    async with trio.open_nursery() as nursery:
        with pytest.raises(LinkError, match=r"cannot connect to Redis at 127\.0\.0\.1"):
            await nursery.start(subscriber.run)
    with pytest.raises(LinkError, match="down"):
        await subscriber.subscribe("a")
    assert subscriber.channels == set()  # not held: the sweeper asks again, nothing subscribes it behind its back


@pytest.mark.parametrize("answer", [None, b"HTTP/1.1 400 Bad Request\r\n\r\n"], ids=["silent", "not-redis"])
async def test_a_silent_or_foreign_server_is_dropped_and_the_subscriber_connects_again(
        autojump_clock: trio.abc.Clock, answer: bytes | None) -> None:
    """A dead peer behind a live TCP connection (never answers), or something that is not Redis
    (a proxy answering HTTP): the subscriber drops the connection and tries again, it never fails."""
    received: list[bytes] = []
    downs: list[str] = []

    async def server(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for data in stream:
                received.append(data)
                if answer is not None:
                    await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        subscriber = Subscriber(link_to(f"redis://127.0.0.1:{port}/0"), on_message=lambda c, d: None,
                                on_subscribed=lambda c: None, down=lambda exc: downs.append(str(exc)))
        await nursery.start(subscriber.run)
        await until(lambda: subscriber.connects >= 2, 60)
        assert pack("PING") in received
        assert ("did not answer a PING" if answer is None else "not a Redis reply") in downs[0]
        await subscriber.unsubscribe("x")  # whatever state the connection is in: never raises
        nursery.cancel_scope.cancel()


async def test_pipelines_from_several_tasks_take_turns_on_the_one_connection(redis_url: str) -> None:
    """The writer's task, a resync and the goodbye may all send at once."""
    writer = Writer(link_to(redis_url), up=lambda: None, down=lambda exc: None)
    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(writer.execute, [("hset", "turns", {f"k{n}": b"v"}), ("publish", "ch", b"x")])
    link = await link_to(redis_url)()
    assert await link.call(pack("HLEN", "turns"), 1) == [20]
    await link.aclose()
    await writer.close()


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:7000/3?db=5", "redis://u:p%40ss@cache.internal", "redis://cache?password=x&username=y",
    "unix:///run/redis.sock?db=2&password=x", "rediss://cache:6380/1?ssl_check_hostname=y&ssl_cert_reqs=required", "rediss://cache/0?ssl_cert_reqs=none",
    "redis://:pw@[::1]:6379/0",
])
def test_an_url_reaches_the_same_redis_on_every_connection_as_coredis_reads_it(url: str) -> None:
    import coredis

    pool = coredis.Redis.from_url(url).connection_pool
    ours, theirs = endpoint_of(parse_broker_url(url)), pool.connection_kwargs
    assert (ours.username, ours.password, ours.db) == (theirs.get("username"), theirs.get("password"),
                                                       theirs.get("db") or 0)
    assert str(pool.location) == (ours.path if ours.path is not None else f"{ours.host}:{ours.port}")
    tls = theirs.get("ssl_context")
    assert (ours.tls is None) == (tls is None)
    if ours.tls is not None:
        assert (ours.tls.check_hostname, ours.tls.verify_mode) == (tls.check_hostname, tls.verify_mode)


async def test_a_batch_in_flight_is_sent_whole_when_the_writer_is_cancelled_and_the_goodbye_follows_it(
        redis_url: str) -> None:
    """A stopping node cancels the writer while its last ``Disconnect`` writes are on the way: they still
    reach Redis, before the goodbye that the node sends next (the others would wait out the TTL)."""
    go = trio.Event()

    async def slow_connect() -> Link:  # the batch is in flight (it holds the link) until ``go``
        await go.wait()
        return await link_to(redis_url)()

    writer = Writer(slow_connect, up=lambda: None, down=lambda exc: None)
    writer.put([("hset", "stopping", {"conn": b"in flight"}), ("publish", "ch", b"x")])
    async with trio.open_nursery() as leaving, trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # what RedisReplica.running() does on the way out
        leaving.start_soon(writer.execute, [("hset", "stopping", {"conn": b"goodbye"})])
        with trio.CancelScope(shield=True):
            await trio.testing.wait_all_tasks_blocked()
        go.set()
    link = await link_to(redis_url)()
    assert await link.call(pack("HGET", "stopping", "conn"), 1) == [b"goodbye"]  # in that order
    await writer.close()

    async def silent() -> Link:
        await trio.sleep_forever()

    stuck = Writer(silent, up=lambda: None, down=lambda exc: None)
    stuck.put([("hset", "never", {"a": b"1"})])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck.run)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
            stuck.abandon()  # a broker that does not answer does not hold the node's exit up
    assert await link.call(pack("EXISTS", "never"), 1) == [0]
    await link.aclose()


async def test_a_fresh_pipeline_goes_over_a_new_connection(redis_url: str) -> None:
    """A resync sends ``fresh``: the pub/sub found Redis again, maybe on another server (a failover,
    signald's slot moved), and the writer's old connection may still reach the server it left."""
    opened: list[Link] = []

    async def connect() -> Link:
        opened.append(await link_to(redis_url)())
        return opened[-1]

    writer = Writer(connect, up=lambda: None, down=lambda exc: None)
    await writer.execute([("hset", "fresh", {"a": b"1"})])
    await writer.execute([("hset", "fresh", {"b": b"2"})])
    assert len(opened) == 1
    await writer.execute([("hset", "fresh", {"c": b"3"})], fresh=True)
    assert len(opened) == 2
    with pytest.raises(LinkError):  # the old one was closed
        await opened[0].call(pack("PING"), 1)
    await writer.close()
