/**
 * One shard replica on a node: its RawNode, its versioned KV state machine, the requests waiting
 * on it (waiters.ts) and its watches (watch-hub.ts). The node's driver does the I/O (persist,
 * send); the replica turns committed entries into applied state, records the state machine's
 * durable writes for the driver to stage (replica-records.ts, `takeStateUnits`), and settles the
 * waiting requests. Its Raft node and state machine are private: the rest of the node reads and
 * drives them through the named methods below.
 *
 * Size: about 890 lines, one piece — a third of it is that named surface (one short documented
 * method per thing the node reads or does), the rest the apply path the surface stands over, the
 * release of applied values to the engine once durable, and the phases of a snapshot install
 * (stepwise, or streamed from chunk records: snapshot-inbox.ts), which share the apply path's state (issue 17).
 */
import {
  EntryType,
  MessageType,
  ProposalDroppedError,
  RawNode,
  Role,
  type ConfChange,
  type ConfState,
  type Message,
  type NodeId,
  type RaftConfig,
  type RaftStatus,
  type MemoryStorage,
  type RandomSource,
  type Ready,
  type Snapshot,
} from '../raft/index.js';
import {
  KvStateMachine,
  snapshotAppliedIndex,
  type Command,
  type CommandOrigin,
  type CommandResult,
  type GetOptions,
  type GetResult,
  type KvStateMachineOptions,
  type ListOptions,
  type IndexSource,
  type ListResult,
  type ValueSource,
  type WriteSession,
} from '../statemachine/index.js';
import { mergeColdKeys, SnapshotValueCursor, type ColdVersions, type SnapshotData } from '../statemachine/snapshot-codec.js';
import type { ShardDescriptor } from '../sharding/index.js';
import { invariant } from '../invariant.js';
import type { EngineOp, EngineView } from '../storage/kv-engine.js';
import { listFromRecords, StateRecorder, type RecorderOptions } from '../storage/state-store.js';
import { NotLeaderError, OverloadedError, UnavailableError, type WatchHandle, type WatchRequest, type WatchSink } from './backend.js';
import { SnapshotInbox, streamedSnapshotReader, type SnapshotChunkStore } from './snapshot-inbox.js';
import { decodeProposal, encodeProposal, UnknownEnvelopeVersionError } from './envelope.js';
import { confAtIndex, SnapshotSender, type SnapshotSenderOptions } from './snapshot-sender.js';
import type { ReplicaMemory } from './memory-budget.js';
import { ReplicaRecords } from './replica-records.js';
import { realScheduler, type Scheduler } from './scheduler.js';
import { PendingProposals, PendingReads } from './waiters.js';
import { WatchHub, type WatchHubOptions } from './watch-hub.js';
import { traceWrite } from '../write-trace.js';

/** Tuning of a replica. */
export interface ReplicaOptions {
  readonly nodeId: number;
  readonly group: number;
  readonly storage: MemoryStorage;
  readonly random: RandomSource;
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  /** Raft core options that only change message timing, for many groups over the same node pairs (NodeOptions.lazyCommit, quietHeartbeats). */
  readonly raftTiming?: Pick<RaftConfig, 'lazyCommit' | 'quietHeartbeats' | 'snapshotChunkBytes' | 'snapshotChunksInFlight' | 'readiesInFlight'>;
  /** Take a state machine snapshot (and compact the log) after this many applied entries. */
  readonly snapshotEveryEntries: number;
  /** Also after this many bytes of applied entry data (default: no byte bound), so a log of large values stays bounded in bytes. */
  readonly snapshotEveryBytes?: number;
  /**
   * Admission of a proposal (the node's memory budget, memory-budget.ts): an error to refuse it
   * with before anything is proposed, or undefined to let it through.
   */
  readonly admit?: (cmd: Command, origin: CommandOrigin) => Error | undefined;
  /** Most proposals waiting for commit on this replica. */
  readonly maxPendingProposals: number;
  readonly stateMachine?: KvStateMachineOptions;
  /**
   * The state machine to start from, as the node rebuilt it (from its durable records, or from the
   * storage snapshot), with the recorder that knows what its records on disk (or staged) hold.
   * Default: restored from the storage snapshot, or empty, with a recorder of no records.
   */
  readonly initialState?: { readonly sm: KvStateMachine; readonly recorder: StateRecorder };
  /** Options of the records' recorder made when there is no `initialState` (a new group). */
  readonly recorderOptions?: RecorderOptions;
  /** Bound on the bytes of each unit written when a Raft snapshot replaces the state (default 4 MiB). */
  readonly stateUnitBytes?: number;
  /**
   * A consistent view of the engine holding this replica's records: snapshots sent to lagging
   * followers are produced from it on demand (snapshot-sender.ts). Without it only a stored
   * snapshot that has its data is sent.
   */
  readonly openView?: () => EngineView | undefined;
  /**
   * Compacts the engine's records in the raw key range [start, end] in the background (KvEngine.compactRange);
   * asked once a round's units that deleted at least {@link COMPACT_AFTER_DELETED_LATESTS} live keys' latest records are durable.
   */
  readonly compactRecords?: (start: Uint8Array, end: Uint8Array) => void;
  /** Called when a snapshot to send was produced (run a Ready round: Raft sends it on its next try). */
  readonly onSnapshotProduced?: () => void;
  /** Called when producing a snapshot to send failed (retried later). */
  readonly onSnapshotFailed?: (err: unknown) => void;
  /** Tuning of snapshot production. */
  readonly snapshotSender?: SnapshotSenderOptions;
  /**
   * Install a snapshot's records replacement over several event-loop turns: `apply` only starts
   * it and the host hands the units out (`installing`, `nextReplacementUnit`). Default false:
   * `apply` computes every unit at once (`takeStateUnits` returns them).
   */
  readonly stepwiseInstall?: boolean;
  /**
   * Receive snapshots streamed (with `stepwiseInstall` and `values`): each chunk goes to this
   * store's chunk records as it arrives (snapshot-inbox.ts), and the install reads them back one at
   * a time, writing the records and building the index without holding the snapshot's data.
   * Without it chunks are collected and joined in memory.
   */
  readonly snapshotChunks?: SnapshotChunkStore;
  readonly watch?: WatchHubOptions;
  readonly nowMs: () => number;
  /** The node's timers (snapshot production's retry and idle drop); default: the wall clock's. */
  readonly scheduler?: Scheduler;
  /** Called when a proposal of this replica is applied: its propose → apply latency. */
  readonly onCommitted?: (latencyMs: number) => void;
  /** Called when a committed entry cannot be decoded (never fatal: it is applied as a no-op). */
  readonly onBadEntry?: (index: number, err: unknown) => void;
  /** Called when an entry repeated a write its client session had already applied (answered from the session). */
  readonly onDuplicate?: () => void;
  /**
   * Serve values from the engine (issue 17): the machine keeps only its index in the heap and each
   * value until the records written with it are durable (`whenDurable` resolved after they were
   * staged), then reads it back from `source` (the group's version records behind the node's
   * bounded cache). Without it every value stays in the heap.
   */
  readonly values?: {
    readonly source: ValueSource;
    /**
     * Resolves once what is staged is in the engine, starting the write if none is under way
     * (RaftLogStore.whenWritten); with `lazy` (a value release, which can wait) the host may start
     * a write of state records alone later, or let its next synced batch take them.
     */
    readonly whenDurable: (options?: { readonly lazy?: boolean }) => Promise<void>;
    /** Runs a read with the values it needs, fetching misses without blocking the event loop (EngineValueSource.readCached). */
    readonly readCached?: <T>(read: () => T) => Promise<T>;
    /** A new source of latest versions for a machine (`KvStateMachine.attachIndex`): the key index from the engine behind the node's hot-index cache. */
    readonly index?: () => IndexSource;
    /** Also drop cold keys' version lists from the heap (`attachIndex` option `dropCold`; experimental). */
    readonly dropCold?: boolean;
  };
}

