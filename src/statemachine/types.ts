/** Command, event, result and read types of the versioned key-value state machine of one shard. */
import type { ValidationError } from './errors.js';

/** Store `value` under `key`; with `expectedVersion`, only if the key's current version equals it (0 = absent). */
export interface PutCommand {
  readonly type: 'put';
  readonly key: string;
  readonly value: Uint8Array;
  /** Conditional put: current version must equal this (0 means "only if absent"). */
  readonly expectedVersion?: number;
  /** Return the previous value on success, and the current value on conflict. */
  readonly returnPrevious?: boolean;
  /**
   * Return the current value on conflict only: a successful put reads and carries no previous
   * value (what a read-modify-write retry needs). Exclusive with `returnPrevious`. Entries with it
   * travel in proposal envelope V5 (src/node/envelope.ts), which older nodes refuse clearly.
   */
  readonly currentOnConflict?: boolean;
}

/** Delete `key` (writes a tombstone); with `expectedVersion`, only if the current version equals it. */
export interface DeleteCommand {
  readonly type: 'delete';
  readonly key: string;
  /** Conditional delete: current version must equal this (0 means "only if absent", a successful no-op). */
  readonly expectedVersion?: number;
}

/** One txn guard: the key's current version must equal `version` (0 = absent or deleted). */
export interface TxnCompare {
  readonly key: string;
  readonly version: number;
}

/** An unconditional put inside a txn. */
export interface TxnPut {
  readonly type: 'put';
  readonly key: string;
  readonly value: Uint8Array;
}

/** An unconditional delete inside a txn. */
export interface TxnDelete {
  readonly type: 'delete';
  readonly key: string;
}

/** A write inside a txn. */
export type TxnWrite = TxnPut | TxnDelete;

/** All-or-nothing: if every compare holds, apply every write at one new revision; else change nothing. */
export interface TxnCommand {
  readonly type: 'txn';
  readonly compares: readonly TxnCompare[];
  /** Writes, applied in order; a key may appear at most once. */
  readonly writes: readonly TxnWrite[];
}

/** Stores nothing, but emits a `trigger` event (and consumes one revision so the event is resumable). */
export interface TriggerPutCommand {
  readonly type: 'triggerPut';
  readonly key: string;
  readonly value: Uint8Array;
}

/** Does nothing except advance the applied index and the clock. */
export interface NoopCommand {
  readonly type: 'noop';
}

/**
 * Compacts history so that `revision` becomes the oldest readable revision. Replicating compaction
 * as a command (as etcd does) keeps every replica's readable window identical. Does not bump the revision.
 */
export interface CompactCommand {
  readonly type: 'compact';
  readonly revision: number;
}

/**
 * System only (a client-origin one is rejected PERMISSION_DENIED): ends lease `lease` in this
 * shard at one revision. For each attachment `/_sys/lease-key/<id>/<key>` (in key order, at most
 * MAX_LEASE_REVOKE_ATTACHMENTS), deletes `key` if it is still at the version the attachment
 * recorded (the attachment's own version: both were written at one revision; a key rewritten
 * since survives), then deletes every one of those attachments. The events are ordinary deletes.
 */
export interface RevokeLeaseKeysCommand {
  readonly type: 'revokeLeaseKeys';
  /** The lease id (a positive safe integer). */
  readonly lease: number;
}

/** Every command the state machine applies. */
export type Command =
  | PutCommand
  | DeleteCommand
  | TxnCommand
  | TriggerPutCommand
  | NoopCommand
  | CompactCommand
  | RevokeLeaseKeysCommand;

/**
 * Who proposed a command, as recorded with it in the log: `client` (the KV API and extension
 * lambdas) or `system` (the cluster itself: shard descriptors, the cluster map, the extension
 * registry, delivery cursors, dead letters, compaction). A client-origin command touching a
 * reserved key (`/_...`, `/ext/`) is rejected with PERMISSION_DENIED on every replica.
 */
export type CommandOrigin = 'client' | 'system';

/** A change notification, fed to watches and lambdas. Put and trigger events carry the value. */
export interface KvEvent {
  readonly type: 'put' | 'delete' | 'trigger';
  readonly key: string;
  readonly value?: Uint8Array;
  /** The revision of the command that produced it (all events of one txn share it). */
  readonly revision: number;
  /** The shard-monotonic timestamp of that revision. */
  readonly timestampMs: number;
  /**
   * How many extension lambda writes led to the command that produced it (the lambda loop
   * guard); absent for 0 (client and system writes). All events of one revision share it.
   */
  readonly hops?: number;
}

