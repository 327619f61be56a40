/** The conformance suite of the raft `Storage` seam: what every implementation (MemoryStorage, RaftLogStore's views, live and reloaded from disk) must promise, as one function run against each. */
import fc from 'fast-check';
import { describe, expect, it as vit } from 'vitest';
import { LogCompactedError, LogUnavailableError, MemoryStorage, type Storage } from '../../src/raft/storage.js';
import { EntryType, type ConfState, type Entry, type HardState, type Snapshot } from '../../src/raft/types.js';

/**
 * One implementation of `Storage` with the writes a host makes through it. `storage()` is read
 * after every write (an implementation may hand out a new view, e.g. after a restart).
 */
export interface StorageUnderTest {
  storage(): Storage;
  /** Persists entries as Raft asks (a conflicting suffix is replaced). */
  append(entries: readonly Entry[]): Promise<void>;
  setHardState(hs: HardState): Promise<void>;
  /** Installs a snapshot received from the leader (replacing the whole log). */
  applySnapshot(snap: Snapshot): Promise<void>;
  /** Records a snapshot the state machine took at `index` (in the log) and discards the entries up to it. */
  snapshotAndCompact(index: number, conf: ConfState, data: Uint8Array): Promise<void>;
  /** Releases resources. */
  close(): Promise<void>;
}

/** Builds an empty implementation whose initial membership is `conf`. */
export type StorageFactory = (conf: ConfState) => Promise<StorageUnderTest>;

const enc = new TextEncoder();
const CONF: ConfState = { voters: [1, 2, 3], learners: [] };
const ent = (index: number, term: number, tag = ''): Entry => ({ index, term, type: EntryType.Normal, data: enc.encode(`${tag}${index}/${term}`) });
const ents = (from: number, to: number, term: number, tag = ''): Entry[] => Array.from({ length: to - from + 1 }, (_, i) => ent(from + i, term, tag));
const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const show = (es: readonly Entry[]): string[] => es.map((e) => `${e.index}/${e.term}/${e.type}/${hex(e.data)}`);

/** Everything a reader can observe through the interface, in comparable form. */
export function observe(s: Storage): unknown {
  const first = s.firstIndex();
  const last = s.lastIndex();
  const snap = s.snapshot();
  const init = s.initialState();
  return {
    first,
    last,
    log: show(s.entries(first, last + 1)),
    terms: Array.from({ length: last - first + 2 }, (_, i) => s.term(first - 1 + i)),
    snapshot: snap ? { meta: snap.meta, data: hex(snap.data) } : undefined,
    hardState: init.hardState,
    conf: init.conf,
  };
}

