// What a restart loads into memory (issue 17): writes N keys × 1 KiB of one group's state records into a fresh LevelDB, then rebuilds the machine from them with and without values and prints the time, the heap and external memory it added, and the value bytes the machine holds.
//
// Run: npx tsc -p tsconfig.json, then node --expose-gc dist/bench/restart-load.js [--keys 100000] [--value-bytes 1024] [--modes values,index] [--profile DIR]
// Values are incompressible (LevelDB compresses blocks; user data mostly is not). `--profile DIR` writes a CPU profile of each load (summarise with dist/bench/profile-summary.js).
// "index" is what a node does at open since issue 17 (`loadState(..., { values: false })`); "values" is the old load.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvStateMachine } from '../src/statemachine/index.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { loadState, StateRecorder, type LoadTimings } from '../src/storage/state-store.js';
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
async function measure(engine: LevelEngine, n: number, mode: 'values' | 'index', profileDir?: string): Promise<string> {
  const m0 = await settled();
  const session = profileDir === undefined ? undefined : new Session();
  if (session) {
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
  }
  const t0 = performance.now();
  const timings: LoadTimings = { scanMs: 0, records: 0, assembleMs: 0, historyValuesMs: 0 };
  const loaded = await loadState(engine, 1, { values: mode === 'values', timings });
  const t1 = performance.now();
  const sm = KvStateMachine.fromRecords(loaded!.data, { adopt: true }); // as recovery does
  const t2 = performance.now();
  const ms = t2 - t0;
  if (session) {
    const { profile } = await session.post('Profiler.stop');
    session.disconnect();
    await writeFile(join(profileDir!, `restart-load-${mode}-${n}.cpuprofile`), JSON.stringify(profile));
  }
  const m1 = await settled();
  return (
    `${n} keys, load ${mode === 'values' ? 'with values (before issue 17)' : 'index only (now)'}: ${ms.toFixed(0)} ms ` +
    `(scan ${timings.scanMs.toFixed(0)} ms over ${timings.records} records, assemble ${timings.assembleMs.toFixed(0)}, history values ${timings.historyValuesMs.toFixed(0)}, fromRecords ${(t2 - t1).toFixed(0)}), ` +
    `heap +${mib(m1.heapUsed - m0.heapUsed)} MiB, external +${mib(m1.external - m0.external)} MiB, ` +
    `value bytes held by the machine ${mib(sm.heapValueBytes())} MiB, keys ${sm.keyCount}`
  );
}

/** An incompressible value of `bytes` (a slice of `pool` at an offset that depends on `i`). */
function randomValue(pool: Buffer, i: number, bytes: number): Uint8Array {
  if (bytes > pool.length) return randomBytes(bytes);
  const at = (i * 4099) % (pool.length - bytes + 1);
  return new Uint8Array(pool.subarray(at, at + bytes));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { keys: { type: 'string', default: '100000' }, 'value-bytes': { type: 'string', default: '1024' }, modes: { type: 'string', default: 'values,index' }, profile: { type: 'string' } },
  });
  const modes = values.modes.split(',') as Array<'values' | 'index'>;
  if (!modes.every((m) => m === 'values' || m === 'index')) throw new Error('--modes: values and/or index');
  const pool = randomBytes(1 << 20);
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
        sm.apply(i + 1, 1000 + i, { type: 'put', key: `data/${i.toString().padStart(9, '0')}`, value: randomValue(pool, i, valueBytes) });
        if (i % 5000 === 4999) await engine.batch(rec.take(sm)!, { sync: false });
      }
      const last = rec.take(sm);
      if (last) await engine.batch(last, { sync: true });
    }
    for (const mode of modes) console.log(await measure(engine, n, mode, values.profile));
  } finally {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
