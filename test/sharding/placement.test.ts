// Covers src/sharding/placement.ts: the initial map, pool and member operations, and planStep's replacement, metadata voters, throttled balancing and leader balancing, including convergence from random histories.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  addMember,
  addPool,
  dropMember,
  emptyMap,
  hostedGroups,
  initialMap,
  leaderCounts,
  markRemoving,
  planStep,
  removePool,
  replicaCounts,
  sameMap,
  setPoolState,
  ShardingError,
  type ClusterMap,
  type GroupMembership,
  type NodeId,
  type ShardInfo,
} from '../../src/sharding/index.js';

const member = (id: number): { id: number; address: string } => ({ id, address: `10.0.0.${id}:7000` });
const members = (...ids: number[]): { id: number; address: string }[] => ids.map(member);

function codeOf(f: () => unknown): string {
  try {
    f();
    return 'no error';
  } catch (e) {
    expect(e).toBeInstanceOf(ShardingError);
    return (e as ShardingError).code;
  }
}

const spread = (counts: Iterable<number>): number => {
  const c = [...counts];
  return c.length === 0 ? 0 : Math.max(...c) - Math.min(...c);
};

/** Replica counts of the active members only. */
function activeReplicaCounts(m: ClusterMap): number[] {
  const counts = replicaCounts(m);
  return m.members.filter((x) => x.state === 'active').map((x) => counts.get(x.id)!);
}

/** actual = desired: every group's voters are its desired replicas. */
function settled(m: ClusterMap): Map<number, GroupMembership> {
  const actual = new Map<number, GroupMembership>([[0, { voters: m.metaVoters, learners: [] }]]);
  for (const s of m.shards) actual.set(s.group, { voters: s.replicas, learners: [] });
  return actual;
}

const allLive = (m: ClusterMap): Set<NodeId> => new Set(m.members.map((x) => x.id));

/** Applies planStep with instant moves until nothing changes; returns the map and the steps taken. */
function converge(m: ClusterMap, live: (m: ClusterMap) => ReadonlySet<NodeId> = allLive, maxSteps = 500): { map: ClusterMap; steps: number } {
  for (let steps = 0; steps < maxSteps; steps++) {
    const next = planStep(m, live(m), settled(m));
    if (sameMap(next, m)) return { map: m, steps };
    m = next;
  }
  throw new Error(`planStep did not converge in ${maxSteps} steps`);
}

/** Structural invariants every map the planner produces keeps. */
function checkInvariants(m: ClusterMap): void {
  const memberIds = new Set(m.members.map((x) => x.id));
  const pools = new Map(m.pools.map((p) => [p.name, p]));
  expect(m.shards.map((s) => s.group)).toEqual([...m.shards.map((s) => s.group)].sort((a, b) => a - b));
  for (const s of m.shards) {
    const pool = pools.get(s.pool)!;
    expect(s.replicas.length).toBe(pool.replicas);
    expect(new Set(s.replicas).size).toBe(s.replicas.length);
    expect([...s.replicas]).toEqual([...s.replicas].sort((a, b) => a - b));
    for (const r of s.replicas) expect(memberIds.has(r)).toBe(true);
    expect(s.preferredLeader === 0 || s.replicas.includes(s.preferredLeader)).toBe(true);
    expect(s.group).toBeGreaterThan(0);
    expect(s.group).toBeLessThan(m.nextGroup);
  }
  for (const p of m.pools) {
    expect(m.shards.filter((s) => s.pool === p.name).map((s) => s.index).sort((a, b) => a - b)).toEqual(Array.from({ length: p.shards }, (_, i) => i));
  }
}

/**
 * Independent check: can each shard get a leader among `cands` with every node's count within
 * [lo, hi]? Feasibility of a flow with lower bounds, by the super-source reduction and Edmonds–Karp.
 */