/** Most entries (index overlay entries handed to the index source, then values dropped from the heap) released in one event-loop turn (see `scheduleRelease`): ~2 µs each, so a few ms a turn whatever the round's size. */
const RELEASE_SLICE = 2_000;

/**
 * Live keys' latest records deleted (keys deleted) by one round's units from which the replica asks
 * the engine to compact their range once they are durable: LevelDB's deletion markers would
 * otherwise make every listing across that range step over each of them (~0.3 µs each: 6–7 ms of
 * CPU for a 10-key page after 20,000 deletes, 0.7 ms after the compaction) until its own
 * compactions reach them.
 */
export const COMPACT_AFTER_DELETED_LATESTS = 1000;

/** The CRC-32 a snapshot's data ends with (4 big-endian bytes). */
function readCrc(data: Uint8Array): number {
  const n = data.length;
  return ((data[n - 4]! << 24) | (data[n - 3]! << 16) | (data[n - 2]! << 8) | data[n - 1]!) >>> 0;
}

export { ProposalLostError } from './waiters.js';

/** Unanswered follower ReadIndex rounds kept before they are failed (their messages were lost). */
const MAX_FOLLOWER_READ_ROUNDS = 8;

/** One replica of one shard. */
export class ShardReplica {
  readonly group: number;
  private readonly raw: RawNode;
  private machine: KvStateMachine;
  private readonly hub: WatchHub;
  private readonly proposals = new PendingProposals();
  private readonly reads: PendingReads;
  /** Reads of this replica as a follower, confirmed by a ReadIndex round through the leader (`followerBarrier`). */
  private readonly followerReads: PendingReads;
  /** The leader the follower rounds in flight were sent to (they are failed when it changes). */
  private followerReadsLeader = 0;
  private lastSnapshotIndex: number;
  /** Bytes of entry data applied since the last log compaction (held in the in-memory log). */
  private appliedLogBytes = 0;
  /** Bytes of entry data the last log compaction kept behind its snapshot. */
  private keptLogBytes = 0;
  private lastRole: Role;
  private readonly records: ReplicaRecords;
  /** The state of the snapshot Raft is about to install, decoded when it was checked (reused by `apply`). */
  /**
   * A stepwise install's first phase: the snapshot decoded into a machine a few thousand keys per
   * step (`nextReplacementUnit`), replacing `before` once done; then the records replacement.
   */
  private restoring: { readonly steps: Generator<void, KvStateMachine, undefined>; readonly before: KvStateMachine } | undefined;
  /** The storage the Raft core reads: the replica's, with snapshots to send produced from the records. */
  readonly snapshots: SnapshotSender;
  /** Snapshot chunks this replica sent as leader (transfers: chunks at offset 0), for metrics. */
  readonly snapshotSent = { transfers: 0, chunks: 0, bytes: 0 };
  /**
   * Compaction commands this replica applied (retention steps and client compactions), for metrics:
   * how many, the revisions they covered, and the synchronous time their `apply` took (ms, in all
   * and the largest: the event-loop block of one step, recorder deletions included).
   */
  readonly compactions = { steps: 0, revisions: 0, applyMs: 0, maxApplyMs: 0 };
  /** The sink of streamed snapshots (with `snapshotChunks`). */
  readonly inbox: SnapshotInbox | undefined;
  /**
   * A streamed install's machine is in place but its records (where its values are read from) are
   * not yet all durable: reads are refused until the host calls `installDurable`.
   */
  private streamedPending = false;
  /** A streamed install is under way (from `apply` to `installDurable`). */
  private streamedInstall = false;
  /** A streamed install decoded with cold keys dropped: the decoded data and the cold keys, for its records (`installMachine`). */
  private coldInstall: { readonly data: SnapshotData; readonly cold: ColdVersions } | undefined;
  /** The machine and revision the last value release was scheduled for (see `scheduleRelease`). */
  private releaseFor: { sm: KvStateMachine; revision: number } | undefined;
  /** How `listFromEngine` served its pages: from the records (with the overlay) or from the machine's heap index. */
  readonly listCounts = { fromRecords: 0, fromMachine: 0, unavailable: 0, waitedForDurable: 0 };
  /** A machine and a revision of it whose records are known durable (so in every engine view opened since): the lower bound of `listFromEngine`'s overlay. */
  private durableFor: { sm: KvStateMachine; revision: number } | undefined;
  /** The range of live keys' latest records a mass delete staged, to compact once durable (see COMPACT_AFTER_DELETED_LATESTS). */
  private deletedLatests: { count: number; start: Uint8Array; end: Uint8Array } | undefined;

