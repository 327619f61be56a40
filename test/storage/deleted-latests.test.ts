/**
 * Deleted keys' latest records apart (`s/<g>/t/<key>`, issue 17): a listing from the records reads
 * a bounded number of records per page however many deleted keys are in range, and records written
 * before the split (a deleted key's latest in `l/`) still load, list and snapshot the same while
 * the recorder moves them to `t/` a bounded batch per unit, through writes, compaction and a
 * replacement.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvStateMachine, type Command, type ListOptions } from '../../src/statemachine/index.js';
import { LevelEngine, MemoryEngine, scanAll, type EngineOp, type EngineView } from '../../src/storage/kv-engine.js';
import { stateKeyPrefix } from '../../src/storage/raft-log-store.js';
import {
  encodeSnapshotFromRecords,
  EngineValueSource,
  LEGACY_MOVES_PER_UNIT,
  listFromRecords,
  loadState,
  openSnapshotEncoding,
  SnapshotKeyCountError,
  StateRecorder,
  type SnapshotHeaderTimings,
} from '../../src/storage/state-store.js';
import { ValueCache } from '../../src/storage/value-cache.js';
import { commandArb, KEY_POOL } from '../statemachine/helpers.js';

const GROUP = 3;
const enc = new TextEncoder();
const PREFIX = stateKeyPrefix(GROUP);
const latin1 = (k: Uint8Array): string => Buffer.from(k).toString('latin1');

/** An engine view that counts the records its iterations yield and the keys its multi-gets ask for. */
function countingView(engine: MemoryEngine): { view: EngineView; counts: { iterated: number; got: number } } {
  const inner = engine.view();
  const counts = { iterated: 0, got: 0 };
  const view: EngineView = {
    get: (k) => inner.get(k),
    getMany: (ks) => {
      counts.got += ks.length;
      return inner.getMany(ks);
    },
    async *iterate(options) {
      for await (const e of inner.iterate(options)) {
        counts.iterated++;
        yield e;
      }
    },
    close: () => inner.close(),
  };
  return { view, counts };
}

/** Rewrites the group's records into the layout from before the split: every `t/<key>` becomes `l/<key>`. */
async function toLegacyLayout(engine: MemoryEngine): Promise<number> {
  const ops: EngineOp[] = [];
  for (const [k, v] of await scanAll(engine, { prefix: `${PREFIX}t/` })) {
    const l = k.slice();
    l[PREFIX.length] = 0x6c; // 'l'
    ops.push({ type: 'del', key: k }, { type: 'put', key: l, value: v });
  }
  await engine.batch(ops, { sync: true });
  return ops.length / 2;
}

/** Keys (decoded as latin1 after the tag) of the group's `l/` and `t/` records. */
async function latestRecords(engine: MemoryEngine): Promise<{ live: string[]; deleted: string[] }> {
  const strip = (k: Uint8Array): string => latin1(k).slice(PREFIX.length + 2);
  return {
    live: (await scanAll(engine, { prefix: `${PREFIX}l/` })).map(([k]) => strip(k)),
    deleted: (await scanAll(engine, { prefix: `${PREFIX}t/` })).map(([k]) => strip(k)),
  };
}

/** The machine `engine`'s records rebuild equals `sm` (its snapshot), and so does the snapshot streamed from them. */
async function expectRecordsOf(engine: MemoryEngine, sm: KvStateMachine): Promise<void> {
  const loaded = (await loadState(engine, GROUP))!;
  expect(KvStateMachine.fromRecords(loaded.data).snapshot()).toEqual(sm.snapshot());
  const view = engine.view();
  try {
    const streamed = await encodeSnapshotFromRecords(view, GROUP, { partBytes: 64 });
    expect(Buffer.from(streamed!.data).equals(Buffer.from(sm.snapshot()))).toBe(true);
  } finally {
    await view.close();
  }
}

async function listed(engine: MemoryEngine, sm: KvStateMachine, prefix: string, options: ListOptions): Promise<{ page: unknown; counts: { iterated: number; got: number } }> {
  const plan = sm.listPlan(prefix, options, sm.revision)!;
  const { view, counts } = countingView(engine);
  try {
    const page = await listFromRecords(view, GROUP, plan);
    return { page: page && { ...page, items: page.items.map((i) => ({ ...i, value: i.value && latin1(i.value) })) }, counts };
  } finally {
    await view.close();
  }
}

