// Durable Raft log storage for the many Raft groups of one node, sharing one ordered KV engine, with group commit across groups.
// Size: about 1,100 lines: the key layout (log records included), group commit, the clearing of compacted records and the crash contract belong together (streamed snapshots' chunk records included: they follow the same staging order).
/*
 * Key layout (ASCII keys; numbers are fixed-width lowercase hex, so bytewise order = numeric order):
 *
 *   g/<group:8 hex>/conf                 JSON ConfState: the configuration in effect
 *   g/<group:8 hex>/hardstate            JSON HardState
 *   g/<group:8 hex>/log/<index:16 hex>   a log record: the entries appended together from `index` on
 *                                        (one `persistReady`, at most MAX_RECORD_ENTRIES / _BYTES;
 *                                        see encodeEntries), or one entry (encodeEntry, the format
 *                                        before records: still read)
 *   g/<group:8 hex>/snap                 JSON SnapshotMeta of the latest snapshot
 *   g/<group:8 hex>/snapdata             that snapshot's data, raw bytes, as one value; absent for a
 *                                        *records snapshot* (see below)
 *   g/<group:8 hex>/snapstream           JSON { chunks, bytes[, file] }: the snapshot's data is the chunk
 *                                        records below, or with `file` that chunk file in the store's
 *                                        chunk folder (a streamed snapshot, see below); never with `snapdata`
 *   t/<group:8 hex>/<index:16 hex>/<seq:8 hex>  chunk `seq` of the data of the snapshot at `index`
 *                                        as received from the leader (a streamed transfer)
 *   x/sync                               never present: deleted by a synced batch that only makes
 *                                        earlier unsynced batches durable (see `whenWritten`)
 *
 * Every group's keys share the prefix `g/<group>/`, so a group is one contiguous key range.
 * The state machine of a group lives beside its Raft state, under `s/<group:8 hex>/` (layout and
 * recovery rules in state-store.ts); this store only stages those records (`stageStateOps`), so
 * they are ordered and made durable together with the Raft writes.
 * Invariants on disk (checked on open): the log records of a group hold contiguous entries from
 * the snapshot index + 1 on (or from 1 without a snapshot; the first record may also hold entries
 * at or behind the snapshot, which are not loaded); `snapdata` exists only with `snap`. A record
 * is one engine put for all the entries of a round of the group (not one per entry); the store
 * keeps the start index of every record it owns on disk (`records`), since truncating a
 * conflicting suffix rewrites the record it starts in, and compaction clears whole records only.
 *
 * The hard state is written when its term or vote changes (and for a new group), not when only
 * the commit index moved (as etcd's `MustSync`): the commit index on disk is a lower bound of the
 * committed prefix, which is all Raft needs of it (a leader recommits the rest). At open it is
 * raised to the snapshot's index (compacted entries were committed), and recovery raises it to the
 * applied index of the group's state records (`raiseCommit`; applied entries were committed).
 *
 * Records snapshots: a group whose state machine is durable in its own records (state-store.ts)
 * compacts its log with a snapshot that has metadata only (`compact` with empty data; in memory its
 * data is empty): the state at its index is in the records, which the caller staged before it (so
 * they are durable whenever the snapshot is). A snapshot installed from a leader is written with
 * its data (the records are replaced after it, not atomically), and `dropSnapshotData`, staged once
 * the replacement is, turns it into a records snapshot.
 *
 * Streamed snapshots (a follower whose Raft core hands received chunks to a sink, node/snapshot-inbox.ts):
 * each chunk is staged as a `t/` record as it arrives (`stageSnapshotChunk`), so neither the chunks
 * nor the joined data are ever in the heap. The installed snapshot is then written with the
 * `snapstream` marker instead of `snapdata`; its chunk records are its data until
 * `dropSnapshotData` deletes them with the marker. Chunks of a transfer that never completed are
 * deleted when the next transfer starts, and at open (the `t/` keys are only scanned there, never
 * loaded: `load` reads `g/` only, so a large snapshot's data is not read into memory at open).
 * With a chunk folder (`RaftLogStoreOptions.chunkDir`; kvd's default) a transfer's chunks are
 * appended to one file there instead (chunk-file.ts: LevelDB took every chunk through its log,
 * memtable and compactions at about a sixth of the disk's rate): `flush` covers the appends (made
 * durable with the records), the marker names the file and its unit is written only once the file
 * is durable and closed, the install reads it back in 1 MiB pieces, and the file is deleted once
 * the unit dropping its marker is durable; files no marker names are deleted at open and when
 * the next transfer starts.
 *
 * Log compaction deletes the records whose entries are all compacted outside the rounds' batches
 * (a record holding the compaction point stays whole): once the unit with the new snapshot record
 * is durable, their key range is deleted with one engine `clear` (LevelDB deletes it
 * on a pool thread; no per-entry work on the event loop, nothing added to the round's synced
 * batch). Until then, and after a crash that lost part of it, the entries are still on disk; the
 * loader ignores entries at or behind the snapshot and clears them again. `deleteGroup` waits for
 * a clear in flight before its batch is written and deletes the ranges not yet cleared itself, so a
 * group created again under the same id never meets its predecessor's entries.
 *
 * Write model: every mutator (`persistReady`, `setConf`, `compact`, `deleteGroup`, `stageStateOps`) updates the
 * group's in-memory `MemoryStorage` at once and stages its disk writes as one atomic *unit*.
 * `flush()` writes the staged units of all groups in fsynced engine batches, one batch in flight at
 * a time; units staged while a batch is in flight go together into the next one (group commit).
 * A unit is never split across batches, and batches are written in staging order, so after a crash
 * the disk holds exactly the effect of some prefix of the staged units, including at least every
 * unit covered by a `flush()` that resolved. One exception to "fsynced": a batch holding state
 * machine records alone, written for `whenWritten` while no `flush` waits (an idle node's last
 * applied rounds), goes unsynced; the engine keeps batches in order (LevelDB's one log), so the
 * prefix holds, and the next synced batch makes it durable with everything before it.
 */
import { MemoryStorage } from '../raft/storage.js';
import { type ConfState, type Entry, type EntryType, type HardState, type Snapshot, type SnapshotMeta } from '../raft/types.js';
import { mkdirSync, readdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkFile, CHUNK_FILE_NAME, chunkPieces, readChunkPiece } from './chunk-file.js';
import { type EngineKey, type EngineOp, type KvEngine } from './kv-engine.js';
import { traceWrite } from '../write-trace.js';

/** Default upper bound on the bytes (keys + values + per-op overhead) coalesced into one engine batch. */
export const MAX_BATCH_BYTES = 64 * 1024 * 1024;

/** The largest group id (groups are stored as 8 hex digits). */
export const MAX_GROUP_ID = 0xffff_ffff;

/** Bytes of the fixed header of an encoded entry. */
export const ENTRY_HEADER_BYTES = 18;

const ENTRY_FORMAT_VERSION = 1;
const RECORD_FORMAT_VERSION = 2;
/** Bytes of the header of an encoded record (version, reserved, u32 count, u64 first index), and per entry in it (type, u64 term, u32 data length). */
const RECORD_HEADER_BYTES = 14;
const RECORD_ENTRY_BYTES = 13;
/** Most entries in one log record; a longer append is split into several records. */
export const MAX_RECORD_ENTRIES = 512;
/** Most entry data bytes in one log record (a single larger entry is a record alone). */
export const MAX_RECORD_BYTES = 1024 * 1024;
const OP_OVERHEAD_BYTES = 16;
/**
 * Deleted by a synced batch of its own when a `flush` waits only for units already written
 * unsynced (an engine's empty batch syncs nothing); never put, so it leaves no key behind.
 */
const SYNC_MARKER_KEY = 'x/sync';
const TWO_32 = 2 ** 32;
const EMPTY_CONF: ConfState = { voters: [], learners: [] };

/** Thrown on open when the data on disk breaks an invariant of the key layout. */
export class StorageCorruptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StorageCorruptionError';
  }
}

/**
 * Rejects `flush()` (and makes every later mutator throw) once an engine write failed. The in-memory
 * views may then be ahead of the disk, so the node must stop and reopen the store from disk.
 */
