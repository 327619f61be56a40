/** Property tests that `list` pagination never skips or duplicates keys, even with writes between pages. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvStateMachine } from '../../src/statemachine/index.js';
import { byteCompare } from './reference-model.js';

const keyArb = fc.string({ unit: fc.constantFrom('a', 'b', '/', '\u00e9', '\ue000', '\u{1f600}'), minLength: 1, maxLength: 5 });
const prefixArb = fc.string({ unit: fc.constantFrom('a', 'b', '/', '\ue000', '\u{1f600}'), maxLength: 2 });
const mutationArb = fc.record({ key: keyArb, del: fc.boolean() });

describe('list pagination', () => {
  it('pages of a static key set concatenate to exactly the sorted prefix range (property)', () => {
    fc.assert(
      fc.property(fc.uniqueArray(keyArb, { maxLength: 60 }), prefixArb, fc.integer({ min: 1, max: 7 }), fc.boolean(), (keys, prefix, limit, keysOnly) => {
        const m = new KvStateMachine();
        keys.forEach((k, i) => m.apply(i + 1, 0, { type: 'put', key: k, value: new Uint8Array([i]) }));
        const got: string[] = [];
        let after: string | undefined;
        for (;;) {
          const page = m.list(prefix, { limit, keysOnly, ...(after === undefined ? {} : { after }) });
          expect(page.items.length).toBeLessThanOrEqual(limit);
          for (const it of page.items) expect('value' in it).toBe(!keysOnly);
          got.push(...page.items.map((i) => i.key));
          if (page.nextAfter === undefined) break;
          expect(page.nextAfter).toBe(page.items[page.items.length - 1]!.key);
          after = page.nextAfter;
        }
        expect(got).toEqual(keys.filter((k) => k.startsWith(prefix)).sort(byteCompare));
      }),
      { numRuns: 500 },
    );
  });

  it('with writes between pages: strictly increasing, no duplicates, no stable key skipped (property)', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(keyArb, { maxLength: 50 }),
        prefixArb,
        fc.integer({ min: 1, max: 5 }),
        fc.array(fc.array(mutationArb, { maxLength: 4 }), { maxLength: 30 }),
        (keys, prefix, limit, between) => {
          const m = new KvStateMachine();
          let index = 0;
          keys.forEach((k) => m.apply(++index, 0, { type: 'put', key: k, value: new Uint8Array(0) }));
          const touched = new Set<string>();
          const got: string[] = [];
          let after: string | undefined;
          for (let page = 0; ; page++) {
            const res = m.list(prefix, { limit, ...(after === undefined ? {} : { after }) });
            for (const item of res.items) expect(m.get(item.key)).toBeDefined(); // live when returned
            got.push(...res.items.map((i) => i.key));
            if (res.nextAfter === undefined) break;
            after = res.nextAfter;
            for (const mu of between[page % Math.max(1, between.length)] ?? []) {
              touched.add(mu.key);
              m.apply(++index, 0, mu.del ? { type: 'delete', key: mu.key } : { type: 'put', key: mu.key, value: new Uint8Array(1) });
            }
          }
          for (let i = 1; i < got.length; i++) expect(byteCompare(got[i - 1]!, got[i]!)).toBeLessThan(0);
          const stable = keys.filter((k) => k.startsWith(prefix) && !touched.has(k));
          for (const k of stable) expect(got).toContain(k);
          for (const k of got) expect(k.startsWith(prefix)).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });
});
