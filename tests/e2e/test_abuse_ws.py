"""Abuse over real WebSockets: what a hostile client could learn, break or take (issue 16).

Each test plays one attack of the adversarial review against an in-process daemon on port 0 and
checks the bound that now holds: no presence oracle in ``call.offer``, out-of-range numbers get
``INVALID_PAYLOAD`` naming the field, client input never writes a traceback into the log, a
refresh that narrows the token narrows the session, the per-user rate limit survives reconnects,
and pings or fragments cost memory and CPU only within bounds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from conftest import clients, events_of, make_config, start_server, time_flies
from trio.testing import MockClock
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Ping, Pong, Request, TextMessage

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer

pytestmark = pytest.mark.usefixtures("nodes")  # every test over 1 node and over 3 nodes


async def serve(nursery: trio.Nursery, tmp_path: Path, **sections: dict[str, Any]) -> RunningServer:
    """A daemon with some config keys changed (heartbeats far away, so timed tests stay quiet)."""
    sections.setdefault("server", {}).setdefault("heartbeat_s", 3600.0)
    return await start_server(nursery, make_config(tmp_path, **sections))


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await serve(nursery, tmp_path)


async def reply_of(c: SignaldClient, kind: str, data: Any = None) -> dict[str, Any]:
    with trio.fail_after(5):
        reply: dict[str, Any] = await c.request_raw(kind, data)
    return reply


async def next_reply(c: SignaldClient) -> dict[str, Any]:
    """The next reply (ack, error or pong) to a frame sent with :meth:`SignaldClient.send`, in order
    (a RATE_LIMITED error may not carry the request's op id)."""
    while True:
        event = await c.next_event()
        if event["type"] in ("ack", "error", "presence.pong"):
            return event


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every log record that carries a traceback (or says it does)."""
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.exc_info or r.exc_text or r.stack_info or "Traceback" in r.getMessage()]


@pytest.fixture(autouse=True)
def no_traceback_in_the_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every attack of this file runs with the whole log captured: none may leave a traceback in it (item 7)."""
    caplog.set_level(logging.DEBUG)
    yield
    assert tracebacks(caplog) == []


# --------------------------------------------------------------------------- 5: no presence oracle

SDP = {"type": "offer", "sdp": "v=0\r\n"}


async def test_call_offer_to_a_stranger_answers_the_same_whether_they_are_online_or_not(srv: RunningServer) -> None:
    async with clients(srv, "alice", "carol", "bob") as (alice, carol, bob):
        await alice.request("room.join", {"room": "lobby"})
        await bob.request("room.join", {"room": "lobby"})
        await carol.request("room.join", {"room": "elsewhere"})
        online = await reply_of(alice, "call.offer", {"target_id": "carol", "call_type": "audio", "sdp": SDP})
        offline = await reply_of(alice, "call.offer", {"target_id": "dave", "call_type": "audio", "sdp": SDP})
        never_in_a_room = await reply_of(alice, "call.offer", {"target_id": "dave", "call_type": "video", "sdp": SDP})
        for reply, name in ((online, "carol"), (offline, "dave"), (never_in_a_room, "dave")):
            assert reply["type"] == "error"
            assert reply["data"]["code"] == "FORBIDDEN"
            assert reply["data"]["message"] == f"you share no room with {name!r}"
        assert [e for e in await events_of(carol) if e[0] == "call.offer"] == []  # nobody rang
        # A room-mate is still callable.
        ack = await reply_of(alice, "call.offer", {"target_id": "bob", "call_type": "audio", "sdp": SDP})
        assert ack["type"] == "ack"


# --------------------------------------------------------------------------- 6: numbers out of range

BIG = 2**70
OUT_OF_RANGE: list[tuple[str, str, dict[str, Any], str]] = [
    # (id, request type, data, the field the error names)
    ("join-since-2^70", "room.join", {"room": "lobby", "since": BIG}, "$.data.since"),
    ("join-since-2^63", "room.join", {"room": "lobby", "since": 2**63}, "$.data.since"),
    ("history-after-2^63", "chat.history", {"room": "lobby", "after": 2**63}, "$.data.after"),
    ("history-before-2^64", "chat.history", {"room": "lobby", "before": 2**64}, "$.data.before"),
    ("history-limit-2^70", "chat.history", {"room": "lobby", "limit": BIG}, "$.data.limit"),
    ("attachment-size-2^63", "chat.send",
     {"scope": "lobby", "body": "x", "attachments": [{"url": "https://x.example/a", "size": 2**63}]},
     "$.data.attachments[0].size"),
]


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize(("kind", "data", "field"), [c[1:] for c in OUT_OF_RANGE], ids=[c[0] for c in OUT_OF_RANGE])
async def test_a_number_out_of_range_is_invalid_payload_naming_the_field(
    srv: RunningServer, kind: str, data: dict[str, Any], field: str, msgpack: bool, caplog: pytest.LogCaptureFixture
) -> None:
    if msgpack and ("2^70" in repr(data).replace(str(BIG), "2^70") or str(2**64) in repr(data)):
        pytest.skip("MessagePack carries no integer above 2**64 - 1")
    caplog.set_level(logging.DEBUG, logger="signald")
    async with connect(srv.url, user="alice", msgpack=msgpack) as alice:
        await alice.request("room.join", {"room": "lobby"})
        await alice.request("chat.send", {"scope": "lobby", "body": "one"})
        reply = await reply_of(alice, kind, data)
        assert reply["type"] == "error", reply
        assert reply["data"]["code"] == "INVALID_PAYLOAD"
        assert field in reply["data"]["message"]
        # The largest number that fits is a number like any other, and the connection is still up.
        if "since" in data:
            fits = await alice.request("room.join", {"room": "lobby", "since": 2**63 - 1})
            assert fits["missed"] == []
        history = await alice.request("chat.history", {"room": "lobby", "after": 2**63 - 1})
        assert history == {"messages": [], "has_more": False}
    assert tracebacks(caplog) == []


# --------------------------------------------------------------------------- 7: no traceback from client input


class Raw:
    """A WebSocket client on wsproto that sends exactly the bytes the test makes (no checks of its own)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []

    @classmethod
    async def open(cls, server: RunningServer, user: str) -> Raw:
        raw = cls(await trio.open_tcp_stream("127.0.0.1", server.port))
        await raw.stream.send_all(raw.ws.send(Request(host="localhost", target=f"/?user={user}")))
        assert await raw.next_of(AcceptConnection) is not None, "handshake refused"
        return raw

    async def next_of(self, kind: type[Event]) -> Any:
        """The next event of type ``kind`` (others before it dropped); None once the server closed TCP."""
        with trio.fail_after(5):
            while True:
                while self.events:
                    event = self.events.pop(0)
                    if isinstance(event, kind):
                        return event
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    return None
                self.ws.receive_data(data)
                self.events.extend(self.ws.events())

    async def reply(self, op_id: Any) -> dict[str, Any]:
        while True:
            message = await self.next_of(TextMessage)
            assert message is not None, f"closed before the reply to {op_id!r}"
            decoded: dict[str, Any] = json.loads(message.data)
            if decoded["type"] != "welcome" and decoded["data"].get("op_id") == op_id:
                return decoded


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


async def test_no_client_input_makes_the_daemon_log_a_traceback(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await serve(nursery, tmp_path, server={"connect_timeout_s": 0.2},
                         limits={"max_frame_bytes": 200_000})
    async with clients(server, "member") as (member,), connect(server.url, user="packer", msgpack=True) as packer:
        for c in (member, packer):
            await c.request("room.join", {"room": "lobby"})
        # A handshake that never comes: the connect timeout fires (it used to raise UnboundLocalError).
        silent = await trio.open_tcp_stream("127.0.0.1", server.port)
        half = await trio.open_tcp_stream("127.0.0.1", server.port)
        await half.send_all(b"GET /?user=half HTTP/1.1\r\nHost: x\r\n")
        await trio.sleep(0.4)
        for stream in (silent, half):
            await stream.aclose()

        raw = await Raw.open(server, "attacker")
        await raw.stream.send_all(raw.ws.send(TextMessage(data=json.dumps({"type": "room.join", "id": "j",
                                                                            "data": {"room": "lobby"}}))))
        assert (await raw.reply("j"))["type"] == "ack"
        expected = [
            # (frame, op_id of the reply, code)
            (deep(65_000), None, "BAD_REQUEST"),  # RecursionError in the decoder
            ('{"type": "room.signal", "id": 2, "data": {"room": "lobby", "kind": "k", "payload": '
             + deep(65_000) + "}}", None, "BAD_REQUEST"),
            ('{"type": "room.signal", "id": 3, "data": {"room": "lobby", "kind": "k", "payload": '
             + deep(200) + "}}", 3, "INVALID_PAYLOAD"),  # decodes, but no encoder could send it on
            ('{"type": "room.signal", "id": 4, "data": {"room": "lobby", "kind": "k", "payload": {"n": '
             + str(2**70) + "}}}", 4, "INVALID_PAYLOAD"),  # MessagePack could not carry it to packer
            ('{"type": "call.ice", "id": 5, "data": {"target_id": "member", "candidate": {"c": [-'
             + str(2**64) + "]}}}", 5, "INVALID_PAYLOAD"),
            ('{"type": "room.join", "id": 6, "data": {"room": "lobby", "since": ' + str(2**70) + "}}", 6,
             "INVALID_PAYLOAD"),  # OverflowError in SQLite
            ('{"type": "chat.history", "id": 7, "data": {"room": "lobby", "before": ' + str(2**63) + "}}", 7,
             "INVALID_PAYLOAD"),
        ]
        for frame, op_id, code in expected:
            await raw.stream.send_all(raw.ws.send(TextMessage(data=frame)))
            reply = await raw.reply(op_id)
            assert (reply["type"], reply["data"]["code"]) == ("error", code), reply
        # An op id beyond 64 bits is echoed as given to a JSON client.
        await raw.stream.send_all(raw.ws.send(TextMessage(data='{"type": "presence.ping", "id": ' + str(2**70) + "}")))
        assert (await raw.reply(2**70))["type"] == "presence.pong"
        # A ping and the close in one write: no pong may follow the peer's close (LocalProtocolError).
        await raw.stream.send_all(raw.ws.send(Ping(b"x")) + raw.ws.send(CloseConnection(code=1000)))
        assert (await raw.next_of(CloseConnection)).code == 1000
        await raw.stream.aclose()
        # A protocol violation and invalid UTF-8 end their connections with the code RFC 6455 names.
        for garbage in (b"\x8f\x80\x00\x00\x00\x00", b"\x81\x82\x00\x00\x00\x00\xff\xfe"):
            bad = await Raw.open(server, "garbage")
            await bad.stream.send_all(garbage)
            closed = await bad.next_of(CloseConnection)
            assert closed is None or closed.code in (1002, 1007)
            await bad.stream.aclose()

        # Nobody else noticed, and nothing reached the members.
        assert [e for e in await events_of(member) if e[0] == "room.signal"] == []
        assert [e for e in await events_of(packer) if e[0] == "room.signal"] == []
    assert tracebacks(caplog) == []


# --------------------------------------------------------------------------- 4: a narrower token narrows the session

SECRET = "signald-test-secret-0123456789abcdef"


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600, **claims}, SECRET, algorithm="HS256")


async def test_a_refresh_that_narrows_rooms_and_roles_takes_effect_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, auth={"mode": "jwt", "jwt_secret": SECRET})
    async with connect(server.url, token=token("alice", rooms=["a", "b"], roles=["admin"])) as alice, \
            connect(server.url, token=token("alice", rooms=["a"])) as alice_phone, \
            connect(server.url, token=token("bob")) as bob, connect(server.url, token=token("carol")) as carol:
        for c, rooms in ((alice, ("a", "b")), (alice_phone, ("a",)), (bob, ("a", "b")), (carol, ("b",))):
            for room in rooms:
                await c.request("room.join", {"room": room})
        await alice.request("chat.typing", {"scope": "b", "typing": True})
        for c in (alice, alice_phone, bob, carol):
            await events_of(c)
        assert "connections" in await alice.request("system.stats")

        ack = await alice.request_raw("auth.refresh", {"refresh_token": token("alice", rooms=["a"])})
        assert ack["type"] == "ack"
        with trio.fail_after(5):
            kicked = await alice.next_event()  # right after the ack, before anything else
        assert (kicked["type"], kicked["data"]) == ("room.kicked", {"room": "b", "by": "$system", "reason": "token"})
        for other in (bob, carol):
            seen = await events_of(other)
            assert ("member.left", {"room": "b", "user_id": "alice"}) in seen
            assert ("chat.typing.user", {"scope": "b", "user_id": "alice", "typing": False}) in seen

        # Later requests are checked against the new claims: no room b, no admin.
        assert (await alice.request("session.info"))["rooms"] == ["a"]
        assert (await alice.request("session.info"))["roles"] == []
        for kind, data, code in (
            ("chat.send", {"scope": "b", "body": "still here?"}, "NOT_IN_ROOM"),
            ("chat.history", {"room": "b"}, "NOT_IN_ROOM"),
            ("room.join", {"room": "b"}, "FORBIDDEN"),
            ("system.stats", None, "FORBIDDEN"),
        ):
            reply = await reply_of(alice, kind, data)
            assert (reply["type"], reply["data"]["code"]) == ("error", code), reply
        # ... and nothing said in b reaches alice any more; room a is untouched.
        await bob.request("chat.send", {"scope": "b", "body": "secret"})
        await bob.request("chat.send", {"scope": "a", "body": "hello a"})
        seen = await events_of(alice)
        assert [d["body"] for k, d in seen if k == "chat.message"] == ["hello a"]
        assert [d["body"] for k, d in await events_of(alice_phone) if k == "chat.message"] == ["hello a"]


# --------------------------------------------------------------------------- 3: per-user rate limit


async def test_reconnecting_refills_nothing_and_every_device_draws_on_the_same_budget(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"user_rate_per_s": 1, "user_rate_burst": 5},
                         server={"new_connections_per_ip_per_s": 0})

    async def pings(c: SignaldClient, n: int) -> list[str]:
        replies = []
        for _ in range(n):
            await c.send({"type": "presence.ping", "id": "p"})
            replies.append(await next_reply(c))
        return [r["type"] if r["type"] != "error" else r["data"]["code"] for r in replies]

    async with connect(server.url, user="alice") as first:
        assert await pings(first, 6) == ["presence.pong"] * 5 + ["RATE_LIMITED"]
    for _ in range(3):  # the clock stands still: no reconnect brings a token back
        async with connect(server.url, user="alice") as again, connect(server.url, user="alice") as phone:
            assert await pings(again, 2) == ["RATE_LIMITED"] * 2
            assert await pings(phone, 1) == ["RATE_LIMITED"]
    async with connect(server.url, user="bob") as bob:  # somebody else's budget is their own
        assert await pings(bob, 5) == ["presence.pong"] * 5
    with time_flies(frozen_clock):
        await trio.sleep(2)
    async with connect(server.url, user="alice") as later:
        assert await pings(later, 3) == ["presence.pong"] * 2 + ["RATE_LIMITED"]  # what 2 s refilled


async def _until_gone(server: Any, user: str) -> None:
    """Until every node (one, or each of several) has seen the last of ``user``'s connections go."""
    hubs = [node.hub for node in getattr(server, "nodes", [server])]
    with trio.fail_after(5):
        while any(hub.presence.device_count(user) for hub in hubs):  # noqa: ASYNC110 - no event per node to wait on
            await trio.sleep(0.005)


async def test_devices_on_several_nodes_draw_on_one_budget_and_moving_refills_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A slow refill (one token in 10 s): what each step gets is the burst's, not the clock's.
    server = await serve(nursery, tmp_path, limits={"user_rate_per_s": 0.1, "user_rate_burst": 10},
                         server={"new_connections_per_ip_per_s": 0})

    async def pongs(c: SignaldClient, n: int) -> int:
        for _ in range(n):
            await c.send({"type": "presence.ping", "id": "p"})
        with trio.fail_after(5):
            return sum([(await next_reply(c))["type"] == "presence.pong" for _ in range(n)])

    async with clients(server, "alice", "alice") as (phone, laptop):  # over 3 nodes: on two of them
        assert await pongs(phone, 10) + await pongs(laptop, 10) == 10  # one burst between the two
    await _until_gone(server, "alice")
    async with clients(server, "alice") as (again,):  # over 3 nodes: on the third
        assert await pongs(again, 3) == 0  # it spent its burst elsewhere: nothing refilled
    async with clients(server, "bob") as (bob,):
        assert await pongs(bob, 10) == 10  # somebody else's budget is their own


async def test_a_reconnect_flood_stores_no_more_than_the_per_user_budget(nursery: trio.Nursery, tmp_path: Path) -> None:
    rate, burst = 20.0, 40
    server = await serve(nursery, tmp_path, limits={"user_rate_per_s": rate, "user_rate_burst": burst},
                         server={"new_connections_per_ip_per_s": 0})
    acked = reconnects = 0
    async with connect(server.url, user="reader") as reader:
        await reader.request("room.join", {"room": "lobby"})
        started = trio.current_time()
        while trio.current_time() - started < 1.5:
            async with connect(server.url, user="flood") as flood:
                reconnects += 1
                # A join and 58 sends, pipelined: within the connection's own burst (60).
                await flood.send({"type": "room.join", "id": "join", "data": {"room": "lobby"}})
                for i in range(58):
                    await flood.send({"type": "chat.send", "id": i, "data": {"scope": "lobby", "body": f"{i}"}})
                with trio.fail_after(5):
                    replies = [await next_reply(flood) for _ in range(59)]
                acked += sum(r["type"] == "ack" and r["data"]["op_id"] != "join" for r in replies)
        elapsed = trio.current_time() - started
        # Every frame, the joins included, came out of one budget: the burst and what refilled.
        budget = burst + rate * elapsed
        assert reconnects >= 5
        assert 0 < acked <= budget
        stored = (await reader.request("chat.history", {"room": "lobby", "limit": 200}))["messages"]
        assert len(stored) == acked


# --------------------------------------------------------------------------- 1 and 2: pings and fragments


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def open_small_window(server: RunningServer, user: str) -> Raw:
    """A raw client whose receive buffer is small, so what it does not read backs up in the server."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", server.port))
    raw = Raw(trio.SocketStream(sock))
    await raw.stream.send_all(raw.ws.send(Request(host="localhost", target=f"/?user={user}")))
    await raw.next_of(AcceptConnection)
    await raw.next_of(TextMessage)  # the welcome: the session exists
    return raw


async def test_pings_nobody_reads_are_answered_within_the_send_queue_and_then_closed_as_flooding(
    srv: RunningServer,
) -> None:
    raw = await open_small_window(srv, "pinger")
    [session] = srv.hub.sessions_by_user["pinger"].values()
    pings = b"".join(raw.ws.send(Ping(bytes(125))) for _ in range(4000))  # 520 kB, pongs of 127 bytes each
    most_queued = 0
    with trio.move_on_after(5):
        for start in range(0, len(pings), 13_000):  # never reading a pong
            try:
                await raw.stream.send_all(pings[start:start + 13_000])
            except trio.BrokenResourceError:
                break
            await trio.sleep(0.001)
            most_queued = max(most_queued, session.outbox.queued_bytes)
    # One pong at most waits (a newer one replaces it), beside the welcome; the daemon gave up on
    # the pinger as a flooder: the rate limit counts pings (60 answered, 60 refused, then 1008).
    assert most_queued < 2048
    pongs = 0
    with trio.fail_after(5):
        while (event := await raw.next_of((Pong, CloseConnection))) is not None and isinstance(event, Pong):
            pongs += 1
    assert isinstance(event, CloseConnection) and event.code == 1008
    assert pongs <= 61
    await raw.stream.aclose()


async def test_endless_empty_fragments_close_the_connection_and_cost_no_memory(srv: RunningServer) -> None:
    async with connect(srv.url, user="polite") as polite:
        raw = await Raw.open(srv, "fragmenter")
        before = rss_bytes()
        first = raw.ws.send(TextMessage(data="{", message_finished=False))
        empty = b"\x00\x80\x00\x00\x00\x00"  # FIN=0, continuation, masked, no payload
        with contextlib.suppress(trio.BrokenResourceError):
            await raw.stream.send_all(first + empty * 200_000)  # 1.2 MB of nothing
        closed = await raw.next_of(CloseConnection)
        assert closed is not None and (closed.code, closed.reason) == (1008, "message in more than 64 frames")
        await raw.stream.aclose()
        assert rss_bytes() - before < 20 * 2**20  # generous: the attack itself holds nothing
        # A message in a few fragments is still a message.
        fine = await Raw.open(srv, "fragments")
        text = json.dumps({"type": "presence.ping", "id": "frag"})
        wire = b"".join(fine.ws.send(TextMessage(data=text[i:i + 4], message_finished=i + 4 >= len(text)))
                        for i in range(0, len(text), 4))
        await fine.stream.send_all(wire)
        assert (await fine.reply("frag"))["type"] == "presence.pong"
        await fine.stream.aclose()
        assert (await reply_of(polite, "presence.ping"))["type"] == "presence.pong"


async def test_a_polite_client_stays_prompt_while_three_connections_send_endless_fragments(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    srv = await serve(nursery, tmp_path, server={"new_connections_per_ip_per_s": 0})  # abusers reconnect at will
    closes: list[int] = []
    empty = b"\x00\x80\x00\x00\x00\x00" * 2000

    async def send_forever(raw: Raw) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await raw.stream.send_all(raw.ws.send(TextMessage(data="{", message_finished=False)))
            while True:
                await raw.stream.send_all(empty)

    async def abuse(name: str, until: float) -> None:
        while trio.current_time() < until:
            raw = await Raw.open(srv, name)
            async with trio.open_nursery() as attack:

                attack.start_soon(send_forever, raw)
                with trio.move_on_at(until + 2):
                    closed = await raw.next_of(CloseConnection)
                    closes.append(closed.code if closed is not None else 1006)
                attack.cancel_scope.cancel()
            await raw.stream.aclose()

    latencies: list[float] = []
    async with connect(srv.url, user="polite") as polite, trio.open_nursery() as abusers:
        until = trio.current_time() + 1.5
        for i in range(3):
            abusers.start_soon(abuse, f"abuser{i}", until)
        while trio.current_time() < until:
            started = time.perf_counter()
            assert (await reply_of(polite, "presence.ping"))["type"] == "presence.pong"
            latencies.append(time.perf_counter() - started)
            await trio.sleep(0.05)  # 20 a second: within the polite client's own rate limit
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert len(closes) >= 3 and set(closes) == {1008}  # each abuser is closed, again and again
    assert p99 < 0.25, f"p99 {p99 * 1000:.0f} ms over {len(latencies)} pings"


async def test_refused_requests_are_audited_without_flooding_the_log(
    srv: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with connect(srv.url, user="prober") as prober:
        for i in range(50):
            await prober.send({"type": "system.stats", "id": i})
        codes = [(await next_reply(prober))["data"]["code"] for _ in range(50)]
    assert codes == ["FORBIDDEN"] * 50  # every request still gets its reply
    audited = [r for r in caplog.records if r.name == "signald.audit" and "refused code=FORBIDDEN" in r.getMessage()]
    assert 10 <= len(audited) <= 12  # the first ten, then one every 2 s
