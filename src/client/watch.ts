/** A watch iterator that resumes itself after disconnects, server cancellations and node failures, from the last seen revision + 1 (no gap, no duplicate). */
import * as grpc from '@grpc/grpc-js';
import { neverReachedServer, readKvMetadata } from '../server/metadata.js';
import type { WatchRequestMsg, WatchResponseMsg } from '../server/proto.js';
import { CompactedError, fromServiceError } from './errors.js';
import type { Transport } from './transport.js';
import { watchEvent, type KvWatchBatch, type KvWatchEvent, type KvWatchOptions } from './types.js';

/** Errors that resuming cannot fix: they end the iteration. */
const FATAL = new Set<grpc.status>([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.OUT_OF_RANGE,
  grpc.status.UNIMPLEMENTED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.FAILED_PRECONDITION,
]);

/** Responses buffered before the stream is paused (flow control toward the server), and the level to resume at. */
const HIGH_WATER = 64;
const LOW_WATER = 16;

type Item =
  | { readonly gen: number; readonly kind: 'data'; readonly msg: WatchResponseMsg }
  | { readonly gen: number; readonly kind: 'error'; readonly err: grpc.ServiceError }
  | { readonly gen: number; readonly kind: 'end' };

/** What a watch needs from the client. */
export interface WatchDeps {
  readonly transport: Transport;
  /** The current revision (a linearizable read), used as the start point when no `fromRevision` is given. */
  currentRevision(prefix: string): Promise<number>;
}

/**
 * An async iterator of watch batches under a prefix. It reconnects by itself (to the leader if
 * known, else the next endpoint, with backoff) whenever the stream breaks or the server cancels
 * it, asking for `revision + 1`, and drops anything already delivered. It ends when `close()` is
 * called, the AbortSignal fires, the client closes or the loop is broken out of; it throws
 * CompactedError when the revision to resume from has been compacted, and KvError for requests
 * the server rejects (e.g. an invalid prefix).
 */
export class KvWatch implements AsyncIterableIterator<KvWatchBatch> {
  private lastSeen: number;
  private readonly queue: Item[] = [];
  private wakeup: (() => void) | undefined;
  private stream: grpc.ClientReadableStream<WatchResponseMsg> | undefined;
  private gen = 0;
  private paused = false;
  private stopped = false;
  private readonly iter: AsyncGenerator<KvWatchBatch, undefined, undefined>;
  private readonly onAbort = (): void => this.close();

  /** Starts watching (the first stream opens when iteration begins). */
  constructor(
    private readonly deps: WatchDeps,
    /** The watched prefix. */
    readonly prefix: string,
    private readonly opts: KvWatchOptions = {},
  ) {
    const from = opts.fromRevision ?? 0;
    this.lastSeen = from > 0 ? from - 1 : -1;
    this.iter = this.run();
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    deps.transport.closeSignal.addEventListener('abort', this.onAbort, { once: true });
    if (opts.signal?.aborted || deps.transport.closed) this.close();
  }

  /** Every change up to this revision has been delivered (the watch resumes from the next one); -1 before the start revision is known. */
  get revision(): number {
    return this.lastSeen;
  }

  /** The next batch. */
  next(): Promise<IteratorResult<KvWatchBatch, undefined>> {
    return this.iter.next();
  }

  /** Stops the watch (called when a for-await loop is left early). */
  return(): Promise<IteratorResult<KvWatchBatch, undefined>> {
    this.close();
    return this.iter.return(undefined);
  }

  /** Stops the watch and throws `e` from the iterator. */
  throw(e?: unknown): Promise<IteratorResult<KvWatchBatch, undefined>> {
    this.close();
    return this.iter.throw(e);
  }

  /** This object is its own iterator. */
  [Symbol.asyncIterator](): KvWatch {
    return this;
  }

