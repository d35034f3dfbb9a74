"""Bad plain-HTTP input never breaks anything: hypothesis-drawn requests against one real daemon process.

Each example writes one request in raw bytes (so it can be what no HTTP library sends: odd methods,
request targets in absolute form with a broken host, percent-encoding and dots in paths, repeated or
non-ASCII headers, a wrong or missing key, bodies that are not JSON, of the wrong shape, too deep,
holding numbers past 64 bits or past a float, over ``api.max_body_bytes``, chunked) while a JSON and a
MessagePack client sit in ``lobby``, and checks what the contract's "Server API" promises:

- a whole HTTP response comes back, never a dropped connection and never a 500;
- an ``/api/`` answer is ``{"result": ...}`` or ``{"error": {"code", "message"}}`` with the status of
  its code, and the status the request's first fault calls for (precedence: a target that is no URL
  400, a body over the limit 400 ``TOO_LARGE``, an unknown path 404 / 426, a method the path does not
  serve 405, a missing or wrong key 401, a body of the wrong shape 400 ``INVALID_PAYLOAD``, not JSON
  400 ``BAD_REQUEST``);
- both clients stay connected and answer pings, the daemon serves ``/healthz``, and it logs no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import h11
import msgspec
import pytest
import trio
from daemon_process import Served, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signald.client.raw import connect
from signald.protocol.serverapi import STATUS_OF

KEY = "k" * 40
MAX_BODY = 16384  # a body nested 3000 deep fits, and is BAD_REQUEST for its depth
CONFIG = f"""
[limits]
rate_per_s = 100000.0
rate_burst = 100000
user_rate_per_s = 100000.0
user_rate_burst = 100000
[server]
new_connections_per_ip_per_s = 0
heartbeat_s = 3600.0
[api]
keys = ["{KEY}"]
max_body_bytes = {MAX_BODY}
"""
CALLS: dict[str, tuple[str, Any]] = {  # path -> (method, a valid body or query)
    "/api/v1/publish": ("POST", {"room": "lobby", "type": "app.t", "data": {"n": [1, 2.5, "x"]}, "store": False}),
    "/api/v1/notify": ("POST", {"user_id": "mp", "type": "app.t", "data": None}),
    "/api/v1/disconnect": ("POST", {"user_id": "ghost", "reason": "bye"}),
    "/api/v1/kick": ("POST", {"room": "lobby", "user_id": "ghost"}),
    "/api/v1/presence": ("GET", {"room": "lobby"}),
    "/api/v1/history": ("GET", {"room": "lobby", "limit": "5"}),
    "/api/v1/stats": ("GET", {}),
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("props-http"), CONFIG) as served:
        yield served


@attrs.frozen
class Request:
    wire: bytes
    status: int | None  # the status its first fault calls for (None: a valid call, 200)
    code: str | None  # the error code with it, when an /api/ call answers JSON
    why: str


CARRIED_OUT_CODES = frozenset({"NOT_IN_ROOM", "NOT_FOUND", "FORBIDDEN", "CONFLICT"})
OPTIONAL: dict[str, set[str]] = {"/api/v1/publish": {"data", "store"}, "/api/v1/notify": {"data"},
                                  "/api/v1/kick": {"reason"}}
ROOM_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-")


def body_fault(path: str, draw: st.DrawFn) -> tuple[bytes, str | None, str]:
    """The body of ``path`` as JSON with one fault (or none): its bytes, the code it calls for, and why."""
    body = dict(CALLS[path][1])
    fault = draw(st.sampled_from(["none", "wrong_type", "missing", "extra", "big_int", "inf", "deep", "not_json",
                                  "not_object", "surrogate", "unicode"]))
    field = draw(st.sampled_from(sorted(body)))
    if fault == "wrong_type" and field != "data":
        wrong = [v for v in (7, 1.5, True, [], {}, None, "x") if not (
            (field == "store" and v is True) or (field != "store" and v == "x") or (v is None and field == "reason"))]
        body[field] = draw(st.sampled_from(wrong))
        return json.dumps(body).encode(), "INVALID_PAYLOAD", f"{field} = {body[field]!r}"
    if fault == "missing" and field not in OPTIONAL.get(path, set()):
        del body[field]
        return json.dumps(body).encode(), "INVALID_PAYLOAD", f"{field} missing"
    if fault == "extra":
        body[draw(st.sampled_from(["extra", "id", "\u0000"]))] = 1
        return json.dumps(body).encode(), "INVALID_PAYLOAD", "an unknown field"
    if fault == "big_int" and "data" in body:
        body["data"] = {"n": draw(st.sampled_from([2**64, -(2**63) - 1, 10**30]))}
        return json.dumps(body).encode(), "INVALID_PAYLOAD", "data holds an integer past 64 bits"
    if fault == "inf":
        return json.dumps(body).replace("}", ', "x": 1e400}', 1).encode(), "INVALID_PAYLOAD", "1e400"
    if fault == "deep" and "data" in body:
        depth = draw(st.sampled_from([65, 3000]))
        body["data"] = "DEEP"
        text = json.dumps(body).replace('"DEEP"', "[" * depth + "0" + "]" * depth)
        return text.encode(), "INVALID_PAYLOAD" if depth < 100 else "BAD_REQUEST", f"data {depth} deep"
    if fault == "not_json":
        return draw(st.sampled_from([b"{", b"", b"\xff\xfe", b"{'a': 1}", b"NaN", b'{"a":1} x'])), "BAD_REQUEST", \
            "no JSON"
    if fault == "not_object":
        return draw(st.sampled_from([b"[]", b"1", b'"x"', b"null"])), "INVALID_PAYLOAD", "not an object"
    if fault == "surrogate":
        body[field] = "\udc00"
        return json.dumps(body).encode(), "BAD_REQUEST", "a lone surrogate"
    if fault == "unicode" and "data" in body:
        body["data"] = {"rtl": "\u202e", "nfd": "e\u0301", "nul": "\u0000", "deep": [[[[{"a": -0.0}]]]]}
    return json.dumps(body, ensure_ascii=draw(st.booleans())).encode(), None, "valid"


def query_fault(path: str, draw: st.DrawFn) -> tuple[str, str | None, str]:
    query = dict(CALLS[path][1])
    code = None
    why = "valid"
    if query and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(query)))
        value = draw(st.sampled_from(["", "%ff", "1e400", "-1", "99999999999999999999", "a%20b", "%00", "%2e"]))
        query[name] = value
        if name == "room":
            valid = (value != "" and not value.startswith("%") and set(value) <= ROOM_CHARS) or value == "%2e"
        else:  # limit: "" means not given
            valid = value == ""
        code, why = (None, "valid") if valid else ("INVALID_PAYLOAD", f"{name}={value}")
    return "?" + "&".join(f"{k}={v}" for k, v in query.items()), code, why


SHAPES = ["plain", "dots", "percent", "slash", "absolute", "bad_host"]  # of the request target


@st.composite
def requests(draw: st.DrawFn, shape: str) -> Request:
    path = draw(st.sampled_from([*sorted(CALLS), "/healthz", "/readyz", "/", "/api/v2/nope", "/api/v1/"]))
    target, resolved = path, path
    if shape == "dots":
        target = resolved = "/api/v1/../v1/" + path[len("/api/v1/"):] if path.startswith("/api/v1/") else "/./" + path
    elif shape == "percent" and path != "/":
        target = resolved = path[:-1] + f"%{ord(path[-1]):02X}"
    elif shape == "slash":
        target = resolved = path + ("x" if path.endswith("/") else "/")
    elif shape == "absolute":
        target = "http://signald.example" + path
    elif shape == "bad_host":
        target = draw(st.sampled_from(["http://[zz]", "http://[::1", "//["])) + path
    method = CALLS[path][0] if path in CALLS else "GET"
    if draw(st.sampled_from(range(5))) == 4:
        other = "POST" if method == "GET" else "GET"
        method = draw(st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "FOO", other]))
    auth = draw(st.sampled_from(["key", "key", "key", "none", "wrong", "empty", "basic", "lower", "twice", "binary"]))
    headers = [b"Host: signald.example", *{
        "key": [b"Authorization: Bearer " + KEY.encode()], "none": [], "wrong": [b"Authorization: Bearer " + b"x" * 40],
        "empty": [b"Authorization: Bearer "], "basic": [b"Authorization: Basic " + KEY.encode()],
        "lower": [b"authorization: bearer " + KEY.encode()],
        "twice": [b"Authorization: Bearer " + KEY.encode(), b"Authorization: Bearer x"],
        "binary": [b"Authorization: Bearer \xff\xfe"]}[auth]]
    body, fault_code, fault_why = b"", None, "valid"
    if path in CALLS and method == "POST" == CALLS[path][0]:
        body, fault_code, fault_why = body_fault(path, draw)
    elif path in CALLS and method == "GET" == CALLS[path][0]:
        query, fault_code, fault_why = query_fault(path, draw)
        target += query
    headers.append(draw(st.sampled_from([b"Content-Type: application/json", b"Content-Type: text/plain",
                                         b"Content-Type: multipart/form-data; boundary=x", b"X-Nothing: 1"])))
    oversize = draw(st.sampled_from(range(7))) == 6 or len(body) > MAX_BODY
    if body and not oversize and draw(st.booleans()):
        headers.append(b"Transfer-Encoding: chunked")
        cut = draw(st.integers(0, len(body)))
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:cut], body[cut:]) if p) + b"0\r\n\r\n"
    else:
        if oversize:
            body += b" " * (MAX_BODY + 1)  # whitespace after the JSON: over the limit all the same
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    if draw(st.sampled_from(range(8))) == 7:
        headers.append(b"Expect: 100-continue")
    if draw(st.sampled_from(range(8))) == 7:
        headers.append(b"X-Forwarded-For: " + b", ".join([b"1.2.3.4", b"garbage", b"[::1]:80"] * 50))
    wire = f"{method} {target} HTTP/1.1\r\n".encode() + b"\r\n".join(headers) + b"\r\n\r\n" + payload
    # The first fault decides, in the order the daemon meets them.
    routes = {**{p: m for p, (m, _) in CALLS.items()}, "/healthz": "GET", "/readyz": "GET"}
    if oversize:
        return Request(wire, 400, "TOO_LARGE", "over api.max_body_bytes")
    if shape == "bad_host":
        return Request(wire, 400, None, f"{target!r} is no URL")
    if resolved not in routes:
        if resolved.startswith("/api/"):
            return Request(wire, 404, "NOT_FOUND", f"no call {resolved}")
        return Request(wire, 426, None, f"{resolved} is the WebSocket endpoint")
    if method not in (routes[resolved], "HEAD" if routes[resolved] == "GET" else ""):
        return Request(wire, 405, "BAD_REQUEST", f"{method} {resolved}")
    if resolved in CALLS and auth not in ("key", "lower"):
        return Request(wire, 401, "UNAUTHORIZED", f"auth {auth}")
    if fault_code is not None:
        return Request(wire, 400, fault_code, fault_why)
    return Request(wire, None, None, "valid")


# --------------------------------------------------------------------------- the checks


async def exchange(port: int, wire: bytes) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
    """Send ``wire`` on a new connection; the final response and its body (a 100 Continue is skipped)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(wire)
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"x")]))  # h11 needs a request
        client.send(h11.EndOfMessage())
        response: h11.Response | None = None
        body = b""
        with trio.fail_after(10):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    assert data or response is not None, "the connection closed before a response"
                    client.receive_data(data)
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    assert response is not None
                    return response, body


