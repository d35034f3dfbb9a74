"""``Client`` and ``AsyncClient``: the server API (docs/server-api.md) from Python, on httpx.

Why httpx: one library gives the blocking client (Django, Flask, cron jobs) and the async one, and
the async one runs on asyncio (FastAPI, Starlette) and on Trio alike; both keep connections alive
between calls and have real timeouts. The standard library has no async HTTP client, and a
thread around ``urllib`` per call would tie the async side to one event loop.

Each method builds its request with the same function for both clients (:func:`_publish`...), so
the two cannot drift apart.

Error handling: a call the daemon refuses raises :class:`ApiError` (``status``, ``code``,
``message``); network failures raise httpx's exceptions (``httpx.HTTPError``).

Resource handling: a client holds a connection pool; use it as a (async) context manager or call
``close()`` / ``aclose()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import httpx


class ApiError(Exception):
    """The daemon answered ``{"error": {"code", "message"}}`` (or something that is not the API)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@attrs.frozen
class _Call:
    method: str
    name: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    pick: Callable[[Any], Any] = lambda result: result


def _publish(room: str, type: str, data: Any, store: bool) -> _Call:
    body = {"room": room, "type": type, "data": data, **({"store": True} if store else {})}
    return _Call("POST", "publish", body, pick=lambda r: r["delivered"])


def _notify(user_id: str, type: str, data: Any) -> _Call:
    return _Call("POST", "notify", {"user_id": user_id, "type": type, "data": data}, pick=lambda r: r["delivered"])


def _disconnect(user_id: str, reason: str) -> _Call:
    return _Call("POST", "disconnect", {"user_id": user_id, "reason": reason}, pick=lambda r: r["sessions"])


def _kick(room: str, user_id: str, reason: str | None) -> _Call:
    body = {"room": room, "user_id": user_id} | ({"reason": reason} if reason is not None else {})
    return _Call("POST", "kick", body, pick=lambda r: r["sessions"])


def _presence(room: str) -> _Call:
    return _Call("GET", "presence", params={"room": room}, pick=lambda r: r["members"])


def _history(room: str, before: int | None, after: int | None, limit: int | None) -> _Call:
    params = {k: v for k, v in {"room": room, "before": before, "after": after, "limit": limit}.items()
              if v is not None}
    return _Call("GET", "history", params=params)


def _stats() -> _Call:
    return _Call("GET", "stats")


def _result(call: _Call, response: httpx.Response) -> Any:
    try:
        payload = response.json()
    except ValueError:
        raise ApiError(response.status_code, "BAD_REQUEST", response.text.strip()[:200]) from None
    if response.status_code != 200 or "result" not in payload:
        error = payload.get("error") or {}
        raise ApiError(response.status_code, str(error.get("code", "INTERNAL")), str(error.get("message", "")))
    return call.pick(payload["result"])


def _options(url: str, key: str, timeout_s: float) -> dict[str, Any]:
    return {"base_url": url.rstrip("/") + "/api/v1/", "headers": {"authorization": f"Bearer {key}"},
            "timeout": timeout_s}


class Client:
    """Blocking client: ``Client("http://127.0.0.1:8765", key).publish("lobby", "app.news", {...})``."""

    def __init__(self, url: str, key: str, *, timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(transport=transport, **_options(url, key, timeout_s))

    def _run(self, call: _Call) -> Any:
        return _result(call, self._http.request(call.method, call.name, json=call.json, params=call.params))

    def publish(self, room: str, type: str, data: Any = None, *, store: bool = False) -> int:
        """Send an ``app.*`` event to the room's connections; returns how many got it.

        ``store``: keep it in the room's history first (docs/server-api.md)."""
        return int(self._run(_publish(room, type, data, store)))

    def notify(self, user_id: str, type: str, data: Any = None) -> int:
        """Send an ``app.*`` event to every device of ``user_id``; returns how many got it."""
        return int(self._run(_notify(user_id, type, data)))

    def disconnect(self, user_id: str, reason: str) -> int:
        """End every session of ``user_id`` (``session.revoked``, close 4003); returns how many."""
        return int(self._run(_disconnect(user_id, reason)))

    def kick(self, room: str, user_id: str, reason: str | None = None) -> int:
        """Remove ``user_id`` from ``room`` as ``room.kick`` does; returns the devices kicked."""
        return int(self._run(_kick(room, user_id, reason)))

    def presence(self, room: str) -> list[dict[str, Any]]:
        """The room's members: ``[{user_id, status, devices, last_seen}]``."""
        return list(self._run(_presence(room)))

    def history(self, room: str, *, before: int | None = None, after: int | None = None,
                limit: int | None = None) -> dict[str, Any]:
        """A history page, as ``chat.history`` answers: ``{messages, has_more}``."""
        return dict(self._run(_history(room, before, after, limit)))

    def stats(self) -> dict[str, Any]:
        """The daemon's counters, as ``system.stats`` answers."""
        return dict(self._run(_stats()))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient:
    """The same calls, awaited: ``await AsyncClient(url, key).publish(...)`` (asyncio or Trio)."""

    def __init__(self, url: str, key: str, *, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self._http = httpx.AsyncClient(transport=transport, **_options(url, key, timeout_s))

    async def _run(self, call: _Call) -> Any:
        return _result(call, await self._http.request(call.method, call.name, json=call.json, params=call.params))

    async def publish(self, room: str, type: str, data: Any = None, *, store: bool = False) -> int:
        return int(await self._run(_publish(room, type, data, store)))

    async def notify(self, user_id: str, type: str, data: Any = None) -> int:
        return int(await self._run(_notify(user_id, type, data)))

    async def disconnect(self, user_id: str, reason: str) -> int:
        return int(await self._run(_disconnect(user_id, reason)))

    async def kick(self, room: str, user_id: str, reason: str | None = None) -> int:
        return int(await self._run(_kick(room, user_id, reason)))

    async def presence(self, room: str) -> list[dict[str, Any]]:
        return list(await self._run(_presence(room)))

    async def history(self, room: str, *, before: int | None = None, after: int | None = None,
                      limit: int | None = None) -> dict[str, Any]:
        return dict(await self._run(_history(room, before, after, limit)))

    async def stats(self) -> dict[str, Any]:
        return dict(await self._run(_stats()))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
