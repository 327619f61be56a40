/** Shard awareness for the benchmark: fetching a kvd cluster's shard map, waiting until every Raft group has a settled leader, and routing each benchmark key to its shard leader's connection. */
import type * as grpc from '@grpc/grpc-js';
import { shardOf, type ClusterMap } from '../src/sharding/index.js';
import { call, keyName, kvClusterStub, type KvClusterStub, type KvStatusRes } from './clients.js';

/** Response metadata: client address of the leader of the shard that served a call. */
export const META_LEADER = 'kv-leader';
/** Response metadata: the Raft group id of the shard that served a call. */
export const META_SHARD = 'kv-shard';

/** The metadata Raft group (never a data shard). */
const META_GROUP = 0;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What a client process needs to route keys: the map (as fetched) and each group's leader address. */
export interface RoutingSpec {
  /** `GetShardMapResponse.mapJson`, verbatim. */
  readonly mapJson: string;
  /** `[group, leader client address]` for every data group whose leader is known. */
  readonly leaders: readonly (readonly [number, string])[];
}

/** Parses `GetShardMapResponse.mapJson` into a cluster map, checking only what routing needs. */
export function parseMapJson(json: string): ClusterMap {
  const m = JSON.parse(json) as Partial<ClusterMap>;
  if (!Array.isArray(m.pools) || !Array.isArray(m.shards) || !Array.isArray(m.members) || typeof m.epoch !== 'number') {
    throw new Error(`malformed cluster map JSON: ${json.slice(0, 200)}`);
  }
  return m as ClusterMap;
}

/**
 * Routes benchmark key indexes to shard leaders: the key → group table is computed once from the
 * map with `shardOf`; leaders come from the harness's Status snapshot (taken once the leaders
 * settled). `kv-shard` + `kv-leader` metadata moves a shard's leader only when it comes with an
 * error (a not-leader rejection names the real leader) or names a shard whose leader is unknown:
 * the hints on successful responses are only compared with where the call went (see
 * {@link KeyRouter.learn}), because kvd once reported a wrong `kv-leader` there (group 1's
 * leader for every shard) and a benchmark should not depend on that.
 */
export class KeyRouter {
  /** Raft group of key index i. */
  private readonly groupOfKey: Int32Array;
  private readonly leaders = new Map<number, string>();
  /** How many times response metadata moved a group's leader. */
  leaderUpdates = 0;

  /** Builds the table for keys `keyName(0 … keys-1, keyPrefix)`. */
  constructor(spec: RoutingSpec, keys: number, keyPrefix?: string) {
    const map = parseMapJson(spec.mapJson);
    this.groupOfKey = new Int32Array(keys);
    for (let i = 0; i < keys; i++) this.groupOfKey[i] = shardOf(map, keyName(i, keyPrefix)).group;
    for (const [g, addr] of spec.leaders) this.leaders.set(g, addr);
  }

  /** The group of key index `i`. */
  group(i: number): number {
    return this.groupOfKey[i]!;
  }

  /** The leader address of key index `i`'s shard, if known. */
  leaderOf(i: number): string | undefined {
    return this.leaders.get(this.groupOfKey[i]!);
  }

  /**
   * Reads `kv-leader`/`kv-shard` from response trailers (`failed` false) or error metadata
   * (`failed` true) and returns the leader address named, if any. The routing table follows an
   * error's hint, and a success's hint only for a shard it has no leader for.
   */
  learn(md: grpc.Metadata | undefined | null, failed: boolean): string | undefined {
    if (!md) return undefined;
    const leader = first(md, META_LEADER);
    const shard = first(md, META_SHARD);
    if (leader === undefined || leader === '' || shard === undefined || !/^[0-9]{1,9}$/.test(shard)) return leader || undefined;
    const g = Number(shard);
    const cur = this.leaders.get(g);
    if (cur !== leader && (failed || cur === undefined)) {
      this.leaders.set(g, leader);
      this.leaderUpdates++;
    }
    return leader;
  }
}

function first(md: grpc.Metadata, key: string): string | undefined {
  const v = md.get(key)[0];
  return v === undefined ? undefined : typeof v === 'string' ? v : v.toString('utf8');
}

/** One observation of who leads what, from every node's own Status. */
export interface LeaderSnapshot {
  /** Group → leader node id (only groups some node reports leading, with all reporting nodes agreeing). */
  readonly leaders: Map<number, number>;
  /** Groups some node hosts but no node leads, or whose nodes disagree on the leader. */
  readonly unled: number[];
  /** Node id → client address (from Status members, falling back to the endpoint that answered). */
  readonly addresses: Map<number, string>;
  /** Nodes that answered. */
  readonly answered: number;
}

