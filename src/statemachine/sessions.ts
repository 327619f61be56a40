/**
 * Client sessions of one shard (Raft dissertation §6.3): the table that deduplicates retried
 * writes, its expiry and eviction rules, its validation, and the binary encoding of the results
 * it keeps (shared by snapshots and the durable state records).
 *
 * A write proposed with a {@link WriteSession} `(id, seq, ackedBelow)` is applied at most once per
 * shard: the first attempt's result is stored under `(id, seq)` and every later attempt gets it
 * back without applying anything. The client tells the shard, with `ackedBelow`, which results it
 * no longer needs. Every rule below depends only on the log (entry indexes and the timestamps the
 * leader wrote into the entries), so every replica keeps the same table.
 *
 * - Lookup: seq below the session's floor (`forgottenBelow`: raised by `ackedBelow` and by the
 *   per-session bound) is refused with SESSION_EXPIRED; a stored result is replayed; else the
 *   write applies and its result is stored (every result but a WRONG_SHARD rejection, which says
 *   the write was not executed by this shard: the client retries it where the key lives now).
 * - Expiry: at every applied entry, sessions idle for longer than `ttlMs` (the entry's effective
 *   timestamp minus the session's last write's) are dropped, whole.
 * - Eviction: a new session beyond `maxSessions` evicts the least recently active one (the one
 *   whose last write has the lowest log index).
 * - Per-session bound: beyond `maxResults` stored results, the lowest seqs are dropped and the
 *   floor rises above them (their retries get SESSION_EXPIRED, never a second application; so may
 *   a lower seq not applied yet: a client should not keep more than that many writes outstanding).
 *
 * A session that was dropped whole (expired or evicted) is forgotten: a retry arriving after that
 * cannot be told from a new session's first write, and applies again. The TTL is far above any
 * call deadline, and eviction picks the least recently active session, so only a client idle for
 * longer than the TTL, or than it takes `maxSessions` other sessions to write, can meet this.
 */
import { ByteReader, ByteWriter } from './binary.js';
import { ValidationError, type ValidationErrorCode } from './errors.js';
import { MAX_SESSION_ID_LENGTH, MAX_VALUE_BYTES, MAX_TXN_OPS, MIN_SESSION_ID_LENGTH } from './limits.js';
import type { StateSink } from './state-sink.js';
import type { SessionHeader, SessionResult, VersionedValue, WriteSession } from './types.js';

/** The characters and length a session id must have. */
export const SESSION_ID_PATTERN = new RegExp(`^[A-Za-z0-9_-]{${MIN_SESSION_ID_LENGTH},${MAX_SESSION_ID_LENGTH}}$`);

/** The limits of a session table; every replica of a shard must use the same ones (they are kept in snapshots). */
export interface SessionLimits {
  /** Idle time (by log timestamps) after which a session is dropped. */
  readonly ttlMs: number;
  /** Most sessions kept. */
  readonly maxSessions: number;
  /** Most results kept per session. */
  readonly maxResults: number;
}


/** A whole session, as snapshots and durable records carry it. */
export interface SessionRecord extends SessionHeader {
  /** Stored results by seq, ascending; every seq >= forgottenBelow. */
  readonly results: ReadonlyArray<readonly [number, SessionResult]>;
}

/**
 * Checks a write session (id pattern, seq >= 1, ackedBelow <= seq); throws ValidationError
 * INVALID_ARGUMENT naming `what`. Returns it.
 */
export function validateWriteSession(s: unknown, what = 'session'): WriteSession {
  if (typeof s !== 'object' || s === null) throw new ValidationError('INVALID_ARGUMENT', `${what} must be an object`);
  const { id, seq, ackedBelow } = s as Record<string, unknown>;
  if (typeof id !== 'string' || !SESSION_ID_PATTERN.test(id)) {
    throw new ValidationError(
      'INVALID_ARGUMENT',
      `${what} id must be ${MIN_SESSION_ID_LENGTH}-${MAX_SESSION_ID_LENGTH} characters of [A-Za-z0-9_-], got ${JSON.stringify(typeof id === 'string' ? id.slice(0, 80) : id)}`,
    );
  }
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) {
    throw new ValidationError('INVALID_ARGUMENT', `${what} seq must be an integer in [1, 2^53), got ${String(seq)}`);
  }
  if (typeof ackedBelow !== 'number' || !Number.isSafeInteger(ackedBelow) || ackedBelow < 0) {
    throw new ValidationError('INVALID_ARGUMENT', `${what} acked_below must be a non-negative integer below 2^53, got ${String(ackedBelow)}`);
  }
  if (ackedBelow > seq) throw new ValidationError('INVALID_ARGUMENT', `${what} acked_below (${ackedBelow}) must not exceed seq (${seq})`);
  return s as WriteSession;
}