function leaderAssignmentFeasible(cands: NodeId[][], nodes: NodeId[], lo: number, hi: number): boolean {
  const L = cands.length;
  const S = 0;
  const T = 1 + L + nodes.length;
  const SS = T + 1;
  const TT = T + 2;
  const n = TT + 1;
  const cap = Array.from({ length: n }, () => new Array<number>(n).fill(0));
  const excess = new Array<number>(n).fill(0);
  const nodeIx = new Map(nodes.map((x, i) => [x, 1 + L + i]));
  for (let i = 0; i < L; i++) {
    excess[1 + i]! += 1; // S -> shard, lower = upper = 1
    excess[S]! -= 1;
    for (const c of cands[i]!) cap[1 + i]![nodeIx.get(c)!] = 1;
  }
  for (const x of nodes) {
    const v = nodeIx.get(x)!;
    cap[v]![T] = hi - lo;
    excess[T]! += lo;
    excess[v]! -= lo;
  }
  cap[T]![S] = 1e9;
  let need = 0;
  for (let v = 0; v < SS; v++) {
    if (excess[v]! > 0) {
      cap[SS]![v] = excess[v]!;
      need += excess[v]!;
    } else if (excess[v]! < 0) cap[v]![TT] = -excess[v]!;
  }
  let flow = 0;
  for (;;) {
    const prev = new Array<number>(n).fill(-1);
    prev[SS] = SS;
    const q = [SS];
    for (let qi = 0; qi < q.length && prev[TT] === -1; qi++) {
      const u = q[qi]!;
      for (let v = 0; v < n; v++) if (prev[v] === -1 && cap[u]![v]! > 0) {
        prev[v] = u;
        q.push(v);
      }
    }
    if (prev[TT] === -1) break;
    let f = Infinity;
    for (let v = TT; v !== SS; v = prev[v]!) f = Math.min(f, cap[prev[v]!]![v]!);
    for (let v = TT; v !== SS; v = prev[v]!) {
      cap[prev[v]!]![v]! -= f;
      cap[v]![prev[v]!]! += f;
    }
    flow += f;
  }
  return flow === need;
}

/** Leader balance in a settled map with `live` nodes: every leader may lead, the maximum is optimal, and counts are within 1 when that is feasible. */
function checkLeaders(m: ClusterMap, live: ReadonlySet<NodeId>): void {
  const activeIds = new Set(m.members.filter((x) => x.state === 'active').map((x) => x.id));
  const cands: NodeId[][] = [];
  const chosen: NodeId[] = [];
  for (const s of m.shards) {
    const liveReps = s.replicas.filter((r) => live.has(r));
    const act = liveReps.filter((r) => activeIds.has(r));
    const c = act.length > 0 ? act : liveReps;
    if (c.length === 0) continue;
    expect(c).toContain(s.preferredLeader);
    cands.push(c);
    chosen.push(s.preferredLeader);
  }
  if (cands.length === 0) return;
  const nodes = [...new Set(cands.flat())].sort((a, b) => a - b);
  const counts = nodes.map((x) => chosen.filter((c) => c === x).length);
  const max = Math.max(...counts);
  // optimal maximum: no assignment does better
  expect(leaderAssignmentFeasible(cands, nodes, 0, max - 1)).toBe(false);
  const lo = Math.floor(cands.length / nodes.length);
  if (leaderAssignmentFeasible(cands, nodes, lo, Math.ceil(cands.length / nodes.length))) expect(spread(counts)).toBeLessThanOrEqual(1);
}

