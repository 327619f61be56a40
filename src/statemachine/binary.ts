/** Minimal binary writer/reader (LEB128 varints up to 2^53, length-prefixed bytes and UTF-8 strings) for the codecs. */
import * as zlib from 'node:zlib';
import { ValidationError, type ValidationErrorCode } from './errors.js';
import { utf8ByteLength } from './keys.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Growable byte buffer with append-only writes. */
export class ByteWriter {
  private buf: Uint8Array;
  private len = 0;

  /** `into`: the (zeroed) bytes to write into first, instead of a fresh array of `initialCapacity`. */
  constructor(initialCapacity = 64, into?: Uint8Array) {
    this.buf = into ?? new Uint8Array(Math.max(16, initialCapacity));
  }

  private ensure(extra: number): void {
    const need = this.len + extra;
    if (need <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < need) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  /** Appends one byte. */
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.len++] = v & 0xff;
  }

  /** Appends a big-endian unsigned 32-bit integer. */
  u32(v: number): void {
    this.ensure(4);
    this.buf[this.len++] = (v >>> 24) & 0xff;
    this.buf[this.len++] = (v >>> 16) & 0xff;
    this.buf[this.len++] = (v >>> 8) & 0xff;
    this.buf[this.len++] = v & 0xff;
  }

  /** Appends a non-negative safe integer as an unsigned LEB128 varint (at most 8 bytes). */
  varint(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`varint out of range: ${v}`);
    this.ensure(8);
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.len++] = v;
  }

  /** Appends raw bytes. */
  raw(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  /** Appends a varint length followed by the bytes. */
  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.raw(b);
  }

  /** Appends a varint UTF-8 byte length followed by the UTF-8 bytes of a well-formed string. */
  str(s: string): void {
    const n = utf8ByteLength(s);
    if (n < 0) throw new RangeError('string is not well-formed UTF-16');
    this.varint(n);
    this.ensure(n);
    if (n === s.length) {
      // Single-byte characters only (the usual key): copied directly, no encoder call.
      const b = this.buf;
      const at = this.len;
      for (let i = 0; i < n; i++) b[at + i] = s.charCodeAt(i);
      this.len += n;
      return;
    }
    const { written } = encoder.encodeInto(s, this.buf.subarray(this.len, this.len + n));
    this.len += written;
  }

  /** Appends a big-endian IEEE 754 double. */
  f64(v: number): void {
    this.ensure(8);
    F64[0] = v;
    const b = this.buf;
    let at = this.len;
    for (let i = 7; i >= 0; i--) b[at++] = F64_BYTES[LITTLE_ENDIAN ? i : 7 - i]!;
    this.len = at;
  }

  /** Bytes written so far. */
  get length(): number {
    return this.len;
  }

  /** Read-only view of what was written so far (valid until the next write). */
  view(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }

  /** A right-sized copy of everything written. */
  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  /** Everything written, as a view of the writer's buffer (no copy; the writer must not be written to again). */
  written(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}

const F64 = new Float64Array(1);
const F64_BYTES = new Uint8Array(F64.buffer);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Hands out small byte arrays as views of shared chunks (64 KiB by default), for data that lives
 * about as long as the data handed out next to it: a typed array of a few hundred bytes otherwise
 * has a backing store of its own, whose allocation costs more than filling it and whose external
 * memory drives the GC. A chunk stays alive while any of its views does.
 */
export class ByteChunks {
  private chunk: Uint8Array;
  private at = 0;

  constructor(
    private readonly chunkBytes = 64 * 1024,
    private readonly maxInChunk = 4 * 1024,
  ) {
    this.chunk = new Uint8Array(chunkBytes);
  }

  /** `n` fresh (zeroed, never handed out before) bytes: a chunk's view when `n` is small, else an array of their own. */
  take(n: number): Uint8Array {
    if (n > this.maxInChunk) return new Uint8Array(n);
    if (this.at + n > this.chunkBytes) {
      this.chunk = new Uint8Array(this.chunkBytes);
      this.at = 0;
    }
    const out = this.chunk.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  /** Gives back the bytes of `view` (the last {@link take}) past its first `used`, untouched, for the next take. */
  trim(view: Uint8Array, used: number): void {
    if (view.buffer === this.chunk.buffer && view.byteOffset + view.length === this.at && used <= view.length) this.at -= view.length - used;
  }
}

/** Bounds-checked reader; every malformation throws a ValidationError with the configured code. */
export class ByteReader {
  private pos = 0;

