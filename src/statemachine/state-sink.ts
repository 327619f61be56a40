/** The observer interface through which a state machine reports every change of its durable records, so a host can persist them incrementally. */
import type { KvEvent, SessionHeader, SessionResult, VersionRecord } from './types.js';

/**
 * Receives, synchronously and in apply order, every change a {@link KvStateMachine} makes to the
 * records that make up its state (besides its scalars, which the host reads from the machine's
 * getters: `appliedIndex`, `revision`, `compactRevision`, `lastTimestampMs`,
 * `oldestHistoryRevision`, and the history limits). Replaying the calls over the records of the
 * state the sink was attached at yields exactly the records of `toRecords()`:
 *
 * - versions: per key, the retained versions (key + revision → timestamp and value or tombstone);
 *   a key's latest version is its newest one;
 * - revisions: per revision in [compactRevision, revision], its timestamp, plus its events while
 *   the revision is in the watch history (revision 0 is implicit, with timestamp 0);
 * - sessions: per client session, its header (floor, last activity) and its stored results by seq.
 *
 * Sinks must not call back into the machine, and must not mutate the arrays they are given.
 */
export interface StateSink {
  /**
   * `key` got a new version (a tombstone when `version.value === null`); it is now the key's latest.
   * `wasDeleted` is true when the key's previous newest retained version is a tombstone (the key
   * was deleted and not yet forgotten by compaction), false when it was live or had no version.
   */
  versionAdded(key: string, version: VersionRecord, wasDeleted: boolean): void;
  /**
   * Compaction removed the oldest versions of `key`, whose revisions are `revisions` (ascending);
   * `forgotten` is true when no version is left (the key no longer exists at all).
   */
  versionsDropped(key: string, revisions: readonly number[], forgotten: boolean): void;
  /** A new revision, with its timestamp and events (it also enters the watch history). */
  revisionAdded(revision: number, timestampMs: number, events: readonly KvEvent[]): void;
  /** The events of `revision` left the watch history (size or count limit); its timestamp stays. */
  historyTrimmed(revision: number): void;
  /** Compaction moved the compaction point from `from` to `to`: revisions [from, to) are gone, with any events. */
  revisionsCompacted(from: number, to: number): void;
  /** A client session was created or its header changed (activity, floor); `header` is its whole new header. */
  sessionUpdated(header: SessionHeader): void;
  /** Session `id` stored the result of its write `seq`. */
  sessionResultAdded(id: string, seq: number, result: SessionResult): void;
  /** Session `id` dropped the results of `seqs` (its floor rose above them). */
  sessionResultsDropped(id: string, seqs: readonly number[]): void;
  /** Session `id` was dropped whole (expired or evicted), with the results of `seqs`. */
  sessionDropped(id: string, seqs: readonly number[]): void;
}
