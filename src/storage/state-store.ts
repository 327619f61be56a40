// Durable records of each shard's versioned state machine in the node's LevelDB: their binary key layout, the recorder that turns applied commands into engine writes, whole-state replacement, and loading at open.
// Size: one module because the record layout, the recorder that writes it, the loader that reads it and the streaming snapshot encoder that reads it in key order must change together (a layout change touches all four; they share the private key and value codecs).
/*
 * Design. The in-memory `KvStateMachine` is the serving *index* (keys, versions, revision times,
 * watch history); its durable twin is a set of records beside the group's Raft state, and those
 * records are also where values are served from (issue 17): once the unit holding a version is
 * durable the machine drops the value from the heap (`KvStateMachine.releaseValues`) and reads it
 * back through an {@link EngineValueSource} (the node's bounded value cache, then a synchronous
 * engine point read of the version record). Until then the value stays in the heap, so a read never
 * misses a record that is staged but not yet written. A restart loads the index without values
 * (`loadState(..., { values: false })`: each version becomes the `VALUE_ON_DISK` placeholder, only
 * the watch history's put values are read); with `coldKeys` (a node with `indexDropCold`) keys whose
 * only version is live are not even that: a keys-only scan of `v/` gives their key and revision, and
 * the machine is built without them in the heap (`KvStateMachine.fromRecords` option `cold`). The machine reports every record-level change to a
 * {@link StateRecorder} (a `StateSink`), which encodes them as engine writes. After each Ready's
 * committed entries are applied, the node stages those writes, ending with the group's `meta`
 * record (applied index and scalars), as ONE unit of the `RaftLogStore` (`stageStateOps`). Units
 * are made durable in staging order and never split, so the applied data and the applied index
 * land atomically, in the same fsynced batch as the round's Raft writes, and never ahead of the
 * log entries and hard state (commit index) they were applied from, which were staged earlier.
 *
 * Key layout (every key starts with `s/<group:8 hex>/`, ASCII; the rest is binary):
 *
 *   s/<g>/meta                           the scalars: see encodeMeta
 *   s/<g>/l/<key>                        latest version of a live key: varint revision
 *   s/<g>/t/<key>                        latest version of a deleted key (its newest retained version
 *                                        is a tombstone): varint revision
 *   s/<g>/r/<first:u64 BE>               a block of consecutive revisions first..first+n-1: varint n,
 *                                        then per revision varint timestampMs, varint writes (versions
 *                                        written at it: the loader checks that every revision after
 *                                        the compaction point has exactly these), varint eventCount,
 *                                        then per event u8 type (0 put, 1 delete, 2 trigger; plus 0x80
 *                                        when a hop count follows), varint keyLength + key UTF-8, for
 *                                        triggers varint valueLength + value (put values live in the
 *                                        versions), and with 0x80 varint hops (1..MAX_HOP_COUNT).
 *   s/<g>/v/<key>\x00\x01<revision:u64 BE>  one version: u8 kind (0 tombstone, 1 value; plus 0x02 when a
 *                                        hop count follows), varint timestampMs, with 0x02 varint hops
 *                                        (1..MAX_HOP_COUNT), then the value bytes (to the end)
 *
 * Hop counts (the lambda hop count of the write, `VersionRecord.hops` / `KvEvent.hops`) are flags:
 * a version or event without one is written exactly as before they existed, and records written
 * before them read as hop count 0. Other flag bits are refused (a newer layout), never ignored.
 *   s/<g>/c/<session id>                 a client session's header: varint forgottenBelow,
 *                                        lastActiveIndex, lastActiveTs (ids are [A-Za-z0-9_-], ASCII)
 *   s/<g>/d/<session id>/<seq:u64 BE>    one stored result of a session's write (sessions.ts,
 *                                        `encodeSessionResult`)
 *   s/<g>/j/<n:u64 BE>                   one round's session changes (session-journal.ts), replayed
 *                                        over the c/ and d/ records, which are its folded base
 *
 * `<key>` is the key's UTF-8 with every 0x00 byte written as 0x00 0xff, so keys sort bytewise in
 * the state machine's key order (UTF-8 byte order), and `\x00\x01` ends the key in version keys
 * (a key sorts before its extensions, versions of a key by revision).
 *
 * Revision blocks: the blocks cover [compactRevision, revision] contiguously (revision 0 is
 * implicit, at timestamp 0, and never written; the first block may start before the compaction
 * point: revisions before it are ignored). Each round writes ONE block for the revisions it
 * created (not one record per revision: engine writes cost per operation), so a put costs two
 * writes, its version and its key's latest, plus a share of the round's block and `meta`.
 *
 * Client sessions (the write deduplication table) are written in the same unit as the writes
 * they deduplicate, as ONE journal record per round holding every session change of the round
 * (headers, added results; acknowledgements and drops as floors and drop marks), not one record
 * per header and result: a put with a session costs no session record of its own. The journal is
 * folded into the per-session base records (`c/`, `d/`) in bounded steps once it grows past its
 * bound (session-journal.ts). Records written before the journal (base records only) load as a
 * base with an empty journal. The loader orders sessions by `lastActiveIndex` (the table's activity
 * order, which eviction follows), so a restarted replica evicts exactly as the others do.
 *
 * Live and deleted keys' latests are apart so that a listing, which walks `l/` in key order,
 * never steps over deleted keys: its work per page is bounded whatever the number of tombstones
 * in range (a mass delete, a lease revocation). A put writes `l/` (and deletes `t/` when the key
 * was deleted), a delete writes `t/` and deletes `l/`, compaction forgetting a key deletes its `t/`.
 * Records written before this split (no `t/` records; a deleted key's latest in `l/`) read the same:
 * the loader accepts an `l/` naming a tombstone, a listing skips it after reading that version
 * (as it did), and the recorder moves such *legacy* latests to `t/` in bounded batches with the
 * units it hands out (`WrittenState.legacyTombstones`, at most {@link LEGACY_MOVES_PER_UNIT} per
 * unit), so a store written by the previous format is converted within a few rounds after its
 * first restart on this one. No format number changes: both layouts load, and the previous
 * code would refuse the new one only as an unexpected state key (a downgrade is not supported).
 *
 * Lifecycle: a put/delete writes its version and the key's latest; a round writes its revision
 * block with the events; once every revision of a block has left the watch history (trimming or
 * compaction) the block is rewritten without events (so trigger values do not outlive the
 * history), and once it is entirely before the compaction point it is deleted; a compaction
 * deletes the versions it drops (and the latest of forgotten keys), or, with
 * `RecorderOptions.sweepVersions`, only the latests: the versions stay, dead, until the background
 * sweep (`sweepVersions`, below) deletes them, and every reader skips them. The loader ignores events of
 * revisions before the history start recorded in `meta` (a block partly out of the history keeps
 * them until it is rewritten). A compaction's deletions go in the unit of its round, atomically
 * with the new compaction point; they are as many as the versions it drops from memory, i.e.
 * bounded by the writes between two retention checks.
 *
 * Log compaction (ReplicaSet.snapshot, node/replica-set.ts) serialises nothing: the records already hold the state at the
 * applied index, so the Raft snapshot is a *records snapshot*, metadata only (index, term,
 * membership; raft-log-store.ts), staged after the round's unit whose `meta` is at (or past) its
 * index. Units become durable in staging order, so whenever the records snapshot is durable, so
 * are records at least as new: `meta` >= snapshot index always holds for it.
 *
 * Recovery (recoverState, node/recovery.ts): when `meta` exists and its applied index is at least the group's Raft
 * snapshot index, the machine is rebuilt from the records (`loadState` + `fromRecords`) and Raft
 * replays only the entries after it. Otherwise (no records yet, or records older than a snapshot
 * installed from the leader when a crash cut short their replacement) the machine is restored
 * from the snapshot, which then has its data (an installed snapshot is written with its data and
 * keeps it until its replacement is staged), and the records are rewritten from it
 * (`StateRecorder.replace`), after which the snapshot's data is dropped. A records snapshot with
 * no records at or past it cannot happen by the ordering above; it is reported as corruption.
 *
 * Snapshots sent to a lagging follower are produced on demand (node/snapshot-sender.ts) by
 * {@link encodeSnapshotFromRecords} from a consistent view of the engine (`KvEngine.view`): the
 * records of a view are always a prefix of the staged units, so its `meta` names the applied
 * index they hold (no `meta`: a replacement under way; try later). It reads the records in key
 * order in a few passes and yields to the event loop between slices of work; the result is the
 * snapshot format of snapshot-codec.ts, byte for byte what the machine would encode, so a
 * follower installs it as before.
 *
 * Replacement (a follower installing a snapshot, or recovery as above) writes the difference
 * between the old and new versions and latests, and rewrites the revision blocks, in several
 * bounded units: the first deletes `meta`, the last writes the new `meta`. Units between are not
 * atomic together, which is safe: a crash in between leaves no `meta` (or one older than the
 * snapshot, which was staged before with its data), so recovery takes the snapshot path and
 * replaces again. The node then stages `RaftLogStore.dropSnapshotData`, which turns the installed
 * snapshot into a records snapshot once the replacement is durable. A follower computes and
 * stages the replacement unit by unit over event-loop turns (`StateRecorder.replaceSteps`,
 * NodeDriver.finishInstall in node/driver.ts), its replica getting no Ready meanwhile so nothing else of the group is
 * staged in between; before that, in the same stepwise install, the snapshot is decoded into a
 * machine a few thousand keys per step (`KvStateMachine.restoreSteps`; the replica accepted it on
 * its checksum, format and index alone). On a node the snapshot is *streamed* (node/snapshot-inbox.ts,
 * docs/memory.md): its chunks were staged as chunk records as they arrived, the machine is decoded
 * from them one chunk at a time with the values older than the history bound left as
 * `VALUE_ON_DISK`, and the replacement writes those from a second pass over the chunks
 * (`ReplaceOptions.valueAt`, `SnapshotValueCursor`), so no copy of the shard's encoding is held.
 * Without streaming (a replica with no chunk store) the Raft core assembles the whole snapshot
 * from its chunks, the installed machine's values are views into it and stay in the heap until the
 * last replacement unit is durable (`attachValues` copies the watch history's and stored session
 * results' values out of it).
 */
import {
  checkSessionRecords,
  compareKeys,
  DEFAULT_MAX_SESSION_RESULTS,
  DEFAULT_MAX_SESSIONS,
  DEFAULT_SESSION_TTL_MS,
  decodeSessionResult,
  encodeSessionResult,
  writeSessionRecord,
  MAX_HOP_COUNT,
  MAX_KEY_BYTES,
  MAX_SESSION_ID_LENGTH,
  MAX_VALUE_BYTES,
  SESSION_ID_PATTERN,
  SNAPSHOT_FORMAT_VERSION,
  SNAPSHOT_MAGIC,
  SNAPSHOT_SESSIONS_FORMAT_VERSION,
  ValidationError,
  type IndexSource,
  type KvEvent,
  type KvStateMachine,
  type ListItem,
  type ListPlan,
  type ListResult,
  type SessionHeader,
  type SessionRecord,
  type SessionResult,
  type SnapshotData,
  type StateSink,
  type ValueSource,
  type VersionRecord,
  type ColdKeys,
  VALUE_ON_DISK,
} from '../statemachine/index.js';
import { isReservedKey } from '../sharding/index.js';
import { ByteReader, ByteWriter, crc32Update } from '../statemachine/binary.js';
import { findVersion, writeHopsSection } from '../statemachine/snapshot-codec.js';
import { prefixEnd, scanChunks, type EngineOp, type EngineView, type KvEngine } from './kv-engine.js';
import { StorageCorruptionError, stateKeyPrefix } from './raft-log-store.js';
import { SessionJournal, SessionReplay, type JournalLimits, type SessionRecordWriter, type WrittenSessions } from './session-journal.js';
import { ownedCopy, type ValueCache } from './value-cache.js';
import type { IndexCache } from './index-cache.js';

/**
 * Format version of the `meta` record (its first byte) when the session limits are the defaults
 * (the layout from before sessions); with other limits it is {@link STATE_SESSIONS_FORMAT_VERSION}.
 */
export const STATE_FORMAT_VERSION = 1;

/** Format version of a `meta` record that also holds the session limits. */
export const STATE_SESSIONS_FORMAT_VERSION = 2;

/** Default bound on the estimated bytes of one unit written by {@link StateRecorder.replace}. */
export const DEFAULT_STATE_UNIT_BYTES = 4 * 1024 * 1024;

/** Most revisions in one block written by a replacement (a round's block holds what the round applied). */
export const MAX_BLOCK_REVISIONS = 4096;

/** Most legacy latest records of deleted keys (an `l/` naming a tombstone) the recorder moves to `t/` per unit it hands out. */
export const LEGACY_MOVES_PER_UNIT = 1024;

const OP_OVERHEAD_BYTES = 16;
const EV_PUT = 0;
const EV_DELETE = 1;
const EV_TRIGGER = 2;
/** Flag of an event's type byte in a revision block: a varint hop count follows the event. */
const EV_HOPS = 0x80;
const KIND_TOMBSTONE = 0;
const KIND_VALUE = 1;
/** Flag of a version's kind byte: a varint hop count follows the timestamp. */
const KIND_HOPS = 0x02;
const TWO_32 = 2 ** 32;
const SLASH = 0x2f;
const TAG_LATEST = 0x6c; // 'l'
const TAG_DELETED = 0x74; // 't'
const TAG_REVISION = 0x72; // 'r'
const TAG_VERSION = 0x76; // 'v'
const TAG_SESSION = 0x63; // 'c'
const TAG_SESSION_RESULT = 0x64; // 'd'
const TAG_SESSION_JOURNAL = 0x6a; // 'j'
const ascii = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'));
const META_SUFFIX = ascii('meta');
const utf8 = new TextEncoder();
const scratch = new Uint8Array(MAX_KEY_BYTES * 3);

/** The scalar state of a group's machine, as held in its `meta` record. */
export interface StateMeta {
  readonly appliedIndex: number;
  readonly revision: number;
  readonly compactRevision: number;
  readonly lastTimestampMs: number;
  readonly maxHistoryRevisions: number;
  readonly maxHistoryBytes: number;
  /** The first revision whose events are in the watch history (revision + 1 when empty). */
  readonly oldestHistoryRevision: number;
  /** The machine's client session limits (format 1 records hold the defaults). */
  readonly sessionTtlMs: number;
  readonly maxSessions: number;
  readonly maxSessionResults: number;
  /**
   * The machine's key counts (`KvStateMachine.keyCount`, `reservedKeyCount`), kept by its writes;
   * undefined in records written before they were kept (the loader counts the keys it reads).
   */
  readonly liveKeys?: number;
  readonly reservedLiveKeys?: number;
}

// ------------------------------------------------------------------ keys

/** Builds the keys of one group. */
class Keys {
  readonly prefix: Uint8Array;
  readonly meta: Uint8Array;

  constructor(readonly group: number) {
    this.prefix = ascii(stateKeyPrefix(group));
    this.meta = concat(this.prefix, META_SUFFIX);
  }

  /** The latest record of `key` while it is live. */
  latest(key: string): Uint8Array {
    return this.latestTagged(key, TAG_LATEST);
  }

  /** The latest record of `key` while its newest version is a tombstone. */
  deleted(key: string): Uint8Array {
    return this.latestTagged(key, TAG_DELETED);
  }

  private latestTagged(key: string, tag: number): Uint8Array {
    const n = escapeKey(key);
    const out = new Uint8Array(this.prefix.length + 2 + n);
    out.set(this.prefix);
    out[this.prefix.length] = tag;
    out[this.prefix.length + 1] = SLASH;
    out.set(scratch.subarray(0, n), this.prefix.length + 2);
    return out;
  }

  version(key: string, revision: number): Uint8Array {
    const n = escapeKey(key);
    const p = this.prefix.length;
    const out = new Uint8Array(p + 2 + n + 2 + 8);
    out.set(this.prefix);
    out[p] = TAG_VERSION;
    out[p + 1] = SLASH;
    out.set(scratch.subarray(0, n), p + 2);
    out[p + 2 + n] = 0x00;
    out[p + 3 + n] = 0x01;
    writeU64(out, p + 4 + n, revision);
    return out;
  }

  revision(revision: number): Uint8Array {
    const p = this.prefix.length;
    const out = new Uint8Array(p + 2 + 8);
    out.set(this.prefix);
    out[p] = TAG_REVISION;
    out[p + 1] = SLASH;
    writeU64(out, p + 2, revision);
    return out;
  }

  session(id: string): Uint8Array {
    const p = this.prefix.length;
    const out = new Uint8Array(p + 2 + id.length);
    out.set(this.prefix);
    out[p] = TAG_SESSION;
    out[p + 1] = SLASH;
    for (let i = 0; i < id.length; i++) out[p + 2 + i] = id.charCodeAt(i); // ASCII (SESSION_ID_PATTERN)
    return out;
  }

  sessionJournal(n: number): Uint8Array {
    const p = this.prefix.length;
    const out = new Uint8Array(p + 2 + 8);
    out.set(this.prefix);
    out[p] = TAG_SESSION_JOURNAL;
    out[p + 1] = SLASH;
    writeU64(out, p + 2, n);
    return out;
  }

