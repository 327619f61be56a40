/**
 * Many puts, gets, deletes and trigger puts in flight on Pipeline streams (one per node leading the ops' shards), matched to their responses by id.
 *
 * Also carries single attempts of the client's lone calls for the unary retry loop (`attempt`).
 *
 * Size: one class (about 700 lines): the lanes, the write window, the pending-op table, the
 * single attempts and the resend-on-leader-change path share the same per-lane state (a stream's
 * end, its batches and its liveness concern every op on it) and are read together.
 */
import * as grpc from '@grpc/grpc-js';
import { META_PIPELINE_BATCH, META_PIPELINE_TXN, kvMetadata, readKvMetadata } from '../wire/metadata.js';
import { MAX_PIPELINE_BATCH } from '../wire/proto.js';
import type {
  DeleteRequestMsg,
  GetRequestMsg,
  PipelineRequestMsg,
  PipelineResponseMsg,
  PutRequestMsg,
  TriggerRequestMsg,
} from '../wire/proto.js';
import { KvError } from './errors.js';
import { isWrongShard, type ShardRouter } from './router.js';
import type { ClientSession } from './session.js';
import { neverSent, statusError, type Attempt, type AttemptCarrier, type Transport } from './transport.js';
import {
  deleteResult,
  getResult,
  localKey,
  localUint,
  localValue,
  putResult,
  triggerResult,
  type KvDeleteOptions,
  type KvDeleteResult,
  type KvGetOptions,
  type KvGetResult,
  type KvPutOptions,
  type KvPutResult,
  type KvTriggerOptions,
  type KvTriggerResult,
} from './types.js';

type Op = 'put' | 'get' | 'delete' | 'trigger';

/** The ops a single attempt of a client call may carry on a stream (a txn only where the server takes it). */
type CarriedOp = Op | 'txn';

type PipelineStream = grpc.ClientDuplexStream<PipelineRequestMsg, PipelineResponseMsg>;

/**
 * Requests the client lets grpc-js buffer before waiting for 'drain'. Waiting at the stream's
 * default high-water mark (16 messages) costs a flush round per 16 ops; the server bounds its
 * own in-flight ops anyway, so a larger window only trades a little memory for throughput.
 */
const WRITE_WINDOW = 4096;

/** One Pipeline stream, to one node. */
interface Lane {
  readonly address: string;
  readonly stream: PipelineStream;
  /** The server sent headers (so the stream reached it). */
  headers: boolean;
  /** Waiting for the connection or for 'drain': requests queue in `backlog`. */
  blocked: boolean;
  backlog: PipelineRequestMsg[];
  /** When the node last answered anything on this stream (ms since the epoch). */
  lastHeardAt: number;
  /** Messages the node sent on this stream so far. */
  heard: number;
  /** The server takes batched requests on this stream (its headers said `kv-pipeline-batch: 1`). */
  batching: boolean;
  /** The server takes txn ops on this stream (its headers said `kv-pipeline-txn: 1`). */
  txn: boolean;
  /** Requests of this event-loop turn, sent together as one batch message at the end of it. */
  outbox: PipelineRequestMsg[];
  /** The highest map epoch the server named on this stream (told to the router when it grows). */
  mapEpoch: number;
  /** The liveness check of this stream, while repeatable ops wait on it. */
  watchdog: NodeJS.Timeout | undefined;
}

interface PendingOp {
  readonly op: Op;
  readonly key: string;
  readonly deadlineAt: number;
  readonly timer: NodeJS.Timeout;
  /** Safe to send again: a read, or a write carrying a client session. */
  readonly repeatable: boolean;
  /** The stream it was sent on (undefined while waiting for the cluster map). */
  lane: Lane | undefined;
  /** Handed to the stream (it may have reached the server). */
  written: boolean;
  /** The request (set once built). */
  req: PipelineRequestMsg | undefined;
  /** Already moved to another stream once after its stream could not connect. */
  rerouted: boolean;
  readonly onResponse: (m: PipelineResponseMsg) => void;
  readonly reject: (e: unknown) => void;
  /** Re-runs the op as a unary call (with retries) within the remaining time. */
  readonly retry: (remainingMs: number) => void;
}

