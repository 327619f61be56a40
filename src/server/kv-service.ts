/** The gRPC KV and Cluster services over a KvBackend: request validation, error-to-status mapping, per-shard leader forwarding, cross-shard list and watch merging, transactions and pipelining. */
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import {
  DEAD_LETTER_PREFIX,
  META_GROUP,
  ShardingError,
  hidesReservedKeys,
  isReservedKey,
  prefixInReserved,
  shardOf,
} from '../sharding/index.js';
import {
  CompactedRevisionError,
  DEFAULT_LIST_LIMIT,
  MAX_LIST_LIMIT,
  ValidationError,
  compareKeys,
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
import {
  CrossShardError,
  DeadlineError,
  NotLeaderError,
  OverloadedError,
  UnavailableError,
  WrongShardError,
  type CallOptions,
  type Consistency,
  type DeleteRequest,
  type GetRequest,
  type GetResponse,
  type KvBackend,
  type ListRequest,
  type ListResponse,
  type PutRequest,
  type TriggerRequest,
  type TriggerResponse,
  type TxnRequest,
  type WatchHandle,
  type WatchRequest,
  type WatchSink,
} from '../node/backend.js';
import {
  MAX_FORWARD_HOPS,
  META_FORWARDED,
  META_HOPS,
  forwardHops,
  metaString,
  kvMetadata,
  neverReachedServer,
  readKvMetadata,
  type KvMetadataFields,
} from '../wire/metadata.js';
import { AUTHORIZATION_METADATA, AdminTokenCheck } from '../wire/auth.js';
import {
  KvStubClient,
  clusterServiceDefinition,
  invalidUtf8Field,
  kvServiceDefinition,
  type ClusterServiceHandlers,
  type DeleteRequestMsg,
  type DeleteResponseMsg,
  type EventMsg,
  type GetRequestMsg,
  type GetResponseMsg,
  type GetShardMapRequestMsg,
  type GetShardMapResponseMsg,
  type KeyValueMsg,
  type KvServiceHandlers,
  type KvStub,
  type ListRequestMsg,
  type ListResponseMsg,
  type PipelineRequestMsg,
  type PipelineResponseMsg,
  type PutRequestMsg,
  type PutResponseMsg,
  type StatusRequestMsg,
  type StatusResponseMsg,
  type TriggerRequestMsg,
  type TriggerResponseMsg,
  type TxnRequestMsg,
  type TxnResponseMsg,
  type WatchRequestMsg,
  type WatchResponseMsg,
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
  decodeResumeToken,
  encodePageToken,
  encodeResumeToken,
} from '../wire/request-validation.js';
import { statusToMsg } from '../wire/status-codec.js';

/** etcd's default request size limit (1.5 MiB): larger requests fail with RESOURCE_EXHAUSTED before reaching a handler. */
export const DEFAULT_MAX_REQUEST_BYTES = 1.5 * 1024 * 1024;

/** Deadline applied to a call whose client set none. */
export const DEFAULT_CALL_DEADLINE_MS = 10_000;

/** Ops a single Pipeline stream may have in flight before the server stops reading it. */
export const DEFAULT_PIPELINE_MAX_IN_FLIGHT = 4096;

/** Watch responses a client may leave unread before the server cancels the watch as too slow. */
export const DEFAULT_WATCH_MAX_PENDING_RESPONSES = 1024;

/** Soft size cap of one List page or Watch response (a single item or revision may exceed it). */
export const DEFAULT_MAX_RESPONSE_BYTES = 3 * 1024 * 1024;

/** Minimum watch progress interval the service passes to the backend. */
export const MIN_PROGRESS_INTERVAL_MS = 10;

/** Most shards a cross-shard List queries at once. */
export const LIST_FANOUT_CONCURRENCY = 16;

/** HTTP/2 streams (calls) one client connection may have open at once on a server from {@link createGrpcServer}. */
export const MAX_CONCURRENT_STREAMS = 1000;

/**
 * Watches one client connection (as `call.getPeer()` names it) may have open at once; more fail
 * with RESOURCE_EXHAUSTED until one ends. Watches forwarded by other nodes (`kv-forwarded`) are
 * not counted: a node forwards all its clients' watches of a shard over one connection (they
 * are bounded by {@link MAX_CONCURRENT_STREAMS}).
 */
export const DEFAULT_MAX_WATCHES_PER_CONNECTION = 256;

/** The subset of a pino logger the services use. */
export interface KvServiceLogger {
  error(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

/** Options of {@link addKvServices}. */
export interface KvServiceOptions {
  /** This node's client-API address (host:port) as clients reach it; a function if only known after binding. */
  readonly selfAddress?: string | (() => string | undefined);
  /**
   * The client-API address of the leader of shard `group`, if the host knows it (preferred over
   * what the service infers from forwarding). Called with the group of each request.
   */
  readonly leaderAddress?: (group: number) => string | undefined;
  /** Deadline of calls whose client set none (default {@link DEFAULT_CALL_DEADLINE_MS}). */
  readonly defaultDeadlineMs?: number;
  /** Where internal errors and forwarding are logged (a pino logger fits; default: pino on stdout). */
  readonly log?: KvServiceLogger;
  /** Credentials of the channels used to forward calls to the leader (default insecure). */
  readonly forwardCredentials?: grpc.ChannelCredentials;
  /** Extra channel options of the forwarding channels. */
  readonly forwardChannelOptions?: grpc.ChannelOptions;
  /** Ops per Pipeline stream in flight before reads pause (default {@link DEFAULT_PIPELINE_MAX_IN_FLIGHT}). */
  readonly pipelineMaxInFlight?: number;
  /** Unsent Watch responses before the watch is cancelled as too slow (default {@link DEFAULT_WATCH_MAX_PENDING_RESPONSES}). */
  readonly watchMaxPendingResponses?: number;
  /** Soft cap of one List page or Watch response in bytes (default {@link DEFAULT_MAX_RESPONSE_BYTES}). */
  readonly maxResponseBytes?: number;
  /**
   * The admin token: a request carrying it (`authorization: Bearer <token>` metadata) may read
   * (Get, List, Watch) dead letters under `/_dlq/`; the rest of the reserved keyspace stays
   * refused to everyone. Unset: dead letters are not readable through the KV API.
   */
  readonly adminToken?: string;
  /** Watches per client connection (default {@link DEFAULT_MAX_WATCHES_PER_CONNECTION}). */
  readonly maxWatchesPerConnection?: number;
  /**
   * Longest time one forwarded call may wait for the node it was forwarded to (default
   * {@link DEFAULT_FORWARD_ATTEMPT_MS}; 0 = up to the call's deadline). A target that lets it run
   * out is suspect: calls are not forwarded to it until it answers again or a suspicion period
   * passes, and are answered UNAVAILABLE at once (retry-safe) so the client tries elsewhere.
   */
  readonly forwardAttemptMs?: number;
}

/**
 * Default longest wait of one forwarded call (ms): below the client's default attempt timeout
 * (1.5 s), so a frozen leader behind a forwarding node costs the client one answer, not its deadline.
 */
export const DEFAULT_FORWARD_ATTEMPT_MS = 1_000;

/** How long a forwarding target that timed out is avoided (ms) unless it answers sooner. */
const FORWARD_SUSPECT_MS = 3_000;

/** What {@link addKvServices} returns. */
export interface KvServiceHandle {
  /** The leader address the service reports in `kv-leader` when the cluster map has a single shard (undefined otherwise, or when unknown). */
  readonly leaderHint: string | undefined;
  /** The leader address the service reports in `kv-leader` for shard `group` (undefined when unknown). */
  leaderHintOf(group: number): string | undefined;
  /** Ends running watches and pipelines with UNAVAILABLE and closes the forwarding channels. Call before shutting the server down. */
  close(): void;
}

type UnaryOp = 'put' | 'get' | 'delete' | 'trigger' | 'list' | 'txn';
type RequestOf<O extends UnaryOp> = {
  put: PutRequestMsg;
  get: GetRequestMsg;
  delete: DeleteRequestMsg;
  trigger: TriggerRequestMsg;
  list: ListRequestMsg;
  txn: TxnRequestMsg;
}[O];
type ResponseOf<O extends UnaryOp> = {
  put: PutResponseMsg;
  get: GetResponseMsg;
  delete: DeleteResponseMsg;
  trigger: TriggerResponseMsg;
  list: ListResponseMsg;
  txn: TxnResponseMsg;
}[O];

const WRITE_OPS: ReadonlySet<UnaryOp> = new Set<UnaryOp>(['put', 'delete', 'trigger', 'txn']);

interface OpContext {
  /** How many times the call was already forwarded (`kv-forwarded`). */
  readonly hops: number;
  /** For writes made by extension lambdas: the depth of the lambda chain (`kv-hops`; 0 for clients). */
  readonly lambdaHops: number;
  /** Absolute deadline, ms since the epoch. */
  readonly deadlineMs: number;
  /** Registers a callback run if the client cancels the call. */
  readonly onCancel?: (fn: () => void) => void;
  /** The request carries the right admin token: it may read dead letters (`/_dlq/`). */
  readonly admin: boolean;
  /** That request's `authorization` metadata, passed on when the call is forwarded (set only with `admin`). */
  readonly authorization?: string;
}

interface OpOutcome<R> {
  readonly response: R;
  /** The shard that served the call (undefined when it spanned several, or routing failed). */
  readonly group: number | undefined;
  /** That shard's leader, if known. */
  readonly leader: string | undefined;
}

/** A status to send, with the kvcascade metadata fields. */
class OpStatus extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
    readonly fields: KvMetadataFields = {},
  ) {
    super(message);
    this.name = 'OpStatus';
  }

  /** This status with `shard` set when it names none. */
  inShard(group: number | undefined): OpStatus {
    if (group === undefined || this.fields.shard !== undefined) return this;
    return new OpStatus(this.code, this.message, { ...this.fields, shard: group });
  }

  toServiceError(fields: KvMetadataFields): grpc.ServerErrorResponse {
    const metadata = kvMetadata(fields);
    return Object.assign(new Error(this.message), { code: this.code, details: this.message, metadata });
  }
}

const EMPTY = new Uint8Array(0);

function invalid(message: string): OpStatus {
  return new OpStatus(grpc.status.INVALID_ARGUMENT, message, { retrySafe: true });
}

function toConsistency(c: unknown): Consistency {
  if (c === undefined || c === null || c === 'LINEARIZABLE' || c === 0) return 'linearizable';
  if (c === 'SERIALIZABLE' || c === 1) return 'serializable';
  throw new ValidationError('INVALID_ARGUMENT', `unknown consistency ${String(c)}`);
}

function isSet<T>(v: T | null | undefined): v is T {
  return v !== undefined && v !== null;
}

function toPutRequest(m: PutRequestMsg): PutRequest {
  const key = checkKey(m.key);
  const value = new Uint8Array(checkValue(m.value ?? EMPTY)); // copy: do not retain the received frame
  const returnCurrentValue = m.returnCurrentValue === true;
  return isSet(m.expectedVersion)
    ? { key, value, returnCurrentValue, expectedVersion: checkUint(m.expectedVersion, 'expected_version') }
    : { key, value, returnCurrentValue };
}

function toGetRequest(m: GetRequestMsg): GetRequest {
  const key = checkKey(m.key);
  const consistency = toConsistency(m.consistency);
  if (isSet(m.atVersion) && isSet(m.atTimeMs)) {
    throw new ValidationError('INVALID_ARGUMENT', 'give at most one of at_version and at_time_ms');
  }
  if (isSet(m.atVersion)) return { key, consistency, atVersion: checkUint(m.atVersion, 'at_version') };
  if (isSet(m.atTimeMs)) return { key, consistency, atTimeMs: checkInt(m.atTimeMs, 'at_time_ms') };
  return { key, consistency };
}

function toDeleteRequest(m: DeleteRequestMsg): DeleteRequest {
  const key = checkKey(m.key);
  return isSet(m.expectedVersion) ? { key, expectedVersion: checkUint(m.expectedVersion, 'expected_version') } : { key };
}

function toTriggerRequest(m: TriggerRequestMsg): TriggerRequest {
  const { key, value } = checkTrigger(m.key, m.value ?? EMPTY);
  return { key, value: new Uint8Array(value) }; // copy: do not retain the received frame
}

function toListRequest(m: ListRequestMsg): ListRequest {
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
function toTxnRequest(m: TxnRequestMsg): TxnRequest {
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

function toWatchRequest(m: WatchRequestMsg): WatchRequest {
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
function withSession(opts: CallOptions, m: { session?: unknown }): CallOptions {
  const session = checkSession(m.session);
  return session ? { ...opts, session } : opts;
}

/** Refuses (PERMISSION_DENIED) a client's access to reserved `key`; an admin may read dead letters. */
function guardKey(key: string, access: 'read' | 'write', admin: boolean): void {
  if (!isReservedKey(key)) return;
  if (access === 'read' && admin && key.startsWith(DEAD_LETTER_PREFIX)) return;
  throw reservedKeyError(key, access);
}

/**
 * Refuses (PERMISSION_DENIED) a client's List or Watch of the metadata group (`shard` 0) or of a
 * prefix inside the reserved keyspace; an admin may read dead letters. A prefix that merely
 * covers reserved keys (`/`, `/_`...) is allowed: they are left out of its results.
 */
function guardPrefix(prefix: string, shard: number | undefined, admin: boolean): void {
  if (shard === META_GROUP) {
    throw new ValidationError(
      'PERMISSION_DENIED',
      `shard ${META_GROUP} is the metadata group (cluster map, extension registry): clients cannot list or watch it (use Cluster.GetShardMap and the Admin service)`,
    );
  }
  if (!prefixInReserved(prefix)) return;
  if (admin && prefix.startsWith(DEAD_LETTER_PREFIX)) return;
  throw reservedPrefixError(prefix);
}

/** Refuses (PERMISSION_DENIED) a txn that compares or writes any reserved key. */
function guardTxn(t: TxnRequest): void {
  for (const c of t.compares) guardKey(c.key, 'write', false);
  for (const w of t.writes) guardKey(w.key, 'write', false);
}

/** `r` without the reserved keys when its prefix only covers the reserved keyspace (see `hidesReservedKeys`). */
function withoutReserved(prefix: string, r: ListResponse): ListResponse {
  if (!hidesReservedKeys(prefix)) return r;
  const items = r.items.filter((i) => !isReservedKey(i.key));
  return items.length === r.items.length ? r : { ...r, items };
}

/** The first key of a request (the one its shard is routed by), if it has one. */
function firstKeyOf(op: UnaryOp, m: object): string | undefined {
  if (op === 'txn') {
    const t = m as TxnRequestMsg;
    const w = t.writes?.[0];
    return t.compares?.[0]?.key ?? w?.put?.key ?? w?.delete?.key;
  }
  return (m as { key?: string }).key;
}

function putResponse(r: PutResult): PutResponseMsg {
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

function getResponse(r: GetResponse): GetResponseMsg {
  return {
    found: r.found,
    value: r.found ? (r.value ?? EMPTY) : EMPTY,
    version: r.found ? r.version : 0,
    timestampMs: r.found ? r.timestampMs : 0,
    revision: r.revision,
  };
}

function deleteResponse(r: DeleteResult): DeleteResponseMsg {
  return { succeeded: r.succeeded, deleted: r.deleted, revision: r.revision, currentVersion: r.current?.version ?? 0 };
}

function triggerResponse(r: TriggerResponse): TriggerResponseMsg {
  return { revision: r.revision, timestampMs: r.timestampMs };
}

function txnResponse(r: TxnResult, shard: number | undefined): TxnResponseMsg {
  return {
    succeeded: r.succeeded,
    revision: r.revision,
    timestampMs: r.timestampMs,
    failedCompares: [...r.failedCompares],
    shard: shard ?? 0,
  };
}

const ITEM_OVERHEAD_BYTES = 32;

/** How many of `items` fit in `budget` bytes (at least one). */
function fitting(items: readonly { key?: string; value?: Uint8Array }[], budget: number): number {
  let bytes = 0;
  for (let i = 0; i < items.length; i++) {
    const it = items[i]!;
    const size = Buffer.byteLength(it.key ?? '') + (it.value?.length ?? 0) + ITEM_OVERHEAD_BYTES;
    if (i > 0 && bytes + size > budget) return i;
    bytes += size;
  }
  return items.length;
}

function listResponse(r: ListResponse, budget: number): ListResponseMsg {
  const n = fitting(r.items, budget);
  const items: KeyValueMsg[] = r.items
    .slice(0, n)
    .map((it) => ({ key: it.key, value: it.value ?? EMPTY, version: it.version, timestampMs: it.timestampMs }));
  const nextAfter = n < r.items.length ? items[items.length - 1]!.key : r.nextAfter;
  return { items, nextPageToken: nextAfter === undefined ? '' : encodePageToken(nextAfter), revision: r.revision };
}


function eventBytesOf(e: KvEvent): number {
  return Buffer.byteLength(e.key) + (e.value?.length ?? 0) + ITEM_OVERHEAD_BYTES;
}

function eventMsg(e: KvEvent, shard: number): EventMsg {
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
function chunkEvents(events: readonly KvEvent[], finalRevision: number, budget: number, shard: number): WatchResponseMsg[] {
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

/**
 * The revision a (sub-)watch of `group` starts at: after the revision the resume token names for
 * it; else `fromRevision`; else, when the token names other shards but not this one (a shard that
 * is new since the token was issued, or had not reported yet), 1: all its history is unseen; else
 * 0 (from now on).
 */
function startRevision(group: number, fromRevision: number, resume: ReadonlyMap<number, number> | undefined): number {
  const seen = resume?.get(group);
  if (seen !== undefined) return seen + 1;
  if (fromRevision > 0) return fromRevision;
  return resume !== undefined && resume.size > 0 ? 1 : 0;
}

/** Runs `fn` over `items` with at most `limit` calls in flight; rejects with the first failure (launching nothing more). */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

/** The lambda chain depth a write carries in `kv-hops` metadata (0 when absent or malformed). */
function lambdaHopsOf(md: grpc.Metadata): number {
  const n = Number(metaString(md, META_HOPS) ?? '0');
  return Number.isSafeInteger(n) && n > 0 && n < 1_000 ? n : 0;
}

/** The parts of a server call the services read. */
type AnyServerCall = Pick<grpc.ServerUnaryCall<unknown, unknown>, 'metadata' | 'getDeadline' | 'on'>;

function deadlineOf(call: { getDeadline(): grpc.Deadline }): number {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : d;
  return Number.isFinite(ms) ? ms : Infinity;
}

function withDeadline<T>(run: () => Promise<T>, deadlineMs: number): Promise<T> {
  const remaining = deadlineMs - Date.now();
  if (remaining <= 0) return Promise.reject(new DeadlineError());
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new DeadlineError()), Math.min(remaining, 2 ** 31 - 1));
    timer.unref?.();
    let p: Promise<T>;
    try {
      p = run();
    } catch (e) {
      p = Promise.reject(e);
    }
    Promise.resolve(p).then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** One shard's part of a Watch call: a local backend watch or a stream forwarded to a node that serves the shard. */
interface SubWatch {
  readonly group: number;
  /** The revision it was asked to start at (0 = from now on). */
  readonly start: number;
  /** The highest revision of the shard fully seen so far (delivered or skipped); undefined until known. */
  seen: number | undefined;
  /** The sub-watch has sent at least one response (events or progress). */
  reported: boolean;
  /** The backend or upstream ended it by itself (nothing to cancel). */
  ended: boolean;
  handle?: WatchHandle;
  upstream?: grpc.ClientReadableStream<WatchResponseMsg>;
}

function toConsistencySafe(c: unknown): Consistency | undefined {
  try {
    return toConsistency(c);
  } catch {
    return undefined;
  }
}

class KvService implements KvServiceHandle {
  private readonly log: KvServiceLogger;
  private readonly defaultDeadlineMs: number;
  private readonly maxInFlight: number;
  private readonly maxPendingWatch: number;
  private readonly maxResponseBytes: number;
  private readonly adminTokens: AdminTokenCheck;
  private readonly maxWatchesPerConnection: number;
  private readonly forwardAttemptMs: number;
  /** Open client watches per connection (`call.getPeer()`). */
  private readonly watchesByPeer = new Map<string, number>();
  private readonly stubs = new Map<string, KvStub>();
  private readonly closers = new Set<() => void>();
  /** Leader hints learned from forwarding and NotLeaderErrors, per shard (never mixed across shards). */
  private readonly leaderCache = new Map<number, string>();
  /** Forwarding targets that let an attempt time out: address → avoided until (ms since the epoch). */
  private readonly suspectTargets = new Map<string, number>();
  private closed = false;

  constructor(
    private readonly backend: KvBackend,
    private readonly opts: KvServiceOptions,
  ) {
    this.log = opts.log ?? pino({ name: 'kvcascade-kv-service' });
    this.defaultDeadlineMs = opts.defaultDeadlineMs ?? DEFAULT_CALL_DEADLINE_MS;
    this.maxInFlight = Math.max(1, opts.pipelineMaxInFlight ?? DEFAULT_PIPELINE_MAX_IN_FLIGHT);
    this.maxPendingWatch = Math.max(1, opts.watchMaxPendingResponses ?? DEFAULT_WATCH_MAX_PENDING_RESPONSES);
    this.maxResponseBytes = opts.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.adminTokens = new AdminTokenCheck(opts.adminToken);
    this.maxWatchesPerConnection = Math.max(1, opts.maxWatchesPerConnection ?? DEFAULT_MAX_WATCHES_PER_CONNECTION);
    this.forwardAttemptMs = Math.max(0, opts.forwardAttemptMs ?? DEFAULT_FORWARD_ATTEMPT_MS);
  }

  get leaderHint(): string | undefined {
    return this.leaderHintOf(this.soleGroup());
  }

  leaderHintOf(group: number | undefined): string | undefined {
    if (group === undefined) return undefined;
    return this.opts.leaderAddress?.(group) ?? this.leaderCache.get(group);
  }

  private get self(): string | undefined {
    const s = this.opts.selfAddress;
    return typeof s === 'function' ? s() : s;
  }

  close(): void {
    this.closed = true;
    for (const c of [...this.closers]) c();
    this.closers.clear();
    for (const stub of this.stubs.values()) stub.close();
    this.stubs.clear();
  }

  // ---- routing and metadata -------------------------------------------------------------------

  /** The epoch of the backend's cluster map, if it has one. */
  private mapEpoch(): number | undefined {
    try {
      return this.backend.shardMap().epoch;
    } catch {
      return undefined;
    }
  }

  /** The only data shard of the map, when it has exactly one (stream-level and Status metadata name it). */
  private soleGroup(): number | undefined {
    try {
      const shards = this.backend.shardMap().shards;
      return shards.length === 1 ? shards[0]!.group : undefined;
    } catch {
      return undefined;
    }
  }

  /** The shard a single-shard request goes to by this node's map (undefined when it cannot be routed here). */
  private requestGroup(op: UnaryOp, m: object): number | undefined {
    try {
      if (op === 'list') {
        const l = m as ListRequestMsg;
        if (isSet(l.shard)) return l.shard;
        const groups = this.backend.shardsForPrefix(l.prefix ?? '');
        return groups.length === 1 ? groups[0] : undefined;
      }
      const key = firstKeyOf(op, m);
      return typeof key === 'string' && key !== '' ? shardOf(this.backend.shardMap(), key).group : undefined;
    } catch {
      return undefined;
    }
  }

  /** Learns from a NotLeaderError of `group`: a named leader is cached; "no leader" forgets the hint. */
  private noteNotLeader(group: number | undefined, e: NotLeaderError): void {
    if (group === undefined) return;
    if (e.leaderId > 0 && e.leaderAddress) this.leaderCache.set(group, e.leaderAddress);
    else if (!e.leaderAddress || this.leaderCache.get(group) === this.self) this.leaderCache.delete(group);
  }

  /** Response metadata of a call served by `group` (no shard or leader for calls spanning shards). */
  private responseMetadata(group: number | undefined, leader: string | undefined): grpc.Metadata {
    return kvMetadata({ shard: group, leader, mapEpoch: this.mapEpoch() });
  }

  /** Metadata of calls not served by one shard (Status, GetShardMap, Pipeline streams): names the sole shard of a one-shard map. */
  private nodeMetadata(): grpc.Metadata {
    const group = this.soleGroup();
    return this.responseMetadata(group, this.leaderHintOf(group));
  }

  /** The error to send for `s`: its fields, the leader hint of its shard when it names none, and the map epoch. */
  private serviceError(s: OpStatus): grpc.ServerErrorResponse {
    const shard = s.fields.shard;
    return s.toServiceError({ ...s.fields, leader: s.fields.leader ?? this.leaderHintOf(shard), mapEpoch: this.mapEpoch() });
  }

  // ---- core -----------------------------------------------------------------------------------

  private context(call: AnyServerCall): OpContext {
    const hops = forwardHops(call.metadata);
    const clientDeadline = deadlineOf(call);
    const deadlineMs = Number.isFinite(clientDeadline) ? clientDeadline : Date.now() + this.defaultDeadlineMs;
    // One 'cancelled' listener per call, however many forwarded sub-calls (cross-shard List) register.
    let onCancelled: Array<() => void> | undefined;
    const onCancel = (fn: () => void): void => {
      if (!onCancelled) {
        const fns: Array<() => void> = (onCancelled = []);
        call.on('cancelled', () => {
          for (const f of fns.splice(0)) f();
        });
      }
      onCancelled.push(fn);
    };
    return { hops, lambdaHops: lambdaHopsOf(call.metadata), deadlineMs, onCancel, ...this.adminOf(call.metadata) };
  }

  /** Whether a request's metadata carries the right admin token (and the header to forward with it). */
  private adminOf(md: grpc.Metadata): { admin: boolean; authorization?: string } {
    if (this.adminTokens.check(md) !== 'ok') return { admin: false };
    return { admin: true, authorization: String(md.get(AUTHORIZATION_METADATA)[0]) };
  }

  /** Maps any failure to the status to send; unknown errors become INTERNAL and are logged. */
  private toStatus(e: unknown, what: string): OpStatus {
    if (e instanceof OpStatus) return e;
    // The reserved keyspace (refused here, or by the shard for a client-origin command): nothing was applied.
    if (e instanceof ValidationError && e.code === 'PERMISSION_DENIED') return new OpStatus(grpc.status.PERMISSION_DENIED, e.message, { retrySafe: true });
    // A write session's seq the shard no longer remembers: an earlier attempt may have applied.
    if (e instanceof ValidationError && e.code === 'SESSION_EXPIRED') return new OpStatus(grpc.status.FAILED_PRECONDITION, e.message);
    if (e instanceof ValidationError) return invalid(e.message);
    if (e instanceof CrossShardError) {
      const message = e.message.includes('CROSS_SHARD') ? e.message : `CROSS_SHARD: ${e.message}`;
      return new OpStatus(grpc.status.INVALID_ARGUMENT, message);
    }
    if (e instanceof CompactedRevisionError) {
      return new OpStatus(grpc.status.OUT_OF_RANGE, e.message, { compactRevision: e.oldestRevision, retrySafe: true });
    }
    if (e instanceof NotLeaderError) {
      return new OpStatus(grpc.status.UNAVAILABLE, e.message, { retrySafe: true, leader: e.leaderAddress, shard: e.group });
    }
    // A stale map (ours or the sender's): nothing was applied; the client refetches the map (kv-map-epoch) and retries.
    if (e instanceof WrongShardError) return new OpStatus(grpc.status.UNAVAILABLE, e.message, { retrySafe: true });
    if (e instanceof UnavailableError) return new OpStatus(grpc.status.UNAVAILABLE, e.message);
    // The map cannot route the request (e.g. not initialised yet): nothing was applied.
    if (e instanceof ShardingError) return new OpStatus(grpc.status.UNAVAILABLE, e.message, { retrySafe: true });
    if (e instanceof DeadlineError) return new OpStatus(grpc.status.DEADLINE_EXCEEDED, e.message);
    if (e instanceof OverloadedError) return new OpStatus(grpc.status.RESOURCE_EXHAUSTED, e.message, { retrySafe: true });
    this.log.error({ err: e, op: what }, 'internal error in kv service');
    return new OpStatus(grpc.status.INTERNAL, 'internal server error');
  }

  /** Validates a request, refuses what touches the reserved keyspace (see guardKey), and calls the backend. */
  private backendCall<O extends UnaryOp>(op: O, m: RequestOf<O>, opts: CallOptions, group: number | undefined, admin: boolean): Promise<ResponseOf<O>> {
    const b = this.backend;
    switch (op) {
      case 'put': {
        const req = toPutRequest(m as PutRequestMsg);
        guardKey(req.key, 'write', admin);
        return b.put(req, withSession(opts, m as PutRequestMsg)).then(putResponse) as Promise<ResponseOf<O>>;
      }
      case 'get': {
        const req = toGetRequest(m as GetRequestMsg);
        guardKey(req.key, 'read', admin);
        return b.get(req, opts).then(getResponse) as Promise<ResponseOf<O>>;
      }
      case 'delete': {
        const req = toDeleteRequest(m as DeleteRequestMsg);
        guardKey(req.key, 'write', admin);
        return b.delete(req, withSession(opts, m as DeleteRequestMsg)).then(deleteResponse) as Promise<ResponseOf<O>>;
      }
      case 'trigger': {
        const req = toTriggerRequest(m as TriggerRequestMsg);
        guardKey(req.key, 'write', admin);
        return b.trigger(req, withSession(opts, m as TriggerRequestMsg)).then(triggerResponse) as Promise<ResponseOf<O>>;
      }
      case 'txn': {
        const req = toTxnRequest(m as TxnRequestMsg);
        guardTxn(req);
        return b.txn(req, withSession(opts, m as TxnRequestMsg)).then((r) => txnResponse(r, group)) as Promise<ResponseOf<O>>;
      }
      default: {
        const budget = this.maxResponseBytes;
        const req = toListRequest(m as ListRequestMsg);
        guardPrefix(req.prefix, req.shard, admin);
        return b.list(req, opts).then((r) => listResponse(withoutReserved(req.prefix, r), budget)) as Promise<ResponseOf<O>>;
      }
    }
  }

  /** Runs one unary call: a List spanning several shards is scattered and merged; anything else is one {@link execute}. */
  private run<O extends UnaryOp>(op: O, m: RequestOf<O>, ctx: OpContext): Promise<OpOutcome<ResponseOf<O>>> {
    if (op === 'list' && !isSet((m as ListRequestMsg).shard)) {
      let groups: readonly number[] = [];
      try {
        groups = this.backend.shardsForPrefix(checkPrefix((m as ListRequestMsg).prefix ?? ''));
      } catch {
        groups = []; // execute() reports the problem
      }
      if (groups.length > 1) return this.listAcrossShards(m as ListRequestMsg, groups, ctx) as Promise<OpOutcome<ResponseOf<O>>>;
    }
    return this.execute(op, m, ctx);
  }

  /**
   * Runs one single-shard op: validate, call the backend, forward toward the shard's leader on
   * NotLeaderError (while the hop count allows). Throws OpStatus naming the shard.
   */
  private async execute<O extends UnaryOp>(op: O, m: RequestOf<O>, ctx: OpContext, badUtf8?: string): Promise<OpOutcome<ResponseOf<O>>> {
    let group: number | undefined;
    let out: OpOutcome<ResponseOf<O>>;
    try {
      const bad = badUtf8 ?? invalidUtf8Field(m);
      if (bad !== undefined) throw invalid(`${bad} is not valid UTF-8`);
      if (this.closed) throw new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down', { retrySafe: true });
      group = this.requestGroup(op, m);
      const deadlineMs = ctx.deadlineMs;
      const g = group;
      const response = await withDeadline(
        () => this.backendCall(op, m, ctx.lambdaHops > 0 ? { deadlineMs, hops: ctx.lambdaHops } : { deadlineMs }, g, ctx.admin),
        deadlineMs,
      );
      // Only the shard's leader applies writes: any other cached leader of it is stale.
      if (WRITE_OPS.has(op) && group !== undefined) {
        const self = this.self;
        if (self) this.leaderCache.set(group, self);
        else this.leaderCache.delete(group);
      }
      out = { response, group, leader: this.leaderHintOf(group) };
    } catch (e) {
      if (e instanceof NotLeaderError) {
        const g = e.group ?? group;
        this.noteNotLeader(g, e);
        const target = e.leaderAddress;
        if (target && this.isSuspectTarget(target)) {
          // The leader this node knows froze or is cut off: say so now (the election that
          // replaces it is under way), rather than forward into it.
          if (g !== undefined && this.leaderCache.get(g) === target) this.leaderCache.delete(g);
          throw new OpStatus(grpc.status.UNAVAILABLE, `the shard's leader ${target} is not answering; a new leader is being elected`, { retrySafe: true, shard: g });
        }
        if (target && ctx.hops < MAX_FORWARD_HOPS && target !== this.self) {
          out = await this.forward(op, m, ctx, target, g);
        } else {
          const why = ctx.hops > 0 ? `forwarded request (${ctx.hops} hops) reached a non-leader: ${e.message}` : e.message;
          throw new OpStatus(grpc.status.UNAVAILABLE, why, { retrySafe: true, leader: target, shard: g });
        }
      } else {
        throw this.toStatus(e, op).inShard(group);
      }
    }
    if (op === 'list' && out.group !== undefined) {
      const r = out.response as ListResponseMsg;
      if (!r.shardRevisions || Object.keys(r.shardRevisions).length === 0) r.shardRevisions = { [String(out.group)]: r.revision ?? 0 };
    }
    return out;
  }

  /**
   * A List over several shards: every shard is asked (through {@link execute}, so each one is
   * forwarded to a node serving it as needed) for up to `limit` keys after the page token, and
   * the pages are merged in key (UTF-8 byte) order. The merged page ends at the smallest of the
   * limit-th merged key and the last key of every shard page that has more (keys beyond that may
   * be missing from the shards' pages); the next page token is that key, so nothing is skipped or
   * repeated. `revision` is 0 and `shard_revisions` names each shard's revision.
   */
  private async listAcrossShards(m: ListRequestMsg, groups: readonly number[], ctx: OpContext): Promise<OpOutcome<ListResponseMsg>> {
    let req: ListRequest;
    try {
      const bad = invalidUtf8Field(m);
      if (bad !== undefined) throw invalid(`${bad} is not valid UTF-8`);
      if (this.closed) throw new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down', { retrySafe: true });
      req = toListRequest(m);
      guardPrefix(req.prefix, req.shard, ctx.admin);
    } catch (e) {
      throw this.toStatus(e, 'list');
    }
    const limit = req.limit ?? DEFAULT_LIST_LIMIT;
    const pages = await mapLimit(groups, LIST_FANOUT_CONCURRENCY, async (g) => ({
      group: g,
      page: (await this.execute('list', { ...m, shard: g }, ctx)).response,
    }));
    const shardRevisions: Record<string, number> = {};
    const all: KeyValueMsg[] = [];
    let bound: string | undefined;
    try {
      for (const { group, page } of pages) {
        shardRevisions[String(group)] = page.revision ?? 0;
        for (const it of page.items ?? []) all.push(it);
        if (page.nextPageToken) {
          const last = decodePageToken(page.nextPageToken, req.prefix);
          if (bound === undefined || compareKeys(last, bound) < 0) bound = last;
        }
      }
    } catch (e) {
      throw this.toStatus(e, 'list');
    }
    all.sort((a, b) => compareKeys(a.key ?? '', b.key ?? ''));
    let end = all.length;
    if (bound !== undefined) {
      const b = bound;
      end = all.findIndex((it) => compareKeys(it.key ?? '', b) > 0);
      if (end < 0) end = all.length;
    }
    let next = bound;
    if (end > limit) {
      end = limit;
      next = all[end - 1]!.key;
    }
    let items = all.slice(0, end);
    const n = fitting(items, this.maxResponseBytes);
    if (n < items.length) {
      items = items.slice(0, n);
      next = items[n - 1]!.key;
    }
    const response: ListResponseMsg = {
      items,
      nextPageToken: next === undefined ? '' : encodePageToken(next),
      revision: 0,
      shardRevisions,
    };
    return { response, group: undefined, leader: undefined };
  }

  private stub(address: string): KvStub {
    let s = this.stubs.get(address);
    if (!s) {
      s = new KvStubClient(address, this.opts.forwardCredentials ?? grpc.credentials.createInsecure(), {
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
        'grpc.max_receive_message_length': 64 * 1024 * 1024,
        'grpc.enable_retries': 0,
        ...this.opts.forwardChannelOptions,
      });
      this.stubs.set(address, s);
    }
    return s;
  }

  /** Whether forwarding to `target` timed out recently (and it has not answered since). */
  private isSuspectTarget(target: string): boolean {
    const until = this.suspectTargets.get(target);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    this.suspectTargets.delete(target);
    return false;
  }

  /** Status for a forwarded call's failure (shard `group`): relays the upstream status and kvcascade metadata. */
  private forwardFailure(err: grpc.ServiceError, target: string, group: number | undefined, attemptTimedOut = false): OpStatus {
    if (attemptTimedOut) {
      this.suspectTargets.set(target, Date.now() + FORWARD_SUSPECT_MS);
      if (group !== undefined && this.leaderCache.get(group) === target) this.leaderCache.delete(group);
      this.log.warn({ target, group }, 'a forwarded call timed out: the target is suspect');
      // It may have reached the leader: retry-safe only if the client's request cannot apply twice.
      return new OpStatus(grpc.status.UNAVAILABLE, `the shard's leader ${target} did not answer within ${this.forwardAttemptMs} ms; the outcome of a write is unknown`, { shard: group });
    }
    if (neverReachedServer(err)) {
      if (group !== undefined && this.leaderCache.get(group) === target) this.leaderCache.delete(group);
      return new OpStatus(grpc.status.UNAVAILABLE, `leader ${target} unreachable: ${err.details}`, { retrySafe: true, shard: group });
    }
    const f = readKvMetadata(err.metadata);
    const g = f.shard ?? group;
    if (f.leader !== undefined && g !== undefined) this.leaderCache.set(g, f.leader);
    return new OpStatus(err.code, err.details, {
      leader: f.leader,
      shard: g,
      retrySafe: f.retrySafe || undefined,
      compactRevision: f.compactRevision,
    });
  }

  /** Forwards a single-shard op of shard `group` to `target`, one hop further. */
  private forward<O extends UnaryOp>(
    op: O,
    m: RequestOf<O>,
    ctx: OpContext,
    target: string,
    group: number | undefined,
  ): Promise<OpOutcome<ResponseOf<O>>> {
    if (this.closed) return Promise.reject(new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down', { retrySafe: true, shard: group }));
    this.log.debug({ op, target, group, hops: ctx.hops + 1 }, 'forwarding toward the shard leader');
    const md = new grpc.Metadata();
    md.set(META_FORWARDED, String(ctx.hops + 1));
    if (ctx.lambdaHops > 0) md.set(META_HOPS, String(ctx.lambdaHops));
    if (ctx.authorization !== undefined) md.set(AUTHORIZATION_METADATA, ctx.authorization);
    // Only a leader serves writes and linearizable reads: the target that did is the leader.
    const leaderServes =
      WRITE_OPS.has(op) || ((op === 'get' || op === 'list') && toConsistencySafe((m as GetRequestMsg).consistency) === 'linearizable');
    return new Promise((resolve, reject) => {
      let response: ResponseOf<O> | undefined;
      let error: grpc.ServiceError | null = null;
      const method = this.stub(target)[op] as unknown as (
        req: RequestOf<O>,
        md: grpc.Metadata,
        o: Partial<grpc.CallOptions>,
        cb: (err: grpc.ServiceError | null, res?: ResponseOf<O>) => void,
      ) => grpc.ClientUnaryCall;
      const attemptDeadline = this.forwardAttemptMs > 0 ? Math.min(ctx.deadlineMs, Date.now() + this.forwardAttemptMs) : ctx.deadlineMs;
      const call = method.call(this.stub(target), m, md, { deadline: new Date(attemptDeadline) }, (err, res) => {
        error = err;
        response = res;
      });
      ctx.onCancel?.(() => call.cancel());
      call.on('status', (status: grpc.StatusObject) => {
        if (error || response === undefined) {
          const timedOut = status.code === grpc.status.DEADLINE_EXCEEDED && attemptDeadline < ctx.deadlineMs;
          reject(this.forwardFailure(error ?? Object.assign(new Error(status.details), status), target, group, timedOut));
          return;
        }
        this.suspectTargets.delete(target);
        const f = readKvMetadata(status.metadata);
        const g = f.shard ?? group;
        const leader = f.leader ?? (leaderServes ? target : undefined);
        if (leader !== undefined && g !== undefined) this.leaderCache.set(g, leader);
        resolve({ response, group: g, leader: leader ?? this.leaderHintOf(g) });
      });
    });
  }

  // ---- unary handlers -------------------------------------------------------------------------

  private unary<O extends UnaryOp>(op: O): grpc.handleUnaryCall<RequestOf<O>, ResponseOf<O>> {
    return (call, callback) => {
      const ctx = this.context(call);
      this.run(op, call.request, ctx).then(
        (out) => callback(null, out.response, this.responseMetadata(out.group, out.leader)),
        (e: unknown) => callback(this.serviceError(this.toStatus(e, op))),
      );
    };
  }

  private status: grpc.handleUnaryCall<StatusRequestMsg, StatusResponseMsg> = (call, callback) => {
    const deadlineMs = Number.isFinite(deadlineOf(call)) ? deadlineOf(call) : Date.now() + this.defaultDeadlineMs;
    withDeadline(() => this.backend.status(), deadlineMs)
      .then(statusToMsg)
      .then(
        (res) => callback(null, res, this.nodeMetadata()),
        (e: unknown) => callback(this.serviceError(this.toStatus(e, 'status').inShard(this.soleGroup()))),
      );
  };

  private getShardMap: grpc.handleUnaryCall<GetShardMapRequestMsg, GetShardMapResponseMsg> = (_call, callback) => {
    try {
      const map = this.backend.shardMap();
      callback(null, { epoch: map.epoch, mapJson: JSON.stringify(map) }, this.nodeMetadata());
    } catch (e) {
      callback(this.serviceError(this.toStatus(e, 'getShardMap')));
    }
  };

  // ---- watch ----------------------------------------------------------------------------------

  /**
   * Watch. The prefix's shards (or the one `shard` names) are each watched by a sub-watch: the
   * local backend's, or, when this node cannot serve the shard, a stream forwarded toward a node
   * that can (one hop further, like unary calls). Their responses are written as they arrive;
   * a response never mixes shards, and every event carries its `shard`.
   *
   * Resume token: every response carries `resume_token`, the base64url JSON
   * `{"v":1,"s":{"<group>":<revision>}}` of each shard's highest fully seen revision (see
   * encodeResumeToken). A shard is in it once its position is known: from the start when it was
   * asked to start at a revision r > 0 (as r - 1), else once its sub-watch has reported (first
   * progress or events). Resuming with a token starts each named shard right after its revision;
   * shards it does not name start at `from_revision`, or at 1 when `from_revision` is 0 and the
   * token names other shards (all their history is unseen). So that a token taken from a progress
   * response is always complete, a merged watch sends no progress until every shard has reported
   * once; event responses flow meanwhile and carry what is known.
   *
   * Single shard: `revision` of every response is that shard's revision, exactly as before.
   * Several shards: events responses carry their shard's revision; progress and cancel responses
   * carry `revision` 0 (positions are only meaningful per shard: read the token), and progress is
   * coalesced (sent when the token changed or the progress interval passed). When any sub-watch
   * fails or is cancelled (compaction, leader lost, upstream error), the whole watch ends with a
   * `canceled` response whose reason names the shard and whose token is current: resume with it.
   * Back-pressure is the stream's: sub-watches pause while it needs draining, and a client that
   * leaves too many responses unread is cancelled as too slow.
   */
  private watch: grpc.handleServerStreamingCall<WatchRequestMsg, WatchResponseMsg> = (call) => {
    call.on('error', () => undefined); // write-after-end and the like must never crash the process
    const hops = forwardHops(call.metadata);
    const auth = this.adminOf(call.metadata);
    /** The client connection whose watch count this watch holds (released when it finishes). */
    let countedPeer: string | undefined;
    /** Whether events of reserved keys are left out (the prefix only covers the reserved keyspace). */
    let hideReserved = false;
    let finished = false;
    let multi = false;
    /** The shard of a single-shard watch. */
    let single: number | undefined;
    let subs: SubWatch[] = [];
    let lastRevision = 0;
    let progressIntervalMs = 1000;
    let createdSent = false;
    let lastWriteMs = 0;
    let lastToken: string | undefined;
    const drainWaiters: Array<() => void> = [];
    let drainArmed = false;

    const token = (): string => {
      const seen = new Map<number, number>();
      for (const s of subs) if (s.seen !== undefined) seen.set(s.group, s.seen);
      return encodeResumeToken(seen);
    };
    const streamMetadata = (): grpc.Metadata => this.responseMetadata(single, this.leaderHintOf(single));

    const stopSub = (s: SubWatch): void => {
      if (s.handle && !s.ended) {
        try {
          s.handle.cancel();
        } catch (e) {
          this.log.warn({ err: e }, 'watch cancel failed');
        }
      }
      s.upstream?.cancel();
    };
    const finish = (status?: OpStatus): void => {
      if (finished) return;
      finished = true;
      this.closers.delete(onClose);
      if (countedPeer !== undefined) this.releaseWatch(countedPeer);
      for (const s of subs) stopSub(s);
      if (call.cancelled) return;
      if (status) call.emit('error', this.serviceError(status.inShard(single)));
      else call.end(streamMetadata());
    };
    const onClose = (): void => finish(new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down'));

    const cancelWatch = (reason: string, compactRevision?: number): void => {
      if (finished) return;
      call.write({
        canceled: true,
        cancelReason: reason,
        compactRevision: compactRevision ?? 0,
        revision: multi ? 0 : lastRevision,
        resumeToken: token(),
      });
      finish();
    };
    const write = (msg: WatchResponseMsg): void => {
      if (finished) return;
      call.write(msg);
      lastWriteMs = Date.now();
      lastToken = msg.resumeToken;
      if (!multi && msg.revision !== undefined && msg.revision > lastRevision) lastRevision = msg.revision;
      if (call.writableLength > this.maxPendingWatch) {
        // The client is not reading: tell it to resume later; finish() stops the sub-watches
        // (or, if a backend is still inside watch(), the check after it returns does).
        cancelWatch(`watcher too slow: ${call.writableLength} responses unsent`);
      }
    };
    const onDrain = (cb: () => void): void => {
      if (!call.writableNeedDrain) {
        queueMicrotask(cb);
        return;
      }
      drainWaiters.push(cb);
      if (!drainArmed) {
        drainArmed = true;
        call.once('drain', () => {
          drainArmed = false;
          for (const w of drainWaiters.splice(0)) w();
        });
      }
    };
    const writeProgress = (): void => write({ progressNotify: true, revision: 0, resumeToken: token() });
    /** `s` has sent a response: the merged watch's first progress goes out once every shard has. */
    const reported = (s: SubWatch): void => {
      s.reported = true;
      if (multi && !createdSent && subs.every((x) => x.reported)) {
        createdSent = true;
        writeProgress();
      }
    };
    const onProgress = (s: SubWatch, revision: number): void => {
      if (finished || s.ended) return;
      s.seen = Math.max(s.seen ?? 0, revision);
      if (!multi) {
        s.reported = true;
        write({ progressNotify: true, revision, resumeToken: token() });
        return;
      }
      if (!createdSent) return reported(s);
      s.reported = true;
      const t = token();
      if (t !== lastToken || Date.now() - lastWriteMs >= progressIntervalMs) write({ progressNotify: true, revision: 0, resumeToken: t });
    };
    const onEvents = (s: SubWatch, events: readonly KvEvent[], revision: number): void => {
      if (finished || s.ended) return;
      if (events.length === 0) return onProgress(s, revision);
      // Puts, deletes and trigger puts alike; chunkEvents never splits a revision.
      for (const r of chunkEvents(events, revision, this.maxResponseBytes, s.group)) {
        s.seen = Math.max(s.seen ?? 0, r.revision!);
        write({ ...r, resumeToken: token() });
        if (finished) return;
      }
      reported(s);
    };
    const onCanceled = (s: SubWatch, reason: string, compactRevision: number | undefined): void => {
      if (finished || s.ended) return;
      s.ended = true;
      cancelWatch(multi ? `shard ${s.group}: ${reason}` : reason, compactRevision);
    };

    // Besides the WatchSink methods, the sink reports back-pressure (`writable`/`onDrain`, optional
    // capabilities a backend may use to stop feeding a watcher whose client is not reading).
    const sinkOf = (s: SubWatch): WatchSink & { writable(): boolean; onDrain(cb: () => void): void } => ({
      writable: () => !finished && !call.writableNeedDrain,
      onDrain,
      events: (events, revision) => {
        try {
          onEvents(s, hideReserved ? events.filter((e) => !isReservedKey(e.key)) : events, revision);
        } catch (e) {
          finish(this.toStatus(e, 'watch'));
        }
      },
      progress: (revision) => onProgress(s, revision),
      canceled: (reason, compactRevision) => onCanceled(s, reason, compactRevision),
    });

    const forwardSub = (s: SubWatch, req: WatchRequest, target: string): grpc.ClientReadableStream<WatchResponseMsg> => {
      const md = new grpc.Metadata();
      md.set(META_FORWARDED, String(hops + 1));
      if (auth.authorization !== undefined) md.set(AUTHORIZATION_METADATA, auth.authorization);
      this.log.debug({ target, group: s.group, hops: hops + 1 }, 'forwarding a watch');
      const upReq: WatchRequestMsg = { prefix: req.prefix, fromRevision: s.start, progressIntervalMs: req.progressIntervalMs, shard: s.group };
      const up = this.stub(target).watch(upReq, md, {});
      let paused = false;
      up.on('data', (m: WatchResponseMsg) => {
        if (finished || s.ended) return;
        if (m.canceled) return onCanceled(s, m.cancelReason || 'canceled by the shard', m.compactRevision || undefined);
        const events = hideReserved ? (m.events ?? []).filter((e) => !isReservedKey(e.key ?? '')) : (m.events ?? []);
        if (events.length > 0) {
          s.seen = Math.max(s.seen ?? 0, m.revision ?? 0);
          write({ events: events.map((e) => ({ ...e, shard: s.group })), revision: m.revision ?? 0, resumeToken: token() });
          reported(s);
        } else onProgress(s, m.revision ?? 0);
        if (!finished && !paused && call.writableNeedDrain) {
          paused = true;
          up.pause();
          onDrain(() => {
            paused = false;
            up.resume();
          });
        }
      });
      up.on('error', (err: grpc.ServiceError) => {
        if (finished || s.ended) return;
        s.ended = true;
        if (multi) cancelWatch(`shard ${s.group}: ${err.details}`, readKvMetadata(err.metadata).compactRevision);
        else finish(this.forwardFailure(err, target, s.group));
      });
      up.on('end', () => {
        if (finished || s.ended) return;
        s.ended = true;
        if (multi) cancelWatch(`shard ${s.group}: the forwarded watch ended`);
        else finish();
      });
      return up;
    };

    const open = (s: SubWatch, req: WatchRequest): void => {
      const subReq: WatchRequest = { prefix: req.prefix, fromRevision: s.start, progressIntervalMs: req.progressIntervalMs, shard: s.group };
      try {
        const handle = this.backend.watch(subReq, sinkOf(s));
        s.handle = handle;
        if (finished && !s.ended) handle.cancel(); // finished while the backend was still inside watch()
      } catch (e) {
        if (finished) return;
        if (e instanceof NotLeaderError && e.leaderAddress && hops < MAX_FORWARD_HOPS && e.leaderAddress !== this.self) {
          this.noteNotLeader(e.group ?? s.group, e);
          s.upstream = forwardSub(s, req, e.leaderAddress);
          return;
        }
        s.ended = true;
        const status = this.toStatus(e, 'watch');
        // E.g. CompactedRevisionError: OUT_OF_RANGE with kv-compact-revision.
        if (!multi) return finish(status);
        cancelWatch(`shard ${s.group}: ${status.message}`, status.fields.compactRevision);
      }
    };

    call.on('cancelled', () => finish());
    this.closers.add(onClose);
    if (this.closed) return onClose();

    let req: WatchRequest;
    let groups: readonly number[];
    let resume: Map<number, number> | undefined;
    try {
      const bad = invalidUtf8Field(call.request);
      if (bad !== undefined) throw invalid(`${bad} is not valid UTF-8`);
      req = toWatchRequest(call.request);
      guardPrefix(req.prefix, req.shard, auth.admin);
      resume = call.request.resumeToken ? decodeResumeToken(call.request.resumeToken) : undefined;
      groups = req.shard !== undefined ? [req.shard] : this.backend.shardsForPrefix(req.prefix);
      if (groups.length === 0) {
        throw new OpStatus(grpc.status.UNAVAILABLE, `no shard serves prefix ${JSON.stringify(req.prefix)} (cluster map epoch ${this.mapEpoch() ?? 0})`, {
          retrySafe: true,
        });
      }
      if (hops === 0) {
        const peer = call.getPeer();
        if (!this.holdWatch(peer)) {
          throw new OpStatus(
            grpc.status.RESOURCE_EXHAUSTED,
            `too many watches on this connection (at most ${this.maxWatchesPerConnection} at once); end some, or watch a broader prefix`,
          );
        }
        countedPeer = peer;
      }
    } catch (e) {
      return finish(this.toStatus(e, 'watch'));
    }
    hideReserved = hidesReservedKeys(req.prefix);
    multi = groups.length > 1;
    single = multi ? undefined : groups[0];
    progressIntervalMs = req.progressIntervalMs;
    subs = groups.map((group) => {
      const start = startRevision(group, req.fromRevision, resume);
      return { group, start, seen: start > 0 ? start - 1 : undefined, reported: false, ended: false };
    });
    call.sendMetadata(streamMetadata());
    for (const s of subs) {
      if (finished) break;
      open(s, req);
    }
  };

  /** Counts a new watch of connection `peer`; false (nothing counted) when it already has the most allowed. */
  private holdWatch(peer: string): boolean {
    const n = this.watchesByPeer.get(peer) ?? 0;
    if (n >= this.maxWatchesPerConnection) return false;
    this.watchesByPeer.set(peer, n + 1);
    return true;
  }

  /** Releases a watch counted by {@link holdWatch}. */
  private releaseWatch(peer: string): void {
    const n = (this.watchesByPeer.get(peer) ?? 1) - 1;
    if (n <= 0) this.watchesByPeer.delete(peer);
    else this.watchesByPeer.set(peer, n);
  }

  // ---- pipeline -------------------------------------------------------------------------------

  private async pipelineOp(req: PipelineRequestMsg, ctx: OpContext): Promise<PipelineResponseMsg> {
    const id = req.id ?? 0;
    const op = req.op ?? (req.put ? 'put' : req.get ? 'get' : req.delete ? 'delete' : req.trigger ? 'trigger' : undefined);
    const inner = op === undefined ? undefined : req[op];
    if (op === undefined || inner === undefined || inner === null) {
      return { id, error: { code: grpc.status.INVALID_ARGUMENT, message: 'pipeline request has no operation' } };
    }
    try {
      const out = await this.execute(op, inner, ctx, invalidUtf8Field(req));
      return { id, [op]: out.response };
    } catch (e) {
      const s = this.toStatus(e, op);
      return { id, error: { code: s.code, message: s.message } };
    }
  }

  private pipeline: grpc.handleBidiStreamingCall<PipelineRequestMsg, PipelineResponseMsg> = (call) => {
    call.on('error', () => undefined);
    const hops = forwardHops(call.metadata);
    const auth = this.adminOf(call.metadata);
    const streamDeadline = deadlineOf(call);
    let inFlight = 0;
    let paused = false;
    let readEnded = false;
    let done = false;
    const onClose = (): void => {
      if (done) return;
      done = true;
      call.emit('error', this.serviceError(new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down').inShard(this.soleGroup())));
    };
    const stop = (): void => {
      done = true;
      this.closers.delete(onClose);
    };
    const maybeEnd = (): void => {
      if (readEnded && inFlight === 0 && !done) {
        stop();
        call.end(this.nodeMetadata());
      }
    };
    const settle = (): void => {
      inFlight--;
      if (paused && inFlight < this.maxInFlight) {
        paused = false;
        call.resume();
      }
      maybeEnd();
    };
    this.closers.add(onClose);
    call.on('cancelled', stop);
    if (this.closed) return onClose();
    call.sendMetadata(this.nodeMetadata());
    call.on('data', (req: PipelineRequestMsg) => {
      if (done) return;
      inFlight++;
      if (inFlight >= this.maxInFlight && !paused) {
        paused = true;
        call.pause();
      }
      const ctx: OpContext = { hops, lambdaHops: 0, deadlineMs: Math.min(streamDeadline, Date.now() + this.defaultDeadlineMs), ...auth };
      this.pipelineOp(req, ctx).then((res) => {
        if (done) return;
        call.write(res, () => settle());
      }, (e: unknown) => {
        this.log.error({ err: e }, 'pipeline op failed unexpectedly');
        settle();
      });
    });
    call.on('end', () => {
      readEnded = true;
      maybeEnd();
    });
  };

  /** The handler objects to register. */
  handlers(): { kv: KvServiceHandlers; cluster: ClusterServiceHandlers } {
    return {
      kv: {
        put: this.unary('put'),
        get: this.unary('get'),
        delete: this.unary('delete'),
        trigger: this.unary('trigger'),
        list: this.unary('list'),
        txn: this.unary('txn'),
        watch: this.watch,
        pipeline: this.pipeline,
      },
      cluster: { status: this.status, getShardMap: this.getShardMap },
    };
  }
}

/**
 * Registers kvcascade.v1.KV and kvcascade.v1.Cluster on `server`, served by `backend`.
 * Returns a handle to close forwarding channels and end long-lived streams before shutdown.
 */
export function addKvServices(server: grpc.Server, backend: KvBackend, opts: KvServiceOptions = {}): KvServiceHandle {
  const svc = new KvService(backend, opts);
  const { kv, cluster } = svc.handlers();
  server.addService(kvServiceDefinition, kv);
  server.addService(clusterServiceDefinition, cluster);
  return svc;
}

/** Options of {@link createGrpcServer}. */
export interface KvGrpcServerOptions extends grpc.ServerOptions {
  /** Largest accepted request message (default {@link DEFAULT_MAX_REQUEST_BYTES}); larger ones fail with RESOURCE_EXHAUSTED. */
  readonly maxRequestBytes?: number;
}

/**
 * Builds a grpc.Server whose request size limit is etcd's 1.5 MiB (so oversized requests get
 * RESOURCE_EXHAUSTED) and whose connections may each have at most {@link MAX_CONCURRENT_STREAMS}
 * calls open at once (both overridable through `options`).
 */
export function createGrpcServer(options: KvGrpcServerOptions = {}): grpc.Server {
  const { maxRequestBytes, ...rest } = options;
  return new grpc.Server({
    'grpc.max_receive_message_length': maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES,
    'grpc.max_concurrent_streams': MAX_CONCURRENT_STREAMS,
    ...rest,
  });
}

/** A started kvcascade client-API server. */
export interface RunningKvServer {
  readonly server: grpc.Server;
  /** The bound port. */
  readonly port: number;
  /** host:port clients connect to. */
  readonly address: string;
  readonly service: KvServiceHandle;
  /** Ends streams, then shuts down gracefully, forcing after `graceMs` (default 1000). */
  close(graceMs?: number): Promise<void>;
}

/** Options of {@link startKvServer}. */
export interface StartKvServerOptions {
  /** Bind address, e.g. "127.0.0.1:0" (default) or "0.0.0.0:7001". */
  readonly bind?: string;
  /** Address advertised as `selfAddress` (default: the bind host with the bound port). */
  readonly advertise?: string;
  readonly credentials?: grpc.ServerCredentials;
  readonly server?: KvGrpcServerOptions;
  readonly service?: Omit<KvServiceOptions, 'selfAddress'>;
}

/** Creates a server, registers the services over `backend`, binds and starts it. */
export async function startKvServer(backend: KvBackend, options: StartKvServerOptions = {}): Promise<RunningKvServer> {
  const bind = options.bind ?? '127.0.0.1:0';
  const server = createGrpcServer(options.server);
  let address = options.advertise;
  const service = addKvServices(server, backend, { ...options.service, selfAddress: () => address });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(bind, options.credentials ?? grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const host = bind.slice(0, bind.lastIndexOf(':'));
  address ??= `${host === '0.0.0.0' || host === '[::]' || host === '' ? '127.0.0.1' : host}:${port}`;
  const advertised = address;
  return {
    server,
    port,
    address: advertised,
    service,
    close: (graceMs = 1000) =>
      new Promise<void>((resolve) => {
        service.close();
        const timer = setTimeout(() => server.forceShutdown(), graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}
