"""Watch who is in a room and how they are: joins, leaves, status changes and typing.

    .venv/bin/python examples/presence_watch.py --url ws://127.0.0.1:8765/ --room lobby

Prints one line per change, from the room view the client keeps (``room.members``,
``room.presence``, ``room.typing``); ``--seconds`` stops it after a while.
"""

from __future__ import annotations

import argparse
import math
import sys

import trio

from signald.client import connect

WATCHED = ("member.joined", "member.left", "presence.update", "chat.typing.user", "client.state")


async def run(url: str, room_name: str, seconds: float) -> None:
    async with connect(url, user="watcher") as client:
        changes = client.events(*WATCHED)
        room = await client.join(room_name)
        print(f"watching {room_name}: {room.presence}", flush=True)
        with trio.move_on_after(seconds):
            async for event in changes:
                if event.type == "client.state":
                    print(f"[{event.data['state']}]", flush=True)
                elif event.type == "chat.typing.user":
                    print(f"{event.data['user_id']} {'is typing' if event.data['typing'] else 'stopped typing'}",
                          flush=True)
                elif event.type == "presence.update":
                    print(f"{event.data['user_id']} is {event.data['status']}", flush=True)
                else:
                    print(f"{event.data['user_id']} {event.type.split('.')[1]}; now {room.presence}", flush=True)
        print(f"done: {room.presence}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8765/")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--seconds", type=float, default=math.inf)
    args = parser.parse_args()
    trio.run(run, args.url, args.room, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
