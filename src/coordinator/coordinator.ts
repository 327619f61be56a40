/**
 * The cluster coordinator of one node: routes each request to its shard's leader (served by the
 * local backend when this node can, otherwise forwarded over the node's one stub pool, with
 * bounded attempts and suspect targets), keeps the per-shard leader cache, and merges Lists that
 * span shards. The gRPC services and the extension lambdas' store both stand on it.
 */
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { shardOf } from '../sharding/index.js';
import { DEFAULT_LIST_LIMIT } from '../statemachine/index.js';
import { DeadlineError, NotLeaderError, type CallOptions, type KvBackend, type ListRequest } from '../node/backend.js';
import { realScheduler, type Scheduler } from '../node/scheduler.js';
import { MAX_FORWARD_HOPS, META_FORWARDED, META_HOPS, neverReachedServer, readKvMetadata } from '../wire/metadata.js';
import { AUTHORIZATION_METADATA } from '../wire/auth.js';
import { authorizeKey, authorizePrefix, type Principal } from '../auth/access-control.js';
import { invalidUtf8Field, type GetRequestMsg, type ListRequestMsg, type PutRequestMsg, type DeleteRequestMsg, type TriggerRequestMsg, type TxnRequestMsg, type ListResponseMsg } from '../wire/proto.js';
import { checkPrefix } from '../wire/request-validation.js';
import { LIST_FANOUT_CONCURRENCY, mapLimit, mergeListPages } from './list-merge.js';
import {
  WRITE_OPS,
  deleteResponse,
  firstKeyOf,
  getResponse,
  guardKey,
  guardPrefix,
  guardTxn,
  isSet,
  listResponse,
  putResponse,
  toConsistencySafe,
  toDeleteRequest,
  toGetRequest,
  toListRequest,
  toPutRequest,
  toTriggerRequest,
  toTxnRequest,
  triggerResponse,
  txnResponse,
  withSession,
  withoutReserved,
  type RequestOf,
  type ResponseOf,
  type UnaryOp,
} from './messages.js';
import { OpStatus, invalid, toStatus, type CoordinatorLogger } from './op-status.js';
import { NodeStubs } from './node-stubs.js';

/**
 * Default longest wait of one forwarded call (ms): below the client's default attempt timeout
 * (1.5 s), so a frozen leader behind a forwarding node costs the client one answer, not its deadline.
 */
export const DEFAULT_FORWARD_ATTEMPT_MS = 1_000;

/** How long a forwarding target that timed out is avoided (ms) unless it answers sooner. */
const FORWARD_SUSPECT_MS = 3_000;

/** Soft size cap of one List page or Watch response (a single item or revision may exceed it). */
export const DEFAULT_MAX_RESPONSE_BYTES = 3 * 1024 * 1024;

/** Options of {@link Coordinator}. */
export interface CoordinatorOptions {
  /** This node's client-API address (host:port) as other nodes reach it; a function if only known after binding. */
  readonly selfAddress?: string | (() => string | undefined);
  /** The client-API address of the leader of shard `group`, if the host knows it (preferred over what forwarding taught). */
  readonly leaderAddress?: (group: number) => string | undefined;
  /** Where internal errors and forwarding are logged (default: pino on stdout). */
  readonly log?: CoordinatorLogger;
  /** The node's stub pool (shared with the cluster probe; its owner closes it). Default: a pool of the coordinator's own. */
  readonly stubs?: NodeStubs;
  /** Credentials of a pool of the coordinator's own (ignored with `stubs`). */
  readonly forwardCredentials?: grpc.ChannelCredentials;
  /** Extra channel options of a pool of the coordinator's own (ignored with `stubs`). */
  readonly forwardChannelOptions?: grpc.ChannelOptions;
  /** Soft cap of one List page or Watch response in bytes (default {@link DEFAULT_MAX_RESPONSE_BYTES}). */
  readonly maxResponseBytes?: number;
  /**
   * Longest time one forwarded call may wait for the node it was forwarded to (default
   * {@link DEFAULT_FORWARD_ATTEMPT_MS}; 0 = up to the call's deadline). A target that lets it run
   * out is suspect: calls are not forwarded to it until it answers again or a suspicion period
   * passes, and are answered UNAVAILABLE at once (retry-safe) so the client tries elsewhere.
   */
  readonly forwardAttemptMs?: number;
  /** The clock and timers deadlines and suspicion periods run on (default: the wall clock, `realScheduler`; the simulator's virtual one). */
  readonly clock?: Scheduler;
}

