// What a restart loads into memory (issue 17): writes N keys × 1 KiB of one group's state records into a fresh LevelDB, then rebuilds the machine from them with and without values and prints the time, the heap and external memory it added, and the value bytes the machine holds.
//
// Run: npx tsc -p tsconfig.json, then node --expose-gc dist/bench/restart-load.js [--keys 100000] [--value-bytes 1024] [--modes values,index,cold] [--profile DIR]
// Values are incompressible (LevelDB compresses blocks; user data mostly is not). `--profile DIR` writes a CPU profile of each load (summarise with dist/bench/profile-summary.js).
// "index" is what a node does at open since issue 17 (`loadState(..., { values: false })`); "values" is the old load; "cold" is a node with
// indexDropCold (`loadState(..., { values: false, coldKeys: true })`, the machine built with `cold` in slices between event-loop turns).
// Each load also prints its CPU time, the longest event-loop block (the largest gap between ticks of a 1 ms timer) and the peak anonymous RSS it added
// (RssAnon, sampled every 5 ms and at the end, before GC: LevelDB's memory-mapped table files are left out). Run one mode per process for comparable RSS figures.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
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
async function measure(engine: LevelEngine, n: number, mode: Mode, profileDir?: string): Promise<string> {
  const m0 = await settled();
  const rss0 = anonRss();
  let peakRss = rss0;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, anonRss())), 5);
  // The longest gap between two ticks of a 1 ms timer: the longest stretch the event loop was blocked.
  let lastTick = performance.now();
  let longestBlock = 0;
  const ticker = setInterval(() => {
    const now = performance.now();
    longestBlock = Math.max(longestBlock, now - lastTick);
    lastTick = now;
  }, 1);
  const cpu0 = process.cpuUsage();
  const session = profileDir === undefined ? undefined : new Session();
  if (session) {
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
  }
  const t0 = performance.now();
  const timings: LoadTimings = { scanMs: 0, records: 0, assembleMs: 0, historyValuesMs: 0 };
  const loaded = await loadState(engine, 1, { values: mode === 'values', timings, ...(mode === 'cold' ? { coldKeys: true } : {}) });
  const t1 = performance.now();
  // As recovery does: in one go before the cold load, in slices with it.
  const sm = mode === 'cold' ? await stepsYielding(KvStateMachine.fromRecordsSteps(loaded!.data, { adopt: true, cold: loaded!.cold! })) : KvStateMachine.fromRecords(loaded!.data, { adopt: true });
  const t2 = performance.now();
  const ms = t2 - t0;
  const cpu = process.cpuUsage(cpu0);
  peakRss = Math.max(peakRss, anonRss());
  await new Promise((r) => setTimeout(r, 10)); // the ticker records a block when it fires after it
  clearInterval(sampler);
  clearInterval(ticker);
  if (session) {
    const { profile } = await session.post('Profiler.stop');
    session.disconnect();
    await writeFile(join(profileDir!, `restart-load-${mode}-${n}.cpuprofile`), JSON.stringify(profile));
  }
  const m1 = await settled();
  return (
    `${n} keys, load ${mode === 'values' ? 'with values (before issue 17)' : mode === 'index' ? 'index only' : 'cold keys (indexDropCold)'}: ${ms.toFixed(0)} ms ` +
    `(CPU ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms, longest block ${longestBlock.toFixed(0)} ms, peak anonymous RSS +${mib(peakRss - rss0)} MiB, cold keys ${loaded!.cold?.keys.length ?? 0}) ` +
    `(scan ${timings.scanMs.toFixed(0)} ms over ${timings.records} records, assemble ${timings.assembleMs.toFixed(0)}, history values ${timings.historyValuesMs.toFixed(0)}, fromRecords ${(t2 - t1).toFixed(0)}), ` +
    `heap +${mib(m1.heapUsed - m0.heapUsed)} MiB, external +${mib(m1.external - m0.external)} MiB, ` +
    `value bytes held by the machine ${mib(sm.heapValueBytes())} MiB, keys ${sm.keyCount}`
  );
}

type Mode = 'values' | 'index' | 'cold';

/** The process's anonymous resident memory (bytes; Linux): heap and native allocations, not LevelDB's memory-mapped table files. */
function anonRss(): number {
  const m = /RssAnon:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'latin1'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage.rss();
}

/** Runs `steps` to the end, yielding a macrotask turn after each 20 ms of work (as recovery does). */
async function stepsYielding<T>(steps: Generator<void, T, undefined>): Promise<T> {
  let last = performance.now();
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() - last >= 20) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      last = performance.now();
    }
  }
}

/** An incompressible value of `bytes` (a slice of `pool` at an offset that depends on `i`). */
function randomValue(pool: Buffer, i: number, bytes: number): Uint8Array {
  if (bytes > pool.length) return randomBytes(bytes);
  const at = (i * 4099) % (pool.length - bytes + 1);
  return new Uint8Array(pool.subarray(at, at + bytes));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { keys: { type: 'string', default: '100000' }, 'value-bytes': { type: 'string', default: '1024' }, modes: { type: 'string', default: 'values,index' }, profile: { type: 'string' }, dir: { type: 'string' } },
  });
  const modes = (values.modes === '' ? [] : values.modes.split(',')) as Mode[];
  if (!modes.every((m) => m === 'values' || m === 'index' || m === 'cold')) throw new Error('--modes: values, index and/or cold');
  const pool = randomBytes(1 << 20);
  const n = flagInt('keys', values.keys, 1);
  const valueBytes = flagInt('value-bytes', values['value-bytes'], 1);
  // --dir DIR keeps the database: written on the first run (e.g. with --modes ''), loaded as it is by the next ones
  // (a fresh process per load: the RSS the writes left does not hide the load's).
  const dir = values.dir ?? (await mkdtemp(join(tmpdir(), 'kvcascade-restart-')));
  const written = values.dir !== undefined && existsSync(join(dir, 'CURRENT'));
  const engine = await LevelEngine.open(dir);
  try {
    if (!written) {
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
    if (values.dir === undefined) await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
