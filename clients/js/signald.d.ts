// TypeScript declarations for clients/js/signald.js (docs/client.md, "The JavaScript client").
// The event payloads follow signald/protocol/outbound.py (docs/protocol.md); OutboundTypes names
// every server-to-client type of the frozen set (tests/unit/client/test_js_types.py checks it).

export type State = "connecting" | "open" | "reconnecting" | "closed";
export type ErrorCode = "BAD_REQUEST" | "CONFLICT" | "FORBIDDEN" | "INTERNAL" | "INVALID_PAYLOAD" | "LIMIT_EXCEEDED"
  | "NOT_FOUND" | "NOT_IN_ROOM" | "RATE_LIMITED" | "TARGET_OFFLINE" | "TOO_LARGE" | "UNAUTHORIZED" | "UNKNOWN_TYPE";
export type OpId = string | number | null;

export interface Limits {
  max_frame_bytes: number; max_body_chars: number; rate_per_s: number; rate_burst: number; max_rooms: number;
  max_connections_per_user: number; send_queue: number; history_page_max: number; ring_timeout_s: number;
  typing_timeout_s: number;
}
export interface Attachment {
  url: string; name?: string | null; mime?: string | null; size?: number | null; width?: number | null;
  height?: number | null;
}
export interface ChatMessage {
  id: string; room: string; seq: number; rev: number; user_id: string; body: string; attachments: Attachment[];
  parent_id: string | null; created_at: string; edited_at: string | null; deleted_at: string | null;
  redacted: boolean; reactions: Record<string, string[]>;
}
export interface WelcomeData {
  protocol_version: number; session_id: string; user_id: string; server_time: string; heartbeat_s: number;
  limits: Limits;
}
export interface AckData { op_id: OpId; data: unknown }
export interface ErrorData { op_id: OpId; code: ErrorCode; message: string; retry_after_s?: number | null }
export interface DeletedData { message_id: string; room: string; deleted_at: string; mode: "soft" | "hard"; rev: number }
export interface RedactedData { message_id: string; room: string; new_body: string; rev: number }
export interface ReadUpdateData { message_id: string; user_id: string; room: string }
export interface ReactionUpdateData {
  message_id: string; user_id: string; reaction: string; action: "add" | "remove"; room: string; rev: number;
}
export interface TypingUserData { scope: string; user_id: string; typing: boolean }
export interface CallOfferData {
  from_user: string; call_id: string; call_type: "audio" | "video" | "screen" | "data"; sdp: Record<string, unknown>;
}
export interface CallAnswerData { from_user: string; call_id: string; sdp: Record<string, unknown> }
export interface CallIceData { from_user: string; call_id: string; candidate: Record<string, unknown> }
export interface CallEndData { from_user: string; call_id: string; reason: string }
export interface RoomUserData { room: string; user_id: string }
export interface RoomData { room: string }
export interface DeviceData { device_id: string; user_id: string }
export type PresenceStatus = "online" | "away" | "busy" | "offline";
export interface PresenceUpdateData { user_id: string; status: PresenceStatus }
export interface PongData { op_id: OpId; timestamp: string }
export interface RoomSignalData { room: string; user_id: string; kind: string; payload: unknown }
export interface KickedData { room: string; by: string; reason: string | null }
export interface RevokedData { reason: string }
export interface ExpiredData { expired_at: string }

/** Every server-to-client frame type and its data (the frozen OUTBOUND set). */
export interface OutboundTypes {
  "welcome": WelcomeData;
  "ack": AckData;
  "error": ErrorData;
  "chat.message": ChatMessage;
  "chat.edited": ChatMessage;
  "chat.deleted": DeletedData;
  "chat.redacted": RedactedData;
  "chat.read.update": ReadUpdateData;
  "chat.reaction.update": ReactionUpdateData;
  "chat.typing.user": TypingUserData;
  "call.offer": CallOfferData;
  "call.answer": CallAnswerData;
  "call.ice": CallIceData;
  "call.end": CallEndData;
  "member.joined": RoomUserData;
  "member.left": RoomUserData;
  "room.active": RoomData;
  "room.waiting": RoomData;
  "device.online": DeviceData;
  "device.offline": DeviceData;
  "presence.update": PresenceUpdateData;
  "presence.pong": PongData;
  "room.signal": RoomSignalData;
  "room.kicked": KickedData;
  "session.revoked": RevokedData;
  "session.expired": ExpiredData;
}
export type OutboundType = keyof OutboundTypes;
/** The types client.on() delivers: replies (ack, pong, errors with an op_id) and welcome go to their request. */
export type EventType = Exclude<OutboundType, "welcome" | "ack" | "presence.pong">;

