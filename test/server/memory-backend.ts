/** An in-memory KvBackend twin (one KvStateMachine per simulated shard, single replica, commands applied directly) with fault injection, for service, client and CLI tests. */
import {
  CrossShardError,
  DeadlineError,
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
  type TxnRequest,
  type WatchHandle,
  type WatchRequest,
  type WatchSink,
} from '../../src/node/backend.js';
import { initialMap, shardOf, shardsForPrefix, type ClusterMap } from '../../src/sharding/index.js';
import {
  CompactedRevisionError,
  KvStateMachine,
  ValidationError,
  type Command,
  type CommandOrigin,
  type CommandResult,
  type DeleteResult,
  type KvEvent,
  type KvStateMachineOptions,
  type PutResult,
  type TriggerResult,
  type TxnResult,
} from '../../src/statemachine/index.js';

/** The backend operations (for hooks and call counters). */
export type MemoryOp = 'put' | 'get' | 'delete' | 'trigger' | 'list' | 'txn' | 'watch' | 'status';

/** Options of {@link MemoryBackend}. */
export interface MemoryBackendOptions extends KvStateMachineOptions {
  /** Live events a watcher may have buffered (undelivered) before it is cancelled as slow (default 10 000). */
  readonly maxWatchBuffer?: number;
  /** The clock for command timestamps (default Date.now). */
  readonly now?: () => number;
  /** Node id reported by status (default 1). */
  readonly nodeId?: number;
  /**
   * Shards to simulate (default 1): the map is `initialMap` with one member and this many shards
   * in the default pool (groups 1..shards); keys go to `shardOf(map, key)`, each shard has its
   * own KvStateMachine and revisions.
   */
  readonly shards?: number;
  /** The map epoch reported by `shardMap()` and status (default 1). */
  readonly mapEpoch?: number;
  /**
   * The client-API address of the map's one member (default: unset, then the first server the
   * test harness starts over this backend; before that `127.0.0.1:1`, which refuses connections).
   */
  readonly address?: string;
}

/** A flow-controlled sink (the optional capabilities the gRPC service's sink offers). */
interface FlowSink extends WatchSink {
  writable?(): boolean;
  onDrain?(cb: () => void): void;
}

