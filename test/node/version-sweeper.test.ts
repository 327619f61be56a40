// Tests of the node-local version sweep (node/version-sweeper.ts): a pass per group whose compaction point moved, at most one per interval, bounded units, nothing swept that a read needs, and a failed unit reported and retried.
import { describe, expect, it } from 'vitest';
import { VersionSweeper } from '../../src/node/version-sweeper.js';
import { KvStateMachine } from '../../src/statemachine/index.js';
import { MemoryEngine, scanAll } from '../../src/storage/kv-engine.js';
import { stateKeyPrefix } from '../../src/storage/raft-log-store.js';
import { loadState, StateRecorder } from '../../src/storage/state-store.js';

const GROUP = 3;
const enc = (s: string) => new TextEncoder().encode(s);

/** A group whose records hold 40 keys × 3 versions, compacted to its current revision with the sweep left to do. */
async function compactedGroup(): Promise<{ engine: MemoryEngine; sm: KvStateMachine; index: number }> {
  const engine = new MemoryEngine();
  const sm = new KvStateMachine();
  const rec = new StateRecorder(GROUP, undefined, {}, { sweepVersions: true });
  sm.observe(rec);
  let index = 0;
  for (let v = 0; v < 3; v++) for (let k = 0; k < 40; k++) sm.apply(++index, 100 + index, { type: 'put', key: `k${k}`, value: enc(`${k}.${v}`) });
  sm.apply(++index, 1000, { type: 'delete', key: 'k0' });
  sm.apply(++index, 1001, { type: 'compact', revision: sm.revision });
  await engine.batch(rec.take(sm)!, { sync: true });
  return { engine, sm, index };
}

const versions = async (engine: MemoryEngine): Promise<number> => (await scanAll(engine, { prefix: `${stateKeyPrefix(GROUP)}v/` })).length;

describe('VersionSweeper', () => {
  it('sweeps a group whose compaction point moved in bounded units, once per interval, leaving exactly the retained versions', async () => {
    const { engine, sm } = await compactedGroup();
    expect(await versions(engine)).toBe(121); // 40 × 3 + k0's tombstone
    const sweeper = new VersionSweeper(engine, { recordsPerUnit: 7, minPassIntervalMs: 1000 });
    await sweeper.poke([{ group: GROUP, compactRevision: sm.compactRevision }], 0);
    // 39 live keys keep their newest version; k0 (deleted, forgotten) keeps nothing.
    expect(await versions(engine)).toBe(39);
    expect(sweeper.counts).toMatchObject({ scanned: 121, deleted: 82, passes: 1, units: Math.ceil(121 / 7) });
    const loaded = KvStateMachine.fromRecords((await loadState(engine, GROUP))!.data); // strict: nothing dead is left
    expect(Buffer.from(loaded.snapshot()).equals(Buffer.from(sm.snapshot()))).toBe(true);
    // Nothing new to sweep: no pass; a moved compaction point within the interval: none either, after it: one.
    await sweeper.poke([{ group: GROUP, compactRevision: sm.compactRevision }], 5000);
    expect(sweeper.counts.passes).toBe(1);
    await sweeper.poke([{ group: GROUP, compactRevision: sm.compactRevision + 1 }], 5500);
    expect(sweeper.counts.passes).toBe(2);
    await sweeper.poke([{ group: GROUP, compactRevision: sm.compactRevision + 2 }], 6000);
    expect(sweeper.counts.passes).toBe(2);
    await sweeper.poke([{ group: GROUP, compactRevision: sm.compactRevision + 2 }], 6500);
    expect(sweeper.counts.passes).toBe(3);
  });

  it('reports a failed unit and retries the pass on a later poke; a group with no meta is left for later', async () => {
    const { engine, sm } = await compactedGroup();
    const errors: unknown[] = [];
    const sweeper = new VersionSweeper(engine, { recordsPerUnit: 50, minPassIntervalMs: 0, onError: (_g, e) => errors.push(e) });
    engine.injectFault(new Error('disk on fire'));
    await sweeper.poke([{ group: GROUP, compactRevision: sm.compactRevision }], 0);
    expect(errors.length).toBe(1);
    expect(sweeper.counts.passes).toBe(0);
    await sweeper.poke([{ group: GROUP, compactRevision: sm.compactRevision }], 1);
    expect(sweeper.counts.passes).toBe(1);
    expect(await versions(engine)).toBe(39);
    // A group without records (or mid-replacement): no unit, no pass, retried later.
    await sweeper.poke([{ group: GROUP + 1, compactRevision: 5 }], 2);
    expect(sweeper.counts.passes).toBe(1);
  });
});
