"""For backends: call a running daemon's server API over HTTP (docs/server-api.md).

``Client(url, key)`` (blocking) and ``AsyncClient(url, key)`` (asyncio or Trio) have one method
per call: ``publish``, ``notify``, ``disconnect``, ``kick``, ``presence``, ``history``, ``stats``.
They need ``httpx`` (``pip install 'signald[api]'``); :mod:`signald.api.health` (``signald health``)
needs only the standard library, so the names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from signald.lazy import exports

_EXPORTS: dict[str, str] = {
    "ApiError": "signald.api.client",
    "AsyncClient": "signald.api.client",
    "Client": "signald.api.client",
}

__all__ = ["ApiError", "AsyncClient", "Client"]

if TYPE_CHECKING:
    from signald.api.client import ApiError, AsyncClient, Client

__getattr__, __dir__ = exports(__name__, _EXPORTS)
