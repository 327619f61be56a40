/**
 * Delivers one extension watch's events in one shard to its lambda, on that shard's leader: a
 * cursor into the shard's event history (so the backlog costs no memory per event and never blocks Raft),
 * per-key ordering (stateful) or bounded concurrency (stateless), retries with exponential
 * backoff, dead-lettering, the hop limit, and a delivery cursor replicated through the log so a
 * new leader resumes where the old one left off (at least once).
 *
 * Size: one class because the queue, the per-key order, retries, the attempt record and the
 * cursor all advance together on each event (the record's keys and encoding are in attempt-record.ts).
 */
import { DEAD_LETTER_PREFIX, hidesReservedKeys, isReservedKey, SYSTEM_KEY_PREFIX } from '../sharding/index.js';
import type { KvEvent } from '../statemachine/index.js';
import type { WatchHandle } from '../node/backend.js';
import { realScheduler, sleep, type Scheduler, type TimerHandle } from '../node/scheduler.js';
import type { ExtensionEvent, WatchOptions } from './api.js';
import { attemptKey, cursorKey, FAULT_DEFAULTS, RUNNER_KILLING_KINDS, type AttemptEntry, type AttemptRecord, type FaultOptions } from './attempt-record.js';

/** Shard-local system keys (delivery cursors, the shard descriptor): never delivered to lambdas. */
export const SYSTEM_PREFIX = SYSTEM_KEY_PREFIX;
/** Dead-lettered events go under `/_dlq/<extension>/`, in the shard whose event they record (shard-local keys). */
export const DLQ_PREFIX = DEAD_LETTER_PREFIX;

/** A registered watch with every option filled in. */
export interface DispatchWatch {
  readonly id: number;
  readonly prefix: string;
  readonly options: Required<WatchOptions>;
}

/** Runs a lambda; rejects with an error whose `kind` says how it failed. */
export type InvokeLambda = (watchId: number, event: ExtensionEvent, timeoutMs: number) => Promise<void>;

/** An event as a dispatcher receives it: with the hop count of the lambda chain that wrote it, when the host knows it. */
export type DispatchEvent = KvEvent & { readonly hops?: number };

/** What a dispatcher needs from the node: the shard it delivers (led here) and a way to write. */
export interface DispatchHost {
  /** Subscribes to the shard's events from `fromRevision` (whole revisions, in order). */
  subscribe(prefix: string, fromRevision: number, sink: {
    events(events: readonly DispatchEvent[], upTo: number): void;
    progress(revision: number): void;
    canceled(reason: string, compactRevision?: number): void;
    writable(): boolean;
    onDrain(cb: () => void): void;
  }): WatchHandle;
  /**
   * The key as of `revision` in this shard (`version` 0: absent then), or undefined when that
   * is no longer known (compacted history, or a host that cannot tell): the event's previous version.
   */
  previous?(key: string, revision: number): { version: number; value?: Uint8Array } | undefined;
  /**
   * Whether this node may start lambdas of the shard now: it leads and holds a leader lease (see
   * HostShard.holdsLease). While false, nothing starts; the dispatcher looks again shortly (a
   * deposed leader's dispatcher is stopped meanwhile). Absent: always.
   */
  holdsLease?(): boolean;
  /** The clock and timers of retries, cursor writes and lease looks (default: the wall clock, `realScheduler`). */
  readonly clock?: Scheduler;
  /** Replicates a put into this shard (system origin): a cursor (a `/_sys/` key) or a dead letter (a `/_dlq/` key), both shard-local. */
  put(key: string, value: Uint8Array): Promise<void>;
  /**
   * Replicates several puts (`value` set) and deletes (`value` undefined) of shard-local keys in
   * one txn (one Raft entry), system origin: the cursor and the attempt record together.
   */
  write(writes: readonly { key: string; value: Uint8Array | undefined }[]): Promise<void>;
  readonly shard: number;
  readonly maxHops: number;
  /** Which set of cursor and attempt-record keys this watch uses (see the record's `cursorEpoch`; default 0). */
  readonly cursorEpoch?: number;
  /**
   * An in-process lambda of this watch never finished on another node: that node died in it (or
   * merely lost the shard: a leader change looks the same from here). This dispatcher has stopped
   * running events, and the host should run the extension where a lambda cannot take the node
   * down (process isolation) and deliver from the cursor again: the unfinished events are retried
   * there, counted as one runner-killing failure each.
   */
  inProcessKilledANode?(node: number): void;
  /**
   * Every event an in-process lambda left unfinished on another node (see inProcessKilledANode)
   * has now been handled by this isolated dispatcher: `confirmed` when one of them failed here
   * too and was dead-lettered as poison (the node died in it), false when they all completed (the
   * node only lost the shard, or died of something else). Also said (false) when this dispatcher
   * starts with none of them left after its cursor (a previous leader handled them).
   */
  suspectsResolved?(confirmed: boolean): void;
}

