/**
 * The leader side of snapshot transfer for a replica whose state machine is durable in its
 * records (state-store.ts): the Raft core asks its Storage for "the snapshot to send" only when a
 * follower is behind the compacted log; this wrapper answers with a streamed snapshot (metadata
 * only) over a consistent view of the engine opened on demand, and serves its chunks as the core
 * asks for them (`Ready.snapshotReads`), each read from an encoder over that view that resumes at
 * the chunk boundary where the follower is. Nothing holds the whole encoding: about one chunk and
 * one encoder part per follower being sent to. The view (and the node's one transfer slot) is
 * released when every transfer over it ended (completed, refused and restarted elsewhere, the
 * follower removed or silent), when leadership is lost, or when it is not asked for.
 */
import { DEFAULT_SNAPSHOT_CHUNKS_IN_FLIGHT, EntryType, type ConfState, type Entry, type InitialState, type NodeId, type Snapshot, type SnapshotChunk, type SnapshotRead, type Storage } from '../raft/index.js';
import type { MemoryStorage } from '../raft/index.js';
import type { EngineView } from '../storage/kv-engine.js';
import { realScheduler, type Scheduler, type TimerHandle } from './scheduler.js';
import { crcBytes, openSnapshotEncoding, SnapshotKeyCountError, type SnapshotEncoding, type SnapshotHeaderTimings, type SnapshotStreamOptions } from '../storage/state-store.js';

/** What a {@link SnapshotSender} needs from its replica and node. */
export interface SnapshotSenderHost {
  readonly group: number;
  /** A consistent view of the node's engine (undefined when it has none yet: nothing is produced). */
  openView(): EngineView | undefined;
  /** The term of the log entry at `index` as the Raft core knows it, or undefined (compacted or absent). */
  termAt(index: number): number | undefined;
  /**
   * The configuration in effect once the entries up to `index` are applied, or undefined when it
   * cannot be told (a configuration change between `index` and what Raft has applied).
   */
  confAt(index: number): ConfState | undefined;
  /** Called when a snapshot became available (the node runs a Ready round: the core retries). */
  produced(snapshot: Snapshot): void;
  /** Called when producing failed (it is retried on the next request). */
  failed(err: unknown): void;
  /** Called with a chunk read for a `SnapshotRead` (the replica hands it to the Raft core and runs a Ready round). */
  chunk?(c: SnapshotChunk): void;
  /**
   * Whether the records may hold deleted keys' latests in `l/` (written before the split, not moved
   * to `t/` yet): the encoding then counts its keys by a pass instead of taking `meta`'s count.
   */
  legacyLatests?(): boolean;
}

/** Defaults of {@link SnapshotSenderOptions}. */
export const SNAPSHOT_SENDER_DEFAULTS = {
  idleMs: 30_000,
  retryMs: 200,
  chunkBytes: 1 << 20,
  chunksInFlight: DEFAULT_SNAPSHOT_CHUNKS_IN_FLIGHT,
} as const;

/**
 * The node-wide bound on snapshot transfers to lagging followers: at most `maxTransfers` views
 * of the engine are open for sending at once (each serves one snapshot, to every follower of its
 * group that needs it), and the bytes held for sending (each follower's current chunk and the
 * encoder's pending parts) are counted (the node's memory budget accounts them). A sender that
 * finds the gate full answers "not yet", and the Raft core asks again later.
 */
export class SnapshotGate {
  private views = 0;
  private readers = 0;
  private held = 0;
  constructor(readonly maxTransfers = 1) {}
  /** Takes a transfer slot (a view to open), or false when all are taken. */
  tryAcquire(): boolean {
    if (this.views >= this.maxTransfers) return false;
    this.views++;
    return true;
  }
  /** Gives a transfer slot back (its view was closed). */
  release(): void {
    this.views--;
  }
  /** Counts `delta` bytes held for sending (negative when they are dropped). */
  hold(delta: number): void {
    this.held += delta;
  }
  /** Counts `delta` followers being sent to (an encoder per follower; negative when one ends). */
  reading(delta: number): void {
    this.readers += delta;
  }
  /** Bytes held for sending by the node's senders (chunks and encoder parts). */
  get heldBytes(): number {
    return this.held;
  }
  /** Engine views open for sending snapshots (transfer slots taken). */
  get openViews(): number {
    return this.views;
  }
  /** Followers a snapshot is being read for (one encoder each). */
  get openReaders(): number {
    return this.readers;
  }
}

