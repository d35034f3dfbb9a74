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
        for sock in clients:
            sock.sendall(b"G")  # clients speak first: what the kernel waits for before it queues them
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
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"G")
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
            with socket.create_connection(("127.0.0.1", port)) as client, trio.fail_after(5):
                client.sendall(b"G")
                await trio.sleep_forever()
    assert raised.group_contains(OSError, match="injected")


@pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="Linux only")
async def test_a_connection_is_accepted_once_its_first_bytes_arrive_or_after_a_silent_second() -> None:
    """The kernel holds a connection that has sent nothing (TCP_DEFER_ACCEPT): accepted before its
    request arrived, it would cost the daemon an awaited read under the connect timeout."""
    handled: list[tuple[int, trio.abc.Stream]] = []
    async with trio.open_nursery() as nursery:
        port = await serving(nursery, handled, Passes())
        with socket.create_connection(("127.0.0.1", port)) as silent, \
                socket.create_connection(("127.0.0.1", port)) as speaking:
            await trio.sleep(0.3)
            assert handled == []  # both connected, neither has sent anything
            speaking.sendall(b"GET / HTTP/1.1\r\n")
            with trio.fail_after(0.5):
                while not handled:  # noqa: ASYNC110 - a list the handler fills
                    await trio.sleep(0.01)
            assert len(handled) == 1
            with trio.fail_after(listeners_module.DEFER_ACCEPT_S + 2):  # the silent one, all the same
                while len(handled) < 2:  # noqa: ASYNC110 - a list the handler fills
                    await trio.sleep(0.01)
            silent.sendall(b"x")  # (it is still open)
        for _, stream in handled:
            await stream.aclose()
        nursery.cancel_scope.cancel()
