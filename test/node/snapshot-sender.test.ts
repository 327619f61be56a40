// Unit tests of the leader's snapshot production (src/node/snapshot-sender.ts): on demand from the records, never from a records snapshot's empty data, retried while the records are being replaced, refused across a configuration change, dropped when idle.
import { describe, expect, it } from 'vitest';
import { confAtIndex, SnapshotGate, SnapshotSender, type SnapshotSenderHost } from '../../src/node/snapshot-sender.js';
import { EntryType, MemoryStorage, type ConfState, type Entry, type Snapshot } from '../../src/raft/index.js';
import { KvStateMachine } from '../../src/statemachine/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { StateRecorder } from '../../src/storage/state-store.js';

const GROUP = 4;
const CONF: ConfState = { voters: [1, 2, 3], learners: [] };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const entry = (index: number, type = EntryType.Normal): Entry => ({ term: 1, index, type, data: new Uint8Array(0) });

/** A log of `n` entries compacted (records snapshot) at `at`, and records of a machine at `at` in an engine. */
async function setup(n: number, at: number): Promise<{ storage: MemoryStorage; engine: MemoryEngine; sm: KvStateMachine }> {
  const storage = new MemoryStorage(CONF);
  storage.append(Array.from({ length: n }, (_, i) => entry(i + 1)));
  storage.createSnapshot(at, CONF, new Uint8Array(0));
  storage.compact(at);
  const engine = new MemoryEngine();
  const sm = new KvStateMachine();
  const rec = new StateRecorder(GROUP);
  sm.observe(rec);
  for (let i = 1; i <= at; i++) sm.apply(i, 1000 + i, { type: 'put', key: `k${i % 5}`, value: new Uint8Array([i]) });
  await engine.batch(rec.take(sm)!, { sync: true });
  return { storage, engine, sm };
}

function host(engine: MemoryEngine, storage: MemoryStorage, over: Partial<SnapshotSenderHost> = {}): SnapshotSenderHost & { made: Snapshot[]; errors: unknown[] } {
  const made: Snapshot[] = [];
  const errors: unknown[] = [];
  return {
    group: GROUP,
    openView: () => engine.view(),
    termAt: (i) => (i >= storage.firstIndex() - 1 && i <= storage.lastIndex() ? storage.term(i) : undefined),
    confAt: () => CONF,
    produced: (s) => made.push(s),
    failed: (e) => errors.push(e),
    ...over,
    made,
    errors,
  };
}