  constructor(private readonly opts: ReplicaOptions) {
    this.group = opts.group;
    this.reads = new PendingReads(opts.group);
    // Unique per node and incarnation: the leader drops a read whose id it already has pending.
    this.followerReads = new PendingReads(opts.group, `f${opts.nodeId}.${opts.nowMs().toString(36)}.`);
    const snap = opts.storage.snapshot();
    invariant(opts.initialState || !snap || snap.data.length > 0, () => `group ${opts.group}: a records snapshot (metadata only) needs the machine rebuilt from the records (initialState)`);
    this.machine = opts.initialState?.sm ?? (snap ? KvStateMachine.restore(snap.data) : new KvStateMachine(opts.stateMachine));
    this.lastSnapshotIndex = snap?.meta.index ?? 0;
    this.records = new ReplicaRecords(opts.initialState?.recorder ?? new StateRecorder(opts.group, undefined, {}, opts.recorderOptions), opts.stateUnitBytes);
    this.records.attach(this.machine);
    if (opts.values) {
      this.machine.attachValues(opts.values.source);
      if (opts.values.index) this.machine.attachIndex(opts.values.index(), { dropCold: opts.values.dropCold === true });
      // The host stages what the machine was rebuilt from before this replica's first Ready.
      this.scheduleRelease();
    }
    this.snapshots = new SnapshotSender(
      opts.storage,
      {
        group: opts.group,
        openView: () => opts.openView?.(),
        termAt: (index) => this.raw.raft.log.term(index),
        confAt: (index) =>
          confAtIndex(index, this.raw.raft.log.applied, this.raw.raft.confState(), (lo, hi) => {
            try {
              return this.raw.raft.log.slice(lo, hi);
            } catch {
              return undefined;
            }
          }),
        produced: () => opts.onSnapshotProduced?.(),
        failed: (err) => opts.onSnapshotFailed?.(err),
        legacyLatests: () => this.records.legacyLatests > 0,
        // A chunk read for a follower: the core sends it in the next round.
        chunk: (c) => {
          if (this.raw.snapshotChunk(c)) opts.onSnapshotProduced?.();
        },
      },
      {
        ...opts.snapshotSender,
        ...(opts.raftTiming?.snapshotChunkBytes !== undefined ? { chunkBytes: opts.raftTiming.snapshotChunkBytes } : {}),
        ...(opts.raftTiming?.snapshotChunksInFlight !== undefined ? { chunksInFlight: opts.raftTiming.snapshotChunksInFlight } : {}),
        ...(opts.scheduler ? { scheduler: opts.scheduler } : {}),
      },
    );
    const chunks = opts.snapshotChunks;
    this.inbox = chunks && opts.stepwiseInstall && opts.values ? new SnapshotInbox(opts.group, chunks, () => this.installing || this.streamedInstall, () => (opts.scheduler ?? realScheduler).now()) : undefined;
    this.raw = new RawNode({
      ...(this.inbox ? { snapshotSink: this.inbox } : {}),
      id: opts.nodeId,
      group: opts.group,
      storage: this.snapshots,
      random: opts.random,
      electionTicks: opts.electionTicks,
      heartbeatTicks: opts.heartbeatTicks,
      ...opts.raftTiming,
      applied: this.machine.appliedIndex,
      acceptSnapshot: (snap) => this.checkSnapshot(snap),
    });
    this.lastRole = this.raw.raft.role;
    this.hub = new WatchHub(() => this.machine, opts.nowMs, opts.watch);
  }

  /**
   * Test-only: the replica's internals (its Raft node, state machine and watches), for tests in
   * test/ that inspect or drive them directly. Code in src/ must use the methods above.
   */
  internalsForTests(): { readonly raw: RawNode; readonly sm: KvStateMachine; readonly watches: WatchHub } {
    return { raw: this.raw, sm: this.machine, watches: this.hub };
  }

  /** Whether node `id` is a voter or learner of this group in the configuration applied here. */
  includes(id: number): boolean {
    const c = this.raw.raft.confState();
    return c.voters.includes(id) || c.learners.includes(id);
  }

  /** Whether this replica currently leads its group. */
  get isLeader(): boolean {
    return this.raw.raft.role === Role.Leader;
  }

  /** The commit index this replica knows. */
  get commitIndex(): number {
    return this.raw.raft.log.committed;
  }

  /** The leader this replica knows of (0 = none). */
  get leader(): number {
    return this.raw.raft.lead;
  }

  /** The Raft term this replica is in. */
  get term(): number {
    return this.raw.raft.term;
  }

  /** Whether a leadership transfer started by this (leader) replica is still in progress. */
  get transferringLeadership(): boolean {
    return this.raw.raft.leadTransferee !== 0;
  }

  /** Messages the Raft core dropped (malformed, refused snapshots; for metrics). */
  get droppedMessages(): number {
    return this.raw.raft.droppedMessages;
  }

  /** A summary of the Raft state (role, term, indexes, configuration, followers' progress). */
  status(): RaftStatus {
    return this.raw.status();
  }

