// Covers src/raft/log.ts: RaftLog over MemoryStorage (append, maybeAppend, conflicts, isUpToDate, commit, slice, apply cursor, restore, stableTo) and limitSize.
import { describe, expect, it } from 'vitest';
import { limitSize, RaftLog } from '../../src/raft/log.js';
import { LogCompactedError, MemoryStorage, LogUnavailableError } from '../../src/raft/storage.js';
import { EntryType, type Entry, type Snapshot } from '../../src/raft/types.js';

const ent = (index: number, term: number, size = 0): Entry => ({
  index,
  term,
  type: EntryType.Normal,
  data: new Uint8Array(size),
});

/** Entries with the given terms at indexes 1, 2, ... */
const ents = (...terms: number[]): Entry[] => terms.map((t, i) => ent(i + 1, t));

const idx = (es: readonly Entry[]): number[] => es.map((e) => e.index);

/** A log whose storage already holds `stored`, and with `unstable` appended on top. */
function mkLog(stored: Entry[] = [], unstable: Entry[] = []): RaftLog {
  const s = new MemoryStorage();
  s.append(stored);
  const log = new RaftLog(s);
  if (unstable.length > 0) log.append(unstable);
  return log;
}

describe('RaftLog basics', () => {
  it('a fresh log is empty with the dummy entry at 0', () => {
    const log = mkLog();
    expect(log.firstIndex()).toBe(1);
    expect(log.lastIndex()).toBe(0);
    expect(log.lastTerm()).toBe(0);
    expect(log.term(0)).toBe(0);
    expect(log.term(1)).toBeUndefined();
    expect(log.committed).toBe(0);
    expect(log.applied).toBe(0);
  });

  it('starts committed/applied at the storage snapshot index', () => {
    const s = new MemoryStorage();
    s.append(ents(1, 1, 2, 2, 3));
    s.createSnapshot(3, { voters: [1], learners: [] }, new Uint8Array());
    s.compact(3);
    const log = new RaftLog(s);
    expect(log.firstIndex()).toBe(4);
    expect(log.lastIndex()).toBe(5);
    expect(log.committed).toBe(3);
    expect(log.applied).toBe(3);
    expect(log.term(3)).toBe(2);
    expect(log.term(2)).toBeUndefined();
    expect(log.unstable.offset).toBe(6);
  });
});

describe('RaftLog.append', () => {
  it('appends unstable entries after the stored ones', () => {
    const log = mkLog(ents(1, 1));
    expect(log.append([ent(3, 2), ent(4, 2)])).toBe(4);
    expect(log.lastIndex()).toBe(4);
    expect(log.unstable.offset).toBe(3);
    expect(idx(log.unstable.entries)).toEqual([3, 4]);
    expect(log.term(2)).toBe(1);
    expect(log.term(4)).toBe(2);
  });

  it('an empty append is a no-op returning the last index', () => {
    const log = mkLog(ents(1, 1));
    expect(log.append([])).toBe(2);
    expect(log.unstable.entries).toEqual([]);
  });

  it('truncates conflicting unstable entries', () => {
    const log = mkLog([], ents(1, 1, 1));
    expect(log.append([ent(2, 2)])).toBe(2);
    expect(log.lastIndex()).toBe(2);
    expect(log.term(2)).toBe(2);
    expect(log.term(3)).toBeUndefined();
    expect(log.unstable.entries.map((e) => [e.index, e.term])).toEqual([
      [1, 1],
      [2, 2],
    ]);
  });

  it('replaces a suffix of the stored log', () => {
    const log = mkLog(ents(1, 1, 1), [ent(4, 1)]);
    expect(log.append([ent(2, 3), ent(3, 3)])).toBe(3);
    expect(log.unstable.offset).toBe(2);
    expect(idx(log.unstable.entries)).toEqual([2, 3]);
    expect(log.lastIndex()).toBe(3);
    expect(log.term(1)).toBe(1); // from storage
    expect(log.term(2)).toBe(3); // from unstable, shadowing storage
    expect(log.term(4)).toBeUndefined();
    expect(log.slice(1, 4).map((e) => e.term)).toEqual([1, 3, 3]);
  });

  it('refuses to append below the commit index', () => {
    const log = mkLog(ents(1, 1, 1));
    log.commitTo(2);
    expect(() => log.append([ent(2, 5)])).toThrow(/below committed/);
    expect(log.term(2)).toBe(1);
    // Right after the commit index is fine.
    expect(log.append([ent(3, 5)])).toBe(3);
  });
});

