/**
 * Quiescence on real KvNodes (in-process, loopback transport): idle shards stop heartbeating and
 * only one keepalive per node pair and tick flows; a write wakes its shard; a node that stops
 * leaves no group without a leader for long, quiesced or not.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KvNode, type NodeOptions } from '../../src/node/kv-node.js';
import { NotLeaderError, UnavailableError } from '../../src/node/backend.js';
import { LIVENESS_GROUP } from '../../src/node/quiescence.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';
import { MessageType, type Message } from '../../src/raft/index.js';

const TICK_MS = 10;
const SHARDS = 6;
const enc = (s: string) => new TextEncoder().encode(s);

interface Harness {
  nodes: KvNode[];
  hub: LoopbackHub;
  /** Messages delivered through the hub since the last `reset`. */
  sent: Message[];
  stopped: Set<KvNode>;
}

let running: Harness | undefined;

afterEach(async () => {
  for (const n of running?.nodes ?? []) await n.stop().catch(() => {});
  running = undefined;
});

async function cluster(extra: Partial<NodeOptions> = {}): Promise<Harness> {
  const hub = new LoopbackHub();
  const h: Harness = { nodes: [], hub, sent: [], stopped: new Set() };
  const deliver = hub.deliver.bind(hub);
  hub.deliver = (from, msgs) => {
    h.sent.push(...msgs);
    deliver(from, msgs);
  };
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7300 + i}`] as [number, string]));
  for (const id of [1, 2, 3]) {
    const node = await KvNode.open(
      { id, members, tickMs: TICK_MS, electionTicks: 10, defaultPool: { shards: SHARDS }, log: silentLogger(), onFatal: (e) => { throw e; }, ...extra },
      new MemoryEngine(),
      hub.transport(id),
    );
    node.start();
    h.nodes.push(node);
  }
  running = h;
  return h;
}

async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, TICK_MS));
  }
}

const live = (h: Harness) => h.nodes.filter((n) => !h.stopped.has(n));
/** Every group hosted anywhere, with its replicas on live nodes. */
function groups(h: Harness): Map<number, ReturnType<KvNode['replica']>[]> {
  const out = new Map<number, ReturnType<KvNode['replica']>[]>();
  for (const n of live(h)) for (const g of n.hostedGroups()) out.set(g, [...(out.get(g) ?? []), n.replica(g)]);
  return out;
}
const allQuiesced = (h: Harness) => [...groups(h).values()].every((rs) => rs.every((r) => r?.quiesced));
const leaderOf = (h: Harness, g: number) => live(h).find((n) => n.replica(g)?.isLeader);

/**
 * Waits until every group is quiesced and stays so, with no Raft traffic, for 20 ticks (the
 * start-up writes — the cluster map, shard descriptors — wake groups once more after they first
 * quiesce).
 */
async function untilQuiet(h: Harness): Promise<void> {
  await until('every group to quiesce and stay quiet', async () => {
    if (groups(h).size !== SHARDS + 1 || !allQuiesced(h)) return false;
    h.sent.length = 0;
    await new Promise((r) => setTimeout(r, 20 * TICK_MS));
    return allQuiesced(h) && h.sent.every((m) => m.group === LIVENESS_GROUP);
  });
}

async function putAnywhere(h: Harness, key: string, value: string): Promise<void> {
  const end = Date.now() + 10_000;
  for (;;) {
    for (const n of live(h)) {
      try {
        await n.put({ key, value: enc(value) }, { deadlineMs: Date.now() + 2000 });
        return;
      } catch (e) {
        if (!(e instanceof NotLeaderError) && !(e instanceof UnavailableError)) throw e;
      }
    }
    if (Date.now() > end) throw new Error(`put ${key} found no leader`);
    await new Promise((r) => setTimeout(r, TICK_MS));
  }
}

describe('quiescence on KvNodes', () => {
  it('idle shards quiesce; then only node keepalives flow, at most one per node pair and tick', async () => {
    const h = await cluster();
    await untilQuiet(h);
    h.sent.length = 0;
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 50 * TICK_MS));
    const ticks = (Date.now() - t0) / TICK_MS;
    const raft = h.sent.filter((m) => m.group !== LIVENESS_GROUP);
    const keepalives = h.sent.length - raft.length;
    expect(raft.map((m) => `${m.group}:${m.type}:${m.from}>${m.to}${m.quiesce ? "Q" : ""}`).slice(0, 40)).toEqual([]);
    expect(keepalives).toBeGreaterThan(0);
    expect(keepalives).toBeLessThanOrEqual(6 * (ticks + 2)); // 3 nodes: 6 directed pairs
    expect(allQuiesced(h)).toBe(true);
  });

  it('a write wakes its shard, commits, and the shard quiesces again', async () => {
    const h = await cluster();
    await untilQuiet(h);
    await putAnywhere(h, '/q/a', 'one');
    const g = live(h)[0]!.shardOfKey('/q/a').group;
    const got = await leaderOf(h, g)!.get({ key: '/q/a', consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
    expect(new TextDecoder().decode(got.value)).toBe('one');
    await untilQuiet(h);
  });

  it('when a node stops, every group it led gets a new leader on the others, quiesced or not', async () => {
    const h = await cluster();
    await untilQuiet(h);
    const victim = h.nodes.find((n) => n.hostedGroups().some((g) => n.replica(g)?.isLeader))!;
    const led = victim.hostedGroups().filter((g) => victim.replica(g)?.isLeader);
    expect(led.length).toBeGreaterThan(0);
    await victim.stop();
    h.stopped.add(victim);
    const t0 = Date.now();
    await until('new leaders for the groups the stopped node led', () => led.every((g) => leaderOf(h, g)));
    const took = Date.now() - t0;
    // Liveness window (one election timeout) + at most two randomised election timeouts.
    expect(took).toBeLessThan(20 * 10 * TICK_MS);
    for (let i = 0; i < 20; i++) await putAnywhere(h, `/q/after/${i}`, String(i));
  });

  it('with quiescence off, idle groups keep heartbeating', async () => {
    const h = await cluster({ quiesce: false });
    await until('every group to have a leader', () => groups(h).size === SHARDS + 1 && [...groups(h).keys()].every((g) => leaderOf(h, g)));
    h.sent.length = 0;
    await new Promise((r) => setTimeout(r, 20 * TICK_MS));
    expect(h.sent.filter((m) => m.group !== LIVENESS_GROUP).length).toBeGreaterThan(0);
    expect(allQuiesced(h)).toBe(false);
  });

  it('drain hands every leadership away, and peers give none back while it drains', async () => {
    const h = await cluster({ reconcileEveryMs: 20 });
    await untilQuiet(h);
    // Preferred leaders spread the shards; take the node that leads the most.
    const leads = (n: KvNode) => n.hostedGroups().filter((g) => n.replica(g)?.isLeader);
    const victim = [...h.nodes].sort((a, b) => leads(b).length - leads(a).length)[0]!;
    expect(leads(victim).length).toBeGreaterThan(0);
    const res = await victim.drain(Date.now() + 10_000);
    expect(res.stillLeading).toEqual([]);
    expect(res.led).toBeGreaterThan(0);
    expect(victim.draining).toBe(true);
    h.sent.length = 0;
    // Longer than the reconcilers' hysteresis before moving a leader to its preferred node (2 s).
    const end = Date.now() + 3_000;
    while (Date.now() < end) {
      expect(leads(victim)).toEqual([]);
      await new Promise((r) => setTimeout(r, 50));
    }
    for (let i = 0; i < 10; i++) await putAnywhere(h, `/q/drained/${i}`, String(i));
    expect(leads(victim)).toEqual([]);
    // Its peers knew it was draining: none even tried to hand it a leadership (which would stall writes).
    expect(h.sent.filter((m) => m.type === MessageType.TimeoutNow && m.to === victim.id)).toEqual([]);
  });
});
