/** IndexCache: CLOCK eviction by accounted bytes, checked against a reference queue over long churn (the eviction hand is one live iterator). */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IndexCache, INDEX_CACHE_ENTRY_OVERHEAD_BYTES } from '../../src/storage/index-cache.js';
import type { VersionRecord } from '../../src/statemachine/index.js';

const head = (revision: number): VersionRecord => ({ revision, timestampMs: revision, value: null }) as unknown as VersionRecord;

/** The same policy on a plain array: oldest first, a used entry unmarked and moved to the back. */
class ReferenceClock {
  queue: Array<{ key: string; used: boolean; rev: number }> = [];
  held = 0;
  constructor(readonly max: number) {}
  cost(k: string): number {
    return k.length * 2 + INDEX_CACHE_ENTRY_OVERHEAD_BYTES;
  }
  get(k: string): number | undefined {
    const e = this.queue.find((x) => x.key === k);
    if (e) e.used = true;
    return e?.rev;
  }
  set(k: string, rev: number): void {
    const e = this.queue.find((x) => x.key === k);
    if (e) {
      e.rev = rev;
      e.used = true;
      return;
    }
    if (this.cost(k) > this.max) return;
    this.queue.push({ key: k, used: false, rev });
    this.held += this.cost(k);
    while (this.held > this.max) {
      const first = this.queue.shift()!;
      if (first.used) {
        first.used = false;
        this.queue.push(first);
        continue;
      }
      this.held -= this.cost(first.key);
    }
  }
}

describe('IndexCache', () => {
  it('evicts exactly as a reference CLOCK queue under long churn', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ get: fc.boolean(), key: fc.integer({ min: 0, max: 60 }) }), { minLength: 200, maxLength: 2000 }),
        fc.integer({ min: 1, max: 12 }),
        (ops, slots) => {
          const max = slots * (INDEX_CACHE_ENTRY_OVERHEAD_BYTES + 6); // keys 'k0'..'k60' cost 4-6 bytes + overhead
          const cache = new IndexCache(max);
          const ref = new ReferenceClock(max);
          ops.forEach((o, i) => {
            const key = `k${o.key}`;
            if (o.get) expect(cache.get(key)?.revision).toBe(ref.get(key));
            else {
              cache.set(key, head(i + 1));
              ref.set(key, i + 1);
            }
          });
          expect(cache.stats.bytes).toBe(ref.held);
          expect(cache.stats.entries).toBe(ref.queue.length);
          for (const e of ref.queue) expect(cache.get(e.key)?.revision).toBe(e.rev);
        },
      ),
      { numRuns: 100, seed: 17 },
    );
  });
});
