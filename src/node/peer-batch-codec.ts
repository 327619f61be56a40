/**
 * A direct protobuf codec for the peer stream's `RaftBatch` and `RaftBatchAck` (peer.proto) when a
 * batch carries its messages `packed` (peer-binary.ts): the sending node, the sequence number and
 * one bytes field, encoded and decoded without proto-loader's `fromObject`/`toObject` and message
 * instances. It gives the objects the generic codec gives with the peer proto's loader options
 * (`defaults: false`: a field is present iff it was on the wire). A batch with `messages` (the
 * object form older receivers read), a number that is not a non-negative safe integer, a wire type
 * that does not match, or malformed bytes go to the generic codec.
 */
import type * as grpc from '@grpc/grpc-js';

/** Thrown inside the codec to hand a message to the generic codec; never escapes it. */
const GENERIC = new Error('peer batch codec: generic path');

type Obj = { readonly [k: string]: unknown };

function varintSize(n: number): number {
  let s = 1;
  while (n >= 0x80) {
    s++;
    n = Math.floor(n / 0x80);
  }
  return s;
}

function uint(v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw GENERIC;
  return v;
}

function writeVarint(out: Buffer, pos: number, n: number): number {
  while (n >= 0x80) {
    out[pos++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 0x80);
  }
  out[pos++] = n;
  return pos;
}

/** Encodes the varint fields `fields` (field number → value; absent ones skipped) and an optional bytes field. */
function encode(varints: ReadonlyArray<readonly [field: number, value: unknown]>, bytesField?: readonly [field: number, value: unknown]): Buffer {
  let size = 0;
  for (const [, v] of varints) if (v !== undefined && v !== null) size += 1 + varintSize(uint(v));
  let bytes: Uint8Array | undefined;
  if (bytesField !== undefined && bytesField[1] !== undefined && bytesField[1] !== null) {
    if (!(bytesField[1] instanceof Uint8Array)) throw GENERIC;
    bytes = bytesField[1];
    size += 1 + varintSize(bytes.length) + bytes.length;
  }
  const out = Buffer.allocUnsafe(size);
  let pos = 0;
  for (const [f, v] of varints) {
    if (v === undefined || v === null) continue;
    out[pos++] = f << 3;
    pos = writeVarint(out, pos, v as number);
  }
  if (bytes !== undefined) {
    out[pos++] = (bytesField![0] << 3) | 2;
    pos = writeVarint(out, pos, bytes.length);
    out.set(bytes, pos);
    pos += bytes.length;
  }
  if (pos !== size) throw new Error(`peer batch codec: wrote ${pos} of ${size} bytes`);
  return out;
}

/** Decodes varint fields named by `names` (field number → property) and at most one bytes field; anything else goes to the generic codec. */
function decode(buf: Buffer, names: readonly (string | undefined)[], bytesField: number, bytesName: string): Record<string, unknown> {
  const m: Record<string, unknown> = {};
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (pos >= buf.length) throw GENERIC;
      const b = buf[pos++]!;
      result += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (result > Number.MAX_SAFE_INTEGER) throw GENERIC;
        return result;
      }
      mul *= 0x80;
    }
    throw GENERIC;
  };
  while (pos < buf.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    const name = names[field];
    if (name !== undefined && wire === 0) m[name] = varint();
    else if (field === bytesField && wire === 2) {
      const len = varint();
      if (pos + len > buf.length) throw GENERIC;
      m[bytesName] = len === 0 ? Buffer.alloc(0) : buf.subarray(pos, pos + len);
      pos += len;
    } else throw GENERIC; // another field (a batch's `messages`), a mismatched wire type, or an unknown field
  }
  return m;
}

function withFallback<A, R>(fast: (a: A) => R, slow: (a: A) => R): (a: A) => R {
  return (a: A): R => {
    try {
      return fast(a);
    } catch (e) {
      if (e !== GENERIC) throw e;
      return slow(a);
    }
  };
}

const BATCH_VARINTS: readonly (string | undefined)[] = [undefined, 'fromNode', 'seq'];
const ACK_VARINTS: readonly (string | undefined)[] = [undefined, 'seq'];

/** The `Raft` method definition `m` (proto-loader's) with the direct codec in front of its serializers. */
export function withPeerBatchCodec(m: grpc.MethodDefinition<object, object>): grpc.MethodDefinition<object, object> {
  return {
    ...m,
    requestSerialize: withFallback((b: object): Buffer => {
      const o = b as Obj;
      const msgs = o['messages'];
      if (msgs !== undefined && msgs !== null && (!Array.isArray(msgs) || msgs.length > 0)) throw GENERIC;
      return encode(
        [
          [1, o['fromNode']],
          [2, o['seq']],
        ],
        [4, o['packed']],
      );
    }, m.requestSerialize),
    requestDeserialize: withFallback((buf: Buffer): object => decode(buf, BATCH_VARINTS, 4, 'packed'), m.requestDeserialize),
    responseSerialize: withFallback((a: object): Buffer => encode([[1, (a as Obj)['seq']]]), m.responseSerialize),
    responseDeserialize: withFallback((buf: Buffer): object => decode(buf, ACK_VARINTS, -1, ''), m.responseDeserialize),
  };
}
