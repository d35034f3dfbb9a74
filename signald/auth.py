"""Handshake authentication (sans-IO: no sockets, awaits or clock reads). The transport builds a
:class:`HandshakeRequest`, calls an :class:`Authenticator`, and answers :class:`AuthRefused` with HTTP
``status`` (401) before any frame is exchanged. Rules and choices:

- **Token**: ``Authorization: Bearer <token>`` (any case) wins over ``?token=`` (for browsers); empty =
  absent; the first of repeated headers/parameters counts. Refusal reasons are short fixed phrases
  ("missing token", "token expired", "bad signature"...), never the token, a claim or PyJWT's text.
- **Pluggable**: an :class:`Authenticator` is any callable ``(HandshakeRequest) -> Identity`` raising
  :class:`AuthRefused`; one that also has ``refresh(current, token)`` (:class:`RefreshingAuthenticator`)
  serves ``auth.refresh``. :func:`refresh_identity` gives ``UNAUTHORIZED`` for one without.
- **mode none** (:class:`NoneAuthenticator`): user ``?user=NAME`` (1-128 of ``[A-Za-z0-9._:@-]``, else
  401, "" included) or ``guest-<8 hex>``; tokens ignored; roles from the admin/mod lists; any room; no
  expiry; ``refresh`` → ``SignalError("UNAUTHORIZED", "auth mode none has no tokens")``.
- **mode jwt** (:class:`JwtAuthenticator`): PyJWT ``jwt.decode`` with an explicit algorithm list;
  ``sub``, ``exp`` required. ``HS*`` take ``secret``; ``RS*``/``PS*``/``ES*``/``EdDSA`` ``public_key``
  (PEM). ``ValueError`` at construction for: not exactly one key, ``none``, HS* mixed with public-key
  algorithms (algorithm confusion), a key unfit for an algorithm or below PyJWT's recommended minimum
  (32 bytes for HS256, 2048-bit RSA). ``exp``/``nbf``/``iat`` are checked against the injected ``now``
  (PyJWT reads the wall clock), as PyJWT does: expired if ``exp <= now - leeway``, not yet valid if
  ``nbf``/``iat`` > ``now + leeway``. ``aud``/``iss``, when configured, are required and matched;
  without ``audience`` a token carrying ``aud`` is refused (PyJWT's default: meant for another service).
- **Claims**: ``sub`` (the user id) is a printable 1-128 char string. ``roles`` absent = none, ``rooms``
  absent = any room; else lists of strings (``rooms``: ``fnmatchcase`` globs); ``null`` or another shape
  is refused, never read as unrestricted. Tokens over 8 KiB are refused undecoded.
- **Refresh** checks the new token like a handshake: other ``sub`` → ``FORBIDDEN``, invalid →
  ``UNAUTHORIZED`` (same reason); the result has the new roles, rooms and expiry.
- **Origin** (:func:`origin_allowed`): all pass with an empty allow-list, a ``"*"`` entry, or no
  ``Origin`` header (non-browser clients; the check protects browsers only). Else it must equal an
  entry, case-insensitive, ignoring a trailing ``/`` and default ports (80 http/ws, 443 https/wss);
  ``"null"`` only if listed literally. Every ``Origin`` header of a request must pass (a second one is
  no browser's).
- **Loopback** (:func:`is_loopback`): ``localhost`` (any case, trailing dot ok), 127.0.0.0/8, ``::1``,
  IPv4-mapped loopback, bracketed or not. Names are not resolved: others need ``--insecure``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable
from urllib.parse import parse_qsl

import attrs

from signald.errors import SignalError

if TYPE_CHECKING:
    from jwt.types import Options

# PyJWT (and the cryptography package under it) is imported by the JWT code only, where it is
# used: it is the largest import of the daemon (about 50 ms of its start-up), and auth mode "none"
# never needs it (tests/e2e/test_startup_imports.py).

USER_NAME_RE: Final = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
ROLE_MOD: Final = "mod"
ROLE_ADMIN: Final = "admin"


@attrs.frozen(slots=True)
class HandshakeRequest:
    """What the transport knows about a WebSocket upgrade request."""

    path: str  # request target including the query string, e.g. "/?token=..."
    headers: tuple[tuple[str, str], ...]  # (lower-cased name, value)
    remote: str  # peer address

    @property
    def query(self) -> dict[str, str]:
        """Query parameters, first value of each name, percent-decoded.

        The query is what follows the first ``?`` (up to a ``#``), as ``urlsplit`` reads it, without
        ``urlsplit``: it raised ``ValueError`` on a target such as ``http://[zz]/?user=a``, which h11
        accepts (the path is not checked), and that dropped the connection with a traceback."""
        query = self.path.partition("#")[0].partition("?")[2]
        return dict(reversed(parse_qsl(query, keep_blank_values=True)))

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return next((value for key, value in self.headers if key == name.lower()), None)

    def token(self) -> str | None:
        """The token from ``Authorization: Bearer`` or else ``?token=``; None if absent or empty."""
        scheme, _, credentials = (self.header("authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return self.query.get("token") or None


@attrs.frozen(slots=True)
class Identity:
    """An authenticated user: id, roles, the rooms they may join (None = any), token expiry."""

    user_id: str
    roles: frozenset[str] = frozenset()
    rooms: tuple[str, ...] | None = None  # glob patterns
    expires_at: float | None = None  # epoch seconds

    def is_admin(self) -> bool:
        return ROLE_ADMIN in self.roles

    def is_moderator(self) -> bool:
        return ROLE_MOD in self.roles or ROLE_ADMIN in self.roles

    def may_join(self, room: str) -> bool:
        return self.rooms is None or any(fnmatch.fnmatchcase(room, glob) for glob in self.rooms)


class AuthRefused(Exception):
    """The handshake is refused: ``status`` 401, 403 or 429 as HTTP would say it (with
    ``server.refusals = "close"``: close 4401, 4403 or 4429 after one ``error`` frame; see
    docs/protocol.md "Refusals that browsers can see"). ``reason`` is short and never holds the token."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class Authenticator(Protocol):
    """Any callable ``(HandshakeRequest) -> Identity`` that raises :class:`AuthRefused` to refuse."""

    def __call__(self, request: HandshakeRequest, /) -> Identity: ...


@runtime_checkable
class RefreshingAuthenticator(Authenticator, Protocol):
    """An authenticator that can also validate a new token for an existing identity."""

    def refresh(self, current: Identity, token: str) -> Identity: ...


def refresh_identity(authenticator: Authenticator, current: Identity, token: str) -> Identity:
    """Run ``authenticator.refresh`` if it has one, else raise ``SignalError("UNAUTHORIZED")``."""
    if isinstance(authenticator, RefreshingAuthenticator):
        return authenticator.refresh(current, token)
    raise SignalError("UNAUTHORIZED", "this authenticator cannot refresh tokens")


class NoneAuthenticator:
    """``auth.mode = "none"``: trust ``?user=NAME`` or make up a guest id. For local use only."""

    def __init__(self, admins: Iterable[str] = (), mods: Iterable[str] = ()) -> None:
        self._admins, self._mods = frozenset(admins), frozenset(mods)

    def __call__(self, request: HandshakeRequest, /) -> Identity:
        user = request.query.get("user")
        if user is None:
            user = f"guest-{secrets.token_hex(4)}"
        elif not USER_NAME_RE.fullmatch(user):
            raise AuthRefused(401, "user must be 1-128 characters of [A-Za-z0-9._:@-]")
        roles = {ROLE_ADMIN: user in self._admins, ROLE_MOD: user in self._mods}
        return Identity(user_id=user, roles=frozenset(r for r, has in roles.items() if has))

    def refresh(self, current: Identity, token: str) -> Identity:
        raise SignalError("UNAUTHORIZED", "auth mode none has no tokens")


# exp/nbf/iat and sub are checked in JwtAuthenticator.verify(), against the injected clock.
_OPTIONS: Final[Options] = {
    "require": ["exp", "sub"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_sub": False,
    "enforce_minimum_key_length": True,
}


def _reason(exc: Exception) -> str:
    """The short refusal reason of one of PyJWT's errors."""
    import jwt

    reasons: tuple[tuple[type[Exception], str], ...] = (
        (jwt.InvalidSignatureError, "bad signature"),  # before DecodeError, its base class
        (jwt.InvalidAudienceError, "bad audience"),
        (jwt.InvalidIssuerError, "bad issuer"),
        (jwt.InvalidAlgorithmError, "algorithm not allowed"),
        (jwt.DecodeError, "malformed token"),
    )
    return next((reason for kind, reason in reasons if isinstance(exc, kind)), "invalid token")


def _load_key(secret: str | None, public_key: str | None, algorithms: list[str]) -> Any:
    """The verification key, checked against every algorithm (ValueError if unfit)."""
    import jwt
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    hmac = [name.startswith("HS") for name in algorithms]
    if not hmac or (any(hmac) and not all(hmac)) or "none" in (a.lower() for a in algorithms):
        raise ValueError("algorithms: not empty, no 'none', no mix of HS* and public-key ones")
    if not secret and not public_key:
        raise ValueError("jwt_secret or jwt_public_key_file is required when mode = \"jwt\"")
    if (bool(secret), bool(public_key)) != (all(hmac), not all(hmac)):
        raise ValueError("HS* algorithms take only a secret, the others only a public_key (PEM)")
    try:
        key: Any = secret.encode() if secret else load_pem_public_key((public_key or "").encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("public_key is not a PEM public key") from exc
    for name in algorithms:
        try:
            algorithm = jwt.get_algorithm_by_name(name)
            prepared = algorithm.prepare_key(key)
        except NotImplementedError as exc:
            raise ValueError(f"unsupported algorithm {name!r}") from exc
        except (jwt.InvalidKeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the key does not suit algorithm {name!r}") from exc
        check_length = getattr(algorithm, "check_key_length", None)  # PyJWT >= 2.10
        if check_length is not None and check_length(prepared):
            raise ValueError(f"the key is too short for {name!r}")
    return key


class JwtAuthenticator:
    """``auth.mode = "jwt"``: verify a JWT with PyJWT and map its claims to an :class:`Identity`."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        algorithms: Sequence[str] = ("HS256",),
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30,
        now: Callable[[], float] = time.time,
    ) -> None:
        if leeway_s < 0 or not math.isfinite(leeway_s):
            raise ValueError("leeway_s must be a finite number >= 0")
        self._algorithms = list(algorithms)
        self._key = _load_key(secret, public_key, self._algorithms)
        self._audience, self._issuer, self._now, self._leeway = audience, issuer, now, float(leeway_s)

    def __call__(self, request: HandshakeRequest, /) -> Identity:
        return self.verify(request.token())

    def refresh(self, current: Identity, token: str) -> Identity:
        """Validate ``token`` for the same user; FORBIDDEN for another ``sub``, else UNAUTHORIZED."""
        try:
            identity = self.verify(token)
        except AuthRefused as exc:
            raise SignalError("UNAUTHORIZED", exc.reason) from None
        if identity.user_id != current.user_id:
            raise SignalError("FORBIDDEN", "the new token is for another user")
        return identity

    def verify(self, token: str | None) -> Identity:
        """Decode and check ``token``; raise :class:`AuthRefused` (401) with a short reason."""
        if not token or len(token) > 8192:
            raise AuthRefused(401, "token too large" if token else "missing token")
        claims = self._decode(token)
        now = self._now()
        exp = _number(claims["exp"], "exp")
        if exp <= now - self._leeway:
            raise AuthRefused(401, "token expired")
        for name in ("nbf", "iat"):
            if name in claims and _number(claims[name], name) > now + self._leeway:
                raise AuthRefused(401, "token not yet valid")
        sub = claims["sub"]
        if not isinstance(sub, str) or not 0 < len(sub) <= 128 or not sub.isprintable():
            raise AuthRefused(401, "bad sub claim")
        roles, rooms = _string_list(claims, "roles"), _string_list(claims, "rooms")
        return Identity(sub, frozenset(roles or ()), None if rooms is None else tuple(rooms), exp)

    def _decode(self, token: str) -> Mapping[str, Any]:
        import jwt  # already loaded by __init__ (_load_key): a lookup in sys.modules

        try:
            aud, iss = self._audience, self._issuer
            return jwt.decode(token, self._key, self._algorithms, _OPTIONS, audience=aud, issuer=iss)
        except jwt.MissingRequiredClaimError as exc:
            claim = exc.claim if exc.claim in ("exp", "sub", "aud", "iss") else "claim"
            raise AuthRefused(401, f"missing {claim}") from None
        except jwt.PyJWTError as exc:
            raise AuthRefused(401, _reason(exc)) from None


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthRefused(401, f"bad {name} claim")
    return float(value)


def _string_list(claims: Mapping[str, Any], name: str) -> list[str] | None:
    value = claims.get(name, ...)
    if value is ...:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AuthRefused(401, f"bad {name} claim")
    return value


_DEFAULT_PORTS: Final = {"http": ":80", "ws": ":80", "https": ":443", "wss": ":443"}


def _normalize_origin(origin: str) -> str:
    scheme, sep, host = origin.strip().lower().rstrip("/").partition("://")
    return f"{scheme}{sep}{host.removesuffix(_DEFAULT_PORTS.get(scheme, ''))}"


def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """Whether a handshake with this ``Origin`` may proceed (see the module docstring)."""
    if origin is None or not allowed or "*" in allowed:
        return True
    return _normalize_origin(origin) in {_normalize_origin(entry) for entry in allowed}


def origins_allowed(request: HandshakeRequest, allowed: Sequence[str]) -> bool:
    """:func:`origin_allowed` for every ``Origin`` header of ``request``: a browser sends one, so a
    second one is someone else's, and the first must not speak for the others (nor the reverse)."""
    return all(origin_allowed(value, allowed) for name, value in request.headers if name == "origin")


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8, ``::1`` (bracketed or not); names are not resolved."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return bool((getattr(address, "ipv4_mapped", None) or address).is_loopback)
