/**
 * In-process measure of the CPU a put costs on the replicated path, without gRPC: three `KvNode`s
 * in this process, each over a `LevelEngine` in a temporary directory (real synced batches), a
 * loopback transport, `--shards` data shards (default 1; the keys spread over them by the default
 * pool's hash), a closed loop of `--concurrency` puts of `--value-bytes` bytes over `--keys` keys,
 * each sent straight to its shard's leader. Prints, per window, puts/s and CPU µs per put of the
 * whole process (all three nodes and every thread: LevelDB's pool, GC helpers) and of the main
 * thread alone (`/proc/self/task/<pid>/stat`: the event loop the three nodes share), fsynced ready
 * rounds per second and synced engine batches (fsyncs) per second (all three nodes), log entries
 * per synced batch and peer messages per put; with `--op-kinds`, engine operations per put by record
 * kind (`s/m put` …, all three nodes), group Readies in fsynced rounds per put and peer messages
 * per put by kind.
 * `--shards`, `--sync-pace-ms` (NodeOptions.syncPaceMs), `--gather` (NodeOptions.gatherTurn,
 * 0 or 1; default 0, unlike kvd) and `--gather-turns` (NodeOptions.gatherTurns, default 1) take lists: each round
 * measures every combination in turn (shards outer, then pace, then gather, then turns), so A/B
 * runs interleave on a shared machine.
 * Run it with kvd's heap flag (`node --max-semi-space-size=32 …`) to see what kvd sees; add
 * `--cpu-prof` for a V8 profile of the whole run (`dist/bench/profile-summary.js` reads it).
 *
 * `--apply-only N` measures instead, on the main thread alone and without Raft, storage I/O or a
 * second node, what every replica does per committed put: decode the entry (`decodeProposal`),
 * apply it to a `KvStateMachine` wired as a node wires it (state records recorded by a
 * `StateRecorder` and taken once per round, values and latest versions released after each round
 * to an `EngineValueSource` / `EngineIndexSource` with the node's caches), N entries in rounds of
 * `--round-entries`; prints CPU µs per entry (`process.cpuUsage`, so steadier than the cluster's
 * figure on a shared machine).
 *
 * node --max-semi-space-size=32 dist/bench/replicated-path.js [--seconds 10] [--warmup 2] [--concurrency 64] [--keys 10000] [--value-bytes 256] [--rounds 1] [--shards 1,8] [--sync-pace-ms 0,6] [--gather 0,1] [--gather-turns 1,8] [--op-kinds]
 * node --max-semi-space-size=32 dist/bench/replicated-path.js --apply-only 300000 [--round-entries 32] [--keys 10000] [--value-bytes 256] [--rounds 3]
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvNode } from '../src/node/kv-node.js';
import { LoopbackHub } from '../src/node/transport.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { NotLeaderError, UnavailableError } from '../src/node/backend.js';
import { silentLogger } from '../src/log.js';
import { countingTransport, flagIntList, pollUntil, type MessageCounter } from './util.js';
import { encodeProposal, decodeProposal } from '../src/node/envelope.js';
import { KvStateMachine } from '../src/statemachine/index.js';
import { MemoryEngine } from '../src/storage/kv-engine.js';
import { EngineIndexSource, EngineValueSource, StateRecorder } from '../src/storage/state-store.js';
import { IndexCache } from '../src/storage/index-cache.js';
import { ValueCache } from '../src/storage/value-cache.js';

/** CPU time (µs) of this process's main thread so far, from /proc (undefined where there is none). */
async function mainThreadCpuUs(): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/self/task/${process.pid}/stat`, 'utf8');
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticksPerSec = 100; // USER_HZ on Linux
    return ((Number(f[11]) + Number(f[12])) * 1e6) / ticksPerSec;
  } catch {
    return undefined;
  }
}

interface Window {
  readonly putsPerSec: number;
  readonly cpuUsPerPut: number;
  readonly mainUsPerPut: number | undefined;
  /** Fsynced ready rounds per second, all three nodes (NodeObserver.readyBatch). */
  readonly roundsPerSec: number;
  /** Synced engine batches (fsyncs) per second, all three nodes (store metrics). */
  readonly fsyncsPerSec: number;
  /** Log entries per synced engine batch, all three nodes (store metrics). */
  readonly entriesPerFsync: number;
  /** Peer messages sent per put, all three nodes. */
  readonly msgsPerPut: number;
  /** Peer messages sent per put, all three nodes, by kind (`App+e`: appends carrying entries). */
  readonly msgsPerPutByKind: ReadonlyMap<string, number>;
  /** Groups' Readies in the fsynced rounds per put, all three nodes. */
  readonly groupReadiesPerPut: number;
  /** Engine batches written unsynced (state records alone, RaftLogStore) per put, all three nodes. */
  readonly unsyncedPerPut: number;
  /** Engine operations written per put, all three nodes, by record kind and operation (`s/m put` …; RaftLogStore.opCounts). */
  readonly opsPerPut: ReadonlyMap<string, number>;
}

/** Engine operations written so far by `nodes`, summed, keyed `kind op` (puts and deletes; clears are outside the batches). */
function engineOps(nodes: readonly KvNode[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const n of nodes) {
    for (const [kind, c] of Object.entries(n.storeOpCounts)) {
      if (c.put > 0) out.set(`${kind} put`, (out.get(`${kind} put`) ?? 0) + c.put);
      if (c.del > 0) out.set(`${kind} del`, (out.get(`${kind} del`) ?? 0) + c.del);
    }
  }
  return out;
}

/** What one measurement runs: the cluster's shape and the load. */
interface Setup {
  readonly seconds: number;
  readonly warmupSeconds: number;
  readonly concurrency: number;
  readonly keys: number;
  readonly valueBytes: number;
  /** Data shards of the default pool. */
  readonly shards: number;
  /** NodeOptions.syncPaceMs. */
  readonly syncPaceMs: number;
  /** NodeOptions.gatherTurn. */
  readonly gatherTurn: boolean;
  /** NodeOptions.gatherTurns. */
  readonly gatherTurns: number;
}

/** Synced batches and the log entries they wrote, summed over `nodes`. */
function syncedTotals(nodes: readonly KvNode[]): { batches: number; entries: number; unsynced: number } {
  let batches = 0;
  let entries = 0;
  let unsynced = 0;
  for (const n of nodes) {
    const m = n.storeMetrics;
    batches += m.batches - m.unsyncedBatches;
    unsynced += m.unsyncedBatches;
    entries += m.entries;
  }
  return { batches, entries, unsynced };
}

/** One measurement on a fresh three-node cluster. */
async function measure(setup: Setup): Promise<Window> {
  const { seconds, warmupSeconds, concurrency, keys, valueBytes, shards, syncPaceMs, gatherTurn, gatherTurns } = setup;
  const dir = await mkdtemp(join(tmpdir(), 'kvc-replicated-'));
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7400 + i}`] as [number, string]));
  const nodes: KvNode[] = [];
  const counter: MessageCounter = { msgs: 0, byKind: new Map() };
  let rounds = 0;
  let groupReadies = 0;
  try {
    for (const id of [1, 2, 3]) {
      const engine = await LevelEngine.open(join(dir, `n${id}`));
      const node = await KvNode.open(
        { id, members, defaultPool: { shards }, syncPaceMs, gatherTurn, gatherTurns, log: silentLogger(), onFatal: (e) => { throw e; } },
        engine,
        countingTransport(hub.transport(id), counter),
      );
      node.observer = {
        readyBatch: (groups) => {
          rounds++;
          groupReadies += groups;
        },
      };
      nodes.push(node);
    }
    for (const n of nodes) n.start();
    // Each data shard's leader is looked up once, and again only after a put to it was refused.
    const groups = (): number[] => nodes[0]!.shardMap().shards.filter((s) => s.pool === '').map((s) => s.group);
    const findLeader = (group: number): KvNode | undefined => nodes.find((n) => n.replica(group)?.isLeader);
    await pollUntil(async () => {
      const gs = groups();
      return gs.length === shards && gs.every((g) => findLeader(g) !== undefined) ? true : undefined;
    }, { what: `${shards} led data shards` });
    await new Promise((r) => setTimeout(r, 1500)); // leaders move to their preferred nodes early on
    const leaders = new Map<number, KvNode>();
    const value = new Uint8Array(valueBytes).fill(7);
    let ops = 0;
    let stop = false;
    const worker = async (w: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const key = `bench/k${String((w * 7919 + i * 104729) % keys).padStart(8, '0')}`;
        const group = nodes[0]!.shardOfKey(key).group;
        let to = leaders.get(group);
        if (to === undefined) {
          to = findLeader(group);
          if (to === undefined) {
            await new Promise((r) => setTimeout(r, 5));
            continue;
          }
          leaders.set(group, to);
        }
        const sentTo = to;
        await sentTo.put({ key, value }, { deadlineMs: Date.now() + 5000 }).then(
          () => void ops++,
          async (e: unknown) => {
            if (!(e instanceof NotLeaderError) && !(e instanceof UnavailableError)) throw e;
            if (leaders.get(group) === sentTo) leaders.delete(group);
            await new Promise((r) => setTimeout(r, 5));
          },
        );
      }
    };
    const workers = Array.from({ length: concurrency }, (_, w) => worker(w));
    await new Promise((r) => setTimeout(r, warmupSeconds * 1000));
    const ops0 = ops;
    const msgs0 = counter.msgs;
    const kinds0 = new Map(counter.byKind);
    const rounds0 = rounds;
    const groupReadies0 = groupReadies;
    const synced0 = syncedTotals(nodes);
    const ops0ByKind = engineOps(nodes);
    const main0 = await mainThreadCpuUs();
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const cpu = process.cpuUsage(cpu0);
    const main1 = await mainThreadCpuUs();
    const dt = (performance.now() - t0) / 1000;
    const n = ops - ops0;
    const synced1 = syncedTotals(nodes);
    const opsPerPut = new Map<string, number>();
    for (const [k, v] of engineOps(nodes)) opsPerPut.set(k, (v - (ops0ByKind.get(k) ?? 0)) / n);
    const msgs = counter.msgs - msgs0;
    const roundsIn = rounds - rounds0;
    stop = true;
    await Promise.all(workers);
    return {
      putsPerSec: Math.round(n / dt),
      cpuUsPerPut: (cpu.user + cpu.system) / n,
      mainUsPerPut: main0 !== undefined && main1 !== undefined ? (main1 - main0) / n : undefined,
      roundsPerSec: roundsIn / dt,
      fsyncsPerSec: (synced1.batches - synced0.batches) / dt,
      entriesPerFsync: (synced1.entries - synced0.entries) / Math.max(1, synced1.batches - synced0.batches),
      msgsPerPut: msgs / n,
      opsPerPut,
      unsyncedPerPut: (synced1.unsynced - synced0.unsynced) / n,
      groupReadiesPerPut: (groupReadies - groupReadies0) / n,
      msgsPerPutByKind: new Map([...counter.byKind].map(([k, v]) => [k, (v - (kinds0.get(k) ?? 0)) / n] as [string, number])),
    };
  } finally {
    for (const n of nodes) await n.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * CPU µs per entry of a replica's apply path alone (see the top of the file): `entries` puts over
 * `keys` keys, in rounds of `roundEntries`, after a warm-up of a fifth as many.
 */
function applyOnly(entries: number, roundEntries: number, keys: number, valueBytes: number): number {
  const engine = new MemoryEngine();
  const sm = new KvStateMachine();
  const recorder = new StateRecorder(1, undefined, {});
  sm.observe(recorder);
  const values = new EngineValueSource(engine, 1, new ValueCache());
  sm.attachValues(values);
  sm.attachIndex(new EngineIndexSource(engine, 1, new IndexCache(), values));
  const value = new Uint8Array(valueBytes).fill(7);
  // The leader's entries, encoded once (a round's worth at a time would cost the same per entry).
  const data = Array.from({ length: 4096 }, (_, i) => encodeProposal(1_700_000_000_000 + i, { type: 'put', key: `bench/k${String((i * 104729) % keys).padStart(8, '0')}`, value }, 'client'));
  let index = 0;
  const run = (n: number): void => {
    for (let done = 0; done < n; done += roundEntries) {
      for (let i = 0; i < roundEntries; i++) {
        index++;
        const p = decodeProposal(data[index % data.length]!);
        sm.apply(index, p.timestampMs, p.command, p.origin, p.session, p.hops);
      }
      recorder.take(sm); // the round's record writes (a node stages them into its batch)
      while (sm.releaseValues(sm.revision, 4096)); // the round is durable
    }
  };
  run(Math.ceil(entries / 5));
  const cpu0 = process.cpuUsage();
  run(entries);
  const cpu = process.cpuUsage(cpu0);
  return (cpu.user + cpu.system) / entries;
}

/** What `--help` prints. */
const USAGE = `In-process CPU per put on the replicated path (3 KvNodes over LevelDB, loopback transport, no gRPC).
  node --max-semi-space-size=32 dist/bench/replicated-path.js [--seconds 10] [--warmup 2] [--concurrency 64] [--keys 10000]
      [--value-bytes 256] [--rounds 1] [--shards 1,8] [--sync-pace-ms 0,6] [--gather 0,1] [--gather-turns 1,8] [--op-kinds]
  node --max-semi-space-size=32 dist/bench/replicated-path.js --apply-only 300000 [--round-entries 32] [--keys 10000] [--value-bytes 256] [--rounds 3]
Lists (--shards, --sync-pace-ms, --gather, --gather-turns) are measured in turn within each round (A/B interleaved).
--gather-turns matters only with --gather 1. See bench/README.md.`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string' },
      warmup: { type: 'string' },
      concurrency: { type: 'string' },
      keys: { type: 'string' },
      'value-bytes': { type: 'string' },
      rounds: { type: 'string' },
      'apply-only': { type: 'string' },
      'round-entries': { type: 'string' },
      shards: { type: 'string' },
      'sync-pace-ms': { type: 'string' },
      gather: { type: 'string' },
      'op-kinds': { type: 'boolean' },
      'gather-turns': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const num = (v: string | undefined, def: number, name: string): number => {
    const n = Number(v ?? def);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: a positive number, not ${String(v)}`);
    return n;
  };
  const seconds = num(values.seconds, 10, 'seconds');
  const warmup = num(values.warmup, 2, 'warmup');
  const concurrency = num(values.concurrency, 64, 'concurrency');
  const keys = num(values.keys, 10_000, 'keys');
  const valueBytes = num(values['value-bytes'], 256, 'value-bytes');
  const rounds = num(values.rounds, 1, 'rounds');
  if (values['apply-only'] !== undefined) {
    const entries = num(values['apply-only'], 300_000, 'apply-only');
    const roundEntries = num(values['round-entries'], 32, 'round-entries');
    console.log(`apply path only: ${entries} puts over ${keys} keys, ${valueBytes}-byte values, rounds of ${roundEntries}`);
    for (let r = 0; r < rounds; r++) {
      const us = applyOnly(entries, roundEntries, keys, valueBytes);
      const load = (await readFile('/proc/loadavg', 'utf8').catch(() => '?')).split(' ').slice(0, 3).join(' ');
      console.log(`cpu us/entry ${us.toFixed(2)}  loadavg ${load}`);
    }
    return;
  }
  const shardList = values.shards !== undefined ? flagIntList('shards', values.shards, 1, 64) : [1];
  const paceList = values['sync-pace-ms'] !== undefined ? flagIntList('sync-pace-ms', values['sync-pace-ms'], 0, 1000) : [0];
  const gatherList = values.gather !== undefined ? flagIntList('gather', values.gather, 0, 1) : [0];
  const turnsList = values['gather-turns'] !== undefined ? flagIntList('gather-turns', values['gather-turns'], 1, 64) : [1];
  console.log(`${concurrency} puts in flight, ${keys} keys, ${valueBytes}-byte values, ${seconds} s after ${warmup} s`);
  console.log('shards  pace ms  gather  turns  puts/s  cpu us/put  main-thread us/put  rounds/s  fsyncs/s  entries/fsync  msgs/put  loadavg');
  for (let r = 0; r < rounds; r++) {
    for (const shards of shardList) {
      for (const syncPaceMs of paceList) {
        for (const gather of gatherList) {
        for (const gatherTurns of turnsList) {
        const gatherTurn = gather === 1;
        const m = await measure({ seconds, warmupSeconds: warmup, concurrency, keys, valueBytes, shards, syncPaceMs, gatherTurn, gatherTurns });
        const load = (await readFile('/proc/loadavg', 'utf8').catch(() => '?')).split(' ').slice(0, 3).join(' ');
        console.log(
          `${String(shards).padStart(6)}  ${String(syncPaceMs).padStart(7)}  ${String(gather).padStart(6)}  ${String(gatherTurns).padStart(5)}  ${String(m.putsPerSec).padStart(6)}  ${m.cpuUsPerPut.toFixed(1).padStart(10)}  ` +
            `${(m.mainUsPerPut?.toFixed(1) ?? '-').padStart(18)}  ${m.roundsPerSec.toFixed(0).padStart(8)}  ${m.fsyncsPerSec.toFixed(0).padStart(8)}  ${m.entriesPerFsync.toFixed(1).padStart(13)}  ${m.msgsPerPut.toFixed(2).padStart(8)}  ${load}`,
        );
        if (values['op-kinds'] === true) {
          const kinds = [...m.opsPerPut].filter(([, v]) => v >= 0.005).sort(([a], [b]) => a.localeCompare(b));
          const total = kinds.reduce((t, [, v]) => t + v, 0);
          const msgKinds = [...m.msgsPerPutByKind].filter(([, v]) => v >= 0.005).sort(([a], [b]) => a.localeCompare(b));
          console.log(`        group readies in fsynced rounds/put ${m.groupReadiesPerPut.toFixed(3)}, msgs/put by kind: ${msgKinds.map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}`);
          console.log(`        unsynced batches/put ${m.unsyncedPerPut.toFixed(3)}, engine ops/put ${total.toFixed(2)}: ${kinds.map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}`);
        }
        }
        }
      }
    }
  }
}

main().catch((e: unknown) => {
  if ((e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
    console.error(`replicated-path: ${(e as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  console.error(e);
  process.exit(1);
});
