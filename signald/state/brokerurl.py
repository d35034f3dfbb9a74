"""``cluster.broker_url``: which Redis the nodes share, and how to print its URL without secrets.

Forms (docs/cluster.md):

``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix://[:password@]PATH[?db=N]``
    one Redis, given to coredis's ``Redis.from_url`` unchanged.
``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=P]``
    Redis Sentinel: the sentinels to ask (port 26379 when left out) for the primary of ``service``.
    The user and password are the data nodes' (the primary's); the sentinels are asked without
    one unless ``sentinel_password`` is given. This is the form of the Redis-Sentinel-Url package,
    redisvl and prefect-redis, so one URL serves those tools and signald.
``redis+cluster://...``
    Redis Cluster: refused with the reason (see :data:`CLUSTER_REFUSAL`).

Error handling: :func:`parse_broker_url` raises :class:`ValueError` with a message that never
contains a password; :attr:`BrokerURL.shown` is what logs and errors print instead of the URL.
"""

from __future__ import annotations

import urllib.parse
from typing import Final, Literal, NamedTuple

from signald.state.dburl import redact

__all__ = ["CLUSTER_REFUSAL", "SENTINEL_PORT", "BrokerURL", "parse_broker_url"]

SENTINEL_PORT: Final = 26379
SINGLE_SCHEMES: Final = ("redis", "rediss", "unix")
SENTINEL_SCHEME: Final = "redis+sentinel"
CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
FORMS: Final = ("redis://host:port/db, rediss://..., unix://PATH or "
                "redis+sentinel://[:password@]host:port[,host:port...]/service[/db]")
CLUSTER_REFUSAL: Final = (
    "Redis Cluster is not supported (a node's PUBLISHes would go to random shards and lose their "
    "order; see docs/cluster.md): use one Redis or Redis Sentinel (redis+sentinel://)")


class BrokerURL(NamedTuple):
    """A parsed ``cluster.broker_url``."""

    kind: Literal["redis", "sentinel"]
    url: str
    """For ``redis``: the URL as given (for ``Redis.from_url``)."""
    db: int
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    shown: str = ""
    """The URL as logs and errors may show it (passwords replaced by ``***``)."""


def parse_broker_url(url: str) -> BrokerURL:
    """What ``url`` selects; :class:`ValueError` (without a password) if it selects nothing."""
    shown = redact(url)  # hides a sentinel_password in the query too
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        return BrokerURL("redis", url, _single_db(url, shown), shown=shown)
    if scheme in CLUSTER_SCHEMES:
        raise ValueError(CLUSTER_REFUSAL)
    if scheme != SENTINEL_SCHEME:
        raise ValueError(f"expected {FORMS}, got {shown!r}")
    return _sentinel(url, shown)


def _single_db(url: str, shown: str) -> int:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError(f"not a valid Redis URL: {shown!r}") from None
    db = urllib.parse.parse_qs(parts.query).get("db", [""])[0]  # first, as coredis reads it
    if not db:
        db = "0" if parts.scheme.lower() == "unix" else parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"the database must be a number: {shown!r}")
    return int(db)


def _sentinel(url: str, shown: str) -> BrokerURL:
    rest = url.partition("://")[2]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    sentinels = []
    for member in hosts.split(","):
        host, port = _host_port(member.strip())
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a sentinel must be host[:port], got {member.strip()!r} in {shown!r}")
        sentinels.append((host, int(port)))
    segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError(f"expected /service_name[/db] after the sentinels: {shown!r}")
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError(f"the database must be a number: {shown!r}")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    sentinel_password = options.pop("sentinel_password", None)
    if options:
        raise ValueError(f"unknown option(s) {', '.join(sorted(options))} (only sentinel_password): {shown!r}")
    return BrokerURL("sentinel", url, int(segments[1]) if len(segments) == 2 else 0, tuple(sentinels), segments[0],
                     username, password, sentinel_password or None, shown)


def _host_port(member: str) -> tuple[str, str]:
    """``host[:port]`` or ``[v6]:port``; the port is 26379 when left out."""
    if member.startswith("["):
        host, _, after = member[1:].partition("]")
        return host, after[1:] if after.startswith(":") else (str(SENTINEL_PORT) if not after else "x")
    host, colon, port = member.rpartition(":")
    return (host, port) if colon else (member, str(SENTINEL_PORT))
