"""``signald health URL``: one GET, exit status 0 on HTTP 200, else 1 (container health checks).

Standard library only (:mod:`urllib.request`): a health check must work in the smallest image,
without the ``api`` extra.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Final

DEFAULT_TIMEOUT_S: Final = 3.0


def check(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """GET ``url``: (healthy, one line saying what was seen). Never raises for network errors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(512).decode("utf-8", "replace").strip()
            return response.status == 200, f"{response.status} {body}"
    except urllib.error.HTTPError as exc:  # 503 and friends: the body says why
        body = exc.read(512).decode("utf-8", "replace").strip()
        return False, f"{exc.code} {body}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"unreachable: {reason}"
