/** The event-loop watchdog: a blocked main thread is reported once it runs again (the kill itself is tested with real processes in inprocess-watchdog.test.ts). */
import { describe, expect, it } from 'vitest';
import { LoopWatchdog } from '../../src/node/loop-watchdog.js';

describe('LoopWatchdog', () => {
  it('reports a loop blocked past warnMs, once, with how long it lasted; not a loop that keeps ticking', async () => {
    const blocked: number[] = [];
    const w = new LoopWatchdog({ warnMs: 150, killMs: 0, beatMs: 20, onBlocked: (ms) => blocked.push(ms) });
    try {
      await new Promise((r) => setTimeout(r, 400));
      expect(blocked).toEqual([]);
      const end = Date.now() + 600;
      while (Date.now() < end) {
        // a lambda spinning on the main thread
      }
      const t0 = Date.now();
      while (blocked.length === 0 && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
      expect(blocked).toHaveLength(1);
      expect(blocked[0]!).toBeGreaterThanOrEqual(400);
    } finally {
      await w.stop();
    }
  });
});