describe('initialMap', () => {
  it('a 3-node cluster: all active, 3 metadata voters, the default pool at groups 1..n, leaders balanced', () => {
    const m = initialMap(members(3, 1, 2), { shards: 4, replicas: 3 });
    expect(m.epoch).toBe(0);
    expect(m.members).toEqual([1, 2, 3].map((id) => ({ ...member(id), state: 'active' })));
    expect(m.metaVoters).toEqual([1, 2, 3]);
    expect(m.pools).toEqual([{ name: '', shards: 4, replicas: 3, state: 'active' }]);
    expect(m.shards.map((s) => [s.group, s.index, s.pool])).toEqual([
      [1, 0, ''],
      [2, 1, ''],
      [3, 2, ''],
      [4, 3, ''],
    ]);
    expect(m.shards.map((s) => s.preferredLeader)).toEqual([1, 2, 3, 1]);
    for (const s of m.shards) expect(s.initial).toEqual(s.replicas);
    expect(m.nextGroup).toBe(5);
  });

  it('metadata voters: the smallest ids, 5 of >= 5 members, 3 of 3-4, all of 1-2', () => {
    const voters = (n: number): readonly NodeId[] => initialMap(members(...Array.from({ length: n }, (_, i) => 10 - i)), { shards: 1, replicas: 1 }).metaVoters;
    expect(voters(1)).toEqual([10]);
    expect(voters(2)).toEqual([9, 10]);
    expect(voters(3)).toEqual([8, 9, 10]);
    expect(voters(4)).toEqual([7, 8, 9]);
    expect(voters(5)).toEqual([6, 7, 8, 9, 10]);
    expect(voters(7)).toEqual([4, 5, 6, 7, 8]);
  });

  it('is a pure function of the member set, spreads replicas and leaders evenly', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: 60 }), { minLength: 1, maxLength: 9 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 7 }),
        (ids, shards, r) => {
          const replicas = Math.min(r, ids.length);
          const a = initialMap(members(...ids), { shards, replicas });
          const b = initialMap(members(...[...ids].reverse()), { shards, replicas });
          expect(b).toEqual(a);
          checkInvariants(a);
          expect(spread(replicaCounts(a).values())).toBeLessThanOrEqual(1);
          expect(spread(leaderCounts(a).values())).toBeLessThanOrEqual(1);
          // the initial map is already settled: planning changes nothing
          expect(sameMap(planStep(a, allLive(a), settled(a)), a)).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('rejects bad input', () => {
    expect(codeOf(() => initialMap([], { shards: 1, replicas: 1 }))).toBe('INVALID_MEMBER');
    expect(codeOf(() => initialMap([member(1), member(1)], { shards: 1, replicas: 1 }))).toBe('MEMBER_EXISTS');
    expect(codeOf(() => initialMap([member(1), { id: 2, address: member(1).address }], { shards: 1, replicas: 1 }))).toBe('MEMBER_EXISTS');
    expect(codeOf(() => initialMap([{ id: 1, address: 'nope' }], { shards: 1, replicas: 1 }))).toBe('INVALID_MEMBER');
    expect(codeOf(() => initialMap(members(1, 2), { shards: 1, replicas: 3 }))).toBe('NOT_ENOUGH_MEMBERS');
    expect(codeOf(() => initialMap(members(1, 2), { shards: 0, replicas: 1 }))).toBe('INVALID_POOL');
  });
});

