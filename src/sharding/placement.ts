/**
 * Pure placement planning: the initial map, pool and member changes, and step-wise reconciliation of replicas and leaders.
 *
 * Size: just over 500 lines of small pure functions over one ClusterMap; the map edits and the
 * planner share the placement helpers (counts, candidate order) that keep them consistent.
 */
import { ShardingError } from './errors.js';
import { diffClusterMaps } from './map-codec.js';
import { compareStrings } from './routing.js';
import {
  DEFAULT_POOL,
  MAX_POOLS,
  desiredMetaVoterCount,
  type ClusterMap,
  type MemberInfo,
  type NodeId,
  type PoolSpec,
  type PoolState,
  type ShardInfo,
} from './types.js';
import { validateMember, validatePoolName, validatePoolSpec, type PoolOptions } from './validation.js';

/** The actual Raft membership of one group, as observed by the reconciler. */
export interface GroupMembership {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

/** The uninitialised map (epoch 0, no members, no pools, no shards): what a node knows before the metadata group holds a map. */
export function emptyMap(): ClusterMap {
  return { epoch: 0, members: [], metaVoters: [], pools: [], shards: [], nextGroup: 1 };
}

const byNum = (a: number, b: number): number => a - b;

function sortedIds(ids: Iterable<NodeId>): NodeId[] {
  return [...ids].sort(byNum);
}

function activeIds(map: ClusterMap): NodeId[] {
  return map.members.filter((m) => m.state === 'active').map((m) => m.id);
}

/** Increments `m[k]` by `d`. */
function bump<K>(m: Map<K, number>, k: K, d = 1): void {
  m.set(k, (m.get(k) ?? 0) + d);
}

/**
 * Places `count` new shards of pool `pool` (groups `firstGroup..`) on `candidates`: each shard's
 * replicas are the members with the fewest replicas overall, then fewest of this pool, then the
 * smallest id; preferred leaders are then balanced over all shards ({@link balanceLeaders},
 * existing shards' leaders fixed). `existing` is every shard already placed (counted for load).
 */
function placeShards(candidates: readonly NodeId[], existing: readonly ShardInfo[], pool: string, count: number, replicas: number, firstGroup: number): ShardInfo[] {
  const load = new Map<NodeId, number>();
  const leads = new Map<NodeId, number>();
  for (const s of existing) {
    for (const r of s.replicas) bump(load, r);
    if (s.preferredLeader !== 0) bump(leads, s.preferredLeader);
  }
  const poolLoad = new Map<NodeId, number>();
  const slots: { d: { preferredLeader: NodeId; orig: { group: number } }; cands: NodeId[] }[] = [];
  for (let i = 0; i < count; i++) {
    const chosen = [...candidates]
      .sort((a, b) => (load.get(a) ?? 0) - (load.get(b) ?? 0) || (poolLoad.get(a) ?? 0) - (poolLoad.get(b) ?? 0) || a - b)
      .slice(0, replicas)
      .sort(byNum);
    for (const r of chosen) {
      bump(load, r);
      bump(poolLoad, r);
    }
    slots.push({ d: { preferredLeader: 0, orig: { group: firstGroup + i } }, cands: chosen });
  }
  balanceLeaders(slots, leads);
  return slots.map(({ d, cands }, i) => ({ group: firstGroup + i, pool, index: i, replicas: cands, initial: cands, preferredLeader: d.preferredLeader }));
}

/** A member to add: its id, client address and (for real processes) peer address. */
export interface NewMember {
  readonly id: NodeId;
  readonly address: string;
  readonly peerAddress?: string;
}

function addressesOf(m: NewMember): string[] {
  return m.peerAddress !== undefined ? [m.address, m.peerAddress] : [m.address];
}

/**
 * The map a brand-new cluster starts with, a pure function of its inputs (every bootstrapping
 * node computes it alike, whatever the order of `members`): all members active; the metadata
 * voters are the smallest ids (5 of at least 5 members, 3 of at least 3, else all); the default
 * pool is active with its shards at groups `1..shards`, replicas spread round robin by load and
 * preferred leaders balanced; epoch 0. Throws INVALID_MEMBER, MEMBER_EXISTS, INVALID_POOL or
 * NOT_ENOUGH_MEMBERS.
 */
export function initialMap(members: readonly NewMember[], defaultPool: PoolOptions): ClusterMap {
  if (members.length === 0) throw new ShardingError('INVALID_MEMBER', 'a cluster needs at least one member');
  const sorted = [...members].sort((a, b) => a.id - b.id);
  const ids = new Set<NodeId>();
  const addresses = new Set<string>();
  for (const m of sorted) {
    validateMember(m.id, m.address, m.peerAddress);
    if (ids.has(m.id)) throw new ShardingError('MEMBER_EXISTS', `member id ${m.id} is given twice`);
    for (const a of addressesOf(m)) {
      if (addresses.has(a)) throw new ShardingError('MEMBER_EXISTS', `member address ${a} is given twice`);
      addresses.add(a);
    }
    ids.add(m.id);
  }
  const spec = validatePoolSpec(
    {
      shards: defaultPool.shards,
      replicas: defaultPool.replicas,
      ...(defaultPool.affinity !== undefined ? { affinity: defaultPool.affinity } : {}),
      ...(defaultPool.retentionMs !== undefined ? { retentionMs: defaultPool.retentionMs } : {}),
    },
    { activeMembers: sorted.length },
  );
  const memberIds = sorted.map((m) => m.id);
  return {
    epoch: 0,
    members: sorted.map((m): MemberInfo => ({ id: m.id, address: m.address, ...(m.peerAddress !== undefined ? { peerAddress: m.peerAddress } : {}), state: 'active' })),
    metaVoters: memberIds.slice(0, desiredMetaVoterCount(memberIds.length)),
    pools: [{ name: DEFAULT_POOL, ...spec, state: 'active' }],
    shards: placeShards(memberIds, [], DEFAULT_POOL, spec.shards, spec.replicas, 1),
    nextGroup: spec.shards + 1,
  };
}

function requireInitialised(map: ClusterMap): void {
  if (!map.pools.some((p) => p.name === DEFAULT_POOL)) {
    throw new ShardingError('INVALID_MAP', 'the cluster map is not initialised (it has no default pool)');
  }
}

function findPool(map: ClusterMap, name: string): PoolSpec {
  const pool = map.pools.find((p) => p.name === name);
  if (pool === undefined) throw new ShardingError('POOL_NOT_FOUND', `no pool named ${JSON.stringify(name)}`);
  return pool;
}

/**
 * Adds pool `name` in state `creating`, its shards at groups from `nextGroup`, replicas on the
 * least-loaded active members (spreading the pool's shards), preferred leaders balanced over all
 * shards. Throws INVALID_POOL (bad name or spec, too many pools), POOL_EXISTS,
 * NOT_ENOUGH_MEMBERS, or INVALID_MAP on an uninitialised map.
 */
export function addPool(map: ClusterMap, name: string, spec: PoolOptions): ClusterMap {
  requireInitialised(map);
  validatePoolName(name);
  if (map.pools.some((p) => p.name === name)) throw new ShardingError('POOL_EXISTS', `pool ${JSON.stringify(name)} already exists`);
  if (map.pools.length >= MAX_POOLS) throw new ShardingError('INVALID_POOL', `a cluster holds at most ${MAX_POOLS} pools`);
  const active = activeIds(map);
  const opts = validatePoolSpec(spec, { activeMembers: active.length });
  const shards = placeShards(active, map.shards, name, opts.shards, opts.replicas, map.nextGroup);
  const pool: PoolSpec = { name, ...opts, state: 'creating' };
  return {
    ...map,
    pools: [...map.pools, pool].sort((a, b) => compareStrings(a.name, b.name)),
    shards: [...map.shards, ...shards],
    nextGroup: map.nextGroup + opts.shards,
  };
}

const TRANSITIONS: Record<PoolState, readonly PoolState[]> = {
  creating: ['active', 'deleting'],
  active: ['deleting'],
  deleting: [],
};

/**
 * Moves pool `name` to `state`: `creating` → `active` | `deleting`, `active` → `deleting` (the
 * same state is a no-op). The default pool is always active. Throws POOL_NOT_FOUND or INVALID_POOL.
 */
export function setPoolState(map: ClusterMap, name: string, state: PoolState): ClusterMap {
  const pool = findPool(map, name);
  if (!(state in TRANSITIONS)) throw new ShardingError('INVALID_POOL', `unknown pool state ${JSON.stringify(state)}`);
  if (pool.state === state) return map;
  if (name === DEFAULT_POOL) throw new ShardingError('INVALID_POOL', 'the default pool is always active');
  if (!TRANSITIONS[pool.state].includes(state)) {
    throw new ShardingError('INVALID_POOL', `pool ${JSON.stringify(name)} cannot go from ${pool.state} to ${state}`);
  }
  return { ...map, pools: map.pools.map((p) => (p.name === name ? { ...p, state } : p)) };
}

/**
 * Removes pool `name` and its shards (their group ids are never reused). Only a pool being
 * created or deleted may be removed: an active pool may hold keys (POOL_NOT_EMPTY), and the
 * default pool never (INVALID_POOL). Throws POOL_NOT_FOUND.
 */
export function removePool(map: ClusterMap, name: string): ClusterMap {
  if (name === DEFAULT_POOL) throw new ShardingError('INVALID_POOL', 'the default pool cannot be removed');
  const pool = findPool(map, name);
  if (pool.state === 'active') {
    throw new ShardingError('POOL_NOT_EMPTY', `pool ${JSON.stringify(name)} is active and may hold keys: set it to deleting and empty it first`);
  }
  return { ...map, pools: map.pools.filter((p) => p.name !== name), shards: map.shards.filter((s) => s.pool !== name) };
}

/** Adds an active member (it gets replicas and metadata membership through {@link planStep}). Throws INVALID_MEMBER or MEMBER_EXISTS. */
export function addMember(map: ClusterMap, member: NewMember): ClusterMap {
  validateMember(member.id, member.address, member.peerAddress);
  if (map.members.some((m) => m.id === member.id)) throw new ShardingError('MEMBER_EXISTS', `member ${member.id} already exists`);
  for (const a of addressesOf(member)) {
    const clash = map.members.find((m) => addressesOf(m).includes(a));
    if (clash) throw new ShardingError('MEMBER_EXISTS', `address ${a} is already used by member ${clash.id}`);
  }
  const info: MemberInfo = { id: member.id, address: member.address, ...(member.peerAddress !== undefined ? { peerAddress: member.peerAddress } : {}), state: 'active' };
  return { ...map, members: [...map.members, info].sort((a, b) => a.id - b.id) };
}

function findMember(map: ClusterMap, id: NodeId): MemberInfo {
  const m = map.members.find((x) => x.id === id);
  if (m === undefined) throw new ShardingError('MEMBER_NOT_FOUND', `no member with id ${id}`);
  return m;
}

/**
 * Marks member `id` as removing: {@link planStep} then moves its replicas and metadata vote
 * away. A no-op if already removing. Throws MEMBER_NOT_FOUND, or NOT_ENOUGH_MEMBERS if fewer
 * active members would remain than the largest replication factor of any pool (or than 1).
 */
export function markRemoving(map: ClusterMap, id: NodeId): ClusterMap {
  const m = findMember(map, id);
  if (m.state === 'removing') return map;
  const remaining = activeIds(map).length - 1;
  const needed = Math.max(1, ...map.pools.map((p) => p.replicas));
  if (remaining < needed) {
    throw new ShardingError('NOT_ENOUGH_MEMBERS', `removing member ${id} would leave ${remaining} active member(s), but ${needed} are needed`);
  }
  return { ...map, members: map.members.map((x) => (x.id === id ? { ...x, state: 'removing' } : x)) };
}

/**
 * Forgets member `id` once it is removing and no longer a desired replica of any group (data
 * shards or metadata voters); the caller also waits until the actual groups have let it go.
 * Throws MEMBER_NOT_FOUND, INVALID_MEMBER (still active) or BUSY (still hosts replicas).
 */
export function dropMember(map: ClusterMap, id: NodeId): ClusterMap {
  const m = findMember(map, id);
  if (m.state !== 'removing') throw new ShardingError('INVALID_MEMBER', `member ${id} is active: mark it removing first`);
  const hosted = hostedGroups(map, id).filter((g) => g !== 0);
  if (hosted.length > 0 || map.metaVoters.includes(id)) {
    const what = [...(map.metaVoters.includes(id) ? ['a metadata voter'] : []), ...(hosted.length > 0 ? [`a replica of ${hosted.length} shard(s)`] : [])];
    throw new ShardingError('BUSY', `member ${id} is still ${what.join(' and ')}: wait until its replicas have moved`);
  }
  return { ...map, members: map.members.filter((x) => x.id !== id) };
}

/** Desired data-shard replicas per node: every member (0 if none), plus any non-member a shard still names; in id order. */
export function replicaCounts(map: ClusterMap): Map<NodeId, number> {
  const counts = new Map<NodeId, number>();
  for (const m of map.members) counts.set(m.id, 0);
  for (const s of map.shards) for (const r of s.replicas) bump(counts, r);
  return new Map([...counts].sort((a, b) => a[0] - b[0]));
}

/** Shards whose preferred leader each node is: every member (0 if none), plus any non-member named; in id order. */
export function leaderCounts(map: ClusterMap): Map<NodeId, number> {
  const counts = new Map<NodeId, number>();
  for (const m of map.members) counts.set(m.id, 0);
  for (const s of map.shards) if (s.preferredLeader !== 0) bump(counts, s.preferredLeader);
  return new Map([...counts].sort((a, b) => a[0] - b[0]));
}

/** Groups `node` should host, sorted: the data shards whose desired replicas include it, and group 0 if it is a member (every member hosts the metadata group, as voter or learner). */
export function hostedGroups(map: ClusterMap, node: NodeId): number[] {
  const out = map.shards.filter((s) => s.replicas.includes(node)).map((s) => s.group);
  if (map.members.some((m) => m.id === node)) out.push(0);
  return out.sort(byNum);
}

/** Whether two maps describe the same layout (members, metadata voters, pools, shards, next group); the epoch is ignored. */
export function sameMap(a: ClusterMap, b: ClusterMap): boolean {
  const d = diffClusterMaps(a, b);
  return d.puts.length === 0 && d.deletes.length === 0;
}

function sameIds(a: readonly NodeId[], b: readonly NodeId[]): boolean {
  if (a.length !== b.length) return false;
  const x = sortedIds(a);
  const y = sortedIds(b);
  return x.every((v, i) => v === y[i]);
}

/** A shard being planned: mutable replicas and leader. */
interface Draft {
  readonly orig: ShardInfo;
  replicas: NodeId[];
  preferredLeader: NodeId;
}

/**
 * One reconciliation step: the desired map moved one step towards a balanced placement, given
 * which nodes are `live` and each group's `actual` membership (group 0 = metadata). In priority order:
 *
 * a. every replica on a removing member is replaced by the active member not in the shard that
 *    is live, then least loaded, then smallest id (not throttled: decommissioning comes first);
 * b. metadata voters: removing members leave, then voters are added (live first, then smallest
 *    id) or dropped (not live first, then largest id) to reach the desired count
 *    ({@link desiredMetaVoterCount} of the active members);
 * c. balance: while two active members' replica counts differ by 2 or more, one replica of a
 *    shard moves from the more to the less loaded (a live target), most loaded first, preferring
 *    shards the source does not lead; only shards whose actual voters equal their desired replicas
 *    move (a group missing from `actual` is not moved), one replica per shard per step, and at
 *    most `maxMovesPerStep` shards change per step (counting those changed by a.);
 * d. preferred leaders: each shard's leader is one of its desired replicas that is live, an
 *    actual voter (when `actual` knows the group) and active (a removing one only if no other
 *    can lead), balanced so that no shard could move to a node leading 2 fewer shards along a
 *    chain of reassignments (an optimal semi-matching: counts within 1 whenever that is
 *    feasible); a current leader that may lead keeps its shards unless that is needed for
 *    balance. A shard no one can lead keeps its leader if still a replica, else gets 0.
 *
 * The epoch is kept. Compare with {@link sameMap} to see whether anything changed.
 */
export function planStep(
  map: ClusterMap,
  live: ReadonlySet<NodeId>,
  actual: ReadonlyMap<number, GroupMembership>,
  maxMovesPerStep = 4,
): ClusterMap {
  const active = activeIds(map);
  const activeSet = new Set(active);
  const isLive = (n: NodeId): number => (live.has(n) ? 0 : 1);
  const drafts: Draft[] = map.shards.map((s) => ({ orig: s, replicas: [...s.replicas], preferredLeader: s.preferredLeader }));
  const load = new Map<NodeId, number>(active.map((n) => [n, 0]));
  const poolLoad = new Map<string, Map<NodeId, number>>();
  for (const d of drafts) {
    for (const r of d.replicas) {
      if (activeSet.has(r)) bump(load, r);
      let pl = poolLoad.get(d.orig.pool);
      if (pl === undefined) poolLoad.set(d.orig.pool, (pl = new Map()));
      bump(pl, r);
    }
  }
  const changed = new Set<number>();
  const move = (d: Draft, from: NodeId, to: NodeId): void => {
    d.replicas[d.replicas.indexOf(from)] = to;
    if (activeSet.has(from)) bump(load, from, -1);
    bump(load, to);
    const pl = poolLoad.get(d.orig.pool)!;
    bump(pl, from, -1);
    bump(pl, to);
    changed.add(d.orig.group);
  };

  // (a) replace replicas on removing members (or on ids that are no longer members).
  for (const d of drafts) {
    for (const r of [...d.replicas]) {
      if (activeSet.has(r)) continue;
      const target = active
        .filter((n) => !d.replicas.includes(n))
        .sort((x, y) => isLive(x) - isLive(y) || load.get(x)! - load.get(y)! || x - y)[0];
      if (target !== undefined) move(d, r, target);
    }
  }

  // (b) metadata voters.
  let metaVoters = [...map.metaVoters];
  if (active.length > 0) {
    const want = desiredMetaVoterCount(active.length);
    let keep = metaVoters.filter((n) => activeSet.has(n));
    if (keep.length > want) keep = keep.sort((x, y) => isLive(x) - isLive(y) || x - y).slice(0, want);
    if (keep.length < want) {
      const extra = active.filter((n) => !keep.includes(n)).sort((x, y) => isLive(x) - isLive(y) || x - y);
      keep = [...keep, ...extra.slice(0, want - keep.length)];
    }
    metaVoters = sortedIds(keep);
  }

  // (c) balance replica counts across active members.
  let budget = maxMovesPerStep - changed.size;
  const movable = (d: Draft): boolean => {
    if (changed.has(d.orig.group)) return false;
    const a = actual.get(d.orig.group);
    return a !== undefined && sameIds(a.voters, d.orig.replicas);
  };
  while (budget > 0) {
    const sources = [...active].sort((x, y) => load.get(y)! - load.get(x)! || x - y);
    const targets = active.filter((n) => live.has(n)).sort((x, y) => load.get(x)! - load.get(y)! || x - y);
    let done = false;
    for (const src of sources) {
      for (const dst of targets) {
        if (load.get(src)! - load.get(dst)! < 2) break;
        let best: Draft | undefined;
        let bestKey: [number, number, number] | undefined;
        for (const d of drafts) {
          if (!d.replicas.includes(src) || d.replicas.includes(dst) || !movable(d)) continue;
          const pl = poolLoad.get(d.orig.pool)!;
          const key: [number, number, number] = [d.preferredLeader === src ? 1 : 0, -((pl.get(src) ?? 0) - (pl.get(dst) ?? 0)), d.orig.group];
          if (bestKey === undefined || (key[0] - bestKey[0] || key[1] - bestKey[1] || key[2] - bestKey[2]) < 0) {
            best = d;
            bestKey = key;
          }
        }
        if (best !== undefined) {
          move(best, src, dst);
          budget--;
          done = true;
          break;
        }
      }
      if (done) break;
    }
    if (!done) break;
  }

  // (d) preferred leaders.
  planLeaders(drafts, live, activeSet, actual);

  const shards = drafts.map((d): ShardInfo => ({ ...d.orig, replicas: sortedIds(d.replicas), preferredLeader: d.preferredLeader }));
  return { ...map, metaVoters, shards };
}

/** One shard whose preferred leader may be (re)assigned, with the nodes that may lead it. */
interface LeaderSlot {
  readonly d: { preferredLeader: NodeId; readonly orig: { readonly group: number } };
  readonly cands: readonly NodeId[];
}

/**
 * Assigns each slot's preferred leader among its candidates, on top of `base` (shards each node
 * leads that are not being assigned): a current leader that is a candidate stays, others go to
 * the candidate leading the fewest (then the smallest id); then every cost-reducing path (a chain
 * of reassignments from a node to one leading at least 2 fewer shards) is removed, shortest
 * first, which yields an optimal semi-matching (Harvey, Ladner, Lovász, Tamir 2006): leader
 * counts as even as the candidates allow, within 1 whenever that is feasible.
 */
function balanceLeaders(slots: readonly LeaderSlot[], base: ReadonlyMap<NodeId, number>): void {
  const count = new Map<NodeId, number>();
  const led = new Map<NodeId, LeaderSlot[]>();
  for (const slot of slots) {
    for (const n of slot.cands) {
      if (!count.has(n)) {
        count.set(n, base.get(n) ?? 0);
        led.set(n, []);
      }
    }
  }
  const assign = (slot: LeaderSlot, n: NodeId): void => {
    slot.d.preferredLeader = n;
    bump(count, n);
    led.get(n)!.push(slot);
  };
  const unassigned: LeaderSlot[] = [];
  for (const slot of slots) {
    if (slot.cands.includes(slot.d.preferredLeader)) assign(slot, slot.d.preferredLeader);
    else unassigned.push(slot);
  }
  for (const slot of unassigned) assign(slot, [...slot.cands].sort((x, y) => count.get(x)! - count.get(y)! || x - y)[0]!);

  const nodes = [...count.keys()];
  for (;;) {
    const min = Math.min(...nodes.map((n) => count.get(n)!));
    const order = nodes.filter((n) => count.get(n)! >= min + 2).sort((x, y) => count.get(y)! - count.get(x)! || x - y);
    let improved = false;
    for (const u of order) {
      const path = costReducingPath(u, count, led);
      if (path === undefined) continue;
      for (const [slot, to] of path) {
        const from = slot.d.preferredLeader;
        const list = led.get(from)!;
        list.splice(list.indexOf(slot), 1);
        bump(count, from, -1);
        assign(slot, to);
      }
      improved = true;
      break;
    }
    if (!improved) return;
  }
}

/** Step (d) of {@link planStep}: who may lead each shard, then {@link balanceLeaders}. */
function planLeaders(drafts: Draft[], live: ReadonlySet<NodeId>, active: ReadonlySet<NodeId>, actual: ReadonlyMap<number, GroupMembership>): void {
  const slots: LeaderSlot[] = [];
  for (const d of drafts) {
    const voters = actual.get(d.orig.group)?.voters;
    const ok = d.replicas.filter((r) => live.has(r) && (voters === undefined || voters.includes(r))).sort(byNum);
    const preferred = ok.filter((r) => active.has(r));
    const cands = preferred.length > 0 ? preferred : ok;
    if (cands.length > 0) slots.push({ d, cands });
    else if (!d.replicas.includes(d.preferredLeader)) d.preferredLeader = 0;
  }
  balanceLeaders(slots, new Map());
}

/** The shortest chain of reassignments from `u` to a node leading at least 2 fewer shards, as (slot, new leader) pairs, or undefined. */
function costReducingPath(u: NodeId, count: ReadonlyMap<NodeId, number>, led: ReadonlyMap<NodeId, readonly LeaderSlot[]>): [LeaderSlot, NodeId][] | undefined {
  const limit = count.get(u)! - 2;
  const parent = new Map<NodeId, { from: NodeId; via: LeaderSlot }>();
  const seen = new Set<NodeId>([u]);
  const queue: NodeId[] = [u];
  for (let qi = 0; qi < queue.length; qi++) {
    const x = queue[qi]!;
    const slots = [...led.get(x)!].sort((a, b) => a.d.orig.group - b.d.orig.group);
    for (const slot of slots) {
      for (const y of slot.cands) {
        if (seen.has(y)) continue;
        seen.add(y);
        parent.set(y, { from: x, via: slot });
        if (count.get(y)! <= limit) {
          const path: [LeaderSlot, NodeId][] = [];
          for (let v = y; v !== u; ) {
            const p = parent.get(v)!;
            path.push([p.via, v]);
            v = p.from;
          }
          return path.reverse();
        }
        queue.push(y);
      }
    }
  }
  return undefined;
}
