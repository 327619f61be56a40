// Data-size workload (issue 17): fills N distinct keys × 1 KiB into a fresh 3-node cluster — kvd, and etcd beside it with the same data — and prints, at each checkpoint, every node's RSS and disk size, put and get throughput and p99, and for kvd its event-loop delay, leader changes and accounted memory; after the last checkpoint it restarts one node and times it until it serves the last key written, then stops it, writes `--catch-up-keys` more and times its catch-up (kvd sends it a snapshot of the whole shard).
//
// Run: npx tsc -p tsconfig.json (or npm run build), then
//   node dist/bench/data-size.js [--checkpoints 10000,100000] [--big] [--system kvd|etcd|both] [--value-bytes 1024]
//     [--concurrency 64] [--gets 5000] [--catch-up-keys 30000] [--overwrites 0] [--keep-logs DIR] [--kvd-args "--value-cache-mib 64"] [--bin dist/src/bin/kvd.js] [--etcd-bin /usr/bin/etcd]
//     [--fill bulk|unary] [--measure-puts 20000] [--fill-concurrency 16] [--settle-ms 15000] [--rest-ms 12000]
// `--big` adds the 1 000 000-key checkpoint (about 1 GiB per replica: run it on a quiet machine).
// The fill (`--fill bulk`, the default) writes all but the last `--measure-puts` keys of each
// checkpoint as Txns of 64 puts, both systems alike (kvd through the client library's KvClient.txn;
// `--fill-concurrency` Txns in flight). Through the library's batched put (one Pipeline stream
// per leader, 256 calls in flight) kvd filled at only 239 keys/s at load 23: one Raft entry and
// revision per key is what costs, not the round trips. The last `--measure-puts` keys are the measured put throughput and p99, at that data size. With
// `--fill unary` every key is a measured put (one unary call per key: at 64 in flight on a busy
// 2-core machine 1 M keys took over an hour, which is why bulk is the default).
// Measured puts and gets drive both systems the same way (bench/clients.ts drivers: one unary Put per write, one
// linearizable Get per read, `concurrency` workers spread over the three endpoints; a follower
// forwards to its leader in both). RSS is read from /proc/<pid>/status, disk size is the bytes of
// the node's data directory; kvd's event-loop delay (max and p99 over the fill, from prom-client's
// monitorEventLoopDelay), leader changes and accounted memory come from its /metrics. On a shared
// machine throughput is indicative only.
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { drive, duBytes, makeFiller, rssOf, type Filler } from './bulk-fill.js';
import { call, etcdStub, kvStub, makeDriver, type Driver, type SystemName } from './clients.js';
import { ETCD_MISSING_MESSAGE, findEtcd, startEtcdCluster } from './etcd-cluster.js';
import { startKvdCluster } from './kvd-cluster.js';
import { copyNodeLogs, flagInt, flagIntList, processCpuSeconds, type RunningCluster } from './util.js';

/** One node's figures at a checkpoint (MiB where sizes). */
export interface NodeFigures {
  readonly node: number;
  readonly rssMiB: number;
  readonly diskMiB: number;
  /** kvd only: V8 heap used, external memory, value cache, accounted index, max event-loop delay (ms), leader changes so far. */
  readonly heapUsedMiB?: number;
  readonly externalMiB?: number;
  readonly cacheMiB?: number;
  readonly indexMiB?: number;
  /** Everything the memory budget accounts (all parts), its budget, and the writes it refused so far. */
  readonly accountedMiB?: number;
  readonly budgetMiB?: number;
  readonly budgetRefusals?: number;
  readonly loopDelayMaxMs?: number;
  readonly loopDelayP99Ms?: number;
  readonly leaderChanges?: number;
  /** kvd only, since start: ready rounds whose fsynced batch took over 0.5 s, and major GC pauses (count, total ms). */
  readonly slowFsyncs?: number;
  readonly majorGcs?: number;
  readonly majorGcMs?: number;
  /** Resident memory by kind (/proc/<pid>/smaps): anonymous, of it the brk heap (glibc's main arena), LevelDB's mapped table files, other files (the node binary, libraries). */
  readonly split?: RssSplit;
  /** kvd only: V8 heap committed (total). */
  readonly heapTotalMiB?: number;
  /** kvd only (with --malloc-trim-mib > 0 on glibc): malloc_trim calls so far, their total and longest wall time (ms), RSS they gave back (MiB), the event-loop time of the checks (ms); glibc's bytes in use and free (MiB). */
  readonly trims?: number;
  readonly trimMs?: number;
  readonly trimMaxMs?: number;
  readonly trimReleasedMiB?: number;
  readonly trimCheckMs?: number;
  readonly mallocInUseMiB?: number;
  readonly mallocFreeMiB?: number;
}

