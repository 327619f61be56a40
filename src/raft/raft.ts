/**
 * The Raft protocol for one group as a pure state machine: messages and ticks go in, messages,
 * log entries, hard state and read states come out. No I/O, no clock, no global randomness.
 *
 * Features: leader election with randomised timeouts, pre-vote and check-quorum; pipelined,
 * flow-controlled log replication with fast conflict back-off; chunked snapshot transfer;
 * ReadIndex reads; leader transfer; single-step membership changes with learners; quiescence
 * of idle groups (the leader stops heartbeating, caught-up followers stop their election timers;
 * the host wakes a follower whose leader's node looks dead, see `quiesce`/`wake`); optional lazy
 * commit notices and quiet heartbeats for busy groups (`lazyCommit`, `quietHeartbeats`, `flushCommit`).
 *
 * Why one file of this size: it is one state machine whose role handlers (follower, candidate,
 * leader) share every field and must be read together to check an invariant; the separable
 * concepts already live apart (log.ts, progress.ts, quorum.ts, bounds.ts, storage.ts, the
 * RawNode driver interface in raw-node.ts).
 */
import { isBoundedUint, MAX_RAFT_INDEX, MAX_RAFT_TERM, MAX_SNAPSHOT_BYTES } from './bounds.js';
import { RaftLog } from './log.js';
import { Progress, ProgressState } from './progress.js';
import { committedIndex, majority, voteResult, VoteResult } from './quorum.js';
import type { Storage } from './storage.js';
import {
  ConfChangeType,
  EntryType,
  MessageType,
  NONE,
  Role,
  type ConfChange,
  type ConfState,
  type Entry,
  type HardState,
  type Message,
  type NodeId,
  type RandomSource,
  type ReadState,
  type Snapshot,
  type SnapshotChunk,
  type SnapshotMeta,
  type SnapshotRead,
  type SnapshotSink,
} from './types.js';

/** Tuning and identity of one replica. Every limit has a default. */
export interface RaftConfig {
  /** This replica's id (non-zero). */
  readonly id: NodeId;
  /** The group id stamped on every outgoing message. */
  readonly group?: number;
  readonly storage: Storage;
  /** Seeded randomness for election timeouts. */
  readonly random: RandomSource;
  /** Ticks without hearing from a leader before campaigning (randomised in [n, 2n)). Default 10. */
  readonly electionTicks?: number;
  /** Ticks between leader heartbeats. Default 1. */
  readonly heartbeatTicks?: number;
  /** The index the host's state machine has already applied (restart). Default: snapshot index. */
  readonly applied?: number;
  /** Most entry bytes in one append message. Default 1 MiB. */
  readonly maxAppendBytes?: number;
  /** Most append messages in flight to one follower. Default 256. */
  readonly maxInflightAppends?: number;
  /** Most bytes of committed entries handed out in one Ready. Default 16 MiB. */
  readonly maxApplyBytes?: number;
  /** Most bytes of proposed but unapplied entries on a leader before proposals are refused. Default 64 MiB. */
  readonly maxUncommittedBytes?: number;
  /** Most pending ReadIndex requests on a leader. Default 65536. */
  readonly maxPendingReads?: number;
  /** Size of one snapshot chunk. Default 1 MiB. */
  readonly snapshotChunkBytes?: number;
  /**
   * Most snapshot chunks in flight to one follower (sent, or asked of the host for a streamed
   * snapshot, and not yet acknowledged). The follower takes chunks only at its received offset and
   * answers a gap with that offset; the leader resends from there. Default 4
   * ({@link DEFAULT_SNAPSHOT_CHUNKS_IN_FLIGHT}).
   */
  readonly snapshotChunksInFlight?: number;
  /** Run a pre-vote round before real elections. Default true. */
  readonly preVote?: boolean;
  /** Leaders step down without a quorum; followers ignore votes while a leader is alive. Default true. */
  readonly checkQuorum?: boolean;
  /**
   * Leader: a commit index that advances is not broadcast at once in commit-only appends (two
   * messages per follower per replication round: the append and its acknowledgement); followers
   * learn it with the next append that carries entries, the next heartbeat, or when the host
   * calls `flushCommit` (at the latest, one heartbeat interval later). The leader's own commit and
   * apply (what clients wait for) are unchanged. Meant for hosts running many groups over the
   * same node pairs, calling `flushCommit` when they are idle. Default false.
   */
  readonly lazyCommit?: boolean;
  /**
   * Leader: a heartbeat round skips a follower that was sent an append since the previous round
   * and is replicating with room in its window (the append reset its election timer; its answer
   * keeps the leader's check-quorum mark). Heartbeats confirming a read and quiescing ones always
   * go. With `lazyCommit`, a follower then learns the final commit index of a burst at most two
   * heartbeat intervals later. Default false.
   */
  readonly quietHeartbeats?: boolean;
  /**
   * Called with a snapshot received from a leader before it is installed: false (or a throw)
   * refuses it, as if it brought nothing new. Hosts use it to check that their state machine can
   * restore the data, so a snapshot no correct leader sends cannot stop the host once installed.
   * Default: accept every snapshot.
   */
  readonly acceptSnapshot?: (s: Snapshot) => boolean;
  /**
   * Where received snapshot chunks go (a follower's streamed install): the core keeps only the
   * transfer's position, never the chunks, and installs a `streamed` snapshot. Default: chunks are
   * collected in memory and joined into the snapshot's data.
   */
  readonly snapshotSink?: SnapshotSink;
  /**
   * RawNode: how many Readies may be handed out before the oldest is advanced — 1 (default), or 2
   * for overlapped rounds (the host starts round N+1's write while round N's fsync runs).
   */
  readonly readiesInFlight?: number;
}

/**
 * Why a proposal was dropped, for callers to act on without reading the message: `no-leader`
 * (this replica knows no leader to forward to), `transfer` (a leadership transfer is in
 * progress), both of which mean "ask the leader (soon)"; `refused` for everything else (not the
 * leader, a pending configuration change, flow control, an invalid configuration change...).
 */
export type ProposalDropKind = 'no-leader' | 'transfer' | 'refused';

/** A proposal or request the leader (or this replica) could not accept; `kind` classifies why. */
export class ProposalDroppedError extends Error {
  constructor(
    reason: string,
    /** Why, by type (see {@link ProposalDropKind}). */
    readonly kind: ProposalDropKind = 'refused',
  ) {
    super(`proposal dropped: ${reason}`);
    this.name = 'ProposalDroppedError';
  }
}

/** Default of `RaftConfig.snapshotChunksInFlight`. */
export const DEFAULT_SNAPSHOT_CHUNKS_IN_FLIGHT = 4;

/** Heartbeat responses in a row that find a snapshot transfer with chunks in flight not advanced before it is resent from the acknowledged offset. */
const SNAPSHOT_STALL_BEATS = 2;

const TRANSFER_CONTEXT = 'transfer';
const EMPTY = new Uint8Array(0);

type CampaignType = 'pre-election' | 'election' | 'transfer';

interface PendingRead {
  readonly requestId: string;
  readonly index: number;
  readonly from: NodeId;
  readonly acks: Set<NodeId>;
}

interface IncomingSnapshot {
  readonly index: number;
  readonly term: number;
  readonly chunks: Uint8Array[];
  received: number;
}

/** Encodes a membership change as entry data. */
export function encodeConfChange(cc: ConfChange): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(cc));
}

/**
 * Decodes entry data written by `encodeConfChange`; throws on anything else (not JSON, not an
 * object, an unknown change type, a node id that is not a positive safe integer, a non-string
 * context).
 */
export function decodeConfChange(data: Uint8Array): ConfChange {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(data));
  } catch {
    throw new Error('malformed configuration change entry');
  }
  if (typeof parsed !== 'object' || parsed === null) throw new Error('malformed configuration change entry');
  const { type, nodeId, context } = parsed as Record<string, unknown>;
  if (
    (type !== ConfChangeType.AddVoter && type !== ConfChangeType.AddLearner && type !== ConfChangeType.RemoveNode) ||
    typeof nodeId !== 'number' ||
    !Number.isSafeInteger(nodeId) ||
    nodeId <= 0 ||
    (context !== undefined && typeof context !== 'string')
  ) {
    throw new Error('malformed configuration change entry');
  }
  return context === undefined ? { type, nodeId } : { type, nodeId, context };
}

/**
 * The membership after applying the committed change `cc` to `conf`, as `Raft.applyConfChange`
 * does (pure; a change that would leave no voter returns `conf` unchanged). Hosts that restart
 * Raft past applied configuration changes use it to recompute the membership in effect.
 */
