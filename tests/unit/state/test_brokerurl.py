"""``cluster.broker_url``: the forms a user writes, what they select, and errors without passwords."""

from __future__ import annotations

import pytest

from signald.cli import main
from signald.cluster.wire import Names
from signald.config import ClusterConfig, HistoryConfig
from signald.state.brokerurl import BrokerURL, parse_broker_url


def test_one_redis_is_handed_on_as_written_with_its_database() -> None:
    assert parse_broker_url("redis://:pw@10.0.0.5:6380/3") == BrokerURL(
        "redis", "redis://:pw@10.0.0.5:6380/3", 3, shown="redis://:***@10.0.0.5:6380/3")
    assert parse_broker_url("rediss://cache.internal").db == 0
    assert parse_broker_url("unix:///run/redis.sock?db=5").db == 5


def test_sentinel_lists_its_sentinels_service_database_and_secrets() -> None:
    url = parse_broker_url("redis+sentinel://app:s3cret@s1.internal,s2.internal:26380,[fd00::7]:5000"
                           "/mymaster/2?sentinel_password=other")
    assert url.kind == "sentinel"
    assert url.hosts == (("s1.internal", 26379), ("s2.internal", 26380), ("fd00::7", 5000))
    assert (url.service, url.db, url.username, url.password, url.sentinel_password) == (
        "mymaster", 2, "app", "s3cret", "other")
    assert "s3cret" not in url.shown and "other" not in url.shown
    assert url.shown.startswith("redis+sentinel://app:***@s1.internal,")
    plain = parse_broker_url("redis+sentinel://127.0.0.1/mymaster")
    assert (plain.db, plain.password, plain.sentinel_password) == (0, None, None)


def test_redis_cluster_lists_its_seed_nodes_and_login() -> None:
    url = parse_broker_url("redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2,[fd00::7]:7001/0")
    assert url.kind == "cluster"
    assert url.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("fd00::7", 7001))
    assert (url.db, url.username, url.password) == (0, "app", "s3cret")
    assert url.shown == "redis+cluster://app:***@10.0.0.1:7000,10.0.0.2,[fd00::7]:7001/0"
    assert parse_broker_url("redis+cluster://127.0.0.1:7000").hosts == (("127.0.0.1", 7000),)


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://:hunter2@s1:26379", "expected /service_name[/db] after the sentinels"),
    ("redis+sentinel://:hunter2@s1:26379/", "expected /service_name[/db] after the sentinels"),
    ("redis+sentinel://:hunter2@s1:26379/m/0/extra", "expected /service_name[/db] after the sentinels"),
    ("redis+sentinel://:hunter2@s1:port/m", "a sentinel must be host[:port], got 's1:port'"),
    ("redis+sentinel://:hunter2@s1,,s2/m", "a sentinel must be host[:port], got ''"),
    ("redis+sentinel://:hunter2@s1:70000/m", "a sentinel must be host[:port]"),
    ("redis+sentinel://:hunter2@s1/m/one", "the database must be a number"),
    ("redis+sentinel://:hunter2@s1/m?ssl=true", "unknown option(s) ssl (only sentinel_password)"),
    ("redis://:hunter2@h:6379/x", "the database must be a number"),
    ("redis://:hunter2@h:port/0", "not a valid Redis URL"),
    ("http://:hunter2@h/0", "expected redis://host:port/db"),
    ("redis+cluster://:hunter2@h:7000/3", "a Redis Cluster has database 0 only"),
    ("redis+cluster://:hunter2@h:7000,h:x", "a seed node must be host[:port], got 'h:x'"),
    ("redis+cluster://:hunter2@h?ssl=true", "a redis+cluster:// URL takes no options"),
    ("rediss+cluster://:hunter2@h:7000", "TLS to a Redis Cluster (rediss+cluster://) is not supported"),
])
def test_a_malformed_url_says_what_is_wrong_and_never_the_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"^broker_url: ") as caught:
        ClusterConfig(broker_url=url)
    assert says in str(caught.value) and "hunter2" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_config_repr_hides_both_passwords() -> None:
    config = ClusterConfig(broker_url="redis+sentinel://:hunter2@s1/m?sentinel_password=swordfish")
    assert "hunter2" not in repr(config) and "swordfish" not in repr(config)
    history = HistoryConfig(url="postgresql://app@db.internal/signald?sslmode=require&password=swordfish")
    assert "swordfish" not in repr(history) and "sslmode=require" in repr(history)  # libpq's option too


def test_a_malformed_sentinel_url_on_the_command_line_is_one_line_naming_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNALD_CLUSTER_BROKER_URL", "redis+sentinel://:hunter2@s1:x/m")
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == ("signald: configuration error: cluster.broker_url: a sentinel must be host[:port], "
                   "got 's1:x' in 'redis+sentinel://:***@s1:x/m'\n")


def test_names_take_the_database_of_a_sentinel_url() -> None:
    assert Names("redis+sentinel://s1,s2/mymaster/4").state == "{signald.4}.state"
    assert Names("redis+sentinel://s1/mymaster").state == Names("redis://h:6379/0").state
    assert Names("redis+cluster://h1:7000,h2:7000").state == "{signald.0}.state"