/** The SESSION_EXPIRED error of a write whose seq is below its session's floor. */
export function sessionExpiredError(ws: WriteSession, forgottenBelow: number): ValidationError {
  return new ValidationError(
    'SESSION_EXPIRED',
    `write ${ws.seq} of session ${ws.id} is below ${forgottenBelow}, the oldest this shard remembers: ` +
      "this write's earlier attempt may have applied; its result is no longer kept",
  );
}

/** Whether `result` is kept for replay (everything but a WRONG_SHARD rejection: nothing was executed here). */
export function isStoredResult(result: { readonly type: string; readonly error?: ValidationError }): boolean {
  if (result.type === 'rejected') return result.error?.code !== 'WRONG_SHARD';
  return result.type === 'put' || result.type === 'delete' || result.type === 'txn' || result.type === 'trigger';
}

// ------------------------------------------------------------------ the table

interface Session {
  readonly id: string;
  forgottenBelow: number;
  lastActiveIndex: number;
  lastActiveTs: number;
  /** Seqs of the stored results, ascending. */
  readonly seqs: number[];
  readonly results: Map<number, SessionResult>;
}

/** What {@link SessionTable.begin} decided for a write. */
export type SessionDecision =
  /** Apply the write, then {@link SessionTable.store} its result. */
  | { readonly kind: 'apply'; readonly session: object }
  /** Already applied: answer with this result. */
  | { readonly kind: 'duplicate'; readonly result: SessionResult }
  /** Below the floor: refuse with this error. */
  | { readonly kind: 'expired'; readonly error: ValidationError };

/**
 * The session table of one shard (see the file header for its rules). Deterministic: its state
 * depends only on the calls, which the state machine makes in log order with log values. Reports
 * every change of its records to the sink the getter returns (the machine's).
 */
export class SessionTable {
  /** Sessions in activity order: least recently active first (a touch moves a session to the end). */
  private readonly sessions = new Map<string, Session>();

  constructor(
    readonly limits: SessionLimits,
    private readonly sink: () => StateSink | undefined,
  ) {}

  /** Number of sessions kept. */
  get size(): number {
    return this.sessions.size;
  }

  /** Drops every session idle for longer than the TTL at effective timestamp `ts`. O(sessions dropped). */
  expire(ts: number): void {
    if (this.sessions.size === 0) return;
    for (const s of this.sessions.values()) {
      if (ts - s.lastActiveTs <= this.limits.ttlMs) break; // activity order is timestamp order
      this.drop(s);
    }
  }

  /**
   * Looks up the session of a write at log `index` with effective timestamp `ts`: creates it
   * (evicting the least recently active session beyond the bound) or marks it active, raises its
   * floor to `ackedBelow` (dropping the results below), and decides the write's fate.
   */
  begin(ws: WriteSession, index: number, ts: number): SessionDecision {
    let s = this.sessions.get(ws.id);
    if (s === undefined) {
      while (this.sessions.size >= this.limits.maxSessions) this.drop(this.sessions.values().next().value!);
      s = { id: ws.id, forgottenBelow: 0, lastActiveIndex: index, lastActiveTs: ts, seqs: [], results: new Map() };
    } else this.sessions.delete(ws.id);
    this.sessions.set(ws.id, s);
    s.lastActiveIndex = index;
    s.lastActiveTs = ts;
    if (ws.ackedBelow > s.forgottenBelow) this.forget(s, ws.ackedBelow);
    this.sink()?.sessionUpdated(header(s));
    if (ws.seq < s.forgottenBelow) return { kind: 'expired', error: sessionExpiredError(ws, s.forgottenBelow) };
    const prior = s.results.get(ws.seq);
    if (prior !== undefined) return { kind: 'duplicate', result: prior };
    return { kind: 'apply', session: s };
  }

