/**
 * Changes to the cluster map, run on the metadata group's leader: creating pools (with the fence
 * that keeps keys from being written to the old owner meanwhile), adding and removing members,
 * and the placement controller that moves replicas and preferred leaders one bounded step at a
 * time. Every change is one metadata txn guarded by the version of `/_cluster/info`, so
 * concurrent changes never overwrite each other.
 */
import {
  addMember,
  addPool,
  CLUSTER_INFO_KEY,
  diffClusterMaps,
  encodeClusterMap,
  dropMember,
  markRemoving,
  META_GROUP,
  planStep,
  sameMap,
  poolOf,
  removePool,
  setPoolState,
  ShardingError,
  validatePoolName,
  type ClusterMap,
  type GroupMembership,
  type NodeId,
  type PoolSpec,
} from '../sharding/index.js';
import type { NodeStatusInfo } from './backend.js';
import { DeadlineError } from './backend.js';
import type { KvNode } from './kv-node.js';
import type { Logger } from '../log.js';

/** What the controller learns from other nodes (implemented over gRPC by the server layer). */
export interface ClusterProbe {
  /** Status of every member that answered before the deadline. */
  statuses(map: ClusterMap, deadlineMs: number): Promise<NodeStatusInfo[]>;
  /** Live keys in shard `group` equal to `prefix` or under `prefix + '/'` (at most `limit` counted), read linearizably. */
  countKeys(group: number, prefix: string, limit: number, deadlineMs: number): Promise<number>;
}

/** Attempts of one map change before giving up on conflicts with concurrent changes. */
const MAX_UPDATE_ATTEMPTS = 20;

/** How often the placement controller runs on the metadata leader (ms). */
export const CONTROLLER_INTERVAL_MS = 1_000;

/** Poll interval while waiting for shards to reach a state (ms). */
const WAIT_POLL_MS = 100;

/** Backoff before retrying a map change that lost to a concurrent one: a base plus a random spread (ms). */
const UPDATE_RETRY_BASE_MS = 5;
const UPDATE_RETRY_SPREAD_MS = 20;

/** Deadline of rolling back a failed pool creation (ms). */
const ROLLBACK_DEADLINE_MS = 10_000;

/** Deadline of one round of status probes while waiting for shards (ms). */
const SHARD_PROBE_MS = 2_000;

/** Deadline of the placement controller's status probes (ms; shorter than its interval). */
const CONTROLLER_PROBE_MS = 800;

/** Deadline of the placement controller's map write (ms). */
const CONTROLLER_WRITE_MS = 5_000;

/** What a pool creation asks for. */
export interface CreatePoolRequest {
  readonly name: string;
  readonly shards: number;
  readonly replicas?: number;
  readonly affinity?: string;
  readonly retentionMs?: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Pool and member administration plus the placement controller. */
export class ClusterAdmin {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private readonly creating = new Set<string>();

  constructor(
    private readonly node: KvNode,
    private readonly probe: ClusterProbe,
    private readonly log: Logger,
  ) {}

  /** Starts the placement controller (it acts only while this node leads the metadata group). */
  start(): void {
    this.timer = setInterval(() => void this.controlStep(), CONTROLLER_INTERVAL_MS);
    this.timer.unref?.();
  }

