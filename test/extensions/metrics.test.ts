/**
 * Live, honest extension counters on an in-process 3-node cluster (one metrics registry per
 * node): invocations, errors, timeouts, restarts and dead letters move on /metrics as events
 * fail, before anyone asks for a status; a node's totals survive it losing the shard's
 * leadership; an unloaded extension's series (its own metrics included) leave /metrics; CPU time
 * and memory are reported, on /metrics and in the status, for process isolation only.
 */
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_GROUP } from '../../src/node/kv-node.js';
import { ExtCluster } from './cluster-harness.js';

const FIX = 'test/extensions/fixtures';
const registries = new Map<number, Registry>();
let c: ExtCluster;

beforeAll(async () => {
  c = await ExtCluster.start(3, {
    manager: (id) => {
      const r = new Registry();
      registries.set(id, r);
      return { registry: r };
    },
  });
});

afterAll(async () => {
  await c?.stop();
});

/** The value of one series in node `id`'s /metrics text (0 when absent). */
async function series(id: number, name: string, labels: Record<string, string>): Promise<number> {
  const text = await registries.get(id)!.metrics();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

/** A series summed over every node (the shard's leadership may move on a busy machine: whichever node ran an event counted it). */
async function total(name: string, labels: Record<string, string>): Promise<number> {
  let sum = 0;
  for (const id of registries.keys()) sum += await series(id, name, labels);
  return sum;
}

describe('extension metrics', () => {
  it('counters move as events fail, before any status call; totals survive a leader change; series leave after unload', async () => {
    await c.load(`${FIX}/it-crasher`);
    await c.load(`${FIX}/it-misbehave`);
    await c.put('/crash/ok-m1', 'x');
    await c.put('/crash/bad-m', 'x');
    await c.put('/bad/hang-m', 'x');
    const ext = { extension: 'it-crasher' };
    // No statuses() call anywhere in this test until the counters are checked.
    await c.until(async () => ((await total('kvcascade_extension_dead_letters_total', { ...ext, kind: 'poison' })) === 1 ? true : undefined), 30_000);
    expect(await total('kvcascade_extension_worker_restarts_total', ext)).toBeGreaterThanOrEqual(2);
    expect(await total('kvcascade_extension_worker_restarts', ext)).toBeGreaterThanOrEqual(2);
    // The runner dies as a worker or as a process, depending on the isolation (the node's default).
    const died = (await total('kvcascade_extension_errors_total', { ...ext, kind: 'worker-crashed' })) + (await total('kvcascade_extension_errors_total', { ...ext, kind: 'process-exited' }));
    expect(died).toBeGreaterThanOrEqual(3);
    expect(await total('kvcascade_extension_invocations_total', { ...ext, outcome: 'ok' })).toBeGreaterThanOrEqual(1);
    expect(await total('kvcascade_extension_dead_lettered', ext)).toBe(1);
    expect(await total('kvcascade_ext_it_crasher_done_total', {})).toBeGreaterThanOrEqual(1);
    await c.until(async () => ((await total('kvcascade_extension_timeouts_total', { extension: 'it-misbehave' })) >= 1 ? true : undefined), 30_000);
    // The backlog gauge drains to 0 (awaited: it is sampled, and under load the last event's cursor write may still be on its way).
    expect(await c.until(async () => ((await total('kvcascade_extension_backlog', ext)) === 0 ? true : undefined), 15_000)).toBe(true);

    // The leader loses the shard: its counters stay (ext ls sums the nodes).
    const leader = await c.leader(DATA_GROUP);
    // It has run something itself (it may have become the leader only lately).
    await c.put('/crash/ok-m0', 'x');
    await c.until(async () => ((c.managerOf(leader).statuses().find((s) => s.name === 'it-crasher')?.invocations ?? 0) > 0 ? true : undefined));
    const before = c.managerOf(leader).statuses().find((s) => s.name === 'it-crasher')!;
    expect(c.managers.map((m) => m.statuses().find((x) => x.name === 'it-crasher')?.invocations ?? 0).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(4);
    expect(before.invocations).toBeGreaterThanOrEqual(1);
    for (const n of c.nodes)
      if (n !== leader) {
        c.hub.blocked.add(`${leader.id}>${n.id}`);
        c.hub.blocked.add(`${n.id}>${leader.id}`);
      }
    try {
      const next = await c.leader(DATA_GROUP, [leader]);
      await c.until(async () => (c.managerOf(leader).statuses().find((s) => s.name === 'it-crasher')!.delivering ? undefined : true));
      const after = c.managerOf(leader).statuses().find((s) => s.name === 'it-crasher')!;
      expect(after.invocations).toBe(before.invocations);
      expect(after.watches[0]!.stats!.invocations).toBe(before.watches[0]!.stats!.invocations);
      expect(after.deadLettered ?? 0).toBe(before.deadLettered ?? 0);
      await c.put('/crash/ok-m2', 'x');
      await c.until(async () => c.get('/crash-done/crash/ok-m2'));
      // Counted once the invocation returns, which is after its write is visible.
      const sum = () => c.managers.map((m) => m.statuses().find((s) => s.name === 'it-crasher')?.invocations ?? 0).reduce((a, b) => a + b, 0);
      await c.until(async () => (sum() > before.invocations ? true : undefined), 5_000);
      expect(await series(next.id, 'kvcascade_extension_invocations_total', { ...ext, outcome: 'ok' })).toBeGreaterThanOrEqual(1);
    } finally {
      for (const n of c.nodes) {
        c.hub.blocked.delete(`${leader.id}>${n.id}`);
        c.hub.blocked.delete(`${n.id}>${leader.id}`);
      }
    }

    // Unloaded: its series leave every node's /metrics; the other extension's stay.
    expect(await (await c.metaManager()).unload('it-crasher')).toBe(true);
    await c.until(async () => (c.managers.every((m) => !m.statuses().some((s) => s.name === 'it-crasher')) ? true : undefined));
    for (const r of registries.values()) {
      const text = await r.metrics();
      expect(text).not.toContain('extension="it-crasher"');
      expect(text).not.toContain('kvcascade_ext_it_crasher_');
    }
    const texts = await Promise.all([...registries.values()].map((r) => r.metrics()));
    expect(texts.some((t) => t.includes('extension="it-misbehave"'))).toBe(true);
  });

  it('process isolation: CPU time and resident memory of each extension appear on /metrics, and leave with it', async () => {
    await c.load(`${FIX}/resource-hog`, { isolation: 'process' });
    await c.put('/hog/burn', '200');
    await c.until(async () => c.get('/out/burn'), 30_000);
    // The node that ran it (the shard's leader then: leadership may have moved on a busy machine,
    // and another node's process may show 0.15 s of CPU time from its start alone).
    // (Its completion reaches the node a moment after the lambda's own write.)
    const leader = await c.until(async () => c.nodes.find((n) => (c.managerOf(n).statuses().find((s) => s.name === 'resource-hog')?.invocations ?? 0) > 0), 10_000);
    const ext = { extension: 'resource-hog' };
    // The node samples the child's CPU time from /proc periodically.
    await c.until(async () => ((await series(leader.id, 'kvcascade_extension_cpu_seconds_total', ext)) >= 0.15 ? true : undefined), 10_000);
    expect(await series(leader.id, 'kvcascade_extension_invocation_cpu_seconds_max', ext)).toBeGreaterThanOrEqual(0.15);
    expect(await series(leader.id, 'kvcascade_extension_resident_memory_bytes', ext)).toBeGreaterThan(10 * 1024 * 1024);
    expect(await series(leader.id, 'kvcascade_extension_resident_memory_peak_bytes', ext)).toBeGreaterThan(10 * 1024 * 1024);
    // The same figures in the node's status (what kvctl ext ls shows).
    const st = c.managerOf(leader).statuses().find((s) => s.name === 'resource-hog')!;
    expect(st.runsIn).toBe('process');
    expect(st.resources!.cpuSeconds).toBeGreaterThanOrEqual(0.15);
    expect(st.resources!.rssBytes).toBeGreaterThan(10 * 1024 * 1024);
    expect(st.resources!.peakRssBytes).toBeGreaterThanOrEqual(st.resources!.rssBytes);
    // A worker has no CPU time or RSS of its own: no figures, no series (not zeros).
    await c.load(`${FIX}/it-recorder`, { isolation: 'worker' });
    const w = c.managerOf(leader).statuses().find((s) => s.name === 'it-recorder')!;
    expect(w.runsIn).toBe('worker');
    expect(w.resources).toBeUndefined();
    expect(await registries.get(leader.id)!.metrics()).not.toMatch(/kvcascade_extension_(cpu_seconds_total|resident_memory_bytes)\{extension="it-recorder"\}/);
    expect(await (await c.metaManager()).unload('it-recorder')).toBe(true);
    expect(await (await c.metaManager()).unload('resource-hog')).toBe(true);
    await c.until(async () => (c.managers.every((m) => !m.statuses().some((s) => s.name === 'resource-hog')) ? true : undefined));
    expect(await registries.get(leader.id)!.metrics()).not.toContain('extension="resource-hog"');
  });
});
