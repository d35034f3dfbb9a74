// signald browser demo: chat, members, presence, typing and a WebRTC call between two tabs.
//
// Everything on screen is drawn from the JavaScript client's live room view (client.join() returns
// it; the client keeps it exact across reconnects with since_rev), so a daemon restart loses and
// duplicates nothing: the page never keeps a message list of its own. The call's offer, answer, ICE
// candidates and end go through signald (call.offer / call.answer / call.ice / call.end); the media
// and the data channel then flow peer to peer.
//
// Query parameters (all optional): user (auth mode none), token (a JWT), token_url (a URL that
// answers a fresh token as text: the client's getToken, called when the server refuses the token
// with 4401 or the session expires), room (default "lobby"), server (default: the WebSocket
// endpoint of the daemon that served this page). With user or token given, the page joins at once.
//
// window.demo holds the page's state for tests and the curious: demo.snapshot(), demo.call,
// demo.received (data channel messages), demo.tokenFetches.

import { connect } from "./signald.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const demo = {
  client: null,
  room: null, // the client's live view of the joined room
  myStatus: "online",
  call: null, // {id, peer, role, status, reason, pc, channel, pendingLocal, remoteIce, remoteSet, offer, callType}
  received: [], // data channel messages from the peer
  tokenFetches: 0,
  errors: [],
  /** What the page shows, as plain data. */
  snapshot() {
    const room = this.room;
    return {
      state: this.client?.state ?? "idle",
      user: this.client?.welcome?.user_id ?? null,
      room: room?.name ?? null,
      rev: room?.rev ?? 0,
      synced: room?.synced ?? false,
      messages: (room?.messages ?? []).map((m) => ({ id: m.id, seq: m.seq, user_id: m.user_id, body: m.body,
        deleted: Boolean(m.deleted_at) })),
      members: room ? Object.fromEntries(Object.entries(room.members).map(([u, m]) => [u, m.status])) : {},
      typing: room ? [...room.typing].sort() : [],
      call: this.call && { id: this.call.id, peer: this.call.peer, role: this.call.role, status: this.call.status,
        reason: this.call.reason, channel: this.call.channel?.readyState ?? null },
    };
  },
};
window.demo = demo;

function defaultServer() {
  if (location.protocol === "http:" || location.protocol === "https:") {
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  }
  return "ws://127.0.0.1:8765/";
}

function showError(message) {
  demo.errors.push(message);
  $("error").textContent = message;
  $("error").hidden = false;
}

// --- connecting ----------------------------------------------------------------------------------

async function start() {
  const user = $("user").value.trim() || null;
  const token = $("token").value.trim() || null;
  const roomName = $("room").value.trim() || "lobby";
  const tokenUrl = params.get("token_url");
  const getToken = tokenUrl ? async () => {
    demo.tokenFetches += 1;
    const response = await fetch(tokenUrl, { cache: "no-store" });
    if (!response.ok) throw new Error(`${tokenUrl} answered ${response.status}`);
    return (await response.text()).trim();
  } : null;
  $("login").hidden = true;
  $("error").hidden = true;
  const client = connect($("server").value.trim(), { user, token, getToken });
  demo.client = client;
  client.on("state", (state) => {
    render();
    if (state === "open" && demo.room) {
      // Resolves once the room is resumed (since_rev): then the view holds what changed meanwhile.
      client.join(roomName).then((room) => { demo.room = room; render(); }, () => {});
    }
    if (state === "closed") showError("disconnected for good (the server refused or ended the session): reload to try again");
  });
  client.on("*", (data, event) => onEvent(event.type, data));
  try {
    await client.ready;
    demo.room = await client.join(roomName);
  } catch (error) {
    showError(`cannot join: ${error.message}`);
    $("login").hidden = false;
    return;
  }
  $("app").hidden = false;
  render();
}

function onEvent(type, data) {
  if (type === "call.offer") incomingCall(data);
  else if (type === "call.answer") callAnswered(data);
  else if (type === "call.ice") remoteCandidate(data);
  else if (type === "call.end") callEnded(data);
  render();
}

// --- drawing the room view -----------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => { renderQueued = false; draw(); });
}

