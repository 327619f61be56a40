/**
 * The web console's state gathering (src/console/gather.ts) over fake sources: the snapshot's
 * shape with every node up, a down node (its status call fails, or never answers) shown as down
 * with its replicas and a stale leader flagged, rates and p99 from two samples of the counters,
 * and the charts' history reset when a node goes down.
 */
import { describe, expect, it } from 'vitest';
import { ConsoleGatherer, p99Between, type ConsoleSources, type ExtensionOnNode, type NodeStats } from '../../src/console/gather.js';
import type { GroupStatusInfo, NodeStatusInfo } from '../../src/node/backend.js';
import type { ClusterMap } from '../../src/sharding/index.js';

const MAP: ClusterMap = {
  epoch: 7,
  members: [
    { id: 1, address: 'n1:1', state: 'active' },
    { id: 2, address: 'n2:1', state: 'active' },
    { id: 3, address: 'n3:1', state: 'active' },
  ],
  metaVoters: [1, 2, 3],
  pools: [
    { name: '', shards: 1, replicas: 3, state: 'active' },
    { name: '/cams', shards: 1, replicas: 3, state: 'active', affinity: '^/cams/([^/]+)' },
  ],
  shards: [
    { group: 1, pool: '', index: 0, replicas: [1, 2, 3], initial: [1, 2, 3], preferredLeader: 1 },
    { group: 2, pool: '/cams', index: 0, replicas: [1, 2, 3], initial: [1, 2, 3], preferredLeader: 2 },
  ],
  nextGroup: 3,
};

/** One group as `node` reports it, led by `leader` at `term`. */
function group(node: number, g: number, leader: number, term: number, extra: Partial<GroupStatusInfo> = {}): GroupStatusInfo {
  const isLeader = node === leader;
  return {
    group: g,
    leader,
    term,
    role: isLeader ? 'Leader' : 'Follower',
    commitIndex: 100,
    appliedIndex: 100,
    firstIndex: 1,
    lastIndex: 100,
    voters: [1, 2, 3],
    learners: [],
    revision: 50,
    ...(g === 0 ? {} : { pool: g === 1 ? '' : '/cams', shardIndex: 0 }),
    descriptorEpoch: 7,
    matched: isLeader ? new Map([[1, 100], [2, 100], [3, 100]].filter(([id]) => id !== node) as [number, number][]) : new Map(),
    keys: isLeader ? 10 * g : 0,
    ...extra,
  };
}

function status(node: number, groups: GroupStatusInfo[]): NodeStatusInfo {
  return { nodeId: node, version: '0.1.0', mapEpoch: 7, members: MAP.members.map((m) => ({ id: m.id, address: m.address })), groups };
}

const EXT: ExtensionOnNode = {
  name: 'stock-<b>watch</b>',
  version: '1.0.0',
  generation: 2,
  state: 'running',
  error: '',
  delivering: false,
  runsIn: 'process',
  invocations: 5,
  errors: 1,
  timeouts: 0,
  workerRestarts: 0,
  deadLettered: 0,
  backlog: 3,
  lastLatencyMs: 4.5,
  prefixes: ['/stocks/'],
};

function stats(requests: number, buckets: [number, number][] = [[0.001, requests], [Infinity, requests]]): NodeStats {
  return { requests, errors: 0, buckets: buckets.map(([le, count]) => ({ le, count })), rssBytes: 1 << 20, uptimeSeconds: 10 };
}

/** Fake sources: node 1 serves; `statuses`, `down` and `hang` say how each member answers. */
class FakeSources implements ConsoleSources {
  readonly selfId = 1;
  down = new Set<number>();
  hang = new Set<number>();
  statuses = new Map<number, NodeStatusInfo>();
  counters = new Map<number, NodeStats>();
  extensions = new Map<number, ExtensionOnNode[]>();
  map(): ClusterMap {
    return MAP;
  }
  selfStatus(): Promise<NodeStatusInfo> {
    return Promise.resolve(this.statuses.get(1)!);
  }
  selfExtensions(): readonly ExtensionOnNode[] {
    return this.extensions.get(1) ?? [];
  }
  selfStats(): Promise<NodeStats> {
    return Promise.resolve(this.counters.get(1) ?? stats(0));
  }
  private answer<T>(address: string, value: (id: number) => T): Promise<T> {
    const id = Number(address.slice(1, 2));
    if (this.hang.has(id)) return new Promise(() => {});
    if (this.down.has(id)) return Promise.reject(Object.assign(new Error('14 UNAVAILABLE: No connection established'), { details: 'No connection established' }));
    return Promise.resolve(value(id));
  }
  remoteStatus(address: string): Promise<NodeStatusInfo> {
    return this.answer(address, (id) => this.statuses.get(id)!);
  }
  remoteExtensions(address: string): Promise<readonly ExtensionOnNode[]> {
    return this.answer(address, (id) => this.extensions.get(id) ?? []);
  }
  remoteStats(address: string): Promise<NodeStats> {
    return this.answer(address, (id) => this.counters.get(id) ?? stats(0));
  }
}