/** Options of a {@link SnapshotSender}. */
export interface SnapshotSenderOptions extends SnapshotStreamOptions {
  /** The node-wide gate shared by every replica's sender (default: none, no bound). */
  readonly gate?: SnapshotGate;
  /** Close a view not asked for, and a follower's encoder not read, during this long (ms, default 30 s). */
  readonly idleMs?: number;
  /** Wait at least this long after a failed or unusable production before the next (ms, default 200). */
  readonly retryMs?: number;
  /** Bytes of one chunk (default 1 MiB; the last chunk is shorter). */
  readonly chunkBytes?: number;
  /**
   * The Raft core's window (`RaftConfig.snapshotChunksInFlight`, default 4): each follower's
   * reader keeps this many chunks last handed out (they are in flight, referenced by their
   * messages anyway), so a resend from the follower's acknowledged offset is served without
   * encoding the snapshot again from its start.
   */
  readonly chunksInFlight?: number;
  /** Clock and timers (default: the wall clock); the node passes its own, so a simulated run is reproducible. */
  readonly scheduler?: Scheduler;
  /**
   * Told what a transfer's start took (the node logs it at info): `view opened` (from the first
   * request to the snapshot being usable: the gate's wait, the view, its applied index) and `first
   * chunk read` (from the core asking for a follower's chunk 0 to its bytes: the encoding's header).
   */
  readonly note?: (what: string, detail: Record<string, unknown>) => void;
}

/** A chunk read for a follower (kept to answer a resend). */
interface ReadChunk {
  readonly offset: number;
  readonly bytes: Uint8Array;
  readonly last: boolean;
  readonly crc: number | undefined;
}

/**
 * The encoding of one snapshot read for one follower, chunk by chunk: the encoder's parts are
 * pulled until a chunk is full (or the encoding ended). Held: the last `keep` chunks handed out
 * (the Raft core's window: a lost chunk is asked for again at the follower's offset, at most that
 * far back), the next one, read ahead while the others travel, and the encoder's pending part:
 * `keep` + 1 chunks and a part, all counted in the gate. A request for an earlier offset (the
 * follower starts over) restarts the encoder over the same view, which yields the same bytes.
 */
class FollowerReader {
  private gen: AsyncGenerator<Uint8Array, number, undefined> | undefined;
  /** Bytes of the encoding cut into chunks so far (the offset of the next chunk `next` cuts). */
  private position = 0;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private ended = false;
  private crc: number | undefined;
  /** The chunks last handed out, oldest first (at most `keep`). */
  private handed: ReadChunk[] = [];
  /** The chunk after it, read ahead. */
  private ahead: ReadChunk | undefined;
  /** Bytes counted in the gate. */
  private accounted = 0;
  private chain: Promise<void> = Promise.resolve();
  private readonly queued = new Set<number>();
  closed = false;
  lastAskedMs: number;

  constructor(
    private readonly enc: SnapshotEncoding,
    private readonly chunkBytes: number,
    private readonly keep: number,
    private readonly gate: SnapshotGate | undefined,
    nowMs: number,
  ) {
    this.lastAskedMs = nowMs;
    gate?.reading(1);
  }

  /** Reads the chunk at `offset` (in order with earlier requests; a request already queued is not repeated), then reads the next one ahead. */
  read(offset: number, nowMs: number, deliver: (c: ReadChunk) => void, failed: (e: unknown) => void): void {
    this.lastAskedMs = nowMs;
    if (this.queued.has(offset)) return;
    this.queued.add(offset);
    this.chain = this.chain.then(async () => {
      try {
        if (this.closed) return;
        const c = await this.chunkAt(offset);
        if (!c || this.closed) return;
        deliver(c);
        // While it travels and the follower stores it, the next chunk is read.
        if (!c.last && this.ahead === undefined && this.position === c.offset + c.bytes.length) {
          this.ahead = await this.next();
          this.account();
        }
      } catch (e) {
        if (!this.closed) failed(e);
      } finally {
        this.queued.delete(offset);
      }
    });
  }