describe('SnapshotSender', () => {
  it('builds one snapshot at a time per node (a shared gate) and counts the bytes of the ones it holds', async () => {
    const a = await setup(20, 12);
    const b = await setup(20, 12);
    const gate = new SnapshotGate(1);
    const sa = new SnapshotSender(a.storage, host(a.engine, a.storage), { gate, idleMs: 20 });
    const sb = new SnapshotSender(b.storage, host(b.engine, b.storage), { gate });
    expect(sa.snapshot()).toBeUndefined();
    expect(sa.busy).toBe(true);
    expect(sb.snapshot()).toBeUndefined(); // the gate is taken: not started
    expect(sb.busy).toBe(false);
    expect(sb.counters.started).toBe(0);
    while (sa.busy) await sleep(1);
    const held = sa.snapshot()!;
    expect(gate.heldBytes).toBe(held.data.length);
    expect(sb.snapshot()).toBeUndefined(); // the slot is free again
    expect(sb.busy).toBe(true);
    while (sb.busy) await sleep(1);
    expect(gate.heldBytes).toBe(held.data.length + sb.snapshot()!.data.length);
    sb.release();
    expect(gate.heldBytes).toBe(held.data.length);
    // Dropped when idle: no longer held.
    await sleep(60);
    expect(sa.counters.dropped).toBe(1);
    expect(gate.heldBytes).toBe(0);
  });

  it('never hands out a records snapshot; produces one from the records on demand, the machine\'s own encoding', async () => {
    const { storage, engine, sm } = await setup(20, 12);
    const h = host(engine, storage);
    const sender = new SnapshotSender(storage, h);
    expect(sender.snapshot()).toBeUndefined(); // starts producing
    expect(sender.busy).toBe(true);
    expect(sender.snapshot()).toBeUndefined(); // one production at a time
    while (sender.busy) await sleep(1);
    const s = sender.snapshot()!;
    expect(s.meta).toEqual({ index: 12, term: 1, conf: CONF });
    expect(Buffer.from(s.data).equals(Buffer.from(sm.snapshot()))).toBe(true);
    expect(sender.counters).toMatchObject({ started: 1, produced: 1 });
    expect(h.made).toEqual([s]);
    expect(h.errors).toEqual([]);
    expect(engine.openViews).toBe(0);
    // A stored snapshot with data (installed from a leader) is sent as it is.
    const stored = new MemoryStorage(CONF);
    stored.applySnapshot({ meta: { index: 3, term: 1, conf: CONF }, data: new Uint8Array([9]) });
    expect(new SnapshotSender(stored, host(engine, stored)).snapshot()!.data).toEqual(new Uint8Array([9]));
  });

  it('retries later while the records have no meta (a replacement under way), and when the point read cannot be used', async () => {
    const { storage, engine } = await setup(20, 12);
    const meta = (await engine.view().get(`s/${GROUP.toString(16).padStart(8, '0')}/meta`))!;
    await engine.batch([{ type: 'del', key: `s/${GROUP.toString(16).padStart(8, '0')}/meta` }], { sync: true });
    let conf: ConfState | undefined;
    const sender = new SnapshotSender(storage, host(engine, storage, { confAt: () => conf }), { retryMs: 20 });
    expect(sender.snapshot()).toBeUndefined();
    while (sender.busy) await sleep(1);
    expect(sender.snapshot()).toBeUndefined(); // within the retry delay: not started again
    expect(sender.counters.started).toBe(1);
    await engine.batch([{ type: 'put', key: `s/${GROUP.toString(16).padStart(8, '0')}/meta`, value: meta }], { sync: true });
    await sleep(25);
    expect(sender.snapshot()).toBeUndefined();
    while (sender.busy) await sleep(1);
    expect(sender.snapshot()).toBeUndefined(); // the configuration at the records' index is unknown
    expect(sender.counters).toMatchObject({ started: 2, produced: 0 });
    conf = CONF;
    await sleep(25);
    sender.snapshot();
    while (sender.busy) await sleep(1);
    expect(sender.snapshot()?.meta.index).toBe(12);
  });

  it('drops a produced snapshot once the log no longer holds the entry after it, and when idle', async () => {
    const { storage, engine } = await setup(30, 12);
    const sender = new SnapshotSender(storage, host(engine, storage), { idleMs: 30 });
    sender.snapshot();
    while (sender.busy) await sleep(1);
    expect(sender.snapshot()).toBeDefined();
    await sleep(80);
    expect(sender.counters.dropped).toBe(1);
    sender.snapshot();
    while (sender.busy) await sleep(1);
    expect(sender.snapshot()).toBeDefined();
    storage.createSnapshot(20, CONF, new Uint8Array(0));
    storage.compact(20); // the records are still at 12: unusable now
    expect(sender.snapshot()).toBeUndefined();
    while (sender.busy) await sleep(1);
    expect(sender.snapshot()).toBeUndefined();
    sender.release();
  });
});

describe('confAtIndex', () => {
  const log = (types: Record<number, EntryType>) => (lo: number, hi: number) =>
    Array.from({ length: hi - lo }, (_, i) => entry(lo + i, types[lo + i] ?? EntryType.Normal));
  it('is the current configuration when no change lies between the index and what Raft applied, else unknown', () => {
    expect(confAtIndex(10, 10, CONF, log({}))).toBe(CONF);
    expect(confAtIndex(8, 12, CONF, log({}))).toBe(CONF);
    expect(confAtIndex(14, 12, CONF, log({}))).toBe(CONF);
    expect(confAtIndex(8, 12, CONF, log({ 11: EntryType.ConfChange }))).toBeUndefined();
    expect(confAtIndex(8, 12, CONF, log({ 8: EntryType.ConfChange }))).toBe(CONF); // applied at 8: in effect there
    expect(confAtIndex(14, 12, CONF, log({ 13: EntryType.ConfChange }))).toBeUndefined();
    expect(confAtIndex(8, 12, CONF, () => undefined)).toBeUndefined();
  });
});
