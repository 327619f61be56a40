/**
 * The follower side of a streamed snapshot transfer: the Raft core's {@link SnapshotSink} for one
 * replica. Each chunk the core accepts is staged as a chunk record in the node's engine
 * (`RaftLogStore.stageSnapshotChunk`) as it arrives, never kept in the heap; the inbox keeps only
 * the transfer's position, the running CRC-32 of the data and its first bytes (the header), so it
 * can tell, when the last chunk arrived, whether the snapshot is sound (checksum, format, applied
 * index) before the core installs it. The install then reads the chunks back one at a time
 * ({@link streamedSnapshotReader}).
 */
import type { SnapshotMeta, SnapshotSink } from '../raft/index.js';
import { ChunkedByteReader, snapshotAppliedIndex } from '../statemachine/index.js';
import { crc32Update } from '../statemachine/binary.js';

/** The chunk records of a node's store that an inbox writes and an install reads (`RaftLogStore`). */
export interface SnapshotChunkStore {
  stageSnapshotChunk(group: number, index: number, seq: number, bytes: Uint8Array): void;
  readSnapshotChunk(group: number, index: number, seq: number): Uint8Array | undefined;
  /** The installed streamed snapshot's chunk records (undefined when it has none). */
  installedSnapshotChunks(group: number): { readonly index: number; readonly chunks: number; readonly bytes: number } | undefined;
}

/** Chunk bytes received and not yet known durable after which a follower waits for its disk before acknowledging more. */
export const SNAPSHOT_CHUNK_SYNC_BYTES = 8 * 1024 * 1024;

/** Bytes of a snapshot's start kept to read its header (magic, format, applied index). */
const HEAD_BYTES = 32;

interface Transfer {
  readonly index: number;
  readonly term: number;
  seq: number;
  bytes: number;
  /** CRC-32 of the data except its last 4 bytes (which are held in `tail`). */
  crc: number;
  tail: Uint8Array;
  head: Uint8Array;
  /** When chunk 0 arrived (the inbox's clock). */
  readonly startedMs: number;
}

/** The last transfer whose final chunk passed the checks: its size and how long it took from chunk 0 to the last (for the install's log line). */
export interface ReceivedTransfer {
  readonly index: number;
  readonly bytes: number;
  readonly chunks: number;
  readonly ms: number;
}

/** Counters of an inbox (node metrics). */
export interface SnapshotInboxCounters {
  /** Transfers started (chunk 0 accepted), and those whose last chunk passed the checks. */
  transfers: number;
  completed: number;
  /** Chunks and bytes accepted and staged. */
  chunks: number;
  bytes: number;
  /** Chunks refused (while installing, out of order, or the store refused them). */
  refused: number;
  /** Transfers whose last chunk arrived and failed the checks (checksum, end checksum, format, index). */
  failed: number;
  /** The most chunks of one transfer that passed the checks. */
  largestChunks: number;
}

/** One replica's sink of received snapshot chunks. */
export class SnapshotInbox implements SnapshotSink {
  private t: Transfer | undefined;
  private stagedSince = 0;
  /** Counters (read by the node's metrics). */
  readonly counters: SnapshotInboxCounters = { transfers: 0, completed: 0, chunks: 0, bytes: 0, refused: 0, failed: 0, largestChunks: 0 };
  /** The last transfer that completed and passed the checks (undefined before the first). */
  received: ReceivedTransfer | undefined;

  constructor(
    private readonly group: number,
    private readonly store: SnapshotChunkStore,
    /** Whether the replica is still installing an earlier snapshot (chunks are refused meanwhile). */
    private readonly busy: () => boolean,
    /** The clock of the transfer's duration (ms; reported only, decides nothing). */
    private readonly now: () => number = () => 0,
  ) {}

