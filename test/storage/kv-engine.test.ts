// Conformance tests for the KvEngine seam, run against LevelEngine and MemoryEngine, plus MemoryEngine's crash model.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import {
  compareBytes,
  EngineClosedError,
  type EngineOp,
  keyBytes,
  type KvEngine,
  LevelEngine,
  MemoryEngine,
  prefixEnd,
  scanAll,
  type ScanOptions,
} from '../../src/storage/kv-engine.js';

interface Harness {
  readonly name: string;
  /** A fresh, empty engine. */
  open(): Promise<KvEngine>;
  /** Restarts the engine: everything written with a completed sync batch must survive. */
  reopen(e: KvEngine): Promise<KvEngine>;
}

const dirs: string[] = [];
const engines: KvEngine[] = [];
afterEach(async () => {
  for (const e of engines.splice(0)) await e.close().catch(() => {});
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

const harnesses: Harness[] = [
  {
    name: 'LevelEngine',
    async open() {
      const dir = await mkdtemp(join(tmpdir(), 'kvcascade-engine-'));
      dirs.push(dir);
      const e = await LevelEngine.open(dir);
      engines.push(e);
      return e;
    },
    async reopen(e) {
      await e.close();
      const e2 = await LevelEngine.open((e as LevelEngine).location);
      engines.push(e2);
      return e2;
    },
  },
  {
    name: 'MemoryEngine',
    async open() {
      return new MemoryEngine();
    },
    async reopen(e) {
      return (e as MemoryEngine).crash();
    },
  },
];

const b = (...xs: number[]): Uint8Array => new Uint8Array(xs);
const s = (x: string): Uint8Array => new TextEncoder().encode(x);
const str = (x: Uint8Array | undefined): string | undefined => (x === undefined ? undefined : new TextDecoder().decode(x));
const hexOf = (x: Uint8Array): string => Buffer.from(x).toString('hex');
const keysOf = async (e: KvEngine, o?: ScanOptions): Promise<string[]> => (await scanAll(e, o)).map(([k]) => hexOf(k));

describe('keyBytes', () => {
  it('encodes a string key as TextEncoder does (a lone surrogate as U+FFFD)', () => {
    const utf8 = new TextEncoder();
    const codeUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: codeUnit, maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 })), (key) => {
        expect(Array.from(keyBytes(key))).toEqual(Array.from(utf8.encode(key)));
      }),
    );
  });

  it('hands out bytes whose slices are copies (prefixEnd leaves its prefix alone)', () => {
    const a = keyBytes('s/00000001/');
    const end = prefixEnd(a)!;
    expect(Buffer.from(end).toString('latin1')).toBe('s/000000010');
    expect(Buffer.from(a).toString('latin1')).toBe('s/00000001/');
    const b = keyBytes('other');
    expect(Buffer.from(a).toString('latin1')).toBe('s/00000001/');
    expect(Buffer.from(b).toString('latin1')).toBe('other');
  });
});