  /** Stops the watch: the iteration ends normally after batches already returned. */
  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.opts.signal?.removeEventListener('abort', this.onAbort);
    this.deps.transport.closeSignal.removeEventListener('abort', this.onAbort);
    this.stream?.cancel();
    this.wakeup?.();
  }

  private push(item: Item): void {
    if (item.gen !== this.gen) return;
    this.queue.push(item);
    if (this.queue.length >= HIGH_WATER && !this.paused && this.stream) {
      this.paused = true;
      this.stream.pause();
    }
    this.wakeup?.();
  }

  private async take(): Promise<Item | undefined> {
    for (;;) {
      if (this.stopped) return undefined;
      const it = this.queue.shift();
      if (it !== undefined) {
        if (it.gen !== this.gen) continue;
        if (this.paused && this.queue.length <= LOW_WATER) {
          this.paused = false;
          this.stream?.resume();
        }
        return it;
      }
      await new Promise<void>((r) => (this.wakeup = r));
      this.wakeup = undefined;
    }
  }

  /** Converts a response, dropping anything at or below the last seen revision; undefined if nothing is new. */
  private toBatch(m: WatchResponseMsg): KvWatchBatch | undefined {
    const rev = m.revision ?? 0;
    const raw = m.events ?? [];
    if (m.progressNotify || raw.length === 0) {
      if (rev < this.lastSeen) return undefined; // a lagging replica's progress tells nothing new
      this.lastSeen = rev;
      return { events: [], revision: rev, progress: true };
    }
    const events: KvWatchEvent[] = [];
    for (const e of raw) if ((e.revision ?? 0) > this.lastSeen) events.push(watchEvent(e));
    const top = Math.max(rev, events.length > 0 ? events[events.length - 1]!.revision : 0);
    if (top > this.lastSeen) this.lastSeen = top;
    return events.length > 0 ? { events, revision: this.lastSeen, progress: false } : undefined;
  }

  private async *run(): AsyncGenerator<KvWatchBatch, undefined, undefined> {
    const t = this.deps.transport;
    try {
      if (this.lastSeen < 0) {
        try {
          this.lastSeen = await this.deps.currentRevision(this.prefix);
        } catch (e) {
          if (this.stopped) return undefined;
          throw e;
        }
      }
      let attempt = 0;
      while (!this.stopped) {
        yield* this.consume(t.pick(), () => (attempt = 0));
        if (this.stopped) break;
        await t.sleep(t.backoffMs(attempt++), this.opts.signal);
      }
      return undefined;
    } finally {
      this.close();
    }
  }

  /** Runs one stream until it ends or fails; returns to resume, throws to end the iteration. */
  private async *consume(address: string, onData: () => void): AsyncGenerator<KvWatchBatch, void, undefined> {
    const t = this.deps.transport;
    const log = t.opts.log;
    const gen = ++this.gen;
    this.queue.length = 0;
    this.paused = false;
    const req: WatchRequestMsg = {
      prefix: this.prefix,
      fromRevision: this.lastSeen + 1,
      progressIntervalMs: this.opts.progressIntervalMs ?? 0,
    };
    let headers = false;
    let stream: grpc.ClientReadableStream<WatchResponseMsg>;
    try {
      stream = t.kv(address).watch(req, new grpc.Metadata(), {});
    } catch (e) {
      if (this.stopped) return;
      throw e;
    }
    this.stream = stream;
    stream.on('metadata', (md: grpc.Metadata) => {
      headers = true;
      t.learn(md);
    });
    stream.on('data', (msg: WatchResponseMsg) => this.push({ gen, kind: 'data', msg }));
    stream.on('error', (err: grpc.ServiceError) => this.push({ gen, kind: 'error', err }));
    stream.on('end', () => this.push({ gen, kind: 'end' }));
    try {
      for (;;) {
        const item = await this.take();
        if (item === undefined) return;
        if (item.kind === 'data') {
          const m = item.msg;
          onData();
          if (m.canceled) {
            if (m.compactRevision) {
              throw new CompactedError(
                `watch of ${JSON.stringify(this.prefix)} from revision ${this.lastSeen + 1}: ${m.cancelReason || 'compacted'}`,
                m.compactRevision,
                { endpoint: address },
              );
            }
            log.debug({ address, reason: m.cancelReason, resumeFrom: this.lastSeen + 1 }, 'watch canceled by the server; resuming');
            return;
          }
          const batch = this.toBatch(m);
          if (batch) yield batch;
        } else if (item.kind === 'error') {
          const err = item.err;
          if (this.stopped) return;
          if (FATAL.has(err.code)) throw fromServiceError(err, address);
          const f = readKvMetadata(err.metadata);
          t.failed(address, !headers && neverReachedServer(err), f.leader);
          log.debug({ address, code: grpc.status[err.code], details: err.details, resumeFrom: this.lastSeen + 1 }, 'watch stream failed; resuming');
          return;
        } else {
          log.debug({ address, resumeFrom: this.lastSeen + 1 }, 'watch stream ended; resuming');
          return;
        }
      }
    } finally {
      if (this.stream === stream) this.stream = undefined;
      this.gen++;
      stream.cancel();
    }
  }
}