  sessionResult(id: string, seq: number): Uint8Array {
    const p = this.prefix.length;
    const out = new Uint8Array(p + 2 + id.length + 1 + 8);
    out.set(this.prefix);
    out[p] = TAG_SESSION_RESULT;
    out[p + 1] = SLASH;
    for (let i = 0; i < id.length; i++) out[p + 2 + i] = id.charCodeAt(i);
    out[p + 2 + id.length] = SLASH;
    writeU64(out, p + 3 + id.length, seq);
    return out;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Writes the escaped UTF-8 of `key` into `scratch`; returns its length. */
function escapeKey(key: string): number {
  const n = utf8.encodeInto(key, scratch).written;
  let zeros = 0;
  for (let i = 0; i < n; i++) if (scratch[i] === 0) zeros++;
  if (zeros === 0) return n;
  // Expand in place from the back: 0x00 -> 0x00 0xff.
  let w = n + zeros;
  for (let i = n - 1; i >= 0; i--) {
    const b = scratch[i]!;
    if (b === 0) {
      scratch[--w] = 0xff;
      scratch[--w] = 0;
    } else scratch[--w] = b;
  }
  return n + zeros;
}

function writeU64(out: Uint8Array, at: number, n: number): void {
  const hi = Math.floor(n / TWO_32);
  const lo = n >>> 0;
  out[at] = hi >>> 24;
  out[at + 1] = (hi >>> 16) & 0xff;
  out[at + 2] = (hi >>> 8) & 0xff;
  out[at + 3] = hi & 0xff;
  out[at + 4] = lo >>> 24;
  out[at + 5] = (lo >>> 16) & 0xff;
  out[at + 6] = (lo >>> 8) & 0xff;
  out[at + 7] = lo & 0xff;
}

function readU64(b: Uint8Array, at: number): number {
  const hi = ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
  const lo = ((b[at + 4]! << 24) | (b[at + 5]! << 16) | (b[at + 6]! << 8) | b[at + 7]!) >>> 0;
  const n = hi * TWO_32 + lo;
  if (!Number.isSafeInteger(n)) throw new StorageCorruptionError('revision in a state key exceeds 2^53');
  return n;
}

// ------------------------------------------------------------------ values

/** Bytes of the unsigned LEB128 encoding of a non-negative safe integer. */
function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    len++;
  }
  return len;
}

/** Writes `n` as an unsigned LEB128 varint at `at`; returns the offset after it. */
function putVarint(out: Uint8Array, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  out[at++] = n;
  return at;
}

function varintBytes(n: number): Uint8Array {
  const out = new Uint8Array(varintLength(n));
  putVarint(out, 0, n);
  return out;
}

/** Size of the chunks {@link recordBytes} hands out views of, and the largest record it puts in one. */
const RECORD_CHUNK_BYTES = 64 * 1024;
const RECORD_IN_CHUNK_MAX = 4 * 1024;
let recordChunk = new Uint8Array(RECORD_CHUNK_BYTES);
let recordChunkAt = 0;

/**
 * `n` fresh (zeroed, never handed out before) bytes for a record value that lives until its batch
 * is written: a view of a shared 64 KiB chunk when small, so a put's version record costs no
 * allocation of its own (a typed array of a few hundred bytes has a backing store of its own,
 * counted as external memory that drives the GC). A chunk stays alive while any of its views does.
 */
function recordBytes(n: number): Uint8Array {
  if (n > RECORD_IN_CHUNK_MAX) return new Uint8Array(n);
  if (recordChunkAt + n > RECORD_CHUNK_BYTES) {
    recordChunk = new Uint8Array(RECORD_CHUNK_BYTES);
    recordChunkAt = 0;
  }
  const out = recordChunk.subarray(recordChunkAt, recordChunkAt + n);
  recordChunkAt += n;
  return out;
}

/** `u8 kind, varint timestampMs, [varint hops], value bytes` (written for every put: see {@link recordBytes}). */
function encodeVersion(v: VersionRecord): Uint8Array {
  if (v.value === VALUE_ON_DISK) throw new Error(`version ${v.revision}: a value held on disk cannot be re-encoded from the index`);
  const hops = v.hops ?? 0;
  const head = 1 + varintLength(v.timestampMs) + (hops > 0 ? varintLength(hops) : 0);
  const out = recordBytes(head + (v.value?.length ?? 0));
  out[0] = (v.value === null ? KIND_TOMBSTONE : KIND_VALUE) | (hops > 0 ? KIND_HOPS : 0);
  const at = putVarint(out, 1, v.timestampMs);
  if (hops > 0) putVarint(out, at, hops);
  if (v.value !== null) out.set(v.value, head);
  return out;
}

/** The number of versions the events of one revision wrote (all but triggers). */
function writesOf(events: readonly KvEvent[]): number {
  let n = 0;
  for (const e of events) if (e.type !== 'trigger') n++;
  return n;
}

/** Encodes a revision block; `events[i]` undefined (or no `events`) = revision `first + i` without its events. */
function encodeBlock(ts: readonly number[], writes: readonly number[], events?: ReadonlyArray<readonly KvEvent[] | undefined>): Uint8Array {
  let size = 16 + ts.length * 12;
  if (events) for (const evs of events) for (const e of evs ?? []) size += 8 + e.key.length * 3 + (e.type === 'trigger' ? e.value!.length + 4 : 0);
  const w = new ByteWriter(size);
  w.varint(ts.length);
  for (let i = 0; i < ts.length; i++) {
    w.varint(ts[i]!);
    w.varint(writes[i]!);
    const evs = events?.[i] ?? [];
    w.varint(evs.length);
    for (const e of evs) {
      const hops = e.hops ?? 0;
      w.u8((e.type === 'put' ? EV_PUT : e.type === 'delete' ? EV_DELETE : EV_TRIGGER) | (hops > 0 ? EV_HOPS : 0));
      w.str(e.key);
      if (e.type === 'trigger') w.bytes(e.value!);
      if (hops > 0) w.varint(hops);
    }
  }
  return w.finish();
}

/**
 * `u8 format version, varint appliedIndex, revision, compactRevision, lastTimestampMs,
 * maxHistoryRevisions, maxHistoryBytes, oldestHistoryRevision`, and in format 2 `varint
 * sessionTtlMs, maxSessions, maxSessionResults` (format 1 when they are the defaults); then, in
 * either format, `varint liveKeys, reservedLiveKeys` (the key counts; absent in records written
 * before they were kept, which the decoder still accepts).
 */
function encodeMeta(m: StateMeta): Uint8Array {
  const w = new ByteWriter(64);
  const defaults =
    m.sessionTtlMs === DEFAULT_SESSION_TTL_MS && m.maxSessions === DEFAULT_MAX_SESSIONS && m.maxSessionResults === DEFAULT_MAX_SESSION_RESULTS;
  w.u8(defaults ? STATE_FORMAT_VERSION : STATE_SESSIONS_FORMAT_VERSION);
  w.varint(m.appliedIndex);
  w.varint(m.revision);
  w.varint(m.compactRevision);
  w.varint(m.lastTimestampMs);
  w.varint(m.maxHistoryRevisions);
  w.varint(m.maxHistoryBytes);
  w.varint(m.oldestHistoryRevision);
  if (!defaults) {
    w.varint(m.sessionTtlMs);
    w.varint(m.maxSessions);
    w.varint(m.maxSessionResults);
  }
  if (m.liveKeys !== undefined) {
    w.varint(m.liveKeys);
    w.varint(m.reservedLiveKeys ?? 0);
  }
  return w.finish();
}

/** Decodes a session header record's value (throws ValidationError). */
function decodeSessionHeader(id: string, v: Uint8Array): SessionHeader {
  const r = new ByteReader(v, 'MALFORMED_SNAPSHOT');
  const h: SessionHeader = { id, forgottenBelow: r.varint(), lastActiveIndex: r.varint(), lastActiveTs: r.varint() };
  r.expectEnd();
  return h;
}

/** A session header record's value: `varint forgottenBelow, lastActiveIndex, lastActiveTs`. */
function encodeSessionHeader(h: SessionHeader): Uint8Array {
  const w = new ByteWriter(24);
  w.varint(h.forgottenBelow);
  w.varint(h.lastActiveIndex);
  w.varint(h.lastActiveTs);
  return w.finish();
}

/** Decodes a `meta` record (throws StorageCorruptionError). */
export function decodeMeta(bytes: Uint8Array): StateMeta {
  return corruptOnError('meta record', () => {
    const r = new ByteReader(bytes, 'MALFORMED_SNAPSHOT');
    const version = r.u8();
    if (version !== STATE_FORMAT_VERSION && version !== STATE_SESSIONS_FORMAT_VERSION) r.fail(`unknown state format ${version}`);
    const m: StateMeta = {
      appliedIndex: r.varint(),
      revision: r.varint(),
      compactRevision: r.varint(),
      lastTimestampMs: r.varint(),
      maxHistoryRevisions: r.varint(),
      maxHistoryBytes: r.varint(),
      oldestHistoryRevision: r.varint(),
      ...(version === STATE_FORMAT_VERSION
        ? { sessionTtlMs: DEFAULT_SESSION_TTL_MS, maxSessions: DEFAULT_MAX_SESSIONS, maxSessionResults: DEFAULT_MAX_SESSION_RESULTS }
        : { sessionTtlMs: r.varint(), maxSessions: r.varint(), maxSessionResults: r.varint() }),
      ...(r.remaining > 0 ? { liveKeys: r.varint(), reservedLiveKeys: r.varint() } : {}),
    };
    r.expectEnd();
    if (m.liveKeys !== undefined && m.reservedLiveKeys! > m.liveKeys) r.fail('more reserved live keys than live keys');
    if (m.maxSessions < 1 || m.maxSessionResults < 1) r.fail('session limits must be positive');
    if (m.compactRevision > m.revision) r.fail('compactRevision after revision');
    if (m.maxHistoryRevisions < 1 || m.maxHistoryBytes < 1) r.fail('history limits must be positive');
    if (m.oldestHistoryRevision < Math.max(1, m.compactRevision) || m.oldestHistoryRevision > m.revision + 1) {
      r.fail('oldest history revision out of range');
    }
    return m;
  });
}

function metaOf(sm: KvStateMachine): StateMeta {
  return {
    appliedIndex: sm.appliedIndex,
    revision: sm.revision,
    compactRevision: sm.compactRevision,
    lastTimestampMs: sm.lastTimestampMs,
    maxHistoryRevisions: sm.maxHistoryRevisions,
    maxHistoryBytes: sm.maxHistoryBytes,
    oldestHistoryRevision: sm.oldestHistoryRevision,
    sessionTtlMs: sm.sessionTtlMs,
    maxSessions: sm.maxSessions,
    maxSessionResults: sm.maxSessionResults,
    liveKeys: sm.keyCount,
    reservedLiveKeys: sm.reservedKeyCount,
  };
}

function metaOfRecords(d: SnapshotData): StateMeta {
  return {
    appliedIndex: d.appliedIndex,
    revision: d.revision,
    compactRevision: d.compactRevision,
    lastTimestampMs: d.lastTimestampMs,
    maxHistoryRevisions: d.maxHistoryRevisions,
    maxHistoryBytes: d.maxHistoryBytes,
    oldestHistoryRevision: d.history.length > 0 ? d.history[0]!.revision : d.revision + 1,
    sessionTtlMs: d.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS,
    maxSessions: d.maxSessions ?? DEFAULT_MAX_SESSIONS,
    maxSessionResults: d.maxSessionResults ?? DEFAULT_MAX_SESSION_RESULTS,
    ...keyCountsOf(d.keys),
  };
}

/** The live and reserved live keys among `keys` (a key is live when its newest version is not a tombstone). */
function keyCountsOf(keys: SnapshotData['keys']): { liveKeys: number; reservedLiveKeys: number } {
  let liveKeys = 0;
  let reservedLiveKeys = 0;
  for (const [key, versions] of keys) {
    if (versions[versions.length - 1]!.value === null) continue;
    liveKeys++;
    if (isReservedKey(key)) reservedLiveKeys++;
  }
  return { liveKeys, reservedLiveKeys };
}

function corruptOnError<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof ValidationError) throw new StorageCorruptionError(`${what}: ${e.message}`);
    throw e;
  }
}

function opBytes(op: EngineOp): number {
  return op.key.length + (op.type === 'put' ? op.value.length : 0) + OP_OVERHEAD_BYTES;
}

// ------------------------------------------------------------------ incremental writes

/**
 * A revision block on disk, as the recorder tracks it: revisions [first, last], with their
 * timestamps and write counts while the block still carries events on disk (needed to rewrite it
 * without them once they all left the history).
 */
export interface BlockState {
  readonly first: number;
  last: number;
  /** Per revision; kept while `withEvents`. */
  ts: number[] | undefined;
  writes: number[] | undefined;
  /** Whether the block on disk (or about to be written) holds events. */
  withEvents: boolean;
}

/** The block being built in the current round, not written yet. */
interface OpenBlock {
  readonly block: BlockState;
  /** Per revision its events, undefined once trimmed from the history. */
  readonly events: Array<readonly KvEvent[] | undefined>;
}

/** What the records of a group hold, as far as a recorder continuing from them needs to know. */
export interface WrittenState {
  /** The applied index in `meta`. */
  readonly appliedIndex: number;
  /** The revision blocks on disk, in order. */
  readonly blocks: readonly BlockState[];
  /** The history start in `meta` (blocks wholly before it that still carry events are rewritten). */
  readonly oldestHistoryRevision: number;
  /** The session base records and journal on disk (default: none). */
  readonly sessions?: WrittenSessions;
  /**
   * Deleted keys whose latest record is still in `l/` (written before deleted keys' latests moved
   * to `t/`), with that record's revision (their tombstone's); the recorder moves them (default: none).
   */
  readonly legacyTombstones?: ReadonlyMap<string, number>;
}

/** Options of a {@link StateRecorder}. */
export interface RecorderOptions {
  /**
   * Leave the versions a compaction drops on disk, for the node-local background sweep
   * ({@link sweepVersions}) to delete in bounded units, instead of deleting them in the unit of the
   * compaction's round (issue 17: compaction in `apply` costs no per-version work on disk). A
   * forgotten key's latest record (`t/`) is still deleted with the compaction. Readers of the
   * records (the loader, the snapshot encoder) skip versions dead at the compaction point in `meta`
   * ({@link isDeadVersion}), so unswept versions change nothing they answer. Default false.
   */
  readonly sweepVersions?: boolean;
}

/**
 * Yielded by {@link StateRecorder.replaceSteps} (a unit with no ops, compared by identity) when its
 * `before` read from the engine ({@link RecordedVersions}) needs its next batch: await
 * `RecordedVersions.fill()`, then ask for the next unit again.
 */
export const READ_BEFORE: EngineOp[] = Object.freeze([]) as unknown as EngineOp[];

/**
 * Version records read per batch by {@link RecordedVersions.fill} (a key's versions are never split).
 * Keys only (no values, no object per record beyond the revision): a batch holds about 30 B per record.
 */
export const RECORDED_READ_BATCH = 16_384;

/**
 * The `before` of a records replacement read from the engine instead of the replaced machine's
 * heap copy (`toRecords()`, which holds every key and, with `dropCold`, reads every dropped key's
 * head back one synchronous point read at a time): the group's version records, from ONE engine
 * view, grouped per key in key order, a bounded batch at a time (`fill`, asynchronous; the
 * replacement itself stays synchronous and asks for the next batch with {@link READ_BEFORE}). The
 * view must be opened (the first `fill`) once every unit of the old state is written to the engine
 * (the host flushes first) and before any unit of the replacement that touches a version record
 * (the replacement's first unit only deletes `meta`).
 *
 * Only keys are read (`keysOnly`: LevelDB does not read the values): a version is known by its
 * revision, the key's latest by whether the key has a deleted-latest record (`t/`, read for the
 * batch's key range). The diff needs no more: both states come from the same committed log, so the
 * same revision of a key is the same write (its timestamp, hop count and kind included). Versions
 * come back as revisions (`peek`); `deletedLatest` tells whether the key's latest record is in `t/`.
 * Holds at most one batch; `close` releases the view (also done when the last batch was read).
 */
export class RecordedVersions {
  private view: EngineView | undefined;
  private buf: Array<readonly [string, number[]]> = [];
  /** Keys of the batch whose latest record is in `t/` (a deleted key's). */
  private deleted = new Set<string>();
  private pos = 0;
  /** The key the next batch starts at (escaped, as in the records), or undefined before the first. */
  private resume: Uint8Array | undefined;
  private done = false;
  private readonly prefix: Uint8Array;
  private readonly deletedPrefix: Uint8Array;

  /** Reads `group`'s version records from the view `openView` opens at the first `fill`, `batch` records at a time. */
  constructor(
    private readonly openView: () => EngineView,
    group: number,
    private readonly batch = RECORDED_READ_BATCH,
  ) {
    const keys = new Keys(group);
    this.prefix = concat(keys.prefix, new Uint8Array([TAG_VERSION, SLASH]));
    this.deletedPrefix = concat(keys.prefix, new Uint8Array([TAG_DELETED, SLASH]));
  }

  /** Whether the view is open (the first `fill` opened it): later batches come from it whatever is written since. */
  get opened(): boolean {
    return this.view !== undefined || this.done;
  }

  /** Whether the next key needs a `fill` first. */
  get needsFill(): boolean {
    return this.pos >= this.buf.length && !this.done;
  }

  /** The next key of the old state and the revisions of its versions (oldest first), or undefined at the end (or when `needsFill`). */
  peek(): readonly [string, readonly number[]] | undefined {
    return this.buf[this.pos];
  }

  /** Whether `key` (of the current batch) has its latest record in `t/` (its newest version is a tombstone). */
  deletedLatest(key: string): boolean {
    return this.deleted.has(key);
  }

  /** Moves past the key `peek` answered. */
  shift(): void {
    this.pos++;
  }

