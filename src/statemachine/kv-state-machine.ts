/**
 * The versioned, deterministic, in-memory key-value state machine of one shard, applied by the Raft host.
 *
 * Size: one class (about 1,200 lines) because every command's apply, the version history and event
 * log it writes, compaction, the reads at a revision or time, the export to snapshots and records,
 * and the hand-over of the key index to durable storage (listPlan, attachIndex, dropCold) all work
 * on the same private indexes and must keep them consistent together; the
 * separable parts already live apart (codecs, sessions, validation, sorted keys).
 */
import { decodeDescriptor, isReservedKey, ownsKey, SYSTEM_KEY_PREFIX, type ShardDescriptor } from '../sharding/index.js';
import { decodeCommand } from './command-codec.js';
import { CompactedRevisionError, ValidationError } from './errors.js';
import { compareKeys, utf8ByteLength } from './keys.js';
import {
  DEFAULT_EVENTS_LIMIT,
  DEFAULT_LIST_LIMIT,
  DEFAULT_MAX_HISTORY_BYTES,
  DEFAULT_MAX_HISTORY_REVISIONS,
  DEFAULT_MAX_SESSION_RESULTS,
  DEFAULT_MAX_SESSIONS,
  DEFAULT_SESSION_TTL_MS,
  EVENT_OVERHEAD_BYTES,
  MAX_EVENTS_LIMIT,
  MAX_HOP_COUNT,
  MAX_LEASE_REVOKE_ATTACHMENTS,
  MAX_LIST_LIMIT,
} from './limits.js';
import { leaseAttachmentPrefix } from './lease-keys.js';
import { Queue } from './queue.js';
import { isStoredResult, SessionTable, validateWriteSession, type SessionDecision, type SessionRecord } from './sessions.js';
import type { ChunkedByteReader } from './chunked-reader.js';
import { decodeSnapshotSteps, encodeSnapshot, RESTORE_STEP_KEYS, runSteps, type ColdVersions, type SnapshotData } from './snapshot-codec.js';
import type { VersionRecord } from './types.js';
import { SortedKeySet } from './sorted-keys.js';
import type { StateSink } from './state-sink.js';
import { VALUE_ON_DISK, type ValueSource } from './value-source.js';
import type { IndexSource } from './index-source.js';
import { KeyFilter } from './key-filter.js';
import { PackedNumbers, WriteLog } from './write-log.js';
import type {
  ApplyOutput,
  Command,
  CommandOrigin,
  CommandResult,
  DeleteCommand,
  EventsPage,
  GetOptions,
  GetResult,
  KvEvent,
  KvStateMachineOptions,
  ListItem,
  ListOptions,
  ListPlan,
  ListResult,
  PutCommand,
  RevokeLeaseKeysCommand,
  SessionResult,
  TxnCommand,
  VersionedValue,
  WriteSession,
} from './types.js';
import { reservedKeyError, validateCommand, validateKey, validateNonNegativeInt, validatePrefix } from './validation.js';

/** The shard-local system key holding the shard's descriptor (JSON, see sharding/map-codec.ts). */
export const SHARD_DESCRIPTOR_KEY = `${SYSTEM_KEY_PREFIX}shard`;

const NO_EVENTS: readonly KvEvent[] = Object.freeze([]);

/** Accounted size of one history event: UTF-8 key bytes + value bytes + EVENT_OVERHEAD_BYTES. */
export function eventBytes(e: KvEvent): number {
  return utf8ByteLength(e.key) + (e.value?.length ?? 0) + EVENT_OVERHEAD_BYTES;
}

/** The keys `cmd` reads or writes (a txn's compares and writes alike). */
function commandKeys(cmd: Command): readonly string[] {
  if (cmd.type === 'put' || cmd.type === 'delete' || cmd.type === 'triggerPut') return [cmd.key];
  if (cmd.type === 'txn') return [...cmd.compares.map((c) => c.key), ...cmd.writes.map((w) => w.key)];
  return [];
}

/** PERMISSION_DENIED when a client-origin `cmd` touches a reserved key (the first one it names). */
function reservedError(cmd: Command): ValidationError | undefined {
  if (cmd.type === 'revokeLeaseKeys') return reservedKeyError(leaseAttachmentPrefix(cmd.lease));
  const key = commandKeys(cmd).find(isReservedKey);
  return key === undefined ? undefined : reservedKeyError(key);
}

/** Index in `recs` (ascending revisions) of the version at `revision`, or -1. */
function versionIndex(recs: readonly VersionRecord[], revision: number): number {
  let lo = 0;
  let hi = recs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (recs[mid]!.revision < revision) lo = mid + 1;
    else hi = mid;
  }
  return lo < recs.length && recs[lo]!.revision === revision ? lo : -1;
}

/** `o` with `hops` set when it is not 0 (records and events of client writes carry no field). */
function withHops<T extends { readonly hops?: number }>(o: T, hops: number): T {
  if (hops > 0) (o as { hops?: number }).hops = hops;
  return o;
}

function positiveLimit(n: unknown, def: number, max: number, what: string): number {
  if (n === undefined) return def;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1 || n > max) {
    throw new ValidationError('INVALID_ARGUMENT', `${what} must be an integer in [1, ${max}], got ${String(n)}`);
  }
  return n;
}

/**
 * Keys whose only retained version is live, as a restart loads them without a version object
 * (`KvStateMachine.fromRecords` option `cold`): the keys in key order (`compareKeys`) and, at the
 * same position, the revision of that version.
 */
export interface ColdKeys {
  readonly keys: readonly string[];
  readonly revisions: readonly number[];
}

/**
 * The state machine of one shard. Pure and deterministic: no I/O and no clock; every input
 * (Raft index, leader timestamp, command) arrives through `apply`, so replicas applying the same
 * log (with the same options) reach byte-identical snapshots.
 *
 * Model (etcd-like MVCC):
 * - One revision counter per shard, starting at 0. Each applied command that changes data bumps it
 *   by exactly one: a successful put, a delete of a live key, a txn with at least one effective
 *   write (all its writes and events share the revision) and a triggerPut (which stores nothing but
 *   gets a revision so its event has a unique, resumable position). Failed conditional operations,
 *   deletes of absent keys, empty txns, noops, compactions and rejected commands do not.
 * - A key's version is the revision of its last write (etcd's mod_revision); 0 means absent. A
 *   delete writes a tombstone version so reads at older revisions stay correct.
 * - Clock rule: the shard keeps `lastTimestampMs`; each applied command's effective timestamp is
 *   `max(lastTimestampMs, given)`, which becomes the new `lastTimestampMs`. Timestamps are thus
 *   non-decreasing in revision order (never strictly forced apart, so no drift ahead of the
 *   leader's clock); a read "at time T" reads at the newest revision whose timestamp is <= T.
 * - Idempotence: `apply` ignores (returns `skipped`) any index <= appliedIndex, so the host may
 *   re-apply log entries after restarting from an older snapshot. Gaps in indices are allowed
 *   (e.g. configuration entries the host does not pass in).
 * - Client sessions: a write applied with a {@link WriteSession} applies at most once per
 *   (session id, seq); a repeat gets the first result back and changes nothing but the applied
 *   index, the clock and the session's activity (see sessions.ts for expiry and bounds, which
 *   use only log indexes and entry timestamps). The session table is part of the state:
 *   snapshots and durable records carry it.
 *
 * Data structures and complexity (n live keys, v versions of one key, h history events):
 * - `records`: Map key -> versions sorted by revision (values, or placeholders of released values).
 *   Latest read O(1); read at a revision O(log v) (plus one source read for a released value).
 * - `live`: SortedKeySet of live keys in UTF-8 byte order (sorted blocks of <= 512 keys). `list`
 *   is O(log n + page): binary search to the prefix start, then walk while the prefix matches;
 *   deleted keys are not in the set, so they cost nothing. Creating or deleting a key is
 *   O(log n + 512); overwriting an existing key does not touch the set. With an index source and
 *   `dropCold` (`attachIndex`) it holds the *reserved* live keys only (leases' attachments,
 *   cursors, dead letters, the descriptor: bounded by the system's own use); user keys are then
 *   listed from the durable records (`listPlan`) and a Bloom filter (`userKeyFilter`) stands in
 *   for the exact "is it live" test. The key counts are counters either way (`liveCount`).
 * - `writeLog`: (revision, key) of every version newer than the compaction point, so `compact`
 *   costs O(versions dropped), not O(keys); packed columns (write-log.ts): 4 bytes per revision and
 *   4 per key slot, and a key dropped from `records` (`dropCold`) leaves its entry keyless (its key
 *   string is no longer held: compaction has nothing to drop of such a key).
 * - `revTimes`: timestamp of every revision from compactRevision on, for time-to-revision lookups
 *   (O(log revisions)); packed, 4 bytes per revision.
 * - `history`: events of the most recent revisions, bounded by `maxHistoryRevisions`, by
 *   `maxHistoryBytes` (the newest revision is always kept) and by compaction.
 *
 * Values passed in commands are stored by reference, and values returned by reads and events are
 * the stored arrays: callers must treat them as immutable.
 *
 * Values out of the heap (issue 17): a host that keeps values in durable storage attaches a
 * {@link ValueSource} (`attachValues`) and calls `releaseValues(revision)` once the versions up to
 * `revision` are durable there; each released version's value becomes the `VALUE_ON_DISK`
 * placeholder in `records`, and reads (`get`, `list`, `returnPrevious`, the descriptor,
 * `snapshot()`) fetch it from the source synchronously, so `apply` and reads stay synchronous and
 * deterministic (the outcome never depends on what is cached). `records` is then an index: per
 * version its revision, timestamp and whether it is a tombstone (about 350 bytes of heap per key
 * with one version and 90 per further retained version, measured with 15-character keys). The
 * watch history keeps its events' values within `maxHistoryBytes`. Without a source every value
 * stays in the heap (tests, tools, the simulator's reference models).
 *
 * Durability: the machine itself does no I/O. A host that persists it incrementally attaches a
 * {@link StateSink} (`observe`), which sees every record-level change as it is applied, and
 * rebuilds the machine from the persisted records with `fromRecords` (`toRecords` is the inverse).
 */