function draw() {
  const client = demo.client;
  const state = client?.state ?? "idle";
  $("state").dataset.state = state;
  $("state").textContent = state;
  $("me").textContent = client?.welcome?.user_id ? `you are ${client.welcome.user_id}` : "";
  const room = demo.room;
  if (!room) return;
  const me = client.welcome.user_id;
  $("rev").textContent = `#${room.name} · rev ${room.rev}${room.synced ? "" : " · resuming…"}`;

  const members = Object.values(room.members).sort((a, b) => String(a.user_id).localeCompare(b.user_id));
  $("members").replaceChildren(...members.map((m) => {
    const status = m.user_id === me ? demo.myStatus : m.status;
    const item = element("li", { "data-user": m.user_id, "data-status": status },
      element("span", { class: `status status-${status}` }, `${m.user_id} (${status})`));
    if (room.typing.has(m.user_id)) item.append(" ", element("span", { class: "is-typing" }, "typing…"));
    if (m.user_id !== me) {
      const button = element("button", { type: "button", "data-call": m.user_id }, "Call");
      button.disabled = demo.call !== null && demo.call.status !== "ended";
      button.addEventListener("click", () => placeCall(m.user_id));
      item.append(" ", button);
    }
    return item;
  }));

  const list = $("messages");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.replaceChildren(...room.messages.map((m) => element("li", { "data-seq": m.seq, "data-id": m.id },
    element("span", { class: "author" }, m.user_id),
    m.deleted_at ? element("span", { class: "deleted" }, "(deleted)") : element("span", { class: "body" }, m.body),
    m.edited_at && !m.deleted_at ? " (edited)" : "")));
  if (atBottom) list.scrollTop = list.scrollHeight;

  const typing = [...room.typing].filter((u) => u !== me).sort();
  $("typing").textContent = typing.length ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : "";

  const call = demo.call;
  $("call").dataset.status = call?.status ?? "none";
  $("call-status").textContent = call ? `${call.role === "caller" ? "to" : "from"} ${call.peer}: ${call.status}`
    + (call.reason ? ` (${call.reason})` : "") : "";
  $("incoming").hidden = call?.status !== "incoming";
  if (call?.status === "incoming") $("incoming-text").textContent = `${call.peer} calls (${call.callType})`;
  const channelOpen = call?.channel?.readyState === "open";
  $("channel-body").disabled = $("channel-button").disabled = !channelOpen;
  $("hangup").disabled = !call || call.status === "ended";
}

// --- chat, typing, presence ----------------------------------------------------------------------

let typingSent = 0; // when we last said typing: true (0: we are not typing)
let typingTimer = null;

function sendTyping(typing) {
  clearTimeout(typingTimer);
  if (!demo.room || demo.client.state !== "open") return;
  if (typing) {
    typingTimer = setTimeout(() => sendTyping(false), 4000);
    if (Date.now() - typingSent < 3000) return; // the server keeps it for typing_timeout_s: renew, not spam
    typingSent = Date.now();
  } else {
    if (typingSent === 0) return;
    typingSent = 0;
  }
  demo.client.request("chat.typing", { scope: demo.room.name, typing }).catch(() => {});
}

async function send(event) {
  event.preventDefault();
  const body = $("body").value;
  if (!body.trim() || !demo.room) return;
  $("body").value = "";
  sendTyping(false);
  try {
    // Sent once even across a reconnect: the client gives it a client_msg_id and resends it with that.
    await demo.client.request("chat.send", { scope: demo.room.name, body });
  } catch (error) {
    showError(`not sent: ${error.message}`);
  }
  render();
}

async function setPresence() {
  const status = $("presence").value;
  try {
    await demo.client.request("presence.set", { status });
    demo.myStatus = status;
  } catch (error) {
    showError(`presence: ${error.message}`);
  }
  render();
}

// --- calls: WebRTC, signalled through signald ----------------------------------------------------

// Host candidates only: enough for two tabs on one machine or a LAN. Across the internet a real
// deployment adds STUN/TURN servers here.
const RTC_CONFIG = { iceServers: [] };

async function localMedia(kind) {
  if (!$("media").checked || !navigator.mediaDevices?.getUserMedia) return null;
  try {
    return await navigator.mediaDevices.getUserMedia(kind === "video" ? { audio: true, video: true } : { audio: true });
  } catch {
    return null; // no camera or microphone, or not allowed: the call carries the data channel only
  }
}

async function availableKind() {
  if (!$("media").checked || !navigator.mediaDevices?.enumerateDevices) return "data";
  const devices = await navigator.mediaDevices.enumerateDevices();
  if (devices.some((d) => d.kind === "videoinput")) return "video";
  return devices.some((d) => d.kind === "audioinput") ? "audio" : "data";
}

function newCall(fields) {
  const pc = new RTCPeerConnection(RTC_CONFIG);
  const call = { reason: null, channel: null, pendingLocal: [], remoteIce: [], remoteSet: false, media: null,
    signalling: false, pc, ...fields };
  pc.onicecandidate = ({ candidate }) => {
    if (!candidate) return;
    // Not before our offer or answer has gone out: signald relays ICE only within a call it knows.
    if (call.signalling) signal("call.ice", call, { candidate: candidate.toJSON() });
    else call.pendingLocal.push(candidate.toJSON());
  };
  pc.onconnectionstatechange = () => {
    if (call.status === "ended") return;
    if (pc.connectionState === "connected") call.status = "connected";
    else if (pc.connectionState === "failed") call.status = "failed";
    render();
  };
  pc.ontrack = ({ streams }) => { $("remote-video").srcObject = streams[0] ?? null; };
  pc.ondatachannel = ({ channel }) => useChannel(call, channel);
  demo.call = call;
  return call;
}

function signal(type, call, data) {
  demo.client.request(type, { target_id: call.peer, call_id: call.id, ...data }).catch((error) => {
    if (type !== "call.ice") showError(`${type}: ${error.message}`);
  });
}

