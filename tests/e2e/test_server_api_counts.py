"""The counts the server API answers are the connections concerned, on every node.

The contract: ``publish`` and ``notify`` answer ``{delivered}`` (connections reached),
``disconnect`` and ``kick`` ``{sessions}``; and "every rule of this page holds unchanged when
several daemons share one broker". Over three nodes the user's devices and the room's connections
are spread over the nodes while the API is asked on one of them: the counts are the same as on one
node, and match who actually got the event or lost the session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import clients, events_of, make_config, start_server
from over_nodes import settle

pytestmark = pytest.mark.usefixtures("nodes")  # every test over 1 node and over 3 nodes

KEY = "api-counts-key-0123456789"


async def test_delivered_and_sessions_count_the_connections_concerned_on_every_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    srv = await start_server(nursery, make_config(tmp_path, api={"keys": [KEY]}))
    async with clients(srv, "alice", "alice", "bob", "carol") as (a1, a2, bob, carol):
        for c in (a1, a2, bob):
            await c.request("room.join", {"room": "lobby"})
        await carol.request("room.join", {"room": "other"})
        await settle()
        for c in (a1, a2, bob, carol):
            await events_of(c)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}",
                                     headers={"authorization": f"Bearer {KEY}"}) as http:
            async def call(path: str, body: dict[str, Any]) -> Any:
                response = await http.post(f"/api/v1/{path}", json=body)
                assert response.status_code == 200, response.text
                await settle()
                return response.json()["result"]

            assert await call("publish", {"room": "lobby", "type": "app.news", "data": 1}) == {"delivered": 3}
            for c in (a1, a2, bob):
                assert await events_of(c) == [("app.news", 1)]
            assert await call("notify", {"user_id": "alice", "type": "app.ping", "data": 2}) == {"delivered": 2}
            for c in (a1, a2):
                assert await events_of(c) == [("app.ping", 2)]
            assert await call("notify", {"user_id": "nobody", "type": "app.ping", "data": 3}) == {"delivered": 0}
            assert await call("kick", {"room": "lobby", "user_id": "bob"}) == {"sessions": 1}
            assert await call("disconnect", {"user_id": "alice", "reason": "bye"}) == {"sessions": 2}
            for c in (a1, a2):
                with trio.fail_after(5):
                    await c.closed.wait()
                assert c.ws.closed is not None and c.ws.closed.code == 4003
            assert await call("disconnect", {"user_id": "alice", "reason": "again"}) == {"sessions": 0}
            assert await call("publish", {"room": "lobby", "type": "app.news", "data": 4}) == {"delivered": 0}
