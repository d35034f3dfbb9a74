// signald JavaScript client: one dependency-free ES module for browsers and Node >= 22.
//
// A port of the Python sans-IO client core (signald/client/schedule.py, view.py, model.py,
// core.py): the same decision tables in the same structure, checked against the same cases
// (tests/data/client_cases.json, run by clients/js/test/cases.test.mjs). docs/client.md, "The
// JavaScript client", documents the API. Keep the two in step: a rule changed here is changed there.

// --- schedule.py: when and how to reconnect ------------------------------------------------------

export const REFRESH_CODES = new Set([4401, 4001]);
export const STOP_CODES = new Set([4403, 4003]);
export const RETRY_AFTER_CODES = new Set([4429]);
export const HARDER_CODES = new Set([1013, 1008]);
export const HTTP_TO_CLOSE = { 401: 4401, 403: 4403, 429: 4429 };
// Error codes that say "not now" rather than "no": INTERNAL is also what a failing or hung history
// store answers, RATE_LIMITED a frame over the connection's rate.
const TRANSIENT = new Set(["INTERNAL", "RATE_LIMITED"]);

/** The reconnect timing; the defaults suit a daemon restart (back within a second or two). */
export class Backoff {
  constructor({ initial_s = 0.5, factor = 2.0, max_s = 30.0, jitter = 0.5, harder_min_s = 5.0,
    healthy_after_s = 10.0 } = {}) {
    Object.assign(this, { initial_s, factor, max_s, jitter, harder_min_s, healthy_after_s });
    Object.freeze(this);
  }

  /** The wait before reconnect attempt number `attempt` (0 first). */
  delay(attempt, rand, { harder = false } = {}) {
    const exponent = harder ? attempt + 2 : attempt;
    let base = Math.min(this.max_s, this.initial_s * this.factor ** Math.min(exponent, 64));
    if (harder) base = Math.min(this.max_s, Math.max(this.harder_min_s, base));
    return base * (1.0 - this.jitter * rand);
  }
}

/** How a connection ended: {code, http_status, open_for_s, retry_after_s} (as schedule.Closed). */
export function closedOf({ code = null, http_status = null, open_for_s = 0.0, retry_after_s = null } = {}) {
  return { code, http_status, open_for_s, retry_after_s };
}

function effectiveCode(closed) {
  if (closed.http_status !== null) return HTTP_TO_CLOSE[closed.http_status] ?? closed.http_status;
  return closed.code;
}

const decision = (action, delay_s, next_attempt, reason) => ({ action, delay_s, next_attempt, reason });

/** The decision table of schedule.decide, for one ended connection. */
export function decide(closed, { attempt, rand, policy = new Backoff(), canRefresh, reconnect = true }) {
  closed = closedOf(closed);
  if (closed.open_for_s >= policy.healthy_after_s) attempt = 0; // healthy: a fresh failure, not a repeat
  const code = effectiveCode(closed);
  const after = attempt + 1;
  if (STOP_CODES.has(code)) return decision("stop", 0.0, after, code === 4003 ? "revoked" : "forbidden");
  if (!reconnect) return decision("stop", 0.0, after, "connection closed and reconnect is off");
  if (REFRESH_CODES.has(code)) {
    if (!canRefresh) return decision("stop", 0.0, after, "token refused and no getToken to get a new one");
    const delay = attempt === 0 ? 0.0 : policy.delay(attempt - 1, rand);
    return decision("refresh", delay, after, code === 4001 ? "session expired" : "token refused");
  }
  if (closed.http_status !== null && closed.http_status >= 400 && closed.http_status < 500
      && !RETRY_AFTER_CODES.has(code)) {
    return decision("stop", 0.0, after, `handshake refused with HTTP ${closed.http_status}`);
  }
  if (RETRY_AFTER_CODES.has(code)) {
    if (closed.retry_after_s !== null) {
      return decision("reconnect", closed.retry_after_s + policy.jitter * rand * policy.initial_s, after,
        "too many connections: waiting as told");
    }
    return decision("reconnect", policy.delay(attempt, rand, { harder: true }), after, "too many connections");
  }
  if (HARDER_CODES.has(code)) {
    return decision("reconnect", policy.delay(attempt, rand, { harder: true }), after,
      code === 1013 ? "slow consumer" : "flooding");
  }
  return decision("reconnect", policy.delay(attempt, rand), after, "connection lost");
}

/**
 * The (re)joins not finished yet, and those refused with a TRANSIENT code waiting to be tried again
 * (schedule.Rejoins): per room the since_rev the first unfinished try started from (an ack moves the
 * view's rev past pages that a failure then leaves unread), an attempt count and the next try's time.
 */
class Rejoins {
  constructor() { this._since = new Map(); this._attempts = new Map(); this._due = new Map(); }

  /** The since_rev to (re)join `name` with: `rev` unless an unfinished try started lower. */
  since(name, rev) {
    if (!this._since.has(name)) this._since.set(name, rev);
    return this._since.get(name);
  }

