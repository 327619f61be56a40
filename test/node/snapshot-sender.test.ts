// Unit tests of the leader's snapshot sending (src/node/snapshot-sender.ts): a streamed snapshot over an engine view opened on demand, its chunks read per follower from an encoder resumable at a chunk boundary (the machine's own encoding, byte for byte), one view per node at a time with the bytes held counted, retried while the records are being replaced, refused across a configuration change, the view and encoders released when transfers end, the follower goes silent or leadership is lost.
import { describe, expect, it } from 'vitest';
import { confAtIndex, SnapshotGate, SnapshotSender, type SnapshotSenderHost } from '../../src/node/snapshot-sender.js';
import { EntryType, MemoryStorage, type ConfState, type Entry, type Snapshot, type SnapshotChunk } from '../../src/raft/index.js';
import { KvStateMachine } from '../../src/statemachine/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { SnapshotKeyCountError, StateRecorder } from '../../src/storage/state-store.js';
import { scanAll, type EngineOp } from '../../src/storage/kv-engine.js';

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
  for (let i = 1; i <= at; i++) sm.apply(i, 1000 + i, { type: 'put', key: `k${i % 5}`, value: new Uint8Array(40).fill(i) });
  await engine.batch(rec.take(sm)!, { sync: true });
  return { storage, engine, sm };
}

function host(engine: MemoryEngine, storage: MemoryStorage, over: Partial<SnapshotSenderHost> = {}): SnapshotSenderHost & { made: Snapshot[]; errors: unknown[]; chunks: SnapshotChunk[] } {
  const made: Snapshot[] = [];
  const errors: unknown[] = [];
  const chunks: SnapshotChunk[] = [];
  return {
    chunk: (c) => chunks.push(c),
    group: GROUP,
    openView: () => engine.view(),
    termAt: (i) => (i >= storage.firstIndex() - 1 && i <= storage.lastIndex() ? storage.term(i) : undefined),
    confAt: () => CONF,
    produced: (s) => made.push(s),
    failed: (e) => errors.push(e),
    ...over,
    made,
    errors,
    chunks,
  };
}