/** How often a dispatcher replicates its cursor when events were handled since the last write (ms). */
export const CURSOR_PERSIST_MS = 200;
/** Longest backoff between two attempts of a failed event (ms); the watch's `retryBackoffMs` doubles up to it. */
export const MAX_RETRY_BACKOFF_MS = 60_000;
/** Pause before a failed write of the cursor and attempt record is tried again (ms). */
export const STATE_WRITE_RETRY_MS = 100;
/** First pause before a failed dead-letter write of a compaction gap is tried again (ms); doubled up to {@link GAP_WRITE_MAX_BACKOFF_MS}. */
export const GAP_WRITE_RETRY_MS = 100;
/** Longest pause between attempts of a compaction gap's dead-letter write (ms). */
export const GAP_WRITE_MAX_BACKOFF_MS = 5_000;
/** How soon a dispatcher waiting for the leader lease looks again (ms). */
const LEASE_RECHECK_MS = 20;
/** How often `stop` looks whether the write in flight has finished (ms). */
const WRITE_WAIT_POLL_MS = 5;
/** Digits of a revision in dead-letter keys (zero-padded, so keys sort by revision). */
const REVISION_DIGITS = 12;
/** Characters of a failure's message kept in the attempt record. */
const MAX_REASON_CHARS = 300;

/** Per-watch counters, for metrics and `kvctl ext ls`. */
export interface DispatchStats {
  invocations: number;
  errors: number;
  retries: number;
  deadLettered: number;
  delivered: number;
  /** Events received and not yet handled. */
  backlog: number;
  /** Highest revision below which everything is handled. */
  cursor: number;
  lastLatencyMs: number;
}

interface Pending {
  readonly event: KvEvent;
  readonly hops: number;
  attempts: number;
  running: boolean;
  done: boolean;
  retryTimer?: TimerHandle;
  /** Its runner-killing failure history (also in the attempt record). */
  entry?: AttemptEntry;
  /** `wanted`: must be armed before it runs; `durable`: armed in the replicated record; `running`: an armed attempt runs. */
  arm: 'none' | 'wanted' | 'durable' | 'running';
}

/** What a dispatcher reports as it goes (metrics, totals). */
export interface DispatchObserver {
  /** An invocation ended: its latency, and the failure kind (undefined when it succeeded). */
  invoked(latencyMs: number, failure: string | undefined): void;
  /** An event was dead-lettered with `kind`. */
  deadLettered(kind: string): void;
  /** An event failed and will be retried. */
  retried(): void;
  /** An event was handled (delivered or dead-lettered): the cursor may pass it. */
  delivered(): void;
  /** A dead-letter write failed (`kind` of the letter, e.g. `compacted` for a gap); it is tried again. */
  deadLetterFailed(kind: string): void;
}

const eventId = (revision: number, key: string): string => `${revision}\u0000${key}`;

/** `nodes` (sorted, distinct) with `node` added. */
const withNode = (nodes: readonly number[], node: number): number[] => (nodes.includes(node) ? [...nodes] : [...nodes, node].sort((a, b) => a - b));

/** A revision as it appears in dead-letter keys: zero-padded to {@link REVISION_DIGITS} digits. */
const revisionDigits = (revision: number): string => String(revision).padStart(REVISION_DIGITS, '0');

/** Delivers one watch of one extension in one shard, while this node leads that shard. */
export class WatchDispatcher {
  readonly stats: DispatchStats = { invocations: 0, errors: 0, retries: 0, deadLettered: 0, delivered: 0, backlog: 0, cursor: 0, lastLatencyMs: 0 };
  private readonly queue: Pending[] = [];
  /** Stateful: the event that owns each key (running or waiting for a retry); later events of the key wait. */
  private readonly keyOwner = new Map<string, Pending>();
  /** Stateless: events waiting for a retry hold back later events of their key (order on retry). */
  private readonly retryOwner = new Map<string, Pending>();
  private running = 0;
  private handle: WatchHandle | undefined;
  /** Subscriptions made so far: a cancel of an earlier one is ignored (see follow). */
  private subscriptions = 0;
  /**
   * Compaction gaps whose dead letters are not written yet, oldest first: events after the first
   * wait and the cursor stays before it (see skipCompacted).
   */
  private readonly gaps: { readonly from: number; readonly to: number }[] = [];
  /** A gap's letter was written and the cursor (which may have jumped it) not replicated since. */
  private gapPassed = false;
  /** All events up to here were received (the watch has seen every revision <= it). */
  private seenUpTo = 0;
  private persistedCursor = 0;
  private deliveredAtPersist = 0;
  private persisting = false;
  private drainCb: (() => void) | undefined;
  private stopped = false;
  /** Stopped running events after an in-process lambda took another node down (see DispatchHost.inProcessKilledANode). */
  private halted = false;
  /** A fresh look at the leader lease is scheduled (see waitingForLease). */
  private leaseTimer: TimerHandle | undefined;
  private persistTimer: TimerHandle | undefined;
  private readonly clock: Scheduler;
  private readonly faults: FaultOptions;
  /** Entries of the attempt record found at start, not yet matched to a received event. */
  private inherited = new Map<string, AttemptEntry>();
  /** Whether the replicated attempt record holds entries (else a cursor write leaves it alone). */
  private recordDurable = false;
  /** The attempt record changed since it was last written. */
  private recordDirty = false;
  private writing = false;
  private writeAgain = false;
  /** Attempt-record writes done (metrics, tests). */
  recordWrites = 0;
  /** Events an in-process lambda left unfinished elsewhere, retried here in isolation and not yet handled. */
  private readonly suspects = new Set<string>();
  /** One of the suspects failed here too and was dead-lettered as poison. */
  private suspectConfirmed = false;

