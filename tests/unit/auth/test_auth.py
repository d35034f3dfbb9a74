"""Handshake authentication: JWT matrix, mode none, identities, origins, loopback."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signald.auth import (
    AuthRefused,
    HandshakeRequest,
    Identity,
    JwtAuthenticator,
    NoneAuthenticator,
    is_loopback,
    origin_allowed,
    refresh_identity,
)
from signald.errors import SignalError

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"  # >= 32 bytes, as HS256 requires
NOW = 1_800_000_000.0


def request(
    path: str = "/", headers: tuple[tuple[str, str], ...] = (), remote: str = "127.0.0.1"
) -> HandshakeRequest:
    return HandshakeRequest(path=path, headers=headers, remote=remote)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "exp": NOW + 3600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(secret: str = SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def hs_auth(**kwargs: Any) -> JwtAuthenticator:
    return JwtAuthenticator(secret=SECRET, now=lambda: NOW, **kwargs)


def pem_public(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def new_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "RS256":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def refused(auth: Callable[[HandshakeRequest], Identity], req: HandshakeRequest) -> AuthRefused:
    with pytest.raises(AuthRefused) as info:
        auth(req)
    assert info.value.status == 401
    return info.value


# --------------------------------------------------------------------------- HandshakeRequest


def test_request_helpers() -> None:
    req = request("/ws?user=bob&x=1&user=eve&empty=", (("authorization", "Bearer abc"), ("origin", "o")))
    assert req.query == {"user": "bob", "x": "1", "empty": ""}
    assert req.header("Origin") == "o"
    assert req.header("missing") is None
    assert req.token() == "abc"
    assert request("/?token=q").token() == "q"
    assert request("/?token=").token() is None
    assert request("/", (("authorization", "Basic Zm9vOmJhcg=="),)).token() is None
    assert request("/", (("authorization", "bearer  tok "),)).token() == "tok"
    # the header wins over the query parameter
    assert request("/?token=q", (("authorization", "Bearer h"),)).token() == "h"


# --------------------------------------------------------------------------- JWT matrix


def test_valid_token_from_query_and_header() -> None:
    auth = hs_auth()
    token = hs_token(roles=["mod"], rooms=["team-*", "lobby"])
    for req in (request(f"/?token={token}"), request("/", (("authorization", f"Bearer {token}"),))):
        ident = auth(req)
        assert ident.user_id == "alice"
        assert ident.roles == frozenset({"mod"})
        assert ident.rooms == ("team-*", "lobby")
        assert ident.expires_at == NOW + 3600
        assert ident.is_moderator() and not ident.is_admin()


def test_absent_roles_and_rooms_mean_none_and_any() -> None:
    ident = hs_auth()(request(f"/?token={hs_token()}"))
    assert ident.roles == frozenset()
    assert ident.rooms is None


def test_missing_token() -> None:
    assert refused(hs_auth(), request("/")).reason == "missing token"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (hs_token(exp=NOW - 3600), "token expired"),
        (hs_token(secret="another-secret-another-secret-1234"), "bad signature"),
        (hs_token(sub=None), "missing sub"),
        (hs_token(exp=None), "missing exp"),
        (hs_token(aud="other-service"), "bad audience"),
        (hs_token(nbf=NOW + 3600), "token not yet valid"),
        (hs_token(exp="tomorrow"), "bad exp claim"),
        (hs_token(sub=""), "bad sub claim"),
        (hs_token(roles="admin"), "bad roles claim"),
        (hs_token(roles=["admin", 1]), "bad roles claim"),
        (hs_token(rooms="*"), "bad rooms claim"),
        (hs_token(rooms=[None]), "bad rooms claim"),
        ("not.a.jwt", "malformed token"),
        ("garbage", "malformed token"),
        ("x" * 10_000, "token too large"),
    ],
)
def test_refused_tokens(token: str, reason: str) -> None:
    error = refused(hs_auth(), request(f"/?token={token}"))
    assert error.reason == reason
    assert token not in error.reason and token not in str(error)


def test_rooms_null_is_refused_not_unrestricted() -> None:
    token = jwt.encode({"sub": "alice", "exp": NOW + 60, "rooms": None}, SECRET, algorithm="HS256")
    assert refused(hs_auth(), request(f"/?token={token}")).reason == "bad rooms claim"


def test_audience_and_issuer() -> None:
    auth = hs_auth(audience="signald", issuer="https://idp")
    good = hs_token(aud="signald", iss="https://idp")
    assert auth(request(f"/?token={good}")).user_id == "alice"
    for token, reason in [
        (hs_token(aud="other", iss="https://idp"), "bad audience"),
        (hs_token(aud="signald", iss="https://evil"), "bad issuer"),
        (hs_token(iss="https://idp"), "missing aud"),
        (hs_token(aud="signald"), "missing iss"),
    ]:
        error = refused(auth, request(f"/?token={token}"))
        assert error.reason == reason
        assert token not in str(error)


def test_leeway() -> None:
    token = hs_token(exp=NOW - 10)
    assert hs_auth()(request(f"/?token={token}")).user_id == "alice"  # default leeway 30 s
    assert refused(hs_auth(leeway_s=5), request(f"/?token={token}")).reason == "token expired"
    assert refused(hs_auth(), request(f"/?token={hs_token(exp=NOW - 30)}")).reason == "token expired"
    assert hs_auth()(request(f"/?token={hs_token(nbf=NOW + 20)}")).user_id == "alice"


def test_injected_clock_is_used() -> None:
    clock = [NOW]
    auth = JwtAuthenticator(secret=SECRET, leeway_s=0, now=lambda: clock[0])
    token = hs_token(exp=NOW + 100)
    assert auth(request(f"/?token={token}")).user_id == "alice"
    clock[0] = NOW + 100
    assert refused(auth, request(f"/?token={token}")).reason == "token expired"


def test_algorithm_not_allowed() -> None:
    token = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    assert refused(hs_auth(), request(f"/?token={token}")).reason == "algorithm not allowed"


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_key_algorithms(
    kind: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    private = rsa_key if kind == "RS256" else ec_key
    auth = JwtAuthenticator(public_key=pem_public(private), algorithms=[kind], now=lambda: NOW)
    token = jwt.encode(claims(roles=["admin"]), private, algorithm=kind)
    ident = auth(request("/", (("authorization", f"Bearer {token}"),)))
    assert ident.user_id == "alice" and ident.is_admin() and ident.is_moderator()
    # signed by another key of the same kind
    other = new_key(kind)
    forged = jwt.encode(claims(), other, algorithm=kind)
    assert refused(auth, request(f"/?token={forged}")).reason == "bad signature"
    expired = jwt.encode(claims(exp=NOW - 3600), private, algorithm=kind)
    assert refused(auth, request(f"/?token={expired}")).reason == "token expired"
    # algorithm confusion: an HS256 token "signed" with the public key text is refused
    confused = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert refused(auth, request(f"/?token={confused}")).reason == "algorithm not allowed"


def test_bad_configuration(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError):
        JwtAuthenticator()  # no secret
    with pytest.raises(ValueError):
        JwtAuthenticator(secret="short")  # below 32 bytes for HS256
    with pytest.raises(ValueError):
        JwtAuthenticator(secret=SECRET, algorithms=["none"])
    with pytest.raises(ValueError):
        JwtAuthenticator(secret=SECRET, algorithms=["HS256", "RS256"])
    with pytest.raises(ValueError):
        JwtAuthenticator(public_key="not a pem", algorithms=["RS256"])
    with pytest.raises(ValueError):
        JwtAuthenticator(public_key=pem_public(ec_key), algorithms=["RS256"])
    with pytest.raises(ValueError):
        JwtAuthenticator(public_key=pem_public(rsa_key), algorithms=["ES256"])
    with pytest.raises(ValueError):
        JwtAuthenticator(secret=SECRET, public_key=pem_public(rsa_key), algorithms=["RS256"])


def test_refresh() -> None:
    auth = hs_auth()
    current = auth(request(f"/?token={hs_token()}"))
    renewed = auth.refresh(current, hs_token(exp=NOW + 7200, roles=["mod"]))
    assert renewed.user_id == "alice" and renewed.expires_at == NOW + 7200 and renewed.is_moderator()
    assert refresh_identity(auth, current, hs_token()).user_id == "alice"
    with pytest.raises(SignalError) as info:
        auth.refresh(current, hs_token(sub="mallory"))
    assert info.value.code == "FORBIDDEN"
    expired = hs_token(exp=NOW - 3600)
    with pytest.raises(SignalError) as info:
        auth.refresh(current, expired)
    assert info.value.code == "UNAUTHORIZED" and expired not in info.value.message
    with pytest.raises(SignalError) as info:
        auth.refresh(current, "")
    assert info.value.code == "UNAUTHORIZED"


# --------------------------------------------------------------------------- mode none


def test_none_authenticator_user_param_and_roles() -> None:
    auth = NoneAuthenticator(admins=["root"], mods=["moe", "root"])
    ident = auth(request("/?user=bob.smith@example:1-x_y"))
    assert ident == Identity("bob.smith@example:1-x_y", frozenset(), rooms=None, expires_at=None)
    assert auth(request("/?user=root")).roles == frozenset({"admin", "mod"})
    moe = auth(request("/?user=moe"))
    assert moe.is_moderator() and not moe.is_admin()
    assert auth(request(f"/?user={'a' * 128}")).user_id == "a" * 128


@pytest.mark.parametrize("name", ["", "a b", "x" * 129, "évé", "a/b", "a%0A"])
def test_none_authenticator_invalid_name(name: str) -> None:
    assert "user" in refused(NoneAuthenticator(), request(f"/?user={name}")).reason


def test_none_authenticator_guest() -> None:
    auth = NoneAuthenticator()
    first, second = auth(request("/")), auth(request("/?token=ignored"))
    assert re.fullmatch(r"guest-[0-9a-f]{8}", first.user_id)
    assert first.user_id != second.user_id
    assert first.roles == frozenset() and first.rooms is None and first.expires_at is None


def test_none_authenticator_refresh() -> None:
    auth = NoneAuthenticator()
    with pytest.raises(SignalError) as info:
        auth.refresh(Identity(user_id="bob"), "tok")
    assert info.value.code == "UNAUTHORIZED"


def test_refresh_identity_without_refresh_method() -> None:
    def custom(req: HandshakeRequest) -> Identity:
        return Identity(user_id="x")

    assert custom(request()).user_id == "x"
    with pytest.raises(SignalError) as info:
        refresh_identity(custom, Identity(user_id="x"), "tok")
    assert info.value.code == "UNAUTHORIZED"


# --------------------------------------------------------------------------- Identity / origin / loopback


def test_may_join_globs() -> None:
    assert Identity(user_id="u").may_join("anything")
    ident = Identity(user_id="u", rooms=("team-*", "lobby", "room-?"))
    assert ident.may_join("team-a") and ident.may_join("lobby") and ident.may_join("room-1")
    assert not ident.may_join("Team-a")  # case-sensitive
    assert not ident.may_join("lobby2") and not ident.may_join("room-12")
    assert not Identity(user_id="u", rooms=()).may_join("lobby")


def test_origin_allowed() -> None:
    allowed = ["https://app.example.com", "http://localhost:3000"]
    assert origin_allowed("https://evil.com", [])
    assert origin_allowed(None, allowed)
    assert origin_allowed("https://APP.example.com", allowed)
    assert origin_allowed("https://app.example.com:443", allowed)
    assert origin_allowed("https://app.example.com/", allowed)
    assert origin_allowed("http://localhost:3000", allowed)
    assert not origin_allowed("http://app.example.com", allowed)
    assert not origin_allowed("http://localhost:3001", allowed)
    assert not origin_allowed("https://app.example.com.evil.com", allowed)
    assert not origin_allowed("null", allowed)
    assert not origin_allowed("", allowed)
    assert origin_allowed("null", ["null"])
    assert origin_allowed("https://anything", ["https://x", "*"])


def test_is_loopback() -> None:
    for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1"]:
        assert is_loopback(host), host
    for host in ["0.0.0.0", "::", "", "192.168.1.1", "example.com", "localhost.example.com", "10.0.0.1"]:
        assert not is_loopback(host), host
