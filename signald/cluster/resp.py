"""signald's own Redis connection for its two hot paths: the writer's pipelines and the pub/sub.

Everything else (the heartbeat, the snapshot loads, the call decisions' scripts, Sentinel's
discovery) goes through coredis. These two paths carry every event a node shares, and coredis
costs them more than the daemon's whole work for the event: measured here (Trio, one local Redis,
200-byte payloads), a coredis pipeline of one ``PUBLISH`` took 384 µs of CPU against 92 µs for the
same bytes written and read on a Trio stream, and a pub/sub message read with ``get_message()``
50 µs against under 2 µs. The RESP protocol itself is not written here: ``hiredis`` (the C parser
Redis maintains) packs the commands (:func:`hiredis.pack_command`) and parses the replies
(:class:`hiredis.Reader`); this module only opens the stream and moves bytes.

Connecting follows ``cluster.broker_url`` as coredis reads it: ``redis://`` and ``rediss://``
(TLS, with coredis's ``ssl_*`` query options and defaults), ``unix://PATH``, the user and password
(``AUTH``), the database (``SELECT``); under Sentinel, the address the sentinels give, checked to
be a primary (``ROLE``) as coredis checks it.
"""

from __future__ import annotations

import os
import ssl
import urllib.parse
from typing import Any, Final, NamedTuple

import hiredis
import trio

from signald.state.brokerurl import BrokerURL

__all__ = ["Endpoint", "Link", "LinkError", "endpoint_of", "open_link", "pack"]

READ_BYTES: Final = 65536
CERT_REQS: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class LinkError(Exception):
    """The connection failed, closed, or Redis refused a command (the reply's text is the message)."""


class Endpoint(NamedTuple):
    """Where one Redis is and how to log in (a Sentinel's primary: host and port asked each time)."""

    host: str = ""
    port: int = 6379
    path: str | None = None  # a unix socket
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0


def endpoint_of(broker: BrokerURL) -> Endpoint:
    """The endpoint of a single Redis (``redis``, ``rediss`` or ``unix``); under Sentinel or on a
    Redis Cluster only the login and database (the host is the primary the sentinels or the seed
    nodes name).

    The URL is read by coredis's rules, so every connection of the node goes to the same place:
    the user and password as written (not percent-decoded) or from ``?username=``/``?password=``,
    ``?db=`` before the path's database, and the ``ssl_*`` options of ``rediss``."""
    if broker.kind != "redis":
        return Endpoint(username=broker.username, password=broker.password, db=broker.db)
    parts = urllib.parse.urlsplit(broker.url)
    query = {key: values[0] for key, values in urllib.parse.parse_qs(parts.query).items() if values}
    username = parts.username or query.get("username") or None
    password = parts.password or query.get("password") or None
    if parts.scheme.lower() == "unix":
        return Endpoint(path=parts.path, username=username, password=password, db=broker.db)
    tls = _tls_context(query) if parts.scheme.lower() == "rediss" else None
    return Endpoint(parts.hostname or "localhost", parts.port or 6379, None, tls, username, password, broker.db)


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    """The context coredis builds for the same ``rediss://`` URL (its defaults: the certificate is
    checked if the server sends one, the host name is not), so both connections agree."""
    context = ssl.create_default_context()
    certfile, keyfile, ca_certs = query.get("ssl_certfile"), query.get("ssl_keyfile"), query.get("ssl_ca_certs")
    if certfile and keyfile:
        context.load_cert_chain(certfile=certfile, keyfile=keyfile)
    if ca_certs:
        if os.path.isdir(ca_certs):
            context.load_verify_locations(capath=ca_certs)
        else:
            context.load_verify_locations(cafile=ca_certs)
    context.check_hostname = query.get("ssl_check_hostname", "").upper() in ("1", "T", "TRUE", "Y", "YES")
    context.verify_mode = CERT_REQS[query.get("ssl_cert_reqs", "optional").lower()]
    return context


def pack(*args: str | bytes | int) -> bytes:
    """One command as RESP bytes."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # (its stub: a 1-tuple)
    return packed


class Link:
    """One open connection to Redis: commands out, replies (and pub/sub pushes) in, in order.

    One task may send while another receives (the pub/sub reader); sends are serialized.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._reader = hiredis.Reader()
        self._send_lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkError(f"the connection to Redis failed: {exc or type(exc).__name__}") from exc

    async def reply(self) -> Any:
        """The next reply or push; an error reply is returned as a :class:`hiredis.ReplyError`."""
        reader = self._reader
        while (reply := self.ready()) is False:
            try:
                data = await self._stream.receive_some(READ_BYTES)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkError(f"the connection to Redis failed: {exc or type(exc).__name__}") from exc
            if not data:
                raise LinkError("Redis closed the connection")
            reader.feed(data)  # type: ignore[arg-type]  # (a bytearray is read as well)
        return reply

    def ready(self) -> Any:
        """A reply already read and parsed, or False (the pub/sub reader drains these before it
        waits on the socket again). What is not RESP (a proxy's or a TLS port's answer) is a
        :class:`LinkError`, as a failed connection is."""
        try:
            return self._reader.gets()
        except hiredis.ProtocolError as exc:
            raise LinkError(f"not a Redis reply: {exc}") from exc

    async def call(self, data: bytes, count: int) -> list[Any]:
        """Send ``count`` packed commands at once and return their ``count`` replies, in order."""
        await self.send(data)
        return [await self.reply() for _ in range(count)]

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)


def raise_on_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise LinkError(str(reply))


async def open_link(endpoint: Endpoint, *, primary: bool = False) -> Link:
    """Connect, log in and select the database, in one round trip; ``primary``: also check that
    the server is a primary (a demoted one, after a failover, is refused)."""
    try:
        stream: trio.abc.Stream
        if endpoint.path is not None:
            stream = await trio.open_unix_socket(endpoint.path)
        else:
            stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        if endpoint.tls is not None:
            tls = trio.SSLStream(stream, endpoint.tls, server_hostname=endpoint.host)
            await tls.do_handshake()
            stream = tls
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        where = endpoint.path or f"{endpoint.host}:{endpoint.port}"
        raise LinkError(f"cannot connect to Redis at {where}: {exc or type(exc).__name__}") from exc
    link = Link(stream)
    try:
        setup: list[bytes] = []
        if endpoint.password is not None:
            login = (endpoint.username, endpoint.password) if endpoint.username else (endpoint.password,)
            setup.append(pack("AUTH", *login))
        if endpoint.db:
            setup.append(pack("SELECT", endpoint.db))
        if primary:
            setup.append(pack("ROLE"))
        if setup:
            replies = await link.call(b"".join(setup), len(setup))
            raise_on_error(replies)
            if primary and replies[-1][0] != b"master":
                raise LinkError(f"{endpoint.host}:{endpoint.port} is not a primary (yet)")
    except BaseException:
        await link.aclose()
        raise
    return link
