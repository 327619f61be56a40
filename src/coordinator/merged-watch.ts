/**
 * One Watch over the shards of a prefix, merged into one stream of responses: a sub-watch per
 * shard (the local backend's, or a stream forwarded toward a node that serves the shard), resume
 * tokens naming each shard's position, coalesced progress, back-pressure and cancellation.
 */
import * as grpc from '@grpc/grpc-js';
import { isReservedKey } from '../sharding/index.js';
import type { KvEvent } from '../statemachine/index.js';
import { NotLeaderError, type WatchHandle, type WatchRequest, type WatchSink } from '../node/backend.js';
import { MAX_FORWARD_HOPS, readKvMetadata } from '../wire/metadata.js';
import type { WatchRequestMsg, WatchResponseMsg } from '../wire/proto.js';
import { encodeResumeToken } from '../wire/request-validation.js';
import type { Coordinator } from './coordinator.js';
import { chunkEvents } from './messages.js';
import { OpStatus } from './op-status.js';

/**
 * The revision a (sub-)watch of `group` starts at: after the revision the resume token names for
 * it; else `fromRevision`; else, when the token names other shards but not this one (a shard that
 * is new since the token was issued, or had not reported yet), 1: all its history is unseen; else
 * 0 (from now on).
 */
export function startRevision(group: number, fromRevision: number, resume: ReadonlyMap<number, number> | undefined): number {
  const seen = resume?.get(group);
  if (seen !== undefined) return seen + 1;
  if (fromRevision > 0) return fromRevision;
  return resume !== undefined && resume.size > 0 ? 1 : 0;
}

/** Where a merged watch writes its responses: a server stream, with its back-pressure. */
export interface WatchOutput {
  write(msg: WatchResponseMsg): void;
  /** Responses written and not yet sent. */
  readonly writableLength: number;
  /** The stream wants writes to pause until 'drain'. */
  readonly writableNeedDrain: boolean;
  once(event: 'drain', fn: () => void): unknown;
  /** Called once when the watch finishes: normally (no status) or with a failure status (naming the shard of a single-shard watch). */
  close(status?: OpStatus): void;
}

/** What a merged watch watches. */
export interface MergedWatchSpec {
  /** The checked request (its `prefix`, `fromRevision`, `progressIntervalMs`). */
  readonly req: WatchRequest;
  /** The shards to watch (at least one). */
  readonly groups: readonly number[];
  /** The resume token's positions, if the request had one. */
  readonly resume?: ReadonlyMap<number, number> | undefined;
  /** How many times the call was already forwarded. */
  readonly hops: number;
  /** The caller's `authorization` metadata, passed on to forwarded sub-watches. */
  readonly authorization?: string | undefined;
  /** Leave out events of reserved keys (the prefix only covers the reserved keyspace). */
  readonly hideReserved: boolean;
  /** Unsent responses before the watch is cancelled as too slow. */
  readonly maxPendingResponses: number;
}

/** One shard's part of a merged watch. */
interface SubWatch {
  readonly group: number;
  /** The revision it was asked to start at (0 = from now on). */
  readonly start: number;
  /** The highest revision of the shard fully seen so far (delivered or skipped); undefined until known. */
  seen: number | undefined;
  /** The sub-watch has sent at least one response (events or progress). */
  reported: boolean;
  /** The backend or upstream ended it by itself (nothing to cancel). */
  ended: boolean;
  handle?: WatchHandle;
  upstream?: grpc.ClientReadableStream<WatchResponseMsg>;
}

/**
 * A Watch across shards (see the gRPC Watch handler for the contract of its responses: resume
 * tokens, single-shard revisions, coalesced progress, cancellation naming the shard). Create it,
 * send the stream's metadata (naming {@link single}), then {@link start}; {@link finish} ends it.
 */
export class MergedWatch {
  /** The shard of a single-shard watch (undefined for several). */
  readonly single: number | undefined;
  private readonly multi: boolean;
  private readonly subs: SubWatch[];
  private finished = false;
  private lastRevision = 0;
  private createdSent = false;
  private lastWriteMs = 0;
  private lastToken: string | undefined;
  private readonly drainWaiters: Array<() => void> = [];
  private drainArmed = false;

