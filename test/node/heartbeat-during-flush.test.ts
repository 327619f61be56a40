/**
 * A slow fsync must not cost a leader its leadership (docs/memory.md, "Stability under growth").
 * Three KvNodes on one virtual clock, whose engines can hold every synced batch at a gate (an
 * fsync that does not return): while a round's flush is held for many election timeouts, the
 * leaders' heartbeats and the followers' responses still flow (driver.ts `sendLiveness`), so no
 * one campaigns and no leader steps down; and no acknowledgement or vote leaves a node while
 * its flush is held (they promise what is on disk). Linearizable reads go on as well: their
 * ReadIndex rounds start and are answered while the flush is held (`readsDuringRound`). Run with
 * one round at a time and with overlapped rounds (NodeOptions.overlapRounds): with overlap, a put
 * whose leader's flush is held still commits on the followers' durable copies (the next round's
 * append goes early).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DATA_GROUP, KvNode, META_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MessageType, type Message, type NodeId } from '../../src/raft/index.js';
import { MemoryEngine, type EngineBatchOptions, type EngineOp } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';
import { ManualScheduler } from '../support/manual-scheduler.js';

const TICK_MS = 10;
const ELECTION_TICKS = 10;
/** How long a flush is held: twenty election timeouts (the randomised timeout is below two). */
const HOLD_MS = 20 * ELECTION_TICKS * TICK_MS;

/** A MemoryEngine whose synced batches can be held at a gate (an fsync that takes as long as the test says). */
class GatedEngine extends MemoryEngine {
  private gate: Promise<void> | undefined;
  private open: (() => void) | undefined;
  /** Synced batches waiting at the gate now. */
  waiting = 0;
  /** Synced batches that were held at the gate (since the start). */
  heldBatches = 0;

  hold(): void {
    this.gate ??= new Promise<void>((resolve) => (this.open = resolve));
  }

  release(): void {
    this.open?.();
    this.gate = undefined;
    this.open = undefined;
  }

  override async batch(ops: readonly EngineOp[], options: EngineBatchOptions): Promise<void> {
    if (options.sync && this.gate) {
      this.waiting++;
      this.heldBatches++;
      try {
        await this.gate;
      } finally {
        this.waiting--;
      }
    }
    return super.batch(ops, options);
  }
}

/** Messages that promise something on the sender's disk (an append's acceptance, a granted vote). */
const promisesDurability = (m: Message): boolean =>
  (m.type === MessageType.AppResp && !m.reject) || ((m.type === MessageType.VoteResp || m.type === MessageType.PreVoteResp) && !m.reject);

interface Cluster {
  readonly s: ManualScheduler;
  readonly nodes: KvNode[];
  readonly engines: GatedEngine[];
  /** Every message sent, with whether its sender had a flush held at the gate then. */
  readonly sent: { m: Message; whileHeld: boolean }[];
}

let open: KvNode[] = [];
afterEach(async () => {
  for (const n of open) await n.stop().catch(() => {});
  open = [];
});

