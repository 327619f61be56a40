/** Runtime validation of commands and read arguments against the named limits; failures throw ValidationError. */
import { ValidationError } from './errors.js';
import { utf8ByteLength } from './keys.js';
import { MAX_KEY_BYTES, MAX_TXN_OPS, MAX_TXN_PAYLOAD_BYTES, MAX_VALUE_BYTES } from './limits.js';
import type { Command, TxnWrite } from './types.js';

const RESERVED_KEYSPACE = 'the reserved system keyspace (/_..., /ext/)';

/**
 * The PERMISSION_DENIED error for a client (or extension lambda) touching the reserved key `key`
 * (see `isReservedKey` in sharding/types.ts): to write it (`write`, the default) or to read it.
 */
export function reservedKeyError(key: string, access: 'write' | 'read' = 'write'): ValidationError {
  const why =
    access === 'write'
      ? 'it is written only by the cluster itself'
      : 'clients cannot read it (dead letters under /_dlq/ are readable with the admin token)';
  return new ValidationError('RESERVED', `key ${JSON.stringify(key)} is in ${RESERVED_KEYSPACE}; ${why}`);
}

/** The PERMISSION_DENIED error for a client listing or watching `prefix`, which lies inside the reserved keyspace. */
export function reservedPrefixError(prefix: string): ValidationError {
  return new ValidationError(
    'RESERVED',
    `prefix ${JSON.stringify(prefix)} is in ${RESERVED_KEYSPACE}; clients cannot list or watch it (dead letters under /_dlq/ are readable with the admin token)`,
  );
}

/** Validates a key (non-empty, well-formed, <= MAX_KEY_BYTES) and returns its UTF-8 byte length. */
export function validateKey(key: unknown, what = 'key'): number {
  if (typeof key !== 'string') throw new ValidationError('INVALID_KEY', `${what} must be a string`);
  if (key.length === 0) throw new ValidationError('INVALID_KEY', `${what} must not be empty`);
  return validatePrefix(key, what);
}

/** Validates a list/watch prefix (may be empty) and returns its UTF-8 byte length. */
export function validatePrefix(prefix: unknown, what = 'prefix'): number {
  if (typeof prefix !== 'string') throw new ValidationError('INVALID_KEY', `${what} must be a string`);
  // Cheap pre-check: every UTF-16 unit is at least one UTF-8 byte.
  if (prefix.length > MAX_KEY_BYTES) {
    throw new ValidationError('KEY_TOO_LONG', `${what} exceeds ${MAX_KEY_BYTES} bytes`);
  }
  const n = utf8ByteLength(prefix);
  if (n < 0) throw new ValidationError('INVALID_KEY', `${what} contains a lone surrogate`);
  if (n > MAX_KEY_BYTES) {
    throw new ValidationError('KEY_TOO_LONG', `${what} is ${n} bytes, limit ${MAX_KEY_BYTES}`);
  }
  return n;
}

/** Validates a value (Uint8Array, <= MAX_VALUE_BYTES) and returns its length. */
export function validateValue(value: unknown, what = 'value'): number {
  if (!(value instanceof Uint8Array)) {
    throw new ValidationError('INVALID_VALUE', `${what} must be a Uint8Array`);
  }
  if (value.length > MAX_VALUE_BYTES) {
    throw new ValidationError(
      'VALUE_TOO_LARGE',
      `${what} is ${value.length} bytes, limit ${MAX_VALUE_BYTES}`,
    );
  }
  return value.length;
}

/** Validates a non-negative safe integer (versions, revisions, indices, timestamps). */
export function validateNonNegativeInt(n: unknown, what: string): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw new ValidationError('INVALID_NUMBER', `${what} must be a non-negative safe integer, got ${String(n)}`);
  }
  return n;
}

