/**
 * In-process measure of what more Raft groups cost per put, without gRPC: three `KvNode`s in this
 * process over `MemoryEngine`s and a loopback transport, `--shards` data shards each, a closed loop
 * of `--concurrency` puts sent straight to their shard's leader; prints CPU µs per put (this
 * process: all three nodes), puts/s, and peer messages and ready rounds per put.
 * `--fsync-ms N` gives every engine batch N ms of latency (a timer, no CPU: a disk whose fsync
 * takes that long), so fsync-paced rounds show without a real disk; `--overlap on|off|both` runs
 * with NodeOptions.overlapRounds on, off (the default) or each in turn. `--engine level` runs the
 * nodes on LevelDB in a temporary directory instead (real batches and fsyncs); `--profile DIR`
 * saves a V8 CPU profile of each measured window (gs-<shards>-<overlap>-<pass>.cpuprofile, for
 * `node dist/bench/profile-summary.js --ops N`, N printed with it); `--sync-pace-ms N` sets
 * NodeOptions.syncPaceMs.
 *
 * node dist/bench/group-scaling.js [--shards 1,8] [--seconds 5] [--concurrency 256] [--rounds 2] [--fsync-ms 0] [--overlap off] [--engine memory] [--profile DIR] [--sync-pace-ms 0]
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvNode } from '../src/node/kv-node.js';
import { LoopbackHub } from '../src/node/transport.js';
import { LevelEngine, MemoryEngine, type KvEngine } from '../src/storage/kv-engine.js';
import { NotLeaderError, UnavailableError } from '../src/node/backend.js';
import { silentLogger } from '../src/log.js';
import { countingTransport, flagIntList, type MessageCounter } from './util.js';


async function until(what: string, fn: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** How one measurement runs: its engine, and where its window's CPU profile goes (none when undefined). */
interface MeasureOptions {
  readonly engine: 'memory' | 'level';
  /** NodeOptions.syncPaceMs. */
  readonly syncPaceMs: number;
  readonly profileFile: string | undefined;
}

