/**
 * A lone write's path through a node's ready round (session lone11): a follower's round that
 * appends the next write and applies the previous one (its commit index rides on this append)
 * hands its synced batch to the engine before it applies, so the state records of the apply are
 * not in that batch (they follow, unsynced or with the next one); and a leader's apply of a lone
 * write starts no engine batch before the write's answer has been handed back.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DATA_GROUP, KvNode, META_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine, type EngineOp } from '../../src/storage/kv-engine.js';
import { logKey, stateKeyPrefix } from '../../src/storage/raft-log-store.js';
import { silentLogger } from '../../src/log.js';
import { ManualScheduler } from '../support/manual-scheduler.js';

const TICK_MS = 100;
let nodes: KvNode[] = [];
afterEach(async () => {
  for (const n of nodes) await n.stop();
  nodes = [];
});

interface Issued {
  readonly sync: boolean;
  readonly logOps: number;
  readonly stateOps: number;
}

const keyText = (op: EngineOp): string => (typeof op.key === 'string' ? op.key : Buffer.from(op.key).toString('latin1'));

async function cluster(s: ManualScheduler): Promise<{ nodes: KvNode[]; batches: Map<number, Issued[]> }> {
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7500 + i}`] as [number, string]));
  const batches = new Map<number, Issued[]>();
  const statePrefix = stateKeyPrefix(DATA_GROUP);
  const logPrefix = logKey(DATA_GROUP, 0).slice(0, -16);
  for (const id of [1, 2, 3]) {
    const engine = new MemoryEngine();
    const list: Issued[] = [];
    batches.set(id, list);
    const batch = engine.batch.bind(engine);
    engine.batch = (ops, options) => {
      let logOps = 0;
      let stateOps = 0;
      for (const op of ops) {
        const k = keyText(op);
        if (k.startsWith(statePrefix)) stateOps++;
        else if (k.startsWith(logPrefix)) logOps++;
      }
      list.push({ sync: options.sync === true, logOps, stateOps });
      return batch(ops, options);
    };
    nodes.push(await KvNode.open({ id, members, tickMs: TICK_MS, scheduler: s, seed: 11, log: silentLogger(), onFatal: (e) => { throw e; } }, engine, hub.transport(id)));
  }
  for (const n of nodes) n.start();
  for (let i = 0; i < 600; i++) {
    const ledHere = (g: number) => nodes.some((n) => n.replica(g)?.isLeader);
    if (ledHere(META_GROUP) && ledHere(DATA_GROUP) && nodes.every((n) => n.replica(DATA_GROUP)?.leader)) return { nodes, batches };
    await s.advance(10);
  }
  throw new Error('no leaders after 6 virtual seconds');
}

describe('a lone write through the ready round', () => {
  it("a follower's synced batch leaves before it applies the previous write: no state records in it", async () => {
    const s = new ManualScheduler();
    const { nodes: ns, batches } = await cluster(s);
    const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
    const followers = ns.filter((n) => n !== leader).map((n) => n.id);
    // Settle, then count only the lone writes' batches.
    await s.advance(3 * TICK_MS);
    for (const list of batches.values()) list.length = 0;
    for (let i = 0; i < 20; i++) {
      let done = false;
      const put = leader.put({ key: `/lone/${i}`, value: new Uint8Array(64).fill(i) }, { deadlineMs: s.now() + 5_000 }).finally(() => (done = true));
      while (!done) await s.advance(1);
      await put;
    }
    let withEntries = 0;
    for (const id of followers) {
      for (const b of batches.get(id)!) {
        if (!b.sync || b.logOps === 0) continue;
        withEntries++;
        // Before session lone11 every one of these also held the previous write's state records.
        expect(b.stateOps).toBe(0);
      }
    }
    expect(withEntries).toBeGreaterThanOrEqual(20);
    // Every write is applied (and readable) on every follower once the notices went out.
    await s.advance(2 * TICK_MS);
    for (const n of ns) expect(n.replica(DATA_GROUP)!.readValue('/lone/19')?.value?.[0]).toBe(19);
  });

  it("a leader's lone write is answered before any engine batch of its apply starts", async () => {
    const s = new ManualScheduler();
    const { nodes: ns, batches } = await cluster(s);
    const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
    const own = batches.get(leader.id)!;
    await s.advance(3 * TICK_MS);
    for (let i = 0; i < 10; i++) {
      let answeredAt = -1;
      const put = leader.put({ key: `/lone/${i}`, value: new Uint8Array(64).fill(i) }, { deadlineMs: s.now() + 5_000 }).then(() => (answeredAt = own.length));
      while (answeredAt < 0) await s.advance(1);
      await put;
      // The batch that writes this apply's state records (unsynced, for the value release) is not issued yet.
      const last = own[answeredAt - 1];
      expect(last?.stateOps ?? 0).toBe(0);
      await s.advance(TICK_MS);
    }
    // They are written all the same, unsynced, a couple of turns later.
    expect(own.some((b) => !b.sync && b.stateOps > 0)).toBe(true);
  });
});
