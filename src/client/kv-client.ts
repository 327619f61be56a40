/** The kvcascade client: key-value calls and transactions routed to their shard's leader, with failover and safe retries, self-resuming watches and pipelining. */
import { LoginCredentials, login } from './auth-client.js';
import * as grpc from '@grpc/grpc-js';
import type {
  DeleteRequestMsg,
  DeleteResponseMsg,
  GetRequestMsg,
  GetResponseMsg,
  ListRequestMsg,
  ListResponseMsg,
  PutRequestMsg,
  PutResponseMsg,
  StatusResponseMsg,
  TriggerRequestMsg,
  TriggerResponseMsg,
  TxnRequestMsg,
  TxnResponseMsg,
  TxnWriteMsg,
} from '../wire/proto.js';
import type { ClusterMap } from '../sharding/types.js';
import { KvError } from './errors.js';
import { KvPipeline } from './pipeline.js';
import { LeaseClient } from './lease-client.js';
import { DEFAULT_ROUTER_OPTIONS, ShardRouter } from './router.js';
import { NOOP_LOGGER, Transport, type AttemptCarrier, type CallKind, type KvClientLogger, type KvClientTlsOptions } from './transport.js';
import {
  deleteResult,
  getResult,
  listResult,
  localKey,
  localPrefix,
  localUint,
  localValue,
  nodeStatus,
  putResult,
  triggerResult,
  txnResult,
  type KvDeleteOptions,
  type KvDeleteResult,
  type KvGetOptions,
  type KvGetResult,
  type KvItem,
  type KvListOptions,
  type KvListResult,
  type KvNodeStatus,
  type KvPutOptions,
  type KvPutResult,
  type KvTriggerOptions,
  type KvTriggerResult,
  type KvTxn,
  type KvTxnOptions,
  type KvTxnResult,
  type KvWatchOptions,
} from './types.js';
import { KvWatch } from './watch.js';
import { ClientSession } from './session.js';

/** Default timeout of a call, retries included. */
export const DEFAULT_CLIENT_DEADLINE_MS = 10_000;

/** Default time a call waits for a new connection before trying another node. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 1_000;

/**
 * Default longest time of one attempt of a retryable call before the client tries another node:
 * 1.5 × the default election timeout (10 ticks of 100 ms), so a frozen leader costs about one
 * election, not the whole deadline.
 */
export const DEFAULT_ATTEMPT_TIMEOUT_MS = 1_500;

/**
 * Largest request (key + value bytes) the default path batches on a node's stream; larger ones go
 * as unary calls, so a request over the servers' size bound fails alone (RESOURCE_EXHAUSTED) and
 * never takes a shared stream down with it.
 */
export const MAX_BATCHED_REQUEST_BYTES = 64 * 1024;

