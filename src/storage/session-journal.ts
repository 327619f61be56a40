/**
 * The client-session journal of a group's durable records: the session changes of one round as ONE
 * engine record, replayed over the per-session base records at load, and folded into them in bounded
 * steps (the layout and its place among the other records: state-store.ts).
 *
 * Why: a write with a session used to cost up to three engine operations beside its version and
 * latest (its session's header put, its result put, and the delete of an acknowledged result);
 * now the whole round's session changes are one put.
 *
 * Records (under the group's `s/<g>/` prefix):
 *   c/<id>              base header of a session: varint forgottenBelow, lastActiveIndex, lastActiveTs
 *   d/<id>/<seq:u64 BE> base result of a session (sessions.ts `encodeSessionResult`)
 *   j/<n:u64 BE>        one round's session changes, n = the round's applied index (increasing):
 *                       u8 format (1), varint count, then per session
 *                         u8 kind (1 update, 2 drop, 3 drop then update), str id, and for an update
 *                         varint forgottenBelow, lastActiveIndex, lastActiveTs (the session's whole
 *                         header after the round), varint n, n × (varint seq, result as
 *                         `writeSessionResult` writes it): the results the round added and kept.
 *
 * Replay (the loader and the snapshot encoder): start from the base records, then per journal record
 * in order: a drop deletes the session; an update creates the session if absent, sets its header,
 * deletes its results below the new floor, and adds the listed results. Results the round added and
 * dropped again are not listed (the floor covers them: a session's results are only ever dropped by
 * raising its floor, and the header carries it).
 *
 * Folding: once the journal holds more than `maxRecords` records (or `maxBytes`), each round folds
 * its oldest records, a bounded number per round: every session they touched gets its *current*
 * state (the machine's, at the round's end) written as base records (a difference against what the
 * base holds), and the folded records are deleted, all in the round's unit. Replaying the newer
 * records over a base that is already at the current state gives the current state again: each
 * record's changes are whole headers, additions, and floors that only rise within a session's life,
 * so replaying them in order ends where the live table ended. A session dropped and created again
 * under the same id has its base rewritten whole at its next fold (its old base results are not its
 * results).
 */
import { ByteReader, ByteWriter } from '../statemachine/binary.js';
import {
  MAX_SESSION_ID_LENGTH,
  readSessionResult,
  SESSION_ID_PATTERN,
  ValidationError,
  writeSessionResult,
  type SessionHeader,
  type SessionRecord,
  type SessionResult,
} from '../statemachine/index.js';

/** Format byte of a journal record. */
export const SESSION_JOURNAL_FORMAT = 1;

/** Default: fold once the journal holds more records than this. */
export const DEFAULT_JOURNAL_MAX_RECORDS = 128;

/** Default: fold once the journal's records add up to more bytes than this. */
export const DEFAULT_JOURNAL_MAX_BYTES = 8 * 1024 * 1024;

/** Default: most journal records folded in one round. */
export const DEFAULT_FOLD_RECORDS = 64;

/** Default: a fold step stops taking records once it has planned this many engine ops (it always takes one). */
export const DEFAULT_FOLD_OPS = 4096;

const J_UPDATE = 1;
const J_DROP = 2;
const J_DROP_UPDATE = 3;

/** Bounds of the journal and of its folding (tests shrink them). */
export interface JournalLimits {
  readonly maxRecords?: number;
  readonly maxBytes?: number;
  readonly foldRecords?: number;
  readonly foldOps?: number;
}

/** A journal record as the recorder tracks it. */
export interface JournalRecordInfo {
  /** Its key's number (the applied index of its round). */
  readonly n: number;
  /** The sessions it touches. */
  readonly ids: readonly string[];
  /** Its value's size. */
  readonly bytes: number;
}

/** What the session records on disk hold, as a recorder continuing from them needs to know. */
export interface WrittenSessions {
  /** Per session with base records: the seqs of its base results (ascending). */
  readonly base: ReadonlyMap<string, readonly number[]>;
  /** The journal records, oldest first. */
  readonly journal: readonly JournalRecordInfo[];
  /** Sessions whose base records are of an earlier life of their id (the journal drops them): rewritten whole at their next fold. */
  readonly stale?: ReadonlySet<string>;
}

/** One session's change in a journal record. */
export interface JournalEntry {
  readonly id: string;
  /** The session was dropped (before the update, if any). */
  readonly dropped: boolean;
  /** Its header after the round; undefined = dropped and not created again. */
  readonly header?: SessionHeader;
  /** Results the round added and kept, ascending by seq. */
  readonly results: ReadonlyArray<readonly [number, SessionResult]>;
}

