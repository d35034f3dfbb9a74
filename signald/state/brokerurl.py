"""``cluster.broker_url``: which Redis the nodes share, and how to print its URL without secrets.

Forms (docs/cluster.md):

``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix://[:password@]PATH[?db=N]``
    one Redis, given to coredis's ``Redis.from_url`` unchanged.
``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=P]``
    Redis Sentinel: the sentinels to ask (port 26379 when left out) for the primary of ``service``.
    The user and password are the data nodes' (the primary's); the sentinels are asked without
    one unless ``sentinel_password`` is given. This is the form of the Redis-Sentinel-Url package,
    redisvl and prefect-redis, so one URL serves those tools and signald.
``redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0]``
    Redis Cluster: the seed nodes to ask (port 6379 when left out) which shard owns signald's hash
    slot (:mod:`signald.cluster.connect`). A cluster has database 0 only. Over TLS
    (``rediss+cluster://``) it is refused, with the reason.

Error handling: :func:`parse_broker_url` raises :class:`ValueError` with a message that never
contains a password; :attr:`BrokerURL.shown` is what logs and errors print instead of the URL.
"""

from __future__ import annotations

import urllib.parse
from typing import Final, Literal, NamedTuple

from signald.state.dburl import redact

__all__ = ["CLUSTER_FORM", "SENTINEL_PORT", "BrokerURL", "parse_broker_url"]

SENTINEL_PORT: Final = 26379
CLUSTER_PORT: Final = 6379
SINGLE_SCHEMES: Final = ("redis", "rediss", "unix")
SENTINEL_SCHEME: Final = "redis+sentinel"
CLUSTER_SCHEME: Final = "redis+cluster"
CLUSTER_FORM: Final = "redis+cluster://[:password@]host:port[,host:port...]"
FORMS: Final = ("redis://host:port/db, rediss://..., unix://PATH, "
                "redis+sentinel://[:password@]host:port[,host:port...]/service[/db] or " + CLUSTER_FORM)
CLUSTER_TLS_REFUSAL: Final = ("TLS to a Redis Cluster (rediss+cluster://) is not supported: use redis+cluster:// "
                              "on a private network, or one Redis or Sentinel over TLS (rediss://)")


class BrokerURL(NamedTuple):
    """A parsed ``cluster.broker_url``."""

    kind: Literal["redis", "sentinel", "cluster"]
    url: str
    """For ``redis``: the URL as given (for ``Redis.from_url``)."""
    db: int
    hosts: tuple[tuple[str, int], ...] = ()
    """The sentinels (``sentinel``) or the seed nodes (``cluster``)."""
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
    if scheme == "rediss+cluster":
        raise ValueError(CLUSTER_TLS_REFUSAL)
    if scheme == CLUSTER_SCHEME:
        return _cluster(url, shown)
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


def _login_and_hosts(url: str, shown: str, what: str, default_port: int
                     ) -> tuple[str | None, str | None, list[tuple[str, int]], str, str]:
    """The user, password, ``host[:port]`` list, path and query of a URL that lists several servers."""
    rest, _, query = url.partition("://")[2].partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    servers = []
    for member in hosts.split(","):
        host, port = _host_port(member.strip(), default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a {what} must be host[:port], got {member.strip()!r} in {shown!r}")
        servers.append((host, int(port)))
    return username, password, servers, path, query


def _cluster(url: str, shown: str) -> BrokerURL:
    username, password, seeds, path, query = _login_and_hosts(url, shown, "seed node", CLUSTER_PORT)
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has database 0 only: {shown!r}")
    if query:
        raise ValueError(f"a redis+cluster:// URL takes no options: {shown!r}")
    return BrokerURL("cluster", url, 0, tuple(seeds), "", username, password, None, shown)


def _sentinel(url: str, shown: str) -> BrokerURL:
    username, password, sentinels, path, query = _login_and_hosts(url, shown, "sentinel", SENTINEL_PORT)
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


def _host_port(member: str, default_port: int) -> tuple[str, str]:
    """``host[:port]`` or ``[v6]:port``; ``default_port`` when left out."""
    if member.startswith("["):
        host, _, after = member[1:].partition("]")
        return host, after[1:] if after.startswith(":") else (str(default_port) if not after else "x")
    host, colon, port = member.rpartition(":")
    return (host, port) if colon else (member, str(default_port))
