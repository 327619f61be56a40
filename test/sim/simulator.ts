/**
 * The deterministic cluster simulator: a seeded PRNG, a virtual clock and event queue, a
 * network that delays, drops, duplicates, reorders and partitions, disks whose writes take
 * time and are lost on a crash unless synced, pauses, and KV clients whose call/return history
 * is checked for linearizability. Safety invariants are checked after every event.
 */
import {
  ConfChangeType,
  EntryType,
  MessageType,
  decodeConfChange,
  Role,
  SeededRandom,
  ProposalDroppedError,
  type MemoryStorage,
  type Message,
  type NodeId,
  type Raft,
  type Ready,
} from '../../src/raft/index.js';
import { SimHost, type HostOptions } from './host.js';
import { encodePut, requestKey } from './kv-fsm.js';
import type { KvOperation } from './linearizability.js';

/** One fault the schedule injects. */
export type Fault =
  | { readonly kind: 'none' }
  | { readonly kind: 'crash'; readonly node: number; readonly unsyncedSurvives: boolean }
  | { readonly kind: 'restart'; readonly node: number }
  /** Crash and come back `afterMs` later (a quick reboot: the classic way to forget a vote). */
  | { readonly kind: 'reboot'; readonly node: number; readonly afterMs: number; readonly unsyncedSurvives: boolean }
  /**
   * Crash triggered by an event: arms `node` to crash at its next `on` event and come back
   * `afterMs` later. `vote`: right after it sends a granted vote or a vote request (its own
   * vote), which must then be on disk. `append`: right after it hands a write with log entries
   * to its disk, before the write is synced (lost unless `unsyncedSurvives`); a leader's appends
   * to its followers have left already. `sync`: the same write, at the last moment before it
   * would have been durable (answers to a leader's appends may have arrived meanwhile).
   * Disarmed by any crash and by the final heal.
   */
  | {
      readonly kind: 'crashOn';
      readonly node: number;
      readonly on: 'vote' | 'append' | 'sync';
      readonly afterMs: number;
      readonly unsyncedSurvives: boolean;
    }
  | { readonly kind: 'pause'; readonly node: number; readonly forMs: number }
  | { readonly kind: 'partition'; readonly sides: readonly (readonly number[])[] }
  | { readonly kind: 'oneWay'; readonly from: number; readonly to: number }
  | { readonly kind: 'bridge'; readonly bridge: number }
  | { readonly kind: 'lossy'; readonly dropRate: number; readonly duplicateRate: number }
  | { readonly kind: 'transfer'; readonly to: number }
  /** A membership change proposed at the current leader (refused changes are ignored). */
  | { readonly kind: 'membership'; readonly op: 'addLearner' | 'addVoter' | 'remove'; readonly node: number }
  /** Forged traffic: the config's `forge(batch, view)` makes messages, delivered to their `to` shortly after. */
  | { readonly kind: 'forge'; readonly batch: number }
  | { readonly kind: 'heal' };

/** A read-only view of the cluster for `SimConfig.forge`. */
export interface SimView {
  /** Virtual ms now. */
  readonly now: number;
  /** Every node id (initial voters first, then the spares). */
  readonly ids: readonly NodeId[];
  isUp(id: NodeId): boolean;
  /** The node's protocol state (do not mutate). */
  raft(id: NodeId): Raft;
  /** The node's durable storage (do not mutate). */
  disk(id: NodeId): MemoryStorage;
}

/** A fault applied `afterMs` after the previous step. */
export interface ScheduleStep {
  readonly afterMs: number;
  readonly fault: Fault;
}

/** Everything that determines a run. Same config, same run. */
export interface SimConfig {
  readonly seed: number;
  readonly nodes: number;
  /** Extra nodes that start empty, outside the group, for membership changes. */
  readonly spareNodes?: number;
  readonly schedule: readonly ScheduleStep[];
  readonly clients?: number;
  readonly keys?: readonly string[];
  readonly host?: HostOptions;
  /** Virtual ms allowed after the final heal for a leader to emerge and a put to commit. */
  readonly livenessBoundMs?: number;
  readonly tickMs?: number;
  /** Client request timeout (the op's outcome becomes unknown). */
  readonly clientTimeoutMs?: number;
  /**
   * Every message between nodes passes through this on its way (for example the peer wire
   * codec: encode, then decode and validate as the receiver would); whatever it throws fails the run.
   */
  readonly codec?: (m: Message) => Message;
  /** Makes the messages of each `forge` fault (see `Fault`). */
  readonly forge?: (batch: number, view: SimView) => readonly Message[];
  /**
   * Throw on a violated safety invariant (default true). Off only for runs whose forged
   * messages make claims no correct member would (a Byzantine member, outside Raft's fault
   * model): they are then counted in `SimResult.safetyViolations`.
   */
  readonly checkSafety?: boolean;
  /** Fail the run when no put commits within `livenessBoundMs` after healing (default true). */
  readonly checkLiveness?: boolean;
  /** Receives one line per fault, delivered message, role change and applied change (debugging). */
  readonly trace?: (line: string) => void;
}

