/**
 * The gRPC KV and Cluster services over a {@link Coordinator}: call metadata to routing context, failures to statuses with kvcascade metadata, watch and pipeline stream plumbing, and the handler table.
 *
 * Size: about 630 lines: one handler per RPC, each a short mapping onto the coordinator;
 * routing, forwarding and watch merging already live in src/coordinator.
 */
import * as grpc from '@grpc/grpc-js';
import { hidesReservedKeys } from '../sharding/index.js';
import type { KvBackend, WatchRequest } from '../node/backend.js';
import { META_HOPS, META_PIPELINE_BATCH, META_PIPELINE_TXN, forwardHops, metaString, kvMetadata } from '../wire/metadata.js';
import { AUTHORIZATION_METADATA, AdminTokenCheck } from '../wire/auth.js';
import { authorizePrefix, type AccessControl, type Principal } from '../auth/access-control.js';
import { authorizationOf, certNameOf, type CredentialCall } from './auth-service.js';
import {
  clusterServiceDefinition,
  invalidUtf8Field,
  kvServiceDefinition,
  MAX_PIPELINE_BATCH,
  type ClusterServiceHandlers,
  type GetShardMapRequestMsg,
  type GetShardMapResponseMsg,
  type KvServiceHandlers,
  type PipelineRequestMsg,
  type PipelineResponseMsg,
  type StatusRequestMsg,
  type StatusResponseMsg,
  type WatchRequestMsg,
  type WatchResponseMsg,
} from '../wire/proto.js';
import { decodeResumeToken } from '../wire/request-validation.js';
import { traceWrite } from '../write-trace.js';
import { statusToMsg } from '../wire/status-codec.js';
import { Coordinator, DEFAULT_FORWARD_ATTEMPT_MS, DEFAULT_MAX_RESPONSE_BYTES, withDeadline, type CoordinatorOptions, type RouteContext } from '../coordinator/coordinator.js';
import { LIST_FANOUT_CONCURRENCY } from '../coordinator/list-merge.js';
import { MIN_PROGRESS_INTERVAL_MS, guardPrefix, toWatchRequest, type RequestOf, type ResponseOf, type UnaryOp } from '../coordinator/messages.js';
import { OpStatus, invalid, type CoordinatorLogger } from '../coordinator/op-status.js';
import { MergedWatch, type WatchOutput } from '../coordinator/merged-watch.js';

export { DEFAULT_FORWARD_ATTEMPT_MS, DEFAULT_MAX_RESPONSE_BYTES, LIST_FANOUT_CONCURRENCY, MIN_PROGRESS_INTERVAL_MS };

/** etcd's default request size limit (1.5 MiB): larger requests fail with RESOURCE_EXHAUSTED before reaching a handler. */
export const DEFAULT_MAX_REQUEST_BYTES = 1.5 * 1024 * 1024;

/** Deadline applied to a call whose client set none. */
export const DEFAULT_CALL_DEADLINE_MS = 10_000;

/** Ops a single Pipeline stream may have in flight before the server stops reading it. */
export const DEFAULT_PIPELINE_MAX_IN_FLIGHT = 4096;

/** Watch responses a client may leave unread before the server cancels the watch as too slow. */
export const DEFAULT_WATCH_MAX_PENDING_RESPONSES = 1024;

/** HTTP/2 streams (calls) one client connection may have open at once on a server from {@link createGrpcServer}. */
export const MAX_CONCURRENT_STREAMS = 1000;

/**
 * Watches one client connection (as `call.getPeer()` names it) may have open at once; more fail
 * with RESOURCE_EXHAUSTED until one ends. Watches forwarded by other nodes (`kv-forwarded`) are
 * not counted: a node forwards all its clients' watches of a shard over one connection (they
 * are bounded by {@link MAX_CONCURRENT_STREAMS}).
 */
export const DEFAULT_MAX_WATCHES_PER_CONNECTION = 256;
/** The subset of a pino logger the services use (the coordinator's). */
export type KvServiceLogger = CoordinatorLogger;

