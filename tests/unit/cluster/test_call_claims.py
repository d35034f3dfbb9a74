"""The answer's claim in Redis (signald.cluster.calls.RedisCallDecisions.answer), against a fake
client that plays the race: the claim refused, then the key gone before it is read."""

from __future__ import annotations

from typing import Any

from signald.cluster.calls import RedisCallDecisions


class Calls:
    def parties(self, call_id: str) -> tuple[str, str, str] | None:
        return ("alice", "s-a", "bob")


class Hub:
    calls = Calls()


class Names:
    prefix = "{sd}."


class Racing:
    """SET NX refused ``refusals`` times, each time with the key deleted before the GET (an offer
    that reused the call id cleared it); then SET NX succeeds."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.keys: dict[str, str] = {}

    async def set(self, key: str, value: str, condition: Any = None, px: int | None = None) -> bool:
        if condition is not None and self.refusals:
            self.refusals -= 1
            return False
        self.keys[key] = value
        return True

    async def get(self, key: str) -> bytes | None:
        value = self.keys.get(key)
        return None if value is None else value.encode()


def decisions(client: Any) -> RedisCallDecisions:
    failures: list[BaseException] = []
    return RedisCallDecisions(Hub(), Names(), client, grace_s=1.0, down=failures.append)  # type: ignore[arg-type]


async def test_a_claim_gone_before_it_is_read_is_claimed_again_and_won() -> None:
    client = Racing(refusals=1)
    assert await decisions(client).answer("c1", "s-b1") is None  # won, on the second try
    assert client.keys["{sd}.call.c1.s-a"] == "s-b1"
    assert client.keys["{sd}.busy.bob"] == "c1"


async def test_a_claim_never_seen_is_not_taken_for_ours() -> None:
    client = Racing(refusals=10)
    assert await decisions(client).answer("c1", "s-b1") == ""  # someone else's: CONFLICT, not a win
    assert "{sd}.busy.bob" not in client.keys
