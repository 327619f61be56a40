// Size: one module because the request and response encoders and decoders share one module-level write buffer, the varint/length primitives and the field tags of pipeline.proto: a field added to the .proto changes its sizer, writer and reader here together, and splitting them would export the buffer state.
/**
 * A direct protobuf codec for the Pipeline stream's messages (kvcascade.v1.PipelineRequest and
 * PipelineResponse), the client API's hot path: it encodes from and decodes to the same objects
 * @grpc/proto-loader's generic codec does with PROTO_LOADER_OPTIONS (camelCase, uint64 as number,
 * enums as names, defaults filled, oneof names set), without protobufjs's per-message
 * `fromObject`/`toObject` conversion, `Long` objects, message instances and a second pass over
 * the bytes to check UTF-8.
 *
 * It covers the put, get, delete and trigger ops and their results, batches, errors and every
 * scalar field. Anything else goes to the generic codec it wraps, for the whole message, so the
 * result is the generic codec's: a txn op or result, a number that is not a non-negative safe
 * integer (negative int64, uint64 above 2^53, a string or `Long`), a field repeated where it is
 * not, a wire type that does not match the field, a group, or malformed bytes (the generic codec
 * then throws its own error).
 *
 * Invalid UTF-8 in a decoded request's string field marks the message that holds the op with the
 * field's path (as the generic path marks the top-level message), so each op of a batch carries
 * its own mark: see `mark` in {@link pipelineCodec}.
 *
 * Size: about 960 lines, one reader and one writer per message of the two Pipeline messages (a
 * switch per field, as protobufjs generates them): they mirror kv.proto's Pipeline messages field
 * by field and change together with them, so they stay one file.
 */
import { isUtf8 } from 'node:buffer';

/** Serializes a message object to protobuf bytes. */
export type Serialize = (value: object) => Buffer;
/** Deserializes protobuf bytes to a message object. */
export type Deserialize = (bytes: Buffer) => object;

/** The generic (proto-loader) serializers of the Pipeline method, which the codec falls back to. */
export interface GenericPipelineCodec {
  readonly requestSerialize: Serialize;
  readonly requestDeserialize: Deserialize;
  readonly responseSerialize: Serialize;
  readonly responseDeserialize: Deserialize;
}

/** Thrown inside the codec to hand a message to the generic codec; never escapes it. */
const GENERIC = new Error('pipeline codec: generic path');

type Obj = Record<string, unknown>;

// ---- encoding ---------------------------------------------------------------------------------
// Two passes over the object: the first records every nested message's body size and every
// string's UTF-8 length (in pre-order, in `sizes`), the second writes into one buffer of the
// exact size, reading them back in the same order.

let sizes: number[] = [];
let cursor = 0;

function varintSize(n: number): number {
  if (n < 0x80) return 1;
  if (n < 0x4000) return 2;
  if (n < 0x200000) return 3;
  if (n < 0x10000000) return 4;
  let s = 5;
  n = Math.floor(n / 0x800000000);
  while (n > 0) {
    s++;
    n = Math.floor(n / 0x80);
  }
  return s;
}

/** A uint64/int64/uint32 the fast path writes: a non-negative safe integer (else the generic path decides). */
function num(v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw GENERIC;
  return v;
}

function bool(v: unknown): boolean {
  if (typeof v !== 'boolean') throw GENERIC;
  return v;
}

function bytesOf(v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array)) throw GENERIC;
  return v;
}

function strOf(v: unknown): string {
  if (typeof v !== 'string') throw GENERIC;
  return v;
}

const absent = (v: unknown): boolean => v === undefined || v === null;

/** Size of a varint field holding `n` (0 for an implicit-presence default). */
function sizeU(v: unknown): number {
  if (absent(v)) return 0;
  const n = num(v);
  return n === 0 ? 0 : 1 + varintSize(n);
}

/** Size of a uint32 field (a larger number goes to the generic path, which truncates it). */
function sizeU32(v: unknown): number {
  if (!absent(v) && num(v) > 0xffffffff) throw GENERIC;
  return sizeU(v);
}

/** Size of an explicit-presence (proto3 `optional` or oneof) varint field. */
function sizeOptU(v: unknown): number {
  return absent(v) ? 0 : 1 + varintSize(num(v));
}

