/** Issue 11's goals judged from one benchmark run's rows: each goal's measured ratio and whether it holds, printed under run.js's table. */
import type { WorkloadName, WorkloadResult } from './load.js';

/** One goal of issue 11 as this run measured it. */
export interface GoalRow {
  /** The goal, as the issue states it. */
  readonly goal: string;
  /** What the run measured (ratios and the figures they come from), or why it could not. */
  readonly measured: string;
  /** `met` / `not met` from the figures; `not measured` when the run lacks the rows it needs. */
  readonly status: 'met' | 'not met' | 'not measured';
}

/** The shard workloads, in the order the goal prefers them (the client library's default path first). */
const SHARD_PREFERENCE: readonly WorkloadName[] = ['lib-put-shards', 'put-shards', 'pipelined-put-shards'];

const f0 = (n: number): string => Math.round(n).toLocaleString('en-US');
const f2 = (n: number): string => n.toFixed(2);

function row(
  results: readonly WorkloadResult[], system: 'kvd' | 'etcd', workload: WorkloadName, clients: number,
): WorkloadResult | undefined {
  return results.find((r) => r.system === system && r.workload === workload && r.clients === clients && r.shards === undefined && r.opsPerSec > 0);
}

/** etcd's best h2load Put row of a run (its ceiling), if h2load ran. */
export function etcdCeiling(results: readonly WorkloadResult[]): WorkloadResult | undefined {
  return results.filter((r) => r.workload === 'h2load' && r.opsPerSec > 0).sort((a, b) => b.opsPerSec - a.opsPerSec)[0];
}

/**
 * Judges issue 11's goals from a run's rows. `clients` is the run's closed-loop client count (the
 * throughput, p99 and CPU goals compare kvd and etcd rows at that count); the lone-call goals use
 * the rows with 1 client (`run.js --lone on`). Throughput ratios are kvd ÷ etcd ops/s, CPU ratios
 * kvd ÷ etcd server µs per op (all nodes), latencies kvd vs etcd in ms.
 */