/** What a run produced. */
export interface SimResult {
  readonly history: KvOperation[];
  /** Virtual ms from the final heal until a put committed. */
  readonly recoveryMs: number;
  readonly events: number;
  readonly elections: number;
  readonly committedEntries: number;
  readonly snapshotsInstalled: number;
  readonly messagesDropped: number;
  readonly membershipChanges: number;
  /** Crashes triggered by events (`crashOn` faults that fired). */
  readonly triggeredCrashes: number;
  /** Forged messages delivered (from `forge` faults). */
  readonly forgedDelivered: number;
  /** Readies taken while another one's write was syncing (`host.readiesInFlight: 2`). */
  readonly overlappedReadies: number;
  /** Crashes that landed with two writes in flight (the newer one, at least, lost unless it survived). */
  readonly crashesOverlapped: number;
  /** Safety invariant violations counted instead of thrown (`checkSafety: false`). */
  readonly safetyViolations: number;
  /** Whether a put committed within the liveness bound after healing. */
  readonly recovered: boolean;
}

/** A safety property was violated; the message says which and where. */
export class InvariantViolation extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'InvariantViolation';
  }
}

interface SimEvent {
  readonly at: number;
  readonly seq: number;
  readonly run: () => void;
}

/** A binary min-heap of events ordered by (time, insertion order). */
class EventQueue {
  private heap: SimEvent[] = [];
  private seq = 0;

  push(at: number, run: () => void): void {
    const e: SimEvent = { at, seq: this.seq++, run };
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }

  pop(): SimEvent | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l]!, h[m]!)) m = l;
        if (r < h.length && less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }

  get size(): number {
    return this.heap.length;
  }
}

function less(a: SimEvent, b: SimEvent): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

interface NodeSlot {
  readonly host: SimHost;
  up: boolean;
  /** Bumped on crash: events scheduled for an older incarnation are ignored. */
  epoch: number;
  pausedUntil: number;
  /** An armed event-triggered crash (the `crashOn` fault). */
  crashOn: Extract<Fault, { kind: 'crashOn' }> | undefined;
  /** Events that arrived while paused, replayed on resume in order. */
  held: (() => void)[];
  /** Readies whose write is syncing (at most the host's readiesInFlight). */
  syncing: number;
  /** When the last write started completes: a later one completes no earlier (writes are in order). */
  syncDoneAt: number;
  lastCommitSeen: number;
  pendingPuts: Map<string, (ok: boolean) => void>;
  /** Reads issued here: `minIndex` is the highest index committed anywhere when the read was issued. */
  pendingReads: Map<string, { key: string; minIndex: number; index: number | undefined; reply: (v: string | undefined) => void }>;
}

interface ClientOp {
  readonly op: KvOperation;
  readonly reqId: number;
  done: boolean;
}

/** Runs one simulated cluster under one fault schedule. */
export class Simulator {
  private readonly rng: SeededRandom;
  private readonly q = new EventQueue();
  private now = 0;
  private readonly slots = new Map<NodeId, NodeSlot>();
  private readonly ids: NodeId[];
  private readonly blocked = new Set<string>();
  private dropRate = 0;
  private duplicateRate = 0;
  private readonly tickMs: number;
  private readonly clientTimeoutMs: number;
  private readonly keys: readonly string[];

  // invariant bookkeeping
  private readonly leaderOfTerm = new Map<number, NodeId>();
  private readonly entryAt = new Map<string, { prevTerm: number | undefined; data: string }>();
  private readonly committedTermAt = new Map<number, number>();
  /** The term of the node that first observed index i committed: a leader of any later term must hold it. */
  private readonly committedDuringTerm = new Map<number, number>();
  private readonly appliedAt = new Map<number, string>();
  /** The highest index any node has seen committed so far. */
  private highestCommitted = 0;

  readonly history: KvOperation[] = [];
  private events = 0;
  private elections = 0;
  private snapshotsInstalled = 0;
  private messagesDropped = 0;
  private membershipChanges = 0;
  private triggeredCrashes = 0;
  private forgedDelivered = 0;
  /** Readies taken while another one's write was syncing (overlapped rounds). */
  private overlappedReadies = 0;
  /** Crashes that landed with two writes in flight. */
  private crashesOverlapped = 0;
  private safetyViolations = 0;
  private clientsRunning = true;
  private reqSeq = 0;
  private leaderHint: NodeId = 0;

