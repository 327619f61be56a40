/** Loads a native (C ABI, `extensions/native/kvcascade.h`) extension with koffi and adapts it to the JS ExtensionModule contract. */

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import type { ExtensionContext, ExtensionEvent, ExtensionModule, Lambda, WatchOptions } from '../api.js';
import { KVC_ABI_VERSION, KVC_MIN_ABI_VERSION, KvcEventFlag, KvcEventType, KvcLogLevel, KvcStatus, kvcStatusName, KvcWatchFlag } from './abi.js';
import { SyncKvError, type SyncKv } from './sync-kv-bridge.js';

type Koffi = typeof import('koffi').default;
type KoffiType = ReturnType<Koffi['struct']>;

/** A native extension that cannot be loaded or initialized (missing symbol, ABI mismatch, failed kvc_initialize, ...). */
export class NativeExtensionError extends Error {
  /** Creates the error; `code` is the native return code when there is one. */
  constructor(
    message: string,
    readonly code?: number,
  ) {
    super(message);
    this.name = 'NativeExtensionError';
  }
}

/** Thrown by the JS lambda when the native lambda returns non-zero, so that the host retries the event. */
export class NativeLambdaError extends Error {
  /** Creates the error for the native return `code` of the lambda watching `prefix`, for `event`. */
  constructor(
    readonly code: number,
    readonly prefix: string,
    readonly event: ExtensionEvent,
  ) {
    super(`native lambda for ${JSON.stringify(prefix)} failed with ${kvcStatusName(code)} on ${event.type} ${JSON.stringify(event.key)}@${event.version}`);
    this.name = 'NativeLambdaError';
  }
}

/** Options of {@link loadNativeExtension}. */
export interface NativeExtensionOptions {
  /**
   * Synchronous store access behind host->get / host->put. In a worker thread, use
   * `createSyncKvClient()` from `sync-kv-bridge.ts`. Without it, host->get and host->put return
   * KVC_ERR_UNSUPPORTED (ctx.kv is async and a C call cannot wait for a promise).
   */
  readonly syncKv?: SyncKv;
  /** Options given to every `ctx.watch` the library makes (default: the host's defaults, i.e. stateful). */
  readonly watchOptions?: WatchOptions;
}

let koffiInstance: Koffi | undefined;
let types: ReturnType<typeof defineTypes> | undefined;

/** Loads koffi on first use, so that importing this module never needs the native dependency. */
function koffi(): Koffi {
  if (!koffiInstance) {
    try {
      koffiInstance = createRequire(import.meta.url)('koffi') as Koffi;
    } catch (err) {
      throw new NativeExtensionError(`native extensions need the 'koffi' package, which failed to load: ${(err as Error).message}`);
    }
  }
  return koffiInstance;
}

/** The header's types, as anonymous koffi types (no global type names that could collide). */
function defineTypes(k: Koffi) {
  const event = k.struct({
    type: 'int32_t',
    key: 'const char *',
    key_len: 'size_t',
    value: 'const uint8_t *',
    value_len: 'size_t',
    version: 'uint64_t',
    timestamp_ms: 'int64_t',
    shard: 'uint32_t',
    hops: 'uint32_t',
    // ABI 2 (appended: a version 1 library reads only the fields above)
    revision: 'uint64_t',
    previous_version: 'uint64_t',
    flags: 'uint32_t',
    previous_value: 'const uint8_t *',
    previous_value_len: 'size_t',
  });
  const buf = k.struct({ data: 'const uint8_t *', len: 'size_t' });
  const lambda = k.proto('int', [k.pointer(event), 'void *']);
  const watch = k.proto('int', ['void *', 'const char *', k.pointer(lambda), 'void *']);
  const get = k.proto('int', ['void *', 'const char *', k.pointer(buf), 'uint64_t *']);
  const put = k.proto('int', ['void *', 'const char *', 'const uint8_t *', 'size_t', 'uint64_t *']);
  const log = k.proto('void', ['void *', 'int', 'const char *']);
  const watchWith = k.proto('int', ['void *', 'const char *', k.pointer(lambda), 'void *', 'uint32_t']);
  const host = k.struct({
    abi_version: 'uint32_t',
    host_ctx: 'void *',
    watch: k.pointer(watch),
    get: k.pointer(get),
    put: k.pointer(put),
    log: k.pointer(log),
    // ABI 2
    watch_with: k.pointer(watchWith),
  });
  return { event, buf, lambda, watch, get, put, log, watchWith, host };
}

function nativeTypes(): ReturnType<typeof defineTypes> {
  types ??= defineTypes(koffi());
  return types;
}

/** A pointer as koffi hands it to JS callbacks (BigInt address, or null for NULL). */
type Ptr = bigint | null;