/** Options of {@link KvClient}. */
export interface KvClientOptions {
  /** Node addresses (host:port); calls go to the leader once known, else to these in turn. */
  readonly endpoints: readonly string[];
  /** Timeout of a call, retries included, when the call gives none (default 10 000 ms). */
  readonly defaultDeadlineMs?: number;
  /** TLS (default: plaintext). */
  readonly tls?: KvClientTlsOptions;
  /** Most retries of one call (default: unlimited, bounded by the deadline). */
  readonly maxRetries?: number;
  /** Where retries and watch resumptions are logged (default: nowhere). */
  readonly log?: KvClientLogger;
  /** First retry backoff in ms (default 25; doubles per retry, with jitter). */
  readonly initialBackoffMs?: number;
  /** Largest retry backoff in ms (default 1000). */
  readonly maxBackoffMs?: number;
  /** Extra grpc-js channel options. */
  readonly channelOptions?: grpc.ChannelOptions;
  /**
   * How long a call waits for a new connection to a node to become ready before trying another
   * node (default 1000 ms; 0 = as long as the deadline allows). Such a call was never sent, so
   * even a write moves on safely: a frozen or partitioned node costs this much, not the deadline.
   */
  readonly connectTimeoutMs?: number;
  /**
   * Route each key-addressed call straight to its shard's leader using the cluster map (default
   * true). False, or against servers without Cluster.GetShardMap: every call goes to the single
   * leader the servers last named, and they forward it.
   */
  readonly shardRouting?: boolean;
  /** Least time between two cluster map refreshes in ms (default 200). */
  readonly mapRefreshIntervalMs?: number;
  /**
   * Longest time one attempt of a read (or of a write that is safe to repeat) waits for a node
   * before trying another, within the call's deadline (default {@link DEFAULT_ATTEMPT_TIMEOUT_MS};
   * 0 = one attempt may use the whole deadline). Set it above the cluster's election timeout.
   * A node whose attempt timed out is avoided by new calls until it answers a probe.
   */
  readonly attemptTimeoutMs?: number;
  /**
   * Fail a call at once, UNAVAILABLE ("no node answered at ..."), when every endpoint refused its
   * connection twice (nothing listens: a stopped cluster), instead of retrying until the deadline
   * (default false: an application rides out a whole-cluster restart; kvctl sets it).
   */
  readonly failFastWhenNoNodeListens?: boolean;
  /**
   * Give every write a client session (default true): each put, delete, trigger and txn carries
   * this client's session id and a sequence number, so it is retried after a failed or timed-out
   * attempt and still applied once (see docs/sessions.md). False: a write is retried only when the
   * servers say it was not executed, and a lost response leaves its outcome unknown.
   */
  readonly sessions?: boolean;
  /**
   * The cluster's admin token, sent with every KV call as `authorization: Bearer <token>`. Only
   * needed to read dead letters (`list('/_dlq/<extension>/')`, a watch or get under `/_dlq/`):
   * the rest of the reserved keyspace (`/_...`, `/ext/`) is refused (PERMISSION_DENIED) to every
   * client, and dead letters are never writable. Over plaintext it travels in the clear: use TLS.
   */
  readonly adminToken?: string;
  /**
   * Access control: log in as this user with `password` (the client logs in before its first
   * call and again before the token expires). Over plaintext the password and token travel in
   * the clear: use TLS.
   */
  readonly user?: string;
  /** The password of `user`. */
  readonly password?: string;
  /** Access control: a token got elsewhere (`kvctl auth login`, AuthClient.authenticate); not renewed. */
  readonly token?: string;
  /**
   * Batch concurrent calls (default true): while other put, get or delete calls of this client
   * are in flight, a new one is sent on the client's long-lived Pipeline stream to its shard
   * leader's node rather than as a unary call, so concurrent calls share HTTP/2 messages and the
   * per-call header and interceptor work. A lone call goes on that stream too (a write one
   * attempt at a time, inside the unary call's retry loop). False: every call is a unary call.
   * Guarantees are those of the unary calls: deadlines, retries (sessions), failover, auth.
   */
  readonly batching?: boolean;
}

/**
 * A kvcascade client. It fetches the cluster map (Cluster.GetShardMap) on first use and sends
 * each key-addressed call to the leader of the key's shard, learned from `kv-leader`/`kv-shard`
 * response metadata; it refreshes the map when a response names a newer `kv-map-epoch` or a call
 * reached the wrong shard. Without a map (older servers) it keeps one leader hint for
 * everything. On UNAVAILABLE or connection failure it moves on (to the shard's next replica or
 * the next endpoint) with exponential backoff until the call's deadline. Reads are always
 * retried; writes only when the server marked the failure `kv-retry-safe` or the call never
 * reached a server. Errors are {@link KvError}s.
 */
export class KvClient {
  private readonly transport: Transport;
  private leaseClient: LeaseClient | undefined;
  private readonly leaseOptions: ConstructorParameters<typeof LeaseClient>[0];
  private readonly router: ShardRouter;
  private readonly defaultDeadlineMs: number;

  /** The write session (absent when disabled with `sessions: false`). */
  private readonly session: ClientSession | undefined;

  /** Whether concurrent put/get/delete calls are batched on Pipeline streams. */
  private batching: boolean;
  /** The stream(s) concurrent calls are batched on (created on first use). */
  private batcher: KvPipeline | undefined;
  /** put/get/delete calls in flight (unary or batched). */
  private inFlight = 0;
  /**
   * A batched call completed during this event-loop turn. The calls its completion triggers are
   * batched too: the answers of a batch arrive together, so every call of it may have finished
   * before the first caller makes its next call, and that call would otherwise go unary.
   */
  private batchedThisTurn = false;