/** A process's resident memory by kind, MiB (see {@link rssSplitOf}). */
export interface RssSplit {
  readonly anonMiB: number;
  readonly brkMiB: number;
  readonly tablesMiB: number;
  readonly otherFileMiB: number;
}

/**
 * Resident memory of process `pid` by kind, from /proc/<pid>/smaps: anonymous mappings (V8's heap,
 * buffers, malloc arenas, LevelDB's block cache and memtables; `[heap]`, glibc's main arena, apart),
 * LevelDB's table files (`*.ldb`/`*.sst`, mapped for reads; clean pages the kernel may drop) and
 * other files. Undefined when smaps cannot be read.
 */
async function rssSplitOf(pid: number | undefined): Promise<RssSplit | undefined> {
  if (pid === undefined) return undefined;
  const text = await readFile(`/proc/${pid}/smaps`, 'utf8').catch(() => '');
  if (text === '') return undefined;
  let kind: 'anon' | 'brk' | 'tables' | 'file' = 'anon';
  const kib = { anon: 0, brk: 0, tables: 0, file: 0 };
  for (const line of text.split('\n')) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (header) {
      const path = header[1]!.trim();
      kind = path === '[heap]' ? 'brk' : /\.(ldb|sst)$/.test(path) ? 'tables' : path.startsWith('/') ? 'file' : 'anon';
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) kib[kind] += Number(rss[1]);
  }
  const m = (k: number): number => Math.round(k / 102.4) / 10;
  return { anonMiB: m(kib.anon + kib.brk), brkMiB: m(kib.brk), tablesMiB: m(kib.tables), otherFileMiB: m(kib.file) };
}

/** CPU seconds used so far by all of the cluster's server processes (undefined when a node's is unknown). */
async function serverCpuSeconds(cluster: RunningCluster): Promise<number | undefined> {
  let sum = 0;
  for (const pid of cluster.nodePids?.() ?? []) {
    const s = await processCpuSeconds(pid);
    if (s === undefined) return undefined;
    sum += s;
  }
  return sum;
}

/** The figures at one checkpoint. */
export interface DataSizeCheckpoint {
  readonly system: SystemName;
  readonly keys: number;
  /** Keys per second of the fill up to this checkpoint (bulk or unary, see `fill`), and its failed attempts. */
  readonly fillPerSec: number;
  readonly fillErrors: number;
  readonly putsPerSec: number;
  readonly putP99Ms: number;
  readonly putErrors: number;
  readonly getsPerSec: number;
  readonly getP99Ms: number;
  readonly nodes: readonly NodeFigures[];
  /** Every node sampled again after `--rest-ms` of idleness (what a node keeps at this data size once the load stops), when that is on. */
  readonly atRest?: readonly NodeFigures[];
}

const mib = (n: number): number => Math.round((n / 2 ** 20) * 10) / 10;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('metrics timeout')));
    req.end();
  });
}

