/**
 * The replicas a node hosts and their lifecycle: recovered from storage at open, started as the
 * cluster map places shards here (or as a leader adds this node to a group), compacted into
 * snapshots, and dropped once their group no longer includes this node. It also keeps what the
 * node knows about the cluster around them — the current map and members, which peers are live,
 * who leads each group — and runs the periodic leader duties (retention compaction, converging
 * groups toward the map). The driver (driver.ts) runs the I/O; this module decides what exists.
 */
import { getHeapStatistics } from 'node:v8';
import type { Message, NodeId, Ready } from '../raft/index.js';
import { initialMap, peerAddressOf, type ClusterMap } from '../sharding/index.js';
import type { Command } from '../statemachine/index.js';
import type { KvEngine } from '../storage/kv-engine.js';
import { EngineIndexSource, EngineValueSource, stateKeys } from '../storage/state-store.js';
import { DEFAULT_INDEX_CACHE_BYTES, IndexCache } from '../storage/index-cache.js';
import { DEFAULT_VALUE_CACHE_BYTES, ValueCache } from '../storage/value-cache.js';
import { NotLeaderError } from './backend.js';
import { ClusterView } from './cluster-view.js';
import { LeadershipTracker } from './leadership.js';
import { MemoryBudget } from './memory-budget.js';
import { electionTimeoutMs, META_GROUP, NODE_DEFAULTS, replicaRandom, type NodeParts } from './node-options.js';
import { bootstrapGroup, deleteOrphanRecords, recoverState, type RecoveredState } from './recovery.js';
import { ShardReplica } from './replica.js';
import { SnapshotGate } from './snapshot-sender.js';
import { ShardReconciler } from './shard-reconciler.js';
import { VersionSweeper, type SweepCounts } from './version-sweeper.js';

/**
 * Most revisions one retention compaction step covers: a compaction drops the versions of these
 * revisions in one apply (and one storage unit), so a backlog (a restart after a pause, a lowered
 * retention, a write burst) is worked off in bounded steps, one committed step after another,
 * instead of one stop-the-world apply.
 */
export const MAX_COMPACT_REVISIONS_PER_STEP = 10_000;

/**
 * Most writes whose versions one retention compaction step drops (a revision is one write, or a
 * txn of up to 128). A step's `apply` costs a few µs per write (1.1 s for the ~100 k writes of a
 * bulk fill's 1,563 txns in one step, measured by bench/retention.ts on a loaded machine), so
 * bounding revisions alone left blocks of a second; 2,000 writes keep a step to a few ms. A
 * backlog continues on the next tick, so this bounds throughput at about 2,000 writes per commit
 * round trip plus a tick, far above what one shard writes.
 */
export const MAX_COMPACT_WRITES_PER_STEP = 2_000;

/** A peer counts as live while heard from within this many election timeouts. */
const LIVENESS_ELECTION_TIMEOUTS = 3;
/** Most versions history the metadata group keeps (ms): its keys are the cluster's bookkeeping, rewritten often (lease checkpoints: docs/leases.md). */
export const META_RETENTION_MS = 5 * 60_000;

/** What the replica set needs from the rest of the node. */
export interface ReplicaSetHooks {
  /** Asks the driver for a ready round (new work: a snapshot produced, a log compacted). */
  scheduleReady(): void;
  /** A group was dropped: the driver forgets what it remembered of it. */
  dropped(group: number): void;
  /** Proposes a system command to a group this node leads (the reconciler's writes); settles when applied. */
  propose(group: number, cmd: Command, deadlineMs: number): Promise<unknown>;
}

