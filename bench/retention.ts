// Retention workload (issue 17): overwrites a fixed key set continuously under a version retention window — kvd with `--retention-ms`, etcd beside it with `--auto-compaction-mode=periodic --auto-compaction-retention` of the same length, in the same run — and prints, every `--every` seconds, each node's RSS, heap, accounted memory parts, disk size and CPU, put/get throughput and p99, retention compaction steps and their event-loop cost, and leader changes; then whether memory stayed flat once the window was full.
//
// Run: npx tsc -p tsconfig.json (or npm run build), then
//   node dist/bench/retention.js [--system kvd|etcd|both] [--keys 100000] [--value-bytes 1024] [--duration 60m] [--retention 1h]
//     [--every 30s] [--concurrency 32] [--get-concurrency 8] [--fill-concurrency 16] [--keep-logs DIR] ["--kvd-args=--value-cache-mib 8"] [--bin PATH] [--etcd-bin PATH]
// The default is the issue's case: 100 k keys × 1 KiB overwritten for an hour under the default
// one-hour retention. To reach the steady state in a short run, shorten the window:
// `--duration 6m --retention 2m` (old versions then leave after two minutes, and the last four
// minutes show whether anything still grows). Durations take s, m or h (a bare number is seconds).
// The fill writes the keys as Txns of 64 puts (bench/bulk-fill.ts, both systems alike); the load is
// `--concurrency` workers of unary puts to random keys and `--get-concurrency` workers of
// linearizable gets of random keys, spread over the three endpoints (bench/clients.ts drivers). A
// failed operation is counted and the worker carries on after 50 ms (an election does not end the run).
import { randomBytes } from 'node:crypto';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { duBytes, makeFiller, p99, rssOf } from './bulk-fill.js';
import { makeDriver, type Driver, type SystemName } from './clients.js';
import { ETCD_MISSING_MESSAGE, findEtcd, startEtcdCluster } from './etcd-cluster.js';
import { startKvdCluster } from './kvd-cluster.js';
import { scrapeMetrics, sumMetric } from './node-counters.js';
import { copyNodeLogs, flagInt, processCpuSeconds, type RunningCluster } from './util.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (n: number | undefined): number => Math.round(((n ?? 0) / 2 ** 20) * 10) / 10;

/** Parses a duration flag: a number with s, m or h (a bare number is seconds); returns ms. */
export function parseDuration(name: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?)(s|m|h)?$/.exec(v.trim());
  if (!m) throw new Error(`--${name} must be a duration like 90s, 6m or 1h, got ${JSON.stringify(v)}`);
  const ms = Number(m[1]) * (m[2] === 'h' ? 3_600_000 : m[2] === 'm' ? 60_000 : 1_000);
  if (!(ms > 0)) throw new Error(`--${name} must be positive`);
  return Math.round(ms);
}

/** One node's sample (cumulative counters as read; sizes in bytes). */
interface NodeSample {
  readonly rss: number;
  readonly disk: number;
  readonly cpuSeconds: number | undefined;
  readonly metrics: string | undefined;
}

/** One interval's line for one node (MiB where sizes). */
export interface NodeInterval {
  readonly node: number;
  readonly rssMiB: number;
  readonly diskMiB: number;
  /** Share of one core the process used over the interval (%). */
  readonly cpuPct: number | undefined;
  /** V8 heap used (kvd) or Go heap in use (etcd). */
  readonly heapMiB: number | undefined;
  /** Leader changes seen during the interval. */
  readonly leaderChanges: number | undefined;
  /** Compactions during the interval: kvd's applied compaction commands; etcd's completed compactions. */
  readonly compactions: number | undefined;
  /** Time spent in them over the interval (ms): kvd synchronous apply time (event-loop time); etcd total compaction time (background). */
  readonly compactionMs: number | undefined;
  /** kvd: the longest single compaction apply since start (ms); etcd: the longest bucket bound of its compaction pauses is not exported, so undefined. */
  readonly compactionMaxMs: number | undefined;
  /** kvd only: accounted memory parts (MiB), heap index version lists and retained writes, event-loop max delay over the interval (ms), loop blocks over the watchdog's bound. */
  readonly accounted?: Readonly<Record<string, number>>;
  readonly externalMiB?: number;
  readonly versionLists?: number;
  readonly retainedWrites?: number;
  readonly loopMaxMs?: number;
  readonly loopBlocks?: number;
  /** etcd only: keys in its MVCC index (every retained revision). */
  readonly mvccKeys?: number;
}