describe('pools', () => {
  const base = initialMap(members(1, 2, 3, 4), { shards: 2, replicas: 3 });

  it('addPool: creating, groups from nextGroup, least-loaded replicas, leaders balanced over all shards', () => {
    // loads: 1,2,3 host 2 shards each... the default pool put replicas on [1,2,3] and [1,2,4]
    const before = replicaCounts(base);
    const m = addPool(base, '/cameras', { shards: 3, replicas: 2, affinity: '^(/cameras/[^/]+)/', retentionMs: 1000 });
    checkInvariants(m);
    expect(m.pools.map((p) => p.name)).toEqual(['', '/cameras']);
    expect(m.pools[1]).toEqual({ name: '/cameras', shards: 3, replicas: 2, affinity: '^(/cameras/[^/]+)/', retentionMs: 1000, state: 'creating' });
    const added = m.shards.filter((s) => s.pool === '/cameras');
    expect(added.map((s) => s.group)).toEqual([base.nextGroup, base.nextGroup + 1, base.nextGroup + 2]);
    expect(m.nextGroup).toBe(base.nextGroup + 3);
    // the least-loaded members get the first replicas
    const minLoad = Math.min(...before.values());
    const leastLoaded = [...before].filter(([, c]) => c === minLoad).map(([id]) => id);
    for (const id of leastLoaded) expect(added[0]!.replicas).toContain(id);
    expect(spread(replicaCounts(m).values())).toBeLessThanOrEqual(1);
    expect(spread(leaderCounts(m).values())).toBeLessThanOrEqual(1);
    for (const s of added) expect(s.initial).toEqual(s.replicas);
  });

  it('addPool prefers a new empty member', () => {
    const m = addPool(addMember(base, member(9)), '/p', { shards: 2, replicas: 1 });
    // loads before: 1:2 2:2 3:1 4:1 9:0; then 9 has 1 replica of this pool, so 3 (load 1, none of the pool) is next
    expect(m.shards.filter((s) => s.pool === '/p').map((s) => s.replicas)).toEqual([[9], [3]]);
    expect(m.shards.filter((s) => s.pool === '/p').map((s) => s.preferredLeader)).toEqual([9, 3]);
  });

  it('addPool errors', () => {
    expect(codeOf(() => addPool(base, '/_sys', { shards: 1, replicas: 1 }))).toBe('INVALID_POOL');
    expect(codeOf(() => addPool(base, '/p', { shards: 300, replicas: 1 }))).toBe('INVALID_POOL');
    expect(codeOf(() => addPool(base, '/p', { shards: 1, replicas: 5 }))).toBe('NOT_ENOUGH_MEMBERS');
    expect(codeOf(() => addPool(markRemoving(base, 4), '/p', { shards: 1, replicas: 4 }))).toBe('NOT_ENOUGH_MEMBERS');
    const withP = addPool(base, '/p', { shards: 1, replicas: 1 });
    expect(codeOf(() => addPool(withP, '/p', { shards: 1, replicas: 1 }))).toBe('POOL_EXISTS');
    expect(codeOf(() => addPool(emptyMap(), '/p', { shards: 1, replicas: 1 }))).toBe('INVALID_MAP');
    let many = base;
    const specs = { shards: 1, replicas: 1 };
    // reach the pool limit cheaply: pools without shards are not allowed, so add 1023 one-shard pools
    for (let i = 0; i < 1023; i++) many = addPool(many, `/p${i}`, specs);
    expect(many.pools.length).toBe(1024);
    expect(codeOf(() => addPool(many, '/one-more', specs))).toBe('INVALID_POOL');
  });

  it('setPoolState: creating -> active -> deleting; no way back; the default pool stays active', () => {
    let m = addPool(base, '/p', { shards: 1, replicas: 1 });
    expect(codeOf(() => setPoolState(m, '/nope', 'active'))).toBe('POOL_NOT_FOUND');
    m = setPoolState(m, '/p', 'active');
    expect(m.pools.find((p) => p.name === '/p')!.state).toBe('active');
    expect(setPoolState(m, '/p', 'active')).toBe(m);
    expect(codeOf(() => setPoolState(m, '/p', 'creating'))).toBe('INVALID_POOL');
    m = setPoolState(m, '/p', 'deleting');
    expect(codeOf(() => setPoolState(m, '/p', 'active'))).toBe('INVALID_POOL');
    expect(codeOf(() => setPoolState(m, '', 'deleting'))).toBe('INVALID_POOL');
    expect(codeOf(() => setPoolState(m, '/p', 'bogus' as never))).toBe('INVALID_POOL');
    expect(setPoolState(addPool(base, '/q', { shards: 1, replicas: 1 }), '/q', 'deleting').pools[1]!.state).toBe('deleting');
  });

  it('removePool: removes the pool and its shards; group ids are not reused', () => {
    const m = addPool(base, '/p', { shards: 2, replicas: 1 });
    expect(codeOf(() => removePool(setPoolState(m, '/p', 'active'), '/p'))).toBe('POOL_NOT_EMPTY');
    expect(codeOf(() => removePool(m, '/nope'))).toBe('POOL_NOT_FOUND');
    expect(codeOf(() => removePool(m, ''))).toBe('INVALID_POOL');
    const removed = removePool(setPoolState(setPoolState(m, '/p', 'active'), '/p', 'deleting'), '/p');
    expect(removed.pools).toEqual(base.pools);
    expect(removed.shards).toEqual(base.shards);
    expect(removed.nextGroup).toBe(m.nextGroup);
    expect(removePool(m, '/p').shards).toEqual(base.shards); // abandoning a creation
    const again = addPool(removed, '/p', { shards: 1, replicas: 1 });
    expect(again.shards.at(-1)!.group).toBe(m.nextGroup);
  });
});

