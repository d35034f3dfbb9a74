"""``Metrics`` builds its prometheus-client objects on first use, all at once, and then reads plainly.

Start-up imports prometheus-client only when a metric is used (signald.app.metrics); these check
that the first use of any one metric gives the full registry the exposition had before (every
counter present, the unlabelled ones at 0), and that the object then is a plain ``Metrics``.
"""

from __future__ import annotations

import pytest

from signald.app.metrics import Metrics


def built(metrics: Metrics) -> bool:
    """Whether its prometheus-client objects exist: it is then a plain Metrics, no subclass."""
    return type(metrics) is Metrics


def test_the_first_metric_used_builds_them_all() -> None:
    metrics = Metrics()
    assert not built(metrics)
    metrics.messages_in_by["chat.send"].inc()
    assert built(metrics)  # no __getattr__ left on the counting paths
    registry = metrics.registry
    assert registry.get_sample_value("signald_messages_in_total", {"type": "chat.send"}) == 1
    assert registry.get_sample_value("signald_handshakes_abandoned_total") == 0
    assert registry.get_sample_value("signald_send_queue_coalesced_total") == 0
    assert registry.get_sample_value("signald_history_commit_seconds_count") == 0
    metrics.abandoned.inc()
    assert registry.get_sample_value("signald_handshakes_abandoned_total") == 1


@pytest.mark.parametrize("first", ["registry", "abandoned", "history_seconds", "refusals_by", "closes"])
def test_any_metric_first_gives_the_same_registry(first: str) -> None:
    metrics = Metrics()
    getattr(metrics, first)
    names = {metric.name for metric in metrics.registry.collect()}
    assert names >= {"signald_messages_in", "signald_messages_out", "signald_errors", "signald_closes",
                     "signald_refusals", "signald_handshakes_abandoned", "signald_send_queue_coalesced",
                     "signald_history_commit_seconds", "signald_connections", "signald_history_db_bytes"}


def test_closing_unused_metrics_builds_nothing_and_unknown_names_still_fail() -> None:
    metrics = Metrics()
    metrics.close()
    metrics.close()
    assert not built(metrics)
    with pytest.raises(AttributeError, match="no attribute 'counter'"):
        metrics.counter  # noqa: B018
    assert not built(metrics)
    metrics.errors_by["NOT_IN_ROOM"].inc()
    metrics.close()
    assert built(metrics)
