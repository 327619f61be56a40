/**
 * The node's memory budget (issue 17): what the node's long-lived in-heap structures are
 * accounted at, and the admission check that refuses writes adding data once the budget is spent
 * (RESOURCE_EXHAUSTED with a reason, a counter), so a node that is full keeps serving reads,
 * deletes, compaction and Raft instead of growing until V8 kills it or its GC pauses cost its
 * leaderships.
 *
 * Accounted, per hosted replica: its key and version index (measured heap cost per key and per
 * retained version, see {@link INDEX_BYTES_PER_KEY}), its watch history's accounted bytes and its
 * in-memory Raft log (entry data applied since the last log compaction plus the tail kept behind
 * it); per node: the value cache's accounted bytes and the snapshots held for sending to lagging
 * followers (about a chunk per follower being sent to, one snapshot at a time, snapshot-sender.ts `SnapshotGate`). Also watched: the V8 heap itself (used bytes
 * against V8's heap limit), a safety net for what the accounting misses (in-flight requests,
 * an installing snapshot, garbage). The figures are sampled by `refresh` (the node calls it on
 * its tick), so a check costs a comparison; the budget is enforced at admission on the leader,
 * never in `apply` (which must stay deterministic: a committed write is always applied).
 */
import type { Command, CommandOrigin } from '../statemachine/index.js';

/**
 * Heap bytes of one key of the index with one version (the `records` map entry, its version
 * array and record, the sorted live-key set's share, its packed write-log entry; measured 347 B
 * with the bench's 15-character keys, bench/index-heap.ts `--modes heap` over 100 k keys, 397 B
 * before the packed write log of session `heapkey`). Longer keys cost 2 bytes per further character.
 */
export const INDEX_BYTES_PER_KEY = 360;

/**
 * Heap bytes of each further retained version of a key held in a version list (its record, its
 * packed write-log entry and revision timestamp; measured 89–90 B, bench/index-heap.ts `--modes
 * heap --versions 2` against `--versions 1`; 140–143 B before the packed write log, session `heapkey`).
 */
export const INDEX_BYTES_PER_VERSION = 100;

/**
 * Heap bytes of a retained write whose key left the heap's version lists (`indexDropCold`, the
 * default: a keyless write-log entry, 4 B of revision and 4 B of key slot, and 4 B of revision
 * timestamp; measured 7–9 B per further key between 100 k and 200 k keys written once,
 * bench/index-heap.ts `--modes drop` and `restart-cold`, session `heapkey`). Once compaction passes
 * the write, the key costs its share of the Bloom filter only (about 1.25 B, counted with the filter).
 */
export const KEYLESS_WRITE_BYTES = 16;

/**
 * Heap bytes of a reserved key held in the live-key set alone (`indexDropCold`: the set keeps
 * reserved keys only — leases' attachments, cursors, dead letters, descriptors — and their version
 * lists leave the heap like user keys'): its key string and set slot (measured 68 B with
 * 20-character keys, bench/index-heap.ts `--prefix /_sys/bench/ --modes drop-compacted`).
 */
export const LIVE_KEY_BYTES = 72;

/** Fraction of V8's heap limit above which writes are refused whatever the accounting says. */
export const HEAP_LIMIT_FRACTION = 0.85;

/** The accounted figures of one replica. */
export interface ReplicaMemory {
  /** Keys held in the index (live and deleted-but-retained). */
  readonly keys: number;
  /** Writes since the compaction point (each a retained version), `keylessWrites` included. */
  readonly writes: number;
  /** Of `writes`, those of keys dropped from the heap's version lists (`indexDropCold`), counted at {@link KEYLESS_WRITE_BYTES}; 0 when absent. */
  readonly keylessWrites?: number;
  /** The watch history's accounted bytes. */
  readonly historyBytes: number;
  /** Bytes of Raft entry data held in memory. */
  readonly logBytes: number;
  /** Bytes of the machine's Bloom filter of user keys (`indexDropCold`: the live-key set holds reserved keys only); 0 without. */
  readonly keyFilterBytes?: number;
  /** Reserved keys in the live-key set when it holds reserved keys only (`indexDropCold`), counted at {@link LIVE_KEY_BYTES}; 0 without (then `keys` counts them). */
  readonly reservedLiveKeys?: number;
}

/** What the budget samples on each refresh. */
export interface MemorySample {
  readonly replicas: Iterable<ReplicaMemory>;
  readonly valueCacheBytes: number;
  /** Accounted bytes of the hot-index cache (keys' latest versions; default 0). */
  readonly indexCacheBytes?: number;
  /** Bytes held for sending snapshots to lagging followers: each one's current chunk and encoder parts (default 0). */
  readonly snapshotBytes?: number;
  /** V8 heap used and its limit (bytes). */
  readonly heapUsed: number;
  readonly heapLimit: number;
}

/** The accounted bytes by part, as last refreshed. */
export interface MemoryAccount {
  readonly index: number;
  readonly history: number;
  readonly log: number;
  readonly valueCache: number;
  /** The hot-index cache (keys' latest versions read from the engine). */
  readonly indexCache: number;
  readonly snapshots: number;
  readonly total: number;
  readonly heapUsed: number;
  readonly heapLimit: number;
}

/** A write refused because the node's memory budget (or V8's heap) is spent; nothing was applied. */
export class MemoryBudgetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MemoryBudgetError';
  }
}