  /** Reads the next batch of keys (at least `batch` version records, or to the end). */
  async fill(): Promise<void> {
    if (this.done) return;
    const view = (this.view ??= this.openView());
    const p = this.prefix.length;
    const out: Array<readonly [string, number[]]> = [];
    let records = 0;
    let curEscaped: Uint8Array | undefined;
    let cur: number[] = [];
    let next: Uint8Array | undefined;
    const from = this.resume;
    scan: for await (const run of scanChunks(view, { prefix: this.prefix, keysOnly: true, readAheadBytes: LOAD_READ_AHEAD_BYTES, ...(from ? { gte: concat(this.prefix, from) } : {}) })) for (const [k] of run) {
      const t = findTerminator(k, p);
      if (t < 0 || k.length !== t + 10) throw new StorageCorruptionError(`malformed version key ${describe(k)}`);
      const escaped = k.subarray(p, t);
      if (curEscaped === undefined || Buffer.compare(escaped, curEscaped) !== 0) {
        if (records >= this.batch) {
          next = escaped.slice();
          break scan;
        }
        cur = [];
        out.push([decodeKey(escaped, k), cur]);
        curEscaped = escaped;
      }
      cur.push(readU64(k, t + 2));
      records++;
    }
    // The deleted keys' latests in the batch's key range (from its first key to the next batch's).
    const deleted = new Set<string>();
    const d = this.deletedPrefix.length;
    const range = { ...(from ? { gte: concat(this.deletedPrefix, from) } : {}), ...(next ? { lt: concat(this.deletedPrefix, next) } : {}) };
    for await (const [k] of view.iterate({ prefix: this.deletedPrefix, keysOnly: true, ...range })) deleted.add(decodeKey(k.subarray(d), k));
    this.buf = out;
    this.deleted = deleted;
    this.pos = 0;
    this.resume = next;
    if (next === undefined) await this.close();
  }

  /** Releases the engine view (no more batches are read). */
  async close(): Promise<void> {
    this.done = true;
    const view = this.view;
    this.view = undefined;
    await view?.close();
  }
}

/**
 * The {@link StateSink} of one group's machine: encodes each reported change as engine writes,
 * which {@link take} hands out (with the round's revision block and the `meta` record) as one unit
 * per round. It tracks the revision blocks on disk, so it must see every change of the records:
 * attach it to the machine whose records the disk holds, stage every unit it hands out, in order.
 */
export class StateRecorder implements StateSink {
  private readonly keys: Keys;
  private ops: EngineOp[] = [];
  /** The round's session changes (one journal record per round) and the folding of old ones. */
  private readonly journal: SessionJournal;
  /** Writes the journal's records into `ops`. */
  private readonly sessionWriter: SessionRecordWriter;
  private metaApplied: number;
  private readonly blocks: BlockState[] = [];
  /** Index in `blocks` of the oldest block that may still have revisions in the history. */
  private hist = 0;
  private open: OpenBlock | undefined;
  /** Deleted keys whose latest is still in `l/` (see {@link WrittenState.legacyTombstones}), moved to `t/` a batch per unit. */
  private readonly legacy: Map<string, number>;
  /** Live keys' latests deleted (the key deleted) since the last `takeDeletedLatests`: their number and key range. */
  private deletedLatests: { count: number; first: string; last: string } | undefined;

  /** Whether superseded versions are left to {@link sweepVersions} instead of deleted in the unit of the compaction (see {@link RecorderOptions}). */
  readonly sweepsVersions: boolean;

  /** A recorder for `group`, whose records hold `written` (default: no records); `journalLimits` bound the session journal (tests shrink them). */
  constructor(
    readonly group: number,
    written: WrittenState = { appliedIndex: 0, blocks: [], oldestHistoryRevision: 1 },
    journalLimits: JournalLimits = {},
    options: RecorderOptions = {},
  ) {
    this.sweepsVersions = options.sweepVersions === true;
    this.keys = new Keys(group);
    this.journal = new SessionJournal(written.sessions, journalLimits);
    this.sessionWriter = sessionWriterInto(this.keys, () => this.ops);
    this.metaApplied = written.appliedIndex;
    this.legacy = new Map(written.legacyTombstones);
    for (const b of written.blocks) {
      const copy: BlockState = { ...b, ts: b.ts?.slice(), writes: b.writes?.slice() };
      this.blocks.push(copy);
      // Defensive: a block wholly out of the history still carrying events (never left by this
      // recorder, which rewrites it in the unit that trims it) is rewritten with the next unit.
      if (copy.withEvents && copy.last < written.oldestHistoryRevision) this.rewriteTrimmed(copy);
    }
  }

  versionAdded(key: string, version: VersionRecord, wasDeleted: boolean): void {
    const ops = this.ops;
    ops.push({ type: 'put', key: this.keys.version(key, version.revision), value: encodeVersion(version) });
    if (version.value === null) {
      // A delete (of a live key: deleting a deleted key writes nothing): its latest moves to `t/`.
      ops.push({ type: 'put', key: this.keys.deleted(key), value: varintBytes(version.revision) });
      ops.push({ type: 'del', key: this.keys.latest(key) });
      const d = this.deletedLatests;
      if (d === undefined) this.deletedLatests = { count: 1, first: key, last: key };
      else {
        d.count++;
        if (compareKeys(key, d.first) < 0) d.first = key;
        else if (compareKeys(key, d.last) > 0) d.last = key;
      }
    } else {
      ops.push({ type: 'put', key: this.keys.latest(key), value: varintBytes(version.revision) });
      if (wasDeleted) ops.push({ type: 'del', key: this.keys.deleted(key) }); // a legacy latest is in `l/`, just overwritten
    }
    if (this.legacy.size > 0) this.legacy.delete(key);
  }

  versionsDropped(key: string, revisions: readonly number[], forgotten: boolean): void {
    // With the sweep, the dropped versions stay on disk until `sweepVersions` deletes them (the
    // compaction point in `meta` tells every reader they are dead); a forgotten key's latest goes now.
    if (!this.sweepsVersions) for (const rev of revisions) this.ops.push({ type: 'del', key: this.keys.version(key, rev) });
    if (forgotten) {
      // Only deleted keys are forgotten (their newest version, a tombstone, was compacted).
      this.ops.push({ type: 'del', key: this.keys.deleted(key) });
      if (this.legacy.delete(key)) this.ops.push({ type: 'del', key: this.keys.latest(key) });
    }
  }

  /** Moves up to {@link LEGACY_MOVES_PER_UNIT} legacy latests of deleted keys from `l/` to `t/` (they are the keys' latests: every write or forgetting of a key takes it out of `legacy`). */
  private moveLegacy(ops: EngineOp[]): void {
    let n = 0;
    for (const [key, revision] of this.legacy) {
      if (n++ === LEGACY_MOVES_PER_UNIT) break;
      ops.push({ type: 'del', key: this.keys.latest(key) });
      ops.push({ type: 'put', key: this.keys.deleted(key), value: varintBytes(revision) });
      this.legacy.delete(key);
    }
  }

  /**
   * How many live keys' `l/` records the units handed out since the last call deleted, and the raw
   * key range [start, end] holding them (undefined: none). LevelDB keeps a deletion marker per
   * deleted record until compaction reaches it, and an iteration of `l/` (a listing) steps over
   * every marker in its way: after a mass delete (a lease revocation) the node compacts that range
   * (`KvEngine.compactRange`) once the unit is durable.
   */
  takeDeletedLatests(): { readonly count: number; readonly start: Uint8Array; readonly end: Uint8Array } | undefined {
    const d = this.deletedLatests;
    if (d === undefined) return undefined;
    this.deletedLatests = undefined;
    return { count: d.count, start: this.keys.latest(d.first), end: this.keys.latest(d.last) };
  }

  /** Number of legacy latests of deleted keys not moved to `t/` yet (for tests and diagnostics). */
  get legacyTombstones(): number {
    return this.legacy.size;
  }

  revisionAdded(revision: number, timestampMs: number, events: readonly KvEvent[]): void {
    if (!this.open) {
      const block: BlockState = { first: revision, last: revision - 1, ts: [], writes: [], withEvents: true };
      this.blocks.push(block);
      this.open = { block, events: [] };
    }
    const b = this.open.block;
    b.last = revision;
    b.ts!.push(timestampMs);
    b.writes!.push(writesOf(events));
    this.open.events.push(events);
  }

  historyTrimmed(revision: number): void {
    while (this.hist < this.blocks.length && this.blocks[this.hist]!.last < revision) this.hist++;
    const b = this.blocks[this.hist];
    if (b === undefined || revision < b.first) return;
    if (this.open && b === this.open.block) this.open.events[revision - b.first] = undefined;
    else if (revision === b.last && b.withEvents) this.rewriteTrimmed(b);
  }

  revisionsCompacted(_from: number, to: number): void {
    // Blocks wholly before the new compaction point go; the one holding it stays (it has its timestamp).
    let n = 0;
    while (n < this.blocks.length && this.blocks[n]!.last < to && this.blocks[n] !== this.open?.block) {
      this.ops.push({ type: 'del', key: this.keys.revision(this.blocks[n]!.first) });
      n++;
    }
    if (n > 0) {
      this.blocks.splice(0, n);
      this.hist = Math.max(0, this.hist - n);
    }
  }

  sessionUpdated(header: SessionHeader): void {
    this.journal.updated(header);
  }

  sessionResultAdded(id: string, seq: number, result: SessionResult): void {
    this.journal.resultAdded(id, seq, result);
  }

  sessionResultsDropped(id: string, seqs: readonly number[]): void {
    this.journal.resultsDropped(id, seqs);
  }

  sessionDropped(id: string, _seqs: readonly number[]): void {
    this.journal.dropped(id);
  }

  /** The session journal records on disk once everything handed out is written (for tests and diagnostics). */
  get journalRecords(): SessionJournal['records'] {
    return this.journal.records;
  }

  private rewriteTrimmed(b: BlockState): void {
    this.ops.push({ type: 'put', key: this.keys.revision(b.first), value: encodeBlock(b.ts!, b.writes!) });
    b.withEvents = false;
    b.ts = undefined;
    b.writes = undefined;
  }

  /** The applied index of the `meta` record of the last unit handed out (by `take` or `replace`), or of the records it started from. */
  get takenAppliedIndex(): number {
    return this.metaApplied;
  }

  /** The revision blocks as on disk once everything handed out is written (for tests and diagnostics). */
  get writtenBlocks(): readonly BlockState[] {
    return this.blocks;
  }

  /**
   * The writes recorded since the last call, then the round's revision block and the `meta` record
   * of `sm` (the machine observed), as one unit; undefined when nothing changed (no writes, same
   * applied index).
   */
  take(sm: KvStateMachine): EngineOp[] | undefined {
    if (this.ops.length === 0 && !this.open && !this.journal.dirty && sm.appliedIndex === this.metaApplied && this.legacy.size === 0) return undefined;
    this.journal.take(sm.appliedIndex, this.sessionWriter, (id) => sm.session(id));
    const ops = this.ops;
    if (this.legacy.size > 0) this.moveLegacy(ops);
    if (this.open) {
      // Never wholly out of the history: it holds the newest revision, which is never trimmed.
      const { block, events } = this.open;
      ops.push({ type: 'put', key: this.keys.revision(block.first), value: encodeBlock(block.ts!, block.writes!, events) });
      this.open = undefined;
    }
    ops.push({ type: 'put', key: this.keys.meta, value: encodeMeta(metaOf(sm)) });
    this.ops = [];
    this.metaApplied = sm.appliedIndex;
    return ops;
  }

  /**
   * The units that turn the records from `before` (what they hold now, as this recorder has
   * recorded it; undefined when they hold nothing, or only `deleteKeys`) into `after`, after which
   * the recorder continues from `after` (attach it to a machine holding `after`). Versions and
   * latests are written as a difference (only what changed); the revision blocks are rewritten. The
   * first unit deletes `meta`, the last one writes it (see the file header for why the units need
   * not be atomic together). Writes recorded and not taken are discarded: take them first. Both
   * states must come from the same committed log (a version of both is the same write), but
   * everything that differs is rewritten regardless.
   */
  replace(before: SnapshotData | undefined, after: SnapshotData, options: ReplaceOptions = {}): EngineOp[][] {
    return [...this.replaceSteps(before, after, options)];
  }

  /**
   * {@link replace}, one unit at a time, computed as it is asked for (so a caller can spread the
   * work over event-loop turns). The recorder is in the middle of the replacement until the
   * iteration ends: iterate it to the end, staging every unit in order, before recording anything
   * else, and keep `before` and `after` unchanged meanwhile.
   */
  *replaceSteps(before: SnapshotData | RecordedVersions | undefined, after: SnapshotData, options: ReplaceOptions = {}): Generator<EngineOp[], void, undefined> {
    const keys = this.keys;
    const max = options.maxUnitBytes ?? DEFAULT_STATE_UNIT_BYTES;
    const units: EngineOp[][] = [];
    let cur: EngineOp[] = [];
    let bytes = 0;
    const push = (op: EngineOp): void => {
      cur.push(op);
      bytes += opBytes(op);
      if (bytes >= max) {
        units.push(cur);
        cur = [];
        bytes = 0;
      }
    };
    // A value of `after` held elsewhere (a streamed install's chunks) is read as it is written.
    const valueAt = options.valueAt;
    const resolve = (key: string, v: VersionRecord): VersionRecord =>
      v.value === VALUE_ON_DISK && valueAt !== undefined ? { ...v, value: valueAt(key, v.revision) } : v;
    // A key's latest record: in `l/` when its newest version is live, in `t/` when it is a tombstone
    // (`l/` for a legacy one); written when it moves or names another revision, the old one deleted.
    const legacy = this.legacy;
    const latestOps = (key: string, b: VersionRecord | undefined, a: VersionRecord | undefined): void => {
      const bTag = b === undefined ? 0 : b.value !== null || legacy.has(key) ? TAG_LATEST : TAG_DELETED;
      const aTag = a === undefined ? 0 : a.value !== null ? TAG_LATEST : TAG_DELETED;
      if (a !== undefined && (aTag !== bTag || a.revision !== b!.revision)) {
        push({ type: 'put', key: aTag === TAG_LATEST ? keys.latest(key) : keys.deleted(key), value: varintBytes(a.revision) });
      }
      if (bTag !== 0 && bTag !== aTag) push({ type: 'del', key: bTag === TAG_LATEST ? keys.latest(key) : keys.deleted(key) });
    };
    push({ type: 'del', key: keys.meta });
    for (const k of options.deleteKeys ?? []) {
      push({ type: 'del', key: k });
      if (units.length > 0) yield* units.splice(0);
    }

    // Versions and latests: a merge of the two key lists (both in key order). `before` read from
    // the engine (`RecordedVersions`) comes a batch at a time: the caller reads the next batch
    // (`fill`) when READ_BEFORE is yielded, then asks for the next unit again.
    // With the sweep, the disk may hold versions of a key older than `before`'s, dead and not swept
    // yet; deleting `before`'s versions could leave them without the newer version that makes them
    // dead. So a key of `before` with no version at or before `after`'s compaction point in `after`
    // gets a tombstone *at* that point (a marker: dead itself, it makes every older version dead;
    // the sweep deletes it like any dead version).
    const ac = after.compactRevision;
    const marker = (key: string, av: readonly VersionRecord[] | undefined): void => {
      if (!this.sweepsVersions || ac === 0 || (av !== undefined && av[0]!.revision <= ac)) return;
      push({ type: 'put', key: keys.version(key, ac), value: encodeVersion({ revision: ac, timestampMs: after.revisionTimestamps[0]!, value: null }) });
    };
    const delVersion = (key: string, v: VersionRecord): void => {
      push({ type: 'del', key: keys.version(key, v.revision) });
    };
    const putVersion = (key: string, v: VersionRecord): void => {
      push({ type: 'put', key: keys.version(key, v.revision), value: encodeVersion(resolve(key, v)) });
    };
    const recorded = before instanceof RecordedVersions ? before : undefined;
    const bk = recorded ? [] : ((before as SnapshotData | undefined)?.keys ?? []);
    // `after`'s keys, one at a time; what the revision blocks and `meta` need of them (writes per
    // revision, live keys) is counted as they pass.
    const aIter = (options.afterKeys ?? after.keys)[Symbol.iterator]();
    let aNext = aIter.next();
    const span = after.revision - after.compactRevision;
    const writes = new Uint32Array(span + 1);
    let liveKeys = 0;
    let reservedLiveKeys = 0;
    const takeAfter = (): readonly [string, readonly VersionRecord[]] => {
      const e = aNext.value as readonly [string, readonly VersionRecord[]];
      aNext = aIter.next();
      const versions = e[1];
      for (const v of versions) if (v.revision >= after.compactRevision) writes[v.revision - after.compactRevision]!++;
      if (versions[versions.length - 1]!.value !== null) {
        liveKeys++;
        if (isReservedKey(e[0])) reservedLiveKeys++;
      }
      return e;
    };
    // A key of `before` read from the engine is its versions' revisions and whether its latest is
    // in `t/`: its newest version stands for the latest (a tombstone or a value on disk), and the
    // same revision in both states is the same write (see RecordedVersions).
    const recordedLatest = (key: string, revs: readonly number[]): VersionRecord => ({
      revision: revs[revs.length - 1]!,
      timestampMs: 0,
      value: recorded!.deletedLatest(key) ? null : VALUE_ON_DISK,
    });
    let i = 0;
    for (;;) {
      if (recorded?.needsFill) {
        if (units.length > 0) yield* units.splice(0);
        yield READ_BEFORE;
        continue;
      }
      const bKey = recorded ? recorded.peek()?.[0] : bk[i]?.[0];
      if (bKey === undefined && aNext.done === true) break;
      const c = bKey === undefined ? 1 : aNext.done === true ? -1 : compareKeys(bKey, aNext.value[0]);
      if (c > 0) {
        const [key, versions] = takeAfter();
        for (const v of versions) putVersion(key, v);
        latestOps(key, undefined, versions[versions.length - 1]);
      } else if (recorded) {
        const [key, revs] = recorded.peek()!;
        const latest = recordedLatest(key, revs);
        recorded.shift();
        const av = c === 0 ? takeAfter()[1] : undefined;
        let deleted = false;
        let y = 0;
        for (const rev of revs) {
          // after's versions older than this one are new; this one stays when after has it too.
          for (; av !== undefined && y < av.length && av[y]!.revision < rev; y++) putVersion(key, av[y]!);
          if (av !== undefined && y < av.length && av[y]!.revision === rev) y++;
          else {
            push({ type: 'del', key: keys.version(key, rev) });
            deleted = true;
          }
        }
        for (; av !== undefined && y < av.length; y++) putVersion(key, av[y]!);
        if (deleted) marker(key, av);
        latestOps(key, latest, av?.[av.length - 1]);
      } else if (c < 0) {
        const [key, versions] = bk[i++]!;
        for (const v of versions) delVersion(key, v);
        marker(key, undefined);
        latestOps(key, versions[versions.length - 1], undefined);
      } else {
        const [key, bv] = bk[i++]!;
        const av = takeAfter()[1];
        let x = 0;
        let y = 0;
        let deleted = false;
        while (x < bv.length || y < av.length) {
          const d = x >= bv.length ? 1 : y >= av.length ? -1 : bv[x]!.revision - av[y]!.revision;
          if (d < 0) {
            delVersion(key, bv[x++]!);
            deleted = true;
          }
          else if (d > 0) putVersion(key, av[y++]!);
          else {
            const o = bv[x++]!;
            const v = av[y++]!;
            if (!sameVersion(o, v)) putVersion(key, v);
          }
        }
        if (deleted) marker(key, av);
        latestOps(key, bv[bv.length - 1], av[av.length - 1]);
      }
      if (units.length > 0) yield* units.splice(0);
    }

    legacy.clear(); // every key of `before` was rewritten or deleted above

    // Client sessions: the journal goes, the base records are rewritten to hold `after`'s sessions
    // (what the base holds is the journal's to know; `before.sessions` is the machine's view).
    this.journal.discardRound();
    const sessionOps: EngineOp[] = [];
    for (const _ of this.journal.replaceSteps(after.sessions ?? [], sessionWriterInto(keys, () => sessionOps))) {
      for (const op of sessionOps.splice(0)) push(op);
      if (units.length > 0) yield* units.splice(0);
    }
    for (const op of sessionOps.splice(0)) push(op); // the writes after the last step (the journal's deletes when no session follows)

    // Revision blocks: the old ones go, new ones cover [compactRevision, revision] (bounded in
    // revisions and bytes). Write counts come from the versions: exact after the compaction point,
    // a lower bound at it (the versions it dropped are gone; the loader checks after it only).
    for (const b of this.blocks) push({ type: 'del', key: keys.revision(b.first) });
    this.blocks.length = 0;
    const aMeta: StateMeta = { ...metaOfRecords({ ...after, keys: [] }), liveKeys, reservedLiveKeys };
    let h = 0;
    let block: { first: number; ts: number[]; writes: number[]; events: Array<readonly KvEvent[] | undefined>; bytes: number } | undefined;
    const flushBlock = (): void => {
      if (!block) return;
      const withEvents = block.events.some((e) => e !== undefined);
      push({ type: 'put', key: keys.revision(block.first), value: encodeBlock(block.ts, block.writes, block.events) });
      this.blocks.push({
        first: block.first,
        last: block.first + block.ts.length - 1,
        ts: withEvents ? block.ts : undefined,
        writes: withEvents ? block.writes : undefined,
        withEvents,
      });
      block = undefined;
    };
    for (let rev = Math.max(1, after.compactRevision); rev <= after.revision; rev++) {
      const start = h;
      while (h < after.history.length && after.history[h]!.revision === rev) h++;
      const events = rev >= aMeta.oldestHistoryRevision ? after.history.slice(start, h) : undefined;
      if (!block) block = { first: rev, ts: [], writes: [], events: [], bytes: 0 };
      block.ts.push(after.revisionTimestamps[rev - after.compactRevision]!);
      block.writes.push(writes[rev - after.compactRevision] ?? 0);
      block.events.push(events);
      block.bytes += 12;
      for (const e of events ?? []) block.bytes += 8 + e.key.length * 3 + (e.type === 'trigger' ? e.value!.length : 0);
      if (block.ts.length >= MAX_BLOCK_REVISIONS || block.bytes >= max / 2) flushBlock();
      if (units.length > 0) yield* units.splice(0);
    }
    flushBlock();
    this.hist = 0;
    this.open = undefined;
    this.ops = [];
    this.metaApplied = after.appliedIndex;
    cur.push({ type: 'put', key: keys.meta, value: encodeMeta(aMeta) });
    units.push(cur);
    yield* units.splice(0);
  }
}

