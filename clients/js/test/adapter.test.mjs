// The WebSocket adapter of clients/js/signald.js with an injected fake WebSocket: the refusal a
// browser can see (one error frame, then close 4401) makes the client call getToken and reconnect;
// requests correlate; join gives the live view; "state" events; offline drops, online reconnects.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ClientClosed, connect, TimeoutError } from "../signald.js";

function fakeServer(script) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      Object.assign(this, { url, protocols, readyState: 0, sent: [] });
      sockets.push(this);
      setTimeout(() => { this.readyState = 1; script(this, sockets.length); }, 0);
    }
    send(text) { this.sent.push(JSON.parse(text)); this.onsent?.(JSON.parse(text)); }
    close(code = 1000) { this.serverClose(code); }
    deliver(message) { this.onmessage?.({ data: JSON.stringify(message) }); }
    serverClose(code) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code }), 0);
    }
  }
  return { FakeWebSocket, sockets };
}

const welcome = { type: "welcome", data: { user_id: "bot", session_id: "s", heartbeat_s: 20, limits: {} } };

test("a 4401 refusal calls getToken and reconnects; requests and join work; close stops", async () => {
  const { FakeWebSocket, sockets } = fakeServer((ws, n) => {
    if (n === 1) {
      ws.deliver({ type: "error", data: { op_id: null, code: "UNAUTHORIZED", message: "expired" } });
      ws.serverClose(4401);
      return;
    }
    ws.onsent = (frame) => {
      if (frame.type === "room.join") {
        ws.deliver({ type: "ack", data: { op_id: frame.id, data: { room: "r", rev: 2, members: [{ user_id: "bot",
          status: "online", devices: [] }], changes: [{ id: "m1", seq: 1, rev: 2, room: "r", body: "hi",
          user_id: "u", reactions: {} }] } } });
      } else if (frame.type === "session.info") {
        ws.deliver({ type: "ack", data: { op_id: frame.id, data: { user_id: "bot" } } });
      }
    };
    ws.deliver(welcome);
  });
  const tokens = ["t2"];
  const states = [];
  const client = connect("ws://x/", { token: "t1", getToken: () => tokens.shift(), WebSocket: FakeWebSocket });
  client.on("state", (state) => states.push(state));
  await client.ready;
  assert.equal(client.state, "open");
  assert.match(sockets[0].url, /token=t1/);
  assert.match(sockets[1].url, /token=t2/);
  assert.deepEqual(sockets[1].protocols, ["signald.v1"]);
  assert.deepEqual(await client.request("session.info"), { user_id: "bot" });
  const room = await client.join("r");
  assert.equal(room.rev, 2);
  assert.deepEqual(room.messages.map((m) => m.id), ["m1"]);
  const seen = [];
  client.on("chat.message", (data) => seen.push(data.id));
  sockets[1].deliver({ type: "chat.message", data: { id: "m2", seq: 2, rev: 3, room: "r", body: "yo", user_id: "u",
    reactions: {} } });
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(seen, ["m2"]);
  assert.equal(room.rev, 3);
  await client.close();
  assert.equal(client.state, "closed");
  await assert.rejects(client.request("session.info"), ClientClosed);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(states, ["reconnecting", "open", "closed"]);
});

test("a 4403 refusal of the first connection rejects ready", async () => {
  const { FakeWebSocket } = fakeServer((ws) => {
    ws.deliver({ type: "error", data: { op_id: null, code: "FORBIDDEN", message: "origin" } });
    ws.serverClose(4403);
  });
  const client = connect("ws://x/", { user: "bot", WebSocket: FakeWebSocket });
  await assert.rejects(client.ready, (error) => error instanceof ClientClosed && error.code === 4403);
  assert.equal(client.state, "closed");
});

test("offline drops the connection; online reconnects at once", async () => {
  const { FakeWebSocket, sockets } = fakeServer((ws) => ws.deliver(welcome));
  const page = new EventTarget();
  const client = connect("ws://x/", { user: "bot", WebSocket: FakeWebSocket, window: page });
  try {
    await client.ready;
    page.dispatchEvent(new Event("offline"));
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(client.state, "reconnecting");
    page.dispatchEvent(new Event("online")); // before the 0.5 s backoff would have run out
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(sockets.length, 2);
    assert.equal(client.state, "open");
  } finally {
    await client.close();
  }
});

