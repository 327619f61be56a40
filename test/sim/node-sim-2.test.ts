/** The second half of the node-level simulation's schedules (see node-sim.test.ts). */
import { describe, expect, it } from 'vitest';
import { runBatch, scheduleTimeoutMs, seedsOf } from './node/schedules.js';

describe('node-level simulation (real KvNode, coordinator, delivery), part 2', () => {
  it('random fault schedules keep linearizability, watches and lambda delivery', async () => {
    const r = await runBatch(seedsOf(1, 2));
    console.log(`node sim part 2: ${r.seeds} schedules in ${(r.ms / 1000).toFixed(1)} s (${r.ops} client ops, ${r.crashes} crashes, ${r.events} virtual events), ${r.failures.length} failed`);
    expect(r.failures).toEqual([]);
  }, scheduleTimeoutMs(1));
});