  constructor(
    private readonly coord: Coordinator,
    private readonly spec: MergedWatchSpec,
    private readonly out: WatchOutput,
  ) {
    this.multi = spec.groups.length > 1;
    this.single = this.multi ? undefined : spec.groups[0];
    this.subs = spec.groups.map((group) => {
      const start = startRevision(group, spec.req.fromRevision, spec.resume);
      return { group, start, seen: start > 0 ? start - 1 : undefined, reported: false, ended: false };
    });
  }

  /** Opens the sub-watches. */
  start(): void {
    for (const s of this.subs) {
      if (this.finished) break;
      this.open(s);
    }
  }

  /** Ends the watch (idempotent): stops the sub-watches and closes the output with `status`, if any. */
  finish(status?: OpStatus): void {
    if (this.finished) return;
    this.finished = true;
    for (const s of this.subs) this.stopSub(s);
    this.out.close(status?.inShard(this.single));
  }

  /** The resume token of the positions known now. */
  private token(): string {
    const seen = new Map<number, number>();
    for (const s of this.subs) if (s.seen !== undefined) seen.set(s.group, s.seen);
    return encodeResumeToken(seen);
  }

  private stopSub(s: SubWatch): void {
    if (s.handle && !s.ended) {
      try {
        s.handle.cancel();
      } catch (e) {
        this.coord.log.warn({ err: e }, 'watch cancel failed');
      }
    }
    s.upstream?.cancel();
  }

  /** Ends the watch with a `canceled` response carrying the current token. */
  private cancelWatch(reason: string, compactRevision?: number): void {
    if (this.finished) return;
    this.out.write({
      canceled: true,
      cancelReason: reason,
      compactRevision: compactRevision ?? 0,
      revision: this.multi ? 0 : this.lastRevision,
      resumeToken: this.token(),
    });
    this.finish();
  }

  private write(msg: WatchResponseMsg): void {
    if (this.finished) return;
    this.out.write(msg);
    this.lastWriteMs = this.coord.clock.now();
    this.lastToken = msg.resumeToken;
    if (!this.multi && msg.revision !== undefined && msg.revision > this.lastRevision) this.lastRevision = msg.revision;
    if (this.out.writableLength > this.spec.maxPendingResponses) {
      // The client is not reading: tell it to resume later; finish() stops the sub-watches
      // (or, if a backend is still inside watch(), the check after it returns does).
      this.cancelWatch(`watcher too slow: ${this.out.writableLength} responses unsent`);
    }
  }

  /** Runs `cb` once the output has drained (at once, in a microtask, when it needs none). */
  private onDrain(cb: () => void): void {
    if (!this.out.writableNeedDrain) {
      queueMicrotask(cb);
      return;
    }
    this.drainWaiters.push(cb);
    if (!this.drainArmed) {
      this.drainArmed = true;
      this.out.once('drain', () => {
        this.drainArmed = false;
        for (const w of this.drainWaiters.splice(0)) w();
      });
    }
  }

  /** `s` has sent a response: the merged watch's first progress goes out once every shard has. */
  private reported(s: SubWatch): void {
    s.reported = true;
    if (this.multi && !this.createdSent && this.subs.every((x) => x.reported)) {
      this.createdSent = true;
      this.write({ progressNotify: true, revision: 0, resumeToken: this.token() });
    }
  }

  private onProgress(s: SubWatch, revision: number): void {
    if (this.finished || s.ended) return;
    s.seen = Math.max(s.seen ?? 0, revision);
    if (!this.multi) {
      s.reported = true;
      this.write({ progressNotify: true, revision, resumeToken: this.token() });
      return;
    }
    if (!this.createdSent) return this.reported(s);
    s.reported = true;
    const t = this.token();
    if (t !== this.lastToken || this.coord.clock.now() - this.lastWriteMs >= this.spec.req.progressIntervalMs) this.write({ progressNotify: true, revision: 0, resumeToken: t });
  }

  private onEvents(s: SubWatch, events: readonly KvEvent[], revision: number): void {
    if (this.finished || s.ended) return;
    if (events.length === 0) return this.onProgress(s, revision);
    // Puts, deletes and trigger puts alike; chunkEvents never splits a revision.
    for (const r of chunkEvents(events, revision, this.coord.maxResponseBytes, s.group)) {
      s.seen = Math.max(s.seen ?? 0, r.revision!);
      this.write({ ...r, resumeToken: this.token() });
      if (this.finished) return;
    }
    this.reported(s);
  }

  private onCanceled(s: SubWatch, reason: string, compactRevision: number | undefined): void {
    if (this.finished || s.ended) return;
    s.ended = true;
    this.cancelWatch(this.multi ? `shard ${s.group}: ${reason}` : reason, compactRevision);
  }

