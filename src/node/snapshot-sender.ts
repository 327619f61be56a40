/**
 * The leader side of snapshot transfer for a replica whose state machine is durable in its
 * records (state-store.ts): the Raft core asks its Storage for "the snapshot to send" only when a
 * follower is behind the compacted log; this wrapper answers from a snapshot produced on demand
 * from a consistent view of the engine, in bounded steps that yield to the event loop, instead
 * of one kept from compaction time (compaction records only the snapshot's metadata).
 */
import { EntryType, type ConfState, type Entry, type InitialState, type Snapshot, type Storage } from '../raft/index.js';
import type { MemoryStorage } from '../raft/index.js';
import type { EngineView } from '../storage/kv-engine.js';
import { realScheduler, type Scheduler, type TimerHandle } from './scheduler.js';
import { encodeSnapshotFromRecords, type SnapshotStreamOptions } from '../storage/state-store.js';

/** What a {@link SnapshotSender} needs from its replica and node. */
export interface SnapshotSenderHost {
  readonly group: number;
  /** A consistent view of the node's engine (undefined when it has none yet: nothing is produced). */
  openView(): EngineView | undefined;
  /** The term of the log entry at `index` as the Raft core knows it, or undefined (compacted or absent). */
  termAt(index: number): number | undefined;
  /**
   * The configuration in effect once the entries up to `index` are applied, or undefined when it
   * cannot be told (a configuration change between `index` and what Raft has applied).
   */
  confAt(index: number): ConfState | undefined;
  /** Called when a snapshot became available (the node runs a Ready round: the core retries). */
  produced(snapshot: Snapshot): void;
  /** Called when producing failed (it is retried on the next request). */
  failed(err: unknown): void;
}

/** Defaults of {@link SnapshotSenderOptions}. */
export const SNAPSHOT_SENDER_DEFAULTS = {
  idleMs: 30_000,
  retryMs: 200,
} as const;

/**
 * The node-wide bound on snapshots produced for lagging followers: at most `maxProducing`
 * productions run at once (each builds a whole shard's encoding in memory), and the bytes of the
 * produced snapshots held for sending are counted (the node's memory budget accounts them). A
 * sender that finds the gate full answers "not yet", and the Raft core asks again later.
 */
export class SnapshotGate {
  private producing = 0;
  private held = 0;
  constructor(readonly maxProducing = 1) {}
  /** Takes a production slot, or false when all are taken. */
  tryAcquire(): boolean {
    if (this.producing >= this.maxProducing) return false;
    this.producing++;
    return true;
  }
  /** Gives a production slot back. */
  release(): void {
    this.producing--;
  }
  /** Counts `delta` bytes of produced snapshots held (negative when one is dropped). */
  hold(delta: number): void {
    this.held += delta;
  }
  /** Bytes of produced snapshots held by the node's senders. */
  get heldBytes(): number {
    return this.held;
  }
}

/** Options of a {@link SnapshotSender}. */
export interface SnapshotSenderOptions extends SnapshotStreamOptions {
  /** The node-wide gate shared by every replica's sender (default: none, no bound). */
  readonly gate?: SnapshotGate;
  /** Drop a produced snapshot not asked for during this long (ms, default 30 s). */
  readonly idleMs?: number;
  /** Wait at least this long after a failed or unusable production before the next (ms, default 200). */
  readonly retryMs?: number;
  /** Clock and timers (default: the wall clock); the node passes its own, so a simulated run is reproducible. */
  readonly scheduler?: Scheduler;
}

/**
 * The `Storage` the Raft core of a replica reads: the replica's `MemoryStorage`, except that
 * `snapshot()` (which the core calls only to send one) returns a snapshot produced on demand.
 * A stored snapshot that has its data (installed from a leader before the data was dropped) is
 * sent as it is; a records snapshot (metadata only) never is: the first request starts producing
 * one from the records, `snapshot()` answers undefined ("not yet", the core retries on the next
 * heartbeat response) until it is ready. A produced snapshot is kept while it is asked for and
 * still usable (the log still holds the entry after it), and dropped when idle.
 */
export class SnapshotSender implements Storage {
  private current: Snapshot | undefined;
  private producing = false;
  private lastAskedMs = 0;
  private notBeforeMs = 0;
  private idleTimer: TimerHandle | undefined;
  private readonly scheduler: Scheduler;
  private readonly idleMs: number;
  private readonly retryMs: number;
  /** Productions started, finished with a snapshot, and dropped idle (for tests and metrics). */
  readonly counters = { started: 0, produced: 0, dropped: 0 };

