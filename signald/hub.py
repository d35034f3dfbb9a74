"""Deprecated import path: use :mod:`signald` (``Context``, ``Hub``) instead.

``from signald.hub import Context`` was shown in earlier documentation; it keeps working as a
thin re-export of :mod:`signald.app.context` and :mod:`signald.app.hub` and will be removed in a later release.
"""

from signald.app.context import Context
from signald.app.hub import Hub

__all__ = ["Context", "Hub"]
