// Tests of RaftLogStore: durability across reopen, truncation, compaction, group isolation, group commit, failures, and the crash/sync contract.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type MemoryStorage } from '../../src/raft/storage.js';
import { type ConfState, type Entry, EntryType, type HardState, type Snapshot } from '../../src/raft/types.js';
import { type KvEngine, LevelEngine, MemoryEngine, scanAll } from '../../src/storage/kv-engine.js';
import {
  type BatchReport,
  decodeEntry,
  decodeLogRecord,
  encodeEntries,
  encodeEntry,
  MAX_RECORD_ENTRIES,
  logKey,
  RaftLogStore,
  StorageCorruptionError,
  StoreFailedError,
  stateKeyPrefix,
} from '../../src/storage/raft-log-store.js';

const enc = new TextEncoder();
const dec = new TextDecoder();
const CONF: ConfState = { voters: [1, 2, 3], learners: [] };

const ent = (index: number, term: number, data = `e${index}t${term}`): Entry => ({
  index,
  term,
  type: EntryType.Normal,
  data: enc.encode(data),
});
const ents = (from: number, to: number, term: number, tag = ''): Entry[] => {
  const out: Entry[] = [];
  for (let i = from; i <= to; i++) out.push(ent(i, term, `${tag}e${i}t${term}`));
  return out;
};
/** Resolves when `engine` is next handed a batch (its write is then in flight). */
const nextBatchIssued = (engine: MemoryEngine): Promise<void> =>
  new Promise((resolve) => {
    const batch = engine.batch.bind(engine);
    engine.batch = (ops, options) => {
      engine.batch = batch;
      const p = batch(ops, options);
      resolve();
      return p;
    };
  });
/** Group 1's state record k<n> = v<n> (as an applied round stages them). */
const stateRec = (n: number) => [{ type: 'put' as const, key: `${stateKeyPrefix(1)}k${n}`, value: enc.encode(`v${n}`) }];

/** A store set up as a paced host sets it (writeOnlyFlushed, onSyncStart counted) with group 1's entry 1 durable (one synced batch). */
async function pacedStore(latencyMs: number): Promise<{ engine: MemoryEngine; s: RaftLogStore; syncStarts: () => number }> {
  const engine = new MemoryEngine({ latencyMs });
  const s = await RaftLogStore.open(engine);
  s.writeOnlyFlushed = true;
  let starts = 0;
  s.onSyncStart = () => void starts++;
  s.persistReady(1, { entries: ents(1, 1, 1), hardState: { term: 1, vote: 1, commit: 0 } });
  await s.flush();
  return { engine, s, syncStarts: () => starts };
}
/** `n` as `width` big-endian bytes. */
const be = (n: number, width: number): number[] => Array.from({ length: width }, (_, i) => Math.floor(n / 2 ** (8 * (width - 1 - i))) % 256);
/**
 * Fills with 0xff the free part of Node's shared Buffer pool (a fresh pool when fewer than `need`
 * bytes are free), where the next small `Buffer.allocUnsafe` is cut from: an encoder that leaves a
 * byte unwritten then shows garbage. Only bytes no live Buffer holds are touched.
 */
function dirtyBufferPool(need: number): void {
  let probe = Buffer.allocUnsafe(1);
  while (probe.buffer.byteLength - probe.byteOffset < need + 16) {
    // Too little free here: use this pool up, so the next allocation opens a fresh one.
    const pool = probe.buffer;
    while (Buffer.allocUnsafe(64).buffer === pool);
    probe = Buffer.allocUnsafe(1);
  }
  new Uint8Array(probe.buffer, probe.byteOffset).fill(0xff);
}
const show = (es: readonly Entry[]): string[] => es.map((e) => `${e.index}/${e.term}/${e.type}/${dec.decode(e.data)}`);
const logOf = (ms: MemoryStorage): string[] => show(ms.entries(ms.firstIndex(), ms.lastIndex() + 1));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

const dirs: string[] = [];
const toClose: KvEngine[] = [];
afterEach(async () => {
  for (const e of toClose.splice(0)) await e.close().catch(() => {});
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function levelDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kvcascade-raftlog-'));
  dirs.push(dir);
  return dir;
}
async function openLevel(dir: string): Promise<RaftLogStore> {
  const engine = await LevelEngine.open(dir);
  toClose.push(engine);
  return RaftLogStore.open(engine);
}

/** Log indexes of `group` present on disk (in its log records), in key order. */
async function diskIndexes(engine: KvEngine, group: number): Promise<number[]> {
  const prefix = logKey(group, 0).slice(0, -16);
  return (await scanAll(engine, { prefix })).flatMap(([k, v]) =>
    decodeLogRecord(parseInt(Buffer.from(k).toString('latin1').slice(-16), 16), v).map((e) => e.index),
  );
}
/** The log records of `group` on disk: start index and entry count, in key order. */
async function diskRecords(engine: KvEngine, group: number): Promise<Array<{ start: number; count: number }>> {
  const prefix = logKey(group, 0).slice(0, -16);
  return (await scanAll(engine, { prefix })).map(([k, v]) => {
    const start = parseInt(Buffer.from(k).toString('latin1').slice(-16), 16);
    return { start, count: decodeLogRecord(start, v).length };
  });
}
/** Appends `entries` to `group` one round (one persistReady, so one log record) of `per` entries at a time. */
function persistRounds(s: RaftLogStore, group: number, entries: readonly Entry[], per: number): void {
  for (let i = 0; i < entries.length; i += per) s.persistReady(group, { entries: entries.slice(i, i + per) });
}

/** A comparable picture of everything a store holds for every group. */
/** The store's in-memory views as JSON; with `withCommit` false, hard states without their commit index (a lower bound on disk). */
function dump(store: RaftLogStore, withCommit = true): string {
  const out: Record<number, unknown> = {};
  for (const g of store.groups()) {
    const ms = store.storageFor(g);
    const snap = ms.snapshot();
    const state = ms.initialState();
    out[g] = {
      state: withCommit ? state : { ...state, hardState: { term: state.hardState.term, vote: state.hardState.vote } },
      snap: snap ? { meta: snap.meta, data: dec.decode(snap.data) } : null,
      first: ms.firstIndex(),
      last: ms.lastIndex(),
      log: logOf(ms),
    };
  }
  return JSON.stringify(out);
}

describe('entry encoding', () => {
  it('round-trips term, index, type and data (up to 2^53-1)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        fc.constantFrom(EntryType.Normal, EntryType.ConfChange),
        fc.uint8Array({ maxLength: 64 }),
        (term, index, type, data) => {
          const bytes = encodeEntry({ term, index, type, data });
          expect(bytes.length).toBe(18 + data.length);
          const e = decodeEntry(bytes);
          expect(e).toEqual({ term, index, type, data });
        },
      ),
    );
  });

  it('a log record round-trips its entries, and a damaged one is refused', () => {
    const es = [ent(2 ** 40, 3), { ...ent(2 ** 40 + 1, 2 ** 45), type: EntryType.ConfChange }, { ...ent(2 ** 40 + 2, 7), data: new Uint8Array(0) }];
    const bytes = encodeEntries(es);
    expect(show(decodeLogRecord(2 ** 40, bytes))).toEqual(show(es));
    expect(decodeLogRecord(2 ** 40, bytes).map((e) => e.term)).toEqual([3, 2 ** 45, 7]);
    // The format before records: one entry, under its own index.
    expect(show(decodeLogRecord(5, encodeEntry(ent(5, 1))))).toEqual(show([ent(5, 1)]));
    expect(() => decodeLogRecord(6, encodeEntry(ent(5, 1)))).toThrow(StorageCorruptionError);
    expect(() => decodeLogRecord(2 ** 40 + 1, bytes)).toThrow(StorageCorruptionError); // under another key
    expect(() => decodeLogRecord(2 ** 40, bytes.subarray(0, bytes.length - 1))).toThrow(StorageCorruptionError); // truncated
    expect(() => decodeLogRecord(2 ** 40, new Uint8Array([...bytes, 0]))).toThrow(StorageCorruptionError); // trailing bytes
    expect(() => decodeLogRecord(1, new Uint8Array([2, 0, 0]))).toThrow(StorageCorruptionError);
    expect(() => decodeLogRecord(1, new Uint8Array([9, ...bytes.subarray(1)]))).toThrow(StorageCorruptionError);
  });

  it('writes every byte of a log record, whatever memory it is cut from, and hands out bytes of its own', () => {
    // The format, encoded into zeroed memory: u8 2, u8 0, u32 count, u64 first index, then per entry u8 type, u64 term, u32 length, data.
    const reference = (es: readonly Entry[]): number[] => {
      const out: number[] = [2, 0, ...be(es.length, 4), ...be(es[0]!.index, 8)];
      for (const e of es) out.push(e.type === EntryType.ConfChange ? 1 : 0, ...be(e.term, 8), ...be(e.data.length, 4), ...e.data);
      return out;
    };
    fc.assert(
      fc.property(
        fc.array(fc.record({ term: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), conf: fc.boolean(), data: fc.uint8Array({ maxLength: 200 }) }), { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 1, max: 2 ** 48 }),
        (parts, first) => {
          const es: Entry[] = parts.map((p, i) => ({ index: first + i, term: p.term, type: p.conf ? EntryType.ConfChange : EntryType.Normal, data: p.data }));
          dirtyBufferPool(2_000);
          const bytes = encodeEntries(es);
          expect(Array.from(bytes)).toEqual(reference(es));
          expect(show(decodeLogRecord(first, bytes))).toEqual(show(es));
          const copy = bytes.slice(); // a copy, not a view of the shared pool
          copy[0] = 9;
          expect(bytes[0]).toBe(2);
        },
      ),
    );
  });

  it('rejects unknown formats and short values', () => {
    const bytes = encodeEntry(ent(1, 1));
    bytes[0] = 9;
    expect(() => decodeEntry(bytes)).toThrow(StorageCorruptionError);
    expect(() => decodeEntry(new Uint8Array(5))).toThrow(StorageCorruptionError);
  });
});

