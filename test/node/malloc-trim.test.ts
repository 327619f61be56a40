/** The malloc-trim scheduler's decisions (src/node/malloc-trim.ts), and the native calls where glibc has them. */
import { describe, expect, it } from 'vitest';
import { DEFAULT_TRIM_POLICY, loadNativeMalloc, parseCpuPressure, readAnonRss, readCpuPressure, TrimScheduler, type MallocStats, type TrimPolicy } from '../../src/node/malloc-trim.js';

const MiB = 2 ** 20;
const policy = (p: Partial<TrimPolicy>): TrimPolicy => ({ freedBytes: 32 * MiB, minIntervalMs: 10_000, maxLoopUtilization: 0.2, quietChecks: 1, ...p });
const at = (inUse: number, free: number): MallocStats => ({ arenaBytes: (inUse + free) * MiB, inUseBytes: inUse * MiB, freeBytes: free * MiB, mmappedBytes: 0 });

describe('TrimScheduler', () => {
  it('trims once the bytes in use fell by the threshold from their peak', () => {
    const s = new TrimScheduler(policy({}));
    expect(s.check(0, at(100, 0))).toBe(false);
    expect(s.check(2_000, at(200, 0))).toBe(false); // growing: nothing freed
    expect(s.check(4_000, at(180, 0))).toBe(false); // 20 MiB below the peak
    expect(s.check(6_000, at(160, 0))).toBe(true); // 40 MiB below
  });

  it('trims once the free bytes grew by the threshold (fragmentation with the bytes in use flat)', () => {
    const s = new TrimScheduler(policy({}));
    expect(s.check(0, at(100, 10))).toBe(false);
    s.trimmed(100, at(100, 10));
    expect(s.check(20_000, at(100, 30))).toBe(false);
    expect(s.check(22_000, at(100, 45))).toBe(true);
  });

  it('counts from the figures after the last trim, not from start', () => {
    const s = new TrimScheduler(policy({ minIntervalMs: 1_000 }));
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
    const s = new TrimScheduler(policy({}));
    expect(s.check(0, at(200, 0))).toBe(false);
    expect(s.check(1_000, at(100, 100))).toBe(true);
    expect(s.check(2_000, at(50, 150))).toBe(false); // still running
    s.trimmed(3_000, at(50, 150));
    expect(s.check(5_000, at(250, 0))).toBe(false);
    expect(s.check(9_000, at(150, 100))).toBe(false); // 6 s since the trim
    expect(s.check(13_000, at(150, 100))).toBe(true);
  });

  it('never trims with a threshold of 0, and refuses a bad policy', () => {
    const s = new TrimScheduler(policy({ freedBytes: 0, minIntervalMs: 0 }));
    expect(s.quiet(0, 0)).toBe(false);
    expect(s.check(0, at(1000, 0))).toBe(false);
    expect(s.check(100_000, at(0, 1000))).toBe(false);
    expect(() => new TrimScheduler(policy({ freedBytes: -1 }))).toThrow(/freedBytes must be a non-negative number/);
    expect(() => new TrimScheduler(policy({ minIntervalMs: Number.NaN }))).toThrow(/minIntervalMs must be a non-negative number/);
    expect(() => new TrimScheduler(policy({ maxLoopUtilization: 0 }))).toThrow(/maxLoopUtilization must be in \(0, 1\]/);
    expect(() => new TrimScheduler(policy({ quietChecks: 0 }))).toThrow(/quietChecks must be a positive integer/);
    expect(() => new TrimScheduler(DEFAULT_TRIM_POLICY)).not.toThrow();
  });
});