  /** Plan the next try of `name`: after `retryAfterS` if the refusal said so, else backoff. */
  refused(name, now, { rand, policy, retryAfterS = null }) {
    const attempt = this._attempts.get(name) ?? 0;
    this._attempts.set(name, attempt + 1);
    const delay = retryAfterS !== null ? retryAfterS + policy.jitter * rand * policy.initial_s
      : policy.delay(attempt, rand);
    this._due.set(name, now + delay);
    return delay;
  }

  /** The rooms to try again now (and forgets their times). */
  due(now) {
    const names = [...this._due].filter(([, at]) => at <= now).map(([name]) => name);
    for (const name of names) this._due.delete(name);
    return names;
  }

  nextDeadline() { return Math.min(Infinity, ...this._due.values()); }

  /** The connection dropped: the next one rejoins every room at once (attempt counts stay). */
  cancelWaits() { this._due.clear(); }

  /** `name` is in sync again, or no longer ours: forget its tries. */
  done(name) { this._since.delete(name); this._attempts.delete(name); this._due.delete(name); }
}

// --- model.py: constants and errors --------------------------------------------------------------

export const REPLY_TYPES = new Set(["ack", "error", "presence.pong"]);
// Safe to send again after a dropped connection (chat.send by its client_msg_id, the rest by the protocol).
export const RESEND = new Set(["chat.send", "chat.history", "chat.changes", "session.info", "presence.ping",
  "system.stats", "room.join", "chat.read", "chat.reaction", "presence.set"]);
export const USER_EVENTS = new Set(["presence.update", "device.online", "device.offline"]);
export const CHANGE_EVENTS = new Set(["chat.message", "chat.edited", "chat.deleted", "chat.redacted",
  "chat.reaction.update"]);
export const PING_GRACE_S = 5.0;
export const STATE_EVENT = "client.state";
export const ERROR_CODES = new Set(["BAD_REQUEST", "CONFLICT", "FORBIDDEN", "INTERNAL", "INVALID_PAYLOAD",
  "LIMIT_EXCEEDED", "NOT_FOUND", "NOT_IN_ROOM", "RATE_LIMITED", "TARGET_OFFLINE", "TOO_LARGE", "UNAUTHORIZED",
  "UNKNOWN_TYPE"]);
export const SUBPROTOCOL_JSON = "signald.v1";
const WELCOME_TIMEOUT_S = 10.0;
// After the page wakes (tab unfrozen or shown again, network back, a machine that slept) a live-looking
// connection may be dead without a close event: one ping must come back within this, else reconnect.
const WAKE_PROBE_TIMEOUT_S = 5.0;
// Wall time that ran ahead of the monotonic clock by more than this: the machine slept (the
// monotonic clock stops during suspend on Linux and macOS, so the heartbeat alone would not notice).
const SLEPT_S = 3.0;

/** The server refused a request: `code` is one of ERROR_CODES. */
export class SignalError extends Error {
  constructor(code, message) { super(`${code}: ${message}`); this.name = "SignalError"; this.code = code; }
}
/** No reply in time. */
export class TimeoutError extends Error {
  constructor(message) { super(message); this.name = "TimeoutError"; }
}
/** Base of the client's own failures. */
export class ClientError extends Error {
  constructor(message) { super(message); this.name = "ClientError"; }
}
/** The connection dropped after `requestType` was sent and before its reply; not resent. */
export class ConnectionLost extends ClientError {
  constructor(requestType, opId) {
    super(`connection lost before the reply to ${requestType} (${opId}); it may or may not have been carried `
      + "out, and it is not safe to send again by itself");
    this.name = "ConnectionLost"; this.requestType = requestType; this.opId = opId;
  }
}
/** The client is closed; `code`: the close code or HTTP status that ended it (null: the program). */
export class ClientClosed extends ClientError {
  constructor(reason, code = null) {
    super(code === null ? reason : `${reason} (code ${code})`);
    this.name = "ClientClosed"; this.reason = reason; this.code = code;
  }
}
/** A subscription buffer filled because nobody drained it. */
export class EventsOverflow extends ClientError {
  constructor(limit) { super(`more than ${limit} events waited unread`); this.name = "EventsOverflow"; this.limit = limit; }
}

function serverError(data) {
  const code = String(data.code), message = String(data.message ?? "");
  if (!ERROR_CODES.has(code)) return new SignalError("INTERNAL", `${code}: ${message}`);
  return new SignalError(code, message);
}

class Call {
  constructor(opId, type, data, deadline, internal = null) {
    Object.assign(this, { opId, type, data, deadline, internal, waiter: null, sent: false, done: false,
      result: undefined, error: null });
  }

  frame() {
    const message = { type: this.type, id: this.opId };
    if (this.data !== null && this.data !== undefined) message.data = this.data;
    return message;
  }
}

// --- view.py: a live room view, exact by revision ------------------------------------------------