/** The session journal's writes as engine ops pushed onto `target()` (read at each write). */
function sessionWriterInto(keys: Keys, target: () => EngineOp[]): SessionRecordWriter {
  return {
    putHeader: (h) => target().push({ type: 'put', key: keys.session(h.id), value: encodeSessionHeader(h) }),
    delHeader: (id) => target().push({ type: 'del', key: keys.session(id) }),
    putResult: (id, seq, r) => target().push({ type: 'put', key: keys.sessionResult(id, seq), value: encodeSessionResult(r) }),
    delResult: (id, seq) => target().push({ type: 'del', key: keys.sessionResult(id, seq) }),
    putJournal: (n, value) => target().push({ type: 'put', key: keys.sessionJournal(n), value }),
    delJournal: (n) => target().push({ type: 'del', key: keys.sessionJournal(n) }),
  };
}

/** Options of {@link StateRecorder.replace}. */
export interface ReplaceOptions {
  /** Bound on the estimated bytes of each unit (default {@link DEFAULT_STATE_UNIT_BYTES}); a unit ends after the op that reaches it. */
  readonly maxUnitBytes?: number;
  /** Raw keys to delete first (e.g. every key found on disk when its contents are not trusted). */
  readonly deleteKeys?: readonly Uint8Array[];
  /**
   * The value of a version of `after` that is the `VALUE_ON_DISK` placeholder and must be written
   * (a streamed install: `SnapshotValueCursor.valueAt`, asked in key then revision order). Without
   * it such a version cannot be written (a throw).
   */
  readonly valueAt?: (key: string, revision: number) => Uint8Array;
  /**
   * `after`'s keys in key order, in place of `after.keys` (which is then ignored): a machine built
   * with cold keys (`KvStateMachine.restoreColdSteps`) lists them with `mergeColdKeys`, making each
   * cold key's version as it is written, so no list of every key is held.
   */
  readonly afterKeys?: Iterable<readonly [string, readonly VersionRecord[]]>;
}

function sameVersion(a: VersionRecord, b: VersionRecord): boolean {
  if (a.revision !== b.revision || a.timestampMs !== b.timestampMs || (a.hops ?? 0) !== (b.hops ?? 0)) return false;
  if (a.value === null || b.value === null) return a.value === b.value;
  // A value held on disk: both states come from the same committed log, so the same revision is the same write.
  if (a.value === VALUE_ON_DISK || b.value === VALUE_ON_DISK) return true;
  return a.value === b.value || Buffer.compare(a.value, b.value) === 0;
}

// ------------------------------------------------------------------ reading values

/**
 * The {@link ValueSource} of one group's machine on a node: a value is looked up in the node's
 * shared {@link ValueCache}, else read synchronously from the group's version record in the engine
 * (`KvEngine.getSync`) and cached. The machine releases a value to it only once the record holding
 * it is durable (so visible to `getSync`), and versions are immutable, so a cached value never goes
 * stale: a compacted version is simply never asked for again, and group ids are never reused (the
 * map's `nextGroup`), so a dropped group's entries only age out of the cache.
 */
export class EngineValueSource implements ValueSource {
  private readonly keys: Keys;
  /** Cache keys of the entries per key: `<group>/:<key>`. */
  private readonly cachePrefix: string;
  /** Cache keys of the entries per version (see `store`): `<group>/<revision>/<key>`. */
  private readonly revisionPrefix: string;
  /** While `prefetch` runs its read: the versions it missed (read answers a placeholder instead of blocking). */
  private missing: Array<readonly [string, number]> | undefined;
  /** The pass in progress is `prefetch`'s dry run (its result is discarded). */
  private dryRun = false;

  /** The source of `group`'s values in `engine`, caching in `cache`. */
  constructor(
    private readonly engine: Pick<KvEngine, 'getSync' | 'get'>,
    readonly group: number,
    private readonly cache: ValueCache,
  ) {
    this.keys = new Keys(group);
    this.cachePrefix = `${group}/:`;
    this.revisionPrefix = `${group}/`;
  }

  read(key: string, revision: number): Uint8Array | undefined {
    if (this.missing !== undefined) {
      // A first pass (readCached) or a dry run (prefetch): note a miss instead of blocking on the
      // disk. A dry run's result is discarded, so it neither uses nor counts what is cached.
      if (!this.cached(key, revision)) {
        this.missing.push([key, revision]);
        return VALUE_ON_DISK;
      }
      if (this.dryRun) return VALUE_ON_DISK;
    }
    const hit = this.cache.get(this.cachePrefix + key, revision, false) ?? this.cache.get(`${this.revisionPrefix}${revision}/${key}`, revision);
    if (hit !== undefined) return hit;
    const raw = this.engine.getSync(this.keys.version(key, revision));
    if (raw === undefined) return undefined;
    const v = decodeVersion(raw, revision, key);
    if (v.value === null) return undefined;
    const value = ownedCopy(v.value);
    this.store(key, revision, value);
    return value;
  }

  released(key: string, revision: number, value: Uint8Array): void {
    this.store(key, revision, ownedCopy(value));
  }

  /** Whether the value of `key` at `revision` is cached (under the key, or under its revision: see `store`). */
  private cached(key: string, revision: number): boolean {
    return this.cache.has(this.cachePrefix + key, revision) || this.cache.has(`${this.revisionPrefix}${revision}/${key}`, revision);
  }

  /**
   * Caches the value of `key` at `revision` under `<group>/:<key>` (one entry per key, replaced in
   * place by the key's next version: the write path's release, every put), or, when that entry
   * holds a newer revision (a read at an older one), under `<group>/<revision>/<key>` beside it.
   * The two forms never collide: after the group's slash comes ':' in one, a digit in the other.
   */
  private store(key: string, revision: number, value: Uint8Array): void {
    const latest = this.cachePrefix + key;
    if (this.cache.set(latest, value, revision)) return;
    if ((this.cache.revisionOf(latest) ?? -1) > revision) this.cache.set(`${this.revisionPrefix}${revision}/${key}`, value, revision);
  }

  /**
   * A version record of `key` at `revision` that was just read from the engine for another reason
   * (`EngineIndexSource` reads a cold key's latest version record for its head, and the record
   * carries the value): cached when a read at the edge is running (`readCached`, `prefetch`), so
   * that read finds the value in the cache instead of noting a miss and reading the same record a
   * second time, asynchronously, before a second pass. Ignored otherwise (`apply`'s lookups of a
   * key about to be overwritten would only fill the cache with values that are being replaced).
   */
  offer(key: string, revision: number, record: Uint8Array): void {
    if (this.missing === undefined) return;
    if (this.cached(key, revision)) return;
    const v = decodeVersion(record, revision, key);
    if (v.value === null) return;
    this.cache.countMisses(1); // a value read from the engine (the read's own lookup then hits)
    this.store(key, revision, ownedCopy(v.value));
  }

  /**
   * Runs `read` (a synchronous read of the machine, e.g. `() => sm.get(key)`) as a dry run that
   * notes which values are neither in the heap nor cached, then reads those from the engine
   * asynchronously (off the event loop) into the cache. The caller then runs its read for real,
   * mostly from the cache (a value evicted or written meanwhile is read synchronously, still
   * correct). Whatever `read` returns or throws in the dry run is discarded.
   */
  async prefetch(read: () => unknown): Promise<void> {
    this.dryRun = true;
    const missing = this.firstPass(read).missing;
    this.dryRun = false;
    if (missing.length > 0) await this.fetch(missing);
  }

  /**
   * Runs `read` (a synchronous read of the machine) with the values it needs, never blocking the
   * event loop on the disk: a first pass serves what the heap and the cache hold and notes the
   * rest; when nothing was missing its result is the answer (one pass: the common case, hot
   * data); otherwise the misses are read asynchronously into the cache and `read` runs again.
   */
  async readCached<T>(read: () => T): Promise<T> {
    if (this.missing !== undefined) return read(); // not reentrant (read is synchronous: cannot happen)
    const first = this.firstPass(read);
    if (first.missing.length === 0) {
      if ('error' in first) throw first.error;
      return first.result as T;
    }
    await this.fetch(first.missing);
    return read();
  }

  /** Runs `read` once, misses noted instead of read (their values are placeholders in the result). */
  private firstPass(read: () => unknown): { missing: Array<readonly [string, number]>; result?: unknown; error?: unknown } {
    const missing: Array<readonly [string, number]> = [];
    if (this.missing !== undefined) return { missing };
    this.missing = missing;
    try {
      return { missing, result: read() };
    } catch (error) {
      return { missing, error };
    } finally {
      this.missing = undefined;
    }
  }

  /** Reads `missing` versions from the engine, asynchronously, into the cache. */
  private async fetch(missing: ReadonlyArray<readonly [string, number]>): Promise<void> {
    this.cache.countMisses(missing.length);
    await Promise.all(
      missing.map(async ([key, revision]) => {
        const raw = await this.engine.get(this.keys.version(key, revision));
        if (raw === undefined) return; // compacted meanwhile: the real read will not ask for it
        const v = decodeVersion(raw, revision, key);
        if (v.value !== null) this.store(key, revision, ownedCopy(v.value));
      }),
    );
  }
}

// ------------------------------------------------------------------ latest versions
//
// Read side of the key index (issue 17): latest-version lookups read `l/<key>` and the version's
// head by point reads behind the node's hot-index cache (`EngineIndexSource`), and a client `list`
// is served from the latest records and their version records through an engine view, with the
// machine's writes not yet durable laid over them (`listFromRecords`). Both are exact: the records
// plus the machine's overlay are the machine's state.

/** The cached answer "the records hold no version of this key" (by identity): a key looked up often and never written costs no engine read. */
const ABSENT: VersionRecord = Object.freeze({ revision: 0, timestampMs: 0, value: null });

/** Numbers the sources made, so each machine's cache entries are its own (a machine replaced by a snapshot install must not see its predecessor's). */
let indexSourceCount = 0;

/**
 * The latest versions of `group`'s keys read from its records (issue 17: the key index from the
 * engine), for a machine's `attachIndex`: the node's hot-index cache, else two synchronous engine
 * point reads, the key's `l/<key>` record (its newest revision; LevelDB's bloom filters make a key
 * without one cheap) and that version's record (its head: tombstone or not, timestamp, hop count),
 * which is then cached, as is a key's absence (every later write of the key reaches the cache
 * through `durable`, and a compaction only forgets keys whose newest version is a tombstone, which
 * reads the same as absent). A deleted key's latest is in `t/`, not `l/`, so it reads as absent
 * (the machine treats a tombstone and an absent key alike); one written before that split reads
 * as its tombstone. One source per machine.
 */
export class EngineIndexSource implements IndexSource {
  private readonly keys: Keys;
  private readonly cachePrefix: string;
  /** Lookups that read the engine (cache misses), of those the keys the records did not hold, and misses the machine answered (`mayExist`). */
  readonly reads = { engine: 0, absent: 0, skipped: 0 };

  /**
   * The source of `group`'s latest versions in `engine`, caching in `cache`; a cold key's version
   * record, read for its head, is offered to `values` (the same group's value source: a latest
   * `get` then needs no second read of it, see `EngineValueSource.offer`).
   */
  constructor(
    private readonly engine: Pick<KvEngine, 'getSync'>,
    readonly group: number,
    private readonly cache: IndexCache,
    private readonly values?: Pick<EngineValueSource, 'offer'>,
  ) {
    this.keys = new Keys(group);
    this.cachePrefix = `${group}/${++indexSourceCount}/`;
  }

  latest(key: string, mayExist?: () => boolean): VersionRecord | undefined {
    const ck = this.cachePrefix + key;
    const hit = this.cache.get(ck);
    if (hit !== undefined) return hit === ABSENT ? undefined : hit;
    if (mayExist !== undefined && !mayExist()) {
      this.reads.skipped++;
      return undefined;
    }
    this.reads.engine++;
    const latest = this.engine.getSync(this.keys.latest(key));
    if (latest === undefined) {
      this.reads.absent++;
      this.cache.set(ck, ABSENT); // until the machine writes the key (`durable` replaces it)
      return undefined;
    }
    const revision = corruptOnError(`latest of ${JSON.stringify(key)}`, () => readVarintOnly(latest));
    const raw = this.engine.getSync(this.keys.version(key, revision));
    if (raw === undefined) throw new StorageCorruptionError(`group ${this.group}: the latest record of ${JSON.stringify(key)} names version ${revision}, which is missing`);
    const head = decodeVersionHead(raw, revision, key);
    this.cache.set(ck, head);
    if (head.value !== null) this.values?.offer(key, revision, raw);
    return head;
  }

