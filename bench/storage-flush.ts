// A tiny throughput measurement of RaftLogStore over LevelDB (not a test): synced batches/s of one flush loop, and entries/s with concurrent writers.
// Run (no TS runner is installed): npx tsc --outDir /tmp/kvm --rootDir . --module nodenext --moduleResolution nodenext --target es2022
//   --types node --skipLibCheck --strict src/storage/*.ts test/storage/measure-flush.ts, then in /tmp/kvm add package.json {"type":"module"},
//   symlink node_modules, and `node test/storage/measure-flush.js [seconds] [dir]`.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EntryType } from '../src/raft/types.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { RaftLogStore } from '../src/storage/raft-log-store.js';

/** Result of one measured run. */
export interface MeasureResult {
  readonly writers: number;
  readonly seconds: number;
  readonly entries: number;
  readonly batches: number;
  readonly entriesPerSec: number;
  readonly batchesPerSec: number;
  readonly avgEntriesPerBatch: number;
  readonly avgFsyncMs: number;
  readonly maxFsyncMs: number;
}

/** Runs `writers` concurrent loops (one group each) of persist(one entry) + flush for `seconds`. */
export async function measure(writers: number, seconds: number, baseDir: string, payloadBytes = 100): Promise<MeasureResult> {
  const dir = await mkdtemp(join(baseDir, 'kvcascade-measure-'));
  const store = await RaftLogStore.open(await LevelEngine.open(dir));
  const data = new Uint8Array(payloadBytes).fill(7);
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: writers }, async (_, g) => {
      for (let index = 1; performance.now() < end; index++) {
        store.persistReady(g, { entries: [{ term: 1, index, type: EntryType.Normal, data }], hardState: { term: 1, vote: 1, commit: index - 1 } });
        await store.flush();
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const m = store.metrics;
  await store.close();
  await rm(dir, { recursive: true, force: true });
  return {
    writers,
    seconds: elapsed,
    entries: m.entries,
    batches: m.batches,
    entriesPerSec: Math.round(m.entries / elapsed),
    batchesPerSec: Math.round(m.batches / elapsed),
    avgEntriesPerBatch: +(m.entries / m.batches).toFixed(1),
    avgFsyncMs: +(m.fsyncMsTotal / m.batches).toFixed(3),
    maxFsyncMs: +m.fsyncMsMax.toFixed(3),
  };
}

if (process.argv[1]?.endsWith('measure-flush.js')) {
  const seconds = Number(process.argv[2] ?? 3);
  const baseDir = process.argv[3] ?? tmpdir();
  for (const writers of [1, 64]) console.log(JSON.stringify(await measure(writers, seconds, baseDir)));
}