/** The ack of our own delete, redact or reaction, shaped as the event others get (null: nothing). */
export function ownChange(requestType, data, result, userId) {
  if (result === null || typeof result !== "object" || Array.isArray(result) || !("rev" in result)) return null;
  if (requestType === "chat.reaction") {
    return ["chat.reaction.update", { message_id: data.message_id, user_id: userId, reaction: data.reaction,
      action: data.action, rev: result.rev }];
  }
  if (requestType === "chat.delete") return ["chat.deleted", { ...result, mode: data.mode ?? "soft" }];
  if (requestType === "chat.redact") return ["chat.redacted", { ...result }];
  return null;
}

/** One room as the client sees it; `messages` in seq order, hard-deleted ones gone. */
export class Room {
  constructor(name) {
    this.name = name;
    this.rev = 0;
    this.members = {}; // user id -> {user_id, status, devices, last_seen?}
    this.typing = new Set();
    this.synced = false;
    this.left = false;
    this._messages = new Map();
    this._gone = new Map(); // hard-deleted message id -> the deletion's rev
    this._waiting = new Map(); // message id -> [kind, data] delta events received while syncing
  }

  /** The current messages in ascending seq (soft-deleted ones as tombstones). */
  get messages() { return [...this._messages.values()].sort((a, b) => Number(a.seq) - Number(b.seq)); }

  /** Each member's status. */
  get presence() {
    return Object.fromEntries(Object.entries(this.members).map(([user, m]) => [user, String(m.status)]));
  }

  message(messageId) { return this._messages.get(messageId) ?? null; }

  maxSeq() { let max = 0; for (const m of this._messages.values()) max = Math.max(max, Number(m.seq)); return max; }

  _known(messageId) {
    if (this._gone.has(messageId)) return this._gone.get(messageId);
    const message = this._messages.get(messageId);
    return message === undefined ? -1 : Number(message.rev);
  }

  /** A room.join ack: members replace ours; rev becomes a resume point. */
  joined(ack) {
    this.members = Object.fromEntries((ack.members ?? []).map((m) => [String(m.user_id), { ...m }]));
    this.typing.clear();
    this.rev = Math.max(this.rev, Number(ack.rev));
  }

  /** The (re)join's last page is in: apply the delta events that waited, in rev order. */
  caughtUp() {
    this.synced = true;
    const waiting = [...this._waiting.values()].flat();
    this._waiting = new Map();
    this._applyWaiting(waiting);
  }

  /** changes_reset: forget every message; a history reload follows. */
  reset() { this._messages.clear(); this._gone.clear(); }

  /** One changes entry or chat.history message; true if it was new to the view. */
  applyEntry(entry) {
    const messageId = String(entry.id);
    if (Number(entry.rev) <= this._known(messageId)) return false;
    const waiting = this._waiting.get(messageId) ?? [];
    this._waiting.delete(messageId);
    if (entry.removed) {
      this._messages.delete(messageId);
      this._gone.set(messageId, Number(entry.rev));
      return false;
    }
    const fresh = !this._messages.has(messageId);
    this._messages.set(messageId, { ...entry });
    this._applyWaiting(waiting); // those above the entry's rev
    return fresh;
  }

  /** One event of this room; true if it changed the view's messages (live=false: our own ack). */
  applyEvent(kind, data, { live = true } = {}) {
    if (CHANGE_EVENTS.has(kind)) return this._applyChange(kind, data, live);
    const user = String(data.user_id);
    if (kind === "member.joined") {
      if (!(user in this.members)) this.members[user] = { user_id: data.user_id, status: "online", devices: [] };
    } else if (kind === "member.left") {
      delete this.members[user];
      this.typing.delete(user);
    } else if (kind === "chat.typing.user") {
      if (data.typing) this.typing.add(user); else this.typing.delete(user);
    }
    return false;
  }

  /** presence.update and device.online/offline: they name a user, not a room. */
  applyUserEvent(kind, data) {
    const member = this.members[String(data.user_id)];
    if (member === undefined) return;
    if (kind === "presence.update") member.status = data.status;
    else if (kind === "device.online" && !member.devices.includes(data.device_id)) {
      member.devices = [...member.devices, data.device_id];
    } else if (kind === "device.offline") member.devices = member.devices.filter((d) => d !== data.device_id);
  }

  _applyWaiting(events) {
    events.sort((a, b) => Number(a[1].rev) - Number(b[1].rev));
    for (const [kind, data] of events) this._applyChange(kind, data, false, true);
  }

