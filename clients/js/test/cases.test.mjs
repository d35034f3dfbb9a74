// The JavaScript port of the client core against tests/data/client_cases.json — the same cases
// tests/unit/client/test_client_cases.py runs on the Python core. Run: node --test clients/js/test
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { Backoff, ClientCore, RESEND, Room, USER_EVENTS, decide, ownChange } from "../signald.js";

const CASES = JSON.parse(readFileSync(new URL("../../../tests/data/client_cases.json", import.meta.url), "utf8"));
const approx = (actual, expected) => Math.abs(actual - expected) <= Math.max(1e-6 * Math.abs(expected), 1e-12);

describe("schedule", () => {
  for (const c of CASES.schedule) {
    test(c.name, () => {
      const d = decide(c.closed, { attempt: c.attempt, rand: c.rand, policy: new Backoff(),
        canRefresh: c.can_refresh, reconnect: c.reconnect });
      assert.deepEqual([d.action, d.next_attempt], [c.expect.action, c.expect.next_attempt]);
      assert.ok(approx(d.delay_s, c.expect.delay_s), `delay ${d.delay_s} != ${c.expect.delay_s}`);
    });
  }
});

describe("resend", () => {
  for (const [kind, resend] of Object.entries(CASES.resend).sort()) {
    test(kind, () => assert.equal(RESEND.has(kind), resend));
  }
});

function subset(actual, expected) {
  if (expected !== null && typeof expected === "object" && !Array.isArray(expected)) {
    return actual !== null && typeof actual === "object" && !Array.isArray(actual)
      && Object.entries(expected).every(([k, v]) => k in actual && subset(actual[k], v));
  }
  try { assert.deepEqual(actual, expected); return true; } catch { return false; }
}

function checkRoom(room, expect) {
  assert.equal(room.rev, expect.rev);
  const messages = room.messages;
  assert.equal(messages.length, expect.messages.length, JSON.stringify(messages));
  messages.forEach((m, i) => assert.ok(subset(m, expect.messages[i]), JSON.stringify([m, expect.messages[i]])));
  if ("presence" in expect) assert.deepEqual(room.presence, expect.presence);
  if ("typing" in expect) assert.deepEqual([...room.typing].sort(), expect.typing);
  for (const [user, devices] of Object.entries(expect.devices ?? {})) assert.deepEqual(room.members[user].devices, devices);
}

describe("rooms", () => {
  for (const c of CASES.rooms) {
    test(c.name, () => {
      const room = new Room("r");
      room.synced = true; // a view in sync: the core's (re)joins and their waiting deltas are the "core" cases
      for (const step of c.steps) {
        if ("join" in step) {
          room.joined(step.join);
          for (const entry of step.join.changes ?? []) room.applyEntry(entry);
        } else if ("entries" in step) {
          for (const entry of step.entries) room.applyEntry(entry);
        } else if ("reset" in step) {
          room.reset();
        } else if ("own" in step) {
          if (step.own === "chat.send" || step.own === "chat.edit") room.applyEntry(step.result);
          else {
            const change = ownChange(step.own, step.request, step.result, "bot");
            assert.notEqual(change, null);
            room.applyEvent(change[0], change[1], { live: false });
          }
        } else if (USER_EVENTS.has(step.event)) {
          room.applyUserEvent(step.event, step.data);
        } else {
          const changed = room.applyEvent(step.event, step.data);
          if ("changed" in step) assert.equal(changed, step.changed, JSON.stringify(step));
        }
      }
      checkRoom(room, c.expect);
    });
  }
});

class Driver {
  constructor() {
    this.rand = 0.0;
    this.now = 0.0;
    this.core = new ClientCore({ rand: () => this.rand });
    this.calls = {};
    this.events = this.core.subscribe(new Set());
  }

  step(step) {
    this.now = step.now ?? this.now;
    this.rand = step.rand ?? this.rand;
    const core = this.core;
    if ("request" in step) {
      this.calls[step.as] = core.request(step.request, step.data ?? null, { now: this.now, timeout: step.timeout ?? 10.0 });
    } else if ("join" in step) {
      this.calls[step.as] = core.join(step.join, { now: this.now, timeout: step.timeout ?? 10.0 });
    } else if ("open" in step) {
      core.opened(step.open, this.now);
    } else if ("receive" in step) {
      core.received(step.receive, this.now);
    } else if ("close" in step) {
      const d = core.closed(step.close, this.now);
      assert.ok(subset({ action: d.action, delay_s: d.delay_s }, step.decision), JSON.stringify(d));
    } else if ("tick" in step) {
      this.now = step.tick;
      assert.equal(core.tick(this.now), step.dead);
    } else if ("expect_sent" in step) {
      assert.deepEqual(core.takeOutgoing(), step.expect_sent);
    } else if ("expect_result" in step) {
      const call = this.calls[step.expect_result];
      assert.ok(call.done && call.error === null, JSON.stringify(call));
      if ("result" in step) assert.deepEqual(call.result, step.result);
    } else if ("expect_error" in step) {
      const call = this.calls[step.expect_error];
      assert.ok(call.done && call.error?.name === step.error, `${call.error}`);
      if ("code" in step) assert.equal(call.error.code, step.code);
    } else if ("expect_pending" in step) {
      assert.equal(this.calls[step.expect_pending].done, false);
    } else if ("expect_state" in step) {
      assert.equal(core.state, step.expect_state);
    } else if ("expect_room" in step) {
      const room = core.rooms.get(step.expect_room);
      assert.equal(room.rev, step.rev);
      assert.deepEqual(room.messages.map((m) => m.id), step.ids);
      (step.messages ?? []).forEach((m, i) => assert.ok(subset(room.messages[i], m), JSON.stringify([room.messages[i], m])));
      if ("synced" in step) assert.equal(room.synced, step.synced);
    } else if ("expect_no_room" in step) {
      assert.equal(core.rooms.has(step.expect_no_room), false);
    } else if ("expect_deadline" in step) {
      assert.ok(Math.abs(core.nextDeadline() - step.expect_deadline) < 1e-9, `${core.nextDeadline()}`);
    } else if ("expect_events" in step) {
      const chat = this.events.buffer.filter((e) => e.type.startsWith("chat."));
      this.events.buffer.length = 0;
      assert.deepEqual(chat.map((e) => ({ type: e.type, id: e.data.id ?? null, replayed: e.replayed })), step.expect_events);
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }
}

describe("core", () => {
  for (const c of CASES.core) {
    test(c.name, () => {
      const driver = new Driver();
      for (const step of c.steps) driver.step(step);
    });
  }
});
