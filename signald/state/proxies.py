"""The client address behind trusted reverse proxies (``server.trusted_proxies``).

Per-address limits and the audit logs use the TCP peer's address, unless that peer is a trusted
proxy: then the client is the rightmost address of ``X-Forwarded-For`` that is not itself a trusted
proxy (each proxy appends the address it got the request from, so everything left of the first
untrusted hop could have been written by the client), or, without that header, the rightmost
``for=`` of ``Forwarded`` (RFC 7239) that is not trusted. Headers from an untrusted peer are
ignored: nobody can pick their own address. Sans-IO: only :mod:`ipaddress`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=8)
def parse_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The networks of ``server.trusted_proxies`` (``10.0.0.1``, ``10.0.0.0/8``, ``::1``).

    Cached: the setting is parsed once, not on every connection. Raises ``ValueError`` naming
    the entry that is neither an address nor a network.
    """
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {entry!r}") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port or [v6]
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def _forwarded_for(values: Iterable[str]) -> list[str]:
    """The ``for=`` values of ``Forwarded`` headers, in hop order."""
    found: list[str] = []
    for value in values:
        for element in value.split(","):
            for pair in element.split(";"):
                name, _, text = pair.strip().partition("=")
                if name.lower() == "for":
                    found.append(text)
    return found


def client_address(peer: str, headers: Iterable[tuple[bytes, bytes]], trusted: tuple[str, ...]) -> str:
    """The client's address: ``peer``, or what the headers say when ``peer`` is a trusted proxy.

    ``headers`` are (lower-cased name, value) pairs. A header naming no usable address (garbage,
    ``unknown``, an obfuscated ``_hidden`` node) leaves the last trusted hop as the client.
    """
    if not trusted:
        return peer
    networks = parse_networks(trusted)
    peer_address = _address(peer)
    if peer_address is None or not _trusted(peer_address, networks):
        return peer
    xff: list[str] = []
    forwarded: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            xff.extend(value.decode("latin-1").split(","))
        elif name == b"forwarded":
            forwarded.append(value.decode("latin-1"))
    hops = xff or _forwarded_for(forwarded)
    client = peer_address
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = address
        if not _trusted(address, networks):
            break
    return str(client)