export function nextConfState(conf: ConfState, cc: ConfChange): ConfState {
  const voters = conf.voters.filter((v) => v !== cc.nodeId);
  const learners = conf.learners.filter((v) => v !== cc.nodeId);
  switch (cc.type) {
    case ConfChangeType.AddVoter:
      voters.push(cc.nodeId);
      break;
    case ConfChangeType.AddLearner:
      learners.push(cc.nodeId);
      break;
    case ConfChangeType.RemoveNode:
      break;
  }
  if (voters.length === 0) return conf; // never leave a group without voters
  const v = [...new Set(voters)].sort((a, b) => a - b);
  return { voters: v, learners: [...new Set(learners)].filter((l) => !v.includes(l)).sort((a, b) => a - b) };
}

/** One replica of one Raft group. Drive it through `RawNode`, which batches its outputs. */
export class Raft {
  readonly id: NodeId;
  readonly group: number;
  term = 0;
  vote: NodeId = NONE;
  lead: NodeId = NONE;
  role: Role = Role.Follower;
  readonly log: RaftLog;

  /** Outgoing messages not yet taken by the host. */
  msgs: Message[] = [];
  /**
   * Messages ignored because they were malformed, out of bounds (see `MAX_RAFT_TERM`) or
   * inconsistent with this replica's state in a way no correct peer produces (for status pages).
   */
  droppedMessages = 0;
  /** Read states not yet taken by the host. */
  readStates: ReadState[] = [];
  /** Leader: chunks of a streamed snapshot the host is asked to read, not yet taken by it. */
  snapshotReads: SnapshotRead[] = [];

  private voters: NodeId[] = [];
  private learners: NodeId[] = [];
  private readonly prs = new Map<NodeId, Progress>();
  private readonly votes = new Map<NodeId, boolean>();

  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;
  private readonly electionTicks: number;
  private readonly heartbeatTicks: number;
  private readonly random: RandomSource;
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly lazyCommit: boolean;
  private readonly quietHeartbeats: boolean;
  private readonly maxAppendBytes: number;
  private readonly maxInflight: number;
  readonly maxApplyBytes: number;
  private readonly maxUncommittedBytes: number;
  private readonly maxPendingReads: number;
  private readonly snapshotChunkBytes: number;
  private readonly snapshotWindow: number;
  private readonly acceptSnapshot: ((s: Snapshot) => boolean) | undefined;
  private readonly snapshotSink: SnapshotSink | undefined;

  /** A leader transfer in progress to this node. */
  leadTransferee: NodeId = NONE;
  /** Index of the last configuration change proposed; a new one waits until it is applied. */
  private pendingConfIndex = 0;
  /**
   * Leader only: index of a configuration change in this leader's log (not yet applied) that
   * removes or demotes this leader, 0 when there is none. From then on the leader appends nothing
   * more (see `leaving`), so every entry of its log sits on a majority once the change commits.
   */
  private selfRemovalIndex = 0;
  private uncommittedBytes = 0;
  /** Reads waiting for a heartbeat quorum. */
  private pendingReads: PendingRead[] = [];
  /** Reads received before this leader committed an entry of its term. */
  private readsAwaitingCommit: Message[] = [];
  /** Entries were appended on the leader and not yet broadcast (batched until the next Ready). */
  private appendPending = false;
  private incomingSnapshot: IncomingSnapshot | undefined;
  /** Quiesced: ticks do nothing (no heartbeats, no election timer) until a message or the host wakes us. */
  private quiescedState = false;
  /** Leader: consecutive ticks during which the group had nothing in flight (see `canQuiesce`). */
  private idleTicks = 0;

  constructor(cfg: RaftConfig) {
    if (!Number.isInteger(cfg.id) || cfg.id <= 0) throw new Error(`raft: invalid replica id ${cfg.id}`);
    this.id = cfg.id;
    this.group = cfg.group ?? 0;
    this.random = cfg.random;
    this.electionTicks = cfg.electionTicks ?? 10;
    this.heartbeatTicks = cfg.heartbeatTicks ?? 1;
    if (this.heartbeatTicks <= 0 || this.electionTicks <= this.heartbeatTicks) {
      throw new Error('raft: electionTicks must be greater than heartbeatTicks > 0');
    }
    this.preVote = cfg.preVote ?? true;
    this.checkQuorum = cfg.checkQuorum ?? true;
    this.lazyCommit = cfg.lazyCommit ?? false;
    this.quietHeartbeats = cfg.quietHeartbeats ?? false;
    this.maxAppendBytes = cfg.maxAppendBytes ?? 1 << 20;
    this.maxInflight = cfg.maxInflightAppends ?? 256;
    this.maxApplyBytes = cfg.maxApplyBytes ?? 16 << 20;
    this.maxUncommittedBytes = cfg.maxUncommittedBytes ?? 64 << 20;
    this.maxPendingReads = cfg.maxPendingReads ?? 65536;
    this.snapshotChunkBytes = cfg.snapshotChunkBytes ?? 1 << 20;
    this.snapshotWindow = Math.max(1, Math.floor(cfg.snapshotChunksInFlight ?? DEFAULT_SNAPSHOT_CHUNKS_IN_FLIGHT));
    this.acceptSnapshot = cfg.acceptSnapshot;
    this.snapshotSink = cfg.snapshotSink;
    this.log = new RaftLog(cfg.storage);

    const { hardState, conf } = cfg.storage.initialState();
    this.applyConf(conf);
    if (hardState.term > 0 || hardState.vote !== NONE || hardState.commit > 0) {
      if (hardState.commit < this.log.committed || hardState.commit > this.log.lastIndex()) {
        throw new Error(
          `raft: hard state commit ${hardState.commit} outside [${this.log.committed}, ${this.log.lastIndex()}]`,
        );
      }
      this.log.committed = hardState.commit;
      this.term = hardState.term;
      this.vote = hardState.vote;
    }
    if (cfg.applied !== undefined && cfg.applied > 0) {
      const applied = Math.min(cfg.applied, this.log.committed);
      if (applied >= this.log.applied) {
        this.log.applied = applied;
        this.log.applying = applied;
      }
    }
    this.becomeFollower(this.term, NONE);
  }

  // ---------------------------------------------------------------- observation

  /** The durable part of the state. */
  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  /** The membership currently in effect (as of the applied index). */
  confState(): ConfState {
    return { voters: [...this.voters], learners: [...this.learners] };
  }

  /** The leader's view of a peer's progress (for status pages and tests). */
  progress(id: NodeId): Readonly<Progress> | undefined {
    return this.prs.get(id);
  }

  /** Whether this replica may campaign: it is a voter. */
  promotable(): boolean {
    return this.voters.includes(this.id);
  }

  /**
   * A leader on its way out: a configuration change that removes or demotes it is in its log
   * (proposed, or applied already). It takes no proposals any more, keeps replicating, and
   * once the change is applied hands leadership to a caught-up voter (see `maybeHandOver`).
   */
  leaving(): boolean {
    return this.role === Role.Leader && (this.selfRemovalIndex > 0 || !this.voters.includes(this.id));
  }

  /**
   * Leader: the followers a snapshot is being sent to, with the index of that snapshot (a host
   * serving streamed snapshots keeps what it holds for these transfers and releases the rest).
   * Empty on any other role.
   */
  snapshotTransfers(): Array<{ readonly to: NodeId; readonly index: number }> {
    const out: Array<{ to: NodeId; index: number }> = [];
    if (this.role !== Role.Leader) return out;
    for (const pr of this.prs.values()) if (pr.state === ProgressState.Snapshot) out.push({ to: pr.id, index: pr.pendingSnapshot });
    return out;
  }

  /**
   * Leader: the host's answer to a {@link SnapshotRead}: sends the chunk to its follower if the
   * transfer still waits for exactly this chunk (same snapshot, the offset asked for and not yet
   * answered), then asks for the next one while the window has room; anything else is stale and
   * ignored. Returns whether it was sent.
   */
  snapshotChunk(c: SnapshotChunk): boolean {
    if (this.role !== Role.Leader) return false;
    const pr = this.prs.get(c.to);
    if (!pr || pr.state !== ProgressState.Snapshot || pr.pendingSnapshot !== c.index || pr.snapshotReadAt < 0) return false;
    if (pr.snapshotReadAt !== c.offset || !isBoundedUint(c.offset + c.bytes.length, MAX_SNAPSHOT_BYTES)) return false;
    const snap = this.log.snapshot();
    if (!snap || snap.meta.index !== c.index) return false;
    if (!c.last && c.bytes.length === 0) return false; // no progress: a host bug, asked again later
    const end = c.offset + c.bytes.length;
    this.send({
      type: MessageType.Snap,
      group: this.group,
      from: this.id,
      to: c.to,
      term: this.term,
      snapshot: snap.meta,
      offset: c.offset,
      chunk: c.bytes,
      ...(c.last ? { done: true, total: end, ...(c.crc !== undefined ? { crc: c.crc } : {}) } : {}),
    });
    pr.snapshotChunkSent(end, c.last);
    this.sendSnapshotChunks(pr);
    return true;
  }

