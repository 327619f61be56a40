/** Packed FIFO logs of the state machine's retained writes and revision timestamps: about 4 bytes of heap per number and per key slot, no object per entry (issue 17, session `heapkey`). */

const CHUNK_BITS = 10;
const CHUNK = 1 << CHUNK_BITS;
const MASK = CHUNK - 1;
const MAX_OFFSET = 0xffff_ffff;

/** One chunk of a {@link PackedNumbers}: offsets from `base` in 32 bits, or absolute values (`wide`) once one does not fit. */
interface NumberChunk {
  base: number;
  data: Uint32Array | Float64Array;
  wide: boolean;
}

/**
 * A FIFO of non-negative safe integers (push at the back, drop from the front, index from the
 * front), held in chunks of 1,024: each number is a 32-bit offset from its chunk's first number,
 * so a non-decreasing sequence whose chunk spans fit in 32 bits (revisions, millisecond
 * timestamps) costs 4 bytes per number; a chunk where one does not fit is stored as doubles (8
 * bytes each). Answers are exact either way.
 */
export class PackedNumbers {
  private chunks: NumberChunk[] = [];
  /** Index of the oldest number in `chunks[0]`. */
  private head = 0;
  /** Numbers in the last chunk. */
  private fill = 0;

  /** Number of elements. */
  get length(): number {
    return this.chunks.length === 0 ? 0 : (this.chunks.length - 1) * CHUNK + this.fill - this.head;
  }

  /** Element `i` counted from the front (0 = oldest); undefined when out of range. */
  at(i: number): number | undefined {
    if (i < 0 || i >= this.length) return undefined;
    return this.get(i);
  }

  /** Element `i` (0 <= i < length, not checked). */
  private get(i: number): number {
    const j = this.head + i;
    const c = this.chunks[j >> CHUNK_BITS]!;
    return c.wide ? c.data[j & MASK]! : c.base + c.data[j & MASK]!;
  }

  /** Appends `v` (a non-negative safe integer) at the back. */
  push(v: number): void {
    let c = this.chunks[this.chunks.length - 1];
    if (c === undefined || this.fill === CHUNK) {
      c = { base: v, data: new Uint32Array(CHUNK), wide: false };
      this.chunks.push(c);
      this.fill = 0;
    }
    if (!c.wide && (v < c.base || v - c.base > MAX_OFFSET)) {
      const wide = new Float64Array(CHUNK);
      for (let k = 0; k < this.fill; k++) wide[k] = c.base + c.data[k]!;
      c.data = wide;
      c.wide = true;
    }
    c.data[this.fill++] = c.wide ? v : v - c.base;
  }

  /** Drops the `n` oldest elements (O(1) per chunk emptied). */
  dropFront(n: number): void {
    if (n <= 0) return;
    if (n >= this.length) {
      this.chunks = [];
      this.head = 0;
      this.fill = 0;
      return;
    }
    this.head += n;
    const whole = this.head >> CHUNK_BITS;
    if (whole > 0) {
      this.chunks.splice(0, whole);
      this.head &= MASK;
    }
  }

  /** Index of the first element greater than `x`, assuming the elements are non-decreasing (length when none is). O(log n). */
  firstGreater(x: number): number {
    let lo = 0;
    let hi = this.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.get(mid) > x) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** Copies the elements, oldest first. */
  toArray(): number[] {
    const out = new Array<number>(this.length);
    for (let i = 0; i < out.length; i++) out[i] = this.get(i);
    return out;
  }
}

/**
 * The machine's write log: (revision, key) of every write newer than the compaction point, in
 * revision order, as two packed columns (a {@link PackedNumbers} of revisions, chunked arrays of
 * keys). An entry's key can be forgotten (`forget`): a key dropped from the heap's version lists
 * (`dropCold`) has one live version, which compaction never drops, so its entry needs only its
 * revision (the write counts and `compactRevisionWithin` still see it) and its key string can be
 * collected: about 8 bytes of heap per such entry instead of an object and a string.
 */
export class WriteLog {
  private readonly revisions = new PackedNumbers();
  private keyChunks: Array<Array<string | undefined>> = [];
  /** Index of the oldest entry in `keyChunks[0]`. */
  private head = 0;
  private keyless = 0;

  /** Number of entries. */
  get length(): number {
    return this.revisions.length;
  }

  /** Entries whose key was forgotten (or pushed without one). */
  get keylessEntries(): number {
    return this.keyless;
  }

  /** The revision of entry `i` (0 = oldest); undefined when out of range. */
  revisionAt(i: number): number | undefined {
    return this.revisions.at(i);
  }

  /** The key of entry `i` (undefined when out of range or forgotten). */
  keyAt(i: number): string | undefined {
    if (i < 0 || i >= this.length) return undefined;
    const j = this.head + i;
    return this.keyChunks[j >> CHUNK_BITS]![j & MASK];
  }

  /** Appends a write at `revision` (not below the last entry's) of `key` (undefined: a write whose key need not be named, see `forget`). */
  push(revision: number, key: string | undefined): void {
    const j = this.head + this.length;
    if ((j & MASK) === 0 && j >> CHUNK_BITS === this.keyChunks.length) this.keyChunks.push(new Array<string | undefined>(CHUNK));
    this.keyChunks[j >> CHUNK_BITS]![j & MASK] = key;
    this.revisions.push(revision);
    if (key === undefined) this.keyless++;
  }

  /** Drops the `n` oldest entries. */
  dropFront(n: number): void {
    n = Math.min(n, this.length);
    if (n <= 0) return;
    for (let i = 0; i < n; i++) if (this.keyAt(i) === undefined) this.keyless--;
    this.revisions.dropFront(n);
    if (this.revisions.length === 0) {
      this.keyChunks = [];
      this.head = 0;
      return;
    }
    this.head += n;
    const whole = this.head >> CHUNK_BITS;
    if (whole > 0) {
      this.keyChunks.splice(0, whole);
      this.head &= MASK;
    }
  }

  /** Index of the first entry with a revision greater than `revision` (length when none). O(log n). */
  firstAfter(revision: number): number {
    return this.revisions.firstGreater(revision);
  }

  /** Forgets the key of `key`'s entry at `revision` (the entry stays, keyless); false when there is none. O(log n + writes at that revision). */
  forget(revision: number, key: string): boolean {
    for (let i = this.firstAfter(revision - 1); i < this.length && this.revisions.at(i) === revision; i++) {
      const j = this.head + i;
      const chunk = this.keyChunks[j >> CHUNK_BITS]!;
      if (chunk[j & MASK] === key) {
        chunk[j & MASK] = undefined;
        this.keyless++;
        return true;
      }
    }
    return false;
  }
}
