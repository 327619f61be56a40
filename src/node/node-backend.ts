/**
 * The node's `KvBackend` implementation: routes each request to the shard its key (or prefix)
 * belongs to in this node's map, proposes writes to that shard's replica here (which must lead
 * it) or reads from it after the read barrier its consistency needs, and answers Status and
 * readiness from the replicas. A request for a shard not hosted here is answered with where to go.
 */
import {
  ValidationError,
  validateCommand,
  validateWriteSession,
  type Command,
  type CommandOrigin,
  type CommandResult,
  type DeleteResult,
  type PutResult,
  type TxnResult,
} from '../statemachine/index.js';
import { hidesReservedKeys, isReservedKey, shardOf, shardsForPrefix, type ClusterMap, type ShardInfo } from '../sharding/index.js';
import {
  NotLeaderError,
  UnavailableError,
  CrossShardError,
  WrongShardError,
  type CallOptions,
  type DeleteRequest,
  type TxnRequest,
  type GetRequest,
  type GetResponse,
  type KvBackend,
  type ListRequest,
  type ListResponse,
  type NodeStatusInfo,
  type PutRequest,
  type TriggerRequest,
  type TriggerResponse,
  type WatchHandle,
  type WatchRequest,
  type WatchSink,
} from './backend.js';
import type { NodeDriver } from './driver.js';
import { DATA_GROUP, KVCASCADE_VERSION, META_GROUP, NODE_DEFAULTS } from './node-options.js';
import type { ShardReplica } from './replica.js';
import type { ReplicaSet } from './replica-set.js';

/** Serves the KV API from the replicas of one node. */
export class NodeBackend implements KvBackend {
  constructor(
    private readonly id: number,
    private readonly replicas: ReplicaSet,
    private readonly driver: NodeDriver,
    private readonly compat: { readonly legacyConditionalPuts: boolean } = { legacyConditionalPuts: false },
  ) {}

  /** The cluster map this node routes with. */
  shardMap(): ClusterMap {
    return this.replicas.map;
  }

  /** The data shard `key` belongs to in this node's map. */
  shardOfKey(key: string): ShardInfo {
    return shardOf(this.replicas.map, key);
  }

  /** The groups whose keys may start with `prefix`. */
  shardsForPrefix(prefix: string): number[] {
    return shardsForPrefix(this.replicas.map, prefix).map((s) => s.group);
  }

  /** The replica of `group` hosted here, or NotLeaderError pointing at a node that hosts one. */
  private groupReplica(group: number): ShardReplica {
    const r = this.replicas.get(group);
    if (r) return r;
    throw this.elsewhere(group);
  }

  /**
   * Where a request for a group not hosted here should go: a live replica of it (which forwards to
   * its leader, or names it); the service caches the leader it learns from the answer.
   */
  private elsewhere(group: number): NotLeaderError | UnavailableError {
    const map = this.replicas.map;
    const replicas = group === META_GROUP ? map.metaVoters : map.shards.find((s) => s.group === group)?.replicas;
    if (!replicas) return new UnavailableError(`shard ${group} is not in this node's cluster map (epoch ${map.epoch})`);
    const target = replicas.find((id) => id !== this.id && this.replicas.isLive(id)) ?? replicas.find((id) => id !== this.id);
    return new NotLeaderError(0, target !== undefined ? this.replicas.addressOf(target) : undefined, group);
  }

  private notLeader(r: ShardReplica): NotLeaderError {
    const leader = r.leader;
    return new NotLeaderError(leader, leader ? this.replicas.addressOf(leader) : undefined, r.group);
  }

  /**
   * Proposes a command to `group` (its leader must be this node) and waits for its result.
   * `origin` is recorded with it in the log: `client` for what clients and extension lambdas ask
   * (the state machine then rejects it, PERMISSION_DENIED, if it touches a reserved key), `system`
   * for the cluster's own writes (descriptors, the map, the extension registry, cursors, dead
   * letters). `opts.hops` counts the extension lambdas that led to this write (0 for clients).
   * `opts.session` (validated here, ValidationError INVALID_ARGUMENT) travels in the entry: the
   * shard applies each (session, seq) once and answers every attempt with the first result.
   */
  async execute(group: number, cmd: Command, opts: CallOptions, origin: CommandOrigin): Promise<CommandResult> {
    validateCommand(cmd);
    if (opts.session !== undefined) validateWriteSession(opts.session);
    const r = this.groupReplica(group);
    if (!r.isLeader) throw this.notLeader(r);
    const p = r.propose(cmd, origin, opts.hops ?? 0, opts.session);
    this.driver.scheduleReady();
    let res: CommandResult;
    try {
      res = await this.driver.withDeadline(p, opts.deadlineMs, 'write not confirmed before the deadline; its outcome is unknown');
    } catch (e) {
      if (e instanceof NotLeaderError) throw this.notLeader(r);
      throw e;
    }
    if (res.type === 'rejected' && res.error.code === 'WRONG_SHARD') throw new WrongShardError(res.error.message);
    return res;
  }

