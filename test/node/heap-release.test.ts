/**
 * The forced GC after a snapshot install (src/node/heap-release.ts): when it runs (after the
 * delay, at most one per interval, requests joining a pending one, none after stop), that the
 * engine's gc is reachable without `--expose-gc` and frees a heap of garbage.
 */
import { describe, expect, it } from 'vitest';
import { HeapRelease, loadForcedGc, type HeapReleaseClock, type HeapReleaseResult } from '../../src/node/heap-release.js';

/** A clock whose timers fire when the test advances it. */
function fakeClock(): HeapReleaseClock & { advance(ms: number): void; timers: number } {
  let now = 0;
  let timers: Array<{ at: number; fn: () => void; live: boolean }> = [];
  return {
    now: () => now,
    setTimeout(fn, ms) {
      const t = { at: now + ms, fn, live: true };
      timers.push(t);
      return t;
    },
    clearTimeout(h) {
      (h as { live: boolean }).live = false;
    },
    advance(ms) {
      const until = now + ms;
      for (;;) {
        const due = timers.filter((t) => t.live && t.at <= until).sort((a, b) => a.at - b.at)[0];
        if (!due) break;
        now = due.at;
        due.live = false;
        due.fn();
      }
      now = until;
      timers = timers.filter((t) => t.live);
    },
    get timers() {
      return timers.filter((t) => t.live).length;
    },
  };
}

describe('HeapRelease', () => {
  it('collects once, delayMs after the first request; requests meanwhile join it', () => {
    const clock = fakeClock();
    let gcs = 0;
    const results: HeapReleaseResult[] = [];
    let used = 400;
    const h = new HeapRelease(() => { gcs++; used = 60; }, { delayMs: 2000, minIntervalMs: 30_000 }, (r) => results.push(r), () => used, clock);
    h.request('install 1');
    clock.advance(1000);
    h.request('install 2');
    expect(h.pending).toBe(true);
    clock.advance(999);
    expect(gcs).toBe(0);
    clock.advance(1);
    expect(gcs).toBe(1);
    expect(h.pending).toBe(false);
    expect(results).toEqual([{ reason: 'install 1', heapUsedBefore: 400, heapUsedAfter: 60, pauseMs: 0 }]);
  });

  it('runs at most one collection per minIntervalMs: a later request waits for the interval\'s end', () => {
    const clock = fakeClock();
    const at: number[] = [];
    const h = new HeapRelease(() => at.push(clock.now()), { delayMs: 2000, minIntervalMs: 30_000 }, () => {}, () => 0, clock);
    h.request('a');
    clock.advance(2000);
    h.request('b'); // at 2 s: the interval runs to 32 s
    clock.advance(29_999);
    expect(at).toEqual([2000]);
    clock.advance(1);
    expect(at).toEqual([2000, 32_000]);
    h.request('c'); // long after: only the delay
    clock.advance(100_000);
    expect(at).toEqual([2000, 32_000, 62_000]);
  });

  it('stop cancels a pending collection and ignores later requests', () => {
    const clock = fakeClock();
    let gcs = 0;
    const h = new HeapRelease(() => gcs++, { delayMs: 10, minIntervalMs: 10 }, () => {}, () => 0, clock);
    h.request('a');
    h.stop();
    h.request('b');
    clock.advance(1000);
    expect(gcs).toBe(0);
    expect(clock.timers).toBe(0);
  });
});

describe('loadForcedGc', () => {
  it('reaches V8\'s full GC without --expose-gc, and it frees a heap of garbage', () => {
    const gc = loadForcedGc();
    expect(typeof gc).toBe('function');
    expect(loadForcedGc()).toBe(gc); // loaded once
    let junk: Array<{ i: number; s: string }> | null = [];
    for (let i = 0; i < 1_000_000; i++) junk.push({ i, s: `x${i}` });
    const held = process.memoryUsage().heapUsed;
    junk = null;
    gc!();
    expect(process.memoryUsage().heapUsed).toBeLessThan(held - 40 * 2 ** 20);
  });
});
