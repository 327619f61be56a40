/** Many puts, gets, deletes and trigger puts in flight on one Pipeline stream, matched to their responses by id. */
import * as grpc from '@grpc/grpc-js';
import { neverReachedServer, readKvMetadata } from '../server/metadata.js';
import type {
  DeleteRequestMsg,
  GetRequestMsg,
  PipelineRequestMsg,
  PipelineResponseMsg,
  PutRequestMsg,
  TriggerRequestMsg,
} from '../server/proto.js';
import { KvError } from './errors.js';
import type { Transport } from './transport.js';
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

/**
 * Requests the client lets grpc-js buffer before waiting for 'drain'. Waiting at the stream's
 * default high-water mark (16 messages) costs a flush round per 16 ops; the server bounds its
 * own in-flight ops anyway, so a larger window only trades a little memory for throughput.
 */
const WRITE_WINDOW = 4096;

interface PendingOp {
  readonly op: Op;
  readonly deadlineAt: number;
  readonly timer: NodeJS.Timeout;
  /** Handed to the stream (it may have reached the server). */
  written: boolean;
  readonly onResponse: (m: PipelineResponseMsg) => void;
  readonly reject: (e: unknown) => void;
  /** Re-runs the op as a unary call (with retries) within the remaining time. */
  readonly retry: (remainingMs: number) => void;
}

/** What a pipeline needs from the client: the transport and unary fallbacks for retries. */
export interface PipelineDeps {
  readonly transport: Transport;
  readonly defaultDeadlineMs: number;
  put(key: string, value: Uint8Array, opts: KvPutOptions): Promise<KvPutResult>;
  get(key: string, opts: KvGetOptions): Promise<KvGetResult>;
  delete(key: string, opts: KvDeleteOptions): Promise<KvDeleteResult>;
  trigger(key: string, value: Uint8Array, opts: KvTriggerOptions): Promise<KvTriggerResult>;
}

/**
 * Puts, gets, deletes and trigger puts multiplexed on one Pipeline stream (opened lazily on the leader, or the
 * next endpoint). Each op has its own deadline. If the stream breaks, reads and ops that never
 * left the client are re-run as unary calls (with the usual retries); writes that may have
 * reached the server fail with KvError UNAVAILABLE (outcome unknown). Per-op errors from the
 * server (e.g. INVALID_ARGUMENT) reject only that op.
 */
export class KvPipeline {
  private stream: grpc.ClientDuplexStream<PipelineRequestMsg, PipelineResponseMsg> | undefined;
  private address: string | undefined;
  private headers = false;
  private nextId = 1;
  private readonly pending = new Map<number, PendingOp>();
  private readonly settled = new Set<Promise<unknown>>();
  private backlog: PipelineRequestMsg[] = [];
  private blocked = false;
  private closing: Promise<void> | undefined;
  private readonly onClientClose = (): void => this.abort(new KvError(grpc.status.CANCELLED, 'client closed'));

  /** Creates a pipeline; nothing is opened until the first op. */
  constructor(private readonly deps: PipelineDeps) {
    deps.transport.closeSignal.addEventListener('abort', this.onClientClose, { once: true });
  }

