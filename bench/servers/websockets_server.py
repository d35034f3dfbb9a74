"""A minimal asyncio ``websockets`` broadcast server: the transport ceiling a Python user could reach.

It speaks signald's envelope for the two types the benchmarks use, with the same replies:

- ``{"type": "room.join", "id": N, "data": {"room": R}}`` → ``ack`` with ``{"room", "members"}``;
- ``{"type": "chat.send", "id": N, "data": {"scope": R, "body": B}}`` → ``websockets.broadcast()`` of
  ``{"type": "chat.message", "data": record}`` to the room's other connections, then an ``ack``
  carrying the record to the sender (signald's order: fan out, then ack).

A ``welcome`` frame is sent right after the handshake, like signald's. Nothing is stored, nothing
is validated beyond what the JSON decoder does.

    python -m bench.servers.websockets_server --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from bench.servers import chat_message

rooms: defaultdict[str, set[ServerConnection]] = defaultdict(set)
seqs: defaultdict[str, int] = defaultdict(int)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _ack(op_id: Any, data: Any) -> str:
    return _dumps({"type": "ack", "data": {"op_id": op_id, "data": data}})


async def handler(ws: ServerConnection) -> None:
    query = parse_qs(urlsplit(ws.request.path if ws.request else "/").query)
    user = query.get("user", [str(id(ws))])[0]
    joined: set[str] = set()
    await ws.send(_dumps({"type": "welcome", "data": {"protocol_version": 1, "user_id": user}}))
    try:
        async for frame in ws:
            message = json.loads(frame)
            kind, op_id, data = message.get("type"), message.get("id"), message.get("data") or {}
            if kind == "chat.send":
                room = data["scope"]
                seqs[room] += 1
                record = chat_message(room, seqs[room], user, data["body"])
                broadcast([c for c in rooms[room] if c is not ws],
                          _dumps({"type": "chat.message", "data": record}))
                await ws.send(_ack(op_id, record))
            elif kind == "room.join":
                room = data["room"]
                rooms[room].add(ws)
                joined.add(room)
                await ws.send(_ack(op_id, {"room": room, "members": len(rooms[room])}))
            else:
                await ws.send(_dumps({"type": "error", "data": {"op_id": op_id, "code": "UNKNOWN_TYPE"}}))
    except ConnectionClosed:
        pass  # the load client drops connections with a reset; not worth a traceback each
    finally:
        for room in joined:
            rooms[room].discard(ws)
            if not rooms[room]:
                del rooms[room]


async def main(host: str, port: int) -> None:
    async with serve(handler, host, port, max_size=1 << 20, backlog=4096) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"websockets ready on ws://{host}:{bound}/", file=sys.stderr, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
