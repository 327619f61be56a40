/**
 * Multi-process sharding tests with real kvd processes (3 to 4 nodes, 8+ shards): routing of every
 * API call to the right shard from any node, kill -9 of a node leading several shards under load,
 * a node added and another removed under load, atomic multi-key operations in a pool with an
 * affinity pattern, a watch over many shards resumed with its token after a disconnect, and leaders
 * spread over the nodes, moved off a dead node and back when it returns.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { protoPath } from 'grpc-health-check';
import { afterEach, describe, expect, it } from 'vitest';
import { ClusterStubClient } from '../../src/wire/proto.js';
import { AdminClient } from '../../src/client/admin-client.js';
import type { KvClient } from '../../src/client/index.js';
import { shardOf, type ClusterMap } from '../../src/sharding/index.js';
import { KvdCluster } from './harness.js';

const dec = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);
const TOKEN = 'test-admin-token-0123456789';

let cluster: KvdCluster | undefined;
const admins: AdminClient[] = [];

afterEach(async () => {
  for (const a of admins.splice(0)) a.close();
  await cluster?.stop();
  cluster = undefined;
});

function admin(c: KvdCluster): AdminClient {
  const a = new AdminClient({ endpoints: c.endpoints, token: TOKEN });
  admins.push(a);
  return a;
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Every node reports the same map epoch and every shard of it has a leader with its descriptor. */
async function settled(c: KvdCluster, client: KvClient): Promise<ClusterMap> {
  return until('the cluster to settle', async () => {
    const map = await client.shardMap();
    if (map.epoch === 0) return undefined;
    const leaders = new Set<number>();
    for (const n of c.nodes) {
      if (!n.proc) continue;
      const st = await client.status(n.address);
      if (st.mapEpoch !== map.epoch) return undefined;
      for (const g of st.groups) if (g.role === 'Leader' && g.leader === st.nodeId && g.descriptorEpoch > 0) leaders.add(g.group);
    }
    return map.shards.every((s) => leaders.has(s.group)) ? map : undefined;
  });
}

/** Which node leads each group, from every live node's status. */
async function leaders(c: KvdCluster, client: KvClient): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const n of c.nodes) {
    if (!n.proc) continue;
    try {
      const st = await client.status(n.address);
      for (const g of st.groups) if (g.role === 'Leader' && g.leader === st.nodeId) out.set(g.group, st.nodeId);
    } catch {
      // down
    }
  }
  return out;
}

/** Each live node's map epoch and members, as it serves them (for failure messages). */
async function mapsServed(c: KvdCluster): Promise<string> {
  const out: string[] = [];
  for (const n of c.nodes) {
    if (!n.proc) continue;
    try {
      const m = await c.client([n.address]).shardMap({ deadlineMs: 2_000 });
      out.push(`node ${n.id}: epoch ${m.epoch}, members ${m.members.map((x) => `${x.id}${x.state === 'active' ? '' : `(${x.state})`}`).join(',')}`);
    } catch (e) {
      out.push(`node ${n.id}: ${String(e)}`);
    }
  }
  return out.join('; ');
}