/**
 * One attempt of a client call carried on a stream (see {@link KvPipeline.attempt}): it only
 * reports its outcome; the transport's retry loop decides what follows.
 */
interface AttemptOp {
  readonly op: CarriedOp;
  readonly lane: Lane;
  readonly deadlineAt: number;
  readonly timer: NodeJS.Timeout;
  /** Handed to the stream (it may have reached the server). */
  written: boolean;
  /** The lane's `heard` count when it was handed to the stream. */
  heardBefore: number;
  /** Reports the outcome (undefined: run this attempt as a unary call). */
  readonly done: (a: Attempt<unknown> | undefined) => void;
}

/** The ops a stream carries. */
const STREAM_OPS: ReadonlySet<string> = new Set<CarriedOp>(['put', 'get', 'delete', 'trigger', 'txn']);

/**
 * A stream answer from `address` as the outcome of one attempt: an error carries the unary call's
 * trailers (kv-retry-safe, kv-leader, kv-reason, kv-shard); an answer names the node that served
 * it as the leader, as a unary answer's kv-leader would (a write is served by its shard's leader:
 * `address` itself, or the leader it was forwarded to).
 */
function attemptOf(op: CarriedOp, m: PipelineResponseMsg, address: string): Attempt<unknown> {
  const e = m.error;
  if (e) {
    const md = kvMetadata({ leader: e.leader || undefined, shard: e.shard || undefined, retrySafe: e.retrySafe === true, reason: e.reason || undefined });
    const err = statusError((e.code ?? grpc.status.UNKNOWN) as grpc.status, e.message ?? '');
    err.metadata = md;
    return { error: err, trailers: md, headers: true };
  }
  const md = m.leader ? kvMetadata({ leader: m.leader, shard: m.shard || undefined }) : kvMetadata({ leader: address });
  return { response: m[op] ?? {}, trailers: md, headers: true };
}

/** What a pipeline needs from the client: the transport, the shard router, the write session and a unary fallback for retries. */
export interface PipelineDeps {
  readonly transport: Transport;
  /** Routes each op to its shard's leader (absent: every op goes on one stream, as against pre-sharding servers). */
  readonly router?: ShardRouter;
  readonly defaultDeadlineMs: number;
  /** The client's write session (absent: writes carry none and are not resent once they may have reached a server). */
  readonly session?: ClientSession;
  /** Runs the op's request (session included) as a unary call with the client's retries, until `deadlineAt`. */
  unary<Res>(op: Op, req: PutRequestMsg | GetRequestMsg | DeleteRequestMsg | TriggerRequestMsg, deadlineAt: number): Promise<Res>;
}

/**
 * Puts, gets, deletes and trigger puts multiplexed on Pipeline streams. With a cluster map, each
 * op goes to the leader of its key's shard, on one stream per node (opened lazily), so ops of
 * shards led by different nodes go straight there; without one (or before the map is known for
 * a shard's leader) they share one stream, opened on the leader hint or the next endpoint. The
 * first ops wait for the first map fetch. Each op has its own deadline. If a stream breaks, reads
 * and ops that never left the client are re-run as unary calls (with the usual retries); writes
 * that may have reached the server fail with KvError UNAVAILABLE (outcome unknown); ops of a
 * stream that could not connect move, once, to the stream their route now names. Per-op errors
 * from the server (e.g. INVALID_ARGUMENT) reject only that op, except UNAVAILABLE for reads, and
 * for any op that reached a shard not owning its key, which are re-run as unary calls.
 */
export class KvPipeline implements AttemptCarrier {
  private readonly lanes = new Map<string, Lane>();
  /** Single attempts of client calls on the streams, by op id (ids are shared with `pending`). */
  private readonly attempts = new Map<number, AttemptOp>();
  /** The stream of ops without a route. */
  private fallback: Lane | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, PendingOp>();
  private readonly settled = new Set<Promise<unknown>>();
  /** Ops submitted before the first cluster map fetch finished, in order. */
  private waiting: PipelineRequestMsg[] = [];
  private routerReady: boolean;
  private closing: Promise<void> | undefined;
  /** A server answered UNIMPLEMENTED for the Pipeline method (the client's default path then stops batching). */
  unsupported = false;
  private readonly onClientClose = (): void => this.abort(new KvError(grpc.status.CANCELLED, 'client closed'));