  /** Whether the leader owes followers an append of freshly proposed entries. */
  hasPendingAppend(): boolean {
    return this.appendPending;
  }

  // ---------------------------------------------------------------- inputs

  /** Advances the logical clock by one tick. */
  tick(): void {
    if (this.quiescedState) return;
    if (this.role === Role.Leader) {
      this.idleTicks = this.idleNow() ? this.idleTicks + 1 : 0;
      this.tickHeartbeat();
    } else this.tickElection();
  }

  // ---------------------------------------------------------------- quiescence

  /** Whether this replica is quiesced: its ticks do nothing until a message arrives or `wake`. */
  get quiesced(): boolean {
    return this.quiescedState;
  }

  /**
   * Leader: whether the group has been idle for at least `minIdleTicks` ticks — every entry
   * committed and matched by every member, no reads, transfer, configuration change or
   * snapshot in flight — so `quiesce` may stop its heartbeats. The host adds what the core
   * cannot know: that every member's node is live (a dead member must keep the group awake).
   */
  canQuiesce(minIdleTicks: number): boolean {
    return !this.quiescedState && this.role === Role.Leader && this.idleTicks >= minIdleTicks && this.idleNow();
  }

  /**
   * Leader: quiesce the group. A last heartbeat marked `quiesce` tells every follower; from then
   * on ticks send nothing. Any proposal, read, transfer or peer message other than an
   * acknowledgement wakes the leader again; `wake` does too. Returns whether it quiesced.
   * Quiescence only changes timing: no decision of the protocol depends on it.
   */
  quiesce(): boolean {
    if (!this.canQuiesce(0)) return false;
    this.bcastHeartbeat(undefined, true);
    this.quiescedState = true;
    return true;
  }

  /**
   * Ends quiescence. `leaderSilent`: a follower's host saw no sign of life from the leader's node
   * for an election timeout, so the follower resumes as one that has not heard from its leader
   * for that long (it may campaign within one more randomised timeout, and grants votes at once).
   */
  wake(leaderSilent = false): void {
    if (!this.quiescedState) return;
    this.quiescedState = false;
    this.idleTicks = 0;
    this.heartbeatElapsed = 0;
    if (this.role === Role.Leader) {
      // Check-quorum starts a fresh window: marks from before quiescence say nothing about now.
      this.electionElapsed = 0;
      for (const pr of this.prs.values()) pr.recentActive = false;
    } else {
      this.electionElapsed = leaderSilent ? this.electionTicks : 0;
    }
  }