export class KvStateMachine {
  private readonly records = new Map<string, VersionRecord[]>();
  private live = new SortedKeySet();
  /** Number of live keys (user and reserved), kept by `write`: the same on every replica at an index. */
  private liveCount = 0;
  /** Live keys that are reserved (see userKeyCount). */
  private reservedLive = 0;
  /**
   * Set once `live` holds reserved keys only (`attachIndex` with `dropCold`): every user key made
   * live since is added here, so a lookup of a key never made live spares a storage read.
   */
  private userKeyFilter: KeyFilter | undefined;
  private readonly writeLog = new WriteLog();
  private readonly revTimes = new PackedNumbers();
  private readonly history = new Queue<KvEvent>();
  private historyBytes = 0;
  private _revision = 0;
  private _appliedIndex = 0;
  private _compactRevision = 0;
  private _lastTimestampMs = 0;
  private sink: StateSink | undefined;
  private descriptorCache: { readonly version: number; readonly descriptor: ShardDescriptor } | undefined;
  /** With an index source: the descriptor key's latest live version as last looked up (undefined: look it up), dropped when the key is written. */
  private descriptorHead: { readonly v: VersionRecord | undefined } | undefined;
  private sessions: SessionTable;
  /** Where released values are read from (undefined: every value stays in the heap). */
  private values: ValueSource | undefined;
  /** Versions whose value is still in the heap, to drop once the source holds it (`releaseValues`); only with a source. */
  private readonly resident = new Queue<{ readonly revision: number; readonly key: string }>();
  /** Where latest versions are read from (undefined: `records`); see `attachIndex`. */
  private index: IndexSource | undefined;
  /** The revision at which `index` was attached: it answers once a release reaches it (until then, `records` do). */
  private indexFrom = 0;
  private indexReady = false;
  /** The overlay of `index`: each key written since the last durable point, with its newest version (consulted first). */
  private readonly unindexed = new Map<string, VersionRecord>();
  /** (revision, key) of the writes in `unindexed`, oldest first, to hand to `index` once durable. */
  private readonly unindexedLog = new Queue<{ readonly revision: number; readonly key: string }>();
  /** Keys handed to `index` with a live version, keys compaction cut down to one live version, and every key the machine held when `dropCold` was attached: candidates to drop from `records` (`dropCold`). */
  private droppable: string[] = [];
  /** How far `dropCold` got through `droppable` (it works in slices). */
  private droppableAt = 0;
  /** Whether `dropCold` runs (`attachIndex` option). */
  private dropColdKeys = false;
  /** Keys dropped from `records` by `dropCold`, or left out of it by `fromRecords` with `cold`, since the machine was made (for tests and metrics). */
  private droppedCount = 0;
  /** Built by `fromRecords` with `cold` keys: they are in no version list, so `attachIndex` must come (with `dropCold`) before any use, and serves at once. */
  private builtCold = false;
  /** Events of at most this many most recent revisions are kept for `eventsSince`. */
  readonly maxHistoryRevisions: number;
  /** Cap on accounted history bytes (see {@link eventBytes}). */
  readonly maxHistoryBytes: number;
  /** A client session idle (by entry timestamps) for longer than this is dropped. */
  readonly sessionTtlMs: number;
  /** Most client sessions kept (the least recently active is evicted beyond it). */
  readonly maxSessions: number;
  /** Most results kept per client session (the lowest seqs are forgotten beyond it). */
  readonly maxSessionResults: number;

  /** Creates an empty shard state (revision 0, applied index 0). */
  constructor(options: KvStateMachineOptions = {}) {
    this.maxHistoryRevisions = positiveLimit(
      options.maxHistoryRevisions,
      DEFAULT_MAX_HISTORY_REVISIONS,
      Number.MAX_SAFE_INTEGER,
      'maxHistoryRevisions',
    );
    this.maxHistoryBytes = positiveLimit(
      options.maxHistoryBytes,
      DEFAULT_MAX_HISTORY_BYTES,
      Number.MAX_SAFE_INTEGER,
      'maxHistoryBytes',
    );
    if (options.sessionTtlMs !== undefined) validateNonNegativeInt(options.sessionTtlMs, 'sessionTtlMs');
    this.sessionTtlMs = options.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS;
    this.maxSessions = positiveLimit(options.maxSessions, DEFAULT_MAX_SESSIONS, Number.MAX_SAFE_INTEGER, 'maxSessions');
    this.maxSessionResults = positiveLimit(options.maxSessionResults, DEFAULT_MAX_SESSION_RESULTS, Number.MAX_SAFE_INTEGER, 'maxSessionResults');
    this.sessions = new SessionTable(this.sessionLimits(), () => this.sink);
    this.revTimes.push(0);
  }

  private sessionLimits(): { ttlMs: number; maxSessions: number; maxResults: number } {
    return { ttlMs: this.sessionTtlMs, maxSessions: this.maxSessions, maxResults: this.maxSessionResults };
  }

  /** Number of client sessions kept. */
  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Client session `id` as kept (floor, activity, stored results), or undefined (for diagnostics and tests). */
  session(id: string): SessionRecord | undefined {
    return this.sessions.get(id);
  }

  /**
   * Attaches `sink` (or detaches, with undefined): from now on every change of the machine's
   * records is reported to it (see {@link StateSink}). Replaces any sink attached before.
   */
  observe(sink: StateSink | undefined): void {
    this.sink = sink;
  }

  /** The Raft index of the last applied command (0 before any). */
  get appliedIndex(): number {
    return this._appliedIndex;
  }

  /** The current revision (0 before any change). */
  get revision(): number {
    return this._revision;
  }

  /** The oldest revision readable with `get(..., {atRevision})` (0 until the first compaction). */
  get compactRevision(): number {
    return this._compactRevision;
  }

  /** The smallest `fromRevision` that `eventsSince` accepts. */
  get oldestHistoryRevision(): number {
    return this.history.length > 0 ? this.history.at(0)!.revision : this._revision + 1;
  }

  /** The shard's monotonic clock: the effective timestamp of the last applied command. */
  get lastTimestampMs(): number {
    return this._lastTimestampMs;
  }

  /** Number of live (not deleted) keys. */
  get keyCount(): number {
    return this.liveCount;
  }

  /**
   * The size of the heap index, for memory accounting (node/memory-budget.ts): keys held in
   * `records` (live, and deleted ones whose versions are still retained), writes since the
   * compaction point (each a retained version), of which `keylessWrites` are those of keys dropped
   * from `records` (`dropCold`: the write log keeps their revision only), the watch history's accounted bytes and the Bloom
   * filter of user keys (with `dropCold`; 0 without) and the reserved keys the live-key set holds
   * when it holds reserved keys only (with `dropCold`; 0 without, when every live key is there). O(1).
   */
  get indexSize(): {
    readonly keys: number;
    readonly writes: number;
    readonly keylessWrites: number;
    readonly historyBytes: number;
    readonly keyFilterBytes: number;
    readonly reservedLiveKeys: number;
  } {
    const reservedOnly = this.userKeyFilter !== undefined;
    return {
      keys: this.records.size,
      writes: this.writeLog.length,
      keylessWrites: this.writeLog.keylessEntries,
      historyBytes: this.historyBytes,
      keyFilterBytes: this.userKeyFilter?.bytes ?? 0,
      reservedLiveKeys: reservedOnly ? this.reservedLive : 0,
    };
  }

  /** Number of live keys users wrote: reserved keys (cursors, dead letters, descriptors: `/_...`, `/ext/`) not counted. */
  get userKeyCount(): number {
    return this.liveCount - this.reservedLive;
  }

  /** Number of reserved live keys (cursors, dead letters, descriptors, lease attachments). */
  get reservedKeyCount(): number {
    return this.reservedLive;
  }

  /**
   * Whether `list(prefix)` can answer from the heap: always, unless the live-key set holds reserved
   * keys only (`attachIndex` with `dropCold`); then only for prefixes inside the reserved keyspace
   * (every key they match is reserved). Other listings go to the durable records (`listPlan`).
   */
  listsFromHeap(prefix: string): boolean {
    return this.userKeyFilter === undefined || isReservedKey(prefix);
  }