/** A key's version (and optionally value) reported alongside a conditional outcome. */
export interface VersionedValue {
  readonly version: number;
  readonly value?: Uint8Array;
}

/** Outcome of a put. */
export interface PutResult {
  readonly type: 'put';
  readonly succeeded: boolean;
  /** The new revision on success; the unchanged current revision on conflict. */
  readonly revision: number;
  /** The key's version after the command: the new revision on success, the current version (0 = absent) on conflict. */
  readonly version: number;
  readonly timestampMs: number;
  /** On conflict: the current version, plus the value when `returnPrevious` or `currentOnConflict` was set and the key exists. */
  readonly current?: VersionedValue;
  /** On success with `returnPrevious`: the replaced version and value (absent if the key did not exist). */
  readonly previous?: VersionedValue;
}

/** Outcome of a delete. */
export interface DeleteResult {
  readonly type: 'delete';
  readonly succeeded: boolean;
  /** The new revision if a tombstone was written; otherwise the unchanged current revision. */
  readonly revision: number;
  readonly timestampMs: number;
  /** True when a live key was actually deleted (deleting an absent key is a successful no-op). */
  readonly deleted: boolean;
  /** On conflict: the key's current version. */
  readonly current?: VersionedValue;
}

/** Outcome of a txn. */
export interface TxnResult {
  readonly type: 'txn';
  readonly succeeded: boolean;
  /** The new revision if anything changed; otherwise the unchanged current revision. */
  readonly revision: number;
  readonly timestampMs: number;
  /** Indices (into `compares`) of compares that did not hold; empty on success. */
  readonly failedCompares: readonly number[];
}

/** Outcome of a triggerPut (always succeeds). */
export interface TriggerResult {
  readonly type: 'trigger';
  readonly revision: number;
  readonly timestampMs: number;
}

/** Outcome of a noop. */
export interface NoopResult {
  readonly type: 'noop';
  readonly revision: number;
  readonly timestampMs: number;
}

/** Outcome of a compact command. */
export interface CompactResult {
  readonly type: 'compact';
  /** The compaction point after the command (unchanged if the requested revision was not newer). */
  readonly compactRevision: number;
  readonly revision: number;
  readonly timestampMs: number;
}

/** Outcome of a revokeLeaseKeys command. */
export interface RevokeLeaseKeysResult {
  readonly type: 'revokeLeaseKeys';
  /** The new revision if anything was deleted; otherwise the unchanged current revision. */
  readonly revision: number;
  readonly timestampMs: number;
  /** Keys deleted (those still at their attached version). */
  readonly deletedKeys: number;
  /** Attachments deleted. */
  readonly deletedAttachments: number;
  /** True when attachments of the lease remain (more than MAX_LEASE_REVOKE_ATTACHMENTS): propose it again. */
  readonly more: boolean;
}

/** A committed command that failed validation: nothing changed but the applied index and clock. */
export interface RejectedResult {
  readonly type: 'rejected';
  readonly error: ValidationError;
  readonly revision: number;
  readonly timestampMs: number;
}

/** The index was <= appliedIndex: the command was ignored (idempotent re-apply). */
export interface SkippedResult {
  readonly type: 'skipped';
  readonly appliedIndex: number;
  readonly revision: number;
}

/** Any command outcome. */
export type CommandResult =
  | PutResult
  | DeleteResult
  | TxnResult
  | TriggerResult
  | NoopResult
  | CompactResult
  | RevokeLeaseKeysResult
  | RejectedResult
  | SkippedResult;

/** What `apply` returns: the outcome and the events it produced (empty unless the revision was bumped). */
export interface ApplyOutput {
  /** False when the index was already applied and the command was skipped. */
  readonly applied: boolean;
  readonly result: CommandResult;
  readonly events: readonly KvEvent[];
  /**
   * True when the entry repeated a write its session had already applied: `result` is the first
   * attempt's, and nothing changed (no revision, no events) but the applied index, the clock and
   * the session's activity.
   */
  readonly duplicate?: boolean;
}

/**
 * Identifies a write for deduplication (Raft client sessions, dissertation §6.3): a retry with the
 * same `id` and `seq` gets the first attempt's result instead of applying again.
 */
export interface WriteSession {
  /** Chosen by the client: 16-64 characters of [A-Za-z0-9_-], random per client instance. */
  readonly id: string;
  /** 1, 2, 3, ... per session, one per logical write (retries reuse it). */
  readonly seq: number;
  /** Every seq below this has its response at the client: the shard may forget their results (<= seq). */
  readonly ackedBelow: number;
}