  durable(key: string, head: VersionRecord): void {
    this.cache.set(this.cachePrefix + key, head);
  }
}

// ------------------------------------------------------------------ listing

/** Fewest latest records read from the engine per step of a listing (keys the overlay deleted, or legacy latests of deleted keys, make a page need more than its size). */
const LIST_STEP_MIN = 16;

/**
 * A page of `group`'s live keys served from its records (issue 17: the key index from the engine):
 * the `l/<key>` latest records of `view` in key order under the plan's prefix (live keys only:
 * deleted keys' latests are in `t/`, so a page's work is bounded by its size and the overlay,
 * whatever the number of deleted keys in range), each resolved to its version record (a legacy
 * `l/` of a deleted key names a tombstone there and is skipped), with the plan's overlay (what the machine
 * wrote after `plan.sinceRevision`) on top, so the page is the machine's at `plan.revision`,
 * exactly what `KvStateMachine.list` answers. Reads in steps of about a page: one iteration of
 * latest records and one multi-get of their versions per step. Undefined when `view` cannot serve
 * the plan: no `meta` (a replacement under way), or records older than `plan.sinceRevision` or
 * newer than `plan.revision` (the caller then lists from the machine). Throws
 * StorageCorruptionError when a latest record names a version the view does not hold.
 */
export async function listFromRecords(view: Pick<EngineView, 'get' | 'getMany' | 'iterate'>, group: number, plan: ListPlan): Promise<ListResult | undefined> {
  const keys = new Keys(group);
  const rawMeta = await view.get(keys.meta);
  if (rawMeta === undefined) return undefined;
  const meta = decodeMeta(rawMeta);
  if (meta.revision < plan.sinceRevision || meta.revision > plan.revision || meta.appliedIndex > plan.appliedIndex) return undefined;
  const { overlay, keysOnly } = plan;
  // Overlay values already released from the heap are in the records (released means durable).
  const overlayValues = new Map<string, Uint8Array>();
  if (!keysOnly) {
    const onDisk = overlay.filter(([, v]) => v.value === VALUE_ON_DISK);
    const raws = await view.getMany(onDisk.map(([key, v]) => keys.version(key, v.revision)));
    for (let i = 0; i < onDisk.length; i++) {
      const [key, v] = onDisk[i]!;
      const raw = raws[i];
      if (raw === undefined) return undefined; // compacted since the plan: list from the machine
      overlayValues.set(key, decodeVersion(raw, v.revision, key).value!);
    }
  }
  const want = plan.limit + 1; // one more than a page tells whether more remain
  const items: ListItem[] = [];
  const push = (key: string, v: VersionRecord, value: Uint8Array | undefined): void => {
    if (v.value === null) return; // deleted
    items.push(keysOnly ? { key, version: v.revision, timestampMs: v.timestampMs } : { key, value: value!, version: v.revision, timestampMs: v.timestampMs });
  };
  const pushOverlay = (i: number): void => {
    const [key, v] = overlay[i]!;
    push(key, v, v.value === VALUE_ON_DISK ? overlayValues.get(key) : (v.value ?? undefined));
  };
  const p = keys.prefix.length + 2;
  const lPrefix = keys.latest(plan.prefix);
  let gte = plan.after !== undefined ? concat(keys.latest(plan.after), new Uint8Array([0])) : lPrefix; // just after `after`'s record
  const lt = prefixEnd(lPrefix);
  let o = 0; // next overlay entry
  for (;;) {
    const step = Math.max(LIST_STEP_MIN, want - items.length);
    const chunk: Array<{ key: string; revision: number }> = [];
    let last: Uint8Array | undefined;
    for await (const [k, v] of view.iterate({ gte, ...(lt ? { lt } : {}), limit: step })) {
      const key = decodeKey(k.subarray(p), k);
      chunk.push({ key, revision: corruptOnError(`latest of ${JSON.stringify(key)}`, () => readVarintOnly(v)) });
      last = k;
    }
    // Keys the overlay holds are read from it; the others' versions in one request.
    const overlayKeys = new Set<string>();
    for (let i = o; i < overlay.length && (chunk.length === 0 || compareKeys(overlay[i]![0], chunk[chunk.length - 1]!.key) <= 0); i++) overlayKeys.add(overlay[i]![0]);
    const fromRecords = chunk.filter((c) => !overlayKeys.has(c.key));
    const raws = await view.getMany(fromRecords.map((c) => keys.version(c.key, c.revision)));
    let r = 0;
    for (const c of chunk) {
      if (items.length >= want) break;
      while (o < overlay.length && compareKeys(overlay[o]![0], c.key) < 0 && items.length < want) pushOverlay(o++);
      if (items.length >= want) break;
      if (o < overlay.length && overlay[o]![0] === c.key) {
        pushOverlay(o++);
        continue;
      }
      const raw = raws[r++];
      if (raw === undefined) throw new StorageCorruptionError(`group ${group}: the latest record of ${JSON.stringify(c.key)} names version ${c.revision}, which is missing`);
      const v = keysOnly ? decodeVersionHead(raw, c.revision, c.key) : decodeVersion(raw, c.revision, c.key);
      push(c.key, v, v.value ?? undefined);
    }
    if (items.length >= want) break;
    if (chunk.length < step) {
      // The records are exhausted: the rest of the overlay follows.
      while (o < overlay.length && items.length < want) pushOverlay(o++);
      break;
    }
    gte = concat(last!, new Uint8Array([0]));
  }
  if (items.length > plan.limit) {
    items.length = plan.limit;
    return { items, nextAfter: items[plan.limit - 1]!.key, revision: plan.revision };
  }
  return { items, revision: plan.revision };
}

// ------------------------------------------------------------------ the version sweep
//
// With `RecorderOptions.sweepVersions`, a compaction in `apply` moves the compaction point (and
// forgets deleted keys' latests) but leaves the versions it dropped on disk; this node-local sweep
// deletes them later in bounded units, walking `v/` in key order from a cursor, like a RocksDB
// compaction filter. A version is dead at compaction point `c` when it is older than its key's
// newest version at or before `c`, or is that version and a tombstone: exactly what the machine
// dropped. The decision needs only the version and the next one of the same key, and `c` only
// grows, so a dead version stays dead whatever happens meanwhile (more writes, a compaction, a
// snapshot install: an installed state comes from the same log, at a compaction point no older);
// the sweep reads `c` from `meta` in the same engine view as the versions (the durable state), and
// its deletions are idempotent. A crash mid-sweep loses at most a suffix of its unsynced units:
// the dead versions are still dead, the loader (`LoadOptions.deadVersions`) and the snapshot
// encoder skip them, and the next pass deletes them. A key's versions are deleted oldest first
// (units walk upward), so a dead version is never left without the newer version that makes it
// dead (a forgotten key's last version is a tombstone at or before `c`: dead on its own, and
// deleted only once no older version of its key is left, which a unit that starts mid-key, with
// `c` grown since the unit before, checks with one read).

/** Default number of version records one {@link sweepVersions} unit reads (and at most deletes). */
export const SWEEP_RECORDS_PER_UNIT = 1024;

/** What one unit of the version sweep did. */
export interface SweepUnit {
  /** Version records read, and of those deleted (dead at `compactRevision`). */
  readonly scanned: number;
  readonly deleted: number;
  /** The compaction point the unit swept to (from the view's `meta`). */
  readonly compactRevision: number;
  /** Where the next unit starts (a raw engine key), or undefined when this unit reached the end of `v/`. */
  readonly next: Uint8Array | undefined;
}

/**
 * Whether a version (at `revision`, a tombstone or not) is dead at compaction point `c`, given the
 * revision of the key's next version (undefined: it is the key's newest): the machine's compaction
 * dropped it, so no read at or after `c` can see it.
 */
export function isDeadVersion(revision: number, tombstone: boolean, nextRevision: number | undefined, c: number): boolean {
  return revision <= c && (tombstone || (nextRevision !== undefined && nextRevision <= c));
}

/** Whether two version keys (their escaped key ending at `escapedEnd`, after the `v/` tag at `p`) are of the same key. */
function sameEscapedKey(a: { key: Uint8Array; escapedEnd: number }, b: { key: Uint8Array; escapedEnd: number }, p: number): boolean {
  return a.escapedEnd === b.escapedEnd && Buffer.compare(a.key.subarray(p + 2, a.escapedEnd), b.key.subarray(p + 2, b.escapedEnd)) === 0;
}

/** Whether `view` holds a version of `v`'s key older than `v` (one keys-only read of at most one record). */
async function hasOlderVersion(view: Pick<EngineView, 'iterate'>, v: { key: Uint8Array; escapedEnd: number }): Promise<boolean> {
  for await (const _ of view.iterate({ gte: v.key.subarray(0, v.escapedEnd + 2), lt: v.key, limit: 1, keysOnly: true })) return true;
  return false;
}

/**
 * One unit of the version sweep of `group` (see the section comment): reads up to `maxRecords`
 * version records from `from` (a raw key from the previous unit's `next`; undefined: the start)
 * in one engine view, with `meta`'s compaction point, and deletes the dead ones in one batch
 * (not synced: a lost unit is redone by the next pass). Undefined when the view holds no `meta`
 * (no records, or a replacement under way: try later).
 */
export async function sweepVersions(
  engine: Pick<KvEngine, 'view' | 'batch'>,
  group: number,
  from: Uint8Array | undefined,
  maxRecords = SWEEP_RECORDS_PER_UNIT,
): Promise<SweepUnit | undefined> {
  if (!Number.isSafeInteger(maxRecords) || maxRecords < 1) throw new RangeError(`maxRecords must be a positive integer, got ${maxRecords}`);
  const keys = new Keys(group);
  const p = keys.prefix.length;
  const vPrefix = new Uint8Array(p + 2);
  vPrefix.set(keys.prefix);
  vPrefix[p] = TAG_VERSION;
  vPrefix[p + 1] = SLASH;
  const view = engine.view();
  const seen: Array<{ key: Uint8Array; escapedEnd: number; revision: number }> = [];
  const ops: EngineOp[] = [];
  let c: number;
  let more: boolean;
  let decided: number;
  try {
    const rawMeta = await view.get(keys.meta);
    if (rawMeta === undefined) return undefined;
    c = decodeMeta(rawMeta).compactRevision;
    const lt = prefixEnd(vPrefix);
    // Keys only: the values (1 KiB each, typically) are what a scan of `v/` costs.
    for await (const [k] of view.iterate({ gte: from ?? vPrefix, ...(lt ? { lt } : {}), limit: maxRecords + 1, keysOnly: true })) {
      const end = findTerminator(k, p + 2);
      if (end < 0 || k.length !== end + 10) throw new StorageCorruptionError(`malformed version key ${describe(k)}`);
      seen.push({ key: k, escapedEnd: end, revision: readU64(k, end + 2) });
    }
    more = seen.length > maxRecords;
    decided = more ? maxRecords : seen.length;
    // A version followed by one of its key at or before `c` is dead whatever its kind. A key's newest
    // version at or before `c` is dead only as a tombstone (its kind is in the value, not read):
    // followed by a later version, it is left for a later pass (dead, harmless: every reader skips
    // it; it dies kind-independently once that version is at or before `c`); as the key's last
    // version, it is a tombstone exactly when the key has no latest record (a live key has `l/`; a
    // deleted key whose tombstone is at or before `c` was forgotten, its `t/` deleted, by the
    // compaction's own unit), so the key's versions are all dead.
    const lastOfKey: number[] = [];
    for (let i = 0; i < decided; i++) {
      const cur = seen[i]!;
      if (cur.revision > c) continue;
      const nx = seen[i + 1];
      const sameKey = nx !== undefined && sameEscapedKey(nx, cur, p);
      if (sameKey && nx.revision <= c) ops.push({ type: 'del', key: cur.key });
      else if (!sameKey) lastOfKey.push(i);
    }
    if (lastOfKey.length > 0) {
      const latestKey = (i: number, tag: number): Uint8Array => {
        const r = seen[i]!;
        const out = new Uint8Array(r.escapedEnd);
        out.set(r.key.subarray(0, r.escapedEnd));
        out[p] = tag;
        return out;
      };
      const live = await view.getMany(lastOfKey.map((i) => latestKey(i, TAG_LATEST)));
      const noLive = lastOfKey.filter((_, n) => live[n] === undefined);
      const deleted = noLive.length > 0 ? await view.getMany(noLive.map((i) => latestKey(i, TAG_DELETED))) : [];
      for (let n = 0; n < noLive.length; n++) {
        if (deleted[n] !== undefined) continue;
        const i = noLive[n]!;
        // The forgotten key's last version (a tombstone) is what makes its older ones dead (they may
        // be puts): it goes only when none is left. The unit saw the key's versions from its first,
        // unless the key's run is the unit's first and the unit started mid-key (`from`) after
        // versions an earlier unit of the pass kept (not dead at the compaction point that unit
        // read: `c` grew since). Then the tombstone is left for the next pass, which deletes the
        // older versions first (regression: a tombstone deleted alone left a put that readers took
        // for the forgotten key's live version, model test seed 186486786).
        if (from !== undefined && sameEscapedKey(seen[0]!, seen[i]!, p) && (await hasOlderVersion(view, seen[0]!))) continue;
        ops.push({ type: 'del', key: seen[i]!.key });
      }
      // In key order, a key's versions oldest first (one batch: the order is for the reader's sake).
      ops.sort((a, b) => Buffer.compare(a.key as Uint8Array, b.key as Uint8Array));
    }
  } finally {
    await view.close();
  }
  if (ops.length > 0) await engine.batch(ops, { sync: false });
  return { scanned: decided, deleted: ops.length, compactRevision: c, next: more ? seen[maxRecords]!.key : undefined };
}

// ------------------------------------------------------------------ loading

/** Reads `group`'s `meta` record; undefined when the group has none (no records, or a replacement cut short). */
export async function readStateMeta(engine: KvEngine, group: number): Promise<StateMeta | undefined> {
  const v = await engine.get(new Keys(group).meta);
  return v === undefined ? undefined : decodeMeta(v);
}

/** The raw keys of all of `group`'s state records (to delete records whose contents are not trusted). */
export async function stateKeys(engine: KvEngine, group: number): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const [k] of engine.iterate({ prefix: stateKeyPrefix(group) })) out.push(k);
  return out;
}

/** Options of {@link loadState}. */
export interface LoadOptions {
  /**
   * Read the values of the versions into the heap (default true). With false, every value is the
   * {@link VALUE_ON_DISK} placeholder (tombstones stay null) except those of the watch history's
   * put events: the machine built from the records must then read values through an
   * {@link EngineValueSource} (`KvStateMachine.attachValues`).
   */
  readonly values?: boolean;
  /** When given, filled with how long each phase of the load took (ms), for the open path's log. */
  readonly timings?: LoadTimings;
  /**
   * The records may hold versions dead at the compaction point that the sweep has not deleted yet
   * (written by a recorder with `sweepVersions`): skip them (default false: such a version is
   * reported as corruption, as a compacted version that survives).
   */
  readonly deadVersions?: boolean;
  /**
   * Load keys whose only retained version is live as key and revision only (`LoadedState.cold`),
   * from a keys-only scan of the version records: no value, no version object (default false).
   * Needs `values: false`. Multi-version keys, deleted keys and every key of a store whose `meta`
   * has no key counts (written before they were kept) load as without it; when the live-key counts
   * of `meta` disagree with the keys so loaded (an `l/` naming a tombstone, written before the
   * live/deleted split) the group is loaded again without it. A cold version's contents (kind,
   * timestamp, hop count) are not checked at load: they are read when the key is.
   */
  readonly coldKeys?: boolean;
}

/**
 * Read-ahead of the restart's scan of a group's records: 1,000 records of 1 KiB values per trip
 * to LevelDB's thread pool instead of ~15 (classic-level's default of 16 KiB). At 1 M keys the
 * default made ~67,000 trips, each waiting for a thread-pool turn (20 of 65 s idle on a busy machine).
 */
const LOAD_READ_AHEAD_BYTES = 1024 * 1024;

/** Milliseconds spent in each phase of {@link loadState} (the restart's log reports them). */
export interface LoadTimings {
  /** Iterating the group's records (engine reads and per-record decoding), and how many records. */
  scanMs: number;
  records: number;
  /** Checking and assembling the machine's data from them. */
  assembleMs: number;
  /** Reading the watch history's put values back (only with `values: false`). */
  historyValuesMs: number;
}

/** A group's records as loaded: the machine's data, and what a recorder continuing from them needs. */
export interface LoadedState {
  /** The data of `KvStateMachine.fromRecords`. */
  readonly data: SnapshotData;
  /** Pass to the `StateRecorder` of the rebuilt machine. */
  readonly written: WrittenState;
  /** With `LoadOptions.coldKeys`: the keys loaded without versions (pass to `KvStateMachine.fromRecords` as `cold`; none of them is in `data.keys`). */
  readonly cold?: ColdKeys;
}

/**
 * Loads `group`'s records, checking the invariants the machine relies on (throws
 * StorageCorruptionError); undefined when there is no `meta`.
 */
