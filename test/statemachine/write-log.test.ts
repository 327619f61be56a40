/**
 * The packed write log and revision-time log (src/statemachine/write-log.ts, session `heapkey`):
 * every answer equals a plain array's through pushes, front drops and forgotten keys, across chunk
 * boundaries and with numbers that do not fit a chunk's 32-bit offsets.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PackedNumbers, WriteLog } from '../../src/statemachine/write-log.js';

type Op =
  | { readonly kind: 'push'; readonly step: number; readonly keyed: boolean; readonly count: number }
  | { readonly kind: 'drop'; readonly n: number }
  | { readonly kind: 'forget'; readonly pick: number };

// Steps: mostly small (a revision's next write, a clock tick), sometimes 0 (a txn's writes share a
// revision), sometimes past 2^32 (a chunk must hold doubles).
const stepArb = fc.oneof({ weight: 8, arbitrary: fc.nat(3) }, { weight: 1, arbitrary: fc.constant(2 ** 32 + 7) });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('push' as const), step: stepArb, keyed: fc.boolean(), count: fc.integer({ min: 1, max: 700 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('drop' as const), n: fc.nat(1500) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('forget' as const), pick: fc.nat() }) },
);

describe('PackedNumbers and WriteLog', () => {
  it('answer as plain arrays do (model-based: pushes, drops, forgotten keys; runs of up to 700 pushes cross the 1,024-entry chunks)', () => {
    let forgotten = 0;
    let wide = 0;
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), (ops) => {
        const nums = new PackedNumbers();
        const log = new WriteLog();
        const model: Array<{ revision: number; key: string | undefined }> = [];
        let last = 0;
        let serial = 0;
        for (const op of ops) {
          if (op.kind === 'push') {
            for (let i = 0; i < op.count; i++) {
              const v = last + (i === 0 ? op.step : i % 3 === 0 ? 0 : 1);
              if (v - last > 2 ** 32) wide++;
              last = v;
              const key = op.keyed ? `k${serial++}` : undefined;
              nums.push(v);
              log.push(v, key);
              model.push({ revision: v, key });
            }
          } else if (op.kind === 'drop') {
            nums.dropFront(op.n);
            log.dropFront(op.n);
            model.splice(0, op.n);
          } else {
            const keyed = model.filter((e) => e.key !== undefined);
            if (keyed.length === 0) {
              expect(log.forget(last + 1, 'k0')).toBe(false);
              continue;
            }
            const e = keyed[op.pick % keyed.length]!;
            expect(log.forget(e.revision, e.key!)).toBe(true);
            expect(log.forget(e.revision, e.key!)).toBe(false); // already keyless
            e.key = undefined;
            forgotten++;
          }
          expect(nums.length).toBe(model.length);
          expect(log.length).toBe(model.length);
        }
        expect(nums.toArray()).toEqual(model.map((e) => e.revision));
        for (let i = -1; i <= model.length; i++) {
          expect(nums.at(i)).toBe(model[i]?.revision);
          expect(log.revisionAt(i)).toBe(model[i]?.revision);
          expect(log.keyAt(i)).toBe(model[i]?.key);
        }
        expect(log.keylessEntries).toBe(model.filter((e) => e.key === undefined).length);
        // Binary searches (the numbers are non-decreasing, as the machine's are).
        const probes = new Set([-1, 0, ...model.map((e) => e.revision), ...model.map((e) => e.revision + 1)]);
        for (const x of probes) {
          const want = model.findIndex((e) => e.revision > x);
          expect(nums.firstGreater(x)).toBe(want < 0 ? model.length : want);
          expect(log.firstAfter(x)).toBe(want < 0 ? model.length : want);
        }
      }),
      { numRuns: 150, seed: 1717 },
    );
    expect(forgotten).toBeGreaterThan(50); // keys were forgotten,
    expect(wide).toBeGreaterThan(10); // and chunks had to hold doubles
  });

  it('holds about 4 bytes per number and 8 per write-log entry (typed chunks, no object per entry)', () => {
    const nums = new PackedNumbers();
    const log = new WriteLog();
    for (let i = 0; i < 10_000; i++) {
      nums.push(1_700_000_000_000 + i * 3); // millisecond timestamps: offsets from the chunk's first fit in 32 bits
      log.push(i + 1, undefined);
    }
    // Exactness is what the model test checks; here, that nothing went to doubles for such numbers.
    const chunks = (nums as unknown as { chunks: Array<{ wide: boolean; data: ArrayLike<number> }> }).chunks;
    expect(chunks.every((c) => !c.wide && c.data instanceof Uint32Array)).toBe(true);
    expect(log.keylessEntries).toBe(10_000);
    // A number below its chunk's first reads back too (the chunk holds doubles from then on).
    const down = new PackedNumbers();
    for (const v of [50, 60, 7, 2 ** 40, 0]) down.push(v);
    expect(down.toArray()).toEqual([50, 60, 7, 2 ** 40, 0]);
    log.dropFront(10_000);
    expect([log.length, log.keylessEntries, log.revisionAt(0)]).toEqual([0, 0, undefined]);
  });
});