  _applyChange(kind, data, live, waited = false) {
    const rev = Number(data.rev);
    if (live) this.rev = Math.max(this.rev, rev); // an ack may overtake an event below it
    const messageId = String(kind === "chat.message" || kind === "chat.edited" ? data.id : data.message_id);
    if (rev <= this._known(messageId)) return false;
    if (kind === "chat.message" || kind === "chat.edited") {
      this._messages.set(messageId, { ...data });
      return true;
    }
    if (kind === "chat.deleted" && data.mode === "hard") {
      this._messages.delete(messageId);
      this._gone.set(messageId, rev);
      return true;
    }
    const current = this._messages.get(messageId);
    if (!(this.synced || waited)) { // a page on its way may bring a newer state below this rev: wait for it
      if (!this._waiting.has(messageId)) this._waiting.set(messageId, []);
      this._waiting.get(messageId).push([kind, data]);
      return current !== undefined; // passed on as it would be at once (the view applies it later)
    }
    if (current === undefined) return false; // removed by retention before we loaded
    const message = { ...current, rev };
    this._messages.set(messageId, message);
    if (kind === "chat.deleted") {
      Object.assign(message, { body: "", attachments: [], reactions: {}, deleted_at: data.deleted_at });
    } else if (kind === "chat.redacted") {
      Object.assign(message, { body: data.new_body, attachments: [], redacted: true });
    } else {
      const reactions = Object.fromEntries(Object.entries(message.reactions ?? {}).map(([n, u]) => [n, [...u]]));
      const name = String(data.reaction);
      const users = (reactions[name] ??= []);
      const at = users.indexOf(data.user_id);
      if (data.action === "add") { if (at < 0) users.push(data.user_id); } else if (at >= 0) users.splice(at, 1);
      if (users.length === 0) delete reactions[name];
      message.reactions = reactions;
    }
    return true;
  }
}

// --- core.py: the sans-IO client core -------------------------------------------------------------

function newClientMsgId() {
  const c = globalThis.crypto;
  if (c?.randomUUID) return c.randomUUID().replaceAll("-", "");
  let hex = "";
  for (let i = 0; i < 32; i += 1) hex += Math.floor(Math.random() * 16).toString(16);
  return hex;
}

/**
 * One client's state across connections, with no socket and no timer (core.py's ClientCore).
 * The adapter reports opened / received / closed / tick with `now` in seconds, sends takeOutgoing(),
 * and follows the decision closed() returns. `notify(callOrSubscription)` wakes a waiter.
 */
export class ClientCore {
  constructor({ reconnect = true, canRefresh = false, policy = new Backoff(), rand = Math.random,
    eventsLimit = 10_000, notify = () => {} } = {}) {
    this.state = "connecting";
    this.welcome = {};
    this.rooms = new Map();
    this.reconnect = reconnect;
    this.canRefresh = canRefresh;
    this.policy = policy;
    this.eventsLimit = eventsLimit;
    this.closeReason = null;
    this._rand = rand;
    this._notify = notify;
    this._nextId = 1;
    this._calls = new Map(); // sent or waiting to be sent, in request order
    this._joins = new Map(); // room -> the program's join() calls waiting for its sync
    this._replayAfter = new Map();
    this._loaded = new Set();
    this._rejoins = new Rejoins(); // where unfinished (re)joins started; those refused for now, tried again
    this._outgoing = [];
    this._subs = [];
    this._attempt = 0;
    this._openedAt = null;
    this._lastHeard = 0.0;
    this._pinged = false;
    this._givenUp = false; // tick() said the connection is dead: not again until the next opens
    this._retryAfter = null;
  }

  // --- the connection

  opened(welcome, now) {
    this.welcome = welcome;
    this._openedAt = this._lastHeard = now;
    this._pinged = false;
    this._givenUp = false; // tick() said the connection is dead: not again until the next opens
    this._setState("open");
    for (const room of [...this.rooms.values()]) this._sync(room, now);
    for (const call of [...this._calls.values()]) if (call.internal === null && !call.sent) this._send(call);
  }

  closed(closed, now) {
    closed = closedOf(closed);
    if (this.state === "closed") return decision("stop", 0.0, this._attempt, "closed");
    if (this._openedAt !== null) closed = { ...closed, open_for_s: now - this._openedAt };
    if (closed.retry_after_s === null && this._retryAfter !== null) closed = { ...closed, retry_after_s: this._retryAfter };
    let d = decide(closed, { attempt: this._attempt, rand: this._rand(), policy: this.policy,
      canRefresh: this.canRefresh, reconnect: this.reconnect });
    if (Object.keys(this.welcome).length === 0 && d.action === "reconnect") {
      d = decision("stop", 0.0, d.next_attempt, "could not connect"); // the first connection failed: fail fast
    }
    this._attempt = d.next_attempt;
    this._openedAt = this._retryAfter = null;
    for (const call of [...this._calls.values()]) {
      if (call.internal !== null) this._calls.delete(call.opId);
      else if (call.sent && !RESEND.has(call.type)) this._finish(call, { error: new ConnectionLost(call.type, call.opId) });
      else call.sent = false;
    }
    for (const room of this.rooms.values()) room.synced = false;
    this._rejoins.cancelWaits(); // the next connection rejoins every room at once
    this._outgoing = [];
    if (d.action === "stop") {
      this.stop(new ClientClosed(d.reason, closed.http_status !== null ? closed.http_status : closed.code));
    } else {
      this._setState("reconnecting");
    }
    return d;
  }

  /** Close for good: every waiting request fails, every subscription ends (reason null: the program). */
  stop(reason = null) {
    if (this.state === "closed") return;
    this.closeReason = reason;
    for (const call of [...this._calls.values(), ...[...this._joins.values()].flat()]) {
      const error = reason ? new ClientClosed(reason.reason, reason.code) : new ClientClosed("closed by the program");
      this._finish(call, { error });
    }
    this._joins.clear();
    this._setState("closed");
    for (const sub of this._subs) { sub.finished = true; sub.error = reason; this._notify(sub); }
  }

