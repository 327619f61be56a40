/** Tests that key ordering equals UTF-8 byte order and that UTF-8 length/well-formedness checks are exact. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareKeys, lowerBound, upperBound, utf8ByteLength } from '../../src/statemachine/keys.js';

const wellFormed = fc.string({ unit: 'grapheme', maxLength: 8 });
const sign = (n: number): number => (n < 0 ? -1 : n > 0 ? 1 : 0);

describe('keys', () => {
  it('compareKeys equals byte order of UTF-8 encodings (property)', () => {
    fc.assert(
      fc.property(wellFormed, wellFormed, (a, c) => {
        expect(sign(compareKeys(a, c))).toBe(sign(Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(c, 'utf8'))));
      }),
      { numRuns: 2000 },
    );
    expect(compareKeys('\ue000', '\u{1f600}')).toBeLessThan(0); // JS '<' says the opposite
    expect('\ue000' < '\u{1f600}').toBe(false);
  });

  it('utf8ByteLength matches Buffer.byteLength and flags lone surrogates', () => {
    fc.assert(
      fc.property(wellFormed, (k) => {
        expect(utf8ByteLength(k)).toBe(Buffer.byteLength(k, 'utf8'));
      }),
    );
    for (const bad of ['\ud800', 'a\udc00', '\ud800a', '\udbff\ud800']) expect(utf8ByteLength(bad)).toBe(-1);
  });

  it('lowerBound/upperBound find insertion points (property)', () => {
    fc.assert(
      fc.property(fc.uniqueArray(wellFormed), wellFormed, (arr, k) => {
        const sorted = [...arr].sort(compareKeys);
        const lo = lowerBound(sorted, k);
        const hi = upperBound(sorted, k);
        expect(sorted.slice(0, lo).every((x) => compareKeys(x, k) < 0)).toBe(true);
        expect(sorted.slice(lo).every((x) => compareKeys(x, k) >= 0)).toBe(true);
        expect(hi - lo).toBe(sorted.includes(k) ? 1 : 0);
      }),
    );
  });
});