  constructor(
    private readonly storage: MemoryStorage,
    private readonly host: SnapshotSenderHost,
    private readonly options: SnapshotSenderOptions = {},
  ) {
    this.idleMs = options.idleMs ?? SNAPSHOT_SENDER_DEFAULTS.idleMs;
    this.retryMs = options.retryMs ?? SNAPSHOT_SENDER_DEFAULTS.retryMs;
    this.scheduler = options.scheduler ?? realScheduler;
  }

  initialState(): InitialState {
    return this.storage.initialState();
  }
  entries(lo: number, hi: number): Entry[] {
    return this.storage.entries(lo, hi);
  }
  term(i: number): number {
    return this.storage.term(i);
  }
  firstIndex(): number {
    return this.storage.firstIndex();
  }
  lastIndex(): number {
    return this.storage.lastIndex();
  }

  /** The snapshot to send to a lagging follower, or undefined while one is being produced. */
  snapshot(): Snapshot | undefined {
    const now = this.scheduler.now();
    this.lastAskedMs = now;
    const floor = this.storage.firstIndex() - 1;
    const stored = this.storage.snapshot();
    if (stored && stored.data.length > 0 && stored.meta.index >= floor) return stored;
    if (this.current && this.current.meta.index >= floor) return this.current;
    this.setCurrent(undefined);
    if (!this.producing && now >= this.notBeforeMs) void this.produce();
    return undefined;
  }

  /** Whether a snapshot is being produced. */
  get busy(): boolean {
    return this.producing;
  }

  /** Drops the produced snapshot (the replica stopped leading, or shuts down). */
  release(): void {
    this.setCurrent(undefined);
    this.idleTimer?.cancel();
    this.idleTimer = undefined;
  }

  /** Replaces the held snapshot, keeping the gate's count of held bytes. */
  private setCurrent(s: Snapshot | undefined): void {
    this.options.gate?.hold((s?.data.length ?? 0) - (this.current?.data.length ?? 0));
    this.current = s;
  }

  private async produce(): Promise<void> {
    const gate = this.options.gate;
    if (gate && !gate.tryAcquire()) return; // another shard's snapshot is being built: asked again later
    const view = this.host.openView();
    if (!view) {
      gate?.release();
      return;
    }
    this.producing = true;
    this.counters.started++;
    try {
      let out: Awaited<ReturnType<typeof encodeSnapshotFromRecords>>;
      try {
        out = await encodeSnapshotFromRecords(view, this.host.group, this.options);
      } finally {
        await view.close();
      }
      const index = out?.appliedIndex;
      const term = index === undefined ? undefined : this.host.termAt(index);
      const conf = index === undefined ? undefined : this.host.confAt(index);
      if (!out || term === undefined || conf === undefined || out.appliedIndex < this.storage.firstIndex() - 1) {
        // No records (a replacement under way), or the point read is no longer usable: later.
        this.notBeforeMs = this.scheduler.now() + this.retryMs;
        return;
      }
      this.setCurrent({ meta: { index: out.appliedIndex, term, conf }, data: out.data });
      this.counters.produced++;
      this.armIdle();
      this.host.produced(this.current!);
    } catch (e) {
      this.notBeforeMs = this.scheduler.now() + this.retryMs;
      this.host.failed(e);
    } finally {
      this.producing = false;
      gate?.release();
    }
  }

  private armIdle(): void {
    this.idleTimer?.cancel();
    this.idleTimer = this.scheduler.setTimeout(() => {
      this.idleTimer = undefined;
      if (!this.current) return;
      if (this.scheduler.now() - this.lastAskedMs >= this.idleMs) {
        this.setCurrent(undefined);
        this.counters.dropped++;
      } else this.armIdle();
    }, this.idleMs);
    this.idleTimer.unref?.();
  }
}

/**
 * The configuration in effect after applying the entries up to `index`, from `conf` (the one in
 * effect after `applied`) and the log entries between the two: undefined when a configuration
 * change lies between them (or they are not all in `entries`' reach).
 */
export function confAtIndex(
  index: number,
  applied: number,
  conf: ConfState,
  entries: (lo: number, hi: number) => readonly Entry[] | undefined,
): ConfState | undefined {
  if (index === applied) return conf;
  const lo = Math.min(index, applied) + 1;
  const hi = Math.max(index, applied) + 1;
  const between = entries(lo, hi);
  if (!between || between.length !== hi - lo) return undefined;
  return between.some((e) => e.type === EntryType.ConfChange) ? undefined : conf;
}
