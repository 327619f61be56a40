/** Public surface of the shard key-value state machine: the machine, its commands, codecs, errors and limits. */

/** The state machine and its history-size accounting. */
export { KvStateMachine, eventBytes, SHARD_DESCRIPTOR_KEY, type ColdKeys } from './kv-state-machine.js';
/** Binary command codec for Raft log entries. */
export { encodeCommand, encodeCommandInto, encodedCommandCapacity, decodeCommand, usesNewerPutFlags, COMMAND_FORMAT_VERSION } from './command-codec.js';
/** Snapshot format identification. */
export { SNAPSHOT_FORMAT_VERSION, SNAPSHOT_SESSIONS_FORMAT_VERSION, SNAPSHOT_MAGIC } from './snapshot-codec.js';
/** Error classes. */
export { ValidationError, CompactedRevisionError } from './errors.js';
/** Error detail types. */
export type { ValidationErrorCode, CompactedRequest } from './errors.js';
/** Key order (UTF-8 byte order) used by list, pagination tokens and snapshots. */
export { compareKeys } from './keys.js';
/** Validation helpers for proposers (call before proposing). */
export { validateCommand, validateKey, validatePrefix } from './validation.js';
/** The PERMISSION_DENIED errors of requests touching the reserved keyspace. */
export { reservedKeyError, reservedPrefixError } from './validation.js';
/** Where shards keep lease attachments (read by the revokeLeaseKeys command). */
export { LEASE_KEY_PREFIX, LEASE_ID_DIGITS, leaseIdText, leaseAttachmentPrefix } from './lease-keys.js';
/** Named limits and defaults. */
export * from './limits.js';
/** Command, result, event and read types. */
export type * from './types.js';
/** Plain records of a state machine's whole state (snapshots and durable storage), and their decoder. */
export { decodeSnapshot, snapshotAppliedIndex, mergeColdKeys, type ColdVersions, type SnapshotData } from './snapshot-codec.js';
/** Client sessions: write deduplication rules, checks and the encoding of stored results. */
export {
  SESSION_ID_PATTERN,
  validateWriteSession,
  sessionExpiredError,
  checkSessionRecords,
  encodeSessionResult,
  decodeSessionResult,
  readSessionResult,
  writeSessionResult,
  writeSessionRecord,
  type SessionRecord,
  type SessionLimits,
} from './sessions.js';
/** The observer of a state machine's record-level changes (incremental persistence). */
export type { StateSink } from './state-sink.js';
/** Values out of the heap: the placeholder of a released value and the source it is read back from. */
export { VALUE_ON_DISK, type ValueSource } from './value-source.js';
/** The key index out of the heap: the source a machine reads keys' latest versions from. */
export type { IndexSource } from './index-source.js';
export { ChunkedByteReader, type ChunkFetch } from './chunked-reader.js';
