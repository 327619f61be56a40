/**
 * A bounded Bloom filter of keys (issue 17): tells a state machine whose live-key set no longer
 * holds user keys that a key was never made live, so looking up a new key's latest version costs
 * no storage read. Answers "maybe" for every key added (no false negatives) and for about 1 % of
 * the others while under its bound; never removes a key (a deleted key keeps answering "maybe":
 * one storage read, then the hot-index cache remembers the absence).
 */

/** Bits per key a layer is sized for (with {@link HASHES} hashes: about 1 % false positives). */
const BITS_PER_KEY = 10;
/** Hash functions per key (double hashing of two 32-bit FNV-1a variants). */
const HASHES = 7;
/** Keys the first layer is sized for; each further layer is sized for twice the previous one. */
const FIRST_LAYER_KEYS = 4096;
/** Default bound on the bits of all layers: 64 Mibit (8 MiB), about 6 M keys at 1 %. */
export const DEFAULT_KEY_FILTER_MAX_BITS = 64 * 1024 * 1024;

interface Layer {
  readonly bits: Uint32Array;
  /** Number of bits (a power of two). */
  readonly size: number;
  /** Keys this layer is sized for (past it, a new layer is added while the bound allows). */
  readonly capacity: number;
  added: number;
}

/** Two 32-bit hashes of `key` (FNV-1a over its UTF-16 code units, two offset bases). */
function hashes(key: string): [number, number] {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
    b ^= b >>> 15;
  }
  return [a >>> 0, (b | 1) >>> 0];
}

/**
 * A scalable Bloom filter of keys with a bound on its bits: layers sized for 4,096 keys, then twice
 * as many each, added as the previous one fills; once the next layer would pass `maxBits`, keys go
 * on into the last layer (its false-positive rate then rises: more storage reads, never a wrong
 * answer). Memory: about 10 bits per key added, at most `maxBits` / 8 bytes.
 */
export class KeyFilter {
  private readonly layers: Layer[] = [];
  private totalBits = 0;

  /** An empty filter whose layers hold at most `maxBits` bits in all (at least one layer's). */
  constructor(private readonly maxBits = DEFAULT_KEY_FILTER_MAX_BITS) {
    this.addLayer(FIRST_LAYER_KEYS);
  }

  private addLayer(capacity: number): void {
    let size = 32;
    while (size < capacity * BITS_PER_KEY) size *= 2;
    this.layers.push({ bits: new Uint32Array(size / 32), size, capacity, added: 0 });
    this.totalBits += size;
  }

  /** Bytes of bit arrays held (for accounting and tests). */
  get bytes(): number {
    return this.totalBits / 8;
  }

  /** Records `key` (after it, `mayContain(key)` is true). */
  add(key: string): void {
    let layer = this.layers[this.layers.length - 1]!;
    if (layer.added >= layer.capacity) {
      const next = layer.capacity * 2;
      let size = 32;
      while (size < next * BITS_PER_KEY) size *= 2;
      if (this.totalBits + size <= this.maxBits) {
        this.addLayer(next);
        layer = this.layers[this.layers.length - 1]!;
      }
    }
    layer.added++;
    const [h1, h2] = hashes(key);
    // Same bit positions as `mayContain` (double hashing: h1 + i·h2).
    const mask = layer.size - 1;
    for (let i = 0; i < HASHES; i++) {
      const bit = (h1 + Math.imul(i, h2)) & mask;
      const w = bit >>> 5;
      layer.bits[w] = layer.bits[w]! | (1 << (bit & 31));
    }
  }

  /** False when `key` was never added; true when it was (and, rarely, when it was not). */
  mayContain(key: string): boolean {
    const [h1, h2] = hashes(key);
    for (const layer of this.layers) {
      const mask = layer.size - 1;
      let all = true;
      for (let i = 0; i < HASHES && all; i++) {
        const bit = (h1 + Math.imul(i, h2)) & mask;
        all = (layer.bits[bit >>> 5]! & (1 << (bit & 31))) !== 0;
      }
      if (all) return true;
    }
    return false;
  }
}
