/** The part of a sandbox backend shared by worker threads and child processes: the load / invoke / shutdown protocol with the guest, and relaying its kv, log and metric calls to the host services. */
import type { ExtensionEvent } from '../api.js';
import type { Backend, BackendEvents, DownCause } from './backend.js';
import { ExtensionLoadError } from './errors.js';
import type { FromWorker, ToWorker } from './protocol.js';
import { copyBytes, errorMessage, prepareTransfer, reviveError, serializeError } from './transfer.js';
import type { KvOp, LoadErrorCode, LogLevel, MetricKind, RegisteredWatch, RelayedHostServices } from './types.js';

/** What every channel backend needs. */
export interface ChannelBackendOptions {
  name: string;
  moduleUrl: string;
  config: Record<string, unknown>;
  host: RelayedHostServices;
  events: BackendEvents;
}

const KV_OPS: ReadonlySet<string> = new Set<KvOp>(['get', 'put', 'trigger', 'delete', 'list', 'txn']);
const LOG_LEVELS: ReadonlySet<string> = new Set<LogLevel>(['debug', 'info', 'warn', 'error']);
const METRIC_KINDS: ReadonlySet<string> = new Set<MetricKind>(['counter', 'histogram']);

/**
 * A backend whose guest runs behind a message channel (protocol.ts). Subclasses start the guest
 * (`start`), carry messages (`post`), stop it (`terminate`) and report its death through `died`.
 */
export abstract class ChannelBackend implements Backend {
  readonly canKill = true;
  protected dead = false;
  private killed: Promise<void> | undefined;
  protected phase: 'new' | 'importing' | 'initializing' | 'ready' = 'new';
  private loadSettle: { resolve(w: RegisteredWatch[]): void; reject(e: Error): void } | undefined;
  private shutdownWaiter: ((r: Error | 'timeout' | undefined) => void) | undefined;

  constructor(protected readonly base: ChannelBackendOptions) {}

  /** What the guest runs in, for messages ("worker", "process"). */
  protected abstract readonly what: string;
  /** Starts the guest and wires its messages to `onMessage` and its death to `died`; throws when it cannot be started. */
  protected abstract start(): void;
  /**
   * Sends one message to the guest (only called while alive). When it cannot be sent (it cannot
   * be cloned), calls `onFail` (at once, or later for a batching channel); without `onFail`, may throw.
   */
  protected abstract post(msg: ToWorker, transfer: ArrayBuffer[], onFail?: (e: unknown) => void): void;
  /** Stops the guest for good; resolves once it is gone (or after a bounded wait). */
  protected abstract terminate(): Promise<void>;
  /** Called once when the backend is dead (killed or died): release what the subclass holds. */
  protected onDead(): void {}
  /** Observes the CPU time (µs) an invocation reported, before `done` is passed on. */
  protected onCpu(_cpuUs: number): void {}

  get alive(): boolean {
    return !this.dead;
  }

