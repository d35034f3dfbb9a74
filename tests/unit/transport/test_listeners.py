"""The accept loop (signald.transport.listeners.serve_streams) on real loopback sockets."""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from typing import Any

import pytest
import trio
import trio.testing

from signald.transport import listeners as listeners_module
from signald.transport.listeners import serve_streams


class Passes:
    """Counts the scheduler's passes: a task that only yields, once per pass."""

    def __init__(self) -> None:
        self.count = 0

    async def run(self) -> None:
        while True:
            self.count += 1
            await trio.lowlevel.checkpoint()


async def serving(nursery: trio.Nursery, handled: list[tuple[int, trio.abc.Stream]], passes: Passes,
                  ssl_context: ssl.SSLContext | None = None) -> int:
    """serve_streams on a fresh loopback listener; each stream is recorded with the pass it came in."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]

    async def handler(stream: trio.abc.Stream) -> None:
        handled.append((passes.count, stream))

    await nursery.start(lambda task_status: serve_streams(handler, [listener], handler_nursery=nursery,
                                                          ssl_context=ssl_context, task_status=task_status))
    return int(port)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_every_queued_connection_is_accepted_in_the_same_pass(tls: bool) -> None:
    """A burst that arrives while the server is busy is taken from the listen queue at once, not one
    connection per scheduler pass (under load a pass is long: the queue would fill); over TLS too."""
    handled: list[tuple[int, trio.abc.Stream]] = []
    passes = Passes()
    context = None
    if tls:
        import trustme

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    async with trio.open_nursery() as nursery:
        port = await serving(nursery, handled, passes, context)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(passes.run)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]  # queued: no checkpoint
        with trio.fail_after(5):
            while len(handled) < 40:  # noqa: ASYNC110 - a list the handler fills
                await trio.sleep(0.01)
        # one pass: trio shuffles the tasks of a pass, so the counter may tick amid the handlers (2
        # values); taken one per pass they would span about 40
        assert len({seen for seen, _ in handled}) <= 2, "accepted over several passes"
        assert all(isinstance(stream, trio.SSLStream) == tls for _, stream in handled)
        for sock in clients:
            sock.close()
        for _, stream in handled:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_accept_errors_wait_when_out_of_descriptors_and_skip_a_reset_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[tuple[int, trio.abc.Stream]] = []
    failures = [errno.EMFILE, errno.ECONNABORTED]
    real_accept = socket.socket.accept

    def accept(self: socket.socket) -> Any:
        if failures:
            raise OSError(failures.pop(0), "injected")
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", accept)
    caplog.set_level(logging.ERROR, logger="signald.server")
    async with trio.open_nursery() as nursery:
        port = await serving(nursery, handled, Passes())
        with socket.create_connection(("127.0.0.1", port)):
            with trio.fail_after(5):
                while not handled:  # noqa: ASYNC110 - a list the handler fills
                    await trio.sleep(0.01)
        assert failures == []
        assert [r.getMessage() for r in caplog.records] == [
            f"accept failed: {os.strerror(errno.EMFILE)}; accepting again in "
            f"{listeners_module.CAPACITY_WAIT_S:.1f} s"]
        await handled[0][1].aclose()
        nursery.cancel_scope.cancel()


async def test_another_accept_error_ends_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    def accept(self: socket.socket) -> Any:
        raise OSError(errno.EINVAL, "injected")

    monkeypatch.setattr(socket.socket, "accept", accept)
    with pytest.raises(ExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            port = await serving(nursery, [], Passes())
            with socket.create_connection(("127.0.0.1", port)), trio.fail_after(5):
                await trio.sleep_forever()
    assert raised.group_contains(OSError, match="injected")