describe.each(harnesses)('KvEngine conformance: $name', (h) => {
  it('a view reads the data as it was when it was taken, whatever is written after (gets, multi-gets and scans, in both directions)', async () => {
    const e = await h.open();
    await e.batch([{ type: 'put', key: 'a', value: s('1') }, { type: 'put', key: 'b', value: s('2') }, { type: 'put', key: 'c', value: s('3') }], { sync: true });
    const v = e.view();
    const it = v.iterate()[Symbol.asyncIterator]();
    expect(str((await it.next()).value?.[1])).toBe('1'); // a scan already under way
    await e.batch([{ type: 'del', key: 'b' }, { type: 'put', key: 'c', value: s('33') }, { type: 'put', key: 'bb', value: s('new') }, { type: 'put', key: 'a', value: s('11') }], { sync: false });
    expect(str((await it.next()).value?.[1])).toBe('2');
    expect(str((await it.next()).value?.[1])).toBe('3');
    expect((await it.next()).done).toBe(true);
    expect(str(await v.get('a'))).toBe('1');
    expect(str(await v.get('b'))).toBe('2');
    expect(await v.get('bb')).toBeUndefined();
    expect((await v.getMany(['c', 'bb', 'a', 'b'])).map(str)).toEqual(['3', undefined, '1', '2']);
    expect(await v.getMany([])).toEqual([]);
    expect((await scanAll(v)).map(([k, x]) => `${str(k)}=${str(x)}`)).toEqual(['a=1', 'b=2', 'c=3']);
    expect((await scanAll(v, { reverse: true, limit: 2 })).map(([k]) => str(k))).toEqual(['c', 'b']);
    expect((await scanAll(v, { gte: 'b' })).map(([k]) => str(k))).toEqual(['b', 'c']);
    // The engine itself sees the new data.
    expect((await scanAll(e)).map(([k, x]) => `${str(k)}=${str(x)}`)).toEqual(['a=11', 'bb=new', 'c=33']);
    await v.close();
    await expect(async () => v.get('a')).rejects.toThrow();
  });

  it('puts, gets and deletes; missing keys read as undefined', async () => {
    const e = await h.open();
    expect(await e.get('a')).toBeUndefined();
    await e.batch([{ type: 'put', key: 'a', value: s('1') }, { type: 'put', key: 'b', value: s('2') }], { sync: false });
    expect(str(await e.get('a'))).toBe('1');
    expect(str(await e.get('b'))).toBe('2');
    await e.batch([{ type: 'del', key: 'a' }], { sync: true });
    expect(await e.get('a')).toBeUndefined();
    expect(str(await e.get('b'))).toBe('2');
  });

  it('treats a string key and its UTF-8 bytes as the same key', async () => {
    const e = await h.open();
    await e.batch([{ type: 'put', key: 'ké', value: s('x') }], { sync: false });
    expect(str(await e.get(s('ké')))).toBe('x');
    const [[k]] = (await scanAll(e)) as [[Uint8Array, Uint8Array]];
    expect(k).toBeInstanceOf(Uint8Array);
    expect(hexOf(k)).toBe(hexOf(s('ké')));
  });

  it('applies the writes of a batch in order', async () => {
    const e = await h.open();
    await e.batch(
      [
        { type: 'put', key: 'k', value: s('1') },
        { type: 'del', key: 'k' },
        { type: 'put', key: 'j', value: s('1') },
        { type: 'del', key: 'j' },
        { type: 'put', key: 'j', value: s('2') },
      ],
      { sync: true },
    );
    expect(await e.get('k')).toBeUndefined();
    expect(str(await e.get('j'))).toBe('2');
  });

  it('stores binary values exactly, including empty ones', async () => {
    const e = await h.open();
    const big = new Uint8Array(300_000).map((_, i) => (i * 7) & 0xff);
    await e.batch(
      [
        { type: 'put', key: b(0), value: b() },
        { type: 'put', key: b(0xff, 0), value: big },
      ],
      { sync: true },
    );
    expect((await e.get(b(0)))!.length).toBe(0);
    expect(hexOf((await e.get(b(0xff, 0)))!)).toBe(hexOf(big));
  });

  it('iterates in bytewise key order with gte/lt/prefix/reverse/limit', async () => {
    const e = await h.open();
    const keys = [b(0), b(0, 0), b(1), b(1, 0xff), b(1, 0xff, 0xff), b(2), b(0x7f), b(0x80), b(0xff), b(0xff, 0xff)];
    await e.batch(
      keys.map((k) => ({ type: 'put', key: k, value: k })),
      { sync: false },
    );
    const sorted = [...keys].sort(compareBytes).map(hexOf);
    expect(await keysOf(e)).toEqual(sorted);
    expect(await keysOf(e, { reverse: true })).toEqual([...sorted].reverse());
    expect(await keysOf(e, { gte: b(1), lt: b(2) })).toEqual(['01', '01ff', '01ffff']);
    expect(await keysOf(e, { prefix: b(1) })).toEqual(['01', '01ff', '01ffff']);
    expect(await keysOf(e, { prefix: b(1, 0xff) })).toEqual(['01ff', '01ffff']);
    expect(await keysOf(e, { prefix: b(0xff) })).toEqual(['ff', 'ffff']);
    expect(await keysOf(e, { prefix: b(1), gte: b(1, 0) })).toEqual(['01ff', '01ffff']);
    expect(await keysOf(e, { prefix: b(1), lt: b(1, 0xff, 0xff) })).toEqual(['01', '01ff']);
    expect(await keysOf(e, { gte: b(0x7f), limit: 2 })).toEqual(['7f', '80']);
    expect(await keysOf(e, { lt: b(0x7f), reverse: true, limit: 2 })).toEqual(['02', '01ffff']);
    expect(await keysOf(e, { limit: 0 })).toEqual([]);
    expect(await keysOf(e, { gte: b(3), lt: b(3) })).toEqual([]);
    const pairs = await scanAll(e, { prefix: b(0x80) });
    expect(pairs.map(([k, v]) => [hexOf(k), hexOf(v)])).toEqual([['80', '80']]);
  });

  it('scans with string prefixes', async () => {
    const e = await h.open();
    await e.batch(
      ['g/1/a', 'g/1/b', 'g/10/a', 'g/2/a', 'h'].map((k) => ({ type: 'put', key: k, value: s(k) })),
      { sync: false },
    );
    const got = (await scanAll(e, { prefix: 'g/1/' })).map(([, v]) => str(v));
    expect(got).toEqual(['g/1/a', 'g/1/b']);
  });

  it('iterates over a point-in-time view', async () => {
    const e = await h.open();
    await e.batch(
      ['a', 'b', 'c'].map((k) => ({ type: 'put', key: k, value: s(k) })),
      { sync: false },
    );
    const seen: string[] = [];
    for await (const [k] of e.iterate()) {
      seen.push(str(k)!);
      if (seen.length === 1) await e.batch([{ type: 'put', key: 'bb', value: s('bb') }, { type: 'del', key: 'c' }], { sync: false });
    }
    expect(seen).toEqual(['a', 'b', 'c']);
  });

  it('clear deletes exactly the keys in [gte, lt), leaves a view taken before it intact, and is durable after a later synced batch', async () => {
    const e = await h.open();
    const all = ['a', 'b', 'b1', 'b2', 'c', 'd'];
    await e.batch(all.map((k) => ({ type: 'put', key: k, value: s(k) })), { sync: true });
    const v = e.view();
    await e.clear({ gte: 'b', lt: 'c' });
    expect(await keysOf(e)).toEqual(['a', 'c', 'd'].map((k) => hexOf(s(k))));
    expect(str(await e.get('c'))).toBe('c');
    expect(e.getSync('b1')).toBeUndefined();
    expect((await scanAll(v)).map(([k]) => str(k))).toEqual(all);
    await v.close();
    await e.clear({ gte: s('x'), lt: s('z') }); // an empty range is a no-op
    await e.batch([{ type: 'put', key: 'e', value: s('e') }], { sync: true });
    const e2 = await h.reopen(e);
    expect(await keysOf(e2)).toEqual(['a', 'c', 'd', 'e'].map((k) => hexOf(s(k))));
  });

  it('keeps synced data across a restart', async () => {
    const e = await h.open();
    await e.batch([{ type: 'put', key: 'x', value: s('1') }], { sync: false });
    await e.batch([{ type: 'put', key: 'y', value: s('2') }, { type: 'del', key: 'x' }], { sync: true });
    const e2 = await h.reopen(e);
    expect(await e2.get('x')).toBeUndefined();
    expect(str(await e2.get('y'))).toBe('2');
    expect(await keysOf(e2)).toEqual([hexOf(s('y'))]);
  });

  it('rejects use after close', async () => {
    const e = await h.open();
    await e.close();
    await expect(e.get('a')).rejects.toThrow();
    await expect(e.batch([{ type: 'put', key: 'a', value: s('1') }], { sync: false })).rejects.toThrow();
  });

  it('matches a sorted-map model under random batches and scans', async () => {
    const keyArb = fc.uint8Array({ minLength: 0, maxLength: 3, max: 4 }).map((k) => (k.length === 0 ? b(9) : k));
    const opArb: fc.Arbitrary<EngineOp> = fc.oneof(
      fc.record({ type: fc.constant('put' as const), key: keyArb, value: fc.uint8Array({ maxLength: 4 }) }),
      fc.record({ type: fc.constant('del' as const), key: keyArb }),
    );
    const scanArb = fc.record(
      { prefix: keyArb, gte: keyArb, lt: keyArb, reverse: fc.boolean(), limit: fc.nat(6) },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(opArb, { maxLength: 6 }), { maxLength: 6 }), fc.array(scanArb, { maxLength: 4 }), async (batches, scans) => {
        const e = await h.open();
        const model = new Map<string, string>();
        for (const ops of batches) {
          await e.batch(ops, { sync: false });
          for (const op of ops) {
            if (op.type === 'put') model.set(hexOf(keyBytes(op.key)), hexOf(op.value));
            else model.delete(hexOf(keyBytes(op.key)));
          }
        }
        for (const o of scans) {
          const inRange = (k: Uint8Array): boolean => {
            if (o.prefix !== undefined) {
              const p = keyBytes(o.prefix);
              if (compareBytes(k.subarray(0, p.length), p) !== 0) return false;
            }
            if (o.gte !== undefined && compareBytes(k, keyBytes(o.gte)) < 0) return false;
            if (o.lt !== undefined && compareBytes(k, keyBytes(o.lt)) >= 0) return false;
            return true;
          };
          let expected = [...model.entries()]
            .map(([k, v]) => [Buffer.from(k, 'hex'), v] as const)
            .filter(([k]) => inRange(k))
            .sort((x, y) => compareBytes(x[0], y[0]))
            .map(([k, v]) => [hexOf(k), v]);
          if (o.reverse) expected.reverse();
          if (o.limit !== undefined) expected = expected.slice(0, o.limit);
          const got = (await scanAll(e, o)).map(([k, v]) => [hexOf(k), hexOf(v)]);
          expect(got).toEqual(expected);
        }
        await e.close();
      }),
      { numRuns: 40 },
    );
  });
});