/** One interval of the load. */
export interface RetentionInterval {
  readonly system: SystemName;
  /** Seconds since the load started (end of the interval). */
  readonly atS: number;
  readonly putsPerSec: number;
  readonly putP99Ms: number;
  readonly getsPerSec: number;
  readonly getP99Ms: number;
  readonly errors: number;
  readonly load: number;
  readonly nodes: readonly NodeInterval[];
}

const ACCOUNTED_PARTS = ['index', 'history', 'log', 'value_cache', 'index_cache', 'snapshots'] as const;

async function sampleNodes(cluster: RunningCluster, metricsPorts: readonly (number | undefined)[]): Promise<NodeSample[]> {
  const pids = cluster.nodePids?.() ?? [];
  return Promise.all(
    cluster.endpoints.map(async (_, i) => ({
      rss: await rssOf(pids[i]),
      disk: await duBytes(cluster.nodeDirs?.[i] ?? ''),
      cpuSeconds: await processCpuSeconds(pids[i]),
      metrics: await scrapeMetrics(metricsPorts[i]),
    })),
  );
}

function delta(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined ? undefined : Math.max(0, a - b);
}

function nodeInterval(system: SystemName, i: number, now: NodeSample, before: NodeSample, seconds: number): NodeInterval {
  const m = now.metrics ?? '';
  const was = before.metrics ?? '';
  const get = (text: string, name: string, label?: string): number | undefined => {
    if (label === undefined) return sumMetric(text, name);
    let sum: number | undefined;
    for (const line of text.split('\n')) {
      if (!line.startsWith(`${name}{`) || !line.includes(label)) continue;
      const v = Number(line.slice(line.lastIndexOf(' ') + 1));
      if (Number.isFinite(v)) sum = (sum ?? 0) + v;
    }
    return sum;
  };
  const cpu = delta(now.cpuSeconds, before.cpuSeconds);
  const base = { node: i + 1, rssMiB: mib(now.rss), diskMiB: mib(now.disk), cpuPct: cpu === undefined ? undefined : Math.round((cpu / seconds) * 100) };
  if (system === 'kvd') {
    const accounted: Record<string, number> = {};
    for (const p of ACCOUNTED_PARTS) accounted[p] = mib(get(m, 'kvcascade_memory_accounted_bytes', `part="${p}"`));
    const applyS = delta(get(m, 'kvcascade_compaction_apply_seconds'), get(was, 'kvcascade_compaction_apply_seconds'));
    return {
      ...base,
      heapMiB: mib(get(m, 'kvcascade_nodejs_heap_size_used_bytes')),
      externalMiB: mib(get(m, 'kvcascade_nodejs_external_memory_bytes')),
      leaderChanges: delta(get(m, 'kvcascade_raft_leader_changes_total'), get(was, 'kvcascade_raft_leader_changes_total')),
      compactions: delta(get(m, 'kvcascade_compaction_steps'), get(was, 'kvcascade_compaction_steps')),
      compactionMs: applyS === undefined ? undefined : Math.round(applyS * 10_000) / 10,
      compactionMaxMs: Math.round((get(m, 'kvcascade_compaction_apply_max_seconds') ?? 0) * 10_000) / 10,
      accounted,
      versionLists: get(m, 'kvcascade_index_version_lists'),
      retainedWrites: get(m, 'kvcascade_index_retained_writes'),
      loopMaxMs: Math.round((get(m, 'kvcascade_nodejs_eventloop_lag_max_seconds') ?? 0) * 1000),
      loopBlocks: delta(get(m, 'kvcascade_event_loop_blocked_total'), get(was, 'kvcascade_event_loop_blocked_total')),
    };
  }
  return {
    ...base,
    heapMiB: mib(get(m, 'go_memstats_heap_inuse_bytes')),
    leaderChanges: delta(get(m, 'etcd_server_leader_changes_seen_total'), get(was, 'etcd_server_leader_changes_seen_total')),
    compactions: delta(get(m, 'etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count'), get(was, 'etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count')),
    compactionMs: delta(get(m, 'etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_sum'), get(was, 'etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_sum')),
    compactionMaxMs: undefined,
    mvccKeys: get(m, 'etcd_debugging_mvcc_keys_total'),
  };
}

