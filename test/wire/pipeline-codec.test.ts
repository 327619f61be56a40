/** The Pipeline stream's direct codec gives exactly what proto-loader's generic codec gives: same objects decoded, bytes the generic codec reads back the same, and its fallbacks. */
import { mulberry32 } from '../support/mulberry32.js';
import { describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { invalidUtf8Field, kvPackageDefinition, kvServiceDefinition, KvStubClient } from '../../src/wire/proto.js';

type Codec = grpc.MethodDefinition<object, object>;
const generic = kvPackageDefinition['kvcascade.v1.KV'] as unknown as Record<string, Codec>;
const g = generic['Pipeline']!;
const server = kvServiceDefinition['Pipeline'] as Codec;
const client = (KvStubClient.service as unknown as Record<string, Codec>)['Pipeline']!;

/** A small deterministic PRNG, so a failing case can be reproduced from its seed. */
const rng = mulberry32;

function gen(seed: number) {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const maybe = <T>(f: () => T): T | undefined => (r() < 0.5 ? f() : undefined);
  const num = (): number => pick([0, 1, 127, 128, 300, 16383, 16384, 2 ** 31 - 1, 2 ** 32, 2 ** 35 + 7, Number.MAX_SAFE_INTEGER, Math.floor(r() * 1e6)]);
  const str = (): string => pick(['', 'k', 'key/0001', 'ünïcødé/é', '日本語', 'a😀b/😀', 'é'.repeat(40), 'x'.repeat(64), 'x'.repeat(65), 'x'.repeat(200), `k${Math.floor(r() * 1e6)}`]);
  const bytes = (): Buffer => Buffer.from(Array.from({ length: pick([0, 1, 5, 256, 300]) }, () => Math.floor(r() * 256)));
  const session = () => ({ id: str(), seq: num(), ackedBelow: num() });
  const put = () => ({ key: str(), value: bytes(), ...(r() < 0.3 ? { expectedVersion: num() } : {}), ...(r() < 0.3 ? { returnCurrentValue: r() < 0.5 } : {}), ...(r() < 0.7 ? { session: session() } : {}) });
  const get = () => ({ key: str(), ...(r() < 0.3 ? pick([{ atVersion: num() }, { atTimeMs: num() }]) : {}), ...(r() < 0.5 ? { consistency: pick(['LINEARIZABLE', 'SERIALIZABLE']) } : {}) });
  const del = () => ({ key: str(), ...(r() < 0.3 ? { expectedVersion: num() } : {}), ...(r() < 0.5 ? { session: session() } : {}) });
  const trigger = () => ({ key: str(), value: bytes(), ...(r() < 0.5 ? { session: session() } : {}) });
  const op = (): object => {
    const kind = pick(['put', 'get', 'delete', 'trigger']);
    const body = kind === 'put' ? put() : kind === 'get' ? get() : kind === 'delete' ? del() : trigger();
    return { id: num(), [kind]: body, ...(r() < 0.5 ? { timeoutMs: num() } : {}) };
  };
  const request = (): object => (r() < 0.4 ? op() : { batch: Array.from({ length: 1 + Math.floor(r() * 5) }, op) });
  const result = (): object => {
    const kind = pick(['put', 'get', 'delete', 'trigger', 'error']);
    const body =
      kind === 'put'
        ? { succeeded: r() < 0.5, version: num(), timestampMs: num(), currentVersion: num(), revision: num(), ...(r() < 0.3 ? { currentValue: bytes() } : {}) }
        : kind === 'get'
          ? { found: r() < 0.5, value: bytes(), version: num(), timestampMs: num(), revision: num() }
          : kind === 'delete'
            ? { succeeded: r() < 0.5, deleted: r() < 0.5, revision: num(), currentVersion: num() }
            : kind === 'trigger'
              ? { revision: num(), timestampMs: num() }
              : { code: pick([0, 3, 14]), message: str(), retrySafe: r() < 0.5, leader: str(), reason: str(), shard: num() };
    return { id: num(), [kind]: body, ...(maybe(() => ({ leader: str(), shard: num() })) ?? {}) };
  };
  const response = (): object =>
    r() < 0.4 ? { ...result(), mapEpoch: num() } : { batch: Array.from({ length: 1 + Math.floor(r() * 5) }, result), ...(r() < 0.5 ? { mapEpoch: num() } : {}) };
  return { request, response };
}

describe('pipeline codec', () => {
  it('decodes requests to the generic objects and encodes bytes the generic codec reads back the same (500 seeds)', () => {
    for (let seed = 1; seed <= 500; seed++) {
      const m = gen(seed).request();
      const viaGeneric = g.requestSerialize(m);
      const expected = g.requestDeserialize(viaGeneric);
      expect(server.requestDeserialize(viaGeneric), `seed ${seed}`).toStrictEqual(expected);
      const viaFast = client.requestSerialize(m);
      expect(g.requestDeserialize(viaFast), `seed ${seed}`).toStrictEqual(expected);
      expect(server.requestDeserialize(viaFast), `seed ${seed}`).toStrictEqual(expected);
    }
  });

  it('decodes responses to the generic objects and encodes bytes the generic codec reads back the same (500 seeds)', () => {
    for (let seed = 1; seed <= 500; seed++) {
      const m = gen(seed).response();
      const viaGeneric = g.responseSerialize(m);
      const expected = g.responseDeserialize(viaGeneric);
      expect(client.responseDeserialize(viaGeneric), `seed ${seed}`).toStrictEqual(expected);
      const viaFast = server.responseSerialize(m);
      expect(g.responseDeserialize(viaFast), `seed ${seed}`).toStrictEqual(expected);
    }
  });

  it('hands a txn, a negative timestamp, a uint64 above 2^53, a numeric enum and a repeated op to the generic codec', () => {
    const cases: object[] = [
      { id: 1, txn: { compare: [{ key: 'a', version: 0 }], success: [{ put: { key: 'a', value: Buffer.from('v') } }] } },
      { batch: [{ id: 1, put: { key: 'a' } }, { id: 2, txn: { success: [{ delete: { key: 'b' } }] } }] },
      { id: 3, get: { key: 'a', atTimeMs: -5 } },
      { id: 4, get: { key: 'a', consistency: 1 } },
      { id: '5', put: { key: 'a' } },
    ];
    for (const m of cases) {
      const bytes = g.requestSerialize(m);
      expect(server.requestDeserialize(bytes)).toStrictEqual(g.requestDeserialize(bytes));
      expect(g.requestDeserialize(client.requestSerialize(m))).toStrictEqual(g.requestDeserialize(bytes));
    }
    // Field 2 (put) twice: the generic codec merges them, so the fast path leaves it to it.
    const one = g.requestSerialize({ id: 1, put: { key: 'a' } });
    const two = Buffer.concat([one, g.requestSerialize({ put: { value: Buffer.from('v') } })]);
    expect(server.requestDeserialize(two)).toStrictEqual(g.requestDeserialize(two));
    const big = g.responseSerialize({ id: 2 ** 60, put: { version: 2 ** 60 } });
    expect(client.responseDeserialize(big)).toStrictEqual(g.responseDeserialize(big));
    const txnRes = { id: 9, txn: { succeeded: true, revision: 4 } };
    expect(g.responseDeserialize(server.responseSerialize(txnRes))).toStrictEqual(g.responseDeserialize(g.responseSerialize(txnRes)));
  });

  it('skips unknown fields as the generic codec does, and fails on truncated bytes as it does', () => {
    const known = g.requestSerialize({ id: 7, put: { key: 'k', value: Buffer.from('v') } });
    // Unknown fields 20 (varint), 21 (fixed64), 22 (bytes), 23 (fixed32) appended.
    const unknown = Buffer.concat([known, Buffer.from([0xa0, 0x01, 0x05, 0xa9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0xb2, 0x01, 0x02, 9, 9, 0xbd, 0x01, 1, 2, 3, 4])]);
    expect(server.requestDeserialize(unknown)).toStrictEqual(g.requestDeserialize(unknown));
    const cut = known.subarray(0, known.length - 1);
    expect(() => g.requestDeserialize(cut)).toThrow();
    expect(() => server.requestDeserialize(cut)).toThrow();
  });

  it('marks each op of a batch whose string field is not valid UTF-8, and only those', () => {
    const badKey = Buffer.from([0x6b, 0xff, 0xfe]);
    // Build with a placeholder key of the same length, then patch in the invalid bytes.
    const m = { batch: [{ id: 1, put: { key: 'ok', value: Buffer.from('v') } }, { id: 2, put: { key: 'XYZ', session: { id: 'abc', seq: 1 } } }, { id: 3, delete: { key: 'd', session: { id: 'QRS', seq: 2 } } }] };
    const bytes = Buffer.from(g.requestSerialize(m));
    const patch = (from: string, to: Buffer): void => {
      const at = bytes.indexOf(Buffer.from(from));
      expect(at).toBeGreaterThan(0);
      to.copy(bytes, at);
    };
    patch('XYZ', badKey);
    patch('QRS', badKey);
    const out = server.requestDeserialize(bytes) as { batch: object[] };
    expect(out.batch.map((op) => invalidUtf8Field(op))).toEqual([undefined, 'put.key', 'delete.session.id']);
    expect(invalidUtf8Field(out)).toBe('batch.put.key');
    // The generic (strict) path, taken here because of a txn op, marks every op of the batch.
    const withTxn = Buffer.concat([bytes, g.requestSerialize({ batch: [{ id: 4, txn: {} }] })]);
    const slow = server.requestDeserialize(withTxn) as { batch: object[] };
    expect(slow.batch).toHaveLength(4);
    for (const op of slow.batch) expect(invalidUtf8Field(op)).toBe('batch.put.key');
    // A single (unbatched) op is marked as the generic path marks it.
    const single = Buffer.from(g.requestSerialize({ id: 5, get: { key: 'XYZ' } }));
    badKey.copy(single, single.indexOf(Buffer.from('XYZ')));
    expect(invalidUtf8Field(server.requestDeserialize(single))).toBe('get.key');
  });
});
