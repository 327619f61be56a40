/**
 * Compact, checksummed binary encoding of a state machine's full retained state (versions, clock,
 * history). Size: about 540 lines, one piece: the encoder, the decoder (from one buffer or from
 * chunks) and the streamed install's value cursor read and write the same format.
 */
import { ByteReader, ByteWriter, crc32, utf8EncodeInto } from './binary.js';
import { ValidationError } from './errors.js';
import { compareKeys } from './keys.js';
import {
  DEFAULT_MAX_SESSION_RESULTS,
  DEFAULT_MAX_SESSIONS,
  DEFAULT_SESSION_TTL_MS,
  MAX_HOP_COUNT,
  MAX_KEY_BYTES,
  MAX_SESSION_ID_LENGTH,
  MAX_VALUE_BYTES,
} from './limits.js';
import { checkSessionRecords, readSessionResult, writeSessionRecord, type SessionRecord } from './sessions.js';
import type { KvEvent, SessionResult, VersionRecord } from './types.js';
import { ChunkedByteReader, skipBytes } from './chunked-reader.js';
import { VALUE_ON_DISK } from './value-source.js';


/** The plain data a snapshot carries; `KvStateMachine` converts to and from it. */
export interface SnapshotData {
  readonly appliedIndex: number;
  readonly revision: number;
  readonly compactRevision: number;
  readonly lastTimestampMs: number;
  readonly maxHistoryRevisions: number;
  readonly maxHistoryBytes: number;
  /** Timestamps of revisions compactRevision..revision (index 0 = compactRevision). */
  readonly revisionTimestamps: readonly number[];
  /** Every key with retained versions, sorted by compareKeys; versions sorted by revision. */
  readonly keys: ReadonlyArray<readonly [string, readonly VersionRecord[]]>;
  /** The watch history, oldest first: every event of revisions oldestHistoryRevision..revision. */
  readonly history: readonly KvEvent[];
  /** Session limits (absent: the defaults, as in snapshots written before sessions existed). */
  readonly sessionTtlMs?: number;
  readonly maxSessions?: number;
  readonly maxSessionResults?: number;
  /** The client sessions, least recently active first (absent: none). */
  readonly sessions?: readonly SessionRecord[];
}

/** Whether `d` has no sessions and the default session limits (then it is written in format 1, as before sessions). */
function sessionless(d: SnapshotData): boolean {
  return (
    (d.sessions?.length ?? 0) === 0 &&
    (d.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS) === DEFAULT_SESSION_TTL_MS &&
    (d.maxSessions ?? DEFAULT_MAX_SESSIONS) === DEFAULT_MAX_SESSIONS &&
    (d.maxSessionResults ?? DEFAULT_MAX_SESSION_RESULTS) === DEFAULT_MAX_SESSION_RESULTS
  );
}

/** The 4 magic bytes "KVSM" that start every snapshot. */
export const SNAPSHOT_MAGIC = new Uint8Array([0x4b, 0x56, 0x53, 0x4d]);

/**
 * Snapshot format version (byte 4) of a state without client sessions (and with the default
 * session limits): such a state is written exactly as before sessions existed, so nodes that
 * predate them still read it. Any other state is written in {@link SNAPSHOT_SESSIONS_FORMAT_VERSION}.
 * Both are read.
 *
 * Format 1 layout after magic and version (varint = minimal LEB128):
 *   varint appliedIndex, revision, compactRevision, lastTimestampMs, maxHistoryRevisions, maxHistoryBytes
 *   revision timestamps for compactRevision..revision: first absolute, then non-negative deltas
 *   varint keyCount, then per key in key order:
 *     varint sharedPrefixBytes (with the previous key's UTF-8), bytes suffix, varint versionCount,
 *     per version: varint revision (first absolute, then delta >= 1), varint valueLength+1 (0 = tombstone),
 *     value bytes, and varint timestampMs only when revision < compactRevision (otherwise implied)
 *   varint eventCount, then per event: varint revision delta (first absolute), u8 type (0 put, 1 delete,
 *     2 trigger), str key, and bytes value for triggers only (put values are the stored versions)
 *   u32 big-endian CRC-32 of everything before it.
 */