/**
 * Loads the native extension at `soPath` and returns it as an ExtensionModule. Throws a
 * {@link NativeExtensionError} at once if the file is missing or not loadable, lacks
 * `kvc_abi_version` or `kvc_initialize`, or was built for another `KVC_ABI_VERSION`.
 *
 * `initialize(ctx)` calls `kvc_initialize` with a host whose `watch` registers, through
 * `ctx.watch`, a JS lambda that calls the C lambda synchronously (non-zero return -> the JS lambda
 * throws {@link NativeLambdaError} and the host retries); `log` goes to `ctx.log`; `get`/`put` go
 * to `options.syncKv`. Everything runs on the calling thread: run it in a worker (see
 * `sync-kv-bridge.ts`), since a native lambda blocks its thread while it waits for the store.
 * One instance can be initialized once at a time (`shutdown()` calls `kvc_shutdown`, then it may
 * be initialized again); the library stays loaded for the life of the process or worker. Loading
 * the same file twice in one thread yields the same library, with the same C globals: do not
 * initialize two instances of one library at once.
 */
export function loadNativeExtension(soPath: string, options: NativeExtensionOptions = {}): ExtensionModule {
  const path = resolve(soPath);
  if (!existsSync(path)) throw new NativeExtensionError(`native extension ${path} does not exist`);
  const k = koffi();
  const t = nativeTypes();

  let lib: ReturnType<Koffi['load']>;
  try {
    lib = k.load(path);
  } catch (err) {
    throw new NativeExtensionError(`cannot load native extension ${path}: ${(err as Error).message}`);
  }
  const symbol = (name: string, result: string, params: (string | KoffiType)[]) => {
    try {
      return lib.func(name, result, params);
    } catch {
      return undefined;
    }
  };

  const abiVersion = symbol('kvc_abi_version', 'int', []);
  if (!abiVersion) {
    throw new NativeExtensionError(
      `${path} is not a kvcascade native extension: it does not export kvc_abi_version() ` +
        `(build it against extensions/native/kvcascade.h and add KVC_DEFINE_ABI_VERSION())`,
    );
  }
  const built = abiVersion() as number;
  if (!Number.isInteger(built) || built < KVC_MIN_ABI_VERSION || built > KVC_ABI_VERSION) {
    throw new NativeExtensionError(
      `native extension ${path} was built for kvcascade native ABI version ${built}, but this host speaks versions ` +
        `${KVC_MIN_ABI_VERSION} to ${KVC_ABI_VERSION}: rebuild it against this kvcascade's extensions/native/kvcascade.h`,
    );
  }
  const kvcInitialize = symbol('kvc_initialize', 'int', [k.pointer(t.host)]);
  if (!kvcInitialize) {
    throw new NativeExtensionError(`native extension ${path} does not export int kvc_initialize(const kvc_host *host)`);
  }
  const kvcShutdown = symbol('kvc_shutdown', 'void', []);

  /** State of one initialize() .. shutdown() span. */
  interface Instance {
    readonly ctx: ExtensionContext;
    readonly hostPtr: bigint;
    readonly callbacks: bigint[];
    /** Native memory handed out by host->get, freed when the outermost native call returns. */
    readonly scratch: bigint[];
    depth: number;
    initializing: boolean;
    alive: boolean;
    warnedNoKv: boolean;
  }
  let current: Instance | undefined;

  /** Runs a call into the library; frees the memory host->get handed out during it. */
  const native = <T>(inst: Instance, fn: () => T): T => {
    inst.depth++;
    try {
      return fn();
    } finally {
      if (--inst.depth === 0) {
        for (const p of inst.scratch) k.free(p);
        inst.scratch.length = 0;
      }
    }
  };

  const toNativeEvent = (ev: ExtensionEvent) => {
    const value = ev.type === 'delete' || ev.value === undefined ? null : ev.value;
    const previous = ev.previousValue;
    const flags =
      (ev.created ? KvcEventFlag.CREATED : 0) | (ev.previousVersion !== undefined ? KvcEventFlag.PREVIOUS_KNOWN : 0) | (previous !== undefined ? KvcEventFlag.HAS_PREVIOUS_VALUE : 0);
    return {
      type: KvcEventType[ev.type] ?? 0,
      key: ev.key,
      key_len: Buffer.byteLength(ev.key, 'utf8'),
      value: value && value.byteLength > 0 ? value : null,
      value_len: value ? value.byteLength : 0,
      version: ev.version,
      timestamp_ms: ev.timestamp,
      shard: ev.shard,
      hops: ev.hops,
      revision: ev.revision ?? ev.version,
      previous_version: ev.previousVersion ?? 0,
      flags,
      previous_value: previous && previous.byteLength > 0 ? previous : null,
      previous_value_len: previous ? previous.byteLength : 0,
    };
  };

  const logTo = (inst: Instance, level: number, msg: string): void => {
    const log = inst.ctx.log;
    if (level <= KvcLogLevel.DEBUG) log.debug(msg);
    else if (level === KvcLogLevel.INFO) log.info(msg);
    else if (level === KvcLogLevel.WARN) log.warn(msg);
    else log.error(msg);
  };

  /** Maps a failed SyncKv call to a native code, logging why. */
  const kvFailure = (inst: Instance, op: string, key: string, err: unknown): number => {
    const code = err instanceof SyncKvError ? err.code : KvcStatus.ERR_IO;
    inst.ctx.log.warn(`native ${op} ${JSON.stringify(key)} failed: ${err instanceof Error ? err.message : String(err)}`, { code });
    return code;
  };

  const syncKvFor = (inst: Instance, op: string): SyncKv | number => {
    if (inst.depth === 0 || !inst.alive) return KvcStatus.ERR_STATE;
    if (options.syncKv) return options.syncKv;
    if (!inst.warnedNoKv) {
      inst.warnedNoKv = true;
      inst.ctx.log.warn(`native host->${op} is unavailable: the extension was loaded without syncKv (run it in a worker with createSyncKvClient)`);
    }
    return KvcStatus.ERR_UNSUPPORTED;
  };

  /** The JS implementations of the kvc_host functions for one instance. */
  const makeHost = (i: Instance) => {
    const guard = <A extends unknown[]>(fallback: number, fn: (i: Instance, ...args: A) => number) =>
      (hostCtx: Ptr, ...args: A): number => {
        if (hostCtx !== i.hostPtr) return KvcStatus.ERR_INVALID;
        try {
          return fn(i, ...args);
        } catch (err) {
          // An exception must not cross into C (koffi would return 0, i.e. success).
          i.ctx.log.error(`native host callback failed: ${err instanceof Error ? err.message : String(err)}`);
          return fallback;
        }
      };

    const addWatch = (i: Instance, prefix: string | null, fn: Ptr, userData: Ptr, flags: number): number => {
      if (!i.initializing) return KvcStatus.ERR_STATE;
      if (typeof prefix !== 'string' || fn === null) return KvcStatus.ERR_INVALID;
      if ((flags & ~KvcWatchFlag.PREVIOUS_VALUE) !== 0) {
        i.ctx.log.error(`native watch ${JSON.stringify(prefix)} refused: unknown flags 0x${(flags >>> 0).toString(16)}`);
        return KvcStatus.ERR_INVALID;
      }
      const watchOptions: WatchOptions | undefined = flags & KvcWatchFlag.PREVIOUS_VALUE ? { ...options.watchOptions, previousValue: true } : options.watchOptions;
      const lambda: Lambda = (event) => {
        if (!i.alive) throw new NativeExtensionError(`native extension ${path} is not initialized`);
        const rc = native(i, () => k.call(fn, t.lambda, toNativeEvent(event), userData) as number);
        if (rc !== 0) throw new NativeLambdaError(rc, prefix, event);
      };
      try {
        i.ctx.watch(prefix, lambda, watchOptions);
      } catch (err) {
        i.ctx.log.error(`native watch ${JSON.stringify(prefix)} refused: ${(err as Error).message}`);
        return KvcStatus.ERR_INVALID;
      }
      return KvcStatus.OK;
    };
    const watch = guard(KvcStatus.ERR_INVALID, (i, prefix: string | null, fn: Ptr, userData: Ptr) => addWatch(i, prefix, fn, userData, 0));
    const watchWith = guard(KvcStatus.ERR_INVALID, (i, prefix: string | null, fn: Ptr, userData: Ptr, flags: number) => addWatch(i, prefix, fn, userData, Number(flags)));

    const get = guard(KvcStatus.ERR_IO, (i, key: string | null, outValue: Ptr, outVersion: Ptr) => {
      if (typeof key !== 'string' || outValue === null) return KvcStatus.ERR_INVALID;
      const kv = syncKvFor(i, 'get');
      k.encode(outValue, t.buf, { data: null, len: 0 });
      if (outVersion !== null) k.encode(outVersion, 'uint64_t', 0);
      if (typeof kv === 'number') return kv;
      let r;
      try {
        r = kv.get(key);
      } catch (err) {
        return kvFailure(i, 'get', key, err);
      }
      if (!r.found) return KvcStatus.NOT_FOUND;
      const bytes = r.value ?? new Uint8Array();
      const mem = k.alloc('uint8_t', bytes.byteLength + 1) as bigint | null;
      if (mem === null) return KvcStatus.ERR_NOMEM;
      i.scratch.push(mem);
      const view = new Uint8Array(k.view(mem, bytes.byteLength + 1));
      view.set(bytes);
      view[bytes.byteLength] = 0;
      k.encode(outValue, t.buf, { data: mem, len: bytes.byteLength });
      if (outVersion !== null) k.encode(outVersion, 'uint64_t', r.version);
      return KvcStatus.OK;
    });

    const put = guard(KvcStatus.ERR_IO, (i, key: string | null, value: Ptr, len: number | bigint, outVersion: Ptr) => {
      const n = Number(len);
      if (typeof key !== 'string' || (value === null && n > 0)) return KvcStatus.ERR_INVALID;
      const kv = syncKvFor(i, 'put');
      if (typeof kv === 'number') return kv;
      const bytes = n > 0 && value !== null ? new Uint8Array(k.view(value, n)).slice() : new Uint8Array();
      let r;
      try {
        r = kv.put(key, bytes);
      } catch (err) {
        return kvFailure(i, 'put', key, err);
      }
      if (outVersion !== null) k.encode(outVersion, 'uint64_t', r.version);
      return KvcStatus.OK;
    });

    const log = guard(0, (i, level: number, msg: string | null) => {
      logTo(i, level, msg ?? '');
      return 0;
    });

    return { watch, get, put, log, watchWith };
  };

  return {
    initialize(ctx: ExtensionContext): void {
      if (current) throw new NativeExtensionError(`native extension ${path} is already initialized`);
      const hostPtr = k.alloc(t.host, 1) as bigint | null;
      if (hostPtr === null) throw new NativeExtensionError('cannot allocate the native host struct', KvcStatus.ERR_NOMEM);
      const inst: Instance = {
        ctx,
        hostPtr,
        callbacks: [],
        scratch: [],
        depth: 0,
        initializing: true,
        alive: true,
        warnedNoKv: false,
      };
      const fns = makeHost(inst);
      const register = (fn: (...args: never[]) => unknown, proto: KoffiType): bigint => {
        const ptr = k.register(fn, k.pointer(proto));
        inst.callbacks.push(ptr);
        return ptr;
      };
      const release = (): void => {
        inst.alive = false;
        for (const cb of inst.callbacks) k.unregister(cb);
        k.free(hostPtr);
      };
      let rc: number;
      try {
        k.encode(hostPtr, t.host, {
          abi_version: built, // the library's version: the host speaks it (see KVC_MIN_ABI_VERSION)
          host_ctx: hostPtr,
          watch: register(fns.watch, t.watch),
          get: register(fns.get, t.get),
          put: register(fns.put, t.put),
          log: register(fns.log, t.log),
          watch_with: register(fns.watchWith, t.watchWith),
        });
        rc = native(inst, () => kvcInitialize(hostPtr) as number);
      } catch (err) {
        release();
        throw err;
      } finally {
        inst.initializing = false;
      }
      if (rc !== 0) {
        // The lambdas it may have registered stay with ctx but throw: the host discards a failed extension.
        release();
        throw new NativeExtensionError(`kvc_initialize of ${path} failed with ${kvcStatusName(rc)}`, rc);
      }
      current = inst;
    },

    shutdown(): void {
      const inst = current;
      if (!inst) return;
      current = undefined;
      try {
        if (kvcShutdown) native(inst, () => kvcShutdown());
      } finally {
        inst.alive = false;
        for (const cb of inst.callbacks) k.unregister(cb);
        k.free(inst.hostPtr);
      }
    },
  };
}

