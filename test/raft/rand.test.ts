// Covers src/raft/rand.ts: SeededRandom determinism, nextInt bounds/uniformity (loose chi-square), nextFloat range and invalid bounds.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SeededRandom } from '../../src/raft/rand.js';

const take = (r: SeededRandom, n: number): number[] => Array.from({ length: n }, () => r.nextU32());

describe('SeededRandom', () => {
  it('the same seed gives the same sequence', () => {
    fc.assert(
      fc.property(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), (seed) => {
        const a = new SeededRandom(seed);
        const b = new SeededRandom(seed);
        expect(take(a, 20)).toEqual(take(b, 20));
        const c = new SeededRandom(seed);
        const d = new SeededRandom(seed);
        for (let i = 0; i < 20; i++) expect(c.nextInt(17)).toBe(d.nextInt(17));
      }),
      { numRuns: 200 },
    );
  });

  it('different seeds give different sequences', () => {
    const seeds = [0, 1, 2, 3, 42, 1234, 99999, -1, 2 ** 31 - 1];
    const seqs = seeds.map((s) => take(new SeededRandom(s), 8).join(','));
    expect(new Set(seqs).size).toBe(seeds.length);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 0, max: 2 ** 32 - 1 }), (s1, s2) => {
        fc.pre(s1 !== s2);
        expect(take(new SeededRandom(s1), 4)).not.toEqual(take(new SeededRandom(s2), 4));
      }),
      { numRuns: 200 },
    );
  });

  it('does not repeat its first value immediately', () => {
    const r = new SeededRandom(7);
    const xs = take(r, 1000);
    expect(new Set(xs).size).toBeGreaterThan(990);
  });

  it('nextU32 yields unsigned 32-bit integers', () => {
    const r = new SeededRandom(123);
    for (let i = 0; i < 1000; i++) {
      const x = r.nextU32();
      expect(Number.isInteger(x)).toBe(true);
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThan(2 ** 32);
    }
  });

  it('nextInt stays in [0, n) and yields integers', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), fc.integer({ min: 1, max: 1_000_000 }), (seed, n) => {
        const r = new SeededRandom(seed);
        for (let i = 0; i < 50; i++) {
          const x = r.nextInt(n);
          expect(Number.isInteger(x)).toBe(true);
          expect(x).toBeGreaterThanOrEqual(0);
          expect(x).toBeLessThan(n);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('nextInt(1) is always 0', () => {
    const r = new SeededRandom(5);
    for (let i = 0; i < 100; i++) expect(r.nextInt(1)).toBe(0);
  });

  it.each([1, 7, 2024, 0xdeadbeef])('nextInt is roughly uniform (seed %i)', (seed) => {
    const r = new SeededRandom(seed);
    const buckets = 10;
    const draws = 10_000;
    const counts = new Array<number>(buckets).fill(0);
    for (let i = 0; i < draws; i++) counts[r.nextInt(buckets)]!++;
    const expected = draws / buckets;
    const chi2 = counts.reduce((acc, c) => acc + ((c - expected) ** 2) / expected, 0);
    // 9 degrees of freedom: the 99.99th percentile is about 33.7; allow generous slack.
    expect(chi2).toBeLessThan(40);
    for (const c of counts) {
      expect(c).toBeGreaterThan(expected * 0.85);
      expect(c).toBeLessThan(expected * 1.15);
    }
  });

  it('every value of a small range shows up (election timeout spread)', () => {
    const r = new SeededRandom(11);
    const seen = new Set<number>();
    for (let i = 0; i < 500; i++) seen.add(10 + r.nextInt(10));
    expect([...seen].sort((a, b) => a - b)).toEqual([10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
  });

  it('nextFloat is in [0, 1) with a mean near 0.5', () => {
    const r = new SeededRandom(3);
    let sum = 0;
    for (let i = 0; i < 10_000; i++) {
      const f = r.nextFloat();
      expect(f).toBeGreaterThanOrEqual(0);
      expect(f).toBeLessThan(1);
      sum += f;
    }
    expect(Math.abs(sum / 10_000 - 0.5)).toBeLessThan(0.02);
  });

  it.each([0, -1, -100, Number.NaN])('nextInt(%s) throws RangeError', (n) => {
    const r = new SeededRandom(1);
    expect(() => r.nextInt(n)).toThrow(RangeError);
  });

  it('a failed nextInt does not consume randomness', () => {
    const a = new SeededRandom(9);
    const b = new SeededRandom(9);
    expect(() => a.nextInt(0)).toThrow();
    expect(a.nextU32()).toBe(b.nextU32());
  });
});