/**
 * The heap bytes of the index of a replica holding `m`: its version lists by key and further
 * version, the keyless write-log entries (with `indexDropCold`, the keys that left the heap, until
 * compacted), reserved live keys held by the live-key set alone, and the Bloom filter.
 */
export function indexBytes(m: ReplicaMemory): number {
  const keyless = m.keylessWrites ?? 0;
  return (
    m.keys * INDEX_BYTES_PER_KEY +
    Math.max(0, m.writes - keyless - m.keys) * INDEX_BYTES_PER_VERSION +
    keyless * KEYLESS_WRITE_BYTES +
    (m.reservedLiveKeys ?? 0) * LIVE_KEY_BYTES +
    (m.keyFilterBytes ?? 0)
  );
}

/** Whether `cmd` can add data to a shard (a put, a txn that puts, a trigger's history event). Deletes, compaction and no-ops free or keep memory. */
export function addsData(cmd: Command): boolean {
  switch (cmd.type) {
    case 'put':
    case 'triggerPut':
      return true;
    case 'txn':
      return cmd.writes.some((w) => w.type === 'put');
    default:
      return false;
  }
}

/**
 * A node's memory budget: `maxBytes` accounted bytes (0 = no budget; the V8 heap check still
 * applies). Refreshed from a {@link MemorySample}; `check` says whether a command may be proposed.
 */
export class MemoryBudget {
  private account: MemoryAccount = { index: 0, history: 0, log: 0, valueCache: 0, indexCache: 0, snapshots: 0, total: 0, heapUsed: 0, heapLimit: 0 };
  private reason: string | undefined;
  private refused = 0;

  constructor(
    /** The budget in bytes (0: none). */
    readonly maxBytes: number,
    private readonly sample: () => MemorySample,
  ) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`memory budget must be a non-negative integer of bytes, got ${maxBytes}`);
  }

  /** Samples the figures again and decides whether writes that add data are refused. */
  refresh(): void {
    const s = this.sample();
    let index = 0;
    let history = 0;
    let log = 0;
    for (const r of s.replicas) {
      index += indexBytes(r);
      history += r.historyBytes;
      log += r.logBytes;
    }
    const snapshots = s.snapshotBytes ?? 0;
    const indexCache = s.indexCacheBytes ?? 0;
    const total = index + history + log + s.valueCacheBytes + indexCache + snapshots;
    this.account = { index, history, log, valueCache: s.valueCacheBytes, indexCache, snapshots, total, heapUsed: s.heapUsed, heapLimit: s.heapLimit };
    const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;
    if (this.maxBytes > 0 && total >= this.maxBytes) {
      this.reason =
        `MEMORY_BUDGET: the node's memory budget (${mib(this.maxBytes)}, --memory-budget-mib) is spent: ` +
        `index ${mib(index)}, watch history ${mib(history)}, Raft log ${mib(log)}, value cache ${mib(s.valueCacheBytes)}, index cache ${mib(indexCache)}, snapshots being sent ${mib(snapshots)}; ` +
        'writes that add data are refused (nothing was applied); deletes, reads and compaction still work';
    } else if (s.heapLimit > 0 && s.heapUsed >= s.heapLimit * HEAP_LIMIT_FRACTION) {
      this.reason =
        `MEMORY_BUDGET: the V8 heap is nearly full (${mib(s.heapUsed)} used of ${mib(s.heapLimit)}); ` +
        'writes that add data are refused (nothing was applied); raise --max-old-space-size or lower the data per node';
    } else this.reason = undefined;
  }

  /** The error to refuse `cmd` with, or undefined to let it through (system commands and commands that add nothing always pass). */
  check(cmd: Command, origin: CommandOrigin): MemoryBudgetError | undefined {
    if (this.reason === undefined || origin === 'system' || !addsData(cmd)) return undefined;
    this.refused++;
    return new MemoryBudgetError(this.reason);
  }

  /** Whether writes that add data are being refused now. */
  get exhausted(): boolean {
    return this.reason !== undefined;
  }

  /** Writes refused so far. */
  get refusals(): number {
    return this.refused;
  }

  /** The accounted bytes as last refreshed. */
  get accounted(): MemoryAccount {
    return this.account;
  }
}

/** The bounded structures a budget must leave room for before any key: their bounds, in bytes. */
export interface FixedMemoryParts {
  /** The value cache's bound (`--value-cache-mib`). */
  readonly valueCache: number;
  /** The hot-index cache's bound (`--index-cache-mib`). */
  readonly indexCache: number;
  /** One shard replica's watch history at its byte bound (the state machine's `maxHistoryBytes`). */
  readonly history: number;
  /** One replica's in-memory Raft log at its bounds: entry data before a log compaction plus the tail kept behind it. */
  readonly raftLog: number;
}

/**
 * What a budget of `budgetBytes` lacks to hold the caches and one shard replica's watch history
 * and Raft log at their bounds (0 when it holds them). These bounds do not follow the budget, so a
 * smaller budget is spent by them alone once they fill, and the node refuses writes that add data
 * at any data size; kvd warns at start (a shortfall of this much or more is certain to be hit; each
 * further replica hosted adds its history and log).
 */
export function budgetShortfall(budgetBytes: number, parts: FixedMemoryParts): number {
  const fixed = parts.valueCache + parts.indexCache + parts.history + parts.raftLog;
  return Math.max(0, fixed - budgetBytes);
}
