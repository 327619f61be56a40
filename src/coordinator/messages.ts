/**
 * The coordinator's requests are kvcascade.v1 wire messages (it forwards them as they are):
 * here they are checked and mapped to the backend's request types, guarded against the reserved
 * keyspace, and the backend's results mapped back to wire responses (pages and watch responses
 * cut to a byte budget).
 */
import {
  DEAD_LETTER_PREFIX,
  META_GROUP,
  hidesReservedKeys,
  isReservedKey,
  prefixInReserved,
} from '../sharding/index.js';
import {
  MAX_LIST_LIMIT,
  ValidationError,
  reservedKeyError,
  reservedPrefixError,
  validateCommand,
  type DeleteResult,
  type KvEvent,
  type PutResult,
  type TxnCompare,
  type TxnResult,
  type TxnWrite,
} from '../statemachine/index.js';
import type {
  CallOptions,
  Consistency,
  KvBackend,
  DeleteRequest,
  GetRequest,
  GetResponse,
  ListRequest,
  ListResponse,
  PutRequest,
  TriggerRequest,
  TriggerResponse,
  TxnRequest,
  WatchRequest,
} from '../node/backend.js';
import type {
  DeleteRequestMsg,
  DeleteResponseMsg,
  EventMsg,
  GetRequestMsg,
  GetResponseMsg,
  KeyValueMsg,
  ListRequestMsg,
  ListResponseMsg,
  PutRequestMsg,
  PutResponseMsg,
  TriggerRequestMsg,
  TriggerResponseMsg,
  TxnRequestMsg,
  TxnResponseMsg,
  WatchRequestMsg,
  WatchResponseMsg,
} from '../wire/proto.js';
import {
  checkInt,
  checkKey,
  checkPrefix,
  checkSession,
  checkTrigger,
  checkUint,
  checkValue,
  decodePageToken,
  encodePageToken,
} from '../wire/request-validation.js';
import { invalid } from './op-status.js';

/** Minimum watch progress interval passed to the backend. */
export const MIN_PROGRESS_INTERVAL_MS = 10;

/** The unary KV operations. */
export type UnaryOp = 'put' | 'get' | 'delete' | 'trigger' | 'list' | 'txn';
/** The wire request of each unary operation. */
export type RequestOf<O extends UnaryOp> = {
  put: PutRequestMsg;
  get: GetRequestMsg;
  delete: DeleteRequestMsg;
  trigger: TriggerRequestMsg;
  list: ListRequestMsg;
  txn: TxnRequestMsg;
}[O];
/** The wire response of each unary operation. */
export type ResponseOf<O extends UnaryOp> = {
  put: PutResponseMsg;
  get: GetResponseMsg;
  delete: DeleteResponseMsg;
  trigger: TriggerResponseMsg;
  list: ListResponseMsg;
  txn: TxnResponseMsg;
}[O];

/** The operations that write (only a shard's leader applies them). */
export const WRITE_OPS: ReadonlySet<UnaryOp> = new Set<UnaryOp>(['put', 'delete', 'trigger', 'txn']);

/** The empty value. */
export const EMPTY = new Uint8Array(0);

/** The consistency a request names (unset = linearizable); ValidationError for an unknown one. */
export function toConsistency(c: unknown): Consistency {
  if (c === undefined || c === null || c === 'LINEARIZABLE' || c === 0) return 'linearizable';
  if (c === 'SERIALIZABLE' || c === 1) return 'serializable';
  throw new ValidationError('INVALID_ARGUMENT', `unknown consistency ${String(c)}`);
}

/** Whether an optional wire field is set. */
export function isSet<T>(v: T | null | undefined): v is T {
  return v !== undefined && v !== null;
}

/**
 * A Put request, checked. The value is the request's own bytes, often a view of a larger received
 * message: not copied here (a node copies it into the log entry), see {@link KvBackend}'s `put`.
 */
export function toPutRequest(m: PutRequestMsg): PutRequest {
  const key = checkKey(m.key);
  const value = checkValue(m.value ?? EMPTY);
  const returnCurrentValue = m.returnCurrentValue === true;
  return isSet(m.expectedVersion)
    ? { key, value, returnCurrentValue, expectedVersion: checkUint(m.expectedVersion, 'expected_version') }
    : { key, value, returnCurrentValue };
}

