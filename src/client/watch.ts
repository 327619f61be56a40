/** A watch iterator that resumes itself after disconnects, server cancellations and node failures, with the server's resume token (or from the last seen revision + 1): no gap, no duplicate. */
import * as grpc from '@grpc/grpc-js';
import type { WatchRequestMsg, WatchResponseMsg } from '../wire/proto.js';
import { encodeResumeToken } from '../wire/request-validation.js';
import { CompactedError, fromServiceError } from './errors.js';
import { neverSent, statusError, type CallRoute, type Transport } from './transport.js';
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
  /** Where each (re)connection goes (default: the transport's leader hint and endpoints). */
  route?(): CallRoute;
  /**
   * Where "now" is for the prefix (a linearizable read), used as the start point when neither
   * `fromRevision` nor `resumeToken` is given: the revision of its one shard, or each shard's
   * revision when it spans several.
   */
  currentRevision(prefix: string): Promise<WatchStart>;
}

/** The current position of a prefix: one shard's revision, or every shard's (by group). */
export type WatchStart = { readonly revision: number } | { readonly shardRevisions: ReadonlyMap<number, number> };

/**
 * An async iterator of watch batches under a prefix (of one shard or of several, merged by the
 * server). It reconnects by itself (to the leader if known, else the next endpoint, with backoff)
 * whenever the stream breaks or the server cancels it, sending the last `resumeToken` the server
 * gave (every shard's position) or, from servers that give none, asking for `revision + 1`; it
 * drops anything already delivered. It ends when `close()` is called, the AbortSignal fires, the
 * client closes or the loop is broken out of; it throws CompactedError when the revision to
 * resume from has been compacted, and KvError for requests the server rejects (e.g. an invalid
 * prefix or resume token).
 */
export class KvWatch implements AsyncIterableIterator<KvWatchBatch> {
  private lastSeen: number;
  /** Events at or below this revision are dropped in shards with no event delivered yet. */
  private floor: number;
  /** The highest revision delivered per shard (token mode). */
  private readonly seen = new Map<number, number>();
  /** The resume token to reconnect with ('' = none yet). */
  private token: string;
  /** The token came from the server (not from the caller's options). */
  private serverToken = false;
  /** The start point, read when the watch is created (when neither `fromRevision` nor `resumeToken` is given). */
  private readonly start: Promise<WatchStart> | undefined;
  private readonly queue: Item[] = [];
  private wakeup: (() => void) | undefined;
  private stream: grpc.ClientReadableStream<WatchResponseMsg> | undefined;
  private gen = 0;
  private paused = false;
  private stopped = false;
  private readonly iter: AsyncGenerator<KvWatchBatch, undefined, undefined>;
  private readonly onAbort = (): void => this.close();

  /** Starts watching: reads the start point now if needed; the first stream opens when iteration begins. */
  constructor(
    private readonly deps: WatchDeps,
    /** The watched prefix. */
    readonly prefix: string,
    private readonly opts: KvWatchOptions = {},
  ) {
    const from = opts.fromRevision ?? 0;
    this.lastSeen = from > 0 ? from - 1 : -1;
    this.token = opts.resumeToken ?? '';
    this.floor = Math.max(0, this.lastSeen);
    if (this.lastSeen < 0 && this.token === '' && !opts.signal?.aborted && !deps.transport.closed) {
      // Read "now" right away, so changes made after watch() returns are delivered even if
      // iteration begins later.
      this.start = deps.currentRevision(prefix);
      this.start.catch(() => undefined); // reported when iterated
    }
    this.iter = this.run();
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    deps.transport.closeSignal.addEventListener('abort', this.onAbort, { once: true });
    if (opts.signal?.aborted || deps.transport.closed) this.close();
  }

  /** Every change up to this revision has been delivered (the watch resumes from the next one); -1 before the start revision is known. Over several shards: the highest revision seen in any. */
  get revision(): number {
    return this.lastSeen;
  }