  /** Stores the result of a write `begin` let apply (the lowest seqs go beyond the per-session bound). */
  store(session: object, seq: number, result: SessionResult): void {
    const s = session as Session;
    const seqs = s.seqs;
    let at = seqs.length;
    if (at > 0 && seqs[at - 1]! > seq) {
      let lo = 0;
      while (lo < at) {
        const mid = (lo + at) >>> 1;
        if (seqs[mid]! < seq) lo = mid + 1;
        else at = mid;
      }
    }
    seqs.splice(at, 0, seq);
    s.results.set(seq, result);
    this.sink()?.sessionResultAdded(s.id, seq, result);
    if (seqs.length > this.limits.maxResults) {
      this.forget(s, seqs[seqs.length - this.limits.maxResults]!);
      this.sink()?.sessionUpdated(header(s));
    }
  }

  /** Raises `s`'s floor to `below`, dropping the stored results under it. */
  private forget(s: Session, below: number): void {
    s.forgottenBelow = below;
    let n = 0;
    while (n < s.seqs.length && s.seqs[n]! < below) n++;
    if (n === 0) return;
    const dropped = s.seqs.splice(0, n);
    for (const q of dropped) s.results.delete(q);
    this.sink()?.sessionResultsDropped(s.id, dropped);
  }

  private drop(s: Session): void {
    this.sessions.delete(s.id);
    this.sink()?.sessionDropped(s.id, s.seqs.slice());
  }

  /** The session `id` as a record (for diagnostics and tests), or undefined. */
  get(id: string): SessionRecord | undefined {
    const s = this.sessions.get(id);
    return s === undefined ? undefined : toRecord(s);
  }

  /** Every session as a record, least recently active first. The results are the table's own: do not mutate them. */
  toRecords(): SessionRecord[] {
    const out: SessionRecord[] = [];
    for (const s of this.sessions.values()) out.push(toRecord(s));
    return out;
  }

  /** A table holding `records` (in activity order, as `toRecords` gives them; checked by the decoders). */
  static fromRecords(limits: SessionLimits, sink: () => StateSink | undefined, records: readonly SessionRecord[]): SessionTable {
    const t = new SessionTable(limits, sink);
    for (const r of records) {
      t.sessions.set(r.id, {
        id: r.id,
        forgottenBelow: r.forgottenBelow,
        lastActiveIndex: r.lastActiveIndex,
        lastActiveTs: r.lastActiveTs,
        seqs: r.results.map(([q]) => q),
        results: new Map(r.results),
      });
    }
    return t;
  }
}

function header(s: Session): SessionHeader {
  return { id: s.id, forgottenBelow: s.forgottenBelow, lastActiveIndex: s.lastActiveIndex, lastActiveTs: s.lastActiveTs };
}

function toRecord(s: Session): SessionRecord {
  return { ...header(s), results: s.seqs.map((q) => [q, s.results.get(q)!] as const) };
}

// ------------------------------------------------------------------ checks of decoded records

/** What decoded session records are checked against: the state they belong to. */
export interface SessionContext {
  readonly appliedIndex: number;
  readonly lastTimestampMs: number;
  readonly revision: number;
  readonly limits: SessionLimits;
}

/**
 * Checks decoded sessions (already in activity order): valid unique ids, strictly increasing
 * last-active indexes and non-decreasing timestamps within the applied state, results ascending,
 * at or above the floor, within the bounds and revisions. Calls `fail` (which throws) on the first problem.
 */
export function checkSessionRecords(records: readonly SessionRecord[], ctx: SessionContext, fail: (what: string) => never): void {
  const { limits } = ctx;
  if (limits.ttlMs < 0 || limits.maxSessions < 1 || limits.maxResults < 1) fail('session limits out of range');
  if (records.length > limits.maxSessions) fail(`${records.length} sessions exceed the bound ${limits.maxSessions}`);
  const ids = new Set<string>();
  let prevIndex = 0;
  let prevTs = 0;
  for (const r of records) {
    if (!SESSION_ID_PATTERN.test(r.id)) fail(`invalid session id ${JSON.stringify(r.id)}`);
    if (ids.has(r.id)) fail(`duplicate session ${r.id}`);
    ids.add(r.id);
    if (r.lastActiveIndex <= prevIndex || r.lastActiveIndex > ctx.appliedIndex) fail(`session ${r.id}: last active index ${r.lastActiveIndex} out of order`);
    if (r.lastActiveTs < prevTs || r.lastActiveTs > ctx.lastTimestampMs) fail(`session ${r.id}: last active time ${r.lastActiveTs} out of order`);
    prevIndex = r.lastActiveIndex;
    prevTs = r.lastActiveTs;
    if (r.results.length > limits.maxResults) fail(`session ${r.id}: ${r.results.length} results exceed the bound ${limits.maxResults}`);
    let prevSeq = 0;
    for (const [seq, res] of r.results) {
      if (seq < 1 || seq <= prevSeq || seq < r.forgottenBelow) fail(`session ${r.id}: result ${seq} out of order or forgotten`);
      prevSeq = seq;
      if (res.revision > ctx.revision || res.timestampMs > r.lastActiveTs) fail(`session ${r.id}: result ${seq} is after the session's last write`);
    }
  }
}