/** The sum of the samples of `name` (with any labels, or only those whose labels contain `label`) in a Prometheus text page, or undefined. */
function sample(text: string, name: string, label?: string): number | undefined {
  let sum: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    if (label !== undefined && !rest.includes(label)) continue;
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) sum = (sum ?? 0) + v;
  }
  return sum;
}

async function figuresOf(cluster: RunningCluster): Promise<NodeFigures[]> {
  const pids = cluster.nodePids?.() ?? [];
  const dirs = cluster.nodeDirs ?? [];
  const ports = cluster.system === 'kvd' ? ((await cluster.metricsPorts?.()) ?? []) : [];
  const out: NodeFigures[] = [];
  for (let i = 0; i < cluster.endpoints.length; i++) {
    const split = await rssSplitOf(pids[i]);
    const base = { node: i + 1, rssMiB: mib(await rssOf(pids[i])), diskMiB: mib(await duBytes(dirs[i] ?? '')), ...(split ? { split } : {}) };
    const port = ports[i];
    if (port === undefined) {
      out.push(base);
      continue;
    }
    const text = await scrape(port).catch(() => '');
    out.push({
      ...base,
      heapUsedMiB: mib(sample(text, 'kvcascade_nodejs_heap_size_used_bytes') ?? 0),
      heapTotalMiB: mib(sample(text, 'kvcascade_nodejs_heap_size_total_bytes') ?? 0),
      externalMiB: mib(sample(text, 'kvcascade_nodejs_external_memory_bytes') ?? 0),
      cacheMiB: mib(sample(text, 'kvcascade_value_cache_bytes') ?? 0),
      indexMiB: mib(sample(text, 'kvcascade_memory_accounted_bytes', 'part="index"') ?? 0),
      accountedMiB: mib(sample(text, 'kvcascade_memory_accounted_bytes') ?? 0),
      budgetMiB: mib(sample(text, 'kvcascade_memory_budget_bytes') ?? 0),
      budgetRefusals: sample(text, 'kvcascade_memory_budget_refusals_total') ?? 0,
      // prom-client resets its event-loop delay histogram at each scrape: these cover the time since the last checkpoint.
      loopDelayMaxMs: Math.round((sample(text, 'kvcascade_nodejs_eventloop_lag_max_seconds') ?? 0) * 1000),
      loopDelayP99Ms: Math.round((sample(text, 'kvcascade_nodejs_eventloop_lag_p99_seconds') ?? 0) * 1000),
      leaderChanges: sample(text, 'kvcascade_raft_leader_changes_total') ?? 0,
      slowFsyncs: (sample(text, 'kvcascade_fsync_duration_seconds_count') ?? 0) - (sample(text, 'kvcascade_fsync_duration_seconds_bucket', 'le="0.5"') ?? 0),
      majorGcs: sample(text, 'kvcascade_nodejs_gc_duration_seconds_count', 'kind="major"') ?? 0,
      majorGcMs: Math.round((sample(text, 'kvcascade_nodejs_gc_duration_seconds_sum', 'kind="major"') ?? 0) * 1000),
      ...(sample(text, 'kvcascade_malloc_in_use_bytes') === undefined
        ? {}
        : {
            trims: sample(text, 'kvcascade_malloc_trims_total') ?? 0,
            trimMs: Math.round((sample(text, 'kvcascade_malloc_trim_seconds_total') ?? 0) * 1000),
            trimMaxMs: Math.round((sample(text, 'kvcascade_malloc_trim_max_seconds') ?? 0) * 1000),
            trimReleasedMiB: mib(sample(text, 'kvcascade_malloc_trim_released_bytes_total') ?? 0),
            trimCheckMs: Math.round((sample(text, 'kvcascade_malloc_check_seconds_total') ?? 0) * 1000),
            mallocInUseMiB: mib(sample(text, 'kvcascade_malloc_in_use_bytes') ?? 0),
            mallocFreeMiB: mib(sample(text, 'kvcascade_malloc_free_bytes') ?? 0),
          }),
    });
  }
  return out;
}

