/**
 * The durable side of one replica's state machine: what it applied becomes units of writes to
 * its state records (state-store.ts) that the driver stages into each round's batch, and when a
 * Raft snapshot replaces the state, the records are replaced too — at once, or unit by unit over
 * several ready rounds for a large install (`stepwiseInstall`).
 */
import type { KvStateMachine } from '../statemachine/index.js';
import type { EngineOp } from '../storage/kv-engine.js';
import type { StateRecorder } from '../storage/state-store.js';

/** Records a replica's state machine changes as units of record writes, in the order they must be staged. */
export class ReplicaRecords {
  private units: EngineOp[][] = [];
  /** The records replacement of a snapshot being installed stepwise (see `nextReplacementUnit`). */
  private replacing: Iterator<EngineOp[]> | undefined;

  constructor(
    private readonly recorder: StateRecorder,
    private readonly maxUnitBytes: number | undefined,
  ) {}

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
   */
  replace(before: KvStateMachine, after: KvStateMachine, stepwise: boolean, valueAt?: (key: string, revision: number) => Uint8Array): void {
    before.observe(undefined);
    const pending = this.recorder.take(before);
    if (pending) this.units.push(pending);
    const steps = this.recorder.replaceSteps(before.toRecords(), after.toRecords(), {
      ...(this.maxUnitBytes ? { maxUnitBytes: this.maxUnitBytes } : {}),
      ...(valueAt ? { valueAt } : {}),
    });
    if (stepwise) this.replacing = steps;
    else for (const u of steps) this.units.push(u);
    after.observe(this.recorder);
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
      return undefined;
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