  constructor(private readonly cfg: SimConfig) {
    this.rng = new SeededRandom(cfg.seed);
    this.tickMs = cfg.tickMs ?? 10;
    this.clientTimeoutMs = cfg.clientTimeoutMs ?? 400;
    this.keys = cfg.keys ?? ['x', 'y'];
    this.ids = Array.from({ length: cfg.nodes + (cfg.spareNodes ?? 0) }, (_, i) => i + 1);
    const initialVoters = this.ids.slice(0, cfg.nodes);
    for (const id of this.ids) {
      this.slots.set(id, {
        host: new SimHost(id, cfg.seed, id <= cfg.nodes ? initialVoters : undefined, cfg.host ?? {}),
        up: true,
        epoch: 0,
        pausedUntil: 0,
        crashOn: undefined,
        held: [],
        syncing: 0,
        syncDoneAt: 0,
        lastCommitSeen: 0,
        pendingPuts: new Map(),
        pendingReads: new Map(),
      });
    }
  }

  // ------------------------------------------------------------ main loop

  /** Runs the schedule, heals everything, checks liveness; throws InvariantViolation on any safety failure. */
  run(): SimResult {
    for (const id of this.ids) this.scheduleTick(id, this.rng.nextInt(this.tickMs));
    const clients = this.cfg.clients ?? 3;
    for (let c = 1; c <= clients; c++) this.at(this.rng.nextInt(20), () => this.clientNext(c));

    let t = 0;
    for (const step of this.cfg.schedule) {
      t += step.afterMs;
      const fault = step.fault;
      this.at(t, () => this.inject(fault));
    }
    const healAt = t + 50;
    this.runUntil(healAt);
    this.healAll();
    const bound = this.cfg.livenessBoundMs ?? 5000;
    const probeStart = this.now;
    let committedAt: number | undefined;
    this.probePut(probeStart + bound, (at) => {
      committedAt = at;
    });
    this.runUntil(probeStart + bound, () => committedAt !== undefined);
    if (committedAt === undefined && (this.cfg.checkLiveness ?? true)) {
      throw new InvariantViolation(
        `liveness: no put committed within ${bound} ms after healing (leaders: ${JSON.stringify(this.describeRoles())})`,
      );
    }
    // Let in-flight client operations finish or time out, then stop.
    this.clientsRunning = false;
    this.runUntil(this.now + this.clientTimeoutMs + 50);
    return {
      history: this.history,
      recoveryMs: committedAt === undefined ? Number.POSITIVE_INFINITY : committedAt - probeStart,
      events: this.events,
      elections: this.elections,
      committedEntries: this.committedTermAt.size,
      snapshotsInstalled: this.snapshotsInstalled,
      messagesDropped: this.messagesDropped,
      membershipChanges: this.membershipChanges,
      triggeredCrashes: this.triggeredCrashes,
      forgedDelivered: this.forgedDelivered,
      overlappedReadies: this.overlappedReadies,
      crashesOverlapped: this.crashesOverlapped,
      safetyViolations: this.safetyViolations,
      recovered: committedAt !== undefined,
    };
  }

  /** The node's protocol state (for checks after a run). */
  raft(id: NodeId): Raft {
    return this.slots.get(id)!.host.node.raft;
  }

  /** The node's durable storage (for checks after a run). */
  disk(id: NodeId): MemoryStorage {
    return this.slots.get(id)!.host.disk;
  }

  /** Every node id. */
  get nodeIds(): readonly NodeId[] {
    return this.ids;
  }

  private trace(line: string): void {
    this.cfg.trace?.(`${String(this.now).padStart(6)} ${line}`);
  }

  /** A violated safety invariant: thrown, or only counted when `checkSafety` is off. */
  private violation(msg: string): void {
    if (this.cfg.checkSafety ?? true) throw new InvariantViolation(msg);
    this.safetyViolations++;
  }

  private runUntil(until: number, stop?: () => boolean): void {
    for (;;) {
      if (stop?.()) return;
      const e = this.q.pop();
      if (!e) return;
      if (e.at > until) {
        this.q.push(e.at, e.run); // put it back for later
        this.now = until;
        return;
      }
      this.now = e.at;
      this.events++;
      if (this.events > 5_000_000) throw new Error('simulation ran away (too many events)');
      e.run();
    }
  }

  private at(time: number, run: () => void): void {
    this.q.push(Math.max(time, this.now), run);
  }

  /** Runs `fn` against a node's current incarnation only when it is up; holds it while paused. */
  private onNode(id: NodeId, fn: () => void): () => void {
    const slot = this.slots.get(id)!;
    const epoch = slot.epoch;
    return () => {
      if (!slot.up || slot.epoch !== epoch) return;
      if (slot.pausedUntil > this.now) {
        slot.held.push(fn);
        return;
      }
      fn();
      this.afterNodeEvent(id);
    };
  }

