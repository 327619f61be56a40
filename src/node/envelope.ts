/**
 * The payload of a data entry in a shard's log: the proposer's timestamp followed by an encoded
 * state machine command. The timestamp travels in the log so every replica applies the same one.
 */
import { decodeCommand, encodeCommand, type Command } from '../statemachine/index.js';

const ENVELOPE_VERSION = 1;
const HEADER_BYTES = 9;

/** Wraps a command and its proposal timestamp (ms since the epoch) into entry data. */
export function encodeProposal(timestampMs: number, cmd: Command): Uint8Array {
  const body = encodeCommand(cmd);
  const out = new Uint8Array(HEADER_BYTES + body.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, ENVELOPE_VERSION);
  view.setFloat64(1, timestampMs);
  out.set(body, HEADER_BYTES);
  return out;
}

/** A decoded entry payload. */
export interface Proposal {
  readonly timestampMs: number;
  readonly command: Command;
}

/** Unwraps entry data written by `encodeProposal`; throws on a malformed payload. */
export function decodeProposal(data: Uint8Array): Proposal {
  if (data.length < HEADER_BYTES) throw new Error(`proposal too short (${data.length} bytes)`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const version = view.getUint8(0);
  if (version !== ENVELOPE_VERSION) throw new Error(`unknown proposal envelope version ${version}`);
  const timestampMs = view.getFloat64(1);
  return { timestampMs, command: decodeCommand(data.subarray(HEADER_BYTES)) };
}