const plainList = (sm: KvStateMachine, prefix: string, options: ListOptions): unknown => {
  const page = sm.list(prefix, options);
  return { ...page, items: page.items.map((i) => ({ ...i, value: i.value && latin1(i.value) })) };
};

describe("deleted keys' latest records", () => {
  it('are apart from live ones, so a page after a mass delete reads a bounded number of records', async () => {
    const engine = new MemoryEngine();
    const sm = new KvStateMachine();
    const rec = new StateRecorder(GROUP);
    sm.observe(rec);
    let i = 0;
    const n = 5000;
    for (let k = 0; k < n; k++) sm.apply(++i, 1000, { type: 'put', key: `d/${String(k).padStart(5, '0')}`, value: enc.encode(`v${k}`) });
    for (let k = 0; k < n - 5; k++) sm.apply(++i, 1000, { type: 'delete', key: `d/${String(k).padStart(5, '0')}` });
    await engine.batch(rec.take(sm)!, { sync: true });
    expect((await latestRecords(engine)).live).toHaveLength(5);
    expect((await latestRecords(engine)).deleted).toHaveLength(n - 5);
    const options = { limit: 10 };
    const { page, counts } = await listed(engine, sm, 'd/', options);
    expect(page).toEqual(plainList(sm, 'd/', options));
    expect((page as { items: unknown[] }).items).toHaveLength(5);
    expect(counts.iterated).toBe(5); // the live keys only, however many deleted keys are in range
    expect(counts.got).toBe(5);
    await expectRecordsOf(engine, sm);
    // The recorder tells the range of the live latests it deleted (LevelDB markers the node compacts away).
    const d = rec.takeDeletedLatests()!;
    expect(d.count).toBe(n - 5);
    expect(latin1(d.start)).toBe(`${PREFIX}l/d/00000`);
    expect(latin1(d.end)).toBe(`${PREFIX}l/d/${String(n - 6).padStart(5, '0')}`);
    expect(rec.takeDeletedLatests()).toBeUndefined();

    // The same records in the layout from before the split: the same page, read past every deleted key.
    expect(await toLegacyLayout(engine)).toBe(n - 5);
    const legacy = await listed(engine, sm, 'd/', options);
    expect(legacy.page).toEqual(plainList(sm, 'd/', options));
    expect(legacy.counts.iterated).toBe(n);
  });

  it('after a mass delete on LevelDB, the range of deleted latests compacts and lists the same', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kvcascade-deleted-latests-'));
    const engine = await LevelEngine.open(dir);
    try {
      const sm = new KvStateMachine();
      const rec = new StateRecorder(GROUP);
      sm.observe(rec);
      sm.attachValues(new EngineValueSource(engine, GROUP, new ValueCache(0)));
      let i = 0;
      for (let k = 0; k < 3000; k++) sm.apply(++i, 1000, { type: 'put', key: `m/${String(k).padStart(5, '0')}`, value: enc.encode(`v${k}`) });
      await engine.batch(rec.take(sm)!, { sync: true });
      sm.releaseValues(sm.revision);
      for (let k = 0; k < 2990; k++) sm.apply(++i, 2000, { type: 'delete', key: `m/${String(k).padStart(5, '0')}` });
      await engine.batch(rec.take(sm)!, { sync: true });
      sm.releaseValues(sm.revision);
      const d = rec.takeDeletedLatests()!;
      expect(d.count).toBe(2990);
      await engine.compactRange(d.start, d.end);
      const plan = sm.listPlan('m/', { limit: 4 }, sm.revision)!;
      const view = engine.view();
      try {
        const page = await listFromRecords(view, GROUP, plan);
        expect(page?.items.map((it) => it.key)).toEqual(sm.list('m/', { limit: 4 }).items.map((it) => it.key));
        expect(page?.items.map((it) => it.key)).toEqual(['m/02990', 'm/02991', 'm/02992', 'm/02993']);
      } finally {
        await view.close();
      }
    } finally {
      await engine.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('written before the split load the same and move to `t/` in bounded batches, through writes and compaction of the keys not moved yet', async () => {
    const engine = new MemoryEngine();
    const sm = new KvStateMachine();
    const rec = new StateRecorder(GROUP);
    sm.observe(rec);
    let i = 0;
    const n = 2 * LEGACY_MOVES_PER_UNIT + 100;
    const key = (k: number): string => `x/${String(k).padStart(5, '0')}`;
    for (let k = 0; k < n; k++) sm.apply(++i, 1000 + i, { type: 'put', key: key(k), value: enc.encode(`v${k}`) });
    for (let k = 0; k < n; k += 2) sm.apply(++i, 1000 + i, { type: 'delete', key: key(k) });
    await engine.batch(rec.take(sm)!, { sync: true });
    const deletedKeys = Math.ceil(n / 2);
    expect(await toLegacyLayout(engine)).toBe(deletedKeys);
    await expectRecordsOf(engine, sm); // the loader and the snapshot encoder read the legacy layout

    // Restart on the legacy records: the loader names the legacy latests.
    const loaded = (await loadState(engine, GROUP, { values: false }))!;
    expect(loaded.written.legacyTombstones?.size).toBe(deletedKeys);
    const m = KvStateMachine.fromRecords(loaded.data);
    m.attachValues(new EngineValueSource(engine, GROUP, new ValueCache(0)));
    const r = new StateRecorder(GROUP, loaded.written);
    m.observe(r);
    expect(r.legacyTombstones).toBe(deletedKeys);
    // Before anything moves: a legacy key rewritten, another written again and deleted, a third forgotten by compaction.
    i = loaded.data.appliedIndex;
    m.apply(++i, 1_000_000, { type: 'put', key: key(n - 2), value: enc.encode('back') });
    m.apply(++i, 1_000_001, { type: 'put', key: key(n - 4), value: enc.encode('back') });
    m.apply(++i, 1_000_002, { type: 'delete', key: key(n - 4) });
    m.apply(++i, 1_000_003, { type: 'compact', revision: n + 1 }); // the tombstones of the first deletes (revisions n+1..) at or before it: key(0) is forgotten
    expect(m.get(key(0))).toBeUndefined();
    const units: number[] = [];
    for (let round = 0; round < 4; round++) {
      const before = r.legacyTombstones;
      const ops = r.take(m);
      if (ops !== undefined) await engine.batch(ops, { sync: true });
      units.push(before - r.legacyTombstones);
      await expectRecordsOf(engine, m); // consistent after every unit
    }
    expect(r.legacyTombstones).toBe(0);
    expect(units.every((u) => u <= LEGACY_MOVES_PER_UNIT)).toBe(true);
    expect(units.filter((u) => u > 0).length).toBeGreaterThanOrEqual(2);
    const { live, deleted } = await latestRecords(engine);
    const liveNow = m.list('x/', { limit: 10_000, keysOnly: true }).items.map((it) => it.key);
    expect(live).toEqual(liveNow);
    expect(deleted).not.toContain(key(0)); // forgotten
    expect(deleted).toContain(key(n - 4));
    expect(deleted).not.toContain(key(n - 2));
    expect((await loadState(engine, GROUP))!.written.legacyTombstones).toBeUndefined();
    const { page, counts } = await listed(engine, m, 'x/', { limit: 50, keysOnly: true });
    expect(page).toEqual(plainList(m, 'x/', { limit: 50, keysOnly: true }));
    expect(counts.iterated).toBe(51);
    expect(r.take(m)).toBeUndefined(); // nothing left to move and nothing changed: no unit
  });

  it("a snapshot's header takes the live keys' number from meta (no pass over their latests); legacy latests in `l/` are caught and counted by a pass", async () => {
    const engine = new MemoryEngine();
    const sm = new KvStateMachine();
    const rec = new StateRecorder(GROUP);
    sm.observe(rec);
    let i = 0;
    const n = 3000;
    const key = (k: number): string => `h/${String(k).padStart(5, '0')}`;
    for (let k = 0; k < n; k++) sm.apply(++i, 1000 + i, { type: 'put', key: key(k), value: enc.encode(`v${k}`) });
    for (let k = 0; k < 10; k++) sm.apply(++i, 1000 + i, { type: 'delete', key: key(k * 7) });
    await engine.batch(rec.take(sm)!, { sync: true });
    const encodeWith = async (countKeysByPass: boolean): Promise<{ data: Buffer; header: SnapshotHeaderTimings; iteratedBeforeHeader: number }> => {
      const { view, counts } = countingView(engine);
      try {
        let header: SnapshotHeaderTimings | undefined;
        let iteratedBeforeHeader = -1;
        const e = (await openSnapshotEncoding(view, GROUP, {
          partBytes: 256,
          countKeysByPass,
          onHeader: (h) => {
            header = h;
            iteratedBeforeHeader = counts.iterated;
          },
        }))!;
        const parts: Uint8Array[] = [];
        const gen = e.parts();
        for (;;) {
          const r = await gen.next();
          if (r.done) {
            parts.push(Uint8Array.from([r.value >>> 24, (r.value >>> 16) & 0xff, (r.value >>> 8) & 0xff, r.value & 0xff]));
            break;
          }
          parts.push(r.value);
        }
        return { data: Buffer.concat(parts), header: header!, iteratedBeforeHeader };
      } finally {
        await view.close();
      }
    };
    const fast = await encodeWith(false);
    expect(fast.data.equals(Buffer.from(sm.snapshot()))).toBe(true);
    expect(fast.header.countedFrom).toBe('meta');
    expect(fast.header.keys).toBe(n); // 2,990 live (meta's count) and 10 deleted (their `t/` latests)
    // Before the first byte: the revision blocks, the 10 `t/` latests and the session probes, not the 2,990 `l/` latests.
    expect(fast.iteratedBeforeHeader).toBeLessThan(100);
    const byPass = await encodeWith(true);
    expect(byPass.data.equals(fast.data)).toBe(true);
    expect(byPass.header.countedFrom).toBe('records');
    expect(byPass.iteratedBeforeHeader).toBeGreaterThanOrEqual(n);

    // Deleted keys' latests in `l/` (records from before the split): meta's count is short by them, the
    // versions' pass finds more keys and stops the encoding before its end; counting by a pass, the same bytes.
    expect(await toLegacyLayout(engine)).toBe(10);
    await expect(encodeWith(false)).rejects.toBeInstanceOf(SnapshotKeyCountError);
    const legacy = await encodeWith(true);
    expect(legacy.data.equals(Buffer.from(sm.snapshot()))).toBe(true);
    await expectRecordsOf(engine, sm); // encodeSnapshotFromRecords encodes again by itself
  });

  it('keep the records equal to the machine through random commands, compactions and a replacement from legacy records (model-based)', async () => {
    const keyArb = fc.constantFrom(...KEY_POOL);
    const cmd: fc.Arbitrary<Command> = fc.oneof(
      { weight: 3, arbitrary: commandArb(keyArb, fc.uint8Array({ maxLength: 3 })) },
      { weight: 2, arbitrary: keyArb.map((key): Command => ({ type: 'delete', key })) },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(cmd, { minLength: 1, maxLength: 60 }), fc.array(cmd, { maxLength: 40 }), fc.nat(), fc.array(cmd, { maxLength: 40 }), async (first, second, compactPick, other) => {
        const engine = new MemoryEngine();
        const sm = new KvStateMachine();
        const rec = new StateRecorder(GROUP);
        sm.observe(rec);
        let i = 0;
        for (const c of first) sm.apply(++i, 1000 + i, c);
        const ops = rec.take(sm);
        if (ops === undefined) return;
        await engine.batch(ops, { sync: true });
        await toLegacyLayout(engine);
        await expectRecordsOf(engine, sm);
        const loaded = (await loadState(engine, GROUP))!;
        const m = KvStateMachine.fromRecords(loaded.data);
        const r = new StateRecorder(GROUP, loaded.written);
        m.observe(r);
        for (const c of second) m.apply(++i, 1000 + i, c);
        m.apply(++i, 1000 + i, { type: 'compact', revision: m.compactRevision + (compactPick % (m.revision - m.compactRevision + 1)) });
        const more = r.take(m);
        if (more !== undefined) await engine.batch(more, { sync: true });
        await expectRecordsOf(engine, m);
        expect(r.legacyTombstones).toBe(0);
        // A replacement (a snapshot install) over records holding legacy latests.
        await toLegacyLayout(engine);
        const again = (await loadState(engine, GROUP))!;
        const r2 = new StateRecorder(GROUP, again.written);
        const target = new KvStateMachine();
        let j = 0;
        for (const c of other) target.apply(++j, 1000 + j, c);
        target.apply(++j, 5000 + j, { type: 'put', key: KEY_POOL[0]!, value: enc.encode('t') });
        for (const unit of r2.replace(again.data, target.toRecords())) await engine.batch(unit, { sync: true });
        await expectRecordsOf(engine, target);
        const { live } = await latestRecords(engine);
        expect(live.length).toBe(target.keyCount);
      }),
      { numRuns: 120, seed: 4217 },
    );
  });
});