/** The replicas hosted on one node, the cluster map they follow, and the peers' liveness. */
export class ReplicaSet {
  private readonly replicas = new Map<number, ShardReplica>();
  private members: Map<NodeId, string>;
  private readonly view: ClusterView;
  /** The map a brand-new cluster starts with (undefined on a joining node: it never writes one). */
  private readonly bootMap: ClusterMap | undefined;
  private readonly reconciler: ShardReconciler;
  private lastReconcileMs = 0;
  private lastRetentionCheckMs = 0;
  /** Groups with a retention compaction step proposed and not settled (one step at a time per group). */
  private readonly compacting = new Set<number>();
  /** A step left versions due for compaction behind: check again on the next tick. */
  private compactionBehind = false;
  private mapDirty = true;
  /** Waiting for the end of the round that re-reads the map (see whenMapCurrent). */
  private readonly mapWaiters: (() => void)[] = [];
  /** Last time each peer was heard from (ms). */
  private readonly heardFrom = new Map<NodeId, number>();
  /** Peers whose last keepalive said they are draining, and when. */
  private readonly drainingSince = new Map<NodeId, number>();
  /** Groups being dropped (their replica removed): no replica is recreated for them meanwhile. */
  private readonly dropping = new Set<number>();
  /** Groups whose configuration no longer includes this node: dropped once this replica does not lead them. */
  private readonly removedFrom = new Set<number>();
  private readonly mapListeners = new Set<(map: ClusterMap) => void>();
  private engine: KvEngine | undefined;
  /** The background sweep of compacted versions (node option `sweepVersions`; undefined without it or before `open`). */
  private sweeper: VersionSweeper | undefined;
  /** The records compaction in flight (see compactRecords), or a settled promise. */
  private recordsCompaction: Promise<void> = Promise.resolve();
  /** The node's cache of value bytes, shared by its groups (values are served from the engine). */
  readonly valueCache: ValueCache;
  /** The node's hot-index cache (keys' latest versions), shared by its groups (the key index is served from the engine). */
  readonly indexCache: IndexCache;
  /** Who leads each group, and this node's gains and losses of leadership. */
  readonly leadership: LeadershipTracker;
  /** The node's memory budget: accounted memory, and the admission check of writes that add data. */
  readonly memoryBudget: MemoryBudget;
  private lastMemoryRefreshMs = Number.NEGATIVE_INFINITY;
  /** One snapshot for lagging followers is sent at a time on this node (one engine view); the chunks held are accounted. */
  private readonly snapshotGate = new SnapshotGate(1);

  /** What the version sweep did on this node (undefined without `sweepVersions`). */
  get versionSweep(): Readonly<SweepCounts> | undefined {
    return this.sweeper?.counts;
  }

  /** Snapshot sending on this node: engine views open for it, followers being read for, bytes held (gauges). */
  get snapshotSending(): { readonly openViews: number; readonly readers: number; readonly heldBytes: number } {
    const g = this.snapshotGate;
    return { openViews: g.openViews, readers: g.openReaders, heldBytes: g.heldBytes };
  }

  constructor(
    private readonly parts: NodeParts,
    private readonly hooks: ReplicaSetHooks,
  ) {
    const { opts } = parts;
    this.members = new Map(opts.members);
    this.valueCache = new ValueCache(opts.valueCacheBytes ?? DEFAULT_VALUE_CACHE_BYTES);
    this.indexCache = new IndexCache(opts.indexCacheBytes ?? DEFAULT_INDEX_CACHE_BYTES);
    this.memoryBudget = new MemoryBudget(opts.memoryBudgetBytes ?? 0, () => {
      const heap = getHeapStatistics();
      return {
        replicas: [...this.replicas.values()].map((r) => r.memory),
        valueCacheBytes: this.valueCache.stats.bytes,
        indexCacheBytes: this.indexCache.stats.bytes,
        snapshotBytes: this.snapshotGate.heldBytes,
        heapUsed: heap.used_heap_size,
        heapLimit: heap.heap_size_limit,
      };
    });
    const memberList = [...opts.members].map(([id, address]) => {
      const peerAddress = opts.peerAddresses?.get(id);
      return { id, address, ...(peerAddress !== undefined ? { peerAddress } : {}) };
    });
    const replicas = Math.min(NODE_DEFAULTS.defaultPoolReplicas, memberList.length);
    this.bootMap = opts.join
      ? undefined
      : initialMap(memberList, { shards: opts.defaultPool?.shards ?? 1, replicas: opts.defaultPool?.replicas ?? replicas });
    this.view = new ClusterView(opts.seedMap ?? this.bootMap!);
    this.leadership = new LeadershipTracker(parts.log, parts.observer);
    this.reconciler = new ShardReconciler({
      id: parts.id,
      propose: (group, cmd) => hooks.propose(group, cmd, parts.scheduler.now() + NODE_DEFAULTS.reconcileProposalMs),
      isLive: (peer) => this.isLive(peer) && !this.isDraining(peer),
      note: (group, what, detail) => parts.log.info({ group, ...detail }, what),
    });
  }

