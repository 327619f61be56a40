/** Measures kvd's per-Raft-group overhead at idle (`node dist/bench/idle-groups.js [flags]`): for each shard count a fresh 3-node cluster, settled and left unloaded, sampled for CPU, RSS and peer messages; prints a table and writes bench/results/idle-groups.json. */
import { readFile, mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { call, kvClusterStub } from './clients.js';
import { defaultKvdBin, findKvd, startKvdCluster } from './kvd-cluster.js';
import { waitSettled, type SettleReport } from './shards.js';
import { scrapeMetrics } from './node-counters.js';
import { copyNodeLogs, flagIntList, flagNumber, processCpuSeconds, repoRoot, type RunningCluster } from './util.js';

const USAGE = `usage: node dist/bench/idle-groups.js [flags]
  --groups LIST       data shard counts of the default pool, one fresh 3-node cluster each (default 1,16,64; 1..64)
  --seconds S         measured idle window per cluster (default 20)
  --pause S           wait after the leaders settled before measuring (default 2)
  --quiet-msgs N      then wait until every node sends at most N peer messages/s for 2 s in a row (default 30:
                      the node keepalives, 10/s to each of 2 peers, with room; 0 = do not wait) ...
  --quiet-timeout S   ... for at most S seconds (default 30; then it measures anyway, noted)
  --settle-timeout S  longest wait for the leaders to settle (default 120; then it measures anyway, noted)
  --data-root DIR     parent of the clusters' temp data dirs (default: OS temp dir)
  --kvd-bin PATH      kvd entry point (default: dist/src/bin/kvd.js)
  --out FILE          JSON results (default bench/results/idle-groups.json)
  --help
Every node hosts all N data shards plus the metadata group (3 nodes x 3 replicas). Per node: CPU % of
one core over the window (utime+stime from /proc/PID/stat), RSS at the end (VmRSS), and peer messages/s
when /metrics has a counter of sent Raft/peer messages. The marginal cost per extra group is taken
between the smallest and the largest shard count.`;

/** Parsed command-line configuration of an idle-groups run. */
export interface IdleConfig {
  readonly groups: number[];
  readonly seconds: number;
  readonly pauseS: number;
  /** Peer messages/s per node at or below which a cluster counts as quiet (0: no wait). */
  readonly quietMsgs: number;
  readonly quietTimeoutS: number;
  readonly settleTimeoutS: number;
  readonly dataRoot?: string;
  readonly kvdBin?: string;
  readonly out: string;
}

/** Parses argv into an {@link IdleConfig} (undefined for --help); throws with a message on bad input. */
export function parseIdleConfig(argv: string[]): IdleConfig | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      groups: { type: 'string', default: '1,16,64' },
      seconds: { type: 'string', default: '20' },
      pause: { type: 'string', default: '2' },
      'quiet-msgs': { type: 'string', default: '30' },
      'quiet-timeout': { type: 'string', default: '30' },
      'settle-timeout': { type: 'string', default: '120' },
      'data-root': { type: 'string' },
      'kvd-bin': { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const num = flagNumber;
  const groups = flagIntList('groups', values.groups, 1, 64);
  return {
    groups,
    seconds: num('seconds', values.seconds, 0.1),
    pauseS: num('pause', values.pause, 0),
    quietMsgs: num('quiet-msgs', values['quiet-msgs'], 0),
    quietTimeoutS: num('quiet-timeout', values['quiet-timeout'], 0),
    settleTimeoutS: num('settle-timeout', values['settle-timeout'], 1),
    ...(values['data-root'] === undefined ? {} : { dataRoot: resolve(values['data-root']) }),
    ...(values['kvd-bin'] === undefined ? {} : { kvdBin: resolve(values['kvd-bin']) }),
    out: values.out === undefined ? join(repoRoot(), 'bench', 'results', 'idle-groups.json') : resolve(values.out),
  };
}

/** One node's figures over the idle window. */
export interface IdleNode {
  readonly id: number;
  readonly pid: number | null;
  /** Raft groups this node hosts (from its Status at the end). */
  readonly hostedGroups: number | null;
  /** CPU over the window, in % of one core. */
  readonly cpuPct: number | null;
  /** Resident set size at the end, in MiB. */
  readonly rssMiB: number | null;
  /** Sent peer (Raft) messages per second over the window, when /metrics counts them. */
  readonly peerMsgsPerSec: number | null;
}

/** The figures of one shard count. */
export interface IdleRow {
  /** Data shards of the default pool. */
  readonly shards: number;
  /** Raft groups per node: the data shards plus the metadata group. */
  readonly groupsPerNode: number;
  readonly settled: boolean;
  readonly settleS: number;
  readonly settleReason: string | null;
  /** Seconds waited after the pause for the cluster to be quiet (see `--quiet-msgs`); null: not asked. */
  readonly quietS: number | null;
  /** Whether it was quiet when the window started (null: not asked). */
  readonly quiet: boolean | null;
  readonly windowS: number;
  readonly nodes: IdleNode[];
  /** Means over the nodes (null when no node had the figure). */
  readonly cpuPct: number | null;
  readonly rssMiB: number | null;
  readonly peerMsgsPerSec: number | null;
  /** The /metrics counters summed for peerMsgsPerSec (empty: none found). */
  readonly peerMsgMetrics: string[];
  /** Where the node logs were copied when the cluster did not settle. */
  readonly logs: string | null;
}

const log = (msg: string): void => console.error(`[idle] ${msg}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resident set size of `pid` in MiB (VmRSS from /proc/PID/status), or undefined. */
async function rssMiB(pid: number): Promise<number | undefined> {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether a Prometheus metric name looks like a counter of peer / Raft messages sent:
 * `kvcascade_…(raft|peer)…(message|msg)…_total`, not received, dropped, failed or ignored ones
 * (`kvcascade_raft_messages_ignored_total` counts received messages the core ignored).
 */
export function isSentMessageCounter(name: string): boolean {
  return (
    name.startsWith('kvcascade_') &&
    name.endsWith('_total') &&
    /(raft|peer)/.test(name) &&
    /(message|msg)/.test(name) &&
    !/(recv|receiv|drop|fail|error|reject|ignor)/.test(name)
  );
}

/** Sums every sample of the sent-message counters in a Prometheus text exposition; undefined names when there are none. */
export function sumSentMessages(text: string): { total: number; names: string[] } {
  let total = 0;
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || !isSentMessageCounter(m[1]!)) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    total += v;
    names.add(m[1]!);
  }
  return { total, names: [...names].sort() };
}


function mean(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null);
  return v.length === 0 ? null : v.reduce((a, b) => a + b, 0) / v.length;
}

/**
 * Polls every node's sent peer messages once a second until, for 2 samples in a row, every node
 * sent at most `maxPerSec` per second (the cluster has stopped its start-up work: leader moves,
 * the map and lease writes, quiescing), or until `timeoutS`. Nodes without the counter count as quiet.
 */
async function waitQuiet(
  scrapeAll: () => Promise<(string | undefined)[]>,
  maxPerSec: number,
  timeoutS: number,
): Promise<{ quiet: boolean; waitedS: number; lastRates: number[] }> {
  const t0 = performance.now();
  let prev = await scrapeAll();
  let tPrev = performance.now();
  let streak = 0;
  let rates: number[] = [];
  while ((performance.now() - t0) / 1000 < timeoutS) {
    await sleep(1000);
    const cur = await scrapeAll();
    const now = performance.now();
    rates = cur.map((b, i) => {
      const a = prev[i];
      if (a === undefined || b === undefined) return 0;
      return (sumSentMessages(b).total - sumSentMessages(a).total) / ((now - tPrev) / 1000);
    });
    prev = cur;
    tPrev = now;
    streak = rates.every((r) => r <= maxPerSec) ? streak + 1 : 0;
    if (streak >= 2) return { quiet: true, waitedS: (now - t0) / 1000, lastRates: rates };
  }
  return { quiet: false, waitedS: (performance.now() - t0) / 1000, lastRates: rates };
}

/** Starts, settles and measures one cluster with `shards` data shards. */
async function measureOne(cfg: IdleConfig, shards: number, onCluster: (c: RunningCluster | undefined) => void): Promise<IdleRow> {
  log(`starting a 3-node kvd cluster with --default-shards ${shards}`);
  const cluster = await startKvdCluster({
    ...(cfg.kvdBin ? { bin: cfg.kvdBin } : {}),
    ...(cfg.dataRoot ? { dataRoot: cfg.dataRoot } : {}),
    defaultShards: shards,
    log,
  });
  onCluster(cluster);
  let logs: string | null = null;
  try {
    const settle: SettleReport = await waitSettled(cluster.endpoints, { shards, timeoutMs: cfg.settleTimeoutS * 1000, log });
    if (settle.settled) log(`${shards} shard(s): settled in ${settle.waitedS.toFixed(1)} s`);
    else {
      logs = join(dirname(cfg.out), 'logs', `idle-${shards}-shards-${Date.now()}`);
      log(`${shards} shard(s): NOT settled after ${settle.waitedS.toFixed(1)} s (${settle.reason ?? '?'}); measuring anyway, logs copied to ${logs}`);
    }
    await sleep(cfg.pauseS * 1000);
    const pids = cluster.pids();
    const ports = (await cluster.metricsPorts?.()) ?? [];
    const scrapeAll = (): Promise<(string | undefined)[]> => Promise.all(cluster.endpoints.map((_, i) => scrapeMetrics(ports[i])));
    const quietWait = cfg.quietMsgs > 0 ? await waitQuiet(scrapeAll, cfg.quietMsgs, cfg.quietTimeoutS) : null;
    if (quietWait) log(`${shards} shard(s): ${quietWait.quiet ? 'quiet' : 'NOT quiet'} after ${quietWait.waitedS.toFixed(1)} s (peer msgs/s/node ${quietWait.lastRates.map((r) => r.toFixed(0)).join(', ')})`);
    const m0 = await scrapeAll();
    const c0 = await Promise.all(pids.map((p) => processCpuSeconds(p)));
    const t0 = performance.now();
    log(`${shards} shard(s): measuring ${cfg.seconds} s idle`);
    await sleep(cfg.seconds * 1000);
    const c1 = await Promise.all(pids.map((p) => processCpuSeconds(p)));
    const t1 = performance.now();
    const m1 = await scrapeAll();
    const rss = await Promise.all(pids.map((p) => rssMiB(p)));
    const windowS = (t1 - t0) / 1000;
    const stubs = cluster.endpoints.map((e) => kvClusterStub(e));
    let hosted: (number | null)[];
    try {
      hosted = await Promise.all(stubs.map((s) => call(s, s.status, {}, 5_000).then((st) => st.groups?.length ?? 0, () => null)));
    } finally {
      for (const s of stubs) s.close();
    }
    const names = new Set<string>();
    const nodes: IdleNode[] = cluster.endpoints.map((_, i) => {
      const a = c0[i];
      const b = c1[i];
      let msgs: number | null = null;
      const x0 = m0[i];
      const x1 = m1[i];
      if (x0 !== undefined && x1 !== undefined) {
        const s0 = sumSentMessages(x0);
        const s1 = sumSentMessages(x1);
        if (s1.names.length > 0) {
          msgs = (s1.total - s0.total) / windowS;
          for (const n of s1.names) names.add(n);
        }
      }
      return {
        id: i + 1,
        pid: pids[i] ?? null,
        hostedGroups: hosted[i] ?? null,
        cpuPct: a === undefined || b === undefined ? null : ((b - a) / windowS) * 100,
        rssMiB: rss[i] ?? null,
        peerMsgsPerSec: msgs,
      };
    });
    if (logs !== null) await copyNodeLogs(cluster.dataDir, logs);
    return {
      shards,
      groupsPerNode: shards + 1,
      settled: settle.settled,
      settleS: settle.waitedS,
      settleReason: settle.reason ?? null,
      quietS: quietWait?.waitedS ?? null,
      quiet: quietWait?.quiet ?? null,
      windowS,
      nodes,
      cpuPct: mean(nodes.map((n) => n.cpuPct)),
      rssMiB: mean(nodes.map((n) => n.rssMiB)),
      peerMsgsPerSec: mean(nodes.map((n) => n.peerMsgsPerSec)),
      peerMsgMetrics: [...names].sort(),
      logs,
    };
  } finally {
    await cluster.stop();
    onCluster(undefined);
  }
}

/** Marginal cost per extra Raft group between the rows with the fewest and the most groups. */
export interface Marginal {
  readonly fromGroups: number;
  readonly toGroups: number;
  readonly cpuPctPerGroup: number | null;
  readonly rssMiBPerGroup: number | null;
  readonly peerMsgsPerSecPerGroup: number | null;
}

/** The marginal cost per extra group from the first to the last of `rows` sorted by groups (null with fewer than 2 distinct counts). */
export function marginal(rows: readonly IdleRow[]): Marginal | null {
  const sorted = [...rows].sort((a, b) => a.groupsPerNode - b.groupsPerNode);
  const lo = sorted[0];
  const hi = sorted[sorted.length - 1];
  if (!lo || !hi || hi.groupsPerNode === lo.groupsPerNode) return null;
  const d = hi.groupsPerNode - lo.groupsPerNode;
  const per = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : (b - a) / d);
  return {
    fromGroups: lo.groupsPerNode,
    toGroups: hi.groupsPerNode,
    cpuPctPerGroup: per(lo.cpuPct, hi.cpuPct),
    rssMiBPerGroup: per(lo.rssMiB, hi.rssMiB),
    peerMsgsPerSecPerGroup: per(lo.peerMsgsPerSec, hi.peerMsgsPerSec),
  };
}

/** Renders the rows and the marginal cost as a fixed-width text table. */
export function renderIdleTable(rows: readonly IdleRow[]): string {
  const f = (v: number | null, d: number): string => (v === null ? 'n/a' : v.toFixed(d));
  const range = (xs: (number | null)[], d: number): string => {
    const v = xs.filter((x): x is number => x !== null);
    return v.length === 0 ? 'n/a' : `${Math.min(...v).toFixed(d)}-${Math.max(...v).toFixed(d)}`;
  };
  const head = ['data shards', 'groups/node', 'CPU %/node', '(min-max)', 'RSS MiB/node', '(min-max)', 'peer msgs/s/node', 'settled'];
  const body = rows.map((r) => [
    String(r.shards),
    String(r.groupsPerNode),
    f(r.cpuPct, 2),
    range(r.nodes.map((n) => n.cpuPct), 2),
    f(r.rssMiB, 1),
    range(r.nodes.map((n) => n.rssMiB), 1),
    f(r.peerMsgsPerSec, 0),
    (r.settled ? `yes, ${r.settleS.toFixed(1)} s` : `NO after ${r.settleS.toFixed(1)} s: ${r.settleReason ?? '?'}`) +
      (r.quiet === null ? '' : r.quiet ? `; quiet after ${r.quietS!.toFixed(0)} s more` : `; NOT quiet after ${r.quietS!.toFixed(0)} s`),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i < 7 ? c.padStart(widths[i]!) : c)).join('  ').trimEnd();
  const out = [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)];
  const m = marginal(rows);
  if (m) {
    out.push(
      `marginal cost per extra group (${m.fromGroups - 1} -> ${m.toGroups - 1} data shards = ${m.fromGroups} -> ${m.toGroups} groups/node): ` +
        `CPU ${f(m.cpuPctPerGroup, 3)} % of a core, ` +
        `RSS ${f(m.rssMiBPerGroup, 2)} MiB, peer msgs ${f(m.peerMsgsPerSecPerGroup, 1)}/s (per node)`,
    );
  }
  if (rows.every((r) => r.peerMsgMetrics.length === 0)) out.push('peer msgs/s: n/a: no counter of sent Raft/peer messages in kvd /metrics');
  else out.push(`peer msgs/s from: ${[...new Set(rows.flatMap((r) => r.peerMsgMetrics))].join(', ')}`);
  return out.join('\n');
}

let active: RunningCluster | undefined;

async function main(): Promise<void> {
  let cfg: IdleConfig | undefined;
  try {
    cfg = parseIdleConfig(process.argv.slice(2));
  } catch (err) {
    console.error(`${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (cfg === undefined) {
    console.log(USAGE);
    return;
  }
  if (findKvd(cfg.kvdBin) === undefined) {
    console.error(`kvd binary not found at ${cfg.kvdBin ?? defaultKvdBin()} (npm run build)`);
    process.exit(1);
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`${sig}: stopping`);
      void (active?.stop() ?? Promise.resolve()).finally(() => process.exit(130));
    });
  }
  const loadAvgAtStart = loadavg().map((x) => Math.round(x * 100) / 100);
  if (loadAvgAtStart[0]! > 0.5) log(`warning: load average is ${loadAvgAtStart.join(' ')} before starting; idle CPU figures will be noisy`);
  const rows: IdleRow[] = [];
  const failed: string[] = [];
  for (const n of cfg.groups) {
    try {
      rows.push(await measureOne(cfg, n, (c) => (active = c)));
      const r = rows[rows.length - 1]!;
      log(`${n} shard(s): CPU ${r.cpuPct?.toFixed(2) ?? 'n/a'} %/node, RSS ${r.rssMiB?.toFixed(1) ?? 'n/a'} MiB/node`);
    } catch (err) {
      console.log(`${n} shard(s): failed: ${(err as Error).message}`);
      failed.push(`${n} shards: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  const cpuList = cpus();
  const machine = {
    cpuModel: cpuList[0]?.model.trim() ?? 'unknown',
    cores: cpuList.length,
    memoryGiB: Math.round((totalmem() / 1024 ** 3) * 10) / 10,
    kernel: release(),
    node: process.version,
    loadAvgAtStart,
  };
  console.log('');
  console.log(
    `machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Linux ${machine.kernel}, Node ${machine.node}, ` +
      `load avg at start ${loadAvgAtStart.join(' ')}`,
  );
  console.log(`config: 3 nodes x 3 replicas, default tick, no load; ${cfg.seconds} s window after ${cfg.pauseS} s pause`);
  console.log('');
  console.log(renderIdleTable(rows));
  for (const f of failed) console.log(`failed: ${f}`);
  await mkdir(dirname(cfg.out), { recursive: true });
  await writeFile(cfg.out, JSON.stringify({ finishedAt: new Date().toISOString(), machine, config: cfg, rows, marginal: marginal(rows), failed }, null, 2) + '\n');
  console.log(`\nresults written to ${cfg.out}`);
}

await main();
