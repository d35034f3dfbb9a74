"""The one shape every sans-IO state module returns its events in.

Rooms, presence and calls do not send anything: each operation returns :class:`Send` values in
delivery order, and the app encodes each event once and hands it to the listed connections.
"""

from __future__ import annotations

import attrs

from signald.protocol import Outbound

__all__ = ["Send"]


@attrs.frozen(slots=True)
class Send:
    """One event and the connections (devices) it goes to; ``conns`` is never empty."""

    conns: frozenset[str]
    event: Outbound