  /**
   * Brings up the groups in storage: on a brand-new cluster's initial member, bootstraps the groups
   * the initial map gives it; deletes records a crash left behind; rebuilds every group's state
   * machine (recovery.ts) and creates its replica; then reads the map.
   */
  async open(engine: KvEngine): Promise<void> {
    const { store, opts, log } = this.parts;
    const boot = this.bootMap;
    if (boot && store.groups().length === 0) {
      // A brand-new cluster: every initial member bootstraps the groups the initial map gives it.
      if (boot.metaVoters.includes(opts.id)) bootstrapGroup(store, META_GROUP, boot.metaVoters);
      for (const s of boot.shards) if (s.initial.includes(opts.id)) bootstrapGroup(store, s.group, s.initial);
    }
    await deleteOrphanRecords(store, engine);
    await store.flush();
    this.engine = engine; // before the replicas: they serve values from it
    if (opts.sweepVersions) {
      this.sweeper = new VersionSweeper(engine, {
        ...(opts.sweepPassIntervalMs !== undefined ? { minPassIntervalMs: opts.sweepPassIntervalMs } : {}),
        onError: (group, err) => log.warn({ group, err: String(err) }, 'a unit of the version sweep failed; the next pass retries'),
      });
    }
    for (const g of store.groups()) {
      this.addReplica(g, await recoverState(store, engine, g, { ...(opts.stateMachine ? { stateMachine: opts.stateMachine } : {}), ...(opts.stateUnitBytes ? { stateUnitBytes: opts.stateUnitBytes } : {}), ...(opts.sweepVersions ? { sweepVersions: true } : {}), ...(this.dropCold ? { dropCold: true } : {}), log }));
    }
    await store.flush();
    this.refreshMap();
  }

  /** How `group`'s replica serves values: from `engine` through the node's cache, released once durable. */
  /** Compacts a range of the engine's records after a mass delete (ShardReplica option `compactRecords`), one compaction at a time per node. */
  private compactRecords(start: Uint8Array, end: Uint8Array, group: number): void {
    const engine = this.engine;
    if (engine?.compactRange === undefined) return;
    const { log } = this.parts;
    this.recordsCompaction = this.recordsCompaction
      .then(() => engine.compactRange!(start, end))
      .catch((err: unknown) => log.warn({ group, err: String(err) }, 'compacting the records of deleted keys failed (listings across them stay slower until LevelDB compacts them)'));
  }

  private valuesOf(engine: KvEngine, group: number): NonNullable<ConstructorParameters<typeof ShardReplica>[0]['values']> {
    const source = new EngineValueSource(engine, group, this.valueCache);
    return {
      source,
      whenDurable: (options) => this.parts.store.whenWritten(options),
      readCached: (read) => source.readCached(read),
      index: () => new EngineIndexSource(engine, group, this.indexCache, source),
      dropCold: this.dropCold,
    };
  }

  /** Whether replicas drop cold keys from the heap (`NodeOptions.indexDropCold`, on by default), and recovery loads them cold. The one place the option is read. */
  private get dropCold(): boolean {
    return this.parts.opts.indexDropCold ?? NODE_DEFAULTS.indexDropCold;
  }