  /** The last resume token the server sent ('' before any, or the one given in the options): resume a later watch of the same prefix with it. */
  get resumeToken(): string {
    return this.token;
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

  /** Converts a response, dropping anything already delivered; undefined if nothing is new. */
  private toBatch(m: WatchResponseMsg): KvWatchBatch | undefined {
    const before = this.token;
    this.takeToken(m);
    const rev = m.revision ?? 0;
    const raw = m.events ?? [];
    if (m.progressNotify || raw.length === 0) {
      // A lagging replica's progress tells nothing new (unless it moves the resume token).
      if (rev < this.lastSeen && this.token === before) return undefined;
      if (rev > this.lastSeen) this.lastSeen = rev;
      return { events: [], revision: this.lastSeen, progress: true, resumeToken: this.token };
    }
    const events: KvWatchEvent[] = [];
    if (!this.serverToken) {
      // Servers without resume tokens serve one shard: revisions are totally ordered.
      for (const e of raw) if ((e.revision ?? 0) > this.lastSeen) events.push(watchEvent(e));
    } else {
      // Per shard; a response holds whole revisions (several events may share one), so the
      // positions move only after the whole response.
      const reached = new Map<number, number>();
      for (const e of raw) {
        const shard = e.shard ?? 0;
        const r = e.revision ?? 0;
        if (r > (this.seen.get(shard) ?? this.floor)) {
          events.push(watchEvent(e));
          if (r > (reached.get(shard) ?? 0)) reached.set(shard, r);
        }
      }
      for (const [shard, r] of reached) this.seen.set(shard, r);
    }
    const top = Math.max(rev, events.length > 0 ? events[events.length - 1]!.revision : 0);
    if (top > this.lastSeen) this.lastSeen = top;
    return events.length > 0 ? { events, revision: this.lastSeen, progress: false, resumeToken: this.token } : undefined;
  }

  /** Keeps the response's resume token, if it has one. */
  private takeToken(m: WatchResponseMsg): void {
    if (!m.resumeToken) return;
    if (!this.serverToken) {
      // From now on dedup is per shard; what was delivered so far was at or below lastSeen.
      this.floor = Math.max(this.floor, this.lastSeen);
      this.serverToken = true;
    }
    this.token = m.resumeToken;
  }

  /** The request of the next stream: with the resume token if there is one, else from the last seen revision + 1. */
  private request(): WatchRequestMsg {
    const req: WatchRequestMsg = {
      prefix: this.prefix,
      progressIntervalMs: this.opts.progressIntervalMs ?? 0,
      ...(this.opts.shard !== undefined ? { shard: this.opts.shard } : {}),
    };
    if (this.token !== '') {
      req.resumeToken = this.token;
      // The caller's token with the caller's start point for shards it does not name; a server token names every shard.
      if (!this.serverToken && this.opts.fromRevision !== undefined) req.fromRevision = this.opts.fromRevision;
    } else {
      req.fromRevision = this.lastSeen + 1;
    }
    return req;
  }

  private async *run(): AsyncGenerator<KvWatchBatch, undefined, undefined> {
    const t = this.deps.transport;
    try {
      if (this.start !== undefined) {
        try {
          const now = await this.start;
          if ('revision' in now) this.lastSeen = this.floor = now.revision;
          // Several shards: start each right after its revision, with a token naming them all.
          else this.token = encodeResumeToken(now.shardRevisions);
        } catch (e) {
          if (this.stopped) return undefined;
          throw e;
        }
      }
      let attempt = 0;
      while (!this.stopped) {
        yield* this.consume(this.deps.route?.() ?? t, () => (attempt = 0));
        if (this.stopped) break;
        await t.sleep(t.backoffMs(attempt++), this.opts.signal);
      }
      return undefined;
    } finally {
      this.close();
    }
  }

  /** Runs one stream until it ends or fails; returns to resume, throws to end the iteration. */
  private async *consume(route: CallRoute, onData: () => void): AsyncGenerator<KvWatchBatch, void, undefined> {
    const t = this.deps.transport;
    const log = t.opts.log;
    const gen = ++this.gen;
    this.queue.length = 0;
    this.paused = false;
    const req = this.request();
    const resumeFrom = (): string | number => (this.token !== '' ? 'token' : this.lastSeen + 1);
    let headers = false;
    let address: string;
    let stream: grpc.ClientReadableStream<WatchResponseMsg>;
    try {
      address = route.pick();
      const connectMs = t.opts.connectTimeoutMs ?? 0;
      const gate = t.whenConnected(address, connectMs);
      if (gate !== true && !(await gate)) {
        if (this.stopped) return;
        // A frozen or partitioned node: try the next one.
        route.failed(address, true, undefined);
        log.debug({ address, connectMs, resumeFrom: resumeFrom() }, 'watch could not connect; resuming elsewhere');
        return;
      }
      const auth = t.authReady(Date.now() + 30_000);
      if (auth) await auth;
      if (this.stopped || gen !== this.gen) return;
      stream = t.kv(address).watch(req, t.kvMetadata(), {});
    } catch (e) {
      if (this.stopped) return;
      throw e;
    }
    this.stream = stream;
    stream.on('metadata', (md: grpc.Metadata) => {
      headers = true;
      t.observer?.metadata(md);
      route.learn(md, address);
    });
    stream.on('status', (st: grpc.StatusObject) => t.observer?.metadata(st.metadata));
    stream.on('data', (msg: WatchResponseMsg) => this.push({ gen, kind: 'data', msg }));
    stream.on('error', (err: grpc.ServiceError) => this.push({ gen, kind: 'error', err }));
    stream.on('end', () => this.push({ gen, kind: 'end' }));
    // A node other calls found frozen will not deliver either: resume elsewhere now, not after keepalive notices.
    const offSuspect = t.onSuspect((a) => {
      if (a === address) this.push({ gen, kind: 'error', err: statusError(grpc.status.UNAVAILABLE, `${address} is suspect (an attempt timed out)`) });
    });
    try {
      for (;;) {
        const item = await this.take();
        if (item === undefined) return;
        if (item.kind === 'data') {
          const m = item.msg;
          onData();
          if (m.canceled) {
            this.takeToken(m);
            if (m.compactRevision) {
              throw new CompactedError(
                `watch of ${JSON.stringify(this.prefix)} from revision ${this.lastSeen + 1}: ${m.cancelReason || 'compacted'}`,
                m.compactRevision,
                { endpoint: address },
              );
            }
            log.debug({ address, reason: m.cancelReason, resumeFrom: resumeFrom() }, 'watch canceled by the server; resuming');
            return;
          }
          const batch = this.toBatch(m);
          if (batch) yield batch;
        } else if (item.kind === 'error') {
          const err = item.err;
          if (this.stopped) return;
          t.observer?.failure(err);
          if (FATAL.has(err.code)) throw fromServiceError(err, address);
          route.failed(address, !headers && neverSent(err), err.metadata);
          log.debug({ address, code: grpc.status[err.code], details: err.details, resumeFrom: resumeFrom() }, 'watch stream failed; resuming');
          return;
        } else {
          log.debug({ address, resumeFrom: resumeFrom() }, 'watch stream ended; resuming');
          return;
        }
      }
    } finally {
      offSuspect();
      if (this.stream === stream) this.stream = undefined;
      this.gen++;
      stream.cancel();
    }
  }
}