  /** The membership in the configuration applied here. */
  confState(): ConfState {
    return this.raw.raft.confState();
  }

  /** The term of the log entry at `index`, if the log still holds it (or its snapshot is at it). */
  logTerm(index: number): number | undefined {
    return this.raw.raft.log.term(index);
  }

  // ---- driving the Raft core (the node's driver calls these)

  /** Whether the group is quiesced here (src/raft `quiesce`): its ticks cost nothing until it wakes. */
  get quiesced(): boolean {
    return this.raw.raft.quiesced;
  }

  /** Leader: quiesces the group when it has had nothing in flight for `minIdleTicks` ticks; returns whether it did. */
  quiesceIfIdle(minIdleTicks: number): boolean {
    return this.raw.raft.canQuiesce(minIdleTicks) && this.raw.raft.quiesce();
  }

  /** Ends quiescence; `leaderSilent`: the leader's node went silent, so campaigning may start soon. */
  wake(leaderSilent = false): void {
    this.raw.raft.wake(leaderSilent);
  }

  /** Voters and learners of the group (as of the applied configuration). */
  members(): NodeId[] {
    const c = this.raw.raft.confState();
    return [...c.voters, ...c.learners];
  }

  /** Advances the Raft clock and the watches' progress timers by one tick. */
  tick(): void {
    this.raw.tick();
    this.hub.tick();
    if (this.snapshots.open) this.snapshots.retain(this.raw.snapshotTransfers());
  }

  /** Hands a peer's message to the Raft core (throws if it refuses it). */
  step(m: Message): void {
    this.raw.step(m);
  }

  /** Tells the Raft core that `peer` could not be reached (it backs off sending to it). */
  reportUnreachable(peer: NodeId): void {
    this.raw.reportUnreachable(peer);
  }

  /** Whether the Raft core has work for a ready round (writes, messages, committed entries). */
  hasReady(): boolean {
    return this.raw.hasReady();
  }

  /** Leader: tells followers the commit index held back by lazy commit (call when the node is idle); returns whether anything was sent. */
  flushCommitNotices(): boolean {
    return this.raw.flushCommit();
  }

  /** Whether `flushCommitNotices` would send anything (lazy commit notices held back); sends nothing. */
  get commitNoticesOwed(): boolean {
    return this.raw.commitNoticesOwed();
  }

  /** Takes the Raft core's pending work (call `apply` then `advance` with it). */
  ready(): Ready {
    const rd = this.raw.ready();
    if (traceWrite && rd.entries.length > 0) traceWrite('round', this.group, rd.entries[rd.entries.length - 1]!.index);
    // Chunks of a streamed snapshot the core wants for followers: read from the records, handed back as they are ready.
    for (const req of rd.snapshotReads ?? []) this.snapshots.read(req);
    for (const m of rd.earlyMessages) {
      if (m.type !== MessageType.Snap) continue;
      if ((m.offset ?? 0) === 0) this.snapshotSent.transfers++;
      this.snapshotSent.chunks++;
      this.snapshotSent.bytes += m.chunk?.length ?? 0;
    }
    return rd;
  }

  /** Heartbeats and their responses at a durable term, sendable while a Ready waits for its fsync (RawNode.takeLivenessMessages). */
  takeLivenessMessages(): readonly Message[] {
    return this.raw.takeLivenessMessages();
  }

  /** Whether linearizable reads (leader or follower barriers) wait for their ReadIndex round to start. */
  get readsWaiting(): boolean {
    return this.reads.waiting || this.followerReads.waiting;
  }

  /**
   * While a ready round waits for its fsync (not while installing a snapshot): starts the ReadIndex
   * round of the reads that arrived meanwhile and releases the reads a quorum has confirmed and
   * that are applied here, as `apply` does with a Ready's read states; a read depends on no write
   * of the round. So a linearizable read waits for one heartbeat round, not for up to two fsyncs
   * (the round in progress, then the one its heartbeat responses would be handed out with).
   * Returns the messages sendable now (RawNode.takeLivenessMessages: the round's heartbeats among them).
   */
  readsDuringRound(): readonly Message[] {
    this.flushReads();
    const states = this.raw.takeReadStates();
    if (states.length > 0) {
      for (const rs of states) {
        this.reads.confirmed(rs.requestId, rs.index);
        this.followerReads.confirmed(rs.requestId, rs.index);
      }
      this.reads.settle(this.machine.appliedIndex);
      this.followerReads.settle(this.machine.appliedIndex);
    }
    return this.raw.takeLivenessMessages();
  }

  /** Tells the Raft core a Ready was persisted, sent and applied; returns the membership it applied, if changed. */
  advance(rd: Ready): ConfState | undefined {
    if (traceWrite && rd.entries.length > 0) traceWrite('durable', this.group, rd.entries[rd.entries.length - 1]!.index);
    const conf = this.raw.advance(rd);
    // Transfers that ended (installed, the follower removed, leadership lost) release what they held.
    if (this.snapshots.open) this.snapshots.retain(this.raw.snapshotTransfers());
    return conf;
  }

  /** Leader only: starts handing leadership to `to`. */
  transferLeader(to: NodeId): void {
    this.raw.transferLeader(to);
  }

  /** Leader only: proposes a membership change (applied when committed). */
  proposeConfChange(cc: ConfChange): void {
    this.raw.proposeConfChange(cc);
  }

  // ---- reading the applied state

  /** The index of the last entry applied here. */
  get appliedIndex(): number {
    return this.machine.appliedIndex;
  }

  /** The shard's revision: that of its last applied write. */
  get revision(): number {
    return this.machine.revision;
  }

  /** The oldest revision still readable (versions before it were compacted). */
  get compactRevision(): number {
    return this.machine.compactRevision;
  }

