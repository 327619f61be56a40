/** A bounded least-recently-used cache of value bytes, shared by the shards of a node, with hit, miss, eviction and byte counters for metrics. */
import { EvictionHand } from './eviction-hand.js';

/** Accounted bytes of one cache entry besides its value and key (map slot, entry, array header). */
export const CACHE_ENTRY_OVERHEAD_BYTES = 96;

/** Default bound of a node's value cache (bytes). */
export const DEFAULT_VALUE_CACHE_BYTES = 64 * 1024 * 1024;

/** The counters of a byte-bounded cache of the node ({@link ValueCache}, and the hot-index cache in index-cache.ts). */
export interface CacheStats {
  /** Lookups that found the entry. */
  readonly hits: number;
  /** Lookups that did not (the caller then reads the engine). */
  readonly misses: number;
  /** Entries dropped to stay within the bound. */
  readonly evictions: number;
  /** Accounted bytes held now (each cache says what it counts per entry), never above `maxBytes`. */
  readonly bytes: number;
  /** Entries held now. */
  readonly entries: number;
  /** The bound. */
  readonly maxBytes: number;
}

/** The counters of a {@link ValueCache} (accounted bytes: values + keys + per-entry overhead). */
export type ValueCacheStats = CacheStats;

/**
 * LRU cache of immutable byte strings by string key, bounded by accounted bytes (value length +
 * 2 bytes per key character + {@link CACHE_ENTRY_OVERHEAD_BYTES}). A JS Map keeps insertion order,
 * so moving an entry to the back on a hit and evicting from the front is LRU in O(1). A value
 * larger than an eighth of the bound is not cached (it would flush the hot set). Values are kept
 * by reference: store only arrays that own their buffer (see {@link ownedCopy}).
 */
export class ValueCache {
  private readonly map = new Map<string, Uint8Array>();
  /** Finds the oldest entry (see EvictionHand: no walk over deleted entries' holes). */
  private readonly hand = new EvictionHand<string, Uint8Array>();
  private held = 0;
  private counters = { hits: 0, misses: 0, evictions: 0 };

  /** A cache of at most `maxBytes` accounted bytes (0 disables it). */
  constructor(readonly maxBytes: number = DEFAULT_VALUE_CACHE_BYTES) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`value cache bytes must be a non-negative integer, got ${maxBytes}`);
  }

  /** The value under `key` (now the most recently used), or undefined; counts a hit or a miss. */
  get(key: string): Uint8Array | undefined {
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

  /** Whether `key` is cached (counts nothing, changes no recency). */
  has(key: string): boolean {
    return this.map.has(key);
  }

  /** Counts `n` misses served outside `get` (values read ahead from the engine). */
  countMisses(n: number): void {
    this.counters.misses += n;
  }

  /** Stores `value` under `key` as the most recently used, evicting the least recently used entries beyond the bound. */
  set(key: string, value: Uint8Array): void {
    const cost = entryCost(key, value);
    if (cost > this.maxBytes / 8) return;
    const old = this.map.get(key);
    if (old !== undefined) {
      this.held -= entryCost(key, old);
      this.map.delete(key);
    }
    this.map.set(key, value);
    this.held += cost;
    while (this.held > this.maxBytes) {
      const [k, v] = this.hand.oldest(this.map);
      this.map.delete(k);
      this.held -= entryCost(k, v);
      this.counters.evictions++;
    }
  }

  /** Drops `key` if present. */
  delete(key: string): void {
    const old = this.map.get(key);
    if (old === undefined) return;
    this.map.delete(key);
    this.held -= entryCost(key, old);
  }

  /** The counters and current size. */
  get stats(): ValueCacheStats {
    return { ...this.counters, bytes: this.held, entries: this.map.size, maxBytes: this.maxBytes };
  }
}

function entryCost(key: string, value: Uint8Array): number {
  return value.byteLength + key.length * 2 + CACHE_ENTRY_OVERHEAD_BYTES;
}

/** `value` itself when it owns (about) its whole buffer, else a copy: a cached view must not keep a larger buffer (a log entry, a decoded snapshot) alive. */
export function ownedCopy(value: Uint8Array): Uint8Array {
  return value.byteLength + 64 >= value.buffer.byteLength ? value : value.slice();
}