  /** Whether the live-key set holds reserved keys only (user keys are listed from the records). */
  get liveSetReservedOnly(): boolean {
    return this.userKeyFilter !== undefined;
  }

  /**
   * Applies the committed command at Raft `index` with the leader's `timestampMs`.
   * Returns `skipped` (changing nothing) if `index <= appliedIndex`. A command that fails
   * validation is not thrown but returned as `rejected` (so a bad committed entry cannot wedge
   * the shard); only invalid `index`/`timestampMs` (host bugs) throw ValidationError.
   * `origin` is the proposer recorded with the command in the log (the host passes it; default
   * `system`, for trusted callers): a `client` command touching a reserved key (`/_...`, `/ext/`,
   * see `isReservedKey`) is `rejected` with PERMISSION_DENIED, identically on every replica.
   *
   * `session`, recorded with the command in the log, makes the write deduplicated: if the session
   * holds a result for its seq, that result is returned (`duplicate: true`) and nothing else
   * changes (no revision, no events); if the seq is below what the session remembers, it is
   * `rejected` with SESSION_EXPIRED (never applied); else the command applies and its result is
   * stored. Every applied entry first drops the sessions idle for longer than `sessionTtlMs` at its
   * timestamp. An invalid session is `rejected` with INVALID_ARGUMENT.
   *
   * `hops`, recorded with the command in the log, is how many extension lambda writes led to it
   * (0 for clients): every version and event the command writes carries it (`VersionRecord.hops`,
   * `KvEvent.hops`), so snapshots and durable records keep it with the data.
   */
  apply(index: number, timestampMs: number, command: Command, origin: CommandOrigin = 'system', session?: WriteSession, hops = 0): ApplyOutput {
    return this.applyWith(
      index,
      timestampMs,
      () => {
        validateCommand(command);
        return command;
      },
      origin,
      session,
      hops,
    );
  }

  /**
   * Like `apply`, for an encoded Raft entry: empty data is a noop (Raft's leader no-op entry);
   * undecodable data is returned as `rejected` with a MALFORMED_COMMAND error.
   */
  applyEntry(index: number, timestampMs: number, data: Uint8Array, origin: CommandOrigin = 'system', session?: WriteSession, hops = 0): ApplyOutput {
    return this.applyWith(
      index,
      timestampMs,
      () => (data instanceof Uint8Array && data.length === 0 ? { type: 'noop' } : decodeCommand(data)),
      origin,
      session,
      hops,
    );
  }

