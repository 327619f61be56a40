/**
 * The host-facing driver of one Raft replica: feeds inputs to `Raft` and hands its outputs out
 * as one `Ready` batch at a time, enforcing its contract (see `Ready` in types.ts): start the
 * durable write → send early messages → apply → once durable, send the other messages → advance.
 * Heartbeats and their responses at a durable term may also be taken on their own, at any time
 * (`takeLivenessMessages`), so that a slow fsync does not silence a leader.
 *
 * With `readiesInFlight: 2` a second Ready may be taken before the first is advanced (overlapped
 * rounds: the host stages and starts round N+1's write while round N's fsync runs, as etcd raft's
 * asynchronous storage writes). The core tracks what was handed out apart from what is durable:
 * a later Ready carries only entries not handed out before, its hard state is compared with the
 * last one handed out, the durable term (for liveness messages) and a leader's own match move only
 * at `advance`, and Readies are advanced in the order they were taken.
 */
import { decodeConfChange, Raft, type RaftConfig } from './raft.js';
import {
  EntryType,
  MessageType,
  Role,
  type ConfChange,
  type ConfState,
  type Entry,
  type HardState,
  type Message,
  type NodeId,
  type Ready,
  type ReadState,
  type SnapshotChunk,
  type SoftState,
} from './types.js';

/** A snapshot of a replica's state for status pages. */
export interface RaftStatus {
  readonly id: NodeId;
  readonly term: number;
  readonly vote: NodeId;
  readonly leader: NodeId;
  readonly role: Role;
  readonly commit: number;
  readonly applied: number;
  readonly lastIndex: number;
  readonly firstIndex: number;
  readonly conf: ConfState;
  /** Leader only: each peer's matched index. */
  readonly matched: ReadonlyMap<NodeId, number>;
  /** Peer messages ignored as malformed, out of bounds or impossible from a correct peer (since start). */
  readonly droppedMessages: number;
}

