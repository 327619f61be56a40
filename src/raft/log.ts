/**
 * The replica's view of the Raft log: the durable part read through `Storage`, plus the
 * unstable tail (entries and snapshot handed to the host but not yet persisted), with the
 * commit and apply cursors.
 */
import { LogCompactedError, LogUnavailableError, type Storage } from './storage.js';
import type { Entry, Snapshot } from './types.js';

/**
 * Entries and a snapshot accepted by the core but not yet durable. Those before
 * `offsetInProgress` (and the snapshot, when `snapshotInProgress`) were handed to the host in a
 * Ready whose write is not yet acknowledged; a later Ready hands out only what follows them
 * (two Readies may be in flight, see RawNode).
 */
class Unstable {
  snapshot: Snapshot | undefined;
  entries: Entry[] = [];
  /** Index of entries[0]. */
  offset: number;
  /** Index of the first entry not yet handed to the host (offset ≤ offsetInProgress ≤ offset + entries.length). */
  offsetInProgress: number;
  /** Whether `snapshot` was handed to the host already. */
  snapshotInProgress = false;

  constructor(offset: number) {
    this.offset = offset;
    this.offsetInProgress = offset;
  }

  /** The entries not yet handed to the host. */
  nextEntries(): Entry[] {
    return this.entries.slice(this.offsetInProgress - this.offset);
  }

  /** Whether there are entries or a snapshot not yet handed to the host. */
  hasNext(): boolean {
    return this.offsetInProgress < this.offset + this.entries.length || (this.snapshot !== undefined && !this.snapshotInProgress);
  }

  /** Marks everything unstable as handed to the host. */
  acceptInProgress(): void {
    this.offsetInProgress = this.offset + this.entries.length;
    if (this.snapshot) this.snapshotInProgress = true;
  }

  maybeFirstIndex(): number | undefined {
    return this.snapshot ? this.snapshot.meta.index + 1 : undefined;
  }

  maybeLastIndex(): number | undefined {
    if (this.entries.length > 0) return this.offset + this.entries.length - 1;
    return this.snapshot ? this.snapshot.meta.index : undefined;
  }

  maybeTerm(i: number): number | undefined {
    if (i < this.offset) {
      if (this.snapshot && this.snapshot.meta.index === i) return this.snapshot.meta.term;
      return undefined;
    }
    const last = this.maybeLastIndex();
    if (last === undefined || i > last) return undefined;
    return this.entries[i - this.offset]!.term;
  }

  /** Entries up to (index, term) became durable. */
  stableTo(index: number, term: number): void {
    const t = this.maybeTerm(index);
    if (t === undefined || t !== term) return; // overwritten since it was handed out
    if (index >= this.offset) {
      this.entries = this.entries.slice(index + 1 - this.offset);
      this.offset = index + 1;
      if (this.offsetInProgress < this.offset) this.offsetInProgress = this.offset;
    }
  }

  stableSnapTo(index: number): void {
    if (this.snapshot && this.snapshot.meta.index === index) {
      this.snapshot = undefined;
      this.snapshotInProgress = false;
    }
  }

  restore(s: Snapshot): void {
    this.offset = s.meta.index + 1;
    this.offsetInProgress = this.offset;
    this.entries = [];
    this.snapshot = s;
    this.snapshotInProgress = false;
  }

  truncateAndAppend(ents: readonly Entry[]): void {
    const after = ents[0]!.index;
    if (after === this.offset + this.entries.length) {
      this.entries.push(...ents);
    } else if (after <= this.offset) {
      // Replaces everything unstable (and a suffix of the durable log).
      this.offset = after;
      this.entries = [...ents];
    } else {
      this.entries = this.entries.slice(0, after - this.offset).concat(ents);
    }
    // What replaced entries already handed out is handed out again (the host's write truncates).
    if (this.offsetInProgress > after) this.offsetInProgress = after;
    if (this.offsetInProgress < this.offset) this.offsetInProgress = this.offset;
  }

  slice(lo: number, hi: number): Entry[] {
    return this.entries.slice(lo - this.offset, hi - this.offset);
  }
}

/** The Raft log seen by the core. */
export class RaftLog {
  readonly storage: Storage;
  readonly unstable: Unstable;
  /** Highest index known committed by a quorum. */
  committed: number;
  /** Highest index handed to the host to apply (and not yet acknowledged by advance). */
  applying: number;
  /** Highest index the host acknowledged as applied. */
  applied: number;
  /** See {@link takeCut}. */
  private cutFrom = 0;

  constructor(storage: Storage) {
    this.storage = storage;
    const first = storage.firstIndex();
    const last = storage.lastIndex();
    this.unstable = new Unstable(last + 1);
    this.committed = first - 1;
    this.applied = first - 1;
    this.applying = first - 1;
  }

  firstIndex(): number {
    return this.unstable.maybeFirstIndex() ?? this.storage.firstIndex();
  }

  lastIndex(): number {
    return this.unstable.maybeLastIndex() ?? this.storage.lastIndex();
  }

  /** The term of entry i, or undefined when it is compacted or beyond the log. */
  term(i: number): number | undefined {
    const dummy = this.firstIndex() - 1;
    if (i < dummy || i > this.lastIndex()) return undefined;
    const t = this.unstable.maybeTerm(i);
    if (t !== undefined) return t;
    try {
      return this.storage.term(i);
    } catch (e) {
      if (e instanceof LogCompactedError || e instanceof LogUnavailableError) return undefined;
      throw e;
    }
  }