export function issue11Goals(results: readonly WorkloadResult[], clients: number): GoalRow[] {
  const out: GoalRow[] = [];
  const pair = (w: WorkloadName, c: number): [WorkloadResult, WorkloadResult] | undefined => {
    const k = row(results, 'kvd', w, c);
    const e = row(results, 'etcd', w, c);
    return k && e ? [k, e] : undefined;
  };
  const missing = (w: string, c: number): string => `no kvd and etcd ${w} rows at ${c} client(s) in this run`;

  for (const [w, times] of [['put', 2], ['get', 2], ['rmw', 3]] as const) {
    const p = pair(w, clients);
    const goal = `${w} ≥ ${times}× etcd's (${clients} clients)`;
    if (!p) { out.push({ goal, measured: missing(w, clients), status: 'not measured' }); continue; }
    const ratio = p[0].opsPerSec / p[1].opsPerSec;
    out.push({ goal, measured: `${f2(ratio)}× (${f0(p[0].opsPerSec)} vs ${f0(p[1].opsPerSec)} ops/s)`, status: ratio >= times ? 'met' : 'not met' });
  }

  const p99: string[] = [];
  let p99Met = true;
  let p99Any = false;
  for (const w of ['put', 'get', 'rmw'] as const) {
    const p = pair(w, clients);
    if (!p) continue;
    p99Any = true;
    p99.push(`${w} ${f2(p[0].p99Ms)} vs ${f2(p[1].p99Ms)} ms`);
    if (!(p[0].p99Ms <= p[1].p99Ms)) p99Met = false;
  }
  out.push({
    goal: `p99 ≤ etcd's at the same offered load (${clients} clients)`,
    measured: p99Any ? p99.join('; ') : missing('put/get/rmw', clients),
    status: !p99Any ? 'not measured' : p99Met ? 'met' : 'not met',
  });

  for (const w of ['put', 'get', 'rmw'] as const) {
    const p = pair(w, clients);
    const goal = `${w}: server CPU per op ≤ ½ etcd's`;
    const k = p?.[0].serverCpuUsPerOp ?? null;
    const e = p?.[1].serverCpuUsPerOp ?? null;
    if (k === null || e === null || !(e > 0)) {
      out.push({ goal, measured: p ? 'server CPU not sampled' : missing(w, clients), status: 'not measured' });
      continue;
    }
    const ratio = k / e;
    out.push({ goal, measured: `${f2(ratio)}× (${f0(k)} vs ${f0(e)} µs/op)`, status: ratio <= 0.5 ? 'met' : 'not met' });
  }

  for (const w of ['put', 'get'] as const) {
    const goal = `one client, one call at a time: p50 ${w} ≤ etcd's`;
    const p = clients === 1 ? undefined : pair(w, 1);
    if (!p) { out.push({ goal, measured: `${missing(w, 1)} (run.js --lone on)`, status: 'not measured' }); continue; }
    out.push({
      goal,
      measured: `${f2(p[0].p50Ms)} vs ${f2(p[1].p50Ms)} ms (${f2(p[0].p50Ms / p[1].p50Ms)}×)`,
      status: p[0].p50Ms <= p[1].p50Ms ? 'met' : 'not met',
    });
  }

  const shardGoal = 'throughput never falls as shards are added (8 shards ≥ 1 shard)';
  const shardRows = SHARD_PREFERENCE.map((w) =>
    results.filter((r) => r.system === 'kvd' && r.workload === w && r.shards !== undefined).sort((a, b) => a.shards! - b.shards!),
  ).find((rows) => rows.length >= 2);
  if (shardRows === undefined) {
    out.push({ goal: shardGoal, measured: 'fewer than two shard counts of one shard workload in this run', status: 'not measured' });
  } else {
    const rows = shardRows;
    const shardWorkload = rows[0]!.workload;
    let falls = false;
    for (let i = 1; i < rows.length; i++) if (rows[i]!.opsPerSec < rows[i - 1]!.opsPerSec) falls = true;
    const first = rows[0]!;
    const last = rows[rows.length - 1]!;
    const ratio = first.opsPerSec > 0 ? last.opsPerSec / first.opsPerSec : Number.NaN;
    out.push({
      goal: shardGoal,
      measured:
        `${shardWorkload}: ${rows.map((r) => `${r.shards} → ${f0(r.opsPerSec)}/s`).join(', ')}; ` +
        `${last.shards} shards ${Number.isFinite(ratio) ? f2(ratio) : '?'}× of ${first.shards}`,
      status: falls || !(ratio >= 1) ? 'not met' : 'met',
    });
  }

  const ceiling = etcdCeiling(results);
  const put = row(results, 'kvd', 'put', clients);
  out.push({
    goal: "etcd's ceiling with h2load printed in the same run",
    measured: ceiling === undefined
      ? 'no h2load row (nghttp2-client not installed, or h2load not in --workloads)'
      : `${f0(ceiling.opsPerSec)}/s at ${ceiling.clients} in flight${put ? `; kvd put ${f2(put.opsPerSec / ceiling.opsPerSec)}× of it` : ''}`,
    status: ceiling === undefined ? 'not measured' : 'met',
  });
  out.push({
    goal: 'idle groups: < 0.01 % of a core and 0 messages/s each',
    measured: 'not part of run.js: node dist/bench/idle-groups.js',
    status: 'not measured',
  });
  return out;
}

/** Renders the goal rows as a fixed-width block headed "issue 11 goals". */
export function renderGoals(rows: readonly GoalRow[]): string {
  const gw = Math.max(4, ...rows.map((r) => r.goal.length));
  const sw = Math.max(6, ...rows.map((r) => r.status.length));
  const lines = [`issue 11 goals (this run):`, `${'goal'.padEnd(gw)}  ${'status'.padEnd(sw)}  measured`];
  for (const r of rows) lines.push(`${r.goal.padEnd(gw)}  ${r.status.padEnd(sw)}  ${r.measured}`);
  return lines.join('\n');
}