function sizeB(v: unknown): number {
  return absent(v) || !bool(v) ? 0 : 2;
}

function sizeStr(v: unknown): number {
  if (absent(v)) return 0;
  const s = strOf(v);
  if (s.length === 0) return 0;
  const n = s.length <= SHORT_STRING ? utf8Length(s) : Buffer.byteLength(s);
  sizes.push(n);
  return 1 + varintSize(n) + n;
}

/** Strings up to this many UTF-16 units are measured and (when single-byte) copied in JavaScript: cheaper than a call into Buffer's native code. */
const SHORT_STRING = 64;

/** The UTF-8 length of a short string (lone surrogates count 3 bytes, as Buffer writes U+FFFD). */
function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 2; // a pair: 4 bytes for 2 units
      i++;
    } else n += 2;
  }
  return n;
}

function sizeBytes(v: unknown, explicit = false): number {
  if (absent(v)) return 0;
  const b = bytesOf(v);
  if (b.length === 0 && !explicit) return 0;
  return 1 + varintSize(b.length) + b.length;
}

/** Size of a message field whose body `body` sizes (recorded for the write pass). */
function sizeMsg(v: unknown, body: (m: Obj) => number): number {
  if (absent(v)) return 0;
  if (typeof v !== 'object') throw GENERIC;
  const slot = sizes.length;
  sizes.push(0);
  const n = body(v as Obj);
  sizes[slot] = n;
  return 1 + varintSize(n) + n;
}

let out: Buffer = Buffer.alloc(0);
let pos = 0;

function writeVarint(n: number): void {
  while (n >= 0x80) {
    out[pos++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 0x80);
  }
  out[pos++] = n;
}

function writeU(tag: number, v: unknown): void {
  if (absent(v) || v === 0) return;
  out[pos++] = tag;
  writeVarint(v as number);
}

function writeOptU(tag: number, v: unknown): void {
  if (absent(v)) return;
  out[pos++] = tag;
  writeVarint(v as number);
}

function writeB(tag: number, v: unknown): void {
  if (v !== true) return;
  out[pos++] = tag;
  out[pos++] = 1;
}

function writeStr(tag: number, v: unknown): void {
  if (absent(v) || (v as string).length === 0) return;
  const n = sizes[cursor++]!;
  out[pos++] = tag;
  writeVarint(n);
  const s = v as string;
  if (n === s.length) {
    // Single-byte characters only (the usual key and session id).
    for (let i = 0; i < n; i++) out[pos + i] = s.charCodeAt(i);
    pos += n;
  } else pos += out.write(s, pos, n, 'utf8');
}

function writeBytes(tag: number, v: unknown, explicit = false): void {
  if (absent(v)) return;
  const b = v as Uint8Array;
  if (b.length === 0 && !explicit) return;
  out[pos++] = tag;
  writeVarint(b.length);
  out.set(b, pos);
  pos += b.length;
}

function writeMsg(tag: number, v: unknown, body: (m: Obj) => void): void {
  if (absent(v)) return;
  const n = sizes[cursor++]!;
  out[pos++] = tag;
  writeVarint(n);
  body(v as Obj);
}

// Tags: (field number << 3) | wire type (0 varint, 2 length-delimited).
const T = (field: number, wire: number): number => (field << 3) | wire;

const sizeSession = (m: Obj): number => sizeStr(m.id) + sizeU(m.seq) + sizeU(m.ackedBelow);
function writeSession(m: Obj): void {
  writeStr(T(1, 2), m.id);
  writeU(T(2, 0), m.seq);
  writeU(T(3, 0), m.ackedBelow);
}

const sizePut = (m: Obj): number =>
  sizeStr(m.key) + sizeBytes(m.value) + sizeOptU(m.expectedVersion) + sizeB(m.returnCurrentValue) + sizeMsg(m.session, sizeSession);
function writePut(m: Obj): void {
  writeStr(T(1, 2), m.key);
  writeBytes(T(2, 2), m.value);
  writeOptU(T(3, 0), m.expectedVersion);
  writeB(T(4, 0), m.returnCurrentValue);
  writeMsg(T(15, 2), m.session, writeSession);
}

