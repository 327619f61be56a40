/**
 * The sync contract at the storage seam: every node's engine drops all writes not yet synced at
 * a simulated power cut of the whole cluster; after recovery no acknowledged write is missing.
 * Run with one ready round at a time and with overlapped rounds (NodeOptions.overlapRounds: the
 * cut may land with a round staged, its appends sent and its entries applied, but not synced),
 * also with a sync pace (NodeOptions.syncPaceMs: the cut may land while a staged round is held) and
 * gathering a turn (NodeOptions.gatherTurn: held for one scheduler turn after each fsync), and
 * gathering up to 4 turns (NodeOptions.gatherTurns: held while each turn stages more).
 */
import { describe, expect, it } from 'vitest';
import { KvNode, DATA_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);

/** Fsynced rounds staged while another round synced, across every node opened (overlapped rounds happened). */
let overlappedRounds = 0;

async function openCluster(engines: MemoryEngine[], overlapRounds: boolean, syncPaceMs: number, gatherTurn: boolean, gatherTurns = 1): Promise<KvNode[]> {
  const hub = new LoopbackHub();
  const members = new Map(engines.map((_, i) => [i + 1, `127.0.0.1:${7100 + i + 1}`] as [number, string]));
  const nodes: KvNode[] = [];
  for (let i = 0; i < engines.length; i++) {
    const node = await KvNode.open(
      { id: i + 1, members, tickMs: 5, overlapRounds, syncPaceMs, gatherTurn, gatherTurns, log: silentLogger(), onFatal: () => {} },
      engines[i]!,
      hub.transport(i + 1),
    );
    node.observer = { readyBatch: (_groups, _entries, _ms, overlapped) => void (overlapped && overlappedRounds++) };
    node.start();
    nodes.push(node);
  }
  return nodes;
}

async function leaderOf(nodes: KvNode[]): Promise<KvNode> {
  for (;;) {
    const l = nodes.find((n) => n.replica(DATA_GROUP)?.isLeader);
    if (l) return l;
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe.each([
  ['one round at a time', false, 0, false, 1],
  ['overlapped rounds', true, 0, false, 1],
  ['overlapped rounds, gathering a turn', true, 0, true, 1],
  ['overlapped rounds, gathering up to 4 turns', true, 0, true, 4],
  ['overlapped rounds, 3 ms sync pace', true, 3, false, 1],
])('durability across a whole-cluster power cut (%s)', (_mode, overlap, pace, gather, turns) => {
  for (const round of [1, 2, 3]) {
    it(`loses no acknowledged write (round ${round})`, async () => {
      // Overlapped modes: a 4 ms sync, so that puts reliably arrive while a round syncs (the mode is exercised even on a loaded machine).
      let engines = [1, 2, 3].map(() => new MemoryEngine({ latencyMs: overlap ? 4 : 1 }));
      let nodes = await openCluster(engines, overlap, pace, gather, turns);
      const acked = new Map<string, { value: string; version: number }>();
      let stop = false;
      const writer = async (w: number) => {
        for (let n = 0; !stop; n++) {
          const key = `/k/${w}/${n % 40}`;
          const value = `${round}-${w}-${n}`;
          try {
            const leader = await leaderOf(nodes);
            const r = await leader.put({ key, value: enc(value) }, { deadlineMs: Date.now() + 2000 });
            if (!stop) acked.set(key, { value, version: r.version });
          } catch {
            // a leader change or the crash: not acknowledged, try again
            await new Promise((r) => setTimeout(r, 5));
          }
        }
      };
      const writers = Array.from({ length: 8 }, (_, w) => writer(w));
      // Cut the power once a round-dependent number of writes has been acknowledged.
      const waitUntil = Date.now() + 20_000;
      while (acked.size < 30 * round && Date.now() < waitUntil) await new Promise((r) => setTimeout(r, 1));
      stop = true;
      const snapshotOfAcked = new Map(acked);
      engines = engines.map((e) => e.crash(0)); // every unsynced write is gone
      await Promise.allSettled(writers);
      for (const node of nodes) await node.stop().catch(() => {});
      if (!overlap) expect(overlappedRounds).toBe(0);

      nodes = await openCluster(engines, overlap, pace, gather, turns);
      const l2 = await leaderOf(nodes);
      for (const [key, { value, version }] of snapshotOfAcked) {
        const g = await l2.get({ key, consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
        expect(g.found, key).toBe(true);
        // A later (unacknowledged but durable) write may have replaced it; an older one never.
        expect(g.version, key).toBeGreaterThanOrEqual(version);
        if (g.version === version) expect(dec(g.value)).toBe(value);
      }
      expect(snapshotOfAcked.size).toBeGreaterThanOrEqual(30 * round);
      for (const node of nodes) await node.stop();
    });
  }

  it(overlap ? 'staged rounds while others synced (the mode was exercised)' : 'staged no round while another synced', () => {
    if (overlap) expect(overlappedRounds).toBeGreaterThan(0);
    else expect(overlappedRounds).toBe(0);
    overlappedRounds = 0;
  });
});
