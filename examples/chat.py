"""A terminal chat that survives daemon restarts: lines you type go to the room, others' messages print.

    .venv/bin/python examples/chat.py --url ws://127.0.0.1:8765/ --user alice --room lobby

It shows the connection state as it changes; stop and start the daemon while it runs and it comes
back by itself, with the messages it missed (marked ``(while away)``) and nothing twice. At the end
of its input (Ctrl-D) it prints how many messages the room holds and exits.
"""

from __future__ import annotations

import argparse
import sys

import trio

from signald.client import connect


async def run(url: str, user: str, room_name: str) -> None:
    async with connect(url, user=user) as client:
        watched = client.events("chat.message", "client.state", "member.joined", "member.left")
        room = await client.join(room_name)
        print(f"[{client.state}] {user} in {room_name}: {len(room.messages)} messages, "
              f"members {sorted(room.members)}", flush=True)

        async def show() -> None:
            async for event in watched:
                if event.type == "client.state":
                    print(f"[{event.data['state']}]", flush=True)
                elif event.type == "chat.message":
                    away = " (while away)" if event.replayed else ""
                    print(f"<{event.data['user_id']}> {event.data['body']}{away}", flush=True)
                else:
                    print(f"* {event.data['user_id']} {event.type.split('.')[1]}", flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(show)
            stdin = trio.wrap_file(sys.stdin)
            async for line in stdin:
                if line.strip():
                    await client.request("chat.send", {"scope": room_name, "body": line.rstrip("\n")})
            await trio.sleep(0.2)  # let what is on its way print
            nursery.cancel_scope.cancel()
        print(f"{len(room.messages)} messages in {room_name}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8765/")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--room", default="lobby")
    args = parser.parse_args()
    trio.run(run, args.url, args.user, args.room)
    return 0


if __name__ == "__main__":
    sys.exit(main())
