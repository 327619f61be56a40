/** In-process tests of the node: three KvNodes over a loopback transport and in-memory engines. */
import { afterEach, describe, expect, it } from 'vitest';
import { KvNode, DATA_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { realScheduler, type Scheduler } from '../../src/node/scheduler.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';
import { NotLeaderError } from '../../src/node/backend.js';
import { CompactedRevisionError } from '../../src/statemachine/index.js';
import type { KvEvent } from '../../src/statemachine/index.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);
const deadline = () => ({ deadlineMs: Date.now() + 5000 });

let nodes: KvNode[] = [];

async function cluster(n = 3, extra: Partial<import('../../src/node/kv-node.js').NodeOptions> = {}): Promise<{ nodes: KvNode[]; hub: LoopbackHub; engines: MemoryEngine[] }> {
  const hub = new LoopbackHub();
  const members = new Map(Array.from({ length: n }, (_, i) => [i + 1, `127.0.0.1:${7100 + i + 1}`] as [number, string]));
  const engines: MemoryEngine[] = [];
  nodes = [];
  for (let id = 1; id <= n; id++) {
    const engine = new MemoryEngine();
    engines.push(engine);
    const node = await KvNode.open({ id, members, tickMs: 10, log: silentLogger(), onFatal: (e) => { throw e; }, ...extra }, engine, hub.transport(id));
    node.start();
    nodes.push(node);
  }
  return { nodes, hub, engines };
}

async function leader(ns: KvNode[]): Promise<KvNode> {
  for (;;) {
    const l = ns.find((n) => n.replica(DATA_GROUP)?.isLeader);
    if (l) return l;
    await new Promise((r) => setTimeout(r, 10));
  }
}

afterEach(async () => {
  for (const n of nodes) await n.stop();
  nodes = [];
});

describe('KvNode', () => {
  it('elects a leader, writes, reads linearizably and refuses writes on followers', async () => {
    const { nodes } = await cluster();
    const l = await leader(nodes);
    const put = await l.put({ key: '/a', value: enc('1') }, deadline());
    expect(put.succeeded).toBe(true);
    expect(put.version).toBeGreaterThan(0);
    const got = await l.get({ key: '/a', consistency: 'linearizable' }, deadline());
    expect(dec(got.value)).toBe('1');
    expect(got.version).toBe(put.version);
    const follower = nodes.find((n) => n !== l)!;
    await expect(follower.put({ key: '/a', value: enc('2') }, deadline())).rejects.toBeInstanceOf(NotLeaderError);
    const cas = await l.put({ key: '/a', value: enc('3'), expectedVersion: put.version + 100 }, deadline());
    expect(cas.succeeded).toBe(false);
    expect(cas.current?.version).toBe(put.version);
  });

  it('delivers watch events from history and live, on a follower too', async () => {
    const { nodes } = await cluster();
    const l = await leader(nodes);
    const first = await l.put({ key: '/w/1', value: enc('a') }, deadline());
    const follower = nodes.find((n) => n !== l)!;
    const seen: KvEvent[] = [];
    const done = new Promise<void>((resolve) => {
      follower.watch(
        { prefix: '/w/', fromRevision: first.version, progressIntervalMs: 50 },
        {
          events: (evs) => {
            seen.push(...evs);
            if (seen.length >= 3) resolve();
          },
          progress: () => {},
          canceled: () => {},
        },
      );
    });
    await l.put({ key: '/other', value: enc('x') }, deadline());
    await l.put({ key: '/w/2', value: enc('b') }, deadline());
    await l.delete({ key: '/w/1' }, deadline());
    await done;
    expect(seen.map((e) => `${e.type}:${e.key}`)).toEqual(['put:/w/1', 'put:/w/2', 'delete:/w/1']);
    const revs = seen.map((e) => e.revision);
    expect([...revs].sort((a, b) => a - b)).toEqual(revs);
  });

  it('trigger puts emit a trigger event at their own revision, store nothing and are refused on followers', async () => {
    const { nodes } = await cluster();
    const l = await leader(nodes);
    const put = await l.put({ key: '/t/k', value: enc('stored') }, deadline());
    const seen: KvEvent[] = [];
    const got = new Promise<void>((resolve) => {
      l.watch(
        { prefix: '/t/', fromRevision: put.version, progressIntervalMs: 50 },
        {
          events: (evs) => {
            seen.push(...evs);
            if (seen.length >= 2) resolve();
          },
          progress: () => {},
          canceled: () => {},
        },
      );
    });
    const t = await l.trigger({ key: '/t/k', value: enc('fired') }, deadline());
    expect(t.revision).toBe(put.version + 1);
    expect(t.timestampMs).toBeGreaterThanOrEqual(put.timestampMs);
    await got;
    expect(seen.map((e) => `${e.type}:${e.key}=${dec(e.value)}@${e.revision}`)).toEqual([
      `put:/t/k=stored@${put.version}`,
      `trigger:/t/k=fired@${t.revision}`,
    ]);
    const g = await l.get({ key: '/t/k', consistency: 'linearizable' }, deadline());
    expect(dec(g.value)).toBe('stored');
    expect(g.version).toBe(put.version);
    expect(g.revision).toBe(t.revision);
    const follower = nodes.find((n) => n !== l)!;
    await expect(follower.trigger({ key: '/t/k', value: enc('x') }, deadline())).rejects.toBeInstanceOf(NotLeaderError);
  });

  it('keeps serving after the leader is cut off, with no acknowledged write lost', async () => {
    const { nodes, hub } = await cluster();
    const l = await leader(nodes);
    const acked: string[] = [];
    for (let i = 0; i < 20; i++) {
      await l.put({ key: `/k/${i}`, value: enc(String(i)) }, deadline());
      acked.push(`/k/${i}`);
    }
    for (const n of nodes) if (n !== l) { hub.blocked.add(`${l.id}>${n.id}`); hub.blocked.add(`${n.id}>${l.id}`); }
    const others = nodes.filter((n) => n !== l);
    const l2 = await leader(others);
    expect(l2).not.toBe(l);
    for (const k of acked) {
      const g = await l2.get({ key: k, consistency: 'linearizable' }, deadline());
      expect(g.found).toBe(true);
    }
  });
});

describe('retention', () => {
  it('compacts versions older than the retention window, through the log, on every replica', async () => {
    // The nodes' clock is this test's: the wall clock's timers, a clock the test moves (deadlines go by it too).
    let now = 1_000_000;
    const scheduler: Scheduler = { ...realScheduler, now: () => now };
    const deadline = () => ({ deadlineMs: now + 5000 });
    const { nodes } = await cluster(3, { scheduler, retentionMs: 1000, retentionCheckMs: 100 });
    const l = await leader(nodes);
    const v1 = await l.put({ key: '/r', value: enc('old') }, deadline());
    now += 600;
    const v2 = await l.put({ key: '/r', value: enc('new') }, deadline());
    // Within the window both versions are readable.
    expect(dec((await l.get({ key: '/r', atVersion: v1.version, consistency: 'linearizable' }, deadline())).value)).toBe('old');
    now += 5000; // the first write falls out of the window
    while (nodes.some((n) => n.replica(DATA_GROUP)!.compactRevision < v2.version)) await new Promise((r) => setTimeout(r, 10));
    await expect(l.get({ key: '/r', atVersion: v1.version, consistency: 'linearizable' }, deadline())).rejects.toBeInstanceOf(CompactedRevisionError);
    expect(dec((await l.get({ key: '/r', consistency: 'linearizable' }, deadline())).value)).toBe('new');
  });
});