  /** Proposes a client command on the shard of `key`. */
  private proposeFor(key: string, cmd: Command, opts: CallOptions): Promise<CommandResult> {
    return this.execute(this.shardOfKey(key).group, cmd, opts, 'client');
  }

  async put(req: PutRequest, opts: CallOptions): Promise<PutResult> {
    const cmd: Command = {
      type: 'put',
      key: req.key,
      value: req.value,
      ...(req.expectedVersion !== undefined ? { expectedVersion: req.expectedVersion } : {}),
      // The current value on conflict only (a success carries nothing), unless older nodes may
      // still apply this shard's log: their decoders know only `returnPrevious` (NodeOptions.legacyConditionalPuts).
      ...(req.returnCurrentValue ? (this.compat.legacyConditionalPuts ? { returnPrevious: true } : { currentOnConflict: true }) : {}),
    };
    const res = await this.proposeFor(req.key, cmd, opts);
    if (res.type === 'rejected') throw res.error;
    if (res.type !== 'put') throw new Error(`unexpected result ${res.type} for a put`);
    return res;
  }

  async delete(req: DeleteRequest, opts: CallOptions): Promise<DeleteResult> {
    const cmd: Command = {
      type: 'delete',
      key: req.key,
      ...(req.expectedVersion !== undefined ? { expectedVersion: req.expectedVersion } : {}),
    };
    const res = await this.proposeFor(req.key, cmd, opts);
    if (res.type === 'rejected') throw res.error;
    if (res.type !== 'delete') throw new Error(`unexpected result ${res.type} for a delete`);
    return res;
  }

  async trigger(req: TriggerRequest, opts: CallOptions): Promise<TriggerResponse> {
    const res = await this.proposeFor(req.key, { type: 'triggerPut', key: req.key, value: req.value }, opts);
    if (res.type === 'rejected') throw res.error;
    if (res.type !== 'trigger') throw new Error(`unexpected result ${res.type} for a trigger`);
    return { revision: res.revision, timestampMs: res.timestampMs };
  }

  /** The one shard all of `keys` belong to, or CrossShardError naming two that differ. */
  shardOfKeys(keys: readonly string[]): number {
    let first: { key: string; group: number } | undefined;
    for (const key of keys) {
      const group = this.shardOfKey(key).group;
      if (!first) first = { key, group };
      else if (group !== first.group) {
        throw new CrossShardError(
          `keys ${JSON.stringify(first.key)} (shard ${first.group}) and ${JSON.stringify(key)} (shard ${group}) are in different shards; ` +
            'an atomic operation must stay within one shard (give the pool an affinity pattern to keep related keys together)',
        );
      }
    }
    if (!first) throw new CrossShardError('an atomic operation needs at least one key');
    return first.group;
  }

  async txn(req: TxnRequest, opts: CallOptions): Promise<TxnResult> {
    const group = this.shardOfKeys([...req.compares.map((c) => c.key), ...req.writes.map((w) => w.key)]);
    const res = await this.execute(group, { type: 'txn', compares: req.compares, writes: req.writes }, opts, 'client');
    if (res.type === 'rejected') throw res.error;
    if (res.type !== 'txn') throw new Error(`unexpected result ${res.type} for a txn`);
    return res;
  }

  /** Waits until `group`'s replica here may serve a read of the given consistency, and returns it. */
  async readable(consistency: 'linearizable' | 'serializable', opts: CallOptions, group = DATA_GROUP): Promise<ShardReplica> {
    const r = this.groupReplica(group);
    if (consistency === 'serializable') return r;
    if (!r.isLeader) throw this.notLeader(r);
    return this.barrier(r, r.readBarrier(), opts, 'read not confirmed by a quorum before the deadline');
  }

  /** Waits for a barrier `p` of `r` (its round goes out with the next ready pass) until the deadline; a lost leadership names the leader. */
  private async barrier(r: ShardReplica, p: Promise<void>, opts: CallOptions, timeoutMessage: string): Promise<ShardReplica> {
    this.driver.scheduleReady();
    try {
      await this.driver.withDeadline(p, opts.deadlineMs, timeoutMessage);
    } catch (e) {
      if (e instanceof NotLeaderError) throw this.notLeader(r);
      throw e;
    }
    return r;
  }

  /**
   * Waits until `group`'s replica here, leader or follower, has applied every write acknowledged
   * before the call (a ReadIndex round, through the leader on a follower), and returns it.
   * Throws NotLeaderError when no leader answers, DeadlineError at `opts.deadlineMs`.
   */
  async caughtUp(opts: CallOptions, group: number): Promise<ShardReplica> {
    const r = this.groupReplica(group);
    return this.barrier(r, r.followerBarrier(), opts, 'the replica did not catch up with its leader before the deadline');
  }

