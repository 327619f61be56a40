/** A synchronous key-value bridge from a worker thread to the main thread over a SharedArrayBuffer + Atomics.wait. */

import { isMainThread, parentPort } from 'node:worker_threads';
import type { ExtensionKv } from '../api.js';
import { KvcStatus, kvcStatusName } from './abi.js';

/*
 * Why: native lambdas call host->get / host->put synchronously, but the store (ExtensionKv) is
 * async and lives on the main thread. The worker half (createSyncKvClient) turns each call into a
 * message to the main thread and then BLOCKS ITS OWN THREAD in Atomics.wait until the main-thread
 * half (serveSyncKv) has awaited the real store and written the answer into a SharedArrayBuffer.
 * Only the worker ever blocks: the main thread just handles a message and awaits a promise, so it
 * stays responsive. A native lambda therefore holds its worker (not the node) while it waits.
 * Each request may carry a hop count (client option `hops`), which serveSyncKvCalls hands to the
 * store so that loop protection also covers native writes, and a put an idempotency key (client
 * option `effect`), so that a redelivered event's native writes apply once.
 *
 * Shared buffer layout (one buffer per client; one request in flight at a time):
 *   Int32 word 0  STATE   0 idle | id > 0 request `id` pending | -1 main thread writing | -2 answer ready
 *   Int32 word 1  STATUS  a KvcStatus code (OK, NOT_FOUND or ERR_*)
 *   Int32 word 2  LENGTH  bytes used in the data area (the value, or a UTF-8 error message)
 *   Int32 word 3  (reserved)
 *   Float64 @16   VERSION the key's version (get) or the new version (put)
 *   bytes @24..   DATA    capacity = maxValueBytes
 *
 * Handshake (both sides claim the slot with compareExchange, so a late answer to a request that
 * timed out can never be read as the answer to the next one):
 *   worker: STATE := id; postMessage(request); Atomics.wait while STATE is id or -1.
 *   main:   await the store; if CAS(STATE, id -> -1) succeeds, write STATUS/LENGTH/VERSION/DATA,
 *           STATE := -2, Atomics.notify. If it fails the worker gave up: drop the answer.
 *   worker on timeout: if CAS(STATE, id -> 0) succeeds the request is abandoned (KVC_ERR_TIMEOUT);
 *           otherwise the main thread is mid-write: wait for -2 and use the answer.
 */

/** What a synchronous get returns. */
export interface SyncGetResult {
  readonly found: boolean;
  readonly value: Uint8Array | undefined;
  readonly version: number;
}

/** What a synchronous put returns. */
export interface SyncPutResult {
  readonly version: number;
}

/** Synchronous store access for native lambdas; failures throw {@link SyncKvError}. */
export interface SyncKv {
  get(key: string): SyncGetResult;
  put(key: string, value: Uint8Array): SyncPutResult;
}

/** A failed synchronous store call, carrying the native return code (a negative `KvcStatus`). */
export class SyncKvError extends Error {
  /** Creates the error for `code` (a `KvcStatus.ERR_*`). */
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(`${kvcStatusName(code)}: ${message}`);
    this.name = 'SyncKvError';
  }
}

/** The part of the store the main-thread half serves (an ExtensionKv fits). */
export type SyncKvBackend = Pick<ExtensionKv, 'get' | 'put'>;

/** Where the worker half posts its requests: `parentPort` or a MessagePort sent to the worker. */
export interface SyncKvRequestPort {
  postMessage(message: unknown): void;
}

/** What the main-thread half listens on: the `Worker` object or the other end of the MessagePort. */
export interface SyncKvServePort {
  on(event: 'message', listener: (message: unknown) => void): unknown;
  off(event: 'message', listener: (message: unknown) => void): unknown;
}