  /**
   * The backend sink of `s`. Besides the WatchSink methods, it reports back-pressure
   * (`writable`/`onDrain`, optional capabilities a backend may use to stop feeding a watcher
   * whose client is not reading).
   */
  private sinkOf(s: SubWatch): WatchSink & { writable(): boolean; onDrain(cb: () => void): void } {
    return {
      writable: () => !this.finished && !this.out.writableNeedDrain,
      onDrain: (cb) => this.onDrain(cb),
      events: (events, revision) => {
        try {
          this.onEvents(s, this.spec.hideReserved ? events.filter((e) => !isReservedKey(e.key)) : events, revision);
        } catch (e) {
          this.finish(this.coord.toStatus(e, 'watch'));
        }
      },
      progress: (revision) => this.onProgress(s, revision),
      canceled: (reason, compactRevision) => this.onCanceled(s, reason, compactRevision),
    };
  }

  /** Watches shard `s` through a stream forwarded to `target`, one hop further. */
  private forwardSub(s: SubWatch, target: string): grpc.ClientReadableStream<WatchResponseMsg> {
    const { hops, authorization, req, hideReserved } = this.spec;
    const md = this.coord.forwardMetadata({ hops, lambdaHops: 0, ...(authorization !== undefined ? { authorization } : {}) });
    this.coord.log.debug({ target, group: s.group, hops: hops + 1 }, 'forwarding a watch');
    const upReq: WatchRequestMsg = { prefix: req.prefix, fromRevision: s.start, progressIntervalMs: req.progressIntervalMs, shard: s.group };
    const up = this.coord.stubs.kv(target).watch(upReq, md, {});
    let paused = false;
    up.on('data', (m: WatchResponseMsg) => {
      if (this.finished || s.ended) return;
      if (m.canceled) return this.onCanceled(s, m.cancelReason || 'canceled by the shard', m.compactRevision || undefined);
      const events = hideReserved ? (m.events ?? []).filter((e) => !isReservedKey(e.key ?? '')) : (m.events ?? []);
      if (events.length > 0) {
        s.seen = Math.max(s.seen ?? 0, m.revision ?? 0);
        this.write({ events: events.map((e) => ({ ...e, shard: s.group })), revision: m.revision ?? 0, resumeToken: this.token() });
        this.reported(s);
      } else this.onProgress(s, m.revision ?? 0);
      if (!this.finished && !paused && this.out.writableNeedDrain) {
        paused = true;
        up.pause();
        this.onDrain(() => {
          paused = false;
          up.resume();
        });
      }
    });
    up.on('error', (err: grpc.ServiceError) => {
      if (this.finished || s.ended) return;
      s.ended = true;
      if (this.multi) this.cancelWatch(`shard ${s.group}: ${err.details}`, readKvMetadata(err.metadata).compactRevision);
      else this.finish(this.coord.forwardFailure(err, target, s.group));
    });
    up.on('end', () => {
      if (this.finished || s.ended) return;
      s.ended = true;
      if (this.multi) this.cancelWatch(`shard ${s.group}: the forwarded watch ended`);
      else this.finish();
    });
    return up;
  }

  /** Opens shard `s`'s sub-watch: on the local backend, or forwarded toward its leader. */
  private open(s: SubWatch): void {
    const { req, hops } = this.spec;
    const subReq: WatchRequest = { prefix: req.prefix, fromRevision: s.start, progressIntervalMs: req.progressIntervalMs, shard: s.group };
    try {
      const handle = this.coord.backend.watch(subReq, this.sinkOf(s));
      s.handle = handle;
      if (this.finished && !s.ended) handle.cancel(); // finished while the backend was still inside watch()
    } catch (e) {
      if (this.finished) return;
      if (e instanceof NotLeaderError && e.leaderAddress && hops < MAX_FORWARD_HOPS && e.leaderAddress !== this.coord.self) {
        this.coord.noteNotLeader(e.group ?? s.group, e);
        s.upstream = this.forwardSub(s, e.leaderAddress);
        return;
      }
      s.ended = true;
      const status = this.coord.toStatus(e, 'watch');
      // E.g. CompactedRevisionError: OUT_OF_RANGE with kv-compact-revision.
      if (!this.multi) return this.finish(status);
      this.cancelWatch(`shard ${s.group}: ${status.message}`, status.fields.compactRevision);
    }
  }
}