  /** Time out requests; ping a silent connection. True: the connection is dead. */
  tick(now) {
    for (const call of [...this._calls.values(), ...[...this._joins.values()].flat()]) {
      if (call.internal === null && call.deadline <= now) {
        this._finish(call, { error: new TimeoutError(`no reply to ${call.type} in time`) });
      }
    }
    if (this.state !== "open" || this._givenUp) return false; // (once, until the connection is closed)
    for (const name of this._rejoins.due(now)) if (this.rooms.has(name)) this._sync(this.rooms.get(name), now);
    const heartbeat = Number(this.welcome.heartbeat_s ?? 20.0);
    const silent = now - this._lastHeard;
    if (silent >= heartbeat && !this._pinged) {
      this._pinged = true;
      this._outgoing.push({ type: "presence.ping" });
    }
    this._givenUp = silent >= 2 * heartbeat + PING_GRACE_S;
    return this._givenUp;
  }

  /** When tick() has something to do next (Infinity: nothing planned). */
  nextDeadline() {
    const deadlines = [...this._calls.values()].filter((c) => c.internal === null).map((c) => c.deadline);
    for (const calls of this._joins.values()) for (const c of calls) deadlines.push(c.deadline);
    deadlines.push(this._rejoins.nextDeadline());
    if (this.state === "open" && !this._givenUp) {
      const heartbeat = Number(this.welcome.heartbeat_s ?? 20.0);
      deadlines.push(this._lastHeard + (this._pinged ? 2 * heartbeat + PING_GRACE_S : heartbeat));
    }
    return Math.min(Infinity, ...deadlines);
  }

  get hasOutgoing() { return this._outgoing.length > 0; }

  takeOutgoing() { const frames = this._outgoing; this._outgoing = []; return frames; }

  // --- the program's requests

  request(kind, data, { now, timeout }) {
    if (this.state === "closed") throw this.closeReason ?? new ClientClosed("closed by the program");
    data = data === null || data === undefined ? null : { ...data };
    if (kind === "chat.send" && data !== null && data.client_msg_id === undefined) data.client_msg_id = newClientMsgId();
    if (kind === "room.leave" && data !== null) this._forgetRoom(String(data.room));
    const call = new Call(`c-${this._nextId++}`, kind, data, now + timeout);
    this._calls.set(call.opId, call);
    if (this.state === "open") this._send(call);
    return call;
  }

  join(name, { now, timeout }) {
    if (this.state === "closed") throw this.closeReason ?? new ClientClosed("closed by the program");
    const call = new Call(`join-${name}`, "room.join", { room: name }, now + timeout);
    let room = this.rooms.get(name);
    if (room !== undefined && room.synced) { this._finish(call, { result: room }); return call; }
    if (!this._joins.has(name)) this._joins.set(name, []);
    this._joins.get(name).push(call);
    if (room === undefined) {
      room = new Room(name);
      this.rooms.set(name, room);
      if (this.state === "open") this._sync(room, now);
    }
    return call;
  }

  cancel(call) {
    this._calls.delete(call.opId);
    for (const calls of this._joins.values()) { const at = calls.indexOf(call); if (at >= 0) calls.splice(at, 1); }
  }

  subscribe(types = new Set()) {
    const sub = { types: new Set(types), limit: this.eventsLimit, buffer: [], finished: false, error: null };
    if (this.state === "closed") { sub.finished = true; sub.error = this.closeReason; }
    this._subs.push(sub);
    return sub;
  }

  unsubscribe(sub) { const at = this._subs.indexOf(sub); if (at >= 0) this._subs.splice(at, 1); }

  // --- frames in

  received(message, now) {
    this._lastHeard = now;
    this._pinged = false;
    const kind = String(message.type);
    const data = message.data ?? {};
    if (REPLY_TYPES.has(kind)) {
      const opId = data.op_id;
      if (opId === null || opId === undefined) {
        if (kind === "error") {
          if (data.retry_after_s !== null && data.retry_after_s !== undefined) this._retryAfter = Number(data.retry_after_s);
          this._emit({ type: "error", data, replayed: false });
        }
        return;
      }
      const call = this._calls.get(String(opId));
      if (call !== undefined) { this._calls.delete(String(opId)); this._reply(call, kind, data); }
      return;
    }
    if (kind === "welcome") return;
    const name = data.room ?? data.scope;
    const room = name !== undefined && name !== null ? this.rooms.get(String(name)) : undefined;
    let event = { type: kind, data, replayed: false };
    if (room !== undefined) {
      if (kind === "chat.edited" && room.message(String(data.id)) === null // new to us (before a rejoin's ack)
          && data.user_id !== this.welcome.user_id) { // (our own are not replayed)
        event = { type: "chat.message", data, replayed: true }; // the program sees each message once as one
      }
      const changed = room.applyEvent(kind, data);
      if (CHANGE_EVENTS.has(kind) && !changed) return; // the view already holds this change
      if (kind === "room.kicked") this._forgetRoom(room.name);
    }
    if (USER_EVENTS.has(kind)) for (const each of this.rooms.values()) each.applyUserEvent(kind, data);
    this._emit(event);
  }