  /** Closes the encoder (its iterator) and drops what is held; resolves once the encoder is closed. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.gate?.reading(-1);
    this.drop();
    await this.chain;
    this.drop();
    await this.stopEncoder();
  }

  private async chunkAt(offset: number): Promise<ReadChunk | undefined> {
    const held = this.handed.find((c) => c.offset === offset);
    if (held) return held;
    if (this.ahead?.offset === offset) {
      const c = this.ahead;
      this.ahead = undefined;
      this.hand(c);
      return c;
    }
    if (offset !== this.position) {
      // The follower starts over (or asks for an offset we passed): the same view yields the same bytes.
      await this.stopEncoder();
      this.drop();
      this.position = 0;
      this.ended = false;
      this.crc = undefined;
    }
    for (;;) {
      const c = await this.next();
      if (c === undefined || this.closed) return undefined;
      this.ahead = undefined;
      this.hand(c);
      if (c.offset === offset) return c;
      if (c.offset > offset || c.last) throw new Error(`snapshot chunk at ${offset} asked, not on a chunk boundary`);
    }
  }

  /** Cuts the next chunk of the encoding (advancing `position`), or undefined once the last one was cut. */
  private async next(): Promise<ReadChunk | undefined> {
    if (this.ended && this.pendingBytes === 0) return undefined;
    while (!this.ended && this.pendingBytes <= this.chunkBytes) {
      this.gen ??= this.enc.parts();
      const r = await this.gen.next();
      if (this.closed) return undefined;
      if (r.done) {
        this.ended = true;
        this.crc = r.value;
        this.gen = undefined;
        this.push(crcBytes(r.value));
      } else if (r.value.length > 0) this.push(r.value);
    }
    const take = Math.min(this.chunkBytes, this.pendingBytes);
    const bytes = new Uint8Array(take);
    let at = 0;
    const rest: Uint8Array[] = [];
    for (const p of this.pending) {
      if (at >= take) rest.push(p);
      else if (p.length <= take - at) {
        bytes.set(p, at);
        at += p.length;
      } else {
        const n = take - at;
        bytes.set(p.subarray(0, n), at);
        at += n;
        rest.push(p.subarray(n));
      }
    }
    const last = this.ended && this.pendingBytes === take;
    const c: ReadChunk = { offset: this.position, bytes, last, crc: last ? this.crc : undefined };
    this.position += take;
    this.pending = rest;
    this.pendingBytes -= take;
    this.account();
    return c;
  }

  /** Keeps `c` among the chunks handed out, dropping the oldest beyond `keep`. */
  private hand(c: ReadChunk): void {
    this.handed.push(c);
    if (this.handed.length > this.keep) this.handed.splice(0, this.handed.length - this.keep);
    this.account();
  }

  private push(part: Uint8Array): void {
    this.pending.push(part);
    this.pendingBytes += part.length;
    this.account();
  }

  /** Drops every chunk and part held. */
  private drop(): void {
    this.pending = [];
    this.pendingBytes = 0;
    this.handed = [];
    this.ahead = undefined;
    this.account();
  }

  /** Keeps the gate's count of the bytes held here. */
  private account(): void {
    let now = this.pendingBytes + (this.ahead?.bytes.length ?? 0);
    for (const c of this.handed) now += c.bytes.length;
    this.gate?.hold(now - this.accounted);
    this.accounted = now;
  }

  private async stopEncoder(): Promise<void> {
    const gen = this.gen;
    this.gen = undefined;
    if (gen) await gen.return(0).catch(() => undefined);
  }
}

/** A view opened to send the snapshot it holds, and the followers it is read for. */
interface OpenTransfer {
  readonly view: EngineView;
  readonly enc: SnapshotEncoding;
  readonly snapshot: Snapshot;
  readonly readers: Map<NodeId, FollowerReader>;
  /** A follower was read for (once none is any more, the view is closed at once). */
  used: boolean;
  /** What the last encoding's header took (for `note`). */
  header: SnapshotHeaderTimings | undefined;
}

/**
 * The `Storage` the Raft core of a replica reads: the replica's `MemoryStorage`, except that
 * `snapshot()` (which the core calls only to send one) returns a streamed snapshot served from
 * the records. A stored snapshot that has its data (installed from a leader before the data was
 * dropped) is sent as it is; a records snapshot (metadata only) never is: the first request opens
 * a view of the engine and reads its applied index (`snapshot()` answers undefined, "not yet",
 * meanwhile: the core retries on the next heartbeat response); the core then asks for the chunks
 * (`read`). The view is kept while a transfer over it goes on and still usable (the log still
 * holds the entry after it).
 */
export class SnapshotSender implements Storage {
  private current: OpenTransfer | undefined;
  private producing = false;
  private lastAskedMs = 0;
  private notBeforeMs = 0;
  /** When the snapshot was first asked for and none was open (-1: not waiting), and the gate's refusals since. */
  private wantedSinceMs = -1;
  private gateRefusals = 0;
  /** An encoding's header took a key count from `meta` that the records did not match (deleted keys' latests in `l/`): count by a pass from now on. */
  private countKeysByPass = false;
  private idleTimer: TimerHandle | undefined;
  private readonly scheduler: Scheduler;
  private readonly idleMs: number;
  private readonly retryMs: number;
  private readonly chunkBytes: number;
  private readonly chunksInFlight: number;
  /** Views opened, opened with a usable snapshot, and closed idle; chunks read and their bytes (for tests and metrics). */
  readonly counters = { started: 0, produced: 0, dropped: 0, chunks: 0, bytes: 0 };

