/**
 * The node-level deterministic simulation (test/sim/node): real KvNodes, coordinator and
 * extension delivery under random fault schedules; checks linearizability, watches and lambda
 * delivery (test/sim/node/checks.ts). This file runs the first half of the schedules, and
 * node-sim-2.test.ts the second (so that two workers can share them); see test/sim/node/schedules.ts
 * for the environment variables (KVC_SIM_SEED replays one seed, KVC_SIM_SCHEDULES sets the count).
 *
 * Determinism: a seed replays exactly (checked below by running one twice and comparing digests).
 * The layers that still read the global clock and timers (coordinator, extensions, storage,
 * watch hub) run on the virtual clock through the globals the run installs (VirtualScheduler.install).
 */
import { describe, expect, it } from 'vitest';
import { checkRun } from './node/checks.js';
import { runDigest, runNodeSim, type NodeSimRun } from './node/node-sim.js';
import { runBatch, scheduleTimeoutMs, seedsOf } from './node/schedules.js';

describe('node-level simulation (real KvNode, coordinator, delivery), part 1', () => {
  it('random fault schedules keep linearizability, watches and lambda delivery', async () => {
    const r = await runBatch(seedsOf(0, 2));
    console.log(`node sim part 1: ${r.seeds} schedules in ${(r.ms / 1000).toFixed(1)} s (${r.ops} client ops, ${r.crashes} crashes, ${r.events} virtual events), ${r.failures.length} failed`);
    expect(r.failures).toEqual([]);
  }, scheduleTimeoutMs(0));

  // Seeds that once failed, kept (seeds shift whenever the schedule generator changes: re-pin then).
  // 19 failed (generator of commit 24b6298) when a frozen data leader finished an in-process
  // lambda after its event had been dead-lettered as poison and a later event of the key had been
  // delivered: the check now orders deliveries by when they started. Under today's generator it
  // still freezes data leaders running an in-process lambda and dead-letters one event as poison.
  it.each([19])('regression seed %i', async (seed) => {
    const r = await runBatch([seed]);
    expect(r.failures).toEqual([]);
  });

  // Regression seeds: the data leader froze (GC pause, SIGSTOP) with an in-process lambda running;
  // a new leader took the shard, treated the unfinished event as one that killed a node,
  // dead-lettered it as poison and delivered later events of the key; the frozen node woke and,
  // before it had processed the messages that depose it (Node runs expired timers before network
  // reads), its dispatcher started a lambda for that older event: per-key order (and poison)
  // broken. Fixed by the leader lease the dispatcher checks before each start
  // (KvNode.holdsLease: a quorum heard within an election timeout, and after a late tick a
  // leadership confirmation round sent after it).
  for (const seed of [100381, 101511]) {
    it(`regression seed ${seed}: a woken deposed leader starts no lambda for an older event`, async () => {
      const r = await runBatch([seed]);
      expect(r.failures).toEqual([]);
    });
  }

  it('a seed replays exactly (same seed, same history, watches, deliveries)', async () => {
    for (const seed of [7, 8, 9]) {
      const a = runDigest(await runNodeSim({ seed, activeMs: 800, settleMs: 1000 }));
      const b = runDigest(await runNodeSim({ seed, activeMs: 800, settleMs: 1000 }));
      expect(b, `seed ${seed}`).toBe(a);
    }
  });

  it('the checks catch a gap, a duplicate, a lost write, a stale read, a missed or reordered delivery, a lost hop count', async () => {
    const run = await runNodeSim({ seed: 11, activeMs: 800, settleMs: 1000, faults: false });
    expect(checkRun(run)).toEqual([]);
    const copy = (): NodeSimRun => structuredClone(run);
    const eventBatches = (r: NodeSimRun) => r.streams.map((s) => s.batches.filter((b) => b.events.length > 0)).find((bs) => bs.length > 1)!;
    const mutations: [string, (r: NodeSimRun) => void, RegExp][] = [
      ['gap', (r) => eventBatches(r)[0]!.events.splice(0), /gap/],
      ['duplicate', (r) => { const [a, b] = eventBatches(r); b!.events.unshift(...a!.events); }, /in a response for revisions/],
      ['lost write', (r) => { for (const h of r.finalHistories.values()) h.splice(h.findIndex((e) => r.history.some((o) => o.kind === 'put' && o.ret !== undefined && o.value === e.value)), 1); }, /lost|not linearizable/],
      ['stale read', (r) => { const g = r.history.filter((o) => o.kind === 'get' && o.output !== undefined); const op = g[g.length - 1]!; op.output = 'never-written'; }, /not linearizable/],
      ['missed delivery', (r) => { const first = r.deliveries[0]!; r.deliveries.splice(0, r.deliveries.length, ...r.deliveries.filter((d) => d.revision !== first.revision || d.key !== first.key)); }, /never got/],
      ['hop count lost (read as 0)', (r) => { const h = r.derivedHops.find((x) => x.hops.length > 0)!; h.hops[0] = { ...h.hops[0]!, hops: 0 }; }, /hop count other than 1/],
      ['no lambda write left to check', (r) => { for (const x of r.derivedHops) x.hops.splice(0); }, /no replica holds an event/],
      ['reordered delivery', (r) => { const k = r.deliveries[0]!.key; const i = r.deliveries.findIndex((d, j) => j > 0 && d.key === k && d.revision > r.deliveries[0]!.revision); const [later] = r.deliveries.splice(i, 1); r.deliveries.unshift({ ...later!, startedAt: r.deliveries[0]!.startedAt - 1 }); }, /per-key order/],
    ];
    for (const [name, mutate, expected] of mutations) {
      const r = copy();
      mutate(r);
      expect(checkRun(r).join('\n'), name).toMatch(expected);
    }
  });
});
