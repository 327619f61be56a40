/** Public option and result types of the kvcascade client, and their conversion from wire messages. */
import * as grpc from '@grpc/grpc-js';
import type {
  DeleteResponseMsg,
  EventMsg,
  GetResponseMsg,
  KeyValueMsg,
  ListResponseMsg,
  PutResponseMsg,
  StatusResponseMsg,
  TriggerResponseMsg,
  TxnResponseMsg,
} from '../wire/proto.js';
import { checkKey, checkPrefix, checkValue } from '../wire/request-validation.js';
import { statusFromMsg } from '../wire/status-codec.js';
import { KvError } from './errors.js';

/** Read freshness: linearizable (through the leader, the default) or serializable (local replica, may be stale). */
export type KvConsistency = 'linearizable' | 'serializable';

/** Options of `put`. */
export interface KvPutOptions {
  /** Conditional put: only if the key's current version equals this (0 = only if absent). */
  readonly expectedVersion?: number;
  /** On a conflict, also return the current value. */
  readonly returnCurrentValue?: boolean;
  /** Timeout of the call including retries, in ms (default: the client's `defaultDeadlineMs`). */
  readonly deadlineMs?: number;
  /** Attach the key to this lease (`client.leases.grant`): the key is deleted when the lease ends. */
  readonly lease?: number;
}

/** Result of `put`. */
export interface KvPutResult {
  /** False only for a conditional put whose expectation did not hold. */
  readonly succeeded: boolean;
  /** The key's new version (0 on conflict). */
  readonly version: number;
  readonly timestampMs: number;
  /** The shard revision after the request. */
  readonly revision: number;
  /** On conflict: the key's current version (0 = absent). */
  readonly currentVersion: number;
  /** On conflict, when asked for and the key exists: its current value. */
  readonly currentValue?: Uint8Array;
}

/** Options of `get`: at most one of `atVersion` and `atTimeMs`. */
export interface KvGetOptions {
  /** Read the value as of this revision. */
  readonly atVersion?: number;
  /** Read the value as of this time (ms since the epoch). */
  readonly atTimeMs?: number;
  readonly consistency?: KvConsistency;
  /** Timeout in ms (default: the client's `defaultDeadlineMs`). */
  readonly deadlineMs?: number;
}

/** Result of `get`; when `found` is false, `value` is empty and `version`/`timestampMs` are 0. */
export interface KvGetResult {
  readonly found: boolean;
  readonly value: Uint8Array;
  readonly version: number;
  readonly timestampMs: number;
  /** The shard revision the read observed. */
  readonly revision: number;
}

/** Options of `delete`. */
export interface KvDeleteOptions {
  /** Conditional delete: only if the key's current version equals this. */
  readonly expectedVersion?: number;
  /** Timeout in ms (default: the client's `defaultDeadlineMs`). */
  readonly deadlineMs?: number;
}

/** Result of `delete`. */
export interface KvDeleteResult {
  /** False only for a conditional delete whose expectation did not hold. */
  readonly succeeded: boolean;
  /** Whether a live key was deleted. */
  readonly deleted: boolean;
  readonly revision: number;
  /** On conflict: the key's current version. */
  readonly currentVersion: number;
}

/** Options of `trigger`. */
export interface KvTriggerOptions {
  /** Timeout of the call including retries, in ms (default: the client's `defaultDeadlineMs`). */
  readonly deadlineMs?: number;
}

/** Result of `trigger`: the trigger event's revision and timestamp (nothing is stored). */
export interface KvTriggerResult {
  /** The shard revision of the trigger event (watches deliver it at this revision). */
  readonly revision: number;
  readonly timestampMs: number;
}

/** Options of `list` (and `listAll`, which ignores `pageToken`). */
export interface KvListOptions {
  /** Most items per page (default 1000, at most 10 000). */
  readonly limit?: number;
  /** From a previous page's `nextPageToken`. */
  readonly pageToken?: string;
  /** Omit values. */
  readonly keysOnly?: boolean;
  readonly consistency?: KvConsistency;
  /** Timeout per page in ms (default: the client's `defaultDeadlineMs`). */
  readonly deadlineMs?: number;
  /** List exactly this shard (Raft group id); default: every shard the prefix spans, merged in key order. */
  readonly shard?: number;
}

/** One listed key. `value` is empty with `keysOnly`. */
export interface KvItem {
  readonly key: string;
  readonly value: Uint8Array;
  readonly version: number;
  readonly timestampMs: number;
}

/** A page of `list`. */
export interface KvListResult {
  readonly items: readonly KvItem[];
  /** Pass to the next `list` call; empty when this is the last page. */
  readonly nextPageToken: string;
  /** The shard revision the page was read at (0 when the listing spans several shards: see `shardRevisions`). */
  readonly revision: number;
  /** Each listed shard's revision, by shard (Raft group) id; empty from servers that do not report it. */
  readonly shardRevisions: Readonly<Record<number, number>>;
}

