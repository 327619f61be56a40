/**
 * The data types that flow in and out of the pure Raft core: log entries, hard state,
 * snapshots, configuration, messages and the `Ready` batch of actions for the host.
 */

/** A replica id inside one Raft group. `0` means "none". */
export type NodeId = number;

/** The id used when there is no node (no leader, no vote). */
export const NONE: NodeId = 0;

/** What a log entry carries. */
export enum EntryType {
  /** Application data (or an empty no-op when `data` is empty). */
  Normal = 0,
  /** A membership change; `data` is an encoded {@link ConfChange}. */
  ConfChange = 1,
}

/** One entry of the replicated log. */
export interface Entry {
  readonly term: number;
  readonly index: number;
  readonly type: EntryType;
  readonly data: Uint8Array;
}

/** The part of the node's state that must be durable before any message that depends on it is sent. */
export interface HardState {
  readonly term: number;
  readonly vote: NodeId;
  readonly commit: number;
}

/** The membership of a group: voters count for quorum; learners only receive the log. */
export interface ConfState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

/** What a snapshot covers: the log up to `index` (of `term`) and the configuration at that point. */
export interface SnapshotMeta {
  readonly index: number;
  readonly term: number;
  readonly conf: ConfState;
}

/** A state machine snapshot: its metadata and the application's opaque bytes. */
export interface Snapshot {
  readonly meta: SnapshotMeta;
  readonly data: Uint8Array;
  /**
   * The data is not in `data` (which is empty). On a follower: it was received in chunks that went
   * to the host's {@link SnapshotSink} as they arrived (a streamed install; the host reads them
   * back). On a leader (returned by `Storage.snapshot()`): the host serves it chunk by chunk on
   * request (`Ready.snapshotReads`, answered with `RawNode.snapshotChunk`), from an encoder whose
   * total length is known only at its end.
   */
  readonly streamed?: boolean;
  /**
   * Received snapshot: the end checksum the leader sent with the last chunk, when it sent one
   * (streamed transfers do). Its meaning is the host's (kvcascade: the CRC-32 of the encoding before
   * its trailing checksum); the host checks it in `acceptSnapshot`.
   */
  readonly crc?: number;
}

/** A leader's request to its host for the chunk at `offset` of the streamed snapshot `meta`, for follower `to`. */
export interface SnapshotRead {
  readonly to: NodeId;
  readonly meta: SnapshotMeta;
  readonly offset: number;
}

/**
 * The host's answer to a {@link SnapshotRead}: the bytes at `offset` of the snapshot at `index` for
 * follower `to`; `last` when they end the snapshot, then with its end checksum `crc` (what the
 * follower's host checks: see {@link Snapshot.crc}).
 */
export interface SnapshotChunk {
  readonly to: NodeId;
  readonly index: number;
  readonly offset: number;
  readonly bytes: Uint8Array;
  readonly last: boolean;
  readonly crc?: number;
}

/**
 * Where a follower's Raft core hands the chunks of a snapshot it receives, instead of collecting
 * them in memory: each chunk at the offset the transfer has reached, in order (offset 0 starts a
 * transfer, abandoning any earlier unfinished one). Once the last chunk has gone through, the core
 * installs a snapshot with `streamed: true` and empty data (after `acceptSnapshot`, which the host
 * answers from what the sink received).
 */
export interface SnapshotSink {
  /**
   * Takes the chunk at `offset` of the snapshot `meta`; false (or a throw) refuses it (the core
   * drops it unanswered and the leader retries later, e.g. while the host still installs an
   * earlier snapshot).
   */
  chunk(meta: SnapshotMeta, offset: number, bytes: Uint8Array): boolean;
}

/** The kinds of membership change, applied one at a time. */
export enum ConfChangeType {
  /** Add a voter, or promote an existing learner to voter. */
  AddVoter = 0,
  /** Add a non-voting learner (or demote a voter to learner). */
  AddLearner = 1,
  /** Remove a voter or learner. */
  RemoveNode = 2,
}

/** One membership change. */
export interface ConfChange {
  readonly type: ConfChangeType;
  readonly nodeId: NodeId;
  /** Opaque to Raft (for example the new node's address). */
  readonly context?: string;
}

/** Message types exchanged between replicas (and two local ones, `Hup` and `Beat`, never sent over the network). */
export enum MessageType {
  /** Local: start an election (pre-vote first when enabled). */
  Hup = 'Hup',
  /** Local: the leader should broadcast heartbeats. */
  Beat = 'Beat',
  /** A proposal (forwarded to the leader by a follower). */
  Prop = 'Prop',
  App = 'App',
  AppResp = 'AppResp',
  Vote = 'Vote',
  VoteResp = 'VoteResp',
  PreVote = 'PreVote',
  PreVoteResp = 'PreVoteResp',
  /** One chunk of a snapshot. */
  Snap = 'Snap',
  /** A follower's acknowledgement of a snapshot chunk (or a request to restart at an offset). */
  SnapChunkResp = 'SnapChunkResp',
  Heartbeat = 'Heartbeat',
  HeartbeatResp = 'HeartbeatResp',
  /** Ask the leader for a read index (forwarded by followers). */
  ReadIndex = 'ReadIndex',
  ReadIndexResp = 'ReadIndexResp',
  /** Ask the leader to hand leadership to `transferee` (or, when absent, to `from`). */
  TransferLeader = 'TransferLeader',
  /** Leader tells the transferee to campaign now, bypassing pre-vote and leases. */
  TimeoutNow = 'TimeoutNow',
}

