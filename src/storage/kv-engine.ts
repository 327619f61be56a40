// The ordered key-value engine interface that is the disk seam of the storage layer, with a LevelDB implementation and an in-memory twin that models machine crashes.
import { Level } from 'level';

/** A key: raw bytes, or a string that is stored as its UTF-8 bytes. Keys are ordered bytewise. */
export type EngineKey = Uint8Array | string;

/** One write of a {@link KvEngine.batch}. */
export type EngineOp =
  | { readonly type: 'put'; readonly key: EngineKey; readonly value: Uint8Array }
  | { readonly type: 'del'; readonly key: EngineKey };

/** Options of {@link KvEngine.batch}. */
export interface EngineBatchOptions {
  /** When true the batch, and every write that completed before it, is durable (fsynced) once the promise resolves. */
  readonly sync: boolean;
}

/**
 * Which keys a scan visits. All bounds combine (intersection): `prefix` limits to keys starting with it,
 * `gte` is an inclusive lower bound and `lt` an exclusive upper bound.
 */
export interface ScanOptions {
  readonly prefix?: EngineKey;
  readonly gte?: EngineKey;
  readonly lt?: EngineKey;
  /** Visit keys in descending order. */
  readonly reverse?: boolean;
  /** Stop after this many pairs (default: no limit). */
  readonly limit?: number;
  /**
   * Bytes of keys and values an engine may read ahead per batch (LevelEngine: classic-level's
   * `highWaterMarkBytes`, 16 KiB by default, i.e. about 15 pairs of 1 KiB values per trip to its
   * thread pool). A whole-group scan (the restart's load) sets a larger one.
   */
  readonly readAheadBytes?: number;
  /** Only the keys are needed: an engine may hand out empty values (LevelEngine does not read them). */
  readonly keysOnly?: boolean;
}

/** The keys {@link KvEngine.clear} deletes: every key in [gte, lt). */
export interface ClearRange {
  readonly gte: EngineKey;
  readonly lt: EngineKey;
}

/** One key/value pair yielded by a scan; keys come back as bytes. */
export type EngineEntry = readonly [key: Uint8Array, value: Uint8Array];

/**
 * A consistent read-only view of an engine: every read sees the data as it was when the view was
 * created, whatever is written after (a point that later writes cannot disturb). Close it when
 * done: an open view pins the old data (LevelDB keeps the files; MemoryEngine keeps the values
 * overwritten since).
 */
export interface EngineView {
  /** The value `key` had when the view was created, or undefined. */
  get(key: EngineKey): Promise<Uint8Array | undefined>;
  /** `get` of several keys in one call (LevelDB: one native request), in the order given. */
  getMany(keys: readonly EngineKey[]): Promise<Array<Uint8Array | undefined>>;
  /** Pairs in key order within the bounds, as they were when the view was created. */
  iterate(options?: ScanOptions): AsyncIterable<EngineEntry>;
  /** Optional: `iterate`, a run of pairs at a time (see {@link scanChunks}). */
  iterateChunks?(options?: ScanOptions): AsyncIterable<readonly EngineEntry[]>;
  /** Releases the view; later reads fail. */
  close(): Promise<void>;
}

/**
 * A tiny ordered key-value store. A batch is atomic: after a crash either all of its writes are
 * present or none. Writes become visible to reads when `batch` is called; they survive a machine
 * crash only once a batch with `sync: true` (issued at or after them) has resolved. An empty batch
 * is a no-op (it does not sync).
 */