describe('TrimScheduler: only when quiet', () => {
  it('reads the allocator only after the loop stayed under the utilization bound for quietChecks checks in a row', () => {
    const s = new TrimScheduler(policy({ quietChecks: 3 }));
    expect(s.quiet(0, 0.05)).toBe(false);
    expect(s.quiet(2_000, 0.1)).toBe(false);
    expect(s.quiet(4_000, 0.9)).toBe(false); // a busy check starts the count again
    expect(s.quiet(6_000, 0.1)).toBe(false);
    expect(s.quiet(8_000, 0.1)).toBe(false);
    expect(s.quiet(10_000, 0.19)).toBe(true);
    expect(s.quiet(12_000, 0.2)).toBe(false); // at the bound is busy
  });

  it('counts a check as busy while the machine is short of CPU (PSI above maxCpuPressure), not when the pressure is unknown', () => {
    const s = new TrimScheduler(policy({ quietChecks: 2, maxCpuPressure: 40 }));
    expect(s.quiet(0, 0.01, 10)).toBe(false);
    expect(s.quiet(2_000, 0.01, 85.5)).toBe(false); // an idle node on a saturated machine: the count starts again
    expect(s.quiet(4_000, 0.01, 40)).toBe(false); // at the bound is not starved
    expect(s.quiet(6_000, 0.01, undefined)).toBe(true); // no PSI: only the loop counts
    const ungated = new TrimScheduler(policy({ quietChecks: 1 }));
    expect(ungated.quiet(0, 0.01, 99)).toBe(true); // no maxCpuPressure in the policy: no gate
    expect(() => new TrimScheduler(policy({ maxCpuPressure: 101 }))).toThrow(/maxCpuPressure must be in \[0, 100\]/);
    expect(DEFAULT_TRIM_POLICY.maxCpuPressure).toBe(40);
    expect([s.starved(40.01), s.starved(40), s.starved(undefined), ungated.starved(100)]).toEqual([true, false, false, false]);
  });

  it('reads PSI\'s "some avg10" from /proc/pressure/cpu text', () => {
    expect(parseCpuPressure('some avg10=22.32 avg60=14.39 avg300=16.58 total=17745252682\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n')).toBe(22.32);
    expect(parseCpuPressure('some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n')).toBe(0);
    expect(parseCpuPressure('')).toBeUndefined();
    expect(parseCpuPressure('full avg10=3.00 avg60=0.00 avg300=0.00 total=0\n')).toBeUndefined();
    const here = readCpuPressure(); // this machine's, where the kernel has PSI
    if (here !== undefined) expect(here).toBeGreaterThanOrEqual(0);
  });

  it('trims again when the allocator holds the threshold free and the anonymous memory grew by it since the last trim (its totals alone did not move)', () => {
    const s = new TrimScheduler(policy({ freedBytes: 64 * MiB, minIntervalMs: 0 }));
    expect(s.check(0, at(100, 200), 500 * MiB)).toBe(true);
    s.trimmed(1_000, at(100, 200), 300 * MiB); // given back; glibc still counts the 200 MiB as free
    expect(s.check(2_000, at(100, 210), 340 * MiB)).toBe(false); // +40 MiB resident, +10 free: not yet
    expect(s.check(3_000, at(100, 210), 380 * MiB)).toBe(true); // +80 MiB resident with 210 MiB free
    s.trimmed(4_000, at(100, 210), 300 * MiB);
    expect(s.check(5_000, at(100, 40), 400 * MiB)).toBe(false); // grown, but too little free to give back: in use, not free
    expect(s.check(6_000, at(100, 210), undefined)).toBe(false); // anonymous memory not known: the totals only
    const r = readAnonRss();
    if (process.platform === 'linux') expect(r).toBeGreaterThan(0);
  });

  it('says not quiet during the least interval after a trim, nor while one runs', () => {
    const s = new TrimScheduler(policy({ quietChecks: 1, minIntervalMs: 60_000 }));
    expect(s.quiet(0, 0)).toBe(true);
    expect(s.check(0, at(10, 100))).toBe(true);
    expect(s.quiet(2_000, 0)).toBe(false); // running
    s.trimmed(3_000, at(10, 100));
    expect(s.quiet(30_000, 0)).toBe(false);
    expect(s.quiet(63_000, 0)).toBe(true);
    expect(s.check(63_000, at(10, 120))).toBe(false); // only 20 MiB more free since the trim
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
