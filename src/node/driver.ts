/**
 * The driver of a node: one tick timer and one ready loop for all the replicas it hosts, on an
 * injected `Scheduler` (scheduler.ts) — the wall clock in kvd, virtual time under the simulator.
 * Each ready round stages every group's writes → sends the early messages (a leader's appends and
 * heartbeats) and applies what is committed → fsyncs the round's one batch → sends the messages
 * that promise durability (acknowledgements, votes) → advances. While a round waits for its
 * fsync, ticks and received messages still send the heartbeats and heartbeat responses the cores
 * produce (they promise nothing about the disk), so a slow fsync does not cost a leader its
 * followers or its quorum. It also receives peers' messages,
 * stages an installed snapshot's records in time slices, and offers the deadline and map waits
 * that go by the same clock. One file (~690 lines) because the round's stages, the sync pace, the
 * turn gathering and the deferred state writes share the round state and its ordering rules;
 * the pure parts already live apart (quiescence.ts, scheduler.ts, snapshot-inbox.ts).
 *
 * With NodeOptions.overlapRounds, rounds overlap: while one round's fsync runs, what arrives is
 * staged into the next round at once (each group's second Ready, RaftConfig.readiesInFlight 2),
 * whose early messages go out and whose committed entries are applied; its write starts when the
 * first one's ends, and its acknowledgements wait for it. At most two rounds are in flight (one
 * syncing, one staging), finished in order. With NodeOptions.syncPaceMs as well, a round whose
 * fsync would start sooner than that after the previous one's start is held (still staging what
 * arrives) until then: fewer, larger fsyncs on a busy node; the log store writes only flushed
 * units while a round is in flight, and everything asked for again once the node is idle.
 * With NodeOptions.gatherTurn, the round staged behind a finished fsync is held one scheduler
 * turn (the same hold and store mode as the pace), and what became ready in that turn is staged
 * into it just before its write starts; with NodeOptions.gatherTurns above 1, held that many
 * turns, staging what became ready after each.
 */
import { MessageType, type Message, type NodeId, type Ready } from '../raft/index.js';
import { UnavailableError } from './backend.js';
import { withDeadline } from './deadline.js';
import { electionTimeoutMs, NODE_DEFAULTS, type NodeParts } from './node-options.js';
import type { ShardReplica } from './replica.js';
import type { ReplicaSet } from './replica-set.js';
import type { Scheduler, TimerHandle } from './scheduler.js';
import { beforeVoteRequest, DRAINING_CONTEXT, keepalive, LIVENESS_GROUP, stepQuiescence } from './quiescence.js';
import { SNAPSHOT_CHUNK_SYNC_BYTES } from './snapshot-inbox.js';
import { traceWrite } from '../write-trace.js';

/** Longest stretch (ms) of computing and staging a snapshot's records replacement before yielding. */
const INSTALL_SLICE_MS = 10;

/**
 * Staged bytes after which a snapshot install waits for its writes before staging more. The store
 * writes one batch at a time and the install stages faster than the disk takes it: without a wait
 * every unit staged while a batch is in flight joins the next one, so a large shard's replacement
 * (its values included) piled up in the heap and went to LevelDB as batches of hundreds of MiB
 * (session `catchup2`, docs/memory.md "Catch-up memory"). `NodeOptions.installFlushBytes` overrides it.
 */
export const INSTALL_FLUSH_BYTES = 16 * 1024 * 1024;

/** One ready round: the Readies it staged (in staging order) and what its write needs. */
interface Round {
  readonly items: [ShardReplica, Ready][];
  /** Log entries staged. */
  entries: number;
  /** Whether its acknowledgements wait for an fsync (entries, a term or vote, a snapshot, or chunks past the bound). */
  mustSync: boolean;
  /** Staged while another round's fsync ran. */
  readonly overlapped: boolean;
  /** The round's write, when staging handed it to the engine before applying (`stageRound`'s `startWrite`), and when. */
  written?: { readonly durable: Promise<void>; readonly startedAt: number };
}

