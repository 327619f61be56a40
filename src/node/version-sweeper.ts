/**
 * The node-local background sweep of compacted versions (issue 17, node option `sweepVersions`):
 * with it, a compaction in `apply` only moves the compaction point and the recorder leaves the
 * versions it dropped on disk (state-store.ts `RecorderOptions.sweepVersions`); this sweeper then
 * deletes them in bounded units (`sweepVersions`: a bounded number of version records read and at
 * most that many deleted per unit, one unit in flight per node), walking each group's `v/` records
 * in key order from a cursor, one group at a time. Nothing is stop-the-world: each unit is one
 * engine view, one iteration and one unsynced batch, and the event loop runs between units.
 *
 * What it remembers is only a hint: per group, the compaction point its last complete pass swept
 * to. After a restart (or a crash mid-pass) it knows nothing, so every group with a compaction
 * point gets one pass again; a unit lost in a crash is harmless (the versions it deleted are dead,
 * the loader and the snapshot encoder skip dead versions, and the next pass deletes them).
 */
import type { KvEngine } from '../storage/kv-engine.js';
import { SWEEP_RECORDS_PER_UNIT, sweepVersions } from '../storage/state-store.js';

/** What the sweeper needs to know of a hosted group. */
export interface SweptGroup {
  readonly group: number;
  /** The group's compaction point as applied here (the sweep itself reads the durable one from `meta`). */
  readonly compactRevision: number;
}

/** Counters of the sweep (metrics and tests). */
export interface SweepCounts {
  /** Units run, version records they read and deleted, and passes completed (a pass: one group's `v/` walked to its end). */
  units: number;
  scanned: number;
  deleted: number;
  passes: number;
  /** Milliseconds spent in units (wall: engine reads and the batch included). */
  unitMs: number;
}

/** Options of a {@link VersionSweeper}. */
export interface VersionSweeperOptions {
  /** Version records read per unit (default {@link SWEEP_RECORDS_PER_UNIT}). */
  readonly recordsPerUnit?: number;
  /**
   * Least time between the starts of two passes over one group (ms, default
   * {@link DEFAULT_MIN_PASS_INTERVAL_MS}): a pass reads every version record of the group (its
   * values too: LevelDB has no kind-only read), so it runs when the compaction point moved and
   * this long has passed, not on every retention step.
   */
  readonly minPassIntervalMs?: number;
  /** Reports a unit that failed (the pass is abandoned and retried on a later poke). */
  readonly onError?: (group: number, err: unknown) => void;
}

/** Default of {@link VersionSweeperOptions.minPassIntervalMs}. */
export const DEFAULT_MIN_PASS_INTERVAL_MS = 60_000;

/** Sweeps the compacted versions of the groups a node hosts, one bounded unit at a time. */
export class VersionSweeper {
  /** Per group, the compaction point its last complete pass swept to. */
  private readonly sweptTo = new Map<number, number>();
  /** Per group, when its last pass started (the `now` of the poke). */
  private readonly passStartedMs = new Map<number, number>();
  private running: Promise<void> | undefined;
  private stopped = false;
  /** What the sweep did so far. */
  readonly counts: SweepCounts = { units: 0, scanned: 0, deleted: 0, passes: 0, unitMs: 0 };
  private readonly recordsPerUnit: number;

  /** A sweeper of `engine`'s group records. */
  constructor(
    private readonly engine: Pick<KvEngine, 'view' | 'batch'>,
    private readonly options: VersionSweeperOptions = {},
  ) {
    this.recordsPerUnit = options.recordsPerUnit ?? SWEEP_RECORDS_PER_UNIT;
    if (!Number.isSafeInteger(this.recordsPerUnit) || this.recordsPerUnit < 1) throw new RangeError(`recordsPerUnit must be a positive integer, got ${this.recordsPerUnit}`);
  }

  /**
   * Starts a pass over every group in `groups` whose compaction point moved past what was swept
   * and whose last pass started at least `minPassIntervalMs` before `nowMs` (unless a pass is
   * running: a later poke sees what is left). Returns the running pass (tests await it; the node
   * does not).
   */
  poke(groups: Iterable<SweptGroup>, nowMs: number): Promise<void> {
    if (this.running !== undefined || this.stopped) return this.running ?? Promise.resolve();
    const due: number[] = [];
    const interval = this.options.minPassIntervalMs ?? DEFAULT_MIN_PASS_INTERVAL_MS;
    for (const g of groups) {
      if (g.compactRevision <= (this.sweptTo.get(g.group) ?? 0)) continue;
      const last = this.passStartedMs.get(g.group);
      if (last !== undefined && nowMs - last < interval) continue;
      this.passStartedMs.set(g.group, nowMs);
      due.push(g.group);
    }
    if (due.length === 0) return Promise.resolve();
    const run = this.sweep(due).finally(() => {
      this.running = undefined;
    });
    this.running = run;
    return run;
  }

  /** Stops starting units (a node closing); resolves when the unit in flight ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  /** Forgets a dropped group. */
  forget(group: number): void {
    this.sweptTo.delete(group);
    this.passStartedMs.delete(group);
  }

  private async sweep(groups: readonly number[]): Promise<void> {
    for (const group of groups) {
      let from: Uint8Array | undefined;
      let c: number | undefined;
      try {
        do {
          if (this.stopped) return;
          const t0 = performance.now();
          const unit = await sweepVersions(this.engine, group, from, this.recordsPerUnit);
          this.counts.unitMs += performance.now() - t0;
          if (unit === undefined) break; // no meta (a replacement under way): a later poke retries
          this.counts.units++;
          this.counts.scanned += unit.scanned;
          this.counts.deleted += unit.deleted;
          c = Math.min(c ?? unit.compactRevision, unit.compactRevision); // the point every unit swept to at least
          from = unit.next;
        } while (from !== undefined);
      } catch (err) {
        this.options.onError?.(group, err);
        continue;
      }
      if (from === undefined && c !== undefined) {
        this.sweptTo.set(group, c);
        this.counts.passes++;
      }
    }
  }
}