/**
 * Options of {@link addKvServices}: the service's own, plus those of the coordinator it builds
 * when none is given (forwarding, leader hints, response size; see {@link CoordinatorOptions}).
 */
export interface KvServiceOptions extends Omit<CoordinatorOptions, 'stubs'> {
  /** Deadline of calls whose client set none (default {@link DEFAULT_CALL_DEADLINE_MS}). */
  readonly defaultDeadlineMs?: number;
  /** Ops per Pipeline stream in flight before reads pause (default {@link DEFAULT_PIPELINE_MAX_IN_FLIGHT}). */
  readonly pipelineMaxInFlight?: number;
  /** Unsent Watch responses before the watch is cancelled as too slow (default {@link DEFAULT_WATCH_MAX_PENDING_RESPONSES}). */
  readonly watchMaxPendingResponses?: number;
  /**
   * The admin token: a request carrying it (`authorization: Bearer <token>` metadata) may read
   * (Get, List, Watch) dead letters under `/_dlq/`; the rest of the reserved keyspace stays
   * refused to everyone. Unset: dead letters are not readable through the KV API.
   */
  readonly adminToken?: string;
  /** Watches per client connection (default {@link DEFAULT_MAX_WATCHES_PER_CONNECTION}). */
  readonly maxWatchesPerConnection?: number;
  /**
   * The node's access control: when it is enabled, every call is authenticated and each op
   * authorized (get, list, watch need read; put, delete, trigger, txn write). Unset: no checks.
   */
  readonly access?: AccessControl;
  /**
   * The node's coordinator, shared with its extension lambdas (the coordinator options above then
   * belong to it). Default: one of the service's own, closed with it.
   */
  readonly coordinator?: Coordinator;
}

/** What {@link addKvServices} returns. */
export interface KvServiceHandle {
  /** The leader address the service reports in `kv-leader` when the cluster map has a single shard (undefined otherwise, or when unknown). */
  readonly leaderHint: string | undefined;
  /** The leader address the service reports in `kv-leader` for shard `group` (undefined when unknown). */
  leaderHintOf(group: number): string | undefined;
  /** Ends running watches and pipelines with UNAVAILABLE and closes the forwarding channels. Call before shutting the server down. */
  close(): void;
}

/** The lambda chain depth a write carries in `kv-hops` metadata (0 when absent or malformed). */
function lambdaHopsOf(md: grpc.Metadata): number {
  const n = Number(metaString(md, META_HOPS) ?? '0');
  return Number.isSafeInteger(n) && n > 0 && n < 1_000 ? n : 0;
}

/** The parts of a server call the services read. */
type AnyServerCall = Pick<grpc.ServerUnaryCall<unknown, unknown>, 'metadata' | 'getDeadline' | 'on' | 'getAuthContext'>;

function deadlineOf(call: { getDeadline(): grpc.Deadline }): number {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : d;
  return Number.isFinite(ms) ? ms : Infinity;
}

type OpContext = RouteContext;

class KvService implements KvServiceHandle {
  private readonly coord: Coordinator;
  private readonly ownsCoordinator: boolean;
  private readonly log: KvServiceLogger;
  private readonly defaultDeadlineMs: number;
  private readonly maxInFlight: number;
  private readonly maxPendingWatch: number;
  private readonly adminTokens: AdminTokenCheck;
  private readonly access: AccessControl | undefined;
  private readonly maxWatchesPerConnection: number;
  /** Open client watches per connection (`call.getPeer()`). */
  private readonly watchesByPeer = new Map<string, number>();
  private readonly closers = new Set<() => void>();
  private closed = false;

