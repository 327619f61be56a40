/**
 * Lazy commit notices on a node (NodeOptions.lazyCommit, default on): followers learn a commit
 * index with the leader's next append, and when the leader's node has nothing else to do its
 * driver sends the held-back indexes at once (`Raft.flushCommit`). So a lone write reaches the
 * followers' state machines well before the next tick's heartbeat, on a virtual clock.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DATA_GROUP, KvNode, META_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';
import { ManualScheduler } from '../support/manual-scheduler.js';

const TICK_MS = 100;
let nodes: KvNode[] = [];
afterEach(async () => {
  for (const n of nodes) await n.stop();
  nodes = [];
});

async function cluster(s: ManualScheduler): Promise<KvNode[]> {
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7400 + i}`] as [number, string]));
  for (const id of [1, 2, 3]) {
    nodes.push(
      await KvNode.open(
        { id, members, tickMs: TICK_MS, scheduler: s, seed: 11, log: silentLogger(), onFatal: (e) => { throw e; } },
        new MemoryEngine(),
        hub.transport(id),
      ),
    );
  }
  for (const n of nodes) n.start();
  for (let i = 0; i < 600; i++) {
    const ledHere = (g: number) => nodes.some((n) => n.replica(g)?.isLeader);
    if (ledHere(META_GROUP) && ledHere(DATA_GROUP) && nodes.every((n) => n.replica(DATA_GROUP)?.leader)) return nodes;
    await s.advance(10);
  }
  throw new Error('no leaders after 6 virtual seconds');
}

describe('commit notices on a node', () => {
  it('a lone write is applied on every follower before the next tick', async () => {
    const s = new ManualScheduler();
    const ns = await cluster(s);
    for (let round = 0; round < 3; round++) {
      // Start just after a tick, so the next heartbeat is a whole tick away.
      const sinceTick = (s.now() - 1_000_000) % TICK_MS;
      await s.advance(TICK_MS - sinceTick + 1);
      const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
      const t0 = s.now();
      let done = false;
      const put = leader.put({ key: `/lone/${round}`, value: new Uint8Array([round]) }, { deadlineMs: t0 + 5_000 }).finally(() => (done = true));
      while (!done && s.now() - t0 < TICK_MS - 20) await s.advance(1);
      const res = await put;
      const target = leader.replica(DATA_GROUP)!.appliedIndex;
      while (ns.some((n) => n.replica(DATA_GROUP)!.appliedIndex < target) && s.now() - t0 < TICK_MS - 10) await s.advance(1);
      expect(s.now() - t0).toBeLessThan(TICK_MS - 10);
      for (const n of ns) {
        expect(n.replica(DATA_GROUP)!.appliedIndex).toBeGreaterThanOrEqual(target);
        expect(n.replica(DATA_GROUP)!.readValue(`/lone/${round}`)?.version).toBe(res.version);
      }
    }
  });
});