/** Encodes a journal record (see the file header). */
export function encodeJournalRecord(entries: readonly JournalEntry[]): Uint8Array {
  let size = 8;
  for (const e of entries) size += 24 + e.id.length + e.results.length * 40;
  const w = new ByteWriter(size);
  w.u8(SESSION_JOURNAL_FORMAT);
  w.varint(entries.length);
  for (const e of entries) {
    w.u8(e.header === undefined ? J_DROP : e.dropped ? J_DROP_UPDATE : J_UPDATE);
    w.str(e.id);
    if (e.header === undefined) continue;
    w.varint(e.header.forgottenBelow);
    w.varint(e.header.lastActiveIndex);
    w.varint(e.header.lastActiveTs);
    w.varint(e.results.length);
    for (const [seq, r] of e.results) {
      w.varint(seq);
      writeSessionResult(w, r);
    }
  }
  return w.finish();
}

/** Decodes a journal record (throws ValidationError MALFORMED_SNAPSHOT; a newer format is refused by name). Result values are views into `bytes`. */
export function decodeJournalRecord(bytes: Uint8Array): JournalEntry[] {
  const r = new ByteReader(bytes, 'MALFORMED_SNAPSHOT');
  const format = r.u8();
  if (format !== SESSION_JOURNAL_FORMAT) r.fail(`session journal format ${format} is not known to this version (written by a newer kvd?)`);
  const n = r.varint();
  const out: JournalEntry[] = [];
  for (let i = 0; i < n; i++) {
    const kind = r.u8();
    if (kind !== J_UPDATE && kind !== J_DROP && kind !== J_DROP_UPDATE) r.fail(`unknown session journal entry kind ${kind}`);
    const id = r.str(MAX_SESSION_ID_LENGTH, 'session id');
    if (!SESSION_ID_PATTERN.test(id)) r.fail(`bad session id ${JSON.stringify(id)}`);
    if (kind === J_DROP) {
      out.push({ id, dropped: true, results: [] });
      continue;
    }
    const header: SessionHeader = { id, forgottenBelow: r.varint(), lastActiveIndex: r.varint(), lastActiveTs: r.varint() };
    const count = r.varint();
    const results: Array<readonly [number, SessionResult]> = [];
    let prev = 0;
    for (let k = 0; k < count; k++) {
      const seq = r.varint();
      if (seq <= prev || seq < header.forgottenBelow) r.fail(`session ${id}: journal result ${seq} out of order or below its floor`);
      prev = seq;
      results.push([seq, readSessionResult(r)]);
    }
    out.push({ id, dropped: kind === J_DROP_UPDATE, header, results });
  }
  r.expectEnd();
  return out;
}

// ------------------------------------------------------------------ replay

interface LiveSession {
  header: SessionHeader;
  readonly results: Map<number, SessionResult>;
}

/**
 * Sessions rebuilt from base records and journal records (the loader's and the snapshot encoder's):
 * add the base, then replay the journal in order, then take the records.
 */
export class SessionReplay {
  private readonly sessions = new Map<string, LiveSession>();
  private readonly orphans = new Set<string>();
  private readonly baseSeqs = new Map<string, number[]>();
  private readonly journal: JournalRecordInfo[] = [];
  private readonly stale = new Set<string>();
  private replaying = false;

  /** A base header record (the layout sorts them before the results: `c/` < `d/`). */
  addBaseHeader(h: SessionHeader): void {
    if (this.replaying) throw new Error('base records after the journal');
    this.sessions.set(h.id, { header: h, results: new Map() });
    this.baseSeqs.set(h.id, []);
  }

  /** A base result record, after its session's header (else it is an orphan: see `orphanIds`). */
  addBaseResult(id: string, seq: number, r: SessionResult): void {
    if (this.replaying) throw new Error('base records after the journal');
    const s = this.sessions.get(id);
    if (!s) {
      this.orphans.add(id);
      return;
    }
    s.results.set(seq, r);
    this.baseSeqs.get(id)!.push(seq);
  }

  /** Session ids with base results but no base header (corruption, reported by the caller). */
  get orphanIds(): string[] {
    return [...this.orphans];
  }

  /** Replays journal record `n` (in increasing `n`); throws ValidationError on malformed bytes or order. */
  replay(n: number, bytes: Uint8Array): void {
    this.replaying = true;
    const last = this.journal[this.journal.length - 1];
    if (last !== undefined && n <= last.n) throw new ValidationError('MALFORMED_SNAPSHOT', `session journal record ${n} after ${last.n}`);
    const entries = decodeJournalRecord(bytes);
    for (const e of entries) {
      if (e.dropped) {
        this.sessions.delete(e.id);
        if (this.baseSeqs.has(e.id)) this.stale.add(e.id);
      }
      if (e.header === undefined) continue;
      let s = this.sessions.get(e.id);
      if (!s) this.sessions.set(e.id, (s = { header: e.header, results: new Map() }));
      s.header = e.header;
      for (const seq of [...s.results.keys()]) if (seq < e.header.forgottenBelow) s.results.delete(seq);
      for (const [seq, r] of e.results) s.results.set(seq, r);
    }
    this.journal.push({ n, ids: entries.map((e) => e.id), bytes: bytes.length });
  }

