"""Which channels a node hears (signald.cluster.channels), against a pub/sub that records calls."""

from __future__ import annotations

import types

from signald.cluster.channels import Subscriptions
from signald.cluster.wire import Names

NAMES = Names("redis://127.0.0.1:1/3")


class RecordingPubSub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))


def subscriptions(sessions: set[str], users: set[str], rooms: dict[str, list[str]],
                  dropped: list[str]) -> tuple[Subscriptions, RecordingPubSub]:
    hub = types.SimpleNamespace(sessions=dict.fromkeys(sessions), sessions_by_user=dict.fromkeys(users),
                                rooms=types.SimpleNamespace(conns_in=lambda room: rooms.get(room, [])))
    subs = Subscriptions(hub, NAMES, dropped=dropped.append)  # type: ignore[arg-type]
    pubsub = RecordingPubSub()
    subs.subscriber = pubsub
    return subs, pubsub


async def test_a_sweep_drops_what_is_no_longer_needed_and_touches_nothing_else() -> None:
    dropped: list[str] = []
    subs, pubsub = subscriptions({"c1"}, {"ann"}, {"lobby": ["c1"], "gone": ["c9"]}, dropped)
    subs.heard = {NAMES.user("ann"), NAMES.user("bob"), NAMES.room("lobby"), NAMES.room("gone")}
    await subs.sweep()
    assert sorted(pubsub.calls) == [("unsubscribe", NAMES.room("gone")), ("unsubscribe", NAMES.user("bob"))]
    assert subs.heard == {NAMES.user("ann"), NAMES.room("lobby")}
    assert dropped == ["gone"]  # the room's order starts again if it is heard again
    pubsub.calls.clear()
    await subs.sweep()  # everything as needed: no call at all
    assert pubsub.calls == []


async def test_a_room_entered_by_a_join_is_heard_until_it_lingered_out() -> None:
    subs, pubsub = subscriptions(set(), set(), {}, [])
    await subs.enter_room("lobby")  # the join subscribes before its read
    assert pubsub.calls == [("subscribe", NAMES.room("lobby"))]
    await subs.sweep()  # still within the linger: kept although no connection is in it
    assert subs.heard == {NAMES.room("lobby")}
