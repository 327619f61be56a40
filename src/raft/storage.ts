/**
 * The read side of durable Raft state that the core consults (the log seam), and
 * `MemoryStorage`, its in-memory implementation used by tests and as the cache in front of disk.
 */
import { type ConfState, type Entry, type HardState, type Snapshot } from './types.js';

/** Thrown when asking for log positions that were compacted into a snapshot. */
export class LogCompactedError extends Error {
  constructor(index: number, firstIndex: number) {
    super(`log index ${index} is compacted (first available index ${firstIndex})`);
    this.name = 'LogCompactedError';
  }
}

/** Thrown when asking for log positions that do not exist yet. */
export class LogUnavailableError extends Error {
  constructor(index: number, lastIndex: number) {
    super(`log index ${index} is unavailable (last index ${lastIndex})`);
    this.name = 'LogUnavailableError';
  }
}

/** The durable state a replica restarts from. */
export interface InitialState {
  readonly hardState: HardState;
  readonly conf: ConfState;
}

/**
 * What the Raft core reads from durable storage. All calls are synchronous: implementations
 * keep the live log (everything after the last snapshot) in memory and write through to disk.
 * The core never writes: the host writes what each `Ready` asks.
 */
export interface Storage {
  /** Hard state and configuration to restart from. */
  initialState(): InitialState;
  /** Entries in [lo, hi). Throws LogCompactedError when lo < firstIndex(). */
  entries(lo: number, hi: number): Entry[];
  /** Term of the entry at index i (i may be firstIndex()-1, the snapshot's index). */
  term(i: number): number;
  /** The first index still held in the log (snapshot index + 1). */
  firstIndex(): number;
  /** The last index in the log (or the snapshot's index when the log is empty). */
  lastIndex(): number;
  /** The most recent snapshot, or undefined when none exists yet. */
  snapshot(): Snapshot | undefined;
}

const EMPTY_CONF: ConfState = { voters: [], learners: [] };

/** An in-memory `Storage` with the mutators a host needs: append, hard state, snapshots, compaction. */
export class MemoryStorage implements Storage {
  private hardState: HardState = { term: 0, vote: 0, commit: 0 };
  /** ents[0] is a dummy entry holding the snapshot's index and term. */
  private ents: Entry[] = [{ term: 0, index: 0, type: 0, data: new Uint8Array(0) }];
  private snap: Snapshot | undefined;
  private conf: ConfState;

  /** Starts empty with the given initial membership (used when bootstrapping a new group). */
  constructor(conf: ConfState = EMPTY_CONF) {
    this.conf = conf;
  }

  initialState(): InitialState {
    return { hardState: this.hardState, conf: this.conf };
  }

  /** Records the hard state the core handed out. */
  setHardState(hs: HardState): void {
    this.hardState = hs;
  }

  /** Records the configuration in effect (hosts call this when a conf change is applied). */
  setConfState(conf: ConfState): void {
    this.conf = conf;
  }

  firstIndex(): number {
    return this.ents[0]!.index + 1;
  }

  lastIndex(): number {
    return this.ents[0]!.index + this.ents.length - 1;
  }

  term(i: number): number {
    const offset = this.ents[0]!.index;
    if (i < offset) throw new LogCompactedError(i, offset + 1);
    if (i - offset >= this.ents.length) throw new LogUnavailableError(i, this.lastIndex());
    return this.ents[i - offset]!.term;
  }

  entries(lo: number, hi: number): Entry[] {
    const offset = this.ents[0]!.index;
    if (lo <= offset) throw new LogCompactedError(lo, offset + 1);
    if (hi > this.lastIndex() + 1) throw new LogUnavailableError(hi - 1, this.lastIndex());
    return this.ents.slice(lo - offset, hi - offset);
  }

  snapshot(): Snapshot | undefined {
    return this.snap;
  }

  /** Appends entries, discarding any existing suffix that they overwrite. */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const first = this.firstIndex();
    let es = entries;
    // Entries already compacted away are skipped.
    if (es[0]!.index < first) es = es.slice(first - es[0]!.index);
    if (es.length === 0) return;
    const offset = es[0]!.index - this.ents[0]!.index;
    if (offset > this.ents.length) {
      throw new Error(`missing log entries: last ${this.lastIndex()}, appending at ${es[0]!.index}`);
    }
    // In place: truncate a conflicting suffix (rare), then push (the common case costs O(new entries)).
    if (offset < this.ents.length) this.ents.length = offset;
    for (const e of es) this.ents.push(e);
  }

  /** Replaces the whole log with a snapshot (a follower installing one). */
  applySnapshot(snap: Snapshot): void {
    if (this.snap && snap.meta.index <= this.snap.meta.index) return;
    this.snap = snap;
    this.conf = snap.meta.conf;
    this.ents = [{ term: snap.meta.term, index: snap.meta.index, type: 0, data: new Uint8Array(0) }];
  }

  /**
   * Records a snapshot the host's state machine took at `index` (which must be applied),
   * without discarding log entries; call `compact` to discard them. The snapshot's
   * configuration becomes the one `initialState()` reports (a restart re-applies later entries).
   */
  createSnapshot(index: number, conf: ConfState, data: Uint8Array): Snapshot {
    if (this.snap && index <= this.snap.meta.index) return this.snap;
    if (index > this.lastIndex()) throw new LogUnavailableError(index, this.lastIndex());
    const snap: Snapshot = { meta: { index, term: this.term(index), conf }, data };
    this.snap = snap;
    this.conf = conf;
    return snap;
  }

  /**
   * Keeps the current snapshot's metadata and drops its data (a host whose state machine is
   * durable elsewhere, once that copy covers the snapshot, stops holding the bytes).
   */
  dropSnapshotData(): void {
    if (this.snap && (this.snap.data.length > 0 || this.snap.streamed)) this.snap = { meta: this.snap.meta, data: new Uint8Array(0) };
  }

  /** Discards log entries up to and including `index` (which must be covered by a snapshot). */
  compact(index: number): void {
    const offset = this.ents[0]!.index;
    if (index <= offset) return;
    if (index > this.lastIndex()) throw new LogUnavailableError(index, this.lastIndex());
    const t = this.term(index);
    this.ents = [{ term: t, index, type: 0, data: new Uint8Array(0) }, ...this.ents.slice(index - offset + 1)];
  }

  /** Number of entries held (for metrics and tests). */
  get size(): number {
    return this.ents.length - 1;
  }
}
