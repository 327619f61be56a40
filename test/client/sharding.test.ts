/** Tests of the client's shard awareness: routing each key to its shard's leader (fake nodes counting calls), map refreshes, the pre-sharding fallback, unreachable and frozen nodes, transactions, per-node pipeline streams, multi-shard list and watch resumption with resume tokens. */
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { KvClient, KvError, type KvWatchBatch, type KvWatchEvent } from '../../src/client/index.js';
import type { WatchRequest, WatchSink } from '../../src/node/backend.js';
import type { RunningKvServer } from '../../src/server/kv-service.js';
import { addPool, initialMap, setPoolState } from '../../src/sharding/index.js';
import { MemoryBackend } from '../server/memory-backend.js';
import { serve, text, utf8 } from '../server/harness.js';
import { FakeCluster } from './fake-cluster.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function fakeCluster(opts: Parameters<typeof FakeCluster.start>[0]): Promise<FakeCluster> {
  const c = await FakeCluster.start(opts);
  cleanups.push(() => c.close());
  return c;
}

async function server(backend: MemoryBackend): Promise<RunningKvServer> {
  const s = await serve(backend);
  cleanups.push(() => s.close(0));
  return s;
}

function client(endpoints: string[], opts: Partial<ConstructorParameters<typeof KvClient>[0]> = {}): KvClient {
  const c = new KvClient({ endpoints, defaultDeadlineMs: 5_000, ...opts });
  cleanups.push(() => c.close());
  return c;
}

async function rejection(p: Promise<unknown>): Promise<KvError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(KvError);
    return e as KvError;
  }
  throw new Error('expected a rejection');
}

/** `n` keys `prefix0..` and, for each group of `groupOf`, at least `perGroup` of them. */
function keysOverGroups(groupOf: (k: string) => number, groups: readonly number[], perGroup: number, prefix = 'k'): string[] {
  const out: string[] = [];
  const count = new Map<number, number>();
  for (let i = 0; groups.some((g) => (count.get(g) ?? 0) < perGroup); i++) {
    const k = `${prefix}${i}`;
    const g = groupOf(k);
    if ((count.get(g) ?? 0) >= perGroup) continue;
    count.set(g, (count.get(g) ?? 0) + 1);
    out.push(k);
  }
  return out;
}

/** Reads batches until `n` events arrived, returning them and the batches. */
async function takeEvents(it: AsyncIterator<KvWatchBatch>, n: number, batches: KvWatchBatch[] = []): Promise<KvWatchEvent[]> {
  const out: KvWatchEvent[] = [];
  while (out.length < n) {
    const r = await it.next();
    if (r.done) throw new Error(`watch ended after ${out.length} events`);
    batches.push(r.value);
    out.push(...r.value.events);
  }
  return out;
}

