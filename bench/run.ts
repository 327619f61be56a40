/** The benchmark entry point (`node dist/bench/run.js [flags]`): runs each workload against a fresh 3-node kvd and/or etcd cluster, prints a comparison table and writes bench/results/latest.json. */
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { realpathSync } from 'node:fs';
import type { SystemName } from './clients.js';
import { ETCD_MISSING_MESSAGE, etcdVersion, findEtcd, startEtcdCluster } from './etcd-cluster.js';
import { findKvd, defaultKvdBin, startKvdCluster } from './kvd-cluster.js';
import {
  DEFAULT_WORKLOADS,
  KVD_CLIENT_MODES,
  type KvdClientMode,
  REACTION_WORKLOADS,
  SHARD_WORKLOADS,
  WORKLOADS,
  killWorkers,
  populate,
  runWorkload,
  supports,
  type WorkloadName,
  type WorkloadResult,
} from './load.js';
import { etcdCeiling, issue11Goals, renderGoals } from './goals.js';
import { findH2load, H2LOAD_IN_FLIGHT, H2LOAD_MISSING_MESSAGE, runH2loadPut } from './h2load.js';
import { runReactionWorkload } from './reactions.js';
import { leaderSnapshot, movedLeaders, routingSpec, waitSettled, type RoutingSpec, type SettleReport } from './shards.js';
import { kvClusterStub } from './clients.js';
import { engineOpsNote, sampleEngineOps } from './engine-ops.js';
import { copyNodeLogs, flagInt, flagIntList, flagNumber, repoRoot, type RunningCluster } from './util.js';

const USAGE = `usage: node dist/bench/run.js [flags]
  --duration S        measured seconds per workload (default 10)
  --warmup S          unmeasured seconds before each workload (default 2)
  --clients N         closed-loop workers per workload (default 64)
  --workloads LIST    comma list of ${WORKLOADS.join(',')}
                      (default ${DEFAULT_WORKLOADS.join(',')}; pipelined-put, put-shards, pipelined-put-shards,
                      lib-put-shards, lambda and lambda-throughput are kvd only; h2load is etcd only: etcd's Put ceiling driven by
                      h2load (nghttp2-client) at 64 and 256 in flight, skipped with a message where h2load is missing)
  --shards LIST       shard counts for put-shards / pipelined-put-shards / lib-put-shards (default 1,2,4,8; each 1..64): for each N a
                      fresh 3-node kvd cluster with --default-shards N, waited on until every shard's leader has
                      settled, then the put (pipelined-put) load with each key sent to its shard's leader (lib-put-shards:
                      through KvClient's default path, which routes by itself). Their
                      kvd/etcd ratio is against etcd's unary put, which is added to etcd's workloads if missing
  --settle-timeout S  longest wait for a sharded cluster's leaders to settle (default 90; then it runs anyway, noted)
  --systems LIST      comma list of kvd,etcd (default kvd,etcd)
  --keys N            keyspace size for put/get/pipelined-put (default 10000)
  --rmw-keys N        rmw draws from the first N keys (default 1000)
  --value-bytes N     value size (default 256)
  --pipeline-depth N  ops in flight per Pipeline stream (default 128)
  --per-channel N     workers per gRPC connection (default 16)
  --procs N           forked client processes (default 2; 0 = in the harness process)
  --op-timeout S      per-call deadline (default 5)
  --rmw-attempts N    conditional-write attempts before an rmw is abandoned (default 100)
  --data-root DIR     parent of the clusters' temp data dirs (default: OS temp dir)
  --etcd-bin PATH     etcd binary (default: etcd on PATH)
  --kvd-bin PATH      kvd entry point (default: dist/src/bin/kvd.js)
  --kvd-args=FLAGS    extra kvd flags, space-separated (e.g. --kvd-args=--no-overlap-rounds for an A/B)
  --out FILE          JSON results (default bench/results/latest.json)
  --profile DIR       save V8 CPU profiles of every measured window: each kvd process (kvd-nN-<pid>-<k>.cpuprofile,
                      through SIGUSR2, see src/bin/cpu-profile-signal.ts) and each client process
                      (client-<system>-<workload>-<pid>.cpuprofile); summarise with node dist/bench/profile-summary.js DIR
  --lone on|off       after each system's workloads, put and get again with 1 client in 1 process, one call at a
                      time (issue 11's lone-call goals); default on when --workloads is not given, else off
  --kvd-client MODE   lib (default: kvd's put, get and rmw through the client library's default KvClient API,
                      one KvClient per connection of the plan: what an application gets), stub (plain grpc-js
                      unary stubs, identical to etcd's client) or lib-unary (KvClient with batching: false)
  --help`;