describe('prefixEnd', () => {
  it('increments the last byte that is not 0xff', () => {
    expect(hexOf(prefixEnd(b(1, 2))!)).toBe('0103');
    expect(hexOf(prefixEnd(b(1, 0xff))!)).toBe('02');
    expect(prefixEnd(b(0xff, 0xff))).toBeUndefined();
  });
});

describe('MemoryEngine crash model', () => {
  const put = (k: string): EngineOp => ({ type: 'put', key: k, value: s(k) });
  const keys = async (e: KvEngine): Promise<string[]> => (await scanAll(e)).map(([k]) => str(k)!);

  it('loses unsynced writes on crash', async () => {
    const e = new MemoryEngine();
    await e.batch([put('a')], { sync: true });
    await e.batch([put('b')], { sync: false });
    expect(await keys(e)).toEqual(['a', 'b']);
    expect(e.unsyncedBatches).toBe(1);
    expect(await keys(e.crash())).toEqual(['a']);
  });

  it('makes everything written before a synced batch durable', async () => {
    const e = new MemoryEngine();
    await e.batch([put('a')], { sync: false });
    await e.batch([{ type: 'del', key: 'a' }, put('b')], { sync: false });
    await e.batch([put('c')], { sync: true });
    expect(e.unsyncedBatches).toBe(0);
    expect(await keys(e.crash())).toEqual(['b', 'c']);
  });

  it('a clear is unsynced: a crash keeps none of it, or a prefix of its deletions in key order', async () => {
    for (const keep of [0, 2, 10]) {
      const e = new MemoryEngine();
      await e.batch(['a', 'b', 'c', 'd', 'e'].map(put), { sync: true });
      await e.clear({ gte: 'b', lt: 'e' });
      expect(await keys(e)).toEqual(['a', 'e']);
      expect(await keys(e.crash(keep))).toEqual([['a', 'b', 'c', 'd', 'e'], ['a', 'd', 'e'], ['a', 'e']][[0, 2, 10].indexOf(keep)]);
    }
  });

  it('keeps a torn prefix of whole unsynced batches', async () => {
    const e = new MemoryEngine();
    await e.batch([put('a')], { sync: true });
    await e.batch([put('b'), put('b2')], { sync: false });
    await e.batch([put('c'), put('c2')], { sync: false });
    await e.batch([put('d')], { sync: false });
    expect(await keys(e.crash(2))).toEqual(['a', 'b', 'b2', 'c', 'c2']);
  });

  it('crash while a synced batch is in flight: the batch rejects and is lost, or survives whole when kept', async () => {
    for (const keep of [0, 1]) {
      const e = new MemoryEngine({ latencyMs: 5 });
      await e.batch([put('a')], { sync: true });
      const p = e.batch([put('b'), put('c')], { sync: true });
      const outcome = p.then(
        () => 'ok',
        (err: unknown) => err,
      );
      const e2 = e.crash(keep);
      expect(await outcome).toBeInstanceOf(EngineClosedError);
      expect(await keys(e2)).toEqual(keep === 0 ? ['a'] : ['a', 'b', 'c']);
      await expect(e.get('a')).rejects.toBeInstanceOf(EngineClosedError);
    }
  });

  it('fails injected batches without writing them', async () => {
    const e = new MemoryEngine();
    const boom = new Error('EIO');
    e.injectFault(boom);
    await expect(e.batch([put('a')], { sync: true })).rejects.toBe(boom);
    await e.batch([put('b')], { sync: true });
    expect(await keys(e)).toEqual(['b']);
    expect(e.counters).toEqual({ batches: 1, syncedBatches: 1 });
  });

  it('copies values on write so later caller mutations do not leak in', async () => {
    const e = new MemoryEngine();
    const v = s('abc');
    await e.batch([{ type: 'put', key: 'k', value: v }], { sync: true });
    v[0] = 0;
    expect(str(await e.get('k'))).toBe('abc');
  });
});

