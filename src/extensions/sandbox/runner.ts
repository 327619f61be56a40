/**
 * ExtensionRunner: loads one extension (a JS module or a native C-ABI package) and runs its lambdas, isolated in a worker thread, in a child process (JS only) or in-process (trusted mode, JS only).
 *
 * Size: one class (about 850 lines) because loading, the invocation queue, timeouts, the
 * restart-with-backoff loop and poison-event isolation (suspects run alone) all act on the same
 * current backend and pending invocations, whose transitions must be read together; the
 * backends themselves (worker, child process, in-process) and the wire protocol live apart.
 */
import { stat } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { realScheduler, type Scheduler, type TimerHandle } from '../../node/scheduler.js';
import type { ExtensionEvent } from '../api.js';
import { DEFAULT_SYNC_KV_TIMEOUT_MS } from '../native/sync-kv-bridge.js';
import type { Backend, BackendEvents, DownCause } from './backend.js';
import { kvCallDeadline } from './call-deadline.js';
import { ExtensionLoadError, LambdaError } from './errors.js';
import { InProcessBackend } from './in-process-backend.js';
import { ProcessBackend, type ProcessLimits } from './process-backend.js';
import { resolveExtension, type ResolvedExtension } from './resolve.js';
import { errorMessage } from './transfer.js';
import type { HostServices, LogLevel, RegisteredWatch, RelayedHostServices } from './types.js';
import { WorkerBackend, type WorkerLimits } from './worker-backend.js';
import { sandboxEntryUrl } from './worker-url.js';

/** How to load and run one extension. */
export interface RunnerOptions {
  /** The extension's name (`ctx.name`, error messages). */
  name: string;
  /**
   * A folder with a package.json (ESM or CommonJS, with its own node_modules) or a module file. A
   * folder whose package.json has `"kvcascade": { "native": "<path of the .so>" }` is a native
   * extension (C ABI, `extensions/native/kvcascade.h`): worker mode only.
   */
  modulePath: string;
  /** The extension's configuration (`ctx.config`); must be structured-cloneable. Default `{}`. */
  config?: Record<string, unknown>;
  /**
   * Where the lambdas run (see {@link IsolationMode}). Default: `RUNNER_DEFAULTS.mode` for a JS
   * module; a native package always runs in a worker.
   */
  mode?: IsolationMode;
  /**
   * Heap limits (see RUNNER_DEFAULTS); they bound the V8 heap only, not ArrayBuffers/Buffers nor
   * CPU. In process mode only `maxOldGenerationSizeMb` applies (`--max-old-space-size`).
   */
  resourceLimits?: { maxOldGenerationSizeMb?: number; maxYoungGenerationSizeMb?: number; stackSizeMb?: number };
  /**
   * Process mode: the budget for the child process's whole resident memory (V8 heap, Buffers and
   * ArrayBuffers, native allocations), MiB; past it the process is killed and its invocations fail
   * with kind `out-of-memory`. Default `RUNNER_DEFAULTS.memoryLimitMb`.
   */
  memoryLimitMb?: number;
  /** Process mode: how often the node samples the child's RSS and CPU time, ms (default 100). */
  memorySampleMs?: number;
  /** Process mode: a hard RLIMIT_AS for the child (`prlimit --as`), MiB; 0 (default) = none. See `ProcessLimits.addressSpaceMb`. */
  addressSpaceLimitMb?: number;
  /** The node's services (store, log, metrics) lent to the extension. */
  host: HostServices;
  /**
   * Worker restarts allowed in any 60 s window; one more opens the circuit breaker: the runner
   * pauses (state `paused`; invocations wait, none is rejected), tries again on its own after
   * `pauseMs` (half-open: one invocation; success closes, failure pauses again for twice as
   * long, up to `maxPauseMs`), or at once on `resume()`.
   */
  maxRestartsPerMinute?: number;
  /** First pause of the circuit breaker, in ms (doubled on each failed half-open trial). */
  pauseMs?: number;
  /** Longest pause of the circuit breaker, in ms. */
  maxPauseMs?: number;
  /** Told as things happen (metrics). */
  observer?: RunnerObserver;
  /** Limit for import + `initialize()`, at start and at each restart, in ms. */
  initializeTimeoutMs?: number;
  /** Limit for the module's `shutdown()` during `stop()`, in ms. */
  shutdownTimeoutMs?: number;
  /**
   * Native extensions: how long one blocking store call (host->get/put) may hold the worker waiting
   * for `host.kv`, in ms; past it the call returns KVC_ERR_TIMEOUT to the C code.
   */
  nativeKvTimeoutMs?: number;
  /** The clock and timers of invocation timeouts, the restart window and backoff, and the breaker's pauses (default: the wall clock). */
  clock?: Scheduler;
}

/** What a runner reports as it happens. */
export interface RunnerObserver {
  /** A worker restart began. */
  restarted?(): void;
  /** The breaker opened: invocations wait until `retryAtMs`. */
  paused?(reason: string, retryAtMs: number): void;
  /** The breaker closed again. */
  resumed?(): void;
}

/** The defaults of `RunnerOptions`. */
export const RUNNER_DEFAULTS = Object.freeze({
  mode: 'process' as IsolationMode,
  maxOldGenerationSizeMb: 256,
  memoryLimitMb: 512,
  memorySampleMs: 100,
  addressSpaceLimitMb: 0,
  maxYoungGenerationSizeMb: 32,
  stackSizeMb: 4,
  maxRestartsPerMinute: 30,
  pauseMs: 30_000,
  maxPauseMs: 600_000,
  initializeTimeoutMs: 30_000,
  shutdownTimeoutMs: 5_000,
  nativeKvTimeoutMs: DEFAULT_SYNC_KV_TIMEOUT_MS,
});