  constructor(
    private readonly extension: string,
    readonly watch: DispatchWatch,
    private readonly invoke: InvokeLambda,
    private readonly host: DispatchHost,
    private readonly observer: Partial<DispatchObserver> = {},
    private readonly onFailure: (msg: string) => void = () => {},
    faults: Partial<FaultOptions> = {},
  ) {
    this.clock = host.clock ?? realScheduler;
    this.faults = {
      poisonAttempts: faults.poisonAttempts ?? FAULT_DEFAULTS.poisonAttempts,
      poisonNodes: faults.poisonNodes ?? FAULT_DEFAULTS.poisonNodes,
      armEveryInvocation: faults.armEveryInvocation ?? false,
      canIsolate: faults.canIsolate ?? false,
      node: faults.node ?? 0,
      boot: faults.boot ?? '',
      ...(faults.blockedBoot !== undefined ? { blockedBoot: faults.blockedBoot } : {}),
    };
  }

  /**
   * Starts delivering every event after `cursor` (the replicated cursor read by the caller);
   * `record` is the watch's replicated attempt record: its entries after the cursor are the
   * failure history of those events, and an entry still armed is an attempt that never finished
   * (its node died or lost the shard meanwhile): counted as a failure on that node; as a failure
   * only (not against that node) when another node ran it in isolation.
   */
  start(cursor: number, record?: AttemptRecord): void {
    if (record) {
      this.inherited = new Map();
      for (const e of record.events) {
        if (e.revision <= cursor) continue;
        const entry: AttemptEntry = { revision: e.revision, key: e.key, failures: e.failures, nodes: [...e.nodes], ...(e.reason ? { reason: e.reason } : {}) };
        if (e.diedHere) entry.diedHere = true;
        if (e.unfinishedElsewhere !== undefined) entry.unfinishedElsewhere = e.unfinishedElsewhere;
        if (e.armed) {
          const self = e.armed.node === this.faults.node;
          if (self && e.armed.boot === this.faults.boot) {
            // This very process started it and lost the shard meanwhile: it did not die in it.
          } else {
            entry.failures++;
            const at = new Date(e.armed.atMs).toISOString();
            // Whether it ran in that node's own thread or process: only what says so. An arm without
            // `shared` is an isolated run (before session ext30 isolated runs wrote none, and this
            // read it as this dispatcher's own mode: an in-process leader took another node's
            // isolated retry, left unfinished by a leader change, for a run in that node's thread,
            // and dead-lettered innocent events as poison "on 2 nodes").
            const shared = e.armed.shared === true;
            if (!self && !shared) {
              // Another node armed it for a run in isolation (a worker or a child process, which
              // its lambda cannot take the node down from) and lost the shard or died meanwhile:
              // the run counts as an attempt (a poison event gets no extra run from a leader
              // change), but it is no evidence against that node, so it does not count towards
              // `poisonNodes` (leader changes alone must not make an innocent event poison).
              entry.reason = `node ${e.armed.node} lost the shard or died while running it in isolation (started ${at})`;
            } else {
              // Run in that node's thread (or this node's previous process died in it): evidence against that node.
              entry.nodes = withNode(entry.nodes, e.armed.node);
              if (self && e.armed.boot === this.faults.blockedBoot) {
                // This node's watchdog killed its previous process while it ran this: it blocked the thread.
                entry.diedHere = true;
                entry.reason = `node ${e.armed.node} was killed by its event-loop watchdog while running it (started ${at})`;
              } else if (self) {
                // Died some other way (kill -9, out of memory...): retried where it cannot take the node down.
                if (shared) entry.unfinishedElsewhere = e.armed.node;
                entry.reason = `node ${e.armed.node} restarted after it died (or was killed) while running it (started ${at})`;
              } else {
                // Armed in that node's own thread (in-process or native) by another node.
                entry.unfinishedElsewhere = e.armed.node;
                entry.reason = `node ${e.armed.node} died or lost the shard while running it (started ${at})`;
              }
            }
          }
        }
        this.inherited.set(eventId(e.revision, e.key), entry);
        if (entry.unfinishedElsewhere !== undefined && !this.faults.armEveryInvocation) this.suspects.add(eventId(e.revision, e.key));
      }
      this.recordDurable = record.events.length > 0;
      this.recordDirty = this.recordDurable;
    }
    this.stats.cursor = cursor;
    this.persistedCursor = cursor;
    this.seenUpTo = cursor;
    const killer = [...this.inherited.values()].find((e) => e.unfinishedElsewhere !== undefined)?.unfinishedElsewhere;
    if (killer !== undefined && this.faults.armEveryInvocation && this.faults.canIsolate && this.host.inProcessKilledANode) {
      // An in-process lambda may have taken that node down, and the same event (or the next) may
      // do it to this one: run nothing in this thread; the host retries them in process isolation.
      this.halted = true;
      const report = this.host.inProcessKilledANode.bind(this.host);
      queueMicrotask(() => report(killer));
      return;
    }
    this.persistTimer = this.clock.setInterval(() => void this.persistCursor(), CURSOR_PERSIST_MS);
    this.persistTimer.unref?.();
    this.follow(cursor + 1);
    if (this.suspects.size === 0 && this.host.suspectsResolved) {
      // Nothing left unfinished after the cursor: a previous leader handled the suspects (and lost
      // the shard before it could say so). Said at once, or the host's marker would never be lifted.
      const resolved = this.host.suspectsResolved.bind(this.host);
      queueMicrotask(() => {
        if (!this.stopped) resolved(false);
      });
    }
  }

