/**
 * The payload of a data entry in a shard's log: the proposer's timestamp, the write's hop count
 * (how many extension lambdas led to it) and its origin (a client, or the cluster itself),
 * followed by an encoded state machine command. All travel in the log so every replica sees the
 * same values.
 *
 * Versions (the first byte): V1 `[1][timestamp f64]`, V2 `[2][timestamp f64][hops u8]`, V3
 * `[3][timestamp f64][hops u8][origin u8]` (origin 0 = system, 1 = client), each followed by the
 * command. New entries are written as V3; V1 and V2 entries, written before origins were
 * recorded, decode as system-origin (so replaying them gives the results they had).
 */
import { decodeCommand, encodeCommand, type Command, type CommandOrigin } from '../statemachine/index.js';

const ENVELOPE_V1 = 1;
const ENVELOPE_V2 = 2;
const ENVELOPE_V3 = 3;
const V1_HEADER_BYTES = 9;
const V2_HEADER_BYTES = 10;
const V3_HEADER_BYTES = 11;
const ORIGIN_SYSTEM = 0;
const ORIGIN_CLIENT = 1;

/** The envelope version {@link encodeProposal} writes. */
export const PROPOSAL_ENVELOPE_VERSION = ENVELOPE_V3;

/** Wraps a command, its origin, its proposal timestamp (ms since the epoch) and hop count into entry data (V3). */
export function encodeProposal(timestampMs: number, cmd: Command, origin: CommandOrigin, hops = 0): Uint8Array {
  if (!Number.isInteger(hops) || hops < 0 || hops > 255) throw new RangeError(`hop count must be 0..255, got ${hops}`);
  if (origin !== 'client' && origin !== 'system') throw new RangeError(`origin must be 'client' or 'system', got ${String(origin)}`);
  const body = encodeCommand(cmd);
  const out = new Uint8Array(V3_HEADER_BYTES + body.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, ENVELOPE_V3);
  view.setFloat64(1, timestampMs);
  view.setUint8(9, hops);
  view.setUint8(10, origin === 'client' ? ORIGIN_CLIENT : ORIGIN_SYSTEM);
  out.set(body, V3_HEADER_BYTES);
  return out;
}

/** A decoded entry payload. */
export interface Proposal {
  readonly timestampMs: number;
  readonly hops: number;
  /** Who proposed it (`system` for V1 and V2 entries). */
  readonly origin: CommandOrigin;
  readonly command: Command;
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
  if (version === ENVELOPE_V3) {
    tooShort(V3_HEADER_BYTES);
    const o = view.getUint8(10);
    if (o !== ORIGIN_SYSTEM && o !== ORIGIN_CLIENT) throw new Error(`unknown proposal origin ${o}`);
    return {
      timestampMs: timestamp(view),
      hops: view.getUint8(9),
      origin: o === ORIGIN_CLIENT ? 'client' : 'system',
      command: decodeCommand(data.subarray(V3_HEADER_BYTES)),
    };
  }
  throw new Error(`unknown proposal envelope version ${version}`);
}

function timestamp(view: DataView): number {
  const t = view.getFloat64(1);
  if (!Number.isSafeInteger(t) || t < 0) throw new Error(`proposal timestamp ${t} is not a non-negative integer`);
  return t;
}