/** A node's malloc figures and trims, for the per-node line ('' when it has none). */
function trimText(n: NodeFigures): string {
  if (n.mallocInUseMiB === undefined) return '';
  return ` malloc in use ${n.mallocInUseMiB} free ${n.mallocFreeMiB} trims ${n.trims} (${n.trimMs} ms, max ${n.trimMaxMs} ms, released ${n.trimReleasedMiB} MiB; checks ${n.trimCheckMs} ms)`;
}

/** The per-node line of a sample outside the checkpoints (after the restart, after the catch-up). */
function restText(nodes: readonly NodeFigures[]): string {
  return nodes
    .map((n) => {
      const sp = n.split ? ` (anon ${n.split.anonMiB}, of it brk ${n.split.brkMiB}; tables ${n.split.tablesMiB}; other files ${n.split.otherFileMiB})` : '';
      const k = n.heapUsedMiB === undefined ? '' : ` heap ${n.heapUsedMiB}/${n.heapTotalMiB} ext ${n.externalMiB} accounted ${n.accountedMiB}`;
      return `n${n.node} rss ${n.rssMiB}${sp}${k}${trimText(n)}`;
    })
    .join(' | ');
}

/** Restarts node 3 (index 2) and returns the seconds until it serves a local (serializable) read of `key`. */
async function restartSeconds(cluster: RunningCluster, key: string): Promise<number | undefined> {
  if (!cluster.restartNode) return undefined;
  const t0 = performance.now();
  await cluster.restartNode(2);
  return servingAfter(cluster, key, t0);
}

/** Seconds from `t0` until node 3 serves a local (serializable) read of `key` (undefined after 10 minutes). */
async function servingAfter(cluster: RunningCluster, key: string, t0: number): Promise<number | undefined> {
  const address = cluster.endpoints[2]!;
  const until = Date.now() + 600_000;
  while (Date.now() < until) {
    const stub = cluster.system === 'kvd' ? kvStub(address) : etcdStub(address);
    try {
      const found =
        cluster.system === 'kvd'
          ? (await call(stub as ReturnType<typeof kvStub>, (stub as ReturnType<typeof kvStub>).get, { key, consistency: 'SERIALIZABLE' }, 1_000)).found === true
          : ((await call(stub as ReturnType<typeof etcdStub>, (stub as ReturnType<typeof etcdStub>).range, { key: Buffer.from(key), serializable: true }, 1_000)).kvs?.length ?? 0) > 0;
      if (found) return Math.round((performance.now() - t0) / 100) / 10;
    } catch {
      // not up yet
    } finally {
      stub.close();
    }
    await sleep(100);
  }
  return undefined;
}

/**
 * Catch-up of a lagging replica: stops node 3, writes `extra` more keys through nodes 1 and 2
 * (more than a log compaction's worth, so kvd's leader sends a snapshot of the whole shard), starts
 * node 3 and times it until it serves the last of them, sampling every node's RSS meanwhile (peak
 * per node: node 3's is the follower's, the others' show what sending the snapshot costs).
 */
