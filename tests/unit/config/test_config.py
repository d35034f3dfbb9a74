"""Configuration: precedence of the sources, ``Config.replace``, errors that name the key, and the
defaults that docs/configuration.md promises."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from signald.cli import build_parser, config_from_args
from signald.config import ENV_VARIABLES, KEYS, SECTIONS, Config, ConfigError, load_config

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "signald.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ precedence: TOML < env < flags

TOML_ALL = """
[server]
port = 1001
db = "from-file.db"
insecure = false
allowed_origins = ["https://file.example"]

[limits]
max_rooms = 11
rate_per_s = 1.5

[history]
inline_commits = false
"""

# key: (the value the file gives, the environment's variable and value, the value that gives, a flag's value)
PRECEDENCE: dict[str, tuple[Any, str, Any, Any]] = {
    "server.port": (1001, "2002", 2002, 3003),  # int
    "limits.rate_per_s": (1.5, "2.5", 2.5, 3.5),  # float
    "history.inline_commits": (False, "yes", True, False),  # bool
    "server.allowed_origins": (("https://file.example",), "https://env.example, https://two.example",
                               ("https://env.example", "https://two.example"), ("https://flag.example",)),  # list
    "server.db": ("from-file.db", "/var/env/signald.db", "/var/env/signald.db", "/tmp/flag.db"),  # path
}


def get(config: Config, dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return getattr(getattr(config, section), key)


def env_name(dotted: str) -> str:
    return "SIGNALD_" + dotted.replace(".", "_").upper()


@pytest.mark.parametrize("key", list(PRECEDENCE))
def test_the_file_beats_the_defaults(tmp_path: Path, key: str) -> None:
    from_file = PRECEDENCE[key][0]
    assert get(Config(), key) != from_file
    assert get(load_config(write_toml(tmp_path, TOML_ALL), env={}), key) == from_file


@pytest.mark.parametrize("key", list(PRECEDENCE))
def test_the_environment_beats_the_file(tmp_path: Path, key: str) -> None:
    _, raw, parsed, _ = PRECEDENCE[key]
    config = load_config(write_toml(tmp_path, TOML_ALL), env={env_name(key): raw})
    assert get(config, key) == parsed
    others = [k for k in PRECEDENCE if k != key]
    assert [get(config, k) for k in others] == [PRECEDENCE[k][0] for k in others]


@pytest.mark.parametrize("key", list(PRECEDENCE))
def test_overrides_beat_the_environment(tmp_path: Path, key: str) -> None:
    _, raw, _, flag = PRECEDENCE[key]
    section, _, name = key.partition(".")
    config = load_config(write_toml(tmp_path, TOML_ALL), env={env_name(key): raw}, overrides={section: {name: flag}})
    assert get(config, key) == flag


def test_serve_flags_beat_the_environment_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALD_SERVER_PORT", "2002")
    monkeypatch.setenv("SIGNALD_SERVER_DB", "/var/env/signald.db")
    monkeypatch.setenv("SIGNALD_LOG_LEVEL", "debug")
    monkeypatch.setenv("SIGNALD_LIMITS_RATE_PER_S", "2.5")
    path = write_toml(tmp_path, TOML_ALL + '\n[log]\nlevel = "error"\nformat = "json"\n')
    args = build_parser().parse_args(["serve", "--config", str(path), "--port", "3003", "--db", "/tmp/flag.db",
                                      "--insecure", "--log-level", "warning"])
    config = config_from_args(args)
    assert (config.server.port, config.server.db, config.server.insecure) == (3003, "/tmp/flag.db", True)
    assert (config.log.level, config.log.format) == ("warning", "json")  # flag; the file's, no flag given
    assert config.limits.rate_per_s == 2.5  # the environment's, no flag for it
    assert config.limits.max_rooms == 11  # only the file sets it


def test_flags_not_given_leave_the_key_to_the_other_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALD_SERVER_INSECURE", "true")
    config = config_from_args(build_parser().parse_args(["serve"]))
    assert config.server.insecure is True
    assert config.server.port == 8765


# ------------------------------------------------------------------ unknown names

def test_unknown_signald_variables_are_a_warning_naming_the_closest_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="signald.config"):
        config = load_config(env={"SIGNALD_VENV": "/opt/venv", "SIGNALD_SERVR_PORT": "1",
                                  "SIGNALD_LIMITS_MAX_ROOMS": "7", "OTHER_THING": "x"})
    assert config.server.port == 8765
    assert config.limits.max_rooms == 7
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert any(m.startswith("SIGNALD_SERVR_PORT:") and "server.port" in m for m in messages)
    assert any(m.startswith("SIGNALD_VENV:") and "ignored" in m for m in messages)


def test_unknown_key_of_a_known_section_in_the_environment_is_a_warning_too() -> None:
    warnings: list[str] = []
    config = load_config(env={"SIGNALD_LIMITS_RATE": "5"}, warn=warnings.append)
    assert config == Config()
    assert len(warnings) == 1
    assert "SIGNALD_LIMITS_RATE" in warnings[0] and "limits.rate_per_s" in warnings[0]


@pytest.mark.parametrize(("toml", "named"), [
    ("[server]\nprot = 1\n", "server.prot"),
    ("[limits]\nrate_pers_s = 5\n", "limits.rate_pers_s"),
    ("[sever]\nport = 1\n", "sever"),
])
def test_unknown_names_in_a_file_stay_fatal(tmp_path: Path, toml: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_toml(tmp_path, toml), env={})
    assert str(caught.value).startswith(f"{named}: unknown")


def test_unknown_override_stays_fatal() -> None:
    with pytest.raises(ConfigError, match=r"^server\.prot: unknown key"):
        load_config(env={}, overrides={"server": {"prot": 1}})


def test_unknown_flag_stays_fatal() -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["serve", "--prot", "1"])
    assert caught.value.code == 2


def test_every_key_has_its_environment_variable() -> None:
    assert sorted(ENV_VARIABLES.values()) == sorted(KEYS)
    assert ENV_VARIABLES["SIGNALD_LIMITS_RATE_PER_S"] == "limits.rate_per_s"
    assert ENV_VARIABLES["SIGNALD_AUTH_JWT_SECRET"] == "auth.jwt_secret"


# ------------------------------------------------------------------ invalid values name the key

INVALID: list[tuple[str, Any]] = [
    ("server.port", 99999),
    ("server.port", "eighty"),
    ("server.heartbeat_s", 0),
    ("server.allowed_origins", 5),
    ("server.insecure", "maybe"),
    ("limits.rate_per_s", "fast"),
    ("limits.max_rooms", 1.5),
    ("limits.max_rooms", True),
    ("auth.mode", "magic"),
    ("auth.leeway_s", -1),
    ("history.synchronous", "OFF"),
    ("history.retention_max_count", -3),
    ("calls.call_log", 2),
    ("log.level", "loud"),
]


@pytest.mark.parametrize(("key", "value"), INVALID)
def test_invalid_values_name_the_key_from_every_source(tmp_path: Path, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    as_toml = f'"{value}"' if isinstance(value, str) else str(value).lower()
    sources: list[dict[str, Any]] = [
        {"path": write_toml(tmp_path, f"[{section}]\n{name} = {as_toml}\n"), "env": {}},
        {"overrides": {section: {name: value}}, "env": {}},
    ]
    # A variable carries text: any text is a valid list, and true/false are not what a variable says.
    if key != "server.allowed_origins" and not isinstance(value, bool):
        sources.append({"env": {env_name(key): str(value)}})
    for source in sources:
        with pytest.raises(ConfigError) as caught:
            load_config(**source)
        assert str(caught.value).startswith(f"{key}: "), (source, str(caught.value))
        assert "\n" not in str(caught.value)


def test_an_empty_variable_unsets_only_keys_that_may_be_unset() -> None:
    assert load_config(env={"SIGNALD_AUTH_JWT_AUDIENCE": ""}).auth.jwt_audience is None
    with pytest.raises(ConfigError, match=r"^server\.port: "):
        load_config(env={"SIGNALD_SERVER_PORT": ""})


# ------------------------------------------------------------------ checks across sections

TOO_LONG = ("history.request_timeout_s: 10 s must be below server.heartbeat_s + server.heartbeat_timeout_s"
            " (5 + 3 = 8 s): a request that waits that long for a hung history store gets its client closed with"
            " 1001 (heartbeat timeout) before its INTERNAL reply")


def test_a_request_timeout_the_heartbeat_would_cut_short_is_an_error_from_every_source(tmp_path: Path) -> None:
    """``history.request_timeout_s`` (10 s) exists to answer a request whose store hangs before the
    heartbeat closes its connection, which reads nothing meanwhile: with a heartbeat of 5 + 3 s the
    client was dropped with 1001 instead, and nothing said the configuration could not work. (The
    command line has no flag for these keys: its layer is ``overrides``; tests/e2e/test_cli_promises.py
    runs ``signald serve``.)"""
    heartbeat = {"heartbeat_s": 5, "heartbeat_timeout_s": 3}
    toml = write_toml(tmp_path, "[server]\nheartbeat_s = 5\nheartbeat_timeout_s = 3\n")
    heartbeat_env = {"SIGNALD_SERVER_HEARTBEAT_S": "5", "SIGNALD_SERVER_HEARTBEAT_TIMEOUT_S": "3"}
    history_toml = tmp_path / "history.toml"
    history_toml.write_text("[history]\nrequest_timeout_s = 10\n")
    loads: list[Any] = [
        lambda: load_config(toml, env={}),
        lambda: load_config(env=heartbeat_env),
        lambda: load_config(overrides={"server": heartbeat}, env={}),
        lambda: load_config(history_toml, env=heartbeat_env),
        lambda: Config().replace(server=heartbeat),
        lambda: Config(server=load_config(env=heartbeat_env | {"SIGNALD_HISTORY_REQUEST_TIMEOUT_S": "7"}).server),
    ]
    for load in loads:
        with pytest.raises(ConfigError) as caught:
            load()
        assert str(caught.value) == TOO_LONG


@pytest.mark.parametrize(("timeout_s", "allowed"), [(7.9, True), (8.0, False), (8.5, False)])
def test_the_request_timeout_must_be_below_the_heartbeat_not_equal(timeout_s: float, allowed: bool) -> None:
    sections = {"server": {"heartbeat_s": 5, "heartbeat_timeout_s": 3}, "history": {"request_timeout_s": timeout_s}}
    if allowed:
        assert load_config(overrides=sections, env={}).history.request_timeout_s == timeout_s
    else:
        with pytest.raises(ConfigError, match=rf"^history\.request_timeout_s: {timeout_s:g} s must be below .*= 8 s\)"):
            load_config(overrides=sections, env={})


# ------------------------------------------------------------------ Config.replace

def test_replace_returns_a_new_frozen_config_with_the_change() -> None:
    original = load_config(env={})
    changed = original.replace(limits={"max_rooms": 3}, log={"format": "json"})
    assert changed is not original
    assert (changed.limits.max_rooms, changed.log.format) == (3, "json")
    assert (original.limits.max_rooms, original.log.format) == (50, "text")
    assert changed.limits.rate_per_s == original.limits.rate_per_s
    assert changed.server == original.server
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        changed.limits.max_rooms = 4  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        changed.limits = original.limits  # type: ignore[misc]


def test_replace_converts_like_loading() -> None:
    changed = Config().replace(server={"allowed_origins": "https://a.example, https://b.example", "port": "9"})
    assert changed.server.allowed_origins == ("https://a.example", "https://b.example")
    assert changed.server.port == 9


@pytest.mark.parametrize(("sections", "message"), [
    ({"limits": {"max_rooms": 0}}, r"^limits\.max_rooms: must be greater than 0"),
    ({"server": {"port": 70000}}, r"^server\.port: must be a TCP port"),
    ({"limits": {"rate_per_s": "fast"}}, r"^limits\.rate_per_s: expected a number"),
    ({"limits": {"max_roms": 3}}, r"^limits\.max_roms: unknown key"),
    ({"limit": {"max_rooms": 3}}, r"^limit: unknown section"),
])
def test_replace_validates_like_loading(sections: dict[str, dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config().replace(**sections)


def test_replace_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALD_LIMITS_MAX_ROOMS", "7")
    assert Config().replace(limits={"rate_burst": 5}).limits.max_rooms == 50


# ------------------------------------------------------------------ the documented defaults

def documented_defaults() -> dict[str, dict[str, Any]]:
    """section -> key -> default, read from the key tables of docs/configuration.md."""
    found: dict[str, dict[str, Any]] = {}
    section = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if heading := re.fullmatch(r"## `\[(\w+)\]`", line.strip()):
            section = heading.group(1)
            continue
        if line.startswith("## "):
            section = None
        if section is None or not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key, default = cells[0].strip("`"), cells[1]
        # The table writes defaults as TOML values, or "unset".
        found.setdefault(section, {})[key] = None if default == "unset" else tomllib.loads(
            f"v = {default.strip('`')}")["v"]
    return found


def test_the_defaults_are_the_documented_ones() -> None:
    documented = documented_defaults()
    assert list(documented) == list(SECTIONS), "docs/configuration.md must have one table per section"
    config = load_config(env={})
    for section in SECTIONS:
        actual = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in attrs.asdict(getattr(config, section), recurse=False).items()}
        assert documented[section] == actual, f"[{section}] in docs/configuration.md"
        for key, value in actual.items():  # 20.0 in the code is written 20.0 in the doc, not 20
            assert type(documented[section][key]) is type(value), f"{section}.{key}"


def test_the_opening_names_every_section() -> None:
    # it said "seven sections" and left out [api] and [cluster] once those came
    opening = DOC.read_text(encoding="utf-8").split("\n## ")[0]
    assert re.findall(r"`\[(\w+)\]`", opening) == list(SECTIONS), opening


# a value for each flag of the table; the flag's key is read from the table itself
FLAG_VALUES = {"--host": "10.0.0.1", "--port": "1234", "--db": "x.db", "--history-url": "sqlite:///h.db",
               "--broker-url": "redis://10.0.0.21:6379/0", "--certfile": "a.pem", "--keyfile": "b.pem",
               "--metrics-port": "9100", "--log-level": "debug", "--log-format": "json"}


def documented_flags() -> dict[str, str]:
    """flag -> the key it overrides, from the table of `signald serve` flags in docs/configuration.md."""
    table = DOC.read_text(encoding="utf-8").split("## `signald serve` flags")[1].split("\n\n")[1]
    flags = {}
    for row in table.splitlines()[2:]:
        flag, key = (cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip("|"))[:2])  # not at \|
        if named := re.match(r"`(\w+\.\w+)", key):
            flags[flag.strip("`").split()[0]] = named.group(1)
    return flags


def test_every_documented_flag_sets_its_key() -> None:
    flags = documented_flags()
    assert len(flags) == 12, flags
    config = load_config(env={})
    for flag, key in flags.items():
        argv = ["serve", flag] + ([FLAG_VALUES[flag]] if flag in FLAG_VALUES else [])
        got = get(config_from_args(build_parser().parse_args(argv)), key)
        assert got != get(config, key), f"{flag} left {key} at its default"
        expected = FLAG_VALUES.get(flag, True)
        assert str(got).lower() == str(expected).lower(), (flag, key, got)


# ------------------------------------------------------------------ the value syntax table

@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
    ("false", False), ("False", False), ("0", False), ("NO", False), ("off", False)])
def test_a_boolean_variable_reads_every_documented_spelling(text: str, value: bool) -> None:
    assert load_config(env={"SIGNALD_SERVER_INSECURE": text}).server.insecure is value


def test_a_list_variable_is_trimmed_and_drops_empty_items_and_a_comma_is_the_empty_list() -> None:
    assert load_config(env={"SIGNALD_AUTH_ADMINS": " a , ,b,"}).auth.admins == ("a", "b")
    assert load_config(env={"SIGNALD_AUTH_ADMINS": ","}).auth.admins == ()


def test_toml_integers_numbers_lists_and_choices_as_documented(tmp_path: Path) -> None:
    def load(text: str) -> Config:
        return load_config(write_toml(tmp_path, text), env={})

    assert load("[limits]\nmax_rooms = 10.0\n").limits.max_rooms == 10  # an integral float is an integer
    assert load("[limits]\nrate_per_s = 2\n").limits.rate_per_s == 2.0  # an integer is a number
    assert load('[auth]\nadmins = "a, b"\n').auth.admins == ("a", "b")  # a comma-separated string is a list
    with pytest.raises(ConfigError, match=r"^limits\.max_rooms: "):
        load("[limits]\nmax_rooms = 10.5\n")
    with pytest.raises(ConfigError, match=r"^history\.synchronous: "):  # choices are case-sensitive
        load('[history]\nsynchronous = "normal"\n')
