/** Tests of kvctl's cluster commands (status, pool create|ls|describe, member add|remove|ls) run in-process against a fake sharded cluster: tables, --json, the admin token, leader redirects, error lines and exit codes. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EXIT, formatTable, main } from '../../src/cli/kvctl.js';
import { clusterServiceDefinition, type StatusResponseMsg } from '../../src/wire/proto.js';
import { MAX_POOL_SHARDS, MAX_REPLICAS, ShardingError } from '../../src/sharding/index.js';
import { deadAddress, FAKE_TOKEN, FakeCluster, group } from './fake-cluster.js';

const AFFINITY = '^/cameras/([^/]+)';

let cluster: FakeCluster;
let dead: string;

/** Three live nodes and a member (4, being removed) that does not answer. */
async function standardCluster(): Promise<FakeCluster> {
  const c = await FakeCluster.start(3);
  dead = await deadAddress();
  c.map = {
    epoch: 7,
    members: [
      ...c.nodes.map((n) => ({ id: n.id, address: n.address, state: 'active' as const })),
      { id: 4, address: dead, state: 'removing' as const },
    ],
    metaVoters: [1, 2, 3],
    pools: [
      { name: '', shards: 2, replicas: 3, state: 'active' },
      { name: '/cameras', shards: 1, replicas: 2, affinity: AFFINITY, retentionMs: 3_600_000, state: 'active' },
    ],
    shards: [
      { group: 1, pool: '', index: 0, replicas: [1, 2, 3], initial: [1, 2, 3], preferredLeader: 1 },
      { group: 2, pool: '', index: 1, replicas: [1, 2, 3], initial: [1, 2, 3], preferredLeader: 2 },
      { group: 3, pool: '/cameras', index: 0, replicas: [2, 3], initial: [3, 4], preferredLeader: 3 },
    ],
    nextGroup: 4,
  };
  c.node(1).status = {
    version: 'fake',
    mapEpoch: 7,
    groups: [
      group({ group: 0, leader: 1, term: 2, role: 'leader', lastIndex: 50, voters: [1, 2, 3], matched: { 1: 50, 2: 50, 3: 48 } }),
      group({ group: 1, pool: '', shardIndex: 0, leader: 1, term: 3, role: 'leader', lastIndex: 100, voters: [1, 2, 3], matched: { 1: 100, 2: 98, 3: 100 }, keys: 10 }),
      group({ group: 2, pool: '', shardIndex: 1, leader: 2, term: 4, lastIndex: 29, voters: [1, 2, 3], keys: 5 }),
    ],
  };
  c.node(2).status = {
    version: 'fake',
    mapEpoch: 7,
    groups: [
      group({ group: 0, leader: 1, term: 2, voters: [1, 2, 3] }),
      group({ group: 1, pool: '', leader: 1, term: 3, voters: [1, 2, 3], keys: 10 }),
      group({ group: 2, pool: '', shardIndex: 1, leader: 2, term: 4, role: 'Leader', lastIndex: 30, voters: [1, 2, 3], matched: { 1: 30, 2: 30, 3: 25 }, keys: 5 }),
      group({ group: 3, pool: '/cameras', leader: 3, term: 1, role: 'Follower', voters: [3, 4], learners: [2], keys: 1 }),
    ],
  };
  c.node(3).status = {
    version: 'fake',
    mapEpoch: 6,
    groups: [
      group({ group: 0, leader: 1, term: 2, voters: [1, 2, 3] }),
      group({ group: 1, pool: '', leader: 1, term: 3, voters: [1, 2, 3], keys: 10 }),
      group({ group: 2, pool: '', shardIndex: 1, leader: 2, term: 4, voters: [1, 2, 3], keys: 5 }),
      group({ group: 3, pool: '/cameras', leader: 3, term: 1, role: 'leader', lastIndex: 9, voters: [3, 4], learners: [2], matched: { 3: 9, 4: 9, 2: 4 }, keys: 2 }),
    ],
  };
  return c;
}

beforeEach(async () => {
  cluster = await standardCluster();
});
afterEach(() => cluster.close());

async function kvctl(args: string[], env: Record<string, string> = {}, endpoints = cluster.node(1).address, adminTokenFiles: readonly string[] = []) {
  let out = '';
  let err = '';
  const code = await main(['--endpoints', endpoints, '--timeout', '3000', ...args], {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    env,
    adminTokenFiles, // none by default: a developer's own ./.data/admin-token must not change these tests
  });
  return { code, out, err };
}