/**
 * Where an extension's lambdas run:
 * - `worker`: a worker thread per extension, V8 heap limits (`resourceLimits`), wall-clock timeout
 *   per invocation (the worker is terminated). Buffers/ArrayBuffers are not bounded.
 * - `process`: a child process per extension: heap limit, the whole RSS bounded by a watchdog in
 *   the node (`memoryLimitMb`), the timeout kills the process, CPU time measured per invocation and
 *   in total; a crash cannot touch the node. JS modules only.
 * - `in-process`: the node's own thread (trusted; nothing is bounded).
 */
export type IsolationMode = 'worker' | 'process' | 'in-process';

/** The isolation modes, for validating user input. */
export const ISOLATION_MODES: readonly IsolationMode[] = Object.freeze(['worker', 'process', 'in-process'] as IsolationMode[]);

/**
 * `ready`: invocations run. `restarting`: the worker died and a new one is being started;
 * invocations wait for it. `paused`: restarts exceeded `maxRestartsPerMinute` (the circuit
 * breaker is open); invocations wait until it half-opens or is resumed. `failed`: no longer
 * entered (invocations would reject at once with kind `failed`).
 * `stopping`/`stopped`: `stop()` was called; invocations reject with kind `stopped`.
 */
export type RunnerState = 'ready' | 'restarting' | 'paused' | 'failed' | 'stopping' | 'stopped';

/** The circuit breaker: `closed` (normal), `open` (paused until `retryAtMs`), `half-open` (one trial invocation). */
export interface BreakerStatus {
  readonly state: 'closed' | 'open' | 'half-open';
  readonly reason?: string;
  readonly retryAtMs?: number;
  /** Times it opened since it last closed. */
  readonly opened: number;
}

/** Counters of one runner since it started. */
export interface RunnerStats {
  /** `invoke` calls accepted (valid watch id and timeout). */
  invocations: number;
  /** Invocations that rejected, whatever the kind (timeouts included). */
  errors: number;
  /** Invocations that rejected with kind `timeout`. */
  timeouts: number;
  /** Workers (or processes) started after the first one (successful or not). */
  workerRestarts: number;
  /** Invocations not yet settled (running, or waiting for a restart). */
  inFlight: number;
  /** Times the worker or process died of memory: V8 heap exhaustion, or (process mode) RSS past `memoryLimitMb`. */
  outOfMemory: number;
  /**
   * Process mode: CPU time (user + system, ms) of the extension's processes since start, all
   * incarnations, read by the node from /proc (the CPU time the invocations reported where /proc
   * is not available). 0 in the other modes.
   */
  cpuMs: number;
  /**
   * Process mode: CPU time (ms) of the invocations that completed (reported by the child), summed.
   * Each invocation's figure is the process's CPU time while it ran: when invocations overlap
   * (stateless watches, several keys in flight) each includes the others', so this sum can exceed `cpuMs`.
   */
  invocationCpuMs: number;
  /** Process mode: CPU time (ms) of the last invocation that completed. */
  lastInvocationCpuMs: number;
  /** Process mode: the highest CPU time (ms) of one completed invocation. */
  maxInvocationCpuMs: number;
  /** Process mode: resident memory (bytes) of the current process at the last sample (0 otherwise). */
  rssBytes: number;
  /** Process mode: highest resident memory (bytes) sampled, all incarnations. */
  peakRssBytes: number;
}

interface Pending {
  readonly id: number;
  readonly watch: RegisteredWatch;
  readonly event: ExtensionEvent;
  readonly timeoutMs: number;
  readonly resolve: () => void;
  readonly reject: (e: LambdaError) => void;
  backend: Backend | undefined;
  timer: TimerHandle | undefined;
  /** When it times out (the runner's clock), once dispatched. */
  deadlineMs?: number;
  /** Its store calls in flight that the host accepted, with their deadlines (see relayedHost). */
  readonly kvCalls: Set<{ readonly deadlineMs: number }>;
  /** One of its store calls ended well past its deadline (see overdue). */
  kvOverdue?: boolean;
}

interface Resolved {
  name: string;
  config: Record<string, unknown>;
  /** Undefined: the default for the kind of package. */
  mode: IsolationMode | undefined;
  limits: WorkerLimits;
  processLimits: ProcessLimits;
  host: HostServices;
  maxRestartsPerMinute: number;
  pauseMs: number;
  maxPauseMs: number;
  observer: RunnerObserver;
  initializeTimeoutMs: number;
  shutdownTimeoutMs: number;
  nativeKvTimeoutMs: number;
  clock: Scheduler;
}

/** The window the restart budget (`maxRestartsPerMinute`) counts restarts in, ms. */
const RESTART_WINDOW_MS = 60_000;
/** First pause between two failed restarts of a worker, ms (doubled per failure up to {@link MAX_RESTART_BACKOFF_MS}). */
const RESTART_BACKOFF_MS = 100;
/** Longest pause between two failed restarts of a worker, ms. */
const MAX_RESTART_BACKOFF_MS = 5_000;

/** Resolves after `ms` on `clock`'s timers, without keeping the process alive for it. */
function sleepUnref(clock: Scheduler, ms: number): Promise<void> {
  return new Promise((resolve) => void clock.setTimeout(resolve, ms).unref?.());
}