// ------------------------------------------------------------------ result encoding

const R_PUT = 1;
const R_DELETE = 2;
const R_TXN = 3;
const R_TRIGGER = 4;
const R_REJECTED = 5;
const F_SUCCEEDED = 1;
const F_CURRENT = 2;
const F_CURRENT_VALUE = 4;
const F_PREVIOUS = 8;
const F_PREVIOUS_VALUE = 16;
const F_DELETED = 2;
const F_DELETE_CURRENT = 4;
const CODE_PATTERN = /^[A-Z][A-Z_]{0,63}$/;
const MAX_ERROR_MESSAGE_BYTES = 1024 * 1024;

/**
 * Writes one session of a snapshot's session table: `str id, varint forgottenBelow,
 * lastActiveIndex, lastActiveTs, varint n`, then n × (varint seq delta, result as
 * {@link writeSessionResult}).
 */
export function writeSessionRecord(w: ByteWriter, s: SessionRecord): void {
  w.str(s.id);
  w.varint(s.forgottenBelow);
  w.varint(s.lastActiveIndex);
  w.varint(s.lastActiveTs);
  w.varint(s.results.length);
  let prevSeq = 0;
  for (const [seq, r] of s.results) {
    w.varint(seq - prevSeq);
    prevSeq = seq;
    writeSessionResult(w, r);
  }
}

/**
 * Writes a stored result: `u8 kind` (1 put, 2 delete, 3 txn, 4 trigger, 5 rejected), then
 * put: `u8 flags (1 succeeded, 2 current, 4 current value, 8 previous, 16 previous value), varint
 * revision, version, timestampMs, [varint current version, [bytes value]], [varint previous version, [bytes value]]`;
 * delete: `u8 flags (1 succeeded, 2 deleted, 4 current), varint revision, timestampMs, [varint current version]`;
 * txn: `u8 succeeded, varint revision, timestampMs, varint n, n × varint failed compare index`;
 * trigger: `varint revision, timestampMs`; rejected: `str code, str message, varint revision, timestampMs`.
 */
export function writeSessionResult(w: ByteWriter, r: SessionResult): void {
  switch (r.type) {
    case 'put': {
      w.u8(R_PUT);
      const flags =
        (r.succeeded ? F_SUCCEEDED : 0) |
        (r.current ? F_CURRENT : 0) |
        (r.current?.value !== undefined ? F_CURRENT_VALUE : 0) |
        (r.previous ? F_PREVIOUS : 0) |
        (r.previous?.value !== undefined ? F_PREVIOUS_VALUE : 0);
      w.u8(flags);
      w.varint(r.revision);
      w.varint(r.version);
      w.varint(r.timestampMs);
      for (const v of [r.current, r.previous]) {
        if (!v) continue;
        w.varint(v.version);
        if (v.value !== undefined) w.bytes(v.value);
      }
      return;
    }
    case 'delete':
      w.u8(R_DELETE);
      w.u8((r.succeeded ? F_SUCCEEDED : 0) | (r.deleted ? F_DELETED : 0) | (r.current ? F_DELETE_CURRENT : 0));
      w.varint(r.revision);
      w.varint(r.timestampMs);
      if (r.current) w.varint(r.current.version);
      return;
    case 'txn':
      w.u8(R_TXN);
      w.u8(r.succeeded ? 1 : 0);
      w.varint(r.revision);
      w.varint(r.timestampMs);
      w.varint(r.failedCompares.length);
      for (const i of r.failedCompares) w.varint(i);
      return;
    case 'trigger':
      w.u8(R_TRIGGER);
      w.varint(r.revision);
      w.varint(r.timestampMs);
      return;
    case 'rejected': {
      w.u8(R_REJECTED);
      const code = r.error.code;
      const prefix = `${code}: `;
      w.str(code);
      w.str(r.error.message.startsWith(prefix) ? r.error.message.slice(prefix.length) : r.error.message);
      w.varint(r.revision);
      w.varint(r.timestampMs);
    }
  }
}

