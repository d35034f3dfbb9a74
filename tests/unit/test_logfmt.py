"""Log formats: fields kept apart from the message, ISO time with ms and offset, the ready line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from signald.logfmt import JsonFormatter, TextFormatter, announce, log_event, log_events, setup_logging

ISO_MS_OFFSET = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_json_lines_carry_fields_as_fields(captured: io.StringIO) -> None:
    setup_logging("info", "json", captured)
    log_event(logging.getLogger("signald.audit"), logging.INFO, "connection opened",
              user="alice", session="s-1", peer="203.0.113.5", message="not a field")
    entry = json.loads(captured.getvalue())
    assert entry["message"] == "connection opened"  # a field never hides the message
    assert (entry["user"], entry["session"], entry["peer"]) == ("alice", "s-1", "203.0.113.5")
    assert entry["level"] == "info" and entry["logger"] == "signald.audit"
    assert re.fullmatch(ISO_MS_OFFSET, entry["time"])


def test_text_lines_append_fields_as_key_value(captured: io.StringIO) -> None:
    setup_logging("debug", "text", captured)
    log_event(logging.getLogger("signald.rooms"), logging.DEBUG, "room joined", room="lobby", reason="a b", x=None)
    line = captured.getvalue().strip()
    assert re.fullmatch(ISO_MS_OFFSET + r' DEBUG signald.rooms: room joined room=lobby reason="a b" x=-', line)


def test_text_values_are_quoted_when_they_hold_any_whitespace_a_quote_or_an_equals_sign(captured: io.StringIO) -> None:
    setup_logging("info", "text", captured)
    values = {"nbsp": "a\u00a0b", "tab": "a\tb", "quote": 'say "hi"', "eq": "k=v", "empty": "", "plain": "s-1:é"}
    log_event(logging.getLogger("signald.audit"), logging.INFO, "x", **values)
    line = captured.getvalue().strip()
    assert line.endswith(' x nbsp="a\\u00a0b" tab="a\\tb" quote="say \\"hi\\"" eq="k=v" empty="" plain=s-1:é'), line


def test_below_the_level_nothing_is_built(captured: io.StringIO) -> None:
    setup_logging("info", "text", captured)
    log_event(logging.getLogger("signald.rooms"), logging.DEBUG, "room joined", room="lobby")
    assert captured.getvalue() == ""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_ready_line_takes_the_format_whatever_the_level(captured: io.StringIO, fmt: str) -> None:
    setup_logging("error", fmt, captured)
    announce(logging.getLogger("signald"), "signald ready on ws://127.0.0.1:1/", url="ws://127.0.0.1:1/")
    line = captured.getvalue().strip()
    assert re.search(r"signald ready on (ws://[^\s\"]+)", line)
    if fmt == "json":
        assert json.loads(line)["url"] == "ws://127.0.0.1:1/"
    else:
        assert line.endswith("url=ws://127.0.0.1:1/")


def test_formatters_render_tracebacks() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info())
    assert "RuntimeError: boom" in json.loads(JsonFormatter().format(record))["traceback"]
    assert "RuntimeError: boom" in TextFormatter().format(record)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_lines_logged_together_are_the_lines_logged_one_by_one(captured: io.StringIO, fmt: str) -> None:
    """log_events: the same lines as log_event's (but the time), in one write to our handler; another
    handler (an embedding program's) still gets one record per line."""
    setup_logging("info", fmt, captured)
    theirs: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = theirs.append  # type: ignore[method-assign]
    audit = logging.getLogger("signald.audit")
    audit.addHandler(other)
    try:
        rows = [{"user": f"u{i}", "session": f"s-{i}", "reason": "server shutting down"} for i in range(3)]
        for fields in rows:
            log_event(audit, logging.INFO, "connection closed", **fields)
        one_by_one = captured.getvalue()
        captured.seek(0)
        captured.truncate()
        log_events(audit, logging.INFO, "connection closed", rows)
        log_events(logging.getLogger("signald.rooms"), logging.DEBUG, "room left", rows)  # below the level: nothing
    finally:
        audit.removeHandler(other)

    def timeless(text: str) -> list[str]:
        return [re.sub(ISO_MS_OFFSET, "T", line) for line in text.splitlines()]

    assert timeless(captured.getvalue()) == timeless(one_by_one) and len(timeless(one_by_one)) == 3
    assert [record.getMessage() for record in theirs] == ["connection closed"] * 6


def test_lines_logged_together_to_a_stream_that_fails_are_reported_not_raised(
    captured: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``StreamHandler`` does for one line: the daemon goes on (a test's closed stderr, a full disk)."""
    setup_logging("info", "text", captured)
    captured.close()
    log_events(logging.getLogger("signald.audit"), logging.INFO, "connection closed", [{"user": "u0"}])
    assert "--- Logging error ---" in capsys.readouterr().err
