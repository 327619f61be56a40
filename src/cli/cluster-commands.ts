/** `kvctl pool …`, `kvctl member …` and the cluster-wide `kvctl status`: object pools, members, leaders, terms and replication lag (changes need the admin token). */
import * as grpc from '@grpc/grpc-js';
import type { Command } from 'commander';
import { AdminClient, CLUSTER_STATUS_DEADLINE_MS, type ClusterStatus, type GroupReport } from '../client/admin-client.js';
import { KvError } from '../client/errors.js';
import { MAX_NODE_ID, MAX_POOL_SHARDS, MAX_REPLICAS, META_GROUP, type ClusterMap, type PoolSpec } from '../sharding/index.js';
import { intIn, tlsOf, uint, type CommandContext } from './args.js';

/** What the cluster commands need from kvctl's main. */
export interface ClusterCommandContext extends CommandContext {
  readonly err: { write(s: string): unknown };
  /** Timeout of a cluster change (--timeout when given, else a minute: creating a pool waits until it serves). */
  changeTimeoutMs(): number;
}

/** One node in a {@link ClusterSummary}. */
export interface NodeSummary {
  readonly id: number;
  readonly address: string;
  /** The member's state in the map (`active`, `removing`), or `unknown` when the map does not list it. */
  readonly state: string;
  /** Whether the node answered Cluster.Status. */
  readonly up: boolean;
  /** Its grpc.health.v1 status (SERVING once joined and caught up; NOT_SERVING while starting, catching up or shutting down); absent when it did not answer. */
  readonly health?: string;
  /** Epoch of the map the node routes with (when up). */
  readonly mapEpoch?: number;
  readonly version?: string;
  /** Replicas the map places on the node (shards, plus the metadata group when it is a metadata voter). */
  readonly replicas: number;
  /** Groups the node currently leads (from its own status). */
  readonly leaders: number;
  /** Why the node did not answer. */
  readonly error?: { readonly code: string; readonly message: string };
}

/** One Raft group in a {@link ClusterSummary}: the map's placement joined with what the nodes report. */
export interface GroupSummary {
  readonly group: number;
  /** The pool ('' = the default pool); null for the metadata group, and for a group no map or report places in a pool. */
  readonly pool: string | null;
  /** The shard's index in its pool, or null for the metadata group. */
  readonly index: number | null;
  /** Replicas the map wants (for the metadata group: its voters). */
  readonly replicas: readonly number[];
  /** Where the map wants the leader (0 = anywhere). */
  readonly preferredLeader: number;
  /** The leader the nodes report (0 = none known). */
  readonly leader: number;
  /** The highest term any node reports. */
  readonly term: number;
  /** Voters and learners as the leader (else the most recent reporter) sees them. */
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  /** Live keys (from the leader, else the most recent reporter; null when no node reported). */
  readonly keys: number | null;
  /** Entries each replica is behind the leader (leader's last index − matched); null when unknown. */
  readonly lag: Readonly<Record<number, number | null>>;
  /** Nodes that reported the group. */
  readonly reportedBy: readonly number[];
}

/** The whole cluster as `kvctl status --json` prints it. */
export interface ClusterSummary {
  readonly mapEpoch: number;
  readonly nodes: readonly NodeSummary[];
  readonly pools: readonly PoolSpec[];
  readonly groups: readonly GroupSummary[];
}

/** A pool name for display: `(default)` for the default pool. */
export function poolLabel(name: string): string {
  return name === '' ? '(default)' : name;
}

function ids(list: readonly number[]): string {
  return list.length > 0 ? list.join(',') : '-';
}

function lagCell(lag: Readonly<Record<number, number | null>>): string {
  const entries = Object.entries(lag);
  if (entries.length === 0) return '-';
  return entries.map(([id, n]) => `${id}:${n ?? '?'}`).join(',');
}

/** Whether a reported role is the leader's (nodes report raft's `Leader`; older or test nodes `leader`). */
function isLeaderRole(role: string): boolean {
  return role.toLowerCase() === 'leader';
}

function placed(map: ClusterMap, id: number): number {
  return map.shards.filter((s) => s.replicas.includes(id)).length + (map.metaVoters.includes(id) ? 1 : 0);
}