describe('members', () => {
  const base = initialMap(members(1, 2, 3), { shards: 3, replicas: 3 });

  it('addMember keeps members sorted and refuses a taken id or address', () => {
    const m = addMember(addMember(base, member(7)), member(5));
    expect(m.members.map((x) => [x.id, x.state])).toEqual([
      [1, 'active'],
      [2, 'active'],
      [3, 'active'],
      [5, 'active'],
      [7, 'active'],
    ]);
    expect(codeOf(() => addMember(m, member(5)))).toBe('MEMBER_EXISTS');
    expect(codeOf(() => addMember(m, { id: 8, address: member(5).address }))).toBe('MEMBER_EXISTS');
    expect(codeOf(() => addMember(m, { id: 8, address: 'x' }))).toBe('INVALID_MEMBER');
  });

  it('markRemoving keeps enough active members for the largest replication', () => {
    expect(codeOf(() => markRemoving(base, 1))).toBe('NOT_ENOUGH_MEMBERS');
    expect(codeOf(() => markRemoving(base, 9))).toBe('MEMBER_NOT_FOUND');
    const m = markRemoving(addMember(base, member(4)), 2);
    expect(m.members.find((x) => x.id === 2)!.state).toBe('removing');
    expect(markRemoving(m, 2)).toBe(m);
    expect(codeOf(() => markRemoving(m, 1))).toBe('NOT_ENOUGH_MEMBERS');
    const single = initialMap(members(1), { shards: 1, replicas: 1 });
    expect(codeOf(() => markRemoving(single, 1))).toBe('NOT_ENOUGH_MEMBERS');
  });

  it('dropMember only once removing and hosting nothing', () => {
    const m = markRemoving(addMember(base, member(4)), 2);
    expect(codeOf(() => dropMember(m, 1))).toBe('INVALID_MEMBER');
    expect(codeOf(() => dropMember(m, 2))).toBe('BUSY');
    expect(codeOf(() => dropMember(m, 9))).toBe('MEMBER_NOT_FOUND');
    const { map } = converge(m);
    expect(hostedGroups(map, 2)).toEqual([0]);
    const dropped = dropMember(map, 2);
    expect(dropped.members.map((x) => x.id)).toEqual([1, 3, 4]);
    expect(hostedGroups(dropped, 2)).toEqual([]);
  });

  it('hostedGroups: the shards a node replicates, plus group 0 for every member', () => {
    const m = addMember(addPool(base, '/p', { shards: 1, replicas: 1 }), member(9));
    const p = m.shards.find((s) => s.pool === '/p')!;
    expect(hostedGroups(m, 9)).toEqual([0]);
    expect(hostedGroups(m, p.replicas[0]!)).toEqual([0, 1, 2, 3, p.group]);
    expect(hostedGroups(m, 42)).toEqual([]);
  });
});

