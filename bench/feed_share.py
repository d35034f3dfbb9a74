"""A live message to a busy room of 380 whose 20 member events wait (room feeds): µs per message.

    python -m bench.feed_share

Each recipient takes its waiting share of member events first (signald.delivery.feeds); the message
is delivered in a cork, as a hub does. Before and after a change: run it with PYTHONPATH at each tree.
"""

from __future__ import annotations

import time

import trio
from trio.testing import wait_all_tasks_blocked

from signald.delivery.broker import LocalBroker
from signald.delivery.cork import Cork
from signald.delivery.feeds import RoomFeeds
from signald.delivery.frames import Frame
from signald.delivery.outbox import Outbox
from signald.protocol import MemberJoinedEvent, RoomActiveEvent, RoomData, RoomUserData

N, PENDING, ROUNDS = 380, 20, 200

async def main() -> None:
    cork, broker = Cork(), LocalBroker()
    feeds = RoomFeeds(broker, cork)
    names = [f"c{i}" for i in range(N)]
    for n in names:
        o = Outbox(10_000, binary=False, on_overflow=lambda: None, cork=cork)
        o.direct_write = len
        broker.attach(n, o)
    conns = frozenset(names)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feeds.run)
        await wait_all_tasks_blocked()
        feeds.publish("r", conns, Frame(MemberJoinedEvent(data=RoomUserData(room="r", user_id="warm"))))
        await wait_all_tasks_blocked()
        chat = Frame(RoomActiveEvent(data=RoomData(room="r")))
        total = 0.0
        for r in range(ROUNDS):
            for k in range(PENDING):
                feeds.publish("r", conns, Frame(MemberJoinedEvent(data=RoomUserData(room="r", user_id=f"u{r}-{k}"))))
            t0 = time.perf_counter()
            with cork:
                broker.deliver(conns, chat)
            total += time.perf_counter() - t0
        print(f"{total / ROUNDS * 1e6:.0f} µs per message to {N} readers with {PENDING} waiting")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