function validateWrite(w: unknown, i: number): { key: string; bytes: number } {
  if (typeof w !== 'object' || w === null) {
    throw new ValidationError('INVALID_COMMAND', `txn write ${i} must be an object`);
  }
  const write = w as TxnWrite;
  if (write.type === 'put') {
    const k = validateKey(write.key, `txn write ${i} key`);
    return { key: write.key, bytes: k + validateValue(write.value, `txn write ${i} value`) };
  }
  if (write.type === 'delete') {
    return { key: write.key, bytes: validateKey(write.key, `txn write ${i} key`) };
  }
  throw new ValidationError('INVALID_COMMAND', `txn write ${i} has unknown type ${String((write as { type?: unknown }).type)}`);
}

/**
 * Checks that `cmd` is a well-formed Command within all limits; throws ValidationError otherwise.
 * Proposers should call this before proposing; `apply` calls it again and rejects (without throwing).
 */
export function validateCommand(cmd: unknown): asserts cmd is Command {
  if (typeof cmd !== 'object' || cmd === null) {
    throw new ValidationError('INVALID_COMMAND', 'command must be an object');
  }
  const c = cmd as Command;
  switch (c.type) {
    case 'put':
      validateKey(c.key);
      validateValue(c.value);
      if (c.expectedVersion !== undefined) validateNonNegativeInt(c.expectedVersion, 'expectedVersion');
      if (c.returnPrevious !== undefined && typeof c.returnPrevious !== 'boolean') {
        throw new ValidationError('INVALID_COMMAND', 'returnPrevious must be a boolean');
      }
      if (c.currentOnConflict !== undefined && typeof c.currentOnConflict !== 'boolean') {
        throw new ValidationError('INVALID_COMMAND', 'currentOnConflict must be a boolean');
      }
      if (c.returnPrevious === true && c.currentOnConflict === true) {
        throw new ValidationError('INVALID_COMMAND', 'returnPrevious and currentOnConflict are exclusive (returnPrevious already returns the current value on conflict)');
      }
      return;
    case 'delete':
      validateKey(c.key);
      if (c.expectedVersion !== undefined) validateNonNegativeInt(c.expectedVersion, 'expectedVersion');
      return;
    case 'triggerPut':
      validateKey(c.key);
      validateValue(c.value);
      return;
    case 'noop':
      return;
    case 'compact':
      validateNonNegativeInt(c.revision, 'compact revision');
      return;
    case 'revokeLeaseKeys':
      if (validateNonNegativeInt(c.lease, 'lease id') < 1) throw new ValidationError('INVALID_NUMBER', 'lease id must be a positive safe integer, got 0');
      return;
    case 'txn': {
      if (!Array.isArray(c.compares) || !Array.isArray(c.writes)) {
        throw new ValidationError('INVALID_COMMAND', 'txn compares and writes must be arrays');
      }
      if (c.compares.length > MAX_TXN_OPS || c.writes.length > MAX_TXN_OPS) {
        throw new ValidationError(
          'TOO_MANY_TXN_OPS',
          `txn has ${c.compares.length} compares and ${c.writes.length} writes, limit ${MAX_TXN_OPS} each`,
        );
      }
      let total = 0;
      c.compares.forEach((cmp: unknown, i: number) => {
        if (typeof cmp !== 'object' || cmp === null) {
          throw new ValidationError('INVALID_COMMAND', `txn compare ${i} must be an object`);
        }
        const x = cmp as { key: unknown; version: unknown };
        total += validateKey(x.key, `txn compare ${i} key`);
        validateNonNegativeInt(x.version, `txn compare ${i} version`);
      });
      const seen = new Set<string>();
      c.writes.forEach((w: unknown, i: number) => {
        const { key, bytes } = validateWrite(w, i);
        if (seen.has(key)) {
          throw new ValidationError('DUPLICATE_TXN_KEY', `txn writes key ${JSON.stringify(key)} more than once`);
        }
        seen.add(key);
        total += bytes;
      });
      if (total > MAX_TXN_PAYLOAD_BYTES) {
        throw new ValidationError('TXN_TOO_LARGE', `txn payload is ${total} bytes, limit ${MAX_TXN_PAYLOAD_BYTES}`);
      }
      return;
    }
    default:
      throw new ValidationError(
        'INVALID_COMMAND',
        `unknown command type ${JSON.stringify((c as { type?: unknown }).type) ?? 'undefined'}`,
      );
  }
}