/** A Get request, checked (at most one of at_version and at_time_ms). */
export function toGetRequest(m: GetRequestMsg): GetRequest {
  const key = checkKey(m.key);
  const consistency = toConsistency(m.consistency);
  if (isSet(m.atVersion) && isSet(m.atTimeMs)) {
    throw new ValidationError('INVALID_ARGUMENT', 'give at most one of at_version and at_time_ms');
  }
  if (isSet(m.atVersion)) return { key, consistency, atVersion: checkUint(m.atVersion, 'at_version') };
  if (isSet(m.atTimeMs)) return { key, consistency, atTimeMs: checkInt(m.atTimeMs, 'at_time_ms') };
  return { key, consistency };
}

/** A Delete request, checked. */
export function toDeleteRequest(m: DeleteRequestMsg): DeleteRequest {
  const key = checkKey(m.key);
  return isSet(m.expectedVersion) ? { key, expectedVersion: checkUint(m.expectedVersion, 'expected_version') } : { key };
}

/** A Trigger request, checked (the value not copied, as {@link toPutRequest}'s). */
export function toTriggerRequest(m: TriggerRequestMsg): TriggerRequest {
  return checkTrigger(m.key, m.value ?? EMPTY);
}

/** A List request, checked (limit clamped to the maximum; the page token decoded within the prefix). */
export function toListRequest(m: ListRequestMsg): ListRequest {
  const prefix = checkPrefix(m.prefix ?? '');
  const limit = checkUint(m.limit ?? 0, 'limit');
  const consistency = toConsistency(m.consistency);
  const base = {
    prefix,
    keysOnly: m.keysOnly === true,
    consistency,
    // 0 = server default; larger than the maximum is clamped (as the proto documents "at most").
    ...(limit > 0 ? { limit: Math.min(limit, MAX_LIST_LIMIT) } : {}),
    ...(isSet(m.shard) ? { shard: checkUint(m.shard, 'shard') } : {}),
  };
  return m.pageToken ? { ...base, after: decodePageToken(m.pageToken, prefix) } : base;
}

/**
 * Checks a Txn request: keys like a put's, values within MAX_VALUE_BYTES, writes without
 * `expected_version` or `return_current_value` (a txn's condition is its compares), at least one
 * compare or write, and the state machine's txn limits (op counts, duplicate write keys, payload).
 */
export function toTxnRequest(m: TxnRequestMsg): TxnRequest {
  const compares: TxnCompare[] = (m.compares ?? []).map((c, i) => ({
    key: checkKey(c?.key, `compare ${i} key`),
    version: checkUint(c?.version ?? 0, `compare ${i} version`),
  }));
  const writes: TxnWrite[] = (m.writes ?? []).map((w, i): TxnWrite => {
    const op = w?.op ?? (w?.put ? 'put' : w?.delete ? 'delete' : undefined);
    if (op === 'put' && w.put) {
      const p = w.put;
      if (isSet(p.expectedVersion)) throw invalid(`write ${i}: expected_version must be unset in a txn (use a compare)`);
      if (p.returnCurrentValue === true) throw invalid(`write ${i}: return_current_value is not supported in a txn`);
      if (isSet(p.session)) throw invalid(`write ${i}: session must be unset in a txn (set it on the TxnRequest)`);
      // Copy the value: do not retain the received frame.
      return { type: 'put', key: checkKey(p.key, `write ${i} key`), value: new Uint8Array(checkValue(p.value ?? EMPTY, `write ${i} value`)) };
    }
    if (op === 'delete' && w.delete) {
      if (isSet(w.delete.expectedVersion)) throw invalid(`write ${i}: expected_version must be unset in a txn (use a compare)`);
      if (isSet(w.delete.session)) throw invalid(`write ${i}: session must be unset in a txn (set it on the TxnRequest)`);
      return { type: 'delete', key: checkKey(w.delete.key, `write ${i} key`) };
    }
    throw invalid(`write ${i} has no operation (put or delete)`);
  });
  if (compares.length === 0 && writes.length === 0) throw invalid('a txn needs at least one compare or write');
  validateCommand({ type: 'txn', compares, writes });
  return { compares, writes };
}