describe('RaftLogStore on LevelDB', () => {
  it('round-trips entries, hard state, conf and snapshot across reopen', async () => {
    const dir = await levelDir();
    const s1 = await openLevel(dir);
    expect(s1.groups()).toEqual([]);
    const ms = s1.storageFor(7, CONF);
    const hs: HardState = { term: 3, vote: 2, commit: 4 };
    s1.persistReady(7, { entries: [...ents(1, 3, 1), { ...ent(4, 3), type: EntryType.ConfChange }, ...ents(5, 6, 3)], hardState: hs });
    await s1.flush();
    const bigData = new Uint8Array(3 * 1024 * 1024).map((_, i) => i & 0xff);
    s1.compact(7, { meta: { index: 2, term: 1, conf: CONF }, data: bigData });
    s1.setConf(7, { voters: [1, 2], learners: [4] });
    await s1.flush();
    const before = dump(s1);
    expect(ms.firstIndex()).toBe(3);
    await s1.close();

    const s2 = await openLevel(dir);
    expect(s2.groups()).toEqual([7]);
    expect(dump(s2)).toBe(before);
    const ms2 = s2.storageFor(7);
    expect(ms2.initialState()).toEqual({ hardState: hs, conf: { voters: [1, 2], learners: [4] } });
    expect(ms2.entries(4, 5)[0]!.type).toBe(EntryType.ConfChange);
    expect(ms2.term(2)).toBe(1);
    expect(Buffer.from(ms2.snapshot()!.data).equals(Buffer.from(bigData))).toBe(true);
    await s2.close();
  });

  it('truncates a conflicting suffix, in memory and on disk, and it survives reopen', async () => {
    const dir = await levelDir();
    const s1 = await openLevel(dir);
    s1.persistReady(1, { entries: ents(1, 10, 1) });
    await s1.flush();
    // A new leader overwrites from index 6 with a shorter log of a higher term.
    s1.persistReady(1, { entries: ents(6, 7, 2), hardState: { term: 2, vote: 0, commit: 5 } });
    await s1.flush();
    expect(logOf(s1.storageFor(1))).toEqual(show([...ents(1, 5, 1), ...ents(6, 7, 2)]));
    await s1.close();

    const engine = await LevelEngine.open(dir);
    toClose.push(engine);
    expect(await diskIndexes(engine, 1)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    const s2 = await RaftLogStore.open(engine);
    expect(logOf(s2.storageFor(1))).toEqual(show([...ents(1, 5, 1), ...ents(6, 7, 2)]));
    // Appending past the end after truncation keeps the log contiguous.
    s2.persistReady(1, { entries: ents(8, 9, 2) });
    await s2.flush();
    expect(await diskIndexes(engine, 1)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('keeps at most keepBytes of entry data behind a snapshot, besides keepEntries', async () => {
    const engine = new MemoryEngine();
    const s = await RaftLogStore.open(engine);
    // Entries 1..20 of 100 bytes each.
    persistRounds(s, 3, Array.from({ length: 20 }, (_, i) => ent(i + 1, 1, 'x'.repeat(100))), 1);
    await s.flush();
    // Keep up to 10 entries, but at most 350 bytes: 3 entries (300 bytes) stay behind index 16.
    const kept = s.compact(3, { meta: { index: 16, term: 1, conf: CONF }, data: new Uint8Array(0) }, 10, 350);
    await s.clearCompacted();
    expect(kept).toBe(300);
    expect(s.storageFor(3).firstIndex()).toBe(14);
    expect(await diskIndexes(engine, 3)).toEqual([14, 15, 16, 17, 18, 19, 20]);
    // The entry count still bounds when it is the smaller: 2 entries kept behind index 20.
    expect(s.compact(3, { meta: { index: 20, term: 1, conf: CONF }, data: new Uint8Array(0) }, 2, 1_000_000)).toBe(200);
    expect(s.storageFor(3).firstIndex()).toBe(19);
  });

  it('compacts the log into a snapshot on disk and in memory', async () => {
    const dir = await levelDir();
    const s1 = await openLevel(dir);
    s1.persistReady(2, { entries: ents(1, 12, 1) });
    s1.persistReady(2, { entries: ents(13, 20, 1) });
    await s1.flush();
    const snap: Snapshot = { meta: { index: 12, term: 1, conf: CONF }, data: enc.encode('state@12') };
    s1.compact(2, snap);
    await s1.flush();
    const ms = s1.storageFor(2);
    expect(ms.firstIndex()).toBe(13);
    expect(ms.lastIndex()).toBe(20);
    expect(ms.snapshot()?.meta.index).toBe(12);
    // An older snapshot is ignored; a snapshot whose term does not match is refused.
    s1.compact(2, { meta: { index: 5, term: 1, conf: CONF }, data: enc.encode('old') });
    expect(() => s1.compact(2, { meta: { index: 15, term: 9, conf: CONF }, data: enc.encode('x') })).toThrow(/term/);
    expect(() => s1.compact(2, { meta: { index: 21, term: 1, conf: CONF }, data: enc.encode('x') })).toThrow();
    await s1.close();

    const engine = await LevelEngine.open(dir);
    toClose.push(engine);
    expect(await diskIndexes(engine, 2)).toEqual([13, 14, 15, 16, 17, 18, 19, 20]);
    const s2 = await RaftLogStore.open(engine);
    const ms2 = s2.storageFor(2);
    expect(ms2.firstIndex()).toBe(13);
    expect(ms2.term(12)).toBe(1);
    expect(dec.decode(ms2.snapshot()!.data)).toBe('state@12');
    expect(logOf(ms2)).toEqual(show(ents(13, 20, 1)));
    // Compacting the whole log leaves an empty log after the snapshot.
    s2.compact(2, { meta: { index: 20, term: 1, conf: CONF }, data: enc.encode('state@20') });
    await s2.clearCompacted();
    expect(await diskIndexes(engine, 2)).toEqual([]);
    expect(s2.storageFor(2).lastIndex()).toBe(20);
    // The compacted record was deleted by one clear, outside the batches (no deletes in them).
    expect(s2.opCounts['g/l']).toEqual({ put: 0, del: 0, clear: 1 });
    expect(s2.metrics.clears).toBe(1);
  });

  it('deletes compacted entries with one engine clear after the snapshot record is durable, never in the round\'s batch', async () => {
    const engine = new MemoryEngine();
    const reports: BatchReport[] = [];
    const s = await RaftLogStore.open(engine, { onBatch: (r) => reports.push(r) });
    persistRounds(s, 4, ents(1, 50, 1), 5); // records at 1, 6, ..., 46
    await s.flush();
    const cleared: string[] = [];
    const clear = engine.clear.bind(engine);
    engine.clear = async (range) => {
      // When the clear starts, the snapshot record it depends on is on stable storage (nothing is unsynced).
      expect(engine.unsyncedBatches).toBe(0);
      expect((JSON.parse(dec.decode(engine.getSync('g/00000004/snap')!)) as { index: number }).index).toBeGreaterThanOrEqual(40);
      cleared.push(`${String(range.gte)}..${String(range.lt)}`);
      return clear(range);
    };
    s.compact(4, { meta: { index: 40, term: 1, conf: CONF }, data: new Uint8Array(0) }, 5);
    s.persistReady(4, { entries: ents(51, 52, 1) });
    await s.flush();
    // The round's batch: the snapshot record, the snapdata delete, the conf it adopted, one record of two entries; no log deletes.
    expect(reports.at(-1)!.ops).toBe(4);
    expect(s.opCounts['g/l']?.del).toBe(0);
    await s.clearCompacted();
    expect(cleared).toEqual([`${logKey(4, 1)}..${logKey(4, 36)}`]);
    expect(await diskIndexes(engine, 4)).toEqual(Array.from({ length: 17 }, (_, i) => 36 + i));
    // Two compactions before the first is durable are one clear of the merged range; a record
    // holding entries past the compaction point stays whole (41..45 behind index 43).
    s.compact(4, { meta: { index: 45, term: 1, conf: CONF }, data: new Uint8Array(0) }, 2);
    expect(s.storageFor(4).firstIndex()).toBe(44);
    s.compact(4, { meta: { index: 50, term: 1, conf: CONF }, data: new Uint8Array(0) }, 2);
    await s.clearCompacted();
    expect(cleared.at(-1)).toBe(`${logKey(4, 36)}..${logKey(4, 46)}`);
    expect(await diskIndexes(engine, 4)).toEqual([46, 47, 48, 49, 50, 51, 52]);
    // 11 records written (10 rounds of 5, one of 2), 9 cleared.
    expect(s.opCounts['g/l']).toEqual({ put: 11, del: 0, clear: 9 });
  });

  it('recovers from a crash between the compaction and its clear, and from one in the middle of the clear', async () => {
    for (const keep of [0, 7]) {
      const engine = new MemoryEngine();
      const s = await RaftLogStore.open(engine);
      s.storageFor(6, CONF);
      persistRounds(s, 6, ents(1, 30, 2), 1);
      s.persistReady(6, { hardState: { term: 2, vote: 1, commit: 30 } });
      await s.flush();
      let crashed: MemoryEngine | undefined;
      // Crash as the clear starts (keep = 0: none of its deletions survive) or after it ran unsynced
      // (keep = 7: its first 7 key deletions survive, a torn clear).
      engine.clear = async function (this: MemoryEngine, range) {
        if (keep > 0) await MemoryEngine.prototype.clear.call(this, range);
        crashed = this.crash(keep);
        throw new Error('power lost');
      };
      s.compact(6, { meta: { index: 25, term: 2, conf: CONF }, data: new Uint8Array(0) }, 3);
      await s.flush().catch(() => {});
      await vi.waitFor(() => expect(crashed).toBeDefined());
      await expect(s.flush()).rejects.toBeInstanceOf(StoreFailedError);
      const disk = crashed!;
      expect(await diskIndexes(disk, 6)).toEqual(Array.from({ length: 30 - keep }, (_, i) => 1 + keep + i));
      const r = await RaftLogStore.open(disk);
      const ms = r.storageFor(6);
      expect(ms.snapshot()?.meta.index).toBe(25);
      expect(ms.firstIndex()).toBe(26);
      expect(logOf(ms)).toEqual(show(ents(26, 30, 2)));
      expect(ms.initialState().hardState).toEqual({ term: 2, vote: 1, commit: 30 });
      await r.clearCompacted();
      expect(await diskIndexes(disk, 6)).toEqual([26, 27, 28, 29, 30]);
    }
  });

  it('deleteGroup deletes compacted entries not cleared yet; the group created again under its id starts clean', async () => {
    const dir = await levelDir();
    const engine = await LevelEngine.open(dir);
    toClose.push(engine);
    const s = await RaftLogStore.open(engine);
    s.storageFor(9, CONF);
    persistRounds(s, 9, ents(1, 40, 1), 10);
    s.persistReady(9, { hardState: { term: 1, vote: 1, commit: 40 } });
    await s.flush();
    // A clear that does not finish until released, so the group is deleted while it is in flight.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const clear = engine.clear.bind(engine);
    let clears = 0;
    engine.clear = async (range) => {
      clears++;
      await held;
      return clear(range);
    };
    s.compact(9, { meta: { index: 20, term: 1, conf: CONF }, data: new Uint8Array(0) });
    await s.flush(); // the clear of 1..20 starts (and hangs)
    expect(clears).toBe(1);
    s.compact(9, { meta: { index: 30, term: 1, conf: CONF }, data: new Uint8Array(0) }); // 21..30: pending behind it
    s.deleteGroup(9);
    s.storageFor(9, CONF);
    s.persistReady(9, { entries: ents(1, 3, 5, 'new'), hardState: { term: 5, vote: 2, commit: 3 } });
    const flushed = s.flush();
    let done = false;
    void flushed.then(() => (done = true));
    await sleep(20);
    expect(done).toBe(false); // the deleted group's batch waits for the clear in flight
    release();
    await flushed;
    await s.clearCompacted();
    expect(clears).toBe(1); // 21..30 went into the deleteGroup batch, not a clear
    await s.close();
    const r = await openLevel(dir);
    expect(logOf(r.storageFor(9))).toEqual(show(ents(1, 3, 5, 'new')));
    expect(r.storageFor(9).snapshot()).toBeUndefined();
  });

  it('reads logs written one entry per key, truncates inside a record, and rewrites a record holding compacted entries from the first index', async () => {
    const engine = new MemoryEngine();
    // A log as the per-entry format wrote it (before log records): entries 1..6, one key each.
    await engine.batch(
      [
        { type: 'put' as const, key: 'g/00000002/conf', value: enc.encode(JSON.stringify(CONF)) },
        ...ents(1, 6, 1).map((e) => ({ type: 'put' as const, key: logKey(2, e.index), value: encodeEntry(e) })),
      ],
      { sync: true },
    );
    const s = await RaftLogStore.open(engine);
    expect(logOf(s.storageFor(2))).toEqual(show(ents(1, 6, 1)));
    s.persistReady(2, { entries: ents(7, 12, 1) }); // one record 7..12
    s.persistReady(2, { entries: ents(4, 5, 2) }); // truncates per-entry keys 4..6 and the record 7..12
    await s.flush();
    expect(await diskRecords(engine, 2)).toEqual([{ start: 1, count: 1 }, { start: 2, count: 1 }, { start: 3, count: 1 }, { start: 4, count: 2 }]);
    s.persistReady(2, { entries: ents(6, 15, 2) });
    s.compact(2, { meta: { index: 8, term: 2, conf: CONF }, data: new Uint8Array(0) }); // records up to 4..5 cleared; 6..15 holds 8
    await s.clearCompacted();
    expect(await diskRecords(engine, 2)).toEqual([{ start: 6, count: 10 }]);
    // A new leader overwrites from 11: the record 6..15 is cut at 10 and, as 6..8 are compacted, moves to 9.
    s.persistReady(2, { entries: ents(11, 11, 3), hardState: { term: 3, vote: 0, commit: 10 } });
    await s.flush();
    expect(await diskRecords(engine, 2)).toEqual([{ start: 9, count: 2 }, { start: 11, count: 1 }]);
    const expected = logOf(s.storageFor(2));
    expect(expected).toEqual(show([...ents(9, 10, 2), ...ents(11, 11, 3)]));
    const disk = engine.crash();
    const back = await RaftLogStore.open(disk);
    expect(logOf(back.storageFor(2))).toEqual(expected);
    // An append longer than MAX_RECORD_ENTRIES is split into records of at most that many.
    back.persistReady(2, { entries: ents(12, 11 + 2 * MAX_RECORD_ENTRIES + 5, 3) });
    await back.flush();
    expect((await diskRecords(disk, 2)).map((r) => r.count)).toEqual([2, 1, MAX_RECORD_ENTRIES, MAX_RECORD_ENTRIES, 5]);
  });

  it('installs a received snapshot, replacing the whole log', async () => {
    const dir = await levelDir();
    const s1 = await openLevel(dir);
    s1.persistReady(3, { entries: ents(1, 8, 1) });
    await s1.flush();
    const snap: Snapshot = { meta: { index: 30, term: 4, conf: { voters: [1, 2, 5], learners: [] } }, data: enc.encode('s30') };
    s1.persistReady(3, { snapshot: snap, entries: ents(29, 32, 4), hardState: { term: 4, vote: 1, commit: 30 } });
    await s1.flush();
    expect(logOf(s1.storageFor(3))).toEqual(show(ents(31, 32, 4)));
    await s1.close();
    const s2 = await openLevel(dir);
    const ms = s2.storageFor(3);
    expect(ms.firstIndex()).toBe(31);
    expect(ms.initialState().conf).toEqual(snap.meta.conf);
    expect(logOf(ms)).toEqual(show(ents(31, 32, 4)));
    expect(ms.initialState().hardState).toEqual({ term: 4, vote: 1, commit: 30 });
  });

  it('keeps many groups isolated, and deletes one without touching the others', async () => {
    const dir = await levelDir();
    const s1 = await openLevel(dir);
    const groups = [0, 1, 2, 15, 16, 255, 256, 4096, 65_535, 0xffff_ffff];
    for (const [i, g] of groups.entries()) {
      s1.storageFor(g, { voters: [g % 7], learners: [] });
      s1.persistReady(g, { entries: ents(1, 3 + i, 1 + i, `g${g}`), hardState: { term: 1 + i, vote: 0, commit: 1 } });
    }
    await s1.flush();
    s1.compact(16, { meta: { index: 2, term: 5, conf: CONF }, data: enc.encode('g16') });
    s1.persistReady(255, { entries: ents(2, 2, 9, 'g255') }); // truncates group 255 only
    s1.deleteGroup(4096);
    await s1.flush();
    const expected = JSON.parse(dump(s1)) as Record<number, { state: { hardState: { commit: number } } }>;
    await s1.close();

    const s2 = await openLevel(dir);
    expect(s2.groups()).toEqual(groups.filter((g) => g !== 4096));
    // Group 16 was compacted past its commit index: at open the commit index is raised to the snapshot's.
    expected[16]!.state.hardState.commit = 2;
    expect(JSON.parse(dump(s2))).toEqual(expected);
    expect(logOf(s2.storageFor(1))).toEqual(show(ents(1, 4, 2, 'g1')));
    expect(logOf(s2.storageFor(255))).toEqual(show([...ents(1, 1, 6, 'g255'), ...ents(2, 2, 9, 'g255')]));
    expect(s2.storageFor(16).firstIndex()).toBe(3);
    expect(s2.storageFor(0xffff_ffff).initialState().conf).toEqual({ voters: [0xffff_ffff % 7], learners: [] });
    expect(() => s2.storageFor(2 ** 32)).toThrow(RangeError);
    expect(() => s2.storageFor(-1)).toThrow(RangeError);
  });

  it('a round\'s entries are one log record on disk, keyed logKey(group, its first index), for large groups and indexes too', async () => {
    const engine = new MemoryEngine();
    const s = await RaftLogStore.open(engine);
    for (const [g, base] of [[7, 2 ** 40 + 3], [0xffff_ffff, 2 ** 52 + 0xabc], [0, 0]] as const) {
      s.storageFor(g, CONF);
      if (base > 0) s.persistReady(g, { snapshot: { meta: { index: base, term: 2, conf: CONF }, data: enc.encode('s') } });
      s.persistReady(g, { entries: ents(base + 1, base + 3, 2) });
      await s.flush();
      const keys = (await scanAll(engine, { prefix: logKey(g, 0).slice(0, -16) })).map(([k]) => Buffer.from(k).toString('latin1'));
      expect(keys).toEqual([logKey(g, base + 1)]);
    }
    const back = await RaftLogStore.open(engine.crash());
    expect(back.storageFor(0xffff_ffff).lastIndex()).toBe(2 ** 52 + 0xabc + 3);
  });

  it('writes the hard state on a term or vote change, not when only the commit index moves; the commit index read back is a lower bound raised to the snapshot and by raiseCommit', async () => {
    const engine = new MemoryEngine();
    const s1 = await RaftLogStore.open(engine);
    s1.storageFor(3, CONF);
    const hardStates = (): number => s1.opCounts['g/h']?.put ?? 0;
    s1.persistReady(3, { entries: ents(1, 6, 1), hardState: { term: 1, vote: 2, commit: 0 } });
    await s1.flush();
    expect(hardStates()).toBe(1);
    for (let c = 1; c <= 6; c++) s1.persistReady(3, { hardState: { term: 1, vote: 2, commit: c } }); // commit only
    await s1.flush();
    expect(hardStates()).toBe(1);
    expect(s1.storageFor(3).initialState().hardState).toEqual({ term: 1, vote: 2, commit: 6 });
    s1.compact(3, { meta: { index: 3, term: 1, conf: CONF }, data: new Uint8Array(0) });
    await s1.flush();
    const disk2 = engine.crash();
    const s2 = await RaftLogStore.open(disk2);
    expect(s2.storageFor(3).initialState().hardState).toEqual({ term: 1, vote: 2, commit: 3 }); // raised to the snapshot
    s2.raiseCommit(3, 5);
    expect(s2.storageFor(3).initialState().hardState.commit).toBe(5);
    s2.raiseCommit(3, 4); // never lowered
    s2.raiseCommit(3, 7); // past the log: ignored
    expect(s2.storageFor(3).initialState().hardState.commit).toBe(5);
    s2.persistReady(3, { hardState: { term: 2, vote: 0, commit: 5 } }); // a new term is written
    await s2.flush();
    expect(s2.opCounts['g/h']?.put).toBe(1);
    const s3 = await RaftLogStore.open(disk2.crash());
    expect(s3.storageFor(3).initialState().hardState).toEqual({ term: 2, vote: 0, commit: 5 });
  });

  it('group commit: 100 concurrent persist+flush calls share few fsynced batches', async () => {
    const dir = await levelDir();
    const s = await openLevel(dir);
    const rounds = 3;
    await Promise.all(
      Array.from({ length: 100 }, async (_, w) => {
        for (let r = 0; r < rounds; r++) {
          s.persistReady(w, { entries: [ent(r + 1, 1, `w${w}r${r}`)], hardState: { term: 1, vote: 0, commit: r } });
          await s.flush();
          expect(s.storageFor(w).lastIndex()).toBe(r + 1);
        }
      }),
    );
    const m = s.metrics;
    expect(m.entries).toBe(100 * rounds);
    expect(m.batches).toBeLessThan(20);
    expect(m.maxBatchEntries).toBeGreaterThanOrEqual(50);
    await s.close();
    const s2 = await openLevel(dir);
    expect(s2.groups().length).toBe(100);
    for (const w of [0, 42, 99]) expect(s2.storageFor(w).lastIndex()).toBe(rounds);
  });
});

describe('RaftLogStore group commit and failures (MemoryEngine)', () => {
  it('writers arriving while a batch is in flight join the next batch', async () => {
    const engine = new MemoryEngine({ latencyMs: 3 });
    const reports: BatchReport[] = [];
    const s = await RaftLogStore.open(engine, { onBatch: (r) => reports.push(r) });
    const resolved: number[] = [];
    await Promise.all(
      Array.from({ length: 100 }, async (_, w) => {
        await sleep((w * 7) % 25); // arrivals spread over ~25 ms
        s.persistReady(w, { entries: ents(1, 2, 1) });
        await s.flush();
        resolved.push(w);
      }),
    );
    expect(resolved.length).toBe(100);
    expect(s.metrics.batches).toBe(reports.length);
    expect(reports.length).toBeLessThan(20);
    expect(reports.reduce((n, r) => n + r.entries, 0)).toBe(200);
    expect(engine.counters.syncedBatches).toBe(reports.length);
    expect(s.metrics.fsyncMsMax).toBeGreaterThan(0);
    // Everything acknowledged is durable.
    const s2 = await RaftLogStore.open(engine.crash());
    expect(s2.groups().length).toBe(100);
  });

  it('whenWritten writes state records alone unsynced, starting the write itself; a flush in the same turn, or any other unit, makes the batch synced', async () => {
    const engine = new MemoryEngine({ latencyMs: 1 });
    const s = await RaftLogStore.open(engine);
    const rec = (n: number) => [{ type: 'put' as const, key: `${stateKeyPrefix(1)}k${n}`, value: enc.encode(`v${n}`) }];
    s.persistReady(1, { entries: ents(1, 2, 1), hardState: { term: 1, vote: 1, commit: 0 } });
    await s.flush();
    expect(engine.counters).toEqual({ batches: 1, syncedBatches: 1 });
    // An idle node's last applied round: its records reach the engine with no flush at all, without an fsync.
    s.stageStateOps(1, rec(1));
    await s.whenWritten();
    expect(engine.counters).toEqual({ batches: 2, syncedBatches: 1 });
    expect(s.metrics).toMatchObject({ batches: 2, unsyncedBatches: 1 });
    expect(dec.decode(engine.getSync(`${stateKeyPrefix(1)}k1`))).toBe('v1');
    await s.whenWritten(); // nothing new: at once, no batch
    expect(engine.counters.batches).toBe(2);
    // A machine crash may lose them (the log they were applied from is durable; recovery applies it again).
    expect(engine.unsyncedBatches).toBe(1);
    // A flush now has nothing left to write but must still sync: a marker batch does, and covers them.
    await s.flush();
    expect(engine.counters).toEqual({ batches: 3, syncedBatches: 2 });
    expect(engine.unsyncedBatches).toBe(0);
    expect(engine.getSync('x/sync')).toBeUndefined();
    // A flush in the same turn shares the batch (synced); so does any unit other than state records.
    s.stageStateOps(1, rec(2));
    const w = s.whenWritten();
    await Promise.all([w, s.flush()]);
    expect(engine.counters).toEqual({ batches: 4, syncedBatches: 3 });
    s.persistReady(1, { entries: ents(3, 3, 1) });
    s.stageStateOps(1, rec(3));
    await s.whenWritten();
    expect(engine.counters).toEqual({ batches: 5, syncedBatches: 4 });
    expect(engine.unsyncedBatches).toBe(0);
    const after = engine.crash();
    expect(dec.decode(after.getSync(`${stateKeyPrefix(1)}k3`))).toBe('v3');
    expect((await RaftLogStore.open(after)).storageFor(1).lastIndex()).toBe(3);
  });

  it('with writeOnlyFlushed (a paced host), whenWritten writes the state records before the first unflushed log unit, never that unit; onSyncStart marks each synced batch', async () => {
    const { engine, s, syncStarts } = await pacedStore(1);
    expect(syncStarts()).toBe(1);
    s.stageStateOps(1, stateRec(1)); // an applied round's records
    s.persistReady(1, { entries: ents(2, 2, 1) }); // a round held for the pace
    s.stageStateOps(1, stateRec(2)); // records staged after it
    const written = s.whenWritten();
    let settled = false;
    void written.then(() => (settled = true));
    // The loop counts an unsynced batch once it is written, and in the same turn takes its next unit or stops.
    await vi.waitFor(() => expect(s.metrics.unsyncedBatches).toBe(1));
    await new Promise((r) => setImmediate(r));
    // k1 went (unsynced); the held log unit and what follows it wait for their flush.
    expect(dec.decode(engine.getSync(`${stateKeyPrefix(1)}k1`))).toBe('v1');
    expect(engine.getSync(`${stateKeyPrefix(1)}k2`)).toBeUndefined();
    expect(engine.counters).toEqual({ batches: 2, syncedBatches: 1 });
    expect(settled).toBe(false);
    await s.flush();
    await written;
    expect(syncStarts()).toBe(2);
    expect(dec.decode(engine.getSync(`${stateKeyPrefix(1)}k2`))).toBe('v2');
    expect((await RaftLogStore.open(engine.crash())).storageFor(1).lastIndex()).toBe(2);
  });

  it('with writeOnlyFlushed, a flush that waits only for units written unsynced resolves although a held unit was staged after them (a marker batch syncs them; the held unit stays held)', async () => {
    const { engine, s, syncStarts } = await pacedStore(3);
    s.stageStateOps(1, stateRec(1)); // an applied round's records
    const issued = nextBatchIssued(engine);
    const written = s.whenWritten();
    await issued; // k1's unsynced batch is in flight
    const flushed = s.flush(); // waits for k1 alone: being written, not synced
    s.persistReady(1, { entries: ents(2, 2, 1) }); // a round held for the pace, staged meanwhile
    await written;
    await flushed; // the old loop stopped at the held unit: this never resolved
    expect(engine.unsyncedBatches).toBe(0);
    expect(engine.counters).toEqual({ batches: 3, syncedBatches: 2 });
    expect(syncStarts()).toBe(2);
    expect(engine.getSync(logKey(1, 2))).toBeUndefined(); // held: not written with the marker
    expect(engine.getSync('x/sync')).toBeUndefined();
    await s.flush();
    expect(engine.counters).toEqual({ batches: 4, syncedBatches: 3 });
    expect((await RaftLogStore.open(engine.crash())).storageFor(1).lastIndex()).toBe(2);
  });

  it('turning writeOnlyFlushed off writes what a waiting whenWritten asked for, unflushed units included (an idle host: nothing else would flush them)', async () => {
    const { engine, s } = await pacedStore(1);
    s.setConf(1, CONF); // a unit no round flushes (as a compaction's)
    s.stageStateOps(1, stateRec(1));
    const written = s.whenWritten();
    let settled = false;
    void written.then(() => (settled = true));
    await new Promise((r) => setImmediate(r)); // the loop ran (a microtask) and stopped at the unflushed unit
    expect(settled).toBe(false);
    expect(engine.counters.batches).toBe(1);
    s.writeOnlyFlushed = false; // the old store only flipped a flag: this waited for a flush that never came
    await written;
    expect(dec.decode(engine.getSync(`${stateKeyPrefix(1)}k1`))).toBe('v1');
    expect(engine.counters).toEqual({ batches: 2, syncedBatches: 2 }); // the conf unit makes it a synced batch
    expect((await RaftLogStore.open(engine.crash())).storageFor(1).initialState().conf).toEqual(CONF);
  });

  it('flushNow hands what is staged to the engine before it returns; units staged after it go into a later batch, and it does not wait for them (session lone12)', async () => {
    const engine = new MemoryEngine({ latencyMs: 1 });
    const s = await RaftLogStore.open(engine);
    s.persistReady(1, { entries: ents(1, 1, 1), hardState: { term: 1, vote: 1, commit: 0 } });
    const issued: string[][] = [];
    const batch = engine.batch.bind(engine);
    engine.batch = (ops, options) => {
      issued.push(ops.map((o) => String(o.key)));
      return batch(ops, options);
    };
    const durable = s.flushNow();
    expect(issued.length).toBe(1); // synchronously: no microtask in between
    s.stageStateOps(1, stateRec(1)); // the applied records, staged after the write started
    await durable;
    expect(issued[0]!.some((k) => k.startsWith(stateKeyPrefix(1)))).toBe(false);
    await s.flush(); // (without deferLazy the loop went on to them after the first batch, unsynced)
    expect(issued.slice(1).some((b) => b.some((k) => k.startsWith(stateKeyPrefix(1))))).toBe(true);
    expect(dec.decode(engine.getSync(`${stateKeyPrefix(1)}k1`))).toBe('v1');
    // With a batch in flight, flushNow waits for it like flush (one batch at a time, in order).
    s.persistReady(1, { entries: ents(2, 2, 1) });
    const first = s.flush();
    await Promise.resolve();
    s.persistReady(1, { entries: ents(3, 3, 1) });
    await Promise.all([first, s.flushNow()]);
    expect((await RaftLogStore.open(engine.crash())).storageFor(1).lastIndex()).toBe(3);
  });

  it('with deferLazy, state records alone for a lazy whenWritten wait for the host; a flush meanwhile takes them into its synced batch; a plain whenWritten writes at once (session lone12)', async () => {
    const engine = new MemoryEngine();
    const s = await RaftLogStore.open(engine);
    const deferred: (() => void)[] = [];
    s.deferLazy = (write) => deferred.push(write);
    s.persistReady(1, { entries: ents(1, 1, 1), hardState: { term: 1, vote: 1, commit: 0 } });
    await s.flush();
    expect(engine.counters).toEqual({ batches: 1, syncedBatches: 1 });
    // An idle node's applied records: nothing is written until the host says so.
    s.stageStateOps(1, stateRec(1));
    let written1 = false;
    const w1 = s.whenWritten({ lazy: true }).then(() => (written1 = true));
    await tick();
    await tick();
    expect(deferred.length).toBe(1);
    expect(engine.counters.batches).toBe(1);
    expect(written1).toBe(false);
    deferred.shift()!();
    await w1;
    expect(engine.counters).toEqual({ batches: 2, syncedBatches: 1 }); // alone, unsynced
    // A busy node's: the next round's flush takes them (one synced batch, none of their own).
    s.stageStateOps(1, stateRec(2));
    const w2 = s.whenWritten({ lazy: true });
    await tick();
    s.persistReady(1, { entries: ents(2, 2, 1) });
    await s.flush();
    await w2;
    expect(engine.counters).toEqual({ batches: 3, syncedBatches: 2 });
    expect(dec.decode(engine.getSync(`${stateKeyPrefix(1)}k2`))).toBe('v2');
    // The host's call then finds nothing to write.
    expect(deferred.length).toBe(1);
    deferred.shift()!();
    await tick();
    expect(engine.counters.batches).toBe(3);
    // A plain whenWritten (a listing waiting for the durable point) is never deferred.
    s.stageStateOps(1, stateRec(3));
    await s.whenWritten();
    expect(deferred.length).toBe(0);
    expect(engine.counters).toEqual({ batches: 4, syncedBatches: 2 });
  });

  it('with deferLazy, state records staged while a synced batch is in flight are not written straight after it: the next flush takes them, or the host later (session lone12)', async () => {
    const engine = new MemoryEngine({ latencyMs: 2 });
    const s = await RaftLogStore.open(engine);
    const deferred: (() => void)[] = [];
    s.deferLazy = (write) => deferred.push(write);
    s.persistReady(1, { entries: ents(1, 1, 1), hardState: { term: 1, vote: 1, commit: 0 } });
    const round1 = s.flushNow();
    // Applied while the round's fsync runs (a busy node, or syncBeforeApply).
    s.stageStateOps(1, stateRec(1));
    const w1 = s.whenWritten({ lazy: true });
    await round1;
    await tick();
    expect(engine.counters).toEqual({ batches: 1, syncedBatches: 1 });
    expect(deferred.length).toBe(1);
    // The next round follows: its synced batch holds them.
    s.persistReady(1, { entries: ents(2, 2, 1) });
    s.stageStateOps(1, stateRec(2));
    const w2 = s.whenWritten({ lazy: true });
    await s.flush();
    await Promise.all([w1, w2]);
    expect(engine.counters).toEqual({ batches: 2, syncedBatches: 2 });
    // The host's call after a flush took the units it was made for: the ones staged since wait again.
    s.stageStateOps(1, stateRec(3));
    let written3 = false;
    const w3 = s.whenWritten({ lazy: true }).then(() => (written3 = true));
    deferred.shift()!();
    await tick();
    expect(written3).toBe(false);
    expect(deferred.length).toBe(1);
    // ... and are written by the next call when nothing took them (unsynced, alone).
    deferred.shift()!();
    await w3;
    expect(engine.counters).toEqual({ batches: 3, syncedBatches: 2 });
    expect(dec.decode(engine.getSync(`${stateKeyPrefix(1)}k3`))).toBe('v3');
    // Nothing written unsynced is lost to a flush: it makes them durable.
    await s.flush();
    const after = engine.crash();
    expect((await RaftLogStore.open(after)).storageFor(1).lastIndex()).toBe(2);
    expect(dec.decode(after.getSync(`${stateKeyPrefix(1)}k3`))).toBe('v3');
  });

  it("with deferLazy and writeOnlyFlushed, state records staged after a flushNow and before a held round's log unit wait for that round's flush: no batch of their own (session lone12)", async () => {
    const engine = new MemoryEngine({ latencyMs: 2 });
    const s = await RaftLogStore.open(engine);
    const deferred: (() => void)[] = [];
    s.deferLazy = (write) => deferred.push(write);
    s.persistReady(1, { entries: ents(1, 1, 1), hardState: { term: 1, vote: 1, commit: 0 } });
    s.writeOnlyFlushed = true; // a round in flight (the driver sets it)
    const round1 = s.flushNow();
    s.stageStateOps(1, stateRec(1)); // its applies, after the hand-off
    const w1 = s.whenWritten({ lazy: true });
    s.persistReady(1, { entries: ents(2, 2, 1) }); // the next round, staged while it syncs (held)
    await round1;
    await tick();
    await tick();
    expect(engine.counters).toEqual({ batches: 1, syncedBatches: 1 });
    await s.flush(); // the held round's write takes the records before it
    await w1;
    expect(engine.counters).toEqual({ batches: 2, syncedBatches: 2 });
    expect(dec.decode(engine.getSync(`${stateKeyPrefix(1)}k1`))).toBe('v1');
  });

  it('flush with nothing staged resolves at once without a batch', async () => {
    const engine = new MemoryEngine();
    const s = await RaftLogStore.open(engine);
    await s.flush();
    expect(engine.counters.batches).toBe(0);
    s.persistReady(1, { entries: [] });
    await s.flush();
    expect(engine.counters.batches).toBe(0);
  });

  it('splits into several synced batches at the byte bound, never splitting one unit', async () => {
    const engine = new MemoryEngine();
    const reports: BatchReport[] = [];
    const maxBatchBytes = 2000;
    const s = await RaftLogStore.open(engine, { maxBatchBytes, onBatch: (r) => reports.push(r) });
    for (let g = 0; g < 10; g++) s.persistReady(g, { entries: ents(1, 5, 1, 'x'.repeat(80)) }); // ~500 bytes per unit (one log record)
    s.persistReady(99, { entries: [ent(1, 1, 'y'.repeat(5000))] }); // one unit above the bound
    expect(s.stagedBytes).toBeGreaterThan(maxBatchBytes * 2);
    await s.flush();
    expect(reports.length).toBeGreaterThanOrEqual(4);
    for (const r of reports) {
      if (r.units > 1) expect(r.bytes).toBeLessThanOrEqual(maxBatchBytes);
      expect(r.entries % 5 === 0 || r.units === 1).toBe(true);
    }
    expect(reports.at(-1)!.units).toBe(1);
    expect(engine.counters.syncedBatches).toBe(reports.length);
    const s2 = await RaftLogStore.open(engine.crash());
    expect(s2.groups()).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99]);
  });

  it('an engine error rejects the flush of everyone waiting on that batch, and the store stays failed', async () => {
    const engine = new MemoryEngine({ latencyMs: 20 });
    const s = await RaftLogStore.open(engine);
    s.persistReady(1, { entries: ents(1, 3, 1) });
    const first = s.flush();
    await sleep(2); // the first batch is now in flight
    s.persistReady(2, { entries: ents(1, 3, 1) });
    s.persistReady(3, { entries: ents(1, 3, 1) });
    const boom = new Error('EIO: fsync failed');
    engine.injectFault(boom);
    const waiting = [s.flush(), s.flush(), s.flush()];
    const settled = await Promise.allSettled([first, ...waiting]);
    expect(settled[0]!.status).toBe('fulfilled');
    for (const r of settled.slice(1)) {
      expect(r.status).toBe('rejected');
      const err = (r as PromiseRejectedResult).reason as StoreFailedError;
      expect(err).toBeInstanceOf(StoreFailedError);
      expect(err.cause).toBe(boom);
    }
    expect(s.failure?.cause).toBe(boom);
    await expect(s.flush()).rejects.toBeInstanceOf(StoreFailedError);
    expect(() => s.persistReady(1, { entries: ents(4, 4, 1) })).toThrow(StoreFailedError);
    // Reopening shows exactly what was durable: group 1, not the failed batch.
    const s2 = await RaftLogStore.open(engine.crash());
    expect(s2.groups()).toEqual([1]);
    expect(s2.storageFor(1).lastIndex()).toBe(3);
  });

  it('refuses entries that are not contiguous or leave a gap, changing nothing', async () => {
    const engine = new MemoryEngine();
    const s = await RaftLogStore.open(engine);
    s.persistReady(1, { entries: ents(1, 3, 1) });
    const before = dump(s);
    const staged = s.stagedBytes;
    expect(() => s.persistReady(1, { entries: [ent(4, 1), ent(6, 1)] })).toThrow(/contiguous/);
    expect(() => s.persistReady(1, { entries: ents(5, 6, 1), hardState: { term: 1, vote: 0, commit: 0 } })).toThrow(/missing/);
    expect(() => s.persistReady(8, { entries: ents(2, 3, 1) })).toThrow(/missing/);
    expect(dump(s)).toBe(before);
    expect(s.groups()).toEqual([1]);
    expect(s.stagedBytes).toBe(staged);
    // Entries at or below the snapshot index are skipped.
    await s.flush();
    s.compact(1, { meta: { index: 2, term: 1, conf: CONF }, data: enc.encode('s') });
    s.persistReady(1, { entries: ents(1, 4, 1) });
    expect(logOf(s.storageFor(1))).toEqual(show(ents(3, 4, 1)));
    await s.flush();
    expect(await diskIndexes(engine, 1)).toEqual([3, 4]);
  });

  it('detects a gap in the log on open', async () => {
    const engine = new MemoryEngine();
    await engine.batch(
      [1, 2, 4].map((i) => ({ type: 'put' as const, key: logKey(5, i), value: encodeEntry(ent(i, 1)) })),
      { sync: true },
    );
    await expect(RaftLogStore.open(engine)).rejects.toThrow(StorageCorruptionError);
    const engine2 = new MemoryEngine();
    await engine2.batch([{ type: 'put', key: 'g/zz/conf', value: enc.encode('{}') }], { sync: true });
    await expect(RaftLogStore.open(engine2)).rejects.toThrow(StorageCorruptionError);
  });
});

/* ---------------- The sync contract under random crashes ---------------- */

type Action =
  | { readonly kind: 'append'; readonly group: number; readonly count: number; readonly truncate: number }
  | { readonly kind: 'hardstate'; readonly group: number; readonly commit: number }
  | { readonly kind: 'compact'; readonly group: number; readonly at: number }
  | { readonly kind: 'install'; readonly group: number; readonly ahead: number }
  | { readonly kind: 'conf'; readonly group: number; readonly voter: number }
  | { readonly kind: 'flush'; readonly wait: boolean }
  | { readonly kind: 'tick'; readonly n: number };

const GROUPS = 3;
const groupArb = fc.nat(GROUPS - 1);
const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('append' as const), group: groupArb, count: fc.integer({ min: 1, max: 4 }), truncate: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 5 }) }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('hardstate' as const), group: groupArb, commit: fc.nat(30) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('compact' as const), group: groupArb, at: fc.nat(6) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('install' as const), group: groupArb, ahead: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('conf' as const), group: groupArb, voter: fc.integer({ min: 1, max: 9 }) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('flush' as const), wait: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('tick' as const), n: fc.integer({ min: 1, max: 3 }) }) },
);

