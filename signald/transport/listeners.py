"""Listening sockets: the accept loop (:func:`serve_streams`), and sockets that several processes share
(``SO_REUSEPORT``): ``signald serve --workers N``.

On Linux the kernel hands a connection to the accept loop only once its first bytes have arrived
(``TCP_DEFER_ACCEPT``): every client of this port speaks first (an HTTP request, a TLS
ClientHello), and a connection accepted before its request arrived cost a second, awaited read
under the connect timeout's cancel scope, for about half the connections of a burst, about a
tenth of a connection's set-up. A client that stays silent is handed over after
:data:`DEFER_ACCEPT_S` all the same, and the connect timeout runs from then.

Each node process binds its own socket to the same address and port; the kernel spreads new
connections over them, so the machine's cores all serve. Linux only (``SO_REUSEPORT`` with load
balancing between processes).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Final

import trio

log = logging.getLogger("signald.server")


async def reuse_port_listeners(host: str, port: int, backlog: int) -> list[trio.SocketListener]:
    """One listener per address ``host`` resolves to, each with ``SO_REUSEPORT`` set."""
    listeners: list[trio.SocketListener] = []
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    try:
        for family, kind, proto, _, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


DEFER_ACCEPT_S: Final = 1  # how long the kernel holds a connection that has sent nothing yet
# accept(2) errors that say the machine is out of something for now: wait and accept again.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_WAIT_S: Final = 0.1


async def serve_streams(
    handler: Callable[[trio.abc.Stream], Awaitable[object]],
    listeners: Sequence[trio.SocketListener],
    *,
    handler_nursery: trio.Nursery,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener and run ``handler(stream)`` for each stream in ``handler_nursery``;
    with ``ssl_context``, the streams are served over TLS (``trio.SSLStream``, the TLS
    handshake done by the first read or write, as ``trio.SSLListener`` does).

    Like ``trio.serve_listeners``, except that the handler owns the stream and must close it:
    trio's wrapper closes every stream once more with ``aclose_forcefully``, which raises and
    catches a ``Cancelled`` per connection (about 5 % of a connection's set-up and tear-down).
    Each listener is drained: every connection waiting in its listen queue (up to
    :data:`ACCEPT_BATCH`) is accepted at once, where ``SocketListener.accept`` takes one per
    scheduler pass. Under load a pass is long (every connection's work of the moment runs in it),
    so one accept per pass let the queue fill: new clients then waited in the kernel until they gave
    up, or sat half-open (a full queue drops the last packet of their TCP handshake).

    Error handling: accept errors that mean the machine is out of descriptors or memory are logged
    and retried after :data:`CAPACITY_WAIT_S`; errors that concern only the connection being
    accepted (it was reset, as trio's ``SocketListener`` ignores them) are skipped; any other one
    ends serving (as in trio).

    Resource handling: the listeners are closed on the way out.
    """
    if hasattr(socket, "TCP_DEFER_ACCEPT"):  # Linux: accepted once its first bytes are there (module docstring)
        for listener in listeners:
            listener.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
    async with trio.open_nursery() as nursery:
        serve = handler if ssl_context is None else partial(_over_tls, handler, ssl_context)
        for listener in listeners:
            nursery.start_soon(_drain_loop, listener, serve, handler_nursery)
        task_status.started()


ACCEPT_BATCH: Final = 256  # the most connections taken from one listen queue per scheduler pass
# accept(2) errors about the connection being accepted only (trio's SocketListener ignores them too)
_CONNECTION_GONE_ERRNOS: Final = frozenset({
    errno.EPERM, errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
    errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH,
})


async def _over_tls(handler: Callable[[trio.abc.Stream], Awaitable[object]], ssl_context: ssl.SSLContext,
                    stream: trio.SocketStream) -> None:
    await handler(trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True))


async def _drain_loop(
    listener: trio.SocketListener, handler: Callable[[trio.abc.Stream], Awaitable[object]],
    handler_nursery: trio.Nursery,
) -> None:
    """Wait until the listening socket is readable, then accept everything queued (a batch)."""
    # accept(2) without waiting needs a plain socket object: one on a duplicate of the listening
    # descriptor (trio's socket offers only an accept that waits, and yields after each stream).
    async with listener:
        with socket.socket(fileno=os.dup(listener.socket.fileno())) as sock:
            sock.setblocking(False)
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(ACCEPT_BATCH):
                    try:
                        accepted, _ = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _CONNECTION_GONE_ERRNOS:
                            continue
                        if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                            raise
                        log.error("accept failed: %s; accepting again in %.1f s", os.strerror(exc.errno or 0),
                                  CAPACITY_WAIT_S)
                        await trio.sleep(CAPACITY_WAIT_S)
                        break
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(accepted))
                    handler_nursery.start_soon(handler, stream)