/** Waits until `cond` holds (polled; the sender works over macrotask turns). */
async function until(cond: () => boolean, what: string, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

/** Reads every chunk of the open snapshot for follower `to`, in order, as the Raft core asks for them. */
async function readAll(sender: SnapshotSender, h: { chunks: SnapshotChunk[] }, snap: Snapshot, to: number): Promise<SnapshotChunk[]> {
  const out: SnapshotChunk[] = [];
  let offset = 0;
  for (;;) {
    const n = h.chunks.length;
    sender.read({ to, meta: snap.meta, offset });
    await until(() => h.chunks.length > n, `chunk at ${offset}`);
    const c = h.chunks[h.chunks.length - 1]!;
    expect(c).toMatchObject({ to, index: snap.meta.index, offset });
    out.push(c);
    if (c.last) return out;
    offset += c.bytes.length;
  }
}

const joined = (cs: readonly SnapshotChunk[]) => Buffer.concat(cs.map((c) => c.bytes));
const trailingCrc = (b: Uint8Array) => Buffer.from(b).readUInt32BE(b.length - 4);

describe('SnapshotSender', () => {
  it('opens one view at a time per node (a shared gate), counts the chunk bytes held, and releases the view once the transfers over it end', async () => {
    const a = await setup(20, 12);
    const b = await setup(20, 12);
    const gate = new SnapshotGate(1);
    const ha = host(a.engine, a.storage);
    const window = 1; // chunks kept for a resend (the core's window): a small encoding, so the bound stays under half of it
    const sa = new SnapshotSender(a.storage, ha, { gate, chunkBytes: 64, partBytes: 16, chunksInFlight: window });
    const sb = new SnapshotSender(b.storage, host(b.engine, b.storage), { gate });
    expect(sa.snapshot()).toBeUndefined();
    expect(sa.busy).toBe(true);
    expect(sb.snapshot()).toBeUndefined(); // the gate is taken: not started
    expect(sb.busy).toBe(false);
    expect(sb.counters.started).toBe(0);
    await until(() => !sa.busy, 'the view');
    const snap = sa.snapshot()!;
    expect(snap).toMatchObject({ meta: { index: 12 }, streamed: true });
    expect(snap.data.length).toBe(0);
    expect(gate.openViews).toBe(1);
    expect(a.engine.openViews).toBe(1);
    expect(sb.snapshot()).toBeUndefined(); // one view per node: still taken
    expect(sb.counters.started).toBe(0);
    // Reading a follower's chunks holds about two chunks and a part, never the whole encoding.
    let maxHeld = 0;
    const hold = gate.hold.bind(gate);
    gate.hold = (delta) => {
      hold(delta);
      maxHeld = Math.max(maxHeld, gate.heldBytes);
    };
    const chunks = await readAll(sa, ha, snap, 2);
    expect(chunks.length).toBeGreaterThan(4);
    expect(gate.openReaders).toBe(1);
    expect(maxHeld).toBeGreaterThan(0);
    // The chunks handed out (the Raft core's window, kept for a resend), the next one read ahead, the encoder's pending part (cut at a key: 40-byte values).
    expect(maxHeld).toBeLessThanOrEqual(64 * (window + 2) + 80);
    expect(maxHeld).toBeLessThan(joined(chunks).length / 2);
    // The follower installed it: the core no longer runs the transfer, so the view is closed and the slot free.
    sa.retain([{ to: 2, index: 12 }]);
    expect(sa.open).toBe(true);
    sa.retain([]);
    expect(sa.open).toBe(false);
    expect(gate.openViews).toBe(0);
    expect(gate.openReaders).toBe(0);
    expect(gate.heldBytes).toBe(0);
    await until(() => a.engine.openViews === 0, 'the view closed');
    expect(sb.snapshot()).toBeUndefined(); // the slot is free again
    expect(sb.busy).toBe(true);
    await until(() => !sb.busy, 'the second view');
    expect(sb.snapshot()?.streamed).toBe(true);
    sb.release();
    expect(gate.openViews).toBe(0);
    await until(() => b.engine.openViews === 0, 'the second view closed');
  });

  it('serves each follower the machine\'s own encoding chunk by chunk, with its checksum on the last; resends a chunk and restarts at 0 from the same view', async () => {
    const { storage, engine, sm } = await setup(20, 12);
    const h = host(engine, storage);
    const gate = new SnapshotGate(1);
    const sender = new SnapshotSender(storage, h, { gate, chunkBytes: 50, partBytes: 8 });
    expect(sender.snapshot()).toBeUndefined(); // opens a view
    expect(sender.busy).toBe(true);
    expect(sender.snapshot()).toBeUndefined(); // one at a time
    await until(() => !sender.busy, 'the view');
    const s = sender.snapshot()!;
    expect(s.meta).toEqual({ index: 12, term: 1, conf: CONF });
    expect(sender.counters).toMatchObject({ started: 1, produced: 1 });
    expect(h.made).toEqual([s]);
    expect(h.errors).toEqual([]);
    const want = sm.snapshot();
    const a = await readAll(sender, h, s, 2);
    expect(joined(a).equals(Buffer.from(want))).toBe(true);
    expect(a.slice(0, -1).every((c) => c.bytes.length === 50 && !c.last && c.crc === undefined)).toBe(true);
    expect(a.at(-1)!.crc).toBe(trailingCrc(want));
    // A second follower at the same time: its own encoder over the same view.
    const b = await readAll(sender, h, s, 3);
    expect(joined(b).equals(Buffer.from(want))).toBe(true);
    expect(gate.openReaders).toBe(2);
    // A lost chunk is asked for again at the same offset: the same bytes.
    const n = h.chunks.length;
    sender.read({ to: 2, meta: s.meta, offset: a.at(-1)!.offset });
    await until(() => h.chunks.length > n, 'the resend');
    expect(Buffer.from(h.chunks.at(-1)!.bytes).equals(Buffer.from(a.at(-1)!.bytes))).toBe(true);
    // A resend from as far back as the core's window (4 chunks, the follower's acknowledged offset
    // after a loss): served from the chunks kept, not by encoding again (the very same bytes object).
    const k = h.chunks.length;
    sender.read({ to: 2, meta: s.meta, offset: a.at(-4)!.offset });
    await until(() => h.chunks.length > k, 'the resend from the window');
    expect(h.chunks.at(-1)!.bytes).toBe(a.at(-4)!.bytes);
    // The follower starts over (it refused the snapshot, or restarted): the encoder restarts over the same view.
    const again = await readAll(sender, h, s, 2);
    expect(joined(again).equals(Buffer.from(want))).toBe(true);
    // Reads for another snapshot are stale: ignored.
    const m = h.chunks.length;
    sender.read({ to: 2, meta: { ...s.meta, index: 11 }, offset: 0 });
    await sleep(10);
    expect(h.chunks.length).toBe(m);
    sender.retain([{ to: 3, index: 12 }]); // follower 2 is done
    expect(gate.openReaders).toBe(1);
    sender.release(); // leadership lost
    expect(gate.openReaders).toBe(0);
    expect(gate.openViews).toBe(0);
    expect(gate.heldBytes).toBe(0);
    await until(() => engine.openViews === 0, 'the view closed');
    // A stored snapshot with data (installed from a leader) is sent as it is.
    const stored = new MemoryStorage(CONF);
    stored.applySnapshot({ meta: { index: 3, term: 1, conf: CONF }, data: new Uint8Array([9]) });
    expect(new SnapshotSender(stored, host(engine, stored)).snapshot()!.data).toEqual(new Uint8Array([9]));
  });

  it('counts the keys by a pass once meta\'s count did not match the records (deleted keys\' latests still in l/), or at once when the host says they may be', async () => {
    const storage = new MemoryStorage(CONF);
    storage.append(Array.from({ length: 20 }, (_, i) => entry(i + 1)));
    storage.createSnapshot(12, CONF, new Uint8Array(0));
    storage.compact(12);
    const engine = new MemoryEngine();
    const sm = new KvStateMachine();
    const rec = new StateRecorder(GROUP);
    sm.observe(rec);
    for (let i = 1; i <= 10; i++) sm.apply(i, 1000 + i, { type: 'put', key: `k${i}`, value: new Uint8Array(40).fill(i) });
    sm.apply(11, 1011, { type: 'delete', key: 'k3' });
    sm.apply(12, 1012, { type: 'delete', key: 'k7' });
    await engine.batch(rec.take(sm)!, { sync: true });
    // The layout from before deleted keys' latests had their own tag: every `t/` latest in `l/`.
    const prefix = `s/${GROUP.toString(16).padStart(8, '0')}/`;
    const ops: EngineOp[] = [];
    for (const [k, v] of await scanAll(engine, { prefix: `${prefix}t/` })) {
      const l = k.slice();
      l[prefix.length] = 0x6c;
      ops.push({ type: 'del', key: k }, { type: 'put', key: l, value: v });
    }
    expect(ops).toHaveLength(4);
    await engine.batch(ops, { sync: true });
    const want = Buffer.from(sm.snapshot());

    const h = host(engine, storage);
    const sender = new SnapshotSender(storage, h, { chunkBytes: 64, partBytes: 16, retryMs: 1 });
    sender.snapshot();
    await until(() => !sender.busy, 'the view');
    const s = sender.snapshot()!;
    // Meta counts 8 live keys, the records hold 10 keys: the encoding stops before its end (no checksum goes out).
    let offset = 0;
    for (;;) {
      const n = h.chunks.length;
      sender.read({ to: 2, meta: s.meta, offset });
      await until(() => h.chunks.length > n || h.errors.length > 0, `chunk at ${offset}`);
      if (h.errors.length > 0) break;
      expect(h.chunks.at(-1)!.last).toBe(false);
      offset += h.chunks.at(-1)!.bytes.length;
    }
    expect(h.errors[0]).toBeInstanceOf(SnapshotKeyCountError);
    expect(sender.open).toBe(false);
    // The next view counts by a pass: the machine's bytes.
    await sleep(5);
    sender.snapshot();
    await until(() => !sender.busy, 'the second view');
    const again = await readAll(sender, h, sender.snapshot()!, 2);
    expect(joined(again).equals(want)).toBe(true);
    sender.release();

    // A host that knows its records may hold such latests (its recorder's legacy count): a pass from the start.
    const h2 = host(engine, storage, { legacyLatests: () => true });
    const sender2 = new SnapshotSender(storage, h2, { chunkBytes: 64, partBytes: 16 });
    sender2.snapshot();
    await until(() => !sender2.busy, 'the view');
    expect(joined(await readAll(sender2, h2, sender2.snapshot()!, 3)).equals(want)).toBe(true);
    expect(h2.errors).toEqual([]);
    sender2.release();
    await until(() => engine.openViews === 0, 'the views closed');
  });

  it('retries later while the records have no meta (a replacement under way), and when the point read cannot be used', async () => {
    const { storage, engine } = await setup(20, 12);
    const meta = (await engine.get(`s/${GROUP.toString(16).padStart(8, '0')}/meta`))!;
    await engine.batch([{ type: 'del', key: `s/${GROUP.toString(16).padStart(8, '0')}/meta` }], { sync: true });
    let conf: ConfState | undefined;
    const gate = new SnapshotGate(1);
    const sender = new SnapshotSender(storage, host(engine, storage, { confAt: () => conf }), { retryMs: 20, gate });
    expect(sender.snapshot()).toBeUndefined();
    await until(() => !sender.busy, 'the attempt');
    expect(gate.openViews).toBe(0); // nothing usable: the view is closed at once
    expect(sender.snapshot()).toBeUndefined(); // within the retry delay: not started again
    expect(sender.counters.started).toBe(1);
    await engine.batch([{ type: 'put', key: `s/${GROUP.toString(16).padStart(8, '0')}/meta`, value: meta }], { sync: true });
    await sleep(25);
    expect(sender.snapshot()).toBeUndefined();
    await until(() => !sender.busy, 'the second attempt');
    expect(sender.snapshot()).toBeUndefined(); // the configuration at the records' index is unknown
    expect(sender.counters).toMatchObject({ started: 2, produced: 0 });
    conf = CONF;
    await sleep(25);
    sender.snapshot();
    await until(() => !sender.busy, 'the third attempt');
    expect(sender.snapshot()?.meta.index).toBe(12);
    sender.release();
    await until(() => engine.openViews === 0, 'the views closed');
  });

  it('closes the view once the log no longer holds the entry after it, when not asked for, and a silent follower\'s encoder', async () => {
    const { storage, engine } = await setup(30, 12);
    const gate = new SnapshotGate(1);
    const h = host(engine, storage);
    const sender = new SnapshotSender(storage, h, { idleMs: 30, gate, chunkBytes: 40 });
    sender.snapshot();
    await until(() => !sender.busy, 'the view');
    expect(sender.snapshot()).toBeDefined();
    await until(() => sender.counters.dropped === 1, 'the idle view closed', 500);
    expect(gate.openViews).toBe(0);
    sender.snapshot();
    await until(() => !sender.busy, 'a new view');
    const s = sender.snapshot()!;
    // A follower reads one chunk, then goes silent: its encoder is closed, then the view.
    const n = h.chunks.length;
    sender.read({ to: 2, meta: s.meta, offset: 0 });
    await until(() => h.chunks.length > n, 'the first chunk');
    expect(gate.openReaders).toBe(1);
    expect(gate.heldBytes).toBeGreaterThan(0);
    await until(() => gate.openReaders === 0 && gate.openViews === 0, 'the silent follower released', 500);
    expect(gate.heldBytes).toBe(0);
    sender.snapshot();
    await until(() => !sender.busy, 'a third view');
    expect(sender.snapshot()).toBeDefined();
    storage.createSnapshot(20, CONF, new Uint8Array(0));
    storage.compact(20); // the records are still at 12: unusable now
    expect(sender.snapshot()).toBeUndefined();
    await until(() => !sender.busy, 'the attempt');
    expect(sender.snapshot()).toBeUndefined();
    sender.release();
    expect(gate.openViews).toBe(0);
    await until(() => engine.openViews === 0, 'every view closed');
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