describe('shard routing', () => {
  it('sends each key straight to its shard leader, learned from kv-leader and kv-shard', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 6, replicas: 2 });
    // Every shard is led by its non-preferred replica: the client's first guess is wrong once per shard.
    for (const s of fc.map.shards) fc.leaders.set(s.group, s.replicas.find((r) => r !== s.preferredLeader)!);
    const c = client([fc.node(1).address]);
    const groups = fc.map.shards.map((s) => s.group);
    const warm = keysOverGroups((k) => fc.groupOf(k), groups, 1, 'warm');
    for (const k of warm) await c.put(k, 'w');
    expect(fc.total('getShardMap')).toBe(1);
    expect(c.mapEpoch).toBe(1);
    // The first call of each shard went to its preferred leader (which "forwarded" it) and taught the leader.
    expect(fc.forwarded).toBe(groups.length);
    for (const k of warm) expect(c.routeOf(k)).toEqual({ shard: fc.groupOf(k), address: fc.leaderOf(k).address });

    fc.resetCalls();
    const keys = keysOverGroups((k) => fc.groupOf(k), groups, 10);
    await Promise.all(keys.map((k) => c.put(k, `v-${k}`)));
    const got = await Promise.all(keys.map((k) => c.get(k)));
    expect(got.map((g) => text(g.value))).toEqual(keys.map((k) => `v-${k}`));
    // After a turn, lone writes go on the shard leader's stream too (one attempt at a time).
    await new Promise((r) => setImmediate(r));
    await c.delete(keys[0]!);
    await c.trigger(keys[1]!, 't');
    // No hop: every call reached its shard's leader directly.
    expect(fc.forwarded).toBe(0);
    for (const n of fc.nodes) {
      const led = keys.filter((k) => fc.leaderOf(k) === n).length;
      // Concurrent calls are batched on the node's stream (the first put of a burst may go unary).
      expect(n.calls.put + n.calls.get + n.streamed.put + n.streamed.get).toBe(2 * led);
      expect(n.calls.pipeline).toBeLessThanOrEqual(1);
    }
    expect(fc.leaderOf(keys[0]!).streamed.delete).toBe(1);
    expect(fc.leaderOf(keys[1]!).streamed.trigger).toBe(1);
    expect(fc.total('delete') + fc.total('trigger')).toBe(0);
    expect(fc.total('getShardMap')).toBe(0);
  });

  it('batches the calls made as a burst of batched calls finishes (not one unary call per burst); a lone call later rides the stream too', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 1, replicas: 3 });
    const c = client([fc.node(1).address]);
    await c.put('warm', 'w');
    fc.resetCalls();
    // 10 workers, 6 calls each, one after another: every burst of answers triggers the next burst.
    await Promise.all(Array.from({ length: 10 }, async (_, w) => {
      for (let i = 0; i < 6; i++) await c.put(`k${w}-${i}`, 'v');
    }));
    expect(fc.total('pipelineOp')).toBe(60);
    expect(fc.total('put')).toBe(0); // not even the burst's first call (a lone write) goes unary
    expect(fc.total('pipeline')).toBe(0); // the warm-up's stream, kept
    await new Promise((r) => setImmediate(r));
    await c.put('lone', 'v');
    expect(fc.total('put')).toBe(0);
    expect(fc.total('pipelineOp')).toBe(61);
  });

  it('routes a list of one shard to that shard leader and reports shard revisions', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 3, replicas: 1 });
    const c = client([fc.node(1).address]);
    const keys = keysOverGroups((k) => fc.groupOf(k), [1, 2, 3], 2, 'l/');
    for (const k of keys) await c.put(k, 'x');
    fc.resetCalls();
    const g = fc.groupOf(keys[0]!);
    const page = await c.list('l/', { shard: g });
    expect(page.items.map((i) => i.key).sort()).toEqual(keys.filter((k) => fc.groupOf(k) === g).sort());
    expect(page.shardRevisions).toEqual({ [g]: 2 });
    expect(fc.node(fc.leaders.get(g)!).calls.list).toBe(1);
    expect(fc.forwarded).toBe(0);
    const all = await c.list('l/');
    expect(all.items).toHaveLength(keys.length);
    expect(all.revision).toBe(0);
    expect(all.shardRevisions).toEqual({ 1: 2, 2: 2, 3: 2 });
  });

  it('refetches the map when a response names a newer kv-map-epoch (once, not per response)', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 3, replicas: 1 });
    const c = client([fc.node(1).address], { mapRefreshIntervalMs: 200 });
    await c.put('a', '1');
    expect(c.mapEpoch).toBe(1);
    expect(fc.total('getShardMap')).toBe(1);

    // A new pool /hot with one shard: until the client knows, /hot keys go to the default pool's shards.
    const next = setPoolState(addPool(fc.map, '/hot', { shards: 1, replicas: 1 }), '/hot', 'active');
    const hot = next.shards.find((s) => s.pool === '/hot')!;
    const hotLeader = fc.node(hot.preferredLeader);
    fc.setMap({ ...next, epoch: 2 });
    expect(c.routeOf('/hot/x').shard).not.toBe(hot.group);
    await Promise.all(Array.from({ length: 50 }, (_, i) => c.get(`k${i}`)));
    await vi.waitFor(() => expect(c.mapEpoch).toBe(2));
    // Single-flight and rate-limited: 50 responses with the new epoch cause one or two fetches.
    expect(fc.total('getShardMap')).toBeGreaterThanOrEqual(2);
    expect(fc.total('getShardMap')).toBeLessThanOrEqual(3);
    expect(c.routeOf('/hot/x')).toEqual({ shard: hot.group, address: hotLeader.address });
    fc.resetCalls();
    await c.put('/hot/x', 'h');
    expect(hotLeader.streamed.put).toBe(1);
    expect(fc.forwarded).toBe(0);
    expect((await c.shardMap()).epoch).toBe(2);
    expect(fc.total('getShardMap')).toBe(1);
  });

  it('a client that only reads, one call at a time (on the stream), learns a newer map epoch from the stream\'s answers', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 3, replicas: 1 });
    const c = client([fc.node(1).address], { mapRefreshIntervalMs: 50 });
    await c.get('a');
    expect(c.mapEpoch).toBe(1);
    const next = setPoolState(addPool(fc.map, '/hot', { shards: 1, replicas: 1 }), '/hot', 'active');
    fc.setMap({ ...next, epoch: 2 });
    fc.resetCalls();
    for (let i = 0; i < 5; i++) await c.get('a');
    expect(fc.total('get')).toBe(0); // every read went on the stream
    await vi.waitFor(() => expect(c.mapEpoch).toBe(2));
  });

  it('passes over a node that serves an older map than one a response named (a removed member never learns newer maps)', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 3, replicas: 1 });
    // Node 1 is first in the list, so map fetches go there; it keeps epoch 1 while the others move on.
    const c = client([fc.node(1).address, fc.node(2).address, fc.node(3).address], { mapRefreshIntervalMs: 50 });
    await c.put('a', '1');
    expect(c.mapEpoch).toBe(1);
    fc.node(1).map = fc.map;
    fc.setMap({ ...setPoolState(addPool(fc.map, '/hot', { shards: 1, replicas: 1 }), '/hot', 'active'), epoch: 2 });
    // Calls answered by nodes 2 and 3 name epoch 2: the refresh must not settle for node 1's epoch 1.
    const keys = keysOverGroups((k) => fc.groupOf(k), fc.map.shards.filter((s) => s.preferredLeader !== 1).map((s) => s.group), 2);
    for (const k of keys) await c.get(k);
    await vi.waitFor(() => expect(c.mapEpoch).toBe(2));
    expect(fc.node(1).calls.getShardMap).toBeGreaterThanOrEqual(2); // it was asked, and passed over
    // Asked directly, the client returns the newest map it knows, never node 1's older one.
    for (let i = 0; i < 3; i++) expect((await c.shardMap()).epoch).toBe(2);
  });

  it('refetches the map and retries when a write reached a shard that does not own the key', async () => {
    const fc = await fakeCluster({ nodes: 2, shards: 2, replicas: 1 });
    const c = client([fc.node(1).address]);
    await c.get('warm');
    // Let the turn the (batched) read finished in pass: a write right after it would be batched too.
    await new Promise((r) => setImmediate(r));
    expect(fc.total('getShardMap')).toBe(1);
    let failed = 0;
    fc.before = (_node, method) => {
      if (method !== 'put' || failed > 0) return undefined;
      failed++;
      return { code: 14, details: 'key "w" is not owned by shard 1 (map epoch 1)', retrySafe: true };
    };
    const r = await c.put('w', 'v');
    expect(r.succeeded).toBe(true);
    expect(failed).toBe(1);
    expect(fc.node(1).streamed.put + fc.node(2).streamed.put).toBe(2); // a lone write: on the stream, both attempts
    expect(fc.total('put')).toBe(0);
    // The retry waits for the refetch only up to its attempt's deadline (a loaded machine may
    // retry first: the server would answer WRONG_SHARD again); the refetch itself must happen.
    await vi.waitFor(() => expect(fc.total('getShardMap')).toBe(2), { timeout: 5000 });
    // The per-op error's kv-reason decides, whatever its message says (as a unary call's trailer).
    fc.before = (_node, method) => {
      if (method !== 'put' || failed > 1) return undefined;
      failed++;
      return { code: 14, details: 'try again elsewhere', retrySafe: true, reason: 'WRONG_SHARD' };
    };
    await new Promise((r) => setTimeout(r, 250)); // past the map refresh rate limit
    expect((await c.put('w', 'v2')).succeeded).toBe(true);
    expect(failed).toBe(2);
    await vi.waitFor(() => expect(fc.total('getShardMap')).toBe(3), { timeout: 5000 });
    // A reason other than WRONG_SHARD is not a stale map, even if the message reads like one.
    fc.before = (_node, method) => (method === 'put' ? { code: 9, details: 'key "w" is not owned by shard 1 (map epoch 1)', reason: 'SOMETHING_ELSE' } : undefined);
    const e = await rejection(c.put('w', 'v3'));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.reason).toBe('SOMETHING_ELSE');
    expect(fc.total('getShardMap')).toBe(3);
  });

  it('a lone write on the stream follows a NOT_LEADER redirect (retry-safe) to the named leader, once, even without a session', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 1, replicas: 3 });
    const group = fc.map.shards[0]!.group;
    fc.leaders.set(group, 1);
    const c = client(fc.nodes.map((n) => n.address), { sessions: false });
    await c.put('/a', 'v1');
    expect(c.routeOf('/a').address).toBe(fc.node(1).address);
    // Leadership moved to node 3; node 1 refuses (not executed) and names it.
    fc.leaders.set(group, 3);
    fc.before = (node, method) =>
      method === 'put' && node.id === 1 ? { code: 14, details: 'not the leader', retrySafe: true, reason: 'NOT_LEADER', leader: fc.node(3).address } : undefined;
    fc.resetCalls();
    expect((await c.put('/a', 'v2')).succeeded).toBe(true);
    expect([fc.node(1).streamed.put, fc.node(2).streamed.put, fc.node(3).streamed.put]).toEqual([1, 0, 1]);
    expect(fc.total('put')).toBe(0);
    expect(c.routeOf('/a').address).toBe(fc.node(3).address);
    // An unknown outcome (UNAVAILABLE, not retry-safe) of a write without a session is not retried.
    fc.before = (_node, method) => (method === 'put' ? { code: 14, details: 'commit not confirmed' } : undefined);
    fc.resetCalls();
    const e = await rejection(c.put('/a', 'v3'));
    expect(e.code).toBe('UNAVAILABLE');
    expect(e.retrySafe).toBe(false);
    expect(fc.sent('put')).toBe(1);
  });

  it('falls back to one leader hint when the servers answer GetShardMap with UNIMPLEMENTED', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 3, replicas: 1, sharded: false });
    // A pre-sharding cluster: one leader (node 2) for everything.
    for (const s of fc.map.shards) fc.leaders.set(s.group, 2);
    const c = client([fc.node(1).address]);
    for (let i = 0; i < 10; i++) await c.put(`k${i}`, String(i));
    for (let i = 0; i < 10; i++) expect(text((await c.get(`k${i}`)).value)).toBe(String(i));
    expect(c.mapEpoch).toBe(0);
    expect(c.leader).toBe(fc.node(2).address);
    expect(c.routeOf('k1')).toEqual({ shard: undefined, address: fc.node(2).address });
    // Writes and reads go on the stream, even one at a time.
    expect(fc.node(1).streamed.put).toBe(1); // the first call, before the leader was known
    expect(fc.node(2).streamed.put).toBe(9);
    expect(fc.node(2).streamed.get).toBe(10);
    expect(fc.total('put') + fc.total('get')).toBe(0);
    expect(fc.node(3).calls.put + fc.node(3).calls.get + fc.node(3).calls.pipelineOp).toBe(0);
    expect(fc.total('getShardMap')).toBe(1); // asked once, never again
    const p = c.pipeline();
    const rs = await Promise.all(Array.from({ length: 30 }, (_, i) => p.put(`p${i}`, 'x')));
    expect(rs.every((r) => r.succeeded)).toBe(true);
    expect(p.streams).toEqual([fc.node(2).address]);
    await p.close();
    expect((await rejection(c.shardMap())).code).toBe('UNIMPLEMENTED');
    expect(fc.total('getShardMap')).toBe(2);
  });

  it('keeps the single leader hint with shardRouting: false', async () => {
    const fc = await fakeCluster({ nodes: 2, shards: 2, replicas: 1 });
    const c = client([fc.node(1).address], { shardRouting: false });
    for (let i = 0; i < 5; i++) await c.put(`k${i}`, 'x');
    expect(fc.total('getShardMap')).toBe(0);
    expect(c.mapEpoch).toBe(0);
  });
});