/** A Watch request, checked (progress interval defaulted and floored at {@link MIN_PROGRESS_INTERVAL_MS}). */
export function toWatchRequest(m: WatchRequestMsg): WatchRequest {
  const prefix = checkPrefix(m.prefix ?? '');
  const fromRevision = checkUint(m.fromRevision ?? 0, 'from_revision');
  const interval = checkUint(m.progressIntervalMs ?? 0, 'progress_interval_ms');
  return {
    prefix,
    fromRevision,
    progressIntervalMs: interval === 0 ? 1000 : Math.max(MIN_PROGRESS_INTERVAL_MS, interval),
    ...(isSet(m.shard) ? { shard: checkUint(m.shard, 'shard') } : {}),
  };
}

/** `opts` with the write's session (kvcascade.v1.WriteSession, checked) when the request carries one. */
export function withSession(opts: CallOptions, m: { session?: unknown }): CallOptions {
  const session = checkSession(m.session);
  return session ? { ...opts, session } : opts;
}

/** Refuses (PERMISSION_DENIED) a client's access to reserved `key`; an admin may read dead letters. */
export function guardKey(key: string, access: 'read' | 'write', admin: boolean): void {
  if (!isReservedKey(key)) return;
  if (access === 'read' && admin && key.startsWith(DEAD_LETTER_PREFIX)) return;
  throw reservedKeyError(key, access);
}

/**
 * Refuses (PERMISSION_DENIED) a client's List or Watch of the metadata group (`shard` 0) or of a
 * prefix inside the reserved keyspace; an admin may read dead letters. A prefix that merely
 * covers reserved keys (`/`, `/_`...) is allowed: they are left out of its results.
 */
export function guardPrefix(prefix: string, shard: number | undefined, admin: boolean): void {
  if (shard === META_GROUP) {
    throw new ValidationError(
      'RESERVED',
      `shard ${META_GROUP} is the metadata group (cluster map, extension registry): clients cannot list or watch it (use Cluster.GetShardMap and the Admin service)`,
    );
  }
  if (!prefixInReserved(prefix)) return;
  if (admin && prefix.startsWith(DEAD_LETTER_PREFIX)) return;
  throw reservedPrefixError(prefix);
}

/** Refuses (PERMISSION_DENIED) a txn that compares or writes any reserved key. */
export function guardTxn(t: TxnRequest): void {
  for (const c of t.compares) guardKey(c.key, 'write', false);
  for (const w of t.writes) guardKey(w.key, 'write', false);
}

/** `r` without the reserved keys when its prefix only covers the reserved keyspace (see `hidesReservedKeys`). */
export function withoutReserved(prefix: string, r: ListResponse): ListResponse {
  if (!hidesReservedKeys(prefix)) return r;
  const items = r.items.filter((i) => !isReservedKey(i.key));
  return items.length === r.items.length ? r : { ...r, items };
}

/** The first key of a request (the one its shard is routed by), if it has one. */
export function firstKeyOf(op: UnaryOp, m: object): string | undefined {
  if (op === 'txn') {
    const t = m as TxnRequestMsg;
    const w = t.writes?.[0];
    return t.compares?.[0]?.key ?? w?.put?.key ?? w?.delete?.key;
  }
  return (m as { key?: string }).key;
}

/** The wire response of a put. */
export function putResponse(r: PutResult): PutResponseMsg {
  if (r.succeeded) {
    return { succeeded: true, version: r.version, timestampMs: r.timestampMs, currentVersion: 0, revision: r.revision };
  }
  const res: PutResponseMsg = {
    succeeded: false,
    version: 0,
    timestampMs: r.timestampMs,
    currentVersion: r.current?.version ?? r.version,
    revision: r.revision,
  };
  if (r.current?.value !== undefined) res.currentValue = r.current.value;
  return res;
}

/** The wire response of a get. */
export function getResponse(r: GetResponse): GetResponseMsg {
  return {
    found: r.found,
    value: r.found ? (r.value ?? EMPTY) : EMPTY,
    version: r.found ? r.version : 0,
    timestampMs: r.found ? r.timestampMs : 0,
    revision: r.revision,
  };
}

