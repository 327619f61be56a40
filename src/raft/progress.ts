/** The leader's view of one follower: how far it has matched, what to send next, and flow control. */
import type { NodeId } from './types.js';

/** How the leader is currently replicating to a follower. */
export enum ProgressState {
  /** Unknown match: send one append at a time and wait for the answer. */
  Probe = 'Probe',
  /** Match known: stream appends optimistically, bounded by the in-flight window. */
  Replicate = 'Replicate',
  /** The follower needs a snapshot; appends are paused until it is installed. */
  Snapshot = 'Snapshot',
}

/** A bounded window of in-flight append messages, each remembered by its last entry index. */
export class Inflights {
  private readonly indexes: number[] = [];

  /** @param capacity the most append messages in flight to one follower. */
  constructor(readonly capacity: number) {}

  /** Whether the window is full (no more appends may be sent). */
  get full(): boolean {
    return this.indexes.length >= this.capacity;
  }

  /** Number of messages in flight. */
  get count(): number {
    return this.indexes.length;
  }

  /** Records an append whose last entry is `lastIndex`. */
  add(lastIndex: number): void {
    if (this.full) throw new Error('inflights window is full');
    this.indexes.push(lastIndex);
  }

  /** Frees every in-flight message whose last index is <= `index` (acknowledged). */
  freeLE(index: number): void {
    let i = 0;
    while (i < this.indexes.length && this.indexes[i]! <= index) i++;
    if (i > 0) this.indexes.splice(0, i);
  }

  /** Frees the oldest in-flight message (used when a live follower's acks seem lost). */
  freeFirstOne(): void {
    this.indexes.shift();
  }

  /** Forgets everything in flight. */
  reset(): void {
    this.indexes.length = 0;
  }
}

/** Replication progress of one peer, as tracked by the leader. */
export class Progress {
  /** Highest index known to be replicated on the peer. */
  match = 0;
  /** Next index to send. */
  next: number;
  state: ProgressState = ProgressState.Probe;
  /** In Probe state: an append was sent and no answer (or heartbeat response) came back yet. */
  probeSent = false;
  /** In Snapshot state: index of the snapshot being sent. */
  pendingSnapshot = 0;
  /** In Snapshot state: bytes of the snapshot the peer has acknowledged. */
  snapshotOffset = 0;
  /** In Snapshot state: where the next chunk starts (>= `snapshotOffset`; the end of what was sent). */
  snapshotNext = 0;
  /** In Snapshot state: the end offsets of the chunks sent and not yet acknowledged, oldest first. */
  snapshotChunksOut: number[] = [];
  /** In Snapshot state, streamed snapshot: the offset of the chunk asked of the host and not yet answered, or -1. */
  snapshotReadAt = -1;
  /** In Snapshot state: the last chunk was sent (nothing more goes until a rewind). */
  snapshotLastSent = false;
  /** In Snapshot state: the offset the transfer was last rewound to (resent from), or -1; a rejection at it while that resend travels is a duplicate. */
  snapshotRewoundAt = -1;
  /** In Snapshot state: `snapshotOffset` at the previous heartbeat response (-1: none yet). */
  snapshotOffsetAtBeat = -1;
  /** In Snapshot state: heartbeat responses in a row that found `snapshotOffset` unchanged with chunks in flight. */
  snapshotStalledBeats = 0;
  /** In Snapshot state: resent after a stall, one chunk at a time until an acknowledgement advances (a follower busy installing is not flooded). */
  snapshotProbing = false;
  /** The peer communicated with the leader during the current check-quorum period. */
  recentActive = false;
  /** An append went to the peer since the leader's last heartbeat round (see `RaftConfig.quietHeartbeats`). */
  appendedSinceBeat = false;
  /** The commit index the peer was last told it may reach (an append's capped at its last entry, or a heartbeat's); see `Raft.flushCommit`. */
  sentCommit = 0;
  readonly inflights: Inflights;

