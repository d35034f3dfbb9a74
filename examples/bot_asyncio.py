"""An asyncio echo bot: answers every message in a room with ``echo: <body>``, across restarts.

    .venv/bin/python examples/bot_asyncio.py --url ws://127.0.0.1:8765/ --room lobby

Written for asyncio programs (FastAPI, aiohttp, Django) with ``signald.client.aio`` (install the
``signald[asyncio]`` extra). It needs no code for reconnecting: messages sent while the daemon was
restarting arrive once, as ``replayed`` events, and are answered like the others.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from signald.client.aio import connect


async def run(url: str, room: str, count: int | None) -> None:
    async with connect(url, user="echo-bot") as client:
        messages = client.events("chat.message")
        await client.join(room)
        print(f"echo-bot listening in {room}", flush=True)
        answered = 0
        async for event in messages:
            if event.room != room or event.data["user_id"] == client.user_id:
                continue
            await client.request("chat.send", {"scope": room, "body": f"echo: {event.data['body']}",
                                               "parent_id": event.data["id"]})
            answered += 1
            print(f"answered {event.data['user_id']}: {event.data['body']}", flush=True)
            if count is not None and answered >= count:
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8765/")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--count", type=int, help="exit after answering this many messages")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.room, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