function formatNode(n: NodeInterval): string {
  let s = `n${n.node} rss ${n.rssMiB} heap ${n.heapMiB ?? '?'} disk ${n.diskMiB} cpu ${n.cpuPct ?? '?'}% lc ${n.leaderChanges ?? '?'} compactions ${n.compactions ?? '?'} (${n.compactionMs ?? '?'} ms`;
  s += n.compactionMaxMs !== undefined ? `, max ${n.compactionMaxMs} ms)` : ')';
  if (n.accounted) {
    const a = n.accounted;
    s += ` ext ${n.externalMiB} acct idx ${a['index']} hist ${a['history']} log ${a['log']} vc ${a['value_cache']} ic ${a['index_cache']} lists ${n.versionLists} writes ${n.retainedWrites} loop max ${n.loopMaxMs} ms blocks ${n.loopBlocks}`;
  }
  if (n.mvccKeys !== undefined) s += ` mvcc keys ${n.mvccKeys}`;
  return s;
}

/** Latencies and errors of the current interval, swapped out at each sample. */
class Window {
  puts: number[] = [];
  gets: number[] = [];
  errors = 0;
  firstError: string | undefined;
}

async function runSystem(
  system: SystemName,
  o: { keys: number; valueBytes: number; durationMs: number; retentionMs: number; everyMs: number; concurrency: number; getConcurrency: number; fillConcurrency: number; kvdArgs: string[]; bin?: string; etcdBin?: string; keepLogs?: string },
): Promise<RetentionInterval[]> {
  const log = (m: string) => console.error(m);
  const retentionS = Math.max(1, Math.round(o.retentionMs / 1000));
  const cluster =
    system === 'kvd'
      ? await startKvdCluster({ extraArgs: ['--retention-ms', String(o.retentionMs), ...o.kvdArgs], ...(o.bin !== undefined ? { bin: o.bin } : {}), log })
      : await startEtcdCluster({ extraArgs: ['--auto-compaction-mode=periodic', `--auto-compaction-retention=${retentionS}s`], ...(o.etcdBin !== undefined ? { bin: o.etcdBin } : {}), log });
  const metricsPorts = system === 'kvd' ? ((await cluster.metricsPorts?.()) ?? []) : cluster.endpoints.map((e) => Number(e.slice(e.lastIndexOf(':') + 1)));
  const drivers: Driver[] = cluster.endpoints.map((e) => makeDriver(system, e, 30_000, 'data/'));
  const intervals: RetentionInterval[] = [];
  const pool = randomBytes(o.valueBytes * 64);
  const filler = makeFiller(system, cluster.endpoints, o.fillConcurrency, (i) => valueOf(i, 0));
  // Distinct incompressible values (LevelDB compresses its blocks; bbolt does not): key i's w-th write.
  function valueOf(i: number, w: number): Uint8Array {
    const off = ((i + w) % 63) * o.valueBytes;
    const v = Buffer.from(pool.subarray(off, off + o.valueBytes));
    v.writeUInt32LE(i >>> 0, 0);
    if (v.length >= 8) v.writeUInt32LE(w >>> 0, 4);
    return v;
  }
  try {
    await Promise.all(drivers.map((d) => d.ready(10_000)));
    const fill = await filler.fill(0, o.keys);
    console.error(`${system}: filled ${o.keys} keys at ${fill.rate} keys/s (${fill.errors} failed attempts; load ${loadavg()[0]!.toFixed(1)})`);
    await sleep(3_000);
    let win = new Window();
    let stop = false;
    let writes = 0;
    let seed = 12345;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const worker = async (d: Driver, put: boolean): Promise<void> => {
      while (!stop) {
        const k = Math.floor(rnd() * o.keys);
        const s = performance.now();
        try {
          if (put) await d.put(k, valueOf(k, ++writes));
          else if (!(await d.get(k))) throw new Error(`key ${k} was not found`);
          (put ? win.puts : win.gets).push(performance.now() - s);
        } catch (e) {
          win.errors++;
          win.firstError ??= (e as Error).message;
          await sleep(50);
        }
      }
    };
    let before = await sampleNodes(cluster, metricsPorts);
    const t0 = performance.now();
    let last = t0;
    const workers = [
      ...Array.from({ length: o.concurrency }, (_, w) => worker(drivers[w % drivers.length]!, true)),
      ...Array.from({ length: o.getConcurrency }, (_, w) => worker(drivers[w % drivers.length]!, false)),
    ];
    console.log(`${system}: overwriting ${o.keys} keys × ${o.valueBytes} B for ${Math.round(o.durationMs / 1000)} s under a ${retentionS} s retention, sampling every ${Math.round(o.everyMs / 1000)} s`);
    while (performance.now() - t0 < o.durationMs) {
      await sleep(Math.min(o.everyMs, o.durationMs - (performance.now() - t0)));
      const w = win;
      win = new Window();
      const now = await sampleNodes(cluster, metricsPorts);
      const t = performance.now();
      const seconds = (t - last) / 1000;
      last = t;
      const iv: RetentionInterval = {
        system,
        atS: Math.round((t - t0) / 1000),
        putsPerSec: Math.round(w.puts.length / seconds),
        putP99Ms: p99(w.puts),
        getsPerSec: Math.round(w.gets.length / seconds),
        getP99Ms: p99(w.gets),
        errors: w.errors,
        load: Math.round(loadavg()[0]! * 10) / 10,
        nodes: now.map((n, i) => nodeInterval(system, i, n, before[i]!, seconds)),
      };
      before = now;
      intervals.push(iv);
      console.log(
        `${system} t=${iv.atS}s${iv.atS * 1000 >= o.retentionMs ? ' (window full)' : ''} load ${iv.load}  put/s ${iv.putsPerSec} p99 ${iv.putP99Ms} ms  get/s ${iv.getsPerSec} p99 ${iv.getP99Ms} ms  errors ${iv.errors}${w.firstError ? ` (${w.firstError})` : ''}\n  ${iv.nodes.map(formatNode).join('\n  ')}`,
      );
    }
    stop = true;
    await Promise.all(workers);
    summarise(system, intervals, o.retentionMs);
    return intervals;
  } finally {
    filler.close();
    for (const d of drivers) d.close();
    if (o.keepLogs !== undefined) await copyNodeLogs(cluster.dataDir, join(o.keepLogs, system)).catch(() => undefined);
    await cluster.stop();
  }
}