/** One measurement: a fresh 3-node cluster with `shards` data shards. */
async function measure(shards: number, seconds: number, concurrency: number, fsyncMs: number, overlapRounds: boolean, mo: MeasureOptions): Promise<Record<string, number>> {
  const hub = new LoopbackHub();
  const dataDir = mo.engine === 'level' ? await mkdtemp(join(tmpdir(), 'kvcascade-gs-')) : undefined;
  const engines: KvEngine[] = [];
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7300 + i}`] as [number, string]));
  const counter: MessageCounter = { msgs: 0, byKind: new Map() };
  let rounds = 0;
  let entries = 0;
  let overlapped = 0;
  const nodes: KvNode[] = [];
  const openEngine = async (id: number): Promise<KvEngine> => {
    const e = dataDir !== undefined ? await LevelEngine.open(join(dataDir, `n${id}`)) : new MemoryEngine(fsyncMs > 0 ? { latencyMs: fsyncMs } : {});
    engines.push(e);
    return e;
  };
  for (const id of [1, 2, 3]) {
    const node = await KvNode.open(
      { id, members, defaultPool: { shards }, overlapRounds, syncPaceMs: mo.syncPaceMs, log: silentLogger(), onFatal: (e) => { throw e; } },
      await openEngine(id),
      countingTransport(hub.transport(id), counter),
    );
    node.observer = {
      readyBatch: (_groups, n, _ms, ov) => {
        rounds++;
        entries += n;
        if (ov) overlapped++;
      },
    };
    nodes.push(node);
  }
  for (const n of nodes) n.start();
  try {
    await until('a map with every shard led', () => {
      const map = nodes[0]!.shardMap();
      const data = map.shards.filter((s) => s.pool === '');
      return data.length === shards && data.every((s) => nodes.some((n) => n.replica(s.group)?.isLeader));
    });
    await new Promise((r) => setTimeout(r, 1500)); // leaders move to their preferred nodes early on
    const value = new Uint8Array(256).fill(7);
    let ops = 0;
    let stop = false;
    const leaderOf = (key: string): KvNode | undefined => {
      const g = nodes[0]!.shardOfKey(key).group;
      return nodes.find((n) => n.replica(g)?.isLeader);
    };
    const worker = async (w: number): Promise<void> => {
      let i = 0;
      while (!stop) {
        const key = `bench/k${String((w * 7919 + i++ * 104729) % 10000).padStart(8, '0')}`;
        const n = leaderOf(key);
        try {
          if (!n) throw new UnavailableError('no leader');
          await n.put({ key, value }, { deadlineMs: Date.now() + 5000 });
          ops++;
        } catch (e) {
          if (!(e instanceof NotLeaderError) && !(e instanceof UnavailableError)) throw e;
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    };
    const workers = Array.from({ length: concurrency }, (_, w) => worker(w));
    await new Promise((r) => setTimeout(r, 1000)); // warm-up
    const profiler = mo.profileFile === undefined ? undefined : new Session();
    if (profiler) {
      profiler.connect();
      await profiler.post('Profiler.enable');
      await profiler.post('Profiler.start');
    }
    const kinds0 = new Map(counter.byKind);
    const ops0 = ops, msgs0 = counter.msgs, rounds0 = rounds, entries0 = entries, overlapped0 = overlapped, cpu0 = process.cpuUsage(), t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const cpu = process.cpuUsage(cpu0), dt = (performance.now() - t0) / 1000, n = ops - ops0;
    if (profiler) {
      const { profile } = await profiler.post('Profiler.stop');
      profiler.disconnect();
      await writeFile(mo.profileFile!, JSON.stringify(profile));
    }
    stop = true;
    await Promise.all(workers);
    return {
      shards,
      putsPerSec: Math.round(n / dt),
      cpuUsPerPut: Math.round((cpu.user + cpu.system) / n),
      msgsPerPut: (counter.msgs - msgs0) / n,
      roundsPerPut: (rounds - rounds0) / n,
      entriesPerRound: (entries - entries0) / Math.max(1, rounds - rounds0),
      overlappedShare: (overlapped - overlapped0) / Math.max(1, rounds - rounds0),
      ops: n,
      ...Object.fromEntries([...counter.byKind].map(([k, v]) => [`kind ${k}`, (v - (kinds0.get(k) ?? 0)) / n])),
    };
  } finally {
    for (const n of nodes) await n.stop();
    for (const e of engines) await e.close();
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      shards: { type: 'string' },
      seconds: { type: 'string' },
      concurrency: { type: 'string' },
      rounds: { type: 'string' },
      'fsync-ms': { type: 'string' },
      overlap: { type: 'string' },
      engine: { type: 'string' },
      profile: { type: 'string' },
      'sync-pace-ms': { type: 'string' },
    },
  });
  const shardList = values.shards ? flagIntList('--shards', values.shards, 1, 64) : [1, 8];
  const seconds = Number(values.seconds ?? 5);
  const concurrency = Number(values.concurrency ?? 256);
  const rounds = Number(values.rounds ?? 2);
  const fsyncMs = Number(values['fsync-ms'] ?? 0);
  const overlapFlag = values.overlap ?? 'off';
  if (!['on', 'off', 'both'].includes(overlapFlag)) throw new Error(`--overlap: on, off or both, not ${overlapFlag}`);
  const engine = values.engine ?? 'memory';
  if (engine !== 'memory' && engine !== 'level') throw new Error(`--engine: memory or level, not ${engine}`);
  const profileDir = values.profile;
  const syncPaceMs = Number(values['sync-pace-ms'] ?? 0);
  const modes = overlapFlag === 'both' ? [false, true] : [overlapFlag === 'on'];
  console.log(`${engine === 'level' ? 'LevelDB' : `MemoryEngine, fsync ${fsyncMs} ms`}, ${concurrency} puts in flight, sync pace ${syncPaceMs} ms`);
  console.log('overlap  shards  puts/s  cpu us/put  peer msgs/put  synced rounds/put  entries/round  overlapped');
  for (let r = 0; r < rounds; r++) {
    for (const overlap of modes) {
      for (const s of shardList) {
        const profileFile = profileDir === undefined ? undefined : join(profileDir, `gs-${s}-${overlap ? 'on' : 'off'}-${r + 1}.cpuprofile`);
        const m = await measure(s, seconds, concurrency, fsyncMs, overlap, { engine, profileFile, syncPaceMs });
        console.log(
          `${(overlap ? 'on' : 'off').padStart(7)}  ${String(m.shards).padStart(6)}  ${String(m.putsPerSec).padStart(6)}  ${String(m.cpuUsPerPut).padStart(10)}  ` +
            `${m.msgsPerPut!.toFixed(2).padStart(13)}  ${m.roundsPerPut!.toFixed(3).padStart(17)}  ${m.entriesPerRound!.toFixed(1).padStart(13)}  ${(100 * m.overlappedShare!).toFixed(0).padStart(8)} %` +
            (profileFile === undefined ? '' : `  (profile ${profileFile}: --ops ${m.ops})`),
        );
        const kinds = Object.entries(m).filter(([k, v]) => k.startsWith('kind ') && v > 0.0005);
        console.log(`                  msgs/put by kind: ${kinds.map(([k, v]) => `${k.slice(5)} ${v.toFixed(3)}`).join(', ')}`);
      }
    }
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