/** The `kvcascade` field of a native extension package's package.json. */
export interface NativeExtensionManifest {
  /** Path of the shared library, relative to the package directory. */
  readonly native: string;
}

/**
 * Resolves the shared library of the native extension package at `packageDir` (its package.json
 * has `"kvcascade": { "native": "build/libx.so" }`) and loads it with {@link loadNativeExtension}.
 */
export function loadNativeExtensionPackage(packageDir: string, options: NativeExtensionOptions = {}): ExtensionModule {
  return loadNativeExtension(resolveNativeLibrary(packageDir), options);
}

/** The absolute path of the shared library that the package at `packageDir` declares. */
export function resolveNativeLibrary(packageDir: string): string {
  const manifestPath = resolve(packageDir, 'package.json');
  let manifest: { kvcascade?: Partial<NativeExtensionManifest> };
  try {
    manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as typeof manifest;
  } catch (err) {
    throw new NativeExtensionError(`cannot read ${manifestPath}: ${(err as Error).message}`);
  }
  const lib = manifest.kvcascade?.native;
  if (typeof lib !== 'string' || lib === '') {
    throw new NativeExtensionError(`${manifestPath} does not declare a native kvcascade extension ("kvcascade": { "native": "<path to .so>" })`);
  }
  return resolve(dirname(manifestPath), lib);
}