  // --- inside

  _setState(state) {
    if (state !== this.state) { this.state = state; this._emit({ type: STATE_EVENT, data: { state }, replayed: false }); }
  }

  _emit(event) {
    for (const sub of this._subs) {
      if (sub.finished || (sub.types.size > 0 && !sub.types.has(event.type))) continue;
      if (sub.buffer.length >= sub.limit) { sub.finished = true; sub.error = new EventsOverflow(sub.limit); }
      else sub.buffer.push(event);
      this._notify(sub);
    }
  }

  _send(call) { call.sent = true; this._outgoing.push(call.frame()); }

  _finish(call, { result, error = null }) {
    this.cancel(call);
    if (call.done) return;
    Object.assign(call, { done: true, result, error });
    this._notify(call);
  }

  _forgetRoom(name) {
    const room = this.rooms.get(name);
    this.rooms.delete(name);
    this._loaded.delete(name);
    this._rejoins.done(name);
    this._replayAfter.delete(name);
    if (room !== undefined) room.left = true;
  }

  _reply(call, kind, data) {
    if (call.internal !== null) call.internal(kind, data);
    else if (kind === "error") this._finish(call, { error: serverError(data) });
    else if (kind === "ack") { this._applyOwn(call, data.data); this._finish(call, { result: data.data }); }
    else this._finish(call, { result: data });
  }

  _internal(kind, data, then) {
    const call = new Call(`c-${this._nextId++}`, kind, data, Infinity, then);
    this._calls.set(call.opId, call);
    this._send(call);
  }

  _pageLimit() { return Number(this.welcome.limits?.history_page_max ?? 50); }

  _sync(room) {
    room.synced = false;
    // (kept from an unfinished try: what it brought is replayed already)
    if (this._loaded.has(room.name) && !this._replayAfter.has(room.name)) this._replayAfter.set(room.name, room.maxSeq());
    const since = this._rejoins.since(room.name, room.rev); // an unfinished try's ack moved rev past unread pages
    this._internal("room.join", { room: room.name, since_rev: since }, (kind, data) => {
      if (kind === "error") { this._refused(room, data); return; }
      const ack = data.data;
      room.joined(ack);
      this._changes(room, ack.changes ?? [], Boolean(ack.changes_truncated), Boolean(ack.changes_reset));
    });
  }

  /** The server refused a (re)join or one of its pages: a rejoin refused for now waits and tries again. */
  _refused(room, data) {
    if (this._loaded.has(room.name) && this.rooms.get(room.name) === room && TRANSIENT.has(String(data.code))) {
      const after = data.retry_after_s;
      this._rejoins.refused(room.name, this._lastHeard, { rand: this._rand(), policy: this.policy,
        retryAfterS: after === null || after === undefined ? null : Number(after) });
      return;
    }
    this._forgetRoom(room.name); // a first join, or "no" (a kick, a revoked room): no longer ours
    const calls = this._joins.get(room.name) ?? []; // (taken out first: _finish removes each from the list)
    this._joins.delete(room.name);
    for (const call of calls) this._finish(call, { error: serverError(data) });
  }

  _changes(room, entries, more, reset) {
    if (reset) { room.reset(); this._historyPage(room, 0); return; }
    this._applyEntries(room, entries);
    if (more && entries.length > 0) {
      this._internal("chat.changes", { room: room.name, after_rev: entries[entries.length - 1].rev,
        limit: this._pageLimit() }, (kind, data) => {
        const result = data.data ?? {};
        if (kind === "error") { this._refused(room, data); return; }
        this._changes(room, result.changes, Boolean(result.has_more), Boolean(result.changes_reset));
      });
    } else {
      this._synced(room);
    }
  }

  _historyPage(room, after) {
    this._internal("chat.history", { room: room.name, after, limit: this._pageLimit() }, (kind, data) => {
      if (kind === "error") { this._refused(room, data); return; }
      const result = data.data;
      this._applyEntries(room, result.messages);
      if (result.has_more && result.messages.length > 0) {
        this._historyPage(room, Number(result.messages[result.messages.length - 1].seq));
      } else {
        this._synced(room);
      }
    });
  }

  _applyEntries(room, entries) {
    const replayAfter = this._replayAfter.get(room.name);
    const fresh = entries.filter((entry) => room.applyEntry(entry));
    if (replayAfter === undefined) return; // the first load: the program reads room.messages
    for (const entry of fresh.sort((a, b) => Number(a.seq) - Number(b.seq))) {
      if (Number(entry.seq) > replayAfter && entry.user_id !== this.welcome.user_id) {
        this._emit({ type: "chat.message", data: { ...(room.message(String(entry.id)) ?? entry) }, replayed: true });
      }
    }
  }

  _synced(room) {
    room.caughtUp();
    this._loaded.add(room.name);
    this._replayAfter.delete(room.name);
    this._rejoins.done(room.name);
    const calls = this._joins.get(room.name) ?? []; // (taken out first: _finish removes each from the list)
    this._joins.delete(room.name);
    for (const call of calls) this._finish(call, { result: room });
  }

