/** The gRPC KV and Cluster services over a KvBackend: request validation, error-to-status mapping, leader forwarding, watches and pipelining. */
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import {
  CompactedRevisionError,
  MAX_LIST_LIMIT,
  ValidationError,
  type DeleteResult,
  type KvEvent,
  type PutResult,
} from '../statemachine/index.js';
import {
  DeadlineError,
  NotLeaderError,
  OverloadedError,
  UnavailableError,
  type CallOptions,
  type Consistency,
  type DeleteRequest,
  type GetRequest,
  type GetResponse,
  type KvBackend,
  type ListRequest,
  type ListResponse,
  type NodeStatusInfo,
  type PutRequest,
  type TriggerRequest,
  type TriggerResponse,
  type WatchHandle,
  type WatchRequest,
  type WatchSink,
} from '../node/backend.js';
import {
  META_FORWARDED,
  kvMetadata,
  metaString,
  neverReachedServer,
  readKvMetadata,
  type KvMetadataFields,
} from './metadata.js';
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
  type KeyValueMsg,
  type KvServiceHandlers,
  type KvStub,
  type ListRequestMsg,
  type ListResponseMsg,
  type PipelineRequestMsg,
  type PipelineResponseMsg,
  type PutRequestMsg,
  type PutResponseMsg,
  type StatusResponseMsg,
  type TriggerRequestMsg,
  type TriggerResponseMsg,
  type WatchRequestMsg,
  type WatchResponseMsg,
} from './proto.js';
import {
  checkInt,
  checkKey,
  checkPrefix,
  checkTrigger,
  checkUint,
  checkValue,
  decodePageToken,
  encodePageToken,
} from './request-validation.js';

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
  /** The current leader's client-API address, if the host knows it (preferred over what the service infers). */
  readonly leaderAddress?: () => string | undefined;
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
}

/** What {@link addKvServices} returns. */
export interface KvServiceHandle {
  /** The leader address the service currently reports in `kv-leader` (undefined when unknown). */
  readonly leaderHint: string | undefined;
  /** Ends running watches and pipelines with UNAVAILABLE and closes the forwarding channels. Call before shutting the server down. */
  close(): void;
}

type UnaryOp = 'put' | 'get' | 'delete' | 'trigger' | 'list';
type RequestOf<O extends UnaryOp> = {
  put: PutRequestMsg;
  get: GetRequestMsg;
  delete: DeleteRequestMsg;
  trigger: TriggerRequestMsg;
  list: ListRequestMsg;
}[O];
type ResponseOf<O extends UnaryOp> = {
  put: PutResponseMsg;
  get: GetResponseMsg;
  delete: DeleteResponseMsg;
  trigger: TriggerResponseMsg;
  list: ListResponseMsg;
}[O];

interface OpContext {
  /** The call arrived with `kv-forwarded: 1`. */
  readonly forwarded: boolean;
  /** Absolute deadline, ms since the epoch. */
  readonly deadlineMs: number;
  /** Registers a callback run if the client cancels the call. */
  readonly onCancel?: (fn: () => void) => void;
}

interface OpOutcome<R> {
  readonly response: R;
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

  toServiceError(extraLeader: string | undefined): grpc.ServerErrorResponse {
    const metadata = kvMetadata({ leader: extraLeader, ...stripUndefined(this.fields) });
    return Object.assign(new Error(this.message), { code: this.code, details: this.message, metadata });
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
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
  };
  return m.pageToken ? { ...base, after: decodePageToken(m.pageToken, prefix) } : base;
}

