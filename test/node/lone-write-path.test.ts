/**
 * Where a node's applied state records go (session lone12, bench/README.md "A lone put (session
 * lone12)"): they are derived from the log, so nothing but the heap's value release waits for
 * them, and the driver lets them wait NodeOptions.stateWriteDelayMs for a synced batch to take
 * them (RaftLogStore.deferLazy). A busy node's next round does, so they cost no engine batch of
 * their own; a lone writer's next write does too; an idle node writes them alone (unsynced) after
 * the delay, never between a write's apply and its answer, and with no further call. With
 * syncBeforeApply (off by default), a round that writes at once hands its synced batch to the
 * engine before it applies, so a follower's fsync does not wait for the previous write's apply.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DATA_GROUP, KvNode, META_GROUP, type NodeOptions } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine, type EngineOp } from '../../src/storage/kv-engine.js';
import { logKey, stateKeyPrefix } from '../../src/storage/raft-log-store.js';
import { silentLogger } from '../../src/log.js';
import { ManualScheduler } from '../support/manual-scheduler.js';

const TICK_MS = 100;
const DELAY_MS = 5;
let nodes: KvNode[] = [];
afterEach(async () => {
  for (const n of nodes) await n.stop();
  nodes = [];
});

/** One engine batch a node issued: synced or not, its data group log ops, and the keys of its data group state records. */
interface Issued {
  readonly sync: boolean;
  readonly logOps: number;
  readonly stateKeys: string[];
  /** The user keys the log records of the batch write (found in the entries' bytes). */
  readonly appends: string[];
}

const keyText = (op: EngineOp): string => (typeof op.key === 'string' ? op.key : Buffer.from(op.key).toString('latin1'));

