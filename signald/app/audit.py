"""The audit log's line for each connection opened and closed (``signald.audit``, docs/deploy.md "Logs").

Every connection that ends writes one ``connection closed`` line. A stopping server ends thousands
at once: their lines are written together (:func:`signald.logfmt.log_events`, one write instead of
one per line), each still a line of its own with the same fields.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from signald.app.session import Session
from signald.logfmt import log_event, log_events
from signald.timefmt import epoch_of

audit = logging.getLogger("signald.audit")  # one line per connection opened or closed, kick, revocation


def log_opened(session: Session) -> None:
    log_event(audit, logging.INFO, "connection opened", user=session.user_id, session=session.session_id,
              peer=session.remote)


def closed_fields(session: Session, wall: float) -> dict[str, Any]:
    """The fields of ``session``'s ``connection closed`` line, ``wall`` being now (epoch seconds)."""
    code = session.close_code
    # The client's own code when it closed first; 1006 (RFC 6455: no close frame) when it vanished.
    logged_code = code if code is not None else session.peer_close_code or 1006
    return {"user": session.user_id, "session": session.session_id, "peer": session.remote,
            "duration_s": round(wall - epoch_of(session.connected_at), 3), "close_code": logged_code,
            "closed_by": "client" if code is None else "server", "reason": session.close_reason}


def log_closed(sessions: Iterable[Session], wall: float) -> None:
    """A ``connection closed`` line for each of ``sessions``, written together; their durations are
    worth computing only for lines that are written."""
    if audit.isEnabledFor(logging.INFO):
        log_events(audit, logging.INFO, "connection closed", (closed_fields(session, wall) for session in sessions))
