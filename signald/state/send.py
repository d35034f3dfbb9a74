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
    """One event and the connections (devices) it goes to; ``conns`` is never empty.

    ``room`` is set when ``conns`` are every connection in that room (``member.joined``/``left``):
    the app may then batch the room's events (see :mod:`signald.delivery.feeds`).
    """

    conns: frozenset[str]
    event: Outbound
    room: str | None = attrs.field(default=None, eq=False)