/** Options of {@link createSyncKvClient}. */
export interface SyncKvClientOptions {
  /** How long one call may block the worker before it fails with KVC_ERR_TIMEOUT (default 5000 ms). */
  readonly timeoutMs?: number;
  /** Size of the shared data area: larger values fail with KVC_ERR_TOO_LARGE (default 1 MiB, the store's own value limit). */
  readonly maxValueBytes?: number;
  /**
   * Called at each get/put; the hop count it returns travels with the request (see
   * {@link SyncKvCall.hops}), so the main thread can apply loop protection to native writes. The
   * extension runner passes the hop count of the event being handled + 1 (1 during initialize).
   */
  readonly hops?: () => number;
  /**
   * Called at each put; the idempotency key it returns travels with the request (see
   * {@link SyncKvCall.effect}). The extension runner passes the session derived from the event
   * being handled and the write (undefined outside a lambda).
   */
  readonly effect?: (op: 'put', key: string) => SyncKvEffect | undefined;
}

/** The idempotency key (a client session and its sequence number) of one put: see sandbox/effect-session.ts. */
export interface SyncKvEffect {
  readonly id: string;
  readonly seq: number;
}

/** Default {@link SyncKvClientOptions.timeoutMs}. */
export const DEFAULT_SYNC_KV_TIMEOUT_MS = 5000;
/** Default {@link SyncKvClientOptions.maxValueBytes} (the state machine's MAX_VALUE_BYTES). */
export const DEFAULT_SYNC_KV_MAX_VALUE_BYTES = 1024 * 1024;

/** Smallest data area accepted, so that error messages fit. */
const MIN_CAPACITY = 256;
const HEADER_BYTES = 24;
const STATE = 0;
const STATUS = 1;
const LENGTH = 2;
const IDLE = 0;
const WRITING = -1;
const DONE = -2;
const MAX_ID = 0x3fffffff;
/** Marks bridge messages so they can share a port with other traffic. */
const TAG = 'kvcascade.syncKv.v1';

/** A request as posted by the worker half. */
interface SyncKvRequest {
  readonly tag: typeof TAG;
  readonly id: number;
  readonly op: 'get' | 'put';
  readonly key: string;
  readonly value?: Uint8Array;
  readonly sab: SharedArrayBuffer;
  /** The hop count given by {@link SyncKvClientOptions.hops} (absent without it). */
  readonly hops?: number;
  /** The put's idempotency key given by {@link SyncKvClientOptions.effect} (absent without it). */
  readonly effect?: SyncKvEffect;
}

function isRequest(m: unknown): m is SyncKvRequest {
  if (typeof m !== 'object' || m === null) return false;
  const r = m as Partial<SyncKvRequest>;
  return r.tag === TAG && typeof r.id === 'number' && (r.op === 'get' || r.op === 'put') && r.sab instanceof SharedArrayBuffer;
}

/**
 * The worker half: a {@link SyncKv} whose calls block this worker until the main thread (running
 * {@link serveSyncKv} on the other end of `port`) answers, at most `timeoutMs`. Throws if called on
 * the main thread, where blocking would stall the node and could never be answered.
 */