/** One event as the second argument of a listener; replayed: recovered after a reconnect. */
export interface ClientEvent<T extends EventType = EventType> { type: T; data: OutboundTypes[T]; replayed: boolean }

export interface Member { user_id: string; status: PresenceStatus; devices: string[]; last_seen?: string | null }

/** A live view of one room, kept exact across reconnects. */
export class Room {
  readonly name: string;
  /** The resume point: the highest revision applied from the server. */
  readonly rev: number;
  /** Current messages in ascending seq; soft-deleted ones as tombstones, hard-deleted ones gone. */
  readonly messages: ChatMessage[];
  readonly members: Record<string, Member>;
  readonly presence: Record<string, PresenceStatus>;
  readonly typing: Set<string>;
  /** False while (re)joining. */
  readonly synced: boolean;
  /** The program left it, or was kicked: no longer kept. */
  readonly left: boolean;
  message(messageId: string): ChatMessage | null;
}

export interface BackoffOptions {
  initial_s?: number; factor?: number; max_s?: number; jitter?: number; harder_min_s?: number; healthy_after_s?: number;
}
export class Backoff {
  constructor(options?: BackoffOptions);
  readonly initial_s: number; readonly factor: number; readonly max_s: number; readonly jitter: number;
  readonly harder_min_s: number; readonly healthy_after_s: number;
  delay(attempt: number, rand: number, options?: { harder?: boolean }): number;
}

export interface ConnectOptions {
  /** Sent as ?token= (a browser WebSocket cannot set headers). */
  token?: string | null;
  /** Called for a token when there is none, and after 4401 / 4001. */
  getToken?: (() => string | Promise<string>) | null;
  /** The ?user= of auth mode none. */
  user?: string | null;
  /** Reconnect after a drop (default true). */
  reconnect?: boolean;
  backoff?: Backoff;
  /** A WebSocket constructor (default globalThis.WebSocket). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Where online/offline and visibilitychange come from (default globalThis.window). */
  window?: EventTarget | null;
  eventsLimit?: number;
}

export interface RequestOptions { timeout?: number }

export class Client {
  /** Resolves with the client once the first connection is open; rejects with ClientClosed if it never opens. */
  readonly ready: Promise<Client>;
  readonly state: State;
  readonly rooms: Map<string, Room>;
  readonly welcome: Partial<WelcomeData>;
  request<R = unknown>(type: string, data?: Record<string, unknown> | null, options?: RequestOptions): Promise<R>;
  join(room: string, options?: RequestOptions): Promise<Room>;
  leave(room: string, options?: RequestOptions): Promise<void>;
  on(type: "state", fn: (state: State) => void): () => void;
  on<T extends EventType>(type: T, fn: (data: OutboundTypes[T], event: ClientEvent<T>) => void): () => void;
  on(type: "*", fn: (data: unknown, event: ClientEvent) => void): () => void;
  close(): Promise<void>;
}

export function connect(url: string, options?: ConnectOptions): Client;

export class SignalError extends Error { readonly code: ErrorCode }
export class TimeoutError extends Error {}
export class ClientError extends Error {}
export class ConnectionLost extends ClientError { readonly requestType: string; readonly opId: string }
export class ClientClosed extends ClientError { readonly reason: string; readonly code: number | null }
export class EventsOverflow extends ClientError { readonly limit: number }

export interface Closed { code?: number | null; http_status?: number | null; open_for_s?: number; retry_after_s?: number | null }
export interface Decision { action: "reconnect" | "refresh" | "stop"; delay_s: number; next_attempt: number; reason: string }
export function decide(closed: Closed, options: { attempt: number; rand: number; policy?: Backoff; canRefresh: boolean;
  reconnect?: boolean }): Decision;