const MAX_TIMER_MS = 2 ** 31 - 1;

function checkNumber(name: string, v: number | undefined, dflt: number, min: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > MAX_TIMER_MS) throw new RangeError(`RunnerOptions.${name} must be a number >= ${min} (got ${String(v)})`);
  return v;
}

function resolveOptions(o: RunnerOptions): Resolved {
  if (typeof o.name !== 'string' || o.name.length === 0) throw new TypeError('RunnerOptions.name must be a non-empty string');
  if (typeof o.modulePath !== 'string' || o.modulePath.length === 0) throw new TypeError('RunnerOptions.modulePath must be a non-empty string');
  if (!o.host || typeof o.host.kv !== 'function' || typeof o.host.log !== 'function' || typeof o.host.metric !== 'function') {
    throw new TypeError('RunnerOptions.host must provide kv(), log() and metric()');
  }
  const mode = o.mode;
  if (mode !== undefined && !ISOLATION_MODES.includes(mode)) throw new TypeError(`RunnerOptions.mode must be one of ${ISOLATION_MODES.join(', ')} (got ${String(mode)})`);
  const config = o.config ?? {};
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw new TypeError('RunnerOptions.config must be an object');
  const rl = o.resourceLimits ?? {};
  return {
    name: o.name,
    config: structuredClone(config),
    mode,
    limits: {
      maxOldGenerationSizeMb: checkNumber('resourceLimits.maxOldGenerationSizeMb', rl.maxOldGenerationSizeMb, RUNNER_DEFAULTS.maxOldGenerationSizeMb, 1),
      maxYoungGenerationSizeMb: checkNumber('resourceLimits.maxYoungGenerationSizeMb', rl.maxYoungGenerationSizeMb, RUNNER_DEFAULTS.maxYoungGenerationSizeMb, 1),
      stackSizeMb: checkNumber('resourceLimits.stackSizeMb', rl.stackSizeMb, RUNNER_DEFAULTS.stackSizeMb, 1),
    },
    processLimits: {
      heapMb: checkNumber('resourceLimits.maxOldGenerationSizeMb', rl.maxOldGenerationSizeMb, RUNNER_DEFAULTS.maxOldGenerationSizeMb, 1),
      memoryMb: checkNumber('memoryLimitMb', o.memoryLimitMb, RUNNER_DEFAULTS.memoryLimitMb, 16),
      sampleMs: checkNumber('memorySampleMs', o.memorySampleMs, RUNNER_DEFAULTS.memorySampleMs, 10),
      addressSpaceMb: checkNumber('addressSpaceLimitMb', o.addressSpaceLimitMb, RUNNER_DEFAULTS.addressSpaceLimitMb, 0),
    },
    host: o.host,
    maxRestartsPerMinute: checkNumber('maxRestartsPerMinute', o.maxRestartsPerMinute, RUNNER_DEFAULTS.maxRestartsPerMinute, 0),
    pauseMs: checkNumber('pauseMs', o.pauseMs, RUNNER_DEFAULTS.pauseMs, 1),
    maxPauseMs: checkNumber('maxPauseMs', o.maxPauseMs, RUNNER_DEFAULTS.maxPauseMs, 1),
    observer: o.observer ?? {},
    initializeTimeoutMs: checkNumber('initializeTimeoutMs', o.initializeTimeoutMs, RUNNER_DEFAULTS.initializeTimeoutMs, 1),
    shutdownTimeoutMs: checkNumber('shutdownTimeoutMs', o.shutdownTimeoutMs, RUNNER_DEFAULTS.shutdownTimeoutMs, 1),
    nativeKvTimeoutMs: checkNumber('nativeKvTimeoutMs', o.nativeKvTimeoutMs, RUNNER_DEFAULTS.nativeKvTimeoutMs, 1),
    clock: o.clock ?? realScheduler,
  };
}

/** Describes the first difference between two watch lists, or undefined when they are equal. */
function diffWatches(a: readonly RegisteredWatch[], b: readonly RegisteredWatch[]): string | undefined {
  if (a.length !== b.length) return `initialize() registered ${b.length} watches after the restart, ${a.length} before`;
  for (let i = 0; i < a.length; i++) {
    const x = JSON.stringify({ prefix: a[i]!.prefix, options: a[i]!.options });
    const y = JSON.stringify({ prefix: b[i]!.prefix, options: b[i]!.options });
    if (x !== y) return `watch ${i + 1} changed after the restart: was ${x}, now ${y}`;
  }
  return undefined;
}

function freezeWatch(w: RegisteredWatch): RegisteredWatch {
  return Object.freeze({ id: w.id, prefix: w.prefix, options: Object.freeze({ ...w.options, events: Object.freeze([...w.options.events]) }) });
}

