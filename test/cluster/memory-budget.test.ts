/**
 * The memory budget on real kvd processes (issue 17): a node whose budget is spent answers writes
 * that add data with RESOURCE_EXHAUSTED (MEMORY_BUDGET) through the client, keeps serving reads and
 * deletes, reports it in its metrics, and stays up with its leadership.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvError } from '../../src/client/index.js';
import { KvdCluster } from './harness.js';
import { kvdAllocatorEnv } from '../../src/bin/allocator.js';

let cluster: KvdCluster;

beforeAll(async () => {
  // 1 MiB of budget and no value cache: a few thousand keys of index fill it.
  cluster = await KvdCluster.start({ nodes: 3, tickMs: 50, electionTicks: 10, extraArgs: ['--memory-budget-mib', '1', '--value-cache-mib', '0'] });
});

afterAll(async () => {
  await cluster?.stop();
});

async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.slice(line.lastIndexOf(' ') + 1) ?? NaN);
}

describe('memory budget on kvd', () => {
  it('refuses puts with RESOURCE_EXHAUSTED MEMORY_BUDGET once spent, and keeps serving', async () => {
    const c = cluster.client();
    try {
      let refused: unknown;
      let written = 0;
      const value = new Uint8Array(16);
      for (let i = 0; i < 20_000 && refused === undefined; i += 50) {
        const batch = await Promise.allSettled(Array.from({ length: 50 }, (_, j) => c.put(`/mb/${String(i + j).padStart(6, '0')}`, value)));
        for (const r of batch) {
          if (r.status === 'fulfilled') written++;
          else refused ??= r.reason;
        }
      }
      expect(refused).toBeInstanceOf(KvError);
      expect((refused as KvError).code).toBe('RESOURCE_EXHAUSTED');
      expect((refused as KvError).message).toMatch(/MEMORY_BUDGET: the node's memory budget \(1\.0 MiB/);
      // 1 MiB of index at ~380 bytes per key: about 2,700 keys (the refusals start within a sampling period).
      expect(written).toBeGreaterThan(1_000);
      expect(written).toBeLessThan(6_000);
      // Reads and deletes still work, and the node stays up.
      expect((await c.get('/mb/000001'))?.value).toEqual(value);
      await c.delete('/mb/000001');
      expect((await c.get('/mb/000001')).found).toBe(false);
      await expect(c.put('/mb/again', value)).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
      const exhausted = await Promise.all(cluster.nodes.map((n) => metric(n.metricsPort, 'kvcascade_memory_budget_exhausted')));
      expect(exhausted.some((x) => x === 1)).toBe(true);
      const refusals = await Promise.all(cluster.nodes.map((n) => metric(n.metricsPort, 'kvcascade_memory_budget_refusals_total')));
      expect(refusals.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
      for (const n of cluster.nodes) expect(n.proc?.exitCode).toBeNull();
    } finally {
      c.close();
    }
  }, 120_000);

  it('runs on the malloc the harness chose (KVD_ALLOCATOR, as kvd\'s launchers) and says so in its metrics', async () => {
    const expected = kvdAllocatorEnv(process.env).allocator;
    for (const n of cluster.nodes) {
      const text = await (await fetch(`http://127.0.0.1:${n.metricsPort}/metrics`)).text();
      expect(text).toContain(`kvcascade_allocator_info{allocator="${expected}"} 1`);
      // On glibc the node trims freed native memory by default (--malloc-trim-mib 64): the trimmer's
      // metrics are there; on jemalloc it is not started (nothing to trim).
      if (expected === 'glibc') expect(text).toMatch(/^kvcascade_malloc_trims_total \d+$/m);
      else expect(text).not.toContain('kvcascade_malloc_trims_total');
    }
  });
});
