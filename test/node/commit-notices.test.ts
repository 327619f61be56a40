/**
 * Lazy commit notices on a node (NodeOptions.lazyCommit, default on): followers learn a commit
 * index with the leader's next append, and when the leader's node has nothing else to do its
 * driver sends the held-back indexes after NodeOptions.commitNoticeDelayMs (`Raft.flushCommit`),
 * unless a next write's append carried them first. So a lone write reaches the followers' state
 * machines well before the next tick's heartbeat, on a virtual clock, and back-to-back lone writes
 * need no commit-only appends.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DATA_GROUP, KvNode, META_GROUP, type NodeOptions } from '../../src/node/kv-node.js';
import { MessageType, type Message } from '../../src/raft/index.js';
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

async function cluster(s: ManualScheduler, extra: Partial<NodeOptions> = {}, hub = new LoopbackHub()): Promise<KvNode[]> {
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7400 + i}`] as [number, string]));
  for (const id of [1, 2, 3]) {
    nodes.push(
      await KvNode.open(
        { id, members, tickMs: TICK_MS, scheduler: s, seed: 11, log: silentLogger(), onFatal: (e) => { throw e; }, ...extra },
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

  /** Commit-only appends (no entries) of the data group the hub carries while `body` runs. */
  async function commitOnlyAppends(hub: LoopbackHub, body: () => Promise<void>): Promise<number> {
    let n = 0;
    let counting = false;
    const deliver = hub.deliver.bind(hub);
    hub.deliver = (from: number, messages: readonly Message[]) => {
      if (counting) for (const m of messages) if (m.group === DATA_GROUP && m.type === MessageType.App && (m.entries?.length ?? 0) === 0) n++;
      deliver(from, messages);
    };
    counting = true;
    await body();
    counting = false;
    return n;
  }

  /** Ten writes one after another from one client, each sent as soon as the previous one is answered. */
  async function loneWrites(s: ManualScheduler, ns: KvNode[]): Promise<void> {
    const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
    for (let i = 0; i < 10; i++) {
      let done = false;
      const put = leader.put({ key: `/seq/${i}`, value: new Uint8Array([i]) }, { deadlineMs: s.now() + 5_000 }).finally(() => (done = true));
      while (!done) await s.advance(1);
      await put;
    }
  }

  it('back-to-back lone writes carry the commit notices in their appends (commitNoticeDelayMs); 0 sends them at once', async () => {
    const counts: number[] = [];
    for (const commitNoticeDelayMs of [0, 20]) {
      const s = new ManualScheduler();
      const hub = new LoopbackHub();
      const ns = await cluster(s, { commitNoticeDelayMs }, hub);
      await s.advance(TICK_MS);
      counts.push(await commitOnlyAppends(hub, () => loneWrites(s, ns)));
      // Either way every follower applies the last write soon after (well before a tick).
      const target = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!.replica(DATA_GROUP)!.appliedIndex;
      const t0 = s.now();
      while (ns.some((n) => n.replica(DATA_GROUP)!.appliedIndex < target) && s.now() - t0 < TICK_MS - 10) await s.advance(1);
      expect(s.now() - t0).toBeLessThan(TICK_MS - 10);
      for (const n of ns) expect(n.replica(DATA_GROUP)!.readValue('/seq/9')?.value).toEqual(new Uint8Array([9]));
      for (const n of nodes) await n.stop();
      nodes = [];
    }
    // At once: two per write (one per follower). Delayed by more than the gap between two writes
    // (a few virtual ms here: every hop of this harness costs a step): none but the last write's.
    expect(counts[1]).toBeLessThanOrEqual(2);
    expect(counts[0]).toBeGreaterThanOrEqual(2 * 9);
  });
});