  constructor(
    private readonly buf: Uint8Array,
    private readonly code: ValidationErrorCode,
    private readonly end = buf.length,
  ) {}

  /** Throws a ValidationError describing `what` at the current offset. */
  fail(what: string): never {
    throw new ValidationError(this.code, `${what} (at byte ${this.pos} of ${this.end})`);
  }

  /** Current offset. */
  get offset(): number {
    return this.pos;
  }

  /** Bytes left to read. */
  get remaining(): number {
    return this.end - this.pos;
  }

  /** Reads one byte. */
  u8(): number {
    if (this.pos >= this.end) this.fail('unexpected end of input');
    return this.buf[this.pos++]!;
  }

  /** Reads a canonical (minimal) unsigned LEB128 varint that fits a safe integer. */
  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; ; i++) {
      if (i >= 8) this.fail('varint too long');
      const b = this.u8();
      result += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (b === 0 && i > 0) this.fail('non-canonical varint');
        break;
      }
      mul *= 0x80;
    }
    if (result > Number.MAX_SAFE_INTEGER) this.fail('varint exceeds 2^53-1');
    return result;
  }

  /** Reads a varint that must be <= max; `what` names the field in the error. */
  varintMax(max: number, what: string): number {
    const v = this.varint();
    if (v > max) this.fail(`${what} ${v} exceeds ${max}`);
    return v;
  }

  /** Reads `n` raw bytes into a fresh copy (never aliases the input). */
  raw(n: number): Uint8Array {
    if (n > this.end - this.pos) this.fail(`length ${n} runs past end of input`);
    const out = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Returns a view (no copy) of the next `n` bytes and skips them. */
  view(n: number): Uint8Array {
    if (n > this.end - this.pos) this.fail(`length ${n} runs past end of input`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Reads a varint length (<= maxLen) followed by that many bytes (copied). */
  bytes(maxLen: number, what: string): Uint8Array {
    const n = this.varintMax(maxLen, `${what} length`);
    return this.raw(n);
  }

  /** Decodes `bytes` as strict UTF-8 (BOM preserved), failing with this reader's code. */
  decodeUtf8(bytes: Uint8Array, what: string): string {
    try {
      return decoder.decode(bytes);
    } catch {
      return this.fail(`${what} is not valid UTF-8`);
    }
  }

  /** Reads a varint byte length (<= maxBytes) followed by strict UTF-8. */
  str(maxBytes: number, what: string): string {
    const n = this.varintMax(maxBytes, `${what} length`);
    if (n > this.end - this.pos) this.fail(`${what} length ${n} runs past end of input`);
    const view = this.buf.subarray(this.pos, this.pos + n);
    const s = this.decodeUtf8(view, what);
    this.pos += n;
    return s;
  }

  /** Fails unless every byte was consumed. */
  expectEnd(): void {
    if (this.pos !== this.end) this.fail(`${this.end - this.pos} trailing bytes`);
  }
}

/** UTF-8 encoding of a string (fresh array). */
export function utf8Encode(s: string): Uint8Array {
  return encoder.encode(s);
}

/** Encodes a well-formed string into `dest` (which must be large enough); returns the byte count. */
export function utf8EncodeInto(s: string, dest: Uint8Array): number {
  return encoder.encodeInto(s, dest).written;
}

const CRC_TABLE: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** zlib's native CRC-32 where the runtime has it (Node >= 20.15), else undefined. */
const nativeCrc32: ((data: Uint8Array, value?: number) => number) | undefined = typeof (zlib as { crc32?: unknown }).crc32 === 'function'
  ? (zlib as unknown as { crc32: (data: Uint8Array, value?: number) => number }).crc32
  : undefined;

/** CRC-32 (IEEE 802.3, as zlib) of `data` (native when available: snapshots are large). */
export function crc32(data: Uint8Array): number {
  return crc32Update(0, data);
}

/** CRC-32 (as zlib) of `data` continuing from the CRC `prev` of what came before it (0 to start). */
export function crc32Update(prev: number, data: Uint8Array): number {
  if (nativeCrc32) return nativeCrc32(data, prev) >>> 0;
  let c = (prev ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
