import { describe, expect, it } from 'vitest';
import { checkRun } from './node/checks.js';
import { runDigest, runNodeSim } from './node/node-sim.js';

describe('node-level simulation (real KvNode, coordinator, delivery)', () => {
  it('one schedule', async () => {
    const seed = Number(process.env.KVC_SIM_SEED ?? 1);
    const t0 = performance.now();
    const run = await runNodeSim({ seed, trace: process.env.KVC_SIM_TRACE ? (l) => console.log(l) : undefined });
    const ms = performance.now() - t0;
    const problems = checkRun(run);
    console.log(JSON.stringify({ ms: Math.round(ms), stats: run.stats, faults: run.faults, digest: runDigest(run), streams: run.streams.length, deliveries: run.deliveries.length, problems: problems.slice(0, 10) }, null, 1));
    expect(problems).toEqual([]);
  });
});