/** Reads Status from every endpoint and derives each group's leader (the node that says it is Leader in the highest term, confirmed by the others' leader field). */
export async function leaderSnapshot(stubs: readonly KvClusterStub[], endpoints: readonly string[], timeoutMs = 2_000): Promise<LeaderSnapshot> {
  const statuses = await Promise.all(
    stubs.map((s) => call(s, s.status, {}, timeoutMs).catch(() => undefined as KvStatusRes | undefined)),
  );
  const addresses = new Map<number, string>();
  const claims = new Map<number, { id: number; term: number }>();
  const seen = new Map<number, Set<number>>(); // group → leader ids reported by followers and leaders
  const hosted = new Set<number>();
  statuses.forEach((st, i) => {
    if (!st) return;
    if (st.nodeId !== undefined) addresses.set(st.nodeId, endpoints[i]!);
    for (const m of st.members ?? []) if (m.id !== undefined && m.address) addresses.set(m.id, m.address);
    for (const g of st.groups ?? []) {
      const group = g.group ?? 0;
      hosted.add(group);
      const leader = g.leader ?? 0;
      let set = seen.get(group);
      if (!set) seen.set(group, (set = new Set()));
      set.add(leader);
      if (g.role === 'Leader' && st.nodeId !== undefined) {
        const cur = claims.get(group);
        if (!cur || (g.term ?? 0) > cur.term) claims.set(group, { id: st.nodeId, term: g.term ?? 0 });
      }
    }
  });
  const leaders = new Map<number, number>();
  const unled: number[] = [];
  for (const g of [...hosted].sort((a, b) => a - b)) {
    const c = claims.get(g);
    const reports = seen.get(g)!;
    if (c && reports.size === 1 && reports.has(c.id)) leaders.set(g, c.id);
    else unled.push(g);
  }
  return { leaders, unled, addresses, answered: statuses.filter((s) => s !== undefined).length };
}

/** Fetches and parses the cluster map from `endpoint` (rejects on failure). */
export async function fetchShardMap(stub: KvClusterStub, timeoutMs = 2_000): Promise<{ map: ClusterMap; mapJson: string }> {
  const res = await call(stub, stub.getShardMap, {}, timeoutMs);
  const mapJson = res.mapJson ?? '';
  if (mapJson === '') throw new Error('GetShardMap returned no map');
  return { map: parseMapJson(mapJson), mapJson };
}

/** Options of {@link waitSettled}. */
export interface SettleOptions {
  /** Data shards the default pool must have (the map is waited for until it does). */
  readonly shards: number;
  /** Leaders must not have moved for this long (default 2000 ms). */
  readonly stableMs?: number;
  /**
   * Until this long after the start of the wait, every data group must also be led by its map's
   * preferred leader (the nodes move leaders there a few seconds after start); after it, stable
   * leaders anywhere will do (default 30 000 ms).
   */
  readonly preferredGraceMs?: number;
  /** Give up after this long (default 90 000 ms); the result then says `settled: false`. */
  readonly timeoutMs?: number;
  /** Between polls (default 250 ms). */
  readonly pollMs?: number;
  readonly log?: (msg: string) => void;
}

/** The outcome of {@link waitSettled}. */
export interface SettleReport {
  readonly settled: boolean;
  /** From the call until settled (or given up), in seconds. */
  readonly waitedS: number;
  /** Why it is not settled (when it is not). */
  readonly reason?: string;
  /** The map (undefined if it never became available with the expected shards). */
  readonly map?: ClusterMap;
  readonly mapJson?: string;
  /** The last leader snapshot. */
  readonly snapshot?: LeaderSnapshot;
  /** Data groups whose leader is not the map's preferred leader, at the end. */
  readonly offPreferred: number;
  /** Leader changes observed while waiting (across all groups). */
  readonly leaderMoves: number;
  /** Leaders per node id over the data groups, at the end. */
  readonly leadersPerNode: Record<string, number>;
}

/** The data groups of the default pool in `map` (or undefined if it does not have `shards` of them yet). */
function defaultPoolGroups(map: ClusterMap, shards: number): number[] | undefined {
  const pool = map.pools.find((p) => p.name === '');
  if (!pool || pool.state !== 'active' || pool.shards !== shards) return undefined;
  const groups = map.shards.filter((s) => s.pool === '').map((s) => s.group);
  return groups.length === shards ? groups : undefined;
}

/**
 * Polls the map and every node's Status until the map's default pool has `shards` shards, every
 * group (the metadata group and each data shard) has a leader that all nodes agree on, every data
 * shard is led by its preferred leader (required only during the grace period) and no leader
 * has moved for `stableMs`. Never throws on a slow cluster: the report says whether it settled.
 */
