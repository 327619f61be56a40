/** The extension-side runtime: imports one extension module, builds its ExtensionContext and runs initialize, lambdas and shutdown (inside the worker, or in-process in trusted mode). */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { ExtensionContext, ExtensionEvent, ExtensionKv, ExtensionLogger, ExtensionMetrics, Lambda, WatchOptions } from '../api.js';
import type { EffectSession, KvOp, LoadErrorCode, LogLevel, RegisteredWatch, RelayedHostServices } from './types.js';
import { describeImportFailure, locationIn, packageRootOf, relativeToPackage } from './author-errors.js';
import { EffectSessions } from './effect-session.js';
import { errorMessage } from './transfer.js';
import { normalizeWatch } from './watch-options.js';

/**
 * How the guest reaches the node: the host services, over messages (worker) or directly
 * (in-process); a store call names the invocation it was made in (see RelayedHostServices).
 */
export type GuestLink = RelayedHostServices;

/** A load failure detected by the guest; `loadCode` tells which step failed. */
export class GuestLoadError extends Error {
  constructor(
    readonly loadCode: LoadErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'GuestLoadError';
  }
}

/**
 * Where `Guest.load` gets the extension: a module URL to `import()`, or (native packages) a
 * description for messages and a function producing the module namespace / ExtensionModule.
 */
export type ModuleSource = string | { readonly describe: string; readonly load: () => Promise<unknown> };

/** The functions an extension module provides, with the object to call them on. */
interface LoadedModule {
  initialize: (ctx: ExtensionContext) => unknown;
  shutdown: (() => unknown) | undefined;
  self: unknown;
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const encoder = new TextEncoder();

/** Finds `initialize` (and `shutdown`) among the named exports or on the default export (CommonJS `module.exports`). */
function findModule(ns: unknown): LoadedModule | undefined {
  const candidates: unknown[] = [ns];
  if (ns !== null && typeof ns === 'object' && 'default' in ns) candidates.push((ns as { default: unknown }).default);
  for (const c of candidates) {
    if (c === null || (typeof c !== 'object' && typeof c !== 'function')) continue;
    const o = c as { initialize?: unknown; shutdown?: unknown };
    if (typeof o.initialize === 'function') {
      return {
        initialize: o.initialize as LoadedModule['initialize'],
        shutdown: typeof o.shutdown === 'function' ? (o.shutdown as () => unknown) : undefined,
        // For CommonJS the named export is a copy of module.exports.initialize: call it on module.exports.
        self: c !== ns ? c : (candidates[1] as { initialize?: unknown } | undefined)?.initialize === o.initialize ? candidates[1] : undefined,
      };
    }
  }
  return undefined;
}

function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

function toBytes(value: unknown, what: string): Uint8Array {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  throw new TypeError(`${what} must be a Uint8Array or a string (got ${typeof value})`);
}

/** A `ctx.kv.txn` argument as the host receives it (values as bytes). */
interface TxnSpec {
  readonly compares: { key: string; version: number }[];
  readonly writes: ({ type: 'put'; key: string; value: Uint8Array } | { type: 'delete'; key: string })[];
}

/** Checks a `ctx.kv.txn` argument; throws a TypeError saying what is wrong. */
function checkTxn(t: unknown): TxnSpec {
  if (typeof t !== 'object' || t === null) throw new TypeError('ctx.kv.txn: expects { compares?, writes }');
  const o = t as { compares?: unknown; writes?: unknown };
  const compares = o.compares === undefined ? [] : o.compares;
  if (!Array.isArray(compares)) throw new TypeError('ctx.kv.txn: compares must be an array of { key, version }');
  if (!Array.isArray(o.writes)) throw new TypeError('ctx.kv.txn: writes must be an array of { type: "put", key, value } or { type: "delete", key }');
  const cs = compares.map((c: unknown, i) => {
    const x = c as { key?: unknown; version?: unknown };
    if (typeof x?.key !== 'string' || typeof x.version !== 'number') throw new TypeError(`ctx.kv.txn: compare ${i} must be { key: string, version: number } (version 0: the key is absent)`);
    return { key: x.key, version: x.version };
  });
  const ws = (o.writes as unknown[]).map((w: unknown, i): TxnSpec['writes'][number] => {
    const x = w as { type?: unknown; key?: unknown; value?: unknown };
    if (typeof x?.key !== 'string') throw new TypeError(`ctx.kv.txn: write ${i} needs a string key`);
    if (x.type === 'put') return { type: 'put', key: x.key, value: toBytes(x.value, `ctx.kv.txn: write ${i}'s value`) };
    if (x.type === 'delete') return { type: 'delete', key: x.key };
    throw new TypeError(`ctx.kv.txn: write ${i} must have type "put" or "delete"`);
  });
  return { compares: cs, writes: ws };
}

/** Drops trailing `undefined` arguments so the host sees the same `args` however the call was written. */
function trimArgs(args: unknown[]): unknown[] {
  let n = args.length;
  while (n > 0 && args[n - 1] === undefined) n--;
  return args.slice(0, n);
}

/**
 * One loaded extension: `load` imports the module and runs `initialize` (collecting its watches),
 * `invoke` runs a lambda, `shutdown` runs the module's `shutdown()`. Every call the extension makes
 * goes to the `GuestLink`; `ctx.kv` calls carry the hop count of the event being handled + 1,
 * tracked with an `AsyncLocalStorage` so it follows the lambda through timers and promises.
 */
export class Guest {
  /** What follows a lambda through its timers and promises: its event's hop count, its writes' sessions, the runner's id of its invocation. */
  private readonly hopScope = new AsyncLocalStorage<{ readonly hops: number; readonly effects?: EffectSessions; readonly invocation?: number }>();
  private readonly lambdas: Lambda[] = [];
  private readonly registered: RegisteredWatch[] = [];
  private module: LoadedModule | undefined;
  private initializing = false;
  private invalidWatch: Error | undefined;

