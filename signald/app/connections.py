"""Where a server's connection tasks run, and how a stopping server closes all of them in one pass.

Closing connections one task at a time (cancel each, each writes its close frame, waits for the
reply in its own cancel scope, then leaves the hub) cost 0.6 to 0.9 ms per connection: 10 to
17 s for 19,000 clients between SIGTERM and the process's exit, all of it before a
restarted daemon can take them back. :func:`close_all` instead writes every close frame at once,
from one loop with no task switch, and gives all connections one shared deadline: each reader
meets its peer's close reply and returns as after any clean close (no ``Cancelled`` through its
nursery); what has not answered by the deadline is cancelled and closed without waiting more.

Resource handling: the nursery is shielded from the server's own cancellation (so that a
connection can tell a shutdown from a failure by ``hub.shutting_down``); only :func:`close_all`
ends it, by its deadline at the latest.
"""

from __future__ import annotations

import attrs
import trio

from signald.app.session import Session
from signald.transport.websocket import ServerWebSocket


@attrs.frozen
class Connections:
    """The connection tasks' nursery, its cancel scope, and the connections that are up."""

    scope: trio.CancelScope
    nursery: trio.Nursery
    # Every connection past its handshake, by session id: what close_all reaches at once.
    open: dict[str, tuple[Session, ServerWebSocket]] = attrs.field(factory=dict)
    stopping: trio.Event = attrs.field(factory=trio.Event)

    def add(self, session: Session, ws: ServerWebSocket) -> None:
        self.open[session.session_id] = (session, ws)

    def remove(self, session: Session) -> None:
        self.open.pop(session.session_id, None)


async def run_connections(*, task_status: trio.TaskStatus[Connections] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the connection tasks until :func:`close_all`, then until the last of them is gone."""
    with trio.CancelScope(shield=True) as scope:
        async with trio.open_nursery() as nursery:
            connections = Connections(scope, nursery)
            task_status.started(connections)
            await connections.stopping.wait()


def close_all(connections: Connections, code: int, reason: str, grace_s: float) -> list[Session]:
    """Close every open connection with ``code``: the close frames now, the rest within ``grace_s``.

    A connection whose close frame could be written at once (plain TCP, nothing queued or half
    written) waits for its peer's reply in its own reader; any other one (TLS, a writer busy with a
    backlog) is stopped now and closes itself as before (:meth:`ServerWebSocket.close`, bounded by
    the caller). Connections already closing with a code of their own keep it. Handshakes under way
    and replies that do not come within ``grace_s`` are cancelled at the deadline. Never blocks;
    returns the sessions whose close frames went out in the pass (the caller lets them leave the
    hub together, while the replies travel: :meth:`signald.app.hub.Hub.disconnect_all`).
    """
    connections.scope.deadline = trio.current_time() + grace_s
    written: list[Session] = []
    for session, ws in connections.open.values():
        if session.close_code is not None:
            continue
        session.close_code, session.close_reason = code, reason
        if ws.send_close_now(code, reason):
            written.append(session)
        elif session.cancel_scope is not None:
            session.cancel_scope.cancel()
    connections.stopping.set()
    return written