export interface KvEngine {
  /** Applies the writes atomically, in order (a later write to the same key wins). */
  batch(ops: readonly EngineOp[], options: EngineBatchOptions): Promise<void>;
  /**
   * Deletes every key in [gte, lt) outside any batch, without a JavaScript call per key (LevelDB:
   * classic-level's native `clear`, which iterates and deletes on a pool thread). Not atomic and
   * not synced: after a crash any subset of its deletions may be lost until a later `sync: true`
   * batch, issued after it resolved, has resolved. Keys written into the range while it runs may
   * or may not be deleted, so callers clear only ranges that nothing writes to any more.
   */
  clear(range: ClearRange): Promise<void>;
  /** The value stored under `key`, or undefined. */
  get(key: EngineKey): Promise<Uint8Array | undefined>;
  /**
   * `get`, synchronously: blocks the event loop for one point read (LevelDB: its block cache, the
   * OS page cache, or one disk read). Sees every batch whose write completed. For the state
   * machine's value reads (storage/value-cache.ts), which must stay synchronous.
   */
  getSync(key: EngineKey): Uint8Array | undefined;
  /** Pairs in key order (bytewise) within the bounds, read from a consistent point-in-time view. */
  iterate(options?: ScanOptions): AsyncIterable<EngineEntry>;
  /** Optional: `iterate`, a run of pairs at a time (see {@link scanChunks}). */
  iterateChunks?(options?: ScanOptions): AsyncIterable<readonly EngineEntry[]>;
  /**
   * A consistent view of the engine as it is now (batches whose `batch` call was made are in it,
   * later ones are not), for long reads that must not see later writes (streaming a snapshot).
   */
  view(): EngineView;
  /**
   * Optional: compacts the stored data of keys in [start, end] (LevelDB: its background threads), so
   * deletion markers left by many deletes there stop costing every iteration that crosses them.
   */
  compactRange?(start: Uint8Array, end: Uint8Array): Promise<void>;
  /** Releases the engine; later calls fail. */
  close(): Promise<void>;
}

const utf8 = new TextEncoder();

/** The bytes of a key (strings are UTF-8 encoded). */
export function keyBytes(key: EngineKey): Uint8Array {
  return typeof key === 'string' ? utf8.encode(key) : key;
}

/** Bytewise comparison of two byte strings (negative, zero or positive). */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = a[i]! - b[i]!;
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

/** The smallest key greater than every key that starts with `prefix`, or undefined when there is none (all 0xff). */
export function prefixEnd(prefix: Uint8Array): Uint8Array | undefined {
  for (let i = prefix.length - 1; i >= 0; i--) {
    if (prefix[i]! !== 0xff) {
      const end = prefix.slice(0, i + 1);
      end[i] = end[i]! + 1;
      return end;
    }
  }
  return undefined;
}

/** The effective [gte, lt) byte bounds of a scan (undefined = unbounded). */
export function scanBounds(options: ScanOptions = {}): { gte?: Uint8Array; lt?: Uint8Array } {
  let gte = options.gte === undefined ? undefined : keyBytes(options.gte);
  let lt = options.lt === undefined ? undefined : keyBytes(options.lt);
  if (options.prefix !== undefined) {
    const p = keyBytes(options.prefix);
    if (gte === undefined || compareBytes(p, gte) > 0) gte = p;
    const end = prefixEnd(p);
    if (end !== undefined && (lt === undefined || compareBytes(end, lt) < 0)) lt = end;
  }
  const out: { gte?: Uint8Array; lt?: Uint8Array } = {};
  if (gte !== undefined) out.gte = gte;
  if (lt !== undefined) out.lt = lt;
  return out;
}

/** Collects a scan into an array (convenience for small ranges). */
export async function scanAll(engine: Pick<KvEngine, 'iterate'>, options?: ScanOptions): Promise<EngineEntry[]> {
  const out: EngineEntry[] = [];
  for await (const e of engine.iterate(options)) out.push(e);
  return out;
}

/** Pairs per run handed out by {@link scanChunks} over an engine without `iterateChunks`. */
const CHUNK_PAIRS = 1000;

/**
 * `source.iterate(options)` a run of pairs at a time: the engine's own runs when it has
 * `iterateChunks` (LevelEngine: each trip to LevelDB's thread pool), else runs of the pairs
 * `iterate` yields. For whole-group scans (a restart's load, an install's diff), which would
 * otherwise pay a promise per pair.
 */
