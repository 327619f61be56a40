/**
 * Leader-side convergence of each Raft group this node leads toward the cluster map: the shard's
 * descriptor (which keys it owns), its membership (add learner → catch up → promote → remove, one
 * change at a time, so a quorum never shrinks below the desired replication), and its leader
 * (transfer to the map's preferred leader once it is caught up). The metadata group converges to
 * "the map's meta voters as voters, every other member as a learner" the same way.
 */
import { ConfChangeType, type ConfChange, type NodeId } from '../raft/index.js';
import {
  CLUSTER_INFO_KEY,
  descriptorOf,
  encodeClusterMap,
  encodeDescriptor,
  META_GROUP,
  type ClusterMap,
  type ShardDescriptor,
} from '../sharding/index.js';
import { SHARD_DESCRIPTOR_KEY, type Command } from '../statemachine/index.js';
import type { ShardReplica } from './replica.js';

/** A learner is promoted once its log is within this many entries of the leader's. */
export const CATCH_UP_MAX_LAG_ENTRIES = 16;

/** A leader keeps leadership at least this long before handing it to the preferred leader (hysteresis). */
export const MIN_LEADERSHIP_BEFORE_TRANSFER_MS = 2_000;

/** What the reconciler needs from its host node. */
export interface ReconcileHost {
  readonly id: NodeId;
  /** Proposes a system-origin command (the cluster's own write) to a group this node leads; the promise settles when applied. */
  propose(group: number, cmd: Command): Promise<unknown>;
  /** Whether peer `id` was heard from recently (a transfer target must be alive). */
  isLive(id: NodeId): boolean;
  /** Called when a step is taken (logging). */
  note(group: number, what: string, detail: object): void;
}

/** Whether two descriptors say the same thing (the epoch aside). */
export function sameOwnership(a: ShardDescriptor | undefined, b: ShardDescriptor | undefined): boolean {
  if (!a || !b) return a === b;
  return (
    a.group === b.group &&
    a.pool === b.pool &&
    a.index === b.index &&
    a.shards === b.shards &&
    (a.affinity ?? '') === (b.affinity ?? '') &&
    a.excluded.length === b.excluded.length &&
    a.excluded.every((x, i) => x === b.excluded[i])
  );
}

/** Drives the groups a node leads toward the map, one bounded step per group per call. */
export class ShardReconciler {
  private readonly inFlight = new Set<string>();
  private readonly leaderSince = new Map<number, { term: number; sinceMs: number }>();

  constructor(private readonly host: ReconcileHost) {}

  /** One pass over `replicas` (call periodically). `initialMap` is written when the metadata is empty. */
  step(replicas: Iterable<ShardReplica>, map: ClusterMap, mapInitialised: boolean, initialMap: ClusterMap | undefined, nowMs: number): void {
    for (const r of replicas) {
      if (!r.isLeader) {
        this.leaderSince.delete(r.group);
        continue;
      }
      const term = r.term;
      const since = this.leaderSince.get(r.group);
      if (!since || since.term !== term) this.leaderSince.set(r.group, { term, sinceMs: nowMs });
      try {
        if (r.group === META_GROUP) this.stepMeta(r, map, mapInitialised, initialMap);
        else if (mapInitialised) this.stepShard(r, map, nowMs); // data shards follow the written map only
      } catch (e) {
        this.host.note(r.group, 'reconcile step failed', { err: String(e) });
      }
    }
  }

  private once(key: string, group: number, what: string, run: () => Promise<unknown>): void {
    if (this.inFlight.has(key)) return;
    this.inFlight.add(key);
    run().then(
      () => this.inFlight.delete(key),
      (e: unknown) => {
        this.inFlight.delete(key);
        this.host.note(group, `${what} not applied`, { err: String(e) });
      },
    );
  }

  private stepMeta(r: ShardReplica, map: ClusterMap, initialised: boolean, initialMap: ClusterMap | undefined): void {
    if (!initialised) {
      if (!initialMap) return;
      const cmd = initialMapCommand(initialMap);
      this.once('meta-init', r.group, 'initial map', () => this.host.propose(META_GROUP, cmd));
      return;
    }
    // Every active member follows the map as a learner; a member being removed leaves the group.
    const members = map.members.filter((m) => m.state === 'active').map((m) => m.id);
    this.stepMembership(r, map.metaVoters, members.filter((id) => !map.metaVoters.includes(id)));
  }

