/**
 * One simulated replica host: a RawNode, a durable disk modelled by MemoryStorage (only what
 * was synced reaches it), the KV state machine, and a persist → send → apply → advance loop (a simpler order than KvNode.runReady's, which sends early messages and applies before its fsync)
 * split in two so a simulated fsync can take time (and a crash can land in between). With
 * `readiesInFlight: 2` a second Ready is taken while the first one's write is syncing (overlapped
 * rounds, as kvd's driver with NodeOptions.overlapRounds): writes reach the disk in the order the
 * Readies were taken, and a crash keeps a prefix of them.
 */
import {
  MemoryStorage,
  RawNode,
  SeededRandom,
  bootstrapState,
  type Entry,
  type Message,
  type NodeId,
  type RaftConfig,
  type ReadState,
  type Ready,
} from '../../src/raft/index.js';
import { KvFsm, type PutCommand } from './kv-fsm.js';

/** Options shared by every simulated replica. */
export interface HostOptions {
  readonly group?: number;
  readonly electionTicks?: number;
  readonly heartbeatTicks?: number;
  readonly preVote?: boolean;
  readonly checkQuorum?: boolean;
  /** RaftConfig.lazyCommit: commit indexes reach followers with the next append or heartbeat. */
  readonly lazyCommit?: boolean;
  /** RaftConfig.quietHeartbeats: no heartbeat to a follower an append reached since the last one. */
  readonly quietHeartbeats?: boolean;
  readonly maxInflightAppends?: number;
  readonly maxAppendBytes?: number;
  readonly snapshotChunkBytes?: number;
  /** Take a snapshot after this many applied entries (0 = never). */
  readonly snapshotEvery?: number;
  /** Entries kept behind a snapshot when compacting. */
  readonly compactionLag?: number;
  /**
   * Apply committed entries that are not puts as no-ops, and install snapshots whose data does
   * not decode (or disagrees with their index) as an empty state at their index, as a host that
   * must not stop would. Only for runs with forged (Byzantine) traffic; normally both are bugs.
   */
  readonly tolerateBadData?: boolean;
  /**
   * While a Ready's write is being synced, send the heartbeats and heartbeat responses the core
   * produces meanwhile (RawNode.takeLivenessMessages), as kvd's driver does; off: they wait for
   * the next Ready.
   */
  readonly livenessWhileSyncing?: boolean;
  /** RaftConfig.readiesInFlight: 2 takes a second Ready while the first one's write is syncing. */
  readonly readiesInFlight?: number;
}

/** What the host did with the part of a Ready that does not wait for the disk (for invariant checks). */
export interface ReadyOutcome {
  /** Messages sendable at once (a leader's appends and heartbeats). */
  readonly messages: readonly Message[];
  readonly applied: readonly Entry[];
  readonly puts: readonly PutCommand[];
  readonly readStates: readonly ReadState[];
}

/** A simulated replica: volatile state is lost on crash, `disk` survives. */
export class SimHost {
  readonly id: NodeId;
  readonly disk: MemoryStorage;
  node!: RawNode;
  fsm!: KvFsm;
  /** Readies handed out and not yet synced/advanced, oldest first. */
  inFlight: Ready[] = [];
  private readonly opts: HostOptions;
  private readonly seed: number;
  private restarts = 0;

  constructor(id: NodeId, seed: number, initialVoters: readonly NodeId[] | undefined, opts: HostOptions = {}) {
    this.id = id;
    this.opts = opts;
    this.seed = seed;
    if (initialVoters) {
      this.disk = new MemoryStorage({ voters: [...initialVoters], learners: [] });
      const b = bootstrapState(initialVoters);
      this.disk.append(b.entries);
      this.disk.setHardState(b.hardState);
    } else {
      this.disk = new MemoryStorage();
    }
    this.boot();
  }

  private boot(): void {
    const cfg: RaftConfig = {
      id: this.id,
      group: this.opts.group ?? 1,
      storage: this.disk,
      random: new SeededRandom((this.seed * 7919 + this.id * 104729 + this.restarts * 15485863) | 0),
      electionTicks: this.opts.electionTicks ?? 10,
      heartbeatTicks: this.opts.heartbeatTicks ?? 1,
      preVote: this.opts.preVote ?? true,
      checkQuorum: this.opts.checkQuorum ?? true,
      lazyCommit: this.opts.lazyCommit ?? false,
      quietHeartbeats: this.opts.quietHeartbeats ?? false,
      maxInflightAppends: this.opts.maxInflightAppends ?? 8,
      maxAppendBytes: this.opts.maxAppendBytes ?? 4096,
      snapshotChunkBytes: this.opts.snapshotChunkBytes ?? 256,
      readiesInFlight: this.opts.readiesInFlight ?? 1,
    };
    this.node = new RawNode(cfg);
    const snap = this.disk.snapshot();
    this.fsm = snap ? this.restoreFsm(snap.meta.index, snap.data) : new KvFsm();
    if (snap && this.fsm.applied !== snap.meta.index) {
      throw new Error(`host ${this.id}: snapshot data applied ${this.fsm.applied} != meta index ${snap.meta.index}`);
    }
    this.inFlight = [];
  }