  // ------------------------------------------------------------ node driving

  private scheduleTick(id: NodeId, delay: number): void {
    this.at(
      this.now + delay,
      this.onNode(id, () => {
        this.slots.get(id)!.host.node.tick();
        this.scheduleTick(id, this.tickMs);
      }),
    );
  }

  /** After anything happened on a node: check invariants and start its next Ready. */
  private afterNodeEvent(id: NodeId): void {
    const slot = this.slots.get(id)!;
    if (!slot.up) return; // it crashed during the event (an event-triggered crash)
    this.checkNode(id);
    const rd = slot.host.startReady();
    if (!rd) {
      if (slot.syncing === 0 || !this.cfg.host?.livenessWhileSyncing) return;
      for (const m of slot.host.node.takeLivenessMessages()) {
        this.send(m);
        if (!slot.up) return;
      }
      return;
    }
    if (slot.syncing > 0) this.overlappedReadies++;
    if (this.cfg.trace) this.traceReady(id, rd);
    this.checkReadyEntries(id);
    // What need not wait for the disk happens now: apply committed entries, send early messages.
    const out = slot.host.applyReady();
    for (const e of out.applied) {
      const fingerprint = `${e.term}/${e.type}/${Buffer.from(e.data).toString('base64')}`;
      const prev = this.appliedAt.get(e.index);
      if (prev !== undefined && prev !== fingerprint) {
        this.violation(`state machine safety: node ${id} applied ${fingerprint} at ${e.index}, another applied ${prev}`);
      }
      this.appliedAt.set(e.index, fingerprint);
    }
    if (rd.snapshot) this.snapshotsInstalled++;
    for (const m of out.messages) {
      this.send(m);
      if (!slot.up) return;
    }
    for (const rs of out.readStates) {
      const r = slot.pendingReads.get(rs.requestId);
      if (!r) continue;
      if (rs.index < r.minIndex) {
        // A read must see every write that completed before it began: its index may not be
        // below anything committed (anywhere) when it was issued.
        this.violation(`read index: node ${id} released read ${rs.requestId} at index ${rs.index}, but ${r.minIndex} was committed when it was issued`);
      }
      r.index = rs.index;
    }
    this.completeRequests(slot);
    slot.syncing++;
    // Writes complete in the order they started (one engine batch after another).
    const doneAt = Math.max(this.now + (slot.host.needsSync(rd) ? 1 + this.rng.nextInt(4) : 0), slot.syncDoneAt);
    slot.syncDoneAt = doneAt;
    const trigger = slot.crashOn;
    if (trigger?.on === 'sync' && rd.entries.length > 0) {
      // Queued before the write's completion at the same instant, so it runs first.
      slot.crashOn = undefined;
      this.at(doneAt, this.onNode(id, () => this.triggeredCrash(id, trigger)));
    }
    this.at(
      doneAt,
      this.onNode(id, () => {
        slot.syncing--;
        for (const m of slot.host.completeReady()) {
          this.send(m);
          if (!slot.up) return;
        }
      }),
    );
    if (trigger?.on === 'append' && rd.entries.length > 0) this.triggeredCrash(id, trigger);
  }

  /** An armed `crashOn` fault fires: crash now, come back `afterMs` later. */
  private triggeredCrash(id: NodeId, f: Extract<Fault, { kind: 'crashOn' }>): void {
    if (this.cfg.trace) this.trace(`node ${id}: crash on ${f.on}`);
    this.triggeredCrashes++;
    this.crashNode(id, f.unsyncedSurvives);
    this.at(this.now + f.afterMs, () => this.restart(id));
  }

  private traceReady(id: NodeId, rd: Ready): void {
    const r = this.slots.get(id)!.host.node.raft;
    if (rd.softState) this.trace(`node ${id}: ${rd.softState.role} term ${r.term} leader ${rd.softState.leader}`);
    if (rd.entries.length > 0) {
      this.trace(`node ${id}: append ${rd.entries.map((e) => `${e.index}/${e.term}${e.type === 1 ? `:${JSON.stringify(decodeConfChange(e.data))}` : e.data.length === 0 ? ':noop' : ''}`).join(' ')}`);
    }
    if (rd.hardState) this.trace(`node ${id}: hard state ${JSON.stringify(rd.hardState)}`);
    for (const e of rd.committedEntries) {
      if (e.type === 1) this.trace(`node ${id}: apply ${e.index} ${JSON.stringify(decodeConfChange(e.data))}`);
    }
  }