  private stepShard(r: ShardReplica, map: ClusterMap, nowMs: number): void {
    const shard = map.shards.find((s) => s.group === r.group);
    if (!shard) return; // not (yet) in our map: leave it as it is
    const want = descriptorOf(map, r.group);
    if (want && !sameOwnership(want, r.descriptor)) {
      const value = new TextEncoder().encode(encodeDescriptor({ ...want, epoch: map.epoch }));
      this.once(`desc-${r.group}`, r.group, 'descriptor', () => this.host.propose(r.group, { type: 'put', key: SHARD_DESCRIPTOR_KEY, value }));
      return; // ownership first: membership and leadership can wait a step
    }
    if (this.stepMembership(r, shard.replicas, [])) return;
    this.stepLeadership(r, shard.preferredLeader, nowMs);
  }

  /**
   * One membership change toward `voters` (+ `learners`): add missing nodes as learners, promote
   * caught-up learners that should vote, then remove voters (never below the desired count) and
   * learners that should go. A leader that should go hands leadership to a caught-up voter first.
   * Returns whether a change is pending or was proposed.
   */
  private stepMembership(r: ShardReplica, voters: readonly NodeId[], learners: readonly NodeId[]): boolean {
    const st = r.status();
    const cur = st.conf;
    const inConf = new Set([...cur.voters, ...cur.learners]);
    const caughtUp = (id: NodeId): boolean => (st.matched.get(id) ?? 0) + CATCH_UP_MAX_LAG_ENTRIES >= st.lastIndex;
    let cc: ConfChange | undefined;
    for (const id of [...voters, ...learners]) {
      if (!inConf.has(id)) {
        cc = { type: ConfChangeType.AddLearner, nodeId: id };
        break;
      }
    }
    if (!cc) {
      for (const id of voters) {
        if (cur.learners.includes(id) && caughtUp(id)) {
          cc = { type: ConfChangeType.AddVoter, nodeId: id };
          break;
        }
      }
    }
    if (!cc && voters.every((id) => cur.voters.includes(id))) {
      for (const id of cur.voters) {
        if (voters.includes(id)) continue;
        if (id === this.host.id) {
          const target = voters.find((v) => v !== id && caughtUp(v) && this.host.isLive(v));
          if (target !== undefined && !r.transferringLeadership) {
            this.host.note(r.group, 'leaving the group: transferring leadership', { to: target });
            r.transferLeader(target);
          }
          return true;
        }
        cc = { type: ConfChangeType.RemoveNode, nodeId: id };
        break;
      }
      if (!cc) {
        for (const id of cur.learners) {
          if (!voters.includes(id) && !learners.includes(id)) {
            cc = { type: ConfChangeType.RemoveNode, nodeId: id };
            break;
          }
        }
      }
    }
    if (!cc) return false;
    try {
      r.proposeConfChange(cc);
      this.host.note(r.group, 'membership change proposed', { change: ConfChangeType[cc.type] ?? cc.type, member: cc.nodeId });
    } catch {
      // Another change is still being applied, or a transfer is in progress: try again next pass.
    }
    return true;
  }

  private stepLeadership(r: ShardReplica, preferred: NodeId, nowMs: number): void {
    if (preferred === 0 || preferred === this.host.id) return;
    const since = this.leaderSince.get(r.group);
    if (!since || nowMs - since.sinceMs < MIN_LEADERSHIP_BEFORE_TRANSFER_MS) return;
    const st = r.status();
    if (!st.conf.voters.includes(preferred) || !this.host.isLive(preferred)) return;
    if ((st.matched.get(preferred) ?? 0) + CATCH_UP_MAX_LAG_ENTRIES < st.lastIndex) return;
    if (r.transferringLeadership) return;
    this.host.note(r.group, 'transferring leadership to the preferred leader', { to: preferred });
    r.transferLeader(preferred);
  }
}

/** The metadata command writing a brand-new cluster's map, if and only if none is there yet. */
export function initialMapCommand(map: ClusterMap): Command {
  const enc = new TextEncoder();
  return {
    type: 'txn',
    compares: [{ key: CLUSTER_INFO_KEY, version: 0 }],
    writes: [...encodeClusterMap(map)].map(([key, value]) => ({ type: 'put' as const, key, value: enc.encode(value) })),
  };
}
