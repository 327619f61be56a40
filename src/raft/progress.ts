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
  /** In Snapshot state: a chunk is in flight and unacknowledged (for a streamed snapshot: asked of the host, or sent). */
  snapshotChunkInFlight = false;
  /** In Snapshot state, streamed snapshot: the chunk asked of the host was answered and sent. */
  snapshotChunkSent = false;
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
    this.snapshotChunkInFlight = false;
    this.snapshotChunkSent = false;
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
