/**
 * Watches of one shard replica: each watcher is a cursor into the state machine's event history,
 * fed live events when caught up and paged from history when behind, so a slow watcher costs
 * no memory per event and never slows the write path.
 */
import { CompactedRevisionError, type KvEvent, type KvStateMachine } from '../statemachine/index.js';
import type { WatchHandle, WatchRequest, WatchSink } from './backend.js';

/** Defaults of {@link WatchHubOptions}, and of a watch's progress interval. */
export const WATCH_HUB_DEFAULTS = {
  pageEvents: 1000,
  maxLagRevisions: 50_000,
  maxWatchers: 10_000,
  /** Progress notifications of a watch that asked for none (interval 0) come this often (ms). */
  progressIntervalMs: 1000,
} as const;

/** Limits of a watch hub. */
export interface WatchHubOptions {
  /** Events per history page when catching up. */
  readonly pageEvents?: number;
  /** A watcher whose sink stays backed up while this many revisions pile up is cancelled. */
  readonly maxLagRevisions?: number;
  /** Most watchers on one replica. */
  readonly maxWatchers?: number;
}

interface Watcher {
  readonly id: number;
  readonly prefix: string;
  /** Next revision this watcher must see. */
  next: number;
  readonly sink: WatchSink;
  readonly progressIntervalMs: number;
  lastSentMs: number;
  waitingForDrain: boolean;
  closed: boolean;
}

/** The watchers of one replica's state machine. */
export class WatchHub {
  private readonly watchers = new Map<number, Watcher>();
  private seq = 0;
  private readonly pageEvents: number;
  private readonly maxLagRevisions: number;
  private readonly maxWatchers: number;

  constructor(
    private readonly sm: () => KvStateMachine,
    private readonly nowMs: () => number,
    opts: WatchHubOptions = {},
  ) {
    this.pageEvents = opts.pageEvents ?? WATCH_HUB_DEFAULTS.pageEvents;
    this.maxLagRevisions = opts.maxLagRevisions ?? WATCH_HUB_DEFAULTS.maxLagRevisions;
    this.maxWatchers = opts.maxWatchers ?? WATCH_HUB_DEFAULTS.maxWatchers;
  }

  /** Number of active watchers. */
  get size(): number {
    return this.watchers.size;
  }

  /** Starts a watch; history from `fromRevision` is delivered first. */
  add(req: WatchRequest, sink: WatchSink): WatchHandle {
    if (this.watchers.size >= this.maxWatchers) {
      sink.canceled(`too many watchers on this node (limit ${this.maxWatchers})`);
      return { cancel: () => {} };
    }
    const current = this.sm().revision;
    const w: Watcher = {
      id: ++this.seq,
      prefix: req.prefix,
      next: req.fromRevision > 0 ? req.fromRevision : current + 1,
      sink,
      progressIntervalMs: req.progressIntervalMs > 0 ? req.progressIntervalMs : WATCH_HUB_DEFAULTS.progressIntervalMs,
      lastSentMs: this.nowMs(),
      waitingForDrain: false,
      closed: false,
    };
    this.watchers.set(w.id, w);
    this.pump(w);
    // Like etcd's "created": tell the watcher at once how far it has seen when it starts caught up.
    if (!w.closed && w.next > this.sm().revision) w.sink.progress(w.next - 1);
    return { cancel: () => this.remove(w) };
  }

  /** Feeds events just applied (whole revisions, in order). */
  publish(events: readonly KvEvent[]): void {
    if (events.length === 0) return;
    const first = events[0]!.revision;
    const last = events[events.length - 1]!.revision;
    for (const w of this.watchers.values()) {
      if (w.closed || w.next > last) continue;
      if (w.next !== first || w.waitingForDrain) {
        this.pump(w); // behind: read from history
        continue;
      }
      const mine = events.filter((e) => e.key.startsWith(w.prefix));
      w.next = last + 1;
      if (mine.length > 0) this.deliver(w, mine, last);
    }
  }

  /** Sends due progress notifications and cancels watchers that fell too far behind. */
  tick(): void {
    const now = this.nowMs();
    const rev = this.sm().revision;
    for (const w of this.watchers.values()) {
      if (w.closed) continue;
      if (w.waitingForDrain) {
        if (rev - w.next > this.maxLagRevisions) {
          this.cancel(w, `slow watcher: more than ${this.maxLagRevisions} revisions behind; resume from revision ${w.next}`);
        }
        continue;
      }
      if (w.next <= rev) {
        this.pump(w);
        continue;
      }
      if (now - w.lastSentMs >= w.progressIntervalMs) {
        w.lastSentMs = now;
        w.sink.progress(w.next - 1);
      }
    }
  }

  /** The state machine was replaced by a snapshot: watchers re-read history from their cursor. */
  restored(): void {
    for (const w of this.watchers.values()) if (!w.closed) this.pump(w);
  }

  /** Ends every watch (node shutdown or leadership-independent close). */
  closeAll(reason: string): void {
    for (const w of [...this.watchers.values()]) this.cancel(w, reason);
  }

  private pump(w: Watcher): void {
    const sm = this.sm();
    while (!w.closed && !w.waitingForDrain && w.next <= sm.revision) {
      let page;
      try {
        page = sm.eventsSince(w.next, w.prefix, this.pageEvents);
      } catch (e) {
        if (e instanceof CompactedRevisionError) {
          this.cancel(w, `revision ${w.next} is compacted; oldest available is ${e.oldestRevision}`, e.oldestRevision);
          return;
        }
        throw e;
      }
      const upTo = page.more ? page.nextRevision - 1 : page.revision;
      w.next = page.more ? page.nextRevision : page.revision + 1;
      if (page.events.length > 0) this.deliver(w, page.events, upTo);
      else if (!page.more) break;
    }
  }

  private deliver(w: Watcher, events: readonly KvEvent[], upTo: number): void {
    w.lastSentMs = this.nowMs();
    w.sink.events(events, upTo);
    if (w.sink.writable && !w.sink.writable()) {
      w.waitingForDrain = true;
      w.sink.onDrain?.(() => {
        if (w.closed) return;
        w.waitingForDrain = false;
        this.pump(w);
      });
    }
  }

  private cancel(w: Watcher, reason: string, compactRevision?: number): void {
    if (w.closed) return;
    this.remove(w);
    w.sink.canceled(reason, compactRevision);
  }

  private remove(w: Watcher): void {
    w.closed = true;
    this.watchers.delete(w.id);
  }
}
