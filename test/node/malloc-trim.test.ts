/** The malloc-trim scheduler's decisions (src/node/malloc-trim.ts), and the native calls where glibc has them. */
import { describe, expect, it } from 'vitest';
import { loadNativeMalloc, TrimScheduler, type MallocStats } from '../../src/node/malloc-trim.js';

const MiB = 2 ** 20;
const at = (inUse: number, free: number): MallocStats => ({ arenaBytes: (inUse + free) * MiB, inUseBytes: inUse * MiB, freeBytes: free * MiB, mmappedBytes: 0 });

describe('TrimScheduler', () => {
  it('trims once the bytes in use fell by the threshold from their peak', () => {
    const s = new TrimScheduler({ freedBytes: 32 * MiB, minIntervalMs: 10_000 });
    expect(s.check(0, at(100, 0))).toBe(false);
    expect(s.check(2_000, at(200, 0))).toBe(false); // growing: nothing freed
    expect(s.check(4_000, at(180, 0))).toBe(false); // 20 MiB below the peak
    expect(s.check(6_000, at(160, 0))).toBe(true); // 40 MiB below
  });

  it('trims once the free bytes grew by the threshold (fragmentation with the bytes in use flat)', () => {
    const s = new TrimScheduler({ freedBytes: 32 * MiB, minIntervalMs: 10_000 });
    expect(s.check(0, at(100, 10))).toBe(false);
    s.trimmed(100, at(100, 10));
    expect(s.check(20_000, at(100, 30))).toBe(false);
    expect(s.check(22_000, at(100, 45))).toBe(true);
  });

  it('counts from the figures after the last trim, not from start', () => {
    const s = new TrimScheduler({ freedBytes: 32 * MiB, minIntervalMs: 1_000 });
    expect(s.check(0, at(300, 0))).toBe(false);
    expect(s.check(2_000, at(200, 100))).toBe(true);
    s.trimmed(2_100, at(200, 100)); // trimmed pages stay free chunks: the free bytes do not fall
    expect(s.check(4_000, at(200, 100))).toBe(false);
    expect(s.check(6_000, at(190, 110))).toBe(false);
    expect(s.freedSinceTrim(at(190, 110))).toBe(10 * MiB);
    expect(s.check(8_000, at(240, 60))).toBe(false); // reuse of the trimmed chunks
    expect(s.check(10_000, at(205, 95))).toBe(true); // 35 MiB below the new peak
  });

  it('waits the least interval between trims, and for the running trim to finish', () => {
    const s = new TrimScheduler({ freedBytes: 32 * MiB, minIntervalMs: 10_000 });
    expect(s.check(0, at(200, 0))).toBe(false);
    expect(s.check(1_000, at(100, 100))).toBe(true);
    expect(s.check(2_000, at(50, 150))).toBe(false); // still running
    s.trimmed(3_000, at(50, 150));
    expect(s.check(5_000, at(250, 0))).toBe(false);
    expect(s.check(9_000, at(150, 100))).toBe(false); // 6 s since the trim
    expect(s.check(13_000, at(150, 100))).toBe(true);
  });

  it('never trims with a threshold of 0, and refuses a bad policy', () => {
    const s = new TrimScheduler({ freedBytes: 0, minIntervalMs: 0 });
    expect(s.check(0, at(1000, 0))).toBe(false);
    expect(s.check(100_000, at(0, 1000))).toBe(false);
    expect(() => new TrimScheduler({ freedBytes: -1, minIntervalMs: 0 })).toThrow(/freedBytes must be a non-negative number/);
    expect(() => new TrimScheduler({ freedBytes: 1, minIntervalMs: Number.NaN })).toThrow(/minIntervalMs must be a non-negative number/);
  });
});

describe.runIf(process.platform === 'linux' && loadNativeMalloc() !== undefined)('glibc through koffi', () => {
  it('reads the allocator figures and trims, off the event loop', async () => {
    const native = loadNativeMalloc()!;
    const s = native.stats();
    expect(s.inUseBytes).toBeGreaterThan(0);
    expect(s.arenaBytes).toBeGreaterThanOrEqual(s.inUseBytes);
    const r = await new Promise<{ err: Error | undefined; ms: number }>((res) => native.trimAsync((err, _released, ms) => res({ err, ms })));
    expect(r.err).toBeUndefined();
    expect(r.ms).toBeGreaterThanOrEqual(0);
    expect(typeof native.trimSync()).toBe('boolean');
  });
});