async function catchUp(
  cluster: RunningCluster,
  drivers: Driver[],
  o: { concurrency: number },
  from: number,
  extra: number,
  valueOf: (i: number) => Uint8Array,
): Promise<{ seconds: number | undefined; peakRssMiB: number; peakRssByNodeMiB: number[]; peakAnonByNodeMiB: number[] } | undefined> {
  if (!cluster.stopNode || !cluster.startNode) return undefined;
  await cluster.stopNode(2);
  await drive(drivers.slice(0, 2), o.concurrency, from, from + extra, (d, i) => d.put(i, valueOf(i)));
  const peaks = [0, 0, 0];
  // Anonymous RSS (heap, buffers, allocator: what the node cannot give back) apart from the total,
  // whose file-backed rest is mostly LevelDB's mapped tables (clean pages the kernel may drop).
  const anonPeaks = [0, 0, 0];
  let sampling = true;
  // Node 3's timeline (every ~0.5 s): RSS, V8 heap used/total and external memory from its /metrics, to
  // tell where the follower's memory goes during the install (heap, buffers, or neither: LevelDB).
  const timeline: string[] = [];
  const t0 = performance.now();
  let peakHeap = 0;
  let peakExt = 0;
  const sampler = (async () => {
    for (let n = 0; sampling; n++) {
      const pids = cluster.nodePids?.() ?? [];
      for (let i = 0; i < peaks.length; i++) {
        peaks[i] = Math.max(peaks[i]!, await rssOf(pids[i]));
        anonPeaks[i] = Math.max(anonPeaks[i]!, await anonRssOf(pids[i]));
      }
      if (n % 5 === 0 && cluster.system === 'kvd') {
        const port = ((await cluster.metricsPorts?.()) ?? [])[2];
        const text = port === undefined ? '' : await scrape(port).catch(() => '');
        const heap = mib(sample(text, 'kvcascade_nodejs_heap_size_used_bytes') ?? 0);
        const ext = mib(sample(text, 'kvcascade_nodejs_external_memory_bytes') ?? 0);
        const total = mib(sample(text, 'kvcascade_nodejs_heap_size_total_bytes') ?? 0);
        peakHeap = Math.max(peakHeap, heap);
        peakExt = Math.max(peakExt, ext);
        const st = await readFile(`/proc/${pids[2]}/status`, 'utf8').catch(() => '');
        const kib = (field: string): number => Math.round(Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(st)?.[1] ?? 0) / 1024);
        timeline.push(`${((performance.now() - t0) / 1000).toFixed(0)}s rss ${mib(await rssOf(pids[2]))} (anon ${kib('RssAnon')} file ${kib('RssFile')}) heap ${text ? `${heap}/${total}` : '-'} ext ${text ? ext : '-'}`);
      }
      await sleep(100);
    }
  })();
  cluster.startNode(2);
  const seconds = await servingAfter(cluster, `data/k${String(from + extra - 1).padStart(8, '0')}`, t0);
  sampling = false;
  await sampler;
  console.log(`catch-up n3 timeline (MiB; heap used/total and ext from /metrics, '-' = no answer): ${timeline.join(' | ')}; peak heap used ${peakHeap}, peak external ${peakExt}`);
  return { seconds, peakRssMiB: mib(peaks[2]!), peakRssByNodeMiB: peaks.map(mib), peakAnonByNodeMiB: anonPeaks.map(mib) };
}

/** Anonymous resident bytes of process `pid` (`RssAnon` of /proc/<pid>/status; 0 when unknown). */
async function anonRssOf(pid: number | undefined): Promise<number> {
  if (pid === undefined) return 0;
  const st = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  return Number(/^RssAnon:\s+(\d+)/m.exec(st)?.[1] ?? 0) * 1024;
}

