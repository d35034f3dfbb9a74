"""python-socketio ``AsyncServer`` on aiohttp: what a Python team would otherwise deploy.

Events (namespace ``/``):

- ``join`` (room name) → enters the room; the ack carries ``{"room", "members"}``.
- ``chat`` (``{"room", "body"}``) → builds a ChatMessage-shaped record, emits ``chat`` to the room
  except the sender (``skip_sid``), and returns the record as the ack (the callback), exactly
  signald's ``chat.send`` semantics minus the storage.

The user name comes from the ``user`` query parameter, like signald's ``auth.mode = "none"``.

    python -m bench.servers.socketio_server --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from bench.servers import chat_message


def build_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)
    users: dict[str, str] = {}
    seqs: defaultdict[str, int] = defaultdict(int)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        users[sid] = query.get("user", [sid])[0]

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        users.pop(sid, None)

    @sio.on("join")
    async def join(sid: str, room: str) -> dict[str, Any]:
        await sio.enter_room(sid, room)
        return {"room": room, "members": len(sio.manager.rooms.get("/", {}).get(room, ()))}

    @sio.on("chat")
    async def chat(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        room = data["room"]
        seqs[room] += 1
        message = chat_message(room, seqs[room], users.get(sid, sid), data["body"])
        await sio.emit("chat", message, room=room, skip_sid=sid)
        return message

    return app


async def main(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"socketio ready on ws://{host}:{bound}/", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