test("a page that wakes (resume, visible again) proves its connection with one ping", async () => {
  const { FakeWebSocket, sockets } = fakeServer((ws) => {
    ws.onsent = (frame) => {
      if (frame.type === "presence.ping") ws.deliver({ type: "presence.pong", data: { op_id: frame.id, timestamp: "t" } });
    };
    ws.deliver(welcome);
  });
  const page = new EventTarget();
  page.document = new EventTarget();
  page.document.visibilityState = "visible";
  const client = connect("ws://x/", { user: "bot", WebSocket: FakeWebSocket, window: page });
  try {
    await client.ready;
    page.document.dispatchEvent(new Event("resume"));
    page.document.dispatchEvent(new Event("visibilitychange")); // one probe at a time
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(sockets[0].sent.map((f) => f.type), ["presence.ping"]);
    assert.equal(client.state, "open"); // answered: the connection stays
    page.document.visibilityState = "hidden";
    page.document.dispatchEvent(new Event("visibilitychange")); // hidden: nothing to check
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(sockets[0].sent.length, 1);
    assert.equal(sockets.length, 1);
  } finally {
    await client.close();
  }
});

test("a machine that slept (the wall clock ran ahead of the monotonic one) probes at the next turn", async () => {
  const { FakeWebSocket, sockets } = fakeServer((ws) => {
    ws.onsent = (frame) => {
      if (frame.type === "presence.ping") ws.deliver({ type: "presence.pong", data: { op_id: frame.id, timestamp: "t" } });
      else ws.deliver({ type: "ack", data: { op_id: frame.id, data: { user_id: "bot" } } });
    };
    ws.deliver(welcome);
  });
  const realNow = Date.now;
  const client = connect("ws://x/", { user: "bot", WebSocket: FakeWebSocket, window: new EventTarget() });
  try {
    await client.ready;
    const slept = realNow() + 3_600_000; // an hour of suspend the monotonic clock did not see
    Date.now = () => slept;
    await client.request("session.info");
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(sockets[0].sent.map((f) => f.type), ["session.info", "presence.ping"]);
    assert.equal(client.state, "open");
  } finally {
    Date.now = realNow;
    await client.close();
  }
});

test("on() returns its remover and '*' hears every event; chat.send gets a client_msg_id; a request times out; close() sends 1000 and rejects what waits", async () => {
  const { FakeWebSocket, sockets } = fakeServer((ws) => {
    ws.onsent = (frame) => {
      if (frame.type === "chat.send") ws.deliver({ type: "ack", data: { op_id: frame.id, data: { id: "m1" } } });
    };  // anything else is never answered
    ws.deliver(welcome);
  });
  const client = connect("ws://x/", { user: "bot", WebSocket: FakeWebSocket, window: null });
  await client.ready;
  const all = [];
  const typed = [];
  client.on("*", (data, event) => all.push(event.type));
  const off = client.on("app.news", (data) => typed.push(data.n));
  sockets[0].deliver({ type: "app.news", data: { n: 1 } });
  await new Promise((resolve) => setTimeout(resolve, 0));
  off();
  sockets[0].deliver({ type: "app.news", data: { n: 2 } });
  sockets[0].deliver({ type: "app.other", data: {} });
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(typed, [1]);
  assert.deepEqual(all, ["app.news", "app.news", "app.other"]);

  assert.deepEqual(await client.request("chat.send", { scope: "r", body: "hi" }), { id: "m1" });
  const send = sockets[0].sent.find((frame) => frame.type === "chat.send");
  assert.match(send.data.client_msg_id, /.+/);
  await assert.rejects(client.request("session.info", null, { timeout: 0.05 }), TimeoutError);

  const waiting = client.request("session.info", null, { timeout: 30 });
  const codes = [];
  const fakeClose = sockets[0].close.bind(sockets[0]);
  sockets[0].close = (code) => { codes.push(code); fakeClose(code); };
  await client.close();
  await assert.rejects(waiting, ClientClosed);
  assert.deepEqual(codes, [1000]);
  assert.equal(client.state, "closed");
});