export async function* scanChunks(source: Pick<KvEngine, 'iterate' | 'iterateChunks'>, options: ScanOptions = {}): AsyncIterable<readonly EngineEntry[]> {
  if (source.iterateChunks !== undefined) {
    yield* source.iterateChunks(options);
    return;
  }
  let run: EngineEntry[] = [];
  for await (const e of source.iterate(options)) {
    run.push(e);
    if (run.length >= CHUNK_PAIRS) {
      yield run;
      run = [];
    }
  }
  if (run.length > 0) yield run;
}

/** Longest stretch (ms) of filling one LevelDB batch before yielding to the event loop. */
const BATCH_SLICE_MS = 8;

/** The value a keys-only scan hands out. */
const NO_VALUE = new Uint8Array(0);

/**
 * LevelDB's own bounds (classic-level's options; absent: its defaults). LevelDB (1.20, 64-bit)
 * maps each open table file for reads, so the table cache's size (`maxOpenFiles` less 10) bounds
 * the mapped table pages that count in the process's RSS (file-backed, reclaimable); the block
 * cache holds only blocks of tables read without a mapping.
 */
export interface LevelEngineOptions {
  /** Table files kept open (and mapped) at once, plus 10 (default 1,000; LevelDB 1.20 takes at least 74). */
  readonly maxOpenFiles?: number;
  /** LRU block cache, bytes (default 8 MiB). */
  readonly cacheBytes?: number;
  /** Memtable size before it is written to a table, bytes (default 4 MiB). */
  readonly writeBufferBytes?: number;
}

/** {@link KvEngine} over LevelDB (via `level`/classic-level), with keys and values as bytes; `sync` maps to LevelDB's synchronous write (fsync). */
export class LevelEngine implements KvEngine {
  private constructor(
    private readonly db: Level<Uint8Array, Uint8Array>,
    /** The directory holding the database. */
    readonly location: string,
  ) {}

  /** Compacts [start, end] (see KvEngine.compactRange): the work runs on LevelDB's threads, off the event loop. */
  compactRange(start: Uint8Array, end: Uint8Array): Promise<void> {
    // `level` resolves to classic-level in Node, whose compactRange its browser-neutral type omits.
    return (this.db as unknown as { compactRange(start: Uint8Array, end: Uint8Array): Promise<void> }).compactRange(start, end);
  }

  /** Opens (creating if missing) the LevelDB database in directory `location`. */
  static async open(location: string, options: LevelEngineOptions = {}): Promise<LevelEngine> {
    const db = new Level<Uint8Array, Uint8Array>(location, {
      keyEncoding: 'view',
      valueEncoding: 'view',
      ...(options.maxOpenFiles !== undefined ? { maxOpenFiles: options.maxOpenFiles } : {}),
      ...(options.cacheBytes !== undefined ? { cacheSize: options.cacheBytes } : {}),
      ...(options.writeBufferBytes !== undefined ? { writeBufferSize: options.writeBufferBytes } : {}),
    });
    await db.open();
    return new LevelEngine(db, location);
  }

