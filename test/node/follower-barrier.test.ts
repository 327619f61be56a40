/**
 * A follower's catch-up barrier (`KvNode.caughtUp`): a ReadIndex round through the leader, then
 * the follower's own apply up to it, so a follower reads every write acknowledged before the
 * call — even when it has not heard the commit yet (lazy commit notices on data groups). Without
 * a leader it fails within its deadline instead of answering a stale state.
 */
import { describe, expect, it } from 'vitest';
import { DATA_GROUP, type KvNode } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { leaderOf, nodeTrio } from '../support/node-trio.js';

const enc = (s: string) => new TextEncoder().encode(s);
const deadline = (ms = 5000) => ({ deadlineMs: Date.now() + ms });
const trio = nodeTrio(7400);

async function cluster(): Promise<{ hub: LoopbackHub; nodes: KvNode[] }> {
  const hub = new LoopbackHub();
  const nodes = await Promise.all([1, 2, 3].map((id) => trio.open(id, new MemoryEngine(), hub, {})));
  for (const n of nodes) n.start();
  return { hub, nodes };
}

describe('follower catch-up barrier', () => {
  it('a follower has applied each acknowledged write once its barrier resolves', async () => {
    const { nodes } = await cluster();
    for (const group of [DATA_GROUP]) {
      const l = await leaderOf(nodes, group);
      const followers = nodes.filter((n) => n !== l);
      let stale = 0;
      for (let i = 0; i < 40; i++) {
        const res = await l.put({ key: `/k${i % 5}`, value: enc(`v${i}`) }, deadline());
        expect(res.type).toBe('put');
        const rev = (res as { revision: number }).revision;
        const f = followers[i % 2]!;
        // Without the barrier the follower may not have applied it yet: counted, not required.
        if (f.replica(group)!.revision < rev) stale++;
        const r = await f.caughtUp(deadline(), group);
        expect(r.revision).toBeGreaterThanOrEqual(rev);
      }
      // The check above is only meaningful if the followers were behind some of the time.
      expect(stale).toBeGreaterThan(0);
    }
  });

  it('a follower cut off from its leader fails the barrier by its deadline instead of answering', async () => {
    const { hub, nodes } = await cluster();
    const l = await leaderOf(nodes);
    await l.put({ key: '/a', value: enc('1') }, deadline());
    const f = nodes.find((n) => n !== l)!;
    hub.blocked.add(`${l.id}>${f.id}`);
    hub.blocked.add(`${f.id}>${l.id}`);
    const started = Date.now();
    await expect(f.caughtUp(deadline(300), DATA_GROUP)).rejects.toThrow();
    expect(Date.now() - started).toBeLessThan(3000);
    // Healed: the barrier works again (rounds lost meanwhile were failed, not left waiting).
    hub.blocked.clear();
    const res = await l.put({ key: '/a', value: enc('2') }, deadline());
    const r = await f.caughtUp(deadline(), DATA_GROUP);
    expect(r.revision).toBeGreaterThanOrEqual((res as { revision: number }).revision);
  });
});
