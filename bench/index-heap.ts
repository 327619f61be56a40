// Heap bytes per key of one shard's key index (issue 17): N keys × 1 KiB written once into LevelDB through a state machine with its values released, measured after full garbage collections, with the latest versions from the heap index, from the engine (no cache), and from the engine with cold keys dropped from the heap (`dropCold`).
//
// Run: npx tsc -p tsconfig.json (or npm run build), then
//   node --expose-gc dist/bench/index-heap.js [--keys 100000] [--modes heap,index,drop,drop-compacted,restart-drop,restart-cold] [--versions 1] [--prefix /bench/]
// (`--versions V`: each key written V times, so V versions retained per key. `--prefix /_sys/bench/`: reserved keys,
// which stay in the live-key set with `dropCold`: `drop-compacted` then measures what a reserved live key costs.)
// `drop-compacted`: as `drop`, then compacted to the last revision and released (the write log's entries of the keys
// go: what a dropped key costs once older than the retention window; with `--versions 2` or more, the keys compaction
// cuts down to one version leave the heap then too). `restart-drop`: the keys written as in `heap`, then the
// machine rebuilt from the records as a restart does (`loadState` without values, `fromRecords`) with `dropCold`,
// released; measured against the heap before the rebuild (the writer machine is dropped first). `restart-cold`: the same
// through the restart a dropCold node does (`loadState` with `coldKeys`, `fromRecords` with `cold`).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvStateMachine } from '../src/statemachine/index.js';
import { IndexCache } from '../src/storage/index-cache.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { EngineIndexSource, EngineValueSource, loadState, StateRecorder } from '../src/storage/state-store.js';
import { ValueCache } from '../src/storage/value-cache.js';
import { flagInt } from './util.js';

const gc = (globalThis as { gc?: () => void }).gc;

/** The machine rebuilt from the group's records as a restart does (in its own frame: the loaded records are garbage once it returns); with `cold`, as a dropCold node's restart does (single-version live keys from a keys-only scan, `fromRecords` with `cold`). */
async function rebuilt(engine: LevelEngine, cold = false): Promise<KvStateMachine> {
  const loaded = (await loadState(engine, 1, { values: false, ...(cold ? { coldKeys: true } : {}) }))!;
  return KvStateMachine.fromRecords(loaded.data, { adopt: true, ...(cold ? { cold: loaded.cold! } : {}) });
}

/** The heap per key `m` holds against `before` (after full GCs). */
async function settle(m: KvStateMachine, n: number, mode: string, versions: number, before: number): Promise<string> {
  gc!();
  gc!();
  const perKey = (process.memoryUsage().heapUsed - before) / n;
  return `${mode.padEnd(6)} ${n} keys x ${versions} versions: ${perKey.toFixed(0)} B of heap per key (version lists kept ${m.indexSize.keys}, dropped ${m.droppedKeys}, live ${m.keyCount})`;
}

/** Heap bytes per key after writing `n` keys `versions` times each in `mode`. */
async function measure(n: number, mode: string, versions: number, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kvcascade-index-heap-'));
  const engine = await LevelEngine.open(dir);
  try {
    let sm = new KvStateMachine();
    const rec = new StateRecorder(1);
    sm.observe(rec);
    sm.attachValues(new EngineValueSource(engine, 1, new ValueCache(0)));
    const drop = mode === 'drop' || mode === 'drop-compacted';
    const restart = mode === 'restart-drop' || mode === 'restart-cold';
    if (mode !== 'heap' && !restart) sm.attachIndex(new EngineIndexSource(engine, 1, new IndexCache(0)), { dropCold: drop });
    const value = new Uint8Array(1024).fill(1);
    gc!();
    gc!();
    const before = process.memoryUsage().heapUsed;
    let index = 0;
    for (let v = 0; v < versions; v++) {
      for (let i = 0; i < n; i++) {
        sm.apply(++index, 1000 + index, { type: 'put', key: `${prefix}${String(i).padStart(8, '0')}`, value });
        if (i % 1000 === 999 || i === n - 1) {
          await engine.batch(rec.take(sm) ?? [], { sync: i === n - 1 });
          sm.releaseValues(sm.revision);
        }
      }
    }
    if (mode === 'drop-compacted') {
      // As a node: the compaction's records written, then the next release (keys cut down to one version leave then).
      sm.compact(sm.revision);
      await engine.batch(rec.take(sm) ?? [], { sync: true });
      while (sm.releaseValues(sm.revision, 20_000));
    }
    if (restart) {
      sm.observe(undefined);
      sm = new KvStateMachine(); // the writer is garbage from here on: the rebuilt machine is measured alone
      const m = await rebuilt(engine, mode === 'restart-cold');
      m.attachValues(new EngineValueSource(engine, 1, new ValueCache(0)));
      m.attachIndex(new EngineIndexSource(engine, 1, new IndexCache(0)), { dropCold: true });
      while (m.releaseValues(m.revision, 20_000));
      return await settle(m, n, mode, versions, before);
    }
    return await settle(sm, n, mode, versions, before);
  } finally {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const { values } = parseArgs({
  options: {
    keys: { type: 'string', default: '100000' },
    modes: { type: 'string', default: 'heap,index,drop' },
    versions: { type: 'string', default: '1' },
    prefix: { type: 'string', default: '/bench/' },
  },
});
if (gc === undefined) {
  console.error('run with node --expose-gc');
  process.exit(2);
}
if (!values.prefix.startsWith('/')) {
  console.error('--prefix must start with / (e.g. /bench/, or /_sys/bench/ for reserved keys)');
  process.exit(2);
}
for (const mode of values.modes.split(',')) console.log(await measure(flagInt('keys', values.keys, 1), mode, flagInt('versions', values.versions, 1), values.prefix));