async function runSystem(
  system: SystemName,
  checkpoints: number[],
  o: { settleMs: number; restMs: number; valueBytes: number; concurrency: number; gets: number; catchUpKeys: number; overwrites: number; kvdArgs: string[]; bin?: string; etcdBin?: string; keepLogs?: string; bulk: boolean; measurePuts: number; fillConcurrency: number },
): Promise<DataSizeCheckpoint[]> {
  const log = (m: string) => console.error(m);
  const cluster =
    system === 'kvd'
      ? await startKvdCluster({ extraArgs: o.kvdArgs, ...(o.bin !== undefined ? { bin: o.bin } : {}), log })
      : await startEtcdCluster({ ...(o.etcdBin !== undefined ? { bin: o.etcdBin } : {}), log });
  const results: DataSizeCheckpoint[] = [];
  // The bench drivers name keys bench/kNNNNNNNN; the restart probe reads the last one.
  const drivers = cluster.endpoints.map((e) => makeDriver(system, e, 30_000, 'data/'));
  let filler: Filler | undefined;
  try {
    await Promise.all(drivers.map((d) => d.ready(10_000)));
    // Reset the event-loop histograms before the fill; leader changes are counted from here (not the start's elections).
    const before = await figuresOf(cluster);
    // Distinct incompressible values (LevelDB compresses its blocks; bbolt does not).
    const pool = randomBytes(o.valueBytes * 64);
    const valueOf = (i: number): Uint8Array => {
      const v = Buffer.from(pool.subarray((i % 63) * o.valueBytes, (i % 63) * o.valueBytes + o.valueBytes));
      v.writeUInt32LE(i >>> 0, 0);
      return v;
    };
    let from = 0;
    filler = o.bulk ? makeFiller(system, cluster.endpoints, o.fillConcurrency, valueOf) : undefined;
    for (const target of checkpoints) {
      // Bulk: all but the last `measurePuts` keys fast, then those as measured unary puts.
      const measureFrom = filler ? Math.max(from, target - o.measurePuts) : from;
      const fill = filler && measureFrom > from ? await filler.fill(from, measureFrom) : undefined;
      if (fill && fill.errors > 0) console.error(`${system}: ${fill.errors} failed fill attempts (retried), e.g. ${fill.firstErrors.join(' / ')}`);
      if (fill) console.error(`${system}: filled ${from}..${measureFrom} at ${fill.rate} keys/s (load ${loadavg()[0]!.toFixed(1)})`);
      const put = await drive(drivers, o.concurrency, measureFrom, target, (d, i) => d.put(i, valueOf(i)), filler ? undefined : { every: 50_000, scale: 1 });
      if (put.errors > 0) console.error(`${system}: ${put.errors} failed put attempts (retried), e.g. ${put.firstErrors.join(' / ')}`);
      from = target;
      await sleep(3_000); // let the nodes settle (apply, flush, GC) before sampling
      const nodes = (await figuresOf(cluster)).map((n, i) =>
        n.leaderChanges === undefined ? n : { ...n, leaderChanges: n.leaderChanges - (before[i]?.leaderChanges ?? 0) },
      );
      let seed = target;
      const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
      const cpuBefore = await serverCpuSeconds(cluster);
      const get = await drive(drivers, o.concurrency, 0, o.gets, async (d) => {
        if (!(await d.get(Math.floor(rnd() * target)))) throw new Error('a written key was not found');
      });
      const cpuAfter = await serverCpuSeconds(cluster);
      const getSrvUs = cpuBefore === undefined || cpuAfter === undefined ? undefined : Math.round(((cpuAfter - cpuBefore) * 1e6) / o.gets);
      const cp: DataSizeCheckpoint = { system, keys: target, fillPerSec: fill?.rate ?? put.rate, fillErrors: fill?.errors ?? 0, putsPerSec: put.rate, putP99Ms: put.p99, putErrors: put.errors, getsPerSec: get.rate, getP99Ms: get.p99, nodes };
      results.push(cp);
      const per = nodes
        .map((n) => {
          const k = n.heapUsedMiB === undefined ? '' : ` heap ${n.heapUsedMiB} ext ${n.externalMiB} cache ${n.cacheMiB} index ${n.indexMiB} accounted ${n.accountedMiB} of budget ${n.budgetMiB} (refusals ${n.budgetRefusals}) loop max/p99 ${n.loopDelayMaxMs}/${n.loopDelayP99Ms} ms leader changes since fill start ${n.leaderChanges} fsyncs>0.5s ${n.slowFsyncs} major GCs ${n.majorGcs} (${n.majorGcMs} ms)`;
          const sp = n.split ? ` (anon ${n.split.anonMiB}, of it brk ${n.split.brkMiB}; tables ${n.split.tablesMiB}; other files ${n.split.otherFileMiB})` : '';
          const ht = n.heapTotalMiB === undefined ? '' : ` heap total ${n.heapTotalMiB}`;
          return `n${n.node} rss ${n.rssMiB}${sp} disk ${n.diskMiB}${k}${ht}${trimText(n)}`;
        })
        .join(' | ');
      console.log(`${system} keys ${target} (load ${loadavg().map((l) => l.toFixed(1)).join(' ')})  fill keys/s ${cp.fillPerSec} (errors ${cp.fillErrors})  put/s ${cp.putsPerSec} p99 ${cp.putP99Ms} ms errors ${cp.putErrors}  get/s ${cp.getsPerSec} p99 ${cp.getP99Ms} ms srv ${getSrvUs ?? '?'} us/get  MiB: ${per}`);
      if (o.restMs > 0) {
        // RSS at rest: what a node keeps at this data size once the load stops (kvd's malloc trimmer
        // waits for 3 quiet checks of 2 s, so a rest shorter than ~8 s shows what it holds before that).
        await sleep(o.restMs);
        const atRest = await figuresOf(cluster);
        results[results.length - 1] = { ...cp, atRest };
        console.log(`${system} keys ${target} at rest (${o.restMs / 1000} s idle, load ${loadavg()[0]!.toFixed(1)}) MiB: ${restText(atRest)}`);
      }
    }
    if (o.overwrites > 0) {
      // Old versions pile up (retention: kvd's --retention-ms, default 1 h; etcd keeps them until compacted):
      // run once with "--kvd-args=--retention-ms 10000" and once without to see what compaction costs.
      let seed = 7;
      const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
      const ow = await drive(drivers, o.concurrency, 0, o.overwrites, (d, i) => {
        const k = Math.floor(rnd() * from);
        return d.put(k, valueOf(i + k));
      });
      await sleep(3_000);
      const nodes = await figuresOf(cluster);
      const per = nodes.map((n) => `n${n.node} rss ${n.rssMiB} disk ${n.diskMiB}${n.heapUsedMiB === undefined ? '' : ` heap ${n.heapUsedMiB} index ${n.indexMiB} loop max ${n.loopDelayMaxMs} ms`}`).join(' | ');
      console.log(`${system} overwrites ${o.overwrites} of random keys among ${from}: put/s ${ow.rate} p99 ${ow.p99} ms errors ${ow.errors}  MiB: ${per}`);
    }
    const restart = await restartSeconds(cluster, `data/k${String(from - 1).padStart(8, '0')}`);
    console.log(`${system} restart of node 3 with ${from} keys: serving its data again after ${restart ?? 'n/a'} s (load ${loadavg()[0]!.toFixed(1)})`);
    if (o.catchUpKeys > 0) {
      await sleep(3_000);
      const c = await catchUp(cluster, drivers, o, from, o.catchUpKeys, valueOf);
      console.log(
        `${system} catch-up (load ${loadavg()[0]!.toFixed(1)}): node 3 stopped, ${o.catchUpKeys} more keys written, restarted: serving the last of ${from + o.catchUpKeys} keys after ${c?.seconds ?? 'n/a'} s, peak RSS ${c?.peakRssMiB ?? 'n/a'} MiB (per node during the catch-up: ${c?.peakRssByNodeMiB.map((m, i) => `n${i + 1} ${m}`).join(', ') ?? 'n/a'} MiB; of it anonymous, peak: ${c?.peakAnonByNodeMiB.map((m, i) => `n${i + 1} ${m}`).join(', ') ?? 'n/a'} MiB)`,
      );
      // What stays once the install is over (the trimmer, when on, has had its chance: 2 checks and its interval).
      await sleep(o.settleMs);
      console.log(`${system} ${o.settleMs / 1000} s after the catch-up MiB: ${restText(await figuresOf(cluster))}`);
    } else if (o.settleMs > 0) {
      await sleep(o.settleMs);
      console.log(`${system} ${o.settleMs / 1000} s after the restart MiB: ${restText(await figuresOf(cluster))}`);
    }
    return results;
  } finally {
    filler?.close();
    for (const d of drivers) d.close();
    if (o.keepLogs !== undefined) await copyNodeLogs(cluster.dataDir, join(o.keepLogs, system)).catch(() => undefined);
    await cluster.stop();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      checkpoints: { type: 'string', default: '10000,100000' },
      big: { type: 'boolean', default: false },
      system: { type: 'string', default: 'both' },
      'value-bytes': { type: 'string', default: '1024' },
      concurrency: { type: 'string', default: '64' },
      gets: { type: 'string', default: '5000' },
      'catch-up-keys': { type: 'string', default: '30000' },
      overwrites: { type: 'string', default: '0' },
      'keep-logs': { type: 'string' },
      'kvd-args': { type: 'string', default: '' },
      fill: { type: 'string', default: 'bulk' },
      'measure-puts': { type: 'string', default: '20000' },
      'fill-concurrency': { type: 'string', default: '16' },
      'settle-ms': { type: 'string', default: '15000' },
      'rest-ms': { type: 'string', default: '12000' },
      bin: { type: 'string' },
      'etcd-bin': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log('node dist/bench/data-size.js [--checkpoints 10000,100000] [--big] [--system kvd|etcd|both] [--value-bytes 1024] [--concurrency 64] [--gets 5000] [--catch-up-keys 30000] [--overwrites 0] [--fill bulk|unary] [--measure-puts 20000] [--fill-concurrency 16] [--settle-ms 15000] [--rest-ms 12000] [--keep-logs DIR] [--kvd-args "..."] [--bin PATH] [--etcd-bin PATH]');
    return;
  }
  const checkpoints = flagIntList('checkpoints', values.checkpoints, 1, 100_000_000);
  if (values.big && !checkpoints.includes(1_000_000)) checkpoints.push(1_000_000);
  checkpoints.sort((a, b) => a - b);
  if (values.fill !== 'bulk' && values.fill !== 'unary') throw new Error('--fill must be bulk or unary');
  const systems: SystemName[] = values.system === 'both' ? ['kvd', 'etcd'] : [values.system as SystemName];
  if (!systems.every((s) => s === 'kvd' || s === 'etcd')) throw new Error('--system must be kvd, etcd or both');
  const o = {
    valueBytes: flagInt('value-bytes', values['value-bytes'], 1),
    concurrency: flagInt('concurrency', values.concurrency, 1),
    gets: flagInt('gets', values.gets, 1),
    catchUpKeys: flagInt('catch-up-keys', values['catch-up-keys'], 0),
    overwrites: flagInt('overwrites', values.overwrites, 0),
    kvdArgs: values['kvd-args'].split(' ').filter((s) => s.length > 0),
    bulk: values.fill === 'bulk',
    measurePuts: flagInt('measure-puts', values['measure-puts'], 1),
    fillConcurrency: flagInt('fill-concurrency', values['fill-concurrency'], 1),
    settleMs: flagInt('settle-ms', values['settle-ms'], 0),
    restMs: flagInt('rest-ms', values['rest-ms'], 0),
    ...(values.bin !== undefined ? { bin: values.bin } : {}),
    ...(values['etcd-bin'] !== undefined ? { etcdBin: values['etcd-bin'] } : {}),
    ...(values['keep-logs'] !== undefined ? { keepLogs: values['keep-logs'] } : {}),
  };
  const all: DataSizeCheckpoint[] = [];
  for (const system of systems) {
    if (system === 'etcd' && findEtcd(o.etcdBin) === undefined) {
      console.error(ETCD_MISSING_MESSAGE);
      continue;
    }
    all.push(...(await runSystem(system, checkpoints, o)));
  }
  console.log(JSON.stringify({ valueBytes: o.valueBytes, concurrency: o.concurrency, kvdArgs: o.kvdArgs, results: all }));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