  /**
   * Subscribes to the shard's events from `fromRevision`. The host may cancel a subscription
   * from inside `subscribe` (its start was compacted): the cancel then subscribes again
   * (skipCompacted), and the handle kept is that later one's.
   */
  private follow(fromRevision: number): void {
    const n = ++this.subscriptions;
    const handle = this.host.subscribe(this.watch.prefix, fromRevision, {
      events: (events, upTo) => this.receive(events, upTo),
      progress: (revision) => this.advanceSeen(revision),
      canceled: (reason, compactRevision) => {
        if (this.stopped || n !== this.subscriptions) return;
        this.onFailure(`watch on ${this.watch.prefix} cancelled: ${reason}`);
        if (compactRevision !== undefined) this.skipCompacted(compactRevision);
        else this.followAgain(n, GAP_WRITE_RETRY_MS);
      },
      writable: () => this.queue.length < this.watch.options.maxBacklog,
      onDrain: (cb) => {
        this.drainCb = cb;
      },
    });
    if (n === this.subscriptions) this.handle = handle;
  }

  /**
   * Subscription `n` ended for another reason than compaction (a slow watcher cut off, too many
   * watchers...): follows again after `backoffMs` from the first revision not received, doubling
   * the pause up to {@link GAP_WRITE_MAX_BACKOFF_MS} while subscribing fails.
   */
  private followAgain(n: number, backoffMs: number): void {
    this.handle = undefined;
    this.clock.setTimeout(() => {
      if (this.stopped || n !== this.subscriptions) return;
      try {
        this.follow(this.seenUpTo + 1);
      } catch (e) {
        this.onFailure(`following the events of ${this.watch.prefix} again failed (retried in ${backoffMs} ms): ${(e as Error).message}`);
        this.followAgain(this.subscriptions, Math.min(backoffMs * 2, GAP_WRITE_MAX_BACKOFF_MS));
      }
    }, backoffMs).unref?.();
  }