async def exercise(served: Served, request: Request) -> None:
    async with connect(served.url, user="mp", msgpack=True) as mp, connect(served.url, user="js") as js:
        for c in (mp, js):
            await c.request("room.join", {"room": "lobby"})
        response, body = await exchange(served.port, request.wire)
        status = response.status_code
        assert status != 500, (request.why, body)
        headers = dict(response.headers)
        if request.status is None and status != 200:  # valid, refused for what it asks (kick of a non-member)
            error = msgspec.json.decode(body)["error"]
            assert error["code"] in CARRIED_OUT_CODES and status == STATUS_OF[error["code"]], (request.why, error)
            return
        assert status == (request.status or 200), (request.why, request.wire[:300], status, body)
        if request.code is not None:
            assert headers[b"content-type"] == b"application/json", (request.why, headers)
            error = msgspec.json.decode(body)["error"]
            assert set(error) == {"code", "message"} and error["code"] == request.code, (request.why, error)
            assert status == STATUS_OF[error["code"]] or status == 405, (request.why, error)
        elif status == 200 and not request.wire.startswith(b"HEAD"):
            answer = msgspec.json.decode(body)
            assert "result" in answer or answer.get("status") == "ok", (request.why, answer)
        with trio.fail_after(5):
            for c in (mp, js):
                assert (await c.request_raw("presence.ping", op_id="after"))["type"] == "presence.pong"
        assert not mp.closed.is_set() and not js.closed.is_set() and mp.unmatched_errors == js.unmatched_errors == []
        health, _ = await exchange(served.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.status_code == 200


@pytest.mark.parametrize("shape", SHAPES)
@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_bad_request_gets_its_documented_answer_and_breaks_nothing(
    daemon: Served, shape: str, data: st.DataObject
) -> None:
    request = data.draw(requests(shape), label="request")
    logged = daemon.log_size()
    trio.run(exercise, daemon, request)
    assert daemon.tracebacks(since=logged) == []


def test_zz_the_daemon_logged_no_traceback_at_all(daemon: Served) -> None:
    assert daemon.tracebacks() == []
