/**
 * The durable side of one replica's state machine: what it applied becomes units of writes to
 * its state records (state-store.ts) that the driver stages into each round's batch, and when a
 * Raft snapshot replaces the state, the records are replaced too — at once, or unit by unit over
 * several ready rounds for a large install (`stepwiseInstall`).
 */
import type { KvStateMachine, SnapshotData, VersionRecord } from '../statemachine/index.js';
import type { EngineOp, EngineView } from '../storage/kv-engine.js';
import { READ_BEFORE, RecordedVersions, type StateRecorder } from '../storage/state-store.js';

/** Records a replica's state machine changes as units of record writes, in the order they must be staged. */
export class ReplicaRecords {
  private units: EngineOp[][] = [];
  /** The records replacement of a snapshot being installed stepwise (see `nextReplacementUnit`). */
  private replacing: Iterator<EngineOp[]> | undefined;
  /** The old records read from the engine for a stepwise replacement (`replace` with `openView`). */
  private recorded: RecordedVersions | undefined;
  /** Whether the replacement waits for the next batch of the old records (`readBefore`). */
  private readNeeded = false;

  constructor(
    private readonly recorder: StateRecorder,
    private readonly maxUnitBytes: number | undefined,
  ) {}

  /** Deleted keys' latest records the recorder knows are still in `l/` (records written before the split; moved to `t/` a batch per unit). */
  get legacyLatests(): number {
    return this.recorder.legacyTombstones;
  }

  /** Starts recording `sm`'s changes (the machine the replica starts with). */
  attach(sm: KvStateMachine): void {
    sm.observe(this.recorder);
  }

  /**
   * The state machine `before` was replaced by `after` (a snapshot installed): what `before`
   * recorded last is kept as a unit, then the records become `after`'s state (the difference,
   * in bounded units) — all queued now, or, when `stepwise`, handed out later one unit at a time
   * (`nextReplacementUnit`). Then `after`'s changes are recorded. `valueAt` reads the values
   * `after` holds on disk elsewhere (a streamed install; see `ReplaceOptions.valueAt`).
   *
   * With `openView` (stepwise only) the difference is taken against the records as the engine holds
   * them, read a batch at a time from one view (`RecordedVersions`), not against `before.toRecords()`
   * (issue 17: no heap copy of the old state, and no synchronous read-back of the keys `dropCold`
   * dropped): the host then reads each batch when asked (`readPending`, `readBefore`), having made
   * everything staged before durable first. `before`'s last unit is then the replacement's first.
   *
   * `afterRecords` stands for `after.toRecords()` when `after` was built with its cold keys dropped
   * (`KvStateMachine.restoreColdSteps`, whose `toRecords()` throws): the decoded data and every key
   * in order (`mergeColdKeys`).
   */
  replace(
    before: KvStateMachine,
    after: KvStateMachine,
    stepwise: boolean,
    valueAt?: (key: string, revision: number) => Uint8Array,
    openView?: () => EngineView | undefined,
    afterRecords?: { readonly data: SnapshotData; readonly keys: Iterable<readonly [string, readonly VersionRecord[]]> },
  ): void {
    before.observe(undefined);
    const pending = this.recorder.take(before);
    const options = {
      ...(this.maxUnitBytes ? { maxUnitBytes: this.maxUnitBytes } : {}),
      ...(valueAt ? { valueAt } : {}),
      ...(afterRecords ? { afterKeys: afterRecords.keys } : {}),
    };
    const afterData = (): SnapshotData => afterRecords?.data ?? after.toRecords();
    const view = stepwise ? openView : undefined;
    if (view !== undefined) {
      const recorded = new RecordedVersions(() => {
        const v = view();
        if (v === undefined) throw new Error(`group ${this.recorder.group}: no engine view to read the records being replaced`);
        return v;
      }, this.recorder.group);
      this.recorded = recorded;
      this.replacing = withFirst(pending, this.recorder.replaceSteps(recorded, afterData(), options));
    } else {
      if (pending) this.units.push(pending);
      const steps = this.recorder.replaceSteps(before.toRecords(), afterData(), options);
      if (stepwise) this.replacing = steps;
      else for (const u of steps) this.units.push(u);
    }
    after.observe(this.recorder);
  }

  /** Whether the stepwise replacement waits for the next batch of the old records: make what is staged durable, then `readBefore`. */
  get readPending(): boolean {
    return this.readNeeded;
  }

  /** Whether the pending read is the first (it opens the engine view: what is staged must be durable first); later ones read the same view. */
  get readOpensView(): boolean {
    return this.readNeeded && this.recorded !== undefined && !this.recorded.opened;
  }

  /** Reads the next batch of the old records the replacement asked for (`readPending`). */
  async readBefore(): Promise<void> {
    this.readNeeded = false;
    await this.recorded?.fill();
  }

  /** Releases what a replacement left unfinished holds (the engine view of the old records). */
  abandon(): void {
    const recorded = this.recorded;
    this.recorded = undefined;
    this.replacing = undefined;
    this.readNeeded = false;
    void recorded?.close().catch(() => {});
  }

  /** Whether a stepwise replacement is still being handed out. */
  get installing(): boolean {
    return this.replacing !== undefined;
  }

  /** The next unit of a stepwise replacement, or undefined when it is complete (or none is going on). */
  nextReplacementUnit(): EngineOp[] | undefined {
    if (!this.replacing) return undefined;
    const next = this.replacing.next();
    if (next.done) {
      this.replacing = undefined;
      this.recorded = undefined; // closed by its last batch
      return undefined;
    }
    if (next.value === READ_BEFORE) {
      this.readNeeded = true;
      return [];
    }
    return next.value;
  }

  /** The units recorded since the last call, `sm`'s latest changes last (none while a replacement is handed out). */
  take(sm: KvStateMachine): EngineOp[][] {
    // While a replacement is handed out the recorder is in the middle of it: only what was
    // recorded before it (the old state's last unit) goes now.
    if (!this.replacing) {
      const u = this.recorder.take(sm);
      if (u) this.units.push(u);
    }
    const out = this.units;
    this.units = [];
    return out;
  }

  /** See `StateRecorder.takeDeletedLatests`: the live keys' latest records deleted by the units handed out since the last call. */
  takeDeletedLatests(): ReturnType<StateRecorder['takeDeletedLatests']> {
    return this.recorder.takeDeletedLatests();
  }

  /** The applied index of the last unit handed out (see ShardReplica.recordedIndex). */
  get recordedIndex(): number {
    return this.recorder.takenAppliedIndex;
  }
}

/** `first` (when there is one), then `rest`. */
function* withFirst(first: EngineOp[] | undefined, rest: Iterable<EngineOp[]>): Generator<EngineOp[], void, undefined> {
  if (first) yield first;
  yield* rest;
}