  /** The highest revision a compaction can move to dropping the versions of at most `maxWrites` writes (at least one revision's; `KvStateMachine.compactRevisionWithin`). */
  compactRevisionWithin(maxWrites: number): number {
    return this.machine.compactRevisionWithin(maxWrites);
  }

  /** The revision up to which versions older than `retentionMs` at `nowMs` may be compacted. */
  retentionCompactRevision(nowMs: number, retentionMs: number): number {
    return this.machine.retentionCompactRevision(nowMs, retentionMs);
  }

  /** The shard's descriptor (which keys it owns), once written. */
  get descriptor(): ShardDescriptor | undefined {
    return this.machine.descriptor;
  }

  /** Number of user (non-reserved) keys held. */
  get userKeyCount(): number {
    return this.machine.userKeyCount;
  }

  /** Whether this shard owns `key` by its descriptor. */
  ownsKey(key: string): boolean {
    return this.machine.owns(key);
  }

  /** The value of `key` as applied here (latest, or at a revision or time), if any. */
  readValue(key: string, at?: GetOptions): GetResult | undefined {
    this.checkReadable();
    return this.machine.get(key, at);
  }

  /**
   * A page of keys under `prefix` as applied here, from the heap: for reserved prefixes (cursors,
   * attempts, dead letters, lease attachments), or any prefix while the machine's live-key set
   * holds user keys too. UNAVAILABLE otherwise (`--index-drop-cold`: user keys are listed from the
   * records, `listFromEngine`).
   */
  list(prefix: string, options?: ListOptions): ListResult {
    this.checkReadable();
    if (!this.machine.listsFromHeap(prefix)) {
      throw new UnavailableError(`group ${this.group}: keys under ${JSON.stringify(prefix)} are listed from the records (listFromEngine), not the heap`);
    }
    return this.machine.list(prefix, options);
  }

  private checkReadable(): void {
    if (this.streamedPending) throw new UnavailableError(`group ${this.group}: this replica is installing a snapshot; ask another`);
  }