/** Parsed command-line configuration of a benchmark run. */
export interface BenchConfig {
  readonly durationS: number;
  readonly warmupS: number;
  readonly clients: number;
  readonly workloads: WorkloadName[];
  /** Shard counts the shard scaling workloads run at, each on a fresh cluster. */
  readonly shards: number[];
  /** Longest wait for a sharded cluster's leaders to settle, in seconds. */
  readonly settleTimeoutS: number;
  readonly systems: SystemName[];
  readonly keys: number;
  readonly rmwKeys: number;
  readonly valueBytes: number;
  readonly pipelineDepth: number;
  readonly perChannel: number;
  readonly procs: number;
  readonly opTimeoutS: number;
  readonly rmwAttempts: number;
  readonly dataRoot?: string;
  readonly etcdBin?: string;
  readonly kvdBin?: string;
  /** Extra kvd flags (`--kvd-args`, space-separated). */
  readonly kvdArgs?: readonly string[];
  readonly out: string;
  /** Save CPU profiles of every kvd process and every client process here (`--profile DIR`). */
  readonly profileDir?: string;
  /** Measure put and get again with one client, one call at a time, after each system's other workloads (`--lone`). */
  readonly lone: boolean;
  /** How kvd's put/get/rmw are driven: plain grpc-js unary stubs (`stub`, the etcd-identical path) or the client library's default KvClient API (`lib`). */
  readonly kvdClient: KvdClientMode;
}

/** Parses argv into a {@link BenchConfig} (undefined for --help); throws with a message on bad input. */
export function parseConfig(argv: string[]): BenchConfig | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string', default: '10' },
      warmup: { type: 'string', default: '2' },
      clients: { type: 'string', default: '64' },
      workloads: { type: 'string', default: DEFAULT_WORKLOADS.join(',') },
      shards: { type: 'string', default: '1,2,4,8' },
      'settle-timeout': { type: 'string', default: '90' },
      systems: { type: 'string', default: 'kvd,etcd' },
      keys: { type: 'string', default: '10000' },
      'rmw-keys': { type: 'string', default: '1000' },
      'value-bytes': { type: 'string', default: '256' },
      'pipeline-depth': { type: 'string', default: '128' },
      'per-channel': { type: 'string', default: '16' },
      procs: { type: 'string', default: '2' },
      'op-timeout': { type: 'string', default: '5' },
      'rmw-attempts': { type: 'string', default: '100' },
      'data-root': { type: 'string' },
      'etcd-bin': { type: 'string' },
      'kvd-bin': { type: 'string' },
      'kvd-args': { type: 'string' },
      out: { type: 'string' },
      profile: { type: 'string' },
      'kvd-client': { type: 'string', default: 'lib' },
      lone: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const num = flagNumber;
  const int = flagInt;
  const list = <T extends string>(name: string, v: string, allowed: readonly T[]): T[] => {
    const items = v.split(',').map((s) => s.trim()).filter((s) => s !== '');
    for (const s of items) if (!allowed.includes(s as T)) throw new Error(`--${name}: unknown ${s} (allowed: ${allowed.join(', ')})`);
    if (items.length === 0) throw new Error(`--${name} is empty`);
    return [...new Set(items)] as T[];
  };
  const keys = int('keys', values.keys, 1);
  const shards = flagIntList('shards', values.shards, 1, 64); // 64: kvd's limit of shards per pool
  return {
    durationS: num('duration', values.duration, 0.1),
    warmupS: num('warmup', values.warmup, 0),
    clients: int('clients', values.clients, 1),
    workloads: list('workloads', values.workloads, WORKLOADS),
    shards,
    settleTimeoutS: num('settle-timeout', values['settle-timeout'], 1),
    systems: list('systems', values.systems, ['kvd', 'etcd'] as const),
    keys,
    rmwKeys: Math.min(keys, int('rmw-keys', values['rmw-keys'], 1)),
    valueBytes: int('value-bytes', values['value-bytes'], 1),
    pipelineDepth: int('pipeline-depth', values['pipeline-depth'], 1),
    perChannel: int('per-channel', values['per-channel'], 1),
    procs: int('procs', values.procs, 0),
    opTimeoutS: num('op-timeout', values['op-timeout'], 0.01),
    rmwAttempts: int('rmw-attempts', values['rmw-attempts'], 1),
    ...(values['data-root'] === undefined ? {} : { dataRoot: resolve(values['data-root']) }),
    ...(values['etcd-bin'] === undefined ? {} : { etcdBin: values['etcd-bin'] }),
    ...(values['kvd-bin'] === undefined ? {} : { kvdBin: resolve(values['kvd-bin']) }),
    ...(values['kvd-args'] === undefined ? {} : { kvdArgs: values['kvd-args'].split(' ').filter((a) => a.length > 0) }),
    out: values.out === undefined ? join(repoRoot(), 'bench', 'results', 'latest.json') : resolve(values.out),
    ...(values.profile === undefined ? {} : { profileDir: resolve(values.profile) }),
    kvdClient: list('kvd-client', values['kvd-client'], KVD_CLIENT_MODES)[0]!,
    lone: values.lone === undefined ? !argv.some((a) => a === '--workloads' || a.startsWith('--workloads=')) : list('lone', values.lone, ['on', 'off'] as const)[0] === 'on',
  };
}