  /** Ops sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
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
    return this.submit('put', msg, opts.deadlineMs, (m) => putResult(m.put ?? {}), (ms) =>
      this.deps.put(key, bytes, { ...opts, deadlineMs: ms }),
    );
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
    return this.submit('get', msg, opts.deadlineMs, (m) => getResult(m.get ?? {}), (ms) =>
      this.deps.get(key, { ...opts, deadlineMs: ms }),
    );
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
    return this.submit('delete', msg, opts.deadlineMs, (m) => deleteResult(m.delete ?? {}), (ms) =>
      this.deps.delete(key, { ...opts, deadlineMs: ms }),
    );
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
    return this.submit('trigger', msg, opts.deadlineMs, (m) => triggerResult(m.trigger ?? {}), (ms) =>
      this.deps.trigger(key, bytes, { ...opts, deadlineMs: ms }),
    );
  }

  /** Waits for every op in flight, then half-closes the stream and waits for it to end. Later ops fail with CANCELLED. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.settled.size > 0) await Promise.allSettled([...this.settled]);
      this.deps.transport.closeSignal.removeEventListener('abort', this.onClientClose);
      const s = this.stream;
      if (!s) return;
      await new Promise<void>((resolve) => {
        s.once('status', () => resolve());
        s.end();
      });
      if (this.stream === s) this.stream = undefined;
    })();
    return this.closing;
  }

  private submit<R>(
    op: Op,
    msg: PutRequestMsg | GetRequestMsg | DeleteRequestMsg | TriggerRequestMsg,
    timeoutMs: number | undefined,
    convert: (m: PipelineResponseMsg) => R,
    unary: (remainingMs: number) => Promise<R>,
  ): Promise<R> {
    if (this.closing || this.deps.transport.closed) {
      return Promise.reject(new KvError(grpc.status.CANCELLED, 'pipeline closed'));
    }
    const id = this.nextId++;
    const deadlineAt = Date.now() + (timeoutMs ?? this.deps.defaultDeadlineMs);
    const p = new Promise<R>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(new KvError(grpc.status.DEADLINE_EXCEEDED, `pipelined ${op} timed out`));
      }, deadlineAt - Date.now());
      timer.unref();
      this.pending.set(id, {
        op,
        deadlineAt,
        timer,
        written: false,
        onResponse: (m) => {
          if (m.error) {
            const code = (m.error.code ?? grpc.status.UNKNOWN) as grpc.status;
            const e = new KvError(code, m.error.message ?? '', { endpoint: this.address });
            // Reads are always safe to retry elsewhere.
            if (op === 'get' && code === grpc.status.UNAVAILABLE) unary(deadlineAt - Date.now()).then(resolve, reject);
            else reject(e);
            return;
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
      });
    });
    const tracked = p.then(
      () => undefined,
      () => undefined,
    );
    this.settled.add(tracked);
    void tracked.then(() => this.settled.delete(tracked));
    this.send({ id, [op]: msg });
    return p;
  }

  private open(): grpc.ClientDuplexStream<PipelineRequestMsg, PipelineResponseMsg> {
    const t = this.deps.transport;
    const address = t.pick();
    const s = t.kv(address).pipeline(new grpc.Metadata(), {});
    this.stream = s;
    this.address = address;
    this.headers = false;
    this.blocked = false;
    s.on('metadata', (md: grpc.Metadata) => {
      if (this.stream !== s) return;
      this.headers = true;
      t.learn(md);
    });
    s.on('data', (m: PipelineResponseMsg) => {
      const op = this.pending.get(m.id ?? 0);
      if (!op) return; // timed out meanwhile
      this.pending.delete(m.id ?? 0);
      clearTimeout(op.timer);
      op.onResponse(m);
    });
    s.on('error', () => undefined); // reported through 'status'
    s.on('status', (st: grpc.StatusObject) => this.ended(s, address, st));
    return s;
  }

  private send(req: PipelineRequestMsg): void {
    const s = this.stream ?? this.open();
    if (this.blocked) {
      this.backlog.push(req);
      return;
    }
    this.write(s, req);
  }

  private write(s: grpc.ClientDuplexStream<PipelineRequestMsg, PipelineResponseMsg>, req: PipelineRequestMsg): void {
    const op = this.pending.get(req.id ?? 0);
    if (!op) return; // timed out before it could be sent
    op.written = true;
    s.write(req);
    if (s.writableLength >= WRITE_WINDOW && s.writableNeedDrain) {
      this.blocked = true;
      s.once('drain', () => {
        if (this.stream !== s) return;
        this.blocked = false;
        while (this.backlog.length > 0 && !this.blocked) this.write(s, this.backlog.shift()!);
      });
    }
  }

  /** The stream ended: re-run what is safe to re-run, fail the rest. */
  private ended(s: grpc.ClientDuplexStream<PipelineRequestMsg, PipelineResponseMsg>, address: string, st: grpc.StatusObject): void {
    if (this.stream !== s) return;
    this.stream = undefined;
    this.backlog = [];
    this.blocked = false;
    if (this.pending.size === 0) return;
    const connectionFailed = !this.headers && neverReachedServer(st);
    if (st.code === grpc.status.UNAVAILABLE) this.deps.transport.failed(address, connectionFailed, readKvMetadata(st.metadata).leader);
    const ops = [...this.pending.values()];
    this.pending.clear();
    const now = Date.now();
    for (const op of ops) {
      clearTimeout(op.timer);
      if (!op.written || connectionFailed || op.op === 'get') op.retry(op.deadlineAt - now);
      else {
        const code = st.code === grpc.status.OK ? grpc.status.UNAVAILABLE : st.code;
        op.reject(new KvError(code, `pipeline stream ended (${st.details || grpc.status[st.code]}); the ${op.op}'s outcome is unknown`, { endpoint: address }));
      }
    }
  }

  private abort(e: KvError): void {
    const s = this.stream;
    this.stream = undefined;
    s?.cancel();
    for (const op of this.pending.values()) {
      clearTimeout(op.timer);
      op.reject(e);
    }
    this.pending.clear();
    this.backlog = [];
  }
}
