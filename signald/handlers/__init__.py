"""Handlers of the protocol's inbound types, one module per concern.

:func:`default_router` returns a router with every implemented protocol type registered;
embedders start from it and add their own ``app.*`` types.
"""

from __future__ import annotations

from signald.handlers import calls as call_handlers
from signald.handlers import chat as chat_handlers
from signald.handlers import rooms as room_handlers
from signald.handlers import session as session_handlers
from signald.router import Router


def default_router() -> Router:
    """A router that handles every implemented protocol type."""
    router = Router()
    session_handlers.register(router)
    room_handlers.register(router)
    chat_handlers.register(router)
    call_handlers.register(router)
    return router
