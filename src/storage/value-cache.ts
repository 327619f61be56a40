/** A bounded, approximately least-recently-used cache of value bytes, shared by the shards of a node, with hit, miss, eviction and byte counters for metrics. */
import { EvictionHand } from './eviction-hand.js';

/** Accounted bytes of one cache entry besides its value and key (map slot, array header, and the entry object holding the value, its revision and mark). */
export const CACHE_ENTRY_OVERHEAD_BYTES = 128;

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

/** One cached value, the revision it is the value at, and whether it was used since the eviction hand last passed it. */
interface Entry {
  value: Uint8Array;
  revision: number;
  used: boolean;
}

/**
 * Cache of immutable byte strings by string key, each tagged with a revision (a lookup names the
 * revision it wants: another revision under the same key is a miss), bounded by accounted bytes
 * (value length + 2 bytes per key character + {@link CACHE_ENTRY_OVERHEAD_BYTES}), evicting about
 * the least recently used: a hit, or a newer revision stored under a key already cached (a key's
 * next version replacing its last one: every put, on every node), updates its entry in place and
 * marks it, changing no map order; eviction walks from the oldest insertion, giving a marked entry
 * a second chance (unmarked and moved to the back) and dropping the first unmarked one (CLOCK).
 * So the write path inserts and evicts nothing for a key already cached (a Map insert at the back
 * and a delete at the front per put cost ~3 µs at 160 k entries: V8 rehashes the holes). A value
 * larger than an eighth of the bound is not cached (it would flush the hot set). Values are kept
 * by reference: store only arrays that own their buffer (see {@link ownedCopy}).
 */
export class ValueCache {
  private readonly map = new Map<string, Entry>();
  /** Finds the oldest entry (see EvictionHand: no walk over deleted entries' holes). */
  private readonly hand = new EvictionHand<string, Entry>();
  private held = 0;
  private counters = { hits: 0, misses: 0, evictions: 0 };

  /** A cache of at most `maxBytes` accounted bytes (0 disables it). */
  constructor(readonly maxBytes: number = DEFAULT_VALUE_CACHE_BYTES) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`value cache bytes must be a non-negative integer, got ${maxBytes}`);
  }

  /** The value under `key` at `revision` (now marked used), or undefined (absent, or another revision); counts a hit, or a miss unless `countMiss` is false. */
  get(key: string, revision = 0, countMiss = true): Uint8Array | undefined {
    const e = this.map.get(key);
    if (e === undefined || e.revision !== revision) {
      if (countMiss) this.counters.misses++;
      return undefined;
    }
    this.counters.hits++;
    e.used = true;
    return e.value;
  }

  /** Whether `key` is cached at `revision` (counts nothing, marks nothing). */
  has(key: string, revision = 0): boolean {
    return this.map.get(key)?.revision === revision;
  }

  /** The revision cached under `key`, or undefined. */
  revisionOf(key: string): number | undefined {
    return this.map.get(key)?.revision;
  }

  /** Counts `n` misses served outside `get` (values read ahead from the engine). */
  countMisses(n: number): void {
    this.counters.misses += n;
  }

  /**
   * Stores `value` under `key` at `revision`, marked used: in place when `key` is cached at an
   * older or the same revision, not at all when it is cached at a newer one (returns false then,
   * or when the value is too large to cache); evicts entries beyond the bound.
   */
  set(key: string, value: Uint8Array, revision = 0): boolean {
    const cost = entryCost(key, value);
    if (cost > this.maxBytes / 8) return false;
    const old = this.map.get(key);
    if (old !== undefined) {
      if (old.revision > revision) return false;
      this.held += cost - entryCost(key, old.value);
      old.value = value;
      old.revision = revision;
      old.used = true;
    } else {
      this.map.set(key, { value, revision, used: false });
      this.held += cost;
    }
    while (this.held > this.maxBytes) {
      const [k, e] = this.hand.oldest(this.map);
      this.map.delete(k);
      if (e.used) {
        e.used = false;
        this.map.set(k, e); // second chance: to the back
        continue;
      }
      this.held -= entryCost(k, e.value);
      this.counters.evictions++;
    }
    return true;
  }

  /** Drops `key` if present. */
  delete(key: string): void {
    const old = this.map.get(key);
    if (old === undefined) return;
    this.map.delete(key);
    this.held -= entryCost(key, old.value);
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