  load(timeoutMs: number): Promise<RegisteredWatch[]> {
    return new Promise<RegisteredWatch[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.loadFailed('INITIALIZE_TIMEOUT', `import + initialize() did not finish within ${timeoutMs} ms; the ${this.what} was terminated`);
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
      try {
        this.start();
      } catch (e) {
        this.loadFailed('IMPORT_FAILED', `cannot start a ${this.what}: ${errorMessage(e)}`, e);
        return;
      }
      this.phase = 'importing';
      this.send(this.initMessage());
    });
  }

  /** The `init` message sent once the guest started. */
  protected initMessage(): ToWorker {
    return { t: 'init', name: this.base.name, moduleUrl: this.base.moduleUrl, config: this.base.config };
  }

  invoke(id: number, watchId: number, event: ExtensionEvent): void {
    const value = copyBytes(event.value);
    const previousValue = copyBytes(event.previousValue);
    const ev: ExtensionEvent = {
      type: event.type,
      key: event.key,
      value,
      version: event.version,
      ...(event.revision !== undefined ? { revision: event.revision } : {}),
      ...(event.previousVersion !== undefined ? { previousVersion: event.previousVersion } : {}),
      ...(event.created !== undefined ? { created: event.created } : {}),
      ...(previousValue ? { previousValue } : {}),
      timestamp: event.timestamp,
      shard: event.shard,
      hops: event.hops,
    };
    const transfer = [value?.buffer, previousValue?.buffer].filter((b): b is ArrayBuffer => b !== undefined) as ArrayBuffer[];
    this.send({ t: 'invoke', id, watchId, event: ev }, transfer);
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
      this.markDead();
      await this.terminate();
    })();
    return this.killed;
  }

  protected send(msg: ToWorker, transfer: ArrayBuffer[] = [], onFail?: (e: unknown) => void): void {
    if (this.dead) return;
    this.post(msg, transfer, onFail);
  }

  private markDead(): void {
    if (this.dead) return;
    this.dead = true;
    this.onDead();
    this.shutdownWaiter?.(undefined);
  }

  protected loadFailed(code: LoadErrorCode, message: string, cause?: unknown): void {
    const settle = this.loadSettle;
    this.loadSettle = undefined;
    void this.kill();
    settle?.reject(new ExtensionLoadError(code, this.base.name, message, { cause }));
  }

  /** The guest died on its own (uncaught error, out of memory, exit) or was condemned by the subclass. */
  protected died(cause: DownCause): void {
    if (this.dead) return;
    if (this.phase !== 'ready') {
      this.loadFailed(
        this.phase === 'initializing' ? 'INITIALIZE_THREW' : 'IMPORT_FAILED',
        `the ${this.what} died during ${this.phase === 'initializing' ? 'initialize()' : 'import'}: ${cause.message}`,
      );
      return;
    }
    this.markDead();
    void this.kill();
    this.base.events.down(cause);
  }

  protected safeLog(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    try {
      this.base.host.log(level, msg, fields);
    } catch {
      // the host's logger failing must not take the runner down
    }
  }

  /** Handles one message from the guest. */
  protected onMessage(raw: unknown): void {
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
      case 'done': {
        if (typeof msg.id !== 'number') return;
        const cpuUs = typeof msg.cpuUs === 'number' && Number.isFinite(msg.cpuUs) && msg.cpuUs >= 0 ? msg.cpuUs : undefined;
        if (cpuUs !== undefined) this.onCpu(cpuUs);
        this.base.events.done(msg.id, msg.error ? reviveError(msg.error) : undefined, cpuUs);
        return;
      }
      case 'kv':
        this.onKv(msg);
        return;
      case 'log':
        if (LOG_LEVELS.has(msg.level)) this.safeLog(msg.level, String(msg.msg), msg.fields);
        return;
      case 'metric':
        if (!METRIC_KINDS.has(msg.kind)) return;
        try {
          this.base.host.metric(msg.kind, msg.name, msg.help, msg.op ?? {});
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
    const fail = (error: unknown) => {
      try {
        this.send({ t: 'kv-result', id, ok: false, error: serializeError(error) }, [], () => {});
      } catch {
        // the guest is gone
      }
    };
    const reply = (r: { ok: true; value: unknown } | { ok: false; error: unknown }) => {
      if (this.dead) return;
      if (!r.ok) {
        fail(r.error);
        return;
      }
      const prepared = prepareTransfer(r.value);
      try {
        this.send({ t: 'kv-result', id, ok: true, value: prepared.value }, prepared.transfer, fail);
      } catch (e) {
        fail(e);
      }
    };
    if (!KV_OPS.has(msg.op) || !Array.isArray(msg.args) || !Number.isSafeInteger(msg.hops) || msg.hops < 1 || (msg.invocation !== undefined && !Number.isSafeInteger(msg.invocation))) {
      reply({ ok: false, error: new TypeError('malformed kv request') });
      return;
    }
    let p: Promise<unknown>;
    try {
      p = Promise.resolve(this.base.host.kv(msg.op, msg.args, msg.hops, msg.effect, msg.invocation));
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (value) => reply({ ok: true, value }),
      (error: unknown) => reply({ ok: false, error }),
    );
  }
}