describe('planStep', () => {
  it('(a) replaces replicas on a removing member with the least-loaded active member, live first', () => {
    let m = initialMap(members(1, 2, 3), { shards: 3, replicas: 3 });
    m = addMember(addMember(m, member(4)), member(5));
    m = markRemoving(m, 1);
    const next = planStep(m, new Set([1, 2, 3, 5]), settled(m)); // 4 is down
    checkInvariants(next);
    for (const s of next.shards) expect(s.replicas).not.toContain(1);
    // every replacement went to the live member 5 (4 is down although as empty)
    for (const s of next.shards) expect(s.replicas).toEqual([2, 3, 5]);
    // (a) is not throttled
    const many = markRemoving(addMember(initialMap(members(1, 2, 3), { shards: 12, replicas: 3 }), member(4)), 1);
    const step = planStep(many, allLive(many), settled(many), 1);
    expect(step.shards.every((s) => !s.replicas.includes(1))).toBe(true);
  });

  it('(b) metadata voters: removing members leave, new members join up to the desired count', () => {
    let m = initialMap(members(1, 2, 3), { shards: 1, replicas: 3 });
    m = addMember(m, member(4));
    expect(planStep(m, allLive(m), settled(m)).metaVoters).toEqual([1, 2, 3]);
    m = addMember(m, member(5));
    expect(planStep(m, allLive(m), settled(m)).metaVoters).toEqual([1, 2, 3, 4, 5]);
    m = planStep(m, allLive(m), settled(m));
    m = markRemoving(m, 2);
    expect(planStep(m, allLive(m), settled(m)).metaVoters).toEqual([1, 3, 4]); // 4 active: 3 voters, 5 dropped first (largest)
    expect(planStep(m, new Set([1, 2, 3, 5]), settled(m)).metaVoters).toEqual([1, 3, 5]); // the down voter 4 goes first
    m = addMember(m, member(6));
    expect(planStep(m, allLive(m), settled(m)).metaVoters).toEqual([1, 3, 4, 5, 6]);
  });

  it('(c) moves at most one replica per shard and maxMovesPerStep shards, only of settled shards', () => {
    let m = initialMap(members(1, 2, 3), { shards: 8, replicas: 3 });
    m = addMember(addMember(m, member(4)), member(5));
    const next = planStep(m, allLive(m), settled(m), 3);
    const changed = next.shards.filter((s, i) => s.replicas.join() !== m.shards[i]!.replicas.join());
    expect(changed.length).toBe(3);
    for (const s of changed) {
      const before = m.shards.find((x) => x.group === s.group)!;
      expect(s.replicas.filter((r) => !before.replicas.includes(r)).length).toBe(1);
    }
    const replicasOf = (x: ClusterMap): NodeId[][] => x.shards.map((s) => [...s.replicas]);
    // a shard whose actual voters differ from its desired replicas is not touched
    const actual = settled(m);
    for (const s of m.shards) actual.set(s.group, { voters: [1, 2], learners: [3] });
    expect(replicasOf(planStep(m, allLive(m), actual))).toEqual(replicasOf(m));
    // nor is a shard the reconciler has not reported
    expect(replicasOf(planStep(m, allLive(m), new Map()))).toEqual(replicasOf(m));
    // moves only go to live members
    const deadTargets = planStep(m, new Set([1, 2, 3]), settled(m));
    expect(deadTargets.shards.map((s) => s.replicas)).toEqual(m.shards.map((s) => s.replicas));
  });

  it('(c) fixes a 4/2/2/2 imbalance that ceil/floor of the average alone would leave', () => {
    // 4 members, 10 one-replica shards: counts 4,2,2,2 (avg 2.5) must become 3,3,2,2
    const sh = (group: number, r: NodeId): ShardInfo => ({ group, pool: '', index: group - 1, replicas: [r], initial: [r], preferredLeader: r });
    const owners = [1, 1, 1, 1, 2, 2, 3, 3, 4, 4];
    const m: ClusterMap = {
      epoch: 3,
      members: members(1, 2, 3, 4).map((x) => ({ ...x, state: 'active' as const })),
      metaVoters: [1, 2, 3],
      pools: [{ name: '', shards: 10, replicas: 1, state: 'active' }],
      shards: owners.map((r, i) => sh(i + 1, r)),
      nextGroup: 11,
    };
    const { map } = converge(m);
    expect([...replicaCounts(map).values()].sort()).toEqual([2, 2, 3, 3]);
    expect(map.epoch).toBe(3);
  });

  it('(d) keeps a fine current leader, replaces a dead or removed one, and avoids removing members', () => {
    const m = initialMap(members(1, 2, 3), { shards: 3, replicas: 3 });
    expect(m.shards.map((s) => s.preferredLeader)).toEqual([1, 2, 3]);
    expect(planStep(m, allLive(m), settled(m)).shards.map((s) => s.preferredLeader)).toEqual([1, 2, 3]);
    // node 3 down: its shard moves to the least-loaded live replica
    const down = planStep(m, new Set([1, 2]), settled(m));
    expect(down.shards.map((s) => s.preferredLeader)).toEqual([1, 2, 1]);
    // a replica that is not yet an actual voter cannot be preferred
    const actual = settled(m);
    actual.set(3, { voters: [1, 2], learners: [3] });
    expect(planStep(m, allLive(m), actual).shards[2]!.preferredLeader).not.toBe(3);
    // no live replica: keep the leader while it is a replica
    expect(planStep(m, new Set(), settled(m)).shards.map((s) => s.preferredLeader)).toEqual([1, 2, 3]);
  });

  it('(d) never prefers a removing member when another replica can lead', () => {
    const m = markRemoving(addMember(initialMap(members(1, 2, 3), { shards: 3, replicas: 3 }), member(4)), 1);
    // actual still has 1 as a voter (the move has not happened yet)
    const next = planStep(m, allLive(m), settled(m));
    for (const s of next.shards) expect(s.preferredLeader).not.toBe(1);
  });

  it('(d) rebalances along a chain of reassignments', () => {
    // node 2 leads 3 shards, 3 leads 2, 1 and 4 none: 1 can only take shard 1 from 2, and 4 must take one
    // of 3's shards while 3 takes over one of 2's (a chain 2 -> 3 -> 4).
    const sh = (group: number, replicas: NodeId[], leader: NodeId): ShardInfo => ({ group, pool: '', index: group - 1, replicas, initial: replicas, preferredLeader: leader });
    const m: ClusterMap = {
      epoch: 1,
      members: members(1, 2, 3, 4).map((x) => ({ ...x, state: 'active' as const })),
      metaVoters: [1, 2, 3],
      pools: [{ name: '', shards: 5, replicas: 2, state: 'active' }],
      shards: [sh(1, [1, 2], 2), sh(2, [2, 3], 2), sh(3, [2, 3], 2), sh(4, [3, 4], 3), sh(5, [3, 4], 3)],
      nextGroup: 6,
    };
    // maxMovesPerStep 0: only (d) changes anything
    const next = planStep(m, allLive(m), settled(m), 0);
    expect(next.shards.map((s) => s.replicas)).toEqual(m.shards.map((s) => s.replicas));
    checkLeaders(next, allLive(next));
    expect(spread(leaderCounts(next).values())).toBeLessThanOrEqual(1);
  });
});