export const SNAPSHOT_FORMAT_VERSION = 1;

/**
 * Snapshot format version (byte 4) of a state with client sessions or non-default session limits.
 * Format 2 is format 1 with, inserted before the CRC: varint sessionTtlMs, maxSessions, maxSessionResults, varint
 *   sessionCount, then per session (least recently active first): str id, varint forgottenBelow,
 *   lastActiveIndex, lastActiveTs, resultCount, per result (ascending seq): varint seq (first
 *   absolute, then delta >= 1) and the result (sessions.ts, `writeSessionResult`).
 */
export const SNAPSHOT_SESSIONS_FORMAT_VERSION = 2;

/*
 * Optional trailing sections (both formats), after the last section of the format and before the
 * CRC: each is `u8 tag` and its body, in strictly ascending tag order, written only when it has
 * something to say; a reader fails on a tag it does not know (never skips data it cannot read).
 * Readers from before these sections refuse a snapshot holding one (trailing bytes).
 *
 * Tag 1, hop counts: present when any retained version or history event carries a lambda hop
 * count (`VersionRecord.hops`, `KvEvent.hops` > 0): varint count (>= 1), then per revision,
 * ascending: varint revision (first absolute, then delta >= 1) and varint hops (1..MAX_HOP_COUNT).
 * Every version and event of a listed revision has that hop count (one command wrote them all);
 * every other has none. A state without hop counts is written exactly as before they existed, and
 * a snapshot without the section decodes with none.
 */

/** Tag of the trailing hop-count section. */
const SECTION_HOPS = 1;

/** Appends the trailing hop-count section of `hopsByRevision` (revision -> hops > 0), if it is not empty. */
export function writeHopsSection(w: ByteWriter, hopsByRevision: ReadonlyMap<number, number>): void {
  if (hopsByRevision.size === 0) return;
  const revisions = [...hopsByRevision.keys()].sort((a, b) => a - b);
  w.u8(SECTION_HOPS);
  w.varint(revisions.length);
  let prev = 0;
  for (const rev of revisions) {
    w.varint(rev - prev);
    prev = rev;
    w.varint(hopsByRevision.get(rev)!);
  }
}

/** Notes the hop count of `x` (when it has one) under its revision. */
function noteHops(into: Map<number, number>, x: { readonly revision: number; readonly hops?: number }): void {
  if (x.hops !== undefined && x.hops > 0) into.set(x.revision, x.hops);
}

const FORMAT_V1 = SNAPSHOT_FORMAT_VERSION;

const EV_PUT = 0;
const EV_DELETE = 1;
const EV_TRIGGER = 2;

/** Encodes snapshot data (assumed consistent, as produced by KvStateMachine). */
export function encodeSnapshot(d: SnapshotData): Uint8Array {
  const w = new ByteWriter(4096);
  w.raw(SNAPSHOT_MAGIC);
  const v1 = sessionless(d);
  w.u8(v1 ? FORMAT_V1 : SNAPSHOT_SESSIONS_FORMAT_VERSION);
  w.varint(d.appliedIndex);
  w.varint(d.revision);
  w.varint(d.compactRevision);
  w.varint(d.lastTimestampMs);
  w.varint(d.maxHistoryRevisions);
  w.varint(d.maxHistoryBytes);
  let prevTs = 0;
  d.revisionTimestamps.forEach((t, i) => {
    w.varint(i === 0 ? t : t - prevTs);
    prevTs = t;
  });
  w.varint(d.keys.length);
  const hops = new Map<number, number>();
  // Two scratch buffers (current and previous key) avoid an allocation per key.
  let cur = new Uint8Array(MAX_KEY_BYTES);
  let prev = new Uint8Array(MAX_KEY_BYTES);
  let prevLen = 0;
  for (const [key, versions] of d.keys) {
    const len = utf8EncodeInto(key, cur);
    let shared = 0;
    const max = Math.min(len, prevLen);
    while (shared < max && cur[shared] === prev[shared]) shared++;
    w.varint(shared);
    w.bytes(cur.subarray(shared, len));
    [cur, prev] = [prev, cur];
    prevLen = len;
    w.varint(versions.length);
    let prevRev = 0;
    for (const v of versions) {
      noteHops(hops, v);
      w.varint(v.revision - prevRev);
      prevRev = v.revision;
      if (v.value === null) w.varint(0);
      else {
        w.varint(v.value.length + 1);
        w.raw(v.value);
      }
      if (v.revision < d.compactRevision) w.varint(v.timestampMs);
    }
  }
  w.varint(d.history.length);
  let prevEvRev = 0;
  for (const e of d.history) {
    noteHops(hops, e);
    w.varint(e.revision - prevEvRev);
    prevEvRev = e.revision;
    w.u8(e.type === 'put' ? EV_PUT : e.type === 'delete' ? EV_DELETE : EV_TRIGGER);
    w.str(e.key);
    if (e.type === 'trigger') w.bytes(e.value!);
  }
  if (!v1) {
    w.varint(d.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS);
    w.varint(d.maxSessions ?? DEFAULT_MAX_SESSIONS);
    w.varint(d.maxSessionResults ?? DEFAULT_MAX_SESSION_RESULTS);
    const sessions = d.sessions ?? [];
    w.varint(sessions.length);
    for (const s of sessions) writeSessionRecord(w, s);
  }
  writeHopsSection(w, hops);
  w.u32(crc32(w.view()));
  return w.finish();
}

