"""The client address behind trusted proxies (signald.state.proxies), without sockets."""

from __future__ import annotations

import pytest

from signald.config import ConfigError, load_config
from signald.state.proxies import client_address

TRUSTED = ("127.0.0.1", "10.0.0.0/8", "::1")


def xff(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value.encode())]


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    ("127.0.0.1", xff("203.0.113.5"), "203.0.113.5"),
    # A client's own X-Forwarded-For is to the left of what the proxies appended: ignored.
    ("127.0.0.1", xff("6.6.6.6, 203.0.113.5"), "203.0.113.5"),
    # Through two trusted proxies: the rightmost address that is not a proxy.
    ("127.0.0.1", xff("6.6.6.6, 203.0.113.5, 10.1.2.3"), "203.0.113.5"),
    ("127.0.0.1", [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"203.0.113.5")], "203.0.113.5"),
    # Only trusted hops: the leftmost of them is the best we know.
    ("127.0.0.1", xff("10.0.0.9, 10.0.0.8"), "10.0.0.9"),
    ("127.0.0.1", [(b"forwarded", b'for=6.6.6.6, for="[2001:db8::1]:4711";proto=https')], "2001:db8::1"),
    ("127.0.0.1", [(b"forwarded", b"for=198.51.100.7:1234")], "198.51.100.7"),
    ("::1", xff("203.0.113.5"), "203.0.113.5"),
    ("::ffff:127.0.0.1", xff("203.0.113.5"), "203.0.113.5"),
    # Garbage or an obfuscated node stops the walk at the last trusted hop.
    ("127.0.0.1", xff("not-an-ip"), "127.0.0.1"),
    ("127.0.0.1", [(b"forwarded", b"for=_hidden")], "127.0.0.1"),
    ("127.0.0.1", [], "127.0.0.1"),
    # An untrusted peer cannot pick its address, whatever it sends.
    ("203.0.113.9", xff("1.2.3.4"), "203.0.113.9"),
    ("203.0.113.9", [(b"forwarded", b"for=1.2.3.4")], "203.0.113.9"),
    ("-", xff("1.2.3.4"), "-"),
])
def test_client_address(peer: str, headers: list[tuple[bytes, bytes]], expected: str) -> None:
    assert client_address(peer, headers, TRUSTED) == expected


def test_no_trusted_proxies_means_the_peer_whatever_the_headers() -> None:
    assert client_address("127.0.0.1", xff("1.2.3.4"), ()) == "127.0.0.1"


def test_x_forwarded_for_wins_over_forwarded() -> None:
    headers = [(b"forwarded", b"for=1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")]
    assert client_address("127.0.0.1", headers, TRUSTED) == "2.2.2.2"


def test_a_bad_entry_in_the_setting_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"server.trusted_proxies: .*'10.0.0.300'"):
        load_config(env={"SIGNALD_SERVER_TRUSTED_PROXIES": "127.0.0.1,10.0.0.300"})
