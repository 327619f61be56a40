/**
 * What a kvd node is configured with and reports: its options with their defaults
 * (`NodeOptions`, `NODE_DEFAULTS`), the observer hooks metrics attach to, the leadership-change
 * record, the well-known groups, and the wiring the node's parts share (`NodeParts`). It sits
 * below the driver, the replica set and the backend so those import it rather than each other.
 */
import { SeededRandom, type NodeId } from '../raft/index.js';
import type { KvStateMachineOptions } from '../statemachine/index.js';
import type { ClusterMap } from '../sharding/index.js';
import type { RaftLogStore } from '../storage/raft-log-store.js';
import type { Logger } from '../log.js';
import { realScheduler, type Scheduler } from './scheduler.js';
import type { Transport } from './transport.js';

/** The first shard of the default pool (group 1): the only data shard of a cluster started with one default shard. */
export const DATA_GROUP = 1;

/** The metadata group: the cluster's own state (members, pools, shard placement, the extension registry). */
export const META_GROUP = 0;

/** The package version reported by Status. */
export const KVCASCADE_VERSION = '0.1.0';

/** The defaults of {@link NodeOptions}, by name: every limit of a node in one place. */
export const NODE_DEFAULTS = {
  tickMs: 100,
  electionTicks: 10,
  heartbeatTicks: 1,
  snapshotEveryEntries: 20_000,
  /** Log entries kept after a snapshot, for followers slightly behind (they need no snapshot). */
  keepEntriesAfterSnapshot: 5_000,
  /** Bytes of applied entry data after which the log is compacted too (a log of large values stays bounded in bytes). */
  snapshotEveryBytes: 64 * 1024 * 1024,
  /** Most bytes of entry data kept behind a snapshot (besides the entry count). */
  keepBytesAfterSnapshot: 16 * 1024 * 1024,
  /** How often the node samples its memory figures for the budget (ms). */
  memoryRefreshMs: 250,
  /** NodeOptions.commitNoticeDelayMs: an idle node's wait before sending held-back commit indexes (ms). */
  commitNoticeDelayMs: 5,
  /** NodeOptions.overlapRounds: stage the next ready round while one's fsync runs (on: +60 % put throughput at 8 shards, bench/README.md "Overlapped ready rounds"). */
  overlapRounds: true,
  /** NodeOptions.indexDropCold: on — cold keys leave the heap's version lists, the live-key set keeps reserved keys only (issue 17; docs/memory.md "Memory model"). */
  indexDropCold: true,
  /** NodeOptions.syncPaceMs: 0, off (bench/README.md "Shard scaling (session s24 `shards`)"). */
  syncPaceMs: 0,
  /** NodeOptions.gatherTurn: on — 8 shards +19 % puts/s, −15 % CPU per put on a quiet machine (bench/README.md "Shard scaling in the replicated path"). */
  gatherTurn: true,
  /** NodeOptions.gatherTurns: 1 (bench/README.md "Per-round cost at 8 shards (session `rounds`)"). */
  gatherTurns: 1,
  /** NodeOptions.stateWriteDelayMs: an idle node's wait before writing applied state records alone (ms; bench/README.md "A lone put (session lone12)"). */
  stateWriteDelayMs: 5,
  /** NodeOptions.syncBeforeApply: off — a lone put's synced writes came out slower with it, and a busy node wrote more unsynced batches (bench/README.md "A lone put (session lone12)"). */
  syncBeforeApply: false,
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
  /** Replicas of each shard of a brand-new cluster's default pool, at most (fewer when fewer members). */
  defaultPoolReplicas: 3,
  /** How often `stop()` looks again whether the ready round in progress has finished (ms). */
  stopPollMs: 5,
} as const;

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
  /**
   * Quiesce idle groups (default true): a group with nothing in flight stops heartbeating, and one
   * keepalive per peer node per tick stands in for all of them (src/node/quiescence.ts).
   */
  readonly quiesce?: boolean;
  /**
   * Leaders tell followers a new commit index with their next append or heartbeat instead of at
   * once in commit-only appends (default true; src/raft `RaftConfig.lazyCommit`): two messages
   * fewer per follower per replication round of a busy group. When the node has nothing else to
   * do its driver sends the held-back indexes at once, so an idle group's followers are not late.
   * Data groups only: the metadata group, which every node reads locally, always notifies at once.
   */
  readonly lazyCommit?: boolean;
  /**
   * With lazy commit, how long an idle node waits before sending the commit indexes held back
   * (ms; default {@link NODE_DEFAULTS}.commitNoticeDelayMs, 0 = at once when idle). A write that
   * follows within it carries them in its append instead: one client writing one call at a time
   * then costs two appends and two acknowledgements per write instead of twice that. Followers of
   * an isolated write apply it at most this much later (the leader's apply and answer are not delayed).
   */
  readonly commitNoticeDelayMs?: number;
  /**
   * Overlapped ready rounds (default {@link NODE_DEFAULTS}.overlapRounds): while one round's fsync
   * runs, the driver stages the next round (a second Ready of each group, RaftConfig.readiesInFlight
   * 2), sends its early messages (a leader's appends) and applies what is committed; its
   * acknowledgements and votes wait for its own fsync, which starts as soon as the first ends. At
   * most two rounds are in flight, acknowledged in order (src/node/driver.ts). Off: one round at a time.
   */
  readonly overlapRounds?: boolean;
  /**
   * With overlapped rounds, the least time (ms) between the starts of two consecutive fsyncs of
   * this node (default {@link NODE_DEFAULTS}.syncPaceMs, 0 = none): a round ready to write sooner
   * is held, still taking in what arrives, until then. A busy node with many groups then makes
   * fewer, larger fsyncs (each costs CPU besides its wait); an idle node's first write is never held.
   * Held rounds hold votes and acknowledgements too, so it is capped at a tenth of the election timeout.
   */
  readonly syncPaceMs?: number;
  /**
   * With overlapped rounds, hold the write of the round staged behind a finished fsync for one
   * scheduler turn (default {@link NODE_DEFAULTS}.gatherTurn): the messages delivered in that turn
   * (the I/O callbacks that came with the fsync's completion) are staged into it first, so a busy
   * node with many groups makes fewer, larger fsyncs. An idle node's first write is never held.
   */
  readonly gatherTurn?: boolean;
  /**
   * With gatherTurn, the scheduler turns that write is held (default {@link NODE_DEFAULTS}.gatherTurns,
   * at least 1), staging what became ready after each: a busy node with many groups also gathers
   * what its peers' rounds send in the next few turns. Only a round behind a finished fsync that
   * needs one is held, so an idle node's first write is still not held.
   */
  readonly gatherTurns?: number;
  /**
   * How long (ms) the state records a round applied wait for a synced batch to take them before
   * they are written in an (unsynced) batch of their own (default
   * {@link NODE_DEFAULTS}.stateWriteDelayMs; 0 = at once, as every write before session lone12).
   * Nothing but the heap's value release waits for them (they are derived from the log, and a
   * `flush` takes them into its batch): a busy node's next round writes them with its own, and a
   * lone writer's next write within the delay carries them too, so the batch of their own runs
   * neither between a write's apply and its answer nor at all for most writes. RaftLogStore.deferLazy.
   */
  readonly stateWriteDelayMs?: number;
  /**
   * A round that writes at once (no round in flight or held) hands its synced batch to the store's
   * engine before applying the committed entries it carries (default
   * {@link NODE_DEFAULTS}.syncBeforeApply): a follower of a lone writer applies the previous write
   * in the round that appends the next, and the fsync then overlaps that work. The applied records
   * go into the next synced batch (see stateWriteDelayMs). Off (the default): they go in the
   * round's own batch. Measured in session lone12 (bench/README.md "A lone put (session lone12)"):
   * the follower's batch left 0.1 ms sooner but both nodes' synced writes ended ~0.15 ms later, and
   * under load a busy node's records waited past the delay more often (unsynced batches per rmw
   * 0.01 → 0.03).
   */
  readonly syncBeforeApply?: boolean;
  /**
   * A leader's tick sends no heartbeat to a follower it sent an append since the last tick
   * (default true; src/raft `RaftConfig.quietHeartbeats`): busy groups send heartbeats only where
   * appends stopped.
   */
  readonly quietHeartbeats?: boolean;
  /**
   * Rolling upgrade from a version before the put flag `currentOnConflict` (default false): a
   * conditional put asking for the current value is proposed with `returnPrevious` (which also
   * reads and stores the previous value on success) instead, in an entry every older node decodes.
   * Off, such entries travel in envelope V5, which an older node refuses by stopping ("upgrade
   * this node") rather than diverging. Turn it on for the upgraded nodes until every node runs
   * this version, then restart them without it (kvd `--legacy-conditional-puts`; docs/sessions.md).
   */
  readonly legacyConditionalPuts?: boolean;
  /** Bytes of one chunk of a snapshot sent to a lagging follower (default 1 MiB; smaller in tests, for transfers of many chunks). */
  readonly snapshotChunkBytes?: number;
  /** Snapshot chunks in flight to one lagging follower (RaftConfig.snapshotChunksInFlight; default 4; kvd `--snapshot-chunks-in-flight`). */
  readonly snapshotChunksInFlight?: number;
  /** Snapshot and compact the log after this many applied entries. */
  readonly snapshotEveryEntries?: number;
  /** Entries kept behind a snapshot for followers that lag a little. */
  readonly keepEntriesAfterSnapshot?: number;
  /** Snapshot and compact the log also after this many bytes of applied entry data (default 64 MiB). */
  readonly snapshotEveryBytes?: number;
  /** Most bytes of entry data kept behind a snapshot (default 16 MiB). */
  readonly keepBytesAfterSnapshot?: number;
  /**
   * The node's memory budget in bytes (default 0: none): once its accounted memory (every hosted
   * replica's index, watch history and in-memory log, plus the value cache; memory-budget.ts)
   * reaches it, writes that add data are refused with RESOURCE_EXHAUSTED (`MEMORY_BUDGET`). Writes
   * are refused too when the V8 heap is nearly full, budget or not.
   */
  readonly memoryBudgetBytes?: number;
  readonly maxPendingProposals?: number;
  /** Keep old versions this long (ms); older ones are compacted (default 1 hour; 0 = never by time). */
  readonly retentionMs?: number;
  /** How often the leader checks whether old versions are due for compaction (ms). */
  readonly retentionCheckMs?: number;
  /** Most revisions one retention compaction step covers (default 10,000; a backlog takes several steps, one per tick). */
  readonly compactRevisionsPerStep?: number;
  /** Most writes whose versions one retention compaction step drops (default 2,000; at least one revision's, however many writes it holds). */
  readonly compactWritesPerStep?: number;
  readonly stateMachine?: KvStateMachineOptions;
  /** Bound on the bytes of each storage unit when a group's durable state is replaced wholesale (default 4 MiB). */
  readonly stateUnitBytes?: number;
  /**
   * Staged bytes after which a snapshot install (the records replacement) waits for its writes to
   * be durable before staging more (default `INSTALL_FLUSH_BYTES` of driver.ts, 16 MiB): bounds
   * what an install holds staged and the size of a write batch, whatever the disk's pace.
   */
  readonly installFlushBytes?: number;
  /** Bound on the bytes coalesced into one engine batch (default: the store's, 64 MiB); whole units are never split. */
  readonly maxBatchBytes?: number;
  /**
   * The folder of streamed snapshots' chunk files (RaftLogStoreOptions.chunkDir): a follower
   * appends each transfer's chunks to one file there instead of writing them as LevelDB records
   * (kvd: `<data-dir>/snapshot-chunks`). Without it, chunks are records.
   */
  readonly snapshotChunkDir?: string;
  /** With `snapshotChunkDir`: whether new transfers go to files (default true; kvd `--no-snapshot-chunk-files`: records, as before). */
  readonly snapshotChunkFiles?: boolean;
  /**
   * Bound on the node's cache of value bytes (all groups; default 64 MiB). Values live in the
   * engine; the heap holds each group's key and version index, values not yet durable, the watch
   * history (its own bound) and this cache (README "Memory model").
   */
  readonly valueCacheBytes?: number;
  /** Bound on the node's hot-index cache of keys' latest versions (all groups; default 32 MiB): the rest of the key index is read from the engine. */
  readonly indexCacheBytes?: number;
  /**
   * Issue 17, data beyond memory (default {@link NODE_DEFAULTS}.indexDropCold, on): keys whose only
   * retained version is live and durable leave the heap's version lists (read back from LevelDB
   * through the hot-index cache), and the machine's live-key set keeps reserved keys only (user
   * keys behind a Bloom filter; user prefixes listed from the records only, UNAVAILABLE while an
   * install is under way). `false` keeps every key's version list in the heap. See docs/memory.md.
   */
  readonly indexDropCold?: boolean;
  /**
   * Experimental (issue 17): a compaction leaves the versions it drops on disk and a node-local
   * background sweep deletes them in bounded units (node/version-sweeper.ts), instead of deleting
   * them in the compaction's own storage unit. Default off.
   */
  readonly sweepVersions?: boolean;
  /** With `sweepVersions`: least time between two sweep passes over one group (ms, default 60 s; tests shorten it). */
  readonly sweepPassIntervalMs?: number;
  /**
   * The node's clock and timers (default: the wall clock, `realScheduler`). Everything the node
   * times — ticks, ready rounds, install slices, deadlines, liveness, entry timestamps — uses it,
   * so the simulator can run the real node on virtual time.
   */
  readonly scheduler?: Scheduler;
  /**
   * Seed of the replicas' election randomness (each replica mixes in its node and group). Default:
   * the scheduler's clock at replica creation — reproducible under a virtual scheduler.
   */
  readonly seed?: number;
  /**
   * The clock alone (the scheduler's timers stay the wall clock's).
   * @deprecated Give `scheduler` instead; kept so older callers compile.
   */
  readonly nowMs?: () => number;
  readonly log: Logger;
  /** Called when durable storage fails: the node cannot continue safely (default: exit the process). */
  readonly onFatal?: (err: unknown) => void;
}