  /** The newest Ready handed out and not yet advanced; setting it makes it the only one. */
  get outstanding(): Ready | undefined {
    return this.inFlight[this.inFlight.length - 1];
  }

  set outstanding(rd: Ready | undefined) {
    this.inFlight = rd ? [rd] : [];
  }

  /** Takes the next Ready if there is one and the core hands one out now (none outstanding, or one with `readiesInFlight: 2`). */
  startReady(): Ready | undefined {
    if (!this.node.hasReady()) return undefined;
    const rd = this.node.ready();
    this.inFlight.push(rd);
    return rd;
  }

  /** Whether the outstanding Ready must hit the disk (so its completion waits for an fsync). */
  needsSync(rd: Ready): boolean {
    return rd.entries.length > 0 || rd.hardState !== undefined || rd.snapshot !== undefined;
  }

  /**
   * The part of a Ready that need not wait for the disk: restore a snapshot, apply committed
   * entries (durable on a quorum already), and hand out the early messages.
   */
  applyReady(): ReadyOutcome {
    const rd = this.outstanding; // the newest
    if (!rd) throw new Error(`host ${this.id}: no outstanding ready`);
    const puts: PutCommand[] = [];
    if (rd.snapshot) this.fsm = this.restoreFsm(rd.snapshot.meta.index, rd.snapshot.data);
    for (const e of rd.committedEntries) {
      if (e.index <= this.fsm.applied) continue;
      const put = this.fsm.apply(e, this.opts.tolerateBadData ?? false);
      if (put) puts.push(put);
    }
    return { messages: rd.earlyMessages, applied: rd.committedEntries, puts, readStates: rd.readStates };
  }

  private restoreFsm(index: number, data: Uint8Array): KvFsm {
    if (!this.opts.tolerateBadData) return KvFsm.restore(data);
    let fsm: KvFsm;
    try {
      fsm = KvFsm.restore(data);
    } catch {
      fsm = new KvFsm();
    }
    fsm.applied = index;
    return fsm;
  }

  /** The oldest Ready's fsync finished: make it durable, advance, and return the messages that waited for it. */
  completeReady(): readonly Message[] {
    const rd = this.inFlight.shift();
    if (!rd) throw new Error(`host ${this.id}: no outstanding ready`);
    this.persist(rd);
    this.node.advance(rd);
    this.maybeSnapshot();
    return rd.messages;
  }

  private persist(rd: Ready): void {
    if (rd.snapshot) this.disk.applySnapshot(rd.snapshot);
    if (rd.entries.length > 0) this.disk.append(rd.entries);
    if (rd.hardState) this.disk.setHardState(rd.hardState);
  }

  private maybeSnapshot(): void {
    const every = this.opts.snapshotEvery ?? 0;
    if (every <= 0) return;
    const snapIndex = this.disk.snapshot()?.meta.index ?? 0;
    const applied = this.fsm.applied;
    if (applied - snapIndex < every) return;
    if (applied > this.disk.lastIndex()) return; // applied entries are always durable; be defensive
    this.disk.createSnapshot(applied, this.node.raft.confState(), this.fsm.snapshot());
    const lag = this.opts.compactionLag ?? 5;
    const upTo = applied - lag;
    if (upTo > this.disk.firstIndex()) this.disk.compact(upTo);
  }

  /**
   * A machine crash: everything volatile is lost. Outstanding writes that were not synced are
   * lost too, unless `unsyncedSurvives` (the OS happened to flush them whole): then the first
   * `survivors` of them (all by default) reach the disk, in order — the engine writes batches in
   * order, so a crash keeps a prefix. Writes are atomic batches (as a LevelDB WriteBatch), so a
   * torn tail is discarded whole.
   */
  crash(unsyncedSurvives: boolean, survivors = Infinity): void {
    if (unsyncedSurvives) for (const rd of this.inFlight.slice(0, survivors)) this.persist(rd);
    this.inFlight = [];
  }

  /** Restarts from what is on disk. */
  restart(): void {
    this.restarts++;
    this.boot();
  }
}