  /**
   * A page of keys under `prefix` as applied here, served from the group's records in the engine
   * (issue 17): the latest records in key order through an engine view, with the writes not known
   * durable yet laid over them from the machine (`KvStateMachine.listPlan`, `listFromRecords`),
   * so the page is the one `list` would answer when called; the records' latests of deleted keys
   * are apart (`t/`), so a page reads about its size in records whatever was deleted in range.
   * When the records cannot answer (values stay in the heap, no view can be opened, a snapshot
   * install is under way, nothing of the current machine known durable yet, or its durable point
   * behind the compaction point) the page comes from the machine's heap index — unless the heap
   * holds reserved keys only (`--index-drop-cold`, `KvStateMachine.listsFromHeap`): then it waits
   * for the next durable point once and tries the records again, and answers UNAVAILABLE
   * (retry-safe) while an install is under way or the records still cannot answer; never a page
   * from a heap that no longer holds the user keys. Values come with the records, off the event loop.
   */
  async listFromEngine(prefix: string, options: ListOptions = {}): Promise<ListResult> {
    for (let attempt = 0; ; attempt++) {
      const durable = this.durableFor;
      const sm = this.machine;
      const fromRecords = !this.installing && durable?.sm === sm;
      const view = fromRecords ? this.opts.openView?.() : undefined;
      if (view !== undefined) {
        try {
          const plan = sm.listPlan(prefix, options, durable!.revision);
          const page = plan && (await listFromRecords(view, this.group, plan));
          if (page) {
            this.listCounts.fromRecords++;
            return page;
          }
        } finally {
          await view.close();
        }
      }
      if (this.machine.listsFromHeap(prefix)) {
        this.listCounts.fromMachine++;
        return options.keysOnly ? this.list(prefix, options) : this.readWithValues(() => this.list(prefix, options));
      }
      const values = this.opts.values;
      if (this.installing || attempt > 0 || values === undefined) {
        this.listCounts.unavailable++;
        throw new UnavailableError(`group ${this.group}: this replica's records cannot serve the listing yet (${this.installing ? 'installing a snapshot' : 'waiting for its durable point'}); retry`);
      }
      // The next durable point (a restart's or an install's first, or the round in flight's), then
      // its release's own callback (registered earlier) has set `durableFor`: try the records again.
      this.listCounts.waitedForDurable++;
      await values.whenDurable();
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /**
   * A read at the node's edge: runs `read` with the values it needs, reading any the cache
   * misses from the engine asynchronously first, so the event loop never blocks on the disk (one
   * pass when everything is hot). `read` runs at once when values stay in the heap.
   */
  readWithValues<T>(read: () => T): Promise<T> {
    const readCached = this.opts.values?.readCached;
    return readCached ? readCached(read) : Promise.resolve().then(read);
  }

  /** Starts a watch of this shard's events (history from `req.fromRevision`, then live). */
  watch(req: WatchRequest, sink: WatchSink): WatchHandle {
    return this.hub.add(req, sink);
  }

  /** Number of active watches on this replica. */
  get watchCount(): number {
    return this.hub.size;
  }

  /** Number of proposals waiting for commit. */
  get pendingProposals(): number {
    return this.proposals.size;
  }

  /**
   * Proposes a command with its origin (recorded in the log: a `client` command touching a
   * reserved key is rejected when applied), lambda hop count and, for a deduplicated write, its
   * client session (recorded in the entry: the state machine applies each (session, seq) at most
   * once and answers a repeat with the first result); resolves with its result once applied
   * here. Only the leader proposes.
   */
  propose(cmd: Command, origin: CommandOrigin, hops = 0, session?: WriteSession): Promise<CommandResult> {
    if (!this.isLeader) return Promise.reject(new NotLeaderError(this.leader, undefined));
    const refused = this.opts.admit?.(cmd, origin);
    if (refused) return Promise.reject(refused);
    if (this.proposals.size >= this.opts.maxPendingProposals) {
      return Promise.reject(new OverloadedError(`too many writes in flight on group ${this.group} (${this.proposals.size})`));
    }
    try {
      this.raw.propose(encodeProposal(this.opts.nowMs(), cmd, origin, hops, session));
    } catch (e) {
      if (e instanceof ProposalDroppedError) {
        // Classified by kind, not by message: no leader known or a transfer in progress → ask the leader.
        return Promise.reject(e.kind === 'transfer' || e.kind === 'no-leader' ? new NotLeaderError(this.leader, undefined) : new OverloadedError(e.message));
      }
      throw e;
    }
    const index = this.raw.raft.log.lastIndex();
    traceWrite?.('propose', this.group, index);
    return this.proposals.wait(index, this.raw.raft.term);
  }

  /** Waits until this replica may serve a linearizable read (ReadIndex confirmed and applied). */
  readBarrier(): Promise<void> {
    if (!this.isLeader) return Promise.reject(new NotLeaderError(this.leader, undefined));
    return this.reads.wait();
  }

  /**
   * Waits until this replica has applied everything its leader had committed when asked: on the
   * leader a linearizable read barrier; on a follower a ReadIndex round through the leader, then
   * its own apply up to that index. After it, this replica's state includes every write
   * acknowledged before the call. Rejects with NotLeaderError when no leader is known or the
   * leader changes meanwhile; the caller bounds the wait (a lost round is never answered).
   */
  followerBarrier(): Promise<void> {
    if (this.isLeader) return this.readBarrier();
    if (this.leader === 0) return Promise.reject(new NotLeaderError(this.leader, undefined));
    return this.followerReads.wait();
  }

  /** Starts one ReadIndex round for every read that arrived since the last round (read coalescing). */
  flushReads(): void {
    const lead = this.leader;
    // Nothing waits and the follower rounds need no failing: nothing to do (the driver calls this
    // for every replica in every pass, busy or not, so this path allocates nothing).
    if (!this.reads.waiting && !this.followerReads.waiting && lead === this.followerReadsLeader && this.followerReads.startedRounds <= MAX_FOLLOWER_READ_ROUNDS) return;
    const id = this.reads.startRound(this.isLeader ? undefined : () => new NotLeaderError(this.leader, undefined));
    if (id !== undefined) this.raw.readIndex(id);
    // Follower rounds: sent to the leader by the core. Rounds sent to a former leader, or more
    // than a few unanswered (lost messages), are failed so nothing waits on them forever.
    if (lead !== this.followerReadsLeader || this.followerReads.startedRounds > MAX_FOLLOWER_READ_ROUNDS) {
      this.followerReads.failStarted(() => new NotLeaderError(lead, undefined));
      this.followerReadsLeader = lead;
    }
    const fid = this.followerReads.startRound(this.isLeader || lead === 0 ? () => new NotLeaderError(lead, undefined) : undefined);
    if (fid !== undefined) this.raw.readIndex(fid);
  }

  /**
   * Applies a Ready that is already durable: restores a snapshot, applies committed entries,
   * settles proposals and reads, and feeds watches. Returns whether a snapshot should be taken.
   */
  apply(rd: Ready): void {
    if (rd.snapshot) {
      const before = this.machine;
      this.lastSnapshotIndex = rd.snapshot.meta.index;
      this.appliedLogBytes = 0;
      this.keptLogBytes = 0;
      // Stepwise: the snapshot is decoded into a machine, then the records become its state, both
      // over later event-loop turns (`nextReplacementUnit`: a large shard's install never blocks
      // the node for long); nothing more is applied here until the last unit is handed out.
      if (rd.snapshot.streamed) {
        // Streamed: decoded from the chunk records (values stay there), then the records written
        // from a second pass over them; see `nextReplacementUnit` and NodeDriver.finishInstall.
        invariant(this.inbox !== undefined && rd.committedEntries.length === 0, () => `group ${this.group}: a streamed snapshot needs a stepwise install`);
        this.inbox.reset();
        this.streamedInstall = true;
        this.restoring = { steps: this.streamedRestoreSteps(), before };
      } else if (this.opts.stepwiseInstall === true && rd.committedEntries.length === 0) {
        // The snapshot's data is Raft's own assembled copy, never changed: the machine's values view it.
        this.restoring = { steps: KvStateMachine.restoreSteps(rd.snapshot.data, true), before };
      } else this.installMachine(before, KvStateMachine.restore(rd.snapshot.data), false);
    }
    for (const e of rd.committedEntries) {
      if (e.index <= this.machine.appliedIndex) continue;
      this.appliedLogBytes += e.data.length;
      let cmd: Command = { type: 'noop' };
      let ts = this.machine.lastTimestampMs;
      let hops = 0;
      let origin: CommandOrigin = 'system';
      let session: WriteSession | undefined;
      if (e.type === EntryType.Normal && e.data.length > 0) {
        try {
          const p = decodeProposal(e.data);
          cmd = p.command;
          ts = p.timestampMs;
          hops = p.hops;
          origin = p.origin;
          session = p.session;
        } catch (err) {
          // A newer format cannot be skipped without diverging from the peers: stop the node.
          if (err instanceof UnknownEnvelopeVersionError) throw err;
          this.opts.onBadEntry?.(e.index, err);
        }
      }
      const compactFrom = cmd.type === 'compact' ? this.machine.compactRevision : -1;
      const t0 = compactFrom >= 0 ? performance.now() : 0;
      const out = this.machine.apply(e.index, ts, cmd, origin, session, hops);
      if (compactFrom >= 0) this.countCompaction(compactFrom, performance.now() - t0);
      if (out.duplicate) this.opts.onDuplicate?.();
      const latencyMs = this.proposals.applied(e.index, e.term, out.result);
      traceWrite?.('applied', this.group, e.index);
      if (latencyMs !== undefined) this.opts.onCommitted?.(latencyMs);
      if (out.events.length > 0) this.hub.publish(out.events);
    }
    for (const rs of rd.readStates) {
      this.reads.confirmed(rs.requestId, rs.index);
      this.followerReads.confirmed(rs.requestId, rs.index);
    }
    this.reads.settle(this.machine.appliedIndex);
    this.followerReads.settle(this.machine.appliedIndex);
    const role = this.raw.raft.role;
    if (role !== this.lastRole) {
      if (this.lastRole === Role.Leader) {
        this.lostLeadership();
        this.snapshots.release();
      }
      this.lastRole = role;
    }
  }

  /**
   * Whether a snapshot received from the leader may be installed: its data must restore, at its
   * index. A snapshot that does not would make `apply` throw once Raft installed it, stopping the
   * node (and again on restart); refused, it is dropped before Raft installs anything.
   */
  private checkSnapshot(snap: Snapshot): boolean {
    if (snap.streamed) return this.inbox?.check(snap.meta, snap.crc) ?? false;
    // Checksum, format and index only (no decoding: a large shard's snapshot is decoded in steps
    // when applied). Data that passes the checksum and still fails to decode is a bug or a format
    // mismatch between versions: applying it stops the node, as any undecodable state would.
    try {
      if (snap.crc !== undefined && (snap.data.length < 4 || readCrc(snap.data) !== snap.crc)) return false;
      return snapshotAppliedIndex(snap.data) === snap.meta.index;
    } catch {
      return false; // counted by Raft (RaftStatus.droppedMessages)
    }
  }

  /**
   * Decodes the installed streamed snapshot from its chunk records into a machine, in steps. With
   * the index from the engine and cold keys dropped (`values.index`, `values.dropCold`), the
   * machine is built as a restart builds it: cold keys never get a version list (their records are
   * written from `coldInstall` and a second pass over the chunks).
   */
  private *streamedRestoreSteps(): Generator<void, KvStateMachine, undefined> {
    yield; // the host makes the chunks readable (flushes) before asking for the first step
    const reader = streamedSnapshotReader(this.opts.snapshotChunks!, this.group);
    invariant(reader !== undefined, () => `group ${this.group}: a streamed snapshot without its chunk records`);
    this.coldInstall = undefined;
    if (this.opts.values?.index === undefined || this.opts.values.dropCold !== true) return yield* KvStateMachine.restoreSteps(reader);
    const r = yield* KvStateMachine.restoreColdSteps(reader);
    this.coldInstall = { data: r.data, cold: r.cold };
    return r.machine;
  }

  /** Whether a streamed install is under way: the host flushes before its first step and calls `installDurable` once its last unit is durable. */
  get installingStreamed(): boolean {
    return this.streamedInstall;
  }

  /** The host made a streamed install's last unit durable: reads are served again. */
  installDurable(): void {
    this.streamedInstall = false;
    this.streamedPending = false;
    this.scheduleRelease();
  }

  /** Makes `sm` (restored from an installed snapshot) the machine, in place of `before`, and starts replacing the records with its state. */
  private installMachine(before: KvStateMachine, sm: KvStateMachine, stepwise: boolean): void {
    this.machine = sm;
    // The records become the snapshot's state (stepwise: unit by unit, `nextReplacementUnit`);
    // streamed, the values held on disk are read from a second pass over the chunks as written.
    // The difference is taken against the records the engine holds (not a heap copy of `before`) when the records are in an engine.
    const openView = this.opts.values ? this.opts.openView : undefined;
    if (this.streamedInstall) {
      const reader = streamedSnapshotReader(this.opts.snapshotChunks!, this.group)!;
      const cursor = new SnapshotValueCursor(reader);
      this.streamedPending = true;
      const cold = this.coldInstall;
      this.coldInstall = undefined;
      const afterRecords = cold ? { data: cold.data, keys: mergeColdKeys(cold.data.keys, cold.cold) } : undefined;
      this.records.replace(before, sm, stepwise, (key, revision) => cursor.valueAt(key, revision), openView, afterRecords);
    } else this.records.replace(before, sm, stepwise, undefined, openView);
    // Its values stay in the heap until the replacement is durable (released after its last unit).
    if (this.opts.values) {
      sm.attachValues(this.opts.values.source);
      // A fresh source: the previous machine's cached heads say nothing about this one's records.
      if (this.opts.values.index) sm.attachIndex(this.opts.values.index(), { dropCold: this.opts.values.dropCold === true });
    }
    this.hub.restored();
  }

  /**
   * Whether the records replacement of a snapshot installed with `stepwiseInstall` is still being
   * handed out: the host must not give this replica another Ready (nor take its state units)
   * until `nextReplacementUnit` returned undefined — and, for a streamed install, until
   * `installDurable` (applying entries may read values the machine holds on disk, which the
   * records being written do not serve yet).
   */
  get installing(): boolean {
    return this.restoring !== undefined || this.records.installing || this.streamedPending;
  }

  /**
   * The next unit of the records replacement of the snapshot being installed (stage it, in order,
   * before anything else of this group), or undefined when the replacement is complete (then the
   * installed snapshot's data may be dropped: `RaftLogStore.dropSnapshotData`).
   */
  nextReplacementUnit(): EngineOp[] | undefined {
    const restoring = this.restoring;
    if (restoring) {
      // Decoding the snapshot: one bounded step, nothing to stage yet.
      const step = restoring.steps.next();
      if (step.done) {
        this.restoring = undefined;
        this.installMachine(restoring.before, step.value, true);
      }
      return [];
    }
    const unit = this.records.nextReplacementUnit();
    if (unit === undefined) this.scheduleRelease(); // every unit was handed out (and staged) before this call
    return unit;
  }

  /**
   * Whether the records replacement waits for the next batch of the records it replaces, read
   * from the engine (issue 17: no heap copy of the old state): the host makes everything staged
   * durable, then awaits `readReplacement`, before asking for the next unit.
   */
  get replacementReadPending(): boolean {
    return this.records.readPending;
  }

  /** Whether the pending read opens the engine view (the first): the host makes what is staged durable first. */
  get replacementReadOpensView(): boolean {
    return this.records.readOpensView;
  }

  /** Reads the next batch of the records being replaced (see `replacementReadPending`). */
  readReplacement(): Promise<void> {
    return this.records.readBefore();
  }

  /**
   * The durable writes of the state machine since the last call, as atomic units to stage in
   * order (`RaftLogStore.stageStateOps`): after applying a Ready, one unit with its changes and
   * applied index; after a snapshot install, the replacement's units first. Empty when nothing
   * changed.
   */
  takeStateUnits(): EngineOp[][] {
    const out = this.records.take(this.machine);
    const deleted = this.records.takeDeletedLatests();
    // Only a mass delete (one round's units deleting many keys): scattered deletes leave markers LevelDB's own compactions keep up with.
    if (deleted !== undefined && deleted.count >= COMPACT_AFTER_DELETED_LATESTS && this.opts.compactRecords !== undefined) {
      const d = this.deletedLatests;
      this.deletedLatests =
        d === undefined
          ? { ...deleted }
          : { count: d.count + deleted.count, start: Buffer.compare(deleted.start, d.start) < 0 ? deleted.start : d.start, end: Buffer.compare(deleted.end, d.end) > 0 ? deleted.end : d.end };
    }
    // The host stages the units synchronously after this returns: wait for them from a microtask.
    // Nothing taken, nothing new to release (every earlier unit scheduled its own release).
    if (this.opts.values && !this.installing && out.length > 0) queueMicrotask(() => this.scheduleRelease());
    return out;
  }

  /**
   * Once everything staged so far is durable, drops from the heap the values of the versions the
   * machine holds up to its current revision (their records are in it), in slices over event-loop
   * turns. Skipped while a replacement is handed out, and a release scheduled for a machine that a
   * snapshot install replaced since does nothing (its revisions say nothing about the new one's).
   */
  private scheduleRelease(): void {
    const values = this.opts.values;
    if (!values || this.installing) return;
    const sm = this.machine;
    const revision = sm.revision;
    if (this.releaseFor?.sm === sm && this.releaseFor.revision >= revision && sm.residentValues === 0) return;
    this.releaseFor = { sm, revision };
    const step = (): void => {
      if (this.machine !== sm || this.installing) return;
      if (sm.releaseValues(revision, RELEASE_SLICE)) setImmediate(step);
    };
    const deleted = this.deletedLatests;
    this.deletedLatests = undefined;
    const durable = (): void => {
      if (this.machine === sm && !this.installing && (this.durableFor?.sm !== sm || this.durableFor.revision < revision)) this.durableFor = { sm, revision };
      if (deleted !== undefined) this.opts.compactRecords!(deleted.start, deleted.end); // the deletes are written: compact their markers away
      step();
    };
    values.whenDurable({ lazy: true }).then(durable, () => {}); // a storage failure stops the node elsewhere
  }

  private lostLeadership(): void {
    // Reads in flight can no longer be confirmed by us; the client retries at the new leader.
    this.reads.failStarted(() => new NotLeaderError(this.leader, undefined));
    // Proposals stay: the new leader may still commit them, and we settle them when applied.
  }

  /**
   * The lambda hop count of the write that produced `revision` (0 for client writes), as its
   * events in the watch history carry it (the state machine records it with each version and
   * event, so snapshots and durable records keep it); 0 once the history no longer holds it.
   */
  hopsOf(revision: number): number {
    return this.machine.hopsAt(revision) ?? 0;
  }

  /** Whether enough has been applied since the last snapshot to take another. */
  wantsSnapshot(): boolean {
    return (
      this.machine.appliedIndex - this.lastSnapshotIndex >= this.opts.snapshotEveryEntries ||
      (this.opts.snapshotEveryBytes !== undefined && this.appliedLogBytes >= this.opts.snapshotEveryBytes && this.machine.appliedIndex > this.lastSnapshotIndex)
    );
  }

  /** Records that a snapshot at `index` was taken, the log keeping `keptBytes` of entry data behind it. */
  snapshotTaken(index: number, keptBytes = 0): void {
    this.lastSnapshotIndex = index;
    this.appliedLogBytes = 0;
    this.keptLogBytes = keptBytes;
  }

  private countCompaction(from: number, ms: number): void {
    const c = this.compactions;
    c.steps++;
    c.revisions += Math.max(0, this.machine.compactRevision - from);
    c.applyMs += ms;
    c.maxApplyMs = Math.max(c.maxApplyMs, ms);
  }

  /** What this replica holds in the heap, for the node's memory budget (memory-budget.ts). O(1). */
  get memory(): ReplicaMemory {
    const ix = this.machine.indexSize;
    return {
      keys: ix.keys,
      writes: ix.writes,
      keylessWrites: ix.keylessWrites,
      historyBytes: ix.historyBytes,
      logBytes: this.appliedLogBytes + this.keptLogBytes,
      keyFilterBytes: ix.keyFilterBytes,
      reservedLiveKeys: ix.reservedLiveKeys,
    };
  }

  /**
   * The applied index of the last unit of records handed out by `takeStateUnits`: a log
   * compaction at or below it may record only the snapshot's metadata (the records staged before
   * it hold the state).
   */
  get recordedIndex(): number {
    return this.records.recordedIndex;
  }

  /** Fails everything waiting (node shutdown, or the replica removed). */
  failAll(err: Error): void {
    this.snapshots.release();
    this.records.abandon();
    this.proposals.failAll(err);
    this.reads.failAll(err);
    this.followerReads.failAll(err);
    this.hub.closeAll('node shutting down');
  }
}