  constructor(
    readonly id: NodeId,
    next: number,
    maxInflight: number,
    public isLearner: boolean,
  ) {
    this.next = next;
    this.inflights = new Inflights(maxInflight);
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.snapshotOffset = 0;
    this.snapshotNext = 0;
    this.snapshotChunksOut = [];
    this.snapshotReadAt = -1;
    this.snapshotLastSent = false;
    this.snapshotRewoundAt = -1;
    this.snapshotOffsetAtBeat = -1;
    this.snapshotStalledBeats = 0;
    this.snapshotProbing = false;
    this.state = state;
    this.inflights.reset();
  }

  /** Back to probing, one append at a time, from just after the match index (or the snapshot). */
  becomeProbe(): void {
    if (this.state === ProgressState.Snapshot) {
      const pending = this.pendingSnapshot;
      this.resetState(ProgressState.Probe);
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState(ProgressState.Probe);
      this.next = this.match + 1;
    }
  }

  /** Start streaming appends optimistically. */
  becomeReplicate(): void {
    this.resetState(ProgressState.Replicate);
    this.next = this.match + 1;
  }

  /** Start sending the snapshot at `snapshotIndex`. */
  becomeSnapshot(snapshotIndex: number): void {
    this.resetState(ProgressState.Snapshot);
    this.pendingSnapshot = snapshotIndex;
  }

  /** In Snapshot state: chunks in flight (sent and unacknowledged, plus one asked of the host). */
  get snapshotChunksInFlight(): number {
    return this.snapshotChunksOut.length + (this.snapshotReadAt >= 0 ? 1 : 0);
  }

  /** In Snapshot state: a chunk ending at `end` was sent (`last`: the snapshot's final one). */
  snapshotChunkSent(end: number, last: boolean): void {
    this.snapshotChunksOut.push(end);
    this.snapshotNext = end;
    this.snapshotReadAt = -1;
    if (last) this.snapshotLastSent = true;
  }

  /**
   * In Snapshot state: the peer holds the snapshot's bytes up to `offset`; frees the chunks that
   * covers. Returns false when it is stale (not beyond what was acknowledged). An offset past what
   * was sent (the peer had it from before a rewind) moves the transfer there.
   */
  snapshotAcked(offset: number): boolean {
    if (offset <= this.snapshotOffset) return false;
    this.snapshotOffset = offset;
    this.snapshotProbing = false;
    if (offset > this.snapshotNext) {
      this.rewindSnapshot(offset);
      return true;
    }
    let i = 0;
    while (i < this.snapshotChunksOut.length && this.snapshotChunksOut[i]! <= offset) i++;
    if (i > 0) this.snapshotChunksOut.splice(0, i);
    return true;
  }

  /** In Snapshot state: forgets the chunks in flight; the next one goes from `offset`, the peer's position. */
  rewindSnapshot(offset: number): void {
    this.snapshotOffset = offset;
    this.snapshotNext = offset;
    this.snapshotChunksOut = [];
    this.snapshotReadAt = -1;
    this.snapshotLastSent = false;
    this.snapshotRewoundAt = offset;
    this.snapshotStalledBeats = 0;
  }

  /** An acknowledgement up to `n`; returns whether it advanced the match index. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  /** Optimistically advance `next` after sending entries up to `lastIndex` (Replicate state). */
  sentEntries(lastIndex: number, count: number): void {
    if (this.state === ProgressState.Replicate) {
      if (count > 0) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex);
      }
    } else if (this.state === ProgressState.Probe) {
      this.probeSent = true;
    }
  }

  /**
   * A rejection of the append at `rejected`; `matchHint` is the follower's hint of the highest
   * index at which its log may agree. Returns false when the rejection is stale.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === ProgressState.Replicate) {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1, 1);
    this.probeSent = false;
    return true;
  }

  /** Whether sending appends to this peer is paused by flow control. */
  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.Probe:
        return this.probeSent;
      case ProgressState.Replicate:
        return this.inflights.full;
      case ProgressState.Snapshot:
        return true;
    }
  }
}