  private addReplica(group: number, initialState?: RecoveredState): void {
    const { opts, log, scheduler, store } = this.parts;
    const r = new ShardReplica({
      nodeId: this.parts.id,
      group,
      storage: store.storageFor(group),
      random: replicaRandom(opts, scheduler, this.parts.id, group),
      electionTicks: opts.electionTicks ?? NODE_DEFAULTS.electionTicks,
      heartbeatTicks: opts.heartbeatTicks ?? NODE_DEFAULTS.heartbeatTicks,
      // Not for the metadata group: every node reads it locally (leases, access control, the
      // cluster map, the extension registry) right after a write committed on its leader, and a
      // follower that learned the commit late answered from stale state (a put with a lease
      // granted a moment before was refused as "not found" in full-suite runs).
      raftTiming: {
        lazyCommit: group !== META_GROUP && opts.lazyCommit !== false,
        quietHeartbeats: opts.quietHeartbeats !== false,
        readiesInFlight: (opts.overlapRounds ?? NODE_DEFAULTS.overlapRounds) ? 2 : 1,
        ...(opts.snapshotChunkBytes !== undefined ? { snapshotChunkBytes: opts.snapshotChunkBytes } : {}),
        ...(opts.snapshotChunksInFlight !== undefined ? { snapshotChunksInFlight: opts.snapshotChunksInFlight } : {}),
      },
      snapshotEveryEntries: opts.snapshotEveryEntries ?? NODE_DEFAULTS.snapshotEveryEntries,
      snapshotEveryBytes: opts.snapshotEveryBytes ?? NODE_DEFAULTS.snapshotEveryBytes,
      admit: (cmd, origin) => this.memoryBudget.check(cmd, origin),
      maxPendingProposals: opts.maxPendingProposals ?? NODE_DEFAULTS.maxPendingProposals,
      ...(opts.stateMachine ? { stateMachine: opts.stateMachine } : {}),
      ...(initialState ? { initialState } : {}),
      ...(opts.stateUnitBytes ? { stateUnitBytes: opts.stateUnitBytes } : {}),
      ...(opts.sweepVersions ? { recorderOptions: { sweepVersions: true } } : {}),
      openView: () => this.engine?.view(),
      compactRecords: (start, end) => this.compactRecords(start, end, group),
      ...(this.engine ? { values: this.valuesOf(this.engine, group) } : {}),
      stepwiseInstall: true,
      ...(this.engine ? { snapshotChunks: store } : {}),
      snapshotSender: { gate: this.snapshotGate, note: (what, detail) => log.info({ group, ...detail }, what) },
      onSnapshotProduced: () => this.hooks.scheduleReady(),
      onSnapshotFailed: (err) => log.warn({ group, err: String(err) }, 'producing a snapshot for a lagging follower failed; retrying'),
      nowMs: () => scheduler.now(),
      scheduler,
      onCommitted: (ms) => this.parts.observer().committed?.(group, ms),
      onBadEntry: (index, err) => log.error({ group, index, err: String(err) }, 'undecodable committed entry applied as no-op'),
      onDuplicate: () => this.parts.observer().duplicateWrite?.(group),
    });
    this.replicas.set(group, r);
  }

  /** The replica of `group` hosted here, if any. */
  get(group: number): ShardReplica | undefined {
    return this.replicas.get(group);
  }

  /** Whether a replica of `group` is hosted here. */
  has(group: number): boolean {
    return this.replicas.has(group);
  }

  /** The replicas hosted here. */
  values(): IterableIterator<ShardReplica> {
    return this.replicas.values();
  }

  /** The groups hosted here (ids, ascending). */
  groups(): number[] {
    return [...this.replicas.keys()].sort((a, b) => a - b);
  }

  /**
   * The replica a message from a peer is for: the hosted one, or — when a leader added this node to
   * a group the map places here — a new empty one (the leader catches it up). Undefined: drop it.
   */
  replicaFor(m: Message): ShardReplica | undefined {
    const r = this.replicas.get(m.group);
    if (r) return r;
    if (!this.mayCreate(m.group, m.from)) return undefined;
    this.parts.store.storageFor(m.group, { voters: [], learners: [] });
    this.addReplica(m.group);
    this.parts.log.info({ group: m.group, from: m.from }, 'replica created for a group this node was added to');
    return this.replicas.get(m.group);
  }

  /** Whether a message for a group not hosted here may create its replica (the map places it here). */
  private mayCreate(group: number, from: NodeId): boolean {
    if (this.dropping.has(group) || !this.members.has(from)) return false;
    if (group === META_GROUP) return true;
    const shard = this.view.current.shards.find((s) => s.group === group);
    return shard !== undefined && shard.replicas.includes(this.parts.id);
  }