/** Prints, per node, how RSS, heap and disk moved between the first sample after the window filled (plus one interval) and the last: flat or growing (MiB per minute). */
function summarise(system: SystemName, intervals: readonly RetentionInterval[], retentionMs: number): void {
  const full = intervals.filter((iv) => iv.atS * 1000 >= retentionMs + 30_000);
  if (full.length < 2) {
    console.log(`${system}: fewer than two samples after the retention window filled (+30 s): run longer than the retention to see the steady state`);
    return;
  }
  const a = full[0]!;
  const b = full[full.length - 1]!;
  const minutes = (b.atS - a.atS) / 60;
  const rate = (x: number | undefined, y: number | undefined): string => (x === undefined || y === undefined ? '?' : ((y - x) / minutes).toFixed(1));
  const per = a.nodes.map((n, i) => {
    const m = b.nodes[i]!;
    let s = `n${n.node} rss ${n.rssMiB}→${m.rssMiB} (${rate(n.rssMiB, m.rssMiB)}/min) heap ${n.heapMiB}→${m.heapMiB} (${rate(n.heapMiB, m.heapMiB)}/min) disk ${n.diskMiB}→${m.diskMiB} (${rate(n.diskMiB, m.diskMiB)}/min)`;
    if (n.retainedWrites !== undefined) s += ` retained writes ${n.retainedWrites}→${m.retainedWrites} acct idx ${n.accounted?.['index']}→${m.accounted?.['index']}`;
    if (n.mvccKeys !== undefined) s += ` mvcc keys ${n.mvccKeys}→${m.mvccKeys}`;
    return s;
  });
  const avg = (f: (iv: RetentionInterval) => number) => Math.round(full.reduce((s, iv) => s + f(iv), 0) / full.length);
  console.log(`${system} steady state, t=${a.atS}..${b.atS}s: put/s ${avg((iv) => iv.putsPerSec)} (p99 mean ${avg((iv) => iv.putP99Ms)} ms) get/s ${avg((iv) => iv.getsPerSec)} (p99 mean ${avg((iv) => iv.getP99Ms)} ms)  MiB: ${per.join(' | ')}`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      system: { type: 'string', default: 'both' },
      keys: { type: 'string', default: '100000' },
      'value-bytes': { type: 'string', default: '1024' },
      duration: { type: 'string', default: '60m' },
      minutes: { type: 'string' },
      retention: { type: 'string', default: '1h' },
      every: { type: 'string', default: '30s' },
      concurrency: { type: 'string', default: '32' },
      'get-concurrency': { type: 'string', default: '8' },
      'fill-concurrency': { type: 'string', default: '16' },
      'keep-logs': { type: 'string' },
      'kvd-args': { type: 'string', default: '' },
      bin: { type: 'string' },
      'etcd-bin': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log('node dist/bench/retention.js [--system kvd|etcd|both] [--keys 100000] [--value-bytes 1024] [--duration 60m | --minutes 60] [--retention 1h] [--every 30s] [--concurrency 32] [--get-concurrency 8] [--fill-concurrency 16] [--keep-logs DIR] [--kvd-args "..."] [--bin PATH] [--etcd-bin PATH]');
    return;
  }
  const systems: SystemName[] = values.system === 'both' ? ['kvd', 'etcd'] : [values.system as SystemName];
  if (!systems.every((s) => s === 'kvd' || s === 'etcd')) throw new Error('--system must be kvd, etcd or both');
  const o = {
    keys: flagInt('keys', values.keys, 1),
    valueBytes: flagInt('value-bytes', values['value-bytes'], 8),
    durationMs: values.minutes !== undefined ? parseDuration('minutes', `${values.minutes}m`) : parseDuration('duration', values.duration),
    retentionMs: parseDuration('retention', values.retention),
    everyMs: parseDuration('every', values.every),
    concurrency: flagInt('concurrency', values.concurrency, 1),
    getConcurrency: flagInt('get-concurrency', values['get-concurrency'], 0),
    fillConcurrency: flagInt('fill-concurrency', values['fill-concurrency'], 1),
    kvdArgs: values['kvd-args'].split(' ').filter((s) => s.length > 0),
    ...(values.bin !== undefined ? { bin: values.bin } : {}),
    ...(values['etcd-bin'] !== undefined ? { etcdBin: values['etcd-bin'] } : {}),
    ...(values['keep-logs'] !== undefined ? { keepLogs: values['keep-logs'] } : {}),
  };
  const all: RetentionInterval[] = [];
  for (const system of systems) {
    if (system === 'etcd' && findEtcd(o.etcdBin) === undefined) {
      console.error(ETCD_MISSING_MESSAGE);
      continue;
    }
    all.push(...(await runSystem(system, o)));
  }
  console.log(JSON.stringify({ keys: o.keys, valueBytes: o.valueBytes, durationMs: o.durationMs, retentionMs: o.retentionMs, kvdArgs: o.kvdArgs, intervals: all }));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