  constructor(
    private readonly name: string,
    private readonly config: Record<string, unknown>,
    private readonly link: GuestLink,
  ) {}

  /**
   * Imports `source` (a module URL, or a loader for native packages), runs `initialize(ctx)` and
   * returns the watches it registered. Rejects with `GuestLoadError` (IMPORT_FAILED, NO_INITIALIZE,
   * INITIALIZE_THREW or INVALID_WATCH). `onImported` is called between the import and `initialize`.
   */
  async load(source: ModuleSource, onImported?: () => void): Promise<RegisteredWatch[]> {
    const what = typeof source === 'string' ? source : source.describe;
    let ns: unknown;
    try {
      ns = typeof source === 'string' ? await import(source) : await source.load();
    } catch (e) {
      if (typeof source !== 'string') throw new GuestLoadError('IMPORT_FAILED', `cannot load ${what}: ${errorMessage(e)}`, { cause: e });
      // For the author: the file and line inside the package, no path of the node's own folders.
      const root = packageRootOf(source);
      throw new GuestLoadError('IMPORT_FAILED', `cannot import ${relativeToPackage(what, root)}: ${describeImportFailure(e, source)}`, { cause: e });
    }
    onImported?.();
    const mod = findModule(ns);
    const root = typeof source === 'string' ? packageRootOf(source) : undefined;
    if (!mod) {
      throw new GuestLoadError('NO_INITIALIZE', `${relativeToPackage(what, root)} exports no initialize() function (neither as a named export nor on its default export / module.exports)`);
    }
    this.module = mod;
    const ctx = this.context();
    this.initializing = true;
    try {
      await this.hopScope.run({ hops: 0 }, () => mod.initialize.call(mod.self, ctx));
    } catch (e) {
      if (this.invalidWatch) throw new GuestLoadError('INVALID_WATCH', this.invalidWatch.message, { cause: this.invalidWatch });
      const at = root ? locationIn(e, root) : undefined;
      throw new GuestLoadError('INITIALIZE_THREW', relativeToPackage(`initialize() threw: ${errorMessage(e)}${at ? ` (at ${at})` : ''}`, root), { cause: e });
    } finally {
      this.initializing = false;
    }
    if (this.invalidWatch) throw new GuestLoadError('INVALID_WATCH', this.invalidWatch.message, { cause: this.invalidWatch });
    return this.registered.map((w) => ({ ...w }));
  }

  /**
   * Runs the lambda of watch `watchId` on `event`; rejects with whatever the lambda threw.
   * `invocation` (the runner's id of this invocation) goes with each store call the lambda makes.
   */
  async invoke(watchId: number, event: ExtensionEvent, invocation?: number): Promise<void> {
    const lambda = this.lambdas[watchId - 1];
    if (!lambda) throw new RangeError(`no watch with id ${watchId}`);
    const ev: ExtensionEvent = Object.freeze({
      type: event.type,
      key: event.key,
      value: event.value,
      version: event.version,
      ...(event.revision !== undefined ? { revision: event.revision } : {}),
      ...(event.previousVersion !== undefined ? { previousVersion: event.previousVersion } : {}),
      ...(event.created !== undefined ? { created: event.created } : {}),
      ...(event.previousValue !== undefined ? { previousValue: event.previousValue } : {}),
      timestamp: event.timestamp,
      shard: event.shard,
      hops: event.hops,
    });
    // Its writes carry idempotency keys derived from this event: a redelivery applies none twice.
    const effects = new EffectSessions({ extension: this.name, watchId, shard: ev.shard, key: ev.key, version: ev.version });
    await this.hopScope.run({ hops: ev.hops, effects, ...(invocation !== undefined ? { invocation } : {}) }, () => lambda(ev));
  }

  /** Runs the module's `shutdown()` if it has one (kv calls made from it carry hop count 1). */
  async shutdown(): Promise<void> {
    const mod = this.module;
    if (!mod?.shutdown) return;
    const fn = mod.shutdown;
    await this.hopScope.run({ hops: 0 }, () => fn.call(mod.self));
  }

  /**
   * The hop count a store call made now carries: the hop count of the event being handled + 1
   * (1 during initialize/shutdown or outside any event). Also used by the native adapter's
   * synchronous store calls, which run inside the lambda's call.
   */
  kvHops(): number {
    return (this.hopScope.getStore()?.hops ?? 0) + 1;
  }

