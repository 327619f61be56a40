/** Error classes of the key-value state machine: input validation failures and reads of compacted revisions. */

/** Machine-readable reason of a {@link ValidationError}. */
export type ValidationErrorCode =
  /** The command object (or a read argument) has the wrong shape or type. */
  | 'INVALID_COMMAND'
  /** A key is empty, not a string, or not well-formed UTF-16 (lone surrogate). */
  | 'INVALID_KEY'
  /** A key (or list prefix) exceeds MAX_KEY_BYTES. */
  | 'KEY_TOO_LONG'
  /** A value is not a Uint8Array. */
  | 'INVALID_VALUE'
  /** A value exceeds MAX_VALUE_BYTES. */
  | 'VALUE_TOO_LARGE'
  /** A version, revision, index, timestamp or limit is not a non-negative safe integer (or out of range). */
  | 'INVALID_NUMBER'
  /** A txn has more than MAX_TXN_OPS compares or writes. */
  | 'TOO_MANY_TXN_OPS'
  /** A txn writes the same key twice (it would create two versions with one revision). */
  | 'DUPLICATE_TXN_KEY'
  /** A txn's keys and values exceed MAX_TXN_PAYLOAD_BYTES. */
  | 'TXN_TOO_LARGE'
  /** A read argument (options object, limit, cursor) is malformed or out of range. */
  | 'INVALID_ARGUMENT'
  /** A read or compaction names a revision newer than the current one. */
  | 'FUTURE_REVISION'
  /** Bytes given to the command decoder are not a valid encoded command. */
  | 'MALFORMED_COMMAND'
  /** Bytes given to `restore` are not a valid snapshot. */
  | 'MALFORMED_SNAPSHOT'
  /** A write names a key this shard does not own (the sender's shard map is stale); retry after refreshing it. */
  | 'WRONG_SHARD'
  /** A shard descriptor write is malformed or older than the one in effect. */
  | 'INVALID_DESCRIPTOR'
  /** A client (or extension lambda) touched the reserved keyspace (`/_...`, `/ext/`), which only the cluster itself writes. */
  | 'RESERVED'
  /**
   * A write's session sequence number is below what its session still remembers (acknowledged by
   * the client, dropped over the per-session bound): an earlier attempt may have applied and its
   * result is no longer kept, so the write is refused rather than risk applying it twice.
   */
  | 'SESSION_EXPIRED';

/** Thrown (or returned in a `rejected` apply result) when an input violates the command format or a limit. */
export class ValidationError extends Error {
  /** The machine-readable reason. */
  readonly code: ValidationErrorCode;

  constructor(code: ValidationErrorCode, message: string) {
    super(`${code}: ${message}`);
    this.name = 'ValidationError';
    this.code = code;
  }
}

/** What a caller asked for when it hit compacted data: a revision or a point in time. */
export type CompactedRequest = { readonly revision: number } | { readonly timeMs: number };

/**
 * Thrown when reading at, or watching from, a revision (or time) older than what is retained.
 * `oldestRevision` is the oldest revision that can still be asked for.
 */
export class CompactedRevisionError extends Error {
  /** The oldest revision still available for this kind of request. */
  readonly oldestRevision: number;
  /** The revision asked for, when the request was by revision. */
  readonly requestedRevision: number | undefined;
  /** The time asked for, when the request was by time. */
  readonly requestedTimeMs: number | undefined;

  constructor(request: CompactedRequest, oldestRevision: number, what = 'revision') {
    const asked = 'revision' in request ? `revision ${request.revision}` : `time ${request.timeMs}`;
    super(`${what} at ${asked} has been compacted (oldest available revision ${oldestRevision})`);
    this.name = 'CompactedRevisionError';
    this.oldestRevision = oldestRevision;
    this.requestedRevision = 'revision' in request ? request.revision : undefined;
    this.requestedTimeMs = 'timeMs' in request ? request.timeMs : undefined;
  }
}