  /** The sessions in activity order (by last active index), results ascending by seq (not yet checked: see `checkSessionRecords`). */
  records(): SessionRecord[] {
    const out: SessionRecord[] = [];
    for (const s of this.sessions.values()) {
      const results = [...s.results.entries()].sort((a, b) => a[0] - b[0]);
      out.push({ ...s.header, results });
    }
    return out.sort((a, b) => a.lastActiveIndex - b.lastActiveIndex);
  }

  /** Whether any journal record was replayed. */
  get hasJournal(): boolean {
    return this.journal.length > 0;
  }

  /** What the records on disk hold, for the recorder continuing from them. */
  written(): WrittenSessions {
    const base = new Map<string, readonly number[]>();
    for (const [id, seqs] of this.baseSeqs) base.set(id, seqs.slice().sort((a, b) => a - b));
    return { base, journal: this.journal.slice(), stale: new Set(this.stale) };
  }
}

// ------------------------------------------------------------------ the recorder's side

/** The engine writes of session records, as the journal asks for them (the recorder owns the keys). */
export interface SessionRecordWriter {
  putHeader(h: SessionHeader): void;
  delHeader(id: string): void;
  putResult(id: string, seq: number, r: SessionResult): void;
  delResult(id: string, seq: number): void;
  putJournal(n: number, value: Uint8Array): void;
  delJournal(n: number): void;
}

/** A session's changes in the round being recorded. */
interface Pending {
  dropped: boolean;
  header: SessionHeader | undefined;
  readonly results: Map<number, SessionResult>;
}

interface BaseSession {
  seqs: number[];
  /** Dropped (and maybe created again) since its base was written: rewrite it whole at its next fold. */
  stale: boolean;
}

/**
 * The session part of a group's recorder: collects the round's session changes (the `StateSink`
 * session calls), hands them out as one journal record per round, and folds old journal records
 * into the base records in bounded steps. Deterministic given the calls.
 */
export class SessionJournal {
  private round = new Map<string, Pending>();
  private readonly journal: JournalRecordInfo[];
  private journalBytes = 0;
  private readonly base = new Map<string, BaseSession>();
  private readonly maxRecords: number;
  private readonly maxBytes: number;
  private readonly foldRecords: number;
  private readonly foldOps: number;

  constructor(written: WrittenSessions | undefined, limits: JournalLimits = {}) {
    this.journal = written ? written.journal.slice() : [];
    for (const j of this.journal) this.journalBytes += j.bytes;
    for (const [id, seqs] of written?.base ?? []) this.base.set(id, { seqs: seqs.slice(), stale: written?.stale?.has(id) ?? false });
    this.maxRecords = limits.maxRecords ?? DEFAULT_JOURNAL_MAX_RECORDS;
    this.maxBytes = limits.maxBytes ?? DEFAULT_JOURNAL_MAX_BYTES;
    this.foldRecords = Math.max(1, limits.foldRecords ?? DEFAULT_FOLD_RECORDS);
    this.foldOps = Math.max(1, limits.foldOps ?? DEFAULT_FOLD_OPS);
  }

  private pending(id: string): Pending {
    let p = this.round.get(id);
    if (!p) this.round.set(id, (p = { dropped: false, header: undefined, results: new Map() }));
    return p;
  }

  /** See `StateSink.sessionUpdated`. */
  updated(h: SessionHeader): void {
    this.pending(h.id).header = h;
  }

  /** See `StateSink.sessionResultAdded`. */
  resultAdded(id: string, seq: number, r: SessionResult): void {
    this.pending(id).results.set(seq, r);
  }

  /** See `StateSink.sessionResultsDropped` (the header that follows carries the floor). */
  resultsDropped(id: string, seqs: readonly number[]): void {
    const p = this.round.get(id);
    if (p) for (const q of seqs) p.results.delete(q);
  }

  /** See `StateSink.sessionDropped`. */
  dropped(id: string): void {
    const p = this.pending(id);
    p.dropped = true;
    p.header = undefined;
    p.results.clear();
    const b = this.base.get(id);
    if (b) b.stale = true;
  }

  /** Whether the round changed any session. */
  get dirty(): boolean {
    return this.round.size > 0;
  }