describe('batching of the default path', () => {
  it('sends concurrent calls on one stream per leading node, a lone call too, large values and batching: false unary', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 6, replicas: 2 });
    const c = client([fc.node(1).address]);
    const groups = fc.map.shards.map((s) => s.group);
    const keys = keysOverGroups((k) => fc.groupOf(k), groups, 20);
    await c.put(keys[0]!, 'warm'); // the map, and a lone call
    fc.resetCalls();
    await c.put(keys[0]!, 'lone');
    expect(fc.total('put')).toBe(0);
    expect(fc.leaderOf(keys[0]!).streamed.put).toBe(1);
    fc.resetCalls();
    const puts = await Promise.all(keys.map((k) => c.put(k, `v-${k}`)));
    expect(puts.every((r) => r.succeeded)).toBe(true);
    const gets = await Promise.all(keys.map((k) => c.get(k)));
    expect(gets.map((g) => text(g.value))).toEqual(keys.map((k) => `v-${k}`));
    const dels = await Promise.all(keys.slice(0, 10).map((k) => c.delete(k)));
    expect(dels.every((d) => d.deleted)).toBe(true);
    // Every call went on its shard leader's stream (batched, or the first of a burst alone).
    expect(fc.total('put') + fc.total('get') + fc.total('delete')).toBe(0);
    expect(fc.total('pipelineOp')).toBe(2 * keys.length + 10);
    expect(fc.forwarded).toBe(0);
    for (const n of fc.nodes) expect(n.calls.pipeline).toBeLessThanOrEqual(1);

    fc.resetCalls();
    const big = new Uint8Array(100 * 1024);
    await Promise.all([c.put(keys[1]!, big), c.put(keys[2]!, big), c.put(keys[3]!, big)]);
    expect(fc.total('put')).toBe(3);
    expect(fc.total('pipelineOp')).toBe(0);

    const u = client([fc.node(1).address], { batching: false });
    await u.put(keys[0]!, 'warm');
    fc.resetCalls();
    await Promise.all(keys.map((k) => u.put(k, 'x')));
    expect(fc.total('put')).toBe(keys.length);
    expect(fc.total('pipelineOp')).toBe(0);
  });
});