  private completeRequests(slot: NodeSlot): void {
    const fsm = slot.host.fsm;
    for (const [key, reply] of slot.pendingPuts) {
      const [c, r] = key.split(':').map(Number) as [number, number];
      if (fsm.hasApplied(c, r)) {
        slot.pendingPuts.delete(key);
        reply(true);
      }
    }
    for (const [reqId, r] of slot.pendingReads) {
      if (r.index !== undefined && fsm.applied >= r.index) {
        slot.pendingReads.delete(reqId);
        r.reply(fsm.data.get(r.key));
      }
    }
  }

  // ------------------------------------------------------------ invariants

  private checkNode(id: NodeId): void {
    const raft = this.slots.get(id)!.host.node.raft;
    if (raft.role === Role.Leader) {
      const prev = this.leaderOfTerm.get(raft.term);
      if (prev === undefined) {
        this.leaderOfTerm.set(raft.term, id);
        this.elections++;
        this.checkLeaderCompleteness(id);
      } else if (prev !== id) {
        this.violation(`election safety: nodes ${prev} and ${id} both lead term ${raft.term}`);
      }
      this.leaderHint = id;
    }
    const slot = this.slots.get(id)!;
    const log = raft.log;
    if (raft.role === Role.Leader) {
      // A leader counts its own copy toward commitment only once it is on its disk.
      const self = raft.progress(id)?.match ?? 0;
      const disk = slot.host.disk;
      if (self > disk.lastIndex() || (self >= disk.firstIndex() && disk.term(self) !== log.term(self))) {
        this.violation(`durability: leader ${id} counts its own match ${self} with only ${disk.lastIndex()} on disk`);
      }
    }
    if (raft.role === Role.Leader && log.committed > slot.lastCommitSeen && log.term(log.committed) !== raft.term) {
      // Raft's figure-8 rule: counting replicas commits only an entry of the leader's own term
      // (older entries commit with it). A leader's commit index moves only by counting.
      this.violation(
        `commit rule: leader ${id} of term ${raft.term} advanced its commit to ${log.committed}, an entry of term ${log.term(log.committed)}`,
      );
    }
    if (log.committed > slot.lastCommitSeen) {
      for (let i = Math.max(slot.lastCommitSeen + 1, log.firstIndex()); i <= log.committed; i++) {
        const t = log.term(i);
        if (t === undefined) continue;
        const prev = this.committedTermAt.get(i);
        if (prev !== undefined && prev !== t) {
          this.violation(`committed entry changed: index ${i} term ${prev} vs node ${id} term ${t}`);
        }
        this.committedTermAt.set(i, t);
        if (!this.committedDuringTerm.has(i)) this.committedDuringTerm.set(i, raft.term);
      }
      slot.lastCommitSeen = log.committed;
      if (log.committed > this.highestCommitted) this.highestCommitted = log.committed;
    }
  }

  private checkLeaderCompleteness(id: NodeId): void {
    const raft = this.slots.get(id)!.host.node.raft;
    const log = raft.log;
    for (const [i, t] of this.committedTermAt) {
      // Leader completeness speaks of leaders of terms after the commit; a stale leader of an
      // older term (for example one resuming from a pause) need not hold it.
      if (this.committedDuringTerm.get(i)! >= raft.term) continue;
      if (i < log.firstIndex()) continue; // covered by its snapshot
      const mine = log.term(i);
      if (mine !== t) {
        this.violation(`leader completeness: new leader ${id} has term ${mine} at committed index ${i} (committed term ${t})`);
      }
    }
  }

  /**
   * Log matching, checked incrementally: an (index, term) pair always names the same entry and
   * predecessor term. And one configuration change at a time: when a leader appends one, no
   * other configuration change in its log is unapplied.
   */
  private checkReadyEntries(id: NodeId): void {
    const slot = this.slots.get(id)!;
    const rd = slot.host.outstanding!;
    const raft = slot.host.node.raft;
    const log = raft.log;
    if (raft.role === Role.Leader) {
      for (const e of rd.entries) {
        if (e.type !== EntryType.ConfChange || e.term !== raft.term) continue;
        const lo = Math.max(log.applied + 1, log.firstIndex());
        const earlier = e.index > lo ? log.slice(lo, e.index).filter((x) => x.type === EntryType.ConfChange) : [];
        if (earlier.length > 0) {
          this.violation(
            `one change at a time: leader ${id} appended a configuration change at ${e.index} while the one at ${earlier[0]!.index} is unapplied (applied ${log.applied})`,
          );
        }
      }
    }
    for (const e of rd.entries) {
      const key = `${e.index}:${e.term}`;
      const prevTerm = e.index > 1 ? log.term(e.index - 1) : 0;
      const data = `${e.type}/${Buffer.from(e.data).toString('base64')}`;
      const seen = this.entryAt.get(key);
      if (!seen) {
        this.entryAt.set(key, { prevTerm, data });
        continue;
      }
      if (seen.data !== data) this.violation(`log matching: two different entries at index ${e.index} term ${e.term} (node ${id})`);
      if (seen.prevTerm !== undefined && prevTerm !== undefined && seen.prevTerm !== prevTerm) {
        this.violation(`log matching: entries at ${e.index}/${e.term} have different predecessors (${seen.prevTerm} vs ${prevTerm}, node ${id})`);
      }
    }
  }