  /**
   * Runs a put, get or delete of the default path: as a unary call when it is the only one in
   * flight (or is large), else batched on the shard leader's stream.
   */
  private async keyedOp<Res, R>(op: 'put' | 'get' | 'delete', req: PutRequestMsg | GetRequestMsg | DeleteRequestMsg, deadlineAt: number, size: number, convert: (res: Res) => R): Promise<R> {
    // Logged in before any stream opens (a stream carries the token it was opened with).
    const auth = this.transport.authReady(deadlineAt);
    if (auth) await auth;
    // A read goes on the stream even alone (no per-call HTTP/2 work: a lone get's latency is about a
    // third of a unary one's); a write alone goes on the stream too, one attempt at a time under the
    // unary call's retry and failover rules (see write()).
    const batched = this.batching && (op === 'get' || this.inFlight > 0 || this.batchedThisTurn) && size <= MAX_BATCHED_REQUEST_BYTES;
    this.inFlight++;
    try {
      if (batched) {
        this.batcher ??= this.pipeline();
        if (this.batcher.unsupported) this.batching = false;
        else return await this.batcher.send(op, req, deadlineAt, (res) => convert(res as Res));
      }
      const res = op === 'get'
        ? await this.keyed<GetRequestMsg, Res>('get', req as GetRequestMsg, 'read', deadlineAt, req.key)
        : await this.write<typeof req, Res>(op, req, deadlineAt, req.key, this.carrier(size));
      return convert(res);
    } finally {
      this.inFlight--;
      if (batched && !this.batchedThisTurn) {
        this.batchedThisTurn = true;
        setImmediate(() => (this.batchedThisTurn = false));
      }
    }
  }

  /**
   * Where the attempts of a lone write of `size` bytes go: the shard leader's stream (the
   * batcher, as a carrier of single attempts), or undefined (unary calls: batching off, a large
   * request, or servers without the Pipeline method).
   */
  private carrier(size: number): AttemptCarrier | undefined {
    if (!this.batching || size > MAX_BATCHED_REQUEST_BYTES) return undefined;
    this.batcher ??= this.pipeline();
    if (!this.batcher.unsupported) return this.batcher;
    this.batching = false;
    return undefined;
  }

  /**
   * Runs a write: with a session, it carries (session id, seq) and is retried like a read (the
   * servers apply it at most once); without one, it is retried only when provably not executed.
   * With a `carrier`, its attempts go on the shard leader's stream under those same rules: one
   * session id and seq for every attempt, the same attempt bound and timeout, the same
   * classification of errors (the per-op errors carry the unary trailers' fields), and a stream
   * that breaks under it counts as a unary call that failed with UNAVAILABLE.
   */
  private async write<Req extends object, Res>(method: 'put' | 'delete' | 'trigger' | 'txn', req: Req, deadlineAt: number, key: string | undefined, carrier?: AttemptCarrier): Promise<Res> {
    const s = this.session?.begin();
    try {
      return await this.keyed<Req, Res>(method, s ? { ...req, session: s.wire } : req, s ? 'session-write' : 'write', deadlineAt, key, carrier);
    } finally {
      s?.end();
    }
  }

  /** Creates a client; connections are made lazily. */
  constructor(opts: KvClientOptions) {
    this.defaultDeadlineMs = opts.defaultDeadlineMs ?? DEFAULT_CLIENT_DEADLINE_MS;
    this.session = opts.sessions === false ? undefined : new ClientSession();
    this.batching = opts.batching !== false;
    const token = opts.token ?? opts.adminToken;
    this.leaseOptions = { endpoints: opts.endpoints, ...(this.session ? { session: this.session } : {}), ...(opts.attemptTimeoutMs !== undefined ? { attemptTimeoutMs: opts.attemptTimeoutMs } : {}), ...(opts.tls ? { tls: opts.tls } : {}), ...(token !== undefined ? { token } : {}), ...(opts.user !== undefined ? { user: opts.user, password: opts.password ?? '' } : {}) };
    this.transport = new Transport({
      endpoints: opts.endpoints,
      tls: opts.tls,
      maxRetries: opts.maxRetries ?? Number.POSITIVE_INFINITY,
      log: opts.log ?? NOOP_LOGGER,
      initialBackoffMs: opts.initialBackoffMs ?? 25,
      maxBackoffMs: opts.maxBackoffMs ?? 1000,
      channelOptions: opts.channelOptions,
      connectTimeoutMs: opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      attemptTimeoutMs: opts.attemptTimeoutMs ?? DEFAULT_ATTEMPT_TIMEOUT_MS,
      adminToken: opts.token ?? opts.adminToken,
      ...(opts.user !== undefined
        ? {
            credentials: new LoginCredentials((deadlineAt) =>
              login(opts.endpoints, opts.user!, opts.password ?? '', { tls: opts.tls, deadlineAt }),
            ),
          }
        : {}),
      failFastWhenNoNodeListens: opts.failFastWhenNoNodeListens === true,
    });
    this.router = new ShardRouter(this.transport, {
      ...DEFAULT_ROUTER_OPTIONS,
      enabled: opts.shardRouting !== false,
      ...(opts.mapRefreshIntervalMs !== undefined ? { refreshIntervalMs: opts.mapRefreshIntervalMs } : {}),
    });
    this.transport.observer = this.router;
  }