describe('pipeline routing', () => {
  it('opens one stream per node leading the ops shards and sends each op straight there', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 6, replicas: 2 });
    const c = client([fc.node(1).address]);
    const groups = fc.map.shards.map((s) => s.group);
    const keys = keysOverGroups((k) => fc.groupOf(k), groups, 50);
    const p = c.pipeline();
    const puts = await Promise.all(keys.map((k) => p.put(k, `v-${k}`)));
    expect(puts.every((r) => r.succeeded)).toBe(true);
    const gets = await Promise.all(keys.map((k) => p.get(k)));
    expect(gets.map((g) => text(g.value))).toEqual(keys.map((k) => `v-${k}`));
    expect([...p.streams].sort()).toEqual(fc.nodes.map((n) => n.address).sort());
    expect(fc.forwarded).toBe(0);
    for (const n of fc.nodes) {
      expect(n.calls.pipeline).toBe(1);
      expect(n.calls.pipelineOp).toBe(2 * keys.filter((k) => fc.leaderOf(k) === n).length);
    }
    await p.close();
    expect(p.streams).toEqual([]);
  });

  it('moves ops off a stream whose node cannot be reached', async () => {
    const fc = await fakeCluster({ nodes: 1, shards: 2, replicas: 1 });
    // The map places shard 2 on a node that is down; the live node serves (forwards) everything.
    const map = initialMap(
      [
        { id: 1, address: fc.node(1).address },
        { id: 2, address: '127.0.0.1:1' },
      ],
      { shards: 2, replicas: 1 },
    );
    fc.setMap({ ...map, epoch: 1 });
    const down = map.shards.find((s) => s.preferredLeader === 2)!.group;
    const c = client([fc.node(1).address]);
    const keys = keysOverGroups((k) => fc.groupOf(k), [1, 2], 5);
    const p = c.pipeline();
    const rs = await Promise.all(keys.map((k) => p.put(k, 'x')));
    expect(rs.every((r) => r.succeeded)).toBe(true);
    // Moved to another stream rather than re-run as unary calls.
    expect(fc.node(1).calls.pipelineOp).toBe(keys.length);
    expect(fc.node(1).calls.put).toBe(0);
    expect(p.streams).toEqual([fc.node(1).address]);
    // Later calls of that shard skip the unreachable address.
    const k2 = keys.find((k) => fc.groupOf(k) === down)!;
    expect(c.routeOf(k2).address).toBe(fc.node(1).address);
    await p.close();
  });
});