  /**
   * What a message promises must already be on the sender's simulated disk when it leaves: a
   * granted vote (and a candidate's request, which carries its vote for itself) the vote or a
   * higher term; an acknowledgement of entries those entries. Otherwise a crash right after the
   * send forgets the promise (a second vote in the same term, an acknowledged entry lost).
   */
  private checkDurablePromise(m: Message): void {
    const slot = this.slots.get(m.from);
    if (!slot) return;
    const disk = slot.host.disk;
    const hs = disk.initialState().hardState;
    const voted = (candidate: NodeId): boolean => hs.term > m.term || (hs.term === m.term && hs.vote === candidate);
    if (m.type === MessageType.VoteResp && !m.reject && !voted(m.to)) {
      this.violation(`durability: node ${m.from} granted its vote to ${m.to} in term ${m.term} before it was on disk (disk: ${JSON.stringify(hs)})`);
    } else if (m.type === MessageType.Vote && !voted(m.from)) {
      this.violation(`durability: node ${m.from} asked for votes in term ${m.term} before its own vote was on disk (disk: ${JSON.stringify(hs)})`);
    } else if (m.type === MessageType.AppResp && !m.reject && m.index !== undefined && disk.lastIndex() < m.index) {
      this.violation(`durability: node ${m.from} acknowledged index ${m.index} with only ${disk.lastIndex()} on disk`);
    }
  }

  // ------------------------------------------------------------ network

  private send(sent: Message): void {
    this.checkDurablePromise(sent);
    this.dispatch(sent);
    const trigger = this.slots.get(sent.from)?.crashOn;
    const voted = (sent.type === MessageType.VoteResp && !sent.reject) || sent.type === MessageType.Vote;
    if (trigger?.on === 'vote' && voted) this.triggeredCrash(sent.from, trigger);
  }