export function createSyncKvClient(port?: SyncKvRequestPort, options: SyncKvClientOptions = {}): SyncKv {
  if (isMainThread) throw new Error('createSyncKvClient must run in a worker thread: it blocks its thread with Atomics.wait');
  const target = port ?? parentPort;
  if (!target) throw new Error('createSyncKvClient: no port given and no parentPort');
  const timeoutMs = options.timeoutMs ?? DEFAULT_SYNC_KV_TIMEOUT_MS;
  const hopsOf = options.hops;
  const effectOf = options.effect;
  const capacity = Math.max(MIN_CAPACITY, options.maxValueBytes ?? DEFAULT_SYNC_KV_MAX_VALUE_BYTES);
  if (!(timeoutMs > 0)) throw new RangeError('timeoutMs must be > 0');

  const sab = new SharedArrayBuffer(HEADER_BYTES + capacity);
  const words = new Int32Array(sab, 0, 4);
  const version = new Float64Array(sab, 16, 1);
  const data = new Uint8Array(sab, HEADER_BYTES, capacity);
  let lastId = 0;

  const call = (op: 'get' | 'put', key: string, value?: Uint8Array): { status: number; version: number; bytes: Uint8Array } => {
    if (typeof key !== 'string') throw new SyncKvError(KvcStatus.ERR_INVALID, 'key must be a string');
    if (value && value.byteLength > capacity) {
      throw new SyncKvError(KvcStatus.ERR_TOO_LARGE, `value of ${value.byteLength} bytes exceeds the ${capacity}-byte bridge buffer`);
    }
    if (Atomics.load(words, STATE) !== IDLE) throw new SyncKvError(KvcStatus.ERR_STATE, 'a sync kv call is already in flight');
    let hops: number | undefined;
    if (hopsOf) {
      hops = hopsOf();
      if (!Number.isSafeInteger(hops) || hops < 0) throw new SyncKvError(KvcStatus.ERR_STATE, `invalid hop count ${String(hops)}`);
    }
    const effect = op === 'put' ? effectOf?.('put', key) : undefined;
    lastId = lastId >= MAX_ID ? 1 : lastId + 1;
    const id = lastId;
    Atomics.store(words, STATE, id);
    // slice(): post only these bytes (cloning a view would copy its whole backing buffer).
    const base = { tag: TAG, id, op, key, sab, ...(hops === undefined ? {} : { hops }), ...(effect ? { effect: { id: effect.id, seq: effect.seq } } : {}) } as const;
    const request: SyncKvRequest = value ? { ...base, value: value.slice() } : base;
    try {
      target.postMessage(request);
    } catch (err) {
      Atomics.store(words, STATE, IDLE);
      throw new SyncKvError(KvcStatus.ERR_IO, `cannot post the request: ${(err as Error).message}`);
    }

    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const s = Atomics.load(words, STATE);
      if (s === DONE) break;
      if (s === id) {
        const remaining = deadline - performance.now();
        if (remaining <= 0) {
          // Give up, unless the main thread claimed the slot an instant ago (then its answer is coming).
          if (Atomics.compareExchange(words, STATE, id, IDLE) === id) {
            throw new SyncKvError(KvcStatus.ERR_TIMEOUT, `${op} ${JSON.stringify(key)} got no answer within ${timeoutMs} ms`);
          }
          continue;
        }
        Atomics.wait(words, STATE, id, remaining);
      } else if (s === WRITING) {
        Atomics.wait(words, STATE, WRITING, 50); // a synchronous write in progress: microseconds
      } else {
        Atomics.store(words, STATE, IDLE);
        throw new SyncKvError(KvcStatus.ERR_STATE, `bridge buffer in unexpected state ${s}`);
      }
    }
    const status = Atomics.load(words, STATUS);
    const length = Atomics.load(words, LENGTH);
    const result = { status, version: version[0]!, bytes: data.slice(0, length) };
    Atomics.store(words, STATE, IDLE);
    return result;
  };

  const fail = (status: number, bytes: Uint8Array): never => {
    throw new SyncKvError(status < 0 ? status : KvcStatus.ERR_IO, new TextDecoder().decode(bytes) || 'failed');
  };

  return {
    get(key) {
      const r = call('get', key);
      if (r.status === KvcStatus.OK) return { found: true, value: r.bytes, version: r.version };
      if (r.status === KvcStatus.NOT_FOUND) return { found: false, value: undefined, version: 0 };
      return fail(r.status, r.bytes);
    },
    put(key, value) {
      const r = call('put', key, value);
      if (r.status === KvcStatus.OK) return { version: r.version };
      return fail(r.status, r.bytes);
    },
  };
}

/** A running {@link serveSyncKv}; `close()` stops listening (requests then time out in the worker). */
export interface SyncKvServer {
  close(): void;
}

/** One request as the main-thread half hands it to a {@link SyncKvHandler}. */
export interface SyncKvCall {
  /** The key of the get/put. */
  readonly key: string;
  /**
   * The hop count the worker attached ({@link SyncKvClientOptions.hops}); undefined when the client
   * was created without `hops`.
   */
  readonly hops: number | undefined;
  /** A put's idempotency key ({@link SyncKvClientOptions.effect}); undefined without one. */
  readonly effect: SyncKvEffect | undefined;
}

/**
 * What {@link serveSyncKvCalls} performs each request with. Results and errors are mapped as by
 * {@link serveSyncKv}.
 */