/** Writers putting distinct values over many shards, remembering what was acknowledged. */
function startLoad(client: KvClient, writers: number, prefix = '/load') {
  const acked = new Map<string, string>();
  let stopped = false;
  let errors = 0;
  let lastError = '';
  let acks = 0;
  const loops = Array.from({ length: writers }, async (_, w) => {
    for (let i = 0; !stopped; i++) {
      const key = `${prefix}/${w}/${i % 40}`;
      const value = `${w}-${i}`;
      try {
        await client.put(key, value, { deadlineMs: 4000 });
        acked.set(key, value);
        acks++;
      } catch (e) {
        errors++; // outcome unknown: not counted as acknowledged
        lastError = String(e);
        // Yield to timers: a closed client rejects at once, and a tight retry loop would starve the process.
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  });
  return {
    acked,
    get errors() {
      return errors;
    },
    get lastError() {
      return lastError;
    },
    /** Acknowledged writes so far (keys repeat, so `acked.size` saturates). */
    get acks() {
      return acks;
    },
    async stop() {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

async function verify(client: KvClient, acked: Map<string, string>): Promise<void> {
  for (const [key, value] of acked) expect(dec((await client.get(key)).value), key).toBe(value);
}

const healthPkg = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath, { enums: String })) as unknown as {
  grpc: { health: { v1: { Health: new (address: string, creds: grpc.ChannelCredentials) => grpc.Client & { check(req: { service: string }, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void } } } };
};

/** Node `id`, removed from the cluster at map `epoch`: health NOT_SERVING, /readyz 503, every client call UNAVAILABLE NODE_REMOVED, a note in its data folder. */
async function expectRemovedNode(c: KvdCluster, id: number, epoch: number): Promise<void> {
  const n = c.node(id);
  const health = new healthPkg.grpc.health.v1.Health(n.address, grpc.credentials.createInsecure());
  const stub = new ClusterStubClient(n.address, grpc.credentials.createInsecure());
  try {
    // Health is re-evaluated every 500 ms.
    await until('NOT_SERVING', async () => {
      const s = await new Promise<string>((res, rej) => health.check({ service: '' }, { deadline: new Date(Date.now() + 2000) }, (e, r) => (e ? rej(e) : res(r!.status))));
      return s === 'NOT_SERVING';
    }, 10_000);
    const ready = await fetch(`http://127.0.0.1:${n.metricsPort}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.text()).toMatch(/NODE_REMOVED/);
    const err = await new Promise<grpc.ServiceError | undefined>((res) => stub.getShardMap({}, new grpc.Metadata(), { deadline: new Date(Date.now() + 3000) }, (e) => res(e ?? undefined)));
    expect(err?.code).toBe(grpc.status.UNAVAILABLE);
    expect(err?.metadata.get('kv-reason')).toEqual(['NODE_REMOVED']);
    expect(err?.details).toMatch(new RegExp(`removed from the cluster at map epoch ${epoch}`));
    const kv = c.client([n.address], { defaultDeadlineMs: 2000 });
    await expect(kv.get('/anything')).rejects.toMatchObject({ code: 'UNAVAILABLE', reason: 'NODE_REMOVED' });
    const note = JSON.parse(readFileSync(join(n.dataDir, 'removed-from-cluster.json'), 'utf8')) as { id: number; epoch: number };
    expect(note).toMatchObject({ id, epoch });
  } finally {
    health.close();
    stub.close();
  }
}

describe('sharding with real processes', () => {
  it('routes every API call to the key\'s shard from any node', async () => {
    cluster = await KvdCluster.start({ nodes: 3, defaultShards: 8, extraArgs: ['--admin-token', TOKEN] });
    const client = cluster.client();
    const map = await settled(cluster, client);
    expect(map.shards.length).toBe(8);
    const keys = Array.from({ length: 120 }, (_, i) => `/r/${i}`);
    // Writes through each single node (forwarding) and through the routing client.
    for (const [i, key] of keys.entries()) {
      const via = i % 4 === 3 ? client : cluster.client([cluster.nodes[i % 3]!.address]);
      const put = await via.put(key, `v${i}`);
      expect(put.succeeded).toBe(true);
    }
    // Each shard holds exactly its keys.
    for (const s of map.shards) {
      const page = await client.list('/r/', { shard: s.group, keysOnly: true, limit: 1000 });
      const expected = keys.filter((k) => shardOf(map, k).group === s.group).sort();
      expect(page.items.map((it) => it.key).sort(), `shard ${s.group}`).toEqual(expected);
    }
    // Reads, conditional writes, deletes and triggers from every node.
    for (const [i, key] of keys.slice(0, 24).entries()) {
      const one = cluster.client([cluster.nodes[i % 3]!.address]);
      const got = await one.get(key);
      expect(dec(got.value)).toBe(`v${keys.indexOf(key)}`);
      const cas = await one.put(key, 'cas', { expectedVersion: got.version });
      expect(cas.succeeded).toBe(true);
      const stale = await one.put(key, 'no', { expectedVersion: got.version });
      expect(stale.succeeded).toBe(false);
      if (i % 2 === 0) expect((await one.delete(key)).deleted).toBe(true);
      expect((await one.trigger(key, 't')).revision).toBeGreaterThan(0);
    }
    // A listing across all shards is complete, ordered and paged exactly.
    const seen: string[] = [];
    let token = '';
    do {
      const page = await client.list('/r/', { keysOnly: true, limit: 7, pageToken: token });
      seen.push(...page.items.map((it) => it.key));
      token = page.nextPageToken;
    } while (token);
    const live = keys.filter((k, i) => !(keys.indexOf(k) < 24 && i % 2 === 0)).sort();
    expect(seen).toEqual([...seen].sort());
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen.length).toBe(live.length);
    // Pipelined writes land in their shards too.
    const p = client.pipeline();
    const results = await Promise.all(keys.slice(0, 40).map((k) => p.put(k, 'piped')));
    await p.close();
    expect(results.every((r) => r.succeeded)).toBe(true);
    for (const k of keys.slice(0, 40)) expect(dec((await client.get(k)).value)).toBe('piped');
  });

  it('kill -9 of the node leading the most shards under load: every shard recovers, nothing acknowledged is lost', async () => {
    cluster = await KvdCluster.start({ nodes: 3, defaultShards: 8, tickMs: 50, electionTicks: 10, extraArgs: ['--admin-token', TOKEN] });
    const client = cluster.client();
    const map = await settled(cluster, client);
    const load = startLoad(client, 12);
    await until('writes', () => load.acks >= 200);
    const led = await leaders(cluster, client);
    const byNode = new Map<number, number[]>();
    for (const [g, n] of led) if (g !== 0) byNode.set(n, [...(byNode.get(n) ?? []), g]);
    const [victim, groups] = [...byNode].sort((a, b) => b[1].length - a[1].length)[0]!;
    expect(groups.length).toBeGreaterThanOrEqual(2);
    await cluster.kill(victim, 'SIGKILL');
    const killedAt = Date.now();
    await until('every shard to have a live leader', async () => {
      const now = await leaders(cluster!, client);
      return map.shards.every((s) => now.has(s.group) && now.get(s.group) !== victim);
    }, 20_000);
    console.log(`kill -9 of node ${victim} (leading shards ${groups.join(',')}): all 8 shards led again after ${Date.now() - killedAt} ms`);
    const before = load.acks;
    await until('writes after the kill', () => load.acks >= before + 100);
    await load.stop();
    await verify(client, new Map(load.acked));
    // The node comes back and catches up.
    await cluster.startNode(victim);
    const one = cluster.client([cluster.node(victim).address]);
    const [k, v] = [...load.acked][0]!;
    await until('the restarted node to serve', async () => dec((await one.get(k, { consistency: 'serializable' })).value) === v);
  });

  it('spreads leaders over the nodes, moves them off a dead node and back when it returns', async () => {
    cluster = await KvdCluster.start({ nodes: 3, defaultShards: 6, tickMs: 50, electionTicks: 10, extraArgs: ['--admin-token', TOKEN] });
    const client = cluster.client();
    const map = await settled(cluster, client);
    const spread = (led: Map<number, number>, nodes: number[]) => {
      const counts = nodes.map((n) => [...led].filter(([g, l]) => g !== 0 && l === n).length);
      return { counts, balanced: map.shards.every((s) => led.has(s.group)) && Math.max(...counts) - Math.min(...counts) <= 1 };
    };
    // 6 shards over 3 nodes: 2 leaders each.
    await until('leaders spread over 3 nodes', async () => spread(await leaders(cluster!, client), [1, 2, 3]).balanced);
    await cluster.kill(3, 'SIGKILL');
    // Its shards elect leaders on the survivors, 3 each.
    await until('leaders spread over the 2 survivors', async () => spread(await leaders(cluster!, client), [1, 2]).balanced, 30_000);
    await cluster.startNode(3);
    // Back: the preferred leaders move some shards to node 3 again.
    const back = await until('leaders spread over 3 nodes again', async () => {
      const s = spread(await leaders(cluster!, client), [1, 2, 3]);
      return s.balanced ? s : undefined;
    }, 60_000);
    expect(back.counts).toEqual([2, 2, 2]);
  });

  it('adds a node and removes another under load without losing acknowledged writes', async () => {
    cluster = await KvdCluster.start({ nodes: 3, defaultShards: 8, extraArgs: ['--admin-token', TOKEN] });
    const client = cluster.client();
    await settled(cluster, client);
    const adm = admin(cluster);
    const load = startLoad(client, 8);
    await until('writes', () => load.acks >= 100);
    const { address, peerAddress } = await cluster.reserveAddresses();
    await adm.addMember(4, address, peerAddress);
    await cluster.join(4, address, peerAddress);
    // Node 4 receives replicas (8 shards x 3 replicas over 4 nodes: 6 each) and leads some.
    await until('node 4 to host and lead shards', async () => {
      const st = await client.status(address);
      const data = st.groups.filter((g) => g.group !== 0 && (g.voters.includes(4)));
      return data.length >= 5 && st.groups.some((g) => g.group !== 0 && g.role === 'Leader');
    }, 60_000);
    const removeAt = Date.now();
    await adm.removeMember(1);
    // Through the routing client, whose endpoints include node 1: once removed, node 1 no longer
    // learns new maps, and the client must pass over the older map it serves.
    await until('member 1 to be gone from the map', async () => !(await client.shardMap()).members.some((m) => m.id === 1), 90_000).catch(async (e: unknown) => {
      throw new Error(`${String(e)}; maps the nodes serve: ${await mapsServed(cluster!)}`);
    });
    const removalMs = Date.now() - removeAt;
    const map = await client.shardMap();
    expect(map.shards.every((s) => !s.replicas.includes(1) && s.replicas.length === 3)).toBe(true);
    const before = load.acks;
    await until('writes after the moves', () => load.acks >= before + 50);
    await load.stop();
    // Node 1 learns it was removed (a peer with a newer map refuses it) and stops acting as a member.
    const removedEvent = await cluster.waitForEvent(1, 'removed', 60_000);
    const learnedMs = (removedEvent['receivedAtMs'] as number) - removeAt;
    expect(removedEvent).toMatchObject({ event: 'removed', id: 1 });
    expect(removedEvent['epoch']).toBeGreaterThan(removedEvent['ownEpoch'] as number);
    await expectRemovedNode(cluster, 1, removedEvent['epoch'] as number);
    await cluster.kill(1, 'SIGKILL'); // it hosts nothing now: the others must serve everything
    // A later start on its data folder refuses, with exit code 2.
    const restart = await cluster.startNode(1).then(() => 'started', (e: unknown) => String(e));
    expect(restart).toMatch(/exited before ready \(code 2, signal null\)/);
    expect(restart).toMatch(/removed from the cluster/);
    cluster.node(1).proc = undefined;
    const rest = cluster.client(cluster.nodes.filter((n) => n.id !== 1).map((n) => n.address));
    await verify(rest, new Map(load.acked));
    console.log(`add/remove under load: member 1 gone from the map ${removalMs} ms after its removal began, and knew it was removed ${learnedMs} ms after; ${load.acks} writes acknowledged (${load.acked.size} keys verified), ${load.errors} failed writes (unknown outcome) during the moves`);
  }, 240_000);

  it('runs atomic multi-key operations within a shard of a pool with affinity, and refuses keys of different shards', async () => {
    cluster = await KvdCluster.start({ nodes: 3, defaultShards: 2, extraArgs: ['--admin-token', TOKEN] });
    const client = cluster.client();
    await settled(cluster, client);
    const adm = admin(cluster);
    const created = await adm.createPool({ name: '/cameras', shards: 8, affinity: '^(/cameras/[^/]+)' });
    expect(created.pool.state).toBe('active');
    const map = await settled(cluster, client);
    expect(map.pools.find((p) => p.name === '/cameras')?.shards).toBe(8);
    const t = await client.txn({
      compares: [{ key: '/cameras/7/state', version: 0 }],
      writes: [
        { type: 'put', key: '/cameras/7/state', value: 'focus' },
        { type: 'put', key: '/cameras/7/photo', value: 'p1' },
      ],
    });
    expect(t.succeeded).toBe(true);
    expect(t.shard).toBe(shardOf(map, '/cameras/7/photo').group);
    const st = await client.get('/cameras/7/state');
    expect(st.version).toBe(t.revision);
    const again = await client.txn({ compares: [{ key: '/cameras/7/state', version: 0 }], writes: [{ type: 'delete', key: '/cameras/7/photo' }] });
    expect(again.succeeded).toBe(false);
    expect(again.failedCompares).toEqual([0]);
    expect((await client.get('/cameras/7/photo')).found).toBe(true);
    const otherCam = Array.from({ length: 50 }, (_, i) => `/cameras/${i}/state`).find((k) => shardOf(map, k).group !== t.shard)!;
    await expect(client.txn({ writes: [{ type: 'put', key: '/cameras/7/state', value: 'x' }, { type: 'put', key: otherCam, value: 'y' }] })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    // A pool over a prefix that already holds keys is refused.
    await client.put('/stocks/Q', '1');
    await expect(adm.createPool({ name: '/stocks', shards: 2 })).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
  });

  it('resumes a watch over many shards with its token: no gap, no duplicate', async () => {
    cluster = await KvdCluster.start({ nodes: 3, defaultShards: 8, extraArgs: ['--admin-token', TOKEN] });
    const client = cluster.client();
    await settled(cluster, client);
    const seen: string[] = [];
    let token = '';
    const first = client.watch('/w/', { progressIntervalMs: 100 });
    // The watch is established once its first response (a progress notification) arrives.
    const head = await first.next();
    expect(head.done).toBe(false);
    token = head.value!.resumeToken;
    const writer = (async () => {
      for (let i = 0; i < 300; i++) await client.put(`/w/${i}`, String(i));
    })();
    for await (const b of first) {
      for (const e of b.events) seen.push(`${e.key}@${e.shard}:${e.revision}`);
      token = b.resumeToken;
      if (seen.length >= 100) break;
    }
    first.close();
    expect(token).not.toBe('');
    // Resume through another node while writes continue.
    const other = cluster.client([cluster.nodes[2]!.address]);
    const second = other.watch('/w/', { resumeToken: token });
    for await (const b of second) {
      for (const e of b.events) seen.push(`${e.key}@${e.shard}:${e.revision}`);
      if (seen.length >= 300) break;
    }
    second.close();
    await writer;
    expect(new Set(seen).size).toBe(seen.length);
    expect(new Set(seen.map((s) => s.split('@')[0])).size).toBe(300);
  });
});