const CONSISTENCY: Readonly<Record<string, number>> = { LINEARIZABLE: 0, SERIALIZABLE: 1 };
const CONSISTENCY_NAMES: readonly string[] = ['LINEARIZABLE', 'SERIALIZABLE'];

function consistencyNumber(v: unknown): number {
  if (absent(v)) return 0;
  const n = typeof v === 'string' ? CONSISTENCY[v] : undefined;
  if (n === undefined) throw GENERIC;
  return n;
}

function sizeGet(m: Obj): number {
  return sizeStr(m.key) + sizeOptU(m.atVersion) + sizeOptU(m.atTimeMs) + (consistencyNumber(m.consistency) === 0 ? 0 : 2);
}
function writeGet(m: Obj): void {
  writeStr(T(1, 2), m.key);
  writeOptU(T(2, 0), m.atVersion);
  writeOptU(T(3, 0), m.atTimeMs);
  writeU(T(4, 0), consistencyNumber(m.consistency));
}

const sizeDelete = (m: Obj): number => sizeStr(m.key) + sizeOptU(m.expectedVersion) + sizeMsg(m.session, sizeSession);
function writeDelete(m: Obj): void {
  writeStr(T(1, 2), m.key);
  writeOptU(T(2, 0), m.expectedVersion);
  writeMsg(T(15, 2), m.session, writeSession);
}

const sizeTrigger = (m: Obj): number => sizeStr(m.key) + sizeBytes(m.value) + sizeMsg(m.session, sizeSession);
function writeTrigger(m: Obj): void {
  writeStr(T(1, 2), m.key);
  writeBytes(T(2, 2), m.value);
  writeMsg(T(15, 2), m.session, writeSession);
}

function sizeBatch(v: unknown, body: (m: Obj) => number): number {
  if (absent(v)) return 0;
  if (!Array.isArray(v)) throw GENERIC;
  let n = 0;
  for (const m of v as unknown[]) {
    if (absent(m)) throw GENERIC;
    n += sizeMsg(m, body);
  }
  return n;
}

function writeBatch(tag: number, v: unknown, body: (m: Obj) => void): void {
  if (absent(v)) return;
  for (const m of v as unknown[]) writeMsg(tag, m, body);
}

function sizeRequest(m: Obj): number {
  if (!absent(m.txn)) throw GENERIC;
  return (
    sizeU(m.id) +
    sizeMsg(m.put, sizePut) +
    sizeMsg(m.get, sizeGet) +
    sizeMsg(m.delete, sizeDelete) +
    sizeMsg(m.trigger, sizeTrigger) +
    sizeU(m.timeoutMs) +
    sizeBatch(m.batch, sizeRequest)
  );
}
function writeRequest(m: Obj): void {
  writeU(T(1, 0), m.id);
  writeMsg(T(2, 2), m.put, writePut);
  writeMsg(T(3, 2), m.get, writeGet);
  writeMsg(T(4, 2), m.delete, writeDelete);
  writeMsg(T(5, 2), m.trigger, writeTrigger);
  writeU(T(6, 0), m.timeoutMs);
  writeBatch(T(7, 2), m.batch, writeRequest);
}

const sizePutRes = (m: Obj): number =>
  sizeB(m.succeeded) + sizeU(m.version) + sizeU(m.timestampMs) + sizeU(m.currentVersion) + sizeBytes(m.currentValue, true) + sizeU(m.revision);
function writePutRes(m: Obj): void {
  writeB(T(1, 0), m.succeeded);
  writeU(T(2, 0), m.version);
  writeU(T(3, 0), m.timestampMs);
  writeU(T(4, 0), m.currentVersion);
  writeBytes(T(5, 2), m.currentValue, true);
  writeU(T(6, 0), m.revision);
}

const sizeGetRes = (m: Obj): number => sizeB(m.found) + sizeBytes(m.value) + sizeU(m.version) + sizeU(m.timestampMs) + sizeU(m.revision);
function writeGetRes(m: Obj): void {
  writeB(T(1, 0), m.found);
  writeBytes(T(2, 2), m.value);
  writeU(T(3, 0), m.version);
  writeU(T(4, 0), m.timestampMs);
  writeU(T(5, 0), m.revision);
}