const withToken = { KVCASCADE_ADMIN_TOKEN: FAKE_TOKEN };

describe('status', () => {
  it('prints nodes, pools and every group with leader, term, voters, learners and lag; a down member makes it exit 1', async () => {
    const [a1, a2, a3] = cluster.nodes.map((n) => n.address);
    const r = await kvctl(['status']);
    expect(r.code).toBe(EXIT.ERROR);
    expect(r.out).toBe(
      formatTable(
        ['NODE', 'ADDRESS', 'STATE', 'UP', 'HEALTH', 'MAP_EPOCH'],
        [
          // These fake nodes serve no grpc.health.v1 service: no answer is shown as '-'.
          ['1', a1!, 'active', 'up', '-', '7'],
          ['2', a2!, 'active', 'up', '-', '7'],
          ['3', a3!, 'active', 'up', '-', '6'],
          ['4', dead, 'removing', 'down', '-', '-'],
        ],
      ) +
        '\n' +
        formatTable(
          ['NAME', 'SHARDS', 'REPLICAS', 'AFFINITY', 'STATE'],
          [
            ['(default)', '2', '3', '-', 'active'],
            ['/cameras', '1', '2', AFFINITY, 'active'],
          ],
        ) +
        '\n' +
        formatTable(
          ['GROUP', 'POOL', 'INDEX', 'LEADER', 'TERM', 'VOTERS', 'LEARNERS', 'LAG'],
          [
            ['0', '(meta)', '-', '1', '2', '1,2,3', '-', '1:0,2:0,3:2'],
            ['1', '(default)', '0', '1', '3', '1,2,3', '-', '1:0,2:2,3:0'],
            ['2', '(default)', '1', '2', '4', '1,2,3', '-', '1:0,2:0,3:5'],
            ['3', '/cameras', '0', '3', '1', '3,4', '2', '2:5,3:0,4:0'],
          ],
        ),
    );
    expect(r.err).toMatch(new RegExp(`^kvctl: (UNAVAILABLE|DEADLINE_EXCEEDED): ${dead}: .+\\n$`));
  });

  it('prints one JSON document with --json', async () => {
    const r = await kvctl(['--json', 'status']);
    expect(r.code).toBe(EXIT.ERROR);
    const doc = JSON.parse(r.out) as { mapEpoch: number; nodes: Record<string, unknown>[]; pools: unknown[]; groups: Record<string, unknown>[] };
    expect(doc.mapEpoch).toBe(7);
    expect(doc.nodes).toHaveLength(4);
    expect(doc.nodes[0]).toMatchObject({ id: 1, state: 'active', up: true, mapEpoch: 7, replicas: 3, leaders: 2 });
    expect(doc.nodes[3]).toMatchObject({ id: 4, address: dead, state: 'removing', up: false, replicas: 0, leaders: 0, error: { code: expect.stringMatching(/UNAVAILABLE|DEADLINE_EXCEEDED/) } });
    expect(doc.pools).toEqual(cluster.map.pools);
    expect(doc.groups.map((g) => g.group)).toEqual([0, 1, 2, 3]);
    expect(doc.groups[0]).toMatchObject({ pool: null, index: null, leader: 1, term: 2, replicas: [1, 2, 3] });
    expect(doc.groups[3]).toEqual({
      group: 3,
      pool: '/cameras',
      index: 0,
      replicas: [2, 3],
      preferredLeader: 3,
      leader: 3,
      term: 1,
      voters: [3, 4],
      learners: [2],
      keys: 2,
      lag: { 2: 5, 3: 0, 4: 0 },
      reportedBy: [2, 3],
    });
  });

  it('exits 0 when every member answers, and shows unknown lag when no leader reports', async () => {
    cluster.map = { ...cluster.map, members: cluster.map.members.filter((m) => m.id !== 4) };
    cluster.node(3).status = { ...cluster.node(3).status!, groups: cluster.node(3).status!.groups!.map((g) => (g.group === 3 ? { ...g, role: 'candidate', leader: 0, term: 2 } : g)) };
    const r = await kvctl(['status']);
    expect(r.code).toBe(EXIT.OK);
    expect(r.err).toBe('');
    expect(r.out).toMatch(/\n3 +\/cameras +0 +none +2 +3,4 +2 +2:\?,3:\?,4:\?\n$/);
  });

  it('asks the endpoints when the nodes do not serve the shard map', async () => {
    const server = new grpc.Server();
    const status: StatusResponseMsg = { nodeId: 9, version: 'old', groups: [group({ group: 1, leader: 9, term: 5, role: 'leader', lastIndex: 3, voters: [9], matched: { 9: 3 } })], members: [], mapEpoch: 0 };
    server.addService(clusterServiceDefinition, { status: (_c: unknown, cb: grpc.sendUnaryData<StatusResponseMsg>) => cb(null, status) });
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    try {
      const r = await kvctl(['status'], {}, `127.0.0.1:${port}`);
      expect(r.err).toBe('');
      expect(r.code).toBe(EXIT.OK);
      expect(r.out).toBe(
        formatTable(['NODE', 'ADDRESS', 'STATE', 'UP', 'HEALTH', 'MAP_EPOCH'], [['9', `127.0.0.1:${port}`, 'unknown', 'up', '-', '0']]) +
          '\n' +
          formatTable(['GROUP', 'POOL', 'INDEX', 'LEADER', 'TERM', 'VOTERS', 'LEARNERS', 'LAG'], [['1', '?', '-', '9', '5', '9', '-', '9:0']]),
      );
    } finally {
      server.forceShutdown();
    }
  });

  it('counts a member as up when an endpoint answers with its id, and lists endpoints that are no member', async () => {
    const elsewhere = await deadAddress();
    cluster.map = {
      ...cluster.map,
      members: cluster.map.members.filter((m) => m.id !== 4).map((m) => (m.id === 1 ? { ...m, address: 'node1.invalid:7001' } : m)),
    };
    const r = await kvctl(['--json', 'status'], {}, `${cluster.node(1).address},${elsewhere}`);
    expect(r.code).toBe(EXIT.ERROR);
    const doc = JSON.parse(r.out) as { nodes: Array<{ id: number; address: string; up: boolean }> };
    expect(doc.nodes.map((n) => [n.id, n.address, n.up])).toEqual([
      [1, 'node1.invalid:7001', true],
      [2, cluster.node(2).address, true],
      [3, cluster.node(3).address, true],
      [0, elsewhere, false],
    ]);
    expect(r.err).toMatch(new RegExp(`^kvctl: (UNAVAILABLE|DEADLINE_EXCEEDED): ${elsewhere}: .+\n$`));
  });

  it('fails with one line when no endpoint answers', async () => {
    const r = await kvctl(['status'], {}, dead);
    expect(r.code).toBe(EXIT.ERROR);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/^kvctl: (UNAVAILABLE|DEADLINE_EXCEEDED): [^\n]+\n$/);
  });
});

