/** Property test of SortedKeySet against a plain sorted array under random adds, deletes and seeks. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareKeys } from '../../src/statemachine/keys.js';
import { SortedKeySet } from '../../src/statemachine/sorted-keys.js';

const keyArb = fc.string({ unit: fc.constantFrom('a', 'b', 'c', '\ue000', '\u{1f600}'), minLength: 1, maxLength: 4 });
const opArb = fc.record({ op: fc.constantFrom('add', 'add', 'delete', 'from', 'fromExclusive', 'has'), key: keyArb });

describe('SortedKeySet', () => {
  it('matches a sorted array under random operations, with tiny blocks to force splits and merges (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 4, max: 9 }), fc.uniqueArray(keyArb, { maxLength: 40 }), fc.array(opArb, { maxLength: 200 }), (blockSize, initial, ops) => {
        const ref = [...initial].sort(compareKeys);
        const set = SortedKeySet.fromSorted(ref, blockSize);
        for (const { op, key } of ops) {
          switch (op) {
            case 'add':
              expect(set.add(key)).toBe(!ref.includes(key));
              if (!ref.includes(key)) {
                ref.push(key);
                ref.sort(compareKeys);
              }
              break;
            case 'delete':
              expect(set.delete(key)).toBe(ref.includes(key));
              if (ref.includes(key)) ref.splice(ref.indexOf(key), 1);
              break;
            case 'has':
              expect(set.has(key)).toBe(ref.includes(key));
              break;
            case 'from':
              expect([...set.from(key)]).toEqual(ref.filter((k) => compareKeys(k, key) >= 0));
              break;
            case 'fromExclusive':
              expect([...set.from(key, true)]).toEqual(ref.filter((k) => compareKeys(k, key) > 0));
              break;
          }
          expect(set.size).toBe(ref.length);
        }
        expect(set.toArray()).toEqual(ref);
      }),
      { numRuns: 500 },
    );
  });

  it('rejects tiny block sizes', () => {
    expect(() => new SortedKeySet(2)).toThrow(RangeError);
  });
});
