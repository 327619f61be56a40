/**
 * Rebuilding a node's groups when it opens: writing a brand-new group's bootstrap state, deleting
 * state records left by a drop a crash interrupted, and rebuilding each group's state machine
 * from its durable records or its Raft snapshot (state-store.ts explains the records).
 */
import {
  bootstrapState,
  decodeConfChange,
  EntryType,
  nextConfState,
  type ConfState,
  type MemoryStorage,
  type NodeId,
} from '../raft/index.js';
import { KvStateMachine, type KvStateMachineOptions } from '../statemachine/index.js';
import { StorageCorruptionError, type RaftLogStore } from '../storage/raft-log-store.js';
import type { KvEngine } from '../storage/kv-engine.js';
import { loadState, readStateMeta, type LoadTimings, StateRecorder, stateGroups, stateKeys } from '../storage/state-store.js';
import { runSteps, SnapshotValueCursor } from '../statemachine/snapshot-codec.js';
import { streamedSnapshotReader } from './snapshot-inbox.js';
import type { Logger } from '../log.js';

/** Staged bytes after which recovery from a streamed snapshot flushes before staging more. */
const STREAMED_RECOVERY_FLUSH_BYTES = 32 * 1024 * 1024;

/** A group's state machine as rebuilt at open, with the recorder that knows its records. */
export interface RecoveredState {
  readonly sm: KvStateMachine;
  readonly recorder: StateRecorder;
}

/** Writes a brand-new group's bootstrap state (its initial voters) to storage. */
export function bootstrapGroup(store: RaftLogStore, group: number, voters: readonly NodeId[]): void {
  store.storageFor(group, { voters: [...voters], learners: [] });
  const b = bootstrapState(voters);
  store.persistReady(group, { entries: b.entries, hardState: b.hardState });
}

/** Stages the deletion of state records of groups whose Raft state is gone (a drop interrupted by a crash). */
export async function deleteOrphanRecords(store: RaftLogStore, engine: KvEngine): Promise<void> {
  const hosted = new Set(store.groups());
  for (const g of await stateGroups(engine)) {
    if (hosted.has(g)) continue;
    const keys = await stateKeys(engine, g);
    store.stageStateOps(g, keys.map((key) => ({ type: 'del' as const, key })));
  }
}

/**
 * Rebuilds `group`'s state machine at open: from its durable records when they are at least as
 * new as the Raft snapshot (Raft then replays only later entries), else from the snapshot (or
 * empty), rewriting the records to match (see state-store.ts). Also brings the stored membership
 * up to the applied index, as Raft will not re-apply the configuration changes before it.
 */
