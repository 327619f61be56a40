/**
 * Streamed snapshots of many chunks in the node-level simulation: the schedules of
 * streamed-snapshot-sim.test.ts with 256-byte chunks, so each snapshot a leader streams from its
 * engine view spans many chunks (each read from the encoder where the follower is, under the
 * schedules' partitions, crashes and leader changes, which abandon transfers midway); the runs
 * keep linearizability, watches and lambda delivery (checks.ts), and once healed and settled no
 * node still holds an engine view open for sending.
 */
import { describe, expect, it } from 'vitest';
import { checkRun } from './node/checks.js';
import { runNodeSim } from './node/node-sim.js';

describe('node-level simulation: streamed snapshots of many chunks', () => {
  it('followers catch up by snapshots of many chunks, each read from the leader\'s engine view as the follower asks for it', async () => {
    let installs = 0;
    let largest = 0;
    const failures: string[] = [];
    for (let seed = 0; seed < 40; seed++) {
      const run = await runNodeSim({ seed, snapshotEvery: 40, snapshotChunkBytes: 256 });
      installs += run.stats.streamedInstalls;
      largest = Math.max(largest, run.stats.largestStreamedChunks);
      const problems = checkRun(run);
      if (run.stats.sendViewsOpenAtEnd > 0) problems.push(`${run.stats.sendViewsOpenAtEnd} engine views still open for sending at the end`);
      if (problems.length > 0) failures.push(`seed ${seed}: ${problems.slice(0, 5).join('; ')} (faults: ${run.faults.join('; ')})`);
    }
    console.log(`streamed-snapshot chunks sim: ${installs} streamed installs, largest ${largest} chunks`);
    expect(failures).toEqual([]);
    expect(installs).toBeGreaterThanOrEqual(3);
    expect(largest).toBeGreaterThanOrEqual(4);
  }, 300_000);
});
