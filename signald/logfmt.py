"""Log formats (text and JSON) and the helper that logs an event with its fields.

:func:`log_event` logs a short message plus named fields (``user``, ``session``, ``peer``...): the
text format appends them as ``key=value``, the JSON format writes them as fields of the object, so a
log pipeline can filter on them without parsing the message. Both formats stamp ISO 8601 local time
with milliseconds and the UTC offset (``2026-11-26T12:00:00.123+01:00``).

Secrets (tokens, API keys) are never passed to these functions; nothing here filters them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, TextIO

FIELDS: Final = "signald_fields"  # the LogRecord attribute that carries an event's fields


def log_event(logger: logging.Logger, level: int, message: str, /, **fields: Any) -> None:
    """Log ``message`` with ``fields`` kept apart from it (see the module docstring)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={FIELDS: fields})


def log_events(logger: logging.Logger, level: int, message: str, rows: Iterable[dict[str, Any]], /) -> None:
    """Log ``message`` once per row of fields, each a line of its own as :func:`log_event` writes
    it, but cheaper: no caller lookup, and our handlers write the lines together (one write for
    thousands of lines instead of one each: :class:`LineStreamHandler`). For a stopping server's
    "connection closed" lines; other handlers (an embedding program's) get one record per row."""
    if not logger.isEnabledFor(level):
        return
    holding = [handler for handler in _handlers_of(logger) if isinstance(handler, LineStreamHandler)]
    for handler in holding:
        handler.hold()
    try:
        for fields in rows:
            logger.handle(logger.makeRecord(logger.name, level, "(signald)", 0, message, (), None,
                                            extra={FIELDS: fields}))
    finally:
        for handler in holding:
            handler.write_held()


def _handlers_of(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of ``logger`` reaches (as ``Logger.callHandlers`` walks them)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found


class LineStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that can hold its lines and write them at once (:func:`log_events`).

    Lines that other threads log meanwhile are held with them, in order. A write that fails is
    reported as ``StreamHandler`` reports one (``handleError``), never raised."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._held: list[str] | None = None
        self._last: logging.LogRecord | None = None  # the last record held: named if the write fails

    def hold(self) -> None:
        with self.lock or contextlib.nullcontext():
            if self._held is None:
                self._held = []

    def write_held(self) -> None:
        with self.lock or contextlib.nullcontext():
            held, last, self._held, self._last = self._held, self._last, None, None
            if held and last is not None:
                try:
                    self.stream.write("".join(held))
                    self.flush()
                except Exception:
                    self.handleError(last)

    def emit(self, record: logging.LogRecord) -> None:
        held = self._held
        if held is None:
            super().emit(record)
            return
        try:
            held.append(self.format(record) + self.terminator)
            self._last = record
        except Exception:
            self.handleError(record)


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, FIELDS, None)
    return fields if isinstance(fields, dict) else {}


_QUOTED: Final = re.compile(r'[\s"=]')  # \s is str.isspace(); one C-level scan, not a generator per character


def _text_value(value: Any) -> str:
    text = "-" if value is None else str(value)
    return json.dumps(text) if (not text or _QUOTED.search(text)) else text


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value ...`` (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the event's fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)  # a field never hides time, level, logger or message
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """One handler on the root logger, writing ``fmt`` (``text`` or ``json``) to stderr."""
    handler = LineStreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def announce(logger: logging.Logger, message: str, /, **fields: Any) -> None:
    """Write an INFO line through the root handlers whatever the level, for lines that supervisors,
    scripts and tests wait for (``signald ready on ...``): the line takes the configured format."""
    record = logger.makeRecord(logger.name, logging.INFO, "(signald)", 0, message, (), None,
                               extra={FIELDS: fields})
    handlers = logging.getLogger().handlers
    if not handlers:  # logging not set up (an embedding program): the line still appears
        print(TextFormatter().format(record), file=sys.stderr, flush=True)
    for handler in handlers:
        handler.handle(record)