/** Runs the tick timer and the ready loop of one node's replicas. */
export class NodeDriver {
  private tickTimer: TimerHandle | undefined;
  /** Armed while held-back commit notices wait for NodeOptions.commitNoticeDelayMs (see `noticesLater`). */
  private noticeTimer: TimerHandle | undefined;
  private readyScheduled = false;
  /** Set while `runReady` stages (it is synchronous; this guards re-entry through callbacks). */
  private staging = false;
  /** The round whose write is being made durable (its acknowledgements and advance wait for it). */
  private syncing: Round | undefined;
  /** Overlapped rounds: the round staged while `syncing` syncs (or while `paceTimer` holds it); its write starts when that one's ends. */
  private next: Round | undefined;
  private readonly overlap: boolean;
  /** NodeOptions.syncPaceMs (0 without overlapped rounds). */
  private readonly paceMs: number;
  /** NodeOptions.gatherTurn (false without overlapped rounds). */
  private readonly gather: boolean;
  /** NodeOptions.gatherTurns: the turns a round is held for gathering (at least 1). */
  private readonly gatherTurns: number;
  /** Turns the round held for gathering (not for the pace) has been held so far; 0 when none is. */
  private gatherHeldTurns = 0;
  /** Armed while `next` is held back by the sync pace or for a turn (gatherTurn); it starts `next`'s write. */
  private paceTimer: TimerHandle | undefined;
  /** NodeOptions.syncBeforeApply. */
  private readonly syncBeforeApply: boolean;
  /** Armed while the store's deferred write of state records alone waits (NodeOptions.stateWriteDelayMs); `lazyWrite` starts it. */
  private lazyTimer: TimerHandle | undefined;
  private lazyWrite: (() => void) | undefined;
  /** When the last synced batch started (scheduler clock, set by the store's `onSyncStart`), for the sync pace. */
  private lastSyncStartMs = Number.NEGATIVE_INFINITY;
  /** `stop` callers waiting for the rounds in flight to end. */
  private idleWaiters: (() => void)[] = [];
  private stopped = false;
  /** The last hard state handed to storage per group (to tell whether a Ready needs an fsync). */
  private readonly syncedHardState = new Map<number, { term: number; vote: number }>();
  private readonly scheduler: Scheduler;
  /** When something was last sent to each peer (a keepalive goes to a peer nothing else reached during a tick). */
  private readonly lastSentMs = new Map<NodeId, number>();
  /**
   * Draining (before a planned stop): this node refuses leadership (drops `TimeoutNow`) and tells
   * its peers with every tick's keepalive, so their reconcilers hand it none; see `KvNode.drain`.
   */
  draining = false;
  /** When the tick timer last ran (this node's clock); a long gap means the process was paused or starved. */
  lastTickMs: number | undefined;
  /** When a tick last came late by more than two ticks (a pause or starvation of the process): leases need fresh proof. */
  lateTickAtMs = 0;

  constructor(
    private readonly parts: NodeParts,
    private readonly replicas: ReplicaSet,
  ) {
    this.scheduler = parts.scheduler;
    this.overlap = parts.opts.overlapRounds ?? NODE_DEFAULTS.overlapRounds;
    // Held rounds hold votes and acknowledgements too: at most a tenth of an election timeout.
    this.paceMs = this.overlap ? Math.min(parts.opts.syncPaceMs ?? NODE_DEFAULTS.syncPaceMs, this.electionMs() / 10) : 0;
    this.gather = this.overlap && (parts.opts.gatherTurn ?? NODE_DEFAULTS.gatherTurn);
    this.gatherTurns = Math.max(1, Math.floor(parts.opts.gatherTurns ?? NODE_DEFAULTS.gatherTurns));
    this.syncBeforeApply = parts.opts.syncBeforeApply ?? NODE_DEFAULTS.syncBeforeApply;
    // State records alone wait this long for a synced batch to take them (RaftLogStore.deferLazy):
    // a busy node's next round does, and so does a lone writer's next write within the delay.
    const stateDelayMs = parts.opts.stateWriteDelayMs ?? NODE_DEFAULTS.stateWriteDelayMs;
    if (stateDelayMs > 0) {
      parts.store.deferLazy = (write) => {
        // The newest write is the one to run; a timer already armed keeps its time.
        this.lazyWrite = write;
        if (this.lazyTimer !== undefined) return;
        this.lazyTimer = this.scheduler.setTimeout(() => this.writeLazyNow(), stateDelayMs);
        this.lazyTimer.unref?.();
      };
    }
    // While a round is in flight, a held round's units must not join the batch after the one in
    // flight (`updateWriteMode` sets the store's writeOnlyFlushed then, and clears it when idle).
    if (this.paceMs > 0) {
      // The pace runs from each fsync's real start (a round's flush may wait for a batch in flight).
      parts.store.onSyncStart = () => {
        this.lastSyncStartMs = this.scheduler.now();
      };
    }
  }