export interface SyncKvHandler {
  /** Reads `call.key`. */
  get(call: SyncKvCall): Promise<{ found: boolean; value?: Uint8Array | undefined; version: number }>;
  /** Writes `value` at `call.key`. */
  put(call: SyncKvCall, value: Uint8Array): Promise<{ succeeded: boolean; version: number; currentVersion: number }>;
}

/**
 * The main-thread half: answers the requests that {@link createSyncKvClient} posts on `port` (a
 * `Worker`, or the MessagePort paired with the worker's) by awaiting `kv` and writing the result
 * into the request's shared buffer. Never blocks; store errors become KVC_ERR_IO (a refused put:
 * KVC_ERR_CONFLICT) with the error message; values larger than the worker's buffer, KVC_ERR_TOO_LARGE.
 * Other messages on `port` are ignored.
 */
export function serveSyncKv(port: SyncKvServePort, kv: SyncKvBackend): SyncKvServer {
  return serveSyncKvCalls(port, {
    get: (call) => kv.get(call.key),
    put: (call, value) => kv.put(call.key, value),
  });
}

/**
 * Like {@link serveSyncKv}, but each request goes to `handler` with its {@link SyncKvCall} (key and
 * the hop count the worker attached), e.g. to forward it to the extension runner's host services.
 * After `close()`, requests still being handled are left unanswered (the worker times out).
 */
export function serveSyncKvCalls(port: SyncKvServePort, handler: SyncKvHandler): SyncKvServer {
  const encoder = new TextEncoder();
  let closed = false;

  const answer = (req: SyncKvRequest, status: number, version: number, bytes: Uint8Array | string): void => {
    if (closed) return;
    const words = new Int32Array(req.sab, 0, 4);
    if (Atomics.compareExchange(words, STATE, req.id, WRITING) !== req.id) return; // the worker timed out
    const data = new Uint8Array(req.sab, HEADER_BYTES);
    let length: number;
    if (typeof bytes === 'string') {
      length = encoder.encodeInto(bytes, data).written; // truncated to the buffer if need be
    } else if (bytes.byteLength > data.byteLength) {
      status = KvcStatus.ERR_TOO_LARGE;
      length = encoder.encodeInto(`value of ${req.key} is ${bytes.byteLength} bytes; the bridge buffer holds ${data.byteLength}`, data).written;
    } else {
      data.set(bytes);
      length = bytes.byteLength;
    }
    new Float64Array(req.sab, 16, 1)[0] = version;
    Atomics.store(words, STATUS, status);
    Atomics.store(words, LENGTH, length);
    Atomics.store(words, STATE, DONE);
    Atomics.notify(words, STATE);
  };

  const handle = async (req: SyncKvRequest): Promise<void> => {
    try {
      if (typeof req.key !== 'string') throw new TypeError('malformed sync kv request: the key must be a string');
      const fx = req.effect;
      const effect = fx && typeof fx.id === 'string' && Number.isSafeInteger(fx.seq) && fx.seq >= 1 ? { id: fx.id, seq: fx.seq } : undefined;
      const call: SyncKvCall = { key: req.key, hops: typeof req.hops === 'number' ? req.hops : undefined, effect };
      if (req.op === 'get') {
        const r = await handler.get(call);
        if (r.found) answer(req, KvcStatus.OK, r.version, r.value ?? new Uint8Array());
        else answer(req, KvcStatus.NOT_FOUND, 0, new Uint8Array());
      } else {
        const r = await handler.put(call, req.value instanceof Uint8Array ? req.value : new Uint8Array());
        if (r.succeeded) answer(req, KvcStatus.OK, r.version, new Uint8Array());
        else answer(req, KvcStatus.ERR_CONFLICT, r.currentVersion, `put ${req.key} refused (current version ${r.currentVersion})`);
      }
    } catch (err) {
      answer(req, KvcStatus.ERR_IO, 0, err instanceof Error ? err.message : String(err));
    }
  };

  const listener = (message: unknown): void => {
    if (!closed && isRequest(message)) void handle(message);
  };
  port.on('message', listener);
  return {
    close: () => {
      if (closed) return;
      closed = true;
      port.off('message', listener);
    },
  };
}