/** A healthy cluster: node 1 leads the metadata group and shard 1, node 2 leads shard 2 (node 3 lags 5 entries there). */
function healthy(): FakeSources {
  const f = new FakeSources();
  for (const n of [1, 2, 3]) {
    f.statuses.set(
      n,
      status(n, [
        group(n, 0, 1, 3),
        group(n, 1, 1, 3),
        group(n, 2, 2, 4, n === 2 ? { matched: new Map([[1, 100], [3, 95]]) } : {}),
      ]),
    );
    f.extensions.set(n, [{ ...EXT, delivering: n === 1 }]);
  }
  return f;
}

describe('ConsoleGatherer', () => {
  it('describes every node, pool, shard and extension', async () => {
    const f = healthy();
    const s = await new ConsoleGatherer(f).gather();
    expect(s.servedBy).toBe(1);
    expect(s.mapEpoch).toBe(7);
    expect(s.nodes.map((n) => [n.id, n.address, n.up, n.version, n.self, n.leads, n.replicas])).toEqual([
      [1, 'n1:1', true, '0.1.0', true, 2, 3],
      [2, 'n2:1', true, '0.1.0', false, 1, 3],
      [3, 'n3:1', true, '0.1.0', false, 0, 3],
    ]);
    expect(s.shards.map((g) => [g.group, g.pool, g.leader, g.term, g.leaderDown])).toEqual([
      [0, undefined, 1, 3, false],
      [1, '', 1, 3, false],
      [2, '/cams', 2, 4, false],
    ]);
    const cams = s.shards.find((g) => g.group === 2)!;
    expect(cams.voters).toEqual([1, 2, 3]);
    expect(cams.learners).toEqual([]);
    expect(cams.replicas).toEqual([
      { node: 1, role: 'follower', lag: 0 },
      { node: 2, role: 'leader', lag: 0 },
      { node: 3, role: 'follower', lag: 5 },
    ]);
    expect(cams.keys).toBe(20);
    expect(s.pools).toEqual([
      { name: '', shards: 1, replicas: 3, state: 'active', keys: 10, leaderless: 0 },
      { name: '/cams', shards: 1, replicas: 3, state: 'active', affinity: '^/cams/([^/]+)', keys: 20, leaderless: 0 },
    ]);
    expect(s.extensions).toHaveLength(1);
    const ext = s.extensions[0]!;
    expect(ext.name).toBe('stock-<b>watch</b>'); // passed as data; the page sets it as text
    expect(ext.nodes.map((n) => [n.node, n.state, n.delivering, n.backlog, n.invocations])).toEqual([
      [1, 'running', true, 3, 5],
      [2, 'running', false, 3, 5],
      [3, 'running', false, 3, 5],
    ]);
    // A snapshot is plain JSON (it is sent as an event).
    expect(JSON.parse(JSON.stringify(s))).toEqual(s);
  });

  it('shows a node whose status call fails as down, with its replicas down and its leaderships stale', async () => {
    const f = healthy();
    f.down.add(2);
    const s = await new ConsoleGatherer(f).gather();
    const n2 = s.nodes.find((n) => n.id === 2)!;
    expect(n2.up).toBe(false);
    expect(n2.error).toContain('No connection established');
    expect(n2.version).toBeUndefined();
    expect(n2.history).toEqual([]);
    // The survivors still name node 2 as shard 2's leader (no election yet): flagged as down.
    const cams = s.shards.find((g) => g.group === 2)!;
    expect(cams.leader).toBe(2);
    expect(cams.leaderDown).toBe(true);
    expect(cams.replicas.find((r) => r.node === 2)!.role).toBe('down');
    expect(s.pools.find((p) => p.name === '/cams')!.leaderless).toBe(1);
    // Node 2's extensions are unknown, not invented.
    expect(s.extensions[0]!.nodes.map((n) => n.node)).toEqual([1, 3]);
  });

  it('shows the new leader once the survivors elected one', async () => {
    const f = healthy();
    f.down.add(2);
    for (const n of [1, 3]) f.statuses.set(n, status(n, [group(n, 0, 1, 3), group(n, 1, 1, 3), group(n, 2, 3, 5, n === 3 ? { matched: new Map([[1, 101]]), lastIndex: 101 } : {})]));
    const s = await new ConsoleGatherer(f).gather();
    const cams = s.shards.find((g) => g.group === 2)!;
    expect([cams.leader, cams.term, cams.leaderDown]).toEqual([3, 5, false]);
    expect(cams.replicas).toEqual([
      { node: 1, role: 'follower', lag: 0 },
      { node: 2, role: 'down' },
      { node: 3, role: 'leader', lag: 0 },
    ]);
  });

  it('does not wait for a node that never answers beyond its deadline', async () => {
    const f = healthy();
    f.hang.add(3);
    const started = Date.now();
    const s = await new ConsoleGatherer(f, { callDeadlineMs: 100 }).gather();
    expect(Date.now() - started).toBeLessThan(2_000);
    const n3 = s.nodes.find((n) => n.id === 3)!;
    expect(n3.up).toBe(false);
    expect(n3.error).toContain('no answer within 100 ms');
    expect(s.nodes.filter((n) => n.up).map((n) => n.id)).toEqual([1, 2]);
  });

  it('turns two samples of the counters into ops/s and p99, and restarts the series after a node was down', async () => {
    const f = healthy();
    let now = 1_000_000;
    const g = new ConsoleGatherer(f, { now: () => now });
    f.counters.set(2, stats(100, [[0.001, 50], [0.01, 100], [Infinity, 100]]));
    expect((await g.gather()).nodes.find((n) => n.id === 2)!.history).toEqual([]);
    now += 2000;
    // 200 more requests in 2 s: 197 within 1 ms, 3 within 10 ms (the 99th percentile is in the 10 ms bucket).
    f.counters.set(2, stats(300, [[0.001, 247], [0.01, 300], [Infinity, 300]]));
    const h = (await g.gather()).nodes.find((n) => n.id === 2)!.history;
    expect(h).toEqual([{ t: now, ops: 100, p99Ms: 10 }]);
    f.down.add(2);
    now += 1000;
    expect((await g.gather()).nodes.find((n) => n.id === 2)!.history).toEqual([]);
    f.down.delete(2);
    now += 1000;
    f.counters.set(2, stats(5));
    expect((await g.gather()).nodes.find((n) => n.id === 2)!.history).toEqual([]);
  });

  it('starts the charts anew after nobody watched for a while', async () => {
    const f = healthy();
    let now = 0;
    const g = new ConsoleGatherer(f, { now: () => now, maxGapMs: 5000 });
    for (let i = 1; i <= 3; i++) {
      now += 1000;
      f.counters.set(1, stats(i * 10));
      await g.gather();
    }
    now += 60_000;
    f.counters.set(1, stats(1000));
    expect((await g.gather()).nodes.find((n) => n.id === 1)!.history).toEqual([]);
    now += 1000;
    f.counters.set(1, stats(1010));
    expect((await g.gather()).nodes.find((n) => n.id === 1)!.history).toEqual([{ t: now, ops: 10, p99Ms: 1 }]);
  });

  it('keeps a bounded history per node', async () => {
    const f = healthy();
    let now = 0;
    const g = new ConsoleGatherer(f, { now: () => now, historyPoints: 3 });
    for (let i = 0; i < 6; i++) {
      now += 1000;
      f.counters.set(1, stats(i * 10));
      await g.gather();
    }
    const h = (await g.gather()).nodes.find((n) => n.id === 1)!.history;
    expect(h.length).toBe(3);
  });
});

describe('p99Between', () => {
  it('is null without requests and the bucket bound otherwise', () => {
    const b = (xs: [number, number][]) => xs.map(([le, count]) => ({ le, count }));
    expect(p99Between(b([[0.001, 5], [Infinity, 5]]), b([[0.001, 5], [Infinity, 5]]))).toBeNull();
    expect(p99Between([], b([[0.001, 100], [0.01, 100], [Infinity, 100]]))).toBe(1);
    // Slower than every finite bucket: the largest finite bound.
    expect(p99Between([], b([[0.001, 0], [0.01, 0], [Infinity, 10]]))).toBe(10);
  });
});