type Op = { kind: 'add' } | { kind: 'remove'; pick: number } | { kind: 'pool'; shards: number; replicas: number } | { kind: 'settle'; steps: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.constant<Op>({ kind: 'add' }) },
  { weight: 2, arbitrary: fc.nat().map((pick): Op => ({ kind: 'remove', pick })) },
  { weight: 2, arbitrary: fc.record({ shards: fc.integer({ min: 1, max: 8 }), replicas: fc.integer({ min: 1, max: 4 }) }).map((p): Op => ({ kind: 'pool', ...p })) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 3 }).map((steps): Op => ({ kind: 'settle', steps })) },
);

/** Runs a history of member and pool operations, interleaved with a few plan steps, from a random initial cluster. */
function runHistory(initialMembers: number, shards: number, replicas: number, ops: Op[], live: (m: ClusterMap) => ReadonlySet<NodeId>): ClusterMap {
  let m = initialMap(members(...Array.from({ length: initialMembers }, (_, i) => i + 1)), { shards, replicas: Math.min(replicas, initialMembers) });
  let nextId = initialMembers + 1;
  let nextPool = 0;
  for (const op of ops) {
    try {
      if (op.kind === 'add') m = addMember(m, member(nextId++));
      else if (op.kind === 'remove') {
        const active = m.members.filter((x) => x.state === 'active');
        m = markRemoving(m, active[op.pick % active.length]!.id);
      } else if (op.kind === 'pool') {
        m = addPool(m, `/p${nextPool++}`, { shards: op.shards, replicas: op.replicas });
        m = setPoolState(m, `/p${nextPool - 1}`, 'active');
      } else for (let i = 0; i < op.steps; i++) m = planStep(m, live(m), settled(m));
    } catch (e) {
      expect(e).toBeInstanceOf(ShardingError); // refused operations (not enough members) leave the map as it was
    }
    checkInvariants(m);
  }
  return m;
}

