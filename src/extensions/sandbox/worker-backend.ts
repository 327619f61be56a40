/** Runs one extension incarnation in a worker thread (with heap limits) and relays its messages (and, for native extensions, its blocking store calls) to the host services. */
import { Worker } from 'node:worker_threads';
import type { ExtensionEvent } from '../api.js';
import { serveSyncKvCalls, type SyncKvCall, type SyncKvServer } from '../native/sync-kv-bridge.js';
import type { Backend, BackendEvents, DownCause } from './backend.js';
import { ExtensionLoadError } from './errors.js';
import type { FromWorker, NativeInit, ToWorker } from './protocol.js';
import { copyBytes, errorMessage, prepareTransfer, reviveError, serializeError } from './transfer.js';
import type { HostServices, KvOp, LoadErrorCode, LogLevel, MetricKind, RegisteredWatch } from './types.js';

/** Heap limits of an extension worker (V8 heap only: ArrayBuffers/Buffers are not bounded). */
export interface WorkerLimits {
  maxOldGenerationSizeMb: number;
  maxYoungGenerationSizeMb: number;
  stackSizeMb: number;
}

/** Everything a WorkerBackend needs. */
export interface WorkerBackendOptions {
  name: string;
  moduleUrl: string;
  config: Record<string, unknown>;
  limits: WorkerLimits;
  host: HostServices;
  entryUrl: URL;
  events: BackendEvents;
  /** Set for a native package: the worker loads it with the native adapter, and its sync kv bridge is served here. */
  native?: NativeInit;
}

const KV_OPS: ReadonlySet<string> = new Set<KvOp>(['get', 'put', 'trigger', 'delete', 'list']);
const LOG_LEVELS: ReadonlySet<string> = new Set<LogLevel>(['debug', 'info', 'warn', 'error']);
const METRIC_KINDS: ReadonlySet<string> = new Set<MetricKind>(['counter', 'histogram']);
/** How long `kill` waits for `worker.terminate()` (a thread stuck in a native call may never stop). */
const TERMINATE_WAIT_MS = 2000;

/** One worker thread running the extension; see `Backend`. */
export class WorkerBackend implements Backend {
  readonly canKill = true;
  private worker: Worker | undefined;
  private dead = false;
  private killed: Promise<void> | undefined;
  private phase: 'new' | 'importing' | 'initializing' | 'ready' = 'new';
  private loadSettle: { resolve(w: RegisteredWatch[]): void; reject(e: Error): void } | undefined;
  private shutdownWaiter: ((r: Error | 'timeout' | undefined) => void) | undefined;
  private kvServer: SyncKvServer | undefined;

  constructor(private readonly o: WorkerBackendOptions) {}

  get alive(): boolean {
    return !this.dead;
  }