  /** Creates a pipeline; nothing is opened until the first op. */
  constructor(private readonly deps: PipelineDeps) {
    this.routerReady = deps.router === undefined;
    deps.transport.closeSignal.addEventListener('abort', this.onClientClose, { once: true });
  }

  /** Ops sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** The nodes this pipeline has a stream open to. */
  get streams(): readonly string[] {
    return [...this.lanes.keys()];
  }

  /** Pipelined put (see KvClient.put). */
  put(key: string, value: Uint8Array | string, opts: KvPutOptions = {}): Promise<KvPutResult> {
    let msg: PutRequestMsg;
    let bytes: Uint8Array;
    try {
      bytes = localValue(value);
      const ev = localUint(opts.expectedVersion, 'expectedVersion');
      msg = {
        key: localKey(key),
        value: bytes,
        returnCurrentValue: opts.returnCurrentValue === true,
        ...(ev !== undefined ? { expectedVersion: ev } : {}),
      };
    } catch (e) {
      return Promise.reject(e);
    }
    return this.submit('put', msg, this.deadlineOf(opts.deadlineMs), (m) => putResult(m.put ?? {}), putResult);
  }

  /** Pipelined get (see KvClient.get). */
  get(key: string, opts: KvGetOptions = {}): Promise<KvGetResult> {
    let msg: GetRequestMsg;
    try {
      if (opts.atVersion !== undefined && opts.atTimeMs !== undefined) {
        throw new KvError(grpc.status.INVALID_ARGUMENT, 'give at most one of atVersion and atTimeMs', { retrySafe: true });
      }
      msg = {
        key: localKey(key),
        consistency: opts.consistency === 'serializable' ? 'SERIALIZABLE' : 'LINEARIZABLE',
        ...(opts.atVersion !== undefined ? { atVersion: localUint(opts.atVersion, 'atVersion') } : {}),
        ...(opts.atTimeMs !== undefined ? { atTimeMs: opts.atTimeMs } : {}),
      };
    } catch (e) {
      return Promise.reject(e);
    }
    return this.submit('get', msg, this.deadlineOf(opts.deadlineMs), (m) => getResult(m.get ?? {}), getResult);
  }

  /** Pipelined delete (see KvClient.delete). */
  delete(key: string, opts: KvDeleteOptions = {}): Promise<KvDeleteResult> {
    let msg: DeleteRequestMsg;
    try {
      const ev = localUint(opts.expectedVersion, 'expectedVersion');
      msg = { key: localKey(key), ...(ev !== undefined ? { expectedVersion: ev } : {}) };
    } catch (e) {
      return Promise.reject(e);
    }
    return this.submit('delete', msg, this.deadlineOf(opts.deadlineMs), (m) => deleteResult(m.delete ?? {}), deleteResult);
  }

  /** Pipelined trigger put (see KvClient.trigger). */
  trigger(key: string, value: Uint8Array | string, opts: KvTriggerOptions = {}): Promise<KvTriggerResult> {
    let msg: TriggerRequestMsg;
    let bytes: Uint8Array;
    try {
      bytes = localValue(value);
      msg = { key: localKey(key), value: bytes };
    } catch (e) {
      return Promise.reject(e);
    }
    return this.submit('trigger', msg, this.deadlineOf(opts.deadlineMs), (m) => triggerResult(m.trigger ?? {}), triggerResult);
  }