describe('unreachable and frozen nodes', () => {
  it('moves on from a node that accepts connections but never answers, even for writes', async () => {
    // A black hole: TCP connections are accepted, nothing is ever answered (like a SIGSTOPped node).
    const sockets: Socket[] = [];
    const hole = createServer((sock) => sockets.push(sock));
    await new Promise<void>((r) => hole.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => {
      for (const sock of sockets) sock.destroy();
      return new Promise<void>((r) => hole.close(() => r()));
    });
    const holeAddress = `127.0.0.1:${(hole.address() as AddressInfo).port}`;
    const fc = await fakeCluster({ nodes: 1, shards: 2, replicas: 1 });
    const map = initialMap(
      [
        { id: 1, address: fc.node(1).address },
        { id: 2, address: holeAddress },
      ],
      { shards: 2, replicas: 1 },
    );
    fc.setMap({ ...map, epoch: 1 });
    const frozen = map.shards.find((x) => x.preferredLeader === 2)!.group;
    const keys = keysOverGroups((k) => fc.groupOf(k), [frozen], 3);
    const c = client([fc.node(1).address], { connectTimeoutMs: 200, defaultDeadlineMs: 5_000 });
    const t0 = Date.now();
    expect((await c.put(keys[0]!, 'v')).succeeded).toBe(true);
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(fc.node(1).streamed.put).toBe(1); // sent once, to the live node (on its stream)
    expect(c.routeOf(keys[1]!).address).toBe(fc.node(1).address);
    // A fresh pipeline's stream to the frozen node never gets its ops: they move to the live node.
    fc.resetCalls();
    const c2 = client([fc.node(1).address], { connectTimeoutMs: 200 });
    const p = c2.pipeline();
    const rs = await Promise.all(keys.map((k) => p.put(k, 'w')));
    expect(rs.every((r) => r.succeeded)).toBe(true);
    expect(fc.node(1).calls.pipelineOp).toBe(keys.length);
    await p.close();
  });
});

