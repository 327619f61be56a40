/** The named size and count limits of the key-value state machine, shared by validation, codecs and reads. */

/**
 * Maximum key length in UTF-8 bytes (4 KiB). etcd has no separate key limit (only the 1.5 MiB
 * request limit); 4 KiB keeps the ordered key index and prefix-compressed snapshots cheap while
 * leaving room for deeply nested paths. Keys must also be non-empty, well-formed UTF-16 strings.
 */
export const MAX_KEY_BYTES = 4 * 1024;

/** Maximum value size in bytes (1 MiB) for `put`, txn puts and `triggerPut`. */
export const MAX_VALUE_BYTES = 1024 * 1024;

/** Maximum number of compares, and separately of writes, in one txn (etcd's default `--max-txn-ops`). */
export const MAX_TXN_OPS = 128;

/** Maximum sum of key and value bytes over all compares and writes of one txn (2 MiB). */
export const MAX_TXN_PAYLOAD_BYTES = 2 * 1024 * 1024;

/** Page size used by `list` when no limit is given. */
export const DEFAULT_LIST_LIMIT = 1000;

/** Largest page `list` will return in one call. */
export const MAX_LIST_LIMIT = 10_000;

/** Events returned by `eventsSince` when no limit is given. */
export const DEFAULT_EVENTS_LIMIT = 1000;

/** Largest (soft) page `eventsSince` will return in one call (a single revision is never split). */
export const MAX_EVENTS_LIMIT = 10_000;

/** Default number of most recent revisions whose events the watch history keeps. */
export const DEFAULT_MAX_HISTORY_REVISIONS = 10_000;

/** Default cap on the accounted bytes of the watch history (64 MiB, see {@link EVENT_OVERHEAD_BYTES}). */
export const DEFAULT_MAX_HISTORY_BYTES = 64 * 1024 * 1024;

/** Fixed per-event overhead added to key and value bytes when accounting watch history size. */
export const EVENT_OVERHEAD_BYTES = 64;

/**
 * Default idle time after which a client session is forgotten (10 minutes): a session whose last
 * write's log timestamp is more than this before the timestamp of the entry being applied is
 * dropped, with its stored results. Far above any call deadline (10 s by default), so a retry
 * within its deadline always finds its session.
 */
export const DEFAULT_SESSION_TTL_MS = 10 * 60 * 1000;

/** Default bound on the client sessions one shard keeps; a new session beyond it evicts the least recently active one. */
export const DEFAULT_MAX_SESSIONS = 50_000;

/**
 * Default bound on the results one session keeps in one shard (writes not yet acknowledged by
 * its client through `ackedBelow`); beyond it the lowest sequence numbers are forgotten.
 */
export const DEFAULT_MAX_SESSION_RESULTS = 10_000;

/** Shortest client session id (characters of [A-Za-z0-9_-]). */
export const MIN_SESSION_ID_LENGTH = 16;

/** Longest client session id (characters of [A-Za-z0-9_-]). */
export const MAX_SESSION_ID_LENGTH = 64;

/** Largest lambda hop count a write can carry (the log entry's envelope holds it in one byte). */
export const MAX_HOP_COUNT = 255;

/**
 * Most attachments one `revokeLeaseKeys` command deletes (with their keys) in one apply step; a
 * lease holding more in the shard needs further commands (the result says `more`). Above the lease
 * API's bound of keys per lease per shard (10,000), so a revoke within the bound is one revision;
 * a 10,000-key revoke applies in 45-60 ms (test/statemachine/revoke-lease-keys.test.ts).
 */
export const MAX_LEASE_REVOKE_ATTACHMENTS = 16_384;