/** Who asks, and within what: the routing context of one request. */
export interface RouteContext {
  /** How many times the call was already forwarded (`kv-forwarded`). */
  readonly hops: number;
  /** For writes made by extension lambdas: the depth of the lambda chain (`kv-hops`; 0 for clients). */
  readonly lambdaHops: number;
  /** Absolute deadline, ms since the epoch. */
  readonly deadlineMs: number;
  /** Registers a callback run if the caller cancels the call. */
  readonly onCancel?: (fn: () => void) => void;
  /** The request carries the right admin token: it may read dead letters (`/_dlq/`). */
  readonly admin: boolean;
  /** The `authorization` metadata passed on when the call is forwarded (the admin token, or the principal's token). */
  readonly authorization?: string;
  /** Who asks, when access control is on (undefined: it is off, or the cluster itself asks): every op is authorized for it. */
  readonly principal?: Principal | undefined;
}

/**
 * Throws PERMISSION_DENIED unless `p` may run `op` with `m`: get and list need read (list: over
 * the whole prefix), put, delete and trigger need write, a txn needs read on the keys it
 * compares and write on the keys it writes.
 */
export function authorizeOp(op: UnaryOp, m: object, p: Principal | undefined): void {
  if (!p || p.root) return;
  switch (op) {
    case 'get':
      return authorizeKey(p, 'read', (m as GetRequestMsg).key ?? '');
    case 'list':
      return authorizePrefix(p, 'read', (m as ListRequestMsg).prefix ?? '');
    case 'txn': {
      const t = m as TxnRequestMsg;
      for (const c of t.compares ?? []) authorizeKey(p, 'read', c.key ?? '');
      for (const w of t.writes ?? []) authorizeKey(p, 'write', (w.put ?? w.delete)?.key ?? '');
      return;
    }
    default:
      return authorizeKey(p, 'write', (m as PutRequestMsg).key ?? '');
  }
}

/** What a routed call returned, and where it was served. */
export interface RouteOutcome<R> {
  readonly response: R;
  /** The shard that served the call (undefined when it spanned several, or routing failed). */
  readonly group: number | undefined;
  /** That shard's leader, if known. */
  readonly leader: string | undefined;
}

/** Runs `run`, failing with DeadlineError at `deadlineMs` (on `clock`'s time and timers). */
export function withDeadline<T>(run: () => Promise<T>, deadlineMs: number, clock: Scheduler = realScheduler): Promise<T> {
  const remaining = deadlineMs - clock.now();
  if (remaining <= 0) return Promise.reject(new DeadlineError());
  return new Promise<T>((resolve, reject) => {
    const timer = clock.setTimeout(() => reject(new DeadlineError()), Math.min(remaining, 2 ** 31 - 1));
    timer.unref?.();
    let p: Promise<T>;
    try {
      p = run();
    } catch (e) {
      p = Promise.reject(e);
    }
    Promise.resolve(p).then(
      (v) => {
        timer.cancel();
        resolve(v);
      },
      (e: unknown) => {
        timer.cancel();
        reject(e);
      },
    );
  });
}

/** Routes requests of one node to their shards' leaders; see the file's top. Failures are {@link OpStatus}es naming the shard. */
export class Coordinator {
  readonly log: CoordinatorLogger;
  /** The node's stub pool. */
  readonly stubs: NodeStubs;
  /** Soft cap of one List page or Watch response in bytes. */
  readonly maxResponseBytes: number;
  private readonly ownsStubs: boolean;
  private readonly forwardAttemptMs: number;
  /** The clock and timers of deadlines and suspicion periods. */
  readonly clock: Scheduler;
  /** Leader hints learned from forwarding and NotLeaderErrors, per shard (never mixed across shards). */
  private readonly leaderCache = new Map<number, string>();
  /** Forwarding targets that let an attempt time out: address → avoided until (ms since the epoch). */
  private readonly suspectTargets = new Map<string, number>();
  private closedFlag = false;