/**
 * Loads ONE extension and runs its lambdas.
 *
 * Process mode (the default for JS modules): the extension runs in its own child process (see
 * `ProcessBackend`), with a V8 heap limit and its whole resident memory bounded by a watchdog in
 * the node (`memoryLimitMb`: past it the process is SIGKILLed and its invocations fail with
 * `out-of-memory`); a timeout kills the process, an exit or a crash fails the invocations in
 * flight with `process-exited`; restarts work as in worker mode (below). CPU time is reported
 * per invocation and in total (`stats()`).
 *
 * Worker mode (native packages always): the extension runs in its own worker thread with V8 heap limits. Each
 * invocation has a wall-clock timeout; when it expires the worker is terminated (nothing else can
 * stop a CPU-bound lambda) and restarted: the module is imported again and `initialize()` re-run,
 * and must register the same watches (else the restart counts as failed). A worker that runs out
 * of heap, throws an uncaught error (including unhandled rejections) or calls `process.exit` is
 * restarted the same way. Invocations in flight on a dying worker reject (`timeout` for the one
 * that expired, `out-of-memory` / `worker-crashed` for the others); invocations made while
 * restarting wait for the new worker. More than `maxRestartsPerMinute` restarts in 60 s open the
 * circuit breaker: state `paused`, invocations wait (none is rejected) until a half-open trial
 * after `pauseMs` (doubled after each failed trial) or `resume()`. A worker that dies with
 * several invocations running blames none of them (`LambdaError.culprit` undefined): each then
 * runs alone once, so its outcome is its own; a timed-out invocation is the culprit, what ran
 * beside it collateral (`culprit: false`).
 *
 * In-process mode (trusted): same API on the main thread, without isolation: timeouts reject the
 * invocation but cannot stop the lambda (a synchronous infinite loop blocks the node), memory is
 * not limited, and an uncaught error thrown asynchronously by the extension reaches the process.
 *
 * Native extensions (a package whose package.json has `kvcascade.native`): the worker loads the
 * shared library with the native adapter (`loadNativeExtensionPackage`) and runs it like a JS
 * module: the watches its `kvc_initialize` registers are the runner's `watches`, a C lambda
 * returning non-zero rejects with kind `threw`. Its host->get/put block the worker on a sync kv
 * bridge served here by `host.kv` (with the hop count of the event being handled + 1, or 1 during
 * initialize), each bounded by `nativeKvTimeoutMs`. In-process mode refuses native packages
 * (`IMPORT_FAILED`): a blocking bridge cannot be served on the thread it blocks. A crash in the C
 * code (segfault) takes the whole process down; code stuck in C (not in a store call) cannot be
 * terminated. One library file is loaded once per process: two runners on the same file share its
 * C globals, so do not run them at once.
 *
 * Not a security boundary: a worker shares the process (file system, network, `process.kill`,
 * ArrayBuffer memory); a child process runs as the node's user with its environment; hop counting
 * relies on the guest's cooperation.
 */
export class ExtensionRunner {
  private watchList: readonly RegisteredWatch[] = [];
  private current: Backend | undefined;
  private loading: Backend | undefined;
  private runState: RunnerState = 'ready';
  private failure: string | undefined;
  private readonly pending = new Map<number, Pending>();
  private queued: Pending[] = [];
  private nextId = 1;
  private restartTimes: number[] = [];
  private readonly counters = { invocations: 0, errors: 0, timeouts: 0, workerRestarts: 0, outOfMemory: 0 };
  private readonly cpu = { invocationUs: 0, lastUs: 0, maxUs: 0, retiredUs: 0, peakRssBytes: 0 };
  private readonly retired = new WeakSet<Backend>();
  /**
   * Events (watch, shard, version, key) that were in flight, with others, on a worker that died:
   * any of them may have killed it, so each runs alone next time (its outcome then says).
   */
  private readonly suspects = new Set<string>();
  /** The suspect running (or about to run) alone; other invocations wait in `held`. */
  private solo: { p: Pending; started: boolean } | undefined;
  private held: Pending[] = [];
  /** Circuit breaker: times opened since it last closed, when it retries, its timer, the half-open trial. */
  private opened = 0;
  private retryAtMs: number | undefined;
  private pauseTimer: TimerHandle | undefined;
  /** Half-open: the restart after a pause succeeded; one invocation (the trial) runs, the others wait. */
  private probing = false;
  private trial: Pending | undefined;
  private stopping: Promise<void> | undefined;

  private constructor(
    private readonly o: Resolved,
    private readonly isolation: IsolationMode,
    private readonly entry: ResolvedExtension,
    private readonly entryUrl: URL | undefined,
  ) {}

  /**
   * Resolves and loads the extension, runs `initialize()` and resolves once its watches are known.
   * Rejects with `ExtensionLoadError` (`IMPORT_FAILED`, `NO_INITIALIZE`, `INITIALIZE_THREW`,
   * `INITIALIZE_TIMEOUT`, `INVALID_WATCH`), or a `TypeError`/`RangeError` for bad options.
   * Native packages fail with `IMPORT_FAILED` in-process, when the library is missing (not built),
   * not loadable, built for another ABI version or without `kvc_initialize`; a failing
   * `kvc_initialize` is `INITIALIZE_THREW`.
   */
  static async start(opts: RunnerOptions): Promise<ExtensionRunner> {
    const o = resolveOptions(opts);
    let entry: ResolvedExtension;
    try {
      entry = await resolveExtension(opts.modulePath);
    } catch (e) {
      throw new ExtensionLoadError('IMPORT_FAILED', o.name, `cannot resolve ${opts.modulePath}: ${errorMessage(e)}`, { cause: e });
    }
    const mode: IsolationMode = o.mode ?? (entry.kind === 'native' ? 'worker' : RUNNER_DEFAULTS.mode);
    if (entry.kind === 'native') {
      if (mode === 'in-process') {
        throw new ExtensionLoadError(
          'IMPORT_FAILED',
          o.name,
          `${entry.packageDir} is a native extension (package.json "kvcascade.native"): native extensions run in worker mode only ` +
            `(their blocking host->get/put are served by the main thread, which in-process mode would block); start it with mode 'worker'`,
        );
      }
      if (mode === 'process') {
        throw new ExtensionLoadError(
          'IMPORT_FAILED',
          o.name,
          `${entry.packageDir} is a native extension (package.json "kvcascade.native"): native extensions run in worker mode only ` +
            `(their blocking host->get/put wait on memory shared with the node, which a child process does not have); start it with mode 'worker'`,
        );
      }
      const st = await stat(entry.library).catch(() => undefined);
      if (!st?.isFile()) {
        throw new ExtensionLoadError(
          'IMPORT_FAILED',
          o.name,
          `the native library ${entry.library} declared by ${entry.packageDir}/package.json ("kvcascade.native") does not exist: build the package first (e.g. run make in ${entry.packageDir})`,
        );
      }
    }
    let entryUrl: URL | undefined;
    if (mode !== 'in-process') {
      try {
        entryUrl = await sandboxEntryUrl(mode === 'process' ? 'process-entry' : 'worker-entry');
      } catch (e) {
        throw new ExtensionLoadError('IMPORT_FAILED', o.name, `cannot prepare the ${mode}: ${errorMessage(e)}`, { cause: e });
      }
    }
    const runner = new ExtensionRunner(o, mode, entry, entryUrl);
    const backend = runner.makeBackend();
    const watches = await backend.load(o.initializeTimeoutMs);
    runner.watchList = Object.freeze(watches.map(freezeWatch));
    runner.current = backend;
    return runner;
  }