  async batch(ops: readonly EngineOp[], options: EngineBatchOptions): Promise<void> {
    if (ops.length === 0) return;
    // A chained batch: in classic-level 3 it is several times faster than the array form for large batches.
    // Filling it costs ~10 µs per op on the calling thread, so a large batch is filled over several
    // event-loop turns (it stays one atomic write: nothing is written before `b.write`).
    const b = this.db.batch();
    try {
      let sliceStart = performance.now();
      for (let i = 0; i < ops.length; i++) {
        const op = ops[i]!;
        if (op.type === 'put') b.put(keyBytes(op.key), op.value);
        else b.del(keyBytes(op.key));
        if ((i & 1023) === 1023 && performance.now() - sliceStart >= BATCH_SLICE_MS) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          sliceStart = performance.now();
        }
      }
    } catch (err) {
      await b.close();
      throw err;
    }
    await b.write({ sync: options.sync });
  }

  async clear(range: ClearRange): Promise<void> {
    await this.db.clear({ gte: keyBytes(range.gte), lt: keyBytes(range.lt) });
  }

  async get(key: EngineKey): Promise<Uint8Array | undefined> {
    return this.db.get(keyBytes(key));
  }

  getSync(key: EngineKey): Uint8Array | undefined {
    return this.db.getSync(keyBytes(key));
  }

  iterate(options: ScanOptions = {}): AsyncIterable<EngineEntry> {
    return this.scan(options, undefined);
  }

  iterateChunks(options: ScanOptions = {}): AsyncIterable<readonly EngineEntry[]> {
    return this.runs(options, undefined);
  }

  /** A view over a LevelDB snapshot (classic-level's explicit snapshots: reads see the db as it was when it was taken). */
  view(): EngineView {
    const snapshot = this.db.snapshot();
    let closed = false;
    const check = (): void => {
      if (closed) throw new Error('engine view is closed');
    };
    return {
      get: async (key) => {
        check();
        return this.db.get(keyBytes(key), { snapshot });
      },
      getMany: async (keys) => {
        check();
        return keys.length === 0 ? [] : this.db.getMany(keys.map(keyBytes), { snapshot });
      },
      iterate: (options = {}) => {
        check();
        return this.scan(options, snapshot);
      },
      iterateChunks: (options = {}) => {
        check();
        return this.runs(options, snapshot);
      },
      close: async () => {
        if (closed) return;
        closed = true;
        await snapshot.close();
      },
    };
  }

  private async *scan(options: ScanOptions, snapshot: ReturnType<Level<Uint8Array, Uint8Array>['snapshot']> | undefined): AsyncIterable<EngineEntry> {
    for await (const run of this.runs(options, snapshot)) yield* run;
  }

  /** The pairs of a scan, a trip to LevelDB's thread pool (up to 1,000 pairs, or `readAheadBytes`) at a time. */
  private async *runs(options: ScanOptions, snapshot: ReturnType<Level<Uint8Array, Uint8Array>['snapshot']> | undefined): AsyncIterable<readonly EngineEntry[]> {
    const bounds = scanBounds(options);
    if (options.limit === 0) return;
    const keysOnly = options.keysOnly === true;
    const it = this.db.iterator({
      ...bounds,
      reverse: options.reverse === true,
      limit: options.limit ?? -1,
      ...(options.readAheadBytes !== undefined ? { highWaterMarkBytes: options.readAheadBytes } : {}),
      ...(keysOnly ? { values: false } : {}),
      ...(snapshot ? { snapshot } : {}),
    });
    try {
      for (;;) {
        const chunk = await it.nextv(1000);
        if (chunk.length === 0) break;
        if (keysOnly) for (const e of chunk) (e as unknown as unknown[])[1] = NO_VALUE;
        yield chunk as unknown as readonly EngineEntry[];
      }
    } finally {
      await it.close();
    }
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}

/** Thrown by a {@link MemoryEngine} (and its pending batches) after it was crashed or closed. */
export class EngineClosedError extends Error {
  constructor(reason: 'crashed' | 'closed') {
    super(`engine is ${reason}`);
    this.name = 'EngineClosedError';
  }
}

/** Options of {@link MemoryEngine}. */
export interface MemoryEngineOptions {
  /** Simulated latency of every batch in ms (0, the default, completes on the next macrotask). */
  readonly latencyMs?: number;
}

type StoredOp = readonly [key: string, value: Uint8Array | undefined];

// Keys are held as "binary strings" (one char per byte): JS string order then equals bytewise order.
const toBin = (k: Uint8Array): string => Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString('latin1');
const fromBin = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'));

/**
 * An in-memory {@link KvEngine} that also models a machine crash. Every batch becomes visible at once
 * but stays in an unsynced buffer until a `sync: true` batch completes, which makes it and everything
 * written before it durable. {@link crash} drops what is not durable and returns a fresh engine over
 * the surviving data. Batches complete asynchronously (on a later macrotask), so a crash can land
 * while one is in flight. Faults can be injected with {@link injectFault}.
 */