/** Facts about the machine a run was measured on. */
export interface MachineInfo {
  readonly cpuModel: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly node: string;
  /** 1, 5 and 15 minute load averages when the run started (the machine should be otherwise idle). */
  readonly loadAvgAtStart: number[];
  readonly etcdVersion: string | null;
  readonly kvdVersion: string | null;
}

/** CPU use by processes other than the servers and clients (in cores) above which a run is flagged as disturbed. */
const DISTURBED_CORES = 0.25;

const log = (msg: string): void => console.error(`[bench] ${msg}`);

function fmt(n: number, digits = 2): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '-';
}

function notes(r: WorkloadResult): string {
  const out: string[] = [...(r.notes ?? [])];
  const errs = Object.entries(r.errors);
  if (errs.length > 0) out.push(`errors ${errs.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  if (r.workload === 'rmw') out.push(`conflicts ${r.conflicts}, retried ${r.retriedOps}, abandoned ${r.abandoned}`);
  if (r.misses > 0) out.push(`misses ${r.misses}`);
  if (r.misrouted !== undefined) out.push(`kv-leader≠target ${r.misrouted}`);
  const srv = r.serverCpuCores === null ? '?' : fmt(r.serverCpuCores, 2);
  const other = r.otherCpuCores === null ? '?' : fmt(r.otherCpuCores, 2);
  out.push(`cpu srv ${srv} cli ${fmt(r.clientCpuCores, 2)} other ${other}`);
  if (r.serverCpuUsPerOp !== null) out.push(`srv ${r.serverCpuUsPerOp} us/op`);
  if (r.opsPerSec > 0) out.push(`cli ${Math.round((r.clientCpuCores * 1e6) / r.opsPerSec)} us/op`);
  if (r.kvdClient !== undefined) out.push(r.kvdClient === 'lib' ? 'KvClient' : 'KvClient unbatched');
  return out.join('; ');
}

/** What a kvd row is compared with on etcd, and how. */
interface Pairing {
  /** The etcd workload. */
  readonly against: WorkloadName;
  /**
   * `ops/s`: kvd ops/s ÷ etcd ops/s (higher = kvd better). `p50 sent→reaction`: kvd p50 ÷ etcd p50
   * of put sent → reaction (lower = kvd better).
   */
  readonly kind: 'ops/s' | 'p50 sent→reaction';
  /** Mark after the ratio, explained under the table ('' for a like-for-like pairing). */
  readonly mark: string;
  readonly footnote?: string;
}

/** The etcd counterpart of each kvd workload. */
export function pairingFor(workload: WorkloadName): Pairing {
  switch (workload) {
    case 'pipelined-put':
      return { against: 'put', kind: 'ops/s', mark: '*', footnote: '* pipelined-put is compared with etcd\'s unary put (etcd has no pipelined KV API).' };
    case 'lambda':
      return {
        against: 'watch',
        kind: 'p50 sent→reaction',
        mark: '^',
        footnote:
          '^ lambda: LATENCY ratio, kvd p50 / etcd watch p50 of put sent→reaction (lambda start vs watch event); LOWER = kvd reacts sooner. ' +
          'A lambda on the leader vs an event at a client, see bench/README.md.',
      };
    case 'lambda-throughput':
      return {
        against: 'watch',
        kind: 'ops/s',
        mark: '+',
        footnote:
          '+ lambda-throughput: kvd lambda events/s under pipelined puts vs etcd watch events/s under unary puts (etcd has no pipelined KV API); ' +
          'different put loads, see bench/README.md.',
      };
    case 'put-shards':
      return {
        against: 'put', kind: 'ops/s', mark: '#',
        footnote:
          '# put-shards: kvd with N shards (column "shards"), each put sent straight to its shard\'s leader, vs the one etcd unary put row ' +
          '(etcd puts go to all 3 members; followers forward to the single leader).',
      };
    case 'lib-put-shards':
      return {
        against: 'put', kind: 'ops/s', mark: '§',
        footnote:
          '§ lib-put-shards: kvd with N shards driven through the client library\'s default KvClient API (what an application gets: ' +
          'it routes each key to its shard\'s leader and batches concurrent calls), vs etcd\'s unary put.',
      };
    case 'pipelined-put-shards':
      return {
        against: 'put', kind: 'ops/s', mark: '*#',
        footnote:
          '*# pipelined-put-shards: kvd with N shards, Pipeline streams (one per node per client process) with each put on its shard leader\'s stream, ' +
          'vs etcd\'s unary put (etcd has no pipelined KV API).',
      };
    default:
      return { against: workload, kind: 'ops/s', mark: '' };
  }
}

/** A latency summary (`{p50, p99, …}` in ms) that a reaction workload put in `extra`. */
function extraP50(r: WorkloadResult | undefined, key: 'sentToReactionMs' | 'ackToReactionMs'): number | undefined {
  const v = (r?.extra?.[key] as { p50?: unknown } | undefined)?.p50;
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/**
 * kvd divided by etcd for the paired workload (see {@link pairingFor}): ops/s ratios, except
 * lambda, whose ratio is of p50 put sent → reaction latencies (the ack → reaction p50s are
 * often at or below 0 on both systems, which makes their ratio meaningless; they are printed under the table).
 */
export function ratioFor(r: WorkloadResult, all: readonly WorkloadResult[]): number | undefined {
  if (r.system !== 'kvd') return undefined;
  const pairing = pairingFor(r.workload);
  const etcd =
    all.find((x) => x.system === 'etcd' && x.workload === pairing.against && x.clients === r.clients) ??
    (r.clients === 1 ? undefined : all.find((x) => x.system === 'etcd' && x.workload === pairing.against && x.clients !== 1));
  if (!etcd) return undefined;
  if (pairing.kind === 'p50 sent→reaction') {
    const k = extraP50(r, 'sentToReactionMs');
    const e = extraP50(etcd, 'sentToReactionMs');
    return k === undefined || e === undefined || !(k > 0) || !(e > 0) ? undefined : k / e;
  }
  if (etcd.opsPerSec === 0) return undefined;
  return r.opsPerSec / etcd.opsPerSec;
}

/** Renders the results as a fixed-width text table. */
export function renderTable(results: readonly WorkloadResult[]): string {
  const head = ['system', 'workload', 'shards', 'clients', 'ops/s', 'p50 ms', 'p99 ms', 'p999 ms', 'kvd/etcd', 'notes'];
  const rows = results.map((r) => {
    const ratio = ratioFor(r, results);
    return [
      r.system,
      r.workload,
      r.system === 'etcd' ? '-' : String(r.shards ?? 1),
      r.clientsLabel,
      fmt(r.opsPerSec, 0),
      fmt(r.p50Ms),
      fmt(r.p99Ms),
      fmt(r.p999Ms),
      ratio === undefined ? '-' : `${fmt(ratio)}x${pairingFor(r.workload).mark}`,
      notes(r),
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i >= 2 && i <= 8 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  const out = [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
  const footnotes = new Set<string>();
  for (const r of results) {
    const f = pairingFor(r.workload).footnote;
    if (f !== undefined && ratioFor(r, results) !== undefined) footnotes.add(f);
  }
  out.push(...footnotes);
  const ceiling = etcdCeiling(results);
  // The run's many-client put row (a lone row, `--lone`, is not what a ceiling compares with).
  const kvdPut = results.filter((r) => r.system === 'kvd' && r.workload === 'put' && r.shards === undefined).sort((a, b) => b.clients - a.clients)[0];
  if (ceiling !== undefined) {
    out.push(
      `etcd's ceiling (h2load Put, best of ${results.filter((r) => r.workload === 'h2load').map((r) => r.clients).join('/')} in flight): ` +
        `${fmt(ceiling.opsPerSec, 0)}/s at ${ceiling.clients}` +
        (kvdPut !== undefined ? `; kvd put / that ceiling = ${fmt(kvdPut.opsPerSec / ceiling.opsPerSec)}x` : ''),
    );
  }
  if (results.some((r) => REACTION_WORKLOADS.includes(r.workload))) {
    out.push(
      'lambda, lambda-throughput, watch: ops/s = reactions per second (lambda starts, watch events); p50/p99/p999 = reaction latency as "lat" in notes says.',
    );
  }
  const lambda = results.find((r) => r.system === 'kvd' && r.workload === 'lambda');
  const watches = results.filter((r) => r.workload === 'watch');
  const reactors = [...(lambda ? [{ label: 'kvd lambda', r: lambda }] : []), ...watches.map((r) => ({ label: `${r.system} watch`, r }))];
  if (reactors.length > 1) {
    const p = (r: WorkloadResult, key: 'sentToReactionMs' | 'ackToReactionMs'): string => {
      const v = extraP50(r, key);
      return v === undefined ? '?' : fmt(v);
    };
    out.push(`p50 put sent→reaction: ${reactors.map((x) => `${x.label} ${p(x.r, 'sentToReactionMs')} ms`).join(', ')}`);
    out.push(`p50 put ack→reaction:  ${reactors.map((x) => `${x.label} ${p(x.r, 'ackToReactionMs')} ms`).join(', ')} (< 0: the reaction came before the ack reached the client)`);
  }
  return out.join('\n');
}

