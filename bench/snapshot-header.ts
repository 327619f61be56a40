// What the leader reads before a streamed snapshot's first chunk can go out (issue 17, session catchup4): the time and CPU from `openSnapshotEncoding` to its first part (the header's passes over the revision blocks and the key count, then the first versions), on one shard's records in LevelDB, optionally alternated with another build's state-store module.
//
// Run: npx tsc -p tsconfig.json, then
//   node dist/bench/snapshot-header.js [--keys 230000] [--rounds 4] [--base OTHER/dist/src]
// The records hold `--keys` keys × 1 KiB written as Txns of 64 puts (as data-size's bulk fill),
// compacted so LevelDB's background work does not count. `--base` names another build's compiled
// src/ folder: its storage/state-store.js encodes the same view, rounds alternating which goes first.
// CPU is the process's (LevelDB's threads included).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { KvStateMachine, type TxnPut } from '../src/statemachine/index.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { RaftLogStore } from '../src/storage/raft-log-store.js';
import * as current from '../src/storage/state-store.js';
import type { SnapshotHeaderTimings } from '../src/storage/state-store.js';

const GROUP = 1;

type Encoder = Pick<typeof current, 'openSnapshotEncoding'>;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { keys: { type: 'string', default: '230000' }, rounds: { type: 'string', default: '4' }, base: { type: 'string' } } });
  const keys = Number(values.keys);
  const rounds = Number(values.rounds);
  const builds: Array<[string, Encoder]> = [['this build', current]];
  if (values.base !== undefined) builds.push(['base', (await import(pathToFileURL(join(resolve(values.base), 'storage', 'state-store.js')).href)) as Encoder]);
  const dir = await mkdtemp(join(tmpdir(), 'snapshot-header-'));
  try {
    const engine = await LevelEngine.open(dir);
    const store = await RaftLogStore.open(engine);
    store.storageFor(GROUP, { voters: [1, 2, 3], learners: [] });
    const sm = new KvStateMachine();
    const recorder = new current.StateRecorder(GROUP);
    sm.observe(recorder);
    const base = new Uint8Array(1024).map((_, i) => (i * 131 + 7) & 0xff);
    let index = 0;
    for (let i = 0; i < keys; ) {
      const end = Math.min(keys, i + 4096);
      while (i < end) {
        const writes: TxnPut[] = [];
        for (let j = 0; j < 64 && i < end; j++, i++) {
          const value = base.slice();
          value[0] = i & 0xff;
          value[1] = (i >> 8) & 0xff;
          value[2] = (i >> 16) & 0xff;
          writes.push({ type: 'put', key: `/bench/${String(i).padStart(8, '0')}`, value });
        }
        sm.apply(++index, 1_000_000 + i, { type: 'txn', compares: [], writes }, 'client');
      }
      const unit = recorder.take(sm);
      if (unit) store.stageStateOps(GROUP, unit);
      await store.flush();
    }
    await engine.compactRange(new Uint8Array([0]), new Uint8Array([0xff]));
    console.log(`${keys} keys in ${index} entries`);
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? builds : [...builds].reverse();
      for (const [name, encoder] of order) {
        const view = engine.view();
        const t0 = performance.now();
        const c0 = process.cpuUsage();
        let header: SnapshotHeaderTimings | undefined;
        const enc = await encoder.openSnapshotEncoding(view, GROUP, { onHeader: (h) => (header = h) });
        if (!enc) throw new Error('no records');
        const gen = enc.parts();
        const first = await gen.next();
        const ms = performance.now() - t0;
        const c = process.cpuUsage(c0);
        await gen.return(0);
        await view.close();
        const bytes = first.done ? 0 : first.value.length;
        console.log(`round ${round} ${name}: first part (${bytes} B) after ${ms.toFixed(0)} ms, CPU ${((c.user + c.system) / 1000).toFixed(0)} ms${header ? ` ${JSON.stringify(header)}` : ''}`);
      }
    }
    await store.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