  chunk(meta: SnapshotMeta, offset: number, bytes: Uint8Array): boolean {
    if (this.busy()) return this.refuse();
    let t = this.t;
    if (offset === 0) {
      t = { index: meta.index, term: meta.term, seq: 0, bytes: 0, crc: 0, tail: new Uint8Array(0), head: new Uint8Array(0), startedMs: this.now() };
    } else if (!t || t.index !== meta.index || t.term !== meta.term || t.bytes !== offset) return this.refuse();
    // A private copy: the transport's buffer may be reused once this returns.
    bytes = Uint8Array.prototype.slice.call(bytes);
    this.store.stageSnapshotChunk(this.group, meta.index, t.seq, bytes);
    if (offset === 0) {
      this.t = t;
      this.counters.transfers++;
    }
    t.seq++;
    t.bytes += bytes.length;
    if (t.head.length < HEAD_BYTES) t.head = new Uint8Array(Buffer.concat([t.head, bytes.subarray(0, HEAD_BYTES - t.head.length)]));
    // The CRC covers all but the last 4 bytes: hold the newest 4 back until more arrive.
    if (bytes.length >= 4) {
      t.crc = crc32Update(crc32Update(t.crc, t.tail), bytes.subarray(0, bytes.length - 4));
      t.tail = bytes.slice(bytes.length - 4);
    } else {
      const joined = new Uint8Array(Buffer.concat([t.tail, bytes]));
      const cut = Math.max(0, joined.length - 4);
      t.crc = crc32Update(t.crc, joined.subarray(0, cut));
      t.tail = joined.slice(cut);
    }
    this.counters.chunks++;
    this.counters.bytes += bytes.length;
    this.stagedSince += bytes.length;
    return true;
  }

  /**
   * Whether the transfer of `meta` is complete and sound (every chunk staged, the checksum holds,
   * and equals `endCrc`, the end checksum the leader sent with the last chunk when it sent one;
   * the format is known and its applied index is `meta.index`): the replica's `acceptSnapshot`
   * for a streamed snapshot.
   */
  check(meta: SnapshotMeta, endCrc?: number): boolean {
    const t = this.t;
    if (!t || t.index !== meta.index || t.term !== meta.term || t.tail.length !== 4) return this.fail();
    const stored = ((t.tail[0]! << 24) | (t.tail[1]! << 16) | (t.tail[2]! << 8) | t.tail[3]!) >>> 0;
    if (stored !== t.crc || (endCrc !== undefined && endCrc !== t.crc)) return this.fail();
    try {
      // The header alone, with a checksum made to match: format and applied index.
      const head = t.head.subarray(0, Math.min(t.head.length, t.bytes - 4));
      const probe = new Uint8Array(head.length + 4);
      probe.set(head);
      const crc = crc32Update(0, head);
      probe.set([crc >>> 24, (crc >>> 16) & 0xff, (crc >>> 8) & 0xff, crc & 0xff], head.length);
      if (snapshotAppliedIndex(probe) !== meta.index) return this.fail();
    } catch {
      return this.fail();
    }
    this.counters.completed++;
    this.counters.largestChunks = Math.max(this.counters.largestChunks, t.seq);
    this.received = { index: t.index, bytes: t.bytes, chunks: t.seq, ms: this.now() - t.startedMs };
    return true;
  }

  /**
   * Chunk bytes staged since the driver last made them durable. A chunk need not be durable before
   * it is acknowledged (a restarted follower has no transfer state: the leader starts over, and
   * the installed snapshot is staged after its chunks, so it is never durable without them), but
   * what is staged is held in memory until written: the driver starts writing at once and waits
   * for the disk before acknowledging once this reaches {@link SNAPSHOT_CHUNK_SYNC_BYTES}.
   */
  get stagedBytes(): number {
    return this.stagedSince;
  }

  /** The driver flushed (or is flushing, and will wait for it before acknowledging) what was staged. */
  staged(): void {
    this.stagedSince = 0;
  }

  /** Forgets the transfer (the replica installed it, or the transfer was abandoned). */
  reset(): void {
    this.t = undefined;
  }

  private fail(): false {
    this.counters.failed++;
    return false;
  }

  private refuse(): false {
    this.counters.refused++;
    return false;
  }
}

/**
 * A reader over the body (all but the checksum) of `group`'s installed streamed snapshot, reading
 * its chunk records one at a time; undefined when the group's snapshot is not streamed. The chunks
 * must be durable (or at least written): they are read with `getSync`.
 */
export function streamedSnapshotReader(store: SnapshotChunkStore, group: number): ChunkedByteReader | undefined {
  const c = store.installedSnapshotChunks(group);
  if (!c) return undefined;
  return new ChunkedByteReader((seq) => (seq < c.chunks ? store.readSnapshotChunk(group, c.index, seq) : undefined), c.bytes - 4, 'MALFORMED_SNAPSHOT');
}
