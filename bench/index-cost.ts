// The CPU cost of the key index served from the engine (issue 17): one shard's state machine over a LevelDB engine holding N keys, applying conditional puts (each looks its key's current version up), puts of new keys (the "never live" test: live-key set, Bloom filter, or a storage read) and serving latest gets, with the latest versions from the heap index (`records`), from the hot-index cache (hot keys), and from the engine's point reads (cold keys: a cache too small to hold any); and a `list` page from the heap versus from the records. Prints process CPU µs per operation (user + system: LevelDB's synchronous reads run on the calling thread), so the figures hold on a busy machine better than throughput does.
//
// Run: npx tsc -p tsconfig.json (or npm run build), then
//   node dist/bench/index-cost.js [--keys 100000] [--ops 20000] [--value-bytes 1024] [--rounds 3]
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvStateMachine } from '../src/statemachine/index.js';
import { IndexCache } from '../src/storage/index-cache.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { EngineIndexSource, EngineValueSource, listFromRecords, StateRecorder } from '../src/storage/state-store.js';
import { ValueCache } from '../src/storage/value-cache.js';
import { flagInt } from './util.js';

const GROUP = 1;

/** CPU µs (user + system) per call of `op` over `n` calls. */
function cpuPerOp(n: number, op: (i: number) => void): number {
  const t0 = process.cpuUsage();
  for (let i = 0; i < n; i++) op(i);
  const d = process.cpuUsage(t0);
  return (d.user + d.system) / n;
}

