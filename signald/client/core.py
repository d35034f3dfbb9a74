"""The sans-IO client core: what both Python adapters (and, ported, the JavaScript client) do.

:class:`ClientCore` holds no socket and no event loop. The adapter reports :meth:`~ClientCore.opened`,
:meth:`~ClientCore.received`, :meth:`~ClientCore.closed` and :meth:`~ClientCore.tick`, each with
``now`` (any monotonic clock), and takes the frames to send (:meth:`~ClientCore.take_outgoing`) and
what to do after a close (a :class:`~signald.client.schedule.Decision`).

What it keeps:

- **Requests** (:class:`Call`), correlated by ``op_id`` (``c-1``, ``c-2``, ...) and timed out at
  their deadline with ``TimeoutError``. A request made while not connected waits for the next
  connection. When a connection drops, a sent request without a reply is sent again on the next one
  if that is safe (:data:`RESEND`: ``chat.send``, whose ``client_msg_id`` the core always sets, and
  idempotent requests); any other fails with :class:`~signald.client.errors.ConnectionLost`.
- **Room views** (:class:`~signald.client.view.Room`), joined with ``since_rev`` (0 the first
  time, which loads the whole room) and rejoined after every reconnect from the view's resume
  point, paging with ``chat.changes`` (or reloading with ``chat.history`` after ``changes_reset``).
  A rejoin (or page) refused for now (:data:`~signald.client.schedule.TRANSIENT`) keeps the view
  and is tried again from the same point after a backoff; any other refusal forgets the room.
  A change event the view already holds is not passed on, so the program sees each change once;
  a message first seen in ``changes`` after a reconnect (newer than the view held, by another user)
  or in a ``chat.edited`` (before a rejoin's ack) is passed on as ``chat.message``, ``replayed=True``.
- **Event subscriptions**, each a bounded buffer; **liveness**: a ``presence.ping`` after
  ``heartbeat_s`` of silence, the connection dead after twice that plus :data:`PING_GRACE_S`.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections.abc import Callable
from typing import Any

from signald.client.errors import ClientClosed, ConnectionLost
from signald.client.model import (
    PING_GRACE_S,
    REPLY_TYPES,
    RESEND,
    STATE_EVENT,
    USER_EVENTS,
    Call,
    Event,
    State,
    Subscription,
    server_error,
)
from signald.client.schedule import TRANSIENT, Backoff, Closed, Decision, Rejoins, decide
from signald.client.view import CHANGE_EVENTS, Msg, Room, apply_own


class ClientCore:
    """One client's state across connections. ``notify(call_or_subscription)`` wakes its waiter."""

    def __init__(self, *, reconnect: bool = True, can_refresh: bool = False, policy: Backoff | None = None,
                 rand: Callable[[], float] = random.random, events_limit: int = 10_000,
                 notify: Callable[[Call | Subscription], None] = lambda _: None) -> None:
        self.state: State = "connecting"
        self.welcome: Msg = {}
        self.rooms: dict[str, Room] = {}
        self.reconnect = reconnect
        self.can_refresh = can_refresh
        self.policy = policy or Backoff()
        self.events_limit = events_limit
        self.close_reason: ClientClosed | None = None
        self._rand, self._notify = rand, notify
        self._ids = itertools.count(1)
        self._calls: dict[str, Call] = {}  # sent or waiting to be sent, in request order
        self._joins: dict[str, list[Call]] = {}  # room -> the program's join() calls waiting for its sync
        self._replay_after: dict[str, int] = {}  # room -> max seq held before this resync
        self._rejoins = Rejoins()  # where unfinished (re)joins started; those refused for now, tried again
        self._loaded: set[str] = set()  # rooms whose first load finished: later syncs replay new messages
        self._outgoing: list[Msg] = []
        self._subs: list[Subscription] = []
        self._attempt = 0
        self._opened_at: float | None = None
        self._last_heard, self._pinged = 0.0, False
        self._given_up = False  # tick() said the connection is dead: not again until the next one opens
        self._retry_after: float | None = None

    # --- the connection ----------------------------------------------------------------------

    def opened(self, welcome: Msg, now: float) -> None:
        """The connection is up and sent ``welcome``: rejoin the rooms, then send what waits."""
        self.welcome = welcome
        self._opened_at = self._last_heard = now
        self._pinged = self._given_up = False
        self._set_state("open")
        for room in list(self.rooms.values()):
            self._sync(room, now)
        for call in list(self._calls.values()):
            if call.internal is None and not call.sent:
                self._send(call)

    def closed(self, closed: Closed, now: float) -> Decision:
        """The connection (or an attempt) ended: settle the requests and say what to do next."""
        if self.state == "closed":
            return Decision("stop", 0.0, self._attempt, "closed")
        was_open = self._opened_at is not None
        if was_open:
            assert self._opened_at is not None
            closed = Closed(closed.code, closed.http_status, now - self._opened_at, closed.retry_after_s)
        if closed.retry_after_s is None and self._retry_after is not None:
            closed = Closed(closed.code, closed.http_status, closed.open_for_s, self._retry_after)
        decision = decide(closed, attempt=self._attempt, rand=self._rand(), policy=self.policy,
                          can_refresh=self.can_refresh, reconnect=self.reconnect)
        if not self.welcome and decision.action == "reconnect":
            # The very first connection failed: a wrong URL or a daemon that is not running should
            # fail fast, not retry forever. Only a token refresh is worth a second attempt.
            decision = Decision("stop", 0.0, decision.next_attempt, "could not connect")
        self._attempt = decision.next_attempt
        self._opened_at, self._retry_after = None, None
        for call in list(self._calls.values()):
            if call.internal is not None:
                del self._calls[call.op_id]  # a rejoin or page of the dropped connection: redone on the next
            elif call.sent and call.type not in RESEND:
                self._finish(call, error=ConnectionLost(call.type, call.op_id))
            else:
                call.sent = False
        for room in self.rooms.values():
            room.synced = False
        self._rejoins.cancel_waits()  # the next connection rejoins every room at once
        self._outgoing.clear()
        if decision.action == "stop":
            code = closed.http_status if closed.http_status is not None else closed.code
            self.stop(ClientClosed(decision.reason, code))
        else:
            self._set_state("reconnecting")
        return decision

    def stop(self, reason: ClientClosed | None = None) -> None:
        """Close the client for good: every waiting request fails, every iterator ends.

        ``reason`` None means the program closed it: iterators end quietly and requests raise
        :class:`ClientClosed` ("closed by the program").
        """
        if self.state == "closed":
            return
        self.close_reason = reason
        for call in [*self._calls.values(), *(c for calls in self._joins.values() for c in calls)]:
            # one exception object per waiter: raised in several tasks, a shared one would mix tracebacks
            error = ClientClosed(reason.reason, reason.code) if reason else ClientClosed("closed by the program")
            self._finish(call, error=error)
        self._joins.clear()
        self._set_state("closed")
        for sub in self._subs:
            sub.finished, sub.error = True, reason
            self._notify(sub)

    def tick(self, now: float) -> bool:
        """Time out requests whose deadline passed; ping a silent connection. True: the connection is dead."""
        for call in [*self._calls.values(), *(c for calls in self._joins.values() for c in calls)]:
            if call.internal is None and call.deadline <= now:
                self._finish(call, error=TimeoutError(f"no reply to {call.type} in time"))
        if self.state != "open" or self._given_up:  # (once: until the adapter has closed it, no busy ticks)
            return False
        for name in self._rejoins.due(now):
            if name in self.rooms:
                self._sync(self.rooms[name], now)
        heartbeat = float(self.welcome.get("heartbeat_s", 20.0))
        silent = now - self._last_heard
        if silent >= heartbeat and not self._pinged:
            self._pinged = True
            self._outgoing.append({"type": "presence.ping"})
        self._given_up = silent >= 2 * heartbeat + PING_GRACE_S
        return self._given_up

    def next_deadline(self) -> float:
        """When :meth:`tick` has something to do next (``math.inf``: nothing planned)."""
        deadlines = [c.deadline for c in self._calls.values() if c.internal is None]
        deadlines += [c.deadline for calls in self._joins.values() for c in calls]
        deadlines.append(self._rejoins.next_deadline())
        if self.state == "open" and not self._given_up:
            heartbeat = float(self.welcome.get("heartbeat_s", 20.0))
            wait = 2 * heartbeat + PING_GRACE_S if self._pinged else heartbeat
            deadlines.append(self._last_heard + wait)
        return min(deadlines, default=math.inf)

    has_outgoing = property(lambda self: bool(self._outgoing), doc="Frames wait to be sent.")

    def wake(self, thing: Call | Subscription) -> None:
        """Wake ``thing``'s waiter (the adapter's notify)."""
        self._notify(thing)

    def take_outgoing(self) -> list[Msg]:
        """The frames to send now, in order (and forgets them)."""
        frames, self._outgoing = self._outgoing, []
        return frames

    # --- the program's requests --------------------------------------------------------------

    def request(self, kind: str, data: Msg | None, *, now: float, timeout: float, waiter: Any = None) -> Call:
        """Start a request; it goes out now if connected, else on the next connection."""
        if self.state == "closed":
            raise self.close_reason or ClientClosed("closed by the program")
        data = None if data is None else dict(data)
        if kind == "chat.send" and data is not None:
            data.setdefault("client_msg_id", uuid.uuid4().hex)  # what makes a resend after a drop safe
        if kind == "room.leave" and data is not None:
            self._forget_room(str(data.get("room")))
        call = Call(f"c-{next(self._ids)}", kind, data, now + timeout, waiter=waiter)
        self._calls[call.op_id] = call
        if self.state == "open":
            self._send(call)
        return call

    def join(self, name: str, *, now: float, timeout: float, waiter: Any = None) -> Call:
        """The program's ``join(name)``: finished with the :class:`Room` once it is in sync."""
        if self.state == "closed":
            raise self.close_reason or ClientClosed("closed by the program")
        call = Call(f"join-{name}", "room.join", {"room": name}, now + timeout, waiter=waiter)
        room = self.rooms.get(name)
        if room is not None and room.synced:
            self._finish(call, result=room)
            return call
        self._joins.setdefault(name, []).append(call)
        if room is None:
            room = self.rooms[name] = Room(name)
            if self.state == "open":
                self._sync(room, now)
        return call

    def cancel(self, call: Call) -> None:
        """The program stopped waiting (cancelled): forget the call; a late reply is dropped."""
        self._calls.pop(call.op_id, None)
        for calls in self._joins.values():
            if call in calls:
                calls.remove(call)

    def subscribe(self, types: frozenset[str]) -> Subscription:
        sub = Subscription(types, self.events_limit)
        if self.state == "closed":
            sub.finished, sub.error = True, self.close_reason
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    # --- frames in ---------------------------------------------------------------------------

    def received(self, message: Msg, now: float) -> None:
        """One decoded frame from the server."""
        self._last_heard, self._pinged = now, False
        kind = str(message.get("type"))
        data = message.get("data") or {}
        if kind in REPLY_TYPES:
            op_id = data.get("op_id")
            if op_id is None:
                if kind == "error":
                    if data.get("retry_after_s") is not None:  # the one error before a 4429 close
                        self._retry_after = float(data["retry_after_s"])
                    self._emit(Event("error", data))
                return  # a pong of our own liveness ping
            call = self._calls.pop(str(op_id), None)
            if call is not None:  # None: the reply to a request that timed out
                self._reply(call, kind, data)
            return
        if kind == "welcome":
            return
        name = data.get("room", data.get("scope"))
        room = self.rooms.get(str(name)) if name is not None else None
        event = Event(kind, data)
        if room is not None:
            if (kind == "chat.edited" and room.message(str(data["id"])) is None  # new to us (before a rejoin's ack)
                    and data.get("user_id") != self.welcome.get("user_id")):  # (our own are not replayed)
                event = Event("chat.message", data, replayed=True)  # the program sees each message once as one
            if not room.apply_event(kind, data) and kind in CHANGE_EVENTS:
                return  # the view already holds this change (a chat.changes page reached it): once only
            if kind == "room.kicked":
                self._forget_room(room.name)
        if kind in USER_EVENTS:
            for each in self.rooms.values():
                each.apply_user_event(kind, data)
        self._emit(event)

    # --- inside ------------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self._emit(Event(STATE_EVENT, {"state": state}))

    def _emit(self, event: Event) -> None:
        for sub in self._subs:
            if sub.offer(event):
                self._notify(sub)

    def _send(self, call: Call) -> None:
        call.sent = True
        self._outgoing.append(call.frame())

    def _finish(self, call: Call, *, result: Any = None, error: BaseException | None = None) -> None:
        self.cancel(call)
        if call.done:
            return
        call.done, call.result, call.error = True, result, error
        self._notify(call)

    def _forget_room(self, name: str) -> None:
        room = self.rooms.pop(name, None)
        self._loaded.discard(name)
        self._rejoins.done(name)
        self._replay_after.pop(name, None)
        if room is not None:
            room.left = True

    def _reply(self, call: Call, kind: str, data: Msg) -> None:
        if call.internal is not None:
            call.internal(kind, data)
        elif kind == "error":
            self._finish(call, error=server_error(data))
        elif kind == "ack":
            apply_own(self.rooms, call.type, call.data or {}, data.get("data"), self.welcome.get("user_id"))
            self._finish(call, result=data.get("data"))
        else:
            self._finish(call, result=data)

    def _internal(self, kind: str, data: Msg, then: Callable[[str, Msg], None]) -> None:
        call = Call(f"c-{next(self._ids)}", kind, data, math.inf, internal=then)
        self._calls[call.op_id] = call
        self._send(call)

    _page_limit = property(lambda self: int(self.welcome.get("limits", {}).get("history_page_max", 50)))

    def _sync(self, room: Room, now: float) -> None:
        """(Re)join ``room`` from its resume point; page on until the view is current."""
        room.synced = False
        if room.name in self._loaded:  # (kept from an unfinished try: what it brought is replayed already)
            self._replay_after.setdefault(room.name, room.max_seq())
        since = self._rejoins.since(room.name, room.rev)  # an unfinished try's ack moved rev past unread pages

        def joined(kind: str, data: Msg) -> None:
            if kind == "error":
                return self._refused(room, data)
            ack = data["data"]
            room.joined(ack)
            self._changes(room, ack.get("changes", []), bool(ack.get("changes_truncated")),
                          bool(ack.get("changes_reset")))

        self._internal("room.join", {"room": room.name, "since_rev": since}, joined)

    def _refused(self, room: Room, data: Msg) -> None:
        """The server refused a (re)join or one of its pages: a rejoin refused for now waits and tries again."""
        if room.name in self._loaded and self.rooms.get(room.name) is room and str(data.get("code")) in TRANSIENT:
            after = data.get("retry_after_s")
            self._rejoins.refused(room.name, self._last_heard, rand=self._rand(), policy=self.policy,
                                  retry_after_s=None if after is None else float(after))
            return
        self._forget_room(room.name)  # a first join, or "no" (a kick, a revoked room): no longer ours
        for call in self._joins.pop(room.name, []):
            self._finish(call, error=server_error(data))

    def _changes(self, room: Room, entries: list[Msg], more: bool, reset: bool) -> None:
        if reset:
            room.reset()
            self._history_page(room, 0)
            return
        self._apply_entries(room, entries)
        if more and entries:
            def page(kind: str, data: Msg) -> None:
                result = data.get("data") or {}
                if kind == "error":
                    return self._refused(room, data)
                self._changes(room, result["changes"], bool(result["has_more"]), bool(result.get("changes_reset")))
            self._internal("chat.changes", {"room": room.name, "after_rev": entries[-1]["rev"],
                                            "limit": self._page_limit}, page)
        else:
            self._synced(room)

    def _history_page(self, room: Room, after: int) -> None:
        def page(kind: str, data: Msg) -> None:
            if kind == "error":
                return self._refused(room, data)
            result = data["data"]
            self._apply_entries(room, result["messages"])
            if result["has_more"] and result["messages"]:
                self._history_page(room, int(result["messages"][-1]["seq"]))
            else:
                self._synced(room)
        self._internal("chat.history", {"room": room.name, "after": after, "limit": self._page_limit}, page)

    def _apply_entries(self, room: Room, entries: list[Msg]) -> None:
        replay_after = self._replay_after.get(room.name)
        fresh = [entry for entry in entries if room.apply_entry(entry)]
        if replay_after is None:
            return  # the first load: the program reads room.messages, not a flood of old events
        for entry in sorted(fresh, key=lambda e: int(e["seq"])):
            if int(entry["seq"]) > replay_after and entry.get("user_id") != self.welcome.get("user_id"):
                self._emit(Event("chat.message", dict(room.message(str(entry["id"])) or entry), replayed=True))

    def _synced(self, room: Room) -> None:
        room.caught_up()
        self._loaded.add(room.name)
        self._replay_after.pop(room.name, None)
        self._rejoins.done(room.name)
        for call in self._joins.pop(room.name, []):
            self._finish(call, result=room)
