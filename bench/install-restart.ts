// What a large shard's snapshot install and restart cost a node, in process (issue 17: catch-up and restart times).
//
// Run: npx tsc -p tsconfig.json, then
//   node dist/bench/install-restart.js install [--keys 100000] [--new-keys 50000] [--value-bytes 1024] [--modes heap,engine] [--runs 2] [--dir DIR]
//   node dist/bench/install-restart.js restart [--keys 200000] [--value-bytes 1024] [--runs 2] [--dir DIR]
// Each run is a fresh child process over its own LevelDB (RSS figures do not mix); modes alternate.
//   install  a follower whose records hold `keys` keys (written through a StateRecorder, as a node
//            writes them) replaces them with a state of `keys + new-keys` keys (the same first writes,
//            then the new ones), as NodeDriver.finishInstall stages a stepwise replacement: ~10 ms of
//            units per turn, a flush started after each slice, the reads of the old records awaited.
//            heap: the diff against the old machine's `toRecords()` (the commit before 7fb5efe);
//            engine: against the records read back from one engine view (`RecordedVersions`, main).
//            read: only the reads of the old records (`RecordedVersions.fill`, every batch), nothing written,
//            after a full LevelDB compaction (its background work would count in the CPU figure).
//            Reported: wall time, CPU (process.cpuUsage), the reads of the old records (count, wall),
//            the longest synchronous step, peak RSS; the records are loaded back and counted after.
//   restart  the records of `keys` keys are loaded as recoverState loads them (`loadState` without
//            values, then `KvStateMachine.fromRecords`): wall time to a machine, CPU, phases, the
//            longest event-loop block (a 1 ms timer chain), peak RSS.
import { fork } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ReplicaRecords } from '../src/node/replica-records.js';
import { KvStateMachine } from '../src/statemachine/index.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { RaftLogStore } from '../src/storage/raft-log-store.js';
import { loadState, RecordedVersions, StateRecorder, type LoadTimings } from '../src/storage/state-store.js';
import { LoopProbe } from './util.js';

const GROUP = 1;
const ROUND = 2000;
const SLICE_MS = 10;
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
const mib = (n: number): number => Math.round(n / 2 ** 20);
const cpuMs = (c: NodeJS.CpuUsage): number => Math.round((c.user + c.system) / 1000);

/** The value of the `i`-th key (distinct bytes, incompressible enough for LevelDB's Snappy to leave them). */
function valueOf(i: number, bytes: number, base: Uint8Array): Uint8Array {
  const v = base.slice(0, bytes);
  v[0] = i & 0xff;
  v[1] = (i >> 8) & 0xff;
  v[2] = (i >> 16) & 0xff;
  return v;
}

/** Applies puts of keys [from, to) to every machine in `sms` (same index and timestamp for each), `each` after every round. */
async function fill(sms: readonly KvStateMachine[], from: number, to: number, valueBytes: number, base: Uint8Array, each?: () => Promise<void>): Promise<void> {
  for (let i = from; i < to; ) {
    const end = Math.min(to, i + ROUND);
    for (; i < end; i++) {
      const key = `/bench/${String(i).padStart(8, '0')}`;
      const value = valueOf(i, valueBytes, base);
      for (const sm of sms) sm.apply(sm.appliedIndex + 1, 1_000_000 + i, { type: 'put', key, value }, 'client');
    }
    await each?.();
  }
}

/** Figures of one install run. */
interface InstallResult {
  mode: string;
  keys: number;
  newKeys: number;
  wallMs: number;
  cpuMs: number;
  reads: number;
  readWallMs: number;
  longestStepMs: number;
  peakRssMiB: number;
  loadedKeys: number;
}