  /** Whether a round is in progress: staging, waiting for its fsync, or held by the sync pace. */
  private get inReady(): boolean {
    return this.staging || this.syncing !== undefined || this.paceTimer !== undefined;
  }

  /** Whether `stop()` was called. */
  get isStopped(): boolean {
    return this.stopped;
  }

  /** Starts ticking (every `tickMs`) and runs a first ready round. */
  start(): void {
    const tickMs = this.parts.opts.tickMs ?? NODE_DEFAULTS.tickMs;
    this.tickTimer = this.scheduler.setInterval(() => this.tick(), tickMs);
    this.tickTimer.unref?.();
    this.scheduleReady();
  }

  /** Starts the store's deferred write of state records alone now, if one waits (see the constructor). */
  private writeLazyNow(): void {
    this.lazyTimer?.cancel();
    this.lazyTimer = undefined;
    const write = this.lazyWrite;
    this.lazyWrite = undefined;
    write?.();
  }

  /** Stops ticking and scheduling rounds; resolves once the round in progress (if any) has finished. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.tickTimer?.cancel();
    this.writeLazyNow(); // nothing waits for a delay on a stopping node
    this.noticeTimer?.cancel();
    this.noticeTimer = undefined;
    this.releaseHeld();
    // Rounds in flight end when their writes do (not on this node's clock, which may stand still).
    while (this.inReady) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /** Resolves after `ms` on the scheduler's clock. */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.scheduler.setTimeout(resolve, ms));
  }

  /** Forgets a dropped group's last synced hard state. */
  forget(group: number): void {
    this.syncedHardState.delete(group);
  }

  private tick(): void {
    if (this.stopped) return;
    const { opts, id } = this.parts;
    const tickMs = opts.tickMs ?? NODE_DEFAULTS.tickMs;
    const now = this.scheduler.now();
    if (this.lastTickMs !== undefined && now - this.lastTickMs > 2 * tickMs) this.lateTickAtMs = now;
    this.lastTickMs = now;
    const electionMs = this.electionMs();
    if (opts.quiesce !== false) stepQuiescence(this.replicas.values(), id, (peer) => this.replicas.heardWithin(peer, electionMs));
    for (const r of this.replicas.values()) r.tick();
    this.replicas.periodic(this.scheduler.now());
    this.sendLiveness();
    this.sendKeepalives(tickMs);
    this.scheduleReady();
  }

  /** One election timeout in ms: how long a peer's node may be silent before it counts as down. */
  private electionMs(): number {
    return electionTimeoutMs(this.parts.opts);
  }

  /** A keepalive to every member nothing was sent to during the last tick (node liveness, see quiescence.ts). */
  private sendKeepalives(tickMs: number): void {
    const now = this.scheduler.now();
    const out: Message[] = [];
    for (const peer of this.replicas.memberAddresses().keys()) {
      if (peer === this.parts.id) continue;
      if (this.draining || now - (this.lastSentMs.get(peer) ?? 0) >= tickMs) out.push(keepalive(this.parts.id, peer, this.draining));
    }
    this.send(out);
  }

  /** Sends through the transport, noting when each peer was last sent something. */
  private send(msgs: readonly Message[]): void {
    if (msgs.length === 0) return;
    const now = this.scheduler.now();
    for (const m of msgs) this.lastSentMs.set(m.to, now);
    this.parts.transport.send(msgs);
  }

  /** Hands peers' messages to their replicas (creating one when a leader added this node to a group). */
  receive(msgs: readonly Message[]): void {
    if (this.stopped) return;
    const now = this.scheduler.now();
    let stepped: Set<ShardReplica> | undefined;
    for (const m of msgs) {
      this.replicas.heard(m.from, now);
      if (m.group === LIVENESS_GROUP) {
        this.replicas.noteDraining(m.from, m.context === DRAINING_CONTEXT, now); // a node keepalive
        continue;
      }
      if (this.draining && m.type === MessageType.TimeoutNow) continue; // take no leadership while draining
      const r = this.replicas.replicaFor(m);
      if (!r) continue;
      if (this.inReady || r.installing) (stepped ??= new Set()).add(r);
      beforeVoteRequest(r, m, (peer) => this.replicas.heardWithin(peer, this.electionMs()));
      try {
        r.step(m);
      } catch (e) {
        this.parts.log.warn({ err: String(e), type: m.type, from: m.from }, 'raft refused a message');
      }
    }
    if (stepped) this.sendLiveness(stepped);
    this.scheduleReady();
  }

  /**
   * While a round is in progress (its fsync pending) or a replica is staging an installed
   * snapshot, that replica's next Ready waits; its heartbeats and heartbeat responses at a
   * durable term go now instead (RawNode.takeLivenessMessages), and, but for a replica staging a
   * snapshot, linearizable reads go on: their ReadIndex rounds start and the confirmed ones are
   * released (ShardReplica.readsDuringRound), so a read waits for a heartbeat round rather than
   * for fsyncs. Otherwise the round about to run does all this, so nothing changes when the disk
   * keeps up. `replicas`: those to look at
   * (after receiving, only the ones that stepped a message; after a tick, all).
   */
  private sendLiveness(replicas: Iterable<ShardReplica> = this.replicas.values()): void {
    for (const r of replicas) {
      // During a round, reads go on too: their ReadIndex rounds start and confirmed ones are released (ShardReplica.readsDuringRound).
      if (r.installing) this.send(r.takeLivenessMessages());
      else if (this.inReady) this.send(r.readsDuringRound());
    }
  }

  /** During a round: starts the ReadIndex rounds of the replicas whose reads wait (see `sendLiveness`). */
  private startWaitingReads(): void {
    for (const r of this.replicas.values()) if (!r.installing && r.readsWaiting) this.send(r.readsDuringRound());
  }

  /** Runs a ready round soon (once, however often it is asked before it runs). */
  scheduleReady(): void {
    if (this.readyScheduled || this.stopped) return;
    this.readyScheduled = true;
    this.scheduler.setImmediate(() => {
      this.readyScheduled = false;
      // A round in progress picks up new work after its fsync (or, with overlapped rounds, in the
      // next round staged meanwhile); reads asked for meanwhile start now.
      if (this.inReady) this.startWaitingReads();
      this.runReady();
    });
  }

  /**
   * The only place that sequences a Ready: stage the write → send early messages and apply
   * committed entries → fsync → send the messages that promise durability → advance. All
   * groups' writes of one round go into one fsynced batch (group commit). Work arriving while a
   * round syncs waits for the next round; with overlapped rounds it is staged into that next
   * round at once (`next`), whose fsync starts when the syncing one's ends.
   */
  private runReady(): void {
    if (this.staging) return;
    this.staging = true;
    try {
      for (;;) {
        if (this.stopped) return;
        if (this.syncing || this.paceTimer) {
          // Overlapped: stage into the next round; it is written once the syncing round is durable
          // (and, paced, no sooner than syncPaceMs after the previous write started).
          if (!this.overlap) return;
          const round = (this.next ??= newRound(true));
          this.stageRound(round);
          if (round.items.length === 0) this.next = undefined;
          return;
        }
        const round = newRound(false);
        this.stageRound(round, this.syncBeforeApply);
        if (round.items.length === 0) {
          // Idle: commit indexes held back for the next append (lazy commit) go out after
          // commitNoticeDelayMs (at once with 0), so a quiet group's followers apply soon; a busy
          // node's, and a lone client's next write within the delay, carry them in their appends.
          if (this.noticeDelayMs() > 0) {
            this.noticesLater();
            return;
          }
          if (!this.flushCommitNotices()) return;
          continue;
        }
        this.syncOrHold(round);
        if (this.syncing || this.paceTimer) return; // `finish` (or the pace timer) runs the next round
      }
    } catch (e) {
      this.failed(e);
    } finally {
      this.staging = false;
      this.updateWriteMode();
      this.wakeIdle();
      traceWrite?.('ready.end', 0, 0);
    }
  }

  /**
   * Paced or gathering: the store writes only flushed units (`RaftLogStore.writeOnlyFlushed`) while a round
   * syncs or is held, so the next round's units wait for its own flush; idle, it writes whatever
   * is asked for again. Units no round flushes (a compaction staged after a round's fsync) would
   * otherwise wait for a next round that an idle node never has, and with them every
   * `whenWritten` (values released from the heap, listings waiting for the durable point).
   */
  private updateWriteMode(): void {
    if (this.paceMs > 0 || this.gather) this.parts.store.writeOnlyFlushed = this.syncing !== undefined || this.paceTimer !== undefined;
  }

  /** Wakes `stop` callers once no round is in flight. */
  private wakeIdle(): void {
    if (this.inReady || this.idleWaiters.length === 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * Stages into `round` the Ready of every replica that has one (and may take one now): first
   * every Ready's log writes and early messages, then what each one applies. With `startWrite`
   * (NodeOptions.syncBeforeApply, and a round that will sync at once: none in flight, none held),
   * the round's synced batch is handed to the engine between the two, so applying the committed
   * entries (decoding them, the state machine, staging their records) runs while the fsync does
   * instead of before it: on a follower of a lone writer that is the previous write's apply,
   * carried in by this append's commit index (bench/README.md "A lone put"). The applied records
   * are lazy (derived from the log, see RaftLogStore.stageStateOps): they go into the next synced
   * batch, or after NodeOptions.stateWriteDelayMs into one of their own.
   */
  private stageRound(round: Round, startWrite = false): void {
    const { store } = this.parts;
    const from = round.items.length;
    let snapshot = false;
    for (const r of this.replicas.values()) {
      if (r.installing) continue; // its snapshot's records are being staged (finishInstall)
      r.flushReads();
      // While a round syncs (or is held), heartbeats and their responses at a durable term go now:
      // a Ready taken into the next round would hold the responses until that round's fsync.
      if (this.syncing || this.paceTimer) this.send(r.takeLivenessMessages());
      if (!r.hasReady()) continue;
      const rd = r.ready();
      // Snapshot chunks staged by the replica's sink: written at once; acknowledged only once
      // durable when SNAPSHOT_CHUNK_SYNC_BYTES are pending (bounds what is held in memory).
      const chunkBytes = r.inbox?.stagedBytes ?? 0;
      if (chunkBytes >= SNAPSHOT_CHUNK_SYNC_BYTES) {
        round.mustSync = true;
        r.inbox!.staged();
      } else if (chunkBytes > 0) store.flush().catch(() => {}); // a failure surfaces at the next awaited flush
      if (rd.entries.length > 0 || rd.hardState || rd.snapshot) {
        store.persistReady(r.group, rd); // (a Ready is a PersistRequest: its entries, hard state and snapshot)
        // As etcd: a commit-index-only change need not be synced before acting on it (a
        // restart recovers the commit index from a quorum); entries, term and vote must be.
        const hs = rd.hardState;
        const prev = this.syncedHardState.get(r.group);
        if (rd.entries.length > 0 || rd.snapshot || (hs && (!prev || hs.term !== prev.term || hs.vote !== prev.vote))) {
          round.mustSync = true;
        }
        if (hs) this.syncedHardState.set(r.group, hs);
        round.entries += rd.entries.length;
      }
      // What need not wait for the disk goes now: the leader's appends and heartbeats (so
      // its fsync overlaps the followers'), then (below) applying entries already durable on a quorum.
      this.send(rd.earlyMessages);
      if (rd.snapshot) snapshot = true;
      round.items.push([r, rd]);
    }
    // A round with a snapshot keeps its records replacement in the batch with it (as before).
    if (startWrite && round.mustSync && !snapshot && this.paceWait(round) <= 0) {
      const durable = store.flushNow();
      // Handled by `startSync`; if applying fails first, the node stops (`failed`) and nothing awaits it.
      durable.catch(() => {});
      round.written = { durable, startedAt: performance.now() };
    }
    for (let i = from; i < round.items.length; i++) {
      const [r, rd] = round.items[i]!;
      r.apply(rd);
      // What was applied goes into this round's batch (or, with the write started above, the
      // next one), after the log writes it came from.
      for (const unit of r.takeStateUnits()) store.stageStateOps(r.group, unit);
      // An installed snapshot's data is needed on disk only until the records replacing the state are.
      if (rd.snapshot && r.installing) void this.finishInstall(r);
      else if (rd.snapshot) store.dropSnapshotData(r.group);
      this.replicas.applied(r, rd);
    }
  }

  /** How long (ms) the sync pace would hold `round`'s write now (≤ 0: not held). */
  private paceWait(round: Round): number {
    return this.paceMs > 0 && round.mustSync ? this.lastSyncStartMs + this.paceMs - this.scheduler.now() : 0;
  }

  /**
   * Makes `round` the syncing round and starts its fsync (everything staged so far, by any group:
   * the store writes batches in staging order, so this round's write follows the previous one's).
   * A round that needs no fsync finishes at once.
   */
  private startSync(round: Round): void {
    this.syncing = round;
    if (!round.mustSync) {
      this.finish(round);
      return;
    }
    this.updateWriteMode();
    // A measurement for metrics only (it decides nothing), so the monotonic clock.
    const t0 = round.written?.startedAt ?? performance.now();
    (round.written?.durable ?? this.parts.store.flush())
      .then(() => {
        this.parts.observer().readyBatch?.(round.items.length, round.entries, performance.now() - t0, round.overlapped);
        this.finish(round);
        this.runReady();
      })
      .catch((e: unknown) => this.failed(e));
  }

  /**
   * `round`'s write is durable: send the messages that waited for it (acknowledgements, votes),
   * advance its Readies in order, then start the write of the round staged meanwhile (if any).
   */
  private finish(round: Round): void {
    for (const [r, rd] of round.items) {
      // Dropped (no longer a member) after an earlier round of its staged this one: nothing to finish.
      if (this.replicas.get(r.group) !== r) continue;
      this.send(rd.messages); // acknowledgements and votes: only once durable
      const conf = r.advance(rd);
      this.replicas.advanced(r, rd, conf);
    }
    this.replicas.refreshMapIfDirty();
    this.syncing = undefined;
    const next = this.next;
    this.next = undefined;
    if (next) this.syncOrHold(next, true);
  }

  /**
   * Starts `round`'s write now, or, with a sync pace, holds it while the previous write started
   * less than `paceMs` ago: it stays `next` and goes on staging what arrives (more entries for
   * the same fsync), and the pace timer starts its write. With gatherTurn, a round staged behind
   * a finished fsync (`afterSync`) is held likewise for one scheduler turn. A round that needs no
   * fsync is never held.
   */
  private syncOrHold(round: Round, afterSync = false): void {
    const wait = this.paceWait(round);
    if (wait > 0) {
      this.hold(round, this.scheduler.setTimeout(() => this.releaseHeld(), wait));
    } else if (this.gather && afterSync && round.mustSync && !this.stopped) {
      this.gatherHeldTurns = 1;
      this.hold(round, this.scheduler.setImmediate(() => this.releaseHeld()));
    } else {
      this.startSync(round);
    }
  }

  /** Holds `round` as `next` until `timer` releases it (`releaseHeld`). */
  private hold(round: Round, timer: TimerHandle): void {
    this.next = round;
    this.paceTimer = timer;
    this.updateWriteMode();
  }

  /**
   * Starts the write of the round the sync pace (or gatherTurn) holds, if any, now; then what
   * arrives is staged into the next round. With gatherTurn, what became ready while it was held
   * (messages stepped in this turn whose ready round has not run yet) is staged into it first, and
   * a round held for gathering is held again, up to NodeOptions.gatherTurns turns in all.
   */
  private releaseHeld(): void {
    if (this.paceTimer === undefined) return;
    const gatherTurns = this.gatherHeldTurns;
    this.gatherHeldTurns = 0;
    if (this.gather && this.next && !this.stopped) {
      this.runReady(); // `paceTimer` still set: stages into `next`
      if (this.paceTimer === undefined) return; // failed meanwhile
      // Held for gathering (not by the pace): one more turn, up to gatherTurns.
      if (gatherTurns > 0 && gatherTurns < this.gatherTurns && this.next !== undefined) {
        this.paceTimer.cancel();
        this.gatherHeldTurns = gatherTurns + 1;
        this.paceTimer = this.scheduler.setImmediate(() => this.releaseHeld());
        return;
      }
    }
    this.paceTimer.cancel();
    this.paceTimer = undefined;
    const held = this.next;
    this.next = undefined;
    if (!held) return;
    try {
      this.startSync(held); // also once stopped: `stop` waits for the rounds in flight
    } catch (e) {
      this.failed(e);
      return;
    }
    this.runReady();
  }

  /** A storage or apply failure: the node cannot continue safely. */
  private failed(e: unknown): void {
    // Nothing more is finished: `stop` must not wait for rounds that never end.
    this.syncing = undefined;
    this.next = undefined;
    this.paceTimer?.cancel();
    this.paceTimer = undefined;
    this.gatherHeldTurns = 0;
    this.updateWriteMode();
    this.wakeIdle();
    this.parts.log.fatal({ err: String(e), stack: (e as Error).stack }, 'storage or apply failure: stopping the node');
    this.parts.fatal(e);
  }

  private noticeDelayMs(): number {
    return this.parts.opts.commitNoticeDelayMs ?? NODE_DEFAULTS.commitNoticeDelayMs;
  }

  /** Arms the timer that sends held-back commit notices (unless armed, or none are owed). */
  private noticesLater(): void {
    if (this.noticeTimer !== undefined) return;
    let owed = false;
    for (const r of this.replicas.values()) if (!r.installing && r.commitNoticesOwed) owed = true;
    if (!owed) return;
    this.noticeTimer = this.scheduler.setTimeout(() => {
      this.noticeTimer = undefined;
      if (this.stopped) return;
      // Appends sent meanwhile carried what they could; the round sends what is still owed.
      if (this.flushCommitNotices()) this.scheduleReady();
    }, this.noticeDelayMs());
    this.noticeTimer.unref?.();
  }

  /** Asks every replica to send the commit notices lazy commit held back; returns whether any was sent. */
  private flushCommitNotices(): boolean {
    let sent = false;
    for (const r of this.replicas.values()) if (!r.installing && r.flushCommitNotices()) sent = true;
    return sent;
  }

  /**
   * Stages the records replacement of the snapshot `r` installed, unit by unit over scheduler
   * turns (each turn at most ~INSTALL_SLICE_MS of work), then the drop of the snapshot's data;
   * `r` gets no Ready meanwhile, so nothing else of its group is staged in between. The snapshot
   * (with its data) was staged before: a crash before the last unit leaves no `meta`, and recovery
   * installs from the snapshot again (state-store.ts).
   */
  private async finishInstall(r: ShardReplica): Promise<void> {
    const { store } = this.parts;
    const streamed = r.installingStreamed;
    const started = this.scheduler.now();
    let peakStaged = 0;
    let waits = 0;
    const flushBytes = this.parts.opts.installFlushBytes ?? INSTALL_FLUSH_BYTES;
    try {
      // Streamed: the chunk records (the last staged in this round) are read back with getSync.
      if (streamed) await store.flush();
      for (;;) {
        if (this.stopped || this.replicas.get(r.group) !== r) return;
        const t0 = this.scheduler.now();
        let done = false;
        while (this.scheduler.now() - t0 < INSTALL_SLICE_MS) {
          const unit = r.nextReplacementUnit();
          if (unit === undefined) {
            done = true;
            break;
          }
          store.stageStateOps(r.group, unit);
          if (r.replacementReadPending) break;
          if (store.stagedBytes >= flushBytes) break;
        }
        if (done) break;
        const staged = store.stagedBytes;
        if (staged > peakStaged) peakStaged = staged;
        if (staged >= flushBytes) {
          // Back-pressure: bounds what the install holds staged (and the size of a batch) whatever the disk's pace.
          waits++;
          await store.flush();
          if (this.stopped || this.replicas.get(r.group) !== r) return;
        }
        if (r.replacementReadPending) {
          // The replacement diffs against the records on disk, read from one view: what is staged is written before it opens.
          if (r.replacementReadOpensView) {
            await store.flush();
            if (this.stopped || this.replicas.get(r.group) !== r) return;
          } else store.flush().catch(() => {}); // bounds what is staged; a failure surfaces at the next flush
          try {
            await r.readReplacement();
          } catch (e) {
            if (this.stopped || this.replicas.get(r.group) !== r) return; // removed or stopped meanwhile: its view was closed
            throw e;
          }
          continue;
        }
        // Start writing what is staged (bounds the memory it holds); a failure surfaces at the next flush.
        store.flush().catch(() => {});
        await new Promise<void>((resolve) => this.scheduler.setImmediate(resolve));
      }
      store.dropSnapshotData(r.group);
      if (streamed) {
        // The machine's values are read from the records: serve reads once they are durable.
        await store.flush();
        if (this.replicas.get(r.group) === r) r.installDurable();
      }
      // The transfer that brought it (streamed): size and duration from chunk 0 to the last.
      const rx = streamed ? r.inbox?.received : undefined;
      const transfer = rx
        ? { transferMiB: Math.round((rx.bytes / 2 ** 20) * 10) / 10, transferMs: Math.round(rx.ms), transferMiBps: rx.ms > 0 ? Math.round((rx.bytes / 2 ** 20 / (rx.ms / 1000)) * 10) / 10 : 0, chunksRefused: r.inbox!.counters.refused }
        : {};
      this.parts.log.info({ group: r.group, streamed, ms: Math.round(this.scheduler.now() - started), peakStagedMiB: Math.round(peakStaged / 2 ** 20), flushWaits: waits, ...transfer }, 'snapshot install done');
      this.parts.observer().snapshotInstalled?.(r.group, streamed);
      this.scheduleReady();
    } catch (e) {
      this.parts.log.fatal({ group: r.group, err: String(e), stack: (e as Error).stack }, 'storage failure while installing a snapshot: stopping the node');
      this.parts.fatal(e);
    }
  }

  /**
   * Resolves once this node hosts the metadata group and has applied a written cluster map (at
   * once on an initial member; a joining node waits for the leader to add and catch it up).
   */
  async untilMapInitialised(signal?: AbortSignal): Promise<void> {
    while (!this.replicas.mapInitialised) {
      if (this.stopped || signal?.aborted) throw new UnavailableError('node stopped before it received the cluster map');
      await new Promise<void>((resolve) => {
        const off = this.replicas.onMapChanged(() => {
          off();
          resolve();
        });
        this.scheduler
          .setTimeout(() => {
            off();
            resolve();
          }, NODE_DEFAULTS.mapWaitPollMs)
          .unref?.();
      });
    }
  }

  /** Resolves or rejects like `p`, or rejects with DeadlineError at `deadlineMs` (this node's clock). */
  withDeadline<T>(p: Promise<T>, deadlineMs: number, message: string): Promise<T> {
    return withDeadline(p, deadlineMs, message, this.scheduler);
  }
}

/** An empty round (`overlapped`: staged while another round syncs). */
function newRound(overlapped: boolean): Round {
  return { items: [], entries: 0, mustSync: false, overlapped };
}
