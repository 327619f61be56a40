/** Measures lone calls (put, get, rmw, txn), one at a time, through the client's default path vs unary calls (`node dist/bench/lone-calls.js [flags]`): on one fresh 3-node kvd cluster, alternating rounds of a default KvClient (lone writes on the Pipeline stream) and a `batching: false` one (every call unary); prints latency, client CPU and server CPU per call. */
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { KvClient } from '../src/client/index.js';
import { findKvd, startKvdCluster } from './kvd-cluster.js';
import { flagInt, flagNumber, processCpuSeconds } from './util.js';

const USAGE = `usage: node dist/bench/lone-calls.js [flags]
  --seconds S      measured seconds per round, path and operation (default 4)
  --rounds N       rounds; each runs both paths, alternated so drift on a shared machine hits both alike (default 2)
  --keys N         keyspace (default 1000)
  --value-bytes N  value size (default 256)
  --kvd-bin PATH   kvd entry point (default: dist/src/bin/kvd.js)
  --help
One client, one call at a time (put, get, rmw: get then a put conditional on the version read, and
txn: a compare of the key's version with a put, after a get that opens the stream).
"stream" is the default KvClient; "unary" is KvClient with batching: false. Read the two paths of
one run side by side: they share the cluster and the machine.`;

type Path = 'stream' | 'unary';
type Op = 'put' | 'get' | 'rmw' | 'txn';

/** One measured round of one path and operation. */
interface Round {
  readonly path: Path;
  readonly op: Op;
  readonly ops: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly clientUsPerOp: number;
  readonly serverUsPerOp: number | undefined;
}

function pct(sorted: readonly number[], q: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))]!;
}

async function serverCpu(pids: readonly number[]): Promise<number | undefined> {
  let sum = 0;
  for (const pid of pids) {
    const s = await processCpuSeconds(pid);
    if (s === undefined) return undefined;
    sum += s;
  }
  return sum;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '4' },
      rounds: { type: 'string', default: '2' },
      keys: { type: 'string', default: '1000' },
      'value-bytes': { type: 'string', default: '256' },
      'kvd-bin': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const seconds = flagNumber('--seconds', values.seconds!, 0.1);
  const rounds = flagInt('--rounds', values.rounds!, 1);
  const keys = flagInt('--keys', values.keys!, 1);
  const value = new Uint8Array(flagInt('--value-bytes', values['value-bytes']!, 0));
  const bin = findKvd(values['kvd-bin']);
  if (bin === undefined) throw new Error('kvd binary not found (run npm run build)');
  const cluster = await startKvdCluster({ bin });
  const clients: Record<Path, KvClient> = {
    stream: new KvClient({ endpoints: cluster.endpoints }),
    unary: new KvClient({ endpoints: cluster.endpoints, batching: false }),
  };
  const key = (i: number): string => `bench/k${String(i % keys).padStart(8, '0')}`;
  const calls: Record<Op, (c: KvClient, i: number) => Promise<unknown>> = {
    put: (c, i) => c.put(key(i), value),
    get: (c, i) => c.get(key(i)),
    rmw: async (c, i) => {
      const cur = await c.get(key(i));
      return c.put(key(i), value, { expectedVersion: cur.version, returnCurrentValue: true });
    },
    txn: (c, i) => c.txn({ compares: [{ key: key(i), version: 0 }], writes: [{ type: 'put', key: key(i), value }] }),
  };
  const results: Round[] = [];
  try {
    for (let i = 0; i < keys; i++) await clients.stream.put(key(i), value);
    for (const c of Object.values(clients)) for (let i = 0; i < 200; i++) await c.put(key(i), value); // warm: connections, streams, JIT
    for (let r = 0; r < rounds; r++) {
      for (const op of ['put', 'get', 'rmw', 'txn'] as const) {
        const order: Path[] = r % 2 === 0 ? ['stream', 'unary'] : ['unary', 'stream'];
        for (const path of order) {
          const c = clients[path];
          const lat: number[] = [];
          const srv0 = await serverCpu(cluster.pids());
          const cpu0 = process.cpuUsage();
          const until = performance.now() + seconds * 1000;
          for (let i = 0; performance.now() < until; i++) {
            const t0 = performance.now();
            await calls[op](c, Math.floor(Math.random() * keys) + i);
            lat.push(performance.now() - t0);
          }
          const cpu = process.cpuUsage(cpu0);
          const srv1 = await serverCpu(cluster.pids());
          lat.sort((a, b) => a - b);
          const n = lat.length;
          const round: Round = {
            path,
            op,
            ops: n,
            p50Ms: pct(lat, 0.5),
            p99Ms: pct(lat, 0.99),
            clientUsPerOp: (cpu.user + cpu.system) / n,
            serverUsPerOp: srv0 === undefined || srv1 === undefined ? undefined : ((srv1 - srv0) * 1e6) / n,
          };
          results.push(round);
          console.log(
            `round ${r + 1} ${op.padEnd(3)} ${path.padEnd(6)}: ${(n / seconds).toFixed(0)} ops/s, p50 ${round.p50Ms.toFixed(2)} ms, p99 ${round.p99Ms.toFixed(2)} ms, ` +
              `client ${round.clientUsPerOp.toFixed(0)} us/op, servers ${round.serverUsPerOp === undefined ? '?' : round.serverUsPerOp.toFixed(0)} us/op`,
          );
        }
      }
    }
  } finally {
    for (const c of Object.values(clients)) c.close();
    await cluster.stop();
  }
  console.log(`\nmachine: ${cpus().length} cores, load ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  console.log('op   path    p50 ms (mean of rounds)  client us/op  servers us/op');
  for (const op of ['put', 'get', 'rmw', 'txn'] as const) {
    for (const path of ['stream', 'unary'] as const) {
      const rs = results.filter((x) => x.op === op && x.path === path);
      const mean = (f: (x: Round) => number | undefined, digits: number): string => {
        const v = rs.map(f).filter((x): x is number => x !== undefined);
        return v.length === 0 ? '?' : (v.reduce((a, b) => a + b, 0) / v.length).toFixed(digits);
      };
      console.log(`${op.padEnd(4)} ${path.padEnd(7)} ${mean((x) => x.p50Ms, 2).padStart(8)}                 ${mean((x) => x.clientUsPerOp, 0).padStart(8)}  ${mean((x) => x.serverUsPerOp, 0).padStart(10)}`);
    }
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