const sizeDeleteRes = (m: Obj): number => sizeB(m.succeeded) + sizeB(m.deleted) + sizeU(m.revision) + sizeU(m.currentVersion);
function writeDeleteRes(m: Obj): void {
  writeB(T(1, 0), m.succeeded);
  writeB(T(2, 0), m.deleted);
  writeU(T(3, 0), m.revision);
  writeU(T(4, 0), m.currentVersion);
}

const sizeTriggerRes = (m: Obj): number => sizeU(m.revision) + sizeU(m.timestampMs);
function writeTriggerRes(m: Obj): void {
  writeU(T(1, 0), m.revision);
  writeU(T(2, 0), m.timestampMs);
}

const sizeError = (m: Obj): number =>
  sizeU32(m.code) + sizeStr(m.message) + sizeB(m.retrySafe) + sizeStr(m.leader) + sizeStr(m.reason) + sizeU(m.shard);
function writeError(m: Obj): void {
  writeU(T(1, 0), m.code);
  writeStr(T(2, 2), m.message);
  writeB(T(3, 0), m.retrySafe);
  writeStr(T(4, 2), m.leader);
  writeStr(T(5, 2), m.reason);
  writeU(T(6, 0), m.shard);
}

function sizeResponse(m: Obj): number {
  if (!absent(m.txn)) throw GENERIC;
  return (
    sizeU(m.id) +
    sizeMsg(m.put, sizePutRes) +
    sizeMsg(m.get, sizeGetRes) +
    sizeMsg(m.delete, sizeDeleteRes) +
    sizeMsg(m.error, sizeError) +
    sizeMsg(m.trigger, sizeTriggerRes) +
    sizeStr(m.leader) +
    sizeU(m.shard) +
    sizeBatch(m.batch, sizeResponse) +
    sizeU(m.mapEpoch)
  );
}
function writeResponse(m: Obj): void {
  writeU(T(1, 0), m.id);
  writeMsg(T(2, 2), m.put, writePutRes);
  writeMsg(T(3, 2), m.get, writeGetRes);
  writeMsg(T(4, 2), m.delete, writeDeleteRes);
  writeMsg(T(5, 2), m.error, writeError);
  writeMsg(T(6, 2), m.trigger, writeTriggerRes);
  writeStr(T(7, 2), m.leader);
  writeU(T(8, 0), m.shard);
  writeBatch(T(9, 2), m.batch, writeResponse);
  writeU(T(10, 0), m.mapEpoch);
}

/** Encodes `m` with the fast path (throws GENERIC when the generic codec must). */
function encode(m: object, size: (m: Obj) => number, write: (m: Obj) => void): Buffer {
  sizes = [];
  cursor = 0;
  const n = size(m as Obj);
  out = Buffer.allocUnsafe(n);
  pos = 0;
  write(m as Obj);
  const buf = out;
  if (pos !== n) throw new Error(`pipeline codec: wrote ${pos} of ${n} bytes`);
  out = EMPTY;
  sizes = [];
  return buf;
}

const EMPTY = Buffer.alloc(0);

// ---- decoding ---------------------------------------------------------------------------------

/** A read position in one message's bytes. */
class Reader {
  pos: number;
  /** The path of the first string field read that was not valid UTF-8 (`key`, `put.session.id`). */
  badField: string | undefined = undefined;
  constructor(
    readonly buf: Buffer,
    start: number,
    public end: number,
  ) {
    this.pos = start;
  }

