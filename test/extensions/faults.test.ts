/**
 * Faults stay inside the extension, on an in-process 3-node cluster: an event whose lambda kills
 * its worker is dead-lettered as `poison` after 3 attempts and later events flow; across a leader
 * change the attempt record keeps the count (never more than 3 runs in total).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_GROUP } from '../../src/node/kv-node.js';
import { decodeAttemptRecord } from '../../src/extensions/attempt-record.js';
import { ExtCluster } from './cluster-harness.js';

const FIX = 'test/extensions/fixtures';
let c: ExtCluster;

beforeAll(async () => {
  c = await ExtCluster.start(3, { captureLogs: true });
});

afterAll(async () => {
  await c?.stop();
});

/** Runner-killing failures of `key`'s event in the committed attempt records of `ext`'s watches. */
const recordedFailures = async (ext: string, key: string): Promise<number> => {
  let n = 0;
  for (const r of await c.list(`/_sys/attempt/${ext}/`)) {
    const rec = decodeAttemptRecord(new TextEncoder().encode(r.value));
    for (const e of rec?.events ?? []) if (e.key === key) n = Math.max(n, e.failures);
  }
  return n;
};

/** Prints `what`, then the captured log lines matching `pattern` (the newest 400), for a failure's diagnosis. */
const dumpDiagnostics = async (what: string, pattern: RegExp): Promise<void> => {
  const lines = c.logLines.filter((l) => pattern.test(l)).slice(-400);
  console.log(`${what}\nmanagers: ${JSON.stringify(c.managers.map((m) => m.statuses()))}\nlog (${lines.length} matching lines):\n${lines.join('\n')}`);
};

const letters = async (ext: string) => (await c.list(`/_dlq/${ext}/`)).map((x) => JSON.parse(x.value) as { kind: string; error: string; attempts: number; event: { key: string; version: number } });

describe('what the attempt record costs', () => {
  it('worker mode writes only cursors; in-process mode arms invocations in batches (measured)', async () => {
    const n = 200;
    const report: string[] = [];
    const costs: Record<string, number> = {};
    for (const mode of ['worker', 'in-process'] as const) {
      const prefix = `/fast-${mode}/`;
      const out = `/fast-out-${mode}`;
      await c.load(`${FIX}/it-fast`, { name: `fast-${mode}`, config: { prefix, out }, isolation: mode });
      await new Promise((r) => setTimeout(r, 500));
      const sm = async () => (await c.leader(DATA_GROUP)).replica(DATA_GROUP)!.internalsForTests().sm;
      const rev0 = (await sm()).revision;
      const t0 = Date.now();
      for (let i = 0; i < n; i += 20) await Promise.all(Array.from({ length: 20 }, (_, j) => c.put(`${prefix}k${(i + j) % 20}`, String(i + j))));
      await c.until(async () => ((await c.list(`${out}/`)).length === n ? true : undefined), 30_000);
      const ms = Date.now() - t0;
      await new Promise((r) => setTimeout(r, 600)); // the last cursor (and attempt record) writes
      const system = (await sm()).revision - rev0 - 2 * n; // minus the client puts and the lambdas' puts
      costs[mode] = system;
      report.push(`${mode}: ${n} events in ${ms} ms, ${system} system writes (cursor + attempt record; ${(system / n).toFixed(2)} per event)`);
    }
    console.log(`attempt record cost: ${report.join('; ')}`);
    expect(costs.worker!).toBeLessThan(n / 4);
    expect(costs['in-process']!).toBeLessThanOrEqual(n + 10);
  });
});

describe('leader changes under load (regression: CI run of stop 17, in-process events dead-lettered as poison)', () => {
  it('every event is delivered, none dead-lettered; an in-process extension retries what the old leader left unfinished in isolation, then runs in-process again', async () => {
    const n = 200;
    for (const mode of ['process', 'worker', 'in-process'] as const) {
      for (let round = 0; round < 3; round++) {
        const name = `lc-${mode}-${round}`;
        const prefix = `/lc-${mode}-${round}/`;
        const out = `/lc-out-${mode}-${round}`;
        await c.load(`${FIX}/it-fast`, { name, config: { prefix, out }, isolation: mode });
        const old = await c.leader(DATA_GROUP);
        const puts = (async () => {
          for (let i = 0; i < n; i += 20) await Promise.all(Array.from({ length: 20 }, (_, j) => c.put(`${prefix}k${(i + j) % 20}`, String(i + j))));
        })();
        // The leader is cut off while its lambdas run (it lost the shard: it did not die).
        await new Promise((r) => setTimeout(r, 30 + round * 60));
        const cut = c.nodes.filter((x) => x !== old).flatMap((x) => [`${old.id}>${x.id}`, `${x.id}>${old.id}`]);
        for (const b of cut) c.hub.blocked.add(b);
        await c.leader(DATA_GROUP, [old]);
        for (const b of cut) c.hub.blocked.delete(b);
        await puts;
        await c.until(async () => ((await c.list(`${out}/`)).length === n ? true : undefined), 30_000);
        const dead = await letters(name);
        if (dead.length > 0) await dumpDiagnostics(`${name}: dead letters ${JSON.stringify(dead.slice(0, 3))}`, /isolation|in-process|leader changed|delivering|marker|poison|runner-killing|worker|process/);
        expect(dead).toEqual([]);
        if (mode === 'in-process') {
          // Back in the node's thread on the leader once the unfinished events completed in isolation.
          const runsIn = async () => {
            const l = await c.leader(DATA_GROUP);
            return c.managerOf(l).statuses().find((x) => x.name === name)?.runsIn;
          };
          const back = await c.until(async () => ((await runsIn()) === 'in-process' ? true : undefined), 15_000).catch(async (e: unknown) => {
            await dumpDiagnostics(`${name} still runs in isolation on the leader`, /isolation|in-process|leader changed|delivering|marker|poison/);
            throw e;
          });
          expect(back).toBe(true);
        }
      }
    }
  });
});