async function cpuPerOpAsync(n: number, op: (i: number) => Promise<void>): Promise<number> {
  const t0 = process.cpuUsage();
  for (let i = 0; i < n; i++) await op(i);
  const d = process.cpuUsage(t0);
  return (d.user + d.system) / n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      keys: { type: 'string', default: '100000' },
      ops: { type: 'string', default: '20000' },
      'value-bytes': { type: 'string', default: '1024' },
      rounds: { type: 'string', default: '3' },
    },
  });
  const nKeys = flagInt('keys', values.keys, 1);
  const nOps = flagInt('ops', values.ops, 1);
  const valueBytes = flagInt('value-bytes', values['value-bytes'], 0);
  const rounds = flagInt('rounds', values.rounds, 1);
  const dir = await mkdtemp(join(tmpdir(), 'kvcascade-index-cost-'));
  const engine = await LevelEngine.open(dir);
  try {
    const key = (i: number) => `/bench/${String(i).padStart(8, '0')}`;
    const value = new Uint8Array(valueBytes).fill(7);
    // Fill: one machine, its records written to the engine in rounds of 1,000, values released.
    const sm = new KvStateMachine();
    const recorder = new StateRecorder(GROUP);
    sm.observe(recorder);
    sm.attachValues(new EngineValueSource(engine, GROUP, new ValueCache(64 * 1024 * 1024)));
    let index = 0;
    for (let i = 0; i < nKeys; i++) {
      sm.apply(++index, 1000, { type: 'put', key: key(i), value });
      if (i % 1000 === 999 || i === nKeys - 1) {
        await engine.batch(recorder.take(sm) ?? [], { sync: false });
        sm.releaseValues(sm.revision);
      }
    }
    await engine.batch([], { sync: true });
    const rows: string[] = [];
    const report = (what: string, us: number[]) => rows.push(`${what.padEnd(60)} ${us.map((u) => u.toFixed(1).padStart(7)).join(' ')}`);
    // Each mode: nOps conditional puts at random keys (expectedVersion = the current one) and nOps latest gets.
    const modes: Array<{ name: string; cache?: number }> = [
      { name: 'heap index (records)' },
      { name: 'engine index, hot (cache holds every key)', cache: 1024 * 1024 * 1024 },
      { name: 'engine index, cold (cache of 0 bytes)', cache: 0 },
    ];
    const putCost: number[][] = modes.map(() => []);
    const getCost: number[][] = modes.map(() => []);
    let rnd = 12345;
    const next = () => (rnd = (rnd * 1103515245 + 12345) % 2 ** 31);
    let current = sm;
    let currentRec = recorder;
    for (let round = 0; round < rounds; round++) {
      for (const [m, mode] of modes.entries()) {
        // The machine as a restart makes it from the records (the index in the heap, no values), with the mode's source.
        const machine = KvStateMachine.fromRecords(current.toRecords());
        const rec = new StateRecorder(GROUP);
        machine.observe(rec);
        machine.attachValues(new EngineValueSource(engine, GROUP, new ValueCache(64 * 1024 * 1024)));
        if (mode.cache !== undefined) {
          machine.attachIndex(new EngineIndexSource(engine, GROUP, new IndexCache(mode.cache)));
          machine.releaseValues(machine.revision); // its records are durable: the index source serves
          if (mode.cache > 0) for (let i = 0; i < nKeys; i++) machine.get(key(i)); // warm: every key hot
        }
        let idx = machine.appliedIndex;
        // Rounds of 1,000 puts, timed; between them the round's records are written and released (not timed: as on a node, after the round).
        let cpu = 0;
        for (let done = 0; done < nOps; done += 1000) {
          const n = Math.min(1000, nOps - done);
          cpu +=
            n *
            cpuPerOp(n, () => {
              const k = key(next() % nKeys);
              const cur = machine.get(k)!.version;
              machine.apply(++idx, 2000, { type: 'put', key: k, value, expectedVersion: cur });
            });
          await engine.batch(rec.take(machine) ?? [], { sync: false });
          machine.releaseValues(machine.revision);
        }
        putCost[m]!.push(cpu / nOps);
        await engine.batch(rec.take(machine) ?? [], { sync: true });
        machine.releaseValues(machine.revision);
        getCost[m]!.push(cpuPerOp(nOps, () => void machine.get(key(next() % nKeys))));
        current = machine;
        currentRec = rec;
      }
    }
    // A put of a new key (its latest looked up first, as every put does): with the live-key set
    // holding every key (exact: no storage read), with `dropCold`'s reserved-only set and its Bloom
    // filter, and with no such test at all (the index source reads the key's `l/` record and misses).
    // Records not written (the overlay grows by nOps keys): only the lookup and the apply are timed.
    const newKeyModes = [
      { name: 'live-key set, exact (every key in the heap)', dropCold: false, noTest: false },
      { name: 'dropCold: reserved-only set + Bloom filter', dropCold: true, noTest: false },
      { name: 'dropCold: no test, the index source reads l/', dropCold: true, noTest: true },
    ];
    const newKeyCost: number[][] = newKeyModes.map(() => []);
    for (let round = 0; round < rounds; round++) {
      for (const [m, mode] of newKeyModes.entries()) {
        const machine = KvStateMachine.fromRecords(current.toRecords());
        machine.attachValues(new EngineValueSource(engine, GROUP, new ValueCache(64 * 1024 * 1024)));
        const source = new EngineIndexSource(engine, GROUP, new IndexCache(0));
        machine.attachIndex(mode.noTest ? { latest: (k) => source.latest(k), durable: (k, h) => source.durable(k, h) } : source, { dropCold: mode.dropCold });
        while (machine.releaseValues(machine.revision)); // durable as built: the index serves (and, with dropCold, cold keys leave)
        let idx = machine.appliedIndex;
        newKeyCost[m]!.push(cpuPerOp(nOps, (i) => void machine.apply(++idx, 2000, { type: 'put', key: `/new/${round}/${m}/${i}`, value })));
      }
    }
    // One get plus one conditional put per op above: the put figure includes the get it needs.
    for (const [m, mode] of modes.entries()) report(`put (get + conditional put): ${mode.name}`, putCost[m]!);
    for (const [m, mode] of modes.entries()) report(`latest get: ${mode.name}`, getCost[m]!);
    for (const [m, mode] of newKeyModes.entries()) report(`put of a new key, cold: ${mode.name}`, newKeyCost[m]!);
    // A latest get at the node's edge (EngineValueSource.readCached, as a client get runs) of a key
    // cold in both caches (hot-index cache of 0 bytes, a value cache of 1 MiB): the value read again
    // asynchronously and a second pass, versus the index's version record offered to the value source.
    const edge: number[][] = [[], []];
    for (let round = 0; round < rounds; round++) {
      for (const offer of [false, true]) {
        const machine = KvStateMachine.fromRecords(current.toRecords());
        const values = new EngineValueSource(engine, GROUP, new ValueCache(1024 * 1024));
        machine.attachValues(values);
        machine.attachIndex(new EngineIndexSource(engine, GROUP, new IndexCache(0), offer ? values : undefined));
        machine.releaseValues(machine.revision);
        edge[offer ? 1 : 0]!.push(await cpuPerOpAsync(nOps, async () => void (await values.readCached(() => machine.get(key(next() % nKeys))))));
      }
    }
    report('edge get (readCached), cold: value re-read async + 2nd pass', edge[0]!);
    report('edge get (readCached), cold: version record offered', edge[1]!);
    // list: a page of 100 with values, from the heap index vs from the records (one view each).
    const last = current;
    const pages = Math.max(1, Math.floor(nOps / 100));
    const heapList = cpuPerOp(pages, (i) => void last.list('/bench/', { limit: 100, after: key((i * 977) % nKeys) }));
    const engineList = await cpuPerOpAsync(pages, async (i) => {
      const view = engine.view();
      try {
        await listFromRecords(view, GROUP, last.listPlan('/bench/', { limit: 100, after: key((i * 977) % nKeys) }, last.revision)!);
      } finally {
        await view.close();
      }
    });
    report('list page of 100 with values: heap index', [heapList]);
    report('list page of 100 with values: records (view + multi-get)', [engineList]);
    // A range emptied by a mass delete (a lease revocation): the first `gone` keys deleted, then a
    // 10-key page from the start of the range (deleted keys' latests are in `t/`, not walked).
    const gone = Math.min(20_000, nKeys - 10);
    let di = last.appliedIndex;
    for (let i = 0; i < gone; i++) last.apply(++di, 3000, { type: 'delete', key: key(i) });
    await engine.batch(currentRec.take(last) ?? [], { sync: true });
    last.releaseValues(last.revision);
    const emptiedPages = Math.max(1, Math.floor(pages / 10));
    const heapEmptied = cpuPerOp(emptiedPages, () => void last.list('/bench/', { limit: 10 }));
    const t0 = performance.now();
    const engineEmptied = await cpuPerOpAsync(emptiedPages, async () => {
      const view = engine.view();
      try {
        await listFromRecords(view, GROUP, last.listPlan('/bench/', { limit: 10 }, last.revision)!);
      } finally {
        await view.close();
      }
    });
    const wallMs = (performance.now() - t0) / emptiedPages;
    report(`list page of 10 after ${gone} deletes in range: heap index`, [heapEmptied]);
    report(`list page of 10 after ${gone} deletes in range: records (${wallMs.toFixed(2)} ms wall)`, [engineEmptied]);
    // As a node does after such a mass delete: compact the range of the deleted latests (LevelDB's deletion markers).
    const span = currentRec.takeDeletedLatests()!;
    const c0 = performance.now();
    await engine.compactRange(span.start, span.end);
    const compactMs = performance.now() - c0;
    const t1 = performance.now();
    const engineCompacted = await cpuPerOpAsync(emptiedPages, async () => {
      const view = engine.view();
      try {
        await listFromRecords(view, GROUP, last.listPlan('/bench/', { limit: 10 }, last.revision)!);
      } finally {
        await view.close();
      }
    });
    report(
      `... records after compacting that range (${compactMs.toFixed(0)} ms; ${((performance.now() - t1) / emptiedPages).toFixed(2)} ms wall)`,
      [engineCompacted],
    );
    console.log(`index cost: ${nKeys} keys × ${valueBytes} B in LevelDB, ${nOps} ops per mode per round; CPU µs per op, one column per round`);
    for (const r of rows) console.log(r);
  } finally {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
