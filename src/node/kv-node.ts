/**
 * A kvd node, the public face of its three parts: it hosts replicas of many Raft groups (the
 * metadata group 0 and the data shards the cluster map places here) over one LevelDB.
 *
 * - driver.ts (`NodeDriver`): the tick timer and the one ready loop that drives every replica
 *   (stage writes → send early messages and apply → fsync the round's batch → send the rest →
 *   advance), on an injected `Scheduler` so the simulator can run it on virtual time;
 * - replica-set.ts (`ReplicaSet`): which replicas exist — recovered at open (recovery.ts), started
 *   and dropped as the map says, compacted into snapshots — and the map, members and liveness;
 * - node-backend.ts (`NodeBackend`): the `KvBackend` the gRPC layer serves, routing each request
 *   to its key's shard.
 *
 * Each group's state machine is durable in the same LevelDB (state-store.ts): what a round
 * applies is staged into that round's batch with the applied index, and a restart rebuilds the
 * machine from it and replays only later entries.
 */
import type { NodeId } from '../raft/index.js';
import type { Command, CommandOrigin, CommandResult, DeleteResult, PutResult, TxnResult } from '../statemachine/index.js';
import { RaftLogStore } from '../storage/raft-log-store.js';
import type { KvEngine } from '../storage/kv-engine.js';
import type { ClusterMap, ShardInfo } from '../sharding/index.js';
import {
  NodeRemovedError,
  UnavailableError,
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
import { NodeDriver } from './driver.js';
import { NodeBackend } from './node-backend.js';
import { DATA_GROUP, fatalHandler, NODE_DEFAULTS, schedulerOf, type LeadershipChange, type NodeObserver, type NodeOptions, type NodeParts } from './node-options.js';
import type { Scheduler } from './scheduler.js';
import type { ShardReplica } from './replica.js';
import { drainLeaderships, type DrainResult } from './drain.js';
import { ReplicaSet } from './replica-set.js';
import type { NonMemberRefusal, Transport } from './transport.js';

export { DATA_GROUP, META_GROUP, NODE_DEFAULTS, KVCASCADE_VERSION } from './node-options.js';
export type { NodeOptions, NodeObserver, LeadershipChange } from './node-options.js';
export { withDeadline } from './deadline.js';

/** How this node learned it was removed from the cluster (see {@link KvNode.onRemoved}). */
export interface RemovalInfo {
  /** The refusing peer's map epoch: the cluster had dropped this node by then. */
  readonly epoch: number;
  /** The peer that refused this node as a non-member. */
  readonly by: NodeId;
  /** This node's own map epoch when it learned it (older than `epoch`). */
  readonly ownEpoch: number;
  /** When it learned it (this node's clock, ms). */
  readonly atMs: number;
  /** What clients are told: that it was removed, at which epoch, and what to do. */
  readonly message: string;
}

/** One kvd process's replicas, their driving loop and the KV API they serve. */
export class KvNode implements KvBackend {
  readonly id: NodeId;
  private readonly replicas: ReplicaSet;
  private readonly driver: NodeDriver;
  private readonly backend: NodeBackend;
  private observerHooks: NodeObserver = {};
  private readonly parts: NodeParts;
  /** Per group: when a leadership confirmation round (see holdsLease) that succeeded was started. */
  private readonly leaseConfirmedMs = new Map<number, number>();
  /** Groups with a confirmation round in flight. */
  private readonly leaseConfirming = new Set<number>();
  /** Set once a peer with a newer map refused this node as a non-member (see {@link removal}). */
  private removedInfo: RemovalInfo | undefined;
  /** The leaving (driver stopped, requests failed, transport closed) after removal. */
  private leaving: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private readonly removedListeners: ((info: RemovalInfo) => void)[] = [];

  private constructor(
    opts: NodeOptions,
    private readonly store: RaftLogStore,
    private readonly transport: Transport,
  ) {
    this.id = opts.id;
    const fatal = fatalHandler(opts);
    const parts: NodeParts = {
      id: opts.id,
      opts,
      log: opts.log,
      scheduler: schedulerOf(opts),
      store,
      transport,
      observer: () => this.observerHooks,
      fatal: (err) => fatal(err),
    };
    this.parts = parts;
    this.replicas = new ReplicaSet(parts, {
      scheduleReady: () => this.driver.scheduleReady(),
      dropped: (group) => this.driver.forget(group),
      propose: (group, cmd, deadlineMs) => this.backend.execute(group, cmd, { deadlineMs }, 'system'),
    });
    this.driver = new NodeDriver(parts, this.replicas);
    this.backend = new NodeBackend(opts.id, this.replicas, this.driver, { legacyConditionalPuts: opts.legacyConditionalPuts === true });
  }

  /** The node's clock and timers (NodeOptions.scheduler: the wall clock in kvd, virtual under the simulator), for the layers above it. */
  get scheduler(): Scheduler {
    return this.parts.scheduler;
  }

  /** Observations for metrics (set after open; read at each event). */
  get observer(): NodeObserver {
    return this.observerHooks;
  }

  set observer(o: NodeObserver) {
    this.observerHooks = o;
  }

  /** Opens the node's storage, creating the data group on first start. Call `start()` to run. */
  static async open(opts: NodeOptions, engine: KvEngine, transport: Transport): Promise<KvNode> {
    if (!opts.join && !opts.members.has(opts.id)) throw new Error(`node ${opts.id} is not among the members`);
    const t0 = performance.now();
    const store = await RaftLogStore.open(engine, {
      ...(opts.maxBatchBytes ? { maxBatchBytes: opts.maxBatchBytes } : {}),
      ...(opts.snapshotChunkDir !== undefined ? { chunkDir: opts.snapshotChunkDir, chunkFiles: opts.snapshotChunkFiles !== false } : {}),
    });
    const logLoadedMs = Math.round(performance.now() - t0);
    const node = new KvNode(opts, store, transport);
    await node.replicas.open(engine);
    node.parts.log.info({ raftLogLoadMs: logLoadedMs, replicasOpenMs: Math.round(performance.now() - t0) - logLoadedMs }, 'node storage opened');
    transport.onMessages((msgs) => node.driver.receive(msgs));
    transport.onUnreachable((peer) => {
      for (const r of node.replicas.values()) r.reportUnreachable(peer);
    });
    transport.onRefusedAsNonMember?.((refusal) => node.refusedAsNonMember(refusal));
    return node;
  }

  /** Starts ticking. */
  start(): void {
    this.driver.start();
  }

  /**
   * Before a planned stop: hands every leadership held here to another voter and refuses new
   * ones (peers are told, so their reconcilers move none here), until none is left or
   * `deadlineMs` (this node's clock). The node keeps serving as a follower; `stop` ends it.
   */
  async drain(deadlineMs: number): Promise<DrainResult> {
    this.driver.draining = true;
    const tickMs = this.parts.opts.tickMs ?? NODE_DEFAULTS.tickMs;
    return drainLeaderships(
      {
        id: this.id,
        replicas: () => this.replicas.values(),
        mayLead: (peer) => this.replicas.isLive(peer) && !this.replicas.isDraining(peer),
        now: () => this.parts.scheduler.now(),
        sleep: (ms) => this.driver.sleep(ms),
      },
      deadlineMs,
      tickMs,
    );
  }

  /**
   * Whether this node leads `group` and may act as its leader now (start a lambda): a quorum of
   * its voters' nodes (itself included) was heard from within an election timeout, and — when
   * this process was paused or starved since (a tick came late, or is overdue now) — a heartbeat
   * round sent after that confirmed the leadership. Receive times alone cannot tell: a woken
   * leader reads acknowledgements sent before its pause. While unconfirmed it answers false and
   * starts the confirming round (a ReadIndex barrier) once.
   */
  holdsLease(group: number): boolean {
    const r = this.replicas.get(group);
    if (!r?.isLeader) return false;
    const { opts, scheduler } = this.parts;
    const tickMs = opts.tickMs ?? NODE_DEFAULTS.tickMs;
    const now = scheduler.now();
    const last = this.driver.lastTickMs;
    if (last !== undefined && now - last > 2 * tickMs) this.driver.lateTickAtMs = now; // overdue: paused just now
    const late = this.driver.lateTickAtMs;
    if (late > 0 && (this.leaseConfirmedMs.get(group) ?? 0) <= late) {
      if (!this.leaseConfirming.has(group)) {
        const started = now;
        this.leaseConfirming.add(group);
        r.readBarrier().then(
          () => this.leaseConfirmedMs.set(group, started),
          () => {},
        ).finally(() => this.leaseConfirming.delete(group));
        this.driver.scheduleReady(); // the confirming heartbeat goes out with the next round
      }
      return false;
    }
    return this.replicas.quorumHeard(r);
  }

  /** Whether `drain` was called. */
  get draining(): boolean {
    return this.driver.draining;
  }

  /** Stops ticking, fails waiting requests and closes storage and transport (after a removal: closes storage). */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = (async () => {
        if (this.leaving) await this.leaving;
        else await this.halt(new UnavailableError('node is shutting down'));
        await this.store.close();
      })();
    }
    return this.stopping;
  }

  /** Stops ticking, fails waiting requests with `err` and closes the transport. */
  private async halt(err: Error): Promise<void> {
    const idle = this.driver.stop();
    this.replicas.failAll(err);
    await this.transport.close();
    await idle;
  }

  /**
   * Set once this node learned it was removed from the cluster: a peer refused its messages as a
   * non-member, naming a map epoch newer than this node's own. From then on it ticks no group,
   * sends nothing to peers, reports not ready and refuses every KV call with
   * {@link NodeRemovedError} (`NODE_REMOVED`).
   */
  get removal(): RemovalInfo | undefined {
    return this.removedInfo;
  }

  /** Calls `fn` once this node has learned it was removed and has stopped its groups and transport. */
  onRemoved(fn: (info: RemovalInfo) => void): void {
    const info = this.removedInfo;
    if (info && this.leaving) void this.leaving.then(() => fn(info)); // learned before this listener came
    else this.removedListeners.push(fn);
  }

  /**
   * A peer refused this node as a non-member. Only a refuser whose map is newer than everything
   * this node knows as a member counts: one that is behind (it has not applied this node's
   * addition, e.g. after a remove and re-add) or a node that never saw itself in a map (a joining
   * node before its map) proves nothing. The seed map a joining node started from counts as known,
   * so a refuser behind a re-add is ignored even while the node replays older maps.
   */
  private refusedAsNonMember(refusal: NonMemberRefusal): void {
    if (this.removedInfo || this.stopping || this.driver.isStopped) return;
    const map = this.shardMap();
    const known = Math.max(map.epoch, this.parts.opts.seedMap?.epoch ?? 0);
    const log = this.parts.log;
    if (!map.members.some((m) => m.id === this.id)) return;
    if (refusal.mapEpoch <= known) {
      log.info({ by: refusal.by, peerMapEpoch: refusal.mapEpoch, ownMapEpoch: map.epoch }, 'a peer with an older or equal cluster map refused this node: ignored (it is behind)');
      return;
    }
    const message =
      `node ${this.id} was removed from the cluster at map epoch ${refusal.mapEpoch} (node ${refusal.by} no longer lists it; this node's map was at epoch ${map.epoch}): ` +
      'it serves nothing more. Stop it; to re-join, wipe its data directory and add it again (kvctl member add)';
    const info: RemovalInfo = { epoch: refusal.mapEpoch, by: refusal.by, ownEpoch: map.epoch, atMs: this.parts.scheduler.now(), message };
    this.removedInfo = info;
    log.warn({ by: refusal.by, peerMapEpoch: refusal.mapEpoch, ownMapEpoch: map.epoch }, 'removed from the cluster: stopping every group and the peer transport');
    this.leaving = this.halt(new NodeRemovedError(message, false)).then(() => {
      for (const fn of this.removedListeners) fn(info);
    });
  }

  /** Rejects calls once the node was removed ({@link removal}). */
  private refuseIfRemoved(): void {
    if (this.removedInfo) throw new NodeRemovedError(this.removedInfo.message, true);
  }

  /** The rejection an async call gets once the node was removed ({@link removal}); undefined while a member. */
  private removedRefusal(): Promise<never> | undefined {
    return this.removedInfo ? Promise.reject(new NodeRemovedError(this.removedInfo.message, true)) : undefined;
  }

  /** The address clients use for `id`. */
  addressOf(id: NodeId): string | undefined {
    return this.replicas.addressOf(id);
  }

  /** The client address of a group's leader (default: the data shard), when one is known. */
  leaderAddress(group = DATA_GROUP): string | undefined {
    const leader = this.replicas.get(group)?.leader;
    return leader ? this.addressOf(leader) : undefined;
  }

  /** Whether `id` is a known member (peer traffic from others is refused). */
  isMember(id: NodeId): boolean {
    return this.replicas.isMember(id);
  }

  /** A replica hosted here (tests and status). */
  replica(group: number): ShardReplica | undefined {
    return this.replicas.get(group);
  }

  /** Whether `peer` was heard from within a few election timeouts. */
  isLive(peer: NodeId): boolean {
    return this.replicas.isLive(peer);
  }

  /** Resolves once `shardMap()` reflects everything the metadata group applied here (see ReplicaSet.whenMapCurrent). */
  whenMapCurrent(): Promise<void> {
    return this.replicas.whenMapCurrent();
  }

  /** The cluster map this node routes with. */
  shardMap(): ClusterMap {
    return this.replicas.map;
  }

  /**
   * Resolves once this node hosts the metadata group and has applied a written cluster map (at
   * once on an initial member; a joining node waits for the leader to add and catch it up).
   */
  untilMapInitialised(signal?: AbortSignal): Promise<void> {
    return this.driver.untilMapInitialised(signal);
  }

  /** Calls `fn` with each new map (returns an unsubscribe function). */
  onMapChanged(fn: (map: ClusterMap) => void): () => void {
    return this.replicas.onMapChanged(fn);
  }

  /**
   * Calls `fn` whenever a replica here gains or loses its group's leadership (every group, the
   * metadata group included), pushed from the ready loop where roles change; returns an
   * unsubscribe function. {@link ledGroups} is the state those changes lead to.
   */
  onLeadershipChanged(fn: (change: LeadershipChange) => void): () => void {
    return this.replicas.leadership.onChange(fn);
  }

  /** The groups a replica here leads (group → term), as of the last ready round. */
  ledGroups(): ReadonlyMap<number, number> {
    return this.replicas.leadership.ledGroups();
  }

  // ------------------------------------------------------------------ KvBackend (node-backend.ts)

  /** The data shard `key` belongs to in this node's map. */
  shardOfKey(key: string): ShardInfo {
    return this.backend.shardOfKey(key);
  }

  /** The groups whose keys may start with `prefix`. */
  shardsForPrefix(prefix: string): number[] {
    return this.backend.shardsForPrefix(prefix);
  }

  /** Proposes a command to `group` (led here) and waits for its result; see {@link NodeBackend.execute}. */
  execute(group: number, cmd: Command, opts: CallOptions, origin: CommandOrigin): Promise<CommandResult> {
    return this.removedRefusal() ?? this.backend.execute(group, cmd, opts, origin);
  }

  put(req: PutRequest, opts: CallOptions): Promise<PutResult> {
    return this.removedRefusal() ?? this.backend.put(req, opts);
  }

  delete(req: DeleteRequest, opts: CallOptions): Promise<DeleteResult> {
    return this.removedRefusal() ?? this.backend.delete(req, opts);
  }

  trigger(req: TriggerRequest, opts: CallOptions): Promise<TriggerResponse> {
    return this.removedRefusal() ?? this.backend.trigger(req, opts);
  }

  /** The one shard all of `keys` belong to, or CrossShardError naming two that differ. */
  shardOfKeys(keys: readonly string[]): number {
    return this.backend.shardOfKeys(keys);
  }

  txn(req: TxnRequest, opts: CallOptions): Promise<TxnResult> {
    return this.removedRefusal() ?? this.backend.txn(req, opts);
  }

  /** Waits until `group`'s replica here may serve a read of the given consistency, and returns it. */
  readable(consistency: 'linearizable' | 'serializable', opts: CallOptions, group = DATA_GROUP): Promise<ShardReplica> {
    return this.removedRefusal() ?? this.backend.readable(consistency, opts, group);
  }

  /** Waits until `group`'s replica here (leader or follower) has applied every write acknowledged before the call; see NodeBackend.caughtUp. */
  caughtUp(opts: CallOptions, group: number): Promise<ShardReplica> {
    return this.removedRefusal() ?? this.backend.caughtUp(opts, group);
  }

  get(req: GetRequest, opts: CallOptions): Promise<GetResponse> {
    return this.removedRefusal() ?? this.backend.get(req, opts);
  }

  list(req: ListRequest, opts: CallOptions): Promise<ListResponse> {
    return this.removedRefusal() ?? this.backend.list(req, opts);
  }

  watch(req: WatchRequest, sink: WatchSink): WatchHandle {
    this.refuseIfRemoved();
    return this.backend.watch(req, sink);
  }

  /**
   * Whether this node may take traffic: it has the cluster map and is a member of it, and every
   * group it hosts has a leader and has applied its log up to (nearly) the commit index it knows.
   */
  readiness(): { ready: boolean; reason?: string } {
    if (this.removedInfo) return { ready: false, reason: `NODE_REMOVED: ${this.removedInfo.message}` };
    return this.backend.readiness();
  }

  status(): Promise<NodeStatusInfo> {
    return this.backend.status();
  }

  /** The groups hosted here (ids). */
  hostedGroups(): number[] {
    return this.replicas.groups();
  }

  /** Storage counters (for metrics). */
  get storeMetrics(): RaftLogStore['metrics'] {
    return this.store.metrics;
  }

  /**
   * Resolves once everything this node's replicas have staged so far (log entries, hard state,
   * state machine records of the rounds applied until now) is written to the engine
   * (`RaftLogStore.whenWritten`): what a test or a tool reads from the engine then matches the
   * machines as they were at the call.
   */
  whenWritten(): Promise<void> {
    return this.store.whenWritten();
  }

  /** Engine operations written so far, by record kind (for metrics and the bench's storage figures). */
  get storeOpCounts(): RaftLogStore['opCounts'] {
    return this.store.opCounts;
  }

  /** The node's cache of values read from the engine (bound, hits, misses, bytes; for metrics and tests). */
  get valueCache(): ReplicaSet['valueCache'] {
    return this.replicas.valueCache;
  }

  /** The node's hot-index cache (keys' latest versions; the rest of the key index is read from the engine). */
  get indexCache(): ReplicaSet['indexCache'] {
    return this.replicas.indexCache;
  }

  /** The node's memory budget: accounted memory and refused writes (for metrics and tests). */
  get memoryBudget(): ReplicaSet['memoryBudget'] {
    return this.replicas.memoryBudget;
  }

  /** What the background version sweep did on this node (undefined without `sweepVersions`). */
  get versionSweep(): ReplicaSet['versionSweep'] {
    return this.replicas.versionSweep;
  }

  /** Snapshot sending on this node: engine views open for it, followers being read for, bytes held. */
  get snapshotSending(): ReplicaSet['snapshotSending'] {
    return this.replicas.snapshotSending;
  }
}