/** Runs the Storage conformance suite against the implementation `factory` builds. */
export function storageConformance(
  name: string,
  factory: StorageFactory,
  opts: {
    numRuns?: number;
    /** Cases this implementation is known to fail (title -> the divergence): they run as `it.fails`, so a fix shows up. */
    divergences?: Readonly<Record<string, string>>;
    /**
     * The reloaded hard state's commit index is a lower bound, not the last one written (as etcd:
     * a commit-only change is not written, and a restart relearns it from a quorum); it must never
     * exceed what was committed (the last written commit or the snapshot index).
     */
    commitIsLowerBound?: boolean;
  } = {},
): void {
  const withStore = async (fn: (s: StorageUnderTest) => Promise<void>): Promise<void> => {
    const s = await factory(CONF);
    try {
      await fn(s);
    } finally {
      await s.close();
    }
  };

  const it = (title: string, fn: () => Promise<void>): void => {
    const known = opts.divergences?.[title];
    (known !== undefined ? vit.fails : vit)(known !== undefined ? `${title} [known divergence: ${known}]` : title, fn);
  };

  describe(`Storage conformance: ${name}`, () => {
    it('starts empty: first 1, last 0, term(0) = 0, no snapshot, zero hard state, the initial membership', () =>
      withStore(async (s) => {
        const st = s.storage();
        expect(st.firstIndex()).toBe(1);
        expect(st.lastIndex()).toBe(0);
        expect(st.term(0)).toBe(0);
        expect(st.entries(1, 1)).toEqual([]);
        expect(st.snapshot()).toBeUndefined();
        expect(st.initialState().hardState).toEqual({ term: 0, vote: 0, commit: 0 });
        expect(st.initialState().conf).toEqual(CONF);
      }));

    it('append: entries [lo, hi) and terms read back exactly, data bytes and types intact', () =>
      withStore(async (s) => {
        const es = [...ents(1, 3, 1), { index: 4, term: 2, type: EntryType.ConfChange, data: new Uint8Array([0, 1, 255]) }, { index: 5, term: 2, type: EntryType.Normal, data: new Uint8Array(0) }];
        await s.append(es);
        const st = s.storage();
        expect(st.firstIndex()).toBe(1);
        expect(st.lastIndex()).toBe(5);
        expect(show(st.entries(1, 6))).toEqual(show(es));
        expect(show(st.entries(2, 4))).toEqual(show(es.slice(1, 3)));
        expect(st.entries(3, 3)).toEqual([]);
        expect([0, 1, 2, 3, 4, 5].map((i) => st.term(i))).toEqual([0, 1, 1, 1, 2, 2]);
      }));

    it('append: a conflicting suffix is replaced, shorter or longer', () =>
      withStore(async (s) => {
        await s.append(ents(1, 6, 1));
        await s.append(ents(4, 5, 2, 'b'));
        expect(s.storage().lastIndex()).toBe(5);
        expect(show(s.storage().entries(1, 6))).toEqual(show([...ents(1, 3, 1), ...ents(4, 5, 2, 'b')]));
        await s.append(ents(2, 8, 3, 'c'));
        expect(s.storage().lastIndex()).toBe(8);
        expect(show(s.storage().entries(1, 9))).toEqual(show([ent(1, 1), ...ents(2, 8, 3, 'c')]));
        await s.append(ents(9, 10, 3, 'c'));
        expect(s.storage().lastIndex()).toBe(10);
      }));

    it('reads outside the log: LogUnavailableError past the end, LogCompactedError before the start', () =>
      withStore(async (s) => {
        await s.append(ents(1, 5, 1));
        const st = s.storage();
        expect(() => st.entries(1, 7)).toThrow(LogUnavailableError);
        expect(() => st.term(6)).toThrow(LogUnavailableError);
        await s.snapshotAndCompact(3, CONF, enc.encode('snap'));
        const st2 = s.storage();
        expect(() => st2.entries(2, 4)).toThrow(LogCompactedError);
        expect(() => st2.entries(3, 4)).toThrow(LogCompactedError);
        expect(() => st2.term(2)).toThrow(LogCompactedError);
        expect(() => st2.term(6)).toThrow(LogUnavailableError);
      }));

    it('hard state round-trips, the last write winning', () =>
      withStore(async (s) => {
        await s.append(ents(1, 3, 2));
        await s.setHardState({ term: 2, vote: 3, commit: 1 });
        expect(s.storage().initialState().hardState).toEqual({ term: 2, vote: 3, commit: 1 });
        await s.setHardState({ term: 5, vote: 0, commit: 3 });
        expect(s.storage().initialState().hardState).toEqual({ term: 5, vote: 0, commit: 3 });
        expect(show(s.storage().entries(1, 4))).toEqual(show(ents(1, 3, 2)));
      }));

    it('compaction: entries up to the index are gone, the index keeps its term, later entries stay, the snapshot is reported', () =>
      withStore(async (s) => {
        await s.append([...ents(1, 4, 1), ...ents(5, 9, 2)]);
        const conf: ConfState = { voters: [1, 2, 3, 4], learners: [5] };
        await s.snapshotAndCompact(6, conf, enc.encode('state@6'));
        const st = s.storage();
        expect(st.firstIndex()).toBe(7);
        expect(st.lastIndex()).toBe(9);
        expect(st.term(6)).toBe(2);
        expect(show(st.entries(7, 10))).toEqual(show(ents(7, 9, 2)));
        const snap = st.snapshot()!;
        expect(snap.meta).toEqual({ index: 6, term: 2, conf });
        expect(hex(snap.data)).toBe(hex(enc.encode('state@6')));
        expect(st.initialState().conf).toEqual(conf);
        // An older snapshot changes nothing.
        await s.snapshotAndCompact(4, CONF, enc.encode('old'));
        expect(observe(s.storage())).toEqual(observe(st));
        // Appending continues after the compacted prefix.
        await s.append(ents(10, 11, 3));
        expect(s.storage().lastIndex()).toBe(11);
        expect(s.storage().firstIndex()).toBe(7);
      }));

    it('compacting the whole log leaves it empty at the snapshot index', () =>
      withStore(async (s) => {
        await s.append(ents(1, 4, 1));
        await s.snapshotAndCompact(4, CONF, enc.encode('all'));
        const st = s.storage();
        expect(st.firstIndex()).toBe(5);
        expect(st.lastIndex()).toBe(4);
        expect(st.term(4)).toBe(1);
        expect(st.entries(5, 5)).toEqual([]);
      }));

    it('installing a snapshot replaces the whole log; first = index + 1, last = index, term(index) = its term', () =>
      withStore(async (s) => {
        await s.append(ents(1, 5, 1));
        const conf: ConfState = { voters: [2, 3, 4], learners: [] };
        await s.applySnapshot({ meta: { index: 20, term: 4, conf }, data: enc.encode('leader state') });
        const st = s.storage();
        expect(st.firstIndex()).toBe(21);
        expect(st.lastIndex()).toBe(20);
        expect(st.term(20)).toBe(4);
        expect(() => st.entries(5, 6)).toThrow(LogCompactedError);
        expect(st.snapshot()?.meta).toEqual({ index: 20, term: 4, conf });
        expect(hex(st.snapshot()!.data)).toBe(hex(enc.encode('leader state')));
        expect(st.initialState().conf).toEqual(conf);
        await s.append(ents(21, 23, 4));
        expect(show(s.storage().entries(21, 24))).toEqual(show(ents(21, 23, 4)));
        // An older snapshot is ignored.
        await s.applySnapshot({ meta: { index: 10, term: 2, conf: CONF }, data: enc.encode('stale') });
        expect(s.storage().snapshot()?.meta.index).toBe(20);
        expect(s.storage().lastIndex()).toBe(23);
      }));

    it('entries at or below the snapshot index are skipped when appended', () =>
      withStore(async (s) => {
        await s.applySnapshot({ meta: { index: 10, term: 3, conf: CONF }, data: enc.encode('s') });
        await s.append(ents(8, 12, 3));
        const st = s.storage();
        expect(st.firstIndex()).toBe(11);
        expect(st.lastIndex()).toBe(12);
        expect(show(st.entries(11, 13))).toEqual(show(ents(11, 12, 3)));
      }));

    it('random append / hard state / compaction / snapshot sequences read back as the reference MemoryStorage does', async () => {
      type Op =
        | { kind: 'append'; at: number; n: number; bump: number }
        | { kind: 'hs'; vote: number; commit: number }
        | { kind: 'compact'; at: number }
        | { kind: 'install'; ahead: number };
      const op: fc.Arbitrary<Op> = fc.oneof(
        { arbitrary: fc.record({ kind: fc.constant('append' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 5 }), bump: fc.integer({ min: 0, max: 1 }) }), weight: 5 },
        { arbitrary: fc.record({ kind: fc.constant('hs' as const), vote: fc.integer({ min: 0, max: 3 }), commit: fc.nat() }), weight: 1 },
        { arbitrary: fc.record({ kind: fc.constant('compact' as const), at: fc.nat() }), weight: 1 },
        { arbitrary: fc.record({ kind: fc.constant('install' as const), ahead: fc.integer({ min: -3, max: 4 }) }), weight: 1 },
      );
      await fc.assert(
        fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
          const ref = new MemoryStorage(CONF);
          const s = await factory(CONF);
          try {
            let term = 1;
            let step = 0;
            for (const o of ops) {
              step++;
              const first = ref.firstIndex();
              const last = ref.lastIndex();
              if (o.kind === 'append') {
                // Start anywhere from the first index to just after the end (a conflicting suffix or a plain append).
                const start = first + (o.at % (last - first + 2));
                term += o.bump;
                const es = ents(start, start + o.n - 1, term, `s${step}-`);
                ref.append(es);
                await s.append(es);
              } else if (o.kind === 'hs') {
                // Raft never lowers its commit index, so neither does the sequence (a store that keeps
                // commit as a lower bound may hold a higher one than a lowered value; seed -1638069795).
                const prior = ref.initialState().hardState.commit;
                const hs = { term, vote: o.vote, commit: Math.max(prior, Math.min(o.commit, ref.lastIndex())) };
                ref.setHardState(hs);
                await s.setHardState(hs);
              } else if (o.kind === 'compact') {
                if (last < first) continue;
                const at = first + (o.at % (last - first + 1));
                const data = enc.encode(`snap${step}`);
                ref.createSnapshot(at, CONF, data);
                ref.compact(at);
                await s.snapshotAndCompact(at, CONF, data);
              } else {
                const index = Math.max(1, last + o.ahead);
                term += 1;
                const snap: Snapshot = { meta: { index, term, conf: { voters: [1, 2], learners: [step] } }, data: enc.encode(`inst${step}`) };
                ref.applySnapshot(snap);
                await s.applySnapshot(snap);
              }
              const got = observe(s.storage()) as { hardState: { commit: number } };
              const want = observe(ref) as { hardState: { commit: number }; snapshot?: { meta: { index: number } } };
              if (opts.commitIsLowerBound) {
                expect(got.hardState.commit).toBeLessThanOrEqual(Math.max(want.hardState.commit, want.snapshot?.meta.index ?? 0));
                got.hardState.commit = want.hardState.commit;
              }
              expect(got).toEqual(want);
            }
          } finally {
            await s.close();
          }
        }),
        { numRuns: opts.numRuns ?? 60 },
      );
    });
  });
}