async function cluster(s: ManualScheduler, extra: Partial<NodeOptions> = {}): Promise<{ nodes: KvNode[]; batches: Map<number, Issued[]> }> {
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7600 + i}`] as [number, string]));
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
      const stateKeys: string[] = [];
      const appends: string[] = [];
      for (const op of ops) {
        const k = keyText(op);
        if (k.startsWith(statePrefix)) stateKeys.push(k);
        else if (k.startsWith(logPrefix)) {
          logOps++;
          if (op.type === 'put') appends.push(...(Buffer.from(op.value).toString('latin1').match(/\/[a-z]+\/\d+/g) ?? []));
        }
      }
      list.push({ sync: options.sync === true, logOps, stateKeys, appends });
      return batch(ops, options);
    };
    nodes.push(await KvNode.open({ id, members, tickMs: TICK_MS, scheduler: s, seed: 11, log: silentLogger(), onFatal: (e) => { throw e; }, stateWriteDelayMs: DELAY_MS, ...extra }, engine, hub.transport(id)));
  }
  for (const n of nodes) n.start();
  for (let i = 0; i < 600; i++) {
    const ledHere = (g: number) => nodes.some((n) => n.replica(g)?.isLeader);
    if (ledHere(META_GROUP) && ledHere(DATA_GROUP) && nodes.every((n) => n.replica(DATA_GROUP)?.leader)) break;
    await s.advance(10);
  }
  if (!nodes.every((n) => n.replica(DATA_GROUP)?.leader)) throw new Error('no leaders after 6 virtual seconds');
  // Settle, then count only what the test does.
  await s.advance(3 * TICK_MS);
  for (const list of batches.values()) list.length = 0;
  return { nodes, batches };
}

/** Whether a batch holds a state record of user key `key` (its latest or version record names it). */
const holds = (b: Issued, key: string): boolean => b.stateKeys.some((k) => k.endsWith(key));
/** Unsynced batches holding state records. */
const unsyncedState = (list: readonly Issued[]): number => list.filter((b) => !b.sync && b.stateKeys.length > 0).length;

async function putNow(s: ManualScheduler, node: KvNode, key: string, i: number, onAnswer?: () => void): Promise<void> {
  let done = false;
  const put = node.put({ key, value: new Uint8Array(64).fill(i) }, { deadlineMs: s.now() + 5_000 }).finally(() => {
    done = true;
    onAnswer?.();
  });
  while (!done) await s.advance(1);
  await put;
}

describe('where applied state records go', () => {
  it('a busy node writes them in its next synced batch: no batch of their own while writes keep coming, and the last ones once idle, with no further call', async () => {
    const s = new ManualScheduler();
    const { nodes: ns, batches } = await cluster(s);
    const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
    const keys: string[] = [];
    let running = 0;
    const client = async (c: number): Promise<void> => {
      for (let i = 0; i < 20; i++) {
        const key = `/busy/${c}/${i}`;
        keys.push(key);
        await leader.put({ key, value: new Uint8Array(32).fill(i) }, { deadlineMs: s.now() + 10_000 });
      }
      running--;
    };
    const clients: Promise<void>[] = [];
    for (let c = 0; c < 16; c++) {
      running++;
      clients.push(client(c));
    }
    while (running > 0) await s.advance(1);
    await Promise.all(clients);
    // While the writes kept coming every applied record went with a synced batch.
    for (const list of batches.values()) {
      expect(list.filter((b) => b.sync).length).toBeGreaterThan(10);
      expect(unsyncedState(list)).toBe(0);
    }
    // Idle now: the last applies' records reach the engine after the delay, with no further call
    // (the followers apply the last writes once the leader's commit notices go out).
    await s.advance(2 * DELAY_MS + 10);
    for (const n of ns) {
      const list = batches.get(n.id)!;
      for (const key of keys) expect(list.some((b) => holds(b, key)), `node ${n.id} ${key}`).toBe(true);
      expect(unsyncedState(list)).toBeLessThanOrEqual(2);
    }
  });

  it("a lone writer's applied records go with its next write's synced batch, and none is written between a write's apply and its answer", async () => {
    const s = new ManualScheduler();
    const { nodes: ns, batches } = await cluster(s);
    const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
    const own = batches.get(leader.id)!;
    const N = 20;
    for (let i = 0; i < N; i++) {
      const key = `/lone/${i}`;
      let answeredAt = -1;
      await putNow(s, leader, key, i, () => (answeredAt = own.length));
      // Nothing holding this write's records went to the engine before its answer.
      expect(own.slice(0, answeredAt).some((b) => holds(b, key))).toBe(false);
    }
    // Back to back (each within the delay of the last): no batch of their own but the last one's.
    for (const n of ns) expect(unsyncedState(batches.get(n.id)!)).toBe(0);
    for (let i = 0; i < N - 1; i++) expect(own.some((b) => b.sync && b.logOps > 0 && holds(b, `/lone/${i}`))).toBe(true);
    // One engine batch per write on the followers (the leader: one each, and its heartbeat-free rounds add none).
    for (const n of ns) expect(batches.get(n.id)!.length).toBeLessThanOrEqual(N + 1);
    // The last write's records are written after the delay, with no further call.
    await s.advance(2 * DELAY_MS + 10);
    for (const n of ns) {
      expect(batches.get(n.id)!.some((b) => holds(b, `/lone/${N - 1}`))).toBe(true);
      expect(n.replica(DATA_GROUP)!.readValue(`/lone/${N - 1}`)?.value?.[0]).toBe(N - 1);
    }
  });

  it("a follower's synced batch leaves before it applies the previous write (syncBeforeApply): that write's records are not in it", async () => {
    const s = new ManualScheduler();
    const { nodes: ns, batches } = await cluster(s, { syncBeforeApply: true });
    const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
    const followers = ns.filter((n) => n !== leader);
    const N = 20;
    for (let i = 0; i < N; i++) await putNow(s, leader, `/lone/${i}`, i);
    for (const f of followers) {
      let checked = 0;
      let clean = 0;
      for (const b of batches.get(f.id)!) {
        const m = b.sync ? b.appends.map((k) => /^\/lone\/(\d+)$/.exec(k)).find((x) => x !== null) : undefined;
        if (!m || Number(m[1]) === 0) continue;
        // The round that appends write i applies write i-1 (its commit index rides on this append):
        // that apply's records go with a later batch. (A tick's heartbeat sometimes brings the
        // commit index first: write i-1 is then applied in a round of its own, and its records
        // rightly ride in this batch.)
        checked++;
        if (!holds(b, `/lone/${Number(m[1]) - 1}`)) clean++;
      }
      expect(checked).toBeGreaterThanOrEqual(N - 1);
      expect(clean).toBeGreaterThanOrEqual(checked * 0.6); // with syncBeforeApply false: none but the tick's
    }
  });

  it('an idle node writes them alone, unsynced, after the delay and after the answer', async () => {
    const s = new ManualScheduler();
    const { nodes: ns, batches } = await cluster(s);
    const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
    const own = batches.get(leader.id)!;
    for (let i = 0; i < 5; i++) {
      const key = `/idle/${i}`;
      let answeredAt = -1;
      let answeredMs = 0;
      await putNow(s, leader, key, i, () => {
        answeredAt = own.length;
        answeredMs = s.now();
      });
      expect(own.slice(0, answeredAt).some((b) => holds(b, key))).toBe(false);
      await s.advance(DELAY_MS - 2);
      expect(own.some((b) => holds(b, key))).toBe(false); // still waiting for a synced batch
      await s.advance(TICK_MS);
      const alone = own.filter((b) => holds(b, key));
      expect(alone.length).toBe(1);
      expect(alone[0]!.sync).toBe(false);
      expect(s.now() - answeredMs).toBeGreaterThanOrEqual(DELAY_MS);
    }
  });

  it('with stateWriteDelayMs 0 they are written at once, as before', async () => {
    const s = new ManualScheduler();
    const { nodes: ns, batches } = await cluster(s, { stateWriteDelayMs: 0, syncBeforeApply: false });
    const leader = ns.find((n) => n.replica(DATA_GROUP)!.isLeader)!;
    const own = batches.get(leader.id)!;
    for (let i = 0; i < 5; i++) await putNow(s, leader, `/now/${i}`, i);
    // Each write's apply on the leader (an idle round) wrote its records alone, unsynced, at once.
    expect(unsyncedState(own)).toBeGreaterThanOrEqual(4);
  });
});
