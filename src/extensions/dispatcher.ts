/**
 * Delivers one extension watch's events in one shard to its lambda, on that shard's leader: a
 * cursor into the shard's event history (so the backlog costs no memory per event and never blocks Raft),
 * per-key ordering (stateful) or bounded concurrency (stateless), retries with exponential
 * backoff, dead-lettering, the hop limit, and a delivery cursor replicated through the log so a
 * new leader resumes where the old one left off (at least once).
 */
import { DEAD_LETTER_PREFIX, hidesReservedKeys, isReservedKey, SYSTEM_KEY_PREFIX } from '../sharding/index.js';
import type { KvEvent } from '../statemachine/index.js';
import type { WatchHandle } from '../node/backend.js';
import type { ExtensionEvent, WatchOptions } from './api.js';

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

/** What a dispatcher needs from the node: the shard it delivers (led here) and a way to write. */
export interface DispatchHost {
  /** Subscribes to the shard's events from `fromRevision` (whole revisions, in order). */
  subscribe(prefix: string, fromRevision: number, sink: {
    events(events: readonly KvEvent[], upTo: number): void;
    progress(revision: number): void;
    canceled(reason: string, compactRevision?: number): void;
    writable(): boolean;
    onDrain(cb: () => void): void;
  }): WatchHandle;
  /** Hop count of the write at `revision`. */
  hopsOf(revision: number): number;
  /** Replicates a put into this shard (system origin): a cursor (a `/_sys/` key) or a dead letter (a `/_dlq/` key), both shard-local. */
  put(key: string, value: Uint8Array): Promise<void>;
  readonly shard: number;
  readonly maxHops: number;
}

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
  retryTimer?: NodeJS.Timeout;
}

