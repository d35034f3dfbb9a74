"""signald: a small, fast, dependable real-time signalling daemon on Trio.

The embedding API::

    from signald import load_config, serve_signald

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_signald, load_config(env={}))
        print(server.url)          # ws://127.0.0.1:8765/
        server.hub.publish_to_room("lobby", "app.news", {"text": "hello"})

See docs/embedding.md.
"""

from signald.auth import AuthRefused, HandshakeRequest, Identity
from signald.client import SignaldClient, connect
from signald.config import Config, ConfigError, load_config
from signald.errors import SignalError
from signald.handlers import default_router
from signald.hub import Context, Hub
from signald.router import CustomMessage, Router
from signald.server import RunningServer, serve_signald

__version__ = "0.1.0"

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
    "SignalError",
    "SignaldClient",
    "connect",
    "default_router",
    "load_config",
    "serve_signald",
]