function startSignalling(call) {
  call.signalling = true;
  for (const candidate of call.pendingLocal.splice(0)) signal("call.ice", call, { candidate });
}

function useChannel(call, channel) {
  call.channel = channel;
  channel.onopen = channel.onclose = () => render();
  channel.onmessage = ({ data }) => {
    demo.received.push(String(data));
    $("channel-log").append(element("li", { class: "from-peer" }, `${call.peer}: ${data}`));
  };
}

function addMedia(call, media) {
  if (!media) return;
  call.media = media;
  $("local-video").srcObject = media;
  for (const track of media.getTracks()) call.pc.addTrack(track, media);
}

async function placeCall(peer) {
  if (demo.call && demo.call.status !== "ended") return;
  const kind = await availableKind();
  const call = newCall({ id: crypto.randomUUID(), peer, role: "caller", status: "ringing", callType: kind });
  useChannel(call, call.pc.createDataChannel("chat"));
  addMedia(call, kind === "data" ? null : await localMedia(kind));
  if (!call.media) call.callType = "data";
  const offer = await call.pc.createOffer();
  await call.pc.setLocalDescription(offer);
  const sent = demo.client.request("call.offer", { target_id: peer, call_type: call.callType, call_id: call.id,
    sdp: { type: offer.type, sdp: offer.sdp } });
  startSignalling(call); // queued behind the offer on the same connection: the server sees it first
  render();
  try {
    await sent;
  } catch (error) {
    finish(call, `offer failed: ${error.code ?? error.message}`);
  }
}

function incomingCall(data) {
  if (demo.call && demo.call.status !== "ended") {
    demo.client.request("call.end", { target_id: data.from_user, call_id: data.call_id, reason: "busy" })
      .catch(() => {});
    return;
  }
  newCall({ id: data.call_id, peer: data.from_user, role: "callee", status: "incoming", callType: data.call_type,
    offer: data.sdp });
}

async function answer() {
  const call = demo.call;
  if (!call || call.status !== "incoming") return;
  call.status = "connecting";
  render();
  addMedia(call, call.callType === "data" ? null : await localMedia(call.callType));
  await call.pc.setRemoteDescription(call.offer);
  await applyRemoteIce(call);
  const reply = await call.pc.createAnswer();
  await call.pc.setLocalDescription(reply);
  signal("call.answer", call, { sdp: { type: reply.type, sdp: reply.sdp } });
  startSignalling(call);
}

async function callAnswered(data) {
  const call = demo.call;
  if (!call || call.id !== data.call_id) return;
  call.status = "connecting";
  await call.pc.setRemoteDescription(data.sdp);
  await applyRemoteIce(call);
  render();
}

async function applyRemoteIce(call) {
  call.remoteSet = true;
  for (const candidate of call.remoteIce.splice(0)) await call.pc.addIceCandidate(candidate).catch(() => {});
}

function remoteCandidate(data) {
  const call = demo.call;
  if (!call || call.id !== data.call_id) return;
  if (call.remoteSet) call.pc.addIceCandidate(data.candidate).catch(() => {});
  else call.remoteIce.push(data.candidate); // before the offer or answer it belongs to is applied
}

function callEnded(data) {
  if (demo.call && demo.call.id === data.call_id) finish(demo.call, data.reason ?? "ended");
}

function finish(call, reason) {
  if (call.status === "ended") return;
  Object.assign(call, { status: "ended", reason });
  call.pc.close();
  for (const track of call.media?.getTracks() ?? []) track.stop();
  $("local-video").srcObject = $("remote-video").srcObject = null;
  render();
}

function hangUp(reason = "hangup") {
  const call = demo.call;
  if (!call || call.status === "ended") return;
  signal("call.end", call, { reason });
  finish(call, reason);
}

function sendOnChannel(event) {
  event.preventDefault();
  const channel = demo.call?.channel;
  const text = $("channel-body").value;
  if (!text || channel?.readyState !== "open") return;
  channel.send(text);
  $("channel-body").value = "";
  $("channel-log").append(element("li", { class: "from-me" }, `me: ${text}`));
}

// --- wiring --------------------------------------------------------------------------------------

$("server").value = params.get("server") ?? defaultServer();
$("user").value = params.get("user") ?? "";
$("token").value = params.get("token") ?? "";
$("room").value = params.get("room") ?? "lobby";
$("login").addEventListener("submit", (event) => { event.preventDefault(); start(); });
$("send").addEventListener("submit", send);
$("body").addEventListener("input", () => sendTyping($("body").value !== ""));
$("presence").addEventListener("change", setPresence);
$("answer").addEventListener("click", () => answer().catch((error) => showError(`answer: ${error.message}`)));
$("reject").addEventListener("click", () => hangUp("rejected"));
$("hangup").addEventListener("click", () => hangUp());
$("channel-send").addEventListener("submit", sendOnChannel);
window.addEventListener("pagehide", () => { hangUp(); demo.client?.close(); });
if (params.has("user") || params.has("token")) start();