  /** Waits for every op in flight, then half-closes the streams and waits for them to end. Later ops fail with CANCELLED. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.settled.size > 0) await Promise.allSettled([...this.settled]);
      this.deps.transport.closeSignal.removeEventListener('abort', this.onClientClose);
      const lanes = [...this.lanes.values()];
      this.lanes.clear();
      this.fallback = undefined;
      await Promise.all(
        lanes.map(
          (l) =>
            new Promise<void>((resolve) => {
              l.stream.once('status', () => resolve());
              l.stream.end();
            }),
        ),
      );
    })();
    return this.closing;
  }

  private deadlineOf(timeoutMs: number | undefined): number {
    return Date.now() + (timeoutMs ?? this.deps.defaultDeadlineMs);
  }

  /**
   * Sends one op whose request the caller has already validated and built (the client's default
   * path batches its concurrent calls through here), to be answered by `deadlineAt`; the
   * response (or, after a fallback to a unary call, the unary response) is handed to `convert`.
   */
  send<R>(op: Op, request: PutRequestMsg | GetRequestMsg | DeleteRequestMsg | TriggerRequestMsg, deadlineAt: number, convert: (res: object) => R): Promise<R> {
    return this.submit(op, request, deadlineAt, (m) => convert(m[op] ?? {}), convert);
  }

  /**
   * One attempt of a client call on the stream to `address` (the client's lone writes ride here,
   * with the unary call's retry and failover rules: {@link Transport.unary} runs the loop). The op
   * is sent as is (session included) with the attempt's remaining time; the outcome is what a unary
   * attempt would report: the answer, or its error with the unary trailers (from the per-op
   * error's fields), a stream that ended as that status (`headers` when it had reached the node,
   * `notSent` when the op never left the client), or DEADLINE_EXCEEDED at `deadlineAt` (`headers`
   * when the node sent anything on the stream meanwhile, so it is not frozen). Undefined: no stream
   * for this (the servers lack the Pipeline method, or the pipeline is closing): go unary.
   */
  attempt<Res>(method: string, address: string, req: unknown, deadlineAt: number): Promise<Attempt<Res> | undefined> | undefined {
    if (this.unsupported || this.closing || this.deps.transport.closed || !STREAM_OPS.has(method)) return undefined;
    const op = method as CarriedOp;
    // A txn only on a stream whose server said it takes them (an older one would refuse it).
    if (op === 'txn' && !this.lanes.get(address)?.txn) return undefined;
    const lane = this.lanes.get(address) ?? this.open(address);
    const id = this.nextId++;
    return new Promise<Attempt<Res> | undefined>((resolve) => {
      const expire = (): void => {
        const a = this.attempts.get(id);
        if (a === undefined) return;
        this.attempts.delete(id);
        const heard = a.written && a.lane.heard > a.heardBefore;
        const err = statusError(grpc.status.DEADLINE_EXCEEDED, `no answer to the ${op} from ${address} before the attempt's deadline`);
        resolve({ error: err, trailers: err.metadata, headers: heard, notSent: !a.written });
      };
      // Decided after this turn's I/O: when this process's own loop was busy, the answer may be
      // waiting, unread, in the socket (timers run before the poll phase reads it).
      const timer = setTimeout(() => setImmediate(expire), Math.max(0, deadlineAt - Date.now()));
      timer.unref();
      this.attempts.set(id, { op, lane, deadlineAt, timer, written: false, heardBefore: 0, done: resolve as (a: Attempt<unknown> | undefined) => void });
      const r: PipelineRequestMsg = { id, [op]: req };
      if (lane.blocked) lane.backlog.push(r);
      else this.write(lane, r);
    });
  }