  /** Leader: nothing in flight now (see `canQuiesce`). */
  private idleNow(): boolean {
    if (this.role !== Role.Leader) return false;
    const last = this.log.lastIndex();
    if (this.log.committed !== last || this.log.stableLastIndex() !== last) return false;
    if (this.pendingReads.length > 0 || this.readsAwaitingCommit.length > 0 || this.appendPending) return false;
    if (this.leadTransferee !== NONE || this.selfRemovalIndex > 0 || this.pendingConfIndex > this.log.applied) return false;
    if (!this.voters.includes(this.id)) return false;
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue;
      if (pr.match !== last || pr.state !== ProgressState.Replicate || pr.inflights.count > 0) return false;
    }
    return true;
  }

  /** Leader with lazy commit: whether some replicating follower has not been sent the commit index it may learn (what `flushCommit` would send); sends nothing. */
  commitNoticesOwed(): boolean {
    if (!this.lazyCommit || this.role !== Role.Leader) return false;
    for (const [id, pr] of this.prs) {
      if (id === this.id || pr.state !== ProgressState.Replicate) continue;
      if (pr.sentCommit < Math.min(pr.match, this.log.committed)) return true;
    }
    return false;
  }

  /**
   * Leader with `lazyCommit`: sends the commit index held back so far to every replicating
   * follower that has not been told it (an append, empty unless entries are due). Hosts call it
   * when they have nothing else to do, so an idle group's followers apply at once while a busy
   * group's commit indexes ride on its next appends. Returns whether anything was sent.
   */
  flushCommit(): boolean {
    if (!this.lazyCommit || this.role !== Role.Leader) return false;
    let sent = false;
    for (const [id, pr] of this.prs) {
      if (id === this.id || pr.state !== ProgressState.Replicate) continue;
      if (pr.sentCommit >= Math.min(pr.match, this.log.committed)) continue;
      if (this.sendAppend(id, true)) sent = true;
    }
    return sent;
  }

  /**
   * Sends out the appends owed after proposals (called when the host asks for a Ready). With
   * `lazyCommit` only to followers that still lack some of the entries: an acknowledgement
   * stepped meanwhile may already have sent them (`handleAppendResponse` keeps the pipeline
   * full), and an empty append would carry nothing but a commit index, which lazy commit holds
   * back for the next append or heartbeat. Eager, `appendPending` also stands for a commit to
   * broadcast (`stableTo`), so every follower gets an append, empty or not.
   */
  flushAppends(): void {
    if (this.appendPending && this.role === Role.Leader) this.bcastAppend(!this.lazyCommit);
    this.appendPending = false;
  }

  /** Proposes application data; throws ProposalDroppedError when it cannot be accepted here. */
  propose(data: readonly Uint8Array[]): void {
    this.wake();
    const entries = data.map((d) => ({ term: 0, index: 0, type: EntryType.Normal, data: d }));
    this.proposeEntries(entries, true);
  }

  /** Proposes a membership change (one at a time). */
  proposeConfChange(cc: ConfChange): void {
    this.wake();
    if (this.role !== Role.Leader) throw new ProposalDroppedError('not the leader');
    if (this.pendingConfIndex > this.log.applied) {
      throw new ProposalDroppedError('another configuration change is not yet applied');
    }
    this.validateConfChange(cc);
    this.proposeEntries([{ term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange(cc) }], true);
  }

  /** Requests a linearizable read; a ReadState with this id appears once it is safe. */
  readIndex(requestId: string): void {
    this.step({ type: MessageType.ReadIndex, group: this.group, from: this.id, to: this.id, term: 0, context: requestId });
  }

  /** Asks the leader to hand leadership to `transferee` (a follower forwards the request to its leader). */
  transferLeader(transferee: NodeId): void {
    this.wake();
    if (this.role === Role.Leader) {
      this.leaderTransfer(transferee);
    } else if (this.lead !== NONE) {
      this.send({ type: MessageType.TransferLeader, group: this.group, from: this.id, to: this.lead, term: 0, transferee });
    }
  }

  /** Starts an election now (as if the election timeout fired). */
  campaign(): void {
    this.step({ type: MessageType.Hup, group: this.group, from: this.id, to: this.id, term: 0 });
  }

  /** The transport could not reach `id`: stop streaming optimistically to it. */
  reportUnreachable(id: NodeId): void {
    const pr = this.prs.get(id);
    if (this.role === Role.Leader && pr && pr.state === ProgressState.Replicate) pr.becomeProbe();
  }

  /**
   * Processes one message from a peer (or a local message with term 0). A message that is not
   * well formed (see `wellFormed`), in particular one whose term exceeds `MAX_RAFT_TERM`, is
   * ignored and counted in `droppedMessages`: no peer input may make the core throw.
   */
  step(m: Message): void {
    if (!this.wellFormed(m)) {
      this.droppedMessages++;
      return;
    }
    if (this.quiescedState && !this.keepsQuiescence(m)) this.wake();
    if (m.term === 0) {
      // local message
    } else if (m.term > this.term) {
      if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
        const force = m.context === TRANSFER_CONTEXT;
        const inLease = this.checkQuorum && this.lead !== NONE && this.electionElapsed < this.electionTicks;
        if (!force && inLease) {
          // A leader is alive as far as we know: ignore the disruptive candidate entirely.
          return;
        }
      }
      if (m.type === MessageType.PreVote) {
        // Never change term for a pre-vote.
      } else if (m.type === MessageType.PreVoteResp && !m.reject) {
        // A granted pre-vote carries the future term; the term changes when we campaign.
      } else if (m.type === MessageType.App || m.type === MessageType.Heartbeat || m.type === MessageType.Snap) {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NONE);
      }
    } else if (m.term < this.term) {
      if ((this.checkQuorum || this.preVote) && (m.type === MessageType.Heartbeat || m.type === MessageType.App)) {
        // A stale leader (or a node stuck on an old term): tell it our term so it steps down or catches up.
        this.send({ type: MessageType.AppResp, group: this.group, from: this.id, to: m.from, term: this.term });
      } else if (m.type === MessageType.PreVote) {
        this.send({ type: MessageType.PreVoteResp, group: this.group, from: this.id, to: m.from, term: this.term, reject: true, ...this.commitPoint() });
      } else if (m.type === MessageType.Vote) {
        // As the Raft paper's RequestVote reply: refuse, with our term, so a candidate stuck on an
        // older term catches up. Without it, a voter that does not know the candidate is a member
        // (it missed the configuration change) can stay one term ahead forever: each of its own
        // campaigns skips the candidate, and the candidate's requests arrive one term too late.
        this.send({ type: MessageType.VoteResp, group: this.group, from: this.id, to: m.from, term: this.term, reject: true, ...this.commitPoint() });
      }
      return;
    }

    // A leader commits only by counting entries of its term (a late refusal changes nothing for it).
    if ((m.type === MessageType.VoteResp || m.type === MessageType.PreVoteResp) && m.commit !== undefined && this.role !== Role.Leader) {
      this.learnCommitPoint(m.commit, m.logTerm ?? 0);
    }

    switch (m.type) {
      case MessageType.Hup:
        this.hup(this.preVote ? 'pre-election' : 'election');
        return;
      case MessageType.Vote:
      case MessageType.PreVote: {
        const canVote =
          this.vote === m.from ||
          (this.vote === NONE && this.lead === NONE) ||
          (m.type === MessageType.PreVote && m.term > this.term);
        const respType = m.type === MessageType.Vote ? MessageType.VoteResp : MessageType.PreVoteResp;
        if (canVote && this.log.isUpToDate(m.index ?? 0, m.logTerm ?? 0)) {
          this.send({ type: respType, group: this.group, from: this.id, to: m.from, term: m.term });
          if (m.type === MessageType.Vote) {
            this.electionElapsed = 0;
            this.vote = m.from;
          }
        } else {
          this.send({ type: respType, group: this.group, from: this.id, to: m.from, term: this.term, reject: true, ...this.commitPoint() });
        }
        return;
      }
      default:
        break;
    }
    switch (this.role) {
      case Role.Leader:
        this.stepLeader(m);
        return;
      case Role.Candidate:
      case Role.PreCandidate:
        this.stepCandidate(m);
        return;
      case Role.Follower:
        this.stepFollower(m);
        return;
    }
  }

  /**
   * Defence in depth behind the peer decoder (src/node/peer-codec.ts), which checks all of this
   * and more before a message reaches the core: numbers are safe integers within the bounds,
   * the local-only `Hup` and `Beat` come from this replica with term 0, a proposal arriving
   * here (forwarded by a peer) carries only application entries (membership changes are
   * proposed on the leader, where they are validated), an append's entries follow `index`
   * contiguously with non-decreasing terms no later than the message's term and decodable
   * configuration changes, and a snapshot chunk lies within its snapshot and names valid members.
   */
  private wellFormed(m: Message): boolean {
    if (!isBoundedUint(m.term, MAX_RAFT_TERM)) return false;
    if (m.index !== undefined && !isBoundedUint(m.index, MAX_RAFT_INDEX)) return false;
    if (m.commit !== undefined && !isBoundedUint(m.commit, MAX_RAFT_INDEX)) return false;
    if (m.rejectHint !== undefined && !isBoundedUint(m.rejectHint, MAX_RAFT_INDEX)) return false;
    if (m.logTerm !== undefined && !isBoundedUint(m.logTerm, MAX_RAFT_TERM)) return false;
    if (m.offset !== undefined && !isBoundedUint(m.offset, MAX_SNAPSHOT_BYTES)) return false;
    if (m.total !== undefined && !isBoundedUint(m.total, MAX_SNAPSHOT_BYTES)) return false;
    if (m.crc !== undefined && !isBoundedUint(m.crc, 0xffff_ffff)) return false;
    if ((m.type === MessageType.Hup || m.type === MessageType.Beat) && (m.from !== this.id || m.term !== 0)) return false;
    if (m.entries && m.entries.length > 0) {
      if (m.type === MessageType.Prop) {
        if (m.entries.some((e) => e.type !== EntryType.Normal || !(e.data instanceof Uint8Array))) return false;
      } else if (m.type === MessageType.App) {
        if (!wellFormedAppend(m)) return false;
      }
    }
    if (m.snapshot) {
      const s = m.snapshot;
      if (!isBoundedUint(s.index, MAX_RAFT_INDEX) || !isBoundedUint(s.term, MAX_RAFT_TERM)) return false;
      if (m.type === MessageType.Snap) {
        const end = (m.offset ?? 0) + (m.chunk?.length ?? 0);
        // A streamed transfer names its total only on its last chunk.
        if ((m.total !== undefined && end > m.total) || (m.done && m.total === undefined) || s.term > m.term) return false;
        if (!s.conf || !validIds(s.conf.voters) || !validIds(s.conf.learners)) return false;
      }
    }
    return true;
  }

  /**
   * Messages a quiesced replica takes without waking: the leader's quiesce heartbeat (again) and,
   * on a leader, acknowledgements of its current term that ask for nothing (a heartbeat reply,
   * an append reply that refuses nothing).
   */
  private keepsQuiescence(m: Message): boolean {
    if (m.type === MessageType.Heartbeat) return m.quiesce === true && m.term === this.term && m.from === this.lead;
    if (this.role !== Role.Leader || m.term !== this.term) return false;
    return m.type === MessageType.HeartbeatResp || (m.type === MessageType.AppResp && !m.reject);
  }

  // ---------------------------------------------------------------- role transitions

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = NONE;
    }
    this.lead = NONE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.quiescedState = false;
    this.idleTicks = 0;
    this.randomizedElectionTimeout = this.electionTicks + this.random.nextInt(this.electionTicks);
    this.leadTransferee = NONE;
    this.votes.clear();
    const last = this.log.lastIndex();
    for (const pr of this.prs.values()) {
      const fresh = new Progress(pr.id, last + 1, this.maxInflight, pr.isLearner);
      // The leader counts itself only for entries already durable on its own disk.
      if (pr.id === this.id) fresh.match = this.log.stableLastIndex();
      this.prs.set(pr.id, fresh);
    }
    this.pendingConfIndex = 0;
    this.selfRemovalIndex = 0;
    this.uncommittedBytes = 0;
    this.pendingReads = [];
    this.readsAwaitingCommit = [];
    this.appendPending = false;
    this.snapshotReads = [];
  }

  /** Becomes a follower of `lead` (or of nobody) in `term`. */
  becomeFollower(term: number, lead: NodeId): void {
    this.reset(term);
    this.lead = lead;
    this.role = Role.Follower;
  }

  private becomePreCandidate(): void {
    if (this.role === Role.Leader) throw new Error('raft: leader cannot become pre-candidate');
    this.quiescedState = false;
    // Term and vote are untouched: a pre-vote round must not disturb anyone.
    this.votes.clear();
    this.lead = NONE;
    this.role = Role.PreCandidate;
  }

  private becomeCandidate(): void {
    if (this.role === Role.Leader) throw new Error('raft: leader cannot become candidate');
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = Role.Candidate;
  }

  private becomeLeader(): void {
    if (this.role === Role.Follower) throw new Error('raft: follower cannot become leader');
    this.reset(this.term);
    this.lead = this.id;
    this.role = Role.Leader;
    const self = this.prs.get(this.id);
    if (self) self.becomeReplicate();
    // Configuration changes wait until everything before this term (and its no-op) is applied.
    this.pendingConfIndex = this.log.lastIndex();
    // An unapplied change from an earlier term may remove or demote us: then only the no-op follows it.
    this.selfRemovalIndex = this.findSelfRemoval(this.log.applied + 1, this.log.lastIndex());
    // The no-op entry of the new term: committing it commits everything before it.
    this.appendEntries([{ term: 0, index: 0, type: EntryType.Normal, data: EMPTY }]);
  }

  // ---------------------------------------------------------------- elections

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.step({ type: MessageType.Hup, group: this.group, from: this.id, to: this.id, term: 0 });
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTicks) {
      this.electionElapsed = 0;
      // A leader that is no longer a voter checks its quorum even without check-quorum: once it
      // hears from no quorum of the voters it cannot hand over, and stepping down is safe (every
      // entry of its log is committed), while a stale leader nobody answers would linger.
      if ((this.checkQuorum || !this.voters.includes(this.id)) && !this.quorumActive()) {
        this.becomeFollower(this.term, NONE);
        return;
      }
      if (this.leadTransferee !== NONE) this.leadTransferee = NONE; // transfer timed out
      this.maybeHandOver(); // a leader that is leaving tries again (another voter, perhaps)
    }
    if (this.heartbeatElapsed >= this.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat(this.pendingReads.at(-1)?.requestId, false, this.quietHeartbeats);
    }
  }

  /** Whether a quorum of voters was heard from since the last check; resets the marks. */
  private quorumActive(): boolean {
    let active = 0;
    for (const v of this.voters) {
      const pr = this.prs.get(v);
      if (!pr) continue;
      if (v === this.id || pr.recentActive) active++;
    }
    for (const pr of this.prs.values()) pr.recentActive = false;
    return active >= majority(this.voters.length);
  }

  private hup(kind: CampaignType): void {
    if (this.role === Role.Leader) return;
    if (!this.promotable()) return;
    if (this.hasUnappliedConfChanges()) {
      // The configuration we would campaign under is not final yet.
      return;
    }
    this.campaignAs(kind);
  }

  private hasUnappliedConfChanges(): boolean {
    if (this.log.committed <= this.log.applied) return false;
    const lo = Math.max(this.log.applied + 1, this.log.firstIndex());
    let ents: Entry[];
    try {
      ents = this.log.slice(lo, this.log.committed + 1);
    } catch {
      return true; // unsure: be conservative
    }
    return ents.some((e) => e.type === EntryType.ConfChange);
  }

  private campaignAs(kind: CampaignType): void {
    if (this.term >= MAX_RAFT_TERM) {
      // The next term would exceed the bound: never campaign. Only a peer that pushed the group
      // to the bound gets it here; the group then needs an operator, but no replica ever
      // persists (or sends) a term its peers would refuse.
      if (this.role !== Role.Follower) this.becomeFollower(this.term, NONE);
      return;
    }
    let voteType: MessageType;
    let term: number;
    if (kind === 'pre-election') {
      this.becomePreCandidate();
      voteType = MessageType.PreVote;
      term = this.term + 1;
    } else {
      this.becomeCandidate();
      voteType = MessageType.Vote;
      term = this.term;
    }
    if (this.poll(this.id, true) === VoteResult.Won) {
      // Single voter: won outright.
      if (kind === 'pre-election') this.campaignAs('election');
      else this.becomeLeader();
      return;
    }
    const lastIndex = this.log.lastIndex();
    const lastTerm = this.log.lastTerm();
    for (const v of this.voters) {
      if (v === this.id) continue;
      const m: Message = {
        type: voteType,
        group: this.group,
        from: this.id,
        to: v,
        term,
        index: lastIndex,
        logTerm: lastTerm,
        ...(kind === 'transfer' ? { context: TRANSFER_CONTEXT } : {}),
      };
      this.send(m);
    }
  }

  private poll(id: NodeId, granted: boolean): VoteResult {
    if (!this.votes.has(id)) this.votes.set(id, granted);
    return voteResult(this.voters, this.votes);
  }

  // ---------------------------------------------------------------- per-role steps

  private stepLeader(m: Message): void {
    switch (m.type) {
      case MessageType.Beat:
        this.bcastHeartbeat(this.pendingReads.at(-1)?.requestId);
        return;
      case MessageType.Prop:
        if (m.entries && m.entries.length > 0) {
          try {
            this.proposeEntries(m.entries, false);
          } catch (e) {
            if (!(e instanceof ProposalDroppedError)) throw e;
          }
        }
        return;
      case MessageType.ReadIndex:
        this.leaderReadIndex(m);
        return;
      case MessageType.TransferLeader:
        this.leaderTransfer(m.transferee ?? m.from);
        return;
      default:
        break;
    }
    const pr = this.prs.get(m.from);
    if (!pr) return;
    switch (m.type) {
      case MessageType.AppResp:
        this.handleAppendResponse(m, pr);
        return;
      case MessageType.HeartbeatResp:
        this.handleHeartbeatResponse(m, pr);
        return;
      case MessageType.SnapChunkResp:
        this.handleSnapChunkResponse(m, pr);
        return;
      default:
        return;
    }
  }

  private stepCandidate(m: Message): void {
    const myVoteResp = this.role === Role.PreCandidate ? MessageType.PreVoteResp : MessageType.VoteResp;
    switch (m.type) {
      case MessageType.Prop:
        return; // no leader: dropped
      case MessageType.App:
        this.becomeFollower(m.term, m.from);
        this.handleAppend(m);
        return;
      case MessageType.Heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.becomeFollower(m.term, m.from);
        this.handleSnapshotChunk(m);
        return;
      case MessageType.VoteResp:
      case MessageType.PreVoteResp: {
        if (m.type !== myVoteResp) return;
        const r = this.poll(m.from, !m.reject);
        if (r === VoteResult.Won) {
          if (this.role === Role.PreCandidate) this.campaignAs('election');
          else {
            this.becomeLeader();
            this.bcastAppend();
          }
        } else if (r === VoteResult.Lost) {
          this.becomeFollower(this.term, NONE);
        }
        return;
      }
      default:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.Prop:
        if (this.lead === NONE) return;
        this.send({ ...m, to: this.lead, from: this.id, term: 0 });
        return;
      case MessageType.App:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        return;
      case MessageType.Heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshotChunk(m);
        return;
      case MessageType.TransferLeader:
        // Forwarded as our own request (so `from` names the sender), for the same transferee.
        if (this.lead === NONE) return;
        this.send({ type: MessageType.TransferLeader, group: this.group, from: this.id, to: this.lead, term: 0, transferee: m.transferee ?? m.from });
        return;
      case MessageType.TimeoutNow:
        // The leader asks us to take over: skip pre-vote and leases.
        this.hup('transfer');
        return;
      case MessageType.ReadIndex:
        // Only our own reads are forwarded: the leader answers `from`, which must be the sender,
        // so a read another follower forwarded here (to a former leader) is dropped; it retries.
        if (this.lead === NONE || m.from !== this.id) return;
        this.send({ ...m, to: this.lead, term: 0 });
        return;
      case MessageType.ReadIndexResp:
        if (m.context !== undefined) this.readStates.push({ index: m.index ?? 0, requestId: m.context });
        return;
      default:
        return;
    }
  }

  // ---------------------------------------------------------------- leader: proposals

  private proposeEntries(entries: readonly Entry[], local: boolean): void {
    if (this.role !== Role.Leader) {
      if (this.lead === NONE || this.role !== Role.Follower) throw new ProposalDroppedError('no leader', 'no-leader');
      if (!local) return;
      this.send({ type: MessageType.Prop, group: this.group, from: this.id, to: this.lead, term: 0, entries });
      return;
    }
    if (!this.prs.has(this.id)) throw new ProposalDroppedError('leader is not a member of the group');
    if (this.leaving()) throw new ProposalDroppedError('the leader is leaving the group');
    if (this.log.lastIndex() + entries.length > MAX_RAFT_INDEX) throw new ProposalDroppedError('the log reached its index bound');
    if (this.leadTransferee !== NONE) throw new ProposalDroppedError('leadership transfer in progress', 'transfer');
    let bytes = 0;
    for (const e of entries) bytes += e.data.length;
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.maxUncommittedBytes) {
      throw new ProposalDroppedError('too many uncommitted bytes');
    }
    let es = entries;
    if (es.some((e) => e.type === EntryType.ConfChange)) {
      // Forwarded conf changes obey the one-at-a-time rule too.
      if (this.pendingConfIndex > this.log.applied) {
        es = es.map((e) => (e.type === EntryType.ConfChange ? { ...e, type: EntryType.Normal, data: EMPTY } : e));
      }
    }
    const first = this.log.lastIndex() + 1;
    this.appendEntries(es);
    this.uncommittedBytes += bytes;
    for (const e of es) if (e.type === EntryType.ConfChange) this.pendingConfIndex = this.log.lastIndex();
    // Only a membership change can remove this replica (no log slice per ordinary proposal).
    if (this.selfRemovalIndex === 0 && es.some((e) => e.type === EntryType.ConfChange)) this.selfRemovalIndex = this.findSelfRemoval(first, this.log.lastIndex());
    this.appendPending = true;
  }

  private appendEntries(entries: readonly Entry[]): void {
    let index = this.log.lastIndex();
    const stamped = entries.map((e) => ({ term: this.term, index: ++index, type: e.type, data: e.data }));
    this.log.append(stamped);
    // The leader's own copy counts toward commitment only once it is durable: see `stableTo`.
  }

  /**
   * The host made the log durable up to (index, term). A leader now counts its own copy, which
   * may commit entries (this is what lets a leader write its log in parallel with replicating it).
   */
  stableTo(index: number, term: number): void {
    if (this.role !== Role.Leader) return;
    if (this.log.term(index) !== term) return;
    const self = this.prs.get(this.id);
    if (!self || !self.maybeUpdate(index)) return;
    // Tell followers the new commit index (lazily: with the next append or heartbeat).
    if (this.maybeCommit() && !this.lazyCommit) this.appendPending = true;
  }

  /** Applied entries no longer count against the uncommitted-bytes bound. */
  reduceUncommitted(entries: readonly Entry[]): void {
    if (this.role !== Role.Leader) return;
    let bytes = 0;
    for (const e of entries) bytes += e.data.length;
    this.uncommittedBytes = Math.max(0, this.uncommittedBytes - bytes);
  }

  /** Advances the commit index to what a quorum of voters matched, if that entry is of this term. */
  private maybeCommit(): boolean {
    const before = this.log.committed;
    const mci = committedIndex(this.voters, (id) => this.prs.get(id)?.match ?? 0);
    if (!this.log.maybeCommit(mci, this.term)) return false;
    if (this.log.term(before) !== this.term && this.log.term(this.log.committed) === this.term) {
      // First commit of this term: reads queued behind the no-op may proceed.
      const waiting = this.readsAwaitingCommit;
      this.readsAwaitingCommit = [];
      for (const r of waiting) this.leaderReadIndex(r);
    }
    return true;
  }

  // ---------------------------------------------------------------- leader: replication

  /** An append to every follower that flow control lets through (`sendIfEmpty`: also to those that have every entry). */
  private bcastAppend(sendIfEmpty = true): void {
    for (const id of this.prs.keys()) {
      if (id !== this.id) this.sendAppend(id, sendIfEmpty);
    }
  }

  /** Heartbeats to every follower; `quiet`: a tick's round, skipping followers an append reached since the last round. */
  private bcastHeartbeat(context: string | undefined, quiesce = false, quiet = false): void {
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue;
      const appended = pr.appendedSinceBeat;
      pr.appendedSinceBeat = false;
      if (quiet && context === undefined && appended && pr.state === ProgressState.Replicate && !pr.inflights.full) continue;
      const m: Message = {
        type: MessageType.Heartbeat,
        group: this.group,
        from: this.id,
        to: id,
        term: this.term,
        commit: Math.min(pr.match, this.log.committed),
        ...(context !== undefined ? { context } : {}),
        ...(quiesce ? { quiesce: true } : {}),
      };
      pr.sentCommit = Math.max(pr.sentCommit, m.commit!);
      this.send(m);
    }
  }

  /** Sends entries (or a snapshot) to `to` if flow control allows; returns whether a message went out. */
  private sendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.prs.get(to);
    if (!pr || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    let entries: Entry[] | undefined;
    if (prevTerm !== undefined) {
      try {
        entries = this.log.slice(pr.next, this.log.lastIndex() + 1, this.maxAppendBytes);
      } catch {
        entries = undefined;
      }
    }
    if (prevTerm === undefined || entries === undefined) {
      return this.startSnapshot(pr);
    }
    if (entries.length === 0 && !sendIfEmpty) return false;
    pr.appendedSinceBeat = true;
    this.send({
      type: MessageType.App,
      group: this.group,
      from: this.id,
      to,
      term: this.term,
      index: prevIndex,
      logTerm: prevTerm,
      entries,
      commit: this.log.committed,
    });
    pr.sentEntries(prevIndex + entries.length, entries.length);
    pr.sentCommit = Math.max(pr.sentCommit, Math.min(this.log.committed, prevIndex + entries.length));
    return true;
  }

  private handleAppendResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    if (m.index === undefined) return; // a term notice only
    if (!m.reject && m.index > this.log.lastIndex()) {
      // An acknowledgement of entries we never had: no correct follower sends one.
      this.droppedMessages++;
      return;
    }
    if (m.reject) {
      let next = m.rejectHint ?? 0;
      if ((m.logTerm ?? 0) > 0) {
        // Skip every entry of ours whose term is above the follower's term at the hint.
        next = this.log.findConflictByTerm(next, m.logTerm ?? 0).index;
      }
      if (pr.maybeDecrTo(m.index, next)) {
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        this.sendAppend(m.from, true);
      }
      return;
    }
    const oldPaused = pr.isPaused();
    if (!pr.maybeUpdate(m.index)) {
      if (oldPaused && !pr.isPaused()) this.sendAppend(m.from, false);
      return;
    }
    switch (pr.state) {
      case ProgressState.Probe:
        pr.becomeReplicate();
        break;
      case ProgressState.Snapshot:
        if (pr.match >= pr.pendingSnapshot) {
          pr.becomeProbe();
          pr.becomeReplicate();
        }
        break;
      case ProgressState.Replicate:
        pr.inflights.freeLE(m.index);
        break;
    }
    if (this.maybeCommit() && !this.lazyCommit) {
      this.bcastAppend();
    } else if (oldPaused) {
      this.sendAppend(m.from, false);
    }
    while (this.sendAppend(m.from, false)) {
      // keep the pipeline full
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
      this.sendTimeoutNow(m.from);
    } else {
      this.maybeHandOver();
    }
  }

  private handleHeartbeatResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    pr.probeSent = false;
    if (pr.state === ProgressState.Replicate && pr.inflights.full) {
      // The follower is alive but the window is full: appends (or their acks) may have been lost.
      // Freeing one slot sends one more append; a gap makes the follower reject it, and the
      // rejection puts us back into probing from its real position.
      pr.inflights.freeFirstOne();
    }
    if (pr.state === ProgressState.Snapshot) {
      if (pr.snapshotChunksInFlight > 0) {
        // No acknowledgement for SNAPSHOT_STALL_BEATS heartbeat intervals: a chunk (or its
        // acknowledgement, or the host's read) may have been lost: resend from the acknowledged offset.
        pr.snapshotStalledBeats = pr.snapshotOffset === pr.snapshotOffsetAtBeat ? pr.snapshotStalledBeats + 1 : 0;
        pr.snapshotOffsetAtBeat = pr.snapshotOffset;
        if (pr.snapshotStalledBeats >= SNAPSHOT_STALL_BEATS) {
          pr.rewindSnapshot(pr.snapshotOffset);
          pr.snapshotProbing = true;
        }
      }
      this.sendSnapshotChunks(pr);
    } else if (pr.match < this.log.lastIndex()) {
      this.sendAppend(m.from, true);
    }
    if (m.context === undefined) return;
    const i = this.pendingReads.findIndex((r) => r.requestId === m.context);
    if (i < 0) return;
    const read = this.pendingReads[i]!;
    if (this.voters.includes(m.from)) read.acks.add(m.from);
    // Only voters of the configuration in effect count (a leader that is leaving is not one).
    let acks = 0;
    for (const id of read.acks) if (this.voters.includes(id)) acks++;
    if (acks < majority(this.voters.length)) return;
    // This read and every earlier one are confirmed by the same heartbeat round.
    const done = this.pendingReads.splice(0, i + 1);
    for (const r of done) this.releaseRead(r.requestId, r.index, r.from);
  }

  // ---------------------------------------------------------------- leader: snapshots

  private startSnapshot(pr: Progress): boolean {
    if (!pr.recentActive) return false;
    const snap = this.log.snapshot();
    if (!snap) return false; // the host has not taken one yet: try again later
    pr.becomeSnapshot(snap.meta.index);
    return this.sendSnapshotChunks(pr);
  }

  /** Sends (or asks the host for) chunks while the follower's window has room; returns whether anything went out. */
  private sendSnapshotChunks(pr: Progress): boolean {
    let sent = false;
    const window = pr.snapshotProbing ? 1 : this.snapshotWindow;
    while (pr.state === ProgressState.Snapshot && pr.snapshotChunksInFlight < window && !pr.snapshotLastSent && this.sendSnapshotChunk(pr)) sent = true;
    return sent;
  }

  /** Sends the chunk at `pr.snapshotNext` (or asks the host for it); false when nothing can go now. */
  private sendSnapshotChunk(pr: Progress): boolean {
    if (pr.snapshotReadAt >= 0 || pr.snapshotLastSent) return false;
    let snap: Snapshot | undefined = this.log.snapshot();
    if (!snap) return false;
    if (snap.meta.index !== pr.pendingSnapshot) {
      // The host replaced the snapshot: start over with the new one.
      pr.becomeSnapshot(snap.meta.index);
      snap = this.log.snapshot()!;
    }
    if (snap.streamed && snap.data.length === 0) {
      // The host serves the data chunk by chunk: ask it for the one the follower expects.
      this.snapshotReads.push({ to: pr.id, meta: snap.meta, offset: pr.snapshotNext });
      pr.snapshotReadAt = pr.snapshotNext;
      return true;
    }
    const total = snap.data.length;
    const offset = Math.min(pr.snapshotNext, total);
    const end = Math.min(total, offset + this.snapshotChunkBytes);
    this.send({
      type: MessageType.Snap,
      group: this.group,
      from: this.id,
      to: pr.id,
      term: this.term,
      snapshot: snap.meta,
      offset,
      chunk: snap.data.subarray(offset, end),
      total,
      done: end >= total,
    });
    pr.snapshotChunkSent(end, end >= total);
    return true;
  }

  /**
   * A follower's answer to a chunk: an acknowledgement of the bytes it holds (frees the window), or
   * a rejection naming its offset (a chunk was lost or came out of order, or it has no transfer
   * any more): the transfer is resent from there, once (the rejections of the other chunks of the
   * window that name the same offset are duplicates while that resend travels).
   */
  private handleSnapChunkResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    if (pr.state !== ProgressState.Snapshot || m.snapshot?.index !== pr.pendingSnapshot) return;
    const at = m.offset ?? 0;
    if (m.reject) {
      if (at === pr.snapshotRewoundAt && pr.snapshotOffset === at && pr.snapshotNext > at) return; // already resent from there
      pr.rewindSnapshot(at);
    } else if (!pr.snapshotAcked(at)) return; // a duplicate or stale acknowledgement
    this.sendSnapshotChunks(pr);
  }

  // ---------------------------------------------------------------- leader: reads and transfer

  private leaderReadIndex(m: Message): void {
    const requestId = m.context;
    if (requestId === undefined) return;
    if (this.voters.length === 1 && this.voters[0] === this.id) {
      if (this.log.term(this.log.committed) !== this.term) {
        this.readsAwaitingCommit.push(m);
        return;
      }
      this.releaseRead(requestId, this.log.committed, m.from);
      return;
    }
    if (this.log.term(this.log.committed) !== this.term) {
      // Our commit index may be stale until the no-op of this term commits.
      if (this.readsAwaitingCommit.length < this.maxPendingReads) this.readsAwaitingCommit.push(m);
      return;
    }
    if (this.pendingReads.length >= this.maxPendingReads) return;
    if (this.pendingReads.some((r) => r.requestId === requestId)) return;
    this.pendingReads.push({ requestId, index: this.log.committed, from: m.from, acks: new Set([this.id]) });
    this.bcastHeartbeat(requestId);
  }

  private releaseRead(requestId: string, index: number, from: NodeId): void {
    if (from === this.id || from === NONE) {
      this.readStates.push({ index, requestId });
    } else {
      this.send({ type: MessageType.ReadIndexResp, group: this.group, from: this.id, to: from, term: this.term, index, context: requestId });
    }
  }

  private leaderTransfer(transferee: NodeId): void {
    const pr = this.prs.get(transferee);
    if (!pr || pr.isLearner) return;
    if (this.leadTransferee === transferee) return;
    if (transferee === this.id) return;
    this.leadTransferee = transferee;
    this.electionElapsed = 0; // the transfer must finish within one election timeout
    if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(transferee);
    else this.sendAppend(transferee, true);
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send({ type: MessageType.TimeoutNow, group: this.group, from: this.id, to, term: this.term });
  }

  // ---------------------------------------------------------------- follower handlers

  private handleAppend(m: Message): void {
    const index = m.index ?? 0;
    if (index < this.log.committed) {
      this.send({ type: MessageType.AppResp, group: this.group, from: this.id, to: m.from, term: this.term, index: this.log.committed });
      return;
    }
    const lastNew = this.log.maybeAppend(index, m.logTerm ?? 0, m.commit ?? 0, m.entries ?? []);
    const cut = this.log.takeCut();
    if (cut !== 0) this.dropAcksFrom(cut);
    if (lastNew !== undefined) {
      this.send({ type: MessageType.AppResp, group: this.group, from: this.id, to: m.from, term: this.term, index: lastNew });
      return;
    }
    const hint = this.log.findConflictByTerm(Math.min(index, this.log.lastIndex()), m.logTerm ?? 0);
    this.send({
      type: MessageType.AppResp,
      group: this.group,
      from: this.id,
      to: m.from,
      term: this.term,
      index,
      reject: true,
      rejectHint: hint.index,
      logTerm: hint.term,
    });
  }

  /**
   * What a refused vote tells the candidate besides "no": our commit index and the term of the
   * entry there. Committed entries are committed whoever reports them, so a candidate whose log
   * holds that entry (same index and term, hence by log matching the same prefix) may commit up to
   * it. This is what frees a voter that has not learnt a configuration change committed and still
   * needs, under the old configuration, the vote of a replica the change demoted or removed, which
   * refuses it for holding a longer log (docs/raft.md, "Bugs the simulator found").
   */
  private commitPoint(): { commit: number; logTerm: number } | Record<string, never> {
    const commit = this.log.committed;
    const logTerm = commit === 0 ? undefined : this.log.term(commit);
    return logTerm === undefined ? {} : { commit, logTerm };
  }

  /** Commits up to a peer's reported commit point when our log holds that entry (see {@link commitPoint}). */
  private learnCommitPoint(commit: number, term: number): void {
    if (commit <= this.log.committed || commit > this.log.lastIndex() || term === 0) return;
    if (!this.log.matchTerm(commit, term)) return;
    this.log.commitTo(commit);
  }

  private handleHeartbeat(m: Message): void {
    this.log.commitTo(Math.min(m.commit ?? 0, this.log.lastIndex()));
    // Quiesce only when our log is exactly the leader's (else stay awake: the leader wakes on our
    // next message, e.g. a pre-vote after our election timeout, and catches us up).
    const commit = m.commit ?? 0;
    if (m.quiesce === true && this.role === Role.Follower && this.log.lastIndex() === commit && this.log.committed === commit) {
      this.quiescedState = true;
    }
    const resp: Message = {
      type: MessageType.HeartbeatResp,
      group: this.group,
      from: this.id,
      to: m.from,
      term: this.term,
      ...(m.context !== undefined ? { context: m.context } : {}),
    };
    this.send(resp);
  }

  private handleSnapshotChunk(m: Message): void {
    const meta = m.snapshot;
    if (!meta) return;
    const reply = (offset: number, reject: boolean): void =>
      this.send({ type: MessageType.SnapChunkResp, group: this.group, from: this.id, to: m.from, term: this.term, snapshot: meta, offset, reject });
    if (meta.index <= this.log.committed) {
      // Nothing new in it: tell the leader where we are.
      this.incomingSnapshot = undefined;
      this.send({ type: MessageType.AppResp, group: this.group, from: this.id, to: m.from, term: this.term, index: this.log.committed });
      return;
    }
    let inc = this.incomingSnapshot;
    if (!inc || inc.index !== meta.index || inc.term !== meta.term) {
      if ((m.offset ?? 0) !== 0) {
        reply(0, true);
        return;
      }
      inc = { index: meta.index, term: meta.term, chunks: [], received: 0 };
      this.incomingSnapshot = inc;
    }
    const offset = m.offset ?? 0;
    if (offset > inc.received) {
      reply(inc.received, true); // a gap: ask for what is missing
      return;
    }
    if (offset === inc.received && m.chunk && m.chunk.length > 0) {
      if (this.snapshotSink) {
        // Streamed: the host stores the chunk (on disk); refused, nothing is answered (the leader retries).
        if (!this.sinkTakes(meta, offset, m.chunk)) {
          this.droppedMessages++;
          if (offset === 0) this.incomingSnapshot = undefined;
          return;
        }
      } else inc.chunks.push(m.chunk.slice());
      inc.received += m.chunk.length;
    }
    if (m.done && inc.received === m.total) {
      const crc = m.crc !== undefined ? { crc: m.crc } : {};
      const snap: Snapshot = this.snapshotSink ? { meta, data: EMPTY, streamed: true, ...crc } : { meta, data: concatChunks(inc.chunks, inc.received), ...crc };
      this.incomingSnapshot = undefined;
      if (this.restore(snap)) {
        this.send({ type: MessageType.AppResp, group: this.group, from: this.id, to: m.from, term: this.term, index: this.log.lastIndex() });
      } else {
        this.send({ type: MessageType.AppResp, group: this.group, from: this.id, to: m.from, term: this.term, index: this.log.committed });
      }
      return;
    }
    reply(inc.received, false);
  }

  /** Installs a snapshot from the leader; returns false when it brings nothing new. */
  private restore(s: Snapshot): boolean {
    if (s.meta.index <= this.log.committed) return false;
    // A snapshot may predate our own addition (a new learner): we install it anyway, and learn
    // of our membership from the log entries that follow it.
    if (this.log.matchTerm(s.meta.index, s.meta.term)) {
      // Our log already holds the snapshot's last entry (same term): just commit up to it.
      this.log.commitTo(s.meta.index);
      return false;
    }
    if (this.acceptSnapshot && !this.hostAccepts(s)) {
      this.droppedMessages++;
      return false;
    }
    // The log after our commit index is replaced by the snapshot's: acknowledgements of it still
    // queued would promise entries this node will not hold.
    this.dropAcksFrom(this.log.committed + 1);
    this.log.restore(s);
    this.applyConf(s.meta.conf);
    return true;
  }

  /**
   * Drops the acknowledgements of entries at or after `index` still queued in `msgs` (not yet
   * handed out): the log was cut there (a conflicting append, or a snapshot replacing it), so
   * those entries will never be on this node's disk, and a leader of their term must not count
   * them. A queued acknowledgement leaves only after its Ready's write, which no longer holds
   * them. The leader learns the follower's real log from its next append's answer.
   */
  private dropAcksFrom(index: number): void {
    let dropped = false;
    for (const m of this.msgs) {
      if (m.type === MessageType.AppResp && !m.reject && (m.index ?? 0) >= index) dropped = true;
    }
    if (!dropped) return;
    // A new array (not spliced in place): RawNode's liveness scan remembers positions in the old one.
    this.msgs = this.msgs.filter((m) => !(m.type === MessageType.AppResp && !m.reject && (m.index ?? 0) >= index));
  }

  private sinkTakes(meta: SnapshotMeta, offset: number, chunk: Uint8Array): boolean {
    try {
      return this.snapshotSink!.chunk(meta, offset, chunk);
    } catch {
      return false;
    }
  }

  private hostAccepts(s: Snapshot): boolean {
    try {
      return this.acceptSnapshot!(s);
    } catch {
      return false;
    }
  }

  // ---------------------------------------------------------------- membership

  private validateConfChange(cc: ConfChange): void {
    if (!Number.isInteger(cc.nodeId) || cc.nodeId <= 0) throw new ProposalDroppedError(`invalid node id ${cc.nodeId}`);
    const isVoter = this.voters.includes(cc.nodeId);
    const isLearner = this.learners.includes(cc.nodeId);
    switch (cc.type) {
      case ConfChangeType.AddVoter:
        if (isVoter) throw new ProposalDroppedError(`node ${cc.nodeId} is already a voter`);
        return;
      case ConfChangeType.AddLearner:
        if (isLearner) throw new ProposalDroppedError(`node ${cc.nodeId} is already a learner`);
        if (isVoter && this.voters.length === 1) throw new ProposalDroppedError('cannot demote the last voter');
        return;
      case ConfChangeType.RemoveNode:
        if (!isVoter && !isLearner) throw new ProposalDroppedError(`node ${cc.nodeId} is not a member`);
        if (isVoter && this.voters.length === 1) throw new ProposalDroppedError('cannot remove the last voter');
        return;
      default:
        throw new ProposalDroppedError(`unknown configuration change type ${String(cc.type)}`);
    }
  }

  /** Applies a committed membership change (called as the host applies the entry); returns the new configuration. */
  applyConfChange(cc: ConfChange): ConfState {
    const cur = this.confState();
    const next = nextConfState(cur, cc);
    if (next === cur) return cur; // never leave a group without voters
    this.applyConf(next);
    if (this.role === Role.Leader) {
      if (this.selfRemovalIndex !== 0 && this.selfRemovalIndex <= this.log.applying) this.selfRemovalIndex = 0;
      if (this.leadTransferee !== NONE && !this.voters.includes(this.leadTransferee)) this.leadTransferee = NONE;
      // Under the new configuration a quorum may already hold more: commit it, tell everyone.
      this.maybeCommit();
      this.bcastAppend();
      // A removed (or demoted) leader does not just step down: a remaining voter that has not
      // learnt that the change committed still counts this node in its quorum, and would wait
      // for its vote. It keeps leading (taking no proposals) until it hands over to a voter
      // holding its whole log (see `maybeHandOver`).
      this.maybeHandOver();
    }
    return this.confState();
  }

  /**
   * The rule for a leader that is no longer a voter: once a voter of the configuration in
   * effect has matched this leader's whole log, tell it to campaign at once (TimeoutNow); the
   * leader steps down when that campaign reaches it with the higher term. Retried after every
   * election timeout (the transfer's) until it succeeds. The target's log is at least as up to
   * date as any other replica's, so it wins under either configuration (the old one, if it has
   * not yet applied the change, where this node's vote counts and is granted; or the new one).
   */
  private maybeHandOver(): void {
    if (this.role !== Role.Leader || this.voters.includes(this.id) || this.leadTransferee !== NONE) return;
    const last = this.log.lastIndex();
    const target = this.voters.find((v) => (this.prs.get(v)?.match ?? 0) >= last);
    if (target === undefined) return; // not yet: every append response tries again
    this.leadTransferee = target;
    this.electionElapsed = 0; // the transfer times out after one election timeout
    this.sendTimeoutNow(target);
  }

  /** The index of the first configuration change in [lo, hi] that removes or demotes this replica (0: none). */
  private findSelfRemoval(lo: number, hi: number): number {
    if (hi < lo) return 0;
    let ents: Entry[];
    try {
      ents = this.log.slice(Math.max(lo, this.log.firstIndex()), hi + 1);
    } catch {
      return 0;
    }
    for (const e of ents) {
      if (e.type !== EntryType.ConfChange) continue;
      let cc: ConfChange;
      try {
        cc = decodeConfChange(e.data);
      } catch {
        continue;
      }
      if (cc.nodeId === this.id && (cc.type === ConfChangeType.AddLearner || cc.type === ConfChangeType.RemoveNode)) return e.index;
    }
    return 0;
  }

  private applyConf(conf: ConfState): void {
    this.voters = [...new Set(conf.voters)].sort((a, b) => a - b);
    this.learners = [...new Set(conf.learners)].filter((l) => !this.voters.includes(l)).sort((a, b) => a - b);
    const members = new Set([...this.voters, ...this.learners]);
    for (const id of [...this.prs.keys()]) if (!members.has(id)) this.prs.delete(id);
    const last = this.log.lastIndex();
    for (const id of members) {
      const learner = this.learners.includes(id);
      const pr = this.prs.get(id);
      if (pr) {
        pr.isLearner = learner;
      } else {
        const fresh = new Progress(id, last + 1, this.maxInflight, learner);
        fresh.recentActive = true;
        if (id === this.id) fresh.match = this.log.stableLastIndex();
        this.prs.set(id, fresh);
      }
    }
  }

  // ---------------------------------------------------------------- output

  private send(m: Message): void {
    this.msgs.push(m);
  }
}

/** An append's entries: contiguous after `index`, terms in [max(1, logTerm), term] non-decreasing, known types. */
function wellFormedAppend(m: Message): boolean {
  const ents = m.entries!;
  const index = m.index ?? 0;
  if (index + ents.length > MAX_RAFT_INDEX) return false;
  let prevTerm = Math.max(1, m.logTerm ?? 0);
  for (let i = 0; i < ents.length; i++) {
    const e = ents[i]!;
    if (e.index !== index + 1 + i || !Number.isSafeInteger(e.term) || e.term < prevTerm || e.term > m.term) return false;
    if (!(e.data instanceof Uint8Array)) return false;
    prevTerm = e.term;
    if (e.type === EntryType.ConfChange) {
      try {
        decodeConfChange(e.data);
      } catch {
        return false;
      }
    } else if (e.type !== EntryType.Normal) {
      return false;
    }
  }
  return true;
}

function validIds(ids: readonly NodeId[] | undefined): boolean {
  return Array.isArray(ids) && ids.every((id) => Number.isSafeInteger(id) && id > 0);
}

function concatChunks(chunks: readonly Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c.subarray(0, Math.min(c.length, total - off)), off);
    off += c.length;
    if (off >= total) break;
  }
  return out;
}