async function cluster(overlapRounds: boolean): Promise<Cluster> {
  const s = new ManualScheduler();
  const hub = new LoopbackHub();
  const engines = [1, 2, 3].map(() => new GatedEngine());
  const sent: Cluster['sent'] = [];
  const deliver = hub.deliver.bind(hub);
  hub.deliver = (from: NodeId, msgs: readonly Message[]) => {
    const whileHeld = engines[from - 1]!.waiting > 0;
    for (const m of msgs) sent.push({ m, whileHeld });
    deliver(from, msgs);
  };
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7400 + i}`] as [number, string]));
  const nodes: KvNode[] = [];
  for (const id of [1, 2, 3]) {
    const node = await KvNode.open(
      { id, members, tickMs: TICK_MS, electionTicks: ELECTION_TICKS, scheduler: s, seed: 17 + id, overlapRounds, log: silentLogger(), onFatal: (e) => { throw e; } },
      engines[id - 1]!,
      hub.transport(id),
    );
    nodes.push(node);
    open.push(node);
  }
  for (const n of nodes) n.start();
  return { s, nodes, engines, sent };
}

/** Each group's leader and every replica's term, as one comparable string per group. */
function leadership(c: Cluster): Record<number, string> {
  const out: Record<number, string> = {};
  for (const g of [META_GROUP, DATA_GROUP]) {
    out[g] = c.nodes.map((n) => {
      const st = n.replica(g)!.status();
      return `${n.replica(g)!.isLeader ? 'L' : 'F'}:${st.term}`;
    }).join(' ');
  }
  return out;
}

/** Advances virtual time until both groups have a leader, then until leadership has settled where the map prefers it. */
async function settled(c: Cluster): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    const led = [META_GROUP, DATA_GROUP].every((g) => c.nodes.some((n) => n.replica(g)?.isLeader));
    if (led && c.nodes.every((n) => n.replica(DATA_GROUP))) break;
    await c.s.advance(TICK_MS);
  }
  // Start-up writes, and the balancing transfer to the preferred leader (after 2 s of leadership).
  for (let t = 0; t < 4000; t += TICK_MS) await c.s.advance(TICK_MS);
}

const leaderNode = (c: Cluster, g: number): KvNode => c.nodes.find((n) => n.replica(g)?.isLeader)!;

async function hold(c: Cluster, which: readonly GatedEngine[], put: () => Promise<unknown>, completesWhileHeld = false): Promise<{ before: Record<number, string>; during: Record<number, string>; done: () => boolean; sentFrom: number }> {
  const before = leadership(c);
  for (const e of which) e.hold();
  let finished = false;
  const p = put().finally(() => (finished = true));
  const sentFrom = c.sent.length;
  for (let t = 0; t < HOLD_MS; t += TICK_MS) await c.s.advance(TICK_MS);
  const during = leadership(c);
  expect(finished, completesWhileHeld ? "the put commits on the followers' copies" : 'the put cannot complete while its flushes are held').toBe(completesWhileHeld);
  for (const e of which) expect(e.waiting, 'a flush is held at the gate').toBeGreaterThan(0);
  for (const e of which) e.release();
  for (let i = 0; i < 200 && !finished; i++) await c.s.advance(TICK_MS);
  await p;
  return { before, during, done: () => finished, sentFrom };
}

describe.each([
  ['one round at a time', false],
  ['overlapped rounds', true],
])("a leader's heartbeats do not wait for a round's fsync (%s)", (_mode, overlap) => {
  it("a leader whose flush is held for 20 election timeouts keeps its followers: no election, no step-down", async () => {
    const c = await cluster(overlap);
    await settled(c);
    const leader = leaderNode(c, DATA_GROUP);
    const engine = c.engines[c.nodes.indexOf(leader)]!;
    const enc = new TextEncoder();
    const r = await hold(c, [engine], () => leader.put({ key: '/slow', value: enc.encode('v') }, { deadlineMs: c.s.now() + 60_000 }), overlap);
    expect(r.during).toEqual(r.before);
    expect(leadership(c)).toEqual(r.before);
    expect(r.done()).toBe(true);
    const held = c.sent.slice(r.sentFrom).filter((x) => x.whileHeld);
    const heartbeats = held.filter((x) => x.m.type === MessageType.Heartbeat && x.m.group === DATA_GROUP && x.m.from === leader.id);
    // About one per tick and follower (heartbeatTicks 1) over the hold; at least half of them.
    expect(heartbeats.length).toBeGreaterThan(HOLD_MS / TICK_MS);
    expect(held.filter((x) => promisesDurability(x.m))).toEqual([]);
    expect(engine.heldBatches).toBeGreaterThan(0);
  });

  it('with every flush held (followers too), heartbeat responses keep check-quorum satisfied and no acknowledgement leaves early', async () => {
    const c = await cluster(overlap);
    await settled(c);
    const leader = leaderNode(c, DATA_GROUP);
    const enc = new TextEncoder();
    const r = await hold(c, c.engines, () => leader.put({ key: '/slow', value: enc.encode('v') }, { deadlineMs: c.s.now() + 60_000 }));
    expect(r.during).toEqual(r.before);
    expect(leadership(c)).toEqual(r.before);
    const held = c.sent.slice(r.sentFrom).filter((x) => x.whileHeld);
    const responses = held.filter((x) => x.m.type === MessageType.HeartbeatResp && x.m.group === DATA_GROUP && x.m.to === leader.id);
    // Each follower answers at least every other tick: a heartbeat response from a follower that lacks
    // entries makes the leader resend its append, and with quiet heartbeats (kvd's default) the next
    // tick's heartbeat to that follower is skipped, so heartbeats and appends alternate. Every other
    // tick is far inside check-quorum's election timeout.
    for (const n of c.nodes) {
      if (n === leader) continue;
      expect(responses.filter((x) => x.m.from === n.id).length, `heartbeat responses from node ${n.id}`).toBeGreaterThanOrEqual(HOLD_MS / TICK_MS / 2);
    }
    expect(held.filter((x) => promisesDurability(x.m)).map((x) => `${x.m.type} ${x.m.from}>${x.m.to}`)).toEqual([]);
    // Every node's flush was held at some point (the followers got the put's entries and tried to sync them).
    for (const e of c.engines) expect(e.heldBatches).toBeGreaterThan(0);
  });
});

describe("a leader's linearizable reads do not wait for a round's fsync", () => {
  it('with every flush held, a read of an acknowledged write is answered within a few ticks; the unacknowledged write is not seen', async () => {
    const c = await cluster(false); // the default: one round at a time
    await settled(c);
    const leader = leaderNode(c, DATA_GROUP);
    const enc = new TextEncoder();
    const dec = new TextDecoder();
    let acked = false;
    void leader.put({ key: '/a', value: enc.encode('v1') }, { deadlineMs: c.s.now() + 60_000 }).then(() => (acked = true));
    for (let i = 0; i < 100 && !acked; i++) await c.s.advance(TICK_MS);
    expect(acked).toBe(true);
    for (const e of c.engines) e.hold();
    let slowDone = false;
    const slow = leader.put({ key: '/slow', value: enc.encode('s') }, { deadlineMs: c.s.now() + 60_000 }).finally(() => (slowDone = true));
    await c.s.advance(TICK_MS);
    const leaderEngine = c.engines[c.nodes.indexOf(leader)]!;
    expect(leaderEngine.waiting, "the leader's round is waiting for its fsync").toBeGreaterThan(0);
    const reads: { key: string; value?: string; found?: boolean }[] = [];
    for (const key of ['/a', '/slow']) {
      void leader.get({ key, consistency: 'linearizable' }, { deadlineMs: c.s.now() + 60_000 }).then((r) => reads.push({ key, found: r.found, ...(r.value ? { value: dec.decode(r.value) } : {}) }));
    }
    // A heartbeat round goes out and comes back on the virtual clock's turns, far inside the hold.
    for (let i = 0; i < 5 && reads.length < 2; i++) await c.s.advance(TICK_MS);
    expect(leaderEngine.waiting, 'the fsync is still held').toBeGreaterThan(0);
    expect(slowDone).toBe(false);
    expect(reads.sort((x, y) => x.key.localeCompare(y.key))).toEqual([
      { key: '/a', found: true, value: 'v1' },
      { key: '/slow', found: false },
    ]);
    for (const e of c.engines) e.release();
    for (let i = 0; i < 200 && !slowDone; i++) await c.s.advance(TICK_MS);
    await slow;
    const after = await new Promise<{ found: boolean }>((resolve) => {
      void leader.get({ key: '/slow', consistency: 'linearizable' }, { deadlineMs: c.s.now() + 60_000 }).then(resolve);
      void (async () => {
        for (let i = 0; i < 100; i++) await c.s.advance(TICK_MS);
      })();
    });
    expect(after.found).toBe(true);
  });
});
