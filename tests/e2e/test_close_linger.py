"""A server's close reaches a client that is behind on its reads and kept sending (a lingering close).

Closing a socket with bytes of the peer's not yet read makes the kernel answer with a TCP reset,
and a reset throws away what the server's socket had not delivered yet: our close frame, when the
client is behind on its reads. The client then sees its connection reset (1006) instead of the
close code. The server therefore half-closes after its close frame and reads (and drops) what the
client still sends until it closes too, within a bounded time and number of bytes.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
from conftest import daemon
from rawwire import OP_CLOSE, OP_TEXT, close_payload, masked, server_frames, until_eof, welcomed

PING = masked(OP_TEXT, b'{"type":"presence.ping","id":1}')


@pytest.mark.parametrize("behind", [100, 600])  # its pongs: in the server's socket only / also queued in the outbox
async def test_sigterm_close_frame_reaches_a_client_that_kept_sending_and_read_only_after_the_wait(
    tmp_path: Path, behind: int
) -> None:
    async with daemon(tmp_path, "d", config_text="send_queue = 65536\n") as (process, url):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        # A small receive buffer: the pongs of these pings fill it and wait in the server's socket,
        # so our close frame stays undelivered there until the client reads.
        stream = await welcomed(port, "behind", receive_buffer=4096)
        await stream.send_all(PING * behind)
        process.send_signal(signal.SIGTERM)
        # Past the server's 0.5 s wait for close replies, still sending (these are not answered)
        # and not reading.
        with trio.move_on_after(0.8):
            while True:
                try:
                    await stream.send_all(PING)
                except trio.BrokenResourceError:  # reset by the server: what it had not delivered is lost
                    break
                await trio.sleep(0.02)
        with trio.fail_after(5):
            try:
                wire = await until_eof(stream)
            except trio.BrokenResourceError as exc:
                raise AssertionError(f"the connection was reset, no close frame (1006): {exc!r}") from None
        await stream.aclose()
        close = close_payload(1001, b"server shutting down")
        assert wire.endswith(bytes((0x80 | OP_CLOSE, len(close))) + close), f"no close frame (1006): ...{wire[-60:]!r}"
        frames = server_frames(wire)
        # Pongs came first, more than the client's receive buffer held (the queued ones a stopping server drops)
        assert len(frames) > 50 and {opcode for opcode, _ in frames[:-1]} == {OP_TEXT}
        with trio.fail_after(5):
            assert await process.wait() == 0
