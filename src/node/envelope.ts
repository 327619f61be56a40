/**
 * The payload of a data entry in a shard's log: the proposer's timestamp, the write's hop count
 * (how many extension lambdas led to it) and its origin (a client, or the cluster itself),
 * followed by an encoded state machine command. All travel in the log so every replica sees the
 * same values.
 *
 * Versions (the first byte): V1 `[1][timestamp f64]`, V2 `[2][timestamp f64][hops u8]`, V3
 * `[3][timestamp f64][hops u8][origin u8]` (origin 0 = system, 1 = client), V4 = V3 followed by
 * the write's client session `[id length u8][id ASCII][seq varint][ackedBelow varint]` (varint =
 * minimal unsigned LEB128), each followed by the command. New entries are written as V3, or as V4
 * when the write carries a session (so a cluster only needs the new version once clients use
 * sessions); V1 and V2 entries, written before origins were recorded, decode as system-origin (so
 * replaying them gives the results they had). Entries without a session apply as before.
 * V5 = V4's layout with an id length of 0 meaning "no session" (then no seq and ackedBelow): it
 * wraps exactly the commands whose encoding older command decoders refuse (a put with
 * `currentOnConflict`, {@link usesNewerPutFlags}). A node from before V5 would apply such an entry
 * as a no-op and diverge; V5 makes it stop instead ({@link UnknownEnvelopeVersionError}: "written
 * by a newer version; upgrade this node"). Nodes only write V5 when `NodeOptions.legacyConditionalPuts`
 * is off, the default: turn it on while older nodes remain (docs/sessions.md, Upgrading).
 */
import { ByteChunks, ByteReader, ByteWriter } from '../statemachine/binary.js';
import {
  decodeCommand,
  encodeCommandInto,
  encodedCommandCapacity,
  MAX_HOP_COUNT,
  validateWriteSession,
  ValidationError,
  type Command,
  type CommandOrigin,
  usesNewerPutFlags,
  type WriteSession,
} from '../statemachine/index.js';

const ENVELOPE_V1 = 1;
const ENVELOPE_V2 = 2;
const ENVELOPE_V3 = 3;
const ENVELOPE_V4 = 4;
const ENVELOPE_V5 = 5;
const V1_HEADER_BYTES = 9;
const V2_HEADER_BYTES = 10;
const V3_HEADER_BYTES = 11;
const ORIGIN_SYSTEM = 0;
const ORIGIN_CLIENT = 1;

/** The envelope version {@link encodeProposal} writes for a command without a session. */
export const PROPOSAL_ENVELOPE_VERSION = ENVELOPE_V3;

/** The envelope version {@link encodeProposal} writes for a command with a client session. */
export const PROPOSAL_SESSION_ENVELOPE_VERSION = ENVELOPE_V4;

/** The envelope version {@link encodeProposal} writes for a command older nodes cannot decode (with or without a session). */
export const PROPOSAL_NEWER_COMMAND_ENVELOPE_VERSION = ENVELOPE_V5;

/**
 * Wraps a command, its origin, its proposal timestamp (ms since the epoch), hop count and, for a
 * deduplicated write, its client session into entry data (V3, or V4 with a session; V5 for a
 * command with newer put flags, with or without a session). Throws
 * RangeError for a bad hop count or origin, ValidationError for a bad command or session.
 */
export function encodeProposal(timestampMs: number, cmd: Command, origin: CommandOrigin, hops = 0, session?: WriteSession): Uint8Array {
  if (!Number.isInteger(hops) || hops < 0 || hops > MAX_HOP_COUNT) throw new RangeError(`hop count must be 0..${MAX_HOP_COUNT}, got ${hops}`);
  if (origin !== 'client' && origin !== 'system') throw new RangeError(`origin must be 'client' or 'system', got ${String(origin)}`);
  const newer = usesNewerPutFlags(cmd);
  if (session !== undefined) validateWriteSession(session);
  // One buffer for header, session and command (room for the session's varints at their largest).
  const trailer = session !== undefined ? 1 + session.id.length + 16 : newer ? 1 : 0;
  const room = ENTRY_CHUNKS.take(V3_HEADER_BYTES + trailer + encodedCommandCapacity(cmd));
  const w = new ByteWriter(room.length, room);
  w.u8(newer ? ENVELOPE_V5 : session !== undefined ? ENVELOPE_V4 : ENVELOPE_V3);
  w.f64(timestampMs);
  w.u8(hops);
  w.u8(origin === 'client' ? ORIGIN_CLIENT : ORIGIN_SYSTEM);
  if (session !== undefined) {
    w.u8(session.id.length);
    for (let i = 0; i < session.id.length; i++) w.u8(session.id.charCodeAt(i)); // ASCII by SESSION_ID_PATTERN
    w.varint(session.seq);
    w.varint(session.ackedBelow);
  } else if (newer) {
    w.u8(0); // V5 without a session: an id length of 0
  }
  encodeCommandInto(w, cmd);
  const out = w.written();
  ENTRY_CHUNKS.trim(room, out.length); // a no-op if the writer outgrew `room`
  return out;
}

