"""Call transitions that two nodes could make at once, decided once in Redis (:class:`RedisCallDecisions`).

Each node keeps a copy of every call (:mod:`signald.cluster.apply`); a request is applied on the
node that takes it and shared. Three things, though, are races between nodes, and Redis decides
each of them once, before any node acts on it:

- **the answer**: two devices of the callee on two nodes answering at once. Each node claims the
  call's key (``SET NX``); the one that set it marks both parties busy, then wins and shares the
  answer, which ends the ringing elsewhere with ``answered_elsewhere``; the
  other is refused with ``CONFLICT`` (its device gets that ``call.end`` from the winner's answer);
- **the ring timeout**: only the caller's node runs the call's timer; when it fires, that node
  claims the same key with ``timeout``. An answer that claimed it first wins over the timer, and a
  timeout that claimed it first refuses any later answer (``NOT_FOUND``): the call is either
  answered or timed out, the same everywhere. The timeout then reaches every node once
  (:class:`~signald.app.replica.CallTimedOut`). A caller's node that dies takes the caller's device
  with it, and the survivors end its calls with ``disconnected``;
- **busy**: an offer asks Redis, where a winning answer marked both of its parties (for
  :data:`BUSY_MS`: by then every node has heard it), so an offer and an answer on two nodes are
  ordered once (an offer first clears an old decision for a ``call_id`` used again). The
  offer's node then shares its verdict (rings, ``busy`` or ``glare``) and every node applies that
  verdict, not its own view.

Glare needs no broker: the lower ``call_id`` wins wherever the two offers meet, in either order.

Keys: ``<p>call.<call_id>.<caller device>`` (the winning device or ``timeout``) and
``<p>busy.<user>`` (the call just answered), both with a TTL: nothing to clean up after a node dies.
If the broker cannot be reached, the node decides alone (as one node would) and says the broker
is down (``/readyz``).

Each command touches one key, one at a time (no script over several): while a resharding moves
signald's slot on a Redis Cluster, Redis refuses a command over several keys unless they are all
on one node (``TRYAGAIN``), which a call's keys, new ones, never are; scripts failed there every
time, so the node decided alone and said the broker was down. One key at a time, the old owner
answers ``ASK`` for the keys it has not got and coredis follows it. The answer's busy marks follow
its claim by a round trip instead of in the same instant: an offer in between rings, as one sent
just before the answer does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final

import coredis
import trio

from signald.app.hub import Hub
from signald.app.replica import CallDecisions, CallTimedOut
from signald.cluster.wire import Names
from signald.state.calls import State

log = logging.getLogger("signald.cluster")

DECIDED_MS: Final = 60_000  # how long a call's decision stays in Redis (every node has heard it long before)
BUSY_MS: Final = 60_000  # how long a fresh answer marks its parties busy in Redis (then their copies do)
TIMEOUT: Final = b"timeout"
CLAIM_TRIES: Final = 3  # SET NX refused and the key gone by the GET: the claim is tried again


class RedisCallDecisions(CallDecisions):
    """Claims in Redis for :class:`~signald.app.replica.CallDecisions` (see the module docstring)."""

    def __init__(self, hub: Hub, names: Names, client: Any, *, grace_s: float,
                 down: Callable[[BaseException], None]) -> None:
        """``grace_s``: how long a call whose timeout lost to an answer may wait for that answer to
        arrive before this node times it out after all (the answering node died before sharing it)."""
        self._hub, self._client, self._down, self._grace = hub, client, down, grace_s
        self._call_prefix, self._busy_prefix = names.prefix + "call.", names.prefix + "busy."
        self._due, self._due_out = trio.open_memory_channel[list[str]](math.inf)

    def _key(self, call_id: str) -> str | None:
        parties = self._hub.calls.parties(call_id)
        return None if parties is None else f"{self._call_prefix}{call_id}.{parties[1]}"

    async def answer(self, call_id: str, device: str) -> str | None:
        parties = self._hub.calls.parties(call_id)
        if parties is None:
            return None  # ended meanwhile: the answer itself says so
        caller, caller_device, callee = parties
        key, client = f"{self._call_prefix}{call_id}.{caller_device}", self._client
        try:
            for _ in range(CLAIM_TRIES):
                if await client.set(key, device, condition=coredis.PureToken.NX, px=DECIDED_MS):
                    break
                winner = await client.get(key)  # who had claimed it
                if winner is not None:
                    return _text(winner)
                # gone between the two commands (an offer that reused the call id cleared it): claim again
            else:
                return ""  # refused every time, the winner never seen: not ours (CONFLICT), never taken as ours
            for user in (caller, callee):  # before the answer is shared: an offer after it finds them busy
                await client.set(self._busy_prefix + user, call_id, px=BUSY_MS)
        except Exception as exc:  # the broker is down: decide here, as one node would
            self._down(exc)
        return None

    async def offer(self, call_id: str | None, caller_device: str, callee: str) -> bool:
        client = self._client
        try:
            if call_id is not None:  # chosen by the client: it may be one used before, whose decision goes
                await client.delete([f"{self._call_prefix}{call_id}.{caller_device}"])
            answered = await client.get(self._busy_prefix + callee)
        except Exception as exc:
            self._down(exc)
            return False
        # A call this node has forgotten has ended since (an ended call's key just waits for its TTL).
        return answered is not None and self._hub.calls.state_of(_text(answered)) is not State.NONE

    def ring_timeouts(self, call_ids: list[str]) -> None:
        self._due.send_nowait(call_ids)

    async def run(self) -> None:
        """The task that decides this node's ring timeouts (each call on its own: one may wait)."""
        async with trio.open_nursery() as nursery:
            async for call_ids in self._due_out:
                for call_id in call_ids:
                    nursery.start_soon(self._time_out, call_id)

    async def _time_out(self, call_id: str) -> None:
        key = self._key(call_id)
        if key is None:
            return
        try:
            won = await self._client.set(key, TIMEOUT, condition=coredis.PureToken.NX, px=DECIDED_MS)
        except Exception as exc:
            self._down(exc)
            won = True
        if not won:  # an answer won the race: its node shares it; unless that node died before it could
            await trio.sleep(self._grace)
            if self._hub.calls.state_of(call_id) is not State.RINGING:
                return
            log.warning("cluster: call %s was answered on a node that never said so; timing it out", call_id)
        hub = self._hub
        outcome = hub.calls.time_out(call_id, trio.current_time())
        if outcome.log:
            hub.apply_call_outcome(outcome)
            hub.share(CallTimedOut(call_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