  /** A varint as a number; GENERIC when above 2^53 (the generic path then rounds as it always did). */
  varint(): number {
    const b = this.buf;
    let p = this.pos;
    if (p < this.end) {
      const first = b[p]!;
      if (first < 0x80) {
        this.pos = p + 1;
        return first;
      }
    }
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (p >= this.end) throw GENERIC;
      const byte = b[p++]!;
      result += (byte & 0x7f) * mul;
      if (byte < 0x80) {
        if (result > Number.MAX_SAFE_INTEGER) throw GENERIC;
        this.pos = p;
        return result;
      }
      mul *= 0x80;
    }
    throw GENERIC;
  }

  /** A varint field that protobufjs reads as uint32/int32/bool: GENERIC outside [0, max]. */
  small(max: number): number {
    const n = this.varint();
    if (n > max) throw GENERIC;
    return n;
  }

  /** The [start, end) of a length-delimited field. */
  span(): number {
    const len = this.varint();
    const start = this.pos;
    if (start + len > this.end) throw GENERIC;
    this.pos = start + len;
    return start;
  }

  /** A string field (`name`: its field name, kept in `badField` when its bytes are not valid UTF-8). */
  string(name: string): string {
    const start = this.span();
    const end = this.pos;
    const b = this.buf;
    let ascii = true;
    for (let i = start; i < end; i++) {
      if (b[i]! >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return b.toString('latin1', start, end);
    if (!isUtf8(b.subarray(start, end))) this.badField ??= name;
    return b.toString('utf8', start, end);
  }

  /** A bytes field (a view of the message's bytes, as protobufjs gives). */
  bytes(): Buffer {
    const start = this.span();
    return start === this.pos ? Buffer.alloc(0) : this.buf.subarray(start, this.pos);
  }

  /** Skips an unknown field of wire type `wire` (groups go to the generic path). */
  skip(wire: number): void {
    switch (wire) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.span();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw GENERIC;
    }
    if (this.pos > this.end) throw GENERIC;
  }
}

/** Reads the next tag: field number and wire type (GENERIC on field 0). */
function tag(r: Reader): number {
  const t = r.varint();
  if (t < 8 || t > 0xffffffff) throw GENERIC;
  return t;
}

/** Checks that the wire type of tag `t` is `wire` (else the generic path). */
function want(t: number, wire: number): void {
  if ((t & 7) !== wire) throw GENERIC;
}

/** Runs `body` on the sub-message at the reader's next length-delimited field (`name`: the field's name), on the same reader. */
function sub<T>(r: Reader, body: (r: Reader) => T, name: string): T {
  const start = r.span();
  const end = r.end;
  const after = r.pos;
  const bad = r.badField;
  r.pos = start;
  r.end = after;
  r.badField = undefined;
  const v = body(r);
  const inner = r.badField;
  r.end = end;
  r.badField = bad ?? (inner === undefined ? undefined : `${name}.${inner}`);
  return v;
}

function readSession(r: Reader): Obj {
  let id = '';
  let seq = 0;
  let ackedBelow = 0;
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 2);
        id = r.string('id');
        break;
      case 2:
        want(t, 0);
        seq = r.varint();
        break;
      case 3:
        want(t, 0);
        ackedBelow = r.varint();
        break;
      default:
        r.skip(t & 7);
    }
  }
  return { id, seq, ackedBelow };
}

/** Reads a message field at most once (a repeated one goes to the generic path, which merges). */
function once<T>(seen: T | undefined): void {
  if (seen !== undefined) throw GENERIC;
}

function readPut(r: Reader): Obj {
  const m: Obj = { key: '', value: emptyBytes(), returnCurrentValue: false, session: null };
  let session: Obj | undefined;
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 2);
        m.key = r.string('key');
        break;
      case 2:
        want(t, 2);
        m.value = r.bytes();
        break;
      case 3:
        want(t, 0);
        m.expectedVersion = r.varint();
        m._expectedVersion = 'expectedVersion';
        break;
      case 4:
        want(t, 0);
        m.returnCurrentValue = r.small(0xffffffff) !== 0;
        break;
      case 15:
        want(t, 2);
        once(session);
        m.session = session = sub(r, readSession, 'session');
        break;
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

function readGet(r: Reader): Obj {
  const m: Obj = { key: '', consistency: 'LINEARIZABLE' };
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 2);
        m.key = r.string('key');
        break;
      case 2:
        want(t, 0);
        if (m.at !== undefined) throw GENERIC;
        m.atVersion = r.varint();
        m.at = 'atVersion';
        break;
      case 3:
        want(t, 0);
        if (m.at !== undefined) throw GENERIC;
        m.atTimeMs = r.varint();
        m.at = 'atTimeMs';
        break;
      case 4: {
        want(t, 0);
        const n = r.small(0x7fffffff);
        m.consistency = CONSISTENCY_NAMES[n] ?? n;
        break;
      }
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