describe('LevelEngine large batches', () => {
  it('fills a large batch over several event-loop turns, and it stays atomic: none of it is visible before it is written, all of it after', async () => {
    const e = await harnesses[0]!.open();
    const ops: EngineOp[] = Array.from({ length: 20_000 }, (_, i) => ({ type: 'put', key: `big/${String(i).padStart(6, '0')}`, value: new Uint8Array(512).fill(i & 0xff) }));
    let turns = 0;
    let seenEarly = false;
    let done = false;
    const written = e.batch(ops, { sync: true }).then(() => (done = true));
    while (!done) {
      await new Promise<void>((r) => setImmediate(r));
      turns++;
      // Reads that complete before the batch does may see nothing of it (or all of it, once written).
      const [first, last] = await Promise.all([e.get('big/000000'), e.get('big/019999')]);
      if (!done && (first === undefined) !== (last === undefined)) seenEarly = true;
    }
    await written;
    expect(seenEarly).toBe(false);
    expect(turns).toBeGreaterThan(1);
    expect((await scanAll(e, { prefix: 'big/' })).length).toBe(20_000);
  });
});

describe('LevelEngine options', () => {
  it("opens with LevelDB's bounds set (small memtable, table cache and block cache) and reads back every key after a reopen", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kvcascade-engine-opts-'));
    dirs.push(dir);
    const options = { maxOpenFiles: 74, cacheBytes: 1 << 20, writeBufferBytes: 64 << 10 };
    let e = await LevelEngine.open(dir, options);
    const value = new Uint8Array(1024).map((_, i) => (i * 31) & 0xff);
    for (let b = 0; b < 10; b++) {
      await e.batch(Array.from({ length: 200 }, (_, i) => ({ type: 'put' as const, key: `k/${String(b * 200 + i).padStart(5, '0')}`, value })), { sync: false });
    }
    await e.close();
    e = await LevelEngine.open(dir, options);
    engines.push(e);
    const all = await scanAll(e, { prefix: 'k/' });
    expect(all.length).toBe(2000);
    expect(all.every(([, v]) => v.length === 1024 && v[1] === 31)).toBe(true);
  });
});
