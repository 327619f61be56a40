/** An in-memory KvBackend twin on one KvStateMachine (single replica, commands applied directly) with fault injection, for service, client and CLI tests. */
import {
  NotLeaderError,
  type CallOptions,
  type DeleteRequest,
  type GetRequest,
  type GetResponse,
  type KvBackend,
  type ListRequest,
  type ListResponse,
  type NodeStatusInfo,
  type PutRequest,
  type TriggerRequest,
  type TriggerResponse,
  type WatchHandle,
  type WatchRequest,
  type WatchSink,
} from '../../src/node/backend.js';
import {
  CompactedRevisionError,
  KvStateMachine,
  type Command,
  type CommandResult,
  type DeleteResult,
  type KvEvent,
  type KvStateMachineOptions,
  type PutResult,
  type TriggerResult,
} from '../../src/statemachine/index.js';

/** The backend operations (for hooks and call counters). */
export type MemoryOp = 'put' | 'get' | 'delete' | 'trigger' | 'list' | 'watch' | 'status';

/** Options of {@link MemoryBackend}. */
export interface MemoryBackendOptions extends KvStateMachineOptions {
  /** Live events a watcher may have buffered (undelivered) before it is cancelled as slow (default 10 000). */
  readonly maxWatchBuffer?: number;
  /** The clock for command timestamps (default Date.now). */
  readonly now?: () => number;
  /** Node id reported by status (default 1). */
  readonly nodeId?: number;
}

/** A flow-controlled sink (the optional capabilities the gRPC service's sink offers). */
interface FlowSink extends WatchSink {
  writable?(): boolean;
  onDrain?(cb: () => void): void;
}

class MemoryWatcher implements WatchHandle {
  /** Next revision to deliver. */
  next: number;
  /** True once caught up with history: live events are buffered from then on. */
  live = false;
  closed = false;
  private buffer: KvEvent[] = [];
  /** Highest revision published while live (deliverable as "seen"). */
  private seen: number;
  private scheduled = false;
  private waitingDrain = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly owner: MemoryBackend,
    readonly req: WatchRequest,
    private readonly sink: FlowSink,
  ) {
    const current = owner.sm.revision;
    this.next = req.fromRevision > 0 ? req.fromRevision : current + 1;
    this.seen = this.next - 1;
    this.timer = setInterval(() => this.progressTick(), Math.max(10, req.progressIntervalMs || 1000));
    this.timer.unref();
    this.schedule();
  }

  cancel(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.owner.watchers.delete(this);
  }

  /** Ends the watch from the server side. */
  serverCancel(reason: string, compactRevision?: number): void {
    if (this.closed) return;
    this.cancel();
    this.sink.canceled(reason, compactRevision);
  }

  publish(events: readonly KvEvent[]): void {
    if (this.closed || !this.live || events.length === 0) return;
    const last = events[events.length - 1]!.revision;
    for (const e of events) if (e.revision >= this.next && e.key.startsWith(this.req.prefix)) this.buffer.push(e);
    if (last > this.seen) this.seen = last;
    if (this.buffer.length > this.owner.maxWatchBuffer) {
      this.serverCancel(`watcher too slow: more than ${this.owner.maxWatchBuffer} events buffered`);
      return;
    }
    this.schedule();
  }

  private writable(): boolean {
    return this.sink.writable ? this.sink.writable() : true;
  }

  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private waitDrain(): void {
    if (this.waitingDrain || !this.sink.onDrain) return;
    this.waitingDrain = true;
    this.sink.onDrain(() => {
      this.waitingDrain = false;
      this.schedule();
    });
  }

  private flush(): void {
    if (this.closed) return;
    if (!this.writable()) return this.waitDrain();
    if (!this.live) {
      const sm = this.owner.sm;
      while (!this.closed && this.next <= sm.revision) {
        let page;
        try {
          page = sm.eventsSince(this.next, this.req.prefix, 100);
        } catch (e) {
          if (e instanceof CompactedRevisionError) {
            this.serverCancel(`revision ${this.next} has been compacted`, e.oldestRevision);
            return;
          }
          throw e;
        }
        const upTo = page.more ? page.nextRevision - 1 : page.revision;
        this.next = upTo + 1;
        if (page.events.length > 0) this.sink.events(page.events, upTo);
        if (!this.writable()) return this.waitDrain();
      }
      this.live = true;
      this.seen = Math.max(this.seen, this.next - 1);
      this.sink.progress(this.seen); // like etcd's "created" response: tells the client where it starts
      return;
    }
    if (this.buffer.length > 0) {
      const batch = this.buffer;
      this.buffer = [];
      this.next = this.seen + 1;
      this.sink.events(batch, this.seen);
    } else if (this.seen >= this.next) {
      this.next = this.seen + 1;
    }
  }

  private progressTick(): void {
    if (this.closed || !this.live || this.buffer.length > 0 || !this.writable()) return;
    this.sink.progress(Math.max(this.seen, this.next - 1));
  }
}

/**
 * A single-replica KvBackend: commands go straight to a KvStateMachine; watches read history with
 * `eventsSince`, then buffer live events (a watcher whose buffer overflows is cancelled as slow).
 * Tests can make it a follower (`setNotLeader`), inject failures or delays (`before`), and count calls.
 */