  /** Stops the controller. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /**
   * Applies `mutate` to the current map as one metadata txn (compare-and-set on the map's info
   * record), retrying on conflicts. Returns the map as applied. Must run on the metadata leader.
   */
  /** Resolves once this node has applied a written cluster map; UNAVAILABLE-style error at `deadlineMs`. */
  private async untilMapWritten(deadlineMs: number): Promise<void> {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), Math.max(0, deadlineMs - Date.now()));
    try {
      await this.node.untilMapInitialised(ac.signal);
    } catch (e) {
      if (ac.signal.aborted) throw new DeadlineError('the cluster map is not written yet (the cluster is starting): retry');
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  async updateMap(mutate: (m: ClusterMap) => ClusterMap, deadlineMs: number): Promise<ClusterMap> {
    // Until the first map is written, this node routes with the bootstrap map, and a change
    // computed against it would be written as a diff of it: the stored map would lack what only
    // the bootstrap map had (the default pool), be refused as malformed by every node, and the
    // initial write would then fail its compare. Changes wait for the written map.
    await this.untilMapWritten(deadlineMs);
    for (let attempt = 0; attempt < MAX_UPDATE_ATTEMPTS; attempt++) {
      const meta = await this.node.readable('linearizable', { deadlineMs }, META_GROUP);
      await this.node.whenMapCurrent(); // the read barrier resolves as entries apply, before the map is re-read
      const before = this.node.shardMap();
      const after = mutate(before);
      const diff = diffClusterMaps(before, after);
      if (diff.puts.length === 0 && diff.deletes.length === 0) return before;
      const infoVersion = meta.readValue(CLUSTER_INFO_KEY)?.version ?? 0;
      const enc = new TextEncoder();
      // The info record is always rewritten (same value or not), so every change bumps the version the CAS compares.
      const puts = diff.puts.some((p) => p.key === CLUSTER_INFO_KEY)
        ? diff.puts
        : [...diff.puts, { key: CLUSTER_INFO_KEY, value: encodeClusterMap(after).get(CLUSTER_INFO_KEY)! }];
      const res = await this.node.execute(
        META_GROUP,
        {
          type: 'txn',
          compares: [{ key: CLUSTER_INFO_KEY, version: infoVersion }],
          writes: [
            ...puts.map((p) => ({ type: 'put' as const, key: p.key, value: enc.encode(p.value) })),
            ...diff.deletes.map((key) => ({ type: 'delete' as const, key })),
          ],
        },
        { deadlineMs },
        'system',
      );
      if (res.type === 'rejected') throw res.error;
      if (res.type === 'txn' && res.succeeded) {
        await this.node.whenMapCurrent();
        return this.node.shardMap();
      }
      await sleep(UPDATE_RETRY_BASE_MS + Math.random() * UPDATE_RETRY_SPREAD_MS);
    }
    throw new ShardingError('BUSY', 'the cluster map kept changing concurrently; try again');
  }

  /**
   * Creates a pool: refuses when keys exist under its prefix; writes it as `creating` (the parent
   * shards' descriptors then exclude its prefix, fencing writes there); waits until every parent
   * shard applied that fence and every new shard has a leader and descriptor; checks the prefix
   * is still empty (else rolls back); then activates it, so routing sends its keys to its shards.
   */
  async createPool(req: CreatePoolRequest, deadlineMs: number): Promise<{ pool: PoolSpec; epoch: number }> {
    const name = validatePoolName(req.name);
    if (this.creating.has(name)) throw new ShardingError('BUSY', `pool ${JSON.stringify(name)} is already being created`);
    this.creating.add(name);
    try {
      const start = this.node.shardMap();
      const active = start.members.filter((m) => m.state === 'active').length;
      const spec = {
        shards: req.shards,
        replicas: req.replicas ?? Math.min(3, active),
        ...(req.affinity ? { affinity: req.affinity } : {}),
        ...(req.retentionMs !== undefined ? { retentionMs: req.retentionMs } : {}),
      };
      addPool(start, name, spec); // validates before anything is written
      const parents = this.parentShards(start, name);
      await this.requireEmpty(parents, name, deadlineMs);
      const created = await this.updateMap((m) => addPool(m, name, spec), deadlineMs);
      const epoch = created.epoch;
      const groups = created.shards.filter((s) => s.pool === name).map((s) => s.group);
      this.log.info({ pool: name, groups, epoch }, 'pool created; fencing its prefix in the parent shards');
      try {
        await this.waitForShards([...parents, ...groups], epoch, deadlineMs);
        await this.requireEmpty(parents, name, deadlineMs);
      } catch (e) {
        this.log.warn({ pool: name, err: String(e) }, 'pool creation failed: rolling back');
        await this.updateMap((m) => (m.pools.some((p) => p.name === name && p.state === 'creating') ? removePool(m, name) : m), Date.now() + ROLLBACK_DEADLINE_MS).catch(
          (err: unknown) => this.log.error({ pool: name, err: String(err) }, 'rollback of a failed pool creation failed'),
        );
        throw e;
      }
      const done = await this.updateMap((m) => setPoolState(m, name, 'active'), deadlineMs);
      this.log.info({ pool: name, epoch: done.epoch }, 'pool active');
      return { pool: done.pools.find((p) => p.name === name)!, epoch: done.epoch };
    } finally {
      this.creating.delete(name);
    }
  }

  /** The shards that own keys under `name` today (those of the pool its keys route to). */
  private parentShards(map: ClusterMap, name: string): number[] {
    const parent = poolOf(map, `${name}/x`);
    return map.shards.filter((s) => s.pool === parent.name).map((s) => s.group);
  }

  private async requireEmpty(groups: readonly number[], name: string, deadlineMs: number): Promise<void> {
    for (const g of groups) {
      const n = await this.probe.countKeys(g, name, 1, deadlineMs);
      if (n > 0) {
        throw new ShardingError(
          'POOL_NOT_EMPTY',
          `keys already exist under ${name} (in shard ${g}); a pool can only be created for an empty prefix: delete or move them first`,
        );
      }
    }
  }

  /** Waits until each group has a leader that applied a descriptor of map epoch >= `epoch`. */
  private async waitForShards(groups: readonly number[], epoch: number, deadlineMs: number): Promise<void> {
    let pending = new Set(groups);
    while (pending.size > 0) {
      if (Date.now() >= deadlineMs) {
        throw new DeadlineError(`shards ${[...pending].join(', ')} did not take the new ownership before the deadline; the pool was not created`);
      }
      const statuses = await this.probe.statuses(this.node.shardMap(), Math.min(deadlineMs, Date.now() + SHARD_PROBE_MS));
      const ready = new Set<number>();
      for (const st of statuses) {
        for (const g of st.groups) {
          if (g.role === 'Leader' && g.leader === st.nodeId && g.descriptorEpoch >= epoch) ready.add(g.group);
        }
      }
      pending = new Set([...pending].filter((g) => !ready.has(g)));
      if (pending.size > 0) await sleep(WAIT_POLL_MS);
    }
  }

  /**
   * Adds a member at client `address` and peer `peerAddress` (the node then joins with `kvd --join`);
   * the controller gives it replicas. A cluster whose members have peer listeners needs the new
   * member's too (INVALID_MEMBER otherwise): without it no peer could reach the node.
   */
  async addMember(id: NodeId, address: string, deadlineMs: number, peerAddress?: string): Promise<{ epoch: number }> {
    const m = await this.updateMap((map) => {
      if (peerAddress === undefined && map.members.some((x) => x.peerAddress !== undefined)) {
        throw new ShardingError('INVALID_MEMBER', `member ${id} needs a peer address (its kvd --peer-listen host:port): kvctl member add ${id} ${address} --peer <host:port>`);
      }
      const noPeerPlane = map.members.find((x) => x.peerAddress === undefined);
      if (peerAddress !== undefined && noPeerPlane) {
        throw new ShardingError('INVALID_MEMBER', `member ${noPeerPlane.id} has no peer listener, so a new node could not reach it: a cluster that grows needs every node started with --peer-listen`);
      }
      return addMember(map, { id, address, ...(peerAddress !== undefined ? { peerAddress } : {}) });
    }, deadlineMs);
    this.log.info({ member: id, address, peerAddress, epoch: m.epoch }, 'member added');
    return { epoch: m.epoch };
  }

  /** Marks a member removing; the controller moves its replicas away and then forgets it. */
  async removeMember(id: NodeId, deadlineMs: number): Promise<{ epoch: number }> {
    const m = await this.updateMap((map) => markRemoving(map, id), deadlineMs);
    this.log.info({ member: id, epoch: m.epoch }, 'member removing: its replicas will move');
    return { epoch: m.epoch };
  }

  /** One controller pass: only on the metadata leader, once the map is initialised. */
  private async controlStep(): Promise<void> {
    if (this.running || !this.node.replica(META_GROUP)?.isLeader) return;
    this.running = true;
    try {
      const map = this.node.shardMap();
      if (map.epoch === 0) return;
      const statuses = await this.probe.statuses(map, Date.now() + CONTROLLER_PROBE_MS);
      const live = new Set<NodeId>(statuses.map((s) => s.nodeId));
      const actual = new Map<number, GroupMembership>();
      const actualTerm = new Map<number, number>();
      for (const st of statuses) {
        for (const g of st.groups) {
          if (g.role !== 'Leader' || g.leader !== st.nodeId) continue;
          if ((actualTerm.get(g.group) ?? -1) >= g.term) continue;
          actualTerm.set(g.group, g.term);
          actual.set(g.group, { voters: g.voters, learners: g.learners });
        }
      }
      const deadlineMs = Date.now() + CONTROLLER_WRITE_MS;
      // A local check first: the write (with its linearizable read of the map) only when a step is due.
      if (!sameMap(planStep(map, live, actual), map)) {
        await this.updateMap((m) => planStep(m, live, actual), deadlineMs);
        this.log.info({ epoch: this.node.shardMap().epoch }, 'placement step written');
        return;
      }
      // Forget removing members that no group (desired or actual) still includes.
      for (const m of map.members) {
        if (m.state !== 'removing') continue;
        const stillIn = [...actual.values()].some((c) => c.voters.includes(m.id) || c.learners.includes(m.id));
        const everyGroupKnown = map.shards.every((s) => actual.has(s.group)) && actual.has(META_GROUP);
        if (stillIn || !everyGroupKnown) continue;
        try {
          await this.updateMap((cur) => dropMember(cur, m.id), deadlineMs);
          this.log.info({ member: m.id }, 'member removed: it hosts no replica any more');
        } catch (e) {
          if (!(e instanceof ShardingError && e.code === 'BUSY')) throw e;
        }
      }
    } catch (e) {
      this.log.debug({ err: String(e) }, 'placement controller step failed');
    } finally {
      this.running = false;
    }
  }
}
