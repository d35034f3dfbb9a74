// The JavaScript client against a real daemon (driven by tests/e2e/test_js_client_live.py).
// Node 20 has no global WebSocket: the `ws` package (installed by ./dev test into .venv/node)
// is injected through the client's WebSocket option, as a program on an older runtime would.
import { createRequire } from "node:module";
import { connect } from "../../../clients/js/signald.js";

const require = createRequire(process.env.SIGNALD_NODE_MODULES + "/");
const WebSocket = require("ws");
const url = process.argv[2];

function until(predicate, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => {
      if (predicate()) return resolve();
      if (Date.now() - started > 5000) return reject(new Error("timed out waiting for " + what));
      setTimeout(check, 5);
    };
    check();
  });
}

const alice = connect(url, { user: "alice", WebSocket, window: null });
const bob = connect(url, { user: "bob", WebSocket, window: null });
await Promise.all([alice.ready, bob.ready]);
await alice.join("lobby");
const room = await bob.join("lobby");
const received = new Promise((resolve) => bob.on("chat.message", (data) => resolve(data)));
const sent = await alice.request("chat.send", { scope: "lobby", body: "hello from js" });
const event = await received;
await alice.request("chat.edit", { message_id: sent.id, new_body: "edited" });
await until(() => room.messages.length === 1 && room.messages[0].body === "edited", "the edit in bob's view");

let refused = null;
const stranger = connect(url, { user: "not a valid name!", WebSocket, window: null });
try {
  await stranger.ready;
} catch (error) {
  refused = { name: error.name, code: error.code };
}
await Promise.all([alice.close(), bob.close()]);
console.log(JSON.stringify({ sent, event, view: room.messages, rev: room.rev, refused }));
