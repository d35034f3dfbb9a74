"""The closing handshake a client starts, against a real server, byte by byte (RFC 6455 5.5.1, 7).

Most clients close with one plain close frame, which the server answers without wsproto
(signald.transport.framing.lone_close); everything else goes through wsproto. Either way the
answer must be the same: the peer's code echoed (an empty close frame for a close without
code), then TCP closed by the server; a close that breaks the protocol fails the connection
with 1002, or 1007 for a reason that is not UTF-8.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from rawwire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_payload,
    masked,
    server_frames,
    until_eof,
    welcomed,
)

from signald.logfmt import FIELDS
from signald.server import RunningServer

PING = b'{"type":"presence.ping","id":"p"}'


async def closed_with(server: RunningServer, *writes: bytes) -> list[tuple[int, bytes]]:
    """What the server writes after the welcome when a client sends ``writes`` (each its own send,
    read by the server on its own), until it closes TCP."""
    stream = await welcomed(server.port, "alice")
    with trio.fail_after(5):
        for i, wire in enumerate(writes):
            if i:
                await trio.testing.wait_all_tasks_blocked(0.01)  # the server has read the write before
            await stream.send_all(wire)
        frames = server_frames(await until_eof(stream))
    await stream.aclose()
    return frames


def audited_close_code(caplog: pytest.LogCaptureFixture) -> object:
    """The close code in the audit line of the one connection that closed (the client's own, if it closed first)."""
    (closed,) = [r for r in caplog.records if r.getMessage() == "connection closed"]
    return getattr(closed, FIELDS)["close_code"]


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4321, 4999, 1002, 1003, 1007, 1008, 1011, 1012])
@pytest.mark.parametrize("reason", [b"", b"bye", "é".encode() * 61])
async def test_the_server_echoes_the_code_alone_and_closes_tcp(
    server: RunningServer, code: int, reason: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signald.audit")
    assert await closed_with(server, masked(OP_CLOSE, close_payload(code, reason))) == \
        [(OP_CLOSE, close_payload(code))]
    await trio.testing.wait_all_tasks_blocked()
    assert audited_close_code(caplog) == code  # closed by the client, with its code
    assert not server.hub.sessions


async def test_a_close_without_code_is_answered_by_an_empty_close_frame_and_logged_1005(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signald.audit")
    assert await closed_with(server, masked(OP_CLOSE, b"")) == [(OP_CLOSE, b"")]
    await trio.testing.wait_all_tasks_blocked()
    assert audited_close_code(caplog) == 1005


@pytest.mark.parametrize(("payload", "code"), [
    (close_payload(1005), 1002),  # may not be sent
    (close_payload(1006), 1002),
    (close_payload(1015), 1002),
    (close_payload(1004), 1002),  # reserved
    (close_payload(2999), 1002),
    (close_payload(999), 1002),  # not a close code
    (close_payload(5000), 1002),
    (b"\x03", 1002),  # one byte
    (close_payload(1000, b"\xff\xfe"), 1007),  # not UTF-8
    (close_payload(4000, b"caf\xc3"), 1007),  # cut inside a character
])
async def test_a_close_that_breaks_the_protocol_fails_the_connection(
    server: RunningServer, payload: bytes, code: int
) -> None:
    stream = await welcomed(server.port, "alice")
    await stream.send_all(masked(OP_CLOSE, payload))
    with trio.fail_after(5):
        got = b""
        while not got or server_frames(got)[-1][0] != OP_CLOSE:
            got += await stream.receive_some(65536)
        ((opcode, reply),) = server_frames(got)
        assert opcode == OP_CLOSE and int.from_bytes(reply[:2], "big") == code
        await stream.send_eof()  # the failed server reads nothing more of ours, and waits for our end
        assert await until_eof(stream) == b""
    await stream.aclose()


@pytest.mark.parametrize("cut", [1, 2, 5, 6, 7])
async def test_a_close_frame_cut_over_two_reads_is_echoed(server: RunningServer, cut: int) -> None:
    wire = masked(OP_CLOSE, close_payload(1000, b"done"))
    assert await closed_with(server, wire[:cut], wire[cut:]) == [(OP_CLOSE, close_payload(1000))]


async def test_frames_before_a_close_in_the_same_read_are_handled_first(server: RunningServer) -> None:
    wire = masked(OP_TEXT, PING) + masked(OP_PING, b"hi") + masked(OP_CLOSE, close_payload(1001))
    frames = await closed_with(server, wire)
    assert [opcode for opcode, _ in frames] == [OP_TEXT, OP_PONG, OP_CLOSE]
    assert b'"presence.pong"' in frames[0][1] and frames[1][1] == b"hi"
    assert frames[2] == (OP_CLOSE, close_payload(1001))


async def test_frames_after_a_close_in_the_same_read_are_not_handled(server: RunningServer) -> None:
    wire = masked(OP_CLOSE, close_payload(1000)) + masked(OP_TEXT, PING)
    assert await closed_with(server, wire) == [(OP_CLOSE, close_payload(1000))]


async def test_a_close_in_the_middle_of_a_fragmented_message_is_echoed(server: RunningServer) -> None:
    wire = masked(OP_TEXT, PING[:10], fin=False)
    assert await closed_with(server, wire, masked(OP_CLOSE, close_payload(4000))) == \
        [(OP_CLOSE, close_payload(4000))]


async def test_a_close_while_frames_are_still_queued_out_ends_with_whole_frames_then_the_echo(
    server: RunningServer,
) -> None:
    """The client stops reading until a backlog builds up in the server (the socket full, frames
    queued behind a half-written one), then closes: what the server still writes is whole frames,
    then the echo, then the end of the stream. (The backlog is more than the kernel's buffers take
    in while the server reads the close: its writer is still mid-write then.)"""
    stream = await welcomed(server.port, "alice", receive_buffer=65536)
    await stream.send_all(masked(OP_TEXT, b'{"type":"room.join","id":1,"data":{"room":"r"}}'))
    got = b""
    with trio.fail_after(10):
        while b'"op_id":1' not in got:
            got += await stream.receive_some(65536)
        (session,) = server.hub.sessions.values()
        for _ in range(20_000):  # until the socket buffers are full (40 MB at most)
            server.publish_to_room("r", "app.bulk", {"blob": "x" * 2000})
            if session.outbox.queued_bytes:
                break
        for _ in range(300):  # more than the kernel's largest send buffer (4 MB here) can ever take in
            server.publish_to_room("r", "app.bulk", {"blob": "y" * 20_000})
        assert session.outbox.queued_bytes > 5_000_000  # a backlog behind the socket
        await stream.send_all(masked(OP_CLOSE, close_payload(1000)))
        await trio.testing.wait_all_tasks_blocked(0.05)  # the server has the close before we read on
        got += await until_eof(stream)
    await stream.aclose()
    frames = server_frames(got)  # fails on a frame cut short
    assert frames[-1] == (OP_CLOSE, close_payload(1000))
    assert all(opcode == OP_TEXT for opcode, _ in frames[:-1])
    await trio.testing.wait_all_tasks_blocked()
    assert not server.hub.sessions