  /**
   * The history this watch still needed was compacted (it fell further behind than the shard
   * retains): the lost range is recorded as a dead letter, and delivery continues from the
   * oldest revision left. The watch follows again at once, from that revision (before anything
   * else is written to the shard: the letter itself is a revision, and a full history window
   * drops its oldest revision for it, so subscribing only after the letter landed chased the
   * window's tail forever, one one-revision gap after another). Events received before the gap
   * are still delivered; those after it wait, and the cursor stays before the gap, until the
   * letter is written. A failed write is reported (onFailure, the observer's deadLetterFailed)
   * and tried again with a bounded backoff while this dispatcher runs; a next leader finds the
   * gap again meanwhile and records it.
   */
  private skipCompacted(compactRevision: number): void {
    const from = this.seenUpTo + 1;
    const to = compactRevision - 1;
    this.handle = undefined;
    if (to < from) {
      this.follow(from);
      return;
    }
    const shard = this.host.shard;
    const body = { extension: this.extension, prefix: this.watch.prefix, shard, kind: 'compacted', error: `events ${from}..${to} of shard ${shard} were compacted before delivery: this watch fell further behind than the shard's history window (unloaded, paused or down for too long); they are lost to it`, lostFrom: from, lostTo: to };
    // Revisions are per shard: the key names the shard so two shards' gaps never share a key.
    const key = `${DLQ_PREFIX}${this.extension}/gap-${shard}-${revisionDigits(from)}-${revisionDigits(to)}`;
    const gap = { from, to };
    this.gaps.push(gap);
    this.seenUpTo = to;
    try {
      this.follow(to + 1);
    } catch (e) {
      this.onFailure(`following the events of ${this.watch.prefix} after the gap failed: ${(e as Error).message}`);
      this.followAgain(this.subscriptions, GAP_WRITE_RETRY_MS);
    }
    const attempt = (backoffMs: number): void => {
      if (this.stopped) return;
      this.host.put(key, new TextEncoder().encode(JSON.stringify(body))).then(
        () => {
          if (this.stopped) return;
          this.gaps.splice(this.gaps.indexOf(gap), 1);
          this.gapPassed = true;
          this.forgetLost(to);
          this.updateCursor();
          this.pump();
        },
        (e: unknown) => {
          if (this.stopped) return;
          this.onFailure(`recording the compacted gap ${from}..${to} as a dead letter failed (retried in ${backoffMs} ms): ${(e as Error).message}`);
          this.observer.deadLetterFailed?.('compacted');
          this.clock.setTimeout(() => attempt(Math.min(backoffMs * 2, GAP_WRITE_MAX_BACKOFF_MS)), backoffMs).unref?.();
        },
      );
    };
    attempt(GAP_WRITE_RETRY_MS);
  }

  /** Forgets the attempt-record entries and suspects of events up to `to` (lost to a compaction gap). */
  private forgetLost(to: number): void {
    for (const [id, e] of this.inherited) {
      if (e.revision > to) continue;
      this.inherited.delete(id);
      this.recordDirty = true;
    }
    const hadSuspects = this.suspects.size > 0;
    for (const id of this.suspects) if (Number(id.slice(0, id.indexOf('\u0000'))) <= to) this.suspects.delete(id);
    if (hadSuspects && this.suspects.size === 0) this.host.suspectsResolved?.(this.suspectConfirmed);
  }

  /** Stops delivering (leadership lost, unload, or replacement). In-flight lambdas finish unobserved. */
  async stop(persist: boolean): Promise<void> {
    this.stopped = true;
    this.handle?.cancel();
    this.persistTimer?.cancel();
    for (const p of this.queue) p.retryTimer?.cancel();
    if (persist) {
      // Still leading (unload, replacement): this process did not die in what it was running.
      for (const p of this.queue) if (p.arm !== 'none') p.arm = 'none';
      // A periodic cursor write in flight carries an older cursor: wait for it, then write the last one.
      while (this.writing || this.persisting) await sleep(this.clock, WRITE_WAIT_POLL_MS);
      if (this.recordDurable || this.buildRecord().length > 0) await this.writeState(true);
      else await this.persistCursor().catch(() => {});
    }
  }

  private receive(events: readonly DispatchEvent[], upTo: number): void {
    if (this.stopped) return;
    const types = this.watch.options.events;
    for (const e of events) {
      // Reserved keys are never delivered: the shard-local system keys at all, the rest (dead
      // letters...) only to a watch inside the reserved keyspace (e.g. of `/_dlq/`).
      if (e.key.startsWith(SYSTEM_PREFIX) || (isReservedKey(e.key) && hidesReservedKeys(this.watch.prefix))) continue;
      if (!types.includes(e.type)) continue;
      const p: Pending = { event: e, hops: e.hops ?? 0, attempts: 0, running: false, done: false, arm: 'none' };
      const id = eventId(e.revision, e.key);
      const entry = this.inherited.get(id);
      if (entry) {
        this.inherited.delete(id);
        p.entry = entry;
        p.attempts = entry.failures;
      }
      this.queue.push(p);
    }
    this.advanceSeen(upTo);
    this.pump();
  }

  private advanceSeen(revision: number): void {
    if (revision > this.seenUpTo) this.seenUpTo = revision;
    this.updateCursor();
  }

  /**
   * Whether starts must wait for the leader lease (a leader that was paused runs its due timers
   * before it reads the messages that depose it); schedules a fresh look when so.
   */
  private waitingForLease(): boolean {
    if (!this.host.holdsLease || this.host.holdsLease()) return false;
    if (!this.leaseTimer) {
      this.leaseTimer = this.clock.setTimeout(() => {
        this.leaseTimer = undefined;
        this.pump();
      }, LEASE_RECHECK_MS);
      this.leaseTimer.unref?.();
    }
    return true;
  }