describe('RaftLog.maybeAppend', () => {
  // Log: 1@1 2@2 3@3, committed 1.
  const base = (): RaftLog => {
    const log = mkLog([], ents(1, 2, 3));
    log.commitTo(1);
    return log;
  };

  it('rejects when (index, logTerm) does not match', () => {
    const log = base();
    expect(log.maybeAppend(3, 2, 3, [ent(4, 4)])).toBeUndefined();
    expect(log.maybeAppend(4, 4, 3, [ent(5, 4)])).toBeUndefined(); // beyond the log
    expect(log.lastIndex()).toBe(3);
    expect(log.committed).toBe(1);
  });

  it('accepts a heartbeat-like append with no entries', () => {
    const log = base();
    expect(log.maybeAppend(3, 3, 3, [])).toBe(3);
    expect(log.committed).toBe(3);
  });

  it('caps the commit index at the last new entry', () => {
    const log = base();
    expect(log.maybeAppend(1, 1, 3, [ent(2, 2)])).toBe(2);
    expect(log.committed).toBe(2);
    expect(log.lastIndex()).toBe(3); // matching prefix: nothing truncated
    const log2 = base();
    expect(log2.maybeAppend(3, 3, 100, [ent(4, 4), ent(5, 4)])).toBe(5);
    expect(log2.committed).toBe(5);
    expect(log2.lastIndex()).toBe(5);
  });

  it('never moves commit backwards', () => {
    const log = base();
    log.commitTo(3);
    expect(log.maybeAppend(1, 1, 1, [])).toBe(1);
    expect(log.committed).toBe(3);
  });

  it('appends only the new tail of partially known entries', () => {
    const log = base();
    expect(log.maybeAppend(1, 1, 1, [ent(2, 2), ent(3, 3), ent(4, 3)])).toBe(4);
    expect(log.lastIndex()).toBe(4);
    expect(log.term(4)).toBe(3);
    expect(log.term(3)).toBe(3);
  });

  it('truncates at the first conflict and appends the rest', () => {
    const log = base();
    expect(log.maybeAppend(1, 1, 0, [ent(2, 4), ent(3, 4)])).toBe(3);
    expect(log.term(2)).toBe(4);
    expect(log.term(3)).toBe(4);
    expect(log.lastIndex()).toBe(3);
    const log2 = base();
    expect(log2.maybeAppend(2, 2, 0, [ent(3, 4)])).toBe(3);
    expect(log2.term(2)).toBe(2);
    expect(log2.term(3)).toBe(4);
  });

  it('a shorter conflicting append drops the longer old tail', () => {
    const log = base();
    expect(log.maybeAppend(1, 1, 0, [ent(2, 5)])).toBe(2);
    expect(log.lastIndex()).toBe(2);
    expect(log.term(3)).toBeUndefined();
  });

  it('throws rather than rewrite a committed entry', () => {
    const log = base();
    log.commitTo(2);
    expect(() => log.maybeAppend(1, 1, 3, [ent(2, 9)])).toThrow(/committed/);
    expect(log.term(2)).toBe(2);
    expect(log.lastIndex()).toBe(3);
    expect(log.committed).toBe(2);
  });

  it('does not truncate when the whole append is already present', () => {
    const log = mkLog([], ents(1, 2, 3, 3));
    expect(log.maybeAppend(1, 1, 0, [ent(2, 2)])).toBe(2);
    expect(log.lastIndex()).toBe(4);
  });
});