describe('attempt timeouts and suspect nodes', () => {
  it('a read whose leader froze moves to the new leader after one attempt timeout, and new calls avoid the frozen node until it answers again', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 1, replicas: 3 });
    const group = fc.map.shards[0]!.group;
    fc.leaders.set(group, 1);
    const c = client(fc.nodes.map((n) => n.address), { attemptTimeoutMs: 300, defaultDeadlineMs: 5_000 });
    await c.put('/a', 'v1');
    expect(c.routeOf('/a').address).toBe(fc.node(1).address);
    // Node 1 freezes (its connections stay open) and node 2 takes over.
    fc.frozen.add(1);
    fc.leaders.set(group, 2);
    const t0 = Date.now();
    expect((await c.get('/a')).found).toBe(true);
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(300);
    expect(took).toBeLessThan(1_500);
    expect(c.suspectNodes()).toEqual([fc.node(1).address]);
    // New calls do not try the frozen node.
    fc.resetCalls();
    for (let i = 0; i < 5; i++) expect((await c.get('/a')).found).toBe(true);
    expect(fc.node(1).calls.get).toBe(0);
    // It answers again: a probe clears the suspicion.
    fc.frozen.delete(1);
    const deadline = Date.now() + 5_000;
    while (c.suspectNodes().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(c.suspectNodes()).toEqual([]);
  });

  it('a write with a session is retried on the new leader after one attempt timeout, with the same session id and seq', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 1, replicas: 3 });
    const group = fc.map.shards[0]!.group;
    fc.leaders.set(group, 1);
    const seen: { node: number; session: { id: string; seq: number; ackedBelow: number } }[] = [];
    fc.before = (node, method, req) => {
      if (method === 'put') seen.push({ node: node.id, session: (req as { session: { id: string; seq: number; ackedBelow: number } }).session });
      return undefined;
    };
    const c = client(fc.nodes.map((n) => n.address), { attemptTimeoutMs: 300, defaultDeadlineMs: 5_000 });
    await c.put('/a', 'v1');
    fc.frozen.add(1);
    fc.leaders.set(group, 2);
    const t0 = Date.now();
    expect((await c.put('/a', 'v2')).succeeded).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1_500);
    await c.put('/a', 'v3');
    // The frozen node counted the second put but never answered (the hook runs only for answered calls).
    expect(seen.map((s) => s.node)).toEqual([1, 2, 2]);
    const [first, retried, third] = seen.map((s) => s.session);
    expect(first!.id).toMatch(/^[A-Za-z0-9_-]{16,64}$/);
    expect(retried).toMatchObject({ id: first!.id, seq: 2 });
    expect(third).toMatchObject({ id: first!.id, seq: 3, ackedBelow: 3 });
    expect(fc.node(1).streamed.put).toBe(2);
    expect(fc.total('put')).toBe(0); // every attempt went on a stream
    expect(c.suspectNodes()).toEqual([fc.node(1).address]); // it answered nothing on its stream meanwhile
  });

  it('against servers without the Pipeline method (UNIMPLEMENTED), lone and concurrent calls run as unary calls', async () => {
    const fc = await fakeCluster({ nodes: 2, shards: 2, replicas: 1, pipeline: false });
    const c = client([fc.node(1).address]);
    expect((await c.put('a', '1')).succeeded).toBe(true);
    expect((await c.get('a')).found).toBe(true);
    const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => c.put(`k${i}`, 'v')));
    expect(rs.every((r) => r.succeeded)).toBe(true);
    await c.delete('a');
    expect(fc.total('put')).toBe(21);
    expect(fc.total('delete')).toBe(1);
    expect(fc.total('pipelineOp')).toBe(0);
    expect(fc.total('pipeline')).toBe(0); // the fake counts only served streams: none was
  });

  it('pipelined reads and session writes leave a stream whose node stops answering, after one attempt timeout', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 1, replicas: 3 });
    const group = fc.map.shards[0]!.group;
    fc.leaders.set(group, 1);
    const c = client(fc.nodes.map((n) => n.address), { attemptTimeoutMs: 300, defaultDeadlineMs: 5_000 });
    const p = c.pipeline();
    expect((await p.put('/a', 'v1')).succeeded).toBe(true); // the stream to node 1 is up
    fc.frozen.add(1);
    fc.leaders.set(group, 2);
    const t0 = Date.now();
    const [put, get] = await Promise.all([p.put('/a', 'v2'), p.get('/a')]);
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(put.succeeded).toBe(true);
    expect(get.found).toBe(true);
    expect(c.suspectNodes()).toEqual([fc.node(1).address]);
    await p.close().catch(() => undefined);
  });

  it('a write without a session is not sent twice: it waits on the frozen node until its deadline', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 1, replicas: 3 });
    const group = fc.map.shards[0]!.group;
    fc.leaders.set(group, 1);
    const c = client(fc.nodes.map((n) => n.address), { attemptTimeoutMs: 200, defaultDeadlineMs: 1_000, sessions: false });
    await c.put('/a', 'v1');
    fc.frozen.add(1);
    fc.leaders.set(group, 2);
    fc.resetCalls();
    const err = await rejection(c.put('/a', 'v2'));
    expect(err.code).toBe('DEADLINE_EXCEEDED');
    expect(fc.sent('put')).toBe(1);
    expect(fc.node(1).streamed.put).toBe(1);
  });
});

