/**
 * Where leases live in the store and how their records are encoded: the lease records and the id
 * counter in the metadata group (`/_sys/lease/`), and each key's attachment to a lease in the data
 * shard that holds the key (`/_sys/lease-key/<id>/<key>`, written in the same txn as the key), plus
 * the bounds and input checks of the lease API.
 */
import { LEASE_ID_DIGITS, LEASE_KEY_PREFIX, leaseAttachmentPrefix, leaseIdText } from '../statemachine/index.js';
import type { DurableLease } from './keeper.js';

/** Prefix of the lease records in the metadata group (`/_sys/lease/<id>`, JSON {@link DurableLease} without the id). */
export const LEASE_RECORD_PREFIX = '/_sys/lease/';
/** The metadata group key holding the next lease id to grant (decimal). */
export const LEASE_NEXT_ID_KEY = '/_sys/lease-next';
/** Prefix of attachments in a data shard: `/_sys/lease-key/<id>/<key>` (named by the state machine, whose `revokeLeaseKeys` reads them). */
export { LEASE_KEY_PREFIX };

/** Bounds of the lease API (etcd-like defaults; kvd flags may lower them). */
export interface LeaseLimits {
  /** Shortest TTL a grant may ask for (s). */
  readonly minTtlSec: number;
  /** Longest TTL (s). */
  readonly maxTtlSec: number;
  /** Most leases the cluster holds (they all live in the metadata group, and its leader tracks every one). */
  readonly maxLeases: number;
  /**
   * Most keys one lease may hold in one shard: its revoke there is one `revokeLeaseKeys` command
   * (one revision), whose apply step stays short (45-60 ms for 10,000 keys on a busy 2-core machine, see
   * test/statemachine/revoke-lease-keys.test.ts).
   */
  readonly maxKeysPerShard: number;
  /** Most keep-alives one KeepAlive stream may send per second (more are answered RESOURCE_EXHAUSTED). */
  readonly maxKeepAlivesPerSec: number;
}

/** Default bounds. */
export const DEFAULT_LEASE_LIMITS: LeaseLimits = {
  minTtlSec: 2,
  maxTtlSec: 24 * 3600,
  maxLeases: 100_000,
  maxKeysPerShard: 10_000,
  maxKeepAlivesPerSec: 20_000,
};

/** A lease API input error; `code` names the gRPC status. */
export class LeaseError extends Error {
  constructor(
    readonly code: 'INVALID_ARGUMENT' | 'NOT_FOUND' | 'RESOURCE_EXHAUSTED' | 'UNAVAILABLE' | 'PERMISSION_DENIED' | 'FAILED_PRECONDITION',
    message: string,
  ) {
    super(message);
    this.name = 'LeaseError';
  }
}

const ID_DIGITS = LEASE_ID_DIGITS;

/** The id's fixed-width decimal form (keys sort by id). */
export function idText(id: number): string {
  return leaseIdText(id);
}

/** Throws INVALID_ARGUMENT unless `id` is a lease id (a positive safe integer). */
export function checkLeaseId(id: unknown): number {
  const n = typeof id === 'string' && /^[0-9]{1,16}$/.test(id) ? Number(id) : id;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) throw new LeaseError('INVALID_ARGUMENT', `a lease id is a positive integer, got ${JSON.stringify(id)}`);
  return n;
}

/** Throws INVALID_ARGUMENT unless `ttlSec` is an integer within the limits. */
export function checkTtl(ttlSec: unknown, limits: LeaseLimits): number {
  if (typeof ttlSec !== 'number' || !Number.isSafeInteger(ttlSec) || ttlSec < limits.minTtlSec || ttlSec > limits.maxTtlSec) {
    throw new LeaseError('INVALID_ARGUMENT', `a lease TTL is a whole number of seconds from ${limits.minTtlSec} to ${limits.maxTtlSec}, got ${JSON.stringify(ttlSec)}`);
  }
  return ttlSec;
}

/** The metadata key of lease `id`. */
export function leaseRecordKey(id: number): string {
  return LEASE_RECORD_PREFIX + idText(id);
}

/** The shard key attaching `key` to lease `id`. */
export function attachmentKey(id: number, key: string): string {
  return `${LEASE_KEY_PREFIX}${idText(id)}/${key}`;
}

/** The prefix of lease `id`'s attachments in a shard. */
export function attachmentPrefix(id: number): string {
  return leaseAttachmentPrefix(id);
}

/** The lease id and user key of an attachment key, or undefined for another key. */
export function parseAttachmentKey(k: string): { id: number; key: string } | undefined {
  if (!k.startsWith(LEASE_KEY_PREFIX)) return undefined;
  const rest = k.slice(LEASE_KEY_PREFIX.length);
  if (rest.length < ID_DIGITS + 2 || rest[ID_DIGITS] !== '/') return undefined;
  const id = Number(rest.slice(0, ID_DIGITS));
  return Number.isSafeInteger(id) && id > 0 ? { id, key: rest.slice(ID_DIGITS + 1) } : undefined;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Encodes a lease record (the value under {@link leaseRecordKey}). */
export function encodeLease(l: DurableLease): Uint8Array {
  return enc.encode(JSON.stringify({ ttlMs: l.ttlMs, expiresAtMs: l.expiresAtMs, owner: l.owner }));
}

/** Decodes the record under `key`, or undefined when it is not a well-formed lease record. */
export function decodeLease(key: string, value: Uint8Array): DurableLease | undefined {
  if (!key.startsWith(LEASE_RECORD_PREFIX)) return undefined;
  const idPart = key.slice(LEASE_RECORD_PREFIX.length);
  if (!/^[0-9]{16}$/.test(idPart)) return undefined;
  try {
    const o = JSON.parse(dec.decode(value)) as { ttlMs?: unknown; expiresAtMs?: unknown; owner?: unknown };
    if (typeof o.ttlMs !== 'number' || typeof o.expiresAtMs !== 'number') return undefined;
    return { id: Number(idPart), ttlMs: o.ttlMs, expiresAtMs: o.expiresAtMs, owner: typeof o.owner === 'string' ? o.owner : '' };
  } catch {
    return undefined;
  }
}