  constructor(
    readonly backend: KvBackend,
    private readonly opts: CoordinatorOptions = {},
  ) {
    this.log = opts.log ?? pino({ name: 'kvcascade-coordinator' });
    this.ownsStubs = opts.stubs === undefined;
    this.stubs = opts.stubs ?? new NodeStubs({ credentials: opts.forwardCredentials, channelOptions: opts.forwardChannelOptions });
    this.maxResponseBytes = opts.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.forwardAttemptMs = Math.max(0, opts.forwardAttemptMs ?? DEFAULT_FORWARD_ATTEMPT_MS);
    this.clock = opts.clock ?? realScheduler;
  }

  /** This node's client-API address, if known. */
  get self(): string | undefined {
    const s = this.opts.selfAddress;
    return typeof s === 'function' ? s() : s;
  }

  /** Whether {@link close} was called: new calls fail UNAVAILABLE (retry-safe). */
  get closed(): boolean {
    return this.closedFlag;
  }

  /** Refuses new calls and closes the stub pool if the coordinator owns it. */
  close(): void {
    this.closedFlag = true;
    if (this.ownsStubs) this.stubs.close();
  }

  /** The leader address of shard `group` this node knows (undefined when unknown). */
  leaderHintOf(group: number | undefined): string | undefined {
    if (group === undefined) return undefined;
    return this.opts.leaderAddress?.(group) ?? this.leaderCache.get(group);
  }

  /** The epoch of the backend's cluster map, if it has one. */
  mapEpoch(): number | undefined {
    try {
      return this.backend.shardMap().epoch;
    } catch {
      return undefined;
    }
  }

  /** The only data shard of the map, when it has exactly one. */
  soleGroup(): number | undefined {
    try {
      const shards = this.backend.shardMap().shards;
      return shards.length === 1 ? shards[0]!.group : undefined;
    } catch {
      return undefined;
    }
  }