  /** Records that `peer` was heard from at `nowMs`. */
  heard(peer: NodeId, nowMs: number): void {
    const before = this.heardFrom.get(peer);
    if (before !== undefined && nowMs - before > electionTimeoutMs(this.parts.opts)) this.parts.log.info({ peer, silentMs: Math.round(nowMs - before) }, 'peer heard again');
    this.heardFrom.set(peer, nowMs);
  }

  /** Records whether `peer` says it is draining (its keepalives carry the flag; see quiescence.ts). */
  noteDraining(peer: NodeId, draining: boolean, nowMs: number): void {
    if (draining) this.drainingSince.set(peer, nowMs);
    else this.drainingSince.delete(peer);
  }

  /** Whether `peer` said it is draining within an election timeout: it must not be given leadership. */
  isDraining(peer: NodeId): boolean {
    const at = this.drainingSince.get(peer);
    return at !== undefined && this.parts.scheduler.now() - at <= electionTimeoutMs(this.parts.opts);
  }

  /** Whether a majority of `r`'s voters' nodes (this one included) was heard from within an election timeout. */
  quorumHeard(r: ShardReplica): boolean {
    const voters = r.confState().voters;
    const windowMs = electionTimeoutMs(this.parts.opts);
    return voters.filter((v) => this.heardWithin(v, windowMs)).length > voters.length / 2;
  }

  /** Whether `peer` was heard from within the last `windowMs` (this node counts as heard). */
  heardWithin(peer: NodeId, windowMs: number): boolean {
    if (peer === this.parts.id) return true;
    const at = this.heardFrom.get(peer);
    return at !== undefined && this.parts.scheduler.now() - at <= windowMs;
  }

  /** Whether `peer` was heard from within a few election timeouts. */
  isLive(peer: NodeId): boolean {
    if (peer === this.parts.id) return true;
    const at = this.heardFrom.get(peer);
    const { opts } = this.parts;
    const windowMs = electionTimeoutMs(opts) * LIVENESS_ELECTION_TIMEOUTS;
    return at !== undefined && this.parts.scheduler.now() - at <= windowMs;
  }

  /** The client address of member `id`. */
  addressOf(id: NodeId): string | undefined {
    return this.members.get(id);
  }

  /** Whether `id` is a member in the current map. */
  isMember(id: NodeId): boolean {
    return this.members.has(id);
  }

  /** The members (id → client address) in the current map. */
  memberAddresses(): ReadonlyMap<NodeId, string> {
    return this.members;
  }

  /** The cluster map this node routes with. */
  get map(): ClusterMap {
    return this.view.current;
  }

  /** Whether this node hosts the metadata group and has applied a written cluster map. */
  get mapInitialised(): boolean {
    return this.replicas.has(META_GROUP) && this.view.isInitialised;
  }

  /** Calls `fn` with each new map (returns an unsubscribe function). */
  onMapChanged(fn: (map: ClusterMap) => void): () => void {
    this.mapListeners.add(fn);
    return () => this.mapListeners.delete(fn);
  }

  /** Re-reads the map after a round in which the metadata group applied entries. */
  refreshMapIfDirty(): void {
    if (this.mapDirty) this.refreshMap();
    const waiters = this.mapWaiters.splice(0);
    for (const w of waiters) w();
  }

  /**
   * Resolves once the map reflects everything the metadata group has applied here: at once, or at
   * the end of the ready round that applied metadata entries (the map is re-read then). A write to
   * the metadata group resolves when applied, a little before that: read the map after this.
   */
  whenMapCurrent(): Promise<void> {
    if (!this.mapDirty) return Promise.resolve();
    return new Promise((resolve) => this.mapWaiters.push(resolve));
  }