let active: RunningCluster | undefined;

/** Workloads whose LevelDB operations per write are logged (kvd). */
const WRITE_WORKLOADS: ReadonlySet<string> = new Set(['put', 'pipelined-put', 'put-shards', 'pipelined-put-shards', 'lib-put-shards']);

async function startSystem(system: SystemName, cfg: BenchConfig, defaultShards?: number): Promise<RunningCluster | undefined> {
  if (system === 'etcd') {
    if (findEtcd(cfg.etcdBin) === undefined) {
      console.log(ETCD_MISSING_MESSAGE);
      return undefined;
    }
    log('starting a 3-member etcd cluster');
    return startEtcdCluster({ ...(cfg.etcdBin ? { bin: cfg.etcdBin } : {}), ...(cfg.dataRoot ? { dataRoot: cfg.dataRoot } : {}), log });
  }
  if (findKvd(cfg.kvdBin) === undefined) {
    console.log(`kvd binary not found at ${cfg.kvdBin ?? defaultKvdBin()} (npm run build); skipping kvd`);
    return undefined;
  }
  log(`starting a 3-node kvd cluster${defaultShards === undefined ? '' : ` with --default-shards ${defaultShards}`}`);
  return startKvdCluster({
    ...(cfg.kvdBin ? { bin: cfg.kvdBin } : {}),
    ...(cfg.kvdArgs ? { extraArgs: cfg.kvdArgs } : {}),
    ...(cfg.dataRoot ? { dataRoot: cfg.dataRoot } : {}),
    ...(defaultShards === undefined ? {} : { defaultShards }),
    ...(cfg.profileDir === undefined ? {} : { profileDir: cfg.profileDir }),
    log,
  });
}