/** One compare of a transaction: `key`'s current version must equal `version` (0 = absent). */
export interface KvTxnCompare {
  readonly key: string;
  readonly version: number;
}

/** One write of a transaction: an unconditional put (a string value is stored as UTF-8) or delete. */
export type KvTxnWrite =
  | { readonly type: 'put'; readonly key: string; readonly value: Uint8Array | string }
  | { readonly type: 'delete'; readonly key: string };

/** A transaction: if every compare holds, every write applies at one new revision; else nothing changes. All keys must be in one shard. */
export interface KvTxn {
  readonly compares?: readonly KvTxnCompare[];
  /** A key at most once. */
  readonly writes?: readonly KvTxnWrite[];
}

/** Options of `txn`. */
export interface KvTxnOptions {
  /** Timeout of the call including retries, in ms (default: the client's `defaultDeadlineMs`). */
  readonly deadlineMs?: number;
}

/** Result of `txn`. */
export interface KvTxnResult {
  /** Whether every compare held (and so the writes were applied). */
  readonly succeeded: boolean;
  /** The revision of the writes (the shard's unchanged current revision when nothing was written). */
  readonly revision: number;
  readonly timestampMs: number;
  /** Indexes (into `compares`) of the compares that failed. */
  readonly failedCompares: readonly number[];
  /** The shard (Raft group) that executed it. */
  readonly shard: number;
}

/** Options of `watch`. */
export interface KvWatchOptions {
  /** First revision to deliver, in every watched shard (default: changes after the current revision). */
  readonly fromRevision?: number;
  /** Resume a previous watch of the same prefix: the `resumeToken` of the last batch it delivered (no gap, no duplicate; overrides `fromRevision` for the shards it names). */
  readonly resumeToken?: string;
  /** Watch exactly this shard (Raft group id); default: every shard the prefix spans, merged (ordered per shard). */
  readonly shard?: number;
  /** How often the server sends progress notifications while idle (ms; default 1000). */
  readonly progressIntervalMs?: number;
  /** Ends the iteration (normally, without an error) when aborted. */
  readonly signal?: AbortSignal;
}

/** One change delivered by a watch: a put, a delete, or a trigger put (a value delivered but not stored). */
export interface KvWatchEvent {
  readonly type: 'put' | 'delete' | 'trigger';
  readonly key: string;
  /** The new value, or the triggered value (empty for deletes). */
  readonly value: Uint8Array;
  readonly revision: number;
  readonly timestampMs: number;
  /** The shard (Raft group) the change happened in: revisions are per shard (0 from servers that do not report it). */
  readonly shard: number;
}

/** What a watch iterator yields: the events of whole revisions, or a progress notification. */
export interface KvWatchBatch {
  readonly events: readonly KvWatchEvent[];
  /** Every change under the prefix up to this revision has now been delivered (for a watch spanning several shards, the highest revision seen in any of them: use `resumeToken` to resume). */
  readonly revision: number;
  /** True for a progress notification (no events). */
  readonly progress: boolean;
  /** Pass as `KvWatchOptions.resumeToken` to resume after this batch (empty from servers that do not send one). */
  readonly resumeToken: string;
}

/** Status of one Raft group on a node. */
export interface KvGroupStatus {
  readonly group: number;
  readonly leader: number;
  readonly term: number;
  readonly role: string;
  readonly commitIndex: number;
  readonly appliedIndex: number;
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  readonly revision: number;
  /** The pool of the shard ('' = the default pool); undefined for the metadata group. */
  readonly pool?: string;
  /** The shard's index in its pool. */
  readonly shardIndex: number;
  /** Map epoch of the ownership descriptor the shard applied (0 = none yet). */
  readonly descriptorEpoch: number;
  /** On the leader: each replica's acknowledged log index, by node id. */
  readonly matched: Readonly<Record<number, number>>;
  /** Live keys in the shard. */
  readonly keys: number;
}

/** Status of a node. */
export interface KvNodeStatus {
  readonly nodeId: number;
  readonly version: string;
  readonly groups: readonly KvGroupStatus[];
  readonly members: readonly { readonly id: number; readonly address: string }[];
  /** Epoch of the cluster map the node routes with (0 from servers that do not report it). */
  readonly mapEpoch: number;
}

const EMPTY = new Uint8Array(0);
const encoder = new TextEncoder();

/** A plain Uint8Array view of received bytes (no copy). */
export function bytes(b: Uint8Array | undefined | null): Uint8Array {
  if (!b || b.length === 0) return EMPTY;
  return Buffer.isBuffer(b) ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength) : b;
}

