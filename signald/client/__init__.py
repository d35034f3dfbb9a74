"""Python clients for signald: ``from signald.client import connect`` (Trio), ``signald.client.aio`` (asyncio).

    async with connect("ws://127.0.0.1:8765/", user="alice") as client:
        room = await client.join("lobby")
        await client.request("chat.send", {"scope": "lobby", "body": "hi"})
        print([m["body"] for m in room.messages])

Both reconnect by themselves and resume every joined room exactly (docs/client.md). The modules:

- ``core``, ``schedule``, ``view``, ``model``, ``wire``, ``base``, ``errors``: sans-IO — the decisions
  and the room views, unit-tested without sockets;
- ``trio_client`` (re-exported here) and ``aio``: the two thin adapters;
- ``raw``: the low-level one-connection client the test suite and the benchmarks drive the daemon
  with (``SignaldClient``; its ``connect`` is ``signald.client.raw.connect``).

The names are loaded on first use, so importing the sans-IO modules loads neither trio nor asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from signald.lazy import exports

_EXPORTS: dict[str, str] = {
    "connect": "signald.client.trio_client",
    "Client": "signald.client.trio_client",
    "Events": "signald.client.base",
    "Backoff": "signald.client.schedule",
    "Event": "signald.client.model",
    "Room": "signald.client.view",
    "ClientError": "signald.client.errors",
    "ClientClosed": "signald.client.errors",
    "ConnectionLost": "signald.client.errors",
    "EventsOverflow": "signald.client.errors",
    "SignalError": "signald.errors",
    # the low-level client of the test suite and benchmarks
    "SignaldClient": "signald.client.raw",
    "REPLY_TYPES": "signald.client.raw",
    "build_url": "signald.client.raw",
}

__all__ = [
    "REPLY_TYPES",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectionLost",
    "Event",
    "Events",
    "EventsOverflow",
    "Room",
    "SignalError",
    "SignaldClient",
    "build_url",
    "connect",
]

if TYPE_CHECKING:
    from signald.client.base import Events
    from signald.client.errors import ClientClosed, ClientError, ConnectionLost, EventsOverflow
    from signald.client.model import Event
    from signald.client.raw import REPLY_TYPES, SignaldClient, build_url
    from signald.client.schedule import Backoff
    from signald.client.trio_client import Client, connect
    from signald.client.view import Room
    from signald.errors import SignalError

__getattr__, __dir__ = exports(__name__, _EXPORTS)
