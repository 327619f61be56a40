// The cost of compacting old versions (issue 17): one shard's state machine over a LevelDB engine holding N keys with V versions each (1 KiB values), compacted to its current revision in steps of at most 10,000 revisions (as the leader's retention compaction does), with the versions deleted in each step's storage unit (the default) or left on disk for the background version sweep (`--sweep-versions`), whose units then delete them. Prints process CPU µs of the compaction steps' apply + unit (per dropped version) and of the sweep (per deleted version), and the largest step's unit.
//
// Run: npx tsc -p tsconfig.json (or npm run build), then
//   node dist/bench/version-sweep.js [--keys 20000] [--versions 5] [--value-bytes 1024] [--records-per-unit 1024]
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvStateMachine } from '../src/statemachine/index.js';
import { LevelEngine, scanAll } from '../src/storage/kv-engine.js';
import { stateKeyPrefix } from '../src/storage/raft-log-store.js';
import { EngineValueSource, StateRecorder, sweepVersions } from '../src/storage/state-store.js';
import { ValueCache } from '../src/storage/value-cache.js';
import { flagInt } from './util.js';

const GROUP = 1;
const STEP_REVISIONS = 10_000;

const cpuUs = (t0: NodeJS.CpuUsage): number => {
  const d = process.cpuUsage(t0);
  return d.user + d.system;
};

async function run(sweep: boolean, nKeys: number, nVersions: number, valueBytes: number, recordsPerUnit: number): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kvcascade-version-sweep-'));
  const engine = await LevelEngine.open(dir);
  try {
    const key = (i: number) => `/bench/${String(i).padStart(8, '0')}`;
    const value = new Uint8Array(valueBytes).fill(7);
    const sm = new KvStateMachine();
    const recorder = new StateRecorder(GROUP, undefined, {}, { sweepVersions: sweep });
    sm.observe(recorder);
    sm.attachValues(new EngineValueSource(engine, GROUP, new ValueCache(16 * 1024 * 1024)));
    let index = 0;
    for (let v = 0; v < nVersions; v++) {
      for (let i = 0; i < nKeys; i++) {
        sm.apply(++index, 1000 + v, { type: 'put', key: key(i), value });
        if (i % 1000 === 999 || i === nKeys - 1) {
          await engine.batch(recorder.take(sm) ?? [], { sync: false });
          sm.releaseValues(sm.revision);
        }
      }
    }
    const before = (await scanAll(engine, { prefix: `${stateKeyPrefix(GROUP)}v/` })).length;
    // Compaction to the current revision in bounded steps, each applied and its unit written.
    let stepCpu = 0;
    let maxUnitOps = 0;
    let steps = 0;
    while (sm.compactRevision < sm.revision) {
      const t0 = process.cpuUsage();
      sm.apply(++index, 2000, { type: 'compact', revision: Math.min(sm.revision, sm.compactRevision + STEP_REVISIONS) });
      const unit = recorder.take(sm) ?? [];
      await engine.batch(unit, { sync: true });
      stepCpu += cpuUs(t0);
      maxUnitOps = Math.max(maxUnitOps, unit.length);
      steps++;
    }
    const dropped = nKeys * (nVersions - 1);
    let sweepCpu = 0;
    let units = 0;
    let deleted = 0;
    let maxUnitMs = 0;
    if (sweep) {
      let from: Uint8Array | undefined;
      do {
        const t0 = process.cpuUsage();
        const w0 = performance.now();
        const u = (await sweepVersions(engine, GROUP, from, recordsPerUnit))!;
        sweepCpu += cpuUs(t0);
        maxUnitMs = Math.max(maxUnitMs, performance.now() - w0);
        units++;
        deleted += u.deleted;
        from = u.next;
      } while (from !== undefined);
    }
    const after = (await scanAll(engine, { prefix: `${stateKeyPrefix(GROUP)}v/` })).length;
    console.log(
      `${sweep ? 'sweep  ' : 'default'}: ${nKeys} keys x ${nVersions} versions, ${before} version records -> ${after}; ` +
        `compaction ${steps} steps, ${(stepCpu / 1000).toFixed(1)} ms CPU (${(stepCpu / dropped).toFixed(2)} us per dropped version), largest unit ${maxUnitOps} ops` +
        (sweep ? `; sweep ${units} units of ${recordsPerUnit} records, ${deleted} deleted, ${(sweepCpu / 1000).toFixed(1)} ms CPU (${(sweepCpu / Math.max(1, deleted)).toFixed(2)} us per deleted version), slowest unit ${maxUnitMs.toFixed(1)} ms wall` : ''),
    );
  } finally {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      keys: { type: 'string', default: '20000' },
      versions: { type: 'string', default: '5' },
      'value-bytes': { type: 'string', default: '1024' },
      'records-per-unit': { type: 'string', default: '1024' },
    },
  });
  const nKeys = flagInt('keys', values.keys, 1);
  const nVersions = flagInt('versions', values.versions, 2);
  const valueBytes = flagInt('value-bytes', values['value-bytes'], 0);
  const perUnit = flagInt('records-per-unit', values['records-per-unit'], 1);
  await run(false, nKeys, nVersions, valueBytes, perUnit);
  await run(true, nKeys, nVersions, valueBytes, perUnit);
}

await main();
