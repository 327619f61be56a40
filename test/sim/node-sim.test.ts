/**
 * The node-level deterministic simulation (test/sim/node): real KvNodes, coordinator and
 * extension delivery under random fault schedules; checks linearizability, watches and lambda
 * delivery (test/sim/node/checks.ts). This file runs the first half of the schedules, and
 * node-sim-2.test.ts the second (so the two run on two cores); see test/sim/node/schedules.ts
 * for the environment variables (KVC_SIM_SEED replays one seed, KVC_SIM_SCHEDULES sets the count).
 *
 * Determinism: a seed replays exactly (checked below by running one twice and comparing digests).
 * The layers that still read the global clock and timers (coordinator, extensions, storage,
 * watch hub) run on the virtual clock through the globals the run installs (VirtualScheduler.install).
 */
import { describe, expect, it } from 'vitest';
import { runDigest, runNodeSim } from './node/node-sim.js';
import { runBatch, seedsOf } from './node/schedules.js';

describe('node-level simulation (real KvNode, coordinator, delivery), part 1', () => {
  it('random fault schedules keep linearizability, watches and lambda delivery', async () => {
    const r = await runBatch(seedsOf(0, 2));
    console.log(`node sim part 1: ${r.seeds} schedules in ${(r.ms / 1000).toFixed(1)} s (${r.ops} client ops, ${r.crashes} crashes, ${r.events} virtual events), ${r.failures.length} failed`);
    expect(r.failures).toEqual([]);
  });

  it('a seed replays exactly (same seed, same history, watches, deliveries)', async () => {
    const seed = 7;
    const a = runDigest(await runNodeSim({ seed, activeMs: 800, settleMs: 1000 }));
    const b = runDigest(await runNodeSim({ seed, activeMs: 800, settleMs: 1000 }));
    expect(b).toBe(a);
  });
});
