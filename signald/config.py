"""The daemon's configuration: one frozen attrs ``Config`` filled by cattrs.

Sources, later ones win: built-in defaults, a TOML file (``--config``), ``SIGNALD_<SECTION>_<KEY>``
environment variables (e.g. ``SIGNALD_LIMITS_RATE_PER_S=50``), then command-line flags.
Every key lives in a section (``[server]``, ``[limits]``, ``[auth]``, ``[presence]``, ``[history]``,
``[calls]``, ``[log]``, ``[api]``, ``[cluster]``); ``docs/configuration.md`` lists them all.

Error handling: any unknown key (in a file or a flag), wrong type or out-of-range value raises
:class:`ConfigError` with one line that names the key (``limits.rate_per_s: expected a number, got
'fast'``), and so do keys of two sections that cannot go together, whatever their sources
(``Config.__attrs_post_init__``); the CLI prints it and exits with status 2. An unknown
``SIGNALD_*`` environment variable is only a warning: other tools share the prefix (``./dev`` reads
``SIGNALD_VENV``), and the environment is inherited, not written for signald alone; a file or a
flag is.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from attrs import field, frozen

from signald.protocol import Limits
from signald.state.brokerurl import parse_broker_url
from signald.state.confvalues import converter
from signald.state.dburl import parse_history_url, redact, sqlite_url
from signald.state.proxies import parse_networks


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be greater than 0, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be 0 or more, got {value!r}")


def _port(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name}: must be a TCP port 0-65535, got {value!r}")


def _networks(instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    try:
        parse_networks(value)
    except ValueError as exc:
        raise ValueError(f"{attribute.name}: {exc}") from None


@frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8765, validator=_port)
    db: str = "./signald.db"
    insecure: bool = False
    certfile: str | None = None
    keyfile: str | None = None
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = field(default=(), validator=_networks)  # see signald.state.proxies
    heartbeat_s: float = field(default=20.0, validator=_positive)
    heartbeat_timeout_s: float = field(default=10.0, validator=_positive)
    max_transport_bytes: int = field(default=1 << 20, validator=_positive)
    connect_timeout_s: float = field(default=10.0, validator=_positive)
    # listen(2)'s queue: short enough that a queued client is answered before it gives up
    backlog: int = field(default=1024, validator=_positive)
    shutdown_timeout_s: float = field(default=3.0, validator=_positive)
    # On SIGTERM, serve this long with /readyz 503 first, for a load balancer to notice (0: close at once)
    drain_s: float = field(default=0.0, validator=_non_negative)
    new_connections_per_ip_per_s: float = field(default=50.0, validator=_non_negative)
    metrics_port: int | None = None
    # A refused handshake: "close" = upgrade, one error frame, 4401/4403/4429 (browsers see it); "http" = 401/403/429
    refusals: Literal["close", "http"] = "close"
    # Serve the browser demo (examples/web) at /demo/ on the WebSocket port (signald.app.demo).
    demo: bool = False


@frozen
class LimitsConfig:
    max_frame_bytes: int = field(default=65536, validator=_positive)
    max_body_chars: int = field(default=4000, validator=_positive)
    rate_per_s: float = field(default=30.0, validator=_positive)
    rate_burst: int = field(default=60, validator=_positive)
    max_rooms: int = field(default=50, validator=_positive)
    max_connections_per_user: int = field(default=10, validator=_positive)
    send_queue: int = field(default=512, validator=_positive)
    history_page_max: int = field(default=200, validator=_positive)
    ring_timeout_s: float = field(default=30.0, validator=_positive)
    typing_timeout_s: float = field(default=6.0, validator=_positive)
    # Per user (all its connections), on top of rate_per_s / rate_burst (not in welcome.limits); unset: twice those
    user_rate_per_s: float | None = field(default=None, validator=attrs.validators.optional(_positive))
    user_rate_burst: int | None = field(default=None, validator=attrs.validators.optional(_positive))

    def user_rate(self) -> tuple[float, int]:
        """The per-user budget in force: (frames per second, burst), unset keys twice the per-connection ones."""
        return (self.user_rate_per_s if self.user_rate_per_s is not None else 2 * self.rate_per_s,
                self.user_rate_burst if self.user_rate_burst is not None else 2 * self.rate_burst)

    def to_wire(self) -> Limits:
        """The ``limits`` object of ``welcome``: exactly the keys docs/protocol.md lists."""
        return Limits(**{name: getattr(self, name) for name in Limits.__struct_fields__})


@frozen
class AuthConfig:
    mode: Literal["none", "jwt"] = "none"
    jwt_secret: str | None = None
    jwt_public_key_file: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    leeway_s: float = field(default=30.0, validator=_non_negative)
    admins: tuple[str, ...] = ()
    mods: tuple[str, ...] = ()


@frozen
class PresenceConfig:
    away_after_s: float = field(default=300.0, validator=_non_negative)


def _history_url(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        try:
            parse_history_url(value)
        except ValueError as exc:  # its message never holds the password
            raise ValueError(f"{attribute.name}: {exc}") from None


def _url_repr(value: str | None) -> str:  # also hides a ?password= / ?sentinel_password= in the query
    return "None" if value is None else repr(redact(value))


@frozen
class HistoryConfig:
    # None: the SQLite file of server.db (see Config.history_url). The password never in a repr.
    url: str | None = field(default=None, validator=_history_url, repr=_url_repr)
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    inline_commits: bool = True
    request_timeout_s: float = field(default=10.0, validator=_positive)  # a request's wait for the store, at most
    retention_max_age_s: float = field(default=0.0, validator=_non_negative)
    retention_max_count: int = field(default=0, validator=_non_negative)


@frozen
class CallsConfig:
    allow_concurrent_calls: bool = False
    call_log: bool = True


@frozen
class ApiConfig:
    """The HTTP server API (docs/server-api.md): off while ``keys`` is empty."""

    keys: tuple[str, ...] = field(default=(), repr=False)  # secrets: never in a repr or a log line
    port: int | None = field(default=None, validator=attrs.validators.optional(_port))
    max_body_bytes: int = field(default=65536, validator=_positive)


def _broker_url(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    try:
        value and parse_broker_url(value)
    except ValueError as exc:  # its message never holds a password
        raise ValueError(f"{attribute.name}: {exc}") from None


def _node_id(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if len(value) > 64 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in value):
        raise ValueError(f"{attribute.name}: at most 64 of [A-Za-z0-9._-], got {value!r}")


@frozen
class ClusterConfig:
    """Several nodes on one broker (docs/cluster.md): off while ``broker_url`` is unset or empty."""

    # The passwords never in a repr (redis://:secret@host/0, ?sentinel_password=).
    broker_url: str | None = field(default=None, validator=_broker_url, repr=_url_repr)
    node_id: str = field(default="", validator=_node_id)  # "": a random id at each start
    node_ttl_s: float = field(default=10.0, validator=_positive)

    @property
    def enabled(self) -> bool:
        return bool(self.broker_url)


@frozen
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@frozen
class Config:
    """Everything the daemon needs to run; build one with :func:`load_config` or directly."""

    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    presence: PresenceConfig = PresenceConfig()
    history: HistoryConfig = HistoryConfig()
    calls: CallsConfig = CallsConfig()
    log: LogConfig = LogConfig()
    api: ApiConfig = ApiConfig()
    cluster: ClusterConfig = ClusterConfig()

    def __attrs_post_init__(self) -> None:
        """The checks across sections, whichever source set the keys (file, environment, flags)."""
        # A request waiting for a hung store holds its connection's reader: nothing is read, not
        # even a pong, so the heartbeat closes the connection (1001) once it was silent this long.
        # request_timeout_s exists to answer INTERNAL before that; not below it, it never does.
        heartbeat = self.server.heartbeat_s + self.server.heartbeat_timeout_s
        if self.history.request_timeout_s >= heartbeat:
            raise ConfigError(
                f"history.request_timeout_s: {self.history.request_timeout_s:g} s must be below server.heartbeat_s"
                f" + server.heartbeat_timeout_s ({self.server.heartbeat_s:g} + {self.server.heartbeat_timeout_s:g}"
                f" = {heartbeat:g} s): a request that waits that long for a hung history store gets its client"
                " closed with 1001 (heartbeat timeout) before its INTERNAL reply")

    def history_url(self) -> str:
        """The history store's URL: ``history.url``, else the SQLite file ``server.db``."""
        return self.history.url if self.history.url is not None else sqlite_url(self.server.db)

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys of some sections changed: ``cfg.replace(limits={"max_rooms": 3})``."""
        return load_config(overrides={k: dict(v) for k, v in sections.items()}, base=self, env={})


SECTIONS: tuple[str, ...] = tuple(a.name for a in attrs.fields(Config))


ENV_PREFIX = "SIGNALD_"

#: Every configuration key, as ``section.key``.
KEYS: tuple[str, ...] = tuple(
    f"{section}.{a.name}" for section in SECTIONS
    for a in attrs.fields(typing.get_type_hints(Config)[section]))

#: The environment variable of each key: ``SIGNALD_LIMITS_RATE_PER_S`` → ``limits.rate_per_s``.
ENV_VARIABLES: Mapping[str, str] = {f"{ENV_PREFIX}{key.replace('.', '_').upper()}": key for key in KEYS}

Warn = Callable[[str], None]


def _log_warning(message: str) -> None:
    logging.getLogger("signald.config").warning("%s", message)


def unknown_variable_message(name: str) -> str:
    """The warning for a ``SIGNALD_*`` variable that names no key, with the closest key if any."""
    wanted = name[len(ENV_PREFIX):].lower()
    by_flat = {key.replace(".", "_"): key for key in KEYS}
    close = difflib.get_close_matches(wanted, by_flat, n=1)
    hint = (f"closest key: {by_flat[close[0]]} ({ENV_PREFIX}{close[0].upper()})" if close
            else "no configuration key is close")
    return f"{name}: not a configuration variable, ignored ({hint})"


def _env_sections(env: Mapping[str, str], warn: Warn) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        key = ENV_VARIABLES.get(name.upper())
        if key is None:
            warn(unknown_variable_message(name))
            continue
        section, _, attr = key.partition(".")
        found.setdefault(section, {})[attr] = None if value == "" else value
    return found


def _merge(into: dict[str, dict[str, Any]], new: Mapping[str, Any], origin: str) -> None:
    for section, values in new.items():
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section in {origin} (known: {', '.join(SECTIONS)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}: expected a table in {origin}")
        into.setdefault(section, {}).update(values)


def _describe(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    return f"invalid value ({exc.__class__.__name__})"


def _first_error_line(exc: cattrs.BaseValidationError, section: str) -> str:
    leaves = cattrs.transform_error(exc, path=section, format_exception=_describe)
    message, _, where = (leaves[0] if leaves else f"invalid value @ {section}").rpartition(" @ ")
    head, sep, rest = message.partition(": ")
    if sep and where == section and head.isidentifier():
        return f"{section}.{head}: {rest}"
    return f"{where}: {message}"


def _build_section(section: str, values: dict[str, Any], base: Any) -> Any:
    cls = typing.get_type_hints(Config)[section]
    known = {a.name for a in attrs.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(sorted(known))})")
    merged = {**attrs.asdict(base, recurse=False), **values}
    merged = {k: v for k, v in merged.items() if v is not None or k in values}
    try:
        return converter.structure(merged, cls)
    except cattrs.BaseValidationError as exc:
        raise ConfigError(_first_error_line(exc, section)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    base: Config | None = None,
    warn: Warn | None = None,
) -> Config:
    """Build a :class:`Config` from defaults, a TOML file, the environment and overrides.

    ``env`` defaults to ``os.environ``; ``overrides`` (section → key → value, from CLI flags)
    win over everything else. Raises :class:`ConfigError` naming the offending key. ``warn``
    receives one line per ``SIGNALD_*`` variable that is not a configuration key (default: a
    warning on the ``signald.config`` logger).
    """
    base = base or Config()
    layers: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {os.fspath(path)}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {os.fspath(path)}: {exc}") from None
        _merge(layers, data, os.fspath(path))
    _merge(layers, _env_sections(os.environ if env is None else env, warn or _log_warning), "the environment")
    if overrides:
        _merge(layers, overrides, "the command line")
    sections = {name: getattr(base, name) for name in SECTIONS}
    for name, values in layers.items():
        sections[name] = _build_section(name, values, sections[name])
    return Config(**sections)