  private submit<R, U>(
    op: Op,
    request: PutRequestMsg | GetRequestMsg | DeleteRequestMsg | TriggerRequestMsg,
    deadlineAt: number,
    convert: (m: PipelineResponseMsg) => R,
    convertUnary: (res: U) => R,
  ): Promise<R> {
    if (this.closing || this.deps.transport.closed) {
      return Promise.reject(new KvError(grpc.status.CANCELLED, this.deps.transport.closed ? 'client closed' : 'pipeline closed'));
    }
    // Logged in before the op picks a stream (a stream carries the token it was opened with).
    const auth = this.deps.transport.authReady(deadlineAt);
    if (auth) return auth.then(() => this.submit(op, request, deadlineAt, convert, convertUnary));
    const id = this.nextId++;
    // A write with a session may be sent again (on another stream, or as a unary call): it applies once.
    const write = op === 'get' ? undefined : this.deps.session?.begin();
    const msg = write ? { ...request, session: write.wire } : request;
    const repeatable = op === 'get' || write !== undefined;
    const unary = (remainingMs: number): Promise<R> => this.deps.unary<U>(op, msg, Date.now() + remainingMs).then(convertUnary);
    const p = new Promise<R>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(new KvError(grpc.status.DEADLINE_EXCEEDED, `pipelined ${op} timed out`));
      }, deadlineAt - Date.now());
      timer.unref();
      const pending: PendingOp = {
        op,
        key: msg.key ?? '',
        deadlineAt,
        timer,
        repeatable,
        lane: undefined,
        written: false,
        req: undefined,
        rerouted: false,
        onResponse: (m) => {
          if (m.error) {
            const code = (m.error.code ?? grpc.status.UNKNOWN) as grpc.status;
            const message = m.error.message ?? '';
            const retrySafe = m.error.retrySafe === true;
            const reason = m.error.reason || undefined;
            // With the unary call's trailers, so the router classifies it as it would a unary failure (kv-reason).
            const failure = attemptOf(op, m, pending.lane?.address ?? '').error!;
            this.deps.transport.observer?.failure(failure);
            const e = new KvError(code, message, { endpoint: pending.lane?.address, retrySafe, leader: m.error.leader || undefined, reason });
            // As a unary call retries: reads and session writes are safe to retry elsewhere; so is
            // any op the server says was not executed (e.g. it reached a shard not owning its key).
            const transient = code === grpc.status.UNAVAILABLE || (code === grpc.status.RESOURCE_EXHAUSTED && retrySafe);
            if (transient && (repeatable || retrySafe || isWrongShard({ code, details: message, reason }))) {
              unary(deadlineAt - Date.now()).then(resolve, reject);
            } else reject(e);
            return;
          }
          if (m.leader && m.shard !== undefined && m.shard > 0 && pending.lane !== undefined && m.leader !== pending.lane.address) {
            this.deps.router?.setLeader(m.shard, m.leader);
          }
          try {
            resolve(convert(m));
          } catch (err) {
            reject(err);
          }
        },
        reject,
        retry: (ms) => {
          if (ms <= 0) reject(new KvError(grpc.status.DEADLINE_EXCEEDED, `pipelined ${op} timed out`));
          else unary(ms).then(resolve, reject);
        },
      };
      this.pending.set(id, pending);
    });
    const tracked = p.then(
      () => write?.end(),
      () => write?.end(),
    );
    this.settled.add(tracked);
    void tracked.then(() => this.settled.delete(tracked));
    const req: PipelineRequestMsg = { id, [op]: msg };
    const pending = this.pending.get(id);
    if (pending) pending.req = req;
    if (this.routerReady) this.dispatch(req);
    else this.wait(req, deadlineAt);
    return p;
  }

  /** Holds `req` until the first cluster map fetch has finished (so even the first ops are routed). */
  private wait(req: PipelineRequestMsg, deadlineAt: number): void {
    this.waiting.push(req);
    if (this.waiting.length > 1) return;
    const ready = this.deps.router!.ready(deadlineAt);
    const flush = (): void => {
      this.routerReady = true;
      const reqs = this.waiting;
      this.waiting = [];
      if (this.deps.transport.closed) return;
      for (const r of reqs) this.dispatch(r);
    };
    if (ready === undefined) flush();
    else void ready.then(flush);
  }

  /** Sends `req` on the stream to its shard's leader (or the shared stream when unrouted). */
  private dispatch(req: PipelineRequestMsg): void {
    const op = this.pending.get(req.id ?? 0);
    if (!op) return; // timed out while waiting
    const router = this.deps.router;
    const group = router?.routing ? router.groupOf(op.key) : undefined;
    const address = group === undefined ? undefined : router!.addressFor(group);
    const lane = address === undefined ? this.fallbackLane() : (this.lanes.get(address) ?? this.open(address));
    op.lane = lane;
    if (lane.blocked) {
      lane.backlog.push(req);
      return;
    }
    this.write(lane, req);
  }

  /** The shared stream of unrouted ops: on the leader hint, else the next endpoint. */
  private fallbackLane(): Lane {
    if (this.fallback !== undefined && this.lanes.get(this.fallback.address) === this.fallback) return this.fallback;
    const address = this.deps.transport.pick();
    this.fallback = this.lanes.get(address) ?? this.open(address);
    return this.fallback;
  }

  private open(address: string): Lane {
    const t = this.deps.transport;
    const connectMs = t.opts.connectTimeoutMs ?? 0;
    const gate = t.whenConnected(address, connectMs);
    const stream = t.kv(address).pipeline(t.kvMetadata(), {});
    // Until the connection is ready, ops wait in the backlog (never sent, so they can move elsewhere).
    const lane: Lane = {
      address, stream, headers: false, blocked: gate !== true, backlog: [], lastHeardAt: Date.now(), heard: 0, watchdog: undefined, batching: false, txn: false, outbox: [], mapEpoch: 0,
    };
    this.lanes.set(address, lane);
    if (gate !== true) {
      void gate.then((ok) => {
        if (this.lanes.get(address) !== lane) return;
        if (ok) {
          lane.blocked = false;
          this.flush(lane);
          return;
        }
        this.ended(lane, { code: grpc.status.UNAVAILABLE, details: `No connection established to ${address} within ${connectMs} ms`, metadata: new grpc.Metadata() });
        stream.cancel();
      });
    }
    stream.on('metadata', (md: grpc.Metadata) => {
      if (this.lanes.get(address) !== lane) return;
      lane.headers = true;
      lane.batching = md.get(META_PIPELINE_BATCH)[0] === '1';
      lane.txn = md.get(META_PIPELINE_TXN)[0] === '1';
      t.observer?.metadata(md);
      t.learn(md);
    });
    stream.on('data', (m: PipelineResponseMsg) => {
      lane.lastHeardAt = Date.now();
      lane.heard++;
      if (m.mapEpoch !== undefined && m.mapEpoch > lane.mapEpoch) {
        lane.mapEpoch = m.mapEpoch;
        t.observer?.metadata(kvMetadata({ mapEpoch: m.mapEpoch }));
      }
      if (m.batch !== undefined && m.batch.length > 0) for (const r of m.batch) this.answered(lane, r);
      else this.answered(lane, m);
    });
    stream.on('error', () => undefined); // reported through 'status'
    stream.on('status', (st: grpc.StatusObject) => this.ended(lane, st));
    return lane;
  }

  /** Hands one response to its op (unless it timed out meanwhile or was moved to another stream). */
  private answered(lane: Lane, m: PipelineResponseMsg): void {
    const id = m.id ?? 0;
    const a = this.attempts.get(id);
    if (a !== undefined && a.lane === lane) {
      this.attempts.delete(id);
      clearTimeout(a.timer);
      a.done(attemptOf(a.op, m, lane.address));
      return;
    }
    const op = this.pending.get(id);
    if (!op || op.lane !== lane) return;
    this.pending.delete(id);
    clearTimeout(op.timer);
    op.onResponse(m);
  }

  /**
   * Sends `req` on `lane`: at once, or, on a stream whose server takes batches, with the other
   * requests of this event-loop turn in one message (per-message gRPC and HTTP/2 work is then
   * paid once per turn; order is kept, and the server handles each op as its own message).
   */
  private write(lane: Lane, req: PipelineRequestMsg): void {
    if (!lane.batching) {
      if (this.stamp(lane, req)) this.writeMessage(lane, req);
      return;
    }
    lane.outbox.push(req);
    if (lane.outbox.length === 1) setImmediate(() => this.sendOutbox(lane));
    else if (lane.outbox.length >= MAX_PIPELINE_BATCH) this.sendOutbox(lane);
  }

  /** Sends what `lane`'s outbox holds (ops that timed out meanwhile are left out). */
  private sendOutbox(lane: Lane): void {
    const reqs = lane.outbox;
    if (reqs.length === 0) return;
    lane.outbox = [];
    if (this.lanes.get(lane.address) !== lane) {
      // The stream ended before the batch left: its ops never reached a server, so they are re-run elsewhere.
      for (const req of reqs) {
        const op = this.pending.get(req.id ?? 0);
        if (!op || op.lane !== lane) continue;
        this.pending.delete(req.id ?? 0);
        clearTimeout(op.timer);
        op.retry(op.deadlineAt - Date.now());
      }
      return;
    }
    const out = reqs.filter((r) => this.stamp(lane, r));
    if (out.length === 0) return;
    this.writeMessage(lane, out.length === 1 ? out[0]! : { batch: out });
  }

  /** Marks `req`'s op as handed to `lane` and sets its remaining time; false when the op is gone (timed out). */
  private stamp(lane: Lane, req: PipelineRequestMsg): boolean {
    const a = this.attempts.get(req.id ?? 0);
    if (a !== undefined) {
      a.written = true;
      a.heardBefore = lane.heard;
      req.timeoutMs = Math.max(1, a.deadlineAt - Date.now());
      return true;
    }
    const op = this.pending.get(req.id ?? 0);
    if (!op) return false;
    op.written = true;
    if (op.repeatable) this.watch(lane);
    req.timeoutMs = Math.max(1, op.deadlineAt - Date.now());
    return true;
  }

  /** Writes one message to `lane`'s stream, blocking the lane while the stream's buffer is past the window. */
  private writeMessage(lane: Lane, msg: PipelineRequestMsg): void {
    const s = lane.stream;
    s.write(msg);
    if (s.writableLength >= WRITE_WINDOW && s.writableNeedDrain) {
      lane.blocked = true;
      s.once('drain', () => {
        if (this.lanes.get(lane.address) !== lane) return;
        lane.blocked = false;
        this.flush(lane);
      });
    }
  }

  /**
   * Stream liveness: while repeatable ops (reads, session writes) wait on `lane`, the node must
   * answer something within the attempt timeout. Queueing behind other ops does not count against
   * it (a busy node keeps answering); a node that answers nothing at all is suspect: new ops route
   * around it and the waiting repeatable ops run again as unary calls, elsewhere, within their deadlines.
   */
  private watch(lane: Lane): void {
    const attemptMs = this.deps.transport.opts.attemptTimeoutMs ?? 0;
    if (attemptMs <= 0 || lane.watchdog !== undefined) return;
    let dueAt = Date.now() + attemptMs;
    const check = (): void => {
      lane.watchdog = undefined;
      if (this.lanes.get(lane.address) !== lane) return;
      const waiting = [...this.pending].filter(([, op]) => op.lane === lane && op.repeatable && op.written);
      if (waiting.length === 0) return;
      // A check that runs late means this process's own loop was busy (answers may be waiting,
      // unread, in the socket): that time is not the node's silence.
      const lateMs = Math.max(0, Date.now() - dueAt);
      const silentMs = Date.now() - lane.lastHeardAt - lateMs;
      if (silentMs < attemptMs) {
        const waitMs = Math.max(1, attemptMs - Math.max(0, silentMs));
        dueAt = Date.now() + waitMs;
        lane.watchdog = setTimeout(check, waitMs);
        lane.watchdog.unref();
        return;
      }
      this.deps.transport.suspect(lane.address);
      this.deps.router?.forgetAddress(lane.address);
      for (const [id, op] of waiting) {
        this.pending.delete(id);
        clearTimeout(op.timer);
        op.retry(op.deadlineAt - Date.now());
      }
    };
    lane.watchdog = setTimeout(check, attemptMs);
    lane.watchdog.unref();
  }

  /** Writes the backlog of an unblocked stream until it blocks again. */
  private flush(lane: Lane): void {
    while (lane.backlog.length > 0 && !lane.blocked) this.write(lane, lane.backlog.shift()!);
  }

  /** A stream ended: re-run what is safe to re-run, fail the rest. */
  private ended(lane: Lane, st: grpc.StatusObject): void {
    const t = this.deps.transport;
    t.observer?.metadata(st.metadata);
    if (this.lanes.get(lane.address) !== lane) return;
    this.lanes.delete(lane.address);
    const wasFallback = this.fallback === lane;
    if (wasFallback) this.fallback = undefined;
    lane.backlog = [];
    lane.blocked = false;
    this.endAttempts(lane, st);
    const ops: PendingOp[] = [];
    for (const [id, op] of this.pending) {
      if (op.lane !== lane) continue;
      this.pending.delete(id);
      ops.push(op);
    }
    if (ops.length === 0) return;
    if (st.code !== grpc.status.OK) t.observer?.failure(st);
    const connectionFailed = !lane.headers && neverSent(st);
    // A server without the Pipeline method executed nothing: every op runs as a unary call.
    const unsupported = st.code === grpc.status.UNIMPLEMENTED;
    if (unsupported) this.unsupported = true;
    if (st.code === grpc.status.UNAVAILABLE) {
      if (wasFallback) t.failedAt(lane.address, connectionFailed, readKvMetadata(st.metadata).leader);
      else t.markFailed(lane.address, connectionFailed);
      if (connectionFailed) this.deps.router?.unreachable(lane.address);
      else this.deps.router?.forgetAddress(lane.address);
    }
    const now = Date.now();
    const moved: PipelineRequestMsg[] = [];
    for (const op of ops) {
      if (connectionFailed && !op.rerouted && op.req !== undefined && !this.closing && !t.closed) {
        // Never sent: once, try the stream its route now names (the unreachable address is avoided).
        op.rerouted = true;
        op.written = false;
        this.pending.set(op.req.id ?? 0, op);
        moved.push(op.req);
        continue;
      }
      clearTimeout(op.timer);
      if (!op.written || connectionFailed || unsupported || op.repeatable) op.retry(op.deadlineAt - now);
      else {
        const code = st.code === grpc.status.OK ? grpc.status.UNAVAILABLE : st.code;
        op.reject(new KvError(code, `pipeline stream ended (${st.details || grpc.status[st.code]}); the ${op.op}'s outcome is unknown`, { endpoint: lane.address }));
      }
    }
    for (const req of moved) this.dispatch(req);
  }

  /**
   * The attempts carried on `lane` end as a unary attempt would when its call ended with `st`
   * (OK, a stream the server closed with ops unanswered, counts as UNAVAILABLE); against servers
   * without the Pipeline method they run as unary calls.
   */
  private endAttempts(lane: Lane, st: grpc.StatusObject): void {
    const code = st.code === grpc.status.OK ? grpc.status.UNAVAILABLE : st.code;
    for (const [id, a] of this.attempts) {
      if (a.lane !== lane) continue;
      this.attempts.delete(id);
      clearTimeout(a.timer);
      if (code === grpc.status.UNIMPLEMENTED) {
        this.unsupported = true;
        a.done(undefined);
        continue;
      }
      // A connection that could not be made keeps grpc-js's message (it tells the op never left).
      const details = !lane.headers && neverSent({ code, details: st.details }) ? st.details : `the pipeline stream to ${lane.address} ended (${st.details || grpc.status[st.code]}) before the ${a.op} was answered`;
      const err = statusError(code, details);
      err.metadata = st.metadata ?? new grpc.Metadata();
      a.done({ error: err, trailers: err.metadata, headers: lane.headers, notSent: !a.written });
    }
  }

  private abort(e: KvError): void {
    const lanes = [...this.lanes.values()];
    this.lanes.clear();
    this.fallback = undefined;
    for (const l of lanes) l.stream.cancel();
    for (const a of this.attempts.values()) {
      clearTimeout(a.timer);
      const err = statusError(e.grpcCode, e.message);
      a.done({ error: err, trailers: err.metadata, headers: false, notSent: !a.written });
    }
    this.attempts.clear();
    for (const op of this.pending.values()) {
      clearTimeout(op.timer);
      op.reject(e);
    }
    this.pending.clear();
    this.waiting = [];
  }
}
