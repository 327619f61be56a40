/**
 * In-process tests of multi-Raft sharding on the node: the bootstrap map, shard descriptors,
 * routing, atomic multi-key operations, pool creation with its fence, and members joining and
 * leaving while replicas move (three to four KvNodes over a loopback transport).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KvNode, META_GROUP, type NodeOptions } from '../../src/node/kv-node.js';
import { ClusterAdmin, type ClusterProbe } from '../../src/node/cluster-admin.js';
import { LoopbackHub, type LoopbackTransport } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';
import { CrossShardError, NodeRemovedError, NotLeaderError, UnavailableError, WrongShardError } from '../../src/node/backend.js';
import { ownsKey, shardOf, type ClusterMap } from '../../src/sharding/index.js';
import { ShardingError } from '../../src/sharding/index.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);
const soon = (ms = 10_000) => ({ deadlineMs: Date.now() + ms });

interface Harness {
  nodes: KvNode[];
  hub: LoopbackHub;
  transports: Map<number, LoopbackTransport>;
  admins: ClusterAdmin[];
  add(id: number, opts?: Partial<NodeOptions>): Promise<KvNode>;
}

let running: Harness | undefined;

afterEach(async () => {
  for (const a of running?.admins ?? []) a.stop();
  for (const n of running?.nodes ?? []) await n.stop();
  running = undefined;
});

/** A probe that asks the in-process nodes directly (the kvd binary uses gRPC). */
function probeOf(h: () => Harness): ClusterProbe {
  return {
    statuses: async () => Promise.all(h().nodes.map((n) => n.status())),
    countKeys: async (group, prefix, limit, deadlineMs) => {
      for (;;) {
        const l = h().nodes.find((n) => n.replica(group)?.isLeader);
        if (l) {
          const page = await l.list({ prefix, shard: group, keysOnly: true, consistency: 'linearizable', limit: 1000 }, { deadlineMs });
          return Math.min(limit, page.items.filter((i) => i.key === prefix || i.key.startsWith(`${prefix}/`)).length);
        }
        if (Date.now() > deadlineMs) throw new UnavailableError(`no leader for ${group}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
  };
}

/**
 * `n` nodes over a loopback hub; with `refuseNonMembers` a node refuses messages from nodes its
 * map does not list, naming its map epoch, as the gRPC peer service does.
 */
async function cluster(n: number, extra: Partial<NodeOptions> = {}, refuseNonMembers = false): Promise<Harness> {
  const nodeById = (id: number) => running?.nodes.find((x) => x.id === id);
  const hub = new LoopbackHub(
    refuseNonMembers
      ? { refuseNonMembers: { isMember: (receiver, sender) => nodeById(receiver)?.isMember(sender) ?? true, mapEpoch: (receiver) => nodeById(receiver)?.shardMap().epoch ?? 0 } }
      : {},
  );
  const members = new Map(Array.from({ length: n }, (_, i) => [i + 1, `127.0.0.1:${7200 + i + 1}`] as [number, string]));
  const h: Harness = {
    nodes: [],
    hub,
    transports: new Map(),
    admins: [],
    add: async (id, opts = {}) => {
      const transport = hub.transport(id);
      h.transports.set(id, transport);
      const node = await KvNode.open(
        { id, members, tickMs: 10, reconcileEveryMs: 20, log: silentLogger(), onFatal: (e) => { throw e; }, ...extra, ...opts },
        new MemoryEngine(),
        transport,
      );
      node.start();
      const admin = new ClusterAdmin(node, probeOf(() => h), silentLogger());
      admin.start();
      h.nodes.push(node);
      h.admins.push(admin);
      return node;
    },
  };
  running = h;
  for (let id = 1; id <= n; id++) await h.add(id);
  return h;
}

async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Runs `op` on whichever node accepts it (what the gRPC layer's forwarding does). */
async function anywhere<T>(h: Harness, op: (n: KvNode) => Promise<T>, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    for (const n of h.nodes) {
      try {
        return await op(n);
      } catch (e) {
        if (!(e instanceof NotLeaderError) && !(e instanceof UnavailableError)) throw e;
        last = e;
      }
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw last;
}

const metaLeader = (h: Harness) => until('a metadata leader', () => h.admins[h.nodes.findIndex((n) => n.replica(META_GROUP)?.isLeader)]);

/** Waits until every node's map is initialised and every data shard applied its descriptor. */
async function settled(h: Harness): Promise<ClusterMap> {
  return until('a settled map', () => {
    const maps = h.nodes.map((n) => n.shardMap());
    const e = maps[0]!.epoch;
    if (e === 0 || maps.some((m) => m.epoch !== e)) return undefined;
    for (const s of maps[0]!.shards) {
      const l = h.nodes.find((n) => n.replica(s.group)?.isLeader);
      if (!l || l.replica(s.group)!.descriptor === undefined) return undefined;
    }
    return maps[0];
  });
}

describe('sharding on the node', () => {
  it('starts with the bootstrap map, gives every shard its descriptor and routes keys to their shard', async () => {
    const h = await cluster(3, { defaultPool: { shards: 4 } });
    const map = await settled(h);
    expect(map.shards.map((s) => s.group)).toEqual([1, 2, 3, 4]);
    expect(map.metaVoters).toEqual([1, 2, 3]);
    // Every node hosts the metadata group and the shards the map places on it.
    for (const n of h.nodes) {
      expect(n.hostedGroups()).toEqual([0, ...map.shards.filter((s) => s.replicas.includes(n.id)).map((s) => s.group)]);
    }
    const keys = Array.from({ length: 200 }, (_, i) => `/k/${i}`);
    for (const key of keys) await anywhere(h, (n) => n.put({ key, value: enc(key) }, soon()));
    const perShard = new Map<number, number>();
    for (const key of keys) {
      const g = shardOf(map, key).group;
      perShard.set(g, (perShard.get(g) ?? 0) + 1);
      const l = h.nodes.find((n) => n.replica(g)?.isLeader)!;
      // The key lives in exactly its shard, whose descriptor owns it.
      expect(dec(l.replica(g)!.readValue(key)?.value)).toBe(key);
      expect(ownsKey(l.replica(g)!.descriptor!, key)).toBe(true);
      for (const other of map.shards.filter((s) => s.group !== g)) {
        const ol = h.nodes.find((n) => n.replica(other.group))!;
        expect(ol.replica(other.group)!.readValue(key)).toBeUndefined();
      }
      const got = await anywhere(h, (n) => n.get({ key, consistency: 'linearizable' }, soon()));
      expect(dec(got.value)).toBe(key);
    }
    expect([...perShard.values()].every((c) => c > 20)).toBe(true);
    // A listing of a prefix spanning shards needs a shard; with one, it lists only that shard.
    await expect(anywhere(h, (n) => n.list({ prefix: '/k/', keysOnly: true, consistency: 'linearizable' }, soon()))).rejects.toThrow(/spans 4 shards/);
    const one = await anywhere(h, (n) => n.list({ prefix: '/k/', shard: 2, keysOnly: true, consistency: 'linearizable', limit: 1000 }, soon()));
    expect(one.items.length).toBe(perShard.get(2));
    // System keys (the descriptor) are not listed under "/".
    expect(one.items.some((i) => i.key.startsWith('/_sys/'))).toBe(false);
  });

  it('applies an atomic multi-key operation within one shard and refuses keys of different shards', async () => {
    const h = await cluster(3, { defaultPool: { shards: 4 } });
    const map = await settled(h);
    const a = '/t/a';
    const same = Array.from({ length: 100 }, (_, i) => `/t/b${i}`).find((k) => shardOf(map, k).group === shardOf(map, a).group)!;
    const other = Array.from({ length: 100 }, (_, i) => `/t/c${i}`).find((k) => shardOf(map, k).group !== shardOf(map, a).group)!;
    const ok = await anywhere(h, (n) => n.txn({ compares: [{ key: a, version: 0 }], writes: [{ type: 'put', key: a, value: enc('1') }, { type: 'put', key: same, value: enc('2') }] }, soon()));
    expect(ok.succeeded).toBe(true);
    const ga = await anywhere(h, (n) => n.get({ key: a, consistency: 'linearizable' }, soon()));
    const gb = await anywhere(h, (n) => n.get({ key: same, consistency: 'linearizable' }, soon()));
    expect(ga.version).toBe(ok.revision);
    expect(gb.version).toBe(ok.revision);
    // A failed compare changes nothing.
    const no = await anywhere(h, (n) => n.txn({ compares: [{ key: a, version: 0 }], writes: [{ type: 'delete', key: same }] }, soon()));
    expect(no.succeeded).toBe(false);
    expect(no.failedCompares).toEqual([0]);
    expect((await anywhere(h, (n) => n.get({ key: same, consistency: 'linearizable' }, soon()))).found).toBe(true);
    await expect(h.nodes[0]!.txn({ compares: [], writes: [{ type: 'put', key: a, value: enc('x') }, { type: 'put', key: other, value: enc('y') }] }, soon())).rejects.toBeInstanceOf(CrossShardError);
  });

  it('creates a pool: fences the prefix in the parent shards, then routes its keys to its own shards', async () => {
    const h = await cluster(3, { defaultPool: { shards: 2 } });
    await settled(h);
    const admin = await metaLeader(h);
    // Keys under the prefix already exist: refused, nothing created.
    await anywhere(h, (n) => n.put({ key: '/busy/1', value: enc('x') }, soon()));
    await expect(admin.createPool({ name: '/busy', shards: 2 }, Date.now() + 10_000)).rejects.toMatchObject({ code: 'POOL_NOT_EMPTY' });
    expect(h.nodes[0]!.shardMap().pools.map((p) => p.name)).toEqual(['']);
    await expect(admin.createPool({ name: 'bad', shards: 2 }, Date.now() + 10_000)).rejects.toBeInstanceOf(ShardingError);

    const { pool } = await admin.createPool({ name: '/cameras', shards: 4, affinity: '^(/cameras/[^/]+)' }, Date.now() + 20_000);
    expect(pool.state).toBe('active');
    const map = await settled(h);
    const camShards = map.shards.filter((s) => s.pool === '/cameras');
    expect(camShards.length).toBe(4);
    // Related keys share a shard; keys are stored in the pool's shards only.
    for (let cam = 0; cam < 20; cam++) {
      for (const part of ['state', 'photo']) {
        const key = `/cameras/${cam}/${part}`;
        await anywhere(h, (n) => n.put({ key, value: enc(part) }, soon()));
      }
      expect(shardOf(map, `/cameras/${cam}/state`).group).toBe(shardOf(map, `/cameras/${cam}/photo`).group);
      expect(camShards.map((s) => s.group)).toContain(shardOf(map, `/cameras/${cam}/state`).group);
    }
    // The default pool's shards now refuse the prefix (a stale router cannot write there).
    const parent = map.shards.find((s) => s.pool === '')!;
    const pl = await until('parent leader', () => h.nodes.find((n) => n.replica(parent.group)?.isLeader));
    await expect(pl.execute(parent.group, { type: 'put', key: '/cameras/9/x', value: enc('stale') }, soon(), 'client')).rejects.toBeInstanceOf(WrongShardError);
    expect(pl.replica(parent.group)!.descriptor!.excluded).toEqual(['/cameras']);
  });

  it('adds a member: it joins as a learner, catches up, takes replicas and leadership; removing it moves them back', async () => {
    const h = await cluster(3, { defaultPool: { shards: 4 } });
    await settled(h);
    for (let i = 0; i < 50; i++) await anywhere(h, (n) => n.put({ key: `/m/${i}`, value: enc(String(i)) }, soon()));
    const admin = await metaLeader(h);
    await admin.addMember(4, '127.0.0.1:7204', Date.now() + 10_000);
    const n4 = await h.add(4, { join: true, seedMap: h.nodes[0]!.shardMap() });
    // The controller gives node 4 replicas (balanced: 4 shards x 3 replicas over 4 nodes = 3 each).
    await until('node 4 to host 3 data shards', () => n4.hostedGroups().filter((g) => g !== 0).length === 3 && n4.shardMap().shards.every((s) => s.replicas.length === 3), 40_000);
    await until('node 4 to lead a shard', () => n4.hostedGroups().some((g) => g !== 0 && n4.replica(g)!.isLeader), 40_000);
    for (let i = 0; i < 50; i++) {
      const got = await anywhere(h, (n) => n.get({ key: `/m/${i}`, consistency: 'linearizable' }, soon()));
      expect(dec(got.value)).toBe(String(i));
    }
    // Remove node 1: its replicas move away, then it is forgotten.
    const admin2 = await metaLeader(h);
    await admin2.removeMember(1, Date.now() + 10_000);
    await until('member 1 to be gone', () => h.nodes.filter((n) => n.id !== 1).every((n) => !n.shardMap().members.some((m) => m.id === 1)), 60_000);
    const map = h.nodes[1]!.shardMap();
    expect(map.shards.every((s) => !s.replicas.includes(1))).toBe(true);
    for (let i = 0; i < 50; i++) {
      const got = await anywhere(h, (n) => (n.id === 1 ? Promise.reject(new UnavailableError('removed')) : n.get({ key: `/m/${i}`, consistency: 'linearizable' }, soon())));
      expect(dec(got.value)).toBe(String(i));
    }
  }, 120_000);

  it('ignores a non-member refusal from a peer whose map is not newer than its own', async () => {
    const h = await cluster(3, { defaultPool: { shards: 2 } }, true);
    const map = await settled(h);
    const n3 = h.nodes[2]!;
    const t3 = h.transports.get(3)!;
    // A refuser that is behind (or level): proves nothing, the node keeps serving.
    t3.refused({ by: 1, mapEpoch: map.epoch });
    t3.refused({ by: 2, mapEpoch: map.epoch - 1 });
    await new Promise((r) => setImmediate(r));
    expect(n3.removal).toBeUndefined();
    expect(t3.closed).toBe(false);
    await until('node 3 ready', () => n3.readiness().ready);
    const got = await n3.get({ key: '/nothing', consistency: 'serializable' }, soon());
    expect(got.found).toBe(false);
  });

  it('a removed node learns it from a refusal by a newer map: stops its groups and transport, refuses calls, reports not ready', async () => {
    const h = await cluster(4, { defaultPool: { shards: 2 } }, true);
    await settled(h);
    const n4 = h.nodes[3]!;
    const removed: number[] = [];
    n4.onRemoved((info) => removed.push(info.epoch));
    const epochBefore = n4.shardMap().epoch;
    const admin = await metaLeader(h);
    await admin.removeMember(4, Date.now() + 10_000);
    await until('member 4 dropped from the others\' maps', () => h.nodes.filter((n) => n.id !== 4).every((n) => !n.shardMap().members.some((x) => x.id === 4)), 60_000);
    const info = await until('node 4 to learn it was removed', () => n4.removal, 30_000);
    await until('node 4 to finish leaving', () => removed.length === 1);
    expect(removed).toEqual([info.epoch]);
    // The refuser's map (newer than node 4's own) no longer lists node 4.
    expect(info.epoch).toBeGreaterThan(info.ownEpoch);
    expect(info.ownEpoch).toBeGreaterThanOrEqual(epochBefore);
    expect(n4.shardMap().members.some((m) => m.id === 4)).toBe(true); // its own (last) map still lists it
    expect(h.nodes.find((n) => n.id === info.by)!.shardMap().members.some((m) => m.id === 4)).toBe(false);
    expect(info.message).toMatch(new RegExp(`removed from the cluster at map epoch ${info.epoch}`));
    expect(h.transports.get(4)!.closed).toBe(true);
    const r = n4.readiness();
    expect(r.ready).toBe(false);
    expect(r.reason).toMatch(/^NODE_REMOVED: /);
    const err = await n4.get({ key: '/x', consistency: 'serializable' }, soon()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NodeRemovedError);
    expect((err as NodeRemovedError).reason).toBe('NODE_REMOVED');
    expect((err as NodeRemovedError).retrySafe).toBe(true);
    await expect(n4.put({ key: '/x', value: enc('y') }, soon())).rejects.toBeInstanceOf(NodeRemovedError);
    // The others carry on without it.
    await anywhere({ ...h, nodes: h.nodes.filter((n) => n.id !== 4) }, (n) => n.put({ key: '/after', value: enc('ok') }, soon()));
    // A later refusal changes nothing.
    h.transports.get(4)!.refused({ by: 1, mapEpoch: info.epoch + 100 });
    expect(n4.removal).toBe(info);
  }, 120_000);

  it('a (re-)joined node ignores a refuser behind the map it joined with; a newer one counts', async () => {
    // Node 4 joins with a seed map (epoch 100) that lists it, as after `member remove` then `member add`.
    const seedMap: ClusterMap = {
      epoch: 100,
      members: [1, 2, 3, 4].map((id) => ({ id, address: `127.0.0.1:${7200 + id}`, state: 'active' as const })),
      metaVoters: [1, 2, 3],
      pools: [{ name: '', shards: 1, replicas: 3, state: 'active' as const } as unknown as ClusterMap['pools'][number]],
      shards: [{ group: 1, pool: '', index: 0, replicas: [1, 2, 3], initial: [1, 2, 3], preferredLeader: 1 }],
      nextGroup: 2,
    };
    const hub = new LoopbackHub();
    const t4 = hub.transport(4);
    const n4 = await KvNode.open({ id: 4, members: new Map(), join: true, seedMap, tickMs: 10, log: silentLogger(), onFatal: (e) => { throw e; } }, new MemoryEngine(), t4);
    running = { nodes: [n4], hub, transports: new Map([[4, t4]]), admins: [], add: () => Promise.reject(new Error('unused')) };
    n4.start();
    // A peer still at epoch 90 (removal applied, re-add not yet) refuses node 4: no proof.
    t4.refused({ by: 1, mapEpoch: 90 });
    t4.refused({ by: 2, mapEpoch: 100 });
    await new Promise((r) => setImmediate(r));
    expect(n4.removal).toBeUndefined();
    expect(t4.closed).toBe(false);
    // A map newer than the seed that drops node 4 again does.
    t4.refused({ by: 3, mapEpoch: 120 });
    await until('node 4 removed', () => n4.removal);
    expect(n4.removal).toMatchObject({ epoch: 120, by: 3 });
    await until('transport closed', () => t4.closed);
  });
});