describe('pool ls and describe', () => {
  it('lists pools as a table or JSON', async () => {
    expect(await kvctl(['pool', 'ls'])).toEqual({
      code: EXIT.OK,
      out: formatTable(
        ['NAME', 'SHARDS', 'REPLICAS', 'AFFINITY', 'STATE'],
        [
          ['(default)', '2', '3', '-', 'active'],
          ['/cameras', '1', '2', AFFINITY, 'active'],
        ],
      ),
      err: '',
    });
    expect(JSON.parse((await kvctl(['--json', 'pool', 'ls'])).out)).toEqual({ epoch: 7, pools: cluster.map.pools });
  });

  it("describes a pool and its shards' placement, leaders, keys and lag", async () => {
    const r = await kvctl(['pool', 'describe', '/cameras']);
    expect(r.code).toBe(EXIT.OK);
    expect(r.out).toBe(
      formatTable(['NAME', 'SHARDS', 'REPLICAS', 'AFFINITY', 'STATE', 'RETENTION_MS'], [['/cameras', '1', '2', AFFINITY, 'active', '3600000']]) +
        '\n' +
        formatTable(['SHARD', 'INDEX', 'REPLICAS', 'PREFERRED', 'LEADER', 'TERM', 'KEYS', 'LAG'], [['3', '0', '2,3', '3', '3', '1', '2', '2:5,3:0,4:0']]),
    );
    const def = await kvctl(['pool', 'describe', '(default)']);
    expect(def.out).toContain(
      formatTable(
        ['SHARD', 'INDEX', 'REPLICAS', 'PREFERRED', 'LEADER', 'TERM', 'KEYS', 'LAG'],
        [
          ['1', '0', '1,2,3', '1', '1', '3', '10', '1:0,2:2,3:0'],
          ['2', '1', '1,2,3', '2', '2', '4', '5', '1:0,2:0,3:5'],
        ],
      ),
    );
    const j = JSON.parse((await kvctl(['--json', 'pool', 'describe', ''])).out) as { pool: object; shards: object[] };
    expect(j.pool).toEqual({ name: '', shards: 2, replicas: 3, state: 'active' });
    expect(j.shards).toHaveLength(2);
    expect(j.shards[1]).toMatchObject({ group: 2, index: 1, leader: 2, term: 4, keys: 5, lag: { 1: 0, 2: 0, 3: 5 } });
  });

  it('reports an unknown pool with one line and exit code 1', async () => {
    expect(await kvctl(['pool', 'describe', '/nope'])).toEqual({
      code: EXIT.ERROR,
      out: '',
      err: 'kvctl: NOT_FOUND: pool "/nope" does not exist; kvctl pool ls lists the pools\n',
    });
  });
});

