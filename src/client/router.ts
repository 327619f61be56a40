/**
 * Shard-aware routing of the kvcascade client: the cached cluster map (Cluster.GetShardMap, refreshed when a newer map epoch shows up), per-shard leader caches, and the routes key-addressed calls follow.
 *
 * Size: just over 500 lines, one piece because the map cache, the leader caches and the routes
 * read and invalidate each other on every failure; the map decoding is the only separable part.
 */
import * as grpc from '@grpc/grpc-js';
import { readKvMetadata } from '../wire/metadata.js';
import type { GetShardMapRequestMsg, GetShardMapResponseMsg } from '../wire/proto.js';
import { shardOf } from '../sharding/routing.js';
import type { ClusterMap, MemberInfo, PoolSpec, ShardInfo } from '../sharding/types.js';
import { KvError } from './errors.js';
import type { CallRoute, Transport, TransportObserver } from './transport.js';

/** Options of {@link ShardRouter}. */
export interface ShardRouterOptions {
  /** Route by the cluster map at all (false: always the single leader hint, as against pre-sharding servers). */
  readonly enabled: boolean;
  /** Least time between two background map fetches, in ms. */
  readonly refreshIntervalMs: number;
  /** Timeout of one map fetch, in ms. */
  readonly fetchTimeoutMs: number;
  /** Wait after a failed fetch before fetching again unprompted, in ms. */
  readonly failureBackoffMs: number;
}

/** Default {@link ShardRouterOptions}. */
export const DEFAULT_ROUTER_OPTIONS: ShardRouterOptions = {
  enabled: true,
  refreshIntervalMs: 200,
  fetchTimeoutMs: 5_000,
  failureBackoffMs: 1_000,
};

/** After GetShardMap answered UNIMPLEMENTED, how long to wait before trying again even when a response names a map epoch. */
const UNSUPPORTED_BACKOFF_MS = 30_000;

/** Messages of errors a stale map causes (WrongShardError and friends). */
const WRONG_SHARD = /wrong shard|not owned by shard|stale (cluster |shard )?map|cluster map changed|map epoch/i;

/**
 * Whether a failure says the request reached a shard that does not own its key (the sender's map
 * is stale): by the `kv-reason` the server sent (a KvError's `reason`, or a grpc-js error's
 * metadata), or, from servers that send none, by the message.
 */
export function isWrongShard(err: { readonly code?: number | string; readonly details?: string; readonly message?: string; readonly reason?: string | undefined; readonly metadata?: grpc.Metadata | undefined }): boolean {
  if (err.code !== grpc.status.UNAVAILABLE && err.code !== 'UNAVAILABLE') return false;
  const reason = err.reason ?? readKvMetadata(err.metadata).reason;
  if (reason !== undefined) return reason === 'WRONG_SHARD';
  return WRONG_SHARD.test(err.details ?? err.message ?? '');
}

