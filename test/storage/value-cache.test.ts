/** The value cache (bound, CLOCK eviction, revision tags, counters) and reads of released values from the engine: latest, by version and by time, with the heap holding no value bytes. */
import { describe, expect, it } from 'vitest';
import { KvStateMachine, VALUE_ON_DISK, type ValueSource } from '../../src/statemachine/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { CACHE_ENTRY_OVERHEAD_BYTES, ownedCopy, ValueCache } from '../../src/storage/value-cache.js';
import { EngineValueSource, loadState, StateRecorder } from '../../src/storage/state-store.js';
import { stateKeyPrefix } from '../../src/storage/raft-log-store.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => (b === undefined ? undefined : new TextDecoder().decode(b));
const cost = (key: string, bytes: number) => bytes + key.length * 2 + CACHE_ENTRY_OVERHEAD_BYTES;

/**
 * An engine holding `n` puts of group `group` whose values the writing machine has released, and
 * an engine view that counts synchronous reads (the event loop blocking on the disk).
 */
async function releasedValues(group: number, n: number, key: (i: number) => string, value: (i: number) => string) {
  const engine = new MemoryEngine();
  const sm = new KvStateMachine();
  const recorder = new StateRecorder(group);
  sm.observe(recorder);
  const syncReads = { n: 0 };
  const counted = {
    getSync: (k: Parameters<MemoryEngine['getSync']>[0]) => {
      syncReads.n++;
      return engine.getSync(k);
    },
    get: (k: Parameters<MemoryEngine['get']>[0]) => engine.get(k),
  };
  sm.attachValues(new EngineValueSource(counted, group, new ValueCache(0))); // releases are not cached here
  for (let i = 0; i < n; i++) sm.apply(i + 1, 1000, { type: 'put', key: key(i), value: enc(value(i)) });
  await engine.batch(recorder.take(sm)!, { sync: true });
  sm.releaseValues(sm.revision);
  return { engine, counted, syncReads };
}