describe('RaftLog.findConflict', () => {
  const log = mkLog([], ents(1, 2, 3));
  it.each([
    ['empty', [] as Entry[], 0],
    ['all match', [ent(1, 1), ent(2, 2), ent(3, 3)], 0],
    ['match suffix', [ent(2, 2), ent(3, 3)], 0],
    ['match single', [ent(3, 3)], 0],
    ['new entries', [ent(1, 1), ent(2, 2), ent(3, 3), ent(4, 4), ent(5, 4)], 4],
    ['new after match', [ent(3, 3), ent(4, 4)], 4],
    ['only new', [ent(4, 4)], 4],
    ['conflict first', [ent(1, 4), ent(2, 4)], 1],
    ['conflict middle', [ent(2, 1), ent(3, 4), ent(4, 4)], 2],
    ['conflict last', [ent(3, 1), ent(4, 2)], 3],
  ])('%s', (_name, es, want) => {
    expect(log.findConflict(es)).toBe(want);
  });
});

describe('RaftLog.findConflictByTerm', () => {
  // Log: 1@1 2@1 3@3 4@3 5@5 6@5
  const log = mkLog([], ents(1, 1, 3, 3, 5, 5));
  it.each([
    [6, 5, 6, 5],
    [6, 6, 6, 5],
    [6, 4, 4, 3],
    [6, 3, 4, 3],
    [5, 2, 2, 1],
    [4, 1, 2, 1],
    [2, 1, 2, 1],
    [6, 0, 0, 0], // falls back to the dummy entry
    [100, 3, 4, 3], // clamps to the last index
  ])('findConflictByTerm(%i, %i) = (%i, %i)', (index, term, wantIndex, wantTerm) => {
    expect(log.findConflictByTerm(index, term)).toEqual({ index: wantIndex, term: wantTerm });
  });

  it('reports an unknown term when it reaches compacted entries', () => {
    const s = new MemoryStorage();
    s.append(ents(1, 1, 3, 3, 5, 5));
    s.createSnapshot(4, { voters: [1], learners: [] }, new Uint8Array());
    s.compact(4);
    const l = new RaftLog(s);
    expect(l.findConflictByTerm(6, 4)).toEqual({ index: 4, term: 3 }); // dummy entry's term is known
    expect(l.findConflictByTerm(2, 1)).toEqual({ index: 2, term: 0 });
  });
});

describe('RaftLog.isUpToDate', () => {
  // Last entry: index 3, term 3.
  const log = mkLog([], ents(1, 2, 3));
  it.each([
    // lower term
    [2, 2, false],
    [3, 2, false],
    [4, 2, false],
    // higher term
    [2, 4, true],
    [3, 4, true],
    [4, 4, true],
    // equal term
    [2, 3, false],
    [3, 3, true],
    [4, 3, true],
  ])('isUpToDate(%i, %i) = %s', (lastIndex, lastTerm, want) => {
    expect(log.isUpToDate(lastIndex, lastTerm)).toBe(want);
  });
});

describe('RaftLog.maybeCommit', () => {
  it('only commits an index whose entry is of the given term', () => {
    const log = mkLog([], ents(1, 1, 2, 2));
    expect(log.maybeCommit(2, 2)).toBe(false); // entry 2 is of term 1
    expect(log.committed).toBe(0);
    expect(log.maybeCommit(2, 1)).toBe(true);
    expect(log.committed).toBe(2);
    expect(log.maybeCommit(4, 1)).toBe(false);
    expect(log.committed).toBe(2);
    expect(log.maybeCommit(4, 2)).toBe(true);
    expect(log.committed).toBe(4);
  });

  it('never commits backwards, at the same index, or beyond the log', () => {
    const log = mkLog([], ents(1, 1, 2));
    log.commitTo(2);
    expect(log.maybeCommit(1, 1)).toBe(false);
    expect(log.maybeCommit(2, 1)).toBe(false);
    expect(log.maybeCommit(5, 2)).toBe(false);
    expect(log.committed).toBe(2);
  });

  it('commitTo beyond the last index throws', () => {
    const log = mkLog([], ents(1));
    expect(() => log.commitTo(2)).toThrow(/beyond last index/);
    expect(log.committed).toBe(0);
  });
});