/** Whether `entries` hold a configuration change. */
function hasConfChange(entries: readonly Entry[]): boolean {
  for (const e of entries) if (e.type === EntryType.ConfChange) return true;
  return false;
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

/** One Raft replica driven through Ready batches. Usable for many groups in one process (one RawNode per group). */
export class RawNode {
  /** The protocol state machine (exposed for tests and status). */
  readonly raft: Raft;
  private prevSoft: SoftState;
  /** The last hard state handed out in a Ready (what the next Ready's is compared with). */
  private prevHard: HardState;
  /** The last hard state of an advanced Ready (or the one started with): durable. */
  private durableHard: HardState;
  /** Readies handed out and not yet advanced, oldest first. */
  private readonly outstanding: Ready[] = [];
  /** Most Readies handed out and not yet advanced (1, or 2 for overlapped rounds). */
  private readonly readiesInFlight: number;
  /**
   * Whether the newest outstanding Ready carries a snapshot or a configuration change to apply
   * (no second Ready may follow it, see `mayTakeReady`); set when it is handed out, so the check,
   * made for every replica in every pass of the host's loop, scans nothing.
   */
  private newestBlocks = false;
  /**
   * How far `takeLivenessMessages` looked into the core's message queue `msgs` while the durable
   * term was `term`: the first `upTo` messages hold no liveness message it would take.
   */
  private readonly livenessScan: { msgs: readonly Message[]; term: number; upTo: number } = { msgs: [], term: -1, upTo: 0 };

  constructor(cfg: RaftConfig) {
    this.raft = new Raft(cfg);
    this.prevSoft = { leader: this.raft.lead, role: this.raft.role };
    this.prevHard = this.raft.hardState();
    this.durableHard = this.prevHard;
    const n = cfg.readiesInFlight ?? 1;
    if (n !== 1 && n !== 2) throw new RangeError(`raft: readiesInFlight must be 1 or 2, not ${n}`);
    this.readiesInFlight = n;
  }

  /** How many Readies are handed out and not yet advanced. */
  get readiesOutstanding(): number {
    return this.outstanding.length;
  }

  /** Advances the logical clock by one tick (elections, heartbeats, check-quorum). */
  tick(): void {
    this.raft.tick();
  }

  /**
   * Feeds a message received from a peer. A message of another group is a routing bug of the
   * host and throws. Messages no correct peer sends are dropped (and counted in the status):
   * the local-only types (`Hup`, `Beat`), messages from this replica or for another one, a
   * request a follower forwards (`Prop`, `ReadIndex`, `TransferLeader`) with a term, and any
   * other message without one.
   */
  step(m: Message): void {
    if (m.group !== this.raft.group) throw new Error(`raft: message for group ${m.group} stepped into group ${this.raft.group}`);
    const forwardable = isForwardable(m);
    if (
      m.type === MessageType.Hup ||
      m.type === MessageType.Beat ||
      m.from === this.raft.id ||
      m.to !== this.raft.id ||
      (m.term === 0) !== forwardable
    ) {
      this.raft.droppedMessages++;
      return;
    }
    this.raft.step(m);
  }

  /** Proposes one or more application commands (batched into one append). */
  propose(...data: Uint8Array[]): void {
    this.raft.propose(data);
  }

  /** Proposes a membership change; one may be pending at a time. */
  proposeConfChange(cc: ConfChange): void {
    this.raft.proposeConfChange(cc);
  }

  /** Requests a linearizable read; a ReadState with `requestId` appears once safe. */
  readIndex(requestId: string): void {
    this.raft.readIndex(requestId);
  }

  /** Asks for leadership to move to `transferee`. */
  transferLeader(transferee: NodeId): void {
    this.raft.transferLeader(transferee);
  }

  /** Campaigns now. */
  campaign(): void {
    this.raft.campaign();
  }

  /** Leader with lazy commit: sends followers the commit index held back; returns whether anything was sent (see `Raft.flushCommit`). */
  flushCommit(): boolean {
    return this.raft.flushCommit();
  }

  /** Leader with lazy commit: whether `flushCommit` would send anything (sends nothing). */
  commitNoticesOwed(): boolean {
    return this.raft.commitNoticesOwed();
  }

  /**
   * Leader: the host's answer to one of `Ready.snapshotReads` (at any time, even while a Ready is
   * outstanding): the chunk goes out in the next Ready's messages if the transfer still waits for
   * it; a stale answer is ignored. Returns whether it will be sent.
   */
  snapshotChunk(c: SnapshotChunk): boolean {
    return this.raft.snapshotChunk(c);
  }

  /** Leader: the followers a snapshot is being sent to, and its index (empty on other roles). */
  snapshotTransfers(): Array<{ readonly to: NodeId; readonly index: number }> {
    return this.raft.snapshotTransfers();
  }

  /** Tells the core that `id` could not be reached. */
  reportUnreachable(id: NodeId): void {
    this.raft.reportUnreachable(id);
  }

  /** Whether there is anything for the host to do. */
  hasReady(): boolean {
    if (!this.mayTakeReady()) return false;
    const r = this.raft;
    if (r.hasPendingAppend()) return true;
    if (r.msgs.length > 0 || r.readStates.length > 0 || r.snapshotReads.length > 0) return true;
    if (r.log.unstable.hasNext()) return true;
    if (r.log.hasNextCommittedEntries() && (this.outstanding.length === 0 || this.nextCommittedEntries().length > 0)) return true;
    const ph = this.prevHard;
    if (r.term !== ph.term || r.vote !== ph.vote || r.log.committed !== ph.commit) return true; // (no hard state object built)
    if (r.lead !== this.prevSoft.leader || r.role !== this.prevSoft.role) return true;
    return false;
  }

  /**
   * Takes the next batch of work. The host must handle it as `Ready` says (start its durable
   * write, send early messages, apply, send the other messages once the write is durable) and
   * then call `advance` before asking for another Ready.
   */
  ready(): Ready {
    if (!this.mayTakeReady()) {
      throw new Error(this.outstanding.length === 0 ? 'raft: no Ready may be taken now' : 'raft: ready() called again before advance()');
    }
    const r = this.raft;
    r.flushAppends();
    const hs = r.hardState();
    const soft: SoftState = { leader: r.lead, role: r.role };
    const committedEntries = this.nextCommittedEntries();
    if (committedEntries.length > 0) r.log.applying = committedEntries[committedEntries.length - 1]!.index;
    const snapshot = r.log.unstable.snapshotInProgress ? undefined : r.log.unstable.snapshot;
    const early: Message[] = [];
    const late: Message[] = [];
    for (const m of r.msgs) (EARLY_TYPES.has(m.type) ? early : late).push(m);
    const rd: Ready = {
      entries: r.log.unstable.nextEntries(),
      committedEntries,
      earlyMessages: early,
      messages: late,
      readStates: r.readStates,
      ...(sameHardState(hs, this.prevHard) ? {} : { hardState: hs }),
      ...(soft.leader !== this.prevSoft.leader || soft.role !== this.prevSoft.role ? { softState: soft } : {}),
      ...(snapshot ? { snapshot } : {}),
      ...(r.snapshotReads.length > 0 ? { snapshotReads: r.snapshotReads } : {}),
    };
    r.msgs = [];
    r.readStates = [];
    r.snapshotReads = [];
    r.log.unstable.acceptInProgress();
    if (rd.softState) this.prevSoft = rd.softState;
    if (rd.hardState) this.prevHard = rd.hardState;
    this.outstanding.push(rd);
    this.newestBlocks = rd.snapshot !== undefined || hasConfChange(committedEntries);
    return rd;
  }

  /**
   * Whether a Ready may be handed out now: none is outstanding; or, with `readiesInFlight: 2`,
   * one is and it carries no snapshot and no configuration change to apply (both take effect at
   * `advance`, and what the host does after them, such as taking a snapshot with the current
   * configuration, must not see a later Ready applied meanwhile), and the core holds no snapshot
   * not yet handed out (a snapshot is taken only when nothing is in flight).
   */
  private mayTakeReady(): boolean {
    const n = this.outstanding.length;
    if (n === 0) return true;
    if (n >= this.readiesInFlight) return false;
    if (this.newestBlocks) return false; // the newest (outstanding[n - 1]) has a snapshot or a configuration change
    const u = this.raft.log.unstable;
    return !(u.snapshot && !u.snapshotInProgress);
  }

  /**
   * The committed entries the next Ready hands out to apply. While another Ready is in flight
   * they stop before the first configuration change (it is applied in a Ready taken when
   * nothing else is in flight, so a configuration takes effect at once at its `advance`).
   */
  private nextCommittedEntries(): Entry[] {
    const r = this.raft;
    // A streamed snapshot is installed over several host turns: what follows it is applied in a later Ready.
    if (r.log.unstable.snapshot?.streamed) return [];
    const ents = r.log.nextCommittedEntries(r.maxApplyBytes);
    if (this.outstanding.length === 0) return ents;
    const cc = ents.findIndex((e) => e.type === EntryType.ConfChange);
    return cc < 0 ? ents : ents.slice(0, cc);
  }

  /**
   * Takes the messages that may go out at any time, even while a Ready is outstanding: a
   * leader's heartbeats and the heartbeat responses, if they carry a term this replica has
   * already made durable (the term of the last advanced hard state, or the one it started with).
   * Neither carries entries nor acknowledges a write (a heartbeat's commit is at most what the
   * receiver matched; a response only says "I follow you in this term"), so a host whose fsync
   * is slow sends them without waiting for it: its followers hear their leader (no election)
   * and the leader hears its quorum (check-quorum, ReadIndex). Everything else stays, in order,
   * for the next Ready. Deterministic: a function of the core's state only.
   */
  takeLivenessMessages(): readonly Message[] {
    const r = this.raft;
    const msgs = r.msgs;
    // Only the messages queued since the last call are looked at: the earlier ones were (and
    // nothing changed the durable term since, see `livenessScan`). A host calls this after every
    // message it steps during a round, so rescanning the whole queue each time would be quadratic.
    const scan = this.livenessScan;
    const term = this.durableHard.term;
    const from = scan.msgs === msgs && scan.term === term ? scan.upTo : 0;
    if (from >= msgs.length) return NO_MESSAGES;
    let out: Message[] | undefined;
    let keep: Message[] | undefined;
    for (let i = from; i < msgs.length; i++) {
      const m = msgs[i]!;
      if ((m.type === MessageType.Heartbeat || m.type === MessageType.HeartbeatResp) && m.term === term) {
        if (!out) {
          out = [];
          keep = msgs.slice(0, i);
        }
        out.push(m);
      } else keep?.push(m);
    }
    if (out) r.msgs = keep!;
    scan.msgs = r.msgs;
    scan.term = term;
    scan.upTo = r.msgs.length;
    return out ?? NO_MESSAGES;
  }

  /**
   * The read states (ReadIndex rounds confirmed by a quorum) produced since the last Ready or the
   * last call, taken now instead of with the next Ready: a host may release linearizable reads
   * while a Ready waits for its fsync, since a read depends on no write of that Ready (only on its
   * index being applied). Later ones come with the next Ready as before.
   */
  takeReadStates(): readonly ReadState[] {
    const rs = this.raft.readStates;
    if (rs.length === 0) return NO_READ_STATES;
    this.raft.readStates = [];
    return rs;
  }

  /**
   * Acknowledges that a Ready was persisted, sent and applied. Configuration changes among the
   * committed entries take effect here. Returns the configuration changes applied (in order).
   */
  advance(rd: Ready): ConfState | undefined {
    if (rd !== this.outstanding[0]) {
      throw new Error(this.outstanding.includes(rd) ? 'raft: advance() out of order (advance the oldest Ready first)' : 'raft: advance() with a Ready that is not outstanding');
    }
    this.outstanding.shift();
    const r = this.raft;
    if (rd.hardState) this.durableHard = rd.hardState;
    const lastEntry = rd.entries[rd.entries.length - 1];
    if (lastEntry) {
      r.log.unstable.stableTo(lastEntry.index, lastEntry.term);
      r.stableTo(lastEntry.index, lastEntry.term);
    }
    if (rd.snapshot) {
      r.log.unstable.stableSnapTo(rd.snapshot.meta.index);
      const si = rd.snapshot.meta.index;
      if (r.log.applied < si) r.log.applied = si;
      if (r.log.applying < si) r.log.applying = si;
    }
    let conf: ConfState | undefined;
    if (rd.committedEntries.length > 0) {
      for (const e of rd.committedEntries) {
        if (e.type === EntryType.ConfChange) conf = r.applyConfChange(decodeConfChange(e.data));
      }
      r.log.appliedTo(rd.committedEntries[rd.committedEntries.length - 1]!.index);
      r.reduceUncommitted(rd.committedEntries);
    }
    return conf;
  }

  /** The replica's current state. */
  status(): RaftStatus {
    const r = this.raft;
    const matched = new Map<NodeId, number>();
    if (r.role === Role.Leader) {
      for (const id of [...r.confState().voters, ...r.confState().learners]) {
        matched.set(id, r.progress(id)?.match ?? 0);
      }
    }
    return {
      id: r.id,
      term: r.term,
      vote: r.vote,
      leader: r.lead,
      role: r.role,
      commit: r.log.committed,
      applied: r.log.applied,
      lastIndex: r.log.lastIndex(),
      firstIndex: r.log.firstIndex(),
      conf: r.confState(),
      matched,
      droppedMessages: r.droppedMessages,
    };
  }
}

/** The empty answer of `takeLivenessMessages` (shared: callers only read it). */
const NO_MESSAGES: readonly Message[] = Object.freeze([]);
const NO_READ_STATES: readonly ReadState[] = Object.freeze([]);

/**
 * Messages only a leader sends, which depend on nothing this Ready makes durable: the leader may
 * send them while its own disk write is in flight (Raft thesis §10.2.1).
 */
const EARLY_TYPES = new Set<string>([
  MessageType.App,
  MessageType.Heartbeat,
  MessageType.Snap,
  MessageType.TimeoutNow,
  MessageType.ReadIndexResp,
]);


function isForwardable(m: Message): boolean {
  return m.type === MessageType.Prop || m.type === MessageType.ReadIndex || m.type === MessageType.TransferLeader;
}