describe('ValueCache', () => {
  it('holds its byte bound, evicts about the least recently used (a used entry gets a second chance), and counts hits, misses, evictions and bytes', () => {
    const per = cost('k0', 100);
    const cache = new ValueCache(per * 10);
    for (let i = 0; i < 10; i++) cache.set(`k${i}`, new Uint8Array(100));
    expect(cache.stats).toMatchObject({ entries: 10, bytes: per * 10, evictions: 0 });
    expect(cache.get('k0')).toBeDefined(); // k0 is now the most recently used: k1 goes first
    cache.set('kx', new Uint8Array(100));
    expect(cache.stats.bytes).toBeLessThanOrEqual(cache.maxBytes);
    expect(cache.get('k1')).toBeUndefined();
    expect(cache.get('k0')).toBeDefined();
    expect(cache.get('kx')).toBeDefined();
    expect(cache.stats).toMatchObject({ hits: 3, misses: 1, evictions: 1, entries: 10 });
    for (let i = 0; i < 1000; i++) {
      cache.set(`x${i}`, new Uint8Array(i % 150));
      expect(cache.stats.bytes).toBeLessThanOrEqual(cache.maxBytes);
    }
    cache.delete('x999');
    expect(cache.get('x999')).toBeUndefined();
  });

  it('evicts exactly in CLOCK order under long churn (gets, overwrites, deletes; seeds 1-5 against a reference list)', () => {
    for (let seed = 1; seed <= 5; seed++) {
      let x = seed;
      const rnd = (n: number): number => ((x = (x * 1103515245 + 12345) % 2 ** 31) % n);
      const per = cost('k000', 10);
      const cache = new ValueCache(per * 50);
      // Oldest insertion first; a used entry gets a second chance (unmarked, to the back), the first unused one goes.
      const model: Array<{ key: string; used: boolean }> = [];
      const find = (k: string) => model.find((e) => e.key === k);
      for (let i = 0; i < 20_000; i++) {
        const k = `k${String(rnd(200)).padStart(3, '0')}`;
        const op = rnd(10);
        if (op < 5) {
          cache.set(k, new Uint8Array(10));
          const e = find(k);
          if (e !== undefined) e.used = true;
          else model.push({ key: k, used: false });
          while (model.length > 50) {
            const oldest = model.shift()!;
            if (oldest.used) model.push({ key: oldest.key, used: false });
          }
        } else if (op < 9) {
          const hit = cache.get(k) !== undefined;
          const e = find(k);
          expect(hit).toBe(e !== undefined);
          if (e !== undefined) e.used = true;
        } else {
          cache.delete(k);
          const at = model.findIndex((e) => e.key === k);
          if (at >= 0) model.splice(at, 1);
        }
        expect(cache.stats.entries).toBe(model.length);
      }
      for (const e of model) expect(cache.has(e.key)).toBe(true);
    }
  });

  it('tags entries with a revision: another revision misses, a newer one replaces the entry in place (no insert, no eviction), an older one is refused', () => {
    const cache = new ValueCache(cost('k0', 100) * 8);
    for (let i = 0; i < 4; i++) expect(cache.set(`k${i}`, new Uint8Array(100), 5)).toBe(true);
    expect(cache.get('k0', 4)).toBeUndefined();
    expect(cache.get('k0', 5)).toBeDefined();
    expect(cache.set('k1', new Uint8Array(50), 9)).toBe(true); // the next version: in place, fewer bytes
    expect(cache.stats).toMatchObject({ entries: 4, evictions: 0, bytes: cost('k0', 100) * 3 + cost('k1', 50) });
    expect(cache.get('k1', 5)).toBeUndefined();
    expect(cache.get('k1', 9)?.length).toBe(50);
    expect(cache.set('k1', new Uint8Array(100), 7)).toBe(false); // older than what is cached
    expect(cache.revisionOf('k1')).toBe(9);
    expect(cache.has('k1', 9)).toBe(true);
  });

  it("a group's source caches each key's newest value once (replaced by its next release) and an older version read beside it", async () => {
    const group = 4;
    const engine = new MemoryEngine();
    const sm = new KvStateMachine();
    const recorder = new StateRecorder(group);
    sm.observe(recorder);
    const cache = new ValueCache(1024 * 1024);
    const syncReads = { n: 0 };
    const counted = { getSync: (k: Parameters<MemoryEngine['getSync']>[0]) => (syncReads.n++, engine.getSync(k)), get: (k: Parameters<MemoryEngine['get']>[0]) => engine.get(k) };
    const source = new EngineValueSource(counted, group, cache);
    sm.attachValues(source);
    for (let i = 1; i <= 30; i++) sm.apply(i, 1000 + i, { type: 'put', key: `k${i % 3}`, value: enc(`v${i}`) });
    await engine.batch(recorder.take(sm)!, { sync: true });
    sm.releaseValues(sm.revision);
    expect(cache.stats.entries).toBe(3); // one per key: each release replaced the key's entry
    expect(dec(sm.get('k1')?.value)).toBe('v28');
    expect(syncReads.n).toBe(0);
    expect(dec(sm.get('k1', { atRevision: 5 })?.value)).toBe('v4'); // an older version: from the engine, cached beside
    expect(syncReads.n).toBe(1);
    expect(dec(sm.get('k1', { atRevision: 5 })?.value)).toBe('v4');
    expect(dec(sm.get('k1')?.value)).toBe('v28');
    expect(syncReads.n).toBe(1);
    expect(cache.stats.entries).toBe(4);
  });

  it('does not cache a value larger than an eighth of its bound, and a zero bound caches nothing', () => {
    const cache = new ValueCache(8 * 1024);
    cache.set('big', new Uint8Array(2000));
    expect(cache.stats.entries).toBe(0);
    const off = new ValueCache(0);
    off.set('a', new Uint8Array(1));
    expect(off.get('a')).toBeUndefined();
    expect(off.stats.bytes).toBe(0);
  });

  it('copies a view into a larger buffer before it is cached (a cached value does not pin a log entry or a snapshot)', () => {
    const big = new Uint8Array(4096);
    const view = big.subarray(10, 20);
    expect(ownedCopy(view).buffer).not.toBe(big.buffer);
    const own = new Uint8Array(10);
    expect(ownedCopy(own)).toBe(own);
  });
});

/** A source over a map, counting reads (what the node's engine source does, without an engine). */
class MapSource implements ValueSource {
  readonly map = new Map<string, Uint8Array>();
  reads = 0;
  read(key: string, revision: number): Uint8Array | undefined {
    this.reads++;
    return this.map.get(`${revision}/${key}`);
  }
  released(key: string, revision: number, value: Uint8Array): void {
    this.map.set(`${revision}/${key}`, value);
  }
}