  private pump(): void {
    if (this.stopped || this.halted || this.waitingForLease()) return;
    const stateful = this.watch.options.mode === 'stateful';
    const limit = this.watch.options.concurrency;
    const waitingArm = (q: Pending) => !q.running && !q.done && !q.retryTimer && (q.arm === 'wanted' || q.arm === 'durable');
    // Events being armed count towards the concurrency: they are about to run.
    let busy = this.running;
    for (const q of this.queue) if (waitingArm(q)) busy++;
    for (const p of this.queue) {
      if (this.afterPendingGap(p)) break;
      if (p.running || p.done || p.retryTimer) continue;
      const owner = (stateful ? this.keyOwner : this.retryOwner).get(p.event.key);
      if (owner !== undefined && owner !== p) continue;
      if (p.arm === 'durable') {
        this.run(p); // counted in `busy` already
        continue;
      }
      if (p.arm === 'wanted') continue;
      if (busy >= limit) {
        if (this.running >= limit) break;
        continue;
      }
      busy++;
      if (this.mustArm(p)) {
        // Recorded as attempted (replicated) before it starts: batched into one write.
        if (stateful) this.keyOwner.set(p.event.key, p);
        p.arm = 'wanted';
        this.requestWrite();
        continue;
      }
      this.run(p);
    }
    this.stats.backlog = this.queue.length;
  }

  /** Whether `p` comes after a compaction gap whose dead letter is not written yet (it waits). */
  private afterPendingGap(p: Pending): boolean {
    return this.gaps.length > 0 && p.event.revision > this.gaps[0]!.to;
  }

  /** Whether `p` must be in the replicated attempt record before it runs. */
  private mustArm(p: Pending): boolean {
    return this.faults.armEveryInvocation || p.entry !== undefined;
  }

  /** Why `p` is a poison pill (undefined when it may run). */
  private poisonReason(p: Pending): string | undefined {
    const e = p.entry;
    if (!e) return undefined;
    const last = e.reason ? `; last: ${e.reason}` : '';
    if (e.diedHere) return `poison: ${e.reason ?? 'this node died while running it'} (${e.failures} runner-killing failure(s) on node(s) ${e.nodes.join(', ')})`;
    if (e.unfinishedElsewhere !== undefined && this.faults.armEveryInvocation && !this.faults.canIsolate) {
      return `poison: native lambda never finished on node ${e.unfinishedElsewhere} (it died or lost the shard while running it); not run again in a node's process${last}`;
    }
    if (e.failures >= this.faults.poisonAttempts) return `poison: killed or hung its runner ${e.failures} times (limit ${this.faults.poisonAttempts}) on node(s) ${e.nodes.join(', ')}${last}`;
    if (e.nodes.length >= this.faults.poisonNodes) return `poison: killed or hung its runner on ${e.nodes.length} nodes (${e.nodes.join(', ')}; limit ${this.faults.poisonNodes})${last}`;
    return undefined;
  }

