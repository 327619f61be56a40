/**
 * The sync pace (NodeOptions.syncPaceMs, with overlapped rounds): a busy node starts its fsyncs no
 * more often than once per pace, taking what arrives meanwhile into the held round, and still
 * answers every write; an idle node's first write is not held.
 */
import { describe, expect, it } from 'vitest';
import { KvNode, DATA_GROUP } from '../../src/node/kv-node.js';
import type { NodeOptions } from '../../src/node/node-options.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine, type EngineBatchOptions, type EngineOp } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';

const enc = (s: string) => new TextEncoder().encode(s);

/** A MemoryEngine that notes when each synced batch was handed to it (Date.now). */
class TimedEngine extends MemoryEngine {
  readonly syncedAt: number[] = [];
  override batch(ops: readonly EngineOp[], options: EngineBatchOptions): Promise<void> {
    if (options.sync && ops.length > 0) this.syncedAt.push(Date.now());
    return super.batch(ops, options);
  }
}

/** A 3-node cluster on TimedEngines (fsync 1 ms) with the given pace and tick; returns the nodes and engines, leader first. */
async function cluster(syncPaceMs: number, tickMs = 10, extra: Partial<NodeOptions> = {}): Promise<{ nodes: KvNode[]; engines: TimedEngine[] }> {
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7200 + i}`] as [number, string]));
  const nodes: KvNode[] = [];
  const engines: TimedEngine[] = [];
  for (const id of [1, 2, 3]) {
    const engine = new TimedEngine({ latencyMs: 1 });
    const node = await KvNode.open({ id, members, tickMs, overlapRounds: true, syncPaceMs, ...extra, log: silentLogger(), onFatal: (e) => { throw e; } }, engine, hub.transport(id));
    node.start();
    nodes.push(node);
    engines.push(engine);
  }
  for (const deadline = Date.now() + 10_000; !nodes.some((n) => n.replica(DATA_GROUP)?.isLeader); ) {
    if (Date.now() > deadline) throw new Error('no leader');
    await new Promise((r) => setTimeout(r, 5));
  }
  const i = nodes.findIndex((n) => n.replica(DATA_GROUP)?.isLeader);
  return { nodes: [nodes[i]!, ...nodes.filter((_, j) => j !== i)], engines: [engines[i]!, ...engines.filter((_, j) => j !== i)] };
}

/** 16 writers putting for `ms` through `leader`; resolves with the number of acknowledged puts. */
async function load(leader: KvNode, ms: number): Promise<number> {
  let acked = 0;
  const end = Date.now() + ms;
  await Promise.all(
    Array.from({ length: 16 }, async (_, w) => {
      for (let n = 0; Date.now() < end; n++) {
        await leader.put({ key: `/p/${w}/${n % 50}`, value: enc(`${w}-${n}`) }, { deadlineMs: Date.now() + 5000 });
        acked++;
      }
    }),
  );
  return acked;
}

describe('sync pace', () => {
  it('a busy node starts its fsyncs at least a pace apart and answers every write', async () => {
    const PACE = 25;
    const { nodes, engines } = await cluster(PACE, 50); // the pace is capped at a tenth of the election timeout (500 ms)
    try {
      const from = engines[0]!.syncedAt.length;
      const acked = await load(nodes[0]!, 600);
      expect(acked).toBeGreaterThan(20);
      const starts = engines[0]!.syncedAt.slice(from);
      expect(starts.length).toBeGreaterThan(3);
      // Timers fire no sooner than asked; Date.now's millisecond rounding may take one off.
      for (let i = 1; i < starts.length; i++) expect(starts[i]! - starts[i - 1]!).toBeGreaterThanOrEqual(PACE - 1);
      const got = await nodes[0]!.get({ key: '/p/0/0', consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
      expect(got.found).toBe(true);
    } finally {
      for (const n of nodes) await n.stop();
    }
  });

  it('without a pace the same load syncs more often than the pace would allow (the test above can fail)', async () => {
    const { nodes, engines } = await cluster(0);
    try {
      const from = engines[0]!.syncedAt.length;
      await load(nodes[0]!, 600);
      const starts = engines[0]!.syncedAt.slice(from);
      const gaps = starts.slice(1).map((t, i) => t - starts[i]!);
      expect(gaps.some((g) => g < 24)).toBe(true);
    } finally {
      for (const n of nodes) await n.stop();
    }
  });

  it('an idle paced node writes what no round flushes (a compaction after the last put): whenWritten resolves on every node', async () => {
    // Each put's apply round needs no fsync; a log compaction is staged after a round's fsync
    // (when it advances), so only a later round's flush, or an idle node's store, writes it.
    const { nodes } = await cluster(5, 10, { snapshotEveryEntries: 2, keepEntriesAfterSnapshot: 0 });
    try {
      for (let n = 0; n < 6; n++) {
        await nodes[0]!.put({ key: `/c/${n}`, value: enc(`v${n}`) }, { deadlineMs: Date.now() + 5000 });
        // Before the fix, a paced node kept writing only flushed units while idle: this hung.
        await Promise.all(nodes.map((node) => node.whenWritten()));
      }
      const got = await nodes[0]!.get({ key: '/c/5', consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
      expect(got.found).toBe(true);
    } finally {
      for (const n of nodes) await n.stop();
    }
  });

  it('an idle node writes a lone put at once (not held for a pace)', async () => {
    const PACE = 200;
    const { nodes, engines } = await cluster(PACE, 100); // elections (1 s) outlast a few held rounds
    try {
      const leader = nodes[0]!;
      const synced = engines[0]!.syncedAt;
      await leader.put({ key: '/lone/1', value: enc('a') }, { deadlineMs: Date.now() + 10_000 }); // may wait for the pace after start-up
      // Idle: wait until the leader's last fsync started more than a pace ago.
      for (const deadline = Date.now() + 15_000; Date.now() - (synced.at(-1) ?? 0) <= 2 * PACE; ) {
        if (Date.now() > deadline) throw new Error('the leader never went idle');
        await new Promise((r) => setTimeout(r, 50));
      }
      const before = synced.length;
      const t0 = Date.now();
      await leader.put({ key: '/lone/2', value: enc('b') }, { deadlineMs: Date.now() + 10_000 });
      expect(synced.length).toBeGreaterThan(before);
      expect(synced[before]! - t0).toBeLessThan(PACE / 2); // its fsync was not held for the pace
    } finally {
      for (const n of nodes) await n.stop();
    }
  }, 30_000);
});

describe('gathering a turn (NodeOptions.gatherTurn)', () => {
  it('a busy node answers every write, and once idle writes what no round flushes (whenWritten resolves on every node)', async () => {
    // A compaction every 2 entries: units staged after a round's fsync that only an idle store writes.
    const { nodes } = await cluster(0, 10, { gatherTurn: true, snapshotEveryEntries: 2, keepEntriesAfterSnapshot: 0 });
    try {
      const acked = await load(nodes[0]!, 400);
      expect(acked).toBeGreaterThan(20);
      for (let n = 0; n < 4; n++) {
        await nodes[0]!.put({ key: `/g/${n}`, value: enc(`v${n}`) }, { deadlineMs: Date.now() + 5000 });
        // Held rounds make the store write only flushed units; an idle node must turn that off again or this hangs.
        await Promise.all(nodes.map((node) => node.whenWritten()));
      }
      for (const w of [0, 15]) {
        const got = await nodes[0]!.get({ key: `/p/${w}/0`, consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
        expect(got.found).toBe(true);
      }
      const got = await nodes[0]!.get({ key: '/g/3', consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
      expect(new TextDecoder().decode(got.value)).toBe('v3');
    } finally {
      for (const n of nodes) await n.stop();
    }
  });
});

describe('gathering several turns (NodeOptions.gatherTurns)', () => {
  it('a busy node answers every write in order, and once idle writes what no round flushes', async () => {
    const { nodes, engines } = await cluster(0, 10, { gatherTurn: true, gatherTurns: 4, snapshotEveryEntries: 2, keepEntriesAfterSnapshot: 0 });
    try {
      const from = engines[0]!.syncedAt.length;
      const acked = await load(nodes[0]!, 400);
      expect(acked).toBeGreaterThan(20);
      expect(engines[0]!.syncedAt.length).toBeGreaterThan(from); // the held rounds were written
      // Each acknowledged put of a key is readable at a version above the previous one's (held rounds keep their order).
      let last = 0;
      for (let n = 0; n < 5; n++) {
        const r = await nodes[0]!.put({ key: '/order', value: enc(`v${n}`) }, { deadlineMs: Date.now() + 5000 });
        expect(r.version).toBeGreaterThan(last);
        last = r.version;
        await Promise.all(nodes.map((node) => node.whenWritten())); // idle: the store writes every unit again
      }
      const got = await nodes[0]!.get({ key: '/order', consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
      expect(new TextDecoder().decode(got.value)).toBe('v4');
      expect(got.version).toBe(last);
    } finally {
      for (const n of nodes) await n.stop();
    }
  });
});