  async get(req: GetRequest, opts: CallOptions): Promise<GetResponse> {
    const r = await this.readable(req.consistency, opts, this.shardOfKey(req.key).group);
    if (!r.ownsKey(req.key)) throw new WrongShardError(`key ${JSON.stringify(req.key)} is not owned by shard ${r.group}; the cluster map changed`);
    const at =
      req.atVersion !== undefined ? { atRevision: req.atVersion } : req.atTimeMs !== undefined ? { atTimeMs: req.atTimeMs } : undefined;
    // Cold values come from the disk off the event loop; the revision is taken in the same pass as the value.
    const { found, revision } = await r.readWithValues(() => ({ found: r.readValue(req.key, at), revision: r.revision }));
    if (!found) return { found: false, version: 0, timestampMs: 0, revision };
    return { found: true, value: found.value, version: found.version, timestampMs: found.timestampMs, revision };
  }

  /** The one group a prefix-scoped request goes to: `shard` when given, else the prefix's only shard. */
  private groupForPrefix(prefix: string, shard: number | undefined): number {
    const map = this.replicas.map;
    if (shard !== undefined) {
      const known = shard === META_GROUP || map.shards.some((s) => s.group === shard);
      if (!known) throw new ValidationError('INVALID_ARGUMENT', `shard ${shard} does not exist (map epoch ${map.epoch})`);
      return shard;
    }
    const groups = this.shardsForPrefix(prefix);
    if (groups.length !== 1) {
      throw new ValidationError('INVALID_ARGUMENT', `prefix ${JSON.stringify(prefix)} spans ${groups.length} shards; name one shard`);
    }
    return groups[0]!;
  }

  async list(req: ListRequest, opts: CallOptions): Promise<ListResponse> {
    const r = await this.readable(req.consistency, opts, this.groupForPrefix(req.prefix, req.shard));
    const listOptions = {
      ...(req.limit ? { limit: req.limit } : {}),
      ...(req.after !== undefined ? { after: req.after } : {}),
      keysOnly: req.keysOnly,
    };
    const page = await r.listFromEngine(req.prefix, listOptions); // the key index and the values from the engine, off the event loop
    // Reserved keys (descriptor, cursors, dead letters, ...) show only to listings inside the reserved keyspace.
    const hide = hidesReservedKeys(req.prefix);
    return {
      items: (hide ? page.items.filter((i) => !isReservedKey(i.key)) : page.items).map((i) => ({
        key: i.key,
        ...(i.value !== undefined ? { value: i.value } : {}),
        version: i.version,
        timestampMs: i.timestampMs,
      })),
      ...(page.nextAfter !== undefined ? { nextAfter: page.nextAfter } : {}),
      revision: page.revision,
    };
  }

  watch(req: WatchRequest, sink: WatchSink): WatchHandle {
    const r = this.groupReplica(this.groupForPrefix(req.prefix, req.shard));
    if (!hidesReservedKeys(req.prefix)) return r.watch(req, sink);
    // A watch whose prefix covers the reserved keyspace (without lying inside it) does not see reserved keys.
    const filtered: WatchSink = {
      events: (events, revision) => {
        const visible = events.filter((e) => !isReservedKey(e.key));
        if (visible.length > 0) sink.events(visible, revision);
        else sink.progress(revision);
      },
      progress: (revision) => sink.progress(revision),
      canceled: (reason, compactRevision) => sink.canceled(reason, compactRevision),
      ...(sink.writable ? { writable: () => sink.writable!() } : {}),
      ...(sink.onDrain ? { onDrain: (cb: () => void) => sink.onDrain!(cb) } : {}),
    };
    return r.watch(req, filtered);
  }

  /**
   * Whether this node may take traffic: it has the cluster map and is a member of it, and every
   * group it hosts has a leader and has applied its log up to (nearly) the commit index it knows.
   */
  readiness(): { ready: boolean; reason?: string } {
    if (!this.replicas.mapInitialised) return { ready: false, reason: 'waiting for the cluster map' };
    if (!this.replicas.isMember(this.id)) return { ready: false, reason: 'not a member of the cluster map' };
    for (const r of this.replicas.values()) {
      if (!r.leader) return { ready: false, reason: `group ${r.group} has no leader` };
      const lag = r.commitIndex - r.appliedIndex;
      if (lag > NODE_DEFAULTS.readyMaxApplyLag) return { ready: false, reason: `group ${r.group} is ${lag} entries behind its commit index` };
    }
    return { ready: true };
  }

  async status(): Promise<NodeStatusInfo> {
    const map = this.replicas.map;
    return {
      nodeId: this.id,
      version: KVCASCADE_VERSION,
      mapEpoch: map.epoch,
      groups: [...this.replicas.values()].map((r) => {
        const s = r.status();
        const shard = map.shards.find((x) => x.group === r.group);
        return {
          group: r.group,
          leader: s.leader,
          term: s.term,
          role: s.role,
          commitIndex: s.commit,
          appliedIndex: r.appliedIndex,
          firstIndex: s.firstIndex,
          lastIndex: s.lastIndex,
          voters: s.conf.voters,
          learners: s.conf.learners,
          revision: r.revision,
          ...(shard ? { pool: shard.pool, shardIndex: shard.index } : {}),
          descriptorEpoch: r.descriptor?.epoch ?? 0,
          matched: s.matched,
          keys: r.userKeyCount,
        };
      }),
      members: [...this.replicas.memberAddresses()].map(([id, address]) => ({ id, address })),
    };
  }
}
