"""One-to-one call set-up: who rings, who answered, who gets which ``call.*`` event (sans-IO).

:class:`CallRegistry` is plain synchronous state: no awaits, no sockets, no clock reads; callers
pass ``now`` (monotonic seconds). Every operation returns a :class:`CallOutcome`: ``call_id`` (for
the offer's ack), ``sends`` (events in delivery order, to be delivered *after* the request's ack),
``busy_changed`` (users whose :meth:`CallRegistry.is_busy` flipped, for presence) and ``log``
(``started`` / ``answered`` / ``ended`` entries for an optional call log). Failures raise
:class:`~signald.errors.SignalError` and change nothing. A user is a ``str`` user id, a device a
``str`` device id (one per connection); the caller says whether the two users share a room.

States and the transition table are in :mod:`signald.state.call_table`.

Rules ("peer devices": of the caller, the ringing devices, or the winner once answered; of the
callee, the offering device. Every event carries the ``call_id``; ``from_user`` is the recipient's
other party, except where said. A :class:`Send` never has an empty ``conns``.)
    * Offer checks, in order: calling yourself -> ``INVALID_PAYLOAD``; a callee who shares no room
      with the caller (``shares_room`` False) -> ``FORBIDDEN``, whether connected or not (no presence
      oracle); no callee device -> ``TARGET_OFFLINE``; ``call_id`` in use by a live call -> ``CONFLICT``.
    * answer/ice/end without ``call_id`` take the only live call between the two users, in either
      direction (none -> ``NOT_FOUND``, several -> ``INVALID_PAYLOAD``). Checks, in order:
      ``target_id`` is the sender -> ``INVALID_PAYLOAD``; call unknown or ended -> ``NOT_FOUND``;
      sender not caller or callee -> ``FORBIDDEN``; ``target_id`` not the other party ->
      ``INVALID_PAYLOAD``; the caller answering -> ``FORBIDDEN``; then the table (a second answer,
      from any callee device -> ``CONFLICT``); then the device: the caller's messages only from the
      offering device, the callee's only from a ringing device (while ringing) or the winner (after)
      -> ``FORBIDDEN``. ``device_gone`` and ``expire`` never raise.
    * Offer: ``call.offer {from_user, call_id, call_type, sdp}`` to every callee device, sdp untouched.
    * Answer: the first answer wins: ``call.answer`` to the caller's device, then ``call.end``
      ``answered_elsewhere`` (``from_user`` = callee) to the other ringing devices, which leave the call.
    * ICE flows both ways before and after the answer: caller -> peer devices, callee -> caller device.
    * End: the caller's reason (default ``hangup``) goes to the peer devices; the callee's, once
      answered, to the caller device. The callee ending while ringing is a reject: the caller gets
      ``rejected`` (the client's reason is dropped) and the callee's other ringing devices also get
      ``rejected`` with ``from_user`` = callee, so they stop ringing.
    * Timeout: :meth:`CallRegistry.expire` ends calls still ringing at ``now >= offered_at +
      ring_timeout_s`` with ``timeout``: caller device first, then the ringing devices.
      :meth:`CallRegistry.next_deadline` is the earliest pending ring deadline, for a timer task.
    * Busy: a user is busy while in an ACTIVE call. Unless ``allow_concurrent_calls``, an offer to a
      busy callee is acked (``call_id``), then ``call.end busy`` (``from_user`` = callee) goes to the
      caller device; nobody rings and the call is freed. Busy is checked only when an offer arrives:
      a busy user may place a call and may answer another call that is ringing.
    * Decided elsewhere (several nodes): an offer's ``verdict`` (``busy``, ``glare``: lost, ``ring``:
      not busy) replaces this registry's own busy/glare check with the one the offer's node made
      (the glare rule still ends rivals known here that the new call beats, and an offer whose
      ``ring_timeout_s`` is infinite has no deadline here: its own node times it out). For answers
      and timeouts decided outside, :meth:`CallRegistry.check_answer` validates an answer without
      taking it, :meth:`CallRegistry.due` hands over the due calls instead of ending them and
      :meth:`CallRegistry.time_out` ends one of them.
    * Glare: A offers B while a call B -> A is RINGING: the lower call_id (string order) survives.
      New one loses: acked, then ``call.end glare`` to its caller device, nothing rung. New one wins:
      the older call(s) end with ``glare`` for their caller device and ringing devices, then the new
      offer rings normally. Busy is decided before glare.
    * Disconnect (:meth:`CallRegistry.device_gone`): for every call the device holds (offering,
      winning or ringing device), the peer devices get ``call.end disconnected``, in call_id order;
      a ringing device leaving while others still ring only stops ringing.
    * The sender of a request never gets its own event (it gets the ack). Every call ends exactly
      once for each party, and ``log`` has exactly one ``started`` and one ``ended`` per accepted
      offer (``busy`` and ``glare`` included); ``duration_s`` is measured from the answer (``None``
      if never answered). Ended calls leave nothing behind.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from uuid import uuid4

from signald.errors import SignalError
from signald.protocol import (
    CallAnswerEvent,
    CallAnswerEventData,
    CallIceEvent,
    CallIceEventData,
    CallOfferEvent,
    CallOfferEventData,
    CallType,
    JsonObject,
)
from signald.state.call_outcome import CallEventMessage, CallLogEntry, CallOutcome
from signald.state.call_record import CallRecord, OutcomeBuilder, end_event, link, pair, unlink
from signald.state.call_table import TRANSITIONS, Event, State, transition

__all__ = ["CallEventMessage", "CallLogEntry", "CallOutcome", "CallRegistry", "Event", "State", "TRANSITIONS",
           "transition"]

_R, _A, _X = State.RINGING, State.ACTIVE, State.ENDED


class CallRegistry:
    """Every live call, indexed by id, device, user and user pair. See the module docstring."""

    def __init__(self, *, allow_concurrent_calls: bool = False,
                 new_call_id: Callable[[], str] = lambda: uuid4().hex) -> None:
        self._concurrent = allow_concurrent_calls
        self._new_call_id = new_call_id
        self._calls: dict[str, CallRecord] = {}
        self._by_device: dict[str, dict[str, None]] = {}
        self._by_user: dict[str, dict[str, None]] = {}
        self._by_pair: dict[tuple[str, str], dict[str, None]] = {}
        self._deadlines: list[tuple[float, int, str]] = []  # heap; stale entries are skipped lazily
        self._serial = 0
        self._ringing = 0
        self._active = 0

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def active_count(self) -> int:
        return self._active

    @property
    def ringing_count(self) -> int:
        return self._ringing

    def state_of(self, call_id: str) -> State:
        call = self._calls.get(call_id)
        return State.NONE if call is None else call.state

    def calls_of(self, user: str) -> list[str]:
        """Ids of the user's live calls, as caller or callee, oldest first."""
        return list(self._by_user.get(user, ()))

    def holds(self, device: str) -> bool:
        """Whether ``device`` takes part in a call (rings, calls or answered one)."""
        return device in self._by_device

    def is_busy(self, user: str) -> bool:
        return any(self._calls[c].state is State.ACTIVE for c in self._by_user.get(user, ()))

    def debug_view(self) -> dict[str, Any]:
        """A plain copy of every live call and index, for tests and debugging (signald never reads it):
        ``calls`` (id -> state, ringing devices, winner, answered_at), ``by_device``/``by_user``/
        ``by_pair`` (key -> call ids in order) and ``deadlines`` (ring deadline entries kept)."""
        def index(d: Mapping[Any, dict[str, None]]) -> dict[Any, list[str]]:
            return {key: list(ids) for key, ids in d.items()}

        calls = {cid: (c.state, tuple(c.ringing), c.winner, c.answered_at) for cid, c in self._calls.items()}
        return {"calls": calls, "by_device": index(self._by_device), "by_user": index(self._by_user),
                "by_pair": index(self._by_pair), "deadlines": len(self._deadlines)}

    def parties(self, call_id: str) -> tuple[str, str, str] | None:
        """(caller, caller device, callee) of a live call, or ``None``."""
        call = self._calls.get(call_id)
        return None if call is None else (call.caller, call.caller_device, call.callee)

    def next_deadline(self) -> float | None:
        """The earliest ring deadline of a call still ringing, or ``None``."""
        heap = self._deadlines
        while heap and not self._pending(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # ------------------------------------------------------------------ client operations

    def offer(self, *, caller: str, caller_device: str, callee: str, callee_devices: Sequence[str],
              call_type: CallType, sdp: JsonObject, call_id: str | None, now: float,
              ring_timeout_s: float, shares_room: bool = True,
              verdict: Literal["ring", "busy", "glare"] | None = None) -> CallOutcome:
        if caller == callee:
            raise SignalError("INVALID_PAYLOAD", "`$.data.target_id` is yourself")
        if not shares_room:  # before any look at the callee's devices: a stranger's presence stays hidden
            raise SignalError("FORBIDDEN", f"you share no room with {callee!r}")
        rung = dict.fromkeys(callee_devices)
        if not rung:
            raise SignalError("TARGET_OFFLINE", f"{callee!r} has no connected device")
        cid = self._fresh_id() if call_id is None else call_id
        event, rivals = Event.OFFER, list[CallRecord]()
        if verdict == "busy" or (verdict is None and not self._concurrent and self.is_busy(callee)):
            event = Event.OFFER_BUSY
        elif verdict == "glare":
            event = Event.OFFER_GLARE_LOST
        else:
            rivals = [c for c in self._between(callee, caller) if c.caller == callee and c.state is _R]
            if any(r.call_id < cid for r in rivals):
                event, rivals = Event.OFFER_GLARE_LOST, []
        nxt = transition(self.state_of(cid), event)
        acc = OutcomeBuilder()
        for old in rivals:
            self._end(old, Event.GLARE, acc, now, "glare", to_caller=True, to_callee=True)
        self._serial += 1
        call = CallRecord(cid, caller, caller_device, callee, call_type, rung, now + ring_timeout_s, self._serial)
        self._calls[cid] = call
        for device in call.devices():
            link(self._by_device, device, cid)
        link(self._by_user, caller, cid)
        link(self._by_user, callee, cid)
        link(self._by_pair, pair(caller, callee), cid)
        acc.log.append(call.entry("started"))
        if nxt is _X:
            reason = "busy" if event is Event.OFFER_BUSY else "glare"
            self._end(call, event, acc, now, reason, to_caller=True, to_callee=False)
        else:
            self._set_state(call, nxt, acc)
            if call.deadline != math.inf:
                heapq.heappush(self._deadlines, (call.deadline, call.serial, cid))
            offer = CallOfferEventData(from_user=caller, call_id=cid, call_type=call_type, sdp=sdp)
            acc.send(rung, CallOfferEvent(data=offer))
        return self._outcome(acc, cid)

    def check_answer(self, *, user: str, device: str, peer: str, call_id: str | None) -> str:
        """The call id :meth:`answer` would answer now, or its error; changes nothing."""
        call = self._resolve(user, peer, call_id)
        self._answerable(call, user, device)
        return call.call_id

    def answer(self, *, user: str, device: str, peer: str, sdp: JsonObject, call_id: str | None,
               now: float) -> CallOutcome:
        call = self._resolve(user, peer, call_id)
        nxt = self._answerable(call, user, device)
        acc = OutcomeBuilder()
        others = [d for d in call.ringing if d != device]
        for other in others:
            unlink(self._by_device, other, call.call_id)
        call.ringing, call.winner, call.answered_at = {}, device, now
        self._set_state(call, nxt, acc)
        data = CallAnswerEventData(from_user=call.callee, call_id=call.call_id, sdp=sdp)
        acc.send((call.caller_device,), CallAnswerEvent(data=data))
        acc.send(others, end_event(call.callee, call.call_id, "answered_elsewhere"))
        acc.log.append(call.entry("answered"))
        return self._outcome(acc, call.call_id)

    def ice(self, *, user: str, device: str, peer: str, candidate: JsonObject,
            call_id: str | None) -> CallOutcome:
        call = self._resolve(user, peer, call_id)
        by_caller = user == call.caller
        transition(call.state, Event.ICE_FROM_CALLER if by_caller else Event.ICE_FROM_CALLEE)
        self._check_device(call, by_caller, device)
        acc = OutcomeBuilder()
        data = CallIceEventData(from_user=user, call_id=call.call_id, candidate=candidate)
        acc.send(call.peer_devices(by_caller), CallIceEvent(data=data))
        return self._outcome(acc, call.call_id)

    def end(self, *, user: str, device: str, peer: str, reason: str | None, call_id: str | None,
            now: float) -> CallOutcome:
        call = self._resolve(user, peer, call_id)
        by_caller = user == call.caller
        transition(call.state, Event.END_BY_CALLER if by_caller else Event.END_BY_CALLEE)
        self._check_device(call, by_caller, device)
        acc, given = OutcomeBuilder(), reason or "hangup"
        if by_caller:
            self._end(call, Event.END_BY_CALLER, acc, now, given, to_caller=False, to_callee=True)
        elif call.state is _R:  # a reject: the sender's other ringing devices stop ringing too
            others = [d for d in call.ringing if d != device]
            self._end(call, Event.END_BY_CALLEE, acc, now, "rejected", to_caller=True, to_callee=False)
            acc.send(others, end_event(call.callee, call.call_id, "rejected"))
        else:
            self._end(call, Event.END_BY_CALLEE, acc, now, given, to_caller=True, to_callee=False)
        return self._outcome(acc, call.call_id)

    # ------------------------------------------------------------------ server events

    def device_gone(self, device: str, now: float) -> CallOutcome:
        """A connection closed: end or update every call it held. Never raises."""
        acc = OutcomeBuilder()
        for cid in sorted(self._by_device.get(device, ())):
            call = self._calls[cid]
            call.ringing.pop(device, None)
            unlink(self._by_device, device, cid)
            by_caller = device == call.caller_device
            if not by_caller and call.ringing:  # other devices of the callee still ring
                self._set_state(call, Event.RING_DEVICE_GONE, acc)
                continue
            event = Event.DISCONNECT_CALLER if by_caller else Event.DISCONNECT_CALLEE  # winner, last ringer
            self._end(call, event, acc, now, "disconnected", to_caller=not by_caller, to_callee=by_caller)
        return self._outcome(acc, None)

    def expire(self, now: float) -> CallOutcome:
        """End every call whose ring deadline is at or before ``now`` with reason ``timeout``."""
        acc = OutcomeBuilder()
        for cid in self.due(now):
            self._end(self._calls[cid], Event.TIMEOUT, acc, now, "timeout", to_caller=True, to_callee=True)
        return self._outcome(acc, None)

    def due(self, now: float) -> list[str]:
        """Take the calls still ringing at their deadline (at or before ``now``) off the timer, oldest
        deadline first, without ending them (:meth:`time_out` does, once someone decided it)."""
        due, heap = [], self._deadlines
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._pending(entry):
                due.append(entry[2])
        return due

    def time_out(self, call_id: str, now: float) -> CallOutcome:
        """End ``call_id`` with ``timeout`` if it still rings (else nothing: it was answered or ended)."""
        acc, call = OutcomeBuilder(), self._calls.get(call_id)
        if call is not None and call.state is _R:
            self._end(call, Event.TIMEOUT, acc, now, "timeout", to_caller=True, to_callee=True)
        return self._outcome(acc, None)

    # ------------------------------------------------------------------ internals

    def _fresh_id(self) -> str:
        for _ in range(8):
            cid = self._new_call_id()
            if cid not in self._calls:
                return cid
        raise SignalError("INTERNAL", "could not generate a free call_id")

    def _between(self, a: str, b: str) -> list[CallRecord]:
        return [self._calls[c] for c in self._by_pair.get(pair(a, b), ())]

    def _pending(self, entry: tuple[float, int, str]) -> bool:
        call = self._calls.get(entry[2])
        return call is not None and call.serial == entry[1] and call.state is _R

    def _resolve(self, user: str, peer: str, call_id: str | None) -> CallRecord:
        if user == peer:
            raise SignalError("INVALID_PAYLOAD", "`$.data.target_id` is yourself")
        if call_id is None:
            live = self._between(user, peer)
            if not live:
                raise SignalError("NOT_FOUND", f"no call with {peer!r}")
            if len(live) > 1:
                raise SignalError("INVALID_PAYLOAD", f"`$.data.call_id` needed: several calls with {peer!r}")
            return live[0]
        call = self._calls.get(call_id)
        if call is None:
            raise SignalError("NOT_FOUND", f"no call {call_id!r}")
        if user not in (call.caller, call.callee):
            raise SignalError("FORBIDDEN", f"not a party of call {call_id!r}")
        if peer != (call.callee if user == call.caller else call.caller):
            raise SignalError("INVALID_PAYLOAD", f"`$.data.target_id` is not the other party of call {call_id!r}")
        return call

    def _answerable(self, call: CallRecord, user: str, device: str) -> State:
        if user == call.caller:
            raise SignalError("FORBIDDEN", "the caller cannot answer its own call")
        nxt = transition(call.state, Event.ANSWER)
        self._check_device(call, False, device)
        return nxt

    def _check_device(self, call: CallRecord, by_caller: bool, device: str) -> None:
        if by_caller:
            ok = device == call.caller_device
        else:
            ok = device in call.ringing if call.winner is None else device == call.winner
        if not ok:
            raise SignalError("FORBIDDEN", f"this device is not in call {call.call_id!r}")

    def _set_state(self, call: CallRecord, event_or_state: Event | State, acc: OutcomeBuilder) -> None:
        new = event_or_state if isinstance(event_or_state, State) else transition(call.state, event_or_state)
        old = call.state
        if new is old:
            return
        for user in (call.caller, call.callee):
            acc.busy_before.setdefault(user, self.is_busy(user))
        call.state = new
        self._ringing += (new is _R) - (old is _R)
        self._active += (new is _A) - (old is _A)
        if old is _R and len(self._deadlines) > 2 * self._ringing + 64:
            ringing = (c for c in self._calls.values() if c.state is _R)
            self._deadlines = [(c.deadline, c.serial, c.call_id) for c in ringing]
            heapq.heapify(self._deadlines)

    def _end(self, call: CallRecord, event: Event, acc: OutcomeBuilder, now: float, reason: str, *,
             to_caller: bool, to_callee: bool) -> None:
        """Apply ``event`` (which must lead to ENDED), notify the chosen sides, log, free the call."""
        if to_caller:
            acc.send((call.caller_device,), end_event(call.callee, call.call_id, reason))
        if to_callee:
            acc.send(call.peer_devices(True), end_event(call.caller, call.call_id, reason))
        self._set_state(call, event, acc)
        assert call.state is _X, (call.state, event)
        duration = None if call.answered_at is None else max(0.0, now - call.answered_at)
        acc.log.append(call.entry("ended", reason, duration))
        del self._calls[call.call_id]
        for device in call.devices():
            unlink(self._by_device, device, call.call_id)
        unlink(self._by_user, call.caller, call.call_id)
        unlink(self._by_user, call.callee, call.call_id)
        unlink(self._by_pair, pair(call.caller, call.callee), call.call_id)

    def _outcome(self, acc: OutcomeBuilder, call_id: str | None) -> CallOutcome:
        changed = {u for u, was in acc.busy_before.items() if self.is_busy(u) != was}
        return CallOutcome(call_id, acc.sends, changed, acc.log)
