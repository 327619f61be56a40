// What a restart loads into memory (issue 17): writes N keys × 1 KiB of one group's state records into a fresh LevelDB, then rebuilds the machine from them with and without values and prints the time, the heap and external memory it added, and the value bytes the machine holds.
//
// Run: npx tsc -p tsconfig.json, then node --expose-gc dist/bench/restart-load.js [--keys 100000] [--value-bytes 1024]
// "index" is what a node does at open since issue 17 (`loadState(..., { values: false })`); "values" is the old load.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvStateMachine } from '../src/statemachine/index.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { loadState, StateRecorder } from '../src/storage/state-store.js';
import { flagInt } from './util.js';

const mib = (n: number): string => (n / 2 ** 20).toFixed(1);

async function settled(): Promise<NodeJS.MemoryUsage> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with node --expose-gc');
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 50)); // native buffers are freed by finalizers after a GC
  }
  return process.memoryUsage();
}

/** One load in its own frame (so nothing of it is reachable when the next one is measured). */
async function measure(engine: LevelEngine, n: number, mode: 'values' | 'index'): Promise<string> {
  const m0 = await settled();
  const t0 = performance.now();
  const loaded = await loadState(engine, 1, { values: mode === 'values' });
  const sm = KvStateMachine.fromRecords(loaded!.data);
  const ms = performance.now() - t0;
  const m1 = await settled();
  return (
    `${n} keys, load ${mode === 'values' ? 'with values (before issue 17)' : 'index only (now)'}: ${ms.toFixed(0)} ms, ` +
    `heap +${mib(m1.heapUsed - m0.heapUsed)} MiB, external +${mib(m1.external - m0.external)} MiB, ` +
    `value bytes held by the machine ${mib(sm.heapValueBytes())} MiB, keys ${sm.keyCount}`
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { keys: { type: 'string', default: '100000' }, 'value-bytes': { type: 'string', default: '1024' } } });
  const n = flagInt('keys', values.keys, 1);
  const valueBytes = flagInt('value-bytes', values['value-bytes'], 1);
  const dir = await mkdtemp(join(tmpdir(), 'kvcascade-restart-'));
  const engine = await LevelEngine.open(dir);
  try {
    {
      const sm = new KvStateMachine();
      const rec = new StateRecorder(1);
      sm.observe(rec);
      for (let i = 0; i < n; i++) {
        sm.apply(i + 1, 1000 + i, { type: 'put', key: `data/${i.toString().padStart(9, '0')}`, value: new Uint8Array(valueBytes).fill(i & 0xff) });
        if (i % 5000 === 4999) await engine.batch(rec.take(sm)!, { sync: false });
      }
      const last = rec.take(sm);
      if (last) await engine.batch(last, { sync: true });
    }
    for (const mode of ['values', 'index'] as const) console.log(await measure(engine, n, mode));
  } finally {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