/** The results a session keeps for its writes (and replays to their retries). */
export type SessionResult = PutResult | DeleteResult | TxnResult | TriggerResult | RejectedResult;

/** Options of a point read: at most one of a revision or a time (default: latest). */
export type GetOptions =
  | { readonly atRevision?: number; readonly atTimeMs?: undefined }
  | { readonly atTimeMs?: number; readonly atRevision?: undefined };

/** A value found by `get`. */
export interface GetResult {
  readonly value: Uint8Array;
  /** The revision of the key's last write at the read point. */
  readonly version: number;
  /** The timestamp of that write. */
  readonly timestampMs: number;
}

/** Options of `list`. */
export interface ListOptions {
  /** Page size (default DEFAULT_LIST_LIMIT, at most MAX_LIST_LIMIT). */
  readonly limit?: number;
  /** Exclusive start key: only keys after it are returned (pass the previous page's `nextAfter`). */
  readonly after?: string;
  /** Omit values. */
  readonly keysOnly?: boolean;
}

/** One live key returned by `list`. */
export interface ListItem {
  readonly key: string;
  readonly value?: Uint8Array;
  readonly version: number;
  readonly timestampMs: number;
}

/** A page of `list`. */
export interface ListResult {
  readonly items: readonly ListItem[];
  /** Present when more keys with the prefix remain: pass as `after` to get the next page. */
  readonly nextAfter?: string;
  /** The revision the page was read at. */
  readonly revision: number;
}

/**
 * A listing to serve from the durable records, as the machine states it (`KvStateMachine.listPlan`):
 * the records' latest versions under `prefix` after `after`, with `overlay` on top, are the
 * machine's live keys at `revision`.
 */
export interface ListPlan {
  readonly prefix: string;
  /** Exclusive start key (only when at or after the prefix: before it, the listing starts at the prefix). */
  readonly after?: string;
  /** Page size, validated. */
  readonly limit: number;
  readonly keysOnly: boolean;
  /** The machine's revision when planned: the page is read at it. */
  readonly revision: number;
  /** The machine's applied index when planned. */
  readonly appliedIndex: number;
  /** The records read must be at this revision or later (the overlay covers every write after it). */
  readonly sinceRevision: number;
  /** Keys in range written after `sinceRevision`, in key order, each with its latest version (a tombstone: deleted; a value may be `VALUE_ON_DISK`). */
  readonly overlay: ReadonlyArray<readonly [string, VersionRecord]>;
}

/** A page of `eventsSince`. */
export interface EventsPage {
  readonly events: readonly KvEvent[];
  /** The revision to resume from (pass as `fromRevision` next time). */
  readonly nextRevision: number;
  /** True when the page stopped because of the limit (more events are already available). */
  readonly more: boolean;
  /** The shard's current revision. */
  readonly revision: number;
}

/** Construction options; every replica of a shard must use the same ones (they are kept in snapshots). */
export interface KvStateMachineOptions {
  /** Keep events of at most this many most recent revisions (default DEFAULT_MAX_HISTORY_REVISIONS). */
  readonly maxHistoryRevisions?: number;
  /** Cap on accounted history bytes (default DEFAULT_MAX_HISTORY_BYTES); the newest revision is always kept. */
  readonly maxHistoryBytes?: number;
  /** A client session idle (by log timestamps) for longer than this is forgotten (default DEFAULT_SESSION_TTL_MS). */
  readonly sessionTtlMs?: number;
  /** Most client sessions kept; more evict the least recently active (default DEFAULT_MAX_SESSIONS). */
  readonly maxSessions?: number;
  /** Most results kept per session; more forget the lowest sequence numbers (default DEFAULT_MAX_SESSION_RESULTS). */
  readonly maxSessionResults?: number;
}

/** One stored version of a key; `value === null` is a tombstone (delete). */
export interface VersionRecord {
  readonly revision: number;
  readonly timestampMs: number;
  readonly value: Uint8Array | null;
  /** The lambda hop count of the write that produced it (see `KvEvent.hops`); absent for 0. */
  readonly hops?: number;
}

/** A session's scalars, as stored (the durable header record). */
export interface SessionHeader {
  readonly id: string;
  /** Every seq below this is forgotten (acknowledged by the client, or dropped over the bound). */
  readonly forgottenBelow: number;
  /** The log index of the session's last write (unique per session: one entry touches one session). */
  readonly lastActiveIndex: number;
  /** The effective timestamp of that entry (expiry measures idleness from it). */
  readonly lastActiveTs: number;
}