  /** The last index known to be durable locally (entries handed out but not yet stable are excluded). */
  stableLastIndex(): number {
    return Math.min(this.storage.lastIndex(), this.unstable.offset - 1);
  }

  lastTerm(): number {
    const t = this.term(this.lastIndex());
    if (t === undefined) throw new Error('raft log: last term unavailable');
    return t;
  }

  matchTerm(i: number, term: number): boolean {
    return this.term(i) === term;
  }

  /** Whether a candidate's log (lastIndex, lastTerm) is at least as up to date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /**
   * Accepts entries from a leader's append after (index, logTerm). Returns the index of the
   * last new entry, or undefined when our log does not contain (index, logTerm).
   */
  maybeAppend(index: number, logTerm: number, commit: number, ents: readonly Entry[]): number | undefined {
    if (!this.matchTerm(index, logTerm)) return undefined;
    const lastNew = index + ents.length;
    const ci = this.findConflict(ents);
    if (ci !== 0) {
      if (ci <= this.committed) {
        throw new Error(`raft log: entry ${ci} conflicts with committed entry (committed ${this.committed})`);
      }
      this.append(ents.slice(ci - (index + 1)));
    }
    this.commitTo(Math.min(commit, lastNew));
    return lastNew;
  }

  /** Appends entries (truncating conflicting unstable ones); returns the new last index. */
  append(ents: readonly Entry[]): number {
    if (ents.length === 0) return this.lastIndex();
    const after = ents[0]!.index - 1;
    if (after < this.committed) {
      throw new Error(`raft log: append after ${after} is below committed ${this.committed}`);
    }
    if (after < this.lastIndex()) this.cutFrom = this.cutFrom === 0 ? after + 1 : Math.min(this.cutFrom, after + 1);
    this.unstable.truncateAndAppend(ents);
    return this.lastIndex();
  }

  /**
   * The lowest index from which entries were replaced by a conflicting append since the last
   * call (0: none), and forgets it. Acknowledgements of the replaced entries must not leave.
   */
  takeCut(): number {
    const cut = this.cutFrom;
    this.cutFrom = 0;
    return cut;
  }

  /** The first index among `ents` whose term differs from ours (or is new); 0 when all match. */
  findConflict(ents: readonly Entry[]): number {
    for (const e of ents) {
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * Fast back-off: the largest index <= `index` whose term is <= `term`; when the search runs
   * past the retained log it stops there and reports term 0 (unknown), as etcd does.
   * Used by a follower to hint the leader where the logs may agree, and by the leader to skip terms.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    let i = Math.min(index, this.lastIndex());
    for (;;) {
      const t = this.term(i);
      if (t === undefined) return { index: i, term: 0 };
      if (t <= term) return { index: i, term: t };
      i--;
    }
  }

  commitTo(i: number): void {
    if (i > this.committed) {
      if (i > this.lastIndex()) {
        throw new Error(`raft log: commit ${i} is beyond last index ${this.lastIndex()}`);
      }
      this.committed = i;
    }
  }

  /** Commits `maxIndex` if it is of `term` (only current-term entries are committed by counting). */
  maybeCommit(maxIndex: number, term: number): boolean {
    if (maxIndex > this.committed && this.term(maxIndex) === term) {
      this.commitTo(maxIndex);
      return true;
    }
    return false;
  }

  /** Entries in [lo, hi), optionally limited to `maxBytes` of data (at least one entry). */
  slice(lo: number, hi: number, maxBytes = Infinity): Entry[] {
    if (lo >= hi) return [];
    const first = this.firstIndex();
    if (lo < first) throw new LogCompactedError(lo, first);
    if (hi > this.lastIndex() + 1) throw new LogUnavailableError(hi - 1, this.lastIndex());
    let out: Entry[] = [];
    const uOff = this.unstable.offset;
    if (lo < uOff) {
      out = this.storage.entries(lo, Math.min(hi, uOff));
    }
    if (hi > uOff) {
      out = out.concat(this.unstable.slice(Math.max(lo, uOff), hi));
    }
    return limitSize(out, maxBytes);
  }

  /** Committed entries ready to hand to the host for applying. */
  nextCommittedEntries(maxBytes: number): Entry[] {
    const lo = Math.max(this.applying + 1, this.firstIndex());
    const hi = this.committed + 1;
    if (lo >= hi) return [];
    return this.slice(lo, hi, maxBytes);
  }

  hasNextCommittedEntries(): boolean {
    return this.committed > this.applying && this.committed >= this.firstIndex();
  }

  appliedTo(i: number): void {
    if (i === 0) return;
    if (i > this.committed || i < this.applied) {
      throw new Error(`raft log: applied ${i} out of range [${this.applied}, ${this.committed}]`);
    }
    this.applied = i;
    if (this.applying < i) this.applying = i;
  }

  /** Replaces the log with a snapshot (the follower installs it). */
  restore(s: Snapshot): void {
    this.committed = s.meta.index;
    this.unstable.restore(s);
  }

  /** The snapshot to send to a lagging follower, if the host has one. */
  snapshot(): Snapshot | undefined {
    return this.unstable.snapshot ?? this.storage.snapshot();
  }
}

/** Keeps a prefix of entries whose data totals at most maxBytes (always at least one entry). */
export function limitSize(ents: Entry[], maxBytes: number): Entry[] {
  if (ents.length <= 1 || maxBytes === Infinity) return ents;
  let size = ents[0]!.data.length;
  let n = 1;
  while (n < ents.length) {
    size += ents[n]!.data.length;
    if (size > maxBytes) break;
    n++;
  }
  return n === ents.length ? ents : ents.slice(0, n);
}
