/** Issue 11's goal table (bench/goals.ts) judged from synthetic benchmark rows, and run.js's --lone flag. */
import { describe, expect, it } from 'vitest';
import { issue11Goals, renderGoals } from '../../bench/goals.js';
import type { WorkloadResult } from '../../bench/load.js';
import { parseConfig, ratioFor } from '../../bench/run.js';

function r(o: Partial<WorkloadResult> & Pick<WorkloadResult, 'system' | 'workload' | 'opsPerSec'>): WorkloadResult {
  const clients = o.clients ?? 64;
  return {
    clients, clientsLabel: String(clients), connections: 4, procs: 2, durationS: 10, ops: o.opsPerSec * 10, opsTotal: o.opsPerSec * 12,
    p50Ms: 1, p99Ms: 10, p999Ms: 20, meanMs: 2, maxMs: 30, errors: {}, conflicts: 0, retriedOps: 0, abandoned: 0, misses: 0,
    clientCpuCores: 0.3, serverCpuCores: 1.5, otherCpuCores: 0.01, serverCpuUsPerOp: 100,
    ...o,
  };
}

const status = (rows: ReturnType<typeof issue11Goals>, prefix: string): string | undefined => rows.find((g) => g.goal.startsWith(prefix))?.status;

describe('issue11Goals', () => {
  const full: WorkloadResult[] = [
    r({ system: 'kvd', workload: 'put', opsPerSec: 5000, p99Ms: 30, serverCpuUsPerOp: 290 }),
    r({ system: 'kvd', workload: 'get', opsPerSec: 25000, p99Ms: 6, serverCpuUsPerOp: 44 }),
    r({ system: 'kvd', workload: 'rmw', opsPerSec: 2600, p99Ms: 50, serverCpuUsPerOp: 540 }),
    r({ system: 'kvd', workload: 'put', opsPerSec: 400, clients: 1, p50Ms: 2.6 }),
    r({ system: 'kvd', workload: 'get', opsPerSec: 2000, clients: 1, p50Ms: 0.45 }),
    r({ system: 'kvd', workload: 'put-shards', opsPerSec: 2400, shards: 1 }),
    r({ system: 'kvd', workload: 'put-shards', opsPerSec: 1400, shards: 8 }),
    r({ system: 'etcd', workload: 'put', opsPerSec: 2656, p99Ms: 84, serverCpuUsPerOp: 389 }),
    r({ system: 'etcd', workload: 'get', opsPerSec: 3972, p99Ms: 40, serverCpuUsPerOp: 227 }),
    r({ system: 'etcd', workload: 'rmw', opsPerSec: 875, p99Ms: 150, serverCpuUsPerOp: 1138 }),
    r({ system: 'etcd', workload: 'put', opsPerSec: 420, clients: 1, p50Ms: 2.4 }),
    r({ system: 'etcd', workload: 'get', opsPerSec: 700, clients: 1, p50Ms: 1.39 }),
    r({ system: 'etcd', workload: 'h2load', opsPerSec: 9000, clients: 64 }),
    r({ system: 'etcd', workload: 'h2load', opsPerSec: 13500, clients: 256 }),
  ];

  it('judges each goal from the rows at the run\'s client count and the lone rows', () => {
    const g = issue11Goals(full, 64);
    expect(status(g, 'put ≥ 2×')).toBe('not met'); // 1.88×
    expect(g.find((x) => x.goal.startsWith('put ≥'))!.measured).toContain('1.88×');
    expect(status(g, 'get ≥ 2×')).toBe('met');
    expect(status(g, 'rmw ≥ 3×')).toBe('not met'); // 2.97×
    expect(status(g, 'p99')).toBe('met');
    expect(status(g, 'put: server CPU')).toBe('not met');
    expect(status(g, 'get: server CPU')).toBe('met');
    expect(status(g, 'rmw: server CPU')).toBe('met'); // 0.47×
    expect(status(g, 'one client, one call at a time: p50 put')).toBe('not met');
    expect(status(g, 'one client, one call at a time: p50 get')).toBe('met');
    expect(status(g, 'throughput never falls')).toBe('not met');
    expect(g.find((x) => x.goal.startsWith('throughput'))!.measured).toContain('8 shards 0.58× of 1');
    const ceiling = g.find((x) => x.goal.startsWith("etcd's ceiling"))!;
    expect(ceiling.status).toBe('met');
    expect(ceiling.measured).toContain('13,500/s at 256');
    expect(status(g, 'idle groups')).toBe('not measured');
  });

  it('a p99 above etcd\'s in any workload fails the p99 goal; a boundary ratio counts as met', () => {
    const rows = full.map((x) => (x.system === 'kvd' && x.workload === 'rmw' && x.clients === 64 ? { ...x, p99Ms: 151 } : x));
    expect(status(issue11Goals(rows, 64), 'p99')).toBe('not met');
    const exact = full.map((x) => (x.system === 'kvd' && x.workload === 'put' && x.clients === 64 ? { ...x, opsPerSec: 5312, serverCpuUsPerOp: 194.5 } : x));
    expect(status(issue11Goals(exact, 64), 'put ≥ 2×')).toBe('met');
    expect(status(issue11Goals(exact, 64), 'put: server CPU')).toBe('met');
  });

  it('throughput that dips at a middle shard count does not meet "never falls"', () => {
    const rows = [
      ...full.filter((x) => x.workload !== 'put-shards'),
      r({ system: 'kvd', workload: 'put-shards', opsPerSec: 2000, shards: 1 }),
      r({ system: 'kvd', workload: 'put-shards', opsPerSec: 1900, shards: 4 }),
      r({ system: 'kvd', workload: 'put-shards', opsPerSec: 2100, shards: 8 }),
    ];
    expect(status(issue11Goals(rows, 64), 'throughput never falls')).toBe('not met');
    const rising = rows.map((x) => (x.shards === 4 ? { ...x, opsPerSec: 2050 } : x));
    expect(status(issue11Goals(rising, 64), 'throughput never falls')).toBe('met');
  });

  it('prefers the client library\'s shard workload over the stubs\'', () => {
    const rows = [
      ...full,
      r({ system: 'kvd', workload: 'lib-put-shards', opsPerSec: 3000, shards: 1 }),
      r({ system: 'kvd', workload: 'lib-put-shards', opsPerSec: 3100, shards: 8 }),
    ];
    const g = issue11Goals(rows, 64).find((x) => x.goal.startsWith('throughput'))!;
    expect(g.status).toBe('met');
    expect(g.measured).toMatch(/^lib-put-shards:/);
  });

  it('says "not measured" where the run lacks the rows, never met', () => {
    const g = issue11Goals(full.filter((x) => x.system === 'kvd' || x.clients !== 1).filter((x) => x.workload !== 'h2load' && x.workload !== 'put-shards'), 64);
    expect(status(g, 'one client, one call at a time: p50 put')).toBe('not measured');
    expect(status(g, "etcd's ceiling")).toBe('not measured');
    expect(status(g, 'throughput never falls')).toBe('not measured');
    const none = issue11Goals([], 64);
    expect(none.every((x) => x.status === 'not measured')).toBe(true);
    const noCpu = issue11Goals(full.map((x) => ({ ...x, serverCpuUsPerOp: null })), 64);
    expect(status(noCpu, 'put: server CPU')).toBe('not measured');
  });

  it('renders one line per goal under a heading', () => {
    const text = renderGoals(issue11Goals(full, 64));
    const lines = text.split('\n');
    expect(lines[0]).toBe('issue 11 goals (this run):');
    expect(lines.length).toBe(2 + issue11Goals(full, 64).length);
    expect(text).toMatch(/put ≥ 2× etcd's \(64 clients\)\s+not met\s+1\.88×/);
  });
});

describe('run.js --lone', () => {
  it('is on for the default workload list and off when workloads are chosen, unless asked', () => {
    expect(parseConfig([])!.lone).toBe(true);
    expect(parseConfig(['--workloads', 'put'])!.lone).toBe(false);
    expect(parseConfig(['--workloads=put,get'])!.lone).toBe(false);
    expect(parseConfig(['--workloads', 'put', '--lone', 'on'])!.lone).toBe(true);
    expect(parseConfig(['--lone', 'off'])!.lone).toBe(false);
    expect(() => parseConfig(['--lone', 'maybe'])).toThrow(/--lone: unknown maybe/);
  });
});

describe('run.js ratioFor with lone rows', () => {
  it('compares a kvd row with the etcd row at the same client count, a lone row only with a lone row', () => {
    const rows = [
      r({ system: 'kvd', workload: 'put', opsPerSec: 5000 }),
      r({ system: 'kvd', workload: 'put', opsPerSec: 400, clients: 1 }),
      r({ system: 'etcd', workload: 'put', opsPerSec: 2500 }),
      r({ system: 'etcd', workload: 'put', opsPerSec: 500, clients: 1 }),
      r({ system: 'kvd', workload: 'put-shards', opsPerSec: 2000, shards: 8 }),
    ];
    expect(ratioFor(rows[0]!, rows)).toBe(2);
    expect(ratioFor(rows[1]!, rows)).toBe(0.8);
    expect(ratioFor(rows[4]!, rows)).toBe(0.8);
    expect(ratioFor(rows[1]!, rows.filter((x) => !(x.system === 'etcd' && x.clients === 1)))).toBeUndefined();
  });
});