export async function loadState(engine: KvEngine, group: number, options: LoadOptions = {}): Promise<LoadedState | undefined> {
  const withValues = options.values !== false;
  const coldKeys = options.coldKeys === true;
  if (coldKeys && withValues) throw new Error('loadState: coldKeys needs values: false (cold keys are loaded without their versions)');
  const keys = new Keys(group);
  const p = keys.prefix.length;
  // The latest records in key order, live (`l/`) and deleted (`t/`): the loader compares them with
  // the versions by position (no map of every key).
  let latest: LatestRecords = { keys: [], revisions: [] };
  const deleted: LatestRecords = { keys: [], revisions: [] };
  let meta: StateMeta | undefined;
  const revs: Array<{ rev: number; value: Uint8Array }> = [];
  const versionKeys: Array<[string, VersionRecord[]]> = [];
  const sessions = new SessionReplay();
  let prevEscaped: Uint8Array | undefined;
  const t = options.timings;
  let mark = performance.now();
  let records = 0;
  // Long scans yield to the event loop between slices (a restart at 1 M keys otherwise blocks it for seconds).
  const slicer = new Slicer(LOAD_SLICE_MS);
  /** Every record but a version. */
  const other = (k: Uint8Array, v: Uint8Array): void => {
    const tag = k[p];
    if (k.length === p + META_SUFFIX.length && Buffer.compare(k.subarray(p), META_SUFFIX) === 0) {
      meta = decodeMeta(v);
    } else if (k[p + 1] !== SLASH) {
      throw new StorageCorruptionError(`unexpected state key ${describe(k)}`);
    } else if (tag === TAG_LATEST) {
      const key = decodeKey(k.subarray(p + 2), k);
      latest.keys.push(key);
      latest.revisions.push(latestRevision(v, () => `latest of ${JSON.stringify(key)}`));
    } else if (tag === TAG_DELETED) {
      const key = decodeKey(k.subarray(p + 2), k);
      deleted.keys.push(key);
      deleted.revisions.push(latestRevision(v, () => `latest of deleted ${JSON.stringify(key)}`));
    } else if (tag === TAG_REVISION) {
      if (k.length !== p + 10) throw new StorageCorruptionError(`unexpected state key ${describe(k)}`);
      revs.push({ rev: readU64(k, p + 2), value: v });
    } else if (tag === TAG_SESSION) {
      const id = sessionIdOf(k.subarray(p + 2), k);
      sessions.addBaseHeader(corruptOnError(`session ${id}`, () => decodeSessionHeader(id, v)));
    } else if (tag === TAG_SESSION_RESULT) {
      if (k.length < p + 2 + 1 + 9 || k[k.length - 9] !== SLASH) throw new StorageCorruptionError(`malformed session result key ${describe(k)}`);
      const id = sessionIdOf(k.subarray(p + 2, k.length - 9), k);
      const seq = readU64(k, k.length - 8);
      sessions.addBaseResult(id, seq, corruptOnError(`result ${seq} of session ${id}`, () => decodeSessionResult(v)));
    } else if (tag === TAG_SESSION_JOURNAL) {
      if (k.length !== p + 10) throw new StorageCorruptionError(`malformed session journal key ${describe(k)}`);
      const n = readU64(k, p + 2);
      corruptOnError(`session journal record ${n}`, () => sessions.replay(n, v));
    } else throw new StorageCorruptionError(`unexpected state key ${describe(k)}`);
  };
  /** One version record (its value read when `v` is given). */
  const version = (k: Uint8Array, v: Uint8Array): void => {
    const end = findTerminator(k, p + 2);
    if (end < 0 || k.length !== end + 10) throw new StorageCorruptionError(`malformed version key ${describe(k)}`);
    const escaped = k.subarray(p + 2, end);
    const rev = readU64(k, end + 2);
    if (prevEscaped === undefined || Buffer.compare(prevEscaped, escaped) !== 0) {
      const key = decodeKey(escaped, k);
      const prev = versionKeys[versionKeys.length - 1];
      if (prev && compareKeys(prev[0], key) >= 0) throw new StorageCorruptionError(`version keys out of order at ${describe(k)}`);
      versionKeys.push([key, []]);
      prevEscaped = escaped;
    }
    const [key, list] = versionKeys[versionKeys.length - 1]!;
    list.push(withValues ? decodeVersion(v, rev, key) : decodeVersionHead(v, rev, key));
  };
  let cold: { keys: string[]; revisions: number[] } | undefined;
  const versionPrefix = concat(keys.prefix, new Uint8Array([TAG_VERSION, SLASH]));
  if (!coldKeys) {
    // A run of records per trip to the engine (a promise per record was ~10 % of the scan's CPU).
    for await (const run of scanChunks(engine, { prefix: keys.prefix, readAheadBytes: LOAD_READ_AHEAD_BYTES })) {
      for (const [k, v] of run) {
        records++;
        if (k[p] === TAG_VERSION && k[p + 1] === SLASH) version(k, v);
        else other(k, v);
      }
      await slicer.maybeYield();
    }
  } else {
    // Everything but the versions (meta, latests, blocks, sessions: `v/` sorts last of the tags),
    // then the versions, keys only.
    const ranges = [
      { gte: keys.prefix, lt: versionPrefix },
      { gte: prefixEnd(versionPrefix), lt: prefixEnd(keys.prefix) },
    ];
    for (const range of ranges) {
      for await (const run of scanChunks(engine, { ...range, readAheadBytes: LOAD_READ_AHEAD_BYTES })) {
        for (const [k, v] of run) {
          records++;
          other(k, v);
        }
        await slicer.maybeYield();
      }
    }
    if (meta === undefined) return undefined;
    if (meta.liveKeys === undefined) {
      // No key counts to check the cold keys against (see LoadOptions.coldKeys): every version loads.
      for await (const run of scanChunks(engine, { prefix: versionPrefix, readAheadBytes: LOAD_READ_AHEAD_BYTES })) {
        for (const [k, v] of run) {
          records++;
          version(k, v);
        }
        await slicer.maybeYield();
      }
    } else {
      cold = { keys: [], revisions: [] };
      const c = cold;
      const hot: LatestRecords = { keys: [], revisions: [] }; // the latests of keys loaded with versions
      let li = 0;
      let curKey: string | undefined;
      const curRevs: number[] = [];
      const flush = (): void => {
        if (curKey === undefined) return;
        const key = curKey;
        // Latests before `key` have no versions: left to `assemble`, which reports them.
        while (li < latest.keys.length && compareKeys(latest.keys[li]!, key) < 0) {
          hot.keys.push(latest.keys[li]!);
          hot.revisions.push(latest.revisions[li++]!);
        }
        if (curRevs.length === 1 && latest.keys[li] === key && latest.revisions[li] === curRevs[0]) {
          c.keys.push(key);
          c.revisions.push(curRevs[0]!);
          li++;
        } else {
          // Several versions, or not live: their heads, read by point (the minority of keys).
          const list: VersionRecord[] = [];
          for (const rev of curRevs) {
            const raw = engine.getSync(keys.version(key, rev));
            if (raw === undefined) throw new StorageCorruptionError(`group ${group} state: version ${rev} of ${JSON.stringify(key)} vanished while loading`);
            list.push(decodeVersionHead(raw, rev, key));
          }
          versionKeys.push([key, list]);
        }
        curRevs.length = 0;
      };
      for await (const run of scanChunks(engine, { prefix: versionPrefix, readAheadBytes: LOAD_READ_AHEAD_BYTES, keysOnly: true })) {
        for (const [k] of run) {
          records++;
          const end = findTerminator(k, p + 2);
          if (end < 0 || k.length !== end + 10) throw new StorageCorruptionError(`malformed version key ${describe(k)}`);
          const escaped = k.subarray(p + 2, end);
          if (prevEscaped === undefined || Buffer.compare(prevEscaped, escaped) !== 0) {
            flush();
            const key = decodeKey(escaped, k);
            if (curKey !== undefined && compareKeys(curKey, key) >= 0) throw new StorageCorruptionError(`version keys out of order at ${describe(k)}`);
            curKey = key;
            prevEscaped = escaped;
          }
          curRevs.push(readU64(k, end + 2));
        }
        await slicer.maybeYield();
      }
      flush();
      while (li < latest.keys.length) {
        hot.keys.push(latest.keys[li]!);
        hot.revisions.push(latest.revisions[li++]!);
      }
      latest = hot;
    }
  }
  if (meta === undefined) return undefined;
  if (t) {
    t.scanMs = performance.now() - mark;
    t.records = records;
    mark = performance.now();
  }
  const coldVersion = (key: string, rev: number): VersionRecord => {
    const raw = engine.getSync(keys.version(key, rev));
    if (raw === undefined) throw new StorageCorruptionError(`group ${group} state: version ${rev} of ${JSON.stringify(key)} vanished while loading`);
    return decodeVersionHead(raw, rev, key);
  };
  const steps = assembleSteps(group, meta, latest, deleted, revs, versionKeys, options.deadVersions === true, cold, coldVersion);
  let step = steps.next();
  for (; !step.done; step = steps.next()) await slicer.maybeYield();
  const loaded = step.value;
  // The key counts kept in `meta` must be the records' (records written before they were kept have none: the machine counts at build).
  if (meta.liveKeys !== undefined) {
    const counted = keyCountsOf(loaded.data.keys);
    let liveKeys = counted.liveKeys;
    let reservedLiveKeys = counted.reservedLiveKeys;
    if (cold !== undefined) {
      liveKeys += cold.keys.length;
      for (const key of cold.keys) if (isReservedKey(key)) reservedLiveKeys++;
    }
    if (liveKeys !== meta.liveKeys || reservedLiveKeys !== meta.reservedLiveKeys) {
      // Cold keys are taken for live on their latest record alone: load again, reading every version.
      if (cold !== undefined) return loadState(engine, group, { ...options, coldKeys: false });
      throw new StorageCorruptionError(`group ${group} state: meta counts ${meta.liveKeys} live keys (${meta.reservedLiveKeys} reserved), the records hold ${counted.liveKeys} (${counted.reservedLiveKeys})`);
    }
  }
  if (t) {
    t.assembleMs = performance.now() - mark;
    mark = performance.now();
  }
  if (!withValues) {
    // The watch history keeps its put values (bounded by maxHistoryBytes): read those back.
    const history = loaded.data.history as KvEvent[];
    for (let i = 0; i < history.length; i++) {
      const e = history[i]!;
      if (e.value !== VALUE_ON_DISK) continue;
      // Synchronous point reads: at open nothing else runs, and an async get per event was a trip
      // to LevelDB's thread pool each (4.9 s for the 10,000 events of a 300 k-key restart at load 15).
      const raw = engine.getSync(keys.version(e.key, e.revision));
      if (raw === undefined) throw new StorageCorruptionError(`group ${group} state: version ${e.revision} of ${JSON.stringify(e.key)} vanished while loading`);
      history[i] = { ...e, value: ownedCopy(decodeVersion(raw, e.revision, e.key).value!) };
    }
  }
  if (t) t.historyValuesMs = performance.now() - mark;
  const sessionRecords = assembleSessions(group, meta, sessions);
  return {
    written: { ...loaded.written, sessions: sessions.written() },
    data: {
      ...loaded.data,
      sessionTtlMs: meta.sessionTtlMs,
      maxSessions: meta.maxSessions,
      maxSessionResults: meta.maxSessionResults,
      sessions: sessionRecords,
    },
    ...(cold !== undefined ? { cold } : {}),
  };
}

/** Longest stretch (ms) of a restart's scan and checks before it yields to the event loop. */
const LOAD_SLICE_MS = 20;

/** `assembleSteps` offers to yield after each 4,096 keys (a mask: 2^12 - 1). */
const ASSEMBLE_STEP_KEYS = 4095;

function sessionIdOf(raw: Uint8Array, whole: Uint8Array): string {
  const id = raw.length <= MAX_SESSION_ID_LENGTH ? Buffer.from(raw).toString('latin1') : '';
  if (!SESSION_ID_PATTERN.test(id)) throw new StorageCorruptionError(`bad session id in ${describe(whole)}`);
  return id;
}

/** The sessions (base records, then the journal replayed) in activity order (by last active index), with their results, checked. */
function assembleSessions(group: number, meta: StateMeta, replay: SessionReplay): SessionRecord[] {
  const fail = (what: string): never => {
    throw new StorageCorruptionError(`group ${group} state: ${what}`);
  };
  for (const id of replay.orphanIds) fail(`results of session ${id} without its header`);
  const sessions = replay.records();
  const limits = { ttlMs: meta.sessionTtlMs, maxSessions: meta.maxSessions, maxResults: meta.maxSessionResults };
  checkSessionRecords(sessions, { appliedIndex: meta.appliedIndex, lastTimestampMs: meta.lastTimestampMs, revision: meta.revision, limits }, fail);
  return sessions;
}

function readVarintOnly(v: Uint8Array): number {
  const r = new ByteReader(v, 'MALFORMED_SNAPSHOT');
  const n = r.varint();
  r.expectEnd();
  return n;
}

function describe(k: Uint8Array): string {
  return JSON.stringify(Buffer.from(k).toString('latin1'));
}

/** Index of the 0x00 0x01 that ends an escaped key at or after `from`, or -1. */
function findTerminator(k: Uint8Array, from: number): number {
  for (let i = from; i + 1 < k.length; i++) {
    if (k[i] !== 0) continue;
    if (k[i + 1] === 0x01) return i;
    i++; // 0x00 0xff: an escaped zero byte
  }
  return -1;
}

const fatalUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeKey(escaped: Uint8Array, whole: Uint8Array): string {
  let raw = escaped;
  if (escaped.includes(0)) {
    const out: number[] = [];
    for (let i = 0; i < escaped.length; i++) {
      if (escaped[i] === 0) {
        if (escaped[i + 1] !== 0xff) throw new StorageCorruptionError(`bad key escape in ${describe(whole)}`);
        i++; // 0x00 0xff is one zero byte
        out.push(0);
      } else out.push(escaped[i]!);
    }
    raw = new Uint8Array(out);
  }
  if (raw.length === 0 || raw.length > MAX_KEY_BYTES) throw new StorageCorruptionError(`bad key length in ${describe(whole)}`);
  try {
    return fatalUtf8.decode(raw);
  } catch {
    throw new StorageCorruptionError(`key is not UTF-8 in ${describe(whole)}`);
  }
}

/** A version record without its value bytes: tombstone or {@link VALUE_ON_DISK}, with its timestamp (and hop count). */
function decodeVersionHead(v: Uint8Array, revision: number, key: string): VersionRecord {
  return decodeVersionWith(v, revision, key, false);
}

function decodeVersion(v: Uint8Array, revision: number, key: string): VersionRecord {
  return decodeVersionWith(v, revision, key, true);
}

function decodeVersionWith(v: Uint8Array, revision: number, key: string, withValue: boolean): VersionRecord {
  // The common record (no hop count, a short canonical timestamp) without a reader or a label per
  // record (a restart decodes every version head); anything else takes the checked way below.
  const kind = v.length > 0 ? v[0]! : -1;
  if (kind === KIND_VALUE || kind === KIND_TOMBSTONE) {
    const timestampMs = shortVarint(v, 1);
    if (timestampMs >= 0) {
      const rest = v.length - shortVarintEnd;
      if (kind === KIND_TOMBSTONE && rest === 0) return { revision, timestampMs, value: null };
      if (kind === KIND_VALUE && rest <= MAX_VALUE_BYTES) return { revision, timestampMs, value: withValue ? v.subarray(shortVarintEnd) : VALUE_ON_DISK };
    }
  }
  try {
    const r = new ByteReader(v, 'MALFORMED_SNAPSHOT');
    const kind = r.u8();
    if ((kind & ~KIND_HOPS) !== KIND_TOMBSTONE && (kind & ~KIND_HOPS) !== KIND_VALUE) r.fail(`unknown version kind ${kind}`);
    const timestampMs = r.varint();
    const hops = kind & KIND_HOPS ? readHops(r) : 0;
    let value: Uint8Array | null;
    if ((kind & ~KIND_HOPS) === KIND_TOMBSTONE) {
      r.expectEnd();
      value = null;
    } else {
      if (r.remaining > MAX_VALUE_BYTES) r.fail('value too large');
      value = withValue ? r.view(r.remaining) : VALUE_ON_DISK;
    }
    return hops > 0 ? { revision, timestampMs, value, hops } : { revision, timestampMs, value };
  } catch (e) {
    if (e instanceof ValidationError) throw new StorageCorruptionError(`version ${revision} of ${JSON.stringify(key)}: ${e.message}`);
    throw e;
  }
}

/** Where the varint {@link shortVarint} read last ends. */
let shortVarintEnd = 0;

/**
 * A canonical unsigned LEB128 varint of at most 7 bytes at `at` (its end in `shortVarintEnd`), or
 * -1 when it is not one (longer, truncated, non-canonical): the caller then reads it with a
 * `ByteReader`, which says what is wrong.
 */
function shortVarint(v: Uint8Array, at: number): number {
  let result = 0;
  let mul = 1;
  for (let i = 0; i < 7 && at + i < v.length; i++) {
    const b = v[at + i]!;
    result += (b & 0x7f) * mul;
    if (b < 0x80) {
      if (b === 0 && i > 0) return -1;
      shortVarintEnd = at + i + 1;
      return result;
    }
    mul *= 0x80;
  }
  return -1;
}

/** The revision a latest record (`l/` or `t/`) names; `what` labels a corrupt one. */
function latestRevision(v: Uint8Array, what: () => string): number {
  const n = shortVarint(v, 0);
  if (n >= 0 && shortVarintEnd === v.length) return n;
  return corruptOnError(what(), () => readVarintOnly(v));
}