/** The wire response of a delete. */
export function deleteResponse(r: DeleteResult): DeleteResponseMsg {
  return { succeeded: r.succeeded, deleted: r.deleted, revision: r.revision, currentVersion: r.current?.version ?? 0 };
}

/** The wire response of a trigger. */
export function triggerResponse(r: TriggerResponse): TriggerResponseMsg {
  return { revision: r.revision, timestampMs: r.timestampMs };
}

/** The wire response of a txn served by shard `shard`. */
export function txnResponse(r: TxnResult, shard: number | undefined): TxnResponseMsg {
  return {
    succeeded: r.succeeded,
    revision: r.revision,
    timestampMs: r.timestampMs,
    failedCompares: [...r.failedCompares],
    shard: shard ?? 0,
  };
}

/** Bytes counted per listed item or event besides its key and value. */
export const ITEM_OVERHEAD_BYTES = 32;

/** How many of `items` fit in `budget` bytes (at least one). */
export function fitting(items: readonly { key?: string; value?: Uint8Array }[], budget: number): number {
  let bytes = 0;
  for (let i = 0; i < items.length; i++) {
    const it = items[i]!;
    const size = Buffer.byteLength(it.key ?? '') + (it.value?.length ?? 0) + ITEM_OVERHEAD_BYTES;
    if (i > 0 && bytes + size > budget) return i;
    bytes += size;
  }
  return items.length;
}

/** The wire page of a backend page, cut to `budget` bytes (the next page token then names the last key sent). */
export function listResponse(r: ListResponse, budget: number): ListResponseMsg {
  const n = fitting(r.items, budget);
  const items: KeyValueMsg[] = r.items
    .slice(0, n)
    .map((it) => ({ key: it.key, value: it.value ?? EMPTY, version: it.version, timestampMs: it.timestampMs }));
  const nextAfter = n < r.items.length ? items[items.length - 1]!.key : r.nextAfter;
  return { items, nextPageToken: nextAfter === undefined ? '' : encodePageToken(nextAfter), revision: r.revision };
}


/** The bytes an event counts for in a watch response. */
export function eventBytesOf(e: KvEvent): number {
  return Buffer.byteLength(e.key) + (e.value?.length ?? 0) + ITEM_OVERHEAD_BYTES;
}

/** The wire event of a backend event of shard `shard`. */
export function eventMsg(e: KvEvent, shard: number): EventMsg {
  return {
    type: e.type === 'delete' ? 'DELETE' : e.type === 'trigger' ? 'TRIGGER' : 'PUT',
    key: e.key,
    value: e.type === 'delete' ? EMPTY : (e.value ?? EMPTY),
    revision: e.revision,
    timestampMs: e.timestampMs,
    shard,
  };
}

/**
 * Splits events of shard `shard` (whole revisions, in order) into responses of at most `budget`
 * bytes, never splitting a revision. Each chunk's `revision` is its last event's revision, except
 * the last chunk, which gets `finalRevision`.
 */
export function chunkEvents(events: readonly KvEvent[], finalRevision: number, budget: number, shard: number): WatchResponseMsg[] {
  const out: WatchResponseMsg[] = [];
  let chunk: EventMsg[] = [];
  let bytes = 0;
  let i = 0;
  while (i < events.length) {
    const rev = events[i]!.revision;
    let j = i;
    let groupBytes = 0;
    while (j < events.length && events[j]!.revision === rev) groupBytes += eventBytesOf(events[j++]!);
    if (chunk.length > 0 && bytes + groupBytes > budget) {
      out.push({ events: chunk, revision: chunk[chunk.length - 1]!.revision! });
      chunk = [];
      bytes = 0;
    }
    for (let k = i; k < j; k++) chunk.push(eventMsg(events[k]!, shard));
    bytes += groupBytes;
    i = j;
  }
  const last = chunk.length > 0 ? chunk[chunk.length - 1]!.revision! : 0;
  out.push({ events: chunk, revision: Math.max(finalRevision, last) });
  return out;
}

/** The consistency a request names, or undefined when it names an unknown one. */
export function toConsistencySafe(c: unknown): Consistency | undefined {
  try {
    return toConsistency(c);
  } catch {
    return undefined;
  }
}