  private applyWith(index: number, timestampMs: number, getCommand: () => Command, origin: CommandOrigin, session: WriteSession | undefined, hops: number): ApplyOutput {
    if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 1) {
      throw new ValidationError('INVALID_NUMBER', `index must be a positive safe integer, got ${String(index)}`);
    }
    validateNonNegativeInt(timestampMs, 'timestampMs');
    if (!Number.isInteger(hops) || hops < 0 || hops > MAX_HOP_COUNT) {
      throw new ValidationError('INVALID_NUMBER', `hop count must be an integer in [0, ${MAX_HOP_COUNT}], got ${String(hops)}`);
    }
    if (index <= this._appliedIndex) {
      return {
        applied: false,
        result: { type: 'skipped', appliedIndex: this._appliedIndex, revision: this._revision },
        events: NO_EVENTS,
      };
    }
    this._appliedIndex = index;
    if (timestampMs > this._lastTimestampMs) this._lastTimestampMs = timestampMs;
    const ts = this._lastTimestampMs;
    this.sessions.expire(ts);
    if (session === undefined) return this.applyCommand(ts, getCommand, origin, hops);
    let decision: SessionDecision;
    try {
      decision = this.sessions.begin(validateWriteSession(session), index, ts);
    } catch (e) {
      if (!(e instanceof ValidationError)) throw e;
      return this.done({ type: 'rejected', error: e, revision: this._revision, timestampMs: ts });
    }
    if (decision.kind === 'duplicate') return { applied: true, result: decision.result, events: NO_EVENTS, duplicate: true };
    if (decision.kind === 'expired') return this.done({ type: 'rejected', error: decision.error, revision: this._revision, timestampMs: ts });
    const out = this.applyCommand(ts, getCommand, origin, hops);
    if (isStoredResult(out.result)) this.sessions.store(decision.session, session.seq, out.result as SessionResult);
    return out;
  }

  private applyCommand(ts: number, getCommand: () => Command, origin: CommandOrigin, hops: number): ApplyOutput {
    let cmd: Command;
    try {
      cmd = getCommand();
    } catch (e) {
      if (!(e instanceof ValidationError)) throw e;
      return { applied: true, result: { type: 'rejected', error: e, revision: this._revision, timestampMs: ts }, events: NO_EVENTS };
    }
    const refused = (origin === 'client' ? reservedError(cmd) : undefined) ?? this.ownershipError(cmd);
    if (refused) return this.done({ type: 'rejected', error: refused, revision: this._revision, timestampMs: ts });
    switch (cmd.type) {
      case 'put':
        return this.applyPut(cmd, ts, hops);
      case 'delete':
        return this.applyDelete(cmd, ts, hops);
      case 'txn':
        return this.applyTxn(cmd, ts, hops);
      case 'revokeLeaseKeys':
        return this.applyRevokeLeaseKeys(cmd, ts, hops);
      case 'triggerPut': {
        const revision = this.bump(ts);
        const events: KvEvent[] = [withHops<KvEvent>({ type: 'trigger', key: cmd.key, value: cmd.value, revision, timestampMs: ts }, hops)];
        this.record(events);
        return { applied: true, result: { type: 'trigger', revision, timestampMs: ts }, events };
      }
      case 'noop':
        return this.done({ type: 'noop', revision: this._revision, timestampMs: ts });
      case 'compact': {
        if (cmd.revision > this._revision) {
          const error = new ValidationError('FUTURE_REVISION', `cannot compact to revision ${cmd.revision} > current ${this._revision}`);
          return this.done({ type: 'rejected', error, revision: this._revision, timestampMs: ts });
        }
        this.compactTo(cmd.revision);
        return this.done({ type: 'compact', compactRevision: this._compactRevision, revision: this._revision, timestampMs: ts });
      }
    }
  }

  /**
   * The shard's descriptor: which keys it owns (see sharding/routing.ts). Stored as the value of
   * {@link SHARD_DESCRIPTOR_KEY}, written through the log like any key, so ownership changes are
   * ordered with the writes they fence. Undefined until the first descriptor is written; until
   * then the shard accepts every key (a single-shard or not yet configured group).
   */
  get descriptor(): ShardDescriptor | undefined {
    // Looked up on every apply: with an index source, the machine remembers the head it read (only its own writes change it).
    if (this.indexReady && this.descriptorHead === undefined) this.descriptorHead = { v: this.latestLive(SHARD_DESCRIPTOR_KEY) };
    const rec = this.indexReady ? this.descriptorHead!.v : this.latestLive(SHARD_DESCRIPTOR_KEY);
    if (!rec) return undefined;
    if (this.descriptorCache?.version === rec.revision) return this.descriptorCache.descriptor;
    try {
      const descriptor = decodeDescriptor(new TextDecoder().decode(this.valueOf(SHARD_DESCRIPTOR_KEY, rec)));
      this.descriptorCache = { version: rec.revision, descriptor };
      return descriptor;
    } catch {
      return undefined; // never stored: descriptor writes are validated before they apply
    }
  }

  /** Whether this shard owns `key` (always, without a descriptor). */
  owns(key: string): boolean {
    const d = this.descriptor;
    return d === undefined || ownsKey(d, key);
  }

  /** Why `cmd` may not apply here: a key outside the descriptor, or a malformed or stale descriptor write. */
  private ownershipError(cmd: Command): ValidationError | undefined {
    for (const key of commandKeys(cmd)) {
      if (key === SHARD_DESCRIPTOR_KEY) {
        if (cmd.type !== 'put') return new ValidationError('INVALID_DESCRIPTOR', 'the shard descriptor is only written by a plain put');
        let next: ShardDescriptor;
        try {
          next = decodeDescriptor(new TextDecoder().decode(cmd.value));
        } catch (e) {
          return new ValidationError('INVALID_DESCRIPTOR', `malformed shard descriptor: ${(e as Error).message}`);
        }
        const cur = this.descriptor;
        if (cur && next.epoch < cur.epoch) {
          return new ValidationError('INVALID_DESCRIPTOR', `descriptor epoch ${next.epoch} is older than ${cur.epoch}`);
        }
        continue;
      }
      if (!this.owns(key)) {
        const d = this.descriptor!;
        return new ValidationError('WRONG_SHARD', `key ${JSON.stringify(key)} is not owned by shard ${d.group} (map epoch ${d.epoch})`);
      }
    }
    return undefined;
  }

  private done(result: CommandResult): ApplyOutput {
    return { applied: true, result, events: NO_EVENTS };
  }

  private applyPut(cmd: PutCommand, ts: number, hops: number): ApplyOutput {
    // A plain put (no condition, no previous value asked for) does not depend on the key's current
    // version: it skips the look-up (on a node, a hot-index cache probe or engine reads per put on
    // every replica). `write` finds what it needs in `records`; the outcome is the same either way.
    if (cmd.expectedVersion === undefined && cmd.returnPrevious !== true) return this.putVersion(cmd, ts, hops, undefined);
    const cur = this.latestLive(cmd.key);
    const curVersion = cur?.revision ?? 0;
    if (cmd.expectedVersion !== undefined && cmd.expectedVersion !== curVersion) {
      const withValue = (cmd.returnPrevious === true || cmd.currentOnConflict === true) && cur !== undefined;
      const current = withValue ? { version: curVersion, value: this.valueOf(cmd.key, cur) } : { version: curVersion };
      return this.done({ type: 'put', succeeded: false, revision: this._revision, version: curVersion, timestampMs: ts, current });
    }
    return this.putVersion(cmd, ts, hops, cmd.returnPrevious && cur ? { version: curVersion, value: this.valueOf(cmd.key, cur) } : undefined);
  }

  /** Writes `cmd`'s value as a new revision (the put's condition, if any, held); `previous` is the value replaced, when the put asked for it. */
  private putVersion(cmd: PutCommand, ts: number, hops: number, previous: { readonly version: number; readonly value: Uint8Array } | undefined): ApplyOutput {
    const revision = this.bump(ts);
    this.write(cmd.key, cmd.value, revision, ts, hops);
    const events: KvEvent[] = [withHops<KvEvent>({ type: 'put', key: cmd.key, value: cmd.value, revision, timestampMs: ts }, hops)];
    this.record(events);
    const result =
      previous !== undefined
        ? ({ type: 'put', succeeded: true, revision, version: revision, timestampMs: ts, previous } as const)
        : ({ type: 'put', succeeded: true, revision, version: revision, timestampMs: ts } as const);
    return { applied: true, result, events };
  }

  private applyDelete(cmd: DeleteCommand, ts: number, hops: number): ApplyOutput {
    const cur = this.latestLive(cmd.key);
    const curVersion = cur?.revision ?? 0;
    if (cmd.expectedVersion !== undefined && cmd.expectedVersion !== curVersion) {
      return this.done({
        type: 'delete',
        succeeded: false,
        revision: this._revision,
        timestampMs: ts,
        deleted: false,
        current: { version: curVersion },
      });
    }
    if (!cur) return this.done({ type: 'delete', succeeded: true, revision: this._revision, timestampMs: ts, deleted: false });
    const revision = this.bump(ts);
    this.write(cmd.key, null, revision, ts, hops);
    const events: KvEvent[] = [withHops<KvEvent>({ type: 'delete', key: cmd.key, revision, timestampMs: ts }, hops)];
    this.record(events);
    return { applied: true, result: { type: 'delete', succeeded: true, revision, timestampMs: ts, deleted: true }, events };
  }

  private applyTxn(cmd: TxnCommand, ts: number, hops: number): ApplyOutput {
    const failedCompares: number[] = [];
    cmd.compares.forEach((c, i) => {
      if ((this.latestLive(c.key)?.revision ?? 0) !== c.version) failedCompares.push(i);
    });
    if (failedCompares.length > 0) {
      return this.done({ type: 'txn', succeeded: false, revision: this._revision, timestampMs: ts, failedCompares });
    }
    // Keys are unique within a txn, so "live before the txn" is "live at the time of the write".
    const effective = cmd.writes.filter((w) => w.type === 'put' || this.latestLive(w.key) !== undefined);
    if (effective.length === 0) {
      return this.done({ type: 'txn', succeeded: true, revision: this._revision, timestampMs: ts, failedCompares });
    }
    const revision = this.bump(ts);
    const events: KvEvent[] = effective.map((w) => {
      if (w.type === 'put') {
        this.write(w.key, w.value, revision, ts, hops);
        return withHops<KvEvent>({ type: 'put', key: w.key, value: w.value, revision, timestampMs: ts }, hops);
      }
      this.write(w.key, null, revision, ts, hops);
      return withHops<KvEvent>({ type: 'delete', key: w.key, revision, timestampMs: ts }, hops);
    });
    this.record(events);
    return { applied: true, result: { type: 'txn', succeeded: true, revision, timestampMs: ts, failedCompares }, events };
  }

  /**
   * Ends a lease in this shard at one revision (see RevokeLeaseKeysCommand): the attachments under
   * the lease's prefix, in key order and at most MAX_LEASE_REVOKE_ATTACHMENTS, are all deleted, and
   * each attached key still at the attachment's version (both were written at one revision) is
   * deleted with them. Keys that are reserved or not owned here are never deleted. Deterministic:
   * it reads only this replica's state, which is the same on every replica at this index.
   */
  private applyRevokeLeaseKeys(cmd: RevokeLeaseKeysCommand, ts: number, hops: number): ApplyOutput {
    const prefix = leaseAttachmentPrefix(cmd.lease);
    const attachments: string[] = [];
    let more = false;
    for (const key of this.live.from(prefix)) {
      if (!key.startsWith(prefix)) break;
      if (attachments.length === MAX_LEASE_REVOKE_ATTACHMENTS) {
        more = true;
        break;
      }
      attachments.push(key);
    }
    if (attachments.length === 0) {
      return this.done({ type: 'revokeLeaseKeys', revision: this._revision, timestampMs: ts, deletedKeys: 0, deletedAttachments: 0, more: false });
    }
    const keys: string[] = [];
    for (const a of attachments) {
      const key = a.slice(prefix.length);
      if (key.length === 0 || isReservedKey(key) || !this.owns(key)) continue;
      const cur = this.latestLive(key);
      if (cur !== undefined && cur.revision === this.latestLive(a)!.revision) keys.push(key);
    }
    const revision = this.bump(ts);
    const events: KvEvent[] = [];
    for (const key of [...keys, ...attachments]) {
      this.write(key, null, revision, ts, hops);
      events.push(withHops<KvEvent>({ type: 'delete', key, revision, timestampMs: ts }, hops));
    }
    this.record(events);
    return {
      applied: true,
      result: { type: 'revokeLeaseKeys', revision, timestampMs: ts, deletedKeys: keys.length, deletedAttachments: attachments.length, more },
      events,
    };
  }

  private latestLive(key: string): VersionRecord | undefined {
    const last = this.latestVersion(key);
    return last && last.value !== null ? last : undefined;
  }

  /** The newest version of `key` as `records` hold it, or read back when the key was dropped from the heap (`dropCold`). */
  private newest(key: string): VersionRecord | undefined {
    const recs = this.records.get(key);
    return recs !== undefined ? recs[recs.length - 1] : this.indexReady ? this.latestVersion(key) : undefined;
  }

  /** The newest version of `key` (from the index source, a tombstone may read as undefined): from the overlay and the index source once attached and ready, else from `records`. */
  private latestVersion(key: string): VersionRecord | undefined {
    // A key not in `live` has no live version (absent, or a tombstone: both read as absent), so a
    // cache miss for it costs no storage read (every new key's first write is such a lookup).
    if (this.indexReady) return this.unindexed.get(key) ?? this.index!.latest(key, () => this.mayBeLive(key));
    const recs = this.records.get(key);
    return recs?.[recs.length - 1];
  }

  /** False when `key` has no live version for sure (exact for reserved keys; the Bloom filter's answer for user keys once `live` holds reserved keys only). */
  private mayBeLive(key: string): boolean {
    const filter = this.userKeyFilter;
    return filter === undefined || isReservedKey(key) ? this.live.has(key) : filter.mayContain(key);
  }

  private bump(ts: number): number {
    this._revision++;
    this.revTimes.push(ts);
    return this._revision;
  }

  private write(key: string, value: Uint8Array | null, revision: number, ts: number, hops: number): void {
    let recs = this.records.get(key);
    if (recs === undefined) {
      // A key dropped from the heap (`dropCold`) has one live version, read back as its head; else the key is new.
      const head = this.indexReady ? this.latestVersion(key) : undefined;
      recs = head !== undefined && head.value !== null ? [head] : [];
      this.records.set(key, recs);
    }
    const wasLive = recs.length > 0 && recs[recs.length - 1]!.value !== null;
    const wasDeleted = recs.length > 0 && !wasLive; // tombstoned keys are never dropped from `records`
    const version = withHops<VersionRecord>({ revision, timestampMs: ts, value }, hops);
    recs.push(version);
    this.writeLog.push(revision, key);
    if (this.index !== undefined) {
      this.unindexed.set(key, version);
      this.unindexedLog.push({ revision, key });
      if (key === SHARD_DESCRIPTOR_KEY) this.descriptorHead = undefined;
    }
    this.sink?.versionAdded(key, version, wasDeleted);
    if (value !== null && this.values !== undefined) this.resident.push({ revision, key });
    if (value !== null && !wasLive) {
      this.liveCount++;
      const reserved = isReservedKey(key);
      if (reserved) this.reservedLive++;
      if (reserved || this.userKeyFilter === undefined) this.live.add(key);
      else this.userKeyFilter.add(key);
    } else if (value === null && wasLive) {
      this.liveCount--;
      const reserved = isReservedKey(key);
      if (reserved) this.reservedLive--;
      if (reserved || this.userKeyFilter === undefined) this.live.delete(key);
    }
  }

  /** Appends one revision's events to the history and trims it to the limits. */
  private record(events: readonly KvEvent[]): void {
    for (const e of events) {
      this.history.push(e);
      this.historyBytes += eventBytes(e);
    }
    this.sink?.revisionAdded(this._revision, events[0]!.timestampMs, events);
    for (;;) {
      const oldest = this.history.at(0)!.revision;
      const tooMany = this._revision - oldest + 1 > this.maxHistoryRevisions;
      const tooBig = this.historyBytes > this.maxHistoryBytes && oldest < this._revision;
      if (!tooMany && !tooBig) break;
      this.dropHistoryBefore(oldest + 1);
      this.sink?.historyTrimmed(oldest);
    }
  }

  private dropHistoryBefore(revision: number): void {
    let n = 0;
    for (let e = this.history.at(0); e !== undefined && e.revision < revision; e = this.history.at(++n)) {
      this.historyBytes -= eventBytes(e);
    }
    this.history.dropFront(n);
  }

  /**
   * Compacts so that `revision` becomes the oldest readable revision: for each key, versions older
   * than its newest version at or before `revision` are dropped (and that version too if it is a
   * tombstone), keys left with no versions are forgotten, and history before `revision` is dropped.
   * Reads at `revision` and later are unchanged. A revision <= compactRevision is a no-op. Returns
   * the new compaction point. Throws ValidationError FUTURE_REVISION if `revision > this.revision`.
   * Cost: O(versions dropped). To keep replicas identical, prefer proposing a `compact` command.
   */
  compact(revision: number): number {
    validateNonNegativeInt(revision, 'compact revision');
    if (revision > this._revision) {
      throw new ValidationError('FUTURE_REVISION', `cannot compact to revision ${revision} > current ${this._revision}`);
    }
    this.compactTo(revision);
    return this._compactRevision;
  }

  private compactTo(c: number): void {
    if (c <= this._compactRevision) return;
    const touched = new Set<string>();
    let n = 0;
    const log = this.writeLog;
    for (const end = log.firstAfter(c); n < end; n++) {
      const key = log.keyAt(n);
      if (key !== undefined) touched.add(key); // keyless: a key dropped from the heap (`dropCold`), one live version, nothing to drop
    }
    log.dropFront(n);
    for (const key of touched) {
      const recs = this.records.get(key);
      if (recs === undefined) continue; // dropped from the heap (`dropCold`): one live version, nothing to drop
      let j = 0; // number of versions at or before c (>= 1: the key was written in (old, c])
      while (j < recs.length && recs[j]!.revision <= c) j++;
      const drop = recs[j - 1]!.value === null ? j : j - 1;
      if (drop > 0 && this.sink) {
        const revisions: number[] = [];
        for (let i = 0; i < drop; i++) revisions.push(recs[i]!.revision);
        this.sink.versionsDropped(key, revisions, drop === recs.length);
      }
      if (drop === recs.length) this.records.delete(key);
      else if (drop > 0) {
        recs.splice(0, drop);
        // Cut down to one live version: a candidate to leave the heap again (`dropCold` drops it
        // once that version is durable and released; its handover to the index may be long past).
        if (this.dropColdKeys && recs.length === 1 && recs[0]!.value !== null) this.droppable.push(key);
      }
    }
    this.sink?.revisionsCompacted(this._compactRevision, c);
    this.revTimes.dropFront(c - this._compactRevision);
    this._compactRevision = c;
    this.dropHistoryBefore(c);
  }

  /**
   * The newest revision whose timestamp is <= `timeMs` (0 if none and nothing was compacted).
   * Throws CompactedRevisionError when that revision is older than the compaction point.
   */
  revisionAtTime(timeMs: number): number {
    if (typeof timeMs !== 'number' || !Number.isSafeInteger(timeMs)) {
      throw new ValidationError('INVALID_ARGUMENT', `time must be a safe integer, got ${String(timeMs)}`);
    }
    const i = this.revTimes.firstGreater(timeMs) - 1;
    if (i >= 0) return this._compactRevision + i;
    if (this._compactRevision === 0) return 0;
    throw new CompactedRevisionError({ timeMs }, this._compactRevision);
  }

  /**
   * The revision to pass to `compact` (or a `compact` command) to enforce a retention window: the
   * newest revision with timestamp <= `nowMs - retentionMs`, so reads at any time within the window
   * stay possible. Returns the current compaction point when nothing is old enough.
   */
  retentionCompactRevision(nowMs: number, retentionMs: number): number {
    validateNonNegativeInt(nowMs, 'nowMs');
    validateNonNegativeInt(retentionMs, 'retentionMs');
    const cutoff = nowMs - retentionMs;
    const i = this.revTimes.firstGreater(cutoff) - 1;
    return i >= 0 ? this._compactRevision + i : this._compactRevision;
  }

  /**
   * The highest revision a compaction can move to while dropping the versions of at most
   * `maxWrites` writes (those in (compactRevision, r]) — but at least the first retained write's
   * revision, so a step always progresses whatever one revision (a large txn) holds; the current
   * revision when fewer writes are retained. Bounds a compaction step's `apply` by writes, not
   * revisions (a revision of a txn carries up to 128 writes). O(1).
   */
  compactRevisionWithin(maxWrites: number): number {
    validateNonNegativeInt(maxWrites, 'maxWrites');
    const over = this.writeLog.revisionAt(maxWrites);
    if (over === undefined) return this._revision;
    return Math.max(this.writeLog.revisionAt(0)!, over - 1);
  }

  private readRevision(options: GetOptions | undefined): number {
    if (options === undefined) return this._revision;
    if (typeof options !== 'object' || options === null) {
      throw new ValidationError('INVALID_ARGUMENT', 'read options must be an object');
    }
    const { atRevision, atTimeMs } = options;
    if (atRevision !== undefined && atTimeMs !== undefined) {
      throw new ValidationError('INVALID_ARGUMENT', 'give at most one of atRevision and atTimeMs');
    }
    if (atTimeMs !== undefined) return this.revisionAtTime(atTimeMs);
    if (atRevision === undefined) return this._revision;
    validateNonNegativeInt(atRevision, 'atRevision');
    if (atRevision > this._revision) {
      throw new ValidationError('FUTURE_REVISION', `revision ${atRevision} is newer than current ${this._revision}`);
    }
    if (atRevision < this._compactRevision) throw new CompactedRevisionError({ revision: atRevision }, this._compactRevision);
    return atRevision;
  }

  /**
   * Reads `key` as of the latest revision, a given revision, or a given time (the newest revision
   * with timestamp <= atTimeMs; times after the last write read the latest state). Returns
   * undefined when the key is absent or deleted at that point. Throws CompactedRevisionError for
   * points before the compaction point and ValidationError for invalid arguments or future revisions.
   * O(1) for latest reads, O(log versions) otherwise.
   */
  get(key: string, options?: GetOptions): GetResult | undefined {
    validateKey(key);
    const at = this.readRevision(options);
    if (at === this._revision && this.indexReady) {
      const v = this.latestVersion(key);
      return v === undefined || v.value === null ? undefined : { value: this.valueOf(key, v), version: v.revision, timestampMs: v.timestampMs };
    }
    const recs = this.records.get(key);
    if (recs === undefined) {
      // Dropped from the heap (`dropCold`): one live version, readable at and after its revision.
      const head = this.indexReady ? this.latestVersion(key) : undefined;
      return head === undefined || head.value === null || head.revision > at ? undefined : { value: this.valueOf(key, head), version: head.revision, timestampMs: head.timestampMs };
    }
    let v: VersionRecord | undefined = recs[recs.length - 1];
    if (v!.revision > at) {
      let lo = 0;
      let hi = recs.length; // first index with revision > at
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (recs[mid]!.revision <= at) lo = mid + 1;
        else hi = mid;
      }
      v = lo > 0 ? recs[lo - 1] : undefined;
    }
    if (v === undefined || v.value === null) return undefined;
    return { value: this.valueOf(key, v), version: v.revision, timestampMs: v.timestampMs };
  }

  /**
   * Lists live keys starting with `prefix` (may be empty) in key order (UTF-8 byte order), at the
   * latest revision, one page at a time. `after` is an exclusive start key; `nextAfter` is set when
   * more keys remain. Pages never skip or repeat a key that exists throughout the pagination.
   * O(log n + limit). Throws (a caller's bug) when the prefix is not `listsFromHeap`.
   */
  list(prefix: string, options: ListOptions = {}): ListResult {
    validatePrefix(prefix);
    if (!this.listsFromHeap(prefix)) {
      throw new Error(`listing ${JSON.stringify(prefix)}: the heap holds reserved keys only (dropCold); list user keys from the records (listPlan)`);
    }
    const limit = positiveLimit(options.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, 'limit');
    const { after, keysOnly = false } = options;
    if (after !== undefined) validatePrefix(after, 'after');
    // Keys with the prefix are contiguous in byte order: seek to the start, walk while it matches.
    const cursor =
      after !== undefined && compareKeys(after, prefix) >= 0 ? this.live.from(after, true) : this.live.from(prefix);
    const items: ListItem[] = [];
    let more = false;
    for (const key of cursor) {
      if (!key.startsWith(prefix)) break;
      if (items.length === limit) {
        more = true;
        break;
      }
      const v = this.newest(key)!;
      items.push(
        keysOnly
          ? { key, version: v.revision, timestampMs: v.timestampMs }
          : { key, value: this.valueOf(key, v), version: v.revision, timestampMs: v.timestampMs },
      );
    }
    return more ? { items, nextAfter: items[items.length - 1]!.key, revision: this._revision } : { items, revision: this._revision };
  }

  /**
   * What a listing served from the durable records needs from the machine (issue 17; the storage
   * side is `listFromRecords` in storage/state-store.ts): the validated options, the revision and
   * applied index now, and the *overlay*, every key under the listing's range with a version
   * written after `sinceRevision` (writes the records may not hold yet), with its latest version
   * now, in key order. The records at any revision in [sinceRevision, revision] with the overlay on
   * top are exactly this machine's keys now. Undefined when the machine cannot name those keys
   * (`sinceRevision` before the compaction point or after the current revision, or before the
   * write of a key `dropCold` dropped: its write-log entry is keyless). Throws
   * ValidationError for invalid arguments, as `list` does. O(log w + writes since + o log o).
   */
  listPlan(prefix: string, options: ListOptions, sinceRevision: number): ListPlan | undefined {
    validatePrefix(prefix);
    const limit = positiveLimit(options.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, 'limit');
    const { after, keysOnly = false } = options;
    if (after !== undefined) validatePrefix(after, 'after');
    if (sinceRevision < this._compactRevision || sinceRevision > this._revision) return undefined;
    const start = after !== undefined && compareKeys(after, prefix) >= 0 ? after : undefined;
    const keys = new Set<string>();
    for (let i = this.writeLog.firstAfter(sinceRevision); i < this.writeLog.length; i++) {
      const key = this.writeLog.keyAt(i);
      // Keyless: a key dropped from the heap at that revision (`dropCold`); only a released, so
      // durable, write is dropped, which a caller's durable point normally covers. Cannot name it.
      if (key === undefined) return undefined;
      if (key.startsWith(prefix) && (start === undefined || compareKeys(key, start) > 0)) keys.add(key);
    }
    const overlay: Array<readonly [string, VersionRecord]> = [];
    for (const key of [...keys].sort(compareKeys)) overlay.push([key, this.newest(key)!]);
    return {
      prefix,
      ...(start !== undefined ? { after: start } : {}),
      limit,
      keysOnly,
      revision: this._revision,
      appliedIndex: this._appliedIndex,
      sinceRevision,
      overlay,
    };
  }

  /**
   * Events with revision >= `fromRevision` whose key starts with `prefix`, oldest first, for a
   * resumable watch: pass the returned `nextRevision` to continue. `limit` is soft: a revision's
   * events are never split (the first revision is returned whole even if larger than `limit`).
   * Throws CompactedRevisionError (with `oldestHistoryRevision`) when `fromRevision` is older than
   * the retained history. O(log h + events scanned).
   */
  eventsSince(fromRevision: number, prefix = '', limit: number = DEFAULT_EVENTS_LIMIT): EventsPage {
    if (typeof fromRevision !== 'number' || !Number.isSafeInteger(fromRevision) || fromRevision < 1) {
      throw new ValidationError('INVALID_ARGUMENT', `fromRevision must be a positive safe integer, got ${String(fromRevision)}`);
    }
    validatePrefix(prefix);
    const max = positiveLimit(limit, DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT, 'limit');
    const oldest = this.oldestHistoryRevision;
    if (fromRevision < oldest) throw new CompactedRevisionError({ revision: fromRevision }, oldest, 'watch history');
    const events: KvEvent[] = [];
    let i = this.history.firstIndexWhere((e) => e.revision >= fromRevision);
    while (i < this.history.length) {
      const rev = this.history.at(i)!.revision;
      const group: KvEvent[] = [];
      for (let e = this.history.at(i); e !== undefined && e.revision === rev; e = this.history.at(++i)) {
        if (e.key.startsWith(prefix)) group.push(e);
      }
      if (group.length === 0) continue;
      if (events.length > 0 && events.length + group.length > max) {
        return { events, nextRevision: rev, more: true, revision: this._revision };
      }
      for (const e of group) events.push(e);
    }
    return { events, nextRevision: Math.max(fromRevision, this._revision + 1), more: false, revision: this._revision };
  }

  /**
   * The lambda hop count of the write that produced `revision` (0 for client and system writes),
   * read from its events in the watch history; undefined when the history no longer (or does not
   * yet) hold that revision. O(log h).
   */
  hopsAt(revision: number): number | undefined {
    const e = this.history.at(this.history.firstIndexWhere((x) => x.revision >= revision));
    return e !== undefined && e.revision === revision ? (e.hops ?? 0) : undefined;
  }

  /**
   * Encodes all retained state (see snapshot-codec.ts for the format). Deterministic: replicas with
   * the same applied log produce identical bytes. O(state size + d log d) for d keys whose latest
   * version is a tombstone (live keys are already ordered).
   */
  snapshot(): Uint8Array {
    const d = this.toRecords();
    if (this.values === undefined) return encodeSnapshot(d);
    // Released values are read back from the source (this copy of the state is whole, in the heap).
    const keys = d.keys.map(([k, versions]) => [k, versions.map((v) => (v.value === VALUE_ON_DISK ? { ...v, value: this.valueOf(k, v) } : v))] as const);
    return encodeSnapshot({ ...d, keys });
  }

  /**
   * Attaches the store of this machine's values (see value-source.ts): from now on a value leaves
   * the heap when {@link releaseValues} is told that the store holds it, and reads of it go to the
   * source. Every value in the heap now, and every value written later, is released that way. Call
   * once, before the first `releaseValues`. History events keep their values (the watch history is
   * bounded by `maxHistoryBytes`); those, and stored session results' values, that are views into a
   * larger buffer (a decoded snapshot) are copied, so they do not keep that buffer alive.
   */
  attachValues(source: ValueSource): void {
    if (this.values !== undefined) throw new Error('a value source is already attached');
    this.values = source;
    // Order does not matter for safety: an entry is released only by a revision at or above its own.
    for (const [key, recs] of this.records) {
      for (const v of recs) if (v.value !== null && v.value !== VALUE_ON_DISK) this.resident.push({ revision: v.revision, key });
    }
    // Stored session results holding a value (returnPrevious) that is a view: copied likewise.
    const shared = (v: Uint8Array | undefined): boolean => v !== undefined && v.byteLength < v.buffer.byteLength;
    const sessions = this.sessions.toRecords();
    const sharesBuffer = (r: SessionResult): boolean => r.type === 'put' && (shared(r.previous?.value) || shared(r.current?.value));
    if (sessions.some((x) => x.results.some(([, r]) => sharesBuffer(r)))) {
      const own = (v: VersionedValue | undefined): VersionedValue | undefined => (v && shared(v.value) ? { ...v, value: v.value!.slice() } : v);
      const copied = sessions.map((x) => ({
        ...x,
        results: x.results.map(([seq, r]) => {
          if (r.type !== 'put' || !sharesBuffer(r)) return [seq, r] as const;
          const previous = own(r.previous);
          const current = own(r.current);
          return [seq, { ...r, ...(previous ? { previous } : {}), ...(current ? { current } : {}) }] as const;
        }),
      }));
      this.sessions = SessionTable.fromRecords(this.sessionLimits(), () => this.sink, copied);
    }
    const events = this.history.toArray();
    if (events.some((e) => e.value !== undefined && e.value.byteLength < e.value.buffer.byteLength)) {
      this.history.dropFront(events.length);
      for (const e of events) this.history.push(e.value !== undefined && e.value.byteLength < e.value.buffer.byteLength ? { ...e, value: e.value.slice() } : e);
    }
  }

  /**
   * Drops from the heap the values of versions at or before `upToRevision` that are still there
   * (the attached source must hold them durably: on a node, once the records written with those
   * versions are on disk), offering each to the source's cache, after handing the index overlay's
   * durable entries to the index source. Walks at most `maxCount` entries of the two in all (a
   * round of N keys is N overlay entries and N values), so a caller can spread a large round over
   * event-loop turns; returns true when more remain at or before `upToRevision`, or, with
   * `dropCold`, keys remain to be looked at for dropping (at most `maxCount` per call): call again.
   * A no-op without a source. Reads are unchanged (values are read back from the source, latest
   * versions from the overlay until handed over, then from the index source).
   */
  releaseValues(upToRevision: number, maxCount = Number.MAX_SAFE_INTEGER): boolean {
    const source = this.values;
    if (source === undefined) return false;
    const indexed = this.releaseIndex(upToRevision, maxCount);
    if ((this.unindexedLog.at(0)?.revision ?? Infinity) <= upToRevision) return true; // the overlay first
    const budget = maxCount - indexed;
    let n = 0;
    for (;;) {
      const e = this.resident.at(n);
      if (e === undefined || e.revision > upToRevision) break;
      if (n === budget) {
        this.resident.dropFront(n);
        return true;
      }
      n++;
      const recs = this.records.get(e.key);
      if (recs === undefined) continue; // compacted away
      const i = versionIndex(recs, e.revision);
      const v = i < 0 ? undefined : recs[i]!;
      if (v === undefined || v.value === null || v.value === VALUE_ON_DISK) continue;
      recs[i] = { ...v, value: VALUE_ON_DISK }; // its other fields (hops) stay
      source.released(e.key, v.revision, v.value);
    }
    this.resident.dropFront(n);
    return this.dropCold(maxCount);
  }

  /**
   * Drops from `records` the keys handed to the index source whose only retained version is live
   * and durable (its value released): such a key reads the same from its head (at and after its
   * revision, the version; before, nothing), compaction has nothing to drop of it, and a write
   * reads the head back as its first version (`write`). What stays in the heap for it: its share
   * of the Bloom filter (a reserved key: its entry in `live`) and, until compacted, a keyless
   * `writeLog` entry (its revision; the key string is let go) (issue 17, step 3 in part). Looks at most
   * `max` candidates; returns true when some remain (call again).
   */
  private dropCold(max: number): boolean {
    if (!this.indexReady || this.droppable.length === 0) return false;
    const end = Math.min(this.droppable.length, this.droppableAt + max);
    for (let i = this.droppableAt; i < end; i++) {
      const key = this.droppable[i]!;
      if (this.unindexed.has(key)) continue; // written again since
      const recs = this.records.get(key);
      if (recs !== undefined && recs.length === 1 && recs[0]!.value === VALUE_ON_DISK) {
        this.records.delete(key);
        this.writeLog.forget(recs[0]!.revision, key); // compaction has nothing to drop of it: the entry keeps its revision only
        this.droppedCount++;
      }
    }
    if (end < this.droppable.length) {
      this.droppableAt = end;
      return true;
    }
    this.droppable = [];
    this.droppableAt = 0;
    return false;
  }

  /** Number of keys dropped from the heap's version lists since the machine was made, counting the cold keys it was built with (`fromRecords` option `cold`); their latest version is read from the index source. */
  get droppedKeys(): number {
    return this.droppedCount;
  }

  /**
   * Serves latest-version lookups (`apply`'s current versions for conditional puts, txn compares,
   * `returnPrevious` and deletes; latest `get`s; the descriptor) from `source` (issue 17: the key
   * index from the engine) instead of `records`, once the records of the machine as it is now are
   * durable: the first `releaseValues` at or past the current revision switches over (until then,
   * and without a source, `records` answer). Keys written since the last durable point are answered
   * from the machine's overlay, handed to the source (`IndexSource.durable`) as `releaseValues`
   * passes them. Needs a value source attached first (heads read from the source carry no value).
   * Call once. Answers are the same either way: the records hold what `records` hold.
   *
   * With `dropCold`, keys whose only retained version is live and durable also leave `records`
   * (see `dropCold`): the heap then holds, per such key, a keyless `writeLog` entry until compacted. The
   * keys the machine holds when attached (a restart's or an install's whole state) are candidates
   * too: they leave once the index serves (sliced by `releaseValues`' `maxCount`). And the live-key
   * set keeps reserved keys only (user keys go to a Bloom filter for the "never live" test, O(user
   * keys) once here): `list` then answers reserved prefixes only (`listsFromHeap`), user keys are
   * listed from the records (`listPlan`), and `toRecords()`/`snapshot()` throw (a node's install
   * diffs against the engine's records and lagging followers get `encodeSnapshotFromRecords`).
   */
  attachIndex(source: IndexSource, options: { readonly dropCold?: boolean } = {}): void {
    if (this.values === undefined) throw new Error('attach a value source before an index source');
    if (this.index !== undefined) throw new Error('an index source is already attached');
    if (this.builtCold && options.dropCold !== true) throw new Error('a machine built with cold keys (fromRecords with cold) needs attachIndex with dropCold');
    this.index = source;
    this.dropColdKeys = options.dropCold === true;
    this.indexFrom = this._revision;
    if (!this.dropColdKeys) return;
    for (const key of this.records.keys()) this.droppable.push(key);
    if (this.builtCold) {
      // Its cold keys were read from durable records at this revision: the index serves them now,
      // and `live` already holds reserved keys only (user keys are in the filter).
      this.indexReady = true;
      return;
    }
    // From now on `live` holds reserved keys only; the user keys live now go to the filter.
    const filter = new KeyFilter();
    const reserved: string[] = [];
    for (const key of this.live.toArray()) {
      if (isReservedKey(key)) reserved.push(key);
      else filter.add(key);
    }
    this.live = SortedKeySet.fromSorted(reserved);
    this.userKeyFilter = filter;
  }

  /** Whether latest versions are read from the attached index source (and the overlay) rather than `records`. */
  get indexServing(): boolean {
    return this.indexReady;
  }

  /** Number of keys in the index overlay (written since the last durable point; 0 without an index source). */
  get unindexedKeys(): number {
    return this.unindexed.size;
  }

  /**
   * Hands the overlay's versions written at or before `upTo` (durable) to the index source, at most
   * `maxCount` of its entries; returns how many it walked. What it leaves stays in the overlay,
   * which reads consult first, so a round released over several calls reads the same throughout.
   */
  private releaseIndex(upTo: number, maxCount: number): number {
    const index = this.index;
    if (index === undefined) return 0;
    if (!this.indexReady && upTo >= this.indexFrom) this.indexReady = true;
    let n = 0;
    for (let e = this.unindexedLog.at(0); e !== undefined && e.revision <= upTo && n < maxCount; e = this.unindexedLog.at(++n)) {
      const v = this.unindexed.get(e.key);
      if (v === undefined || v.revision > upTo) continue; // rewritten since: stays in the overlay
      this.unindexed.delete(e.key);
      index.durable(e.key, v.value === null ? v : { ...v, value: VALUE_ON_DISK });
      if (v.value !== null && this.dropColdKeys) this.droppable.push(e.key);
    }
    this.unindexedLog.dropFront(n);
    return n;
  }

  /** Number of versions whose value is still in the heap awaiting release (0 without a source: then all values are in the heap). */
  get residentValues(): number {
    return this.resident.length;
  }

  /** Accounted bytes of the values this machine holds in the heap in its versions (not the watch history or sessions). O(versions): for tests and diagnostics. */
  heapValueBytes(): number {
    let n = 0;
    for (const recs of this.records.values()) for (const v of recs) if (v.value !== null && v.value !== VALUE_ON_DISK) n += v.value.byteLength;
    return n;
  }

  /** The value of version `v` of `key` (not a tombstone): in the heap, or read from the source. */
  private valueOf(key: string, v: VersionRecord): Uint8Array {
    if (v.value !== VALUE_ON_DISK) return v.value!;
    const got = this.values?.read(key, v.revision);
    if (got === undefined) throw new Error(`the value of ${JSON.stringify(key)} at revision ${v.revision} is missing from the value store`);
    return got;
  }

  /**
   * All retained state as plain records (what `snapshot()` encodes and `fromRecords` rebuilds
   * from). The version arrays and values are the machine's own: read them before the next
   * `apply`, `compact` or `releaseValues`, and never mutate them. With a value source attached,
   * released values are the {@link VALUE_ON_DISK} placeholder (not read back). O(keys + d log d).
   * Throws when the live-key set holds reserved keys only (`attachIndex` with `dropCold`).
   */
  toRecords(): SnapshotData {
    if (this.userKeyFilter !== undefined) {
      throw new Error('this machine lists its user keys from the durable records (dropCold): encode them from the engine (encodeSnapshotFromRecords)');
    }
    // Merge the (already ordered) live keys with the few keys whose latest version is a tombstone.
    const live = this.live.toArray();
    const dead: string[] = [];
    for (const [k, recs] of this.records) if (recs[recs.length - 1]!.value === null) dead.push(k);
    dead.sort(compareKeys);
    const keys: Array<readonly [string, readonly VersionRecord[]]> = [];
    for (let i = 0, j = 0; i < live.length || j < dead.length; ) {
      const k = j >= dead.length || (i < live.length && compareKeys(live[i]!, dead[j]!) < 0) ? live[i++]! : dead[j++]!;
      keys.push([k, this.records.get(k)!]); // every key is in `records` without `dropCold`
    }
    return {
      appliedIndex: this._appliedIndex,
      revision: this._revision,
      compactRevision: this._compactRevision,
      lastTimestampMs: this._lastTimestampMs,
      maxHistoryRevisions: this.maxHistoryRevisions,
      maxHistoryBytes: this.maxHistoryBytes,
      revisionTimestamps: this.revTimes.toArray(),
      keys,
      history: this.history.toArray(),
      sessionTtlMs: this.sessionTtlMs,
      maxSessions: this.maxSessions,
      maxSessionResults: this.maxSessionResults,
      sessions: this.sessions.toRecords(),
    };
  }

  /**
   * Rebuilds a state machine from `snapshot()` bytes; the result behaves identically to the
   * original and re-snapshots to the same bytes. Throws ValidationError MALFORMED_SNAPSHOT.
   */
  static restore(bytes: Uint8Array): KvStateMachine {
    return runSteps(KvStateMachine.restoreSteps(bytes));
  }

  /**
   * {@link restore} in bounded steps (a generator yielding after every few thousand keys decoded
   * or rebuilt), so a host installing a large snapshot can spread the work over event-loop turns.
   * With `adoptInput` the machine's values are views into `bytes` (no copy of it): the caller
   * promises never to change `bytes` (a snapshot received from the leader, held read-only). From a
   * {@link ChunkedByteReader} (a streamed install), values older than the history bound are the
   * `VALUE_ON_DISK` placeholder: the host writes them to its records and attaches its value source.
   */
  static *restoreSteps(bytes: Uint8Array | ChunkedByteReader, adoptInput = false): Generator<void, KvStateMachine, undefined> {
    const d = yield* decodeSnapshotSteps(bytes, adoptInput);
    return yield* KvStateMachine.buildSteps(d, true); // the decoded lists are private: adopt them
  }

  /**
   * {@link restoreSteps} of a streamed snapshot (a reader over its chunk records) into a machine
   * built with its cold keys dropped from the start, as a restart builds one (`fromRecords` with
   * `cold`): keys whose only version is live with its value on disk are decoded into `cold` (key,
   * revision, timestamp) and never get a version list, so the install's heap holds only the other
   * keys. The machine must then get its value source and `attachIndex(source, { dropCold: true })`
   * before any use, and its records must be written from `keys` and `cold` (`mergeColdKeys`):
   * `toRecords()` throws. `keys` are the decoded other keys (their version lists are the machine's).
   */
  static *restoreColdSteps(reader: ChunkedByteReader): Generator<void, { readonly machine: KvStateMachine; readonly data: SnapshotData; readonly cold: ColdVersions }, undefined> {
    const cold: ColdVersions = { keys: [], revisions: [], timestamps: [] };
    const d = yield* decodeSnapshotSteps(reader, false, cold);
    const machine = yield* KvStateMachine.buildSteps(d, true, cold);
    return { machine, data: d, cold };
  }

  /**
   * Rebuilds a state machine from its records (`toRecords()` of the original, a decoded snapshot,
   * or durable records loaded by the host); the result behaves identically to the original and
   * snapshots to the same bytes. The records must be consistent (decoders validate them); the
   * version lists are copied, the version records and values are shared (they are immutable).
   * No sink is attached. O(state size). With `adopt` the version lists are taken, not copied (the
   * caller hands them over and must not touch them again: a restart's freshly loaded records).
   */
  static fromRecords(d: SnapshotData, options: { readonly adopt?: boolean; readonly cold?: ColdKeys } = {}): KvStateMachine {
    return runSteps(KvStateMachine.fromRecordsSteps(d, options));
  }

  /**
   * {@link fromRecords} in bounded steps (a generator yielding after every few thousand keys), so a
   * restart can spread the build over event-loop turns.
   *
   * With `cold` (a restart's keys whose only retained version is live, loaded as key and revision:
   * `loadState` with `coldKeys`), the machine is built in the state a running machine reaches once
   * `dropCold` has run (`attachIndex`): the cold keys are in no version list (`records`), counted
   * live, in the write log (keyless entries) when after the compaction point, the reserved ones in the live-key set and
   * the user keys in the Bloom filter (the live-key set holds reserved keys only). Such a machine
   * must get its value source and `attachIndex(source, { dropCold: true })` before any use (the
   * index then serves at once: its records are the durable ones it was loaded from); `toRecords()`
   * and `snapshot()` throw, as after `dropCold`. `d.keys` and `cold` must not share a key.
   */
  static *fromRecordsSteps(d: SnapshotData, options: { readonly adopt?: boolean; readonly cold?: ColdKeys } = {}): Generator<void, KvStateMachine, undefined> {
    return yield* KvStateMachine.buildSteps(d, options.adopt === true, options.cold);
  }

  private static *buildSteps(d: SnapshotData, adopt: boolean, cold?: ColdKeys): Generator<void, KvStateMachine, undefined> {
    const m = new KvStateMachine({
      maxHistoryRevisions: d.maxHistoryRevisions,
      maxHistoryBytes: d.maxHistoryBytes,
      ...(d.sessionTtlMs !== undefined ? { sessionTtlMs: d.sessionTtlMs } : {}),
      ...(d.maxSessions !== undefined ? { maxSessions: d.maxSessions } : {}),
      ...(d.maxSessionResults !== undefined ? { maxSessionResults: d.maxSessionResults } : {}),
    });
    if (d.sessions !== undefined && d.sessions.length > 0) m.sessions = SessionTable.fromRecords(m.sessionLimits(), () => m.sink, d.sessions);
    m._appliedIndex = d.appliedIndex;
    m._revision = d.revision;
    m._compactRevision = d.compactRevision;
    m._lastTimestampMs = d.lastTimestampMs;
    m.revTimes.dropFront(1);
    for (const t of d.revisionTimestamps) m.revTimes.push(t);
    // Rebuild the write log in revision order with a counting sort over (compactRevision, revision].
    const span = d.revision - d.compactRevision;
    const firstAt = new Int32Array(span + 1).fill(-1);
    const next: number[] = [];
    const writeKeys: string[] = [];
    // Cold keys' writes per revision: their entries are keyless (as after `dropCold`), so a count will do.
    const coldAt = cold !== undefined && cold.keys.length > 0 ? new Uint32Array(span + 1) : undefined;
    const liveKeys: string[] = [];
    let step = 0;
    for (const [key, versions] of d.keys) {
      if (++step % RESTORE_STEP_KEYS === 0) yield;
      m.records.set(key, adopt ? (versions as VersionRecord[]) : versions.slice());
      if (versions[versions.length - 1]!.value !== null) {
        liveKeys.push(key);
        if (isReservedKey(key)) m.reservedLive++;
      }
      for (const v of versions) {
        if (v.revision <= d.compactRevision) continue;
        const slot = v.revision - d.compactRevision;
        next.push(firstAt[slot]!);
        firstAt[slot] = writeKeys.length;
        writeKeys.push(key);
      }
    }
    if (cold !== undefined) {
      if (cold.keys.length !== cold.revisions.length) throw new ValidationError('MALFORMED_SNAPSHOT', `cold keys: ${cold.keys.length} keys, ${cold.revisions.length} revisions`);
      for (let i = 0; i < cold.keys.length; i++) {
        if (i % RESTORE_STEP_KEYS === RESTORE_STEP_KEYS - 1) yield;
        const rev = cold.revisions[i]!;
        if (rev > d.revision || rev < 1) throw new ValidationError('MALFORMED_SNAPSHOT', `cold key ${JSON.stringify(cold.keys[i])} at revision ${rev} (the state is at ${d.revision})`);
        if (rev > d.compactRevision) coldAt![rev - d.compactRevision]!++;
      }
    }
    for (let slot = 1; slot <= span; slot++) {
      for (let i = firstAt[slot]!; i >= 0; i = next[i]!) m.writeLog.push(d.compactRevision + slot, writeKeys[i]);
      for (let k = coldAt?.[slot] ?? 0; k > 0; k--) m.writeLog.push(d.compactRevision + slot, undefined);
      if (slot % RESTORE_STEP_KEYS === 0) yield;
    }
    if (cold === undefined) {
      m.live = SortedKeySet.fromSorted(liveKeys);
      m.liveCount = liveKeys.length;
    } else {
      // As after `attachIndex` with `dropCold`: reserved live keys in the set (both lists are in key
      // order: merged), user live keys in the filter.
      const filter = new KeyFilter();
      const reserved: string[] = [];
      let i = 0;
      let j = 0;
      while (i < liveKeys.length || j < cold.keys.length) {
        const fromHeap = j >= cold.keys.length || (i < liveKeys.length && compareKeys(liveKeys[i]!, cold.keys[j]!) < 0);
        const key = fromHeap ? liveKeys[i++]! : cold.keys[j++]!;
        if (isReservedKey(key)) {
          reserved.push(key);
          if (!fromHeap) m.reservedLive++;
        } else filter.add(key);
        if ((i + j) % RESTORE_STEP_KEYS === 0) yield;
      }
      m.live = SortedKeySet.fromSorted(reserved);
      m.userKeyFilter = filter;
      m.liveCount = liveKeys.length + cold.keys.length;
      m.droppedCount = cold.keys.length;
      m.builtCold = true;
    }
    for (const e of d.history) {
      m.history.push(e);
      m.historyBytes += eventBytes(e);
    }
    return m;
  }
}