/** Joins the map with the members' statuses: per node, per pool and per group (leader, term, voters, learners, lag). */
export function summarizeCluster(cs: ClusterStatus): ClusterSummary {
  const { map } = cs;
  const reports = new Map<number, { node: number; g: GroupReport }[]>();
  for (const n of cs.nodes) {
    if (!n.status) continue;
    for (const g of n.status.groups) {
      let list = reports.get(g.group);
      if (!list) reports.set(g.group, (list = []));
      list.push({ node: n.id || n.status.nodeId, g });
    }
  }
  const groupIds = new Set<number>([...map.shards.map((s) => s.group), ...reports.keys()]);
  if (map.metaVoters.length > 0) groupIds.add(META_GROUP);
  const groups: GroupSummary[] = [...groupIds]
    .sort((a, b) => a - b)
    .map((group) => {
      const shard = map.shards.find((s) => s.group === group);
      const rs = reports.get(group) ?? [];
      const term = rs.reduce((t, r) => Math.max(t, r.g.term), 0);
      const leaderReport = rs.filter((r) => isLeaderRole(r.g.role)).sort((a, b) => b.g.term - a.g.term)[0];
      const freshest = leaderReport ?? [...rs].sort((a, b) => b.g.term - a.g.term)[0];
      const leader = leaderReport ? leaderReport.node : (freshest?.g.leader ?? 0);
      const desired = shard ? shard.replicas : group === META_GROUP ? map.metaVoters : [];
      const voters = freshest ? freshest.g.voters : desired;
      const learners = freshest ? freshest.g.learners : [];
      const lag: Record<number, number | null> = {};
      for (const id of [...voters, ...learners]) {
        if (!leaderReport) lag[id] = null;
        else if (id === leaderReport.node) lag[id] = 0;
        else {
          const m = leaderReport.g.matched[id];
          lag[id] = m === undefined ? null : Math.max(0, leaderReport.g.lastIndex - m);
        }
      }
      const reportedPool = freshest?.g.pool;
      const pool = shard ? shard.pool : group === META_GROUP ? null : (reportedPool ?? null);
      return {
        group,
        pool,
        index: shard ? shard.index : pool === null ? null : (freshest?.g.shardIndex ?? null),
        replicas: desired,
        preferredLeader: shard?.preferredLeader ?? 0,
        leader,
        term,
        voters,
        learners,
        keys: freshest ? freshest.g.keys : null,
        lag,
        reportedBy: rs.map((r) => r.node).sort((a, b) => a - b),
      };
    });
  const nodes: NodeSummary[] = cs.nodes.map((n) => {
    const member = map.members.find((m) => m.id === n.id);
    return {
      id: n.id,
      address: n.address,
      state: member?.state ?? 'unknown',
      up: n.status !== undefined,
      ...(n.health ? { health: n.health } : {}),
      ...(n.status ? { mapEpoch: n.status.mapEpoch, version: n.status.version } : {}),
      replicas: placed(map, n.id),
      leaders: n.status ? n.status.groups.filter((g) => isLeaderRole(g.role)).length : 0,
      ...(n.error ? { error: { code: n.error.code, message: n.error.message } } : {}),
    };
  });
  return { mapEpoch: map.epoch, nodes, pools: map.pools, groups };
}

function poolRows(pools: readonly PoolSpec[]): string[][] {
  return pools.map((p) => [poolLabel(p.name), String(p.shards), String(p.replicas), p.affinity ?? '-', p.state]);
}

const POOL_HEADERS = ['NAME', 'SHARDS', 'REPLICAS', 'AFFINITY', 'STATE'] as const;