  constructor(backend: KvBackend, opts: KvServiceOptions) {
    this.ownsCoordinator = opts.coordinator === undefined;
    this.coord =
      opts.coordinator ??
      new Coordinator(backend, opts);
    this.log = this.coord.log;
    this.defaultDeadlineMs = opts.defaultDeadlineMs ?? DEFAULT_CALL_DEADLINE_MS;
    this.maxInFlight = Math.max(1, opts.pipelineMaxInFlight ?? DEFAULT_PIPELINE_MAX_IN_FLIGHT);
    this.maxPendingWatch = Math.max(1, opts.watchMaxPendingResponses ?? DEFAULT_WATCH_MAX_PENDING_RESPONSES);
    this.adminTokens = new AdminTokenCheck(opts.adminToken);
    this.access = opts.access;
    this.maxWatchesPerConnection = Math.max(1, opts.maxWatchesPerConnection ?? DEFAULT_MAX_WATCHES_PER_CONNECTION);
  }

  private get backend(): KvBackend {
    return this.coord.backend;
  }

  get leaderHint(): string | undefined {
    return this.leaderHintOf(this.coord.soleGroup());
  }

  leaderHintOf(group: number | undefined): string | undefined {
    return this.coord.leaderHintOf(group);
  }

  close(): void {
    this.closed = true;
    for (const c of [...this.closers]) c();
    this.closers.clear();
    if (this.ownsCoordinator) this.coord.close();
  }

  // ---- metadata and statuses ------------------------------------------------------------------

  /** Response metadata of a call served by `group` (no shard or leader for calls spanning shards). */
  private responseMetadata(group: number | undefined, leader: string | undefined): grpc.Metadata {
    return kvMetadata({ shard: group, leader, mapEpoch: this.coord.mapEpoch() });
  }

  /** Metadata of calls not served by one shard (Status, GetShardMap, Pipeline streams): names the sole shard of a one-shard map. */
  private nodeMetadata(): grpc.Metadata {
    const group = this.coord.soleGroup();
    return this.responseMetadata(group, this.leaderHintOf(group));
  }

  /** The error to send for `s`: its fields, the leader hint of its shard when it names none, and the map epoch. */
  private serviceError(s: OpStatus): grpc.ServerErrorResponse {
    const shard = s.fields.shard;
    return s.toServiceError({ ...s.fields, leader: s.fields.leader ?? this.leaderHintOf(shard), mapEpoch: this.coord.mapEpoch() });
  }