/** One simulated shard: its state machine and applied index. */
interface MemoryShard {
  readonly group: number;
  readonly sm: KvStateMachine;
  index: number;
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
    readonly group: number,
    private readonly sm: KvStateMachine,
    readonly req: WatchRequest,
    private readonly sink: FlowSink,
  ) {
    const current = sm.revision;
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
      const sm = this.sm;
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
 * A single-replica KvBackend: commands go straight to the KvStateMachine of the key's shard;
 * watches read history with `eventsSince`, then buffer live events (a watcher whose buffer
 * overflows is cancelled as slow). With `shards > 1` it simulates a sharded node hosting every
 * shard: list and watch then need one shard (`req.shard`, or a prefix of one shard), like a kvd
 * node. Tests can make shards followers (`setNotLeader`), inject failures or delays (`before`),
 * and count calls.
 */
export class MemoryBackend implements KvBackend {
  readonly maxWatchBuffer: number;
  readonly watchers = new Set<MemoryWatcher>();
  /** Each shard's state machine, by group. */
  readonly sms: ReadonlyMap<number, KvStateMachine>;
  /** Calls per operation. */
  readonly calls: Record<MemoryOp, number> = { put: 0, get: 0, delete: 0, trigger: 0, list: 0, txn: 0, watch: 0, status: 0 };
  /** The CallOptions of the most recent call. */
  lastCallOptions: CallOptions | undefined;
  /** Run at the start of every operation (after counting it): throw to fail it, return a promise to delay it. */
  before: ((op: MemoryOp, req: unknown) => void | Promise<void>) | undefined;
  private readonly shards = new Map<number, MemoryShard>();
  /** Shared by objects created with `Object.create(backend)` (tests wrap backends so). */
  private readonly mapHolder: { map: ClusterMap; addressSet: boolean };
  private readonly notLeader = new Map<number, { readonly leaderId: number; readonly leaderAddress: string | undefined }>();
  private readonly now: () => number;
  private readonly nodeId: number;

  /** Creates an empty store. */
  constructor(opts: MemoryBackendOptions = {}) {
    this.maxWatchBuffer = opts.maxWatchBuffer ?? 10_000;
    this.now = opts.now ?? Date.now;
    this.nodeId = opts.nodeId ?? 1;
    const map = initialMap([{ id: this.nodeId, address: opts.address ?? '127.0.0.1:1' }], { shards: opts.shards ?? 1, replicas: 1 });
    this.mapHolder = { map: { ...map, epoch: opts.mapEpoch ?? 1 }, addressSet: opts.address !== undefined };
    for (const s of this.map.shards) this.shards.set(s.group, { group: s.group, sm: new KvStateMachine(opts), index: 0 });
    this.sms = new Map([...this.shards].map(([g, s]) => [g, s.sm]));
  }

  /** The cluster map routed with. */
  get map(): ClusterMap {
    return this.mapHolder.map;
  }

  /** Whether the member address was given or set (the harness sets it to the first server's address otherwise). */
  get addressSet(): boolean {
    return this.mapHolder.addressSet;
  }

  /** Sets the client-API address of the map's member (same epoch: call it before clients fetch the map). */
  setAddress(address: string): void {
    const map = this.mapHolder.map;
    this.mapHolder.map = { ...map, members: map.members.map((m) => ({ ...m, address })) };
    this.mapHolder.addressSet = true;
  }

  /** The state machine of the first shard (group 1): the whole store when there is one shard. */
  get sm(): KvStateMachine {
    return this.shards.get(this.map.shards[0]!.group)!.sm;
  }

  /** The groups, ascending. */
  get groups(): number[] {
    return [...this.shards.keys()];
  }

  /** The group `key` belongs to. */
  groupOf(key: string): number {
    return shardOf(this.map, key).group;
  }

  /** The state machine of `key`'s shard. */
  smOf(key: string): KvStateMachine {
    return this.shards.get(this.groupOf(key))!.sm;
  }

  /**
   * Makes writes and linearizable reads of `groups` (default: every shard) throw NotLeaderError
   * (leader unknown when `leaderAddress` is undefined and `leaderId` 0; `leaderId` 0 with an
   * address means "a node that hosts the shard", as a node not hosting it reports).
   */
  setNotLeader(leaderAddress: string | undefined, leaderId = leaderAddress ? 2 : 0, groups: readonly number[] = this.groups): void {
    for (const g of groups) this.notLeader.set(g, { leaderId, leaderAddress });
  }

  /** Makes this backend the leader of `groups` (default: every shard) again. */
  setLeader(groups: readonly number[] = this.groups): void {
    for (const g of groups) this.notLeader.delete(g);
  }

  /**
   * Applies a command directly (as if committed) to `group`, by default the shard of its key(s)
   * (CrossShardError if a txn's keys differ; keyless commands go to the first shard); returns its
   * result. Rejected commands throw their ValidationError. With a client `session` the command is
   * deduplicated as a kvd shard does it (the state machine keeps the session table). `origin` is
   * `system` by default (test setup may write reserved keys); the client API methods apply as
   * `client`, as a kvd node does, so their writes to the reserved keyspace are refused (RESERVED).
   * `hops` is the lambda hop count the write's versions and events record (0 for clients).
   */
  apply(cmd: Command, group?: number, session?: CallOptions['session'], origin: CommandOrigin = 'system', hops = 0): CommandResult {
    const g = group ?? this.commandGroup(cmd);
    const shard = this.shards.get(g);
    if (!shard) throw new ValidationError('INVALID_ARGUMENT', `shard ${g} does not exist`);
    const out = shard.sm.apply(++shard.index, this.now(), cmd, origin, session, hops);
    if (out.result.type === 'rejected') throw out.result.error;
    if (out.events.length > 0) for (const w of [...this.watchers]) if (w.group === g) w.publish(out.events);
    return out.result;
  }

  /** Compacts the history of `group` (default the first shard) so `revision` is the oldest readable one. */
  compact(revision: number, group = this.map.shards[0]!.group): void {
    this.apply({ type: 'compact', revision }, group);
  }

  /** Cancels every watch from the server side (as a node would on shutdown). */
  cancelWatches(reason: string): void {
    for (const w of [...this.watchers]) w.serverCancel(reason);
  }

  private commandGroup(cmd: Command): number {
    switch (cmd.type) {
      case 'put':
      case 'delete':
      case 'triggerPut':
        return this.groupOf(cmd.key);
      case 'txn':
        return this.groupOfKeys([...cmd.compares.map((c) => c.key), ...cmd.writes.map((w) => w.key)]);
      default:
        return this.map.shards[0]!.group;
    }
  }

  /** The one shard of `keys` (CrossShardError when they span several, as a kvd node answers). */
  private groupOfKeys(keys: readonly string[]): number {
    let first: { key: string; group: number } | undefined;
    for (const key of keys) {
      const group = this.groupOf(key);
      if (!first) first = { key, group };
      else if (group !== first.group) {
        throw new CrossShardError(`keys ${JSON.stringify(first.key)} (shard ${first.group}) and ${JSON.stringify(key)} (shard ${group}) are in different shards`);
      }
    }
    if (!first) throw new CrossShardError('an atomic operation needs at least one key');
    return first.group;
  }

  /** The one group of a prefix-scoped request: `shard` when given, else the prefix's only shard. */
  private groupForPrefix(prefix: string, shard: number | undefined): number {
    if (shard !== undefined) {
      if (!this.shards.has(shard)) throw new ValidationError('INVALID_ARGUMENT', `shard ${shard} does not exist (map epoch ${this.map.epoch})`);
      return shard;
    }
    const groups = this.shardsForPrefix(prefix);
    if (groups.length !== 1) throw new ValidationError('INVALID_ARGUMENT', `prefix ${JSON.stringify(prefix)} spans ${groups.length} shards; name one shard`);
    return groups[0]!;
  }

  private async enter(op: MemoryOp, req: unknown, opts: CallOptions | undefined): Promise<void> {
    this.calls[op]++;
    if (opts) this.lastCallOptions = opts;
    // As a kvd node: a write or a linearizable read fails with DeadlineError once its deadline passed.
    const serializable = (req as { consistency?: string }).consistency === 'serializable';
    if (opts && !serializable && Date.now() >= opts.deadlineMs) throw new DeadlineError(`${op}: deadline exceeded`);
    if (this.before) await this.before(op, req);
  }

  private requireLeader(group: number): void {
    const nl = this.notLeader.get(group);
    if (nl) throw new NotLeaderError(nl.leaderId, nl.leaderAddress, group);
  }

  async put(req: PutRequest, opts: CallOptions): Promise<PutResult> {
    await this.enter('put', req, opts);
    const group = this.groupOf(req.key);
    this.requireLeader(group);
    const cmd: Command = {
      type: 'put',
      key: req.key,
      value: new Uint8Array(req.value), // kept: a copy, not a view of the received message (KvBackend.put)
      ...(req.expectedVersion !== undefined ? { expectedVersion: req.expectedVersion } : {}),
      ...(req.returnCurrentValue ? { currentOnConflict: true } : {}),
    };
    return this.apply(cmd, group, opts.session, 'client', opts.hops) as PutResult;
  }

  async delete(req: DeleteRequest, opts: CallOptions): Promise<DeleteResult> {
    await this.enter('delete', req, opts);
    const group = this.groupOf(req.key);
    this.requireLeader(group);
    const cmd: Command = {
      type: 'delete',
      key: req.key,
      ...(req.expectedVersion !== undefined ? { expectedVersion: req.expectedVersion } : {}),
    };
    return this.apply(cmd, group, opts.session, 'client', opts.hops) as DeleteResult;
  }

  async trigger(req: TriggerRequest, opts: CallOptions): Promise<TriggerResponse> {
    await this.enter('trigger', req, opts);
    const group = this.groupOf(req.key);
    this.requireLeader(group);
    const r = this.apply({ type: 'triggerPut', key: req.key, value: new Uint8Array(req.value) }, group, opts.session, 'client', opts.hops) as TriggerResult;
    return { revision: r.revision, timestampMs: r.timestampMs };
  }

  /** Applies a txn command in the one shard of its keys (CrossShardError otherwise). */
  async txn(req: TxnRequest, opts: CallOptions): Promise<TxnResult> {
    await this.enter('txn', req, opts);
    const group = this.groupOfKeys([...req.compares.map((c) => c.key), ...req.writes.map((w) => w.key)]);
    this.requireLeader(group);
    return this.apply({ type: 'txn', compares: req.compares, writes: req.writes }, group, opts.session, 'client', opts.hops) as TxnResult;
  }

  async get(req: GetRequest, opts: CallOptions): Promise<GetResponse> {
    await this.enter('get', req, opts);
    const group = this.groupOf(req.key);
    if (req.consistency === 'linearizable') this.requireLeader(group);
    const sm = this.shards.get(group)!.sm;
    const at =
      req.atVersion !== undefined ? { atRevision: req.atVersion } : req.atTimeMs !== undefined ? { atTimeMs: req.atTimeMs } : undefined;
    const found = sm.get(req.key, at);
    const revision = sm.revision;
    if (!found) return { found: false, version: 0, timestampMs: 0, revision };
    return { found: true, value: found.value, version: found.version, timestampMs: found.timestampMs, revision };
  }

  async list(req: ListRequest, opts: CallOptions): Promise<ListResponse> {
    await this.enter('list', req, opts);
    const group = this.groupForPrefix(req.prefix, req.shard);
    if (req.consistency === 'linearizable') this.requireLeader(group);
    const page = this.shards.get(group)!.sm.list(req.prefix, {
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
    const group = this.groupForPrefix(req.prefix, req.shard);
    const w = new MemoryWatcher(this, group, this.shards.get(group)!.sm, req, sink);
    this.watchers.add(w);
    return w;
  }

  async status(): Promise<NodeStatusInfo> {
    await this.enter('status', {}, undefined);
    return {
      nodeId: this.nodeId,
      version: 'memory',
      mapEpoch: this.map.epoch,
      groups: this.map.shards.map((info) => {
        const shard = this.shards.get(info.group)!;
        const nl = this.notLeader.get(info.group);
        return {
          group: info.group,
          leader: nl ? nl.leaderId : this.nodeId,
          term: 1,
          role: nl ? 'follower' : 'leader',
          commitIndex: shard.index,
          appliedIndex: shard.sm.appliedIndex,
          firstIndex: 1,
          lastIndex: shard.index,
          voters: [this.nodeId],
          learners: [],
          revision: shard.sm.revision,
          pool: info.pool,
          shardIndex: info.index,
          descriptorEpoch: this.map.epoch,
          matched: nl ? new Map<number, number>() : new Map([[this.nodeId, shard.index]]),
          keys: shard.sm.keyCount,
        };
      }),
      members: [{ id: this.nodeId, address: 'memory' }],
    };
  }

  /** The simulated cluster map (one member, the default pool's shards). */
  shardMap(): ClusterMap {
    return this.map;
  }

  /** The groups whose keys may start with `prefix`, ascending. */
  shardsForPrefix(prefix: string): readonly number[] {
    return shardsForPrefix(this.map, prefix).map((s) => s.group);
  }
}
