"""Wall-clock timestamps as the protocol writes them: ISO 8601 UTC with milliseconds and ``Z``."""

from __future__ import annotations

import math
import time


def iso_utc(epoch: float | None = None) -> str:
    """``2026-11-26T12:00:00.000Z`` for ``epoch`` seconds (now if None), milliseconds truncated."""
    secs, ms = divmod(math.floor((time.time() if epoch is None else epoch) * 1000), 1000)
    t = time.gmtime(secs)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{ms:03d}Z"
    )