describe('a state machine with its values released', () => {
  it('serves latest, by-version, by-time, list and returnPrevious reads from the source, with no value bytes in the heap, and snapshots the same bytes', () => {
    const plain = new KvStateMachine();
    const sm = new KvStateMachine();
    const src = new MapSource();
    sm.attachValues(src);
    let index = 0;
    const both = (ts: number, cmd: Parameters<KvStateMachine['apply']>[2]) => {
      index++;
      const a = plain.apply(index, ts, cmd);
      const b = sm.apply(index, ts, cmd);
      expect(b.result).toEqual(a.result);
    };
    both(1000, { type: 'put', key: 'a', value: enc('a1') });
    both(2000, { type: 'put', key: 'b', value: enc('b1') });
    both(3000, { type: 'put', key: 'a', value: enc('a2') });
    expect(sm.residentValues).toBe(3);
    expect(sm.releaseValues(2)).toBe(false); // only up to revision 2: a2 stays
    expect(sm.residentValues).toBe(1);
    expect(sm.releaseValues(sm.revision, 0)).toBe(true); // bounded steps
    sm.releaseValues(sm.revision);
    expect(sm.residentValues).toBe(0);
    expect(sm.heapValueBytes()).toBe(0);
    expect(plain.heapValueBytes()).toBeGreaterThan(0);
    both(4000, { type: 'put', key: 'a', value: enc('a3'), returnPrevious: true });
    both(5000, { type: 'put', key: 'a', value: enc('zz'), expectedVersion: 1, returnPrevious: true });
    both(6000, { type: 'delete', key: 'b' });
    sm.releaseValues(sm.revision);
    expect(sm.heapValueBytes()).toBe(0);
    src.reads = 0;
    expect(dec(sm.get('a')?.value)).toBe('a3');
    expect(dec(sm.get('a', { atRevision: 1 })?.value)).toBe('a1');
    expect(dec(sm.get('a', { atRevision: 3 })?.value)).toBe('a2');
    expect(dec(sm.get('b', { atTimeMs: 2500 })?.value)).toBe('b1');
    expect(sm.get('b')).toBeUndefined();
    expect(sm.list('').items.map((i) => dec(i.value))).toEqual(['a3']);
    expect(sm.list('', { keysOnly: true }).items[0]!.value).toBeUndefined();
    expect(src.reads).toBe(5);
    // The index holds the placeholder; snapshots read the values back.
    expect(sm.toRecords().keys[0]![1].every((v) => v.value === VALUE_ON_DISK)).toBe(true);
    expect(Buffer.from(sm.snapshot()).equals(Buffer.from(plain.snapshot()))).toBe(true);
    // A value the source lost is an error, never a wrong answer.
    src.map.clear();
    expect(() => sm.get('a')).toThrow(/missing from the value store/);
  });
});

describe('attachValues on a restored machine', () => {
  it('copies the watch history and stored session values out of the decoded snapshot, so releasing the versions frees it', () => {
    const a = new KvStateMachine();
    const session = { id: 'session-abcdefghijklmnop', seq: 1, ackedBelow: 1 };
    a.apply(1, 1000, { type: 'put', key: 'k', value: enc('one') });
    a.apply(2, 1000, { type: 'put', key: 'k', value: enc('two'), returnPrevious: true }, 'client', session);
    const b = KvStateMachine.restore(a.snapshot());
    const owns = (v: Uint8Array | undefined) => v !== undefined && v.byteLength === v.buffer.byteLength;
    expect(b.eventsSince(1).events.every((e) => owns(e.value))).toBe(false); // views into the snapshot copy
    b.attachValues(new MapSource());
    expect(b.eventsSince(1).events.every((e) => owns(e.value))).toBe(true);
    const [, r] = b.session(session.id)!.results[0]!;
    expect(r.type === 'put' && owns(r.previous?.value)).toBe(true);
    expect(dec(r.type === 'put' ? r.previous?.value : undefined)).toBe('one');
    b.releaseValues(b.revision);
    expect(b.heapValueBytes()).toBe(0);
    expect(Buffer.from(b.snapshot()).equals(Buffer.from(a.snapshot()))).toBe(true);
  });
});