export class MemoryEngine implements KvEngine {
  private readonly current: Map<string, Uint8Array>;
  private readonly durable: Map<string, Uint8Array>;
  private unsynced: Array<{ readonly id: number; readonly ops: readonly StoredOp[] }> = [];
  private sortedKeys: string[] | undefined;
  /** Open views: each keeps the value every key had before its first write after the view was created. */
  private readonly views = new Set<{ readonly before: Map<string, Uint8Array | undefined> }>();
  private nextBatchId = 1;
  private state: 'open' | 'crashed' | 'closed' = 'open';
  private readonly faults: Error[] = [];
  private readonly latencyMs: number;
  /** Counters for tests: batches accepted, and those with `sync: true`. */
  readonly counters = { batches: 0, syncedBatches: 0 };

  /** A new engine, empty or holding `durableData` (binary-string keys; used by {@link crash}). */
  constructor(options: MemoryEngineOptions = {}, durableData?: ReadonlyMap<string, Uint8Array>) {
    this.latencyMs = options.latencyMs ?? 0;
    this.durable = new Map(durableData);
    this.current = new Map(durableData);
  }

  /** Number of batches written but not yet durable. */
  get unsyncedBatches(): number {
    return this.unsynced.length;
  }

  /** Makes the next `times` calls of `batch` fail with `error` without writing anything. */
  injectFault(error: Error, times = 1): void {
    for (let i = 0; i < times; i++) this.faults.push(error);
  }

  async batch(ops: readonly EngineOp[], options: EngineBatchOptions): Promise<void> {
    this.checkOpen();
    const fault = this.faults.shift();
    if (fault !== undefined) {
      await this.delay();
      throw fault;
    }
    if (ops.length === 0) return;
    const stored: StoredOp[] = ops.map((op) => [
      toBin(keyBytes(op.key)),
      op.type === 'put' ? op.value.slice() : undefined,
    ]);
    this.counters.batches++;
    if (options.sync) this.counters.syncedBatches++;
    for (const v of this.views) for (const [k] of stored) if (!v.before.has(k)) v.before.set(k, this.current.get(k));
    applyOps(this.current, stored);
    this.sortedKeys = undefined;
    const id = this.nextBatchId++;
    this.unsynced.push({ id, ops: stored });
    await this.delay();
    this.checkOpen();
    if (options.sync) {
      // Everything up to and including this batch reaches stable storage.
      while (this.unsynced.length > 0 && this.unsynced[0]!.id <= id) {
        applyOps(this.durable, this.unsynced.shift()!.ops);
      }
    }
  }

  /** Deletes the range's keys one by one in key order, each as an unsynced batch of its own, so a crash keeps a prefix of them (`crash(n)` keeps the first n). */
  async clear(range: ClearRange): Promise<void> {
    this.checkOpen();
    const lo = toBin(keyBytes(range.gte));
    const hi = toBin(keyBytes(range.lt));
    if (this.sortedKeys === undefined) this.sortedKeys = [...this.current.keys()].sort();
    const keys = this.sortedKeys.slice(lowerBound(this.sortedKeys, lo), lowerBound(this.sortedKeys, hi));
    for (const k of keys) {
      for (const v of this.views) if (!v.before.has(k)) v.before.set(k, this.current.get(k));
      this.current.delete(k);
      this.unsynced.push({ id: this.nextBatchId++, ops: [[k, undefined]] });
    }
    if (keys.length > 0) this.sortedKeys = undefined;
    await this.delay();
    this.checkOpen();
  }

  async get(key: EngineKey): Promise<Uint8Array | undefined> {
    return this.getSync(key);
  }

  getSync(key: EngineKey): Uint8Array | undefined {
    this.checkOpen();
    return this.current.get(toBin(keyBytes(key)))?.slice();
  }

  async *iterate(options: ScanOptions = {}): AsyncIterable<EngineEntry> {
    this.checkOpen();
    const { gte, lt } = scanBounds(options);
    const lo = gte === undefined ? undefined : toBin(gte);
    const hi = lt === undefined ? undefined : toBin(lt);
    if (this.sortedKeys === undefined) this.sortedKeys = [...this.current.keys()].sort();
    const keys = this.sortedKeys;
    let start = lo === undefined ? 0 : lowerBound(keys, lo);
    const end = hi === undefined ? keys.length : lowerBound(keys, hi);
    // Point-in-time view: copy the matching pairs before yielding any.
    const pairs: Array<[Uint8Array, Uint8Array]> = [];
    const limit = options.limit === undefined || options.limit < 0 ? Infinity : options.limit;
    if (options.reverse === true) {
      for (let i = end - 1; i >= start && pairs.length < limit; i--) pairs.push([fromBin(keys[i]!), this.current.get(keys[i]!)!.slice()]);
    } else {
      for (; start < end && pairs.length < limit; start++) pairs.push([fromBin(keys[start]!), this.current.get(keys[start]!)!.slice()]);
    }
    for (const p of pairs) yield p;
  }