export class MemoryBackend implements KvBackend {
  readonly sm: KvStateMachine;
  readonly maxWatchBuffer: number;
  readonly watchers = new Set<MemoryWatcher>();
  /** Calls per operation. */
  readonly calls: Record<MemoryOp, number> = { put: 0, get: 0, delete: 0, trigger: 0, list: 0, watch: 0, status: 0 };
  /** The CallOptions of the most recent call. */
  lastCallOptions: CallOptions | undefined;
  /** Run at the start of every operation (after counting it): throw to fail it, return a promise to delay it. */
  before: ((op: MemoryOp, req: unknown) => void | Promise<void>) | undefined;
  private notLeader: { readonly leaderId: number; readonly leaderAddress: string | undefined } | undefined;
  private index = 0;
  private readonly now: () => number;
  private readonly nodeId: number;

  /** Creates an empty store. */
  constructor(opts: MemoryBackendOptions = {}) {
    this.sm = new KvStateMachine(opts);
    this.maxWatchBuffer = opts.maxWatchBuffer ?? 10_000;
    this.now = opts.now ?? Date.now;
    this.nodeId = opts.nodeId ?? 1;
  }

  /** Makes writes and linearizable reads throw NotLeaderError (leader unknown when `leaderAddress` is undefined and `leaderId` 0). */
  setNotLeader(leaderAddress: string | undefined, leaderId = leaderAddress ? 2 : 0): void {
    this.notLeader = { leaderId, leaderAddress };
  }

  /** Makes this backend the leader again. */
  setLeader(): void {
    this.notLeader = undefined;
  }

  /** Applies a command directly (as if committed); returns its result. Rejected commands throw their ValidationError. */
  apply(cmd: Command): CommandResult {
    const out = this.sm.apply(++this.index, this.now(), cmd);
    if (out.result.type === 'rejected') throw out.result.error;
    if (out.events.length > 0) for (const w of [...this.watchers]) w.publish(out.events);
    return out.result;
  }

  /** Compacts history so `revision` is the oldest readable one. */
  compact(revision: number): void {
    this.apply({ type: 'compact', revision });
  }

  /** Cancels every watch from the server side (as a node would on shutdown). */
  cancelWatches(reason: string): void {
    for (const w of [...this.watchers]) w.serverCancel(reason);
  }

  private async enter(op: MemoryOp, req: unknown, opts: CallOptions | undefined, needsLeader: boolean): Promise<void> {
    this.calls[op]++;
    if (opts) this.lastCallOptions = opts;
    if (this.before) await this.before(op, req);
    if (needsLeader && this.notLeader) throw new NotLeaderError(this.notLeader.leaderId, this.notLeader.leaderAddress);
  }

  async put(req: PutRequest, opts: CallOptions): Promise<PutResult> {
    await this.enter('put', req, opts, true);
    const cmd: Command = {
      type: 'put',
      key: req.key,
      value: req.value,
      ...(req.expectedVersion !== undefined ? { expectedVersion: req.expectedVersion } : {}),
      ...(req.returnCurrentValue ? { returnPrevious: true } : {}),
    };
    return this.apply(cmd) as PutResult;
  }

  async delete(req: DeleteRequest, opts: CallOptions): Promise<DeleteResult> {
    await this.enter('delete', req, opts, true);
    const cmd: Command = {
      type: 'delete',
      key: req.key,
      ...(req.expectedVersion !== undefined ? { expectedVersion: req.expectedVersion } : {}),
    };
    return this.apply(cmd) as DeleteResult;
  }

  async trigger(req: TriggerRequest, opts: CallOptions): Promise<TriggerResponse> {
    await this.enter('trigger', req, opts, true);
    const r = this.apply({ type: 'triggerPut', key: req.key, value: req.value }) as TriggerResult;
    return { revision: r.revision, timestampMs: r.timestampMs };
  }

  async get(req: GetRequest, opts: CallOptions): Promise<GetResponse> {
    await this.enter('get', req, opts, req.consistency === 'linearizable');
    const at =
      req.atVersion !== undefined ? { atRevision: req.atVersion } : req.atTimeMs !== undefined ? { atTimeMs: req.atTimeMs } : undefined;
    const found = this.sm.get(req.key, at);
    const revision = this.sm.revision;
    if (!found) return { found: false, version: 0, timestampMs: 0, revision };
    return { found: true, value: found.value, version: found.version, timestampMs: found.timestampMs, revision };
  }

  async list(req: ListRequest, opts: CallOptions): Promise<ListResponse> {
    await this.enter('list', req, opts, req.consistency === 'linearizable');
    const page = this.sm.list(req.prefix, {
      ...(req.limit ? { limit: req.limit } : {}),
      ...(req.after !== undefined ? { after: req.after } : {}),
      keysOnly: req.keysOnly,
    });
    return {
      items: page.items,
      ...(page.nextAfter !== undefined ? { nextAfter: page.nextAfter } : {}),
      revision: page.revision,
    };
  }

  watch(req: WatchRequest, sink: WatchSink): WatchHandle {
    this.calls.watch++;
    const w = new MemoryWatcher(this, req, sink);
    this.watchers.add(w);
    return w;
  }

  async status(): Promise<NodeStatusInfo> {
    await this.enter('status', {}, undefined, false);
    const leader = this.notLeader ? this.notLeader.leaderId : this.nodeId;
    return {
      nodeId: this.nodeId,
      version: 'memory',
      groups: [
        {
          group: 1,
          leader,
          term: 1,
          role: this.notLeader ? 'follower' : 'leader',
          commitIndex: this.index,
          appliedIndex: this.sm.appliedIndex,
          firstIndex: 1,
          lastIndex: this.index,
          voters: [this.nodeId],
          learners: [],
          revision: this.sm.revision,
        },
      ],
      members: [{ id: this.nodeId, address: 'memory' }],
    };
  }
}