/**
 * Where new entries' bytes come from: views of shared chunks (an entry of a few hundred bytes with
 * a backing store of its own cost more to allocate than to fill). Entries leave the log in index
 * order (compaction), so a chunk is freed with the run of entries it holds.
 */
const ENTRY_CHUNKS = new ByteChunks();

/** A decoded entry payload. */
export interface Proposal {
  readonly timestampMs: number;
  readonly hops: number;
  /** Who proposed it (`system` for V1 and V2 entries). */
  readonly origin: CommandOrigin;
  readonly command: Command;
  /** The write's client session (V4 entries only; absent otherwise). */
  readonly session?: WriteSession;
}

/**
 * An entry in an envelope format this code does not know: written by a newer kvcascade. It must
 * stop the replica (upgrade the node), never be skipped: skipping would make this replica's state
 * differ from its peers'.
 */
export class UnknownEnvelopeVersionError extends Error {
  constructor(readonly version: number) {
    super(`log entry in proposal envelope version ${version}, which this kvcascade does not know: it was written by a newer version; upgrade this node`);
    this.name = 'UnknownEnvelopeVersionError';
  }
}

/**
 * Unwraps entry data written by `encodeProposal` (any format version); throws on a malformed
 * payload, including a timestamp that is not a non-negative safe integer (the state machine
 * refuses one, and a committed entry must decode or be skipped, never stop the replica).
 */
export function decodeProposal(data: Uint8Array): Proposal {
  if (data.length < 1) throw new Error('empty proposal');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const version = view.getUint8(0);
  const tooShort = (min: number): void => {
    if (data.length < min) throw new Error(`proposal too short (${data.length} bytes)`);
  };
  if (version === ENVELOPE_V1) {
    tooShort(V1_HEADER_BYTES);
    return { timestampMs: timestamp(view), hops: 0, origin: 'system', command: decodeCommand(data.subarray(V1_HEADER_BYTES)) };
  }
  if (version === ENVELOPE_V2) {
    tooShort(V2_HEADER_BYTES);
    return { timestampMs: timestamp(view), hops: view.getUint8(9), origin: 'system', command: decodeCommand(data.subarray(V2_HEADER_BYTES)) };
  }
  if (version === ENVELOPE_V3 || version === ENVELOPE_V4 || version === ENVELOPE_V5) {
    tooShort(V3_HEADER_BYTES);
    const o = view.getUint8(10);
    if (o !== ORIGIN_SYSTEM && o !== ORIGIN_CLIENT) throw new Error(`unknown proposal origin ${o}`);
    const timestampMs = timestamp(view);
    const hops = view.getUint8(9);
    const origin = o === ORIGIN_CLIENT ? ('client' as const) : ('system' as const);
    if (version === ENVELOPE_V3) return { timestampMs, hops, origin, command: decodeCommand(data.subarray(V3_HEADER_BYTES)) };
    if (version === ENVELOPE_V5) {
      tooShort(V3_HEADER_BYTES + 1);
      if (data[V3_HEADER_BYTES] === 0) return { timestampMs, hops, origin, command: decodeCommand(data.subarray(V3_HEADER_BYTES + 1)) };
    }
    let session: WriteSession;
    let bodyAt: number;
    try {
      const r = new ByteReader(data.subarray(V3_HEADER_BYTES), 'MALFORMED_COMMAND');
      const id = sessionIdOf(r.view(r.u8()));
      session = validateWriteSession({ id, seq: r.varint(), ackedBelow: r.varint() });
      bodyAt = V3_HEADER_BYTES + r.offset;
    } catch (e) {
      if (e instanceof ValidationError) throw new Error(`malformed proposal session: ${e.message}`);
      throw e;
    }
    return { timestampMs, hops, origin, command: decodeCommand(data.subarray(bodyAt)), session };
  }
  throw new UnknownEnvelopeVersionError(version);
}

/** The bytes and string of the last session id decoded: a client's writes repeat it, so its string is reused. */
let lastIdBytes: Uint8Array | undefined;
let lastId = '';

/** The session id (ASCII, validated by the caller) in `b`, reusing the last one decoded when the bytes are the same. */
function sessionIdOf(b: Uint8Array): string {
  const last = lastIdBytes;
  if (last !== undefined && last.length === b.length) {
    let i = 0;
    while (i < b.length && last[i] === b[i]) i++;
    if (i === b.length) return lastId;
  }
  let id = '';
  for (let i = 0; i < b.length; i++) id += String.fromCharCode(b[i]!);
  lastIdBytes = b.slice();
  lastId = id;
  return id;
}

function timestamp(view: DataView): number {
  const t = view.getFloat64(1);
  if (!Number.isSafeInteger(t) || t < 0) throw new Error(`proposal timestamp ${t} is not a non-negative integer`);
  return t;
}