/** Runs one workload on a running cluster (pushing its result, or a skip line on failure). */
async function measure(
  system: SystemName, cluster: RunningCluster, workload: WorkloadName, cfg: BenchConfig,
  results: WorkloadResult[], skipped: string[], routing?: RoutingSpec,
): Promise<WorkloadResult | undefined> {
  log(`${system}: ${workload}, ${cfg.clients} clients, ${cfg.warmupS} s warm-up + ${cfg.durationS} s`);
  try {
    const common = {
      system, workload, endpoints: cluster.endpoints, clients: cfg.clients, perChannel: cfg.perChannel,
      procs: cfg.procs, warmupMs: cfg.warmupS * 1000, durationMs: cfg.durationS * 1000, keys: cfg.keys,
      valueBytes: cfg.valueBytes, pipelineDepth: cfg.pipelineDepth, opTimeoutMs: cfg.opTimeoutS * 1000,
      serverPids: cluster.pids(),
      ...(cluster.metricsPorts ? { metricsPorts: await cluster.metricsPorts() } : {}),
      ...(cfg.profileDir === undefined ? {} : { profileDir: cfg.profileDir }),
      ...(system === 'kvd' && cfg.kvdClient !== 'stub' ? { kvdClient: cfg.kvdClient } : {}),
    };
    const opsBefore = WRITE_WORKLOADS.has(workload) ? await sampleEngineOps(cluster) : undefined;
    const r = REACTION_WORKLOADS.includes(workload)
      ? await runReactionWorkload({ ...common, ...(cluster.adminToken ? { adminToken: cluster.adminToken } : {}), log })
      : await runWorkload({ ...common, rmwKeys: cfg.rmwKeys, rmwMaxAttempts: cfg.rmwAttempts, ...(routing ? { routing } : {}) });
    results.push(r);
    log(`${system}: ${workload}: ${fmt(r.opsPerSec, 0)} ops/s, p50 ${fmt(r.p50Ms)} ms, p99 ${fmt(r.p99Ms)} ms, p999 ${fmt(r.p999Ms)} ms; ${notes(r)}`);
    if (opsBefore) log(`${system}: ${workload}: ${engineOpsNote(opsBefore, await sampleEngineOps(cluster))} (warm-up, window and drain)`);
    return r;
  } catch (err) {
    console.log(`${system}/${workload} failed: ${(err as Error).message}`);
    skipped.push(`${system}/${workload}: failed: ${(err as Error).message.split('\n')[0]}`);
    return undefined;
  }
}