  private run(p: Pending): void {
    if (this.halted) return;
    p.running = true;
    this.running++;
    if (this.watch.options.mode === 'stateful') this.keyOwner.set(p.event.key, p);
    if (p.hops >= this.host.maxHops) {
      p.attempts++;
      void this.deadLetter(p, `hop limit ${this.host.maxHops} reached (a lambda chain longer than the limit)`, 'hop-limit');
      return;
    }
    const poison = this.poisonReason(p);
    if (poison) {
      void this.deadLetter(p, poison, 'poison');
      return;
    }
    p.attempts++;
    const armed = p.arm === 'durable';
    if (armed) p.arm = 'running';
    const prev = this.host.previous?.(p.event.key, p.event.revision - 1);
    const ev: ExtensionEvent = {
      type: p.event.type,
      key: p.event.key,
      value: p.event.value,
      version: p.event.revision,
      revision: p.event.revision,
      ...(prev ? { previousVersion: prev.version, created: p.event.type === 'put' && prev.version === 0 } : { created: false }),
      ...(prev?.value && this.watch.options.previousValue ? { previousValue: prev.value } : {}),
      timestamp: p.event.timestampMs,
      shard: this.host.shard,
      hops: p.hops,
    };
    const t0 = performance.now();
    this.stats.invocations++;
    this.invoke(this.watch.id, ev, this.watch.options.timeoutMs).then(
      () => {
        const ms = performance.now() - t0;
        this.stats.lastLatencyMs = ms;
        this.observer.invoked?.(ms, undefined);
        this.disarm(p);
        this.finish(p);
      },
      (err: unknown) => {
        const kind = (err as { kind?: string }).kind ?? 'threw';
        this.observer.invoked?.(performance.now() - t0, kind);
        this.stats.errors++;
        if (this.stopped) return;
        if (kind === 'stopped') return; // the runner is being replaced; the next one redelivers from the cursor
        const message = (err as Error).message ?? String(err);
        this.disarm(p);
        // Counted unless it was certainly not this lambda's doing (collateral of another event's
        // timeout, or a timeout while its store call was overdue: the node stalled). When
        // unknown (several ran on the worker that died), each counts once: the runner then runs
        // each of them alone, so an innocent one succeeds on its retry.
        if (RUNNER_KILLING_KINDS.has(kind) && (err as { culprit?: boolean }).culprit !== false) {
          const e = (p.entry ??= { revision: p.event.revision, key: p.event.key, failures: 0, nodes: [] });
          e.failures++;
          e.nodes = withNode(e.nodes, this.faults.node);
          e.reason = `${kind} on node ${this.faults.node}: ${message.slice(0, MAX_REASON_CHARS)}`;
          this.recordDirty = true;
          this.onFailure(`revision ${p.event.revision} of ${p.event.key}: ${e.reason} (runner-killing failure ${e.failures}, limit ${this.faults.poisonAttempts}; node(s) ${e.nodes.join(', ')})`);
          const poison = this.poisonReason(p);
          if (poison) {
            void this.deadLetter(p, poison, 'poison');
            return;
          }
        }
        if (p.attempts >= this.watch.options.maxAttempts) {
          void this.deadLetter(p, message, kind);
          return;
        }
        // Retry later; the key stays owned by this event so its later events wait (order is kept).
        this.running--;
        p.running = false;
        this.stats.retries++;
        this.observer.retried?.();
        if (p.entry) {
          // Arm the retry now (replicated before the backoff ends): the failure count survives a leader change.
          p.arm = 'wanted';
          this.requestWrite();
        }
        if (this.watch.options.mode === 'stateless') this.retryOwner.set(p.event.key, p);
        const delay = this.watch.options.retryBackoffMs * 2 ** (p.attempts - 1);
        p.retryTimer = this.clock.setTimeout(() => {
          p.retryTimer = undefined;
          this.pumpWithRetryFirst(p);
        }, Math.min(delay, MAX_RETRY_BACKOFF_MS));
        this.pump();
      },
    );
  }

  private pumpWithRetryFirst(p: Pending): void {
    if (this.stopped || this.halted || this.waitingForLease()) return;
    if (this.afterPendingGap(p)) return;
    if (!p.done && !p.running && this.running < this.watch.options.concurrency && (!this.mustArm(p) || p.arm === 'durable')) this.run(p);
    this.pump();
  }

  /** An attempt of `p` ended (one way or another): it is no longer armed. */
  private disarm(p: Pending): void {
    if (p.arm !== 'none') {
      p.arm = 'none';
      this.recordDirty = true;
    }
  }

  /** The attempt record as it stands now. */
  private buildRecord(): AttemptEntry[] {
    const out: AttemptEntry[] = [...this.inherited.values()].filter((e) => e.revision > this.stats.cursor);
    const self = { node: this.faults.node, boot: this.faults.boot };
    for (const p of this.queue) {
      if (p.done || (!p.entry && p.arm === 'none')) continue;
      const e: AttemptEntry = p.entry ? { ...p.entry } : { revision: p.event.revision, key: p.event.key, failures: 0, nodes: [] };
      if (p.arm !== 'none') e.armed = { ...self, atMs: this.clock.now(), shared: this.faults.armEveryInvocation };
      out.push(e);
    }
    return out;
  }

  private requestWrite(): void {
    if (this.stopped) return;
    if (this.writing) {
      this.writeAgain = true;
      return;
    }
    void this.writeState();
  }

  /**
   * Writes the cursor and the attempt record in one txn; arms (marks durable) the events that
   * wanted it when the write began. At most one write in flight; a failed write is tried again
   * (unless stopped: leadership moved, the next leader reads what was written).
   */
  private async writeState(final = false): Promise<void> {
    this.writing = true;
    this.writeAgain = false;
    const wanted = this.queue.filter((p) => p.arm === 'wanted');
    const events = this.buildRecord();
    const c = this.stats.cursor;
    const delivered = this.stats.delivered;
    const gapPending = this.gaps.length > 0;
    const writes: { key: string; value: Uint8Array | undefined }[] = [{ key: cursorKey(this.extension, this.watch, this.host.cursorEpoch), value: new TextEncoder().encode(String(Math.max(c, this.persistedCursor))) }];
    if (events.length > 0 || this.recordDurable) {
      const rec: AttemptRecord = { v: 1, cursor: c, events };
      writes.push({ key: attemptKey(this.extension, this.watch, this.host.cursorEpoch), value: events.length > 0 ? new TextEncoder().encode(JSON.stringify(rec)) : undefined });
    }
    this.recordDirty = false;
    let ok = false;
    try {
      await this.host.write(writes);
      ok = true;
      this.recordWrites++;
      this.recordDurable = events.length > 0;
      this.persistedCursor = Math.max(this.persistedCursor, c);
      this.deliveredAtPersist = delivered;
      if (!gapPending) this.gapPassed = false;
      for (const p of wanted) if (p.arm === 'wanted' && !p.done) p.arm = 'durable';
    } catch (e) {
      this.recordDirty = true;
      if (!this.stopped) this.onFailure(`writing the attempt record failed: ${(e as Error).message}`);
    } finally {
      this.writing = false;
    }
    if (this.stopped || final) return;
    if (!ok) {
      this.clock.setTimeout(() => this.requestWrite(), STATE_WRITE_RETRY_MS).unref?.();
      return;
    }
    if (this.writeAgain || this.queue.some((p) => p.arm === 'wanted')) this.requestWrite();
    this.pump();
  }