describe('poison pills', () => {
  it('an event that crashes its worker on every attempt is dead-lettered as poison after 3 attempts; later events are delivered', async () => {
    const termAtStart = (await c.leader(DATA_GROUP)).replica(DATA_GROUP)!.term;
    await c.load(`${FIX}/it-crasher`);
    await c.put('/crash/bad1', 'x');
    await c.put('/crash/ok1', 'x');
    await c.put('/crash/bad1', 'y');
    await c.until(async () => ((await letters('it-crasher')).length >= 2 ? true : undefined), 30_000).catch(async (e: unknown) => {
      console.log('DLQ', JSON.stringify(await letters('it-crasher')), 'runs', JSON.stringify(await c.list('/crash-runs/')), JSON.stringify(c.managers.map((m) => m.statuses())));
      const l = await c.leader(DATA_GROUP);
      console.log(JSON.stringify(l.replica(DATA_GROUP)!.list('/_sys/', { limit: 100 }).items.map((i) => [i.key, new TextDecoder().decode(i.value)])));
      throw e;
    });
    const ls = await letters('it-crasher');
    expect(ls.map((l) => l.kind)).toEqual(['poison', 'poison']);
    expect(ls[0]!.error).toMatch(/killed or hung its runner 3 times/);
    expect(
      await c.until(async () => c.get('/crash-done/crash/ok1')).catch(async (e: unknown) => {
        console.log('DLQ', JSON.stringify(await letters('it-crasher')), 'runs', JSON.stringify((await c.list('/crash')).map((x) => x.key)), JSON.stringify(c.managers.map((m) => m.statuses())));
        throw e;
      }),
    ).toBeDefined();
    await c.put('/crash/ok2', 'x');
    expect(await c.until(async () => c.get('/crash-done/crash/ok2'))).toBeDefined();
    const runs = await Promise.all(ls.map(async (l) => (await c.list(`/crash-runs/crash/bad1/${l.event.version}/`)).map((x) => x.key)));
    // The bound is on recorded runs: a first attempt in isolation is not armed (a well-behaved
    // watch writes only cursors), so a run whose failure its leader had not recorded when it lost
    // the shard is not counted and may run once more on the next leader: at most one extra run per
    // leader change. Leaders do change here without the test's doing: the nodes move each shard's
    // leadership back to its preferred node after the leader-change test above (a failing run's captured logs: the
    // first run of /crash/bad1's second version on node 3, then three counted runs on node 1).
    const leaderChanges = (await c.leader(DATA_GROUP)).replica(DATA_GROUP)!.term - termAtStart;
    if (ls.some((l, i) => l.attempts > 3 || runs[i]!.length > 3 + leaderChanges)) await dumpDiagnostics(`poison bound exceeded: letters ${JSON.stringify(ls)}; runs ${JSON.stringify(runs)}; leader changes ${leaderChanges}`, /crash|leader changed|delivering|worker|poison|attempt/);
    for (const [i, l] of ls.entries()) {
      // Never more than 3 counted attempts (a run that died before its marker was written is not listed).
      expect(l.attempts).toBeLessThanOrEqual(3);
      expect(runs[i]!.length).toBeLessThanOrEqual(3 + leaderChanges);
    }
  });

  it('across a leader change the count survives (attempt record): at most 3 runs in total', async () => {
    await c.put('/crash/bad2', 'x');
    // The first run happened (and its failure is being recorded); then the leader vanishes.
    await c.until(async () => ((await c.list('/crash-runs/crash/bad2/')).length >= 1 ? true : undefined), 20_000);
    // ... and its failure is in the replicated attempt record. A worker-mode first attempt is not
    // armed (a well-behaved watch writes only cursors), so a run whose failure was not yet
    // recorded when the leader vanished is not counted and may run once more: the bound is on
    // recorded runs. Waiting for the record (instead of a fixed 100 ms, which under load was
    // sometimes too short: 4 runs) makes the test check what the attempt record promises.
    await c.until(async () => ((await recordedFailures('it-crasher', '/crash/bad2')) >= 1 ? true : undefined), 20_000);
    const old = await c.leader(DATA_GROUP);
    for (const n of c.nodes)
      if (n !== old) {
        c.hub.blocked.add(`${old.id}>${n.id}`);
        c.hub.blocked.add(`${n.id}>${old.id}`);
      }
    try {
      await c.leader(DATA_GROUP, [old]);
      await c.until(async () => ((await letters('it-crasher')).some((l) => l.event.key === '/crash/bad2') ? true : undefined), 30_000);
      const letter = (await letters('it-crasher')).find((l) => l.event.key === '/crash/bad2')!;
      expect(letter.kind).toBe('poison');
      const runs = (await c.list('/crash-runs/crash/bad2/')).length;
      console.log(`runs of the poison event across the leader change: ${runs}; ${letter.error}`);
      if (runs > 3) await dumpDiagnostics(`poison bound exceeded across the leader change: ${JSON.stringify(letter)}`, /crash|leader changed|delivering|worker|poison|attempt/);
      expect(runs).toBeLessThanOrEqual(3);
      await c.put('/crash/ok3', 'x');
      expect(await c.until(async () => c.get('/crash-done/crash/ok3'))).toBeDefined();
    } finally {
      for (const n of c.nodes) {
        c.hub.blocked.delete(`${old.id}>${n.id}`);
        c.hub.blocked.delete(`${n.id}>${old.id}`);
      }
    }
  });
});
