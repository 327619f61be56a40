/**
 * One conformance suite for the ExtensionHost seam, run against its in-memory twin and against
 * the KvNode adapter over a real in-process cluster: leadership changes are pushed on gain and on
 * loss, a system proposal applies and reads back locally, and an event subscription from a
 * revision delivers every later event in revision order, with its hop count.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ExtensionHost, HostEvent, LeadershipChange } from '../../src/extensions/host.js';
import { kvNodeHost } from '../../src/extensions/kv-node-host.js';
import { silentLogger } from '../../src/log.js';
import { DATA_GROUP, KvNode, META_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { MemoryExtensionHost } from './memory-host.js';

/** What the suite needs of one implementation: the host, and ways to move a data shard's leadership to it and away. */
interface Subject {
  readonly host: ExtensionHost;
  /** The data shard the suite works in. */
  readonly group: number;
  /** Makes the host's node lead `group` (resolves once it does). */
  gain(): Promise<void>;
  /** Moves `group`'s leadership away from the host's node (resolves once it did). */
  lose(): Promise<void>;
  /** A write of `key` into `group` by a lambda chain at depth `hops` (through the leader). */
  lambdaWrite(key: string, value: string, hops: number): Promise<void>;
  close(): Promise<void>;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(f: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('timed out');
    await sleep(5);
  }
}

function conformance(name: string, make: () => Promise<Subject>): void {
  describe(`ExtensionHost conformance: ${name}`, () => {
    let s: Subject;
    beforeAll(async () => {
      s = await make();
    }, 30_000);
    afterAll(async () => {
      await s?.close();
    });

    it('pushes leadership changes: a gain with its term, then a loss of that term', async () => {
      await s.lose();
      await until(() => !s.host.ledShards().has(s.group));
      const seen: LeadershipChange[] = [];
      const off = s.host.onLeadershipChanged((c) => seen.push(c));
      try {
        await s.gain();
        await until(() => seen.some((c) => c.group === s.group && c.leader));
        const gained = seen.find((c) => c.group === s.group && c.leader)!;
        expect(s.host.ledShards().get(s.group)).toBe(gained.term);
        expect(seen.every((c) => c.group !== META_GROUP)).toBe(true);
        await s.lose();
        await until(() => seen.some((c) => c.group === s.group && !c.leader && c.term === gained.term));
        expect(s.host.ledShards().has(s.group)).toBe(false);
        await s.gain();
        await until(() => s.host.ledShards().has(s.group));
        // Led again: in a new term, reported as gained.
        const again = seen.filter((c) => c.group === s.group && c.leader).at(-1)!;
        expect(again.term).toBeGreaterThan(gained.term);
      } finally {
        off();
      }
    }, 30_000);

    it('applies a system proposal (put, txn, delete) and reads it back locally, system keys included', async () => {
      const shard = s.host.shard(s.group)!;
      expect(shard.isLeader()).toBe(true);
      const put = await shard.propose({ type: 'put', key: '/_sys/conformance/a', value: enc.encode('1') }, Date.now() + 5000);
      expect(put.type).toBe('put');
      const got = shard.get('/_sys/conformance/a');
      expect(got && dec.decode(got.value)).toBe('1');
      const txn = await shard.propose(
        { type: 'txn', compares: [{ key: '/_sys/conformance/a', version: got!.version }], writes: [{ type: 'put', key: '/_sys/conformance/b', value: enc.encode('2') }] },
        Date.now() + 5000,
      );
      expect(txn.type === 'txn' && txn.succeeded).toBe(true);
      expect(shard.list('/_sys/conformance/', { limit: 10 }).items.map((i) => i.key)).toEqual(['/_sys/conformance/a', '/_sys/conformance/b']);
      expect(shard.revision()).toBeGreaterThanOrEqual(got!.version + 1);
      expect(await shard.currentRevision(Date.now() + 5000)).toBe(shard.revision());
      await shard.propose({ type: 'delete', key: '/_sys/conformance/a' }, Date.now() + 5000);
      expect(shard.get('/_sys/conformance/a')).toBeUndefined();
      // The registry's group is there too.
      const meta = s.host.meta();
      expect(meta.group).toBe(META_GROUP);
      expect(meta.revision()).toBeGreaterThanOrEqual(0);
    }, 30_000);

    it('delivers a shard\'s events from a revision, in order, with their hop counts', async () => {
      const shard = s.host.shard(s.group)!;
      for (let i = 0; i < 5; i++) await s.lambdaWrite(`/conf/k${i}`, String(i), i);
      const from = shard.get('/conf/k2')!.version;
      const got: HostEvent[] = [];
      const sub = shard.subscribe(
        '/conf/',
        from,
        {
          events: (events) => got.push(...events),
          progress: () => {},
          canceled: () => {},
        },
        100,
      );
      try {
        await until(() => got.length >= 3);
        await s.lambdaWrite('/conf/k5', '5', 0);
        await until(() => got.length >= 4);
        expect(got.map((e) => e.key)).toEqual(['/conf/k2', '/conf/k3', '/conf/k4', '/conf/k5']);
        expect(got.map((e) => e.hops)).toEqual([2, 3, 4, 0]);
        const revisions = got.map((e) => e.revision);
        expect([...revisions].sort((a, b) => a - b)).toEqual(revisions);
        expect(revisions[0]).toBe(from);
      } finally {
        sub.cancel();
      }
    }, 30_000);
  });
}

conformance('memory twin', async () => {
  const host = new MemoryExtensionHost(1, 1);
  let term = 0;
  return {
    host,
    group: DATA_GROUP,
    gain: async () => host.lead(DATA_GROUP, ++term),
    lose: async () => host.stepDown(DATA_GROUP),
    lambdaWrite: async (key, value, hops) => {
      host.shard(DATA_GROUP)!.apply({ type: 'put', key, value: enc.encode(value) }, 'client', hops);
    },
    close: async () => {},
  };
});

conformance('KvNode adapter', async () => {
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((id) => [id, `127.0.0.1:${17100 + id}`] as [number, string]));
  const nodes: KvNode[] = [];
  for (const id of [1, 2, 3]) {
    const n = await KvNode.open({ id, members, tickMs: 10, log: silentLogger(), onFatal: () => {} }, new MemoryEngine(), hub.transport(id));
    n.start();
    nodes.push(n);
  }
  const self = nodes[0]!;
  const leaderOf = () => nodes.find((n) => n.replica(DATA_GROUP)?.isLeader);
  await until(() => leaderOf() !== undefined && nodes.every((n) => n.shardMap().epoch > 0));
  /** Moves the data shard's leadership to `to` (a leadership transfer). */
  const transfer = async (to: KvNode) => {
    await until(() => {
      const l = leaderOf();
      if (l === to) return true;
      l?.replica(DATA_GROUP)!.transferLeader(to.id);
      return false;
    });
  };
  const host = kvNodeHost(self);
  return {
    host,
    group: DATA_GROUP,
    gain: () => transfer(self),
    lose: () => transfer(nodes[1]!),
    lambdaWrite: async (key, value, hops) => {
      await self.put({ key, value: enc.encode(value) }, { deadlineMs: Date.now() + 5000, hops });
    },
    close: async () => {
      for (const n of nodes) await n.stop();
    },
  };
});