  _applyOwn(call, result) {
    if ((call.type === "chat.send" || call.type === "chat.edit") && result && typeof result === "object") {
      const room = this.rooms.get(String(result.room));
      if (room !== undefined) room.applyEntry(result);
      return;
    }
    const change = ownChange(call.type, call.data ?? {}, result, this.welcome.user_id);
    if (change !== null) {
      const [kind, delta] = change;
      for (const room of this.rooms.values()) {
        if (room.message(String(delta.message_id)) !== null) room.applyEvent(kind, delta, { live: false });
      }
    }
  }
}

// --- the adapter: a WebSocket, timers and the page's online/offline events -----------------------

const clock = () => (globalThis.performance?.now ? globalThis.performance.now() : Date.now()) / 1000;

function withQuery(url, params) {
  const pairs = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "");
  if (pairs.length === 0) return url;
  const query = pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join("&");
  return url + (url.includes("?") ? "&" : "?") + query;
}

async function fetchToken(getToken) {
  const token = await getToken();
  if (typeof token !== "string" || token === "") throw new Error(`getToken returned ${token}, not a token`);
  return token;
}

/** A signald client that reconnects and resumes by itself; made by connect(). */
export class Client {
  constructor(url, { token = null, getToken = null, user = null, reconnect = true, backoff = new Backoff(),
    WebSocket: WS = globalThis.WebSocket, eventsLimit = 10_000, window: win = globalThis.window } = {}) {
    if (typeof WS !== "function") throw new TypeError("no WebSocket: pass connect(url, {WebSocket})");
    this.url = url;
    this._token = token;
    this._getToken = getToken;
    this._user = user;
    this._WS = WS;
    this._listeners = new Map(); // type -> Set of functions
    this._ws = null;
    this._drop = null; // ends the current connection (with a Closed)
    this._wake = null; // cuts the wait between attempts short
    this._timer = null;
    this._window = win && typeof win.addEventListener === "function" ? win : null;
    this._core = new ClientCore({ reconnect, canRefresh: getToken !== null, policy: backoff, eventsLimit,
      notify: (thing) => this._notified(thing) });
    this._sub = this._core.subscribe();
    this._probing = false;
    this._clocks = [Date.now() / 1000, clock()]; // wall and monotonic time at the last _pump
    this._onOffline = () => { if (this._drop) this._drop(closedOf()); };
    this._onOnline = () => { if (this._wake) this._wake(); else this._probe(); };
    this._onVisible = () => { if (this._window?.document?.visibilityState !== "hidden") this._probe(); };
    if (this._window) {
      this._window.addEventListener("offline", this._onOffline);
      this._window.addEventListener("online", this._onOnline);
      this._window.document?.addEventListener?.("visibilitychange", this._onVisible);
      this._window.document?.addEventListener?.("resume", this._onVisible); // a frozen tab runs again
    }
    let settle;
    this.ready = new Promise((resolve, reject) => { settle = { resolve, reject }; });
    this.ready.catch(() => {}); // a program that never awaits ready must not get an unhandled rejection
    this._settleReady = settle;
    this._run();
  }

  /** "connecting", "open", "reconnecting" or "closed". */
  get state() { return this._core.state; }

  /** The live room views by name. */
  get rooms() { return this._core.rooms; }

  /** The welcome of the current (or last) connection: user_id, session_id, limits. */
  get welcome() { return this._core.welcome; }