describe('RaftLog.slice', () => {
  // Stored: 1..3 (sizes 10 each); unstable: 4..6 (sizes 10 each).
  const mk = (): RaftLog =>
    mkLog(
      [ent(1, 1, 10), ent(2, 1, 10), ent(3, 1, 10)],
      [ent(4, 2, 10), ent(5, 2, 10), ent(6, 2, 10)],
    );

  it('spans storage and unstable', () => {
    const log = mk();
    expect(idx(log.slice(1, 7))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(idx(log.slice(2, 6))).toEqual([2, 3, 4, 5]);
    expect(idx(log.slice(1, 3))).toEqual([1, 2]);
    expect(idx(log.slice(4, 6))).toEqual([4, 5]);
    expect(idx(log.slice(3, 5))).toEqual([3, 4]);
    expect(log.slice(3, 3)).toEqual([]);
  });

  it('limits bytes across the storage/unstable boundary', () => {
    const log = mk();
    expect(idx(log.slice(2, 7, 30))).toEqual([2, 3, 4]);
    expect(idx(log.slice(2, 7, 29))).toEqual([2, 3]);
    expect(idx(log.slice(2, 7, 45))).toEqual([2, 3, 4, 5]);
    expect(idx(log.slice(2, 7, 1000))).toEqual([2, 3, 4, 5, 6]);
  });

  it('always returns at least one entry', () => {
    const log = mk();
    expect(idx(log.slice(3, 7, 0))).toEqual([3]);
    expect(idx(log.slice(5, 7, 1))).toEqual([5]);
  });

  it('throws for compacted or unavailable ranges', () => {
    const s = new MemoryStorage();
    s.append([ent(1, 1, 1), ent(2, 1, 1), ent(3, 1, 1)]);
    s.createSnapshot(2, { voters: [1], learners: [] }, new Uint8Array());
    s.compact(2);
    const log = new RaftLog(s);
    log.append([ent(4, 2)]);
    expect(() => log.slice(2, 4)).toThrow(LogCompactedError);
    expect(() => log.slice(3, 6)).toThrow(LogUnavailableError);
    expect(idx(log.slice(3, 5))).toEqual([3, 4]);
  });
});

describe('RaftLog.nextCommittedEntries', () => {
  it('hands out committed but not yet applying entries, respecting the byte limit', () => {
    const log = mkLog([ent(1, 1, 10), ent(2, 1, 10), ent(3, 1, 10)], [ent(4, 1, 10), ent(5, 1, 10)]);
    expect(log.hasNextCommittedEntries()).toBe(false);
    expect(log.nextCommittedEntries(Infinity)).toEqual([]);
    log.commitTo(4);
    expect(log.hasNextCommittedEntries()).toBe(true);
    expect(idx(log.nextCommittedEntries(Infinity))).toEqual([1, 2, 3, 4]);
    expect(idx(log.nextCommittedEntries(25))).toEqual([1, 2]);
    expect(idx(log.nextCommittedEntries(0))).toEqual([1]);
    log.applying = 2;
    expect(idx(log.nextCommittedEntries(Infinity))).toEqual([3, 4]);
    log.appliedTo(2);
    expect(log.applied).toBe(2);
    log.applying = 4;
    expect(log.hasNextCommittedEntries()).toBe(false);
    expect(log.nextCommittedEntries(Infinity)).toEqual([]);
    log.commitTo(5);
    expect(idx(log.nextCommittedEntries(Infinity))).toEqual([5]);
  });

  it('appliedTo validates its range', () => {
    const log = mkLog(ents(1, 1, 1));
    log.commitTo(2);
    expect(() => log.appliedTo(3)).toThrow(/out of range/);
    log.appliedTo(2);
    expect(log.applied).toBe(2);
    expect(log.applying).toBe(2);
    expect(() => log.appliedTo(1)).toThrow(/out of range/);
  });
});

describe('RaftLog.restore', () => {
  const snap: Snapshot = { meta: { index: 10, term: 5, conf: { voters: [1, 2], learners: [] } }, data: new Uint8Array([1]) };

  it('replaces the log with the snapshot', () => {
    const log = mkLog(ents(1, 1, 2), [ent(4, 3)]);
    log.restore(snap);
    expect(log.firstIndex()).toBe(11);
    expect(log.lastIndex()).toBe(10);
    expect(log.lastTerm()).toBe(5);
    expect(log.committed).toBe(10);
    expect(log.term(10)).toBe(5);
    expect(log.term(4)).toBeUndefined();
    expect(log.term(2)).toBeUndefined();
    expect(log.snapshot()).toBe(snap);
    expect(log.unstable.snapshot).toBe(snap);
    expect(log.unstable.entries).toEqual([]);
    expect(log.unstable.offset).toBe(11);
    expect(log.hasNextCommittedEntries()).toBe(false);
    expect(log.nextCommittedEntries(Infinity)).toEqual([]);
    expect(log.matchTerm(10, 5)).toBe(true);
  });

  it('accepts appends after the snapshot and forgets it once stable', () => {
    const log = mkLog(ents(1, 1));
    log.restore(snap);
    expect(log.maybeAppend(10, 5, 11, [ent(11, 5), ent(12, 6)])).toBe(12);
    expect(log.committed).toBe(11);
    expect(log.lastIndex()).toBe(12);
    expect(idx(log.slice(11, 13))).toEqual([11, 12]);
    expect(() => log.slice(10, 12)).toThrow(LogCompactedError);
    log.unstable.stableSnapTo(9); // wrong index: ignored
    expect(log.unstable.snapshot).toBe(snap);
    log.unstable.stableSnapTo(10);
    expect(log.unstable.snapshot).toBeUndefined();
  });
});

describe('Unstable.stableTo', () => {
  it('drops entries that became durable', () => {
    const s = new MemoryStorage();
    const log = new RaftLog(s);
    log.append(ents(1, 1, 1));
    s.append(log.unstable.entries.slice(0, 2));
    log.unstable.stableTo(2, 1);
    expect(log.unstable.offset).toBe(3);
    expect(idx(log.unstable.entries)).toEqual([3]);
    expect(log.term(2)).toBe(1);
    expect(log.lastIndex()).toBe(3);
  });

  it('ignores an entry overwritten since it was handed out', () => {
    const log = mkLog([], ents(1, 1, 1));
    const handedOut = [...log.unstable.entries];
    log.append([ent(2, 2)]); // a new leader overwrote 2..3
    const last = handedOut[handedOut.length - 1]!;
    log.unstable.stableTo(last.index, last.term); // index 3 no longer exists
    expect(log.unstable.offset).toBe(1);
    expect(log.unstable.entries.map((e) => [e.index, e.term])).toEqual([
      [1, 1],
      [2, 2],
    ]);
    log.unstable.stableTo(2, 1); // index 2 now has term 2
    expect(log.unstable.offset).toBe(1);
    expect(log.unstable.entries.length).toBe(2);
    log.unstable.stableTo(1, 1); // still the same entry: ok
    expect(log.unstable.offset).toBe(2);
    expect(log.unstable.entries.map((e) => [e.index, e.term])).toEqual([[2, 2]]);
  });

  it('ignores indexes beyond the unstable entries', () => {
    const log = mkLog([], ents(1, 1));
    log.unstable.stableTo(5, 1);
    expect(log.unstable.entries.length).toBe(2);
  });
});

describe('limitSize', () => {
  const sized = (...sizes: number[]): Entry[] => sizes.map((sz, i) => ent(i + 1, 1, sz));
  it.each([
    [[10, 10, 10], Infinity, 3],
    [[10, 10, 10], 30, 3],
    [[10, 10, 10], 29, 2],
    [[10, 10, 10], 20, 2],
    [[10, 10, 10], 19, 1],
    [[10, 10, 10], 0, 1],
    [[50, 1, 1], 10, 1],
    [[1, 50, 1], 10, 1],
    [[0, 0, 0, 0], 0, 4],
    [[5], 0, 1],
    [[], 0, 0],
  ])('limitSize(%j, %s) keeps %i', (sizes, max, want) => {
    const es = sized(...sizes);
    const got = limitSize(es, max);
    expect(got.length).toBe(want);
    expect(got).toEqual(es.slice(0, want));
  });
});
