"""Embed signald in your own Trio program: serve it, add an ``app.*`` request type, push events.

Run:  python examples/embed.py --port 0
It starts signald, connects a client of its own, asks the custom ``app.vote`` request, publishes
an ``app.tally`` event to everyone in the room, prints what the client saw, and stops.
Everything goes through the embedding API (docs/embedding.md): ``ctx.server`` in the handler,
the object ``serve_signald`` reports outside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import trio

from signald import Config, Context, CustomMessage, SignalError, connect, default_router, load_config, serve_signald


class Vote(msgspec.Struct):
    """The ``data`` of our own ``app.vote`` request."""

    room: str
    choice: str


def build_router(tally: dict[str, int]) -> Any:
    router = default_router()

    async def vote(ctx: Context, msg: CustomMessage) -> dict[str, int]:
        data: Vote = msg.data
        if not ctx.is_member(data.room):
            raise SignalError("NOT_IN_ROOM", f"join {data.room!r} first")
        tally[data.choice] = tally.get(data.choice, 0) + 1
        ctx.server.publish_to_room(data.room, "app.tally", dict(tally))
        return dict(tally)

    router.add_custom("app.vote", Vote, vote)
    return router


async def run(config: Config) -> None:
    tally: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: serve_signald(
            config, router=build_router(tally), task_status=task_status))
        print(f"embedded signald on {server.url}")
        async with connect(server.url, user="alice") as alice:
            tallies = alice.events("app.tally")  # subscribed before the vote that causes the event
            await alice.request("room.join", {"room": "poll"})
            result = await alice.request("app.vote", {"room": "poll", "choice": "trio"})
            print(f"alice's vote acked with {result}")
            event = await tallies.next()
            print(f"alice received {event.type}: {event.data}")
            voters = [member.user_id for member in server.members("poll")]
            print(f"in the poll room: {voters}")
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", default=":memory:")
    args = parser.parse_args(argv)
    config = load_config(env={}, overrides={"server": {"port": args.port, "db": args.db}})
    trio.run(run, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