  /** Re-reads the map after the metadata group applied entries; acts on a new epoch. */
  private refreshMap(): void {
    this.mapDirty = false;
    const meta = this.replicas.get(META_GROUP);
    if (!meta) return;
    const { log, opts, transport, store } = this.parts;
    const changed = this.view.refresh(meta, (e) => log.error({ err: String(e) }, 'cluster map in the metadata group is malformed; keeping the previous map'));
    if (!changed && this.view.isInitialised) return;
    const map = this.view.current;
    if (changed) {
      this.members = new Map(map.members.map((m) => [m.id, m.address]));
      // A map written before members had peer addresses: the configured ones, else the client address.
      for (const m of map.members) {
        if (m.id !== this.parts.id) transport.setPeer?.(m.id, m.peerAddress ?? opts.peerAddresses?.get(m.id) ?? peerAddressOf(m));
      }
      log.info({ epoch: map.epoch, members: map.members.length, pools: map.pools.length, shards: map.shards.length }, 'cluster map updated');
    }
    // Shards of pools being created start on their initial replicas (the same bootstrap state everywhere).
    for (const s of map.shards) {
      if (this.replicas.has(s.group) || this.dropping.has(s.group)) continue;
      const pool = map.pools.find((p) => p.name === s.pool);
      if (pool?.state === 'creating' && s.initial.includes(this.parts.id) && s.replicas.includes(this.parts.id)) {
        bootstrapGroup(store, s.group, s.initial);
        this.addReplica(s.group);
        log.info({ group: s.group, pool: s.pool, index: s.index }, 'shard replica bootstrapped');
      }
    }
    if (changed) {
      this.parts.observer().mapChanged?.(map);
      for (const fn of this.mapListeners) fn(map);
    }
  }

  /** Bookkeeping after `r` applied a Ready: metadata entries applied mean the map may have changed. */
  applied(r: ShardReplica, rd: Ready): void {
    if (rd.committedEntries.length === 0) return;
    this.parts.observer().applied?.(r.group, rd.committedEntries.length);
    if (r.group === META_GROUP) this.mapDirty = true;
  }

  /**
   * Bookkeeping after `r` advanced past a Ready (`conf`: the membership it applied, if it changed):
   * leader changes, a snapshot when due, and the drop of a group that no longer includes this node.
   */
  advanced(r: ShardReplica, rd: Ready, conf: { voters: readonly number[]; learners: readonly number[] } | undefined): void {
    const id = this.parts.id;
    if (rd.softState) this.leadership.noteLeader(r);
    this.leadership.noteLeadership(r.group, r.isLeader ? r.term : undefined);
    if (r.wantsSnapshot()) this.snapshot(r);
    const now = conf ?? (rd.snapshot ? rd.snapshot.meta.conf : undefined);
    if (now && r.group !== META_GROUP && !now.voters.includes(id) && !now.learners.includes(id)) this.removedFrom.add(r.group);
    // A leader that removed itself keeps leading until it has handed over (raft.ts): drop it after.
    if (this.removedFrom.has(r.group) && !r.isLeader) {
      this.removedFrom.delete(r.group);
      // Added back meanwhile: keep it.
      if (!r.includes(id)) void this.dropReplica(r.group).catch((e: unknown) => this.parts.log.error({ group: r.group, err: String(e) }, 'dropping a replica failed'));
    }
  }

  /**
   * Drops the replica of a group whose membership no longer includes this node: its waiters fail
   * over to the new placement, then its Raft state and its state records are deleted (in that
   * order: its snapshot may hold only metadata, the state being in the records; a crash in between
   * leaves records without a group, which `open` deletes).
   */
  private async dropReplica(group: number): Promise<void> {
    const r = this.replicas.get(group);
    if (!r || this.dropping.has(group) || !this.engine) return;
    const { store, log } = this.parts;
    this.dropping.add(group);
    this.replicas.delete(group);
    r.failAll(new NotLeaderError(0, undefined, group));
    log.info({ group }, 'replica removed from its group: dropping its data');
    try {
      // Wait for the state records staged so far to be on disk, then list them; the Raft state
      // goes first (its snapshot may hold no data: the state is in the records, which must not go
      // before it), then the records (a crash in between leaves records `open` deletes).
      await store.flush();
      const keys = await stateKeys(this.engine, group);
      store.deleteGroup(group);
      store.stageStateOps(group, keys.map((key) => ({ type: 'del' as const, key })));
      this.hooks.dropped(group);
      this.leadership.forget(group);
      await store.flush();
    } finally {
      this.dropping.delete(group);
    }
  }