function readDelete(r: Reader): Obj {
  const m: Obj = { key: '', session: null };
  let session: Obj | undefined;
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 2);
        m.key = r.string('key');
        break;
      case 2:
        want(t, 0);
        m.expectedVersion = r.varint();
        m._expectedVersion = 'expectedVersion';
        break;
      case 15:
        want(t, 2);
        once(session);
        m.session = session = sub(r, readSession, 'session');
        break;
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

function readTrigger(r: Reader): Obj {
  const m: Obj = { key: '', value: emptyBytes(), session: null };
  let session: Obj | undefined;
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 2);
        m.key = r.string('key');
        break;
      case 2:
        want(t, 2);
        m.value = r.bytes();
        break;
      case 15:
        want(t, 2);
        once(session);
        m.session = session = sub(r, readSession, 'session');
        break;
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

/** A fresh empty Buffer (proto-loader gives each decoded message its own default). */
function emptyBytes(): Buffer {
  return Buffer.alloc(0);
}

const OPS: readonly (readonly [name: string, read: (r: Reader) => Obj] | undefined)[] = [
  undefined,
  undefined,
  ['put', readPut],
  ['get', readGet],
  ['delete', readDelete],
  ['trigger', readTrigger],
];

/** Reads a PipelineRequest, marking it (and each op of its batch) when a string field is not valid UTF-8. */
function readRequest(r: Reader, mark: (m: object, path: string) => void): Obj {
  const m: Obj = { batch: [], id: 0, timeoutMs: 0 };
  const batch = m.batch as Obj[];
  while (r.pos < r.end) {
    const t = tag(r);
    const field = t >>> 3;
    switch (field) {
      case 1:
        want(t, 0);
        m.id = r.varint();
        break;
      case 2:
      case 3:
      case 4:
      case 5: {
        want(t, 2);
        if (m.op !== undefined) throw GENERIC;
        const [name, read] = OPS[field]!;
        m[name] = sub(r, read, name);
        m.op = name;
        break;
      }
      case 6:
        want(t, 0);
        m.timeoutMs = r.varint();
        break;
      case 7:
        want(t, 2);
        batch.push(sub(r, (inner) => readRequest(inner, mark), 'batch'));
        break;
      case 8:
        throw GENERIC; // txn
      default:
        r.skip(t & 7);
    }
  }
  if (r.badField !== undefined) mark(m, r.badField);
  return m;
}

function readPutRes(r: Reader): Obj {
  const m: Obj = { succeeded: false, version: 0, timestampMs: 0, currentVersion: 0, revision: 0 };
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 0);
        m.succeeded = r.small(0xffffffff) !== 0;
        break;
      case 2:
        want(t, 0);
        m.version = r.varint();
        break;
      case 3:
        want(t, 0);
        m.timestampMs = r.varint();
        break;
      case 4:
        want(t, 0);
        m.currentVersion = r.varint();
        break;
      case 5:
        want(t, 2);
        m.currentValue = r.bytes();
        m._currentValue = 'currentValue';
        break;
      case 6:
        want(t, 0);
        m.revision = r.varint();
        break;
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

function readGetRes(r: Reader): Obj {
  const m: Obj = { found: false, value: emptyBytes(), version: 0, timestampMs: 0, revision: 0 };
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 0);
        m.found = r.small(0xffffffff) !== 0;
        break;
      case 2:
        want(t, 2);
        m.value = r.bytes();
        break;
      case 3:
        want(t, 0);
        m.version = r.varint();
        break;
      case 4:
        want(t, 0);
        m.timestampMs = r.varint();
        break;
      case 5:
        want(t, 0);
        m.revision = r.varint();
        break;
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

function readDeleteRes(r: Reader): Obj {
  const m: Obj = { succeeded: false, deleted: false, revision: 0, currentVersion: 0 };
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 0);
        m.succeeded = r.small(0xffffffff) !== 0;
        break;
      case 2:
        want(t, 0);
        m.deleted = r.small(0xffffffff) !== 0;
        break;
      case 3:
        want(t, 0);
        m.revision = r.varint();
        break;
      case 4:
        want(t, 0);
        m.currentVersion = r.varint();
        break;
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

function readTriggerRes(r: Reader): Obj {
  const m: Obj = { revision: 0, timestampMs: 0 };
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 0);
        m.revision = r.varint();
        break;
      case 2:
        want(t, 0);
        m.timestampMs = r.varint();
        break;
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