  /**
   * A copy-on-write view: it holds the sorted key list of the moment (shared with the engine's
   * cache, which is replaced, never mutated) and, per key written after, the value it had before
   * (kept until the view is closed). Reads are lazy: iterating copies nothing up front.
   */
  view(): EngineView {
    this.checkOpen();
    if (this.sortedKeys === undefined) this.sortedKeys = [...this.current.keys()].sort();
    const keys = this.sortedKeys;
    const state = { before: new Map<string, Uint8Array | undefined>() };
    this.views.add(state);
    let closed = false;
    const check = (): void => {
      if (closed) throw new Error('engine view is closed');
      this.checkOpen();
    };
    const read = (k: string): Uint8Array | undefined => (state.before.has(k) ? state.before.get(k) : this.current.get(k));
    const self = this;
    return {
      get: async (key) => {
        check();
        return read(toBin(keyBytes(key)))?.slice();
      },
      getMany: async (keys) => {
        check();
        return keys.map((key) => read(toBin(keyBytes(key)))?.slice());
      },
      iterate: (options = {}) => {
        check();
        const { gte, lt } = scanBounds(options);
        const start = gte === undefined ? 0 : lowerBound(keys, toBin(gte));
        const end = lt === undefined ? keys.length : lowerBound(keys, toBin(lt));
        const limit = options.limit === undefined || options.limit < 0 ? Infinity : options.limit;
        const reverse = options.reverse === true;
        return (async function* () {
          let n = 0;
          for (let i = reverse ? end - 1 : start; reverse ? i >= start : i < end; reverse ? i-- : i++) {
            if (n >= limit) return;
            check();
            const v = read(keys[i]!);
            if (v === undefined) continue; // not present when the view was taken (cannot happen: keys is that moment's list)
            n++;
            yield [fromBin(keys[i]!), v.slice()] as const;
          }
        })();
      },
      close: async () => {
        closed = true;
        self.views.delete(state);
      },
    };
  }

  /** Number of open views (for tests: views must be closed). */
  get openViews(): number {
    return this.views.size;
  }

  async close(): Promise<void> {
    if (this.state === 'open') this.state = 'closed';
  }

  /**
   * Simulates a machine crash: this engine becomes unusable (its in-flight batches reject with
   * {@link EngineClosedError}) and a new engine is returned holding only the durable data plus,
   * to model a torn write-ahead log, the first `keepUnsyncedBatches` not-yet-durable batches
   * (whole batches only, in order; the rest, including any partially written one, is lost).
   */
  crash(keepUnsyncedBatches = 0): MemoryEngine {
    const survived = new Map(this.durable);
    for (const b of this.unsynced.slice(0, Math.max(0, keepUnsyncedBatches))) applyOps(survived, b.ops);
    this.state = 'crashed';
    this.unsynced = [];
    return new MemoryEngine({ latencyMs: this.latencyMs }, survived);
  }

  private checkOpen(): void {
    if (this.state !== 'open') throw new EngineClosedError(this.state);
  }

  private delay(): Promise<void> {
    return new Promise((resolve) => {
      if (this.latencyMs > 0) setTimeout(resolve, this.latencyMs);
      else setImmediate(resolve);
    });
  }
}

function applyOps(map: Map<string, Uint8Array>, ops: readonly StoredOp[]): void {
  for (const [k, v] of ops) {
    if (v === undefined) map.delete(k);
    else map.set(k, v);
  }
}

function lowerBound(sorted: readonly string[], key: string): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