  /**
   * Nodes this client avoids because an attempt to them timed out and they have not answered a
   * probe since (diagnostics: a frozen or cut-off node shows up here).
   */
  suspectNodes(): string[] {
    return this.transport.suspectAddresses();
  }

  /** The leader address the servers last named (of whichever shard served), if any. */
  get leader(): string | undefined {
    return this.transport.leader;
  }

  /** The epoch of the cached cluster map (0 before one was fetched, or when the servers have none). */
  get mapEpoch(): number {
    return this.router.epoch;
  }

  /** Where a call for `key` would go now: its shard (undefined without a usable map) and address. */
  routeOf(key: string): { readonly shard: number | undefined; readonly address: string } {
    localKey(key);
    const shard = this.router.routing ? this.router.groupOf(key) : undefined;
    return { shard, address: (shard === undefined ? undefined : this.router.addressFor(shard)) ?? this.transport.leader ?? this.transport.pick() };
  }

  /** Sends a call addressed to `key` (or to no key: the default route) to its shard's leader, fetching the map first on first use. */
  private async keyed<Req, Res>(method: string, req: Req, kind: CallKind, deadlineAt: number, key: string | undefined, carrier?: AttemptCarrier): Promise<Res> {
    const wait = this.router.ready(deadlineAt);
    if (wait) await wait;
    const auth = this.transport.authReady(deadlineAt);
    if (auth) await auth;
    const route = key === undefined ? this.transport : this.router.keyRoute(key);
    return this.transport.unary<Req, Res>('kv', method, req, kind, deadlineAt, route, carrier);
  }

  private deadline(ms: number | undefined): number {
    const d = ms ?? this.defaultDeadlineMs;
    if (!(d > 0)) throw new KvError(grpc.status.INVALID_ARGUMENT, `deadlineMs must be positive, got ${d}`, { retrySafe: true });
    return Date.now() + d;
  }

  /** Writes `value` (a string is stored as UTF-8) under `key`; with `expectedVersion`, only if the key's version equals it (0 = absent). */
  async put(key: string, value: Uint8Array | string, opts: KvPutOptions = {}): Promise<KvPutResult> {
    this.transport.checkOpen();
    if (opts.lease !== undefined) return this.leases.put(localKey(key), value, { lease: opts.lease, ...(opts.expectedVersion !== undefined ? { expectedVersion: opts.expectedVersion } : {}), route: this.routeOf(key).address });
    const ev = localUint(opts.expectedVersion, 'expectedVersion');
    const req: PutRequestMsg = {
      key: localKey(key),
      value: localValue(value),
      returnCurrentValue: opts.returnCurrentValue === true,
      ...(ev !== undefined ? { expectedVersion: ev } : {}),
    };
    return this.keyedOp<PutResponseMsg, KvPutResult>('put', req, this.deadline(opts.deadlineMs), req.key!.length + req.value!.length, putResult);
  }

  /** Reads `key` (latest, or as of `atVersion` / `atTimeMs`); `found` tells whether it exists there. */
  async get(key: string, opts: KvGetOptions = {}): Promise<KvGetResult> {
    this.transport.checkOpen();
    if (opts.atVersion !== undefined && opts.atTimeMs !== undefined) {
      throw new KvError(grpc.status.INVALID_ARGUMENT, 'give at most one of atVersion and atTimeMs', { retrySafe: true });
    }
    if (opts.atTimeMs !== undefined && !Number.isSafeInteger(opts.atTimeMs)) {
      throw new KvError(grpc.status.INVALID_ARGUMENT, `atTimeMs must be an integer, got ${opts.atTimeMs}`, { retrySafe: true });
    }
    const req: GetRequestMsg = {
      key: localKey(key),
      consistency: opts.consistency === 'serializable' ? 'SERIALIZABLE' : 'LINEARIZABLE',
      ...(opts.atVersion !== undefined ? { atVersion: localUint(opts.atVersion, 'atVersion')! } : {}),
      ...(opts.atTimeMs !== undefined ? { atTimeMs: opts.atTimeMs } : {}),
    };
    // Reads of the past may fail with a compaction (CompactedError needs the unary trailers): unary.
    const size = opts.atVersion !== undefined || opts.atTimeMs !== undefined ? Infinity : req.key!.length;
    return this.keyedOp<GetResponseMsg, KvGetResult>('get', req, this.deadline(opts.deadlineMs), size, getResult);
  }