  /** Journal records held (for tests and diagnostics). */
  get records(): readonly JournalRecordInfo[] {
    return this.journal;
  }

  /**
   * Ends the round at applied index `appliedIndex`: writes its journal record (if any session
   * changed), then, when the journal is over its bounds, folds its oldest records, reading the
   * sessions' current state with `current` (the machine's `session(id)`).
   */
  take(appliedIndex: number, out: SessionRecordWriter, current: (id: string) => SessionRecord | undefined): void {
    if (this.round.size > 0) {
      const entries: JournalEntry[] = [];
      for (const [id, p] of this.round) {
        const header = p.header ?? (p.dropped ? undefined : current(id)); // a header always follows a floor change; defensive
        if (header === undefined) {
          entries.push({ id, dropped: true, results: [] });
          continue;
        }
        const results = [...p.results.entries()].filter(([q]) => q >= header.forgottenBelow).sort((a, b) => a[0] - b[0]);
        entries.push({ id, dropped: p.dropped, header: { id, forgottenBelow: header.forgottenBelow, lastActiveIndex: header.lastActiveIndex, lastActiveTs: header.lastActiveTs }, results });
      }
      const last = this.journal[this.journal.length - 1];
      const n = Math.max(appliedIndex, last === undefined ? 0 : last.n + 1);
      const value = encodeJournalRecord(entries);
      out.putJournal(n, value);
      this.journal.push({ n, ids: entries.map((e) => e.id), bytes: value.length });
      this.journalBytes += value.length;
      this.round = new Map();
    }
    if (this.journal.length > this.maxRecords || this.journalBytes > this.maxBytes) this.fold(out, current);
  }

  /** Folds the oldest journal records (at least one; up to `foldRecords`, and while under `foldOps` planned ops). */
  private fold(out: SessionRecordWriter, current: (id: string) => SessionRecord | undefined): void {
    const now = new Map<string, SessionRecord | undefined>();
    let k = 0;
    let ops = 0;
    while (k < this.journal.length && k < this.foldRecords && (k === 0 || ops < this.foldOps)) {
      const j = this.journal[k++]!;
      for (const id of j.ids) {
        if (now.has(id)) continue;
        const cur = current(id);
        now.set(id, cur);
        ops += 1 + (cur?.results.length ?? 0) + (this.base.get(id)?.seqs.length ?? 0);
      }
      ops++;
    }
    for (const [id, cur] of now) this.writeBase(id, cur, out);
    for (const j of this.journal.splice(0, k)) {
      out.delJournal(j.n);
      this.journalBytes -= j.bytes;
    }
  }

  /** Makes session `id`'s base records hold `now` (undefined: no session). */
  private writeBase(id: string, now: SessionRecord | undefined, out: SessionRecordWriter): void {
    const b = this.base.get(id);
    if (now === undefined) {
      if (!b) return;
      for (const q of b.seqs) out.delResult(id, q);
      out.delHeader(id);
      this.base.delete(id);
      return;
    }
    out.putHeader({ id, forgottenBelow: now.forgottenBelow, lastActiveIndex: now.lastActiveIndex, lastActiveTs: now.lastActiveTs });
    const had = b && !b.stale ? new Set(b.seqs) : new Set<number>();
    const keep = new Set<number>();
    for (const [q, r] of now.results) {
      keep.add(q);
      if (!had.has(q)) out.putResult(id, q, r);
    }
    for (const q of b?.seqs ?? []) if (!keep.has(q)) out.delResult(id, q);
    this.base.set(id, { seqs: now.results.map(([q]) => q), stale: false });
  }

  /**
   * Replaces everything on disk with `sessions` as base records (a Raft snapshot installed, or
   * recovery from one): deletes the journal and the base of sessions not in `sessions`, and writes
   * each session of `sessions` whole; yields after each session's writes (the caller bounds its units).
   */
  *replaceSteps(sessions: readonly SessionRecord[], out: SessionRecordWriter): Generator<void, void, undefined> {
    for (const j of this.journal) out.delJournal(j.n);
    this.journal.length = 0;
    this.journalBytes = 0;
    this.round = new Map();
    const keep = new Set(sessions.map((s) => s.id));
    for (const [id, b] of [...this.base]) {
      if (keep.has(id)) continue;
      for (const q of b.seqs) out.delResult(id, q);
      out.delHeader(id);
      this.base.delete(id);
      yield;
    }
    for (const s of sessions) {
      const b = this.base.get(s.id);
      if (b) b.stale = true; // rewrite every result: the old base may be another life of this id
      this.writeBase(s.id, s, out);
      yield;
    }
  }

  /** Discards the round's changes (a replacement follows: the recorder's caller took nothing). */
  discardRound(): void {
    this.round = new Map();
  }
}
