/**
 * A kvd node: hosts replicas of many Raft groups (the metadata group 0 and the data shards the
 * cluster map places here) over one LevelDB, drives them with one tick timer and one ready loop
 * (stage every group's writes → send early messages and apply → fsync the round's one batch →
 * send the messages that promise durability → advance; see runReady), starts and drops replicas
 * as the map says, routes each request to its key's shard, and serves the KV API to the gRPC layer
 * as a `KvBackend`. Each group's state machine is durable in the same LevelDB (state-store.ts):
 * what a round applies is staged into that round's batch with the applied index, and a restart
 * rebuilds the machine from it and replays only later entries.
 *
 * Size: the driver (ready loop), the replica set and the KvBackend implementation still live
 * here together; splitting them (with the clock injected, so the simulator can run the real
 * driver) is the open part of issue 10.
 */
import {
  bootstrapState,
  decodeConfChange,
  EntryType,
  nextConfState,
  SeededRandom,
  type ConfState,
  type MemoryStorage,
  type NodeId,
  type Message,
} from '../raft/index.js';
import {
  KvStateMachine,
  ValidationError,
  validateCommand,
  validateWriteSession,
  type Command,
  type CommandOrigin,
  type CommandResult,
  type DeleteResult,
  type PutResult,
  type TxnResult,
  type KvStateMachineOptions,
} from '../statemachine/index.js';
import { RaftLogStore, StorageCorruptionError } from '../storage/raft-log-store.js';
import type { KvEngine } from '../storage/kv-engine.js';
import {
  hidesReservedKeys,
  initialMap,
  isReservedKey,
  peerAddressOf,
  shardOf,
  shardsForPrefix,
  type ClusterMap,
  type ShardInfo,
} from '../sharding/index.js';
import { EngineValueSource, loadState, readStateMeta, StateRecorder, stateGroups, stateKeys } from '../storage/state-store.js';
import { DEFAULT_VALUE_CACHE_BYTES, ValueCache } from '../storage/value-cache.js';
import {
  DeadlineError,
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
import type { Logger } from '../log.js';
import { ClusterView } from './cluster-view.js';
import { ShardReplica } from './replica.js';
import { ShardReconciler } from './shard-reconciler.js';
import type { Transport } from './transport.js';

/** The first shard of the default pool (group 1): the only data shard of a cluster started with one default shard. */
export const DATA_GROUP = 1;

/** The metadata group: the cluster's own state (members, pools, shard placement, the extension registry). */
export const META_GROUP = 0;

/** Longest stretch (ms) of computing and staging a snapshot's records replacement before yielding. */
const INSTALL_SLICE_MS = 10;

/** A peer counts as live while heard from within this many ticks' time (times the election timeout). */
const LIVENESS_ELECTION_TIMEOUTS = 3;

/** The defaults of {@link NodeOptions}, by name: every limit of a node in one place. */
export const NODE_DEFAULTS = {
  tickMs: 100,
  electionTicks: 10,
  heartbeatTicks: 1,
  snapshotEveryEntries: 20_000,
  /** Log entries kept after a snapshot, for followers slightly behind (they need no snapshot). */
  keepEntriesAfterSnapshot: 5_000,
  maxPendingProposals: 50_000,
  retentionMs: 3_600_000,
  retentionCheckMs: 10_000,
  reconcileEveryMs: 200,
  /** Deadline of a proposal the shard reconciler makes (descriptor, membership). */
  reconcileProposalMs: 10_000,
  /** How often a node waiting for its first cluster map looks again, besides map-change events. */
  mapWaitPollMs: 200,
  /** Committed entries a group may still have to apply for the node to report itself ready (health). */
  readyMaxApplyLag: 1_000,
} as const;

/** The package version reported by Status. */
export const KVCASCADE_VERSION = '0.1.0';

/** Everything a node needs to know; every limit has a default. */
export interface NodeOptions {
  readonly id: NodeId;
  /**
   * Initial members (including this node): id → client address. A bootstrapping node derives
   * the initial cluster map from them (every initial member computes the same one); a joining
   * node is given the members it learned from the cluster.
   */
  readonly members: ReadonlyMap<NodeId, string>;
  /**
   * Initial members' peer addresses (their Raft listeners), recorded in the initial map. Omitted by
   * in-memory clusters, whose transport needs no address.
   */
  readonly peerAddresses?: ReadonlyMap<NodeId, string>;
  /** Join an existing cluster: create no group; the leaders add this node (as the map says) and catch it up. */
  readonly join?: boolean;
  /** A joining node's view of the map until its metadata replica catches up. */
  readonly seedMap?: ClusterMap;
  /** Shards and replication of the default pool of a brand-new cluster (default 1 shard, min(3, members) replicas). */
  readonly defaultPool?: { readonly shards: number; readonly replicas?: number };
  /** How often leaders converge their groups toward the map (ms, default 200). */
  readonly reconcileEveryMs?: number;
  /** Milliseconds per Raft tick. */
  readonly tickMs?: number;
  readonly electionTicks?: number;
  readonly heartbeatTicks?: number;
  /** Snapshot and compact the log after this many applied entries. */
  readonly snapshotEveryEntries?: number;
  /** Entries kept behind a snapshot for followers that lag a little. */
  readonly keepEntriesAfterSnapshot?: number;
  readonly maxPendingProposals?: number;
  /** Keep old versions this long (ms); older ones are compacted (default 1 hour; 0 = never by time). */
  readonly retentionMs?: number;
  /** How often the leader checks whether old versions are due for compaction (ms). */
  readonly retentionCheckMs?: number;
  readonly stateMachine?: KvStateMachineOptions;
  /** Bound on the bytes of each storage unit when a group's durable state is replaced wholesale (default 4 MiB). */
  readonly stateUnitBytes?: number;
  /** Bound on the bytes coalesced into one engine batch (default: the store's, 64 MiB); whole units are never split. */
  readonly maxBatchBytes?: number;
  /**
   * Bound on the node's cache of value bytes (all groups; default 64 MiB). Values live in the
   * engine; the heap holds each group's key and version index, values not yet durable, the watch
   * history (its own bound) and this cache (README "Memory model").
   */
  readonly valueCacheBytes?: number;
  readonly nowMs?: () => number;
  readonly log: Logger;
  /** Called when durable storage fails: the node cannot continue safely (default: exit the process). */
  readonly onFatal?: (err: unknown) => void;
}

/** Observations for metrics. */
export interface NodeObserver {
  readyBatch?(groups: number, entries: number, fsyncMs: number): void;
  applied?(group: number, entries: number): void;
  leaderChanged?(group: number, leader: number, term: number): void;
  /** A proposal made here was applied, `latencyMs` after it was proposed. */
  committed?(group: number, latencyMs: number): void;
  /** An applied entry repeated a write its client session had already applied: answered from the session, applied nothing. */
  duplicateWrite?(group: number): void;
  /** The cluster map changed (a new epoch was applied). */
  mapChanged?(map: ClusterMap): void;
}

/**
 * A replica of this node became the leader of its group (`leader` true), or stopped leading it
 * (`leader` false: stepped down, or its replica was dropped); `term` is the term it led in.
 */
export interface LeadershipChange {
  readonly group: number;
  readonly term: number;
  readonly leader: boolean;
}

/** One kvd process's replicas and their driving loop. */
export class KvNode implements KvBackend {
  readonly id: NodeId;
  private readonly replicas = new Map<number, ShardReplica>();
  private members: Map<NodeId, string>;
  private readonly view: ClusterView;
  /** The map a brand-new cluster starts with (undefined on a joining node: it never writes one). */
  private readonly bootMap: ClusterMap | undefined;
  private readonly reconciler: ShardReconciler;
  private lastReconcileMs = 0;
  private mapDirty = true;
  /** Last time each peer was heard from (ms). */
  private readonly heardFrom = new Map<NodeId, number>();
  /** Groups being dropped (their replica removed): no replica is recreated for them meanwhile. */
  private readonly dropping = new Set<number>();
  /** Groups whose configuration no longer includes this node: dropped once this replica does not lead them. */
  private readonly removedFrom = new Set<number>();
  private readonly mapListeners = new Set<(map: ClusterMap) => void>();
  private readonly nowMs: () => number;
  private readonly log: Logger;
  private tickTimer: NodeJS.Timeout | undefined;
  private readyScheduled = false;
  private inReady = false;
  private stopped = false;
  private readonly lastLeader = new Map<number, string>();
  /** The groups a replica here leads, with the term it leads in (as the ready loop last saw them). */
  private readonly led = new Map<number, number>();
  private readonly leadershipListeners = new Set<(change: LeadershipChange) => void>();
  private lastRetentionCheckMs = 0;
  /** The last hard state handed to storage per group (to tell whether a Ready needs an fsync). */
  private readonly syncedHardState = new Map<number, { term: number; vote: number }>();
  observer: NodeObserver = {};

  private constructor(
    private readonly opts: NodeOptions,
    private readonly store: RaftLogStore,
    private readonly transport: Transport,
  ) {
    this.id = opts.id;
    this.valueCache = new ValueCache(opts.valueCacheBytes ?? DEFAULT_VALUE_CACHE_BYTES);
    this.members = new Map(opts.members);
    this.nowMs = opts.nowMs ?? Date.now;
    this.log = opts.log;
    const memberList = [...opts.members].map(([id, address]) => {
      const peerAddress = opts.peerAddresses?.get(id);
      return { id, address, ...(peerAddress !== undefined ? { peerAddress } : {}) };
    });
    const replicas = Math.min(3, memberList.length);
    this.bootMap = opts.join
      ? undefined
      : initialMap(memberList, { shards: opts.defaultPool?.shards ?? 1, replicas: opts.defaultPool?.replicas ?? replicas });
    this.view = new ClusterView(opts.seedMap ?? this.bootMap!);
    this.reconciler = new ShardReconciler({
      id: this.id,
      propose: (group, cmd) => this.execute(group, cmd, { deadlineMs: Date.now() + NODE_DEFAULTS.reconcileProposalMs }, 'system'),
      isLive: (peer) => this.isLive(peer),
      note: (group, what, detail) => this.log.info({ group, ...detail }, what),
    });
  }

  /** Opens the node's storage, creating the data group on first start. Call `start()` to run. */
  static async open(opts: NodeOptions, engine: KvEngine, transport: Transport): Promise<KvNode> {
    if (!opts.join && !opts.members.has(opts.id)) throw new Error(`node ${opts.id} is not among the members`);
    const store = await RaftLogStore.open(engine, opts.maxBatchBytes ? { maxBatchBytes: opts.maxBatchBytes } : {});
    const node = new KvNode(opts, store, transport);
    const boot = node.bootMap;
    if (boot && store.groups().length === 0) {
      // A brand-new cluster: every initial member bootstraps the groups the initial map gives it.
      if (boot.metaVoters.includes(opts.id)) node.bootstrapGroup(META_GROUP, boot.metaVoters);
      for (const s of boot.shards) if (s.initial.includes(opts.id)) node.bootstrapGroup(s.group, s.initial);
    }
    // State records of groups whose Raft state is gone (a drop interrupted by a crash) are garbage.
    const hosted = new Set(store.groups());
    for (const g of await stateGroups(engine)) {
      if (hosted.has(g)) continue;
      const keys = await stateKeys(engine, g);
      store.stageStateOps(g, keys.map((key) => ({ type: 'del' as const, key })));
    }
    await store.flush();
    node.engine = engine;
    for (const g of store.groups()) node.addReplica(g, await node.recoverState(engine, g));
    await store.flush();
    node.refreshMap();
    transport.onMessages((msgs) => node.receive(msgs));
    transport.onUnreachable((peer) => {
      for (const r of node.replicas.values()) r.raw.reportUnreachable(peer);
    });
    return node;
  }

  /**
   * Rebuilds `group`'s state machine at open: from its durable records when they are at least as
   * new as the Raft snapshot (Raft then replays only later entries), else from the snapshot (or
   * empty), rewriting the records to match (see state-store.ts). Also brings the stored membership
   * up to the applied index, as Raft will not re-apply the configuration changes before it.
   */
  private async recoverState(engine: KvEngine, group: number): Promise<{ sm: KvStateMachine; recorder: StateRecorder }> {
    const storage = this.store.storageFor(group);
    const snap = storage.snapshot();
    const snapIndex = snap?.meta.index ?? 0;
    const meta = await readStateMeta(engine, group);
    let sm: KvStateMachine;
    let recorder: StateRecorder;
    const fromRecords = meta !== undefined && meta.appliedIndex >= snapIndex;
    if (fromRecords) {
      const loaded = (await loadState(engine, group, { values: false }))!; // values stay in the engine
      sm = KvStateMachine.fromRecords(loaded.data);
      recorder = new StateRecorder(group, loaded.written);
      // Durable records at or past the snapshot: its data (an install cut short before the drop) is not needed.
      this.store.dropSnapshotData(group);
    } else {
      if (snap && snap.data.length === 0) {
        // A records snapshot is staged only after records at (or past) its index: they must be here.
        throw new StorageCorruptionError(
          `group ${group}: the log is compacted to ${snapIndex} with the state in the records, but they ${meta ? `are at ${meta.appliedIndex}` : 'are missing'}`,
        );
      }
      sm = snap ? KvStateMachine.restore(snap.data) : new KvStateMachine(this.opts.stateMachine);
      recorder = new StateRecorder(group);
      const stale = await stateKeys(engine, group);
      if (stale.length > 0 || sm.appliedIndex > 0) {
        const units = recorder.replace(undefined, sm.toRecords(), {
          deleteKeys: stale,
          ...(this.opts.stateUnitBytes ? { maxUnitBytes: this.opts.stateUnitBytes } : {}),
        });
        for (const u of units) this.store.stageStateOps(group, u);
        this.store.dropSnapshotData(group); // staged after the records: the data stays on disk until they are
        this.log.info({ group, snapshotIndex: snapIndex, staleRecords: stale.length }, 'state machine records rewritten from the snapshot');
      }
    }
    const conf = confAt(storage, sm.appliedIndex);
    if (conf) this.store.setConf(group, conf);
    this.log.info({ group, appliedIndex: sm.appliedIndex, snapshotIndex: snapIndex, fromRecords }, 'state machine recovered');
    return { sm, recorder };
  }

  private engine: KvEngine | undefined;
  /** The node's cache of value bytes, shared by its groups (values are served from the engine). */
  readonly valueCache: ValueCache;

  /** Writes a brand-new group's bootstrap state (its initial voters) to storage. */
  private bootstrapGroup(group: number, voters: readonly NodeId[]): void {
    this.store.storageFor(group, { voters: [...voters], learners: [] });
    const b = bootstrapState(voters);
    this.store.persistReady(group, { entries: b.entries, hardState: b.hardState });
  }

  /** How `group`'s replica serves values: from `engine` through the node's cache, released once durable. */
  private valuesOf(engine: KvEngine, group: number): NonNullable<ConstructorParameters<typeof ShardReplica>[0]['values']> {
    const source = new EngineValueSource(engine, group, this.valueCache);
    return { source, whenDurable: () => this.store.whenDurable(), prefetch: (read) => source.prefetch(read) };
  }

  private addReplica(group: number, initialState?: { sm: KvStateMachine; recorder: StateRecorder }): void {
    const storage = this.store.storageFor(group);
    const r = new ShardReplica({
      nodeId: this.id,
      group,
      storage,
      random: new SeededRandom((Date.now() ^ (this.id * 2654435761) ^ (group * 40503)) >>> 0),
      electionTicks: this.opts.electionTicks ?? NODE_DEFAULTS.electionTicks,
      heartbeatTicks: this.opts.heartbeatTicks ?? NODE_DEFAULTS.heartbeatTicks,
      snapshotEveryEntries: this.opts.snapshotEveryEntries ?? NODE_DEFAULTS.snapshotEveryEntries,
      maxPendingProposals: this.opts.maxPendingProposals ?? NODE_DEFAULTS.maxPendingProposals,
      ...(this.opts.stateMachine ? { stateMachine: this.opts.stateMachine } : {}),
      ...(initialState ? { initialState } : {}),
      ...(this.opts.stateUnitBytes ? { stateUnitBytes: this.opts.stateUnitBytes } : {}),
      openView: () => this.engine?.view(),
      ...(this.engine ? { values: this.valuesOf(this.engine, group) } : {}),
      stepwiseInstall: true,
      onSnapshotProduced: () => this.scheduleReady(),
      onSnapshotFailed: (err) => this.log.warn({ group, err: String(err) }, 'producing a snapshot for a lagging follower failed; retrying'),
      nowMs: this.nowMs,
      onCommitted: (ms) => this.observer.committed?.(group, ms),
      onBadEntry: (index, err) => this.log.error({ group, index, err: String(err) }, 'undecodable committed entry applied as no-op'),
      onDuplicate: () => this.observer.duplicateWrite?.(group),
    });
    this.replicas.set(group, r);
  }

  /** Starts ticking. */
  start(): void {
    const tickMs = this.opts.tickMs ?? NODE_DEFAULTS.tickMs;
    this.tickTimer = setInterval(() => this.tick(), tickMs);
    this.tickTimer.unref?.();
    this.scheduleReady();
  }

  /** Stops ticking, fails waiting requests and closes storage and transport. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.tickTimer) clearInterval(this.tickTimer);
    for (const r of this.replicas.values()) r.failAll(new UnavailableError('node is shutting down'));
    await this.transport.close();
    while (this.inReady) await new Promise((r) => setTimeout(r, 5));
    await this.store.close();
  }

  /** The address clients use for `id`. */
  addressOf(id: NodeId): string | undefined {
    return this.members.get(id);
  }

  /** The client address of a group's leader (default: the data shard), when one is known. */
  leaderAddress(group = DATA_GROUP): string | undefined {
    const leader = this.replicas.get(group)?.leader;
    return leader ? this.addressOf(leader) : undefined;
  }

  /** Whether `id` is a known member (peer traffic from others is refused). */
  isMember(id: NodeId): boolean {
    return this.members.has(id);
  }

  /** A replica hosted here (tests and status). */
  replica(group: number): ShardReplica | undefined {
    return this.replicas.get(group);
  }

  private tick(): void {
    if (this.stopped) return;
    for (const r of this.replicas.values()) {
      r.raw.tick();
      r.watches.tick();
    }
    const now = this.nowMs();
    if (now - this.lastRetentionCheckMs >= (this.opts.retentionCheckMs ?? NODE_DEFAULTS.retentionCheckMs)) {
      this.lastRetentionCheckMs = now;
      this.compactOldVersions(now);
    }
    if (now - this.lastReconcileMs >= (this.opts.reconcileEveryMs ?? NODE_DEFAULTS.reconcileEveryMs)) {
      this.lastReconcileMs = now;
      this.reconciler.step(this.replicas.values(), this.view.current, this.view.isInitialised, this.bootMap, now);
    }
    this.scheduleReady();
  }

  /** On leaders: replicate a compaction of versions older than the retention window. */
  private compactOldVersions(now: number): void {
    const map = this.view.current;
    for (const r of this.replicas.values()) {
      if (!r.isLeader) continue;
      // A pool's own retention wins over the node's default.
      const pool = map.pools.find((p) => p.name === map.shards.find((s) => s.group === r.group)?.pool);
      const retentionMs = pool?.retentionMs ?? this.opts.retentionMs ?? NODE_DEFAULTS.retentionMs;
      if (retentionMs <= 0) continue;
      const revision = r.sm.retentionCompactRevision(now, retentionMs);
      if (revision <= r.sm.compactRevision) continue;
      r.propose({ type: 'compact', revision }, 'system').then(
        () => this.log.info({ group: r.group, revision }, 'compacted versions older than the retention window'),
        (e: unknown) => this.log.debug({ group: r.group, err: String(e) }, 'retention compaction not applied'),
      );
    }
  }

  private receive(msgs: readonly Message[]): void {
    if (this.stopped) return;
    const now = this.nowMs();
    for (const m of msgs) {
      this.heardFrom.set(m.from, now);
      let r = this.replicas.get(m.group);
      if (!r) {
        if (!this.mayCreate(m.group, m.from)) continue;
        // A leader added us to a group we have no state for: start empty; it catches us up.
        this.store.storageFor(m.group, { voters: [], learners: [] });
        this.addReplica(m.group);
        r = this.replicas.get(m.group)!;
        this.log.info({ group: m.group, from: m.from }, 'replica created for a group this node was added to');
      }
      try {
        r.raw.step(m);
      } catch (e) {
        this.log.warn({ err: String(e), type: m.type, from: m.from }, 'raft refused a message');
      }
    }
    this.scheduleReady();
  }

  /** Whether a message for a group not hosted here may create its replica (the map places it here). */
  private mayCreate(group: number, from: NodeId): boolean {
    if (this.dropping.has(group) || !this.members.has(from)) return false;
    if (group === META_GROUP) return true;
    const shard = this.view.current.shards.find((s) => s.group === group);
    return shard !== undefined && shard.replicas.includes(this.id);
  }

  /** Whether `peer` was heard from within a few election timeouts. */
  isLive(peer: NodeId): boolean {
    if (peer === this.id) return true;
    const at = this.heardFrom.get(peer);
    const windowMs = (this.opts.tickMs ?? NODE_DEFAULTS.tickMs) * (this.opts.electionTicks ?? NODE_DEFAULTS.electionTicks) * LIVENESS_ELECTION_TIMEOUTS;
    return at !== undefined && this.nowMs() - at <= windowMs;
  }

  /** The cluster map this node routes with. */
  shardMap(): ClusterMap {
    return this.view.current;
  }

  /**
   * Resolves once this node hosts the metadata group and has applied a written cluster map (at
   * once on an initial member; a joining node waits for the leader to add and catch it up).
   */
  async untilMapInitialised(signal?: AbortSignal): Promise<void> {
    while (!(this.replicas.has(META_GROUP) && this.view.isInitialised)) {
      if (this.stopped || signal?.aborted) throw new UnavailableError('node stopped before it received the cluster map');
      await new Promise<void>((resolve) => {
        const off = this.onMapChanged(() => {
          off();
          resolve();
        });
        setTimeout(() => {
          off();
          resolve();
        }, NODE_DEFAULTS.mapWaitPollMs).unref?.();
      });
    }
  }

  /** Calls `fn` with each new map (returns an unsubscribe function). */
  onMapChanged(fn: (map: ClusterMap) => void): () => void {
    this.mapListeners.add(fn);
    return () => this.mapListeners.delete(fn);
  }

  /** Re-reads the map after the metadata group applied entries; acts on a new epoch. */
  private refreshMap(): void {
    this.mapDirty = false;
    const meta = this.replicas.get(META_GROUP);
    if (!meta) return;
    const changed = this.view.refresh(meta.sm, (e) => this.log.error({ err: String(e) }, 'cluster map in the metadata group is malformed; keeping the previous map'));
    if (!changed && this.view.isInitialised) return;
    const map = this.view.current;
    if (changed) {
      this.members = new Map(map.members.map((m) => [m.id, m.address]));
      // A map written before members had peer addresses: the configured ones, else the client address.
      for (const m of map.members) {
        if (m.id !== this.id) this.transport.setPeer?.(m.id, m.peerAddress ?? this.opts.peerAddresses?.get(m.id) ?? peerAddressOf(m));
      }
      this.log.info({ epoch: map.epoch, members: map.members.length, pools: map.pools.length, shards: map.shards.length }, 'cluster map updated');
    }
    // Shards of pools being created start on their initial replicas (the same bootstrap state everywhere).
    for (const s of map.shards) {
      if (this.replicas.has(s.group) || this.dropping.has(s.group)) continue;
      const pool = map.pools.find((p) => p.name === s.pool);
      if (pool?.state === 'creating' && s.initial.includes(this.id) && s.replicas.includes(this.id)) {
        this.bootstrapGroup(s.group, s.initial);
        this.addReplica(s.group);
        this.log.info({ group: s.group, pool: s.pool, index: s.index }, 'shard replica bootstrapped');
      }
    }
    if (changed) {
      this.observer.mapChanged?.(map);
      for (const fn of this.mapListeners) fn(map);
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
    this.dropping.add(group);
    this.replicas.delete(group);
    r.failAll(new NotLeaderError(0, undefined, group));
    this.log.info({ group }, 'replica removed from its group: dropping its data');
    try {
      // Wait for the state records staged so far to be on disk, then list them; the Raft state
      // goes first (its snapshot may hold no data: the state is in the records, which must not go
      // before it), then the records (a crash in between leaves records `open` deletes).
      await this.store.flush();
      const keys = await stateKeys(this.engine, group);
      this.store.deleteGroup(group);
      this.store.stageStateOps(group, keys.map((key) => ({ type: 'del' as const, key })));
      this.syncedHardState.delete(group);
      this.lastLeader.delete(group);
      this.noteLeadership(group, undefined);
      await this.store.flush();
    } finally {
      this.dropping.delete(group);
    }
  }

  private scheduleReady(): void {
    if (this.readyScheduled || this.stopped) return;
    this.readyScheduled = true;
    setImmediate(() => {
      this.readyScheduled = false;
      void this.runReady();
    });
  }

  /**
   * The only place that sequences a Ready: stage the write → send early messages and apply
   * committed entries → fsync → send the messages that promise durability → advance. All
   * groups' writes of one round go into one fsynced batch (group commit); work arriving
   * meanwhile waits for the next round.
   */
  private async runReady(): Promise<void> {
    // A round already running loops until there is no more work, so it picks this up.
    if (this.inReady) return;
    this.inReady = true;
    try {
      for (;;) {
        if (this.stopped) return;
        const round: [ShardReplica, ReturnType<ShardReplica['raw']['ready']>][] = [];
        let entries = 0;
        let mustSync = false;
        for (const r of this.replicas.values()) {
          if (r.installing) continue; // its snapshot's records are being staged (finishInstall)
          r.flushReads();
          if (!r.raw.hasReady()) continue;
          const rd = r.raw.ready();
          if (rd.entries.length > 0 || rd.hardState || rd.snapshot) {
            this.store.persistReady(r.group, {
              entries: rd.entries,
              ...(rd.hardState ? { hardState: rd.hardState } : {}),
              ...(rd.snapshot ? { snapshot: rd.snapshot } : {}),
            });
            // As etcd: a commit-index-only change need not be synced before acting on it (a
            // restart recovers the commit index from a quorum); entries, term and vote must be.
            const hs = rd.hardState;
            const prev = this.syncedHardState.get(r.group);
            if (rd.entries.length > 0 || rd.snapshot || (hs && (!prev || hs.term !== prev.term || hs.vote !== prev.vote))) {
              mustSync = true;
            }
            if (hs) this.syncedHardState.set(r.group, hs);
            entries += rd.entries.length;
          }
          // What need not wait for the disk goes now: the leader's appends and heartbeats (so
          // its fsync overlaps the followers'), and applying entries already durable on a quorum.
          this.transport.send(rd.earlyMessages);
          r.apply(rd);
          // What was applied goes into this round's batch, after the log writes it came from.
          for (const unit of r.takeStateUnits()) this.store.stageStateOps(r.group, unit);
          // An installed snapshot's data is needed on disk only until the records replacing the state are.
          if (rd.snapshot && r.installing) void this.finishInstall(r);
          else if (rd.snapshot) this.store.dropSnapshotData(r.group);
          if (rd.committedEntries.length > 0) {
            this.observer.applied?.(r.group, rd.committedEntries.length);
            if (r.group === META_GROUP) this.mapDirty = true;
          }
          round.push([r, rd]);
        }
        if (round.length === 0) return;
        const t0 = performance.now();
        if (mustSync) await this.store.flush();
        if (mustSync) this.observer.readyBatch?.(round.length, entries, performance.now() - t0);
        for (const [r, rd] of round) {
          this.transport.send(rd.messages); // acknowledgements and votes: only once durable
          const conf = r.raw.advance(rd);
          if (rd.softState) this.noteLeader(r);
          this.noteLeadership(r.group, r.isLeader ? r.raw.raft.term : undefined);
          if (r.wantsSnapshot()) this.snapshot(r);
          const now = conf ?? (rd.snapshot ? rd.snapshot.meta.conf : undefined);
          if (now && r.group !== META_GROUP && !now.voters.includes(this.id) && !now.learners.includes(this.id)) this.removedFrom.add(r.group);
          // A leader that removed itself keeps leading until it has handed over (raft.ts): drop it after.
          if (this.removedFrom.has(r.group) && !r.isLeader) {
            this.removedFrom.delete(r.group);
            // Added back meanwhile: keep it.
            if (!r.includes(this.id)) void this.dropReplica(r.group).catch((e: unknown) => this.log.error({ group: r.group, err: String(e) }, 'dropping a replica failed'));
          }
        }
        if (this.mapDirty) this.refreshMap();
      }
    } catch (e) {
      this.log.fatal({ err: String(e), stack: (e as Error).stack }, 'storage or apply failure: stopping the node');
      (this.opts.onFatal ?? ((err) => {
        console.error(err);
        process.exit(70);
      }))(e);
    } finally {
      this.inReady = false;
    }
  }

  private noteLeader(r: ShardReplica): void {
    const s = r.raw.status();
    const key = `${s.leader}@${s.term}`;
    if (this.lastLeader.get(r.group) === key) return;
    this.lastLeader.set(r.group, key);
    this.log.info({ group: r.group, leader: s.leader, term: s.term, role: s.role }, 'leader changed');
    this.observer.leaderChanged?.(r.group, s.leader, s.term);
  }

  /**
   * Records who leads `group` here after a ready round (`term` undefined: not this node) and tells
   * the leadership listeners of a change: a loss (of the term led before) and then a gain (of the
   * new term), so a new term led here again reads as lost then gained. The listeners run in a
   * microtask, outside the ready loop.
   */
  private noteLeadership(group: number, term: number | undefined): void {
    const was = this.led.get(group);
    if (was === term) return;
    const changes: LeadershipChange[] = [];
    if (was !== undefined) changes.push({ group, term: was, leader: false });
    if (term !== undefined) changes.push({ group, term, leader: true });
    if (term === undefined) this.led.delete(group);
    else this.led.set(group, term);
    if (this.leadershipListeners.size === 0) return;
    queueMicrotask(() => {
      for (const c of changes) {
        for (const fn of this.leadershipListeners) {
          try {
            fn(c);
          } catch (e) {
            this.log.error({ group: c.group, err: String(e) }, 'a leadership listener threw');
          }
        }
      }
    });
  }

  /**
   * Calls `fn` whenever a replica here gains or loses its group's leadership (every group, the
   * metadata group included), pushed from the ready loop where roles change; returns an
   * unsubscribe function. {@link ledGroups} is the state those changes lead to.
   */
  onLeadershipChanged(fn: (change: LeadershipChange) => void): () => void {
    this.leadershipListeners.add(fn);
    return () => this.leadershipListeners.delete(fn);
  }

  /** The groups a replica here leads (group → term), as of the last ready round. */
  ledGroups(): ReadonlyMap<number, number> {
    return new Map(this.led);
  }

  /**
   * Compacts `r`'s log up to its applied index without serialising the state machine: the
   * snapshot records only its metadata (a records snapshot, raft-log-store.ts), as the state at
   * that index is in the group's records, staged (`takeStateUnits`) before this unit, so durable
   * whenever it is. A lagging follower gets a snapshot produced then from the records
   * (snapshot-sender.ts).
   */
  private snapshot(r: ShardReplica): void {
    const index = r.sm.appliedIndex;
    const term = r.raw.raft.log.term(index);
    if (term === undefined || r.recordedIndex < index) return;
    this.store.compact(r.group, { meta: { index, term, conf: r.raw.raft.confState() }, data: new Uint8Array(0) }, this.opts.keepEntriesAfterSnapshot ?? NODE_DEFAULTS.keepEntriesAfterSnapshot);
    r.snapshotTaken(index);
    this.log.info({ group: r.group, index }, 'log compacted (records snapshot)');
    this.scheduleReady();
  }

  /**
   * Stages the records replacement of the snapshot `r` installed, unit by unit over event-loop
   * turns (each turn at most ~INSTALL_SLICE_MS of work), then the drop of the snapshot's data;
   * `r` gets no Ready meanwhile, so nothing else of its group is staged in between. The snapshot
   * (with its data) was staged before: a crash before the last unit leaves no `meta`, and recovery
   * installs from the snapshot again (state-store.ts).
   */
  private async finishInstall(r: ShardReplica): Promise<void> {
    try {
      for (;;) {
        if (this.stopped || this.replicas.get(r.group) !== r) return;
        const t0 = performance.now();
        let done = false;
        while (performance.now() - t0 < INSTALL_SLICE_MS) {
          const unit = r.nextReplacementUnit();
          if (unit === undefined) {
            done = true;
            break;
          }
          this.store.stageStateOps(r.group, unit);
        }
        if (done) break;
        // Start writing what is staged (bounds the memory it holds); a failure surfaces at the next flush.
        this.store.flush().catch(() => {});
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      this.store.dropSnapshotData(r.group);
      this.scheduleReady();
    } catch (e) {
      this.log.fatal({ group: r.group, err: String(e), stack: (e as Error).stack }, 'storage failure while installing a snapshot: stopping the node');
      (this.opts.onFatal ?? ((err) => {
        console.error(err);
        process.exit(70);
      }))(e);
    }
  }

  // ------------------------------------------------------------------ KvBackend

  /** The data shard `key` belongs to in this node's map. */
  shardOfKey(key: string): ShardInfo {
    return shardOf(this.view.current, key);
  }

  /** The groups whose keys may start with `prefix`. */
  shardsForPrefix(prefix: string): number[] {
    return shardsForPrefix(this.view.current, prefix).map((s) => s.group);
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
    const map = this.view.current;
    const replicas = group === META_GROUP ? map.metaVoters : map.shards.find((s) => s.group === group)?.replicas;
    if (!replicas) return new UnavailableError(`shard ${group} is not in this node's cluster map (epoch ${map.epoch})`);
    const target = replicas.find((id) => id !== this.id && this.isLive(id)) ?? replicas.find((id) => id !== this.id);
    return new NotLeaderError(0, target !== undefined ? this.addressOf(target) : undefined, group);
  }

  private notLeader(r: ShardReplica): NotLeaderError {
    const leader = r.leader;
    return new NotLeaderError(leader, leader ? this.addressOf(leader) : undefined, r.group);
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
    this.scheduleReady();
    let res: CommandResult;
    try {
      res = await withDeadline(p, opts.deadlineMs, 'write not confirmed before the deadline; its outcome is unknown');
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
      ...(req.returnCurrentValue ? { returnPrevious: true } : {}),
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
    const p = r.readBarrier();
    this.scheduleReady();
    try {
      await withDeadline(p, opts.deadlineMs, 'read not confirmed by a quorum before the deadline');
    } catch (e) {
      if (e instanceof NotLeaderError) throw this.notLeader(r);
      throw e;
    }
    return r;
  }

  async get(req: GetRequest, opts: CallOptions): Promise<GetResponse> {
    const r = await this.readable(req.consistency, opts, this.shardOfKey(req.key).group);
    if (!r.sm.owns(req.key)) throw new WrongShardError(`key ${JSON.stringify(req.key)} is not owned by shard ${r.group}; the cluster map changed`);
    const at =
      req.atVersion !== undefined ? { atRevision: req.atVersion } : req.atTimeMs !== undefined ? { atTimeMs: req.atTimeMs } : undefined;
    await r.prefetchValues(() => r.sm.get(req.key, at)); // cold values come from the disk off the event loop
    const found = r.sm.get(req.key, at);
    const revision = r.sm.revision;
    if (!found) return { found: false, version: 0, timestampMs: 0, revision };
    return { found: true, value: found.value, version: found.version, timestampMs: found.timestampMs, revision };
  }

  /** The one group a prefix-scoped request goes to: `shard` when given, else the prefix's only shard. */
  private groupForPrefix(prefix: string, shard: number | undefined): number {
    if (shard !== undefined) {
      const known = shard === META_GROUP || this.view.current.shards.some((s) => s.group === shard);
      if (!known) throw new ValidationError('INVALID_ARGUMENT', `shard ${shard} does not exist (map epoch ${this.view.current.epoch})`);
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
    if (!req.keysOnly) await r.prefetchValues(() => r.sm.list(req.prefix, listOptions)); // cold values off the event loop
    const page = r.sm.list(req.prefix, listOptions);
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
    if (!hidesReservedKeys(req.prefix)) return r.watches.add(req, sink);
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
    return r.watches.add(req, filtered);
  }

  /**
   * Whether this node may take traffic: it has the cluster map and is a member of it, and every
   * group it hosts has a leader and has applied its log up to (nearly) the commit index it knows.
   */
  readiness(): { ready: boolean; reason?: string } {
    if (!this.replicas.has(META_GROUP) || !this.view.isInitialised) return { ready: false, reason: 'waiting for the cluster map' };
    if (!this.members.has(this.id)) return { ready: false, reason: 'not a member of the cluster map' };
    for (const r of this.replicas.values()) {
      if (!r.leader) return { ready: false, reason: `group ${r.group} has no leader` };
      const lag = r.commitIndex - r.sm.appliedIndex;
      if (lag > NODE_DEFAULTS.readyMaxApplyLag) return { ready: false, reason: `group ${r.group} is ${lag} entries behind its commit index` };
    }
    return { ready: true };
  }

  async status(): Promise<NodeStatusInfo> {
    const map = this.view.current;
    return {
      nodeId: this.id,
      version: KVCASCADE_VERSION,
      mapEpoch: map.epoch,
      groups: [...this.replicas.values()].map((r) => {
        const s = r.raw.status();
        const shard = map.shards.find((x) => x.group === r.group);
        return {
          group: r.group,
          leader: s.leader,
          term: s.term,
          role: s.role,
          commitIndex: s.commit,
          appliedIndex: r.sm.appliedIndex,
          firstIndex: s.firstIndex,
          lastIndex: s.lastIndex,
          voters: s.conf.voters,
          learners: s.conf.learners,
          revision: r.sm.revision,
          ...(shard ? { pool: shard.pool, shardIndex: shard.index } : {}),
          descriptorEpoch: r.sm.descriptor?.epoch ?? 0,
          matched: s.matched,
          keys: r.sm.userKeyCount,
        };
      }),
      members: [...this.members].map(([id, address]) => ({ id, address })),
    };
  }

  /** The groups hosted here (ids). */
  hostedGroups(): number[] {
    return [...this.replicas.keys()].sort((a, b) => a - b);
  }

  /** Storage counters (for metrics). */
  get storeMetrics(): RaftLogStore['metrics'] {
    return this.store.metrics;
  }
}

/** Resolves or rejects like `p`, or rejects with DeadlineError at `deadlineMs` (epoch ms). */
export function withDeadline<T>(p: Promise<T>, deadlineMs: number, message: string): Promise<T> {
  const left = deadlineMs - Date.now();
  if (left <= 0) {
    p.catch(() => {});
    return Promise.reject(new DeadlineError(message));
  }
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new DeadlineError(message)), left);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/**
 * The membership in effect at `applied` when it differs from the one `storage` holds (which is
 * the membership as of its snapshot, or bootstrap): the configuration changes in the log up to
 * `applied` are applied to it. Undefined when nothing changes.
 */
function confAt(storage: MemoryStorage, applied: number): ConfState | undefined {
  const first = storage.firstIndex();
  const last = Math.min(applied, storage.lastIndex());
  const before = storage.initialState().conf;
  let conf = before;
  if (last < first) return undefined;
  for (const e of storage.entries(first, last + 1)) {
    if (e.type === EntryType.ConfChange) conf = nextConfState(conf, decodeConfChange(e.data));
  }
  const sorted = (a: readonly number[]): string => [...a].sort((x, y) => x - y).join(',');
  const same = (a: readonly number[], b: readonly number[]): boolean => sorted(a) === sorted(b);
  return same(conf.voters, before.voters) && same(conf.learners, before.learners) ? undefined : conf;
}
