/** Client-API request checks shared by the gRPC services and the client: keys, prefixes, values, numbers, page tokens and watch resume tokens. */
import { isUtf8 } from 'node:buffer';
import { MAX_VALUE_BYTES, ValidationError, validateKey, validatePrefix, validateWriteSession, type WriteSession } from '../statemachine/index.js';

function checkNoNul(s: string, what: string): void {
  if (s.includes('\0')) throw new ValidationError('INVALID_KEY', `${what} must not contain NUL`);
}

/**
 * Checks a key: a non-empty, well-formed string of at most MAX_KEY_BYTES UTF-8 bytes without NUL.
 * Throws ValidationError.
 */
export function checkKey(key: unknown, what = 'key'): string {
  validateKey(key, what);
  checkNoNul(key as string, what);
  return key as string;
}

/** Checks a list/watch prefix: like {@link checkKey} but may be empty. Throws ValidationError. */
export function checkPrefix(prefix: unknown, what = 'prefix'): string {
  validatePrefix(prefix, what);
  checkNoNul(prefix as string, what);
  return prefix as string;
}

/** Checks a value's size against MAX_VALUE_BYTES (reported as INVALID_ARGUMENT, as etcd does for oversized requests). */
export function checkValue(value: unknown, what = 'value'): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new ValidationError('INVALID_VALUE', `${what} must be bytes`);
  if (value.length > MAX_VALUE_BYTES) {
    throw new ValidationError('VALUE_TOO_LARGE', `${what} is ${value.length} bytes, limit ${MAX_VALUE_BYTES}`);
  }
  return value;
}

/** Checks a trigger put's key and value: the same rules as a put's. Throws ValidationError. */
export function checkTrigger(key: unknown, value: unknown): { key: string; value: Uint8Array } {
  return { key: checkKey(key), value: checkValue(value) };
}

/** Checks a version, revision or time-like number is a non-negative safe integer (uint64 above 2^53 cannot be represented). */
export function checkUint(n: unknown, what: string): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw new ValidationError('INVALID_NUMBER', `${what} must be a non-negative integer below 2^53, got ${String(n)}`);
  }
  return n;
}

/**
 * Checks a write's `session` field (kvcascade.v1.WriteSession): undefined when unset (null or
 * absent: the write is not deduplicated); else an id of 16-64 characters of [A-Za-z0-9_-], a seq
 * >= 1 and an acked_below <= seq, all below 2^53. Throws ValidationError (INVALID_ARGUMENT).
 */
export function checkSession(m: unknown, what = 'session'): WriteSession | undefined {
  if (m === undefined || m === null) return undefined;
  if (typeof m !== 'object') throw new ValidationError('INVALID_ARGUMENT', `${what} must be a WriteSession`);
  const o = m as { id?: unknown; seq?: unknown; ackedBelow?: unknown };
  return validateWriteSession({ id: o.id ?? '', seq: o.seq ?? 0, ackedBelow: o.ackedBelow ?? 0 }, what);
}

/** Checks a signed time in ms is a safe integer. */
export function checkInt(n: unknown, what: string): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n)) {
    throw new ValidationError('INVALID_NUMBER', `${what} must be an integer of magnitude below 2^53, got ${String(n)}`);
  }
  return n;
}

/** The opaque page token for "continue after `key`": base64url (no padding) of its UTF-8 bytes. */
export function encodePageToken(key: string): string {
  return Buffer.from(key, 'utf8').toString('base64url');
}

/**
 * Decodes a page token produced by {@link encodePageToken} for a listing of `prefix`. Throws
 * ValidationError (INVALID_ARGUMENT) for anything else: non-canonical base64url, invalid UTF-8,
 * an invalid key, or a key outside the prefix.
 */
export function decodePageToken(token: string, prefix: string): string {
  const bad = (why: string): never => {
    throw new ValidationError('INVALID_ARGUMENT', `invalid page token: ${why}`);
  };
  if (!/^[A-Za-z0-9_-]+$/.test(token)) bad('not base64url');
  const bytes = Buffer.from(token, 'base64url');
  if (bytes.toString('base64url') !== token) bad('not canonical base64url');
  if (!isUtf8(bytes)) bad('not UTF-8');
  const key = bytes.toString('utf8');
  try {
    checkKey(key, 'page token key');
  } catch (e) {
    bad((e as Error).message);
  }
  if (!key.startsWith(prefix)) bad('it belongs to a different prefix');
  return key;
}

/** Version of the watch resume token format ({@link encodeResumeToken}). */
export const RESUME_TOKEN_VERSION = 1;

/**
 * The opaque watch resume token for "every shard's changes up to these revisions have been
 * seen": base64url (no padding) of the UTF-8 JSON `{"v":1,"s":{"<group>":<revision>,...}}`.
 * An empty map encodes to a valid token naming no shard (distinct from the empty string, which
 * means "no token").
 */
export function encodeResumeToken(seen: ReadonlyMap<number, number>): string {
  const s: Record<string, number> = {};
  for (const [group, revision] of [...seen].sort((a, b) => a[0] - b[0])) s[String(group)] = revision;
  return Buffer.from(JSON.stringify({ v: RESUME_TOKEN_VERSION, s }), 'utf8').toString('base64url');
}

/**
 * Decodes a token produced by {@link encodeResumeToken} into group → last seen revision. Throws
 * ValidationError (INVALID_ARGUMENT) for anything else: non-canonical base64url, invalid JSON,
 * an unknown version, group ids or revisions that are not non-negative safe integers.
 */
export function decodeResumeToken(token: string): Map<number, number> {
  const bad = (why: string): never => {
    throw new ValidationError('INVALID_ARGUMENT', `invalid resume token: ${why}`);
  };
  if (!/^[A-Za-z0-9_-]+$/.test(token)) bad('not base64url');
  const bytes = Buffer.from(token, 'base64url');
  if (bytes.toString('base64url') !== token) bad('not canonical base64url');
  if (!isUtf8(bytes)) bad('not UTF-8');
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString('utf8'));
  } catch {
    bad('not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('not a JSON object');
  const o = v as Record<string, unknown>;
  if (o.v !== RESUME_TOKEN_VERSION) bad(`unknown version ${JSON.stringify(o.v)}`);
  const s = o.s;
  if (typeof s !== 'object' || s === null || Array.isArray(s)) return bad('missing shard revisions');
  const out = new Map<number, number>();
  for (const [k, rev] of Object.entries(s as Record<string, unknown>)) {
    const group = /^(0|[1-9][0-9]{0,15})$/.test(k) ? Number(k) : NaN;
    if (!Number.isSafeInteger(group)) bad(`invalid shard id ${JSON.stringify(k)}`);
    if (typeof rev !== 'number' || !Number.isSafeInteger(rev) || rev < 0) bad(`invalid revision of shard ${k}`);
    out.set(group, rev as number);
  }
  return out;
}