/** A message between replicas of one group. Fields not used by a type are left at their defaults. */
export interface Message {
  readonly type: MessageType;
  /** The Raft group this message belongs to (many groups share one transport). */
  readonly group: number;
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
  /** App: index of the entry before `entries`. AppResp: the highest index the follower has matched (or rejected). */
  readonly index?: number;
  /** App: term of the entry at `index`. Vote/PreVote: the candidate's last log term. VoteResp/PreVoteResp (refused): the term of the entry at `commit`. */
  readonly logTerm?: number;
  readonly entries?: readonly Entry[];
  /** App/Heartbeat: the leader's commit index. VoteResp/PreVoteResp (refused): the refuser's commit index (its commit point, see `Raft.commitPoint`). */
  readonly commit?: number;
  /** AppResp/VoteResp/PreVoteResp/SnapChunkResp: the request was refused. */
  readonly reject?: boolean;
  /** AppResp on reject: the follower's hint of where its log may match (index). */
  readonly rejectHint?: number;
  /** Snap: metadata of the snapshot this chunk belongs to. */
  readonly snapshot?: SnapshotMeta;
  /** Snap: byte offset of this chunk in the snapshot data; SnapChunkResp: bytes received so far. */
  readonly offset?: number;
  /** Snap: this chunk's bytes. */
  readonly chunk?: Uint8Array;
  /** Snap: this is the last chunk (the `last` flag). */
  readonly done?: boolean;
  /**
   * Snap: total length of the snapshot data. A snapshot with its data in memory sends it on every
   * chunk; a streamed one (whose length is known only at its end) only on the last.
   */
  readonly total?: number;
  /** Snap, last chunk of a streamed transfer: the end checksum (see {@link Snapshot.crc}). */
  readonly crc?: number;
  /** Heartbeat/HeartbeatResp/ReadIndex/ReadIndexResp: read request context. Vote/PreVote: "transfer" for leader transfer. */
  readonly context?: string;
  /**
   * TransferLeader: the replica to hand leadership to; absent means `from` itself. A follower
   * forwarding a transfer request sends it as `from` = itself, `transferee` = the target, so
   * `from` always names the sender.
   */
  readonly transferee?: NodeId;
  /**
   * Heartbeat: the leader is idle (everything committed and matched everywhere) and stops
   * heartbeating; a caught-up follower stops its election timer until any other message arrives
   * or its host wakes it (see `Raft.quiesce`).
   */
  readonly quiesce?: boolean;
}

/** A linearizable read that became safe: serve it once the applied index reaches `index`. */
export interface ReadState {
  readonly index: number;
  readonly requestId: string;
}

/** The role a replica plays in its group. */
export enum Role {
  Follower = 'Follower',
  PreCandidate = 'PreCandidate',
  Candidate = 'Candidate',
  Leader = 'Leader',
}

/** Volatile state that is useful to observe but need not be persisted. */
export interface SoftState {
  readonly leader: NodeId;
  readonly role: Role;
}

/**
 * One batch of work for the host. The host MUST:
 * 1. start the durable write of `snapshot` (if any), `entries` (replacing any conflicting
 *    suffix) and `hardState` (if any), as one atomic, fsynced batch;
 * 2. send `earlyMessages` at any time (a leader's appends and heartbeats: they depend on
 *    nothing in this batch, so the leader's disk write overlaps replication);
 * 3. restore the state machine from `snapshot` (if any), then apply `committedEntries` in
 *    order: they are durable on a quorum already, so this may happen before step 1 completes;
 * 4. once the write of step 1 is durable, send `messages` (votes, acknowledgements: they
 *    promise what is now on disk), then call `advance(ready)`.
 * `readStates` may be served once the state machine has applied up to each one's index.
 * Between Readies (even while one is outstanding) the host may take and send the heartbeats and
 * heartbeat responses at a durable term (`RawNode.takeLivenessMessages`); nothing else.
 */
export interface Ready {
  readonly softState?: SoftState;
  readonly hardState?: HardState;
  readonly entries: readonly Entry[];
  readonly snapshot?: Snapshot;
  readonly committedEntries: readonly Entry[];
  /** Sendable before the write of this Ready is durable. */
  readonly earlyMessages: readonly Message[];
  /** Sendable only after the write of this Ready is durable. */
  readonly messages: readonly Message[];
  readonly readStates: readonly ReadState[];
  /**
   * Leader: chunks of a streamed snapshot to read for followers (answer each, at any time, with
   * `RawNode.snapshotChunk`; an unanswered one is asked again after the follower's next heartbeat
   * response). Absent when there are none.
   */
  readonly snapshotReads?: readonly SnapshotRead[];
}

/** A source of deterministic pseudo-randomness (election timeouts). */
export interface RandomSource {
  /** An integer uniformly drawn from [0, n). */
  nextInt(n: number): number;
}