  /** Send `type`; resolves with the ack's result, rejects with SignalError, TimeoutError, ConnectionLost or ClientClosed. */
  request(type, data = null, { timeout = 10.0 } = {}) {
    try {
      return this._wait(this._core.request(type, data, { now: clock(), timeout }));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Join `room`; resolves with its live view (messages, members, rev) once it holds the whole room. */
  join(room, { timeout = 10.0 } = {}) {
    try {
      return this._wait(this._core.join(room, { now: clock(), timeout }));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Leave `room`; its view stops being kept. */
  async leave(room, { timeout = 10.0 } = {}) { await this.request("room.leave", { room }, { timeout }); }

  /** Call fn(data, event) for every event of `type` ("*": all; "state": fn(state)). Returns an unsubscribe function. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  /** Close the connection (1000) and stop; waiting requests reject with ClientClosed. */
  close() {
    this._core.stop();
    this._finishClose();
    if (this._ws) { try { this._ws.close(1000); } catch { /* already closing */ } }
    if (this._drop) this._drop(closedOf({ code: 1000 }));
    if (this._wake) this._wake();
    return Promise.resolve();
  }

  // --- inside

  _wait(call) {
    const promise = new Promise((resolve, reject) => { call.waiter = { resolve, reject }; });
    if (call.done) this._notified(call);
    this._pump();
    return promise;
  }

  _notified(thing) {
    if (thing === this._sub) { queueMicrotask(() => this._dispatch()); return; }
    if (!thing.done || !thing.waiter) return;
    if (thing.error) thing.waiter.reject(thing.error); else thing.waiter.resolve(thing.result);
  }

  _dispatch() {
    const events = this._sub.buffer.splice(0);
    for (const event of events) {
      const targets = event.type === STATE_EVENT ? ["state"] : [event.type, "*"];
      for (const target of targets) {
        for (const fn of [...(this._listeners.get(target) ?? [])]) {
          try {
            if (target === "state") fn(event.data.state); else fn(event.data, event);
          } catch (error) {
            queueMicrotask(() => { throw error; }); // a listener's bug is reported, not swallowed, and stops nothing
          }
        }
      }
    }
  }

  /** The page woke up: prove the connection alive with one ping, or replace it. */
  _probe() {
    this._pump();
    if (this._core.state !== "open" || this._probing) return;
    this._probing = true;
    const ws = this._ws;
    this.request("presence.ping", null, { timeout: WAKE_PROBE_TIMEOUT_S }).then(() => {}, () => {
      if (this._ws === ws && this._drop) this._drop(closedOf()); // no pong: it died while we slept
    }).finally(() => { this._probing = false; });
  }

  _pump() {
    const now = clock();
    const wall = Date.now() / 1000;
    const slept = (wall - this._clocks[0]) - (now - this._clocks[1]) > SLEPT_S;
    this._clocks = [wall, now];
    if (slept) queueMicrotask(() => this._probe());
    if (this._core.tick(now) && this._drop) this._drop(closedOf()); // silent too long: reconnect
    if (this._ws && this._core.state === "open") {
      for (const frame of this._core.takeOutgoing()) this._ws.send(JSON.stringify(frame));
    }
    clearTimeout(this._timer);
    this._timer = null;
    const next = this._core.nextDeadline();
    if (Number.isFinite(next) && this._core.state !== "closed") {
      this._timer = setTimeout(() => this._pump(), Math.max(0, (next - clock()) * 1000) + 5);
    }
  }

  _finishClose() {
    clearTimeout(this._timer);
    this._timer = null;
    if (this._window) {
      this._window.removeEventListener("offline", this._onOffline);
      this._window.removeEventListener("online", this._onOnline);
      this._window.document?.removeEventListener?.("visibilitychange", this._onVisible);
      this._window.document?.removeEventListener?.("resume", this._onVisible);
    }
    this._settleReady.reject(this._core.closeReason ?? new ClientClosed("closed by the program"));
  }

  async _run() {
    try {
      if (this._token === null && this._getToken !== null) this._token = await fetchToken(this._getToken);
      while (this._core.state !== "closed") {
        const closed = await this._connectOnce();
        const d = this._core.closed(closed, clock());
        if (d.action === "stop") break;
        await new Promise((resolve) => {
          const timer = setTimeout(() => { this._wake = null; resolve(); }, d.delay_s * 1000);
          this._wake = () => { clearTimeout(timer); this._wake = null; resolve(); };
        });
        if (this._core.state === "closed") break;
        if (d.action === "refresh" && this._getToken !== null) this._token = await fetchToken(this._getToken);
      }
    } catch (error) {
      this._core.stop(new ClientClosed(`client failed: ${error?.message ?? error}`));
    }
    this._finishClose();
  }

  _connectOnce() {
    return new Promise((resolve) => {
      // Browsers cannot set headers on a WebSocket: the token goes as ?token= (docs/protocol.md).
      let ws;
      try {
        ws = new this._WS(withQuery(this.url, { user: this._user, token: this._token }), [SUBPROTOCOL_JSON]);
      } catch {
        resolve(closedOf());
        return;
      }
      let welcomed = false, refusedRetry = null, done = false;
      const welcomeTimer = setTimeout(() => finish(closedOf()), WELCOME_TIMEOUT_S * 1000);
      const finish = (closed) => {
        if (done) return;
        done = true;
        clearTimeout(welcomeTimer);
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        if (this._ws === ws) { this._ws = null; this._drop = null; }
        if (ws.readyState === 0 || ws.readyState === 1) { try { ws.close(); } catch { /* closing */ } }
        resolve(closed);
      };
      this._ws = ws;
      this._drop = finish;
      ws.onmessage = (event) => {
        let message;
        try { message = JSON.parse(typeof event.data === "string" ? event.data : String(event.data)); } catch { return; }
        if (!welcomed) {
          if (message.type !== "welcome") { // refused: one error frame, then 4401/4403/4429
            const value = message.data?.retry_after_s;
            if (typeof value === "number") refusedRetry = value;
            return;
          }
          welcomed = true;
          clearTimeout(welcomeTimer);
          this._core.opened(message.data ?? {}, clock());
          this._settleReady.resolve(this);
        } else {
          this._core.received(message, clock());
        }
        this._pump();
      };
      ws.onclose = (event) => finish(closedOf({ code: event.code === 1005 ? null : event.code,
        retry_after_s: refusedRetry }));
      ws.onerror = () => {}; // onclose follows with the code
    });
  }
}

/** Connect to signald: `connect(url, {token, getToken, user, reconnect, backoff, WebSocket})`. */
export function connect(url, options = {}) {
  return new Client(url, options);
}
