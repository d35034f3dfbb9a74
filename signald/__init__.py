"""signald: a small, fast, dependable real-time signalling daemon on Trio.

The embedding API::

    from signald import load_config, serve_signald

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_signald, load_config(env={}))
        print(server.url)          # ws://127.0.0.1:8765/
        server.publish_to_room("lobby", "app.news", {"text": "hello"})

See docs/embedding.md.

The names below are loaded on first use (PEP 562 ``__getattr__``), so importing one layer —
``signald.state.rooms``, say — loads that layer and what it depends on, never the whole daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from signald.lazy import exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AuthRefused": "signald.auth",
    "HandshakeRequest": "signald.auth",
    "Identity": "signald.auth",
    "SignaldClient": "signald.client",
    "connect": "signald.client",
    "Config": "signald.config",
    "ConfigError": "signald.config",
    "load_config": "signald.config",
    "SignalError": "signald.errors",
    "default_router": "signald.handlers",
    "Context": "signald.app.context",
    "Hub": "signald.app.hub",
    "CustomMessage": "signald.router",
    "Router": "signald.router",
    "RunningServer": "signald.server",
    "Signald": "signald.app.facade",
    "serve_signald": "signald.server",
}

__all__ = [
    "AuthRefused",
    "Config",
    "ConfigError",
    "Context",
    "CustomMessage",
    "HandshakeRequest",
    "Hub",
    "Identity",
    "Router",
    "RunningServer",
    "Signald",
    "SignalError",
    "SignaldClient",
    "connect",
    "default_router",
    "load_config",
    "serve_signald",
]

if TYPE_CHECKING:
    from signald.app.context import Context
    from signald.app.facade import Signald
    from signald.app.hub import Hub
    from signald.auth import AuthRefused, HandshakeRequest, Identity
    from signald.client import SignaldClient, connect  # connect: the reconnecting client; SignaldClient: raw
    from signald.config import Config, ConfigError, load_config
    from signald.errors import SignalError
    from signald.handlers import default_router
    from signald.router import CustomMessage, Router
    from signald.server import RunningServer, serve_signald

__getattr__, __dir__ = exports(__name__, _EXPORTS)