  /**
   * Compacts `r`'s log up to its applied index without serialising the state machine: the
   * snapshot records only its metadata (a records snapshot, raft-log-store.ts), as the state at
   * that index is in the group's records, staged (`takeStateUnits`) before this unit, so durable
   * whenever it is. A lagging follower gets a snapshot produced then from the records
   * (snapshot-sender.ts).
   */
  private snapshot(r: ShardReplica): void {
    const index = r.appliedIndex;
    const term = r.logTerm(index);
    if (term === undefined || r.recordedIndex < index) return;
    const keep = this.parts.opts.keepEntriesAfterSnapshot ?? NODE_DEFAULTS.keepEntriesAfterSnapshot;
    const keepBytes = this.parts.opts.keepBytesAfterSnapshot ?? NODE_DEFAULTS.keepBytesAfterSnapshot;
    const kept = this.parts.store.compact(r.group, { meta: { index, term, conf: r.confState() }, data: new Uint8Array(0) }, keep, keepBytes);
    r.snapshotTaken(index, kept);
    this.parts.log.info({ group: r.group, index }, 'log compacted (records snapshot)');
    this.hooks.scheduleReady();
  }

  /** The periodic leader duties, on each tick: retention compaction and converging groups toward the map, each when due. */
  periodic(now: number): void {
    const { opts } = this.parts;
    if (now - this.lastMemoryRefreshMs >= NODE_DEFAULTS.memoryRefreshMs) {
      this.lastMemoryRefreshMs = now;
      this.memoryBudget.refresh();
    }
    if (this.compactionBehind || now - this.lastRetentionCheckMs >= (opts.retentionCheckMs ?? NODE_DEFAULTS.retentionCheckMs)) {
      this.lastRetentionCheckMs = now;
      this.compactOldVersions(now);
    }
    // Groups whose compaction point moved get a pass of the version sweep (one pass at a time per node).
    if (this.sweeper !== undefined) void this.sweeper.poke(this.replicas.values(), now);
    if (now - this.lastReconcileMs >= (opts.reconcileEveryMs ?? NODE_DEFAULTS.reconcileEveryMs)) {
      this.lastReconcileMs = now;
      this.reconciler.step(this.replicas.values(), this.view.current, this.view.isInitialised, this.bootMap, now);
    }
  }

  /** On leaders: replicate a compaction of versions older than the retention window. */
  private compactOldVersions(now: number): void {
    const map = this.view.current;
    const { opts, log } = this.parts;
    this.compactionBehind = false;
    for (const r of this.replicas.values()) {
      if (!r.isLeader) continue;
      if (this.compacting.has(r.group)) {
        this.compactionBehind = true;
        continue;
      }
      // A pool's own retention wins over the node's default.
      const pool = map.pools.find((p) => p.name === map.shards.find((s) => s.group === r.group)?.pool);
      let retentionMs = pool?.retentionMs ?? opts.retentionMs ?? NODE_DEFAULTS.retentionMs;
      if (retentionMs <= 0) continue;
      // The metadata group's versions are the cluster's own bookkeeping (lease checkpoints among them): a short window.
      if (r.group === META_GROUP) retentionMs = Math.min(retentionMs, META_RETENTION_MS);
      const due = r.retentionCompactRevision(now, retentionMs);
      if (due <= r.compactRevision) continue;
      const revision = Math.min(
        due,
        r.compactRevision + (opts.compactRevisionsPerStep ?? MAX_COMPACT_REVISIONS_PER_STEP),
        r.compactRevisionWithin(opts.compactWritesPerStep ?? MAX_COMPACT_WRITES_PER_STEP),
      );
      if (revision < due) this.compactionBehind = true;
      this.compacting.add(r.group);
      const group = r.group;
      r.propose({ type: 'compact', revision }, 'system')
        .then(
          () => log.info({ group, revision, due }, 'compacted versions older than the retention window'),
          (e: unknown) => log.debug({ group, err: String(e) }, 'retention compaction not applied'),
        )
        .finally(() => this.compacting.delete(group));
    }
  }

  /** Fails everything waiting on every replica (node shutdown). */
  failAll(err: Error): void {
    for (const r of this.replicas.values()) r.failAll(err);
  }
}