/** Observations for metrics. */
export interface NodeObserver {
  readyBatch?(groups: number, entries: number, fsyncMs: number, overlapped?: boolean): void;
  applied?(group: number, entries: number): void;
  leaderChanged?(group: number, leader: number, term: number): void;
  /** A proposal made here was applied, `latencyMs` after it was proposed. */
  committed?(group: number, latencyMs: number): void;
  /** An applied entry repeated a write its client session had already applied: answered from the session, applied nothing. */
  duplicateWrite?(group: number): void;
  /** The cluster map changed (a new epoch was applied). */
  mapChanged?(map: ClusterMap): void;
  /** A replica of `group` finished installing a snapshot from its leader (`streamed`: chunk by chunk); its records are durable. */
  snapshotInstalled?(group: number, streamed: boolean): void;
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

/** Exit code of a node stopped by a storage failure (EX_SOFTWARE). */
const FATAL_EXIT_CODE = 70;

/** What the node's parts (driver, replica set, backend) share: its options, clock, storage and transport. */
export interface NodeParts {
  readonly id: NodeId;
  readonly opts: NodeOptions;
  readonly log: Logger;
  readonly scheduler: Scheduler;
  readonly store: RaftLogStore;
  readonly transport: Transport;
  /** The observer metrics set on the node (read at each use: it may be replaced after open). */
  observer(): NodeObserver;
  /** Stops the node after a storage or apply failure (`opts.onFatal`, default: exit the process). */
  fatal(err: unknown): void;
}

/** One election timeout in ms (tick × election ticks): how long a peer's node may be silent before it counts as down, and a leader lease's length. */
export function electionTimeoutMs(opts: Pick<NodeOptions, 'tickMs' | 'electionTicks'>): number {
  return (opts.tickMs ?? NODE_DEFAULTS.tickMs) * (opts.electionTicks ?? NODE_DEFAULTS.electionTicks);
}

/** The scheduler `opts` ask for: `scheduler`, else the wall clock's timers with `nowMs` as the clock when given. */
export function schedulerOf(opts: NodeOptions): Scheduler {
  if (opts.scheduler) return opts.scheduler;
  const nowMs = opts.nowMs;
  return nowMs ? { ...realScheduler, now: nowMs } : realScheduler;
}

/** The default fatal handler: log to stderr and exit. */
export function fatalHandler(opts: NodeOptions): (err: unknown) => void {
  return (
    opts.onFatal ??
    ((err) => {
      console.error(err);
      process.exit(FATAL_EXIT_CODE);
    })
  );
}

/** Multipliers mixing the node id and group into a replica's seed (so replicas do not time out in step). */
const SEED_NODE_MIX = 2654435761;
const SEED_GROUP_MIX = 40503;

/** The election randomness of `group`'s replica on node `id`: from `opts.seed`, else the scheduler's clock. */
export function replicaRandom(opts: NodeOptions, scheduler: Scheduler, id: NodeId, group: number): SeededRandom {
  const base = opts.seed ?? scheduler.now();
  return new SeededRandom((base ^ (id * SEED_NODE_MIX) ^ (group * SEED_GROUP_MIX)) >>> 0);
}