  /**
   * The idempotency key of a write `op` of `keys` made now: derived from the event being handled
   * (undefined outside one: initialize, shutdown). Also used by the native adapter's synchronous
   * puts, which run inside the lambda's call.
   */
  kvEffect(op: KvOp, keys: readonly string[]): EffectSession | undefined {
    return this.hopScope.getStore()?.effects?.next(op, keys);
  }

  private kvCall(op: KvOp, args: unknown[], keys?: readonly string[]): Promise<unknown> {
    const hops = this.kvHops();
    try {
      if (op !== 'txn' && typeof args[0] !== 'string') throw new TypeError(`ctx.kv.${op}: the ${op === 'list' ? 'prefix' : 'key'} must be a string`);
      const effects = op === 'get' || op === 'list' ? undefined : this.hopScope.getStore()?.effects;
      const effect = effects?.next(op, keys ?? [args[0] as string]);
      return this.link.kv(op, trimArgs(args), hops, effect, this.hopScope.getStore()?.invocation);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private context(): ExtensionContext {
    const kv: ExtensionKv = {
      get: (key, opts) => this.kvCall('get', [key, opts]) as ReturnType<ExtensionKv['get']>,
      put: (key, value, opts) => {
        let bytes: Uint8Array;
        try {
          bytes = toBytes(value, 'ctx.kv.put: the value');
        } catch (e) {
          return Promise.reject(e);
        }
        return this.kvCall('put', [key, bytes, opts]) as ReturnType<ExtensionKv['put']>;
      },
      trigger: async (key, value) => {
        await this.kvCall('trigger', [key, toBytes(value, 'ctx.kv.trigger: the value')]);
      },
      delete: (key, opts) => this.kvCall('delete', [key, opts]) as ReturnType<ExtensionKv['delete']>,
      list: (prefix, opts) => this.kvCall('list', [prefix, opts]) as ReturnType<ExtensionKv['list']>,
      txn: (t) => {
        let spec: TxnSpec;
        try {
          spec = checkTxn(t);
        } catch (e) {
          return Promise.reject(e);
        }
        const keys = [...new Set([...spec.compares.map((c) => c.key), ...spec.writes.map((w) => w.key)])].sort();
        return this.kvCall('txn', [spec], keys) as ReturnType<ExtensionKv['txn']>;
      },
    };
    const logAt = (level: LogLevel) => (msg: string, fields?: Record<string, unknown>) => {
      this.link.log(level, String(msg), fields);
    };
    const log: ExtensionLogger = { debug: logAt('debug'), info: logAt('info'), warn: logAt('warn'), error: logAt('error') };
    const checkName = (kind: string, name: unknown, help: unknown) => {
      if (typeof name !== 'string' || !METRIC_NAME.test(name)) {
        throw new TypeError(`ctx.metrics.${kind}: invalid metric name ${JSON.stringify(name)} (must match ${METRIC_NAME.source})`);
      }
      if (typeof help !== 'string') throw new TypeError(`ctx.metrics.${kind}: help must be a string`);
    };
    const metrics: ExtensionMetrics = {
      counter: (name, help) => {
        checkName('counter', name, help);
        this.link.metric('counter', name, help, {});
        return {
          inc: (by = 1) => {
            if (typeof by !== 'number' || !Number.isFinite(by) || by < 0) throw new RangeError(`counter ${name}: inc() needs a finite number >= 0 (got ${String(by)})`);
            this.link.metric('counter', name, help, { inc: by });
          },
        };
      },
      histogram: (name, help, buckets) => {
        checkName('histogram', name, help);
        let b: number[] | undefined;
        if (buckets !== undefined) {
          if (!Array.isArray(buckets) || buckets.some((x) => typeof x !== 'number' || !Number.isFinite(x))) {
            throw new TypeError(`ctx.metrics.histogram ${name}: buckets must be an array of finite numbers`);
          }
          b = [...buckets];
        }
        this.link.metric('histogram', name, help, b ? { buckets: b } : {});
        return {
          observe: (value) => {
            if (typeof value !== 'number' || !Number.isFinite(value)) throw new RangeError(`histogram ${name}: observe() needs a finite number (got ${String(value)})`);
            this.link.metric('histogram', name, help, { observe: value });
          },
        };
      },
    };
    const watch = (prefix: string, lambda: Lambda, options?: WatchOptions): void => {
      if (!this.initializing) {
        throw new Error(`ctx.watch(${JSON.stringify(prefix)}): watches can only be registered during initialize() (extension "${this.name}")`);
      }
      let normalized: Required<WatchOptions>;
      try {
        normalized = normalizeWatch(prefix, lambda, options);
      } catch (e) {
        this.invalidWatch ??= e as Error;
        throw e;
      }
      this.lambdas.push(lambda);
      this.registered.push({ id: this.lambdas.length, prefix, options: normalized });
    };
    return Object.freeze({ name: this.name, config: deepFreeze(this.config), kv, log, metrics, watch });
  }
}