export class StoreFailedError extends Error {
  constructor(override readonly cause: unknown) {
    super(`raft log store failed: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'StoreFailedError';
  }
}

/** What one group's `Ready` asks to make durable (any `Ready` fits). */
export interface PersistRequest {
  readonly hardState?: HardState;
  readonly entries?: readonly Entry[];
  readonly snapshot?: Snapshot;
}

/** Facts about one synced engine batch, passed to {@link RaftLogStoreOptions.onBatch}. */
export interface BatchReport {
  /** Staged units (mutator calls) written. */
  readonly units: number;
  /** Log entries written. */
  readonly entries: number;
  /** Engine operations (puts and deletes). */
  readonly ops: number;
  /** Estimated bytes (keys + values + per-op overhead). */
  readonly bytes: number;
  /** Time from issuing the batch to its fsynced completion, in ms. */
  readonly fsyncMs: number;
}

/** Cumulative counters of a {@link RaftLogStore} (plain numbers for any metrics system). */
export interface StoreMetrics {
  /** Engine batches written, synced or not. */
  batches: number;
  /**
   * Of `batches`, those written unsynced: state machine records only, written for a `whenWritten`
   * with no `flush` waiting (an idle node's last applied rounds); the next synced batch covers them.
   */
  unsyncedBatches: number;
  /** Engine clears issued (range deletes of compacted log entries, outside the batches). */
  clears: number;
  /** Log entries written, over all batches (entries per batch = entries / batches). */
  entries: number;
  /** Estimated bytes written. */
  bytes: number;
  /** Entries in the most recent batch, and the most in any batch. */
  lastBatchEntries: number;
  maxBatchEntries: number;
  /** Fsync latency: total, most recent and worst batch, in ms. */
  fsyncMsTotal: number;
  fsyncMsLast: number;
  fsyncMsMax: number;
}

/**
 * Engine operations written, by record kind and operation (`put` and `del` in synced batches;
 * `clear`: keys in the ranges deleted by engine clears, i.e. compacted log entries): the kind is `g/<c>` or `s/<c>`, the
 * layout's first letter after the group (`g/l` log entries, `g/h` hard state, `g/c` conf, `g/s`
 * snapshot and its data; state records as state-store.ts names them: `s/v` versions, `s/l`
 * latests, `s/r` revision blocks, `s/m` meta, `s/c` session headers, `s/d` session results, ...).
 */
export type EngineOpCounts = Record<string, { put: number; del: number; clear: number }>;

/** Options of {@link RaftLogStore.open}. */
export interface RaftLogStoreOptions {
  /** Bound on the bytes coalesced into one batch (default {@link MAX_BATCH_BYTES}); a single larger unit is written alone. */
  readonly maxBatchBytes?: number;
  /** Called after every synced batch (for latency histograms and the like). */
  readonly onBatch?: (report: BatchReport) => void;
  /**
   * The folder of streamed snapshots' chunk files (created if missing): each transfer's chunks are
   * appended to one file there instead of being written as `t/` records (see the file header).
   * Without it chunks are records. A store that finds a snapshot marker naming a chunk file needs it.
   */
  readonly chunkDir?: string;
  /** With `chunkDir`: whether new transfers go to files (default true); false writes `t/` records as before (installed files are still read). */
  readonly chunkFiles?: boolean;
}

interface Unit {
  readonly seq: number;
  readonly ops: EngineOp[];
  readonly bytes: number;
  readonly entries: number;
  /** Written only once no clear is in flight (a deleted group: its id may be reused). */
  readonly fence: boolean;
  /**
   * State machine records only (`stageStateOps`): a batch of such units alone may be written
   * unsynced when nothing waits for a `flush` (see {@link RaftLogStore.whenWritten}).
   */
  readonly lazy: boolean;
  /** Written only once this resolved (a chunk file made durable before the marker naming it); a rejection fails the store. */
  readonly after: Promise<void> | undefined;
  /** Run once the unit is durable (a chunk file no marker names any more is deleted). */
  readonly onDurable: Array<() => void> | undefined;
}

/**
 * Log records of a group whose entries are all compacted: the records starting at `starts`, which
 * hold the entries [starts[0], end); cleared from the engine (keys [logKey(starts[0]), logKey(end)))
 * once unit `afterSeq` (the snapshot record) is durable.
 */
interface PendingClear {
  readonly group: number;
  readonly starts: number[];
  readonly end: number;
  readonly afterSeq: number;
}

interface Waiter {
  readonly target: number;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

/** Slots of the engine op counters: (space g/s/other) x 128 letters x (put, del). */
const OP_SLOTS = 3 * 128 * 2;
/** Offset of a group's record letter in its keys (`g/<8 hex>/x`, `s/<8 hex>/x`). */
const KIND_AT = 11;

/** The counter slot of an op: its key's space (`g`, `s`, else other) and record letter, then put/del. */
function opSlot(op: EngineOp): number {
  const k = op.key;
  const space = typeof k === 'string' ? k.charCodeAt(0) : k[0];
  const letter = (typeof k === 'string' ? k.charCodeAt(KIND_AT) : k[KIND_AT]) ?? 0;
  const s = space === 0x67 ? 0 : space === 0x73 ? 1 : 2;
  return ((s * 128 + (letter & 0x7f)) << 1) | (op.type === 'put' ? 0 : 1);
}

function slotKind(slot: number): string {
  const s = slot >> 8;
  const letter = (slot >> 1) & 0x7f;
  return `${s === 0 ? 'g' : s === 1 ? 's' : '?'}/${letter >= 0x21 && letter < 0x7f ? String.fromCharCode(letter) : '?'}`;
}

/** Fixed-width hex of a non-negative integer below 2^53. */
function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, '0');
}

function groupPrefix(group: number): string {
  return `g/${hex(group, 8)}/`;
}

/** The engine key of a group's log entry at `index`. */
export function logKey(group: number, index: number): string {
  return `${groupPrefix(group)}log/${hex(index, 16)}`;
}

/** The key prefix of a group's state machine records, `s/<group:8 hex>/` (their layout: state-store.ts). */
export function stateKeyPrefix(group: number): string {
  return `s/${hex(group, 8)}/`;
}

/** The engine keys of a group's metadata records. */
export function metaKey(group: number, kind: 'conf' | 'hardstate' | 'snap' | 'snapdata' | 'snapstream'): string {
  return groupPrefix(group) + kind;
}

/** The engine key of chunk `seq` of the streamed snapshot at `index` of `group`. */
export function snapshotChunkKey(group: number, index: number, seq: number): string {
  return `t/${hex(group, 8)}/${hex(index, 16)}/${hex(seq, 8)}`;
}

const CHUNK_KEY = /^t\/([0-9a-f]{8})\/([0-9a-f]{16})\/([0-9a-f]{8})$/;

/** The chunk records of one snapshot transfer: at `index`, chunks 0..chunks-1 staged. */
interface ChunkSet {
  readonly index: number;
  chunks: number;
  bytes: number;
  /** The transfer's file, while it is received into one (RaftLogStoreOptions.chunkDir). */
  readonly file?: ChunkFile;
  /** An installed snapshot's chunk file (its data, read back in pieces), when it was received into one. */
  readonly path?: string;
}

/**
 * Encodes an entry as: u8 format version (1), u8 type, u64 term, u64 index (big-endian), then the data.
 */
export function encodeEntry(e: Entry): Uint8Array {
  const out = new Uint8Array(ENTRY_HEADER_BYTES + e.data.length);
  const dv = new DataView(out.buffer);
  dv.setUint8(0, ENTRY_FORMAT_VERSION);
  dv.setUint8(1, e.type);
  dv.setUint32(2, Math.floor(e.term / TWO_32));
  dv.setUint32(6, e.term >>> 0);
  dv.setUint32(10, Math.floor(e.index / TWO_32));
  dv.setUint32(14, e.index >>> 0);
  out.set(e.data, ENTRY_HEADER_BYTES);
  return out;
}

/** Decodes {@link encodeEntry}'s format; the data aliases `bytes`. */
export function decodeEntry(bytes: Uint8Array): Entry {
  if (bytes.length < ENTRY_HEADER_BYTES) throw new StorageCorruptionError(`entry of ${bytes.length} bytes is too short`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint8(0);
  if (version !== ENTRY_FORMAT_VERSION) throw new StorageCorruptionError(`unknown entry format ${version}`);
  return {
    type: dv.getUint8(1) as EntryType,
    term: dv.getUint32(2) * TWO_32 + dv.getUint32(6),
    index: dv.getUint32(10) * TWO_32 + dv.getUint32(14),
    data: bytes.subarray(ENTRY_HEADER_BYTES),
  };
}

/**
 * Encodes entries with contiguous indexes as one log record: u8 format version (2), u8 0, u32
 * count, u64 index of the first entry, then per entry u8 type, u64 term, u32 data length and the
 * data (all big-endian). One allocation for the whole record.
 */
export function encodeEntries(entries: readonly Entry[]): Uint8Array {
  let size = RECORD_HEADER_BYTES;
  for (const e of entries) size += RECORD_ENTRY_BYTES + e.data.length;
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  const first = entries[0]?.index ?? 0;
  dv.setUint8(0, RECORD_FORMAT_VERSION);
  dv.setUint32(2, entries.length);
  dv.setUint32(6, Math.floor(first / TWO_32));
  dv.setUint32(10, first >>> 0);
  let at = RECORD_HEADER_BYTES;
  for (const e of entries) {
    dv.setUint8(at, e.type);
    dv.setUint32(at + 1, Math.floor(e.term / TWO_32));
    dv.setUint32(at + 5, e.term >>> 0);
    dv.setUint32(at + 9, e.data.length);
    out.set(e.data, at + RECORD_ENTRY_BYTES);
    at += RECORD_ENTRY_BYTES + e.data.length;
  }
  return out;
}

/**
 * Decodes a log record stored under the log key of `index`: {@link encodeEntries}' format (its
 * first index must be `index`) or a single entry in {@link encodeEntry}'s (whose index must be
 * `index`). The entries' data alias `bytes`. Throws StorageCorruptionError on anything else.
 */
export function decodeLogRecord(index: number, bytes: Uint8Array): Entry[] {
  if (bytes.length > 0 && bytes[0] === ENTRY_FORMAT_VERSION) {
    const e = decodeEntry(bytes);
    if (e.index !== index) throw new StorageCorruptionError(`entry ${e.index} stored under log key ${index}`);
    return [e];
  }
  if (bytes.length < RECORD_HEADER_BYTES || bytes[0] !== RECORD_FORMAT_VERSION) {
    throw new StorageCorruptionError(`log record at ${index}: unknown format or too short (${bytes.length} bytes)`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = dv.getUint32(2);
  const first = dv.getUint32(6) * TWO_32 + dv.getUint32(10);
  if (first !== index || count === 0) throw new StorageCorruptionError(`log record of ${count} entries from ${first} stored under log key ${index}`);
  const out: Entry[] = [];
  let at = RECORD_HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    if (at + RECORD_ENTRY_BYTES > bytes.length) throw new StorageCorruptionError(`log record at ${index}: truncated at entry ${i} of ${count}`);
    const len = dv.getUint32(at + 9);
    const end = at + RECORD_ENTRY_BYTES + len;
    if (end > bytes.length) throw new StorageCorruptionError(`log record at ${index}: truncated at entry ${i} of ${count}`);
    out.push({
      type: dv.getUint8(at) as EntryType,
      term: dv.getUint32(at + 1) * TWO_32 + dv.getUint32(at + 5),
      index: first + i,
      data: bytes.subarray(at + RECORD_ENTRY_BYTES, end),
    });
    at = end;
  }
  if (at !== bytes.length) throw new StorageCorruptionError(`log record at ${index}: ${bytes.length - at} bytes after its last entry`);
  return out;
}

const GROUP_KEY = /^g\/([0-9a-f]{8})\/(.+)$/s;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();
const json = (v: unknown): Uint8Array => utf8.encode(JSON.stringify(v));
const parseJson = <T>(b: Uint8Array): T => JSON.parse(fromUtf8.decode(b)) as T;

/** Whether `key` starts with the bytes `prefix` (string keys are ASCII-compared, as they are stored as UTF-8). */
function hasPrefix(key: EngineKey, prefix: Uint8Array): boolean {
  if (key.length < prefix.length) return false;
  if (typeof key === 'string') {
    for (let i = 0; i < prefix.length; i++) if (key.charCodeAt(i) !== prefix[i]) return false;
    return true;
  }
  for (let i = 0; i < prefix.length; i++) if (key[i] !== prefix[i]) return false;
  return true;
}

function checkGroup(group: number): void {
  if (!Number.isInteger(group) || group < 0 || group > MAX_GROUP_ID) {
    throw new RangeError(`group id ${group} is not an integer in [0, ${MAX_GROUP_ID}]`);
  }
}

/** Collects one unit's engine ops with their size. */
class UnitBuilder {
  readonly ops: EngineOp[] = [];
  bytes = 0;
  entries = 0;
  fence = false;
  after: Promise<void> | undefined = undefined;
  onDurable: Array<() => void> | undefined = undefined;
  put(key: EngineKey, value: Uint8Array): void {
    this.ops.push({ type: 'put', key, value });
    this.bytes += key.length + value.length + OP_OVERHEAD_BYTES;
  }
  del(key: EngineKey): void {
    this.ops.push({ type: 'del', key });
    this.bytes += key.length + OP_OVERHEAD_BYTES;
  }
  /** Deletes the log records starting at `starts`. */
  delRecords(group: number, starts: readonly number[]): void {
    for (const i of starts) this.del(logKey(group, i));
  }
  /** Puts `entries` (contiguous) as log records of at most MAX_RECORD_ENTRIES / _BYTES each; returns their start indexes. */
  putRecords(group: number, entries: readonly Entry[]): number[] {
    const starts: number[] = [];
    let from = 0;
    while (from < entries.length) {
      let to = from + 1;
      let bytes = entries[from]!.data.length;
      while (to < entries.length && to - from < MAX_RECORD_ENTRIES && bytes + entries[to]!.data.length <= MAX_RECORD_BYTES) bytes += entries[to++]!.data.length;
      const part = from === 0 && to === entries.length ? entries : entries.slice(from, to);
      this.put(logKey(group, part[0]!.index), encodeEntries(part));
      starts.push(part[0]!.index);
      from = to;
    }
    this.entries += entries.length;
    return starts;
  }
}

/** What one group holds on disk while loading. */
interface Loaded {
  conf?: ConfState;
  hardState?: HardState;
  snapMeta?: SnapshotMeta;
  snapData?: Uint8Array;
  snapChunks?: { chunks: number; bytes: number; file?: string };
  /** The log records, in key (= start index) order. */
  records: Array<{ readonly start: number; readonly entries: Entry[] }>;
  entries: Entry[];
}

/**
 * The durable Raft storage of one node: per group a `MemoryStorage` (the synchronous view the Raft
 * core reads, which callers must not mutate directly) written through to one shared {@link KvEngine}.
 * Mutators stage; {@link flush} makes everything staged so far durable. See the file header for
 * the key layout and crash guarantees.
 */
export class RaftLogStore {
  private readonly storages = new Map<number, MemoryStorage>();
  /** Per group: the chunks of the streamed transfer under way (not yet installed). */
  private readonly transfers = new Map<number, ChunkSet>();
  /** Per group: the chunks that are the data of its installed streamed snapshot. */
  private readonly installedChunks = new Map<number, ChunkSet>();
  private staged: Unit[] = [];
  /** Per group: the start index of every log record it owns on disk, ascending (the last one ends at the last index). */
  private readonly records = new Map<number, number[]>();
  /** Compacted log records not cleared yet, in staging order. */
  private pendingClears: PendingClear[] = [];
  /** The clear in flight (one at a time), settled when it is done. */
  private clearing: Promise<void> | undefined;
  private nextSeq = 1;
  /** The last unit fsynced (every unit up to it is durable). */
  private durableSeq = 0;
  /** The last unit written to the engine, synced or not (readable; survives a process crash). */
  private writtenSeq = 0;
  /** The last unit a `flush()` asked for (see {@link writeOnlyFlushed}). */
  private flushTarget = 0;
  /** See the {@link writeOnlyFlushed} accessor. */
  private onlyFlushed = false;
  /**
   * Called just before each synced batch is handed to the engine (a host that paces its fsyncs,
   * NodeOptions.syncPaceMs, measures the pace from the write's real start: a flush may wait for a
   * batch already in flight).
   */
  onSyncStart: (() => void) | undefined = undefined;
  /**
   * Set by a host that wants the write of state records alone (`stageStateOps` units that no
   * `flush` waits for, written unsynced for a `whenWritten` with `lazy`) started later, on its own
   * clock: the store calls it with a function that starts that write, once per deferral, instead
   * of starting the write on a microtask (or, after a synced batch, at once). A `flush` arriving
   * meanwhile takes the units into its synced batch (no batch of their own); the function then
   * writes what is left, if anything. The host must call the function eventually (the units'
   * `whenWritten` callers wait for it). Unset: such writes start at once, as `flush`'s do.
   * Session lone12, bench/README.md "A lone put (session lone12)": a batch of their own ran on the
   * event loop between a lone write's apply and its answer, and a busy node's applied records
   * written alone cost an engine batch (a hand-off to LevelDB's thread) that the next synced batch
   * saves.
   */
  deferLazy: ((write: () => void) => void) | undefined = undefined;
  /** A `deferLazy` call is outstanding (its function has not run yet). */
  private lazyDeferred = false;
  /** The last unit staged when the outstanding `deferLazy` call was made. */
  private lazyDeferredFor = 0;
  /** The deferred write's function ran: the write loop writes state records alone now, without deferring them again. */
  private lazyDue = false;
  /** The highest target of a `whenWritten` that is not lazy (never deferred). */
  private urgentWritten = 0;
  /** `flush` callers, by target. */
  private waiters: Waiter[] = [];
  /** `whenWritten` callers, by target. */
  private writeWaiters: Waiter[] = [];
  private writing = false;
  private scheduled = false;
  private failed: StoreFailedError | undefined;
  private closed = false;
  private readonly maxBatchBytes: number;
  /** Engine ops written, indexed by {@link opSlot}. */
  private readonly opCountsBySlot = new Float64Array(OP_SLOTS);
  /** Log keys covered by the clears issued (counted as `g/l` `clear`). */
  private clearedLogKeys = 0;
  private readonly onBatch: ((report: BatchReport) => void) | undefined;
  private readonly counters: StoreMetrics = {
    batches: 0,
    unsyncedBatches: 0,
    clears: 0,
    entries: 0,
    bytes: 0,
    lastBatchEntries: 0,
    maxBatchEntries: 0,
    fsyncMsTotal: 0,
    fsyncMsLast: 0,
    fsyncMsMax: 0,
  };

  /** The chunk files' folder (RaftLogStoreOptions.chunkDir), and whether new transfers go there. */
  private readonly chunkDir: string | undefined;
  private readonly chunkFiles: boolean;
  /** Tells apart the files of transfers of the same snapshot (a transfer started over). */
  private chunkFileSeq = Date.now();

  private constructor(
    private readonly engine: KvEngine,
    options: RaftLogStoreOptions,
  ) {
    this.maxBatchBytes = options.maxBatchBytes ?? MAX_BATCH_BYTES;
    this.onBatch = options.onBatch;
    this.chunkDir = options.chunkDir;
    this.chunkFiles = options.chunkDir !== undefined && options.chunkFiles !== false;
    if (this.chunkDir !== undefined) mkdirSync(this.chunkDir, { recursive: true });
  }

  /** Opens the store over `engine`, loading every group found on disk into memory. */
  static async open(engine: KvEngine, options: RaftLogStoreOptions = {}): Promise<RaftLogStore> {
    const store = new RaftLogStore(engine, options);
    await store.load();
    return store;
  }

  /** The ids of all groups held (found on disk at open, or created since), ascending. */
  groups(): number[] {
    return [...this.storages.keys()].sort((a, b) => a - b);
  }

  /**
   * The in-memory storage of `group`. An unknown group is created empty; when `initialConf` is
   * given its configuration is staged for writing too (bootstrap). For a known group `initialConf`
   * is ignored.
   */
  storageFor(group: number, initialConf?: ConfState): MemoryStorage {
    checkGroup(group);
    const existing = this.storages.get(group);
    if (existing) return existing;
    this.checkUsable();
    const ms = new MemoryStorage(initialConf ?? EMPTY_CONF);
    this.storages.set(group, ms);
    if (initialConf) {
      const u = new UnitBuilder();
      u.put(metaKey(group, 'conf'), json(initialConf));
      this.stage(u);
    }
    return ms;
  }

  /**
   * Applies one `Ready`'s durable part to the group's view and stages it as one atomic unit, in the
   * order Raft requires: the snapshot (replacing the whole log), then the entries (replacing any
   * conflicting suffix: log keys past the new last index are deleted), then the hard state.
   * Entries at or below the snapshot index are skipped. Throws (changing nothing) when the entries
   * are not contiguous or would leave a gap after the log.
   */
  persistReady(group: number, req: PersistRequest): void {
    this.checkUsable();
    checkGroup(group);
    const known = this.storages.get(group);
    const ms = known ?? new MemoryStorage(EMPTY_CONF); // registered only once the request is accepted
    const cur = ms.snapshot();
    const snap = req.snapshot !== undefined && (cur === undefined || req.snapshot.meta.index > cur.meta.index) ? req.snapshot : undefined;

    // Validate everything before mutating anything.
    let entries = req.entries ?? [];
    for (let i = 1; i < entries.length; i++) {
      if (entries[i]!.index !== entries[i - 1]!.index + 1) {
        throw new RangeError(`entries are not contiguous: ${entries[i - 1]!.index} then ${entries[i]!.index}`);
      }
    }
    const first = snap ? snap.meta.index + 1 : ms.firstIndex();
    const last = snap ? snap.meta.index : ms.lastIndex();
    if (entries.length > 0 && entries[0]!.index < first) entries = entries.slice(first - entries[0]!.index);
    if (entries.length > 0 && entries[0]!.index > last + 1) {
      throw new RangeError(`missing log entries: last ${last}, appending at ${entries[0]!.index}`);
    }

    const u = new UnitBuilder();
    const confBefore = ms.initialState().conf;
    let streamed: ChunkSet | undefined;
    if (snap?.streamed) {
      streamed = this.transfers.get(group);
      if (streamed === undefined || streamed.index !== snap.meta.index) {
        throw new RangeError(`group ${group}: streamed snapshot ${snap.meta.index} without its chunks staged`);
      }
    }
    let records = this.records.get(group);
    if (snap) {
      u.delRecords(group, records ?? []);
      records = [];
      u.put(metaKey(group, 'snap'), json(snap.meta));
      // The previous streamed snapshot's chunks and marker first: the new marker is put after (a
      // batch applies its ops in order; dropped after, the marker deletion undid the put).
      this.dropInstalledChunks(u, group);
      if (streamed) {
        u.del(metaKey(group, 'snapdata'));
        const file = streamed.file;
        if (file) {
          // The file is the snapshot's data: durable (and closed) before the marker naming it is written.
          u.after = file.finish();
          u.after.catch(() => undefined); // awaited (and a failure reported) by the write loop
          const name = file.path.slice(file.path.lastIndexOf('/') + 1);
          u.put(metaKey(group, 'snapstream'), json({ chunks: streamed.chunks, bytes: streamed.bytes, file: name }));
          streamed = { index: streamed.index, chunks: streamed.chunks, bytes: streamed.bytes, path: file.path };
        } else u.put(metaKey(group, 'snapstream'), json({ chunks: streamed.chunks, bytes: streamed.bytes }));
        this.transfers.delete(group);
      } else {
        u.put(metaKey(group, 'snapdata'), snap.data);
        u.del(metaKey(group, 'snapstream'));
      }
      if (streamed) this.installedChunks.set(group, streamed);
      ms.applySnapshot(snap);
    }
    if (entries.length > 0) {
      const k = entries[0]!.index;
      if (k <= ms.lastIndex()) records = this.truncateRecords(u, group, ms, records ?? [], k);
      records ??= [];
      for (const start of u.putRecords(group, entries)) records.push(start); // (in place: everything was validated above)
      ms.append(entries);
    }
    if (records !== undefined) this.records.set(group, records);
    if (req.hardState) {
      // A change of the commit index alone is not written: the commit index on disk is a lower
      // bound (see the file header), raised at open to the snapshot's index and, by recovery, to
      // the applied index of the state records. Term and vote are written whenever they change.
      const prev = ms.initialState().hardState;
      if (!known || req.hardState.term !== prev.term || req.hardState.vote !== prev.vote) {
        u.put(metaKey(group, 'hardstate'), json(req.hardState));
      }
      ms.setHardState(req.hardState);
    }
    mirrorConf(u, group, ms, confBefore);
    if (!known) this.storages.set(group, ms);
    this.stage(u);
  }

  /**
   * Stages the removal of `group`'s entries from index `k` on (a conflicting suffix, replaced by
   * an append from `k`): records starting at or after `k` are deleted, and the record holding
   * `k - 1` and `k` is rewritten with its entries before `k` (from the first index still in memory:
   * entries behind it are compacted, and the record moves there). Returns the starts that remain.
   */
  private truncateRecords(u: UnitBuilder, group: number, ms: MemoryStorage, records: readonly number[], k: number): number[] {
    const kept: number[] = [];
    let cut = false;
    for (const start of records) {
      if (start < k) kept.push(start);
      else {
        if (start > k) u.del(logKey(group, start)); // (a record at k is overwritten by the append)
        cut ||= start === k; // the record before it ends at k - 1 and stays as it is
      }
    }
    const last = kept.at(-1);
    if (last !== undefined && !cut) {
      // The last kept record runs past k - 1 (it held k): rewrite it with its entries before k.
      const from = Math.max(last, ms.firstIndex());
      if (from !== last) {
        u.del(logKey(group, last));
        kept.pop();
      }
      if (from < k) {
        u.put(logKey(group, from), encodeEntries(ms.entries(from, k)));
        if (from !== last) kept.push(from);
      }
    }
    return kept;
  }

  /** Records the configuration in effect for `group` (call when a conf change is applied) and stages it. */
  setConf(group: number, conf: ConfState): void {
    this.checkUsable();
    const ms = this.storageFor(group);
    const u = new UnitBuilder();
    u.put(metaKey(group, 'conf'), json(conf));
    ms.setConfState(conf);
    this.stage(u);
  }

  /**
   * Records a snapshot the state machine took (metadata + data, data as one value; empty data
   * records a records snapshot, see the file header, and deletes any older data) and discards
   * the log entries up to its index, in memory and (staged) on disk. `snapshot.meta.index` must be
   * in the log and `snapshot.meta.term` must be that entry's term. A snapshot not newer than the
   * current one is ignored. If the view adopts the snapshot's configuration (as
   * `MemoryStorage.createSnapshot` does), the conf record on disk follows it. The tail kept
   * behind the snapshot is at most `keepEntries` entries and, when `keepBytes` is given, at most
   * that many bytes of entry data (whichever is smaller: a tail of large values must not keep a
   * heap's worth of log). Returns the data bytes of the kept tail up to the snapshot's index.
   */
  compact(group: number, snapshot: Snapshot, keepEntries = 0, keepBytes = Number.POSITIVE_INFINITY): number {
    this.checkUsable();
    const ms = this.storages.get(group);
    if (!ms) throw new RangeError(`unknown group ${group}`);
    const { index, term, conf } = snapshot.meta;
    if (!Number.isInteger(index) || index < 1) throw new RangeError(`cannot compact at index ${index}`);
    if (!Number.isInteger(keepEntries) || keepEntries < 0) throw new RangeError(`invalid keepEntries ${keepEntries}`);
    const prev = ms.snapshot();
    if (prev && index <= prev.meta.index) return 0;
    const actual = ms.term(index); // throws when index is not in the log
    if (actual !== term) throw new RangeError(`snapshot term ${term} does not match term ${actual} of entry ${index}`);
    const u = new UnitBuilder();
    const confBefore = ms.initialState().conf;
    u.put(metaKey(group, 'snap'), json(snapshot.meta));
    if (snapshot.data.length > 0) u.put(metaKey(group, 'snapdata'), snapshot.data);
    else u.del(metaKey(group, 'snapdata'));
    this.dropInstalledChunks(u, group);
    ms.createSnapshot(index, conf, snapshot.data);
    // Keep a tail of entries behind the snapshot so slightly lagging followers need no snapshot.
    let upTo = index - keepEntries;
    let kept = 0;
    const from = Math.max(upTo + 1, ms.firstIndex());
    if (from <= index) {
      const tail = ms.entries(from, index + 1);
      for (let i = tail.length - 1; i >= 0; i--) {
        const n = tail[i]!.data.length;
        if (kept + n > keepBytes) {
          upTo = Math.max(upTo, tail[i]!.index);
          break;
        }
        kept += n;
      }
    }
    if (upTo >= ms.firstIndex()) ms.compact(upTo);
    mirrorConf(u, group, ms, confBefore);
    const seq = this.stage(u);
    // Records whose entries are all compacted are cleared once the snapshot record is durable (file header).
    const records = this.records.get(group) ?? [];
    let n = 0;
    while (n < records.length && (records[n + 1] ?? ms.lastIndex() + 1) - 1 <= upTo) n++;
    if (n > 0) {
      this.pendingClears.push({ group, starts: records.slice(0, n), end: records[n] ?? ms.lastIndex() + 1, afterSeq: seq });
      this.records.set(group, records.slice(n));
    }
    return kept;
  }

  /**
   * Turns `group`'s current snapshot into a records snapshot (metadata only): its data is dropped
   * from memory and its `snapdata` deletion staged. Call only once units making the group's records
   * hold the state at (or after) the snapshot's index have been staged (e.g. the replacement that
   * follows an install): staging order then keeps the data on disk until the records are durable.
   * A no-op without a snapshot or when it has no data.
   */
  dropSnapshotData(group: number): void {
    this.checkUsable();
    const ms = this.storages.get(group);
    const snap = ms?.snapshot();
    if (!ms || !snap || (snap.data.length === 0 && !snap.streamed)) return;
    ms.dropSnapshotData();
    const u = new UnitBuilder();
    u.del(metaKey(group, 'snapdata'));
    this.dropInstalledChunks(u, group);
    this.stage(u);
  }

  /**
   * Stages chunk `seq` of the streamed transfer of the snapshot at `index` (a follower's sink):
   * chunks come in order from 0; chunk 0 starts a transfer, and the chunks of an earlier transfer
   * that was not installed are deleted in the same unit. Made durable by the next `flush()` like
   * any unit (the node flushes before acknowledging a chunk, which bounds what is staged to about
   * one chunk). Throws RangeError for a chunk out of order.
   */
  stageSnapshotChunk(group: number, index: number, seq: number, bytes: Uint8Array): void {
    this.checkUsable();
    checkGroup(group);
    const u = new UnitBuilder();
    let t = this.transfers.get(group);
    if (seq === 0) {
      if (t) this.delChunks(u, group, t);
      const name = `${hex(group, 8)}-${hex(index, 16)}-${(this.chunkFileSeq++).toString(36)}.chunks`;
      t = this.chunkFiles ? { index, chunks: 0, bytes: 0, file: new ChunkFile(join(this.chunkDir!, name)) } : { index, chunks: 0, bytes: 0 };
      this.transfers.set(group, t);
    } else if (!t || t.index !== index || t.chunks !== seq) {
      throw new RangeError(`group ${group}: snapshot chunk ${seq} of ${index} out of order (have ${t ? `${t.chunks} of ${t.index}` : 'none'})`);
    }
    if (t.file) t.file.append(bytes);
    else u.put(snapshotChunkKey(group, index, seq), bytes);
    t.chunks++;
    t.bytes += bytes.length;
    this.stage(u);
  }

  /** Chunk `seq` of `group`'s streamed snapshot at `index`, read synchronously once durable (or written), or undefined. */
  readSnapshotChunk(group: number, index: number, seq: number): Uint8Array | undefined {
    const c = this.installedChunks.get(group);
    // A chunk file is read in pieces of CHUNK_PIECE_BYTES (`installedSnapshotChunks` counts them).
    if (c?.path !== undefined && c.index === index) return readChunkPiece(c.path, c.bytes, seq);
    return this.engine.getSync(snapshotChunkKey(group, index, seq));
  }

  /** The chunk records (or pieces of the chunk file) holding `group`'s installed streamed snapshot's data (undefined when it has none). */
  installedSnapshotChunks(group: number): { readonly index: number; readonly chunks: number; readonly bytes: number } | undefined {
    const c = this.installedChunks.get(group);
    return c && { index: c.index, chunks: c.path !== undefined ? chunkPieces(c.bytes) : c.chunks, bytes: c.bytes };
  }

  private dropInstalledChunks(u: UnitBuilder, group: number): void {
    const c = this.installedChunks.get(group);
    if (!c) return;
    this.delChunks(u, group, c);
    u.del(metaKey(group, 'snapstream'));
    this.installedChunks.delete(group);
  }

  private delChunks(u: UnitBuilder, group: number, c: ChunkSet): void {
    if (c.file) {
      // A transfer's file no marker names: deleted now.
      void c.file.discard();
      return;
    }
    if (c.path !== undefined) {
      // An installed snapshot's file: deleted once the unit dropping its marker is durable.
      const path = c.path;
      (u.onDurable ??= []).push(() => {
        try {
          unlinkSync(path);
        } catch {
          // already gone (deleted at the next open otherwise)
        }
      });
      return;
    }
    for (let i = 0; i < c.chunks; i++) u.del(snapshotChunkKey(group, c.index, i));
  }

  /**
   * Stages engine writes of `group`'s state machine records as one atomic unit, ordered after
   * everything staged before (so applied state never becomes durable ahead of the log writes it
   * was applied from) and made durable by the next `flush()`. Every key must start with
   * {@link stateKeyPrefix}(group) (bytes or ASCII string); throws RangeError otherwise, staging
   * nothing. An empty `ops` stages nothing. The store does not interpret these records.
   * Such a unit is *lazy*: written with the next batch, which may be unsynced when it holds lazy
   * units only and no `flush` waits (`whenWritten`); the records are derived from the log
   * entries, which were staged before them, so a machine crash that loses them loses a suffix
   * that recovery applies again from the log.
   */
  stageStateOps(group: number, ops: readonly EngineOp[]): void {
    this.checkUsable();
    checkGroup(group);
    if (ops.length === 0) return;
    const prefix = utf8.encode(stateKeyPrefix(group));
    const u = new UnitBuilder();
    for (const op of ops) {
      if (!hasPrefix(op.key, prefix)) throw new RangeError(`state op key outside ${stateKeyPrefix(group)}`);
      if (op.type === 'put') u.put(op.key, op.value);
      else u.del(op.key);
    }
    this.stage(u, true);
  }

  /**
   * Raises `group`'s commit index in memory to `index` when it is lower (at open: `index` is the
   * applied index of the group's durable state records, so committed). Nothing is written: the
   * commit index on disk is a lower bound. `index` must be in the log (or its snapshot); otherwise,
   * or when it is not higher, nothing changes.
   */
  raiseCommit(group: number, index: number): void {
    const ms = this.storages.get(group);
    if (!ms) return;
    const hs = ms.initialState().hardState;
    if (index <= hs.commit || index > ms.lastIndex()) return;
    ms.setHardState({ ...hs, commit: index });
  }

  /**
   * Forgets `group`: drops its view and stages the deletion of all its Raft keys. Its state
   * machine records (`s/<group>/`) are the caller's to delete (see state-store.ts).
   */
  deleteGroup(group: number): void {
    this.checkUsable();
    const ms = this.storages.get(group);
    if (!ms) return;
    const u = new UnitBuilder();
    u.fence = true;
    // Compacted records not cleared yet go in this unit (a clear in flight is waited for: see writeLoop).
    for (const c of this.pendingClears) if (c.group === group) u.delRecords(group, c.starts);
    this.pendingClears = this.pendingClears.filter((c) => c.group !== group);
    u.delRecords(group, this.records.get(group) ?? []);
    this.records.delete(group);
    for (const kind of ['conf', 'hardstate', 'snap', 'snapdata', 'snapstream'] as const) u.del(metaKey(group, kind));
    this.dropInstalledChunks(u, group);
    const t = this.transfers.get(group);
    if (t) this.delChunks(u, group, t);
    this.transfers.delete(group);
    this.storages.delete(group);
    this.stage(u);
  }

  /**
   * Resolves once everything staged before this call (by any group) is durable. Concurrent callers
   * share fsynced batches: units staged while a batch is in flight go into the next one. Rejects
   * with {@link StoreFailedError} if any batch failed (the failure is sticky).
   */
  flush(): Promise<void> {
    return this.flushAll(false);
  }

  /**
   * As {@link flush}, but when no batch is in flight the write of what is staged starts now,
   * synchronously (handed to the engine before this returns; a unit that must wait for a clear
   * or a chunk file still waits), instead of on a microtask: a host that stages more right after
   * (the state records of the entries a ready round applies, which need no fsync) keeps that work
   * off the fsync's path. Units staged after this call go into a later batch, and the returned
   * promise does not wait for them.
   */
  flushNow(): Promise<void> {
    return this.flushAll(true);
  }

  private flushAll(now: boolean): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    // Chunks appended to transfer files are covered too (a follower's acknowledgements wait for this every few MiB: it bounds what the appends hold).
    let files: Promise<void>[] | undefined;
    for (const t of this.transfers.values()) {
      if (t.file !== undefined && t.file.unsynced > 0) (files ??= []).push(t.file.sync().catch((e: unknown) => this.fail(e)));
    }
    if (files !== undefined) return Promise.all([this.flushRecords(now), ...files]).then(() => (this.failed ? Promise.reject(this.failed) : undefined));
    return this.flushRecords(now);
  }

  private flushRecords(now = false): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const target = this.nextSeq - 1;
    if (target <= this.durableSeq) return Promise.resolve();
    if (target > this.flushTarget) this.flushTarget = target;
    const p = new Promise<void>((resolve, reject) => {
      this.waiters.push({ target, resolve, reject });
    });
    if (now && !this.writing) void this.writeLoop();
    else this.schedule();
    return p;
  }

  /**
   * Resolves once everything staged before this call is written to the engine: readable there
   * (`getSync`, views), and surviving a crash of the process, though not necessarily of the
   * machine (for work that needs the records in the engine, such as dropping values from the heap
   * or compacting a deleted range). Starts a write if none is under way, on a microtask (a `flush`
   * in the same turn shares it): a batch of state records alone (`stageStateOps`, e.g. the
   * records of a round that only applied committed entries) is written *unsynced* unless a
   * `flush` waits, so an idle node's last applied rounds reach the engine without an fsync;
   * anything else staged is written synced, as by `flush`. Rejects like `flush`. With `lazy`
   * (for work that can wait, such as dropping values from the heap) and a host's
   * {@link deferLazy}, a write of state records alone starts when the host says, unless a `flush`
   * takes them into its synced batch first; without `lazy` the write starts at once.
   */
  whenWritten(options?: { readonly lazy?: boolean }): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const target = this.nextSeq - 1;
    if (target <= this.writtenSeq) return Promise.resolve();
    if (options?.lazy !== true && target > this.urgentWritten) this.urgentWritten = target;
    return new Promise<void>((resolve, reject) => {
      this.writeWaiters.push({ target, resolve, reject });
      if (this.mayDeferLazy()) this.scheduleLazy();
      else this.schedule();
    });
  }

  /** Engine operations written so far, by record kind (see {@link EngineOpCounts}). */
  get opCounts(): EngineOpCounts {
    const out: EngineOpCounts = {};
    for (let slot = 0; slot < OP_SLOTS; slot += 2) {
      const put = this.opCountsBySlot[slot]!;
      const del = this.opCountsBySlot[slot + 1]!;
      if (put === 0 && del === 0) continue;
      out[slotKind(slot)] = { put, del, clear: 0 };
    }
    if (this.clearedLogKeys > 0) (out['g/l'] ??= { put: 0, del: 0, clear: 0 }).clear = this.clearedLogKeys;
    return out;
  }

  /** A copy of the cumulative write metrics. */
  get metrics(): StoreMetrics {
    return { ...this.counters };
  }

  /** Bytes staged and not yet handed to the engine. */
  get stagedBytes(): number {
    let n = 0;
    for (const u of this.staged) n += u.bytes;
    return n;
  }

  /**
   * Set by a host that holds rounds back (NodeOptions.syncPaceMs) while it has a round in flight:
   * the write loop then writes only the units a `flush()` asked for (and state records alone for a
   * `whenWritten`, up to the first unflushed unit), so what was staged after waits for the next
   * flush instead of joining the batch after the one in flight. Off: the loop writes everything
   * staged. Turning it off starts a write when a `whenWritten` or `flush` still waits (an idle
   * host's units that no round flushes, such as a compaction's, are then written).
   */
  get writeOnlyFlushed(): boolean {
    return this.onlyFlushed;
  }

  set writeOnlyFlushed(on: boolean) {
    if (on === this.onlyFlushed) return;
    this.onlyFlushed = on;
    if (!on && !this.failed && (this.writeWaiters.length > 0 || this.waiters.length > 0)) this.schedule();
  }

  /** The failure that stopped the store, if any. */
  get failure(): StoreFailedError | undefined {
    return this.failed;
  }

  /** Flushes what is staged (if the store has not failed), then closes the engine. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.failed) await this.flush();
      this.startClear();
      await this.settleClear();
    } finally {
      this.closed = true;
      // Transfers not installed keep their files until the next open deletes them.
      for (const t of this.transfers.values()) await t.file?.close();
      await this.engine.close();
    }
  }

  private checkUsable(): void {
    if (this.failed) throw this.failed;
    if (this.closed) throw new Error('raft log store is closed');
  }

  /** Stages `u` (nothing when it is empty; `lazy`: state records only); returns the seq of the last unit staged (its own, when it has ops). */
  private stage(u: UnitBuilder, lazy = false): number {
    if (u.ops.length > 0) this.staged.push({ seq: this.nextSeq++, ops: u.ops, bytes: u.bytes, entries: u.entries, fence: u.fence, lazy, after: u.after, onDurable: u.onDurable });
    return this.nextSeq - 1;
  }

  /**
   * Resolves once every compacted range staged so far is deleted from the engine: flushes, then
   * waits for the clears (for tests and benches; the node never waits for them).
   */
  async clearCompacted(): Promise<void> {
    await this.flush();
    this.startClear();
    while (this.clearing !== undefined) {
      await this.clearing;
      this.startClear();
    }
    if (this.failed) throw this.failed;
  }

  /** Waits for the clear in flight, if any (never rejects). */
  private async settleClear(): Promise<void> {
    while (this.clearing !== undefined) await this.clearing;
  }

  /**
   * Starts clearing the compacted ranges whose snapshot record is durable, when no clear is in
   * flight: adjacent ranges of a group are merged into one engine `clear`; the next ones start
   * when it is done. A failed clear fails the store (like a failed batch).
   */
  private startClear(): void {
    if (this.clearing !== undefined || this.failed || this.closed) return;
    const ready = this.pendingClears.findIndex((c) => c.afterSeq <= this.durableSeq);
    if (ready < 0) return;
    const first = this.pendingClears[ready]!;
    let end = first.end;
    let keys = first.starts.length;
    const rest: PendingClear[] = [];
    for (const [i, c] of this.pendingClears.entries()) {
      if (i === ready) continue;
      if (c.group === first.group && c.afterSeq <= this.durableSeq && c.starts[0] === end) {
        end = c.end;
        keys += c.starts.length;
      } else rest.push(c);
    }
    this.pendingClears = rest;
    const { group } = first;
    this.clearedLogKeys += keys;
    this.counters.clears++;
    this.clearing = this.engine
      .clear({ gte: logKey(group, first.starts[0]!), lt: logKey(group, end) })
      .then(
        () => {
          this.clearing = undefined;
          this.startClear();
        },
        (err: unknown) => {
          this.clearing = undefined;
          this.fail(err);
        },
      );
  }

  /**
   * Whether the write about to start would be a batch of state records alone that nothing asks
   * for now (no `flush` waits, no `whenWritten` without `lazy`, every staged unit is lazy), and the
   * host defers such writes ({@link deferLazy}) and has not said the deferred one is due.
   */
  private mayDeferLazy(): boolean {
    if (this.deferLazy === undefined || this.lazyDue || this.waiters.length > 0 || this.urgentWritten > this.writtenSeq) return false;
    // The units the loop would take now: with writeOnlyFlushed, up to the first it may not write
    // (a held round's, whose flush takes the records before it too).
    let n = 0;
    for (const u of this.staged) {
      if (!this.mayWrite(u)) break;
      if (!u.lazy) return false;
      n++;
    }
    return n > 0;
  }

  /**
   * Whether the write loop may take `u` now: with writeOnlyFlushed, only the units a flush asked
   * for, and after them the state-records-only (lazy) units a whenWritten asked for up to the
   * first unit that needs an fsync: a round held for the pace stays held (its log units wait for
   * its flush), while an idle node's last applied rounds are still written (unsynced).
   */
  private mayWrite(u: Unit): boolean {
    if (!this.onlyFlushed || u.seq <= this.flushTarget) return true;
    return u.lazy && this.writeWaiters.some((w) => w.target >= u.seq);
  }

  /** Asks the host ({@link deferLazy}) to start the write of the staged state records later (once per deferral). */
  private scheduleLazy(): void {
    if (this.lazyDeferred) return;
    this.lazyDeferred = true;
    this.lazyDeferredFor = this.nextSeq - 1;
    this.deferLazy!(() => {
      this.lazyDeferred = false;
      if (this.failed || this.closed) return;
      // A flush wrote them meanwhile (with its synced batch): nothing left to do.
      if (this.staged.length === 0 && this.writeWaiters.length === 0) return;
      // The units it was deferred for went with a flush (or a batch is in flight: a busy node),
      // the ones staged since get a deferral of their own: the next flush takes them too.
      if ((this.writtenSeq >= this.lazyDeferredFor || this.writing) && this.mayDeferLazy()) {
        this.scheduleLazy();
        return;
      }
      this.lazyDue = true;
      if (this.writing) return; // the running loop goes on to them after its batch (lazyDue)
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.writing || this.scheduled) return;
    this.scheduled = true;
    // Start on a microtask so that callers flushing in the same tick share the first batch.
    queueMicrotask(() => {
      this.scheduled = false;
      void this.writeLoop();
    });
  }

  private async writeLoop(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      const mayWrite = (u: Unit): boolean => this.mayWrite(u);
      for (;;) {
        const syncWanted = this.waiters.length > 0;
        if (!syncWanted && this.mayDeferLazy()) {
          // State records alone, asked for by no flush (after a synced batch: the records a busy
          // node applied while it was in flight): the host says when to write them, and a flush
          // meanwhile (a busy node's next round) takes them into its synced batch.
          this.scheduleLazy();
          break;
        }
        if (this.staged.length === 0) {
          // A flush waits for units written unsynced: an empty batch syncs nothing, so a marker does.
          if (!syncWanted) break;
          const u = new UnitBuilder();
          u.del(SYNC_MARKER_KEY);
          this.stage(u);
        } else if (!mayWrite(this.staged[0]!)) {
          // Held units come first (a paced round's, not flushed yet). A flush that waits only for
          // units written unsynced before them must not wait for their flush (it may never come,
          // e.g. when the flush is the one the host awaits before releasing them): a marker batch,
          // synced and written ahead of them, makes what is written durable.
          if (!syncWanted || this.waiters[0]!.target > this.writtenSeq) break;
          await this.syncWritten();
          continue;
        }
        // Take whole units, in order, up to the byte bound (always at least one).
        let n = 0;
        let bytes = 0;
        while (n < this.staged.length && (n === 0 || (mayWrite(this.staged[n]!) && bytes + this.staged[n]!.bytes <= this.maxBatchBytes))) {
          bytes += this.staged[n]!.bytes;
          n++;
        }
        const units = this.staged.slice(0, n);
        this.staged = this.staged.slice(n);
        // A deleted group's unit waits for the clear in flight (its range might be the group's next life's).
        if (units.some((u) => u.fence)) await this.settleClear();
        // A streamed snapshot's marker is written only once the chunk file it names is durable.
        for (const u of units) if (u.after !== undefined) await u.after;
        const ops: EngineOp[] = [];
        let entries = 0;
        const counts = this.opCountsBySlot;
        for (const u of units) {
          for (const op of u.ops) {
            ops.push(op);
            counts[opSlot(op)]++;
          }
          entries += u.entries;
        }
        // Unsynced only for state records alone that no flush waits for (see whenWritten).
        const sync = syncWanted || units.some((u) => !u.lazy);
        if (sync) this.onSyncStart?.();
        traceWrite?.(sync ? 'sync.start' : 'lazy.start', 0, entries);
        const t0 = performance.now();
        await this.engine.batch(ops, { sync });
        const fsyncMs = performance.now() - t0;
        this.writtenSeq = units[units.length - 1]!.seq;
        if (sync) {
          this.record({ units: units.length, entries, ops: ops.length, bytes, fsyncMs });
          this.durableSeq = this.writtenSeq;
          for (const u of units) if (u.onDurable !== undefined) for (const f of u.onDurable) f();
        } else {
          this.counters.batches++;
          this.counters.unsyncedBatches++;
          this.counters.bytes += bytes;
        }
        while (this.waiters.length > 0 && this.waiters[0]!.target <= this.durableSeq) this.waiters.shift()!.resolve();
        while (this.writeWaiters.length > 0 && this.writeWaiters[0]!.target <= this.writtenSeq) this.writeWaiters.shift()!.resolve();
        if (this.pendingClears.length > 0) this.startClear();
      }
    } catch (err) {
      this.fail(err);
    } finally {
      this.writing = false;
      this.lazyDue = false;
    }
  }

  /**
   * Makes every unit written so far durable with a synced batch holding only the deletion of
   * {@link SYNC_MARKER_KEY}, which takes no unit from `staged` (the held units after it stay staged),
   * then resolves the flushes it covers.
   */
  private async syncWritten(): Promise<void> {
    const op: EngineOp = { type: 'del', key: SYNC_MARKER_KEY };
    const bytes = SYNC_MARKER_KEY.length + OP_OVERHEAD_BYTES;
    this.opCountsBySlot[opSlot(op)]++;
    this.onSyncStart?.();
    const t0 = performance.now();
    await this.engine.batch([op], { sync: true });
    this.record({ units: 0, entries: 0, ops: 1, bytes, fsyncMs: performance.now() - t0 });
    this.durableSeq = this.writtenSeq;
    while (this.waiters.length > 0 && this.waiters[0]!.target <= this.durableSeq) this.waiters.shift()!.resolve();
    if (this.pendingClears.length > 0) this.startClear();
  }

  /** Fails the store for good: rejects every waiter and drops what is staged (see {@link StoreFailedError}). */
  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = new StoreFailedError(err);
    this.staged = [];
    this.pendingClears = [];
    const waiters = [...this.waiters, ...this.writeWaiters];
    this.waiters = [];
    this.writeWaiters = [];
    for (const w of waiters) w.reject(this.failed);
  }

  private record(r: BatchReport): void {
    const c = this.counters;
    c.batches++;
    c.entries += r.entries;
    c.bytes += r.bytes;
    c.lastBatchEntries = r.entries;
    c.maxBatchEntries = Math.max(c.maxBatchEntries, r.entries);
    c.fsyncMsTotal += r.fsyncMs;
    c.fsyncMsLast = r.fsyncMs;
    c.fsyncMsMax = Math.max(c.fsyncMsMax, r.fsyncMs);
    this.onBatch?.(r);
  }

  private async load(): Promise<void> {
    const groups = new Map<number, Loaded>();
    for await (const [k, v] of this.engine.iterate({ prefix: 'g/' })) {
      const key = Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString('latin1');
      const m = GROUP_KEY.exec(key);
      if (!m) throw new StorageCorruptionError(`unexpected key ${JSON.stringify(key)}`);
      const group = parseInt(m[1]!, 16);
      let g = groups.get(group);
      if (!g) groups.set(group, (g = { records: [], entries: [] }));
      const rest = m[2]!;
      if (rest === 'conf') g.conf = parseJson<ConfState>(v);
      else if (rest === 'hardstate') g.hardState = parseJson<HardState>(v);
      else if (rest === 'snap') g.snapMeta = parseJson<SnapshotMeta>(v);
      else if (rest === 'snapdata') g.snapData = v;
      else if (rest === 'snapstream') {
        const c = parseJson<{ chunks: unknown; bytes: unknown; file?: unknown }>(v);
        const count = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
        if (!count(c.chunks) || !count(c.bytes)) throw new StorageCorruptionError(`group ${group}: malformed streamed snapshot marker`);
        if (c.file !== undefined && (typeof c.file !== 'string' || !CHUNK_FILE_NAME.test(c.file))) throw new StorageCorruptionError(`group ${group}: malformed streamed snapshot marker`);
        if (c.file !== undefined && this.chunkDir === undefined) {
          throw new StorageCorruptionError(`group ${group}: its streamed snapshot's data is the chunk file ${c.file as string}: open the store with its chunk folder (RaftLogStoreOptions.chunkDir)`);
        }
        g.snapChunks = { chunks: c.chunks, bytes: c.bytes, ...(c.file !== undefined ? { file: c.file as string } : {}) };
      }
      else if (rest.startsWith('log/') && rest.length === 20) {
        const start = parseInt(rest.slice(4), 16);
        g.records.push({ start, entries: decodeLogRecord(start, v) });
      } else throw new StorageCorruptionError(`unexpected key ${JSON.stringify(key)}`);
    }
    for (const [group, g] of groups) {
      // Entries at or behind the snapshot (the catch-up tail, or compacted records whose clear
      // had not happened or was lost in a crash) are not reloaded: the in-memory view starts at
      // the snapshot. Records holding nothing else are cleared (the snapshot record is durable
      // already); a record holding later entries too stays.
      const snapIndex = g.snapMeta?.index ?? 0;
      let n = 0;
      while (n < g.records.length && g.records[n]!.entries.at(-1)!.index <= snapIndex) n++;
      const stale = g.records.slice(0, n);
      const live = g.records.slice(n);
      if (stale.length > 0) {
        this.pendingClears.push({ group, starts: stale.map((r) => r.start), end: live[0]?.start ?? stale.at(-1)!.entries.at(-1)!.index + 1, afterSeq: 0 });
      }
      let expected: number | undefined;
      for (const r of live) {
        if (expected !== undefined && r.start !== expected) {
          throw new StorageCorruptionError(`group ${group}: log entry ${r.start} found where ${expected} was expected`);
        }
        expected = r.start + r.entries.length;
        for (const e of r.entries) if (e.index > snapIndex) g.entries.push(e);
      }
      if (live.length > 0) this.records.set(group, live.map((r) => r.start));
      this.storages.set(group, buildStorage(group, g));
      if (g.snapChunks !== undefined) {
        const { chunks, bytes, file } = g.snapChunks;
        this.installedChunks.set(group, { index: g.snapMeta!.index, chunks, bytes, ...(file !== undefined ? { path: join(this.chunkDir!, file) } : {}) });
      }
    }
    // Chunk records: those of an installed streamed snapshot stay (its data); the rest (a transfer
    // cut short, a group gone) are deleted. Only this scan reads them (one value at a time).
    const stale = new UnitBuilder();
    for await (const [k] of this.engine.iterate({ prefix: 't/' })) {
      const key = Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString('latin1');
      const m = CHUNK_KEY.exec(key);
      if (!m) throw new StorageCorruptionError(`unexpected key ${JSON.stringify(key)}`);
      const c = this.installedChunks.get(parseInt(m[1]!, 16));
      if (c === undefined || c.index !== parseInt(m[2]!, 16) || parseInt(m[3]!, 16) >= c.chunks) stale.del(key);
    }
    this.stage(stale);
    // Chunk files: those installed snapshots name stay (their data); the rest (transfers cut short, dropped) are deleted.
    if (this.chunkDir !== undefined) {
      const named = new Set<string>();
      for (const c of this.installedChunks.values()) if (c.path !== undefined) named.add(c.path);
      for (const name of readdirSync(this.chunkDir)) {
        const path = join(this.chunkDir, name);
        if (CHUNK_FILE_NAME.test(name) && !named.has(path)) unlinkSync(path);
      }
    }
    this.startClear();
  }
}