describe('transactions', () => {
  it('applies compares and writes atomically in one shard, and refuses keys of several shards', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const s = await server(backend);
    const c = client([s.address]);
    const [a, b, other] = (() => {
      const g = backend.groupOf('a');
      const same = keysOverGroups((k) => backend.groupOf(k), [g], 2, 'same').find((k) => backend.groupOf(k) === g)!;
      const diff = keysOverGroups((k) => backend.groupOf(k), backend.groups, 1, 'diff').find((k) => backend.groupOf(k) !== g)!;
      return ['a', same, diff];
    })();
    const p = await c.put(a, 'one');
    const ok = await c.txn({
      compares: [
        { key: a, version: p.version },
        { key: b, version: 0 },
      ],
      writes: [
        { type: 'put', key: b, value: utf8('two') },
        { type: 'delete', key: a },
      ],
    });
    expect(ok).toMatchObject({ succeeded: true, failedCompares: [], shard: backend.groupOf(a) });
    expect(ok.revision).toBeGreaterThan(p.revision);
    expect(ok.timestampMs).toBeGreaterThan(0);
    expect((await c.get(a)).found).toBe(false);
    expect(await c.get(b)).toMatchObject({ found: true, version: ok.revision });
    expect(text((await c.get(b)).value)).toBe('two');

    const no = await c.txn({ compares: [{ key: a, version: 0 }, { key: b, version: 1 }], writes: [{ type: 'put', key: a, value: 'x' }] });
    expect(no).toMatchObject({ succeeded: false, failedCompares: [1], shard: backend.groupOf(a) });
    expect((await c.get(a)).found).toBe(false);

    const e = await rejection(c.txn({ writes: [{ type: 'put', key: a, value: 'x' }, { type: 'put', key: other, value: 'y' }] }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/CROSS_SHARD/);
    expect((await c.get(other)).found).toBe(false);

    expect((await rejection(c.txn({ writes: [{ type: 'put', key: '', value: 'x' }] }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejection(c.txn({ compares: [{ key: 'a', version: -1 }] }))).code).toBe('INVALID_ARGUMENT');
  });

  it('goes to the leader of the first key shard: on its stream once one is open there (servers that take txn ops), else unary', async () => {
    const fc = await fakeCluster({ nodes: 3, shards: 3, replicas: 1 });
    const c = client([fc.node(1).address]);
    const keys = keysOverGroups((x) => fc.groupOf(x), [1, 2, 3], 1);
    await c.get('warm');
    fc.resetCalls();
    for (const k of keys) {
      const r = await c.txn({ compares: [{ key: k, version: 0 }], writes: [{ type: 'put', key: k, value: 'v' }] });
      expect(r).toMatchObject({ succeeded: true, shard: fc.groupOf(k) });
      expect(fc.leaderOf(k).calls.txn + fc.leaderOf(k).streamed.txn).toBe(1);
    }
    expect(fc.forwarded).toBe(0);
    // Once every leader's stream is open (and said it takes txns), lone txns ride it.
    const versions = new Map<string, number>();
    for (const k of keys) versions.set(k, (await c.get(k)).version);
    fc.resetCalls();
    for (const k of keys) {
      const r = await c.txn({ compares: [{ key: k, version: versions.get(k)! }], writes: [{ type: 'put', key: k, value: 'w' }] });
      expect(r).toMatchObject({ succeeded: true, shard: fc.groupOf(k) });
      const stale = await c.txn({ compares: [{ key: k, version: versions.get(k)! }], writes: [{ type: 'put', key: k, value: 'x' }] });
      expect(stale).toMatchObject({ succeeded: false, failedCompares: [0] });
    }
    expect(fc.total('txn')).toBe(0);
    for (const k of keys) expect(fc.leaderOf(k).streamed.txn).toBe(2);
    // Keys of several shards: refused (INVALID_ARGUMENT) as on the unary path.
    expect((await rejection(c.txn({ writes: keys.map((k) => ({ type: 'put' as const, key: k, value: 'x' })) }))).code).toBe('INVALID_ARGUMENT');
    expect(fc.forwarded).toBe(0);
  });
});

describe('multi-shard list, status and map', () => {
  it('lists across shards or one shard, and reports the new status fields and the map', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const s = await server(backend);
    const c = client([s.address]);
    const keys = keysOverGroups((k) => backend.groupOf(k), backend.groups, 3, 'l/');
    for (const k of keys) await c.put(k, k);
    const all = [];
    for await (const it of c.listAll('l/', { limit: 5 })) all.push(it.key);
    expect(all).toEqual([...keys].sort());
    const page = await c.list('l/');
    expect(Object.keys(page.shardRevisions).map(Number).sort()).toEqual(backend.groups);
    const g = backend.groups[2]!;
    const one = await c.list('l/', { shard: g });
    expect(one.items.map((i) => i.key)).toEqual(keys.filter((k) => backend.groupOf(k) === g).sort());
    expect(one.shardRevisions).toEqual({ [g]: backend.sms.get(g)!.revision });

    const st = await c.status();
    expect(st.mapEpoch).toBe(1);
    expect(st.groups.map((x) => x.group)).toEqual(backend.groups);
    expect(st.groups[0]).toMatchObject({ pool: '', shardIndex: 0, descriptorEpoch: 1, keys: 3 });
    const map = await c.shardMap();
    expect(map.epoch).toBe(1);
    expect(map.shards.map((x) => x.group)).toEqual(backend.groups);
    expect(map.members[0]!.address).toBe(s.address);
  });
});

describe('watch resumption', () => {
  it('resumes a watch spanning shards with the resume token: no gap, no duplicate', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const s = await server(backend);
    const c = client([s.address]);
    const requests: WatchRequest[] = [];
    const watch = backend.watch.bind(backend);
    backend.watch = (req: WatchRequest, sink: WatchSink) => {
      requests.push(req);
      return watch(req, sink);
    };
    const keys = keysOverGroups((k) => backend.groupOf(k), backend.groups, 5, 'w/');
    await c.put(keys[0]!, 'before'); // history the watch must not deliver
    const w = c.watch('w/', { progressIntervalMs: 20 });
    const first = await w.next();
    expect(first.value).toMatchObject({ progress: true, events: [] });
    expect(first.value!.resumeToken).not.toBe('');

    const half = keys.length / 2;
    for (const k of keys.slice(0, half)) await c.put(k, `1-${k}`);
    const batches: KvWatchBatch[] = [];
    const got = await takeEvents(w, half, batches);

    // The server ends the watch; changes made before the client reconnects must still arrive once.
    const subWatches = requests.length;
    backend.cancelWatches('test restart');
    for (const k of keys.slice(half)) backend.apply({ type: 'put', key: k, value: utf8(`2-${k}`) });
    got.push(...(await takeEvents(w, keys.length - half, batches)));
    expect(requests.length).toBe(subWatches + backend.groups.length);
    // Resumed from the token: each shard right after its last delivered revision (not "from now").
    for (const r of requests.slice(subWatches)) expect(r.fromRevision).toBeGreaterThan(0);

    expect(got.map((e) => `${e.key}=${text(e.value)}`).sort()).toEqual(
      [...keys.slice(0, half).map((k) => `${k}=1-${k}`), ...keys.slice(half).map((k) => `${k}=2-${k}`)].sort(),
    );
    for (const e of got) expect(e.shard).toBe(backend.groupOf(e.key));
    // Per shard, revisions strictly increase.
    for (const g of backend.groups) {
      const revs = got.filter((e) => e.shard === g).map((e) => e.revision);
      expect(revs).toEqual([...revs].sort((x, y) => x - y));
      expect(new Set(revs).size).toBe(revs.length);
    }
    const token = batches[batches.length - 1]!.resumeToken;
    expect(token).not.toBe('');
    expect(w.resumeToken).not.toBe('');
    w.close();

    // A later watch resumes from the caller's token: exactly what happened after it.
    backend.apply({ type: 'put', key: keys[1]!, value: utf8('3') });
    backend.apply({ type: 'delete', key: keys[2]! });
    const w2 = c.watch('w/', { resumeToken: token });
    const later = await takeEvents(w2, 2);
    expect(later.map((e) => `${e.type} ${e.key}`).sort()).toEqual([`delete ${keys[2]}`, `put ${keys[1]}`].sort());
    w2.close();
  });

  it('delivers every event of a transaction (one revision, several keys)', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const s = await server(backend);
    const c = client([s.address]);
    const g = backend.groupOf('t/0');
    const keys = keysOverGroups((k) => backend.groupOf(k), [g], 3, 't/').filter((k) => backend.groupOf(k) === g);
    const w = c.watch('t/', { progressIntervalMs: 20 });
    await w.next();
    const r = await c.txn({ writes: keys.map((k) => ({ type: 'put' as const, key: k, value: k })) });
    await c.put(keys[0]!, 'after');
    const ev = await takeEvents(w, keys.length + 1);
    expect(ev.map((e) => `${e.key}@${e.revision}`)).toEqual([...keys.map((k) => `${k}@${r.revision}`), `${keys[0]}@${r.revision + 1}`]);
    w.close();
  });

  it('watches one shard with fromRevision as before', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const s = await server(backend);
    const c = client([s.address]);
    const g = backend.groups[1]!;
    const keys = keysOverGroups((k) => backend.groupOf(k), backend.groups, 2, 'o/');
    for (const k of keys) await c.put(k, 'x');
    const w = c.watch('o/', { shard: g, fromRevision: 1 });
    const mine = keys.filter((k) => backend.groupOf(k) === g);
    const ev = await takeEvents(w, mine.length);
    expect(ev.map((e) => e.key)).toEqual(mine);
    expect(ev.map((e) => e.revision)).toEqual([1, 2]);
    expect(ev.every((e) => e.shard === g)).toBe(true);
    expect(w.revision).toBe(2);
    w.close();
  });
});