export async function waitSettled(endpoints: readonly string[], o: SettleOptions): Promise<SettleReport> {
  const stableMs = o.stableMs ?? 2_000;
  const graceMs = o.preferredGraceMs ?? 30_000;
  const timeoutMs = o.timeoutMs ?? 90_000;
  const pollMs = o.pollMs ?? 250;
  const stubs = endpoints.map((e) => kvClusterStub(e));
  const t0 = performance.now();
  let map: ClusterMap | undefined;
  let mapJson: string | undefined;
  let groups: number[] | undefined;
  let snapshot: LeaderSnapshot | undefined;
  let signature = '';
  let lastChange = t0;
  let moves = 0;
  let prev = new Map<number, number>();
  let lastLog = t0;
  const offPreferred = (): number => {
    if (!map || !snapshot) return 0;
    let n = 0;
    for (const s of map.shards) if (s.pool === '' && s.preferredLeader !== 0 && snapshot.leaders.get(s.group) !== s.preferredLeader) n++;
    return n;
  };
  const perNode = (): Record<string, number> => {
    const out: Record<string, number> = {};
    if (!snapshot || !groups) return out;
    for (const g of groups) {
      const id = snapshot.leaders.get(g);
      if (id !== undefined) out[String(id)] = (out[String(id)] ?? 0) + 1;
    }
    return out;
  };
  try {
    for (;;) {
      const now = performance.now();
      if (!groups) {
        try {
          const got = await fetchShardMap(stubs[0]!);
          const gs = defaultPoolGroups(got.map, o.shards);
          if (gs) {
            map = got.map;
            mapJson = got.mapJson;
            groups = gs;
          }
        } catch {
          // not ready yet
        }
      }
      snapshot = await leaderSnapshot(stubs, endpoints);
      const want = [META_GROUP, ...(groups ?? [])];
      const missing = want.filter((g) => !snapshot!.leaders.has(g));
      const sig = want.map((g) => `${g}:${snapshot!.leaders.get(g) ?? 0}`).join(',');
      if (sig !== signature) {
        for (const g of want) {
          const a = prev.get(g);
          const b = snapshot.leaders.get(g);
          if (a !== undefined && b !== undefined && a !== b) moves++;
        }
        prev = new Map(snapshot.leaders);
        signature = sig;
        lastChange = now;
      }
      const off = offPreferred();
      const stableFor = now - lastChange;
      const elapsed = now - t0;
      const ready = groups !== undefined && missing.length === 0 && snapshot.answered === endpoints.length;
      if (ready && stableFor >= stableMs && (off === 0 || elapsed >= graceMs)) {
        return { settled: true, waitedS: elapsed / 1000, map, mapJson, snapshot, offPreferred: off, leaderMoves: moves, leadersPerNode: perNode() };
      }
      const why = !groups
        ? `the map has no default pool of ${o.shards} active shards yet`
        : snapshot.answered < endpoints.length
          ? `${endpoints.length - snapshot.answered} node(s) did not answer Status`
          : missing.length > 0
            ? `${missing.length} group(s) without an agreed leader (${missing.slice(0, 10).join(',')}${missing.length > 10 ? ',…' : ''})`
            : off > 0 && elapsed < graceMs
              ? `${off} shard(s) not on their preferred leader`
              : `leaders moved ${Math.round(stableFor)} ms ago`;
      if (elapsed >= timeoutMs) {
        return {
          settled: false, waitedS: elapsed / 1000, reason: why,
          map, mapJson, snapshot, offPreferred: off, leaderMoves: moves, leadersPerNode: perNode(),
        };
      }
      if (now - lastLog >= 5_000) {
        lastLog = now;
        o.log?.(`waiting for ${o.shards} shard(s) to settle (${Math.round(elapsed / 1000)} s): ${why}`);
      }
      await sleep(pollMs);
    }
  } finally {
    for (const s of stubs) s.close();
  }
}

/** The routing spec for `report`'s map and leaders (client addresses), or undefined when the map is missing. */
export function routingSpec(report: SettleReport): RoutingSpec | undefined {
  if (!report.mapJson || !report.map || !report.snapshot) return undefined;
  const snap = report.snapshot;
  const leaders: [number, string][] = [];
  for (const s of report.map.shards) {
    const id = snap.leaders.get(s.group);
    const addr = id === undefined ? undefined : snap.addresses.get(id);
    if (addr !== undefined) leaders.push([s.group, addr]);
  }
  return { mapJson: report.mapJson, leaders };
}

/** Data groups whose leader differs between two snapshots (a group unled in either counts as moved). */
export function movedLeaders(before: LeaderSnapshot, after: LeaderSnapshot, groups: Iterable<number>): number {
  let n = 0;
  for (const g of groups) {
    const a = before.leaders.get(g);
    const b = after.leaders.get(g);
    if (a === undefined || b === undefined || a !== b) n++;
  }
  return n;
}
