"""Wall-clock timestamps as the protocol writes them: ISO 8601 UTC with milliseconds and ``Z``."""

from __future__ import annotations

import math
import time
from datetime import datetime

_last: tuple[int, str] = (-1, "")  # (epoch second, its "YYYY-MM-DDTHH:MM:SS"): one per second


def iso_utc(epoch: float | None = None) -> str:
    """``2026-11-26T12:00:00.000Z`` for ``epoch`` seconds (now if None), milliseconds truncated.

    Thread-safe: the cache of the last second's text is one tuple, replaced whole.
    """
    global _last
    secs, ms = divmod(math.floor((time.time() if epoch is None else epoch) * 1000), 1000)
    last = _last
    if last[0] != secs:
        t = time.gmtime(secs)
        last = _last = (
            secs,
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}",
        )
    return f"{last[1]}.{ms:03d}Z"


def epoch_of(text: str) -> float:
    """The epoch seconds of a timestamp :func:`iso_utc` wrote (its inverse, to the millisecond)."""
    return datetime.fromisoformat(text).timestamp()
