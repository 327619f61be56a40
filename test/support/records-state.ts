/**
 * A replica's state read from its engine's records, the way production serves it (issue 17: with
 * `indexDropCold`, on by default, the heap machine holds reserved keys only and cannot list or
 * snapshot its user keys): tests compare replicas, restarts and installs through this, never
 * through the heap machine's `snapshot()`.
 */
import { expect } from 'vitest';
import { DATA_GROUP, type KvNode } from '../../src/node/kv-node.js';
import { KvStateMachine } from '../../src/statemachine/index.js';
import type { KvEngine } from '../../src/storage/kv-engine.js';
import { encodeSnapshotFromRecords } from '../../src/storage/state-store.js';

/**
 * The snapshot encoding of `group`'s state as `engine`'s records hold it (the encoding a lagging
 * follower is sent, `encodeSnapshotFromRecords`), or the empty machine's when nothing was recorded.
 */
export async function recordsSnapshot(engine: KvEngine, group: number = DATA_GROUP): Promise<Buffer> {
  const view = engine.view();
  try {
    const encoded = await encodeSnapshotFromRecords(view, group);
    return Buffer.from(encoded === undefined ? new KvStateMachine().snapshot() : encoded.data);
  } finally {
    await view.close();
  }
}

/**
 * The state of `node`'s replica of `group` (running or stopped), encoded from its engine's records
 * once they hold everything the replica applied: waits for the node's writes (`whenWritten`) and
 * reads again while the records lag the machine's applied index (a round applied meanwhile).
 * Fails the test when they never catch up.
 */
export async function replicaState(node: KvNode, engine: KvEngine, group: number = DATA_GROUP): Promise<Buffer> {
  const replica = node.replica(group);
  if (replica === undefined) throw new Error(`node ${node.id} hosts no replica of group ${group}`);
  let last = -1;
  for (let attempt = 0; attempt < 50; attempt++) {
    await node.whenWritten();
    const applied = replica.internalsForTests().sm.appliedIndex;
    const state = await recordsSnapshot(engine, group);
    last = KvStateMachine.restore(state).appliedIndex;
    if (last === applied) return state;
    await new Promise<void>((resolve) => setImmediate(resolve)); // a round is being written: read it next turn
  }
  expect.fail(`node ${node.id} group ${group}: its records stayed at applied index ${last}, behind its machine`);
}

/** The states of `nodes`' replicas of `group` (`engines[i]` is `nodes[i]`'s engine), read one after another. */
export async function replicaStates(nodes: readonly KvNode[], engines: readonly KvEngine[], group: number = DATA_GROUP): Promise<Buffer[]> {
  const states: Buffer[] = [];
  for (const [i, n] of nodes.entries()) states.push(await replicaState(n, engines[i]!, group));
  return states;
}

/**
 * Asserts that `sm` (a node's machine, its heap holding reserved keys only or not) reads every key
 * of `state` (a snapshot encoding, e.g. from {@link replicaState}) as `state` does, latest and at
 * each of its retained revisions, and is at the same applied index and revision.
 */
export function expectSameReads(sm: KvStateMachine, state: Uint8Array): void {
  const ref = KvStateMachine.restore(state);
  expect(sm.appliedIndex).toBe(ref.appliedIndex);
  expect(sm.revision).toBe(ref.revision);
  expect(sm.compactRevision).toBe(ref.compactRevision);
  const row = (r: ReturnType<KvStateMachine['get']>) => r && [r.version, r.timestampMs, Buffer.from(r.value).toString('hex')];
  const keys = ref.list('', { limit: 10_000, keysOnly: true }).items.map((i) => i.key);
  for (const key of keys) {
    expect(row(sm.get(key)), key).toEqual(row(ref.get(key)));
    for (let rev = Math.max(1, ref.compactRevision); rev <= ref.revision; rev++) {
      expect(row(sm.get(key, { atRevision: rev })), `${key} at ${rev}`).toEqual(row(ref.get(key, { atRevision: rev })));
    }
  }
}