export async function recoverState(
  store: RaftLogStore,
  engine: KvEngine,
  group: number,
  o: {
    readonly stateMachine?: KvStateMachineOptions;
    readonly stateUnitBytes?: number;
    readonly log: Logger;
    readonly sweepVersions?: boolean;
    /**
     * The replica will attach its index with `dropCold`: keys whose only retained version is live
     * are loaded as key and revision and left out of the heap (`loadState` option `coldKeys`,
     * `KvStateMachine.fromRecords` option `cold`), as a running machine drops them.
     */
    readonly dropCold?: boolean;
  },
): Promise<RecoveredState> {
  const t0 = performance.now();
  const recorderOptions = { sweepVersions: o.sweepVersions === true };
  const storage = store.storageFor(group);
  const snap = storage.snapshot();
  const snapIndex = snap?.meta.index ?? 0;
  const meta = await readStateMeta(engine, group);
  let sm: KvStateMachine;
  let recorder: StateRecorder;
  const fromRecords = meta !== undefined && meta.appliedIndex >= snapIndex;
  const timings: Record<string, number> = {};
  if (fromRecords) {
    const load: LoadTimings = { scanMs: 0, records: 0, assembleMs: 0, historyValuesMs: 0 };
    // Values stay in the engine; with the sweep, compacted versions not swept yet are skipped.
    const loaded = (await loadState(engine, group, { values: false, timings: load, deadVersions: o.sweepVersions === true, coldKeys: o.dropCold === true }))!;
    const built = performance.now();
    // The loaded lists are this machine's alone (adopted); built in slices between event-loop turns.
    sm = await runStepsYielding(KvStateMachine.fromRecordsSteps(loaded.data, { adopt: true, ...(loaded.cold ? { cold: loaded.cold } : {}) }));
    Object.assign(timings, load, { fromRecordsMs: performance.now() - built, coldKeys: loaded.cold?.keys.length ?? 0 });
    recorder = new StateRecorder(group, loaded.written, {}, recorderOptions);
    // Durable records at or past the snapshot: its data (an install cut short before the drop) is not needed.
    store.dropSnapshotData(group);
  } else {
    if (snap && snap.data.length === 0 && !snap.streamed) {
      // A records snapshot is staged only after records at (or past) its index: they must be here.
      throw new StorageCorruptionError(
        `group ${group}: the log is compacted to ${snapIndex} with the state in the records, but they ${meta ? `are at ${meta.appliedIndex}` : 'are missing'}`,
      );
    }
    if (snap?.streamed) {
      // A streamed install cut short: from its chunk records again (values stay there and in the records).
      const reader = streamedSnapshotReader(store, group);
      if (!reader) throw new StorageCorruptionError(`group ${group}: a streamed snapshot at ${snapIndex} without its chunk records`);
      sm = runSteps(KvStateMachine.restoreSteps(reader));
      recorder = new StateRecorder(group, undefined, {}, recorderOptions);
      const stale = await stateKeys(engine, group);
      const cursor = new SnapshotValueCursor(streamedSnapshotReader(store, group)!);
      let units = 0;
      for (const u of recorder.replaceSteps(undefined, sm.toRecords(), {
        deleteKeys: stale,
        valueAt: (key, revision) => cursor.valueAt(key, revision),
        ...(o.stateUnitBytes ? { maxUnitBytes: o.stateUnitBytes } : {}),
      })) {
        store.stageStateOps(group, u);
        units++;
        if (store.stagedBytes >= STREAMED_RECOVERY_FLUSH_BYTES) await store.flush(); // bounds what is staged
      }
      store.dropSnapshotData(group);
      // The machine reads its values from the records: durable before it serves anything.
      await store.flush();
      o.log.info({ group, snapshotIndex: snapIndex, staleRecords: stale.length, units }, 'state machine records rewritten from a streamed snapshot');
      const conf = confAt(storage, sm.appliedIndex);
      if (conf) store.setConf(group, conf);
      return { sm, recorder };
    }
    sm = snap ? KvStateMachine.restore(snap.data) : new KvStateMachine(o.stateMachine);
    recorder = new StateRecorder(group, undefined, {}, recorderOptions);
    const stale = await stateKeys(engine, group);
    if (stale.length > 0 || sm.appliedIndex > 0) {
      const units = recorder.replace(undefined, sm.toRecords(), {
        deleteKeys: stale,
        ...(o.stateUnitBytes ? { maxUnitBytes: o.stateUnitBytes } : {}),
      });
      for (const u of units) store.stageStateOps(group, u);
      store.dropSnapshotData(group); // staged after the records: the data stays on disk until they are
      o.log.info({ group, snapshotIndex: snapIndex, staleRecords: stale.length }, 'state machine records rewritten from the snapshot');
    }
  }
  // The commit index on disk is a lower bound (raft-log-store.ts): the applied records were committed.
  store.raiseCommit(group, sm.appliedIndex);
  const conf = confAt(storage, sm.appliedIndex);
  if (conf) store.setConf(group, conf);
  const ms = (x: number): number => Math.round(x);
  o.log.info(
    { group, appliedIndex: sm.appliedIndex, snapshotIndex: snapIndex, fromRecords, totalMs: ms(performance.now() - t0), ...Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, ms(v)])) },
    'state machine recovered',
  );
  return { sm, recorder };
}

/** Longest stretch (ms) of building a machine at open before yielding to the event loop. */
const BUILD_SLICE_MS = 20;

/** Runs `steps` to the end, yielding to the event loop (a macrotask turn) after each {@link BUILD_SLICE_MS} of work. */
async function runStepsYielding<T>(steps: Generator<void, T, undefined>): Promise<T> {
  let last = performance.now();
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() - last >= BUILD_SLICE_MS) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      last = performance.now();
    }
  }
}

/**
 * The membership in effect at `applied` when it differs from the one `storage` holds (which is
 * the membership as of its snapshot, or bootstrap): the configuration changes in the log up to
 * `applied` are applied to it. Undefined when nothing changes.
 */
function confAt(storage: MemoryStorage, applied: number): ConfState | undefined {
  const first = storage.firstIndex();
  const last = Math.min(applied, storage.lastIndex());
  const before = storage.initialState().conf;
  let conf = before;
  if (last < first) return undefined;
  for (const e of storage.entries(first, last + 1)) {
    if (e.type === EntryType.ConfChange) conf = nextConfState(conf, decodeConfChange(e.data));
  }
  const sorted = (a: readonly number[]): string => [...a].sort((x, y) => x - y).join(',');
  const same = (a: readonly number[], b: readonly number[]): boolean => sorted(a) === sorted(b);
  return same(conf.voters, before.voters) && same(conf.learners, before.learners) ? undefined : conf;
}