/** A flagged hop count: 1..MAX_HOP_COUNT (a flag with 0 is not canonical). */
function readHops(r: ByteReader): number {
  const hops = r.varintMax(MAX_HOP_COUNT, 'hop count');
  if (hops === 0) r.fail('hop count 0 flagged');
  return hops;
}

/** Reads one event of a revision block: its type byte (with the hop flag cleared), key, trigger value and hop count. */
function readBlockEvent(rd: ByteReader): { readonly type: number; readonly key: Uint8Array; readonly value?: Uint8Array; readonly hops: number } {
  const flagged = rd.u8();
  const type = flagged & ~EV_HOPS;
  if (type !== EV_PUT && type !== EV_DELETE && type !== EV_TRIGGER) rd.fail(`unknown event type ${flagged}`);
  const key = rd.view(rd.varintMax(MAX_KEY_BYTES, 'event key length'));
  const value = type === EV_TRIGGER ? rd.view(rd.varintMax(MAX_VALUE_BYTES, 'trigger value length')) : undefined;
  const hops = flagged & EV_HOPS ? readHops(rd) : 0;
  return value !== undefined ? { type, key, value, hops } : { type, key, hops };
}

/** The `l/` records of a group as loaded, in key order: each key and its latest revision. */
/** Latest records of one kind (live or deleted) in key order, as the loader scanned them. */
interface LatestRecords {
  readonly keys: string[];
  readonly revisions: number[];
}

interface RawEvent {
  readonly type: number;
  readonly key: string;
  readonly value?: Uint8Array;
  readonly hops: number;
}

/**
 * Checks the loaded records and assembles the machine's data (see `loadState`), as a generator that
 * yields between blocks and every few thousand keys, so the caller can spread it over event-loop turns.
 */
function* assembleSteps(
  group: number,
  meta: StateMeta,
  latest: LatestRecords,
  deleted: LatestRecords,
  revs: ReadonlyArray<{ rev: number; value: Uint8Array }>,
  keys: Array<[string, VersionRecord[]]>,
  deadVersions: boolean,
  cold?: ColdKeys,
  coldVersion?: (key: string, revision: number) => VersionRecord,
): Generator<void, Omit<LoadedState, 'cold'>, undefined> {
  const fail = (what: string): never => {
    throw new StorageCorruptionError(`group ${group} state: ${what}`);
  };
  const { compactRevision: c, revision } = meta;
  // Revision timestamps for [c, revision] (revision 0 implicitly at 0) and the history events,
  // from the blocks, which must cover [max(c, 1), revision] contiguously.
  const revisionTimestamps: number[] = [];
  const writesAt: number[] = []; // versions written at each revision in (c, revision]
  const histRevs: Array<{ rev: number; ts: number; writes: number; events: RawEvent[] }> = [];
  const blocks: BlockState[] = [];
  if (c === 0) revisionTimestamps.push(0);
  let next = -1;
  let prevTs = 0;
  for (const r of revs) {
    if (next < 0 ? r.rev > Math.max(1, c) : r.rev !== next) fail(`revision block at ${r.rev} where ${next < 0 ? Math.max(1, c) : next} was expected`);
    const block = corruptOnError(`revision block ${r.rev}`, () => {
      const rd = new ByteReader(r.value, 'MALFORMED_SNAPSHOT');
      const n = rd.varint();
      if (n === 0) rd.fail('empty block');
      const b: BlockState = { first: r.rev, last: r.rev + n - 1, ts: [], writes: [], withEvents: false };
      for (let i = 0; i < n; i++) {
        const rev = r.rev + i;
        const ts = rd.varint();
        const writes = rd.varint();
        const count = rd.varint();
        const events: RawEvent[] = [];
        for (let e = 0; e < count; e++) {
          const ev = readBlockEvent(rd);
          const key = rd.decodeUtf8(ev.key, 'event key');
          if (key.length === 0) rd.fail('empty event key');
          events.push(ev.value !== undefined ? { type: ev.type, key, value: ev.value, hops: ev.hops } : { type: ev.type, key, hops: ev.hops });
        }
        if (count > 0) b.withEvents = true;
        b.ts!.push(ts);
        b.writes!.push(writes);
        if (rev < c) continue; // before the compaction point: left in the block that holds it
        if (ts < prevTs) rd.fail(`revision ${rev} has a timestamp older than its predecessor`);
        prevTs = ts;
        revisionTimestamps.push(ts);
        if (rev > c) writesAt.push(writes);
        if (rev >= meta.oldestHistoryRevision) {
          if (count === 0) rd.fail(`revision ${rev} is in the history but has no events`);
          histRevs.push({ rev, ts, writes, events });
        }
      }
      rd.expectEnd();
      return b;
    });
    if (!block.withEvents) {
      block.ts = undefined;
      block.writes = undefined;
    }
    if (next < 0 && block.last < Math.max(1, c)) fail(`revision block ${block.first}..${block.last} is wholly before the compaction point ${c}`);
    blocks.push(block);
    next = block.last + 1;
    yield;
  }
  if ((next < 0 ? Math.max(1, c) : next) !== revision + 1) fail(`revision blocks do not end at revision ${revision}`);
  if (meta.lastTimestampMs < prevTs) fail('lastTimestampMs is older than the last revision');
  if ((histRevs.length === 0) !== (revision === 0)) fail('history must be non-empty exactly when revision > 0');
  const tsOf = (rev: number): number => revisionTimestamps[rev - c]!;

  // Versions: the layout gives key order and, per key, revision order. Only the keys of the
  // history's events are kept in a map (they look their versions up); the latest records are
  // compared by position (both in key order), so the check costs no per-key map.
  const historyKeys = new Set<string>();
  for (const h of histRevs) for (const e of h.events) if (e.type !== EV_TRIGGER) historyKeys.add(e.key);
  const byKey = new Map<string, VersionRecord[]>();
  const legacyTombstones = new Map<string, number>();
  const found = new Array<number>(writesAt.length).fill(0);
  let li = 0;
  let di = 0;
  /** The revision in `records` at position `at` when it is `key`'s; a record before `key` there has no versions. */
  const latestAt = (records: LatestRecords, at: number, key: string, what: string): number | undefined => {
    const k = records.keys[at];
    if (k === undefined) return undefined;
    if (k === key) return records.revisions[at];
    if (compareKeys(k, key) < 0) fail(`the latest record of ${what} ${JSON.stringify(k)} has no versions`);
    return undefined;
  };
  let kept = 0; // keys with retained versions, moved to the front of `keys` (with dead versions, some have none)
  for (let k = 0; k < keys.length; k++) {
    if ((k & ASSEMBLE_STEP_KEYS) === ASSEMBLE_STEP_KEYS) yield;
    const key = keys[k]![0];
    let versions = keys[k]![1];
    if (deadVersions) {
      // Versions dead at the compaction point, not swept yet (see `isDeadVersion`): skipped.
      let dead = 0;
      while (dead < versions.length && versions[dead]!.revision <= c) dead++;
      if (dead > 0 && versions[dead - 1]!.value !== null) dead--; // the newest at or before c, when live, stays
      if (dead > 0) {
        for (let i = 1; i < dead; i++) if (versions[i]!.revision <= versions[i - 1]!.revision) fail(`versions of ${JSON.stringify(key)} out of order`);
        versions = versions.slice(dead);
      }
      if (versions.length === 0) {
        // A forgotten key whose versions are not swept yet: it has no latest record.
        if (latest.keys[li] === key || deleted.keys[di] === key) fail(`the latest record of ${JSON.stringify(key)} names a version dead at the compaction point ${c}`);
        continue;
      }
    }
    keys[kept++] = [key, versions];
    let prevRev = 0;
    for (let i = 0; i < versions.length; i++) {
      const v = versions[i]!;
      if (v.revision <= prevRev) fail(`versions of ${JSON.stringify(key)} out of order`);
      prevRev = v.revision;
      if (v.revision > revision) fail(`version ${v.revision} of ${JSON.stringify(key)} is after revision ${revision}`);
      if (v.revision <= c && (i > 0 || v.value === null)) fail(`compacted version ${v.revision} of ${JSON.stringify(key)} survives`);
      if (v.revision >= c ? v.timestampMs !== tsOf(v.revision) : v.timestampMs > tsOf(c)) {
        fail(`version ${v.revision} of ${JSON.stringify(key)} has timestamp ${v.timestampMs}`);
      }
      if (v.revision > c) found[v.revision - c - 1]!++;
    }
    // A live key's latest is in `l/`; a deleted key's in `t/`, or in `l/` when written before that
    // split (moved by the recorder). Both lists are in key order, like the versions: a record
    // passed over without its key's versions has none.
    const inLive = latestAt(latest, li, key, 'live');
    if (inLive !== undefined) li++;
    const inDeleted = latestAt(deleted, di, key, 'deleted');
    if (inDeleted !== undefined) di++;
    const isDeleted = versions[versions.length - 1]!.value === null;
    if (isDeleted && inLive !== undefined && inDeleted === undefined) {
      if (inLive !== prevRev) fail(`latest of ${JSON.stringify(key)} is ${inLive}, its newest version ${prevRev}`);
      legacyTombstones.set(key, prevRev);
    } else {
      const stored = isDeleted ? inDeleted : inLive;
      if (stored !== prevRev || (isDeleted ? inLive : inDeleted) !== undefined) {
        fail(`latest of ${JSON.stringify(key)} is ${inLive ?? 'none'} (live) / ${inDeleted ?? 'none'} (deleted), its newest version ${prevRev}${isDeleted ? ', a tombstone' : ''}`);
      }
    }
    if (historyKeys.has(key)) byKey.set(key, versions);
  }
  keys.length = kept;
  if (cold !== undefined) {
    // Keys loaded as key and revision (a live latest naming their only version): counted in the
    // writes of their revision; the history's events of such keys read their version by point.
    let ci = 0;
    const coldKeysOf = [...historyKeys].filter((k) => !byKey.has(k)).sort(compareKeys);
    for (let i = 0; i < cold.keys.length; i++) {
      if ((i & ASSEMBLE_STEP_KEYS) === ASSEMBLE_STEP_KEYS) yield;
      const rev = cold.revisions[i]!;
      if (rev > revision) fail(`version ${rev} of ${JSON.stringify(cold.keys[i])} is after revision ${revision}`);
      if (rev > c) found[rev - c - 1]!++;
      const key = cold.keys[i]!;
      while (ci < coldKeysOf.length && compareKeys(coldKeysOf[ci]!, key) < 0) ci++;
      if (coldKeysOf[ci] === key) byKey.set(key, [coldVersion!(key, rev)]);
    }
  }
  if (li < latest.keys.length) fail(`the latest record of ${JSON.stringify(latest.keys[li])} has no versions`);
  if (di < deleted.keys.length) fail(`the latest record of deleted ${JSON.stringify(deleted.keys[di])} has no versions`);
  for (let i = 0; i < writesAt.length; i++) {
    if (found[i] !== writesAt[i]) fail(`revision ${c + 1 + i} wrote ${writesAt[i]} versions, ${found[i]} are stored`);
  }

  // History events: put values are the stored versions'.
  const history: KvEvent[] = [];
  for (const h of histRevs) {
    let putsAndDeletes = 0;
    for (const e of h.events) {
      const hops = e.hops > 0 ? { hops: e.hops } : undefined;
      if (e.type === EV_TRIGGER) {
        history.push({ type: 'trigger', key: e.key, value: e.value!, revision: h.rev, timestampMs: h.ts, ...hops });
        continue;
      }
      putsAndDeletes++;
      const v = findVersion(byKey.get(e.key) ?? [], h.rev);
      if (v !== undefined && (v.hops ?? 0) !== e.hops) fail(`event of ${JSON.stringify(e.key)} at ${h.rev} has hop count ${e.hops}, its version ${v.hops ?? 0}`);
      if (e.type === EV_PUT) {
        if (v === undefined || v.value === null) fail(`put event of ${JSON.stringify(e.key)} at ${h.rev} without a stored version`);
        history.push({ type: 'put', key: e.key, value: v!.value!, revision: h.rev, timestampMs: h.ts, ...hops });
      } else {
        if (h.rev > c && (v === undefined || v.value !== null)) fail(`delete event of ${JSON.stringify(e.key)} at ${h.rev} without a stored tombstone`);
        history.push({ type: 'delete', key: e.key, revision: h.rev, timestampMs: h.ts, ...hops });
      }
    }
    if (h.rev > c && putsAndDeletes !== h.writes) fail(`revision ${h.rev} has ${putsAndDeletes} put/delete events but ${h.writes} writes`);
  }
  return {
    data: {
      appliedIndex: meta.appliedIndex,
      revision,
      compactRevision: c,
      lastTimestampMs: meta.lastTimestampMs,
      maxHistoryRevisions: meta.maxHistoryRevisions,
      maxHistoryBytes: meta.maxHistoryBytes,
      revisionTimestamps,
      keys,
      history,
    },
    written: {
      appliedIndex: meta.appliedIndex,
      blocks,
      oldestHistoryRevision: meta.oldestHistoryRevision,
      ...(legacyTombstones.size > 0 ? { legacyTombstones } : {}),
    },
  };
}

/** The groups that have state records on disk (one seek per group, not a scan of the records). */
export async function stateGroups(engine: KvEngine): Promise<number[]> {
  const out: number[] = [];
  let from = 0;
  for (;;) {
    let found: number | undefined;
    for await (const [k] of engine.iterate({ gte: stateKeyPrefix(from), lt: 's0', limit: 1 })) {
      const text = typeof k === 'string' ? k : new TextDecoder().decode(k.subarray(0, 11));
      found = Number.parseInt(text.slice(2, 10), 16);
    }
    if (found === undefined || !Number.isFinite(found)) return out;
    out.push(found);
    from = found + 1;
    if (from > 0xffff_ffff) return out;
  }
}

// ------------------------------------------------------------------ streaming a snapshot from the records

/** Options of {@link encodeSnapshotFromRecords}. */
export interface SnapshotStreamOptions {
  /** Longest stretch of synchronous work before yielding to the event loop (ms, default 8). */
  readonly sliceMs?: number;
  /** Size of the pieces the encoding is built in before they are joined (bytes, default 1 MiB). */
  readonly partBytes?: number;
  /** Called once per encoding when its header is written, before its first part: what reading the header took. */
  readonly onHeader?: (t: SnapshotHeaderTimings) => void;
  /**
   * Count the keys by a pass over every key's latest record, as before `meta` kept the live-key
   * count (default false: the live keys are `meta`'s count, only the deleted keys' latests are
   * counted). Set after a {@link SnapshotKeyCountError}.
   */
  readonly countKeysByPass?: boolean;
}

/**
 * An encoding whose header took the number of keys from `meta` (its live keys, and the deleted
 * keys' `t/` latests) found another number of keys in the records: deleted keys whose latest is
 * still in `l/` (records written before the split, not moved yet). Its bytes are not a valid
 * snapshot (the checksum never goes out: the encoding stops before its end); encode again with
 * `countKeysByPass`.
 */
export class SnapshotKeyCountError extends Error {
  constructor(group: number, counted: number, written: number) {
    super(`group ${group} state: the header counted ${counted} keys from meta, the records hold ${written}: encode again, counting the keys by a pass`);
    this.name = 'SnapshotKeyCountError';
  }
}

/** What an encoding's header took to read from the records (the reads before its first byte goes out). */
export interface SnapshotHeaderTimings {
  /** Wall time of the pass over the revision blocks (timestamps and the history's events), ms. */
  readonly revisionsMs: number;
  /** Revision blocks read. */
  readonly revisionBlocks: number;
  /** Wall time of counting the keys (and finding the sessions), ms. */
  readonly countMs: number;
  /** Keys counted. */
  readonly keys: number;
  /** Where the live keys' number came from: `meta`'s count, or a pass over the latest records. */
  readonly countedFrom: 'meta' | 'records';
}

/** Yields to the event loop (a macrotask turn: timers and I/O run) once `sliceMs` of work has passed. */
class Slicer {
  private last = performance.now();
  constructor(private readonly sliceMs: number) {}
  async maybeYield(): Promise<void> {
    if (performance.now() - this.last < this.sliceMs) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.last = performance.now();
  }
}

/** The encoding written in bounded parts, with the CRC kept as it goes. */
class PartWriter {
  private w: ByteWriter;
  parts: Uint8Array[] = [];
  crc = 0;
  total = 0;
  constructor(private readonly partBytes: number) {
    this.w = new ByteWriter(partBytes + 64);
  }
  get out(): ByteWriter {
    return this.w;
  }
  /** Ends the current part once it reached the part size. */
  maybeCut(): void {
    if (this.w.length >= this.partBytes) this.cut();
  }
  cut(): void {
    if (this.w.length === 0) return;
    const part = this.w.finish();
    this.crc = crc32Update(this.crc, part);
    this.total += part.length;
    this.parts.push(part);
    this.w = new ByteWriter(this.partBytes + 64);
  }
  /** The parts cut since the last call (handed out, no longer held here). */
  take(): Uint8Array[] {
    const out = this.parts;
    this.parts = [];
    return out;
  }
}

/** The UTF-8 bytes of an escaped key (0x00 0xff -> 0x00), as a view when it has no zero byte. */
function unescapeKey(escaped: Uint8Array): Uint8Array {
  if (!escaped.includes(0)) return escaped;
  const out: number[] = [];
  for (let i = 0; i < escaped.length; i++) {
    if (escaped[i] === 0) {
      if (escaped[i + 1] !== 0xff) throw new StorageCorruptionError('bad key escape in a version key');
      i++; // 0x00 0xff is one 0x00 of the key
      out.push(0);
    } else out.push(escaped[i]!);
  }
  return new Uint8Array(out);
}

