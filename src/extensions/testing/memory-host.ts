/**
 * The in-memory twin of ExtensionHost, for tests of extension code without Raft or a KvNode
 * (kvcascade's own tests, and `kvcascade/testing`): each hosted group is the real versioned state
 * machine and watch hub, proposals apply at once where the twin leads, and the test decides
 * leadership (`lead`, `stepDown`) and the cluster map.
 */
import type { ExtensionHost, HostEvent, HostShard, LeadershipChange, SystemCommand } from '../host.js';
import { NotLeaderError } from '../../node/backend.js';
import { WatchHub } from '../../node/watch-hub.js';
import { initialMap, META_GROUP, type ClusterMap } from '../../sharding/index.js';
import { KvStateMachine, type Command, type CommandOrigin, type CommandResult, type KvStateMachineOptions, type WriteSession } from '../../statemachine/index.js';

/** One group of the twin: a state machine (which records each lambda write's hop count) and its watches. */
export class MemoryShard implements HostShard {
  /** The group's state machine (the real one, in memory). */
  readonly sm: KvStateMachine;
  private readonly watches = new WatchHub(() => this.sm, Date.now);
  private index = 0;
  /** The term this twin leads the group in (undefined: it does not lead). */
  term: number | undefined;

  constructor(
    readonly group: number,
    /** Options of its state machine (a short history window, for tests of compaction). */
    smOptions: KvStateMachineOptions = {},
  ) {
    this.sm = new KvStateMachine(smOptions);
  }

  isLeader(): boolean {
    return this.term !== undefined;
  }

  get(key: string): { value: Uint8Array; version: number } | undefined {
    const got = this.sm.get(key);
    return got ? { value: got.value, version: got.version } : undefined;
  }

  getAt(key: string, revision: number): { value: Uint8Array; version: number } | undefined {
    const got = this.sm.get(key, { atRevision: revision });
    return got ? { value: got.value, version: got.version } : undefined;
  }

  list(prefix: string, o: { readonly limit: number; readonly after?: string; readonly keysOnly?: boolean }) {
    const page = this.sm.list(prefix, { limit: o.limit, keysOnly: o.keysOnly ?? false, ...(o.after !== undefined ? { after: o.after } : {}) });
    return { items: page.items, ...(page.nextAfter !== undefined ? { nextAfter: page.nextAfter } : {}) };
  }

  revision(): number {
    return this.sm.revision;
  }

  async currentRevision(): Promise<number> {
    return this.sm.revision;
  }

  async barrier(): Promise<void> {
    if (!this.isLeader()) throw new NotLeaderError(0, undefined, this.group);
  }

  subscribe(prefix: string, fromRevision: number, sink: Parameters<HostShard['subscribe']>[2], progressIntervalMs: number) {
    return this.watches.add(
      { prefix, fromRevision, progressIntervalMs },
      {
        events: (events, upTo) => sink.events(events.map((e): HostEvent => ({ ...e, hops: e.hops ?? 0 })), upTo),
        progress: (revision) => sink.progress(revision),
        canceled: (reason, compactRevision) => sink.canceled(reason, compactRevision),
        ...(sink.writable ? { writable: () => sink.writable!() } : {}),
        ...(sink.onDrain ? { onDrain: (cb: () => void) => sink.onDrain!(cb) } : {}),
      },
    );
  }

  /** Sends the watches' due progress notifications (a node does it on its ticks). */
  tick(): void {
    this.watches.tick();
  }

  async propose(cmd: SystemCommand, deadlineMs: number): Promise<CommandResult> {
    if (Date.now() > deadlineMs) throw new Error('deadline passed');
    if (!this.isLeader()) throw new NotLeaderError(0, undefined, this.group);
    return this.apply(cmd, 'system', 0);
  }

  /**
   * Applies any command at once (a client's or a lambda's write at depth `hops`, with its client
   * session when it has one: a repeated session write gets its first result), whoever leads.
   */
  apply(cmd: Command, origin: CommandOrigin, hops: number, session?: WriteSession): CommandResult {
    const out = this.sm.apply(++this.index, Date.now(), cmd, origin, session, hops);
    if (out.events.length > 0) this.watches.publish(out.events);
    return out.result;
  }
}

/** An ExtensionHost held in memory: one node hosting every group of its map, leading those the test says. */
export class MemoryExtensionHost implements ExtensionHost {
  private map: ClusterMap;
  private readonly groups = new Map<number, MemoryShard>();
  private readonly leadershipListeners = new Set<(c: LeadershipChange) => void>();
  private readonly mapListeners = new Set<(m: ClusterMap) => void>();

  /** A twin of node `nodeId` in a cluster of one data pool of `shards` shards (the metadata group hosted too). */
  constructor(
    readonly nodeId = 1,
    shards = 1,
    /** Options of the data shards' state machines. */
    smOptions: KvStateMachineOptions = {},
  ) {
    this.map = initialMap([{ id: nodeId, address: `127.0.0.1:${17000 + nodeId}` }], { shards, replicas: 1 });
    this.groups.set(META_GROUP, new MemoryShard(META_GROUP));
    this.groups.get(META_GROUP)!.term = 1;
    for (const s of this.map.shards) this.groups.set(s.group, new MemoryShard(s.group, smOptions));
  }

  shardMap(): ClusterMap {
    return this.map;
  }

  /** Replaces the cluster map and tells the map listeners. */
  setMap(map: ClusterMap): void {
    this.map = map;
    for (const s of map.shards) if (!this.groups.has(s.group)) this.groups.set(s.group, new MemoryShard(s.group));
    for (const fn of this.mapListeners) fn(map);
  }

  onShardMapChanged(fn: (map: ClusterMap) => void): () => void {
    this.mapListeners.add(fn);
    return () => this.mapListeners.delete(fn);
  }

  ledShards(): ReadonlyMap<number, number> {
    const out = new Map<number, number>();
    for (const [g, s] of this.groups) if (g !== META_GROUP && s.term !== undefined) out.set(g, s.term);
    return out;
  }

  onLeadershipChanged(fn: (change: LeadershipChange) => void): () => void {
    this.leadershipListeners.add(fn);
    return () => this.leadershipListeners.delete(fn);
  }

  /** This twin leads data shard `group` from now on, in `term` (a new term: lost, then gained). */
  lead(group: number, term: number): void {
    const s = this.groups.get(group)!;
    if (s.term === term) return;
    if (s.term !== undefined) this.stepDown(group);
    s.term = term;
    this.tell({ group, term, leader: true });
  }

  /** This twin no longer leads data shard `group`. */
  stepDown(group: number): void {
    const s = this.groups.get(group)!;
    if (s.term === undefined) return;
    const term = s.term;
    s.term = undefined;
    this.tell({ group, term, leader: false });
  }

  private tell(c: LeadershipChange): void {
    if (c.group === META_GROUP) return;
    // As the KvNode adapter: outside the caller's stack.
    queueMicrotask(() => {
      for (const fn of this.leadershipListeners) fn(c);
    });
  }

  shard(group: number): MemoryShard | undefined {
    return this.groups.get(group);
  }

  meta(): MemoryShard {
    return this.groups.get(META_GROUP)!;
  }
}
