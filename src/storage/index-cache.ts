/** A bounded, approximately least-recently-used cache of keys' latest versions (the hot part of the key index, issue 17), shared by the shards of a node, with counters for metrics. */
import type { VersionRecord } from '../statemachine/index.js';
import type { CacheStats } from './value-cache.js';
import { EvictionHand } from './eviction-hand.js';

/** Accounted bytes of one entry besides its key's characters (map slot, entry, version record object). */
export const INDEX_CACHE_ENTRY_OVERHEAD_BYTES = 120;

/** Default bound of a node's hot-index cache (bytes). */
export const DEFAULT_INDEX_CACHE_BYTES = 32 * 1024 * 1024;

/** The counters of an {@link IndexCache} (accounted bytes: 2 per key character + {@link INDEX_CACHE_ENTRY_OVERHEAD_BYTES} per entry). */
export type IndexCacheStats = CacheStats;

/** One cached head and whether it was used since the eviction hand last passed it. */
interface Entry {
  head: VersionRecord;
  used: boolean;
}

/**
 * Cache of version heads (revision, timestamp, tombstone or value-on-disk, hop count: never value
 * bytes) by string key, bounded by accounted bytes, evicting about the least recently used: a hit
 * only marks its entry (the hot path of every write and latest read, so it changes no map order),
 * and eviction walks from the oldest insertion, giving a marked entry a second chance (unmarked
 * and moved to the back) and dropping the first unmarked one (CLOCK). Callers put only heads whose
 * records are durable in the engine, so an evicted entry is read back from there.
 */
export class IndexCache {
  private readonly map = new Map<string, Entry>();
  /** Finds the oldest entry (see EvictionHand: no walk over deleted entries' holes). */
  private readonly hand = new EvictionHand<string, Entry>();
  private held = 0;
  private counters = { hits: 0, misses: 0, evictions: 0 };

  /** A cache of at most `maxBytes` accounted bytes (0 disables it). */
  constructor(readonly maxBytes: number = DEFAULT_INDEX_CACHE_BYTES) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`index cache bytes must be a non-negative integer, got ${maxBytes}`);
  }

  /** The head under `key` (now the most recently used), or undefined; counts a hit or a miss. */
  get(key: string): VersionRecord | undefined {
    const e = this.map.get(key);
    if (e === undefined) {
      this.counters.misses++;
      return undefined;
    }
    this.counters.hits++;
    e.used = true;
    return e.head;
  }

  /** Stores `head` under `key` (replacing an entry in place, keeping its position and mark), evicting entries beyond the bound. */
  set(key: string, head: VersionRecord): void {
    const old = this.map.get(key);
    if (old !== undefined) {
      old.head = head;
      old.used = true;
      return;
    }
    const cost = entryCost(key);
    if (cost > this.maxBytes) return;
    this.map.set(key, { head, used: false });
    this.held += cost;
    while (this.held > this.maxBytes) {
      const [k, e] = this.hand.oldest(this.map);
      this.map.delete(k);
      if (e.used) {
        e.used = false;
        this.map.set(k, e); // second chance: to the back
        continue;
      }
      this.held -= entryCost(k);
      this.counters.evictions++;
    }
  }

  /** The counters and current size. */
  get stats(): IndexCacheStats {
    return { ...this.counters, bytes: this.held, entries: this.map.size, maxBytes: this.maxBytes };
  }
}

function entryCost(key: string): number {
  return key.length * 2 + INDEX_CACHE_ENTRY_OVERHEAD_BYTES;
}
