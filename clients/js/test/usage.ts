// Type-checked (tsc --noEmit, tests/unit/client/test_js_types.py) against signald.d.ts: the API as docs/client.md shows it.
import { ClientClosed, SignalError, connect, type ChatMessage, type State } from "../signald.js";

export async function example(): Promise<void> {
  const client = connect("ws://127.0.0.1:8765/", { user: "alice", getToken: async () => "token" });
  await client.ready;
  const off = client.on("state", (state: State) => console.log(state));
  client.on("chat.message", (message: ChatMessage, event) => console.log(message.body, event.replayed));
  client.on("presence.update", (data) => console.log(data.user_id, data.status));
  client.on("error", (data) => console.log(data.code, data.retry_after_s));
  const room = await client.join("lobby");
  const seqs: number[] = room.messages.map((m) => m.seq);
  console.log(seqs, room.rev, Object.keys(room.members));
  try {
    await client.request("chat.send", { scope: "lobby", body: "hi" }, { timeout: 5 });
  } catch (error) {
    if (error instanceof SignalError) console.log(error.code);
    else if (error instanceof ClientClosed) console.log(error.reason, error.code);
  }
  off();
  await client.close();
}