describe('the sync contract at the storage seam', () => {
  it('after a crash at any point, every acknowledged write survives and the disk holds a prefix-consistent state', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(actionArb, { minLength: 1, maxLength: 40, size: 'max' }), fc.nat(), fc.constantFrom(0, 1), async (actions, crashSeed, keep) => {
        const crashAt = crashSeed % (actions.length + 1); // crash before this action (or after all)
        const engine = new MemoryEngine();
        const store = await RaftLogStore.open(engine);
        const terms = new Array<number>(GROUPS).fill(1);
        for (let g = 0; g < GROUPS; g++) store.storageFor(g, CONF);
        await store.flush();

        // states[i] = the full picture after the i-th mutation; acked = highest i covered by a resolved flush.
        // The commit index is written only with a term or vote change (a lower bound on disk): compared apart, below.
        const states: string[] = [dump(store, false)];
        let acked = 0;
        const failures: unknown[] = [];
        for (const [step, a] of actions.entries()) {
          if (step === crashAt) break;
          if (a.kind === 'tick') {
            for (let i = 0; i < a.n; i++) await tick();
            continue;
          }
          if (a.kind === 'flush') {
            const covers = states.length - 1;
            const p = store.flush().then(
              () => void (acked = Math.max(acked, covers)),
              (err: unknown) => void failures.push(err),
            );
            if (a.wait) await p; // a caller that waits for its acknowledgement
            continue;
          }
          const ms = store.storageFor(a.group);
          if (a.kind === 'append') {
            const last = ms.lastIndex();
            const from = Math.max(ms.firstIndex(), last + 1 - a.truncate);
            if (from <= last) terms[a.group]!++; // a new leader overwrites the suffix
            const t = terms[a.group]!;
            store.persistReady(a.group, { entries: ents(from, from + a.count - 1, t, `g${a.group}`) });
          } else if (a.kind === 'hardstate') {
            store.persistReady(a.group, { hardState: { term: terms[a.group]!, vote: 1, commit: Math.min(a.commit, ms.lastIndex()) } });
          } else if (a.kind === 'compact') {
            const index = ms.firstIndex() + a.at;
            if (index > ms.lastIndex()) continue;
            store.compact(a.group, { meta: { index, term: ms.term(index), conf: ms.initialState().conf }, data: enc.encode(`snap${a.group}@${index}`) });
          } else if (a.kind === 'install') {
            const index = ms.lastIndex() + a.ahead;
            const t = ++terms[a.group]!;
            store.persistReady(a.group, { snapshot: { meta: { index, term: t, conf: CONF }, data: enc.encode(`recv${a.group}@${index}`) } });
          } else {
            store.setConf(a.group, { voters: [1, 2, a.voter], learners: [] });
          }
          states.push(dump(store, false));
        }

        // Crash (possibly mid-batch), then restart from what the disk holds.
        const ackedAtCrash = acked;
        const finalState = JSON.parse(states.at(-1)!) as Record<string, { log: string[] }>;
        const ackedState = JSON.parse(states[ackedAtCrash]!) as Record<string, { log: string[] }>;
        const disk = engine.crash(keep);
        await tick();
        for (const f of failures) expect(f).toBeInstanceOf(StoreFailedError);
        const recovered = await RaftLogStore.open(disk);
        const got = dump(recovered, false);
        for (let g = 0; g < GROUPS; g++) {
          const ms = recovered.storageFor(g);
          const commit = ms.initialState().hardState.commit;
          // (Not checked against the last index: this model truncates logs below commit indexes, which Raft never does.)
          if (ms.initialState().hardState.term > 0) expect(commit).toBeGreaterThanOrEqual(ms.firstIndex() - 1);
        }

        // 1. The disk holds the state after some mutation at or after the last acknowledged one.
        const j = states.indexOf(got, ackedAtCrash);
        expect(j, `recovered state is not a state at or after #${ackedAtCrash}:\n${got}\nacked:\n${states[ackedAtCrash]}`).toBeGreaterThanOrEqual(ackedAtCrash);

        // 2. Every acknowledged entry that was not later superseded is present and unchanged.
        const recoveredState = JSON.parse(got) as Record<string, { log: string[] }>;
        for (let g = 0; g < GROUPS; g++) {
          const live = new Set(finalState[g]!.log);
          const have = new Set(recoveredState[g]!.log);
          for (const e of ackedState[g]!.log) if (live.has(e)) expect(have.has(e), `acked entry ${e} of group ${g} lost`).toBe(true);
        }

        // 3. The log on disk is contiguous from its first to its last index, for every group: past the
        // snapshot at once (compacted entries at or behind it may wait for their clear), and
        // exactly once the recovered store's clears are done.
        for (let g = 0; g < GROUPS; g++) {
          const ms = recovered.storageFor(g);
          const idx = (await diskIndexes(disk, g)).filter((i) => i >= ms.firstIndex());
          expect(idx).toEqual(Array.from({ length: ms.lastIndex() - ms.firstIndex() + 1 }, (_, i) => ms.firstIndex() + i));
        }
        // After the clears, only the record holding the first index may still hold entries behind it.
        await recovered.clearCompacted();
        for (let g = 0; g < GROUPS; g++) {
          const idx = await diskIndexes(disk, g);
          const ms = recovered.storageFor(g);
          const from = idx[0] ?? ms.firstIndex();
          expect(idx).toEqual(Array.from({ length: ms.lastIndex() - from + 1 }, (_, i) => from + i));
          expect((await diskRecords(disk, g)).filter((r) => r.start < ms.firstIndex()).length).toBeLessThanOrEqual(1);
        }
      }),
      { numRuns: 500 },
    );
  });
});
