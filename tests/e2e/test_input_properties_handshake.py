"""Odd handshakes never hang or break the daemon: hypothesis-drawn upgrade requests against one daemon
process with an Origin allow-list and trusted proxies.

Each example writes one upgrade request in raw bytes -- the upgrade headers right, missing, repeated or
wrong; subprotocol lists of ours, of others, empty, repeated; ``Origin`` allowed, refused, ``null``,
repeated; ``?user=`` valid or not; ``X-Forwarded-For`` and ``Forwarded`` chains of trusted and
untrusted hops, ports, IPv4-mapped and IPv6 addresses and garbage; request lines and headers over
16 KiB -- and checks the answer docs/protocol.md gives, in its order: what HTTP cannot parse 400/431,
an upgrade that cannot be accepted 400 (426 for a version other than 13), a subprotocol mismatch
HTTP 400, a refused ``Origin`` the upgrade plus ``FORBIDDEN`` and close 4403, a bad user
``UNAUTHORIZED`` and 4401, else ``welcome`` on the subprotocol chosen in the client's order; and that
the daemon's audit line for an accepted connection names the client address the proxy rule picks
(the rightmost ``X-Forwarded-For`` hop that is not a trusted proxy, or the ``Forwarded: for=`` one
without that header; garbage ends the walk at the last trusted hop). Every answer comes within 5 s
and the daemon logs no traceback.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterator
from typing import Any

import attrs
import msgspec
import pytest
import trio
from daemon_process import Served, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, TextMessage

TRUSTED = ["127.0.0.1", "10.0.0.0/8", "fd00::/8"]
CONFIG = f"""
[limits]
max_connections_per_user = 1000
[server]
new_connections_per_ip_per_s = 0
heartbeat_s = 3600.0
allowed_origins = ["https://good.example", "http://also.example:8080"]
trusted_proxies = {TRUSTED!r}
"""
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
users = itertools.count(1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("props-handshake"), CONFIG) as served:
        yield served


@attrs.frozen
class Expected:
    status: int | None = None  # an HTTP refusal (None: the upgrade completes)
    code: str | None = None  # after a 101: the refusal's error code (None: welcome)
    close: int | None = None
    subprotocol: str | None = None  # selected in the 101
    client: str | None = None  # the address the audit line names


# --------------------------------------------------------------------------- the proxy rule, as documented

NETWORKS = [ipaddress.ip_network(n) for n in TRUSTED]


def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def client_of(xff: list[str], forwarded: list[str]) -> str:
    hops = [hop for value in xff for hop in value.split(",")]
    if not xff:
        hops = [pair.strip().partition("=")[2] for value in forwarded for element in value.split(",")
                for pair in element.split(";") if pair.strip().partition("=")[0].lower() == "for"]
    client: Any = ipaddress.ip_address("127.0.0.1")
    for hop in reversed(hops):
        found = address(hop)
        if found is None:
            break
        client = found
        if not any(found.version == n.version and found in n for n in NETWORKS):
            break
    return str(client)


HOPS = ["10.0.0.5", "127.0.0.1", "::ffff:10.1.2.3", "fd00::7", "1.2.3.4", "2001:db8::1", "[2001:db8::2]:443",
        "5.6.7.8:1234", "::ffff:9.9.9.9", "unknown", "_hidden", "", "999.1.1.1", '"[fd00::9]:80"', " 8.8.4.4 "]


# --------------------------------------------------------------------------- requests


FAULTS = ["method", "connection", "version", "no_version", "key", "no_key", "upgrade", "no_host", "long_line",
          "long_header", "user"]


@st.composite
def handshakes(draw: st.DrawFn, faults: bool) -> tuple[bytes, Expected]:
    """An upgrade request (with one fault of the request itself when ``faults``) and its documented answer."""
    user = f"u{next(users)}"
    fault = draw(st.sampled_from(FAULTS)) if faults else None
    if fault == "user":
        user = draw(st.sampled_from(["", "a%20b", "x" * 129, "%00", "%ff"]))
    query = {"user": user}
    target = "/?" + "&".join(f"{k}={v}" for k, v in query.items())
    if fault == "long_line":
        target += "&pad=" + "p" * 40_000
    method = "POST" if fault == "method" else "GET"
    headers: list[tuple[str, bytes]] = []
    if fault != "no_host":
        headers.append(("Host", b"signald.example"))
    headers.append(("Upgrade", b"h2c" if fault == "upgrade" else draw(st.sampled_from([b"websocket", b"WebSocket"]))))
    headers.append(("Connection", b"keep-alive" if fault == "connection" else
                    draw(st.sampled_from([b"Upgrade", b"keep-alive, Upgrade", b"upgrade"]))))
    if fault != "no_version":
        headers.append(("Sec-WebSocket-Version", b"8" if fault == "version" else b"13"))
    if fault != "no_key":
        headers.append(("Sec-WebSocket-Key", draw(st.sampled_from([b"short", b"AAAA", b"not base64!!"])) if
                        fault == "key" else draw(st.sampled_from([KEY, b"AAAAAAAAAAAAAAAAAAAAAA=="]))))
    offers = draw(st.lists(st.lists(st.sampled_from(["signald.v1", "signald.v1.msgpack", "foo", "SIGNALD.V1", "",
                                                     " signald.v1 "]), min_size=1, max_size=3), max_size=2))
    for offer in offers:
        headers.append(("Sec-WebSocket-Protocol", ",".join(offer).encode()))
    origins = draw(st.lists(st.sampled_from([b"https://good.example", b"HTTPS://GOOD.EXAMPLE:443/",
                                             b"http://also.example:8080", b"https://evil.example", b"null",
                                             b"https://good.example.evil", b"\xff"]), max_size=2))
    headers += [("Origin", o) for o in origins]
    xff = draw(st.lists(st.lists(st.sampled_from(HOPS), min_size=1, max_size=4), max_size=2))
    headers += [("X-Forwarded-For", ",".join(hops).encode()) for hops in xff]
    forwarded = [", ".join(f"{draw(st.sampled_from(['for', 'For']))}={hop}{suffix}" for hop in hops)
                 for hops, suffix in draw(st.lists(st.tuples(st.lists(st.sampled_from(HOPS), min_size=1, max_size=3),
                                                             st.sampled_from(["", ";proto=https", ";by=10.0.0.1"])),
                                                   max_size=2))]
    headers += [("Forwarded", f.encode()) for f in forwarded]
    if fault == "long_header":
        headers.append(("X-Padding", b"p" * 40_000))
    wire = (f"{method} {target} HTTP/1.1\r\n".encode()
            + b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers) + b"\r\n")

    if fault in ("long_line", "long_header", "no_host"):
        return wire, Expected(status=431 if fault != "no_host" else 400)
    if fault in ("method", "connection", "key", "no_key", "upgrade", "no_version"):
        return wire, Expected(status=400)
    if fault == "version":
        return wire, Expected(status=426)
    offered = [piece.strip() for offer in offers for piece in ",".join(offer).split(",")]
    ours = [p for p in offered if p in ("signald.v1", "signald.v1.msgpack")]
    if offered and not ours:
        return wire, Expected(status=400)
    subprotocol = ours[0] if ours else None
    good = {b"https://good.example", b"HTTPS://GOOD.EXAMPLE:443/", b"http://also.example:8080"}
    if not all(o in good for o in origins):
        return wire, Expected(code="FORBIDDEN", close=4403, subprotocol=subprotocol)
    if fault == "user":
        return wire, Expected(code="UNAUTHORIZED", close=4401, subprotocol=subprotocol)
    client = client_of([h.decode("latin-1") for n, h in headers if n == "X-Forwarded-For"],
                       [h.decode("latin-1") for n, h in headers if n == "Forwarded"])
    return wire, Expected(subprotocol=subprotocol, client=client)


# --------------------------------------------------------------------------- the checks

AUDIT_CLOSED = re.compile(r"connection closed user=\S+ session=(\S+) peer=(\S+)")


async def shake(served: Served, wire: bytes, expected: Expected) -> str | None:
    """Send the request, check the answer; the session id of a welcomed connection."""
    got = b""
    async with await trio.open_tcp_stream("127.0.0.1", served.port) as stream:
        await stream.send_all(wire)
        with trio.fail_after(5):
            while b"\r\n\r\n" not in got:
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed without an answer: {got!r}"
                got += chunk
            head, _, rest = got.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if expected.status is not None:
                assert status == expected.status, (expected, head)
                return None
            assert status == 101, (expected, got[:300])
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
            assert fields.get(b"Sec-WebSocket-Protocol", b"").decode() == (expected.subprotocol or ""), fields
            ws = Connection(ConnectionType.CLIENT)
            ws.receive_data(rest)
            events = list(ws.events())
            while not events or (expected.code is not None and not any(isinstance(e, CloseConnection)
                                                                       for e in events)):
                chunk = await stream.receive_some(65536)
                assert chunk, events
                ws.receive_data(chunk)
                events += list(ws.events())
    first = events[0]
    assert isinstance(first, TextMessage | BytesMessage)
    binary = expected.subprotocol == "signald.v1.msgpack"
    assert isinstance(first, BytesMessage) == binary
    message = msgspec.msgpack.decode(first.data) if binary else msgspec.json.decode(first.data)
    if expected.code is not None:
        assert (message["type"], message["data"]["code"]) == ("error", expected.code), message
        [close] = [e for e in events if isinstance(e, CloseConnection)]
        assert close.code == expected.close
        return None
    assert message["type"] == "welcome", message
    return str(message["data"]["session_id"])


async def peer_logged(served: Served, session: str, since: int) -> str:
    with trio.fail_after(5):
        while True:
            for found in AUDIT_CLOSED.finditer(served.log_text(since)):
                if found.group(1) == session:
                    return found.group(2)
            await trio.sleep(0.01)


@pytest.mark.parametrize("faults", [False, True], ids=["well-formed", "faulty"])
@settings(max_examples=80, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_odd_handshake_gets_its_documented_answer(daemon: Served, faults: bool, data: st.DataObject) -> None:
    wire, expected = data.draw(handshakes(faults), label="handshake")
    logged = daemon.log_size()
    session = trio.run(shake, daemon, wire, expected)
    if session is not None:
        assert trio.run(peer_logged, daemon, session, logged) == expected.client, wire
    assert daemon.tracebacks(since=logged) == []


def test_zz_the_daemon_logged_no_traceback_at_all(daemon: Served) -> None:
    assert daemon.tracebacks() == []
