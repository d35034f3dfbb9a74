"""Plug your own authenticator into signald: here, API keys looked up in a dict.

Run:  python examples/custom_auth.py
An authenticator is any callable that takes the handshake (path, headers, query, peer address)
and returns an ``Identity`` or raises ``AuthRefused``: the client then gets one ``error`` frame
and close code 4401 (4403 for status 403, 4429 for 429), or that HTTP status with
``server.refusals = "http"``.
An ``on_connect`` hook of the embedding API sees each session the authenticator let in.
"""

from __future__ import annotations

import sys

import trio

from signald import AuthRefused, HandshakeRequest, Identity, connect, load_config, serve_signald
from signald.client import ClientClosed

API_KEYS = {"k-alice-123": Identity("alice", roles=frozenset({"mod"})), "k-bob-456": Identity("bob")}


def api_key_authenticator(request: HandshakeRequest) -> Identity:
    key = request.header("x-api-key") or request.query.get("key")
    identity = API_KEYS.get(key or "")
    if identity is None:
        raise AuthRefused(401, "unknown API key")
    return identity


async def run() -> None:
    config = load_config(env={}, overrides={"server": {"port": 0, "db": ":memory:"}})
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: serve_signald(
            config, authenticator=api_key_authenticator, task_status=task_status))
        server.on_connect(lambda session: print(f"hook: {session.user_id} connected from {session.remote}"))
        async with connect(server.url + "?key=k-alice-123") as alice:
            info = await alice.request("session.info")
            print(f"connected as {info['user_id']} with roles {info['roles']}")
        try:
            async with connect(server.url + "?key=wrong"):
                pass
        except ClientClosed as exc:
            print(f"a wrong key is refused with close code {exc.code}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(run)
    sys.exit(0)