function readError(r: Reader): Obj {
  const m: Obj = { code: 0, message: '', retrySafe: false, leader: '', reason: '', shard: 0 };
  while (r.pos < r.end) {
    const t = tag(r);
    switch (t >>> 3) {
      case 1:
        want(t, 0);
        m.code = r.small(0xffffffff);
        break;
      case 2:
        want(t, 2);
        m.message = r.string('message');
        break;
      case 3:
        want(t, 0);
        m.retrySafe = r.small(0xffffffff) !== 0;
        break;
      case 4:
        want(t, 2);
        m.leader = r.string('leader');
        break;
      case 5:
        want(t, 2);
        m.reason = r.string('reason');
        break;
      case 6:
        want(t, 0);
        m.shard = r.varint();
        break;
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

const RESULTS: readonly (readonly [name: string, read: (r: Reader) => Obj] | undefined)[] = [
  undefined,
  undefined,
  ['put', readPutRes],
  ['get', readGetRes],
  ['delete', readDeleteRes],
  ['error', readError],
  ['trigger', readTriggerRes],
];

function readResponse(r: Reader): Obj {
  const m: Obj = { batch: [], id: 0, leader: '', shard: 0, mapEpoch: 0 };
  const batch = m.batch as Obj[];
  while (r.pos < r.end) {
    const t = tag(r);
    const field = t >>> 3;
    switch (field) {
      case 1:
        want(t, 0);
        m.id = r.varint();
        break;
      case 2:
      case 3:
      case 4:
      case 5:
      case 6: {
        want(t, 2);
        if (m.result !== undefined) throw GENERIC;
        const [name, read] = RESULTS[field]!;
        m[name] = sub(r, read, name);
        m.result = name;
        break;
      }
      case 7:
        want(t, 2);
        m.leader = r.string('leader');
        break;
      case 8:
        want(t, 0);
        m.shard = r.varint();
        break;
      case 9: {
        want(t, 2);
        batch.push(sub(r, readResponse, 'batch'));
        break;
      }
      case 10:
        want(t, 0);
        m.mapEpoch = r.varint();
        break;
      case 11:
        throw GENERIC; // txn
      default:
        r.skip(t & 7);
    }
  }
  return m;
}

// ---- the codec --------------------------------------------------------------------------------

/** The Pipeline method's four serializers: the fast path above, each falling back to the generic codec. */
export type PipelineCodec = GenericPipelineCodec;

/**
 * Builds the Pipeline codec over the generic one. `mark(message, path)` records that a string
 * field of a decoded request was not valid UTF-8 (the service then refuses that op); the fast
 * path marks the message holding the op (each op of a batch, and the batch's top-level message
 * with the first such path under `batch.`), the generic path only the top-level message, so for
 * it every op of a marked batch is marked too.
 */
export function pipelineCodec(
  generic: GenericPipelineCodec,
  mark: (message: object, path: string) => void,
  marked: (message: object) => string | undefined,
): PipelineCodec {
  const withFallback =
    <A, R>(fast: (a: A) => R, slow: (a: A) => R) =>
    (a: A): R => {
      try {
        return fast(a);
      } catch (e) {
        if (e !== GENERIC) throw e;
        return slow(a);
      }
    };
  const decodeRequest = (buf: Buffer): object => readRequest(new Reader(buf, 0, buf.length), mark);
  const decodeRequestGeneric = (buf: Buffer): object => {
    const m = generic.requestDeserialize(buf);
    const bad = marked(m);
    const batch = (m as { batch?: object[] }).batch;
    if (bad !== undefined && batch !== undefined) for (const op of batch) if (marked(op) === undefined) mark(op, bad);
    return m;
  };
  return {
    requestSerialize: withFallback((m: object) => encode(m, sizeRequest, writeRequest), generic.requestSerialize),
    requestDeserialize: withFallback(decodeRequest, decodeRequestGeneric),
    responseSerialize: withFallback((m: object) => encode(m, sizeResponse, writeResponse), generic.responseSerialize),
    responseDeserialize: withFallback((buf: Buffer) => readResponse(new Reader(buf, 0, buf.length)), generic.responseDeserialize),
  };
}
