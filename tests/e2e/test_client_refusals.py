"""The clients against refusals as browsers see them (``server.refusals = "close"``, the default):
one ``error`` frame instead of ``welcome``, then close 4401 / 4403 / 4429.

4401 makes a client with ``get_token`` fetch a new token and come in; without one ``connect``
raises :class:`ClientClosed` with the close code, as it does for a 4429 on the first connection.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import jwt
import pytest
import trio
from conftest import make_config, start_server

from signald.client import ClientClosed
from signald.client import connect as trio_connect
from signald.client.aio import connect as aio_connect

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


def token(user: str, exp_in_s: float) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + exp_in_s)}, SECRET, algorithm="HS256")


async def test_4401_makes_the_client_get_a_new_token_and_come_in(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await start_server(nursery, make_config(tmp_path, auth={"mode": "jwt", "jwt_secret": SECRET}))
    asked: list[str] = []

    def get_token() -> str:
        asked.append("new")
        return token("alice", 3600)

    with trio.fail_after(10):
        async with trio_connect(srv.url, token=token("alice", -60), get_token=get_token) as client:
            info = await client.request("session.info")
    assert info["user_id"] == "alice" and asked == ["new"]


async def test_4401_without_get_token_stops_with_the_close_code(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await start_server(nursery, make_config(tmp_path, auth={"mode": "jwt", "jwt_secret": SECRET}))
    with trio.fail_after(10), pytest.raises(ClientClosed) as refused:
        async with trio_connect(srv.url, token=token("alice", -60)):
            pass
    assert refused.value.code == 4401


async def test_4429_on_the_first_connection_raises_with_the_close_code(nursery: trio.Nursery, tmp_path: Path) -> None:
    # (on a reconnect, 4429 waits retry_after_s: the decision table cases in tests/data/client_cases.json)
    srv = await start_server(nursery, make_config(tmp_path, limits={"max_connections_per_user": 1}))
    with trio.fail_after(20):
        async with trio_connect(srv.url, user="alice") as first:
            assert (await first.request("session.info"))["user_id"] == "alice"
            with pytest.raises(ClientClosed) as refused:
                async with trio_connect(srv.url, user="alice"):
                    pass
            assert refused.value.code == 4429


async def test_the_asyncio_client_reads_the_refusal_too(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await start_server(nursery, make_config(tmp_path, auth={"mode": "jwt", "jwt_secret": SECRET}))
    asked: list[str] = []

    async def program() -> tuple[int | None, str]:
        try:
            async with aio_connect(srv.url, token=token("alice", -60)):
                pass
        except ClientClosed as exc:
            code = exc.code
        else:  # pragma: no cover - the assertion below reports it
            code = None

        def get_token() -> str:
            asked.append("new")
            return token("bob", 3600)

        async with aio_connect(srv.url, token=token("bob", -60), get_token=get_token) as client:
            info = await client.request("session.info")
        return code, info["user_id"]

    with trio.fail_after(20):
        code, user = await trio.to_thread.run_sync(lambda: asyncio.run(program()))
    assert (code, user, asked) == (4401, "bob", ["new"])
