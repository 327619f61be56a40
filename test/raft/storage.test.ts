// Covers src/raft/storage.ts: MemoryStorage append/truncation, bounds errors, createSnapshot + compact, applySnapshot, plus a fast-check model test.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LogCompactedError, MemoryStorage, LogUnavailableError } from '../../src/raft/storage.js';
import { EntryType, type ConfState, type Entry, type Snapshot } from '../../src/raft/types.js';

const ent = (index: number, term: number, tag = 0): Entry => ({
  index,
  term,
  type: EntryType.Normal,
  data: new Uint8Array([tag]),
});
const ents = (...terms: number[]): Entry[] => terms.map((t, i) => ent(i + 1, t));
const idxTerm = (es: readonly Entry[]): [number, number][] => es.map((e) => [e.index, e.term]);
const conf = (...voters: number[]): ConfState => ({ voters, learners: [] });
const snapAt = (index: number, term: number, c: ConfState = conf(1)): Snapshot => ({
  meta: { index, term, conf: c },
  data: new Uint8Array([index]),
});

describe('MemoryStorage', () => {
  it('starts empty with the dummy entry at index 0', () => {
    const s = new MemoryStorage(conf(1, 2, 3));
    expect(s.firstIndex()).toBe(1);
    expect(s.lastIndex()).toBe(0);
    expect(s.term(0)).toBe(0);
    expect(s.entries(1, 1)).toEqual([]);
    expect(s.size).toBe(0);
    expect(s.snapshot()).toBeUndefined();
    expect(s.initialState()).toEqual({ hardState: { term: 0, vote: 0, commit: 0 }, conf: conf(1, 2, 3) });
  });

  it('defaults to an empty configuration', () => {
    expect(new MemoryStorage().initialState().conf).toEqual({ voters: [], learners: [] });
  });

  it('records hard state and configuration', () => {
    const s = new MemoryStorage();
    s.setHardState({ term: 3, vote: 2, commit: 0 });
    s.setConfState(conf(4));
    expect(s.initialState()).toEqual({ hardState: { term: 3, vote: 2, commit: 0 }, conf: conf(4) });
  });

  describe('append', () => {
    it('appends consecutive entries', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1));
      s.append([ent(3, 2)]);
      expect(s.lastIndex()).toBe(3);
      expect(s.size).toBe(3);
      expect(idxTerm(s.entries(1, 4))).toEqual([
        [1, 1],
        [2, 1],
        [3, 2],
      ]);
      s.append([]);
      expect(s.lastIndex()).toBe(3);
    });

    it('truncates the suffix it overwrites', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1, 1, 1, 1));
      s.append([ent(3, 2), ent(4, 2)]);
      expect(s.lastIndex()).toBe(4);
      expect(s.term(2)).toBe(1);
      expect(s.term(3)).toBe(2);
      expect(s.term(4)).toBe(2);
      expect(() => s.term(5)).toThrow(LogUnavailableError);
      // Overwriting with a longer tail.
      s.append([ent(2, 3), ent(3, 3), ent(4, 3), ent(5, 3), ent(6, 3)]);
      expect(idxTerm(s.entries(1, 7)).map(([, t]) => t)).toEqual([1, 3, 3, 3, 3, 3]);
    });

    it('throws on a gap', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1));
      expect(() => s.append([ent(4, 1)])).toThrow(/missing log entries/);
      expect(s.lastIndex()).toBe(2);
    });

    it('skips entries already compacted away', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1, 1, 1));
      s.createSnapshot(3, conf(1), new Uint8Array());
      s.compact(3);
      s.append([ent(2, 1, 9), ent(3, 1, 9), ent(4, 2, 9), ent(5, 2, 9)]);
      expect(s.firstIndex()).toBe(4);
      expect(s.lastIndex()).toBe(5);
      expect(s.entries(4, 6).map((e) => [e.index, e.term, e.data[0]])).toEqual([
        [4, 2, 9],
        [5, 2, 9],
      ]);
      // An append entirely below the first index does nothing.
      s.append([ent(1, 1), ent(2, 1)]);
      expect(s.lastIndex()).toBe(5);
    });
  });

  describe('bounds', () => {
    // Entries 1..6, compacted through 3: dummy at 3, live 4..6.
    const mk = (): MemoryStorage => {
      const s = new MemoryStorage();
      s.append(ents(1, 2, 3, 4, 5, 6));
      s.createSnapshot(3, conf(1), new Uint8Array());
      s.compact(3);
      return s;
    };

    it('term: dummy is readable, below is compacted, beyond is unavailable', () => {
      const s = mk();
      expect(s.term(3)).toBe(3);
      expect(s.term(6)).toBe(6);
      expect(() => s.term(2)).toThrow(LogCompactedError);
      expect(() => s.term(0)).toThrow(LogCompactedError);
      expect(() => s.term(7)).toThrow(LogUnavailableError);
    });

    it('entries: lo at or below the dummy is compacted, hi beyond last+1 is unavailable', () => {
      const s = mk();
      expect(idxTerm(s.entries(4, 7))).toEqual([
        [4, 4],
        [5, 5],
        [6, 6],
      ]);
      expect(idxTerm(s.entries(5, 6))).toEqual([[5, 5]]);
      expect(s.entries(7, 7)).toEqual([]);
      expect(() => s.entries(3, 5)).toThrow(LogCompactedError);
      expect(() => s.entries(2, 5)).toThrow(LogCompactedError);
      expect(() => s.entries(4, 8)).toThrow(LogUnavailableError);
    });

    it('errors carry their names', () => {
      const s = mk();
      try {
        s.term(1);
        expect.unreachable();
      } catch (e) {
        expect((e as Error).name).toBe('LogCompactedError');
      }
      try {
        s.entries(4, 10);
        expect.unreachable();
      } catch (e) {
        expect((e as Error).name).toBe('LogUnavailableError');
      }
    });
  });

  describe('createSnapshot and compact', () => {
    it('createSnapshot records a snapshot without discarding entries', () => {
      const s = new MemoryStorage(conf(1));
      s.append(ents(1, 1, 2, 2, 3));
      const data = new Uint8Array([7, 7]);
      const snap = s.createSnapshot(4, conf(1, 2), data);
      expect(snap.meta).toEqual({ index: 4, term: 2, conf: conf(1, 2) });
      expect(snap.data).toBe(data);
      expect(s.snapshot()).toBe(snap);
      expect(s.initialState().conf).toEqual(conf(1, 2));
      expect(s.firstIndex()).toBe(1);
      expect(s.size).toBe(5);
    });

    it('createSnapshot at or below the existing snapshot returns the existing one', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1, 2, 2, 3));
      const snap = s.createSnapshot(4, conf(1), new Uint8Array());
      expect(s.createSnapshot(3, conf(9), new Uint8Array())).toBe(snap);
      expect(s.createSnapshot(4, conf(9), new Uint8Array())).toBe(snap);
      expect(s.initialState().conf).toEqual(conf(1));
      const newer = s.createSnapshot(5, conf(2), new Uint8Array());
      expect(newer.meta.index).toBe(5);
      expect(newer.meta.term).toBe(3);
    });

    it('createSnapshot beyond the last index throws', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1));
      expect(() => s.createSnapshot(3, conf(1), new Uint8Array())).toThrow(LogUnavailableError);
      expect(s.snapshot()).toBeUndefined();
    });

    it('compact discards entries up to the index, keeping its term', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1, 2, 2, 3));
      s.createSnapshot(3, conf(1), new Uint8Array());
      s.compact(3);
      expect(s.firstIndex()).toBe(4);
      expect(s.lastIndex()).toBe(5);
      expect(s.size).toBe(2);
      expect(s.term(3)).toBe(2);
      expect(idxTerm(s.entries(4, 6))).toEqual([
        [4, 2],
        [5, 3],
      ]);
      // Compacting at or below the current dummy is a no-op.
      s.compact(2);
      s.compact(3);
      expect(s.firstIndex()).toBe(4);
      expect(s.size).toBe(2);
      // Beyond the log throws.
      expect(() => s.compact(6)).toThrow(LogUnavailableError);
      // Compact everything.
      s.compact(5);
      expect(s.firstIndex()).toBe(6);
      expect(s.lastIndex()).toBe(5);
      expect(s.size).toBe(0);
      expect(s.term(5)).toBe(3);
      s.append([ent(6, 4)]);
      expect(s.lastIndex()).toBe(6);
    });
  });

  describe('applySnapshot', () => {
    it('replaces the whole log and the configuration', () => {
      const s = new MemoryStorage(conf(1));
      s.append(ents(1, 1, 1, 1));
      const snap = snapAt(10, 4, conf(1, 2, 3));
      s.applySnapshot(snap);
      expect(s.snapshot()).toBe(snap);
      expect(s.firstIndex()).toBe(11);
      expect(s.lastIndex()).toBe(10);
      expect(s.size).toBe(0);
      expect(s.term(10)).toBe(4);
      expect(() => s.term(4)).toThrow(LogCompactedError);
      expect(() => s.entries(4, 5)).toThrow(LogCompactedError);
      expect(s.initialState().conf).toEqual(conf(1, 2, 3));
      s.append([ent(11, 4)]);
      expect(s.lastIndex()).toBe(11);
    });

    it('replaces the log even when the snapshot is behind the last index', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1, 1, 1, 1, 1));
      s.applySnapshot(snapAt(3, 2));
      expect(s.firstIndex()).toBe(4);
      expect(s.lastIndex()).toBe(3);
      expect(s.term(3)).toBe(2);
    });

    it('ignores snapshots not newer than the current one', () => {
      const s = new MemoryStorage();
      const snap = snapAt(10, 4, conf(1, 2));
      s.applySnapshot(snap);
      s.append([ent(11, 4), ent(12, 5)]);
      s.applySnapshot(snapAt(8, 3, conf(7)));
      s.applySnapshot(snapAt(10, 4, conf(8)));
      expect(s.snapshot()).toBe(snap);
      expect(s.initialState().conf).toEqual(conf(1, 2));
      expect(s.lastIndex()).toBe(12);
      const newer = snapAt(20, 6, conf(3));
      s.applySnapshot(newer);
      expect(s.snapshot()).toBe(newer);
      expect(s.firstIndex()).toBe(21);
      expect(s.lastIndex()).toBe(20);
      expect(s.initialState().conf).toEqual(conf(3));
    });

    it('ignores a snapshot older than one created locally', () => {
      const s = new MemoryStorage();
      s.append(ents(1, 1, 2, 2, 3, 3));
      const local = s.createSnapshot(5, conf(1), new Uint8Array());
      s.applySnapshot(snapAt(4, 2, conf(9)));
      expect(s.snapshot()).toBe(local);
      expect(s.lastIndex()).toBe(6);
      expect(s.firstIndex()).toBe(1);
    });
  });

  it('behaves like an array model under random appends and compactions', () => {
    type Op = { kind: 'append'; back: number; count: number; term: number } | { kind: 'compact'; back: number };
    const opArb: fc.Arbitrary<Op> = fc.oneof(
      {
        weight: 4,
        arbitrary: fc.record({
          kind: fc.constant('append' as const),
          back: fc.integer({ min: 0, max: 4 }),
          count: fc.integer({ min: 1, max: 4 }),
          term: fc.integer({ min: 1, max: 9 }),
        }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('compact' as const), back: fc.integer({ min: 0, max: 4 }) }) },
    );
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), (ops) => {
        const s = new MemoryStorage();
        // model[i] = term of entry i (index 0 is the dummy).
        const model: number[] = [0];
        let first = 1;
        let tag = 0;
        for (const op of ops) {
          const last = model.length - 1;
          if (op.kind === 'append') {
            const start = Math.max(1, last + 1 - op.back);
            const batch: Entry[] = [];
            for (let k = 0; k < op.count; k++) batch.push(ent(start + k, op.term, ++tag % 256));
            s.append(batch);
            // Entries below the first index are skipped; an append wholly below it is a no-op.
            if (start + op.count > first) {
              for (const e of batch) if (e.index >= first) model[e.index] = e.term;
              model.length = start + op.count;
            }
          } else {
            const at = last - op.back;
            if (at >= first) {
              s.compact(at);
              first = at + 1;
            }
          }
          expect(s.firstIndex()).toBe(first);
          expect(s.lastIndex()).toBe(model.length - 1);
          expect(s.size).toBe(model.length - first);
          expect(s.term(first - 1)).toBe(model[first - 1]);
          const got = s.entries(first, model.length).map((e) => e.term);
          expect(got).toEqual(model.slice(first));
          expect(s.entries(first, model.length).map((e) => e.index)).toEqual(
            model.slice(first).map((_, k) => first + k),
          );
        }
      }),
      { numRuns: 300 },
    );
  });
});
