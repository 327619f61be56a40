/** Runs one extension incarnation in a worker thread (with heap limits) and relays its messages (and, for native extensions, its blocking store calls) to the host services. */
import { Worker } from 'node:worker_threads';
import { serveSyncKvCalls, type SyncKvCall, type SyncKvServer } from '../native/sync-kv-bridge.js';
import type { BackendEvents } from './backend.js';
import { ChannelBackend } from './channel-backend.js';
import type { NativeInit, ToWorker } from './protocol.js';
import { errorMessage } from './transfer.js';
import type { RelayedHostServices } from './types.js';

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
  host: RelayedHostServices;
  entryUrl: URL;
  events: BackendEvents;
  /** Set for a native package: the worker loads it with the native adapter, and its sync kv bridge is served here. */
  native?: NativeInit;
}

/** How long `kill` waits for `worker.terminate()` (a thread stuck in a native call may never stop). */
const TERMINATE_WAIT_MS = 2000;

/** One worker thread running the extension; see `Backend`. */
export class WorkerBackend extends ChannelBackend {
  protected readonly what = 'worker';
  private worker: Worker | undefined;
  private kvServer: SyncKvServer | undefined;

  constructor(private readonly o: WorkerBackendOptions) {
    super(o);
  }

  protected start(): void {
    const worker = new Worker(this.o.entryUrl, { resourceLimits: { ...this.o.limits } });
    this.worker = worker;
    worker.unref(); // a forgotten runner must not keep the process alive
    worker.on('error', (err: unknown) => this.onError(err));
    worker.on('exit', (code) => this.died({ kind: 'worker-crashed', message: `the worker exited (code ${code})` }));
    worker.on('messageerror', (err) => this.safeLog('warn', 'undeliverable message from the extension worker', { error: errorMessage(err) }));
    worker.on('message', (msg: unknown) => this.onMessage(msg));
    if (this.o.native) this.kvServer = this.serveNativeKv(worker);
  }

  protected override initMessage(): ToWorker {
    return { t: 'init', name: this.o.name, moduleUrl: this.o.moduleUrl, config: this.o.config, ...(this.o.native ? { native: this.o.native } : {}) };
  }

  protected post(msg: ToWorker, transfer: ArrayBuffer[], onFail?: (e: unknown) => void): void {
    if (!onFail) {
      this.worker?.postMessage(msg, transfer);
      return;
    }
    try {
      this.worker?.postMessage(msg, transfer);
    } catch (e) {
      onFail(e);
    }
  }

  protected override onDead(): void {
    this.kvServer?.close(); // requests still in flight are dropped: the worker is gone (or times out)
    this.kvServer = undefined;
  }

  protected async terminate(): Promise<void> {
    const w = this.worker;
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
  }

  /**
   * Serves the native extension's blocking host->get/put (sync kv bridge requests the worker posts
   * next to its protocol messages) with `host.kv`, passing the hop count and a put's idempotency
   * key the worker attached. The worker waits at most its bridge timeout; a late answer is
   * dropped by the bridge.
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
        const r = record(await this.o.host.kv('put', [call.key, value], hopsOf(call), call.effect), 'put');
        return { succeeded: r['succeeded'] === true, version: Number(r['version'] ?? 0), currentVersion: Number(r['currentVersion'] ?? 0) };
      },
    });
  }

  private onError(err: unknown): void {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === 'ERR_WORKER_OUT_OF_MEMORY') {
      this.died({ kind: 'out-of-memory', message: `the worker ran out of memory (${errorMessage(err)})` });
    } else {
      this.died({ kind: 'worker-crashed', message: `uncaught error in the worker: ${errorMessage(err)}` });
    }
  }
}
