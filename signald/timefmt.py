"""Wall-clock timestamps as the protocol writes them: ISO 8601 UTC with milliseconds and ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_utc(epoch: float | None = None) -> str:
    """``2026-11-26T12:00:00.000Z`` for ``epoch`` seconds (now if None)."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