function fail(why: string): never {
  throw new KvError(grpc.status.INTERNAL, `malformed cluster map from GetShardMap: ${why}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function uint(o: Record<string, unknown>, field: string, what: string): number {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(`${what}.${field} must be a non-negative integer`);
  return v;
}

function uints(o: Record<string, unknown>, field: string, what: string): number[] {
  const v = o[field];
  if (!Array.isArray(v) || !v.every((n) => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0)) fail(`${what}.${field} must be a list of ids`);
  return v as number[];
}

function str(o: Record<string, unknown>, field: string, what: string): string {
  const v = o[field];
  if (typeof v !== 'string') fail(`${what}.${field} must be a string`);
  return v;
}

function list(o: Record<string, unknown>, field: string): Record<string, unknown>[] {
  const v = o[field];
  if (!Array.isArray(v) || !v.every(isObject)) fail(`${field} must be a list of objects`);
  return v as Record<string, unknown>[];
}

/**
 * Parses the JSON of a GetShardMapResponse (`{epoch, members, metaVoters, pools, shards,
 * nextGroup}`) into a ClusterMap, checking the shape routing relies on; `epoch` (the response's)
 * is used when the JSON has none. Throws KvError INTERNAL on malformed input.
 */
export function parseClusterMap(json: string, epoch: number): ClusterMap {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (e) {
    fail((e as Error).message);
  }
  if (!isObject(v)) fail('not a JSON object');
  const members: MemberInfo[] = list(v, 'members').map((m, i) => ({
    id: uint(m, 'id', `members[${i}]`),
    address: str(m, 'address', `members[${i}]`),
    state: str(m, 'state', `members[${i}]`) === 'removing' ? 'removing' : 'active',
  }));
  const pools: PoolSpec[] = list(v, 'pools').map((p, i) => {
    const what = `pools[${i}]`;
    const state = str(p, 'state', what);
    if (state !== 'creating' && state !== 'active' && state !== 'deleting') fail(`${what}.state is unknown: ${JSON.stringify(state)}`);
    const shards = uint(p, 'shards', what);
    if (shards < 1) fail(`${what}.shards must be positive`);
    const affinity = p.affinity;
    if (affinity !== undefined) {
      if (typeof affinity !== 'string') fail(`${what}.affinity must be a string`);
      try {
        new RegExp(affinity);
      } catch {
        fail(`${what}.affinity is not a valid regular expression`);
      }
    }
    return {
      name: str(p, 'name', what),
      shards,
      replicas: uint(p, 'replicas', what),
      state,
      ...(affinity !== undefined ? { affinity: affinity as string } : {}),
      ...(typeof p.retentionMs === 'number' ? { retentionMs: p.retentionMs } : {}),
    };
  });
  const shards: ShardInfo[] = list(v, 'shards').map((s, i) => {
    const what = `shards[${i}]`;
    return {
      group: uint(s, 'group', what),
      pool: str(s, 'pool', what),
      index: uint(s, 'index', what),
      replicas: uints(s, 'replicas', what),
      initial: s.initial === undefined ? [] : uints(s, 'initial', what),
      preferredLeader: s.preferredLeader === undefined ? 0 : uint(s, 'preferredLeader', what),
    };
  });
  return {
    epoch: v.epoch === undefined ? epoch : uint(v, 'epoch', 'map'),
    members,
    metaVoters: v.metaVoters === undefined ? [] : uints(v, 'metaVoters', 'map'),
    pools,
    shards,
    nextGroup: v.nextGroup === undefined ? 0 : uint(v, 'nextGroup', 'map'),
  };
}

/** Per-map lookup tables: each shard's candidate addresses, best first. */
const candidateTables = new WeakMap<ClusterMap, Map<number, readonly string[]>>();

/** The addresses to try for shard `group` before its leader is known: the preferred leader, then the other replicas; active members before removing ones. */
function candidatesOf(map: ClusterMap, group: number): readonly string[] {
  let table = candidateTables.get(map);
  if (table === undefined) {
    table = new Map();
    const members = new Map(map.members.map((m) => [m.id, m]));
    for (const s of map.shards) {
      const ranked = s.replicas
        .map((id) => members.get(id))
        .filter((m): m is MemberInfo => m !== undefined && m.address !== '')
        .map((m) => ({ m, rank: (m.id === s.preferredLeader ? 0 : 1) + (m.state === 'active' ? 0 : 2) }))
        .sort((a, b) => a.rank - b.rank || a.m.id - b.m.id)
        .map((x) => x.m.address);
      table.set(s.group, ranked);
    }
    candidateTables.set(map, table);
  }
  return table.get(group) ?? [];
}

/**
 * Keeps the cluster map and a leader cache per shard, and hands out {@link CallRoute}s that send
 * each call to its shard's leader (learned from `kv-leader` + `kv-shard` response metadata; until
 * then the shard's preferred leader or first reachable replica). The map is fetched lazily
 * (see {@link ready}) and again, single-flight and at most once per `refreshIntervalMs`, when a
 * response names a newer `kv-map-epoch` or a call fails because it reached the wrong shard.
 * Without a map (old servers answer GetShardMap with UNIMPLEMENTED, or fetching failed) routes
 * fall back to the transport's single leader hint.
 */
export class ShardRouter implements TransportObserver {
  private current: ClusterMap | undefined;
  /** A first fetch has finished (successfully or not). */
  private attempted = false;
  private unsupported = false;
  private inflight: Promise<ClusterMap> | undefined;
  private lastStart = Number.NEGATIVE_INFINITY;
  /** No unprompted fetch before this time (after failures). */
  private retryAt = 0;
  private timer: NodeJS.Timeout | undefined;
  /** The highest map epoch responses named since the latest fetch started. */
  private wantEpoch = 0;
  /** Resolved when the next fetch ends (see {@link nextRefresh}). */
  private waiters: Array<() => void> = [];
  private readonly leaders = new Map<number, string>();
  private readonly cursors = new Map<number, number>();
  /** Map addresses that could not be connected to (cleared with each new map epoch, or when a server names one as a leader). */
  private readonly unreachables = new Set<string>();
  /** Route of map fetches: the transport's endpoints, learning nothing about leaders. */
  private readonly fetchRoute: CallRoute;

  /** Creates a router over `transport`; nothing is fetched until first use. */
  constructor(
    private readonly transport: Transport,
    private readonly opts: ShardRouterOptions = DEFAULT_ROUTER_OPTIONS,
  ) {
    this.fetchRoute = {
      pick: () => transport.pick(),
      learn: () => undefined,
      failed: (address, connectionFailed) => transport.markFailed(address, connectionFailed),
    };
  }

  /** The cached cluster map, if one was fetched. */
  get map(): ClusterMap | undefined {
    return this.current;
  }

  /** The cached map's epoch (0 without one). */
  get epoch(): number {
    return this.current?.epoch ?? 0;
  }

  /** Whether calls route by shard right now (a map with shards is cached). */
  get routing(): boolean {
    return this.opts.enabled && this.current !== undefined && this.current.shards.length > 0;
  }

  /** Whether the servers answered GetShardMap with UNIMPLEMENTED (pre-sharding servers). */
  get mapUnsupported(): boolean {
    return this.unsupported;
  }

  /**
   * Before the first map fetch has finished, a promise that settles (never rejects) when it has
   * (the fetch gets at most half the time left until `deadlineAt`): key-addressed calls await it
   * so even the first one goes to its shard's leader. Afterwards undefined (and, when a failed
   * fetch's backoff has passed, a background fetch is started).
   */
  ready(deadlineAt: number): Promise<void> | undefined {
    if (!this.opts.enabled || this.transport.closed) return undefined;
    if (this.attempted) {
      if (this.current === undefined && !this.unsupported && this.inflight === undefined && Date.now() >= this.retryAt) this.refresh();
      return undefined;
    }
    // At most half the call's time, so a slow or failing fetch leaves the call time to run unrouted.
    const now = Date.now();
    const budget = Math.max(0, Math.min(this.opts.fetchTimeoutMs, (deadlineAt - now) / 2));
    const p = this.fetch(now + budget).then(
      () => undefined,
      () => undefined,
    );
    return within(p, budget); // a fetch already in flight may have a later deadline
  }

  /** Fetches the map now (joining a fetch in flight), caches it if it is not older than the cached one, and resolves with the newest map known. Rejects with KvError (UNIMPLEMENTED from pre-sharding servers). */
  fetch(deadlineAt: number): Promise<ClusterMap> {
    this.inflight ??= this.doFetch(deadlineAt).finally(() => {
      this.inflight = undefined;
      this.wake();
      if (this.wantEpoch > this.epoch) this.refresh();
    });
    return this.inflight;
  }

  /**
   * One map fetch. A node may answer with a map older than an epoch already known (the cached
   * map's, or one a response named): it lags, or it was removed from the cluster and never learns
   * the maps written after that. Then the next endpoint is asked, each at most once, so a client
   * whose endpoint is such a node still reaches the current map. Returns the newest map known.
   */
  private async doFetch(deadlineAt: number): Promise<ClusterMap> {
    this.lastStart = Date.now();
    const known = Math.max(this.epoch, this.wantEpoch);
    this.wantEpoch = 0; // responses naming a newer epoch during this fetch ask for another
    let answered = '';
    const route: CallRoute = { ...this.fetchRoute, pick: () => (answered = this.fetchRoute.pick()) };
    let newest: ClusterMap | undefined;
    const newestKnown = (m: ClusterMap): ClusterMap => (this.current !== undefined && this.current.epoch > m.epoch ? this.current : m);
    try {
      for (let asked = 1; ; asked++) {
        const res = await this.transport.unary<GetShardMapRequestMsg, GetShardMapResponseMsg>('cluster', 'getShardMap', {}, 'read', deadlineAt, route);
        const map = parseClusterMap(res.mapJson ?? '', res.epoch ?? 0);
        this.unsupported = false;
        this.install(map);
        if (newest === undefined || map.epoch > newest.epoch) newest = map;
        if (map.epoch >= known || asked >= this.transport.opts.endpoints.length || Date.now() >= deadlineAt) break;
        this.transport.opts.log.debug({ address: answered, epoch: map.epoch, known }, 'a node served an older cluster map: asking the next endpoint');
        this.transport.markFailed(answered, false); // moves past it (and drops it as the leader hint)
      }
      return newestKnown(newest);
    } catch (e) {
      if (newest !== undefined) return newestKnown(newest); // a later endpoint failed: the map one gave stands
      if (e instanceof KvError && e.code === 'UNIMPLEMENTED') {
        this.unsupported = true;
        this.retryAt = Date.now() + UNSUPPORTED_BACKOFF_MS;
      } else {
        this.retryAt = Date.now() + this.opts.failureBackoffMs;
        this.transport.opts.log.debug({ err: (e as Error).message }, 'fetching the cluster map failed');
      }
      throw e;
    } finally {
      this.attempted = true;
    }
  }

  /** Caches `map` unless the cached one is newer (a lagging node may serve an old map). */
  private install(map: ClusterMap): void {
    if (this.current !== undefined && map.epoch < this.current.epoch) return;
    if (this.current?.epoch !== map.epoch) {
      this.transport.opts.log.debug({ epoch: map.epoch, shards: map.shards.length }, 'cluster map updated');
      this.unreachables.clear();
    }
    this.current = map;
    const groups = new Set(map.shards.map((s) => s.group));
    for (const g of this.leaders.keys()) if (!groups.has(g)) this.leaders.delete(g);
    for (const g of this.cursors.keys()) if (!groups.has(g)) this.cursors.delete(g);
  }

  /** Fetches the map in the background: at most once per `refreshIntervalMs` (later requests are coalesced into one trailing fetch), never while one is in flight. */
  refresh(): void {
    if (!this.opts.enabled || this.transport.closed || this.inflight !== undefined || this.timer !== undefined) return;
    const now = Date.now();
    const at = Math.max(this.lastStart + this.opts.refreshIntervalMs, this.retryAt);
    if (now >= at) {
      this.fetch(now + this.opts.fetchTimeoutMs).catch(() => undefined);
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.refresh();
      if (this.inflight === undefined) this.wake();
    }, at - now);
    this.timer.unref();
  }

  /** A promise that settles (never rejects) when the map fetch in flight or scheduled ends; undefined when none is. */
  nextRefresh(): Promise<void> | undefined {
    if (this.inflight === undefined && this.timer === undefined) return undefined;
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /**
   * Learns from any response, error or stream metadata: `kv-leader` with `kv-shard` is that
   * shard's leader; a `kv-map-epoch` newer than the cached map's starts a refresh.
   */
  metadata(md: grpc.Metadata | undefined): void {
    const f = readKvMetadata(md);
    if (f.leader !== undefined && f.shard !== undefined && this.routing) this.setLeader(f.shard, f.leader);
    const epoch = f.mapEpoch;
    if (epoch === undefined || epoch <= this.epoch) return;
    if (epoch > this.wantEpoch) this.wantEpoch = epoch;
    if (this.unsupported && Date.now() < this.retryAt) return;
    this.refresh();
  }

  /** A failure caused by a stale map (wrong shard) starts a refresh. */
  failure(err: { readonly code: grpc.status; readonly details?: string }): void {
    if (isWrongShard(err)) this.refresh();
  }

  /** The shard (group) `key` routes to under the cached map, if any. */
  groupOf(key: string): number | undefined {
    const map = this.current;
    if (map === undefined || map.shards.length === 0) return undefined;
    try {
      return shardOf(map, key).group;
    } catch {
      return undefined; // an incomplete map: let the servers route
    }
  }

  /** The cached leader address of shard `group`, if known. */
  leaderOf(group: number): string | undefined {
    return this.leaders.get(group);
  }

  /** Remembers `address` as the leader of shard `group`. */
  setLeader(group: number, address: string): void {
    if (this.transport.isDown(address)) return;
    this.unreachables.delete(address);
    if (this.leaders.get(group) !== address) this.transport.opts.log.debug({ group, leader: address }, 'learned shard leader');
    this.leaders.set(group, address);
  }

  /**
   * Where to send a call for shard `group`: its cached leader, else its preferred leader or next
   * replica that is not known to be unreachable; undefined when there is none (the caller then
   * uses the transport's leader hint and endpoints, and the servers forward).
   */
  addressFor(group: number): string | undefined {
    const t = this.transport;
    const now = Date.now();
    const leader = this.leaders.get(group);
    if (leader !== undefined && !t.isDown(leader, now)) return leader;
    const map = this.current;
    if (map === undefined) return undefined;
    const cands = candidatesOf(map, group);
    const n = cands.length;
    const start = this.cursors.get(group) ?? 0;
    for (let i = 0; i < n; i++) {
      const idx = (start + i) % n;
      const a = cands[idx]!;
      if (!t.isDown(a, now) && !this.unreachables.has(a)) {
        if (i > 0) this.cursors.set(group, idx);
        return a;
      }
    }
    return undefined;
  }

  /** Notes a transient failure of `address` serving shard `group`: follows the redirect to `leader` if another one, else forgets `address` as its leader and moves to its next replica. */
  failedFor(group: number, address: string, leader: string | undefined): void {
    if (leader !== undefined && leader !== address && !this.transport.isDown(leader)) {
      this.leaders.set(group, leader);
      return;
    }
    if (this.leaders.get(group) === address) this.leaders.delete(group);
    const map = this.current;
    if (map === undefined) return;
    const cands = candidatesOf(map, group);
    const cur = this.cursors.get(group) ?? 0;
    if (cands.length > 0 && cands[cur % cands.length] === address) this.cursors.set(group, (cur + 1) % cands.length);
  }

  /** Forgets `address` as the leader of any shard (its node failed). */
  forgetAddress(address: string): void {
    for (const [g, a] of this.leaders) if (a === address) this.leaders.delete(g);
  }

  /**
   * No connection could be made to `address`: forget it as a leader, and stop trying it as a
   * shard's first guess until the map changes or a server names it as a leader (a map address
   * this client cannot reach must not cost every call a failed connection).
   */
  unreachable(address: string): void {
    this.forgetAddress(address);
    this.unreachables.add(address);
  }

  /** The route of a call addressed to `key`: re-resolved on each attempt, so a refreshed map takes effect on retries. */
  keyRoute(key: string): CallRoute {
    return new ShardRoute(this, this.transport, () => this.groupOf(key));
  }

  /** The route of a call addressed to shard `group` (e.g. a list of one shard). */
  groupRoute(group: number): CallRoute {
    return new ShardRoute(this, this.transport, () => (this.routing ? group : undefined));
  }

  /** Stops the trailing refresh timer. */
  close(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.wake();
  }
}

/** A route to one shard's leader (falling back to the transport's leader hint when the shard is unknown). */
class ShardRoute implements CallRoute {
  /** The group the latest attempt was routed to (undefined: the fallback). */
  private group: number | undefined;

  constructor(
    private readonly router: ShardRouter,
    private readonly transport: Transport,
    private readonly resolve: () => number | undefined,
  ) {}

  pick(): string {
    const g = this.resolve();
    this.group = g;
    return (g === undefined ? undefined : this.router.addressFor(g)) ?? this.transport.pick();
  }

  learn(md: grpc.Metadata | undefined, address: string): void {
    // While routing by shard, the single leader hint only serves unrouted calls: keep the first
    // one learned (any live node will do) rather than flip it with every shard's leader.
    if (!this.router.routing || this.transport.leader === undefined) this.transport.learn(md, address);
    const f = readKvMetadata(md);
    if (f.leader === undefined) return;
    // The server names the shard that served; older servers do not, and then it is the one routed to.
    const g = f.shard ?? this.group;
    if (g !== undefined && this.router.routing) this.router.setLeader(g, f.leader);
  }

  failed(address: string, connectionFailed: boolean, md: grpc.Metadata | undefined): void {
    const f = readKvMetadata(md);
    if (connectionFailed) this.router.unreachable(address);
    const g = f.shard ?? this.group;
    if (g === undefined || !this.router.routing) {
      this.transport.failedAt(address, connectionFailed, f.leader);
      return;
    }
    this.transport.markFailed(address, connectionFailed);
    this.router.failedFor(g, address, f.leader);
  }

  beforeRetry(err: grpc.ServiceError, deadlineAt: number): Promise<void> | undefined {
    if (!isWrongShard(err)) return undefined;
    // Let the refresh the failure started (maybe delayed by the rate limit) finish, so the retry uses the new map.
    this.router.refresh();
    const p = this.router.nextRefresh();
    return p === undefined ? undefined : within(p, deadlineAt - Date.now());
  }
}

/** `p`, or nothing after `ms` (the timer is cleared when `p` settles first). */
function within(p: Promise<void>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, ms));
    timer.unref();
    void p.then(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