/** Binary search of a key's versions (sorted by revision) for one revision. */
export function findVersion(versions: readonly VersionRecord[], revision: number): VersionRecord | undefined {
  let lo = 0;
  let hi = versions.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const r = versions[mid]!.revision;
    if (r === revision) return versions[mid];
    if (r < revision) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

/**
 * Decodes and checks a snapshot: magic, version, checksum, canonical varints, key order, version
 * and history invariants. Any problem throws ValidationError with code MALFORMED_SNAPSHOT.
 * `bytes` is copied once; decoded values are views into that private copy (one allocation
 * instead of one per value), so the copy stays alive while any restored value is retained.
 */
export function decodeSnapshot(bytes: Uint8Array): SnapshotData {
  return runSteps(decodeSnapshotSteps(bytes));
}

/** Checks a snapshot's type, length, magic and checksum (ValidationError MALFORMED_SNAPSHOT otherwise); returns the length of its body (all but the checksum). */
function checkedBodyLength(bytes: Uint8Array): number {
  if (!(bytes instanceof Uint8Array)) throw new ValidationError('MALFORMED_SNAPSHOT', 'snapshot must be a Uint8Array');
  if (bytes.length < SNAPSHOT_MAGIC.length + 1 + 4) throw new ValidationError('MALFORMED_SNAPSHOT', 'snapshot too short');
  for (let i = 0; i < SNAPSHOT_MAGIC.length; i++) {
    if (bytes[i] !== SNAPSHOT_MAGIC[i]) throw new ValidationError('MALFORMED_SNAPSHOT', 'bad magic (not a kvcascade snapshot)');
  }
  const body = bytes.length - 4;
  const stored = ((bytes[body]! << 24) | (bytes[body + 1]! << 16) | (bytes[body + 2]! << 8) | bytes[body + 3]!) >>> 0;
  if (stored !== crc32(bytes.subarray(0, body))) throw new ValidationError('MALFORMED_SNAPSHOT', 'checksum mismatch');
  return body;
}

/**
 * The checks of a snapshot that cost no decoding — magic, checksum (one native pass), format
 * version — and its applied index, read from the header; throws ValidationError
 * (MALFORMED_SNAPSHOT) like {@link decodeSnapshot}. A host uses it to accept a large snapshot
 * before decoding it over several steps ({@link decodeSnapshotSteps}).
 */
export function snapshotAppliedIndex(bytes: Uint8Array): number {
  const body = checkedBodyLength(bytes);
  const r = new ByteReader(bytes.subarray(0, body), 'MALFORMED_SNAPSHOT');
  r.view(SNAPSHOT_MAGIC.length);
  const version = r.u8();
  if (version !== FORMAT_V1 && version !== SNAPSHOT_SESSIONS_FORMAT_VERSION) r.fail(`unsupported snapshot format version ${version}`);
  return r.varint();
}

/** Keys decoded (or rebuilt) between two yields of the stepwise decoders. */
export const RESTORE_STEP_KEYS = 2048;

/** Runs a stepwise computation (a generator that yields between bounded steps) to its end. */
export function runSteps<T>(steps: Generator<void, T, undefined>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * Keys a streamed decode with `cold` left out of `SnapshotData.keys`, in key order: those whose
 * only version is live and older than the history bound (its value on disk), as key, revision and
 * timestamp only (no version object) — what a restart loads as cold keys (`loadState` with
 * `coldKeys`), plus the timestamp and hop counts the install's records need.
 */
export interface ColdVersions {
  readonly keys: string[];
  readonly revisions: number[];
  readonly timestamps: number[];
  /** Hop counts of the snapshot by revision (the hops section; only revisions with a count), or undefined when it has none. */
  hops?: ReadonlyMap<number, number>;
}

/** The version of cold key `i` of `cold` (value on disk). */
export function coldVersion(cold: ColdVersions, i: number): VersionRecord {
  const revision = cold.revisions[i]!;
  const hops = cold.hops?.get(revision);
  return { revision, timestampMs: cold.timestamps[i]!, value: VALUE_ON_DISK, ...(hops !== undefined ? { hops } : {}) };
}

/**
 * The keys of `keys` and `cold` (each in key order, disjoint) merged in key order, the cold ones
 * with their one version made as they come (nothing is held for them): the whole state's keys, as
 * `toRecords().keys` would list them.
 */
export function* mergeColdKeys(keys: SnapshotData['keys'], cold: ColdVersions): Generator<readonly [string, readonly VersionRecord[]], void, undefined> {
  let i = 0;
  let j = 0;
  while (i < keys.length || j < cold.keys.length) {
    if (j >= cold.keys.length || (i < keys.length && compareKeys(keys[i]![0], cold.keys[j]!) < 0)) yield keys[i++]!;
    else {
      yield [cold.keys[j]!, [coldVersion(cold, j)]];
      j++;
    }
  }
}

/**
 * {@link decodeSnapshot} in bounded steps: yields after every {@link RESTORE_STEP_KEYS} keys (the
 * checksum and the copy are one step each), so a host can spread a large snapshot's decoding over
 * event-loop turns. Returns the same result, throws the same errors. With `adoptInput`, values
 * are views into `bytes` itself instead of a private copy (no second copy of a large snapshot): the
 * caller promises never to change `bytes`. With `cold` (a streamed snapshot only), keys whose only version is live
 * with its value on disk go there instead of into `keys` (see {@link ColdVersions}), so the decode
 * never holds a version object for them.
 */
export function* decodeSnapshotSteps(bytes: Uint8Array | ChunkedByteReader, adoptInput = false, cold?: ColdVersions): Generator<void, SnapshotData, undefined> {
  // Streamed (a reader over chunk records of the body, whose checksum the receiver verified as the
  // chunks arrived): values stay on disk (VALUE_ON_DISK) except those the watch history may hold.
  const streamed = bytes instanceof ChunkedByteReader;
  let r: ByteReader;
  if (streamed) r = bytes;
  else {
    const body = checkedBodyLength(bytes);
    yield;
    const own = adoptInput ? bytes.subarray(0, body) : bytes.slice(0, body);
    yield;
    r = new ByteReader(own, 'MALFORMED_SNAPSHOT');
  }
  r.view(SNAPSHOT_MAGIC.length);
  const version = r.u8();
  if (version !== FORMAT_V1 && version !== SNAPSHOT_SESSIONS_FORMAT_VERSION) r.fail(`unsupported snapshot format version ${version}`);
  const appliedIndex = r.varint();
  const revision = r.varint();
  const compactRevision = r.varintMax(revision, 'compactRevision');
  const lastTimestampMs = r.varint();
  const maxHistoryRevisions = r.varint();
  const maxHistoryBytes = r.varint();
  if (maxHistoryRevisions < 1 || maxHistoryBytes < 1) r.fail('history limits must be positive');

  const nTimes = revision - compactRevision + 1;
  if (nTimes > r.remaining) r.fail(`revision timestamp count ${nTimes} exceeds input`);
  // Streamed: versions from here on keep their values in memory (the history holds at most
  // maxHistoryRevisions revisions, the newest; its put events need their values).
  const keepFrom = streamed ? revision - maxHistoryRevisions + 1 : 0;
  const revisionTimestamps: number[] = new Array<number>(nTimes);
  let ts = 0;
  for (let i = 0; i < nTimes; i++) {
    ts = i === 0 ? r.varint() : ts + r.varint();
    if (!Number.isSafeInteger(ts)) r.fail('timestamp overflow');
    revisionTimestamps[i] = ts;
  }
  if (lastTimestampMs < ts) r.fail('lastTimestampMs is older than the last revision');
  const tsOf = (rev: number): number => revisionTimestamps[rev - compactRevision]!;

  const nKeys = r.varintMax(r.remaining, 'key count');
  const keys: Array<readonly [string, VersionRecord[]]> = [];
  const byKey = new Map<string, VersionRecord[]>();
  const scratch = new Uint8Array(MAX_KEY_BYTES); // holds the previous key's UTF-8 bytes
  let prevLen = 0;
  let prevKey: string | undefined;
  for (let k = 0; k < nKeys; k++) {
    const shared = r.varintMax(prevLen, 'shared key prefix');
    const suffixLen = r.varintMax(MAX_KEY_BYTES - shared, 'key suffix length');
    scratch.set(r.view(suffixLen), shared);
    const len = shared + suffixLen;
    if (len === 0) r.fail('empty key');
    const key = r.decodeUtf8(scratch.subarray(0, len), 'key');
    if (prevKey !== undefined && compareKeys(prevKey, key) >= 0) r.fail('keys are not strictly increasing');
    prevKey = key;
    prevLen = len;
    const nVersions = r.varintMax(r.remaining, 'version count');
    if (nVersions === 0) r.fail('key without versions');
    const versions: VersionRecord[] = [];
    let rev = 0;
    for (let i = 0; i < nVersions; i++) {
      const delta = r.varint();
      if (delta === 0) r.fail('version revisions are not strictly increasing');
      rev += delta;
      if (rev > revision) r.fail(`version revision ${rev} is after the snapshot revision`);
      const vlen = r.varintMax(MAX_VALUE_BYTES + 1, 'value length');
      let value: Uint8Array | null;
      if (vlen === 0) value = null;
      else if (!streamed) value = r.view(vlen - 1);
      else if (rev < keepFrom) {
        skipBytes(r, vlen - 1);
        value = VALUE_ON_DISK;
      } else value = r.view(vlen - 1).slice();
      if (rev <= compactRevision && (i > 0 || value === null)) {
        r.fail('compacted versions survive in the snapshot');
      }
      let vts: number;
      if (rev < compactRevision) {
        vts = r.varint();
        if (vts > tsOf(compactRevision)) r.fail('version timestamp after the compaction point');
      } else vts = tsOf(rev);
      versions.push({ revision: rev, timestampMs: vts, value });
    }
    if (cold !== undefined && streamed && nVersions === 1 && versions[0]!.value === VALUE_ON_DISK) {
      cold.keys.push(key);
      cold.revisions.push(rev);
      cold.timestamps.push(versions[0]!.timestampMs);
    } else {
      keys.push([key, versions]);
      byKey.set(key, versions);
    }
    if (k % RESTORE_STEP_KEYS === RESTORE_STEP_KEYS - 1) yield;
  }

  const nEvents = r.varintMax(r.remaining, 'event count');
  if ((nEvents === 0) !== (revision === 0)) r.fail('history must be non-empty exactly when revision > 0');
  const history: KvEvent[] = [];
  let evRev = 0;
  for (let i = 0; i < nEvents; i++) {
    const delta = r.varint();
    if (i > 0 && delta > 1) r.fail('history has a gap');
    evRev += delta;
    if (evRev < Math.max(1, compactRevision) || evRev > revision) r.fail(`event revision ${evRev} out of range`);
    const type = r.u8();
    const key = r.str(MAX_KEY_BYTES, 'event key');
    if (key.length === 0) r.fail('empty event key');
    const timestampMs = tsOf(evRev);
    if (type === EV_TRIGGER) {
      const view = r.view(r.varintMax(MAX_VALUE_BYTES, 'trigger value length'));
      history.push({ type: 'trigger', key, value: streamed ? view.slice() : view, revision: evRev, timestampMs });
    } else if (type === EV_PUT) {
      const v = findVersion(byKey.get(key) ?? [], evRev);
      if (v === undefined || v.value === null) r.fail('put event without a stored version');
      if (v.value === VALUE_ON_DISK) r.fail('put event older than the history bound');
      history.push({ type: 'put', key, value: v.value!, revision: evRev, timestampMs });
    } else if (type === EV_DELETE) {
      if (evRev > compactRevision) {
        const v = findVersion(byKey.get(key) ?? [], evRev);
        if (v === undefined || v.value !== null) r.fail('delete event without a stored tombstone');
      }
      history.push({ type: 'delete', key, revision: evRev, timestampMs });
    } else r.fail(`unknown event type ${type}`);
  }
  if (nEvents > 0 && evRev !== revision) r.fail('history does not end at the snapshot revision');
  let sessionPart: Pick<SnapshotData, 'sessionTtlMs' | 'maxSessions' | 'maxSessionResults' | 'sessions'> = {};
  if (version !== FORMAT_V1) {
    const limits = { ttlMs: r.varint(), maxSessions: r.varint(), maxResults: r.varint() };
    const nSessions = r.varintMax(Math.min(r.remaining, limits.maxSessions), 'session count');
    const sessions: SessionRecord[] = [];
    for (let i = 0; i < nSessions; i++) {
      const id = r.str(MAX_SESSION_ID_LENGTH, 'session id');
      const forgottenBelow = r.varint();
      const lastActiveIndex = r.varint();
      const lastActiveTs = r.varint();
      const nResults = r.varintMax(Math.min(r.remaining, limits.maxResults), 'session result count');
      const results: Array<readonly [number, SessionResult]> = [];
      let seq = 0;
      for (let j = 0; j < nResults; j++) {
        const delta = r.varint();
        if (delta === 0 || seq + delta > Number.MAX_SAFE_INTEGER) r.fail('session results are not strictly increasing');
        seq += delta;
        results.push([seq, readSessionResult(r)]);
      }
      sessions.push({ id, forgottenBelow, lastActiveIndex, lastActiveTs, results });
    }
    checkSessionRecords(sessions, { appliedIndex, lastTimestampMs, revision, limits }, (what) => r.fail(what));
    sessionPart = { sessionTtlMs: limits.ttlMs, maxSessions: limits.maxSessions, maxSessionResults: limits.maxResults, sessions };
  }
  for (let lastTag = 0; r.remaining > 0; ) {
    const tag = r.u8();
    if (tag <= lastTag) r.fail(`trailing bytes (section ${tag} after section ${lastTag})`);
    lastTag = tag;
    if (tag === SECTION_HOPS) readHopsSection(r, keys, history, cold);
    else r.fail(`trailing bytes (unknown section ${tag})`);
  }
  r.expectEnd();
  return {
    ...sessionPart,
    appliedIndex,
    revision,
    compactRevision,
    lastTimestampMs,
    maxHistoryRevisions,
    maxHistoryBytes,
    revisionTimestamps,
    keys,
    history,
  };
}

/**
 * Reads the trailing hop-count section and gives each listed revision's versions (in `keys`) and
 * history events their hop count, in place; fails on a malformed section or a listed revision
 * with neither (the encoder lists only revisions it found, so a canonical snapshot has none).
 */
function readHopsSection(r: ByteReader, keys: Array<readonly [string, VersionRecord[]]>, history: KvEvent[], cold?: ColdVersions): void {
  const n = r.varintMax(r.remaining, 'hop count entries');
  if (n === 0) r.fail('empty hop count section');
  const hops = new Map<number, number>();
  let rev = 0;
  for (let i = 0; i < n; i++) {
    const delta = r.varint();
    if (delta === 0) r.fail('hop count revisions are not strictly increasing');
    rev += delta;
    const h = r.varintMax(MAX_HOP_COUNT, 'hop count');
    if (h === 0) r.fail('hop count 0 listed');
    hops.set(rev, h);
  }
  const used = new Set<number>();
  for (const [, versions] of keys) {
    for (let i = 0; i < versions.length; i++) {
      const h = hops.get(versions[i]!.revision);
      if (h === undefined) continue;
      versions[i] = { ...versions[i]!, hops: h };
      used.add(versions[i]!.revision);
    }
  }
  if (cold !== undefined) {
    for (const rev of cold.revisions) if (hops.has(rev)) used.add(rev);
    cold.hops = hops;
  }
  for (let i = 0; i < history.length; i++) {
    const h = hops.get(history[i]!.revision);
    if (h === undefined) continue;
    history[i] = { ...history[i]!, hops: h };
    used.add(history[i]!.revision);
  }
  if (used.size !== hops.size) r.fail('hop count listed for a revision with no version or event');
}

/**
 * The values of a streamed snapshot's versions, read in order from a second pass over its chunks
 * (`reader`, a fresh {@link ChunkedByteReader} over the body), so a follower writes its version
 * records without holding every value: {@link valueAt} must be asked in key order, then revision
 * order (the order of the snapshot and of the records); versions not asked for are skipped without
 * copying. The snapshot was decoded once already ({@link decodeSnapshotSteps}), so only what that
 * pass checked is relied on; a mismatch is a MALFORMED_SNAPSHOT ValidationError.
 */
export class SnapshotValueCursor {
  private readonly it: Generator<{ readonly key: string; readonly revision: number; readonly hasValue: boolean }, void, undefined>;
  private cur: { readonly key: string; readonly revision: number; readonly hasValue: boolean } | undefined;
  private pending = -1;

  constructor(private readonly r: ChunkedByteReader) {
    this.it = this.walk();
  }

  /** The value of `key`'s version at `revision` (a view: copy it to keep it), or a throw when the snapshot has none. */
  valueAt(key: string, revision: number): Uint8Array {
    for (;;) {
      if (this.cur === undefined) {
        const n = this.it.next();
        if (n.done) this.r.fail(`no version of ${JSON.stringify(key)} at ${revision}`);
        this.cur = n.value;
      }
      const c = compareKeys(this.cur.key, key);
      if (c < 0 || (c === 0 && this.cur.revision < revision)) {
        this.cur = undefined;
        continue;
      }
      if (c === 0 && this.cur.revision === revision && this.cur.hasValue) {
        const v = this.r.view(this.pending);
        this.pending = -1;
        this.cur = undefined;
        return v;
      }
      this.r.fail(`no value of ${JSON.stringify(key)} at ${revision}`);
    }
  }

  private *walk(): Generator<{ readonly key: string; readonly revision: number; readonly hasValue: boolean }, void, undefined> {
    const r = this.r;
    r.view(SNAPSHOT_MAGIC.length);
    r.u8(); // format version
    r.varint(); // appliedIndex
    const revision = r.varint();
    const compactRevision = r.varint();
    for (let i = 0; i < 3; i++) r.varint(); // lastTimestampMs, maxHistoryRevisions, maxHistoryBytes
    for (let i = revision - compactRevision + 1; i > 0; i--) r.varint();
    const nKeys = r.varint();
    const scratch = new Uint8Array(MAX_KEY_BYTES);
    for (let k = 0; k < nKeys; k++) {
      const shared = r.varintMax(MAX_KEY_BYTES, 'shared key prefix');
      const suffixLen = r.varintMax(MAX_KEY_BYTES - shared, 'key suffix length');
      scratch.set(r.view(suffixLen), shared);
      const key = r.decodeUtf8(scratch.subarray(0, shared + suffixLen), 'key');
      const nVersions = r.varint();
      let rev = 0;
      for (let i = 0; i < nVersions; i++) {
        rev += r.varint();
        const vlen = r.varint();
        this.pending = vlen - 1;
        yield { key, revision: rev, hasValue: vlen > 0 };
        if (this.pending > 0) skipBytes(r, this.pending);
        this.pending = -1;
        if (rev < compactRevision) r.varint();
      }
    }
  }
}