/**
 * How many of a key's versions (ascending revisions) are dead at compaction point `c`: every version
 * older than the key's newest at or before `c`, and that one too when it is a tombstone (what
 * `KvStateMachine.compact` drops). See {@link isDeadVersion}.
 */
function deadCount(versions: ReadonlyArray<{ readonly rev: number; readonly value: unknown }>, c: number): number {
  let dead = 0;
  while (dead < versions.length && versions[dead]!.rev <= c) dead++;
  if (dead > 0 && versions[dead - 1]!.value !== null) dead--;
  return dead;
}

/**
 * Encodes the snapshot of `group`'s state (the `KvStateMachine.snapshot()` format of
 * snapshot-codec.ts, byte for byte what the machine would encode at the records' applied index)
 * from its records as `view` holds them, into one buffer: {@link openSnapshotEncoding}'s parts
 * joined (slice by slice) with the checksum after them. Undefined when the view holds no `meta`
 * (no records, or a replacement under way). Throws StorageCorruptionError on records it cannot
 * read. For tests and tools: a leader streams the parts instead (src/node/snapshot-sender.ts).
 */
export async function encodeSnapshotFromRecords(
  view: Pick<KvEngine, 'get' | 'iterate' | 'iterateChunks'>,
  group: number,
  options: SnapshotStreamOptions = {},
): Promise<{ readonly data: Uint8Array; readonly appliedIndex: number } | undefined> {
  let enc = await openSnapshotEncoding(view, group, options);
  if (!enc) return undefined;
  const slicer = new Slicer(options.sliceMs ?? 8);
  let parts: Uint8Array[] = [];
  let total = 0;
  let gen = enc.parts();
  let crc: number;
  for (;;) {
    let r: IteratorResult<Uint8Array, number>;
    try {
      r = await gen.next();
    } catch (e) {
      if (!(e instanceof SnapshotKeyCountError) || options.countKeysByPass) throw e;
      // Deleted keys' latests still in `l/`: the keys are counted by a pass.
      enc = (await openSnapshotEncoding(view, group, { ...options, countKeysByPass: true }))!;
      gen = enc.parts();
      parts = [];
      total = 0;
      continue;
    }
    if (r.done) {
      crc = r.value;
      break;
    }
    parts.push(r.value);
    total += r.value.length;
  }
  // Not zero-filled (every byte is written below): zeroing hundreds of MiB would block the loop.
  const data: Uint8Array = Buffer.allocUnsafeSlow(total + 4);
  let at = 0;
  for (let i = 0; i < parts.length; i++) {
    data.set(parts[i]!, at);
    at += parts[i]!.length;
    parts[i] = EMPTY;
    await slicer.maybeYield();
  }
  data.set(crcBytes(crc), at);
  return { data, appliedIndex: enc.appliedIndex };
}

/** The 4 big-endian bytes of a CRC-32 as the snapshot format ends with them. */
export function crcBytes(crc: number): Uint8Array {
  return new Uint8Array([crc >>> 24, (crc >>> 16) & 0xff, (crc >>> 8) & 0xff, crc & 0xff]);
}

/** A snapshot encoding to be read from a view in parts (see {@link openSnapshotEncoding}). */
export interface SnapshotEncoding {
  /** The applied index of the records the view holds: the snapshot's index. */
  readonly appliedIndex: number;
  /**
   * A new pass over the view: yields the encoding's body in parts of about `partBytes` (cut at
   * key boundaries, so a part may run over by one key's versions) and returns its CRC-32 (which
   * the encoding ends with, as 4 big-endian bytes: {@link crcBytes}). Each call starts over and,
   * over the same view, yields the same bytes. Holds, between parts, the revision timestamps, the
   * history window's events and the hop counts (as the encoding needs them before, or after,
   * the keys) and one LevelDB iterator; closing the generator (`return()`) releases the iterator.
   */
  parts(): AsyncGenerator<Uint8Array, number, undefined>;
}

/**
 * Opens the snapshot encoding of `group`'s records in `view` (undefined when the view holds no
 * `meta`: no records, or a replacement under way). The encoding is written in a few passes over
 * the records in key order (revision blocks, a count of the latests, versions, sessions),
 * yielding to the event loop between slices of work. Use a view (`KvEngine.view`): the records
 * must not change between the passes (nor between two calls of `parts`).
 */
export async function openSnapshotEncoding(
  view: Pick<KvEngine, 'get' | 'iterate' | 'iterateChunks'>,
  group: number,
  options: SnapshotStreamOptions = {},
): Promise<SnapshotEncoding | undefined> {
  const metaBytes = await view.get(new Keys(group).meta);
  if (metaBytes === undefined) return undefined;
  const meta = decodeMeta(metaBytes);
  return { appliedIndex: meta.appliedIndex, parts: () => encodeParts(view, group, meta, options) };
}

async function* encodeParts(
  view: Pick<KvEngine, 'get' | 'iterate' | 'iterateChunks'>,
  group: number,
  meta: StateMeta,
  options: SnapshotStreamOptions,
): AsyncGenerator<Uint8Array, number, undefined> {
  const keys = new Keys(group);
  const p = keys.prefix.length;
  const slicer = new Slicer(options.sliceMs ?? 8);
  const tagPrefix = (tag: number): Uint8Array => {
    const out = new Uint8Array(p + 2);
    out.set(keys.prefix);
    out[p] = tag;
    out[p + 1] = SLASH;
    return out;
  };
  const c = meta.compactRevision;

  // Pass 1: revision timestamps for [c, revision] and the history's events, from the blocks.
  const t0 = performance.now();
  let revisionBlocks = 0;
  const timestamps: number[] = c === 0 ? [0] : [];
  const events: Array<{ rev: number; type: number; key: Uint8Array; value?: Uint8Array }> = [];
  const hopsByRevision = new Map<number, number>(); // of the retained versions and history events (the trailing section)
  for await (const [k, v] of view.iterate({ prefix: tagPrefix(TAG_REVISION) })) {
    const first = readU64(k, p + 2);
    revisionBlocks++;
    corruptOnError(`revision block ${first}`, () => {
      const rd = new ByteReader(v, 'MALFORMED_SNAPSHOT');
      const n = rd.varint();
      for (let i = 0; i < n; i++) {
        const rev = first + i;
        const ts = rd.varint();
        rd.varint(); // writes
        const count = rd.varint();
        const keep = rev >= c && rev >= meta.oldestHistoryRevision;
        for (let e = 0; e < count; e++) {
          const { type, key, value, hops } = readBlockEvent(rd);
          if (!keep) continue;
          events.push({ rev, type, key: key.slice(), ...(value ? { value: value.slice() } : {}) });
          if (hops > 0) hopsByRevision.set(rev, hops);
        }
        if (rev >= c && rev <= meta.revision) timestamps.push(ts);
      }
    });
    await slicer.maybeYield();
  }
  if (timestamps.length !== meta.revision - c + 1) {
    throw new StorageCorruptionError(`group ${group} state: revision blocks hold ${timestamps.length} timestamps for [${c}, ${meta.revision}]`);
  }

  // Pass 2: the number of keys (one latest record each, live keys' in `l/`, deleted keys' in `t/`).
  const t1 = performance.now();
  // The live keys are `meta`'s count (kept by every write, checked against the records at each
  // load): a pass over every live key's latest was all that stood between the leader's view and
  // the first chunk going out (2.4 s at 1 M keys, keys only). Only the deleted keys' `t/` latests
  // are counted. A deleted key whose latest is still in `l/` (records written before the split)
  // makes the versions' pass find more keys than that: it throws SnapshotKeyCountError before the
  // encoding's end, and the caller encodes again counting by a pass (`countKeysByPass`).
  const fromMeta = meta.liveKeys !== undefined && options.countKeysByPass !== true;
  let nKeys = fromMeta ? meta.liveKeys! : 0;
  for (const tag of fromMeta ? [TAG_DELETED] : [TAG_LATEST, TAG_DELETED]) {
    for await (const run of scanChunks(view, { prefix: tagPrefix(tag), keysOnly: true, readAheadBytes: LOAD_READ_AHEAD_BYTES })) {
      nKeys += run.length;
      await slicer.maybeYield();
    }
  }
  let hasSessions = false;
  for await (const _ of view.iterate({ prefix: tagPrefix(TAG_SESSION), limit: 1 })) hasSessions = true;
  // With a session journal the sessions are its replay over the base records (decoded, re-encoded below).
  let replayed: SessionRecord[] | undefined;
  for await (const _ of view.iterate({ prefix: tagPrefix(TAG_SESSION_JOURNAL), limit: 1 })) replayed = [];
  if (replayed !== undefined) {
    replayed = await replaySessionRecords(view, group, tagPrefix, slicer);
    hasSessions = replayed.length > 0;
  }
  const v1 =
    !hasSessions &&
    meta.sessionTtlMs === DEFAULT_SESSION_TTL_MS &&
    meta.maxSessions === DEFAULT_MAX_SESSIONS &&
    meta.maxSessionResults === DEFAULT_MAX_SESSION_RESULTS;

  options.onHeader?.({ revisionsMs: Math.round(t1 - t0), revisionBlocks, countMs: Math.round(performance.now() - t1), keys: nKeys, countedFrom: fromMeta ? 'meta' : 'records' });

  const pw = new PartWriter(options.partBytes ?? 1 << 20);
  let w = pw.out;
  w.raw(SNAPSHOT_MAGIC);
  w.u8(v1 ? SNAPSHOT_FORMAT_VERSION : SNAPSHOT_SESSIONS_FORMAT_VERSION);
  w.varint(meta.appliedIndex);
  w.varint(meta.revision);
  w.varint(c);
  w.varint(meta.lastTimestampMs);
  w.varint(meta.maxHistoryRevisions);
  w.varint(meta.maxHistoryBytes);
  let prevTs = 0;
  for (let i = 0; i < timestamps.length; i++) {
    w.varint(i === 0 ? timestamps[i]! : timestamps[i]! - prevTs);
    prevTs = timestamps[i]!;
    if ((i & 0xffff) === 0xffff) {
      pw.maybeCut();
      w = pw.out;
      yield* pw.take();
    }
  }
  w.varint(nKeys);

  // Pass 3: the versions, key by key (the layout orders them by key, then revision).
  let prevKey: Uint8Array = new Uint8Array(0);
  let curEscaped: Uint8Array | undefined;
  let curVersions: Array<{ rev: number; value: Uint8Array | null; ts: number; hops: number | undefined }> = [];
  let written = 0;
  const flushKey = (): void => {
    if (curEscaped === undefined) return;
    // Versions dead at the compaction point (left for the sweep: `isDeadVersion`) are not part of the state.
    const dead = deadCount(curVersions, c);
    if (dead > 0) curVersions = curVersions.slice(dead);
    for (const v of curVersions) if (v.hops !== undefined) hopsByRevision.set(v.rev, v.hops);
    if (curVersions.length === 0) return;
    const key = unescapeKey(curEscaped);
    let shared = 0;
    const max = Math.min(key.length, prevKey.length);
    while (shared < max && key[shared] === prevKey[shared]) shared++;
    w.varint(shared);
    w.bytes(key.subarray(shared));
    w.varint(curVersions.length);
    let prevRev = 0;
    for (const v of curVersions) {
      w.varint(v.rev - prevRev);
      prevRev = v.rev;
      if (v.value === null) w.varint(0);
      else {
        w.varint(v.value.length + 1);
        w.raw(v.value);
      }
      if (v.rev < c) w.varint(v.ts);
    }
    prevKey = key; // curEscaped is a private copy, so is key
    curVersions = [];
    written++;
    // More keys than the header said (deleted keys' latests in `l/`): stop now, not after the rest of the versions.
    if (fromMeta && written > nKeys) throw new SnapshotKeyCountError(group, nKeys, written);
    pw.maybeCut();
    w = pw.out;
  };
  for await (const [k, v] of view.iterate({ prefix: tagPrefix(TAG_VERSION) })) {
    const end = findTerminator(k, p + 2);
    if (end < 0 || k.length !== end + 10) throw new StorageCorruptionError(`malformed version key ${describe(k)}`);
    const escaped = k.subarray(p + 2, end);
    if (curEscaped === undefined || Buffer.compare(curEscaped, escaped) !== 0) {
      flushKey();
      yield* pw.take();
      curEscaped = escaped.slice();
    }
    const rev = readU64(k, end + 2);
    const d = decodeVersion(v, rev, '(streamed)');
    curVersions.push({ rev, value: d.value, ts: d.timestampMs, hops: d.hops });
    await slicer.maybeYield();
  }
  flushKey();
  if (written !== nKeys) {
    if (fromMeta) throw new SnapshotKeyCountError(group, nKeys, written);
    throw new StorageCorruptionError(`group ${group} state: ${nKeys} latest records, ${written} keys with versions`);
  }

  // The history's events (put values are the versions').
  w.varint(events.length);
  let prevEvRev = 0;
  for (const e of events) {
    w.varint(e.rev - prevEvRev);
    prevEvRev = e.rev;
    w.u8(e.type);
    w.bytes(e.key);
    if (e.type === EV_TRIGGER) w.bytes(e.value!);
    pw.maybeCut();
    w = pw.out;
    yield* pw.take();
  }
  await slicer.maybeYield();

  // Client sessions, least recently active first (as the loader orders them).
  if (!v1) {
    w.varint(meta.sessionTtlMs);
    w.varint(meta.maxSessions);
    w.varint(meta.maxSessionResults);
    if (replayed !== undefined) {
      w.varint(replayed.length);
      for (const x of replayed) {
        writeSessionRecord(w, x);
        pw.maybeCut();
        w = pw.out;
        yield* pw.take();
      }
    } else {
      const headers: Array<{ id: string; value: Uint8Array; lastActiveIndex: number }> = [];
      for await (const [k, v] of view.iterate({ prefix: tagPrefix(TAG_SESSION) })) {
        const id = sessionIdOf(k.subarray(p + 2), k);
        const lastActiveIndex = corruptOnError(`session ${id}`, () => {
          const r = new ByteReader(v, 'MALFORMED_SNAPSHOT');
          r.varint();
          return r.varint();
        });
        headers.push({ id, value: v, lastActiveIndex });
      }
      const results = new Map<string, Array<readonly [number, Uint8Array]>>();
      for await (const [k, v] of view.iterate({ prefix: tagPrefix(TAG_SESSION_RESULT) })) {
        if (k.length < p + 2 + 1 + 9 || k[k.length - 9] !== SLASH) throw new StorageCorruptionError(`malformed session result key ${describe(k)}`);
        const id = sessionIdOf(k.subarray(p + 2, k.length - 9), k);
        let list = results.get(id);
        if (!list) results.set(id, (list = []));
        list.push([readU64(k, k.length - 8), v]);
        await slicer.maybeYield();
      }
      headers.sort((a, b) => a.lastActiveIndex - b.lastActiveIndex);
      w.varint(headers.length);
      for (const h of headers) {
        w.str(h.id);
        w.raw(h.value); // varint forgottenBelow, lastActiveIndex, lastActiveTs: as the snapshot writes them
        const list = results.get(h.id) ?? [];
        w.varint(list.length);
        let prevSeq = 0;
        for (const [seq, r] of list) {
          w.varint(seq - prevSeq);
          prevSeq = seq;
          w.raw(r); // the stored result is `writeSessionResult`'s encoding
        }
        pw.maybeCut();
        w = pw.out;
        yield* pw.take();
      }
    }
  }
  writeHopsSection(w, hopsByRevision);
  pw.cut();
  yield* pw.take();
  return pw.crc;
}

const EMPTY = new Uint8Array(0);

/** A group's sessions from a view's records: the base records, then the session journal replayed (checked like the loader's, against the view's `meta`). */
async function replaySessionRecords(
  view: Pick<KvEngine, 'get' | 'iterate' | 'iterateChunks'>,
  group: number,
  tagPrefix: (tag: number) => Uint8Array,
  slicer: Slicer,
): Promise<SessionRecord[]> {
  const p = stateKeyPrefix(group).length;
  const replay = new SessionReplay();
  for await (const [k, v] of view.iterate({ prefix: tagPrefix(TAG_SESSION) })) {
    const id = sessionIdOf(k.subarray(p + 2), k);
    replay.addBaseHeader(corruptOnError(`session ${id}`, () => decodeSessionHeader(id, v)));
  }
  for await (const [k, v] of view.iterate({ prefix: tagPrefix(TAG_SESSION_RESULT) })) {
    if (k.length < p + 2 + 1 + 9 || k[k.length - 9] !== SLASH) throw new StorageCorruptionError(`malformed session result key ${describe(k)}`);
    const id = sessionIdOf(k.subarray(p + 2, k.length - 9), k);
    const seq = readU64(k, k.length - 8);
    replay.addBaseResult(id, seq, corruptOnError(`result ${seq} of session ${id}`, () => decodeSessionResult(v.slice())));
    await slicer.maybeYield();
  }
  for await (const [k, v] of view.iterate({ prefix: tagPrefix(TAG_SESSION_JOURNAL) })) {
    if (k.length !== p + 10) throw new StorageCorruptionError(`malformed session journal key ${describe(k)}`);
    const n = readU64(k, p + 2);
    corruptOnError(`session journal record ${n}`, () => replay.replay(n, v.slice()));
    await slicer.maybeYield();
  }
  const metaBytes = await view.get(new Keys(group).meta);
  if (metaBytes === undefined) throw new StorageCorruptionError(`group ${group} state: meta vanished from a view`);
  return assembleSessions(group, decodeMeta(metaBytes), replay);
}