/** Runs a local request check, turning a ValidationError into a KvError INVALID_ARGUMENT. */
export function local<T>(check: () => T): T {
  try {
    return check();
  } catch (e) {
    throw new KvError(grpc.status.INVALID_ARGUMENT, (e as Error).message, { retrySafe: true });
  }
}

/** Checks a key locally (the server's rules), throwing KvError INVALID_ARGUMENT. */
export function localKey(key: string): string {
  return local(() => checkKey(key));
}

/** Checks a prefix locally, throwing KvError INVALID_ARGUMENT. */
export function localPrefix(prefix: string): string {
  return local(() => checkPrefix(prefix));
}

/** Encodes and checks a value locally (strings as UTF-8), throwing KvError INVALID_ARGUMENT. */
export function localValue(value: Uint8Array | string): Uint8Array {
  return local(() => checkValue(typeof value === 'string' ? encoder.encode(value) : value));
}

/** Checks an optional non-negative integer option locally. */
export function localUint(n: number | undefined, what: string): number | undefined {
  if (n === undefined) return undefined;
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new KvError(grpc.status.INVALID_ARGUMENT, `${what} must be a non-negative integer, got ${n}`, { retrySafe: true });
  }
  return n;
}

/** Converts a PutResponse. */
export function putResult(m: PutResponseMsg): KvPutResult {
  const r = {
    succeeded: m.succeeded ?? false,
    version: m.version ?? 0,
    timestampMs: m.timestampMs ?? 0,
    revision: m.revision ?? 0,
    currentVersion: m.currentVersion ?? 0,
  };
  return m.currentValue !== undefined && m.currentValue !== null ? { ...r, currentValue: bytes(m.currentValue) } : r;
}

/** Converts a GetResponse. */
export function getResult(m: GetResponseMsg): KvGetResult {
  return {
    found: m.found ?? false,
    value: bytes(m.value),
    version: m.version ?? 0,
    timestampMs: m.timestampMs ?? 0,
    revision: m.revision ?? 0,
  };
}

/** Converts a DeleteResponse. */
export function deleteResult(m: DeleteResponseMsg): KvDeleteResult {
  return {
    succeeded: m.succeeded ?? false,
    deleted: m.deleted ?? false,
    revision: m.revision ?? 0,
    currentVersion: m.currentVersion ?? 0,
  };
}

/** Converts a TriggerResponse. */
export function triggerResult(m: TriggerResponseMsg): KvTriggerResult {
  return { revision: m.revision ?? 0, timestampMs: m.timestampMs ?? 0 };
}

/** Converts a KeyValue. */
export function item(m: KeyValueMsg): KvItem {
  return { key: m.key ?? '', value: bytes(m.value), version: m.version ?? 0, timestampMs: m.timestampMs ?? 0 };
}

/** Converts a proto map with numeric keys (decoded with string keys) into a record of numbers. */
export function numberRecord(m: Record<string, number | string> | null | undefined): Record<number, number> {
  const out: Record<number, number> = {};
  if (m) for (const [k, v] of Object.entries(m)) out[Number(k)] = Number(v);
  return out;
}

/** Converts a ListResponse. */
export function listResult(m: ListResponseMsg): KvListResult {
  return {
    items: (m.items ?? []).map(item),
    nextPageToken: m.nextPageToken ?? '',
    revision: m.revision ?? 0,
    shardRevisions: numberRecord(m.shardRevisions),
  };
}

/** Converts a TxnResponse. */
export function txnResult(m: TxnResponseMsg): KvTxnResult {
  return {
    succeeded: m.succeeded ?? false,
    revision: m.revision ?? 0,
    timestampMs: m.timestampMs ?? 0,
    failedCompares: (m.failedCompares ?? []).map(Number),
    shard: m.shard ?? 0,
  };
}

/** Converts an Event (unknown types are reported as puts). */
export function watchEvent(m: EventMsg): KvWatchEvent {
  return {
    type: m.type === 'DELETE' || m.type === 1 ? 'delete' : m.type === 'TRIGGER' || m.type === 2 ? 'trigger' : 'put',
    key: m.key ?? '',
    value: bytes(m.value),
    revision: m.revision ?? 0,
    timestampMs: m.timestampMs ?? 0,
    shard: m.shard ?? 0,
  };
}

/** Converts a StatusResponse (decoded by the server's status codec; `matched` as a plain record). */
export function nodeStatus(m: StatusResponseMsg): KvNodeStatus {
  const s = statusFromMsg(m);
  return {
    ...s,
    groups: s.groups.map((g) => ({ ...g, shardIndex: g.shardIndex ?? 0, matched: Object.fromEntries(g.matched) })),
  };
}
