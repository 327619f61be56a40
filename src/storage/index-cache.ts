/** A bounded least-recently-used cache of keys' latest versions (the hot part of the key index, issue 17), shared by the shards of a node, with counters for metrics. */
import type { VersionRecord } from '../statemachine/index.js';

/** Accounted bytes of one entry besides its key's characters (map slot, entry, version record object). */
export const INDEX_CACHE_ENTRY_OVERHEAD_BYTES = 120;

/** Default bound of a node's hot-index cache (bytes). */
export const DEFAULT_INDEX_CACHE_BYTES = 32 * 1024 * 1024;

/** The counters of an {@link IndexCache}. */
export interface IndexCacheStats {
  /** Lookups that found the key. */
  readonly hits: number;
  /** Lookups that did not (the caller then reads the engine). */
  readonly misses: number;
  /** Entries dropped to stay within the bound. */
  readonly evictions: number;
  /** Accounted bytes held now (2 bytes per key character + {@link INDEX_CACHE_ENTRY_OVERHEAD_BYTES} per entry), never above `maxBytes`. */
  readonly bytes: number;
  /** Entries held now. */
  readonly entries: number;
  /** The bound. */
  readonly maxBytes: number;
}

/**
 * LRU cache of version heads (revision, timestamp, tombstone or value-on-disk, hop count: never
 * value bytes) by string key, bounded by accounted bytes. A JS Map keeps insertion order, so moving
 * an entry to the back on a hit and evicting from the front is LRU in O(1). Callers put only heads
 * whose records are durable in the engine, so an evicted entry is read back from there.
 */
export class IndexCache {
  private readonly map = new Map<string, VersionRecord>();
  private held = 0;
  private counters = { hits: 0, misses: 0, evictions: 0 };

  /** A cache of at most `maxBytes` accounted bytes (0 disables it). */
  constructor(readonly maxBytes: number = DEFAULT_INDEX_CACHE_BYTES) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`index cache bytes must be a non-negative integer, got ${maxBytes}`);
  }

  /** The head under `key` (now the most recently used), or undefined; counts a hit or a miss. */
  get(key: string): VersionRecord | undefined {
    const v = this.map.get(key);
    if (v === undefined) {
      this.counters.misses++;
      return undefined;
    }
    this.counters.hits++;
    this.map.delete(key);
    this.map.set(key, v);
    return v;
  }

  /** Stores `head` under `key` as the most recently used, evicting the least recently used entries beyond the bound. */
  set(key: string, head: VersionRecord): void {
    const cost = entryCost(key);
    if (cost > this.maxBytes) return;
    if (this.map.delete(key)) this.held -= cost;
    this.map.set(key, head);
    this.held += cost;
    while (this.held > this.maxBytes) {
      const k = this.map.keys().next().value as string;
      this.map.delete(k);
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