  load(timeoutMs: number): Promise<RegisteredWatch[]> {
    return new Promise<RegisteredWatch[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.loadFailed('INITIALIZE_TIMEOUT', `import + initialize() did not finish within ${timeoutMs} ms; the worker was terminated`);
      }, timeoutMs);
      this.loadSettle = {
        resolve: (w) => {
          clearTimeout(timer);
          resolve(w);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      let worker: Worker;
      try {
        worker = new Worker(this.o.entryUrl, { resourceLimits: { ...this.o.limits } });
      } catch (e) {
        this.loadFailed('IMPORT_FAILED', `cannot start a worker thread: ${errorMessage(e)}`, e);
        return;
      }
      this.worker = worker;
      worker.unref(); // a forgotten runner must not keep the process alive
      worker.on('error', (err: unknown) => this.onError(err));
      worker.on('exit', (code) => this.onExit(code));
      worker.on('messageerror', (err) => this.safeLog('warn', 'undeliverable message from the extension worker', { error: errorMessage(err) }));
      worker.on('message', (msg: unknown) => this.onMessage(msg));
      if (this.o.native) this.kvServer = this.serveNativeKv(worker);
      this.phase = 'importing';
      this.send({ t: 'init', name: this.o.name, moduleUrl: this.o.moduleUrl, config: this.o.config, ...(this.o.native ? { native: this.o.native } : {}) });
    });
  }

  invoke(id: number, watchId: number, event: ExtensionEvent): void {
    const value = copyBytes(event.value);
    const ev: ExtensionEvent = {
      type: event.type,
      key: event.key,
      value,
      version: event.version,
      timestamp: event.timestamp,
      shard: event.shard,
      hops: event.hops,
    };
    this.send({ t: 'invoke', id, watchId, event: ev }, value ? [value.buffer as ArrayBuffer] : []);
  }

  shutdown(timeoutMs: number): Promise<Error | 'timeout' | undefined> {
    if (this.dead || this.phase !== 'ready') return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => finish('timeout'), timeoutMs);
      const finish = (r: Error | 'timeout' | undefined) => {
        clearTimeout(timer);
        this.shutdownWaiter = undefined;
        resolve(r);
      };
      this.shutdownWaiter = finish;
      this.send({ t: 'shutdown' });
    });
  }

  kill(): Promise<void> {
    this.killed ??= (async () => {
      const w = this.worker;
      this.markDead();
      if (!w) return;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        w.terminate().then(
          () => undefined,
          () => undefined,
        ),
        new Promise<void>((r) => {
          timer = setTimeout(r, TERMINATE_WAIT_MS);
          timer.unref();
        }),
      ]);
      clearTimeout(timer);
    })();
    return this.killed;
  }

  private send(msg: ToWorker, transfer: ArrayBuffer[] = []): void {
    if (this.dead || !this.worker) return;
    this.worker.postMessage(msg, transfer);
  }

  private markDead(): void {
    this.dead = true;
    this.kvServer?.close(); // requests still in flight are dropped: the worker is gone (or times out)
    this.kvServer = undefined;
    this.shutdownWaiter?.(undefined);
  }

  /**
   * Serves the native extension's blocking host->get/put (sync kv bridge requests the worker posts
   * next to its protocol messages) with `host.kv`, passing the hop count the worker attached. The
   * worker waits at most its bridge timeout; a late answer is dropped by the bridge.
   */
  private serveNativeKv(worker: Worker): SyncKvServer {
    const hopsOf = (call: SyncKvCall): number => {
      if (call.hops === undefined || !Number.isSafeInteger(call.hops) || call.hops < 1) throw new TypeError('malformed kv request (no hop count)');
      return call.hops;
    };
    const record = (v: unknown, what: string): Record<string, unknown> => {
      if (v === null || typeof v !== 'object') throw new TypeError(`the host's ${what} returned no result object`);
      return v as Record<string, unknown>;
    };
    return serveSyncKvCalls(worker, {
      get: async (call) => {
        const r = record(await this.o.host.kv('get', [call.key], hopsOf(call)), 'get');
        const value = r['value'];
        return { found: r['found'] === true, value: value instanceof Uint8Array ? value : undefined, version: Number(r['version'] ?? 0) };
      },
      put: async (call, value) => {
        const r = record(await this.o.host.kv('put', [call.key, value], hopsOf(call)), 'put');
        return { succeeded: r['succeeded'] === true, version: Number(r['version'] ?? 0), currentVersion: Number(r['currentVersion'] ?? 0) };
      },
    });
  }

  private loadFailed(code: LoadErrorCode, message: string, cause?: unknown): void {
    const settle = this.loadSettle;
    this.loadSettle = undefined;
    void this.kill();
    settle?.reject(new ExtensionLoadError(code, this.o.name, message, { cause }));
  }

  /** The worker died on its own (uncaught error, out of memory, process.exit). */
  private died(cause: DownCause): void {
    if (this.dead) return;
    if (this.phase !== 'ready') {
      this.loadFailed(
        this.phase === 'initializing' ? 'INITIALIZE_THREW' : 'IMPORT_FAILED',
        `the worker died during ${this.phase === 'initializing' ? 'initialize()' : 'import'}: ${cause.message}`,
      );
      return;
    }
    this.markDead();
    void this.kill();
    this.o.events.down(cause);
  }

  private onError(err: unknown): void {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === 'ERR_WORKER_OUT_OF_MEMORY') {
      this.died({ kind: 'out-of-memory', message: `the worker ran out of memory (${errorMessage(err)})` });
    } else {
      this.died({ kind: 'worker-crashed', message: `uncaught error in the worker: ${errorMessage(err)}` });
    }
  }

  private onExit(code: number): void {
    this.died({ kind: 'worker-crashed', message: `the worker exited (code ${code})` });
  }

  private safeLog(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    try {
      this.o.host.log(level, msg, fields);
    } catch {
      // the host's logger failing must not take the runner down
    }
  }

  private onMessage(raw: unknown): void {
    if (this.dead || raw === null || typeof raw !== 'object') return;
    const msg = raw as FromWorker;
    switch (msg.t) {
      case 'imported':
        if (this.phase === 'importing') this.phase = 'initializing';
        return;
      case 'ready': {
        if (this.phase === 'ready' || !this.loadSettle) return;
        this.phase = 'ready';
        const settle = this.loadSettle;
        this.loadSettle = undefined;
        settle.resolve(msg.watches);
        return;
      }
      case 'init-failed': {
        const e = msg.error;
        this.loadFailed(e.loadCode ?? 'INITIALIZE_THREW', e.message, reviveError(msg.cause ?? e));
        return;
      }
      case 'done':
        if (typeof msg.id === 'number') this.o.events.done(msg.id, msg.error ? reviveError(msg.error) : undefined);
        return;
      case 'kv':
        this.onKv(msg);
        return;
      case 'log':
        if (LOG_LEVELS.has(msg.level)) this.safeLog(msg.level, String(msg.msg), msg.fields);
        return;
      case 'metric':
        if (!METRIC_KINDS.has(msg.kind)) return;
        try {
          this.o.host.metric(msg.kind, msg.name, msg.help, msg.op ?? {});
        } catch (e) {
          this.safeLog('warn', 'metric update failed', { metric: msg.name, error: errorMessage(e) });
        }
        return;
      case 'shutdown-done':
        this.shutdownWaiter?.(msg.error ? reviveError(msg.error) : undefined);
        return;
    }
  }

  private onKv(msg: Extract<FromWorker, { t: 'kv' }>): void {
    const { id } = msg;
    const reply = (r: { ok: true; value: unknown } | { ok: false; error: unknown }) => {
      if (this.dead) return;
      if (r.ok) {
        const prepared = prepareTransfer(r.value);
        try {
          this.send({ t: 'kv-result', id, ok: true, value: prepared.value }, prepared.transfer);
          return;
        } catch (e) {
          r = { ok: false, error: e };
        }
      }
      try {
        this.send({ t: 'kv-result', id, ok: false, error: serializeError(r.error) });
      } catch {
        // the worker is gone
      }
    };
    if (!KV_OPS.has(msg.op) || !Array.isArray(msg.args) || !Number.isSafeInteger(msg.hops) || msg.hops < 1) {
      reply({ ok: false, error: new TypeError('malformed kv request') });
      return;
    }
    let p: Promise<unknown>;
    try {
      p = Promise.resolve(this.o.host.kv(msg.op, msg.args, msg.hops));
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (value) => reply({ ok: true, value }),
      (error: unknown) => reply({ ok: false, error }),
    );
  }
}
