// Heap bytes per key of one shard's key index (issue 17): N keys × 1 KiB written once into LevelDB through a state machine with its values released, measured after full garbage collections, with the latest versions from the heap index, from the engine (no cache), and from the engine with cold keys dropped from the heap (`dropCold`).
//
// Run: npx tsc -p tsconfig.json (or npm run build), then
//   node --expose-gc dist/bench/index-heap.js [--keys 100000] [--modes heap,index,drop] [--versions 1]
// (`--versions V`: each key written V times, so V versions retained per key)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvStateMachine } from '../src/statemachine/index.js';
import { IndexCache } from '../src/storage/index-cache.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { EngineIndexSource, EngineValueSource, StateRecorder } from '../src/storage/state-store.js';
import { ValueCache } from '../src/storage/value-cache.js';
import { flagInt } from './util.js';

const gc = (globalThis as { gc?: () => void }).gc;

/** Heap bytes per key after writing `n` keys `versions` times each in `mode`. */
async function measure(n: number, mode: string, versions: number): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kvcascade-index-heap-'));
  const engine = await LevelEngine.open(dir);
  try {
    const sm = new KvStateMachine();
    const rec = new StateRecorder(1);
    sm.observe(rec);
    sm.attachValues(new EngineValueSource(engine, 1, new ValueCache(0)));
    if (mode !== 'heap') sm.attachIndex(new EngineIndexSource(engine, 1, new IndexCache(0)), { dropCold: mode === 'drop' });
    const value = new Uint8Array(1024).fill(1);
    gc!();
    gc!();
    const before = process.memoryUsage().heapUsed;
    let index = 0;
    for (let v = 0; v < versions; v++) {
      for (let i = 0; i < n; i++) {
        sm.apply(++index, 1000 + index, { type: 'put', key: `/bench/${String(i).padStart(8, '0')}`, value });
        if (i % 1000 === 999 || i === n - 1) {
          await engine.batch(rec.take(sm) ?? [], { sync: i === n - 1 });
          sm.releaseValues(sm.revision);
        }
      }
    }
    gc!();
    gc!();
    const perKey = (process.memoryUsage().heapUsed - before) / n;
    return `${mode.padEnd(6)} ${n} keys x ${versions} versions: ${perKey.toFixed(0)} B of heap per key (version lists kept ${sm.indexSize.keys}, dropped ${sm.droppedKeys})`;
  } finally {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const { values } = parseArgs({
  options: { keys: { type: 'string', default: '100000' }, modes: { type: 'string', default: 'heap,index,drop' }, versions: { type: 'string', default: '1' } },
});
if (gc === undefined) {
  console.error('run with node --expose-gc');
  process.exit(2);
}
for (const mode of values.modes.split(',')) console.log(await measure(flagInt('keys', values.keys, 1), mode, flagInt('versions', values.versions, 1)));