async function runInstall(mode: string, keys: number, newKeys: number, valueBytes: number, dir: string): Promise<InstallResult> {
  const engine = await LevelEngine.open(dir);
  const store = await RaftLogStore.open(engine);
  store.storageFor(GROUP, { voters: [1, 2, 3], learners: [] });
  const base = new Uint8Array(valueBytes).map((_, i) => (i * 131 + 7) & 0xff);
  const before = new KvStateMachine();
  const after = new KvStateMachine();
  const recorder = new StateRecorder(GROUP);
  before.observe(recorder);
  await fill([before, after], 0, keys, valueBytes, base, async () => {
    const u = recorder.take(before);
    if (u) store.stageStateOps(GROUP, u);
    await store.flush();
  });
  await fill([after], keys, keys + newKeys, valueBytes, base);
  globalThis.gc?.();
  await new Promise((r) => setTimeout(r, 100));

  const probe = new LoopProbe();
  probe.start();
  if (mode === 'read') {
    // LevelDB's background compactions of the fill would count in this process's CPU: finish them first.
    await engine.compactRange(new Uint8Array([0]), new Uint8Array([0xff]));
    return readOnly(engine, store, keys, newKeys, probe);
  }
  const records = new ReplicaRecords(recorder, undefined);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let longest = 0;
  let reads = 0;
  let readWall = 0;
  const s0 = performance.now();
  records.replace(before, after, true, undefined, mode === 'engine' ? () => engine.view() : undefined);
  longest = performance.now() - s0;
  for (let done = false; !done; ) {
    const t1 = performance.now();
    while (performance.now() - t1 < SLICE_MS) {
      const u = records.nextReplacementUnit();
      if (u === undefined) {
        done = true;
        break;
      }
      store.stageStateOps(GROUP, u);
      if (records.readPending) break;
    }
    longest = Math.max(longest, performance.now() - t1);
    if (done) break;
    if (records.readPending) {
      if (records.readOpensView) await store.flush();
      else store.flush().catch(() => {});
      const r0 = performance.now();
      await records.readBefore();
      readWall += performance.now() - r0;
      reads++;
      continue;
    }
    store.flush().catch(() => {});
    await turn();
  }
  await store.flush();
  const wallMs = Math.round(performance.now() - t0);
  const cpu = cpuMs(process.cpuUsage(c0));
  probe.stop();
  const loaded = await loadState(engine, GROUP, { values: false });
  const result = { mode, keys, newKeys, wallMs, cpuMs: cpu, reads, readWallMs: Math.round(readWall), longestStepMs: Math.round(longest), peakRssMiB: mib(probe.peakRss), loadedKeys: loaded?.data.keys.length ?? -1 };
  await store.close();
  if (result.loadedKeys !== keys + newKeys) throw new Error(`loaded ${result.loadedKeys} keys after the install, expected ${keys + newKeys}`);
  return result;
}

/** Mode `read`: only the reads of the old records an engine diff makes (`RecordedVersions`, every batch), nothing written meanwhile. */
async function readOnly(engine: LevelEngine, store: RaftLogStore, keys: number, newKeys: number, probe: LoopProbe): Promise<InstallResult> {
  const recorded = new RecordedVersions(() => engine.view(), GROUP);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let reads = 0;
  let seen = 0;
  let longest = 0;
  for (;;) {
    if (recorded.needsFill) {
      await recorded.fill();
      reads++;
      continue;
    }
    const s0 = performance.now();
    while (recorded.peek() !== undefined) {
      recorded.shift();
      seen++;
    }
    longest = Math.max(longest, performance.now() - s0);
    if (!recorded.needsFill) break;
  }
  const wallMs = Math.round(performance.now() - t0);
  const cpu = cpuMs(process.cpuUsage(c0));
  probe.stop();
  await store.close();
  if (seen !== keys) throw new Error(`read ${seen} keys, expected ${keys}`);
  return { mode: 'read', keys, newKeys, wallMs, cpuMs: cpu, reads, readWallMs: wallMs, longestStepMs: Math.round(longest), peakRssMiB: mib(probe.peakRss), loadedKeys: seen };
}

/** Figures of one restart run. */
interface RestartResult {
  mode: string;
  keys: number;
  wallMs: number;
  cpuMs: number;
  scanMs: number;
  assembleMs: number;
  fromRecordsMs: number;
  longestBlockMs: number;
  peakRssMiB: number;
  rssBeforeMiB: number;
}