  /** Deletes `key` (conditionally with `expectedVersion`). */
  async delete(key: string, opts: KvDeleteOptions = {}): Promise<KvDeleteResult> {
    this.transport.checkOpen();
    const ev = localUint(opts.expectedVersion, 'expectedVersion');
    const req: DeleteRequestMsg = { key: localKey(key), ...(ev !== undefined ? { expectedVersion: ev } : {}) };
    return this.keyedOp<DeleteResponseMsg, KvDeleteResult>('delete', req, this.deadline(opts.deadlineMs), req.key!.length, deleteResult);
  }

  /**
   * Trigger put: fires the lambdas and watchers of `key`'s prefix with `value` (a string is sent
   * as UTF-8) without storing it; the key's value and version are unchanged. Retried like a put.
   */
  async trigger(key: string, value: Uint8Array | string, opts: KvTriggerOptions = {}): Promise<KvTriggerResult> {
    this.transport.checkOpen();
    const req: TriggerRequestMsg = { key: localKey(key), value: localValue(value) };
    const res = await this.write<TriggerRequestMsg, TriggerResponseMsg>('trigger', req, this.deadline(opts.deadlineMs), req.key, this.carrier(req.key!.length + req.value!.length));
    return triggerResult(res);
  }

  /**
   * Atomic multi-key operation inside one shard: if every compare holds (a key's current version
   * equals `version`, 0 = absent), applies every write at one new revision; else changes nothing
   * and lists the failed compares. Sent to the shard of the first key (compares first). Keys in
   * different shards fail with KvError INVALID_ARGUMENT (a pool's affinity keeps related keys in
   * one shard). Retried like a put.
   */
  async txn(txn: KvTxn, opts: KvTxnOptions = {}): Promise<KvTxnResult> {
    this.transport.checkOpen();
    const compares = (txn.compares ?? []).map((c) => {
      if (c.version === undefined) throw new KvError(grpc.status.INVALID_ARGUMENT, `compare of ${JSON.stringify(c.key)} has no version`, { retrySafe: true });
      return { key: localKey(c.key), version: localUint(c.version, 'version')! };
    });
    const writes = (txn.writes ?? []).map((w): TxnWriteMsg => {
      if (w.type === 'put') return { put: { key: localKey(w.key), value: localValue(w.value) } };
      if (w.type === 'delete') return { delete: { key: localKey(w.key) } };
      throw new KvError(grpc.status.INVALID_ARGUMENT, `unknown txn write type ${JSON.stringify((w as { type?: unknown }).type)}`, { retrySafe: true });
    });
    const req: TxnRequestMsg = { compares, writes };
    const first = compares[0]?.key ?? writes[0]?.put?.key ?? writes[0]?.delete?.key;
    const size = writes.reduce((n, w) => n + (w.put ? w.put.key!.length + w.put.value!.length : (w.delete?.key?.length ?? 0)), 0) + compares.reduce((n, c) => n + c.key.length, 0);
    const res = await this.write<TxnRequestMsg, TxnResponseMsg>('txn', req, this.deadline(opts.deadlineMs), first, this.carrier(size));
    return txnResult(res);
  }

  /**
   * One page of the keys under `prefix`, in key order: of every shard the prefix spans (merged by
   * the server), or with `shard`, of exactly that shard (sent to its leader).
   */
  async list(prefix: string, opts: KvListOptions = {}): Promise<KvListResult> {
    this.transport.checkOpen();
    const shard = localUint(opts.shard, 'shard');
    const req: ListRequestMsg = {
      prefix: localPrefix(prefix),
      limit: localUint(opts.limit, 'limit') ?? 0,
      pageToken: opts.pageToken ?? '',
      keysOnly: opts.keysOnly === true,
      consistency: opts.consistency === 'serializable' ? 'SERIALIZABLE' : 'LINEARIZABLE',
      ...(shard !== undefined ? { shard } : {}),
    };
    const deadlineAt = this.deadline(opts.deadlineMs);
    let route: Transport | ReturnType<ShardRouter['groupRoute']> = this.transport;
    if (shard !== undefined) {
      const wait = this.router.ready(deadlineAt);
      if (wait) await wait;
      route = this.router.groupRoute(shard);
    }
    const res = await this.transport.unary<ListRequestMsg, ListResponseMsg>('kv', 'list', req, 'read', deadlineAt, route);
    return listResult(res);
  }

