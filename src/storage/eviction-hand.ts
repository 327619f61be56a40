/** The eviction hand of the caches: finds the oldest entry of a Map used as an insertion-ordered queue without walking V8's holes. */

/**
 * Where eviction continues in a Map whose entries are deleted from the front: a live iterator of
 * it (every entry it passed was deleted, so its next entry is the oldest). A fresh
 * `map.entries().next()` per eviction walks the holes V8 leaves at the front of a Map until it
 * rehashes: hundreds of µs per eviction at 100 k+ entries (docs/memory.md, bench/cache-eviction.ts).
 */
export class EvictionHand<K, V> {
  private cursor: Iterator<[K, V]> | undefined;

  /** The oldest entry of `map`, which must not be empty (the caller deletes or moves it). */
  oldest(map: Map<K, V>): [K, V] {
    let r = this.cursor?.next();
    if (r === undefined || r.done === true) {
      this.cursor = map.entries();
      r = this.cursor.next();
    }
    return r.value as [K, V];
  }
}