  private async deadLetter(p: Pending, error: string, kind: string): Promise<void> {
    const e = p.event;
    const key = `${DLQ_PREFIX}${this.extension}/${revisionDigits(e.revision)}${e.key}`;
    const body = {
      extension: this.extension,
      prefix: this.watch.prefix,
      shard: this.host.shard,
      error,
      kind,
      attempts: p.attempts,
      event: {
        type: e.type,
        key: e.key,
        version: e.revision,
        revision: e.revision,
        timestamp: e.timestampMs,
        value: e.value ? Buffer.from(e.value).toString('base64') : null,
      },
    };
    try {
      await this.host.put(key, new TextEncoder().encode(JSON.stringify(body)));
      this.stats.deadLettered++;
      this.observer.deadLettered?.(kind);
      if (p.entry || p.arm !== 'none') this.recordDirty = true;
      p.arm = 'none';
      if (kind === 'poison' && this.suspects.has(eventId(e.revision, e.key))) this.suspectConfirmed = true;
      this.finish(p);
    } catch (err) {
      // Could not record it (for example leadership moved): leave it for the next leader.
      this.onFailure(`dead-lettering revision ${e.revision} failed: ${(err as Error).message}`);
      this.running--;
      p.running = false;
    }
  }

  private finish(p: Pending): void {
    if (this.suspects.delete(eventId(p.event.revision, p.event.key)) && this.suspects.size === 0) this.host.suspectsResolved?.(this.suspectConfirmed);
    p.done = true;
    p.running = false;
    this.running--;
    if (this.keyOwner.get(p.event.key) === p) this.keyOwner.delete(p.event.key);
    if (this.retryOwner.get(p.event.key) === p) this.retryOwner.delete(p.event.key);
    this.stats.delivered++;
    this.observer.delivered?.();
    // Drop the handled prefix of the queue.
    while (this.queue.length > 0 && this.queue[0]!.done) this.queue.shift();
    this.updateCursor();
    if (this.drainCb && this.queue.length < this.watch.options.maxBacklog / 2) {
      const cb = this.drainCb;
      this.drainCb = undefined;
      cb();
    }
    this.pump();
  }

  private updateCursor(): void {
    const firstOpen = this.queue.find((q) => !q.done);
    const c = firstOpen ? firstOpen.event.revision - 1 : this.seenUpTo;
    // Never past a gap whose dead letter is not written yet.
    this.stats.cursor = this.gaps.length > 0 ? Math.min(c, this.gaps[0]!.from - 1) : c;
    this.stats.backlog = this.queue.length;
  }

  /**
   * Replicates the cursor if events were handled since the last write (at most one write in
   * flight). Progress alone does not write: the cursor's own write is a new revision, which
   * would otherwise keep an idle watch writing forever.
   */
  private async persistCursor(): Promise<void> {
    if (this.recordDirty) {
      if (this.recordDurable || this.buildRecord().length > 0) {
        // The attempt record changed (an armed event finished, a failure...): cursor and record together.
        if (!this.persisting) this.requestWrite();
        return;
      }
      this.recordDirty = false;
    }
    if (this.writing) return;
    if (this.persisting || this.stats.cursor <= this.persistedCursor) return;
    if (this.stats.delivered === this.deliveredAtPersist && !this.gapPassed) return;
    this.persisting = true;
    const c = this.stats.cursor;
    const delivered = this.stats.delivered;
    const gapPending = this.gaps.length > 0;
    try {
      await this.host.put(cursorKey(this.extension, this.watch, this.host.cursorEpoch), new TextEncoder().encode(String(c)));
      this.persistedCursor = Math.max(this.persistedCursor, c);
      this.deliveredAtPersist = delivered;
      if (!gapPending) this.gapPassed = false;
    } catch {
      // leadership moved or a transient error: the next tick retries
    } finally {
      this.persisting = false;
    }
  }
}