describe('EngineValueSource', () => {
  it('reads released values from the group records in the engine (cache misses), then from the cache; restart loads the index without values', async () => {
    const engine = new MemoryEngine();
    const group = 7;
    const cache = new ValueCache(1 << 20);
    const sm = new KvStateMachine();
    const recorder = new StateRecorder(group);
    sm.observe(recorder);
    sm.attachValues(new EngineValueSource(engine, group, cache));
    const value = (i: number, v: number) => enc(`${i}:${v}:${'x'.repeat(100)}`);
    let index = 0;
    for (let v = 0; v < 3; v++) {
      for (let i = 0; i < 50; i++) sm.apply(++index, 1000 * (v + 1), { type: 'put', key: `k/${i}`, value: value(i, v) });
    }
    await engine.batch(recorder.take(sm)!, { sync: true });
    sm.releaseValues(sm.revision);
    expect(sm.heapValueBytes()).toBe(0);
    const fresh = new ValueCache(0); // nothing cached: every read goes to the engine
    const loaded = (await loadState(engine, group, { values: false }))!;
    const restarted = KvStateMachine.fromRecords(loaded.data);
    expect(restarted.heapValueBytes()).toBe(0); // the index only: no value was loaded into the heap
    restarted.attachValues(new EngineValueSource(engine, group, fresh));
    expect(restarted.residentValues).toBe(0);
    for (const m of [sm, restarted]) {
      expect(dec(m.get('k/3')!.value)).toBe(dec(value(3, 2)));
      expect(dec(m.get('k/3', { atRevision: 53 })!.value)).toBe(dec(value(3, 0))); // revision 53 = 3rd write of the 2nd round
      expect(dec(m.get('k/4', { atRevision: 55 })!.value)).toBe(dec(value(4, 1)));
      expect(dec(m.get('k/9', { atTimeMs: 1500 })!.value)).toBe(dec(value(9, 0)));
      expect(dec(m.get('k/9', { atTimeMs: 2999 })!.value)).toBe(dec(value(9, 1)));
      expect(m.list('k/1', { limit: 3 }).items.map((i) => dec(i.value))).toEqual([value(1, 2), value(10, 2), value(11, 2)].map(dec));
    }
    expect(fresh.stats.misses).toBeGreaterThan(0);
    expect(fresh.stats.hits).toBe(0);
    const hits = cache.stats.hits;
    expect(dec(sm.get('k/3')!.value)).toBe(dec(value(3, 2)));
    expect(cache.stats.hits).toBe(hits + 1); // released values were offered to the cache
    expect(Buffer.from(restarted.snapshot()).equals(Buffer.from(sm.snapshot()))).toBe(true);
    expect(stateKeyPrefix(group)).toBe('s/00000007/');
  });

  it('prefetch reads what a read would miss asynchronously, so the read itself does no synchronous engine read', async () => {
    const group = 3;
    const { engine, counted, syncReads: reads } = await releasedValues(group, 20, (i) => `p/${String(i).padStart(2, '0')}`, (i) => `v${i}`);
    const syncReads = () => reads.n;
    const cache = new ValueCache(1 << 20);
    const cached = new EngineValueSource(counted, group, cache);
    const warm = KvStateMachine.fromRecords((await loadState(engine, group, { values: false }))!.data);
    warm.attachValues(cached);
    await cached.prefetch(() => warm.list('p/', { limit: 5 }));
    await cached.prefetch(() => warm.get('p/17'));
    expect(cache.stats).toMatchObject({ misses: 6, hits: 0, entries: 6 });
    expect(syncReads()).toBe(0);
    expect(warm.list('p/', { limit: 5 }).items.map((i) => dec(i.value))).toEqual(['v0', 'v1', 'v2', 'v3', 'v4']);
    expect(dec(warm.get('p/17')!.value)).toBe('v17');
    expect(syncReads()).toBe(0);
    expect(cache.stats.hits).toBe(6);
    expect(dec(warm.get('p/18')!.value)).toBe('v18'); // not prefetched: one synchronous read
    expect(syncReads()).toBe(1);
  });

  it('readCached answers a hot read in one pass, and a cold one after reading its misses asynchronously', async () => {
    const group = 4;
    const { engine, counted, syncReads } = await releasedValues(group, 10, (i) => `q/${i}`, (i) => `w${i}`);
    const cache = new ValueCache(1 << 20);
    const source = new EngineValueSource(counted, group, cache);
    const warm = KvStateMachine.fromRecords((await loadState(engine, group, { values: false }))!.data);
    warm.attachValues(source);
    let passes = 0;
    const read = () => {
      passes++;
      return dec(warm.get('q/3')!.value);
    };
    expect(await source.readCached(read)).toBe('w3'); // cold: a first pass, the fetch, a second pass
    expect(passes).toBe(2);
    passes = 0;
    expect(await source.readCached(read)).toBe('w3'); // hot: one pass
    expect(passes).toBe(1);
    expect(syncReads.n).toBe(0);
    await expect(
      source.readCached(() => {
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom'); // a read that throws (and misses nothing) throws once
  });
});