/** etcd's Put ceiling with h2load at each of {@link H2LOAD_IN_FLIGHT} requests in flight (one row each). */
async function measureH2load(cluster: RunningCluster, cfg: BenchConfig, results: WorkloadResult[], skipped: string[]): Promise<void> {
  const bin = findH2load();
  if (bin === undefined) {
    console.log(H2LOAD_MISSING_MESSAGE);
    skipped.push('etcd/h2load: h2load not installed');
    return;
  }
  for (const inFlight of H2LOAD_IN_FLIGHT) {
    log(`etcd: h2load Put, ${inFlight} in flight, ${cfg.warmupS} s warm-up + ${cfg.durationS} s`);
    try {
      const r = await runH2loadPut({
        endpoints: cluster.endpoints, inFlight, warmupS: cfg.warmupS, durationS: cfg.durationS, valueBytes: cfg.valueBytes,
        opTimeoutMs: cfg.opTimeoutS * 1000, serverPids: cluster.pids(), h2load: bin,
      });
      results.push(r);
      log(`etcd: h2load ${inFlight}: ${fmt(r.opsPerSec, 0)} req/s; ${notes(r)}`);
    } catch (err) {
      console.log(`etcd/h2load ${inFlight} failed: ${(err as Error).message}`);
      skipped.push(`etcd/h2load ${inFlight}: failed: ${(err as Error).message.split('\n')[0]}`);
    }
  }
}

/** A one-line summary of a settle wait, for the notes. */
function settleNote(s: SettleReport): string {
  const per = Object.entries(s.leadersPerNode).map(([id, n]) => `n${id}:${n}`).join(' ');
  const head = s.settled ? `settled in ${fmt(s.waitedS, 1)} s` : `NOT SETTLED after ${fmt(s.waitedS, 1)} s (${s.reason ?? '?'})`;
  return `${head}; leaders ${per || '?'}${s.offPreferred > 0 ? `, ${s.offPreferred} off preferred` : ''}`;
}

/**
 * The shard scaling workloads on kvd: for each shard count a fresh cluster with
 * `--default-shards N`, a wait for its leaders to settle, then each workload with keys routed to
 * their shard leaders; a leader snapshot after each run counts shards whose leader moved meanwhile.
 */
async function runShardScaling(cfg: BenchConfig, workloads: readonly WorkloadName[], results: WorkloadResult[], skipped: string[]): Promise<string | null> {
  let version: string | null = null;
  for (const n of cfg.shards) {
    let cluster: RunningCluster | undefined;
    try {
      cluster = await startSystem('kvd', cfg, n);
    } catch (err) {
      console.log(`kvd (${n} shards): cluster failed to start; skipping it\n${(err as Error).message}`);
      skipped.push(`kvd/${n} shards: failed to start`);
      continue;
    }
    if (!cluster) {
      skipped.push('kvd: not installed');
      return version;
    }
    active = cluster;
    let keepLogs: string | undefined;
    try {
      version = cluster.version;
      log(`kvd ${cluster.version} (${n} shards) serving on ${cluster.endpoints.join(', ')} (data in ${cluster.dataDir})`);
      const settle = await waitSettled(cluster.endpoints, { shards: n, timeoutMs: cfg.settleTimeoutS * 1000, log });
      if (!settle.settled) {
        keepLogs = join(dirname(cfg.out), 'logs', `kvd-${n}-shards-${Date.now()}`);
        await copyNodeLogs(cluster.dataDir, keepLogs);
        log(`kvd (${n} shards): not settled; node logs so far copied to ${keepLogs}`);
      }
      log(`kvd (${n} shards): ${settleNote(settle)}${settle.leaderMoves > 0 ? `; ${settle.leaderMoves} leader moves while waiting` : ''}`);
      const routing = routingSpec(settle);
      if (!routing) {
        console.log(`kvd (${n} shards): no shard map with ${n} shards after ${fmt(settle.waitedS, 1)} s (${settle.reason ?? '?'}); logs in ${keepLogs ?? '?'}`);
        for (const w of workloads) skipped.push(`kvd/${w} ${n} shards: no shard map (${settle.reason ?? '?'})`);
        continue;
      }
      const groups = settle.map!.shards.filter((x) => x.pool === '').map((x) => x.group);
      let before = settle.snapshot!;
      for (const w of workloads) {
        const r = await measure('kvd', cluster, w, cfg, [], skipped, routing);
        if (!r) continue;
        if (Object.keys(r.errors).length > 0 && keepLogs === undefined) keepLogs = join(dirname(cfg.out), 'logs', `kvd-${n}-shards-${Date.now()}`);
        const stubs = cluster.endpoints.map((e) => kvClusterStub(e));
        let moved: number | undefined;
        try {
          const after = await leaderSnapshot(stubs, cluster.endpoints);
          moved = movedLeaders(before, after, groups);
          before = after;
        } catch {
          moved = undefined;
        } finally {
          for (const st of stubs) st.close();
        }
        const extraNotes = [settleNote(settle), `${moved ?? '?'} shard leader(s) moved during the run`];
        if (keepLogs !== undefined) extraNotes.push(`logs in ${keepLogs}`);
        results.push({
          ...r,
          shards: n,
          notes: [...extraNotes, ...(r.notes ?? [])],
          extra: { ...(r.extra ?? {}), settle: { settled: settle.settled, waitedS: settle.waitedS, reason: settle.reason ?? null,
            offPreferred: settle.offPreferred, leaderMovesWhileWaiting: settle.leaderMoves, leadersPerNode: settle.leadersPerNode },
            shardLeadersMovedDuringRun: moved ?? null },
        });
      }
    } finally {
      if (keepLogs !== undefined) await copyNodeLogs(cluster.dataDir, keepLogs).catch(() => undefined); // the full logs, up to the stop
      await cluster.stop();
      active = undefined;
    }
  }
  return version;
}

