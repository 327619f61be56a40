/** The Bloom filter that stands in for the live-key set's "never live" test (issue 17): no false negatives, a low false-positive rate, bounded bits. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KeyFilter } from '../../src/statemachine/key-filter.js';

describe('KeyFilter', () => {
  it('answers maybe for every key added (no false negatives, whatever the keys)', () => {
    fc.assert(
      fc.property(fc.array(fc.string({ unit: 'grapheme', maxLength: 40 }), { maxLength: 3000 }), (keys) => {
        const f = new KeyFilter();
        for (const k of keys) f.add(k);
        for (const k of keys) expect(f.mayContain(k)).toBe(true);
      }),
      { numRuns: 40, seed: 17 },
    );
  });

  it('keeps false positives near 1 % while it may grow, and its bits within the bound once it may not', () => {
    const f = new KeyFilter();
    for (let i = 0; i < 50_000; i++) f.add(`/bench/${String(i).padStart(8, '0')}`);
    let fp = 0;
    for (let i = 0; i < 20_000; i++) if (f.mayContain(`/other/${i}`)) fp++;
    expect(fp / 20_000).toBeLessThan(0.03);
    expect(f.bytes).toBeLessThan(50_000 * 4); // a few bytes per key, not tens
    const bounded = new KeyFilter(1 << 18); // 32 KiB
    for (let i = 0; i < 100_000; i++) bounded.add(`k${i}`);
    expect(bounded.bytes).toBeLessThanOrEqual((1 << 18) / 8);
    for (let i = 0; i < 100_000; i += 97) expect(bounded.mayContain(`k${i}`)).toBe(true); // past the bound: still no false negatives
  });
});
