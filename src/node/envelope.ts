/**
 * The payload of a data entry in a shard's log: the proposer's timestamp and the write's hop
 * count (how many extension lambdas led to it), followed by an encoded state machine command.
 * Both travel in the log so every replica sees the same values.
 */
import { decodeCommand, encodeCommand, type Command } from '../statemachine/index.js';

const ENVELOPE_V1 = 1;
const ENVELOPE_V2 = 2;
const V1_HEADER_BYTES = 9;
const V2_HEADER_BYTES = 10;

/** Wraps a command, its proposal timestamp (ms since the epoch) and hop count into entry data. */
export function encodeProposal(timestampMs: number, cmd: Command, hops = 0): Uint8Array {
  if (!Number.isInteger(hops) || hops < 0 || hops > 255) throw new RangeError(`hop count must be 0..255, got ${hops}`);
  const body = encodeCommand(cmd);
  const out = new Uint8Array(V2_HEADER_BYTES + body.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, ENVELOPE_V2);
  view.setFloat64(1, timestampMs);
  view.setUint8(9, hops);
  out.set(body, V2_HEADER_BYTES);
  return out;
}

/** A decoded entry payload. */
export interface Proposal {
  readonly timestampMs: number;
  readonly hops: number;
  readonly command: Command;
}

/**
 * Unwraps entry data written by `encodeProposal` (either format version); throws on a malformed
 * payload, including a timestamp that is not a non-negative safe integer (the state machine
 * refuses one, and a committed entry must decode or be skipped, never stop the replica).
 */
export function decodeProposal(data: Uint8Array): Proposal {
  if (data.length < 1) throw new Error('empty proposal');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const version = view.getUint8(0);
  if (version === ENVELOPE_V1) {
    if (data.length < V1_HEADER_BYTES) throw new Error(`proposal too short (${data.length} bytes)`);
    return { timestampMs: timestamp(view), hops: 0, command: decodeCommand(data.subarray(V1_HEADER_BYTES)) };
  }
  if (version === ENVELOPE_V2) {
    if (data.length < V2_HEADER_BYTES) throw new Error(`proposal too short (${data.length} bytes)`);
    return { timestampMs: timestamp(view), hops: view.getUint8(9), command: decodeCommand(data.subarray(V2_HEADER_BYTES)) };
  }
  throw new Error(`unknown proposal envelope version ${version}`);
}

function timestamp(view: DataView): number {
  const t = view.getFloat64(1);
  if (!Number.isSafeInteger(t) || t < 0) throw new Error(`proposal timestamp ${t} is not a non-negative integer`);
  return t;
}
