/** Compact, canonical binary encoding of state machine commands, with strict validating decoding. */
import { ByteReader, ByteWriter } from './binary.js';
import { ValidationError } from './errors.js';
import { utf8ByteLength } from './keys.js';
import { MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES } from './limits.js';
import type { Command, TxnCompare, TxnWrite } from './types.js';
import { validateCommand } from './validation.js';

/**
 * Format version written as the first byte of every encoded command.
 *
 * Layout (varint = unsigned LEB128, minimal; str = varint byte length + UTF-8; bytes = varint length + raw):
 *   u8 COMMAND_FORMAT_VERSION, u8 tag, then per tag:
 *   1 put:        u8 flags (bit0 expectedVersion present, bit1 returnPrevious, bit2 currentOnConflict), str key, bytes value, [varint expectedVersion]
 *   2 delete:     u8 flags (bit0 expectedVersion present), str key, [varint expectedVersion]
 *   3 txn:        varint nCompares, { str key, varint version }*, varint nWrites, { u8 op (1 put, 2 delete), str key, [bytes value] }*
 *   4 triggerPut: str key, bytes value
 *   5 noop:       (nothing)
 *   6 compact:    varint revision
 *   7 revokeLeaseKeys: varint lease (a positive safe integer)
 * The encoding is canonical: decoding succeeds only for bytes that `encodeCommand` would produce.
 * Bit2 is newer than the rest: decoders before it refuse the command ("unknown put flags"), which
 * is why an entry using it is wrapped in proposal envelope V5 (see {@link usesNewerPutFlags}).
 */
export const COMMAND_FORMAT_VERSION = 1;

const TAG_PUT = 1;
const TAG_DELETE = 2;
const TAG_TXN = 3;
const TAG_TRIGGER = 4;
const TAG_NOOP = 5;
const TAG_COMPACT = 6;
const TAG_REVOKE_LEASE_KEYS = 7;
const OP_PUT = 1;
const OP_DELETE = 2;
const FLAG_EXPECTED = 1;
const FLAG_RETURN_PREVIOUS = 2;
const FLAG_CURRENT_ON_CONFLICT = 4;

/**
 * Whether `cmd` encodes put flags that command decoders older than `currentOnConflict` refuse
 * (they would apply the entry as a no-op and diverge): the proposal envelope must then be one
 * those nodes stop on instead (src/node/envelope.ts V5).
 */
export function usesNewerPutFlags(cmd: Command): boolean {
  return cmd.type === 'put' && cmd.currentOnConflict === true;
}

/** Validates `cmd` (throws ValidationError) and encodes it; `decodeCommand(encodeCommand(c))` deep-equals `c` up to omitted defaults. */
export function encodeCommand(cmd: Command): Uint8Array {
  const w = new ByteWriter(encodedCommandCapacity(cmd));
  encodeCommandInto(w, cmd);
  return w.finish();
}

/**
 * Bytes a writer should have room for to take `cmd` without growing: for a put, delete or trigger
 * put at most 12 more than its encoding (the varints' largest sizes), 64 for the rest (which may
 * grow). Any object is accepted (the encoder validates it).
 */
export function encodedCommandCapacity(cmd: Command): number {
  const c = cmd as { type?: unknown; key?: unknown; value?: unknown };
  const key = typeof c.key === 'string' ? utf8ByteLength(c.key) : 0;
  const value = c.value instanceof Uint8Array ? c.value.length : 0;
  // version, tag, flags, key length varint (<= 3 bytes), key, value length varint (<= 4), value,
  // expected version varint (<= 8).
  return c.type === 'put' || c.type === 'triggerPut' ? 18 + Math.max(0, key) + value : c.type === 'delete' ? 14 + Math.max(0, key) : 64;
}

/** Validates `cmd` (throws ValidationError) and appends its encoding ({@link encodeCommand}'s bytes) to `w`. */
export function encodeCommandInto(w: ByteWriter, cmd: Command): void {
  validateCommand(cmd);
  w.u8(COMMAND_FORMAT_VERSION);
  switch (cmd.type) {
    case 'put': {
      const hasExpected = cmd.expectedVersion !== undefined;
      w.u8(TAG_PUT);
      w.u8((hasExpected ? FLAG_EXPECTED : 0) | (cmd.returnPrevious ? FLAG_RETURN_PREVIOUS : 0) | (cmd.currentOnConflict ? FLAG_CURRENT_ON_CONFLICT : 0));
      w.str(cmd.key);
      w.bytes(cmd.value);
      if (hasExpected) w.varint(cmd.expectedVersion!);
      break;
    }
    case 'delete': {
      const hasExpected = cmd.expectedVersion !== undefined;
      w.u8(TAG_DELETE);
      w.u8(hasExpected ? FLAG_EXPECTED : 0);
      w.str(cmd.key);
      if (hasExpected) w.varint(cmd.expectedVersion!);
      break;
    }
    case 'txn':
      w.u8(TAG_TXN);
      w.varint(cmd.compares.length);
      for (const c of cmd.compares) {
        w.str(c.key);
        w.varint(c.version);
      }
      w.varint(cmd.writes.length);
      for (const op of cmd.writes) {
        if (op.type === 'put') {
          w.u8(OP_PUT);
          w.str(op.key);
          w.bytes(op.value);
        } else {
          w.u8(OP_DELETE);
          w.str(op.key);
        }
      }
      break;
    case 'triggerPut':
      w.u8(TAG_TRIGGER);
      w.str(cmd.key);
      w.bytes(cmd.value);
      break;
    case 'noop':
      w.u8(TAG_NOOP);
      break;
    case 'compact':
      w.u8(TAG_COMPACT);
      w.varint(cmd.revision);
      break;
    case 'revokeLeaseKeys':
      w.u8(TAG_REVOKE_LEASE_KEYS);
      w.varint(cmd.lease);
      break;
  }
}

