/** Validation of user-supplied pool names, pool specs and members, with clear ShardingError messages. */
import { ShardingError } from './errors.js';
import { utf8Length } from './routing.js';
import { MAX_AFFINITY_BYTES, MAX_NODE_ID, MAX_POOL_NAME_BYTES, MAX_POOL_SHARDS, MAX_REPLICAS } from './types.js';

export { ShardingError, type ShardingErrorCode } from './errors.js';

/** The validated settings of a new pool (everything in a {@link PoolSpec} but its name and state). */
export interface PoolOptions {
  readonly shards: number;
  readonly replicas: number;
  readonly affinity?: string;
  readonly retentionMs?: number;
}

const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * Checks a (non-default) pool name and returns it: starts with `/`, no trailing `/`, no empty
 * segment, no segment starting with `_` (reserved: `/_sys`, `/_cluster`, `/_dlq`), at most
 * MAX_POOL_NAME_BYTES UTF-8 bytes, well-formed, no control characters. Throws INVALID_POOL.
 */
export function validatePoolName(name: unknown): string {
  const bad = (why: string): never => {
    throw new ShardingError('INVALID_POOL', `invalid pool name ${JSON.stringify(name)}: ${why}`);
  };
  if (typeof name !== 'string') return bad('not a string');
  if (!name.startsWith('/')) bad("it must start with '/'");
  if (name.length > 1 && name.endsWith('/')) bad("it must not end with '/'");
  if (utf8Length(name) > MAX_POOL_NAME_BYTES) bad(`it is longer than ${MAX_POOL_NAME_BYTES} bytes`);
  if (CONTROL.test(name)) bad('it contains a control character');
  if (LONE_SURROGATE.test(name)) bad('it is not well-formed UTF-16 (lone surrogate)');
  for (const seg of name.slice(1).split('/')) {
    if (seg === '') bad('it has an empty segment');
    if (seg.startsWith('_')) bad("a segment starts with '_' (reserved for system prefixes)");
  }
  return name;
}

/** Checks an affinity expression source: a string of at most MAX_AFFINITY_BYTES that compiles and has a capture group. Throws `code`. */
export function validateAffinity(affinity: unknown, code: 'INVALID_POOL' | 'INVALID_MAP' = 'INVALID_POOL'): string {
  const bad = (why: string): never => {
    throw new ShardingError(code, `invalid affinity ${JSON.stringify(affinity)}: ${why}`);
  };
  if (typeof affinity !== 'string') return bad('not a string');
  if (utf8Length(affinity) > MAX_AFFINITY_BYTES) bad(`it is longer than ${MAX_AFFINITY_BYTES} bytes`);
  let groups = 0;
  try {
    groups = new RegExp(affinity + '|').exec('')!.length - 1;
  } catch (e) {
    bad(`not a valid regular expression (${(e as Error).message})`);
  }
  if (groups < 1) bad('it needs a capture group: the first group is the part of the key that is hashed');
  return affinity;
}

/** Whether `v` is an integer in `[min, max]`. */
export function isIntIn(v: unknown, min: number, max: number): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max;
}

const SPEC_FIELDS = new Set(['shards', 'replicas', 'affinity', 'retentionMs']);

/**
 * Checks the settings of a new pool: an object with `shards` (integer 1..MAX_POOL_SHARDS),
 * `replicas` (integer 1..MAX_REPLICAS, and at most `activeMembers`: NOT_ENOUGH_MEMBERS otherwise),
 * optional `affinity` ({@link validateAffinity}) and optional `retentionMs` (integer >= 0); no
 * other fields. Throws INVALID_POOL or NOT_ENOUGH_MEMBERS.
 */
export function validatePoolSpec(input: unknown, opts: { activeMembers: number }): PoolOptions {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new ShardingError('INVALID_POOL', 'a pool spec must be an object with shards and replicas');
  }
  const o = input as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!SPEC_FIELDS.has(k)) throw new ShardingError('INVALID_POOL', `unknown pool spec field ${JSON.stringify(k)} (expected shards, replicas, affinity, retentionMs)`);
  }
  if (!isIntIn(o.shards, 1, MAX_POOL_SHARDS)) {
    throw new ShardingError('INVALID_POOL', `shards must be an integer from 1 to ${MAX_POOL_SHARDS}, got ${String(o.shards)}`);
  }
  if (!isIntIn(o.replicas, 1, MAX_REPLICAS)) {
    throw new ShardingError('INVALID_POOL', `replicas must be an integer from 1 to ${MAX_REPLICAS}, got ${String(o.replicas)}`);
  }
  if (o.replicas > opts.activeMembers) {
    throw new ShardingError('NOT_ENOUGH_MEMBERS', `replicas ${o.replicas} exceeds the ${opts.activeMembers} active member(s)`);
  }
  const out: { shards: number; replicas: number; affinity?: string; retentionMs?: number } = { shards: o.shards, replicas: o.replicas };
  if (o.affinity !== undefined) out.affinity = validateAffinity(o.affinity);
  if (o.retentionMs !== undefined) {
    if (!isIntIn(o.retentionMs, 0, Number.MAX_SAFE_INTEGER)) {
      throw new ShardingError('INVALID_POOL', `retentionMs must be an integer >= 0, got ${String(o.retentionMs)}`);
    }
    out.retentionMs = o.retentionMs;
  }
  return out;
}

const HOSTNAME = /^[A-Za-z0-9_]([A-Za-z0-9._-]{0,252}[A-Za-z0-9_])?$/;
const BRACKETED_IPV6 = /^\[[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9._-]{1,64})?\]$/;

/**
 * Checks a member: `id` an integer 1..2^31-1, `address` `host:port` (a host name, IPv4 address or
 * bracketed IPv6 address, and a port 1..65535), and `peerAddress`, when given, also `host:port`
 * and different from `address`. Throws INVALID_MEMBER.
 */
export function validateMember(id: unknown, address: unknown, peerAddress?: unknown): void {
  if (!isIntIn(id, 1, MAX_NODE_ID)) {
    throw new ShardingError('INVALID_MEMBER', `member id must be an integer from 1 to ${MAX_NODE_ID}, got ${String(id)}`);
  }
  validateHostPort(`address of member ${String(id)}`, address);
  if (peerAddress !== undefined) {
    validateHostPort(`peer address of member ${String(id)}`, peerAddress);
    if (peerAddress === address) {
      throw new ShardingError('INVALID_MEMBER', `member ${String(id)}: the peer address must differ from the client address (${String(address)}): Raft traffic has its own listener`);
    }
  }
}

function validateHostPort(what: string, address: unknown): void {
  const bad = (why: string): never => {
    throw new ShardingError('INVALID_MEMBER', `invalid ${what} ${JSON.stringify(address)}: ${why}`);
  };
  if (typeof address !== 'string') return bad('not a string');
  const colon = address.lastIndexOf(':');
  if (colon <= 0) bad('expected host:port');
  const host = address.slice(0, colon);
  const port = address.slice(colon + 1);
  if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) bad('the port must be 1..65535');
  if (!HOSTNAME.test(host) && !BRACKETED_IPV6.test(host)) bad('the host must be a host name, an IPv4 address or a bracketed IPv6 address');
}