describe('pool create', () => {
  it('sends the pool to the metadata leader and prints it', async () => {
    cluster.metaLeader = 2;
    const r = await kvctl(['pool', 'create', '/logs', '--shards', '4', '--replicas', '2', '--affinity', '^/logs/(\\w+)', '--retention-ms', '1000'], withToken);
    expect(r).toEqual({
      code: EXIT.OK,
      out: formatTable(['NAME', 'SHARDS', 'REPLICAS', 'AFFINITY', 'STATE', 'EPOCH'], [['/logs', '4', '2', '^/logs/(\\w+)', 'active', '8']]),
      err: '',
    });
    expect(cluster.calls).toEqual([{ node: 2, method: 'createPool', args: [{ name: '/logs', shards: 4, replicas: 2, affinity: '^/logs/(\\w+)', retentionMs: 1000 }] }]);
    const j = await kvctl(['--json', '--admin-token', FAKE_TOKEN, 'pool', 'create', '/metrics', '--shards', '1']);
    expect(JSON.parse(j.out)).toEqual({ pool: { name: '/metrics', shards: 1, replicas: 3, state: 'active' }, epoch: 8 });
    expect(cluster.calls[1]).toEqual({ node: 2, method: 'createPool', args: [{ name: '/metrics', shards: 1 }] });
  });

  it('prints the mapped error in one line', async () => {
    cluster.failWith = () => new ShardingError('POOL_EXISTS', 'pool /cameras already exists');
    expect(await kvctl(['pool', 'create', '/cameras', '--shards', '2'], withToken)).toEqual({
      code: EXIT.ERROR,
      out: '',
      err: 'kvctl: ALREADY_EXISTS: POOL_EXISTS: pool /cameras already exists; choose another name (kvctl pool ls lists the pools)\n',
    });
    cluster.failWith = () => new ShardingError('NOT_ENOUGH_MEMBERS', 'replicas 5 exceeds the 3 active member(s)');
    const few = await kvctl(['pool', 'create', '/big', '--shards', '2', '--replicas', '5'], withToken);
    expect(few.code).toBe(EXIT.ERROR);
    expect(few.err).toBe('kvctl: FAILED_PRECONDITION: NOT_ENOUGH_MEMBERS: replicas 5 exceeds the 3 active member(s); add members first (kvctl member add) or ask for fewer replicas\n');
  });

  it('needs the admin token', async () => {
    const wrong = await kvctl(['--admin-token', 'wrong', 'pool', 'create', '/x', '--shards', '1']);
    expect(wrong).toEqual({ code: EXIT.ERROR, out: '', err: 'kvctl: PERMISSION_DENIED: wrong admin token\n' });
    const dir = mkdtempSync(join(tmpdir(), 'kvctl-no-token-'));
    try {
      const none = await kvctl(['pool', 'create', '/x', '--shards', '1'], {}, undefined, [join(dir, 'missing'), join(dir, 'also-missing')]);
      expect(none).toEqual({ code: EXIT.USAGE, out: '', err: 'kvctl: UNAUTHENTICATED: admin token required: --admin-token, $KVCASCADE_ADMIN_TOKEN or ./.data/admin-token\n' });
      expect(cluster.calls).toEqual([]);
      // The first token file that exists is used (./.data/admin-token, then the checkout's own).
      writeFileSync(join(dir, 'token'), 'wrong-from-file\n');
      const fromFile = await kvctl(['pool', 'create', '/x', '--shards', '1'], {}, undefined, [join(dir, 'missing'), join(dir, 'token')]);
      expect(fromFile.err).toBe('kvctl: PERMISSION_DENIED: wrong admin token\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects bad command lines with exit code 64', async () => {
    for (const args of [
      ['pool', 'create', '/x'],
      ['pool', 'create', '/x', '--shards', '0'],
      ['pool', 'create', '/x', '--shards', String(MAX_POOL_SHARDS + 1)],
      ['pool', 'create', '/x', '--shards', '2', '--replicas', String(MAX_REPLICAS + 1)],
      ['pool', 'create', '/x', '--shards', '2', '--retention-ms', '-5'],
      ['pool', 'describe'],
      ['member', 'add', 'x', 'h:1'],
      ['member', 'add', '5'],
      ['member', 'add', '5', 'node5:7001'],
      ['member', 'remove', '0'],
    ]) {
      const r = await kvctl(args, withToken);
      expect(r.code, args.join(' ')).toBe(EXIT.USAGE);
      expect(r.err, args.join(' ')).toMatch(/^kvctl: USAGE: [^\n]+\n$/);
      expect(r.out, args.join(' ')).toBe('');
    }
    expect(cluster.calls).toEqual([]);
  });
});

describe('member', () => {
  it('add and remove go to the metadata leader', async () => {
    cluster.metaLeader = 3;
    expect(await kvctl(['member', 'add', '5', 'node5:7001', '--peer', 'node5:7101'], withToken)).toEqual({
      code: EXIT.OK,
      out: formatTable(['ID', 'ADDRESS', 'PEER ADDRESS', 'EPOCH'], [['5', 'node5:7001', 'node5:7101', '8']]),
      err: '',
    });
    expect(await kvctl(['member', 'remove', '4'], withToken)).toEqual({
      code: EXIT.OK,
      out: 'member 4 is being removed (map epoch 8): its replicas move to other members first; kvctl member ls shows progress\n',
      err: '',
    });
    expect(JSON.parse((await kvctl(['--json', 'member', 'remove', '4'], withToken)).out)).toEqual({ id: 4, state: 'removing', epoch: 8 });
    expect(cluster.calls.map((c) => [c.node, c.method, ...c.args])).toEqual([
      [3, 'addMember', 5, 'node5:7001', 'node5:7101'],
      [3, 'removeMember', 4],
      [3, 'removeMember', 4],
    ]);
  });

  it('prints a refused removal in one line', async () => {
    cluster.failWith = () => new ShardingError('BUSY', 'member 4 still hosts 1 replica');
    const r = await kvctl(['member', 'remove', '4'], withToken);
    expect(r).toEqual({
      code: EXIT.ERROR,
      out: '',
      err: 'kvctl: UNAVAILABLE: BUSY: member 4 still hosts 1 replica; retry once the change in progress has finished (kvctl status shows progress)\n',
    });
    expect(cluster.calls).toHaveLength(1);
  });

  it('ls shows state, liveness, placed replicas and leaderships', async () => {
    const [a1, a2, a3] = cluster.nodes.map((n) => n.address);
    expect(await kvctl(['member', 'ls'])).toEqual({
      code: EXIT.OK,
      out: formatTable(
        ['ID', 'ADDRESS', 'STATE', 'LIVE', 'REPLICAS', 'LEADERS'],
        [
          ['1', a1!, 'active', 'yes', '3', '2'],
          ['2', a2!, 'active', 'yes', '4', '1'],
          ['3', a3!, 'active', 'yes', '4', '1'],
          ['4', dead, 'removing', 'no', '0', '-'],
        ],
      ),
      err: '',
    });
    const j = JSON.parse((await kvctl(['--json', 'member', 'ls'])).out) as { epoch: number; members: object[] };
    expect(j.epoch).toBe(7);
    expect(j.members[3]).toEqual({ id: 4, address: dead, state: 'removing', live: false, replicas: 0, leaders: 0 });
  });
});