/** The key under which a watch's delivery cursor is replicated. */
export function cursorKey(extension: string, watch: DispatchWatch): string {
  return `${SYSTEM_PREFIX}cursor/${extension}/${watch.id}${watch.prefix}`;
}

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
  /** All events up to here were received (the watch has seen every revision <= it). */
  private seenUpTo = 0;
  private persistedCursor = 0;
  private deliveredAtPersist = 0;
  private persisting = false;
  private drainCb: (() => void) | undefined;
  private stopped = false;
  private persistTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly extension: string,
    readonly watch: DispatchWatch,
    private readonly invoke: InvokeLambda,
    private readonly host: DispatchHost,
    private readonly observe: (latencyMs: number, ok: boolean) => void = () => {},
    private readonly onFailure: (msg: string) => void = () => {},
  ) {}

  /** Starts delivering every event after `cursor` (the replicated cursor read by the caller). */
  start(cursor: number): void {
    this.stats.cursor = cursor;
    this.persistedCursor = cursor;
    this.seenUpTo = cursor;
    this.handle = this.host.subscribe(this.watch.prefix, cursor + 1, {
      events: (events, upTo) => this.receive(events, upTo),
      progress: (revision) => this.advanceSeen(revision),
      canceled: (reason, compactRevision) => {
        if (this.stopped) return;
        this.onFailure(`watch on ${this.watch.prefix} cancelled: ${reason}`);
        if (compactRevision !== undefined) this.skipCompacted(compactRevision);
      },
      writable: () => this.queue.length < this.watch.options.maxBacklog,
      onDrain: (cb) => {
        this.drainCb = cb;
      },
    });
    this.persistTimer = setInterval(() => void this.persistCursor(), 200);
    this.persistTimer.unref?.();
  }

  /**
   * The history this watch still needed was compacted (it fell further behind than the shard
   * retains): record the lost range as a dead letter, then continue from the oldest revision left.
   */
  private skipCompacted(compactRevision: number): void {
    const from = this.stats.cursor + 1;
    const to = compactRevision - 1;
    const shard = this.host.shard;
    const body = { extension: this.extension, prefix: this.watch.prefix, shard, kind: 'compacted', error: `events ${from}..${to} of shard ${shard} were compacted before delivery`, lostFrom: from, lostTo: to };
    // Revisions are per shard: the key names the shard so two shards' gaps never share a key.
    void this.host
      .put(`${DLQ_PREFIX}${this.extension}/gap-${shard}-${String(from).padStart(12, '0')}-${String(to).padStart(12, '0')}`, new TextEncoder().encode(JSON.stringify(body)))
      .catch(() => {});
    for (const p of this.queue) if (p.retryTimer) clearTimeout(p.retryTimer);
    this.queue.length = 0;
    this.keyOwner.clear();
    this.retryOwner.clear();
    this.handle?.cancel();
    if (this.persistTimer) clearInterval(this.persistTimer);
    this.start(Math.max(to, this.stats.cursor));
  }

  /** Stops delivering (leadership lost, unload, or replacement). In-flight lambdas finish unobserved. */
  async stop(persist: boolean): Promise<void> {
    this.stopped = true;
    this.handle?.cancel();
    if (this.persistTimer) clearInterval(this.persistTimer);
    for (const p of this.queue) if (p.retryTimer) clearTimeout(p.retryTimer);
    if (persist) await this.persistCursor().catch(() => {});
  }

  private receive(events: readonly KvEvent[], upTo: number): void {
    if (this.stopped) return;
    const types = this.watch.options.events;
    for (const e of events) {
      // Reserved keys are never delivered: the shard-local system keys at all, the rest (dead
      // letters...) only to a watch inside the reserved keyspace (e.g. of `/_dlq/`).
      if (e.key.startsWith(SYSTEM_PREFIX) || (isReservedKey(e.key) && hidesReservedKeys(this.watch.prefix))) continue;
      if (!types.includes(e.type)) continue;
      this.queue.push({ event: e, hops: this.host.hopsOf(e.revision), attempts: 0, running: false, done: false });
    }
    this.advanceSeen(upTo);
    this.pump();
  }

  private advanceSeen(revision: number): void {
    if (revision > this.seenUpTo) this.seenUpTo = revision;
    this.updateCursor();
  }

  private pump(): void {
    if (this.stopped) return;
    const stateful = this.watch.options.mode === 'stateful';
    const limit = this.watch.options.concurrency;
    for (const p of this.queue) {
      if (this.running >= limit) break;
      if (p.running || p.done || p.retryTimer) continue;
      const owner = (stateful ? this.keyOwner : this.retryOwner).get(p.event.key);
      if (owner !== undefined && owner !== p) continue;
      this.run(p);
    }
    this.stats.backlog = this.queue.length;
  }

  private run(p: Pending): void {
    p.running = true;
    this.running++;
    if (this.watch.options.mode === 'stateful') this.keyOwner.set(p.event.key, p);
    p.attempts++;
    if (p.hops >= this.host.maxHops) {
      void this.deadLetter(p, `hop limit ${this.host.maxHops} reached (a lambda chain longer than the limit)`, 'hop-limit');
      return;
    }
    const ev: ExtensionEvent = {
      type: p.event.type,
      key: p.event.key,
      value: p.event.value,
      version: p.event.revision,
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
        this.observe(ms, true);
        this.finish(p);
      },
      (err: unknown) => {
        this.observe(performance.now() - t0, false);
        this.stats.errors++;
        if (this.stopped) return;
        const kind = (err as { kind?: string }).kind ?? 'threw';
        if (kind === 'stopped') return; // the runner is being replaced; the next one redelivers from the cursor
        if (p.attempts >= this.watch.options.maxAttempts) {
          void this.deadLetter(p, (err as Error).message ?? String(err), kind);
          return;
        }
        // Retry later; the key stays owned by this event so its later events wait (order is kept).
        this.running--;
        p.running = false;
        this.stats.retries++;
        if (this.watch.options.mode === 'stateless') this.retryOwner.set(p.event.key, p);
        const delay = this.watch.options.retryBackoffMs * 2 ** (p.attempts - 1);
        p.retryTimer = setTimeout(() => {
          p.retryTimer = undefined;
          this.pumpWithRetryFirst(p);
        }, Math.min(delay, 60_000));
        this.pump();
      },
    );
  }

  private pumpWithRetryFirst(p: Pending): void {
    if (this.stopped) return;
    if (!p.done && !p.running && this.running < this.watch.options.concurrency) this.run(p);
    this.pump();
  }

  private async deadLetter(p: Pending, error: string, kind: string): Promise<void> {
    const e = p.event;
    const key = `${DLQ_PREFIX}${this.extension}/${String(e.revision).padStart(12, '0')}${e.key}`;
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
        timestamp: e.timestampMs,
        value: e.value ? Buffer.from(e.value).toString('base64') : null,
      },
    };
    try {
      await this.host.put(key, new TextEncoder().encode(JSON.stringify(body)));
      this.stats.deadLettered++;
      this.finish(p);
    } catch (err) {
      // Could not record it (for example leadership moved): leave it for the next leader.
      this.onFailure(`dead-lettering revision ${e.revision} failed: ${(err as Error).message}`);
      this.running--;
      p.running = false;
    }
  }

  private finish(p: Pending): void {
    p.done = true;
    p.running = false;
    this.running--;
    if (this.keyOwner.get(p.event.key) === p) this.keyOwner.delete(p.event.key);
    if (this.retryOwner.get(p.event.key) === p) this.retryOwner.delete(p.event.key);
    this.stats.delivered++;
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
    this.stats.cursor = firstOpen ? firstOpen.event.revision - 1 : this.seenUpTo;
    this.stats.backlog = this.queue.length;
  }

  /**
   * Replicates the cursor if events were handled since the last write (at most one write in
   * flight). Progress alone does not write: the cursor's own write is a new revision, which
   * would otherwise keep an idle watch writing forever.
   */
  private async persistCursor(): Promise<void> {
    if (this.persisting || this.stats.cursor <= this.persistedCursor) return;
    if (this.stats.delivered === this.deliveredAtPersist) return;
    this.persisting = true;
    const c = this.stats.cursor;
    const delivered = this.stats.delivered;
    try {
      await this.host.put(cursorKey(this.extension, this.watch), new TextEncoder().encode(String(c)));
      this.persistedCursor = Math.max(this.persistedCursor, c);
      this.deliveredAtPersist = delivered;
    } catch {
      // leadership moved or a transient error: the next tick retries
    } finally {
      this.persisting = false;
    }
  }
}