/**
 * Decodes and validates an encoded command. Any malformed input (wrong version, unknown tag or
 * flags, truncation, trailing bytes, non-canonical varints, invalid UTF-8, oversized fields)
 * throws a ValidationError (code MALFORMED_COMMAND, or the violated limit's code); it never
 * throws anything else. Returned values are fresh copies that do not alias `bytes`.
 */
export function decodeCommand(bytes: Uint8Array): Command {
  if (!(bytes instanceof Uint8Array)) {
    throw new ValidationError('MALFORMED_COMMAND', 'encoded command must be a Uint8Array');
  }
  const r: ByteReader = new ByteReader(bytes, 'MALFORMED_COMMAND');
  if (bytes.length === 0) r.fail('empty input');
  const version = r.u8();
  if (version !== COMMAND_FORMAT_VERSION) r.fail(`unsupported command format version ${version}`);
  const tag = r.u8();
  let cmd: Command;
  switch (tag) {
    case TAG_PUT: {
      const flags = r.u8();
      if ((flags & ~(FLAG_EXPECTED | FLAG_RETURN_PREVIOUS | FLAG_CURRENT_ON_CONFLICT)) !== 0) r.fail(`unknown put flags ${flags}`);
      if ((flags & FLAG_RETURN_PREVIOUS) !== 0 && (flags & FLAG_CURRENT_ON_CONFLICT) !== 0) r.fail(`put flags ${flags}: returnPrevious and currentOnConflict are exclusive`);
      const key = r.str(MAX_KEY_BYTES, 'key');
      const value = r.bytes(MAX_VALUE_BYTES, 'value');
      const put: { type: 'put'; key: string; value: Uint8Array; expectedVersion?: number; returnPrevious?: boolean; currentOnConflict?: boolean } =
        { type: 'put', key, value };
      if (flags & FLAG_EXPECTED) put.expectedVersion = r.varint();
      if (flags & FLAG_RETURN_PREVIOUS) put.returnPrevious = true;
      if (flags & FLAG_CURRENT_ON_CONFLICT) put.currentOnConflict = true;
      cmd = put;
      break;
    }
    case TAG_DELETE: {
      const flags = r.u8();
      if ((flags & ~FLAG_EXPECTED) !== 0) r.fail(`unknown delete flags ${flags}`);
      const key = r.str(MAX_KEY_BYTES, 'key');
      cmd = flags & FLAG_EXPECTED ? { type: 'delete', key, expectedVersion: r.varint() } : { type: 'delete', key };
      break;
    }
    case TAG_TXN: {
      const nCompares = r.varintMax(MAX_TXN_OPS, 'txn compare count');
      const compares: TxnCompare[] = [];
      for (let i = 0; i < nCompares; i++) {
        const key = r.str(MAX_KEY_BYTES, 'compare key');
        compares.push({ key, version: r.varint() });
      }
      const nWrites = r.varintMax(MAX_TXN_OPS, 'txn write count');
      const writes: TxnWrite[] = [];
      for (let i = 0; i < nWrites; i++) {
        const op = r.u8();
        if (op === OP_PUT) {
          const key = r.str(MAX_KEY_BYTES, 'write key');
          writes.push({ type: 'put', key, value: r.bytes(MAX_VALUE_BYTES, 'write value') });
        } else if (op === OP_DELETE) {
          writes.push({ type: 'delete', key: r.str(MAX_KEY_BYTES, 'write key') });
        } else {
          r.fail(`unknown txn write op ${op}`);
        }
      }
      cmd = { type: 'txn', compares, writes };
      break;
    }
    case TAG_TRIGGER: {
      const key = r.str(MAX_KEY_BYTES, 'key');
      cmd = { type: 'triggerPut', key, value: r.bytes(MAX_VALUE_BYTES, 'value') };
      break;
    }
    case TAG_NOOP:
      cmd = { type: 'noop' };
      break;
    case TAG_COMPACT:
      cmd = { type: 'compact', revision: r.varint() };
      break;
    case TAG_REVOKE_LEASE_KEYS:
    {
      const lease = r.varint();
      if (lease === 0) r.fail('lease id 0 (ids are positive)');
      cmd = { type: 'revokeLeaseKeys', lease };
      break;
    }
    default:
      r.fail(`unknown command tag ${tag}`);
  }
  r.expectEnd();
  validateCommand(cmd);
  return cmd;
}