  private dispatch(sent: Message): void {
    const m = this.cfg.codec ? this.cfg.codec(sent) : sent;
    if (this.blocked.has(`${m.from}>${m.to}`)) {
      this.messagesDropped++;
      return;
    }
    if (this.dropRate > 0 && this.rng.nextFloat() < this.dropRate) {
      this.messagesDropped++;
      return;
    }
    const copies = this.duplicateRate > 0 && this.rng.nextFloat() < this.duplicateRate ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const delay = 1 + this.rng.nextInt(5);
      this.at(
        this.now + delay,
        this.onNode(m.to, () => {
          // Partitions cut messages in flight too.
          if (this.blocked.has(`${m.from}>${m.to}`)) {
            this.messagesDropped++;
            return;
          }
          if (this.cfg.trace) this.trace(`deliver ${describeMessage(m)}`);
          this.slots.get(m.to)!.host.node.step(m);
        }),
      );
    }
  }

  // ------------------------------------------------------------ faults

  private inject(f: Fault): void {
    if (this.cfg.trace) this.trace(`FAULT ${JSON.stringify(f)}`);
    switch (f.kind) {
      case 'none':
        return;
      case 'crash':
        this.crashNode(this.nodeId(f.node), f.unsyncedSurvives);
        return;
      case 'crashOn': {
        const slot = this.slots.get(this.nodeId(f.node))!;
        if (slot.up) slot.crashOn = f;
        return;
      }
      case 'restart':
        this.restart(this.nodeId(f.node));
        return;
      case 'reboot': {
        const id = this.nodeId(f.node);
        this.inject({ kind: 'crash', node: f.node, unsyncedSurvives: f.unsyncedSurvives });
        this.at(this.now + f.afterMs, () => this.restart(id));
        return;
      }
      case 'pause': {
        const id = this.nodeId(f.node);
        const slot = this.slots.get(id)!;
        if (!slot.up || slot.pausedUntil > this.now) return;
        slot.pausedUntil = this.now + f.forMs;
        this.at(slot.pausedUntil, () => this.resume(id));
        return;
      }
      case 'partition': {
        const sides = f.sides.map((s) => s.map((n) => this.nodeId(n)));
        for (const a of sides) for (const b of sides) if (a !== b) for (const x of a) for (const y of b) this.blocked.add(`${x}>${y}`);
        return;
      }
      case 'oneWay':
        if (this.nodeId(f.from) !== this.nodeId(f.to)) this.blocked.add(`${this.nodeId(f.from)}>${this.nodeId(f.to)}`);
        return;
      case 'bridge': {
        // Everyone but the bridge is split into two halves; only the bridge sees both.
        const bridge = this.nodeId(f.bridge);
        const others = this.ids.filter((i) => i !== bridge);
        const half = Math.ceil(others.length / 2);
        const a = others.slice(0, half);
        const b = others.slice(half);
        for (const x of a) for (const y of b) {
          this.blocked.add(`${x}>${y}`);
          this.blocked.add(`${y}>${x}`);
        }
        return;
      }
      case 'lossy':
        this.dropRate = f.dropRate;
        this.duplicateRate = f.duplicateRate;
        return;
      case 'transfer': {
        const leader = this.ids.find((i) => this.slots.get(i)!.up && this.slots.get(i)!.host.node.raft.role === Role.Leader);
        if (leader !== undefined) {
          this.onNode(leader, () => this.slots.get(leader)!.host.node.transferLeader(this.nodeId(f.to)))();
        }
        return;
      }
      case 'membership': {
        const leader = this.ids.find((i) => this.slots.get(i)!.up && this.slots.get(i)!.host.node.raft.role === Role.Leader);
        if (leader === undefined) return;
        const nodeId = this.nodeId(f.node);
        const type = f.op === 'addLearner' ? ConfChangeType.AddLearner : f.op === 'addVoter' ? ConfChangeType.AddVoter : ConfChangeType.RemoveNode;
        this.onNode(leader, () => {
          try {
            this.slots.get(leader)!.host.node.proposeConfChange({ type, nodeId });
            this.membershipChanges++;
          } catch (e) {
            if (!(e instanceof ProposalDroppedError)) throw e;
          }
        })();
        return;
      }
      case 'forge': {
        if (!this.cfg.forge) return;
        const view: SimView = {
          now: this.now,
          ids: this.ids,
          isUp: (id) => this.slots.get(id)?.up ?? false,
          raft: (id) => this.slots.get(id)!.host.node.raft,
          disk: (id) => this.slots.get(id)!.host.disk,
        };
        for (const m of this.cfg.forge(f.batch, view)) {
          // A host routes by group: a message for a group it does not run goes nowhere here.
          if (!this.slots.has(m.to) || m.group !== (this.cfg.host?.group ?? 1)) continue;
          this.forgedDelivered++;
          this.at(
            this.now + 1 + this.rng.nextInt(5),
            this.onNode(m.to, () => this.slots.get(m.to)!.host.node.step(m)),
          );
        }
        return;
      }
      case 'heal':
        this.blocked.clear();
        this.dropRate = 0;
        this.duplicateRate = 0;
        return;
    }
  }

  private crashNode(id: NodeId, unsyncedSurvives: boolean): void {
    const slot = this.slots.get(id)!;
    if (!slot.up) return;
    const inFlight = slot.host.inFlight.length;
    if (inFlight > 1) this.crashesOverlapped++;
    // Writes reach the disk in order: of two in flight, the OS may have flushed the first only.
    slot.host.crash(unsyncedSurvives, unsyncedSurvives && inFlight > 1 ? 1 + this.rng.nextInt(inFlight) : Infinity);
    slot.up = false;
    slot.epoch++;
    slot.syncing = 0;
    slot.syncDoneAt = 0;
    slot.held = [];
    slot.pausedUntil = 0;
    slot.crashOn = undefined;
    slot.pendingPuts.clear();
    slot.pendingReads.clear();
  }

  private nodeId(n: number): NodeId {
    return this.ids[((n % this.ids.length) + this.ids.length) % this.ids.length]!;
  }

  private restart(id: NodeId): void {
    const slot = this.slots.get(id)!;
    if (slot.up) return;
    slot.host.restart();
    slot.up = true;
    slot.lastCommitSeen = 0;
    this.scheduleTick(id, this.rng.nextInt(this.tickMs));
  }

  private resume(id: NodeId): void {
    const slot = this.slots.get(id)!;
    if (!slot.up || slot.pausedUntil > this.now) return;
    const held = slot.held;
    slot.held = [];
    const epoch = slot.epoch;
    for (const fn of held) {
      if (!slot.up || slot.epoch !== epoch) return; // crashed meanwhile (an event-triggered crash)
      fn();
      this.afterNodeEvent(id);
    }
    this.afterNodeEvent(id);
  }

  private healAll(): void {
    this.inject({ kind: 'heal' });
    for (const id of this.ids) {
      const slot = this.slots.get(id)!;
      slot.crashOn = undefined;
      if (!slot.up) this.restart(id);
      else if (slot.pausedUntil > this.now) {
        slot.pausedUntil = this.now;
        this.resume(id);
      }
    }
  }

  private describeRoles(): Record<number, string> {
    const out: Record<number, string> = {};
    for (const id of this.ids) {
      const r = this.slots.get(id)!.host.node.raft;
      out[id] = `${r.role}@${r.term} commit=${r.log.committed} last=${r.log.lastIndex()}`;
    }
    return out;
  }

  // ------------------------------------------------------------ clients

  private clientNext(clientId: number): void {
    if (!this.clientsRunning) return;
    const key = this.keys[this.rng.nextInt(this.keys.length)]!;
    const isPut = this.rng.nextInt(2) === 0;
    const reqId = ++this.reqSeq;
    const op: KvOperation = isPut
      ? { clientId, kind: 'put', key, value: `v${reqId}`, call: this.now }
      : { clientId, kind: 'get', key, call: this.now };
    const c: ClientOp = { op, reqId, done: false };
    this.history.push(op);
    const finish = (output?: { value: string | undefined }): void => {
      if (c.done) return;
      c.done = true;
      if (output === undefined) {
        // Timed out: a put's effect is unknown; a get had none and is dropped from the history.
        if (op.kind === 'get') this.history.splice(this.history.indexOf(op), 1);
      } else {
        op.ret = this.now;
        if (op.kind === 'get') op.output = output.value;
      }
      this.at(this.now + 1 + this.rng.nextInt(10), () => this.clientNext(clientId));
    };
    this.at(this.now + this.clientTimeoutMs, () => finish(undefined));
    this.submit(c, finish, 0);
  }

  private pickTarget(): NodeId {
    if (this.leaderHint !== 0 && this.rng.nextInt(4) !== 0) return this.leaderHint;
    return this.ids[this.rng.nextInt(this.ids.length)]!;
  }

  private submit(c: ClientOp, finish: (o?: { value: string | undefined }) => void, attempt: number): void {
    if (c.done) return;
    const target = this.pickTarget();
    const op = c.op;
    const reply = (fn: () => void): void => this.at(this.now + 1 + this.rng.nextInt(3), fn);
    const retry = (): void => this.at(this.now + 10 + this.rng.nextInt(20), () => this.submit(c, finish, attempt + 1));
    this.at(
      this.now + 1 + this.rng.nextInt(3),
      this.onNode(target, () => {
        const slot = this.slots.get(target)!;
        const node = slot.host.node;
        const rkey = requestKey(op.clientId, c.reqId);
        if (op.kind === 'put') {
          if (slot.host.fsm.hasApplied(op.clientId, c.reqId)) {
            reply(() => finish({ value: undefined }));
            return;
          }
          try {
            node.propose(encodePut({ c: op.clientId, r: c.reqId, k: op.key, v: op.value! }));
          } catch (e) {
            if (!(e instanceof ProposalDroppedError)) throw e;
            reply(retry); // definitely not in any log: safe to send again
            return;
          }
          slot.pendingPuts.set(rkey, () => reply(() => finish({ value: undefined })));
        } else {
          slot.pendingReads.set(rkey, {
            key: op.key,
            minIndex: this.highestCommitted,
            index: undefined,
            reply: (v) => reply(() => finish({ value: v })),
          });
          node.readIndex(rkey);
        }
      }),
    );
  }

  /** A dedicated client that keeps putting until one put commits after healing. */
  private probePut(deadline: number, onCommit: (at: number) => void): void {
    const clientId = 1_000_000;
    let done = false;
    const attempt = (): void => {
      if (done || this.now > deadline) return;
      const reqId = ++this.reqSeq;
      const target = this.pickTarget();
      this.at(
        this.now + 1,
        this.onNode(target, () => {
          const slot = this.slots.get(target)!;
          if (slot.host.node.raft.role !== Role.Leader) return;
          try {
            slot.host.node.propose(encodePut({ c: clientId, r: reqId, k: '__probe', v: String(reqId) }));
          } catch (e) {
            if (!(e instanceof ProposalDroppedError)) throw e;
            return;
          }
          slot.pendingPuts.set(requestKey(clientId, reqId), () => {
            if (!done) {
              done = true;
              onCommit(this.now);
            }
          });
        }),
      );
      this.at(this.now + 50, attempt);
    };
    attempt();
  }
}

/** One line describing a message (for traces). */
export function describeMessage(m: Message): string {
  const parts = [`${m.type} ${m.from}->${m.to} t${m.term}`];
  if (m.index !== undefined) parts.push(`i${m.index}`);
  if (m.logTerm !== undefined) parts.push(`lt${m.logTerm}`);
  if (m.entries && m.entries.length > 0) parts.push(`ents[${m.entries[0]!.index}..${m.entries[m.entries.length - 1]!.index}]`);
  if (m.commit !== undefined) parts.push(`c${m.commit}`);
  if (m.reject) parts.push('REJECT');
  if (m.context !== undefined) parts.push(`ctx=${m.context}`);
  return parts.join(' ');
}