async function runRestart(keys: number, valueBytes: number, dir: string): Promise<RestartResult> {
  {
    // Write the records in a first engine, closed before the restart (a fresh process would not hold its heap either).
    const engine = await LevelEngine.open(dir);
    const store = await RaftLogStore.open(engine);
    store.storageFor(GROUP, { voters: [1, 2, 3], learners: [] });
    const base = new Uint8Array(valueBytes).map((_, i) => (i * 131 + 7) & 0xff);
    const sm = new KvStateMachine();
    const recorder = new StateRecorder(GROUP);
    sm.observe(recorder);
    await fill([sm], 0, keys, valueBytes, base, async () => {
      const u = recorder.take(sm);
      if (u) store.stageStateOps(GROUP, u);
      await store.flush();
    });
    await engine.compactRange(new Uint8Array([0]), new Uint8Array([0xff])); // no background compaction during the measurement
    await store.close();
  }
  globalThis.gc?.();
  await new Promise((r) => setTimeout(r, 200));
  const rssBefore = process.memoryUsage.rss();
  const probe = new LoopProbe();
  probe.start();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const engine = await LevelEngine.open(dir);
  const timings: LoadTimings = { scanMs: 0, records: 0, assembleMs: 0, historyValuesMs: 0 };
  const loaded = (await loadState(engine, GROUP, { values: false, timings }))!;
  const f0 = performance.now();
  const sm = KvStateMachine.fromRecords(loaded.data, { adopt: true });
  const fromRecordsMs = Math.round(performance.now() - f0);
  const wallMs = Math.round(performance.now() - t0);
  const cpu = cpuMs(process.cpuUsage(c0));
  probe.stop();
  if (sm.keyCount !== keys) throw new Error(`restarted with ${sm.keyCount} keys, expected ${keys}`);
  await engine.close();
  return {
    mode: 'restart', keys, wallMs, cpuMs: cpu, scanMs: Math.round(timings.scanMs), assembleMs: Math.round(timings.assembleMs), fromRecordsMs,
    longestBlockMs: Math.round(probe.longest), peakRssMiB: mib(probe.peakRss), rssBeforeMiB: mib(rssBefore),
  };
}

const USAGE = `usage: node dist/bench/install-restart.js install|restart [--keys N] [--new-keys N] [--value-bytes 1024] [--modes heap,engine] [--runs 2] [--dir DIR]`;

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      keys: { type: 'string' },
      'new-keys': { type: 'string', default: '50000' },
      'value-bytes': { type: 'string', default: '1024' },
      modes: { type: 'string', default: 'heap,engine' },
      runs: { type: 'string', default: '2' },
      dir: { type: 'string', default: tmpdir() },
      child: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  const what = positionals[0];
  if (values.help || (what !== 'install' && what !== 'restart')) {
    console.log(USAGE);
    return;
  }
  const keys = Number(values.keys ?? (what === 'install' ? 100_000 : 200_000));
  const newKeys = Number(values['new-keys']);
  const valueBytes = Number(values['value-bytes']);
  if (values.child) {
    const dir = await mkdtemp(join(values.dir!, 'kvc-install-restart-'));
    try {
      const r = what === 'install' ? await runInstall(values.child, keys, newKeys, valueBytes, dir) : await runRestart(keys, valueBytes, dir);
      process.send?.(r);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    return;
  }
  const modes = what === 'install' ? values.modes!.split(',') : ['restart'];
  for (let run = 1; run <= Number(values.runs); run++) {
    for (const mode of modes) {
      const load = (await import('node:os')).loadavg()[0]!.toFixed(1);
      const r = await new Promise<object>((resolve, reject) => {
        const child = fork(process.argv[1]!, [what, '--child', mode, '--keys', String(keys), '--new-keys', String(newKeys), '--value-bytes', String(valueBytes), '--dir', values.dir!], {
          execArgv: ['--expose-gc', '--max-old-space-size=8192'],
        });
        let got: object | undefined;
        child.on('message', (m) => (got = m as object));
        child.on('exit', (code) => (got ? resolve(got) : reject(new Error(`child ${mode} exited with ${code}`))));
      });
      console.log(JSON.stringify({ run, load1: Number(load), ...r }));
    }
  }
}

if (process.argv[1]?.endsWith('install-restart.js')) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}