  /** Every key under `prefix`, fetching pages lazily (each page is a separate read, at its own revision). */
  async *listAll(prefix: string, opts: Omit<KvListOptions, 'pageToken'> = {}): AsyncGenerator<KvItem, void, undefined> {
    let pageToken = '';
    do {
      const page = await this.list(prefix, { ...opts, pageToken });
      yield* page.items;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /**
   * Watches changes under `prefix` (in every shard it spans, or only in `shard`) from
   * `fromRevision`, or from a previous watch's `resumeToken`, by default after the current
   * revision(s), read when `watch` is called. The returned iterator resumes by itself after
   * failures (see {@link KvWatch}).
   */
  watch(prefix: string, opts: KvWatchOptions = {}): KvWatch {
    this.transport.checkOpen();
    localPrefix(prefix);
    if (opts.fromRevision !== undefined) localUint(opts.fromRevision, 'fromRevision');
    const shard = localUint(opts.shard, 'shard');
    return new KvWatch(
      {
        transport: this.transport,
        route: () => (shard === undefined ? this.transport : this.router.groupRoute(shard)),
        currentRevision: async (p) => {
          const page = await this.list(p, { limit: 1, keysOnly: true, ...(shard !== undefined ? { shard } : {}) });
          // A listing over several shards has no single revision, but each shard's.
          const revs = Object.entries(page.shardRevisions).map(([g, r]) => [Number(g), r] as const);
          return revs.length > 1 ? { shardRevisions: new Map(revs) } : { revision: page.revision };
        },
      },
      prefix,
      opts,
    );
  }

  /** A pipeline: many ops in flight, on one stream per node leading the ops' shards. Close it when done. */
  pipeline(): KvPipeline {
    this.transport.checkOpen();
    return new KvPipeline({
      transport: this.transport,
      router: this.router,
      defaultDeadlineMs: this.defaultDeadlineMs,
      ...(this.session ? { session: this.session } : {}),
      unary: <Res>(op: 'put' | 'get' | 'delete' | 'trigger', req: { key?: string; session?: unknown }, deadlineAt: number) =>
        this.keyed<typeof req, Res>(op, req, op === 'get' ? 'read' : req.session ? 'session-write' : 'write', deadlineAt, req.key),
    });
  }

  /** Status of the node at `endpoint` (exactly that node, one attempt), or of any reachable node. */
  async status(endpoint?: string, opts: { deadlineMs?: number } = {}): Promise<KvNodeStatus> {
    this.transport.checkOpen();
    const res = await this.transport.unary<object, StatusResponseMsg>(
      'cluster',
      'status',
      {},
      'read',
      this.deadline(opts.deadlineMs),
      endpoint,
    );
    return nodeStatus(res);
  }

  /**
   * Fetches the cluster map now (members, pools, shards and their placement), caches it for
   * routing if it is not older than the cached one, and returns the newest map known: a node
   * serving a map older than an epoch the client already saw (a lagging node, or one removed from
   * the cluster) is passed over for the next endpoint. Fails with KvError UNIMPLEMENTED against
   * servers without sharding.
   */
  async shardMap(opts: { deadlineMs?: number } = {}): Promise<ClusterMap> {
    this.transport.checkOpen();
    return this.router.fetch(this.deadline(opts.deadlineMs));
  }

  /** Leases (grant, keep-alive, revoke, time-to-live; a `lost` event when a kept-alive lease ends), on this client's endpoints and credentials. */
  get leases(): LeaseClient {
    this.leaseClient ??= new LeaseClient(this.leaseOptions);
    return this.leaseClient;
  }

  /** Closes every connection; running calls, watches and pipelines end with CANCELLED (watches end normally). */
  close(): void {
    this.leaseClient?.close();
    this.router.close();
    this.transport.close();
  }
}