  /** Maps any failure to its status (unknown errors become INTERNAL and are logged). */
  toStatus(e: unknown, what: string): OpStatus {
    return toStatus(e, what, this.log);
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
  noteNotLeader(group: number | undefined, e: NotLeaderError): void {
    if (group === undefined) return;
    if (e.leaderId > 0 && e.leaderAddress) this.leaderCache.set(group, e.leaderAddress);
    else if (!e.leaderAddress || this.leaderCache.get(group) === this.self) this.leaderCache.delete(group);
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

  /** Runs one unary request: a List spanning several shards is scattered and merged; anything else is one {@link execute}. */
  run<O extends UnaryOp>(op: O, m: RequestOf<O>, ctx: RouteContext): Promise<RouteOutcome<ResponseOf<O>>> {
    if (op === 'list' && !isSet((m as ListRequestMsg).shard)) {
      let groups: readonly number[] = [];
      try {
        groups = this.backend.shardsForPrefix(checkPrefix((m as ListRequestMsg).prefix ?? ''));
      } catch {
        groups = []; // execute() reports the problem
      }
      if (groups.length > 1) return this.listAcrossShards(m as ListRequestMsg, groups, ctx) as Promise<RouteOutcome<ResponseOf<O>>>;
    }
    return this.execute(op, m, ctx);
  }

  /**
   * Runs one single-shard op: validate, call the backend, forward toward the shard's leader on
   * NotLeaderError (while the hop count allows). Throws OpStatus naming the shard. `badUtf8`
   * names a field the request's frame had invalid UTF-8 in (default: read from `m`).
   */
  async execute<O extends UnaryOp>(op: O, m: RequestOf<O>, ctx: RouteContext, badUtf8?: string): Promise<RouteOutcome<ResponseOf<O>>> {
    let group: number | undefined;
    let out: RouteOutcome<ResponseOf<O>>;
    try {
      const bad = badUtf8 ?? invalidUtf8Field(m);
      if (bad !== undefined) throw invalid(`${bad} is not valid UTF-8`);
      if (this.closedFlag) throw new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down', { retrySafe: true });
      authorizeOp(op, m, ctx.principal);
      group = this.requestGroup(op, m);
      const deadlineMs = ctx.deadlineMs;
      const g = group;
      const response = await withDeadline(
        () => this.backendCall(op, m, ctx.lambdaHops > 0 ? { deadlineMs, hops: ctx.lambdaHops } : { deadlineMs }, g, ctx.admin),
        deadlineMs,
        this.clock,
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
          throw new OpStatus(grpc.status.UNAVAILABLE, `the shard's leader ${target} is not answering; a new leader is being elected`, { retrySafe: true, shard: g }, { cause: e });
        }
        if (target && ctx.hops < MAX_FORWARD_HOPS && target !== this.self) {
          out = await this.forward(op, m, ctx, target, g);
        } else {
          const why = ctx.hops > 0 ? `forwarded request (${ctx.hops} hops) reached a non-leader: ${e.message}` : e.message;
          throw new OpStatus(grpc.status.UNAVAILABLE, why, { retrySafe: true, leader: target, shard: g }, { cause: e });
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
   * the pages are merged by {@link mergeListPages}.
   */
  private async listAcrossShards(m: ListRequestMsg, groups: readonly number[], ctx: RouteContext): Promise<RouteOutcome<ListResponseMsg>> {
    let req: ListRequest;
    try {
      const bad = invalidUtf8Field(m);
      if (bad !== undefined) throw invalid(`${bad} is not valid UTF-8`);
      if (this.closedFlag) throw new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down', { retrySafe: true });
      req = toListRequest(m);
      authorizeOp('list', m, ctx.principal);
      guardPrefix(req.prefix, req.shard, ctx.admin);
    } catch (e) {
      throw this.toStatus(e, 'list');
    }
    const limit = req.limit ?? DEFAULT_LIST_LIMIT;
    const pages = await mapLimit(groups, LIST_FANOUT_CONCURRENCY, async (g) => ({
      group: g,
      page: (await this.execute('list', { ...m, shard: g }, ctx)).response,
    }));
    try {
      return { response: mergeListPages(pages, req.prefix, limit, this.maxResponseBytes), group: undefined, leader: undefined };
    } catch (e) {
      throw this.toStatus(e, 'list');
    }
  }

  /** Whether forwarding to `target` timed out recently (and it has not answered since). */
  private isSuspectTarget(target: string): boolean {
    const until = this.suspectTargets.get(target);
    if (until === undefined) return false;
    if (until > this.clock.now()) return true;
    this.suspectTargets.delete(target);
    return false;
  }

  /** Status for a forwarded call's failure (shard `group`): relays the upstream status and kvcascade metadata. */
  forwardFailure(err: grpc.ServiceError, target: string, group: number | undefined, attemptTimedOut = false): OpStatus {
    if (attemptTimedOut) {
      this.suspectTargets.set(target, this.clock.now() + FORWARD_SUSPECT_MS);
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

  /** The request metadata of a call forwarded one hop further than `ctx`. */
  forwardMetadata(ctx: Pick<RouteContext, 'hops' | 'lambdaHops' | 'authorization'>): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set(META_FORWARDED, String(ctx.hops + 1));
    if (ctx.lambdaHops > 0) md.set(META_HOPS, String(ctx.lambdaHops));
    if (ctx.authorization !== undefined) md.set(AUTHORIZATION_METADATA, ctx.authorization);
    return md;
  }

  /** Forwards a single-shard op of shard `group` to `target`, one hop further. */
  private forward<O extends UnaryOp>(op: O, m: RequestOf<O>, ctx: RouteContext, target: string, group: number | undefined): Promise<RouteOutcome<ResponseOf<O>>> {
    if (this.closedFlag) return Promise.reject(new OpStatus(grpc.status.UNAVAILABLE, 'server shutting down', { retrySafe: true, shard: group }));
    this.log.debug({ op, target, group, hops: ctx.hops + 1 }, 'forwarding toward the shard leader');
    const md = this.forwardMetadata(ctx);
    // Only a leader serves writes and linearizable reads: the target that did is the leader.
    const leaderServes =
      WRITE_OPS.has(op) || ((op === 'get' || op === 'list') && toConsistencySafe((m as GetRequestMsg).consistency) === 'linearizable');
    return new Promise((resolve, reject) => {
      let response: ResponseOf<O> | undefined;
      let error: grpc.ServiceError | null = null;
      const stub = this.stubs.kv(target);
      const method = stub[op] as unknown as (
        req: RequestOf<O>,
        md: grpc.Metadata,
        o: Partial<grpc.CallOptions>,
        cb: (err: grpc.ServiceError | null, res?: ResponseOf<O>) => void,
      ) => grpc.ClientUnaryCall;
      const attemptDeadline = this.forwardAttemptMs > 0 ? Math.min(ctx.deadlineMs, this.clock.now() + this.forwardAttemptMs) : ctx.deadlineMs;
      const call = method.call(stub, m, md, { deadline: new Date(attemptDeadline) }, (err, res) => {
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
}