  /** Maps any failure to the status to send; unknown errors become INTERNAL and are logged. */
  private toStatus(e: unknown, what: string): OpStatus {
    return this.coord.toStatus(e, what);
  }

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
    return { hops, lambdaHops: lambdaHopsOf(call.metadata), deadlineMs, onCancel, ...this.authOf(call) };
  }

  /**
   * Who a call is: with access control on, its principal (throws AuthError when it cannot be
   * authenticated), which may read dead letters when root; otherwise whether it carries the
   * admin token (see {@link adminOf}).
   */
  private authOf(call: CredentialCall): { admin: boolean; authorization?: string; principal?: Principal } {
    if (this.access) {
      const principal = this.access.authenticate(authorizationOf(call), certNameOf(call));
      if (principal) return { admin: principal.root, authorization: principal.authorization, principal };
    }
    return this.adminOf(call.metadata);
  }

  /** Whether a request's metadata carries the right admin token (and the header to forward with it). */
  private adminOf(md: grpc.Metadata): { admin: boolean; authorization?: string } {
    if (this.adminTokens.check(md) !== 'ok') return { admin: false };
    return { admin: true, authorization: String(md.get(AUTHORIZATION_METADATA)[0]) };
  }

  // ---- unary handlers -------------------------------------------------------------------------

  private unary<O extends UnaryOp>(op: O): grpc.handleUnaryCall<RequestOf<O>, ResponseOf<O>> {
    return (call, callback) => {
      let ctx: OpContext;
      try {
        ctx = this.context(call);
      } catch (e) {
        return callback(this.serviceError(this.toStatus(e, op)));
      }
      this.coord.run(op, call.request, ctx).then(
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
        (e: unknown) => callback(this.serviceError(this.toStatus(e, 'status').inShard(this.coord.soleGroup()))),
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
    let auth: { admin: boolean; authorization?: string; principal?: Principal } = { admin: false };
    /** The client connection whose watch count this watch holds (released when it finishes). */
    let countedPeer: string | undefined;
    let watch: MergedWatch | undefined;
    let closed = false;
    /** Ends the call once: releases what the watch held, then ends the stream or fails it with `status`. */
    const close = (status?: OpStatus): void => {
      if (closed) return;
      closed = true;
      this.closers.delete(onClose);
      if (countedPeer !== undefined) this.releaseWatch(countedPeer);
      if (call.cancelled) return;
      if (status) call.emit('error', this.serviceError(status));
      else call.end(this.responseMetadata(watch?.single, this.leaderHintOf(watch?.single)));
    };
    const finish = (status?: OpStatus): void => (watch ? watch.finish(status) : close(status));
    const onClose = (): void => finish(new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down'));

    call.on('cancelled', () => finish());
    this.closers.add(onClose);
    if (this.closed) return onClose();

    let req: WatchRequest;
    let groups: readonly number[];
    let resume: Map<number, number> | undefined;
    try {
      const bad = invalidUtf8Field(call.request);
      if (bad !== undefined) throw invalid(`${bad} is not valid UTF-8`);
      auth = this.authOf(call);
      req = toWatchRequest(call.request);
      authorizePrefix(auth.principal, 'read', req.prefix);
      guardPrefix(req.prefix, req.shard, auth.admin);
      resume = call.request.resumeToken ? decodeResumeToken(call.request.resumeToken) : undefined;
      groups = req.shard !== undefined ? [req.shard] : this.backend.shardsForPrefix(req.prefix);
      if (groups.length === 0) {
        throw new OpStatus(grpc.status.UNAVAILABLE, `no shard serves prefix ${JSON.stringify(req.prefix)} (cluster map epoch ${this.coord.mapEpoch() ?? 0})`, {
          retrySafe: true,
          reason: 'WRONG_SHARD',
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
    const out: WatchOutput = {
      write: (msg) => call.write(msg),
      get writableLength() {
        return call.writableLength;
      },
      get writableNeedDrain() {
        return call.writableNeedDrain;
      },
      once: (event, fn) => call.once(event, fn),
      close,
    };
    watch = new MergedWatch(
      this.coord,
      { req, groups, resume, hops, authorization: auth.authorization, hideReserved: hidesReservedKeys(req.prefix), maxPendingResponses: this.maxPendingWatch },
      out,
    );
    call.sendMetadata(this.responseMetadata(watch.single, this.leaderHintOf(watch.single)));
    watch.start();
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
    const op = req.op ?? (req.put ? 'put' : req.get ? 'get' : req.delete ? 'delete' : req.trigger ? 'trigger' : req.txn ? 'txn' : undefined);
    const inner = op === undefined ? undefined : req[op];
    if (op === undefined || inner === undefined || inner === null) {
      return { id, error: { code: grpc.status.INVALID_ARGUMENT, message: 'pipeline request has no operation' } };
    }
    try {
      const out = await this.coord.execute(op, inner, ctx, invalidUtf8Field(req));
      // Served elsewhere (forwarded): name that leader, so the client goes there next time.
      if (out.leader !== undefined && out.group !== undefined && out.leader !== this.coord.self) return { id, [op]: out.response, leader: out.leader, shard: out.group };
      return { id, [op]: out.response };
    } catch (e) {
      const s = this.toStatus(e, op);
      const leader = s.fields.leader ?? this.leaderHintOf(s.fields.shard);
      const { retrySafe, reason, shard } = s.fields;
      return { id, error: { code: s.code, message: s.message, ...(retrySafe ? { retrySafe: true } : {}), ...(leader ? { leader } : {}), ...(reason ? { reason } : {}), ...(shard ? { shard } : {}) } };
    }
  }

  private pipeline: grpc.handleBidiStreamingCall<PipelineRequestMsg, PipelineResponseMsg> = (call) => {
    call.on('error', () => undefined);
    const hops = forwardHops(call.metadata);
    let auth: { admin: boolean; authorization?: string; principal?: Principal };
    try {
      auth = this.authOf(call);
    } catch (e) {
      call.emit('error', this.serviceError(this.toStatus(e, 'pipeline')));
      return;
    }
    const streamDeadline = deadlineOf(call);
    let inFlight = 0;
    let paused = false;
    let readEnded = false;
    let done = false;
    const onClose = (): void => {
      if (done) return;
      done = true;
      call.emit('error', this.serviceError(new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down').inShard(this.coord.soleGroup())));
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
    /** Ops of a batch beyond the in-flight bound: they start as earlier ops settle. */
    const queued: PipelineRequestMsg[] = [];
    const settle = (): void => {
      inFlight--;
      while (queued.length > 0 && inFlight < this.maxInFlight && !done) start(queued.shift()!);
      if (paused && inFlight < this.maxInFlight) {
        paused = false;
        call.resume();
      }
      maybeEnd();
    };
    this.closers.add(onClose);
    call.on('cancelled', stop);
    if (this.closed) return onClose();
    const md = this.nodeMetadata();
    md.set(META_PIPELINE_BATCH, '1');
    md.set(META_PIPELINE_TXN, '1');
    call.sendMetadata(md);
    // Answers are coalesced (one message per event-loop turn) once the client has sent a batch:
    // it then understands `PipelineResponse.batch`.
    let batching = false;
    let outbox: PipelineResponseMsg[] = [];
    let flushScheduled = false;
    const flush = (): void => {
      flushScheduled = false;
      const out = outbox;
      outbox = [];
      if (done || out.length === 0) {
        for (let i = 0; i < out.length; i++) settle();
        return;
      }
      const msg: PipelineResponseMsg = out.length === 1 ? out[0]! : { batch: out };
      const epoch = this.coord.mapEpoch();
      if (epoch !== undefined) msg.mapEpoch = epoch;
      call.write(msg, () => {
        for (let i = 0; i < out.length; i++) settle();
      });
    };
    const answer = (res: PipelineResponseMsg): void => {
      traceWrite?.('srv.answer', 0, 0);
      if (done) return settle();
      if (!batching) {
        const epoch = this.coord.mapEpoch();
        if (epoch !== undefined) res.mapEpoch = epoch;
        call.write(res, () => settle());
        return;
      }
      outbox.push(res);
      if (!flushScheduled) {
        flushScheduled = true;
        setImmediate(flush);
      }
    };
    const start = (req: PipelineRequestMsg): void => {
      inFlight++;
      const timeoutMs = req.timeoutMs !== undefined && req.timeoutMs > 0 ? req.timeoutMs : this.defaultDeadlineMs;
      const ctx: OpContext = { hops, lambdaHops: 0, deadlineMs: Math.min(streamDeadline, Date.now() + timeoutMs), ...auth };
      this.pipelineOp(req, ctx).then(answer, (e: unknown) => {
        this.log.error({ err: e }, 'pipeline op failed unexpectedly');
        settle();
      });
    };
    /** Starts an op now, or queues it (in arrival order) while the stream has the most ops in flight. */
    const admit = (req: PipelineRequestMsg): void => {
      if (queued.length === 0 && inFlight < this.maxInFlight) start(req);
      else queued.push(req);
    };
    call.on('data', (req: PipelineRequestMsg) => {
      traceWrite?.('srv.recv', 0, 0);
      if (done) return;
      const batch = req.batch;
      if (batch !== undefined && batch.length > 0) {
        batching = true;
        if (batch.length > MAX_PIPELINE_BATCH) {
          const message = `a pipeline batch of ${batch.length} ops (at most ${MAX_PIPELINE_BATCH})`;
          for (const sub of batch) {
            inFlight++;
            answer({ id: sub.id ?? 0, error: { code: grpc.status.INVALID_ARGUMENT, message, retrySafe: true } });
          }
        } else for (const sub of batch) admit(sub);
      } else admit(req);
      if (inFlight >= this.maxInFlight && !paused) {
        paused = true;
        call.pause();
      }
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
