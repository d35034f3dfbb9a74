"""The exceptions a client raises besides :class:`signald.errors.SignalError` and ``TimeoutError``.

All of them are plain exceptions (never an ``ExceptionGroup``), subclasses of :class:`ClientError`:

- :class:`ConnectionLost`: the request went out, the connection dropped before its reply, and the
  request is not safe to send again (it may or may not have been carried out).
- :class:`ClientClosed`: the client is closed — by the program, or because the server told it to
  stop (revoked, forbidden, a refused token and no ``get_token``) — so nothing more can be asked.
- :class:`EventsOverflow`: an ``events()`` iterator whose program did not read for so long that
  its buffer filled; it has delivered everything it held and ends with this.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of the client's own failures (the server's refusals are ``SignalError``)."""


class ConnectionLost(ClientError):
    """The connection dropped after ``type`` was sent and before its reply; not resent."""

    def __init__(self, request_type: str, op_id: str) -> None:
        super().__init__(f"connection lost before the reply to {request_type} ({op_id}); it may or may not "
                         "have been carried out, and it is not safe to send again by itself")
        self.request_type = request_type
        self.op_id = op_id


class ClientClosed(ClientError):
    """The client is closed; ``code`` is the close code or HTTP status that ended it (None: the program)."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason if code is None else f"{reason} (code {code})")
        self.reason = reason
        self.code = code


class EventsOverflow(ClientError):
    """An ``events()`` iterator's buffer filled because the program did not read; it ends here."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} events waited unread; this iterator stopped here (the room "
                         "views are still exact: read room.messages, or open a new events() iterator)")
        self.limit = limit