  constructor(
    private readonly storage: MemoryStorage,
    private readonly host: SnapshotSenderHost,
    private readonly options: SnapshotSenderOptions = {},
  ) {
    this.idleMs = options.idleMs ?? SNAPSHOT_SENDER_DEFAULTS.idleMs;
    this.retryMs = options.retryMs ?? SNAPSHOT_SENDER_DEFAULTS.retryMs;
    this.chunkBytes = Math.max(1, options.chunkBytes ?? SNAPSHOT_SENDER_DEFAULTS.chunkBytes);
    this.chunksInFlight = Math.max(1, Math.floor(options.chunksInFlight ?? SNAPSHOT_SENDER_DEFAULTS.chunksInFlight));
    this.scheduler = options.scheduler ?? realScheduler;
  }

  initialState(): InitialState {
    return this.storage.initialState();
  }
  entries(lo: number, hi: number): Entry[] {
    return this.storage.entries(lo, hi);
  }
  term(i: number): number {
    return this.storage.term(i);
  }
  firstIndex(): number {
    return this.storage.firstIndex();
  }
  lastIndex(): number {
    return this.storage.lastIndex();
  }

  /** The snapshot to send to a lagging follower (streamed: its chunks are read on request), or undefined while a view is being opened. */
  snapshot(): Snapshot | undefined {
    const now = this.scheduler.now();
    this.lastAskedMs = now;
    const floor = this.storage.firstIndex() - 1;
    const stored = this.storage.snapshot();
    if (stored && stored.data.length > 0 && stored.meta.index >= floor) return stored;
    if (this.current && this.current.snapshot.meta.index >= floor) return this.current.snapshot;
    this.closeCurrent();
    if (this.wantedSinceMs < 0) this.wantedSinceMs = now;
    if (!this.producing && now >= this.notBeforeMs) void this.produce();
    return undefined;
  }

  /** Whether a view is being opened. */
  get busy(): boolean {
    return this.producing;
  }

  /** Followers being read for (for tests). */
  get readers(): number {
    return this.current?.readers.size ?? 0;
  }

  /** Whether a view is open for sending (for tests). */
  get open(): boolean {
    return this.current !== undefined;
  }

  /**
   * Reads the chunk the Raft core asked for (`Ready.snapshotReads`); the host's `chunk` gets it
   * once read. A request for a snapshot no longer open is ignored (the core asks for the snapshot
   * again, and starts over with the new one).
   */
  read(req: SnapshotRead): void {
    const t = this.current;
    if (!t || t.snapshot.meta.index !== req.meta.index || t.snapshot.meta.term !== req.meta.term) return;
    const now = this.scheduler.now();
    this.lastAskedMs = now;
    let reader = t.readers.get(req.to);
    if (!reader) {
      reader = new FollowerReader(t.enc, this.chunkBytes, this.chunksInFlight, this.options.gate, now);
      t.readers.set(req.to, reader);
      t.used = true;
    }
    const r = reader;
    r.read(
      req.offset,
      now,
      (c) => {
        if (this.current !== t || r.closed) return;
        if (c.offset === 0 && this.options.note) this.options.note('snapshot to send: first chunk read', { to: req.to, index: req.meta.index, ms: Math.round(this.scheduler.now() - now), ...t.header });
        this.counters.chunks++;
        this.counters.bytes += c.bytes.length;
        this.host.chunk?.({ to: req.to, index: req.meta.index, offset: c.offset, bytes: c.bytes, last: c.last, ...(c.crc !== undefined ? { crc: c.crc } : {}) });
      },
      (e) => {
        if (this.current !== t) return;
        if (e instanceof SnapshotKeyCountError) this.countKeysByPass = true;
        this.host.failed(e);
        this.closeCurrent(); // a fresh view on the next request
        this.notBeforeMs = this.scheduler.now() + this.retryMs;
      },
    );
  }

  /**
   * Keeps only the transfers the Raft core still runs (`RawNode.snapshotTransfers`): a follower's
   * encoder whose transfer ended (installed, the follower removed, leadership lost) is closed, and
   * once none is left of a view that was read from, the view is closed and its slot released.
   */
  retain(active: ReadonlyArray<{ readonly to: NodeId; readonly index: number }>): void {
    const t = this.current;
    if (!t) return;
    for (const [to, r] of t.readers) {
      if (!active.some((a) => a.to === to && a.index === t.snapshot.meta.index)) {
        t.readers.delete(to);
        void r.close();
      }
    }
    if (t.used && t.readers.size === 0) this.closeCurrent();
  }

