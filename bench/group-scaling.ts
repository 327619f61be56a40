/**
 * In-process measure of what more Raft groups cost per put, without gRPC: three `KvNode`s in this
 * process over `MemoryEngine`s and a loopback transport, `--shards` data shards each, a closed loop
 * of `--concurrency` puts sent straight to their shard's leader; prints CPU µs per put (this
 * process: all three nodes), puts/s, and peer messages and ready rounds per put.
 * `--fsync-ms N` gives every engine batch N ms of latency (a timer, no CPU: a disk whose fsync
 * takes that long), so fsync-paced rounds show without a real disk; `--overlap on|off|both` runs
 * with NodeOptions.overlapRounds on, off (the default) or each in turn.
 *
 * node dist/bench/group-scaling.js [--shards 1,8] [--seconds 5] [--concurrency 256] [--rounds 2] [--fsync-ms 0] [--overlap off]
 */
import { parseArgs } from 'node:util';
import { KvNode } from '../src/node/kv-node.js';
import { LoopbackHub, type Transport } from '../src/node/transport.js';
import { MemoryEngine } from '../src/storage/kv-engine.js';
import { NotLeaderError, UnavailableError } from '../src/node/backend.js';
import type { Message } from '../src/raft/index.js';
import { silentLogger } from '../src/log.js';
import { flagIntList } from './util.js';


/** A transport that counts what it sends. */
function counting(t: Transport, counter: { msgs: number }): Transport {
  return new Proxy(t, {
    get(target, prop, recv) {
      if (prop === 'send') return (msgs: readonly Message[]) => {
        counter.msgs += msgs.length;
        return target.send(msgs);
      };
      const v = Reflect.get(target, prop, recv) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

async function until(what: string, fn: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One measurement: a fresh 3-node cluster with `shards` data shards. */
async function measure(shards: number, seconds: number, concurrency: number, fsyncMs: number, overlapRounds: boolean): Promise<Record<string, number>> {
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7300 + i}`] as [number, string]));
  const counter = { msgs: 0 };
  let rounds = 0;
  let entries = 0;
  let overlapped = 0;
  const nodes: KvNode[] = [];
  for (const id of [1, 2, 3]) {
    const node = await KvNode.open(
      { id, members, defaultPool: { shards }, overlapRounds, log: silentLogger(), onFatal: (e) => { throw e; } },
      new MemoryEngine(fsyncMs > 0 ? { latencyMs: fsyncMs } : {}),
      counting(hub.transport(id), counter),
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
    const ops0 = ops, msgs0 = counter.msgs, rounds0 = rounds, entries0 = entries, overlapped0 = overlapped, cpu0 = process.cpuUsage(), t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const cpu = process.cpuUsage(cpu0), dt = (performance.now() - t0) / 1000, n = ops - ops0;
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
    };
  } finally {
    for (const n of nodes) await n.stop();
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
    },
  });
  const shardList = values.shards ? flagIntList('--shards', values.shards, 1, 64) : [1, 8];
  const seconds = Number(values.seconds ?? 5);
  const concurrency = Number(values.concurrency ?? 256);
  const rounds = Number(values.rounds ?? 2);
  const fsyncMs = Number(values['fsync-ms'] ?? 0);
  const overlapFlag = values.overlap ?? 'off';
  if (!['on', 'off', 'both'].includes(overlapFlag)) throw new Error(`--overlap: on, off or both, not ${overlapFlag}`);
  const modes = overlapFlag === 'both' ? [false, true] : [overlapFlag === 'on'];
  console.log(`fsync ${fsyncMs} ms, ${concurrency} puts in flight`);
  console.log('overlap  shards  puts/s  cpu us/put  peer msgs/put  synced rounds/put  entries/round  overlapped');
  for (let r = 0; r < rounds; r++) {
    for (const overlap of modes) {
      for (const s of shardList) {
        const m = await measure(s, seconds, concurrency, fsyncMs, overlap);
        console.log(
          `${(overlap ? 'on' : 'off').padStart(7)}  ${String(m.shards).padStart(6)}  ${String(m.putsPerSec).padStart(6)}  ${String(m.cpuUsPerPut).padStart(10)}  ` +
            `${m.msgsPerPut!.toFixed(2).padStart(13)}  ${m.roundsPerPut!.toFixed(3).padStart(17)}  ${m.entriesPerRound!.toFixed(1).padStart(13)}  ${(100 * m.overlappedShare!).toFixed(0).padStart(8)} %`,
        );
      }
    }
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
