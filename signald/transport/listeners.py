"""Listening sockets that several processes share (``SO_REUSEPORT``): ``signald serve --workers N``.

Each node process binds its own socket to the same address and port; the kernel spreads new
connections over them, so the machine's cores all serve. Linux only (``SO_REUSEPORT`` with load
balancing between processes).
"""

from __future__ import annotations

import socket

import trio


async def reuse_port_listeners(host: str, port: int, backlog: int = 4096) -> list[trio.SocketListener]:
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