  /** Closes the view and every encoder over it (the replica stopped leading, or shuts down). */
  release(): void {
    this.closeCurrent();
    this.idleTimer?.cancel();
    this.idleTimer = undefined;
  }

  private closeCurrent(): void {
    const t = this.current;
    if (!t) return;
    this.current = undefined;
    const readers = [...t.readers.values()];
    t.readers.clear();
    // The encoders' iterators first, then the view; the slot is free at once (the close is cheap).
    this.options.gate?.release();
    void Promise.all(readers.map((r) => r.close())).then(() => t.view.close().catch(() => undefined));
  }

  private async produce(): Promise<void> {
    const gate = this.options.gate;
    if (gate && !gate.tryAcquire()) {
      this.gateRefusals++;
      return; // another shard's snapshot is being sent: asked again later
    }
    const view = this.host.openView();
    if (!view) {
      gate?.release();
      return;
    }
    this.producing = true;
    this.counters.started++;
    const started = this.scheduler.now();
    let kept = false;
    const holder: { t?: OpenTransfer } = {};
    try {
      const enc = await openSnapshotEncoding(view, this.host.group, {
        ...this.options,
        ...(this.countKeysByPass || this.host.legacyLatests?.() === true ? { countKeysByPass: true } : {}),
        onHeader: (h) => {
          if (holder.t) holder.t.header = h;
        },
      });
      const index = enc?.appliedIndex;
      const term = index === undefined ? undefined : this.host.termAt(index);
      const conf = index === undefined ? undefined : this.host.confAt(index);
      if (!enc || term === undefined || conf === undefined || enc.appliedIndex < this.storage.firstIndex() - 1) {
        // No records (a replacement under way), or the point read is no longer usable: later.
        this.notBeforeMs = this.scheduler.now() + this.retryMs;
        return;
      }
      const snapshot: Snapshot = { meta: { index: enc.appliedIndex, term, conf }, data: new Uint8Array(0), streamed: true };
      this.current = holder.t = { view, enc, snapshot, readers: new Map(), used: false, header: undefined };
      kept = true;
      this.counters.produced++;
      const now = this.scheduler.now();
      this.options.note?.('snapshot to send: view opened', { index: snapshot.meta.index, openMs: Math.round(now - started), sinceAskedMs: this.wantedSinceMs < 0 ? 0 : Math.round(now - this.wantedSinceMs), gateRefusals: this.gateRefusals });
      this.wantedSinceMs = -1;
      this.gateRefusals = 0;
      this.armIdle();
      this.host.produced(snapshot);
    } catch (e) {
      this.notBeforeMs = this.scheduler.now() + this.retryMs;
      this.host.failed(e);
    } finally {
      this.producing = false;
      if (!kept) {
        gate?.release();
        await view.close().catch(() => undefined);
      }
    }
  }

  private armIdle(): void {
    this.idleTimer?.cancel();
    this.idleTimer = this.scheduler.setTimeout(() => {
      this.idleTimer = undefined;
      const t = this.current;
      if (!t) return;
      const now = this.scheduler.now();
      // A follower that went silent (no chunk asked for during idleMs) no longer holds its encoder.
      for (const [to, r] of t.readers) {
        if (now - r.lastAskedMs >= this.idleMs) {
          t.readers.delete(to);
          void r.close();
        }
      }
      if (now - this.lastAskedMs >= this.idleMs || (t.used && t.readers.size === 0)) {
        this.closeCurrent();
        this.counters.dropped++;
      } else this.armIdle();
    }, this.idleMs);
    this.idleTimer.unref?.();
  }
}

/**
 * The configuration in effect after applying the entries up to `index`, from `conf` (the one in
 * effect after `applied`) and the log entries between the two: undefined when a configuration
 * change lies between them (or they are not all in `entries`' reach).
 */
export function confAtIndex(
  index: number,
  applied: number,
  conf: ConfState,
  entries: (lo: number, hi: number) => readonly Entry[] | undefined,
): ConfState | undefined {
  if (index === applied) return conf;
  const lo = Math.min(index, applied) + 1;
  const hi = Math.max(index, applied) + 1;
  const between = entries(lo, hi);
  if (!between || between.length !== hi - lo) return undefined;
  return between.some((e) => e.type === EntryType.ConfChange) ? undefined : conf;
}