/** Encodes one stored result (see {@link writeSessionResult}). */
export function encodeSessionResult(r: SessionResult): Uint8Array {
  const w = new ByteWriter(32 + (r.type === 'put' ? (r.current?.value?.length ?? 0) + (r.previous?.value?.length ?? 0) : 0));
  writeSessionResult(w, r);
  return w.finish();
}

/** Reads a stored result written by {@link writeSessionResult}; values are views into the reader's input. */
export function readSessionResult(rd: ByteReader): SessionResult {
  const kind = rd.u8();
  switch (kind) {
    case R_PUT: {
      const flags = rd.u8();
      if ((flags & ~(F_SUCCEEDED | F_CURRENT | F_CURRENT_VALUE | F_PREVIOUS | F_PREVIOUS_VALUE)) !== 0) rd.fail(`unknown put result flags ${flags}`);
      if ((flags & F_CURRENT_VALUE && !(flags & F_CURRENT)) || (flags & F_PREVIOUS_VALUE && !(flags & F_PREVIOUS))) rd.fail('a value without its version');
      const revision = rd.varint();
      const version = rd.varint();
      const timestampMs = rd.varint();
      const versioned = (withValue: boolean): VersionedValue => {
        const v = rd.varint();
        return withValue ? { version: v, value: rd.view(rd.varintMax(MAX_VALUE_BYTES, 'result value length')) } : { version: v };
      };
      const current = flags & F_CURRENT ? versioned((flags & F_CURRENT_VALUE) !== 0) : undefined;
      const previous = flags & F_PREVIOUS ? versioned((flags & F_PREVIOUS_VALUE) !== 0) : undefined;
      return {
        type: 'put',
        succeeded: (flags & F_SUCCEEDED) !== 0,
        revision,
        version,
        timestampMs,
        ...(current ? { current } : {}),
        ...(previous ? { previous } : {}),
      };
    }
    case R_DELETE: {
      const flags = rd.u8();
      if ((flags & ~(F_SUCCEEDED | F_DELETED | F_DELETE_CURRENT)) !== 0) rd.fail(`unknown delete result flags ${flags}`);
      const revision = rd.varint();
      const timestampMs = rd.varint();
      const base = { type: 'delete' as const, succeeded: (flags & F_SUCCEEDED) !== 0, revision, timestampMs, deleted: (flags & F_DELETED) !== 0 };
      return flags & F_DELETE_CURRENT ? { ...base, current: { version: rd.varint() } } : base;
    }
    case R_TXN: {
      const ok = rd.u8();
      if (ok > 1) rd.fail(`bad txn result flag ${ok}`);
      const revision = rd.varint();
      const timestampMs = rd.varint();
      const n = rd.varintMax(MAX_TXN_OPS, 'failed compare count');
      const failedCompares: number[] = [];
      for (let i = 0; i < n; i++) failedCompares.push(rd.varintMax(MAX_TXN_OPS - 1, 'failed compare index'));
      return { type: 'txn', succeeded: ok === 1, revision, timestampMs, failedCompares };
    }
    case R_TRIGGER: {
      const revision = rd.varint();
      return { type: 'trigger', revision, timestampMs: rd.varint() };
    }
    case R_REJECTED: {
      const code = rd.str(64, 'error code');
      if (!CODE_PATTERN.test(code)) rd.fail(`bad error code ${JSON.stringify(code)}`);
      const message = rd.str(MAX_ERROR_MESSAGE_BYTES, 'error message');
      const revision = rd.varint();
      const timestampMs = rd.varint();
      return { type: 'rejected', error: new ValidationError(code as ValidationErrorCode, message), revision, timestampMs };
    }
    default:
      return rd.fail(`unknown session result kind ${kind}`);
  }
}

/** Decodes one stored result encoded by {@link encodeSessionResult}; throws ValidationError with `code`. */
export function decodeSessionResult(bytes: Uint8Array, code: ValidationErrorCode = 'MALFORMED_SNAPSHOT'): SessionResult {
  const rd = new ByteReader(bytes, code);
  const r = readSessionResult(rd);
  rd.expectEnd();
  return r;
}