/** Adds the `pool` and `member` command groups and the cluster-wide `status` command to kvctl. */
export function registerClusterCommands(program: Command, ctx: ClusterCommandContext): void {
  /** A client for reads (no token needed). */
  const reader = () => new AdminClient({ endpoints: ctx.endpoints(), ...tlsOf(ctx), deadlineMs: ctx.timeoutMs() });
  /** A client for changes (admin token). */
  const admin = () => new AdminClient({ endpoints: ctx.endpoints(), ...tlsOf(ctx), token: ctx.adminToken(), deadlineMs: ctx.changeTimeoutMs() });
  const statusDeadline = () => Math.min(ctx.timeoutMs(), CLUSTER_STATUS_DEADLINE_MS);
  const using = async <T>(make: () => AdminClient, fn: (c: AdminClient) => Promise<T>): Promise<T> => {
    const c = make();
    try {
      return await fn(c);
    } finally {
      c.close();
    }
  };

  const pool = program.command('pool').description('create and inspect object pools: key prefixes with their own shards (creating needs the admin token)');

  pool
    .command('create')
    .description('create a pool: a key prefix (e.g. /cameras) with its own shards; refused when keys already exist under it')
    .argument('<name>', 'the key prefix, e.g. /cameras')
    .requiredOption('--shards <n>', `number of shards (1 to ${MAX_POOL_SHARDS})`, intIn('--shards', 1, MAX_POOL_SHARDS))
    .option('--replicas <n>', `replicas per shard (1 to ${MAX_REPLICAS}; default min(3, members))`, intIn('--replicas', 1, MAX_REPLICAS))
    .option('--affinity <regex>', 'regular expression whose first capture group is the part of the key that is hashed')
    .option('--retention-ms <ms>', "keep old versions this long (default: the nodes' setting)", uint('--retention-ms'))
    .action(async (name: string, o: { shards: number; replicas?: number; affinity?: string; retentionMs?: number }) => {
      const r = await using(admin, (c) =>
        c.createPool({
          name,
          shards: o.shards,
          ...(o.replicas !== undefined ? { replicas: o.replicas } : {}),
          ...(o.affinity !== undefined ? { affinity: o.affinity } : {}),
          ...(o.retentionMs !== undefined ? { retentionMs: o.retentionMs } : {}),
        }),
      );
      if (ctx.json()) ctx.print(r);
      else ctx.out.write(ctx.formatTable([...POOL_HEADERS, 'EPOCH'], poolRows([r.pool]).map((row) => [...row, String(r.epoch)])));
    });

  pool
    .command('ls')
    .description('list the pools')
    .action(async () => {
      const map = await using(reader, (c) => c.shardMap());
      if (ctx.json()) ctx.print({ epoch: map.epoch, pools: map.pools });
      else ctx.out.write(ctx.formatTable(POOL_HEADERS, poolRows(map.pools)));
    });

  pool
    .command('describe')
    .description("a pool and each of its shards: replicas, preferred and actual leader, term, keys and each replica's lag")
    .argument('<name>', "the pool's key prefix ('(default)' or '' for the default pool)")
    .action(async (name: string) => {
      const wanted = name === '(default)' ? '' : name;
      const cs = await using(reader, (c) => c.clusterStatus({ deadlineMs: statusDeadline() }));
      const spec = cs.map.pools.find((p) => p.name === wanted);
      if (!spec) throw new KvError(grpc.status.NOT_FOUND, `pool ${JSON.stringify(name)} does not exist; kvctl pool ls lists the pools`);
      const summary = summarizeCluster(cs);
      const shards = summary.groups.filter((g) => g.pool === wanted);
      if (ctx.json()) {
        ctx.print({ epoch: cs.map.epoch, pool: spec, shards });
        return;
      }
      ctx.out.write(
        ctx.formatTable(
          [...POOL_HEADERS, 'RETENTION_MS'],
          poolRows([spec]).map((row) => [...row, spec.retentionMs !== undefined ? String(spec.retentionMs) : 'default']),
        ),
      );
      ctx.out.write('\n');
      ctx.out.write(
        ctx.formatTable(
          ['SHARD', 'INDEX', 'REPLICAS', 'PREFERRED', 'LEADER', 'TERM', 'KEYS', 'LAG'],
          shards.map((g) => [
            String(g.group),
            String(g.index ?? '-'),
            ids(g.replicas),
            g.preferredLeader ? String(g.preferredLeader) : '-',
            g.leader ? String(g.leader) : 'none',
            String(g.term),
            g.keys === null ? '?' : String(g.keys),
            lagCell(g.lag),
          ]),
        ),
      );
    });

  const member = program.command('member').description('add, remove and list cluster members (adding and removing need the admin token)');

  member
    .command('add')
    .description('add a node: it receives replicas as learners, catches up, then votes')
    .argument('<id>', `the node's id (1 to ${MAX_NODE_ID})`, intIn('<id>', 1, MAX_NODE_ID))
    .argument('<address>', "the node's client address, host:port (its kvd --listen)")
    .requiredOption('--peer <host:port>', "the node's peer address (its kvd --peer-listen, or --advertise-peer)")
    .action(async (id: number, address: string, o: { peer: string }) => {
      const r = await using(admin, (c) => c.addMember(id, address, o.peer));
      if (ctx.json()) ctx.print({ id, address, peerAddress: o.peer, epoch: r.epoch });
      else ctx.out.write(ctx.formatTable(['ID', 'ADDRESS', 'PEER ADDRESS', 'EPOCH'], [[String(id), address, o.peer, String(r.epoch)]]));
    });

  member
    .command('remove')
    .description('remove a node: its replicas move elsewhere first, then it leaves the map (kvctl member ls shows progress)')
    .argument('<id>', "the node's id", intIn('<id>', 1, MAX_NODE_ID))
    .action(async (id: number) => {
      const r = await using(admin, (c) => c.removeMember(id));
      if (ctx.json()) ctx.print({ id, state: 'removing', epoch: r.epoch });
      else ctx.out.write(`member ${id} is being removed (map epoch ${r.epoch}): its replicas move to other members first; kvctl member ls shows progress\n`);
    });

  member
    .command('ls')
    .description('list the members: state, whether they answer, replicas placed on them and groups they lead')
    .action(async () => {
      const cs = await using(reader, (c) => c.clusterStatus({ deadlineMs: statusDeadline() }));
      const summary = summarizeCluster(cs);
      const rows = summary.nodes.map((n) => ({ id: n.id, address: n.address, state: n.state, live: n.up, replicas: n.replicas, leaders: n.leaders }));
      if (ctx.json()) {
        ctx.print({ epoch: cs.map.epoch, members: rows });
        return;
      }
      ctx.out.write(
        ctx.formatTable(
          ['ID', 'ADDRESS', 'STATE', 'LIVE', 'REPLICAS', 'LEADERS'],
          rows.map((m) => [String(m.id || '?'), m.address, m.state, m.live ? 'yes' : 'no', String(m.replicas), m.live ? String(m.leaders) : '-']),
        ),
      );
    });

  program
    .command('status')
    .description('the whole cluster: nodes, pools, and every shard\'s leader, term, voters, learners and replication lag (exit code 1 when a node is down)')
    .action(async () => {
      const cs = await using(reader, (c) => c.clusterStatus({ deadlineMs: statusDeadline() }));
      const summary = summarizeCluster(cs);
      for (const n of cs.nodes) {
        if (!n.error) continue;
        ctx.err.write(`kvctl: ${n.error.code}: ${n.address}: ${n.error.message}\n`);
        ctx.fail(1);
      }
      if (ctx.json()) {
        ctx.print(summary);
        return;
      }
      ctx.out.write(
        ctx.formatTable(
          ['NODE', 'ADDRESS', 'STATE', 'UP', 'HEALTH', 'MAP_EPOCH'],
          summary.nodes.map((n) => [String(n.id || '?'), n.address, n.state, n.up ? 'up' : 'down', n.health ?? '-', n.mapEpoch !== undefined ? String(n.mapEpoch) : '-']),
        ),
      );
      if (summary.pools.length > 0) {
        ctx.out.write('\n');
        ctx.out.write(ctx.formatTable(POOL_HEADERS, poolRows(summary.pools)));
      }
      if (summary.groups.length > 0) {
        ctx.out.write('\n');
        ctx.out.write(
          ctx.formatTable(
            ['GROUP', 'POOL', 'INDEX', 'LEADER', 'TERM', 'VOTERS', 'LEARNERS', 'LAG'],
            summary.groups.map((g) => [
              String(g.group),
              g.group === META_GROUP ? '(meta)' : g.pool === null ? '?' : poolLabel(g.pool),
              g.index === null ? '-' : String(g.index),
              g.leader ? String(g.leader) : 'none',
              String(g.term),
              ids(g.voters),
              ids(g.learners),
              lagCell(g.lag),
            ]),
          ),
        );
      }
    });
}