/** Runs the whole benchmark for `cfg` and returns the results (also printed and written to cfg.out). */
export async function runBench(cfg: BenchConfig): Promise<WorkloadResult[]> {
  if (cfg.profileDir !== undefined) await mkdir(cfg.profileDir, { recursive: true });
  const etcdBin = cfg.systems.includes('etcd') ? findEtcd(cfg.etcdBin) : undefined;
  const loadAvgAtStart = loadavg().map((x) => Math.round(x * 100) / 100);
  if (loadAvgAtStart[0]! > 0.5) log(`warning: load average is ${loadAvgAtStart.join(' ')} before starting; results will be noisy`);
  let kvdVersion: string | null = null;
  const results: WorkloadResult[] = [];
  const skipped: string[] = [];

  const shardWorkloads = cfg.workloads.filter((w) => SHARD_WORKLOADS.includes(w));
  for (const system of cfg.systems) {
    const workloads = cfg.workloads.filter((w) => supports(system, w) && !SHARD_WORKLOADS.includes(w));
    // (h2load is etcd's ceiling by design: no "not supported" line for kvd.)
    for (const w of cfg.workloads) if (!supports(system, w) && w !== 'h2load') skipped.push(`${system}/${w}: not supported`);
    // The shard scaling rows are compared with etcd's unary put: run it even when not asked for.
    if (system === 'etcd' && shardWorkloads.length > 0 && !workloads.includes('put')) {
      workloads.unshift('put');
      log(`etcd: adding put as the baseline of ${shardWorkloads.join(', ')}`);
    }
    const lonePhase = cfg.lone && cfg.clients !== 1 && cfg.workloads.some((w) => supports(system, w));
    if (workloads.length > 0 || lonePhase) {
      let cluster: RunningCluster | undefined;
      try {
        cluster = await startSystem(system, cfg);
      } catch (err) {
        console.log(`${system}: cluster failed to start; skipping it\n${(err as Error).message}`);
        skipped.push(`${system}: failed to start`);
      }
      if (cluster === undefined) {
        if (!skipped.includes(`${system}: failed to start`)) skipped.push(`${system}: not installed`);
      } else {
        active = cluster;
        try {
          if (system === 'kvd') kvdVersion = cluster.version;
          log(`${system} ${cluster.version} serving on ${cluster.endpoints.join(', ')} (data in ${cluster.dataDir})`);
          if (workloads.some((w) => w === 'get' || w === 'rmw')) {
            const s = await populate({
              system, endpoints: cluster.endpoints, keys: cfg.keys, valueBytes: cfg.valueBytes, concurrency: 64,
              opTimeoutMs: cfg.opTimeoutS * 1000,
            });
            log(`${system}: populated ${cfg.keys} keys in ${fmt(s, 1)} s`);
          }
          for (const workload of workloads) {
            if (workload === 'h2load') await measureH2load(cluster, cfg, results, skipped);
            else await measure(system, cluster, workload, cfg, results, skipped);
          }
          if (lonePhase) {
            const lone: BenchConfig = { ...cfg, clients: 1, procs: 1 };
            if (!workloads.includes('get') && !workloads.includes('rmw')) {
              log(`${system}: populating ${cfg.keys} keys for the lone get`);
              await populate({ system, endpoints: cluster.endpoints, keys: cfg.keys, valueBytes: cfg.valueBytes, concurrency: 64, opTimeoutMs: cfg.opTimeoutS * 1000 });
            }
            for (const workload of ['put', 'get'] as const) await measure(system, cluster, workload, lone, results, skipped);
          }
        } finally {
          await cluster.stop();
          active = undefined;
        }
      }
    }
    if (system === 'kvd' && shardWorkloads.length > 0) {
      if (findKvd(cfg.kvdBin) === undefined) {
        if (!skipped.includes('kvd: not installed')) {
          console.log(`kvd binary not found at ${cfg.kvdBin ?? defaultKvdBin()} (npm run build); skipping kvd`);
          skipped.push('kvd: not installed');
        }
      } else {
        kvdVersion = (await runShardScaling(cfg, shardWorkloads, results, skipped)) ?? kvdVersion;
      }
    }
  }

  const cpuList = cpus();
  const machine: MachineInfo = {
    cpuModel: cpuList[0]?.model.trim() ?? 'unknown',
    cores: cpuList.length,
    memoryGiB: Math.round((totalmem() / 1024 ** 3) * 10) / 10,
    kernel: release(),
    node: process.version,
    loadAvgAtStart,
    etcdVersion: etcdBin === undefined ? null : await etcdVersion(etcdBin),
    kvdVersion,
  };
  console.log('');
  console.log(
    `machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Linux ${machine.kernel}, Node ${machine.node}, ` +
      `load avg at start ${machine.loadAvgAtStart.join(' ')}, ` +
      `etcd ${machine.etcdVersion ?? 'n/a'}, kvd ${machine.kvdVersion ?? 'n/a'}`,
  );
  console.log(
    `config: ${cfg.durationS} s measured after ${cfg.warmupS} s warm-up, ${cfg.keys} keys (rmw: ${cfg.rmwKeys}), ${cfg.valueBytes}-byte values, ` +
      `${cfg.perChannel} workers/connection, ${cfg.procs} client process(es)` +
      (cfg.workloads.some((w) => SHARD_WORKLOADS.includes(w)) ? `, shard counts ${cfg.shards.join(',')}` : '') +
      '; servers and clients share this machine',
  );
  console.log('');
  console.log(renderTable(results));
  for (const s of skipped) console.log(`skipped: ${s}`);
  const goals = cfg.systems.length === 2 ? issue11Goals(results, cfg.clients) : undefined;
  if (goals !== undefined) console.log(`\n${renderGoals(goals)}`);
  const disturbed = results.filter((r) => (r.otherCpuCores ?? 0) > DISTURBED_CORES);
  if (disturbed.length > 0) {
    console.log(
      `warning: other processes used > ${DISTURBED_CORES} cores during ${disturbed.map((r) => `${r.system}/${r.workload}${r.shards !== undefined ? ` ${r.shards} shards` : ''}${r.clients !== cfg.clients ? ` (${r.clients} client${r.clients === 1 ? '' : 's'})` : ''}`).join(', ')}; ` +
        'those figures are disturbed (see "other" in notes)',
    );
  }

  const ratios = results
    .map((r) => ({ workload: r.workload, clients: r.clients, ...(r.shards !== undefined ? { shards: r.shards } : {}), against: pairingFor(r.workload).against, kind: pairingFor(r.workload).kind, ratio: ratioFor(r, results) }))
    .filter((x) => x.ratio !== undefined);
  await mkdir(dirname(cfg.out), { recursive: true });
  await writeFile(
    cfg.out,
    JSON.stringify({ finishedAt: new Date().toISOString(), machine, config: cfg, results, kvdOverEtcdOpsPerSec: ratios, ...(goals ? { goals } : {}), skipped }, null, 2) + '\n',
  );
  console.log(`\nresults written to ${cfg.out}`);
  return results;
}

async function main(): Promise<void> {
  let cfg: BenchConfig | undefined;
  try {
    cfg = parseConfig(process.argv.slice(2));
  } catch (err) {
    console.error(`${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (cfg === undefined) {
    console.log(USAGE);
    return;
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`${sig}: stopping`);
      killWorkers();
      void (active?.stop() ?? Promise.resolve()).finally(() => process.exit(130));
    });
  }
  await runBench(cfg);
}

// Run only as the entry point (`node dist/bench/run.js`), so tests can import parseConfig and the table code.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) await main();
