/** An ordered set of keys stored as a list of small sorted blocks: O(log n) search, O(log n + B) insert/delete. */
import { compareKeys, lowerBound, upperBound } from './keys.js';

/** Default maximum block size; blocks split in half above it and merge when much smaller. */
export const DEFAULT_KEY_BLOCK_SIZE = 512;

/**
 * Sorted set of keys in compareKeys (UTF-8 byte) order. The keys live in blocks of at most
 * `blockSize` sorted strings; the concatenation of the blocks is sorted and no block is empty.
 * Finding a position is two binary searches (over block maxima, then inside a block): O(log n).
 * Inserting or deleting splices one block (O(blockSize) memmove) and occasionally the block list
 * (O(n / blockSize)), so a shard with millions of keys never moves more than a few KiB per write,
 * unlike one flat sorted array. Iterating k keys from a position is O(k).
 */
export class SortedKeySet {
  private blocks: string[][] = [];
  private count = 0;

  constructor(private readonly blockSize = DEFAULT_KEY_BLOCK_SIZE) {
    if (!Number.isSafeInteger(blockSize) || blockSize < 4) throw new RangeError('blockSize must be an integer >= 4');
  }

  /** Builds a set from keys already sorted by compareKeys and unique (not checked). O(n). */
  static fromSorted(keys: readonly string[], blockSize = DEFAULT_KEY_BLOCK_SIZE): SortedKeySet {
    const set = new SortedKeySet(blockSize);
    const step = Math.max(1, blockSize >>> 1);
    for (let i = 0; i < keys.length; i += step) set.blocks.push(keys.slice(i, i + step));
    set.count = keys.length;
    return set;
  }

  /** Number of keys. */
  get size(): number {
    return this.count;
  }

  /** Index of the first block whose last key is >= key (blocks.length if none). */
  private blockFor(key: string): number {
    let lo = 0;
    let hi = this.blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const b = this.blocks[mid]!;
      if (compareKeys(b[b.length - 1]!, key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** True when the key is present. O(log n). */
  has(key: string): boolean {
    const bi = this.blockFor(key);
    if (bi === this.blocks.length) return false;
    const b = this.blocks[bi]!;
    return b[lowerBound(b, key)] === key;
  }

  /** Adds a key; returns false if it was already present. */
  add(key: string): boolean {
    if (this.blocks.length === 0) {
      this.blocks.push([key]);
      this.count = 1;
      return true;
    }
    let bi = this.blockFor(key);
    if (bi === this.blocks.length) bi--;
    const b = this.blocks[bi]!;
    const pos = lowerBound(b, key);
    if (b[pos] === key) return false;
    b.splice(pos, 0, key);
    this.count++;
    if (b.length > this.blockSize) this.blocks.splice(bi + 1, 0, b.splice(b.length >>> 1));
    return true;
  }

  /** Removes a key; returns false if it was absent. */
  delete(key: string): boolean {
    const bi = this.blockFor(key);
    if (bi === this.blocks.length) return false;
    const b = this.blocks[bi]!;
    const pos = lowerBound(b, key);
    if (b[pos] !== key) return false;
    b.splice(pos, 1);
    this.count--;
    if (b.length === 0) this.blocks.splice(bi, 1);
    else if (b.length < this.blockSize >>> 2) {
      // Merge a small block into a neighbour when the result stays at most half full.
      const half = this.blockSize >>> 1;
      const next = this.blocks[bi + 1];
      const prev = this.blocks[bi - 1];
      if (next !== undefined && b.length + next.length <= half) {
        this.blocks.splice(bi, 2, b.concat(next));
      } else if (prev !== undefined && prev.length + b.length <= half) {
        this.blocks.splice(bi - 1, 2, prev.concat(b));
      }
    }
    return true;
  }

  /** Iterates keys in order starting at the first key >= `start` (> `start` when `exclusive`). */
  *from(start: string, exclusive = false): Generator<string, void, undefined> {
    let bi = this.blockFor(start);
    if (bi === this.blocks.length) return;
    const first = this.blocks[bi]!;
    let pos = exclusive ? upperBound(first, start) : lowerBound(first, start);
    for (; bi < this.blocks.length; bi++, pos = 0) {
      const b = this.blocks[bi]!;
      for (; pos < b.length; pos++) yield b[pos]!;
    }
  }

  /** All keys in order (copy). O(n). */
  toArray(): string[] {
    const out: string[] = [];
    for (const b of this.blocks) for (const k of b) out.push(k);
    return out;
  }
}
