/**
 * A {@link ByteReader} over a snapshot held as a sequence of chunks that are fetched one at a time
 * (a follower's streamed install reads the chunk records back from disk): only the chunk being
 * read is held, plus a copy of the few bytes of a field that straddles two chunks.
 */
import { ByteReader } from './binary.js';
import { ValidationError, type ValidationErrorCode } from './errors.js';

/** Where a {@link ChunkedByteReader} gets chunk `seq` (0, 1, ...); undefined past the last one. */
export type ChunkFetch = (seq: number) => Uint8Array | undefined;

const EMPTY = new Uint8Array(0);

/** A plain Uint8Array view of `b` (a Buffer's `slice` is a view, not a copy: callers copy with `slice`). */
function plain(b: Uint8Array): Uint8Array {
  return Buffer.isBuffer(b) ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength) : b;
}

/**
 * Reads the first `length` bytes of the concatenation of the chunks `fetch` returns, with the
 * methods and errors of {@link ByteReader}. `view` returns a view into the current chunk (or into
 * a private copy when the bytes straddle chunks): it keeps that chunk alive, so callers keeping
 * the bytes copy them. `skip` passes over bytes without fetching more than it must.
 */
export class ChunkedByteReader extends ByteReader {
  private cur: Uint8Array = EMPTY;
  /** Position in `cur`. */
  private at = 0;
  /** Offset in the whole input of `cur[0]`. */
  private base = 0;
  private nextSeq = 0;

  constructor(
    private readonly fetch: ChunkFetch,
    private readonly length: number,
    private readonly errCode: ValidationErrorCode,
  ) {
    super(EMPTY, errCode);
  }

  override fail(what: string): never {
    throw new ValidationError(this.errCode, `${what} (at byte ${this.offset} of ${this.length}, streamed)`);
  }

  override get offset(): number {
    return this.base + this.at;
  }

  override get remaining(): number {
    return this.length - this.offset;
  }

  /** Makes at least `n` bytes available in `cur` from `at` (n must not run past the end). */
  private ensure(n: number): void {
    if (this.cur.length - this.at >= n) return;
    if (n > this.remaining) this.fail(`length ${n} runs past end of input`);
    const parts: Uint8Array[] = [this.cur.subarray(this.at)];
    let have = parts[0]!.length;
    while (have < n) {
      const c = this.nextChunk();
      parts.push(c);
      have += c.length;
    }
    this.base += this.at;
    this.cur = parts.length === 2 && parts[0]!.length === 0 ? parts[1]! : plain(Buffer.concat(parts));
    this.at = 0;
  }

  private nextChunk(): Uint8Array {
    const c = this.fetch(this.nextSeq);
    if (c === undefined) this.fail(`chunk ${this.nextSeq} is missing`);
    this.nextSeq++;
    return plain(c);
  }

  override u8(): number {
    if (this.at < this.cur.length && this.offset < this.length) return this.cur[this.at++]!;
    if (this.remaining <= 0) this.fail('unexpected end of input');
    this.ensure(1);
    return this.cur[this.at++]!;
  }

  override view(n: number): Uint8Array {
    if (n > this.remaining) this.fail(`length ${n} runs past end of input`);
    this.ensure(n);
    const out = this.cur.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  override raw(n: number): Uint8Array {
    return this.view(n).slice();
  }

  /** Passes over `n` bytes (a value not needed): fetches the chunks they span, copies nothing. */
  skip(n: number): void {
    if (n > this.remaining) this.fail(`length ${n} runs past end of input`);
    for (;;) {
      const avail = this.cur.length - this.at;
      if (n <= avail) {
        this.at += n;
        return;
      }
      n -= avail;
      this.base += this.cur.length;
      this.cur = this.nextChunk();
      this.at = 0;
    }
  }

  override str(maxBytes: number, what: string): string {
    const n = this.varintMax(maxBytes, `${what} length`);
    if (n > this.remaining) this.fail(`${what} length ${n} runs past end of input`);
    return this.decodeUtf8(this.view(n), what);
  }

  override expectEnd(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} trailing bytes`);
  }
}

/** Passes over `n` bytes of `r`: without reading them when it is a {@link ChunkedByteReader}. */
export function skipBytes(r: ByteReader, n: number): void {
  if (r instanceof ChunkedByteReader) r.skip(n);
  else r.view(n);
}