  /** The watches registered by `initialize()`, with defaults filled in (ids 1, 2, … in registration order). */
  get watches(): readonly RegisteredWatch[] {
    return this.watchList;
  }

  /** The extension's name. */
  get name(): string {
    return this.o.name;
  }

  /** Where the extension runs. */
  get mode(): IsolationMode {
    return this.isolation;
  }

  /** The runner's state (see `RunnerState`). */
  get state(): RunnerState {
    return this.runState;
  }

  /** Why the runner is `failed` (undefined otherwise). */
  get failureReason(): string | undefined {
    return this.failure;
  }

  /**
   * Runs the lambda of watch `watchId` on `event`. Resolves when the lambda finished; rejects
   * with `LambdaError` (kinds: `threw`, `timeout`, `worker-crashed`, `out-of-memory`, `stopped`,
   * `failed`), or a `RangeError` for an unknown watch or a bad timeout. `timeoutMs` is wall-clock
   * time from when the event is handed to the worker (time spent waiting for a restart excluded).
   */
  invoke(watchId: number, event: ExtensionEvent, timeoutMs: number): Promise<void> {
    const watch = this.watches[watchId - 1];
    if (!watch || watch.id !== watchId) return Promise.reject(new RangeError(`extension "${this.o.name}" has no watch ${watchId}`));
    if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || timeoutMs > MAX_TIMER_MS) {
      return Promise.reject(new RangeError(`timeoutMs must be a number in (0, ${MAX_TIMER_MS}] (got ${String(timeoutMs)})`));
    }
    this.counters.invocations++;
    if (this.runState === 'stopping' || this.runState === 'stopped') {
      this.counters.errors++;
      return Promise.reject(new LambdaError('stopped', `extension "${this.o.name}" is stopped`));
    }
    if (this.runState === 'failed') {
      // (Only when `maxRestartsPerMinute` is 0... never: a runner pauses instead; kept for safety.)
      this.counters.errors++;
      return Promise.reject(new LambdaError('failed', `extension "${this.o.name}" has failed: ${this.failure ?? 'unknown reason'}`));
    }
    return new Promise<void>((resolve, reject) => {
      const p: Pending = { id: this.nextId++, watch, event, timeoutMs, resolve, reject, backend: undefined, timer: undefined, kvCalls: new Set() };
      this.pending.set(p.id, p);
      this.dispatchOrHold(p);
    });
  }

  /** The circuit breaker's state. */
  breaker(): BreakerStatus {
    if (this.runState === 'paused') return { state: 'open', ...(this.failure ? { reason: this.failure } : {}), ...(this.retryAtMs !== undefined ? { retryAtMs: this.retryAtMs } : {}), opened: this.opened };
    if (this.probing) return { state: 'half-open', ...(this.failure ? { reason: this.failure } : {}), opened: this.opened };
    return { state: 'closed', opened: this.opened };
  }

  /**
   * Closes the breaker at once (operator's `ext resume`): a paused runner restarts its worker now
   * with a fresh restart budget; a half-open one runs everything waiting. Resolves true when it
   * was paused or half-open.
   */
  resume(): boolean {
    if (this.runState === 'paused') {
      this.pauseTimer?.cancel();
      this.pauseTimer = undefined;
      this.opened = 0;
      this.restartTimes = [];
      this.retryAtMs = undefined;
      this.runState = 'restarting';
      this.log('info', 'extension resumed by an operator: restarting its worker');
      this.restartLoop(Promise.resolve()).catch((e: unknown) => this.enterPaused(`restart loop failed: ${errorMessage(e)}`));
      return true;
    }
    if (this.probing) {
      this.closeBreaker();
      return true;
    }
    return false;
  }

  private closeBreaker(): void {
    this.probing = false;
    this.trial = undefined;
    this.opened = 0;
    this.failure = undefined;
    this.retryAtMs = undefined;
    this.restartTimes = [];
    this.log('info', 'extension circuit breaker closed: delivering again');
    try {
      this.o.observer.resumed?.();
    } catch {
      // observers must not break the runner
    }
    const q = this.queued;
    this.queued = [];
    for (const p of q) if (this.pending.has(p.id)) this.dispatchOrHold(p);
    this.startSoloIfIdle();
  }

  /** Counters since start (see `RunnerStats`). */
  stats(): RunnerStats {
    const u = this.current?.usage?.();
    const ms = (us: number) => Math.round(us / 1000);
    return {
      ...this.counters,
      inFlight: this.pending.size,
      cpuMs: ms(this.cpu.retiredUs + (u && !this.retired.has(this.current!) ? u.cpuUs : 0)),
      invocationCpuMs: ms(this.cpu.invocationUs),
      lastInvocationCpuMs: ms(this.cpu.lastUs),
      maxInvocationCpuMs: ms(this.cpu.maxUs),
      rssBytes: u && this.current?.alive ? u.rssBytes : 0,
      peakRssBytes: Math.max(this.cpu.peakRssBytes, u?.peakRssBytes ?? 0),
    };
  }

  /** Kills backend `b` and adds its resource use to the totals (once). */
  private async retire(b: Backend): Promise<void> {
    await b.kill();
    if (this.retired.has(b)) return;
    this.retired.add(b);
    const u = b.usage?.();
    if (u) {
      this.cpu.retiredUs += u.cpuUs;
      this.cpu.peakRssBytes = Math.max(this.cpu.peakRssBytes, u.peakRssBytes);
    }
  }

  /**
   * Stops the extension: invocations in flight or queued reject at once with kind `stopped`, the
   * module's `shutdown()` runs (bounded by `shutdownTimeoutMs`; it may still use `ctx.kv`), then
   * the worker is terminated. Never rejects; idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    const wasReady = this.runState === 'ready';
    this.runState = 'stopping';
    this.pauseTimer?.cancel();
    this.probing = false;
    for (const p of [...this.pending.values()]) this.settle(p, new LambdaError('stopped', `extension "${this.o.name}" was stopped`));
    this.queued = [];
    const loading = this.loading;
    this.loading = undefined;
    if (loading) await this.retire(loading);
    if (wasReady && this.current) {
      const r = await this.current.shutdown(this.o.shutdownTimeoutMs);
      if (r === 'timeout') this.log('warn', `shutdown() did not finish within ${this.o.shutdownTimeoutMs} ms`);
      else if (r) this.log('warn', `shutdown() threw: ${r.message}`, { error: r.message });
    }
    if (this.current) await this.retire(this.current);
    this.runState = 'stopped';
  }

  private log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    try {
      this.o.host.log(level, msg, fields);
    } catch {
      // the host's logger failing must not take the runner down
    }
  }

  /**
   * The host services as the backends relay them: a store call made by a running invocation gets
   * the deadline {@link kvCallDeadline} (a call from a finished invocation, or from initialize or
   * shutdown, the services' own).
   */
  private relayedHost(): RelayedHostServices {
    const host = this.o.host;
    return {
      kv: (op, args, hops, effect, invocation) => {
        const p = invocation !== undefined ? this.pending.get(invocation) : undefined;
        const deadlineMs = p?.deadlineMs !== undefined ? kvCallDeadline(p.deadlineMs, p.timeoutMs) : undefined;
        // Calls past the deadline are refused at once by the host (no store time to account for).
        if (!p || deadlineMs === undefined || deadlineMs <= this.o.clock.now()) return host.kv(op, args, hops, effect, deadlineMs);
        const call = { deadlineMs };
        p.kvCalls.add(call);
        let r: Promise<unknown>;
        try {
          r = Promise.resolve(host.kv(op, args, hops, effect, deadlineMs));
        } catch (e) {
          r = Promise.reject(e);
        }
        return r.finally(() => {
          p.kvCalls.delete(call);
          if (this.overdue(p, call.deadlineMs)) p.kvOverdue = true;
        });
      },
      log: (level, msg, fields) => host.log(level, msg, fields),
      metric: (kind, name, help, op) => host.metric(kind, name, help, op),
    };
  }

  /**
   * Whether a store call of `p` with deadline `deadlineMs` is overdue now: past its deadline by
   * more than half the margin it left before `p` times out. The host ends a call by its deadline;
   * one still running (or ending) that late means the node or the store stalled, and the lambda
   * had no time left to react.
   */
  private overdue(p: Pending, deadlineMs: number): boolean {
    return p.deadlineMs !== undefined && this.o.clock.now() > deadlineMs + (p.deadlineMs - deadlineMs) / 2;
  }

  private makeBackend(): Backend {
    const holder: { b?: Backend } = {};
    const events: BackendEvents = {
      done: (id, err, cpuUs) => this.onDone(holder.b!, id, err, cpuUs),
      down: (cause) => this.onDown(holder.b!, cause.kind, cause.message, cause.rssBytes),
    };
    const o = { ...this.o, host: this.relayedHost() };
    const e = this.entry;
    const moduleUrl = e.kind === 'module' ? e.url : pathToFileURL(e.library).href;
    const native = e.kind === 'native' ? { packageDir: e.packageDir, kvTimeoutMs: o.nativeKvTimeoutMs } : undefined;
    // (start() refuses native packages in-process.)
    const b: Backend =
      this.isolation === 'in-process'
        ? new InProcessBackend({ name: o.name, moduleUrl, config: o.config, host: o.host, events })
        : this.isolation === 'process'
          ? new ProcessBackend({ name: o.name, moduleUrl, config: o.config, limits: o.processLimits, host: o.host, entryUrl: this.entryUrl!, events })
          : new WorkerBackend({ name: o.name, moduleUrl, config: o.config, limits: o.limits, host: o.host, entryUrl: this.entryUrl!, events, ...(native ? { native } : {}) });
    holder.b = b;
    return b;
  }

  private describe(p: Pending): string {
    return `extension "${this.o.name}", watch ${p.watch.id} (${p.watch.prefix}), ${p.event.type} ${p.event.key}`;
  }

  private identity(p: Pending): string {
    return `${p.watch.id}|${p.event.shard}|${p.event.version}|${p.event.key}`;
  }

  /** Whether any invocation is running on the current backend. */
  private busy(): boolean {
    for (const q of this.pending.values()) if (q.backend !== undefined && q.backend === this.current) return true;
    return false;
  }

  /** Dispatches `p` now, or holds it: while restarting, while a suspect runs alone, or until `p` (a suspect) can run alone. */
  private dispatchOrHold(p: Pending): void {
    if (this.runState !== 'ready') {
      this.queued.push(p);
      return;
    }
    if (this.probing) {
      // Half-open: the first invocation is the trial; the others wait for its outcome.
      if (this.trial) {
        this.queued.push(p);
        return;
      }
      this.trial = p;
      this.dispatch(p);
      return;
    }
    if (this.solo) {
      this.held.push(p);
      return;
    }
    if (this.suspects.has(this.identity(p))) {
      this.solo = { p, started: false };
      this.startSoloIfIdle();
      return;
    }
    this.dispatch(p);
  }

  private startSoloIfIdle(): void {
    const s = this.solo;
    if (!s || s.started || this.runState !== 'ready' || this.busy()) return;
    if (!this.pending.has(s.p.id)) {
      this.endSolo();
      return;
    }
    s.started = true;
    this.dispatch(s.p);
  }

  private endSolo(): void {
    this.solo = undefined;
    const h = this.held;
    this.held = [];
    for (const p of h) if (this.pending.has(p.id)) this.dispatchOrHold(p);
  }

  private dispatch(p: Pending): void {
    const b = this.current!;
    p.backend = b;
    p.deadlineMs = this.o.clock.now() + p.timeoutMs;
    p.timer = this.o.clock.setTimeout(() => this.onTimeout(p), p.timeoutMs);
    if (!b.alive) {
      this.onDown(b, 'worker-crashed', 'the worker is gone');
      return;
    }
    try {
      b.invoke(p.id, p.watch.id, p.event);
    } catch (e) {
      this.settle(p, new LambdaError('worker-crashed', `${this.describe(p)}: cannot deliver the event: ${errorMessage(e)}`, { cause: e }));
    }
  }

  private settle(p: Pending, err?: LambdaError): void {
    if (!this.pending.delete(p.id)) return;
    p.timer?.cancel();
    if (this.trial === p) {
      this.trial = undefined;
      // The worker survived it (done, or the lambda threw): close. A crash or timeout pauses again (onDown).
      if (!err || err.kind === 'threw') queueMicrotask(() => this.probing && this.closeBreaker());
    }
    if (this.solo?.p === p) {
      // It ran alone: its outcome is its own.
      this.suspects.delete(this.identity(p));
      this.solo = undefined;
      queueMicrotask(() => {
        if (!this.solo) this.endSolo();
      });
    } else if (this.solo && !this.solo.started) queueMicrotask(() => this.startSoloIfIdle());
    if (!err) {
      p.resolve();
      return;
    }
    this.counters.errors++;
    if (err.kind === 'timeout') this.counters.timeouts++;
    p.reject(err);
  }

  private onDone(b: Backend, id: number, err: Error | undefined, cpuUs: number | undefined): void {
    const p = this.pending.get(id);
    if (!p || p.backend !== b) return;
    if (cpuUs !== undefined) {
      this.cpu.invocationUs += cpuUs;
      this.cpu.lastUs = cpuUs;
      this.cpu.maxUs = Math.max(this.cpu.maxUs, cpuUs);
    }
    if (err) this.settle(p, new LambdaError('threw', `${this.describe(p)}: lambda threw: ${err.message}`, { cause: err }));
    else this.settle(p);
  }

  private onTimeout(p: Pending): void {
    if (!this.pending.has(p.id)) return;
    const b = p.backend!;
    // A store call of it overdue (still running, or it ended, well past its own deadline, which
    // comes before this timeout): the node or the store stalled (a blocked or starved event
    // loop), not the lambda, so the timeout is not counted against the event (culprit false:
    // retried as an ordinary failure, up to maxAttempts).
    const stalled = p.kvOverdue === true || [...p.kvCalls].some((c) => this.overdue(p, c.deadlineMs));
    const culprit = !stalled;
    const why = stalled ? ' while a store call it made was overdue (the node or the store stalled; not counted against the event)' : '';
    const base = `${this.describe(p)}: lambda did not finish within ${p.timeoutMs} ms${why}`;
    if (!b.canKill || b !== this.current || this.runState !== 'ready') {
      this.settle(p, new LambdaError('timeout', b.canKill ? base : `${base} (in-process: it keeps running)`, { culprit }));
      return;
    }
    const what = this.isolation === 'process' ? 'process was killed' : 'worker was terminated';
    this.settle(p, new LambdaError('timeout', `${base}; the ${what} and is restarting`, { culprit }));
    this.onDown(b, this.isolation === 'process' ? 'process-exited' : 'worker-crashed', `terminated because an invocation timed out (${this.describe(p)})`, undefined, true);
  }

  /**
   * Backend `b` died (or was condemned): fail its invocations and start a replacement.
   * `collateral`: it was terminated for another invocation (already settled), not by these.
   */
  private onDown(b: Backend, kind: DownCause['kind'], message: string, rssBytes?: number, collateral = false): void {
    if (b !== this.current || this.runState !== 'ready') return;
    if (kind === 'out-of-memory') this.counters.outOfMemory++;
    const what = this.isolation === 'process' ? 'process' : 'worker';
    const victims = [...this.pending.values()].filter((p) => p.backend === b);
    const culprit = collateral ? false : victims.length === 1 ? true : undefined;
    if (culprit === undefined) for (const p of victims) this.suspects.add(this.identity(p));
    if (this.suspects.size > 10_000) this.suspects.clear();
    for (const p of victims) {
      const why = kind === 'out-of-memory' ? `the ${what} ran out of memory` : `the ${what} died`;
      this.settle(p, new LambdaError(kind, `${this.describe(p)}: ${why}: ${message}`, { ...(rssBytes !== undefined ? { rssBytes } : {}), ...(culprit !== undefined ? { culprit } : {}) }));
    }
    this.runState = 'restarting';
    const killed = this.retire(b);
    if (this.probing) {
      // The half-open trial (or whatever ran with it) brought the runner down again.
      this.probing = false;
      this.trial = undefined;
      void killed.then(() => this.enterPaused(`${this.failure ?? 'restarts'}; the half-open trial failed too (${message})`));
      return;
    }
    this.log('warn', `extension ${what} down (${message}); restarting`, { kind, ...(rssBytes !== undefined ? { rssBytes } : {}) });
    this.restartLoop(killed).catch((e: unknown) => this.enterPaused(`restart loop failed: ${errorMessage(e)}`));
  }

  /** The breaker's pause before half-open trial number `opened`. */
  private pauseFor(opened: number): number {
    return Math.min(this.o.pauseMs * 2 ** Math.max(0, opened - 1), this.o.maxPauseMs);
  }

  /**
   * Opens the breaker: no worker runs; invocations wait (queued, their timeouts not started)
   * until a half-open trial after the pause, or `resume()`.
   */
  private enterPaused(reason: string): void {
    if (this.runState !== 'restarting') return;
    this.runState = 'paused';
    this.opened++;
    this.failure = reason;
    const wait = this.pauseFor(this.opened);
    this.retryAtMs = this.o.clock.now() + wait;
    this.log('error', `extension paused: ${reason}; events wait, retry at ${new Date(this.retryAtMs).toISOString()}`, { reason, retryAtMs: this.retryAtMs });
    try {
      this.o.observer.paused?.(reason, this.retryAtMs);
    } catch {
      // ignore
    }
    this.pauseTimer = this.o.clock.setTimeout(() => this.halfOpen(), wait);
    this.pauseTimer.unref?.();
  }

  /** The pause is over: restart the worker once; it then runs one trial invocation. */
  private halfOpen(): void {
    if (this.runState !== 'paused') return;
    this.pauseTimer = undefined;
    this.runState = 'restarting';
    this.probing = true;
    this.restartTimes = [];
    this.log('info', 'extension half-open: restarting its worker for one trial invocation');
    this.restartLoop(Promise.resolve(), true).catch((e: unknown) => this.enterPaused(`restart loop failed: ${errorMessage(e)}`));
  }

  private async restartLoop(killed: Promise<void>, probe = false): Promise<void> {
    await killed;
    let failures = 0;
    while (this.runState === 'restarting') {
      const now = this.o.clock.now();
      this.restartTimes = this.restartTimes.filter((t) => now - t < RESTART_WINDOW_MS);
      if (probe ? failures > 0 : this.restartTimes.length >= this.o.maxRestartsPerMinute) {
        this.probing = false;
        this.enterPaused(probe ? `the half-open restart failed` : `more than ${this.o.maxRestartsPerMinute} worker restarts within a minute`);
        return;
      }
      this.restartTimes.push(now);
      this.counters.workerRestarts++;
      try {
        this.o.observer.restarted?.();
      } catch {
        // ignore
      }
      const b = this.makeBackend();
      this.loading = b;
      let problem: string;
      try {
        const watches = await b.load(this.o.initializeTimeoutMs);
        if (this.runState !== 'restarting') {
          await this.retire(b);
          return;
        }
        const diff = diffWatches(this.watches, watches);
        if (diff === undefined && b.alive) {
          this.loading = undefined;
          this.current = b;
          this.runState = 'ready';
          this.log('info', probe ? 'extension worker restarted (half-open: one trial invocation)' : 'extension worker restarted', { restartsInLastMinute: this.restartTimes.length });
          const q = this.queued;
          this.queued = [];
          for (const p of q) if (this.pending.has(p.id)) this.dispatchOrHold(p);
          this.startSoloIfIdle(); // a suspect waiting to run alone when the worker went down
          return;
        }
        problem = diff ?? 'the worker died right after initialize()';
      } catch (e) {
        problem = errorMessage(e);
      }
      if (this.loading === b) this.loading = undefined;
      await this.retire(b);
      if (this.runState !== 'restarting') return;
      failures++;
      this.log('error', `extension restart failed: ${problem}`, { attempt: failures });
      await sleepUnref(this.o.clock, Math.min(RESTART_BACKOFF_MS * 2 ** (failures - 1), MAX_RESTART_BACKOFF_MS));
    }
  }


}