function toWatchRequest(m: WatchRequestMsg): WatchRequest {
  const prefix = checkPrefix(m.prefix ?? '');
  const fromRevision = checkUint(m.fromRevision ?? 0, 'from_revision');
  const interval = checkUint(m.progressIntervalMs ?? 0, 'progress_interval_ms');
  return {
    prefix,
    fromRevision,
    progressIntervalMs: interval === 0 ? 1000 : Math.max(MIN_PROGRESS_INTERVAL_MS, interval),
  };
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

const ITEM_OVERHEAD_BYTES = 32;

function listResponse(r: ListResponse, budget: number): ListResponseMsg {
  const items: KeyValueMsg[] = [];
  let bytes = 0;
  let truncated = false;
  for (const it of r.items) {
    const size = Buffer.byteLength(it.key) + (it.value?.length ?? 0) + ITEM_OVERHEAD_BYTES;
    if (items.length > 0 && bytes + size > budget) {
      truncated = true;
      break;
    }
    bytes += size;
    items.push({ key: it.key, value: it.value ?? EMPTY, version: it.version, timestampMs: it.timestampMs });
  }
  const nextAfter = truncated ? items[items.length - 1]!.key : r.nextAfter;
  return { items, nextPageToken: nextAfter === undefined ? '' : encodePageToken(nextAfter), revision: r.revision };
}

function statusResponse(s: NodeStatusInfo): StatusResponseMsg {
  return {
    nodeId: s.nodeId,
    version: s.version,
    groups: s.groups.map((g) => ({
      group: g.group,
      leader: g.leader,
      term: g.term,
      role: g.role,
      commitIndex: g.commitIndex,
      appliedIndex: g.appliedIndex,
      firstIndex: g.firstIndex,
      lastIndex: g.lastIndex,
      voters: [...g.voters],
      learners: [...g.learners],
      revision: g.revision,
    })),
    members: s.members.map((m) => ({ id: m.id, address: m.address })),
  };
}

function eventBytesOf(e: KvEvent): number {
  return Buffer.byteLength(e.key) + (e.value?.length ?? 0) + ITEM_OVERHEAD_BYTES;
}

function eventMsg(e: KvEvent): EventMsg {
  return {
    type: e.type === 'delete' ? 'DELETE' : e.type === 'trigger' ? 'TRIGGER' : 'PUT',
    key: e.key,
    value: e.type === 'delete' ? EMPTY : (e.value ?? EMPTY),
    revision: e.revision,
    timestampMs: e.timestampMs,
  };
}

/**
 * Splits events (whole revisions, in order) into responses of at most `budget` bytes, never
 * splitting a revision. Each chunk's `revision` is its last event's revision, except the last
 * chunk, which gets `finalRevision`.
 */
function chunkEvents(events: readonly KvEvent[], finalRevision: number, budget: number): WatchResponseMsg[] {
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
    for (let k = i; k < j; k++) chunk.push(eventMsg(events[k]!));
    bytes += groupBytes;
    i = j;
  }
  const last = chunk.length > 0 ? chunk[chunk.length - 1]!.revision! : 0;
  out.push({ events: chunk, revision: Math.max(finalRevision, last) });
  return out;
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

class KvService implements KvServiceHandle {
  private readonly log: KvServiceLogger;
  private readonly defaultDeadlineMs: number;
  private readonly maxInFlight: number;
  private readonly maxPendingWatch: number;
  private readonly maxResponseBytes: number;
  private readonly stubs = new Map<string, KvStub>();
  private readonly closers = new Set<() => void>();
  private leaderCache: string | undefined;
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
  }

  get leaderHint(): string | undefined {
    return this.opts.leaderAddress?.() ?? this.leaderCache;
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

  // ---- core -----------------------------------------------------------------------------------

  private context(call: AnyServerCall): OpContext {
    const forwarded = metaString(call.metadata, META_FORWARDED) === '1';
    const clientDeadline = deadlineOf(call);
    const deadlineMs = Number.isFinite(clientDeadline) ? clientDeadline : Date.now() + this.defaultDeadlineMs;
    return { forwarded, deadlineMs, onCancel: (fn) => call.on('cancelled', fn) };
  }

  /** Maps any failure to the status to send; unknown errors become INTERNAL and are logged. */
  private toStatus(e: unknown, what: string): OpStatus {
    if (e instanceof OpStatus) return e;
    if (e instanceof ValidationError) return invalid(e.message);
    if (e instanceof CompactedRevisionError) {
      return new OpStatus(grpc.status.OUT_OF_RANGE, e.message, { compactRevision: e.oldestRevision, retrySafe: true });
    }
    if (e instanceof NotLeaderError) {
      return new OpStatus(grpc.status.UNAVAILABLE, e.message, { retrySafe: true, leader: e.leaderAddress });
    }
    if (e instanceof UnavailableError) return new OpStatus(grpc.status.UNAVAILABLE, e.message);
    if (e instanceof DeadlineError) return new OpStatus(grpc.status.DEADLINE_EXCEEDED, e.message);
    if (e instanceof OverloadedError) return new OpStatus(grpc.status.RESOURCE_EXHAUSTED, e.message, { retrySafe: true });
    this.log.error({ err: e, op: what }, 'internal error in kv service');
    return new OpStatus(grpc.status.INTERNAL, 'internal server error');
  }

  private backendCall<O extends UnaryOp>(op: O, m: RequestOf<O>, opts: CallOptions): Promise<ResponseOf<O>> {
    const b = this.backend;
    switch (op) {
      case 'put':
        return b.put(toPutRequest(m as PutRequestMsg), opts).then(putResponse) as Promise<ResponseOf<O>>;
      case 'get':
        return b.get(toGetRequest(m as GetRequestMsg), opts).then(getResponse) as Promise<ResponseOf<O>>;
      case 'delete':
        return b.delete(toDeleteRequest(m as DeleteRequestMsg), opts).then(deleteResponse) as Promise<ResponseOf<O>>;
      case 'trigger':
        return b.trigger(toTriggerRequest(m as TriggerRequestMsg), opts).then(triggerResponse) as Promise<ResponseOf<O>>;
      default: {
        const budget = this.maxResponseBytes;
        return b.list(toListRequest(m as ListRequestMsg), opts).then((r) => listResponse(r, budget)) as Promise<ResponseOf<O>>;
      }
    }
  }

  /** Runs one op: validate, call the backend, forward to the leader on NotLeaderError. Throws OpStatus. */
  private async execute<O extends UnaryOp>(op: O, m: RequestOf<O>, ctx: OpContext, badUtf8?: string): Promise<OpOutcome<ResponseOf<O>>> {
    try {
      const bad = badUtf8 ?? invalidUtf8Field(m);
      if (bad !== undefined) throw invalid(`${bad} is not valid UTF-8`);
      if (this.closed) throw new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down', { retrySafe: true });
      const deadlineMs = ctx.deadlineMs;
      const response = await withDeadline(() => this.backendCall(op, m, { deadlineMs }), deadlineMs);
      // Only the leader applies writes: any other cached leader is stale (unknown if we do not know our own address).
      if (op === 'put' || op === 'delete' || op === 'trigger') this.leaderCache = this.self;
      return { response, leader: this.leaderHint };
    } catch (e) {
      if (e instanceof NotLeaderError) {
        this.leaderCache = e.leaderAddress;
        const target = e.leaderAddress;
        if (target && !ctx.forwarded && target !== this.self) return this.forward(op, m, ctx, target);
        const why = ctx.forwarded ? `forwarded request reached a non-leader: ${e.message}` : e.message;
        throw new OpStatus(grpc.status.UNAVAILABLE, why, { retrySafe: true, leader: target });
      }
      throw this.toStatus(e, op);
    }
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

  /** Status for a forwarded call's failure: relays the leader's status and kvcascade metadata. */
  private forwardFailure(err: grpc.ServiceError, target: string): OpStatus {
    if (neverReachedServer(err)) {
      if (this.leaderCache === target) this.leaderCache = undefined;
      return new OpStatus(grpc.status.UNAVAILABLE, `leader ${target} unreachable: ${err.details}`, { retrySafe: true });
    }
    const f = readKvMetadata(err.metadata);
    if (f.leader !== undefined) this.leaderCache = f.leader;
    return new OpStatus(err.code, err.details, {
      leader: f.leader,
      retrySafe: f.retrySafe || undefined,
      compactRevision: f.compactRevision,
    });
  }

  private forward<O extends UnaryOp>(op: O, m: RequestOf<O>, ctx: OpContext, target: string): Promise<OpOutcome<ResponseOf<O>>> {
    if (this.closed) return Promise.reject(new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down', { retrySafe: true }));
    this.log.debug({ op, target }, 'forwarding to leader');
    const md = new grpc.Metadata();
    md.set(META_FORWARDED, '1');
    return new Promise((resolve, reject) => {
      let response: ResponseOf<O> | undefined;
      let error: grpc.ServiceError | null = null;
      const method = this.stub(target)[op] as unknown as (
        req: RequestOf<O>,
        md: grpc.Metadata,
        o: Partial<grpc.CallOptions>,
        cb: (err: grpc.ServiceError | null, res?: ResponseOf<O>) => void,
      ) => grpc.ClientUnaryCall;
      const call = method.call(this.stub(target), m, md, { deadline: new Date(ctx.deadlineMs) }, (err, res) => {
        error = err;
        response = res;
      });
      ctx.onCancel?.(() => call.cancel());
      call.on('status', (status: grpc.StatusObject) => {
        if (error || response === undefined) {
          reject(this.forwardFailure(error ?? Object.assign(new Error(status.details), status), target));
          return;
        }
        const leader = readKvMetadata(status.metadata).leader ?? target;
        this.leaderCache = leader;
        resolve({ response, leader });
      });
    });
  }

  // ---- unary handlers -------------------------------------------------------------------------

  private unary<O extends UnaryOp>(op: O): grpc.handleUnaryCall<RequestOf<O>, ResponseOf<O>> {
    return (call, callback) => {
      let ctx: OpContext;
      try {
        ctx = this.context(call);
      } catch (e) {
        callback(this.toStatus(e, op).toServiceError(undefined));
        return;
      }
      this.execute(op, call.request, ctx).then(
        (out) => callback(null, out.response, kvMetadata({ leader: out.leader })),
        (e: unknown) => {
          const s = this.toStatus(e, op);
          callback(s.toServiceError(s.fields.leader === undefined ? this.leaderHint : undefined));
        },
      );
    };
  }

  private status: grpc.handleUnaryCall<object, StatusResponseMsg> = (call, callback) => {
    const deadlineMs = Number.isFinite(deadlineOf(call)) ? deadlineOf(call) : Date.now() + this.defaultDeadlineMs;
    withDeadline(() => this.backend.status(), deadlineMs)
      .then(statusResponse)
      .then(
        (res) => callback(null, res, kvMetadata({ leader: this.leaderHint })),
        (e: unknown) => callback(this.toStatus(e, 'status').toServiceError(this.leaderHint)),
      );
  };

  // ---- watch ----------------------------------------------------------------------------------

  private watch: grpc.handleServerStreamingCall<WatchRequestMsg, WatchResponseMsg> = (call) => {
    call.on('error', () => undefined); // write-after-end and the like must never crash the process
    let finished = false;
    let handle: WatchHandle | undefined;
    let backendEnded = false;
    let lastRevision = 0;
    let upstream: grpc.ClientReadableStream<WatchResponseMsg> | undefined;

    const finish = (status?: OpStatus): void => {
      if (finished) return;
      finished = true;
      this.closers.delete(onClose);
      if (handle && !backendEnded) {
        try {
          handle.cancel();
        } catch (e) {
          this.log.warn({ err: e }, 'watch cancel failed');
        }
      }
      upstream?.cancel();
      if (call.cancelled) return;
      if (status) call.emit('error', status.toServiceError(status.fields.leader === undefined ? this.leaderHint : undefined));
      else call.end(kvMetadata({ leader: this.leaderHint }));
    };
    const onClose = (): void => finish(new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down'));

    const write = (msg: WatchResponseMsg): void => {
      if (finished) return;
      call.write(msg);
      if (msg.revision !== undefined && msg.revision > lastRevision) lastRevision = msg.revision;
      if (call.writableLength > this.maxPendingWatch && !finished) {
        // The client is not reading: tell it to resume later; finish() stops the backend watch
        // (or, if the backend is still inside watch(), the check after it returns does).
        call.write({
          canceled: true,
          cancelReason: `watcher too slow: ${call.writableLength} responses unsent`,
          revision: lastRevision,
        });
        finish();
      }
    };

    // Besides the WatchSink methods, the sink reports back-pressure (`writable`/`onDrain`, optional
    // capabilities a backend may use to stop feeding a watcher whose client is not reading).
    const sink: WatchSink & { writable(): boolean; onDrain(cb: () => void): void } = {
      writable: () => !finished && !call.writableNeedDrain,
      onDrain: (cb) => {
        if (!call.writableNeedDrain) queueMicrotask(cb);
        else call.once('drain', cb);
      },
      events: (events, revision) => {
        if (finished) return;
        try {
          if (events.length === 0) {
            write({ progressNotify: true, revision });
            return;
          }
          // Puts, deletes and trigger puts alike; chunkEvents never splits a revision.
          for (const r of chunkEvents(events, revision, this.maxResponseBytes)) write(r);
        } catch (e) {
          finish(this.toStatus(e, 'watch'));
        }
      },
      progress: (revision) => write({ progressNotify: true, revision }),
      canceled: (reason, compactRevision) => {
        if (finished) return;
        backendEnded = true;
        call.write({
          canceled: true,
          cancelReason: reason,
          compactRevision: compactRevision ?? 0,
          revision: lastRevision,
        });
        finish();
      },
    };

    call.on('cancelled', () => finish());
    this.closers.add(onClose);
    if (this.closed) return onClose();

    let req: WatchRequest;
    try {
      const bad = invalidUtf8Field(call.request);
      if (bad !== undefined) throw invalid(`${bad} is not valid UTF-8`);
      req = toWatchRequest(call.request);
    } catch (e) {
      return finish(this.toStatus(e, 'watch'));
    }
    call.sendMetadata(kvMetadata({ leader: this.leaderHint }));
    try {
      handle = this.backend.watch(req, sink);
      if (finished && !backendEnded) handle.cancel();
    } catch (e) {
      const forwarded = metaString(call.metadata, META_FORWARDED) === '1';
      if (e instanceof NotLeaderError && e.leaderAddress && !forwarded && e.leaderAddress !== this.self) {
        this.leaderCache = e.leaderAddress;
        upstream = this.forwardWatch(call, e.leaderAddress, finish, write);
        return;
      }
      // E.g. CompactedRevisionError: OUT_OF_RANGE with kv-compact-revision.
      return finish(this.toStatus(e, 'watch'));
    }
  };

  private forwardWatch(
    call: grpc.ServerWritableStream<WatchRequestMsg, WatchResponseMsg>,
    target: string,
    finish: (s?: OpStatus) => void,
    write: (m: WatchResponseMsg) => void,
  ): grpc.ClientReadableStream<WatchResponseMsg> {
    const md = new grpc.Metadata();
    md.set(META_FORWARDED, '1');
    const up = this.stub(target).watch(call.request, md, {});
    up.on('data', (m: WatchResponseMsg) => write(m));
    up.on('error', (err: grpc.ServiceError) => {
      if (err.code === grpc.status.CANCELLED && call.cancelled) return;
      finish(this.forwardFailure(err, target));
    });
    up.on('end', () => finish());
    return up;
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
    const forwarded = metaString(call.metadata, META_FORWARDED) === '1';
    const streamDeadline = deadlineOf(call);
    let inFlight = 0;
    let paused = false;
    let readEnded = false;
    let done = false;
    const onClose = (): void => {
      if (done) return;
      done = true;
      call.emit('error', new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down').toServiceError(this.leaderHint));
    };
    const stop = (): void => {
      done = true;
      this.closers.delete(onClose);
    };
    const maybeEnd = (): void => {
      if (readEnded && inFlight === 0 && !done) {
        stop();
        call.end(kvMetadata({ leader: this.leaderHint }));
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
    call.sendMetadata(kvMetadata({ leader: this.leaderHint }));
    call.on('data', (req: PipelineRequestMsg) => {
      if (done) return;
      inFlight++;
      if (inFlight >= this.maxInFlight && !paused) {
        paused = true;
        call.pause();
      }
      const ctx: OpContext = { forwarded, deadlineMs: Math.min(streamDeadline, Date.now() + this.defaultDeadlineMs) };
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
        watch: this.watch,
        pipeline: this.pipeline,
      },
      cluster: { status: this.status },
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

/** Builds a grpc.Server whose request size limit is etcd's 1.5 MiB (so oversized requests get RESOURCE_EXHAUSTED). */
export function createGrpcServer(options: KvGrpcServerOptions = {}): grpc.Server {
  const { maxRequestBytes, ...rest } = options;
  return new grpc.Server({
    'grpc.max_receive_message_length': maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES,
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
