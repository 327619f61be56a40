/**
 * Bounded memory (issue 17): the node's memory budget refuses writes that add data with a clear
 * MEMORY_BUDGET error once its accounted memory is spent, while reads, deletes and leadership carry
 * on; the in-memory Raft log is bounded in bytes (snapshot by bytes, tail kept by bytes); and a
 * retention compaction backlog is worked off in bounded steps.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { DATA_GROUP, KvNode, META_GROUP, type NodeOptions } from '../../src/node/kv-node.js';
import { addsData, budgetShortfall, indexBytes, INDEX_BYTES_PER_KEY, INDEX_BYTES_PER_VERSION, KEYLESS_WRITE_BYTES, LIVE_KEY_BYTES, MemoryBudget, MemoryBudgetError, type MemorySample } from '../../src/node/memory-budget.js';
import { classify } from '../../src/coordinator/op-status.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';
import { preferredLeaderOf } from '../support/node-trio.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => (b === undefined ? undefined : new TextDecoder().decode(b));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const deadline = (ms = 5000) => ({ deadlineMs: Date.now() + ms });

let open: KvNode[] = [];
afterEach(async () => {
  for (const n of open) await n.stop().catch(() => {});
  open = [];
});

/** Three in-process nodes; `retention` (when given) is read by the nodes each time they check retention. */
async function cluster(extra: Partial<NodeOptions>, retention?: () => number): Promise<KvNode[]> {
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7300 + i}`] as [number, string]));
  const optionsOf = (id: number): NodeOptions => {
    const o: NodeOptions = { id, members, tickMs: 5, log: silentLogger(), onFatal: () => {}, ...extra };
    if (retention) Object.defineProperty(o, 'retentionMs', { get: retention, enumerable: true });
    return o;
  };
  const nodes = await Promise.all([1, 2, 3].map((id) => KvNode.open(optionsOf(id), new MemoryEngine(), hub.transport(id))));
  open.push(...nodes);
  for (const n of nodes) n.start();
  return nodes;
}

/** The data group's leader once it is where the map prefers it (it stays there for the test: see preferredLeaderOf) and hosts the metadata group. */
async function leaderOf(nodes: KvNode[]): Promise<KvNode> {
  for (;;) {
    const l = await preferredLeaderOf(nodes);
    if (l.replica(META_GROUP) !== undefined) return l;
    await sleep(5);
  }
}

async function until(what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('MemoryBudget', () => {
  const sampleOf = (keys: number, extra: Partial<MemorySample> = {}): MemorySample => ({
    replicas: [{ keys, writes: keys, historyBytes: 0, logBytes: 0 }],
    valueCacheBytes: 0,
    heapUsed: 0,
    heapLimit: 0,
    ...extra,
  });

  it('refuses client writes that add data once the accounted bytes reach the budget, and nothing else', () => {
    let keys = 10;
    const b = new MemoryBudget(100 * INDEX_BYTES_PER_KEY, () => sampleOf(keys));
    b.refresh();
    expect(b.check({ type: 'put', key: '/a', value: enc('x') }, 'client')).toBeUndefined();
    keys = 100;
    b.refresh();
    expect(b.exhausted).toBe(true);
    const err = b.check({ type: 'put', key: '/a', value: enc('x') }, 'client');
    expect(err).toBeInstanceOf(MemoryBudgetError);
    expect(err!.message).toMatch(/^MEMORY_BUDGET: .*index 0\.0 MiB/);
    expect(b.check({ type: 'txn', compares: [], writes: [{ type: 'put', key: '/a', value: enc('x') }] }, 'client')).toBeInstanceOf(MemoryBudgetError);
    expect(b.check({ type: 'triggerPut', key: '/a', value: enc('x') }, 'client')).toBeInstanceOf(MemoryBudgetError);
    // Deletes free memory, system writes (compaction, the map, cursors) keep the cluster working.
    expect(b.check({ type: 'delete', key: '/a' }, 'client')).toBeUndefined();
    expect(b.check({ type: 'txn', compares: [], writes: [{ type: 'delete', key: '/a' }] }, 'client')).toBeUndefined();
    expect(b.check({ type: 'put', key: '/a', value: enc('x') }, 'system')).toBeUndefined();
    expect(b.check({ type: 'compact', revision: 3 }, 'system')).toBeUndefined();
    expect(b.refusals).toBe(3);
    keys = 50;
    b.refresh();
    expect(b.exhausted).toBe(false);
    expect(b.accounted.index).toBe(50 * INDEX_BYTES_PER_KEY);
  });

  it('counts the hot-index cache with the other parts, and names it when the budget is spent', () => {
    const b = new MemoryBudget(10 * INDEX_BYTES_PER_KEY, () => sampleOf(5, { indexCacheBytes: 6 * INDEX_BYTES_PER_KEY }));
    b.refresh();
    expect(b.accounted).toMatchObject({ index: 5 * INDEX_BYTES_PER_KEY, indexCache: 6 * INDEX_BYTES_PER_KEY, total: 11 * INDEX_BYTES_PER_KEY });
    expect(b.exhausted).toBe(true);
    expect(b.check({ type: 'put', key: '/a', value: enc('x') }, 'client')?.message).toMatch(/index cache 0\.0 MiB/);
  });

  it('refuses when the V8 heap is nearly full, even with no budget', () => {
    const b = new MemoryBudget(0, () => sampleOf(1, { heapUsed: 90, heapLimit: 100 }));
    b.refresh();
    expect(b.check({ type: 'put', key: '/a', value: enc('x') }, 'client')?.message).toMatch(/V8 heap is nearly full/);
  });

  it('accounts retained versions beyond one per key', () => {
    expect(indexBytes({ keys: 10, writes: 10, historyBytes: 0, logBytes: 0 })).toBe(10 * INDEX_BYTES_PER_KEY);
    expect(indexBytes({ keys: 10, writes: 30, historyBytes: 0, logBytes: 0 })).toBeGreaterThan(10 * INDEX_BYTES_PER_KEY);
    expect(indexBytes({ keys: 0, writes: 0, historyBytes: 0, logBytes: 0, keyFilterBytes: 5120 })).toBe(5120); // the Bloom filter of user keys (--index-drop-cold)
    expect(indexBytes({ keys: 0, writes: 0, historyBytes: 0, logBytes: 0, reservedLiveKeys: 3 })).toBe(3 * LIVE_KEY_BYTES); // reserved keys held by the live-key set alone
    expect(indexBytes({ keys: 0, writes: 4, historyBytes: 0, logBytes: 0 })).toBe(4 * INDEX_BYTES_PER_VERSION); // retained writes beyond the version lists' keys
    // Writes of keys dropped from the heap (indexDropCold) are keyless write-log entries until compacted.
    expect(indexBytes({ keys: 0, writes: 4, keylessWrites: 4, historyBytes: 0, logBytes: 0 })).toBe(4 * KEYLESS_WRITE_BYTES);
    expect(indexBytes({ keys: 2, writes: 7, keylessWrites: 4, historyBytes: 0, logBytes: 0 })).toBe(2 * INDEX_BYTES_PER_KEY + INDEX_BYTES_PER_VERSION + 4 * KEYLESS_WRITE_BYTES);
    expect(addsData({ type: 'noop' })).toBe(false);
  });

  it('is RESOURCE_EXHAUSTED on the wire, not marked retry-safe', () => {
    const s = classify(new MemoryBudgetError('MEMORY_BUDGET: spent'));
    expect(s?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(s?.fields.retrySafe).toBeUndefined();
  });
});

describe('a node over its memory budget', () => {
  it('refuses puts with MEMORY_BUDGET and keeps serving reads and deletes without losing its leadership', async () => {
    // 200 keys of index (plus the metadata group's few) fill this budget; the value and index caches
    // are off. Keys keep their version lists (no indexDropCold): a dropped key is accounted at
    // KEYLESS_WRITE_BYTES, so by default thousands of keys would fit (the next describe covers that).
    const nodes = await cluster({ memoryBudgetBytes: 200 * INDEX_BYTES_PER_KEY, valueCacheBytes: 0, indexCacheBytes: 0, snapshotEveryEntries: 1_000_000, indexDropCold: false });
    const l = await leaderOf(nodes);
    const term = l.replica(DATA_GROUP)!.term;
    let refused: unknown;
    let written = 0;
    for (let i = 0; i < 2_000 && refused === undefined; i++) {
      try {
        await l.put({ key: `/m/${String(i).padStart(5, '0')}`, value: enc(`v${i}`) }, deadline());
        written++;
      } catch (e) {
        refused = e;
      }
      if (i % 50 === 49) await sleep(300); // the budget is sampled every 250 ms
    }
    expect(refused).toBeInstanceOf(MemoryBudgetError);
    expect(String((refused as Error).message)).toMatch(/^MEMORY_BUDGET: the node's memory budget/);
    expect(written).toBeGreaterThan(100);
    expect(written).toBeLessThan(400);
    expect(l.memoryBudget.refusals).toBeGreaterThan(0);
    // Reads and deletes still work; the leader kept its term.
    expect(dec((await l.get({ key: '/m/00001', consistency: 'linearizable' }, deadline())).value)).toBe('v1');
    await l.delete({ key: '/m/00001' }, deadline());
    expect((await l.get({ key: '/m/00001', consistency: 'linearizable' }, deadline())).value).toBeUndefined();
    await expect(l.put({ key: '/m/new', value: enc('x') }, deadline())).rejects.toBeInstanceOf(MemoryBudgetError);
    expect(l.replica(DATA_GROUP)!.isLeader).toBe(true);
    expect(l.replica(DATA_GROUP)!.term).toBe(term);
  });
});

describe('the index of a node that drops cold keys (indexDropCold, the default)', () => {
  it('counts a key that left the heap at a keyless write-log entry until compacted, then only reserved live keys and the filter', async () => {
    const nodes = await cluster({ snapshotEveryEntries: 1_000_000 });
    const l = await leaderOf(nodes);
    const r = l.replica(DATA_GROUP)!;
    const sm = r.internalsForTests().sm;
    const N = 100;
    for (let i = 0; i < N; i++) await l.put({ key: `/cold/${String(i).padStart(4, '0')}`, value: enc(`v${i}`) }, deadline());
    // Three reserved keys, as the cluster writes them (cursors, dead letters): they stay in the live-key set.
    for (let i = 0; i < 3; i++) await l.execute(DATA_GROUP, { type: 'put', key: `/_sys/budget-test/${i}`, value: enc('r') }, deadline(), 'system');
    await until('the cold keys left the heap', () => sm.droppedKeys >= N);
    const before = r.memory;
    expect(before.reservedLiveKeys).toBe(sm.reservedKeyCount); // the live-key set holds reserved keys only
    expect(before.reservedLiveKeys).toBeGreaterThanOrEqual(3);
    expect(before.keys).toBeLessThan(N / 10); // version lists: a few reserved keys, not the user keys
    // Each user key is still counted, at a keyless write-log entry: far below a key with its version list.
    expect(before.keylessWrites).toBeGreaterThanOrEqual(N);
    expect(indexBytes(before)).toBeGreaterThanOrEqual(N * KEYLESS_WRITE_BYTES);
    expect(indexBytes(before) - before.keyFilterBytes! - before.keys * INDEX_BYTES_PER_KEY).toBeLessThan(N * INDEX_BYTES_PER_VERSION * 0.5); // the filter: a fixed 8 KiB at this size
    await r.propose({ type: 'compact', revision: r.revision }, 'system');
    await until('the compaction applied', () => sm.compactRevision > 0 && r.memory.writes === 0);
    // Compacted: the user keys cost their share of the Bloom filter; reserved live keys LIVE_KEY_BYTES each.
    const after = r.memory;
    expect(indexBytes(after)).toBeLessThanOrEqual(after.keyFilterBytes! + after.keys * INDEX_BYTES_PER_KEY + after.reservedLiveKeys! * LIVE_KEY_BYTES);
    expect(after.keys).toBeLessThan(N / 10);
    expect(indexBytes(after)).toBeGreaterThanOrEqual(after.reservedLiveKeys! * LIVE_KEY_BYTES);
  });
});

describe('the in-memory Raft log is bounded in bytes', () => {
  it('compacts after snapshotEveryBytes and keeps at most keepBytesAfterSnapshot behind the snapshot', async () => {
    const nodes = await cluster({ snapshotEveryEntries: 1_000_000, keepEntriesAfterSnapshot: 1_000_000, snapshotEveryBytes: 64 * 1024, keepBytesAfterSnapshot: 16 * 1024 });
    const l = await leaderOf(nodes);
    const big = 'x'.repeat(4096);
    for (let i = 0; i < 100; i++) await l.put({ key: `/log/${i}`, value: enc(big) }, deadline());
    await until('every replica applied', () => nodes.every((n) => n.replica(DATA_GROUP)!.revision >= 100));
    for (const n of nodes) {
      const r = n.replica(DATA_GROUP)!;
      const s = r.status();
      // 100 entries of ~4 KiB went through: without the byte bound all 100 would be held.
      expect(s.lastIndex - s.firstIndex + 1).toBeLessThan(40);
      expect(r.memory.logBytes).toBeLessThan(64 * 1024 + 16 * 1024 + 8 * 1024);
    }
  });
});

describe('retention compaction in bounded steps', () => {
  it('works a backlog off in steps of at most compactRevisionsPerStep revisions', async () => {
    let retentionMs = 0;
    // Every step a leader proposes is logged with the revision it compacts to (and the one due).
    const steps: Array<{ group: number; revision: number; due: number }> = [];
    const log = silentLogger();
    const info = log.info.bind(log);
    log.info = ((obj: unknown, msg?: string) => {
      const step = obj as { group: number; revision: number; due: number };
      if (msg === 'compacted versions older than the retention window' && step.group === DATA_GROUP) steps.push(step);
      return info(obj as object, msg);
    }) as typeof log.info;
    const nodes = await cluster({ log, retentionCheckMs: 20, compactRevisionsPerStep: 50, snapshotEveryEntries: 1_000_000 }, () => retentionMs);
    const l = await leaderOf(nodes);
    // Write a backlog with retention off, then turn it on (a lowered retention, or a restart after a pause).
    for (let i = 0; i < 300; i++) await l.put({ key: `/c/${i % 7}`, value: enc(`v${i}`) }, deadline());
    const r = l.replica(DATA_GROUP)!;
    expect(r.compactRevision).toBe(0);
    retentionMs = 1;
    await until('the backlog compacted', () => r.compactRevision >= 290);
    // At least six steps of at most 50 revisions each, each from where the previous one ended.
    expect(steps.length).toBeGreaterThanOrEqual(6);
    let at = 0;
    for (const s of steps) {
      expect(s.revision - at).toBeGreaterThan(0);
      expect(s.revision - at).toBeLessThanOrEqual(50);
      at = s.revision;
    }
    expect(steps[0]!.due).toBeGreaterThan(250); // the whole backlog was due at once
    // The newest version of every key is still readable.
    expect(dec((await l.get({ key: '/c/6', consistency: 'linearizable' }, deadline())).value)).toBe('v293');
  });

  it('bounds a step by writes too: txns of many puts are compacted at most compactWritesPerStep writes a step, and a revision larger than the bound in a step of its own', async () => {
    let retentionMs = 0;
    const steps: Array<{ group: number; revision: number; due: number }> = [];
    const log = silentLogger();
    const info = log.info.bind(log);
    log.info = ((obj: unknown, msg?: string) => {
      const step = obj as { group: number; revision: number; due: number };
      if (msg === 'compacted versions older than the retention window' && step.group === DATA_GROUP) steps.push(step);
      return info(obj as object, msg);
    }) as typeof log.info;
    const nodes = await cluster({ log, retentionCheckMs: 20, compactWritesPerStep: 45, snapshotEveryEntries: 1_000_000 }, () => retentionMs);
    const l = await leaderOf(nodes);
    // Writes per revision: txns of 10 puts, two txns of 60 (over the bound), then single puts.
    const writesAt = new Map<number, number>();
    const txn = async (n: number, round: number) => {
      const writes = Array.from({ length: n }, (_, j) => ({ type: 'put' as const, key: `/t/${j}`, value: enc(`r${round}`) }));
      const res = await l.txn({ compares: [], writes }, deadline());
      writesAt.set(res.revision, n);
    };
    for (let i = 0; i < 20; i++) await txn(10, i);
    await txn(60, 100);
    await txn(60, 101);
    for (let i = 0; i < 20; i++) await txn(1, 200 + i);
    const r = l.replica(DATA_GROUP)!;
    const last = r.revision;
    expect(r.compactRevision).toBe(0);
    retentionMs = 1;
    await until('the backlog compacted', () => r.compactRevision >= last - 5);
    let at = 0;
    let writesTotal = 0;
    for (const s of steps) {
      let writes = 0;
      for (let rev = at + 1; rev <= s.revision; rev++) writes += writesAt.get(rev) ?? 0;
      expect(s.revision).toBeGreaterThan(at);
      // At most the bound, unless the step is one revision that alone holds more.
      if (s.revision - at > 1) expect(writes, `step to ${s.revision}`).toBeLessThanOrEqual(45);
      writesTotal += writes;
      at = s.revision;
    }
    expect(steps.filter((s, i) => (writesAt.get(s.revision) ?? 0) === 60 && s.revision - (steps[i - 1]?.revision ?? 0) === 1)).toHaveLength(2); // each 60-write txn alone
    expect(steps.length).toBeGreaterThanOrEqual(Math.ceil(200 / 45) + 2);
    expect(writesTotal).toBeGreaterThan(300);
    expect(dec((await l.get({ key: '/t/59', consistency: 'linearizable' }, deadline())).value)).toBe('r101');
    expect(dec((await l.get({ key: '/t/0', consistency: 'linearizable' }, deadline())).value)).toBe('r219');
  });
});

describe('budgetShortfall', () => {
  const MiB = 1024 * 1024;
  // kvd's defaults: value cache 64, index cache 32, a shard's history 64 and log 64 + 16 MiB.
  const parts = { valueCache: 64 * MiB, indexCache: 32 * MiB, history: 64 * MiB, raftLog: 80 * MiB };
  it('names what a budget lacks to hold the caches and one replica\'s history and log at their bounds', () => {
    expect(budgetShortfall(96 * MiB, parts)).toBe(144 * MiB);
    expect(budgetShortfall(96 * MiB, { ...parts, valueCache: 16 * MiB, indexCache: 8 * MiB })).toBe(72 * MiB);
    expect(budgetShortfall(240 * MiB, parts)).toBe(0);
    expect(budgetShortfall(2_400 * MiB, parts)).toBe(0); // the default budget on this machine's 4 GiB heap
  });
});