/** Stages the group's configuration when the view's changed (MemoryStorage decides when snapshots change it). */
function mirrorConf(u: UnitBuilder, group: number, ms: MemoryStorage, before: ConfState): void {
  const now = ms.initialState().conf;
  if (now !== before) u.put(metaKey(group, 'conf'), json(now));
}

function buildStorage(group: number, g: Loaded): MemoryStorage {
  const ms = new MemoryStorage(g.conf ?? g.snapMeta?.conf ?? EMPTY_CONF);
  if (g.snapMeta === undefined && (g.snapData !== undefined || g.snapChunks !== undefined)) {
    throw new StorageCorruptionError(`group ${group}: snapshot data without its metadata`);
  }
  if (g.snapData !== undefined && g.snapChunks !== undefined) {
    throw new StorageCorruptionError(`group ${group}: snapshot data both in one record and in chunks`);
  }
  if (g.snapMeta) {
    // No data: a records snapshot (the state is in the group's records); streamed: the data is in chunk records.
    ms.applySnapshot({ meta: g.snapMeta, data: g.snapData ?? new Uint8Array(0), ...(g.snapChunks !== undefined ? { streamed: true } : {}) });
    if (g.conf) ms.setConfState(g.conf);
  }
  let expected = ms.lastIndex() + 1;
  for (const e of g.entries) {
    if (e.index !== expected) {
      throw new StorageCorruptionError(`group ${group}: log entry ${e.index} found where ${expected} was expected`);
    }
    expected++;
  }
  ms.append(g.entries);
  if (g.hardState) {
    // The commit index on disk is a lower bound (see the file header): entries in the snapshot are committed.
    const snapIndex = g.snapMeta?.index ?? 0;
    ms.setHardState(g.hardState.commit < snapIndex ? { ...g.hardState, commit: snapIndex } : g.hardState);
  }
  return ms;
}