describe('planStep convergence', () => {
  it('from any history of member and pool changes, instant moves converge to a balanced placement', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 1, max: 3 }),
        fc.array(opArb, { maxLength: 10 }),
        (n, shards, replicas, ops) => {
          const m0 = runHistory(n, shards, replicas, ops, allLive);
          const totalReplicas = m0.shards.reduce((a, s) => a + s.replicas.length, 0);
          const { map: m, steps } = converge(m0);
          // bounded: every step that changes replicas moves at least one, and no balancing needs more moves than replicas
          expect(steps).toBeLessThanOrEqual(totalReplicas + 2);
          checkInvariants(m);
          const removing = m.members.filter((x) => x.state === 'removing').map((x) => x.id);
          for (const s of m.shards) for (const r of removing) expect(s.replicas).not.toContain(r);
          for (const r of removing) expect(m.metaVoters).not.toContain(r);
          expect(spread(activeReplicaCounts(m))).toBeLessThanOrEqual(1);
          const active = m.members.filter((x) => x.state === 'active').length;
          expect(m.metaVoters.length).toBe(active >= 5 ? 5 : active >= 3 ? 3 : active);
          checkLeaders(m, allLive(m));
          // removing members can now be dropped
          let dropped = m;
          for (const r of removing) dropped = dropMember(dropped, r);
          expect(dropped.members.every((x) => x.state === 'active')).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('with some members down it still converges, replicas leave removing members, and leaders are live where possible', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 6 }),
        fc.integer({ min: 1, max: 6 }),
        fc.array(opArb, { maxLength: 8 }),
        fc.array(fc.integer({ min: 1, max: 12 }), { maxLength: 3 }),
        (n, shards, ops, downIds) => {
          const down = new Set(downIds);
          const live = (m: ClusterMap): Set<NodeId> => new Set(m.members.map((x) => x.id).filter((id) => !down.has(id)));
          const m0 = runHistory(n, shards, 2, ops, live);
          const { map: m } = converge(m0, live);
          checkInvariants(m);
          const activeIds = m.members.filter((x) => x.state === 'active').map((x) => x.id);
          for (const s of m.shards) for (const r of s.replicas) expect(activeIds).toContain(r);
          checkLeaders(m, live(m));
          // replica balance among the live active members that can take replicas
          const counts = replicaCounts(m);
          const liveActive = activeIds.filter((id) => !down.has(id));
          // no move is left: an active member 2 above a live one shares all its shards with it
          for (const src of activeIds) {
            for (const dst of liveActive) {
              if (counts.get(src)! - counts.get(dst)! < 2) continue;
              expect(m.shards.some((s) => s.replicas.includes(src) && !s.replicas.includes(dst))).toBe(false);
            }
          }
          if (down.size === 0 || activeIds.every((id) => !down.has(id))) expect(spread(activeReplicaCounts(m))).toBeLessThanOrEqual(1);
        },
      ),
      { numRuns: 200 },
    );
  });
});
