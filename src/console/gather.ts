/**
 * The web console's state gathering: one snapshot of the whole cluster as the serving node sees
 * it — every member (up or down, address, version), the pools, every shard's leader, term,
 * voters, learners and per-replica lag, every extension's status on every node, and each node's
 * request rate and p99 latency — built from this node's own state plus the other members'
 * answers, each asked with a short deadline so that a down node shows as down instead of hanging.
 *
 * Pure of I/O: everything comes through {@link ConsoleSources} (gRPC in kvd, fakes in tests).
 */
import type { GroupStatusInfo, NodeStatusInfo } from '../node/backend.js';
import type { ClusterMap } from '../sharding/index.js';

/** One node's request counters, cumulative since it started (rates come from the difference of two samples). */
export interface NodeStats {
  /** Client requests answered (every outcome; data methods only, Status calls left out). */
  readonly requests: number;
  /** Client requests that failed (any status but OK). */
  readonly errors: number;
  /** Cumulative latency histogram of client requests: `le` in seconds (the last is +Inf), `count` requests at or below it. */
  readonly buckets: readonly { readonly le: number; readonly count: number }[];
  /** Resident memory of the node's process (bytes). */
  readonly rssBytes: number;
  /** Seconds since the node's process started. */
  readonly uptimeSeconds: number;
}

/** One extension on one node, as the console shows it. */
export interface ExtensionOnNode {
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  /** loading | running | paused | half-open | failed | unloaded. */
  readonly state: string;
  readonly error: string;
  /** This node leads a shard the extension watches and delivers its events. */
  readonly delivering: boolean;
  readonly runsIn: string;
  readonly invocations: number;
  readonly errors: number;
  readonly timeouts: number;
  readonly workerRestarts: number;
  readonly deadLettered: number;
  /** Events waiting to be delivered, summed over the extension's watches. */
  readonly backlog: number;
  /** The largest last-invocation latency among its watches (ms). */
  readonly lastLatencyMs: number;
  /** Prefixes it watches. */
  readonly prefixes: readonly string[];
}

/** Where the console's data comes from. Every remote call resolves or rejects by `deadlineMs` (absolute, ms since the epoch). */
export interface ConsoleSources {
  /** The serving node's id. */
  readonly selfId: number;
  /** The cluster map the serving node routes with. */
  map(): ClusterMap;
  /** The serving node's own status (not fetched over the network). */
  selfStatus(): Promise<NodeStatusInfo>;
  /** The serving node's extensions. */
  selfExtensions(): readonly ExtensionOnNode[];
  /** The serving node's request counters. */
  selfStats(): Promise<NodeStats>;
  /** Another member's Cluster.Status. */
  remoteStatus(address: string, deadlineMs: number): Promise<NodeStatusInfo>;
  /** Another member's extensions (Admin.ListExtensions, which needs no token). */
  remoteExtensions(address: string, deadlineMs: number): Promise<readonly ExtensionOnNode[]>;
  /** Another member's request counters (Console.NodeStats). */
  remoteStats(address: string, deadlineMs: number): Promise<NodeStats>;
}

/** One point of a node's live charts. */
export interface RatePoint {
  /** When it was measured (ms since the epoch). */
  readonly t: number;
  /** Client requests per second over the last interval. */
  readonly ops: number;
  /** 99th percentile latency over the last interval (ms; the upper bound of the histogram bucket it falls in); null when no request was served. */
  readonly p99Ms: number | null;
}

/** A member as the console shows it. */
export interface NodeView {
  readonly id: number;
  readonly address: string;
  /** 'active', or 'removing' while it is being removed. */
  readonly memberState: string;
  /** Answered its Status call within the deadline. */
  readonly up: boolean;
  /** Why it is shown as down (the call's error). */
  readonly error?: string;
  readonly version?: string;
  /** Epoch of the map it routes with. */
  readonly mapEpoch?: number;
  /** Groups (shards and the metadata group) it leads. */
  readonly leads: number;
  /** Replicas it hosts. */
  readonly replicas: number;
  /** This is the node serving the page. */
  readonly self: boolean;
  readonly rssBytes?: number;
  readonly uptimeSeconds?: number;
  /** Requests per second and p99 latency, most recent last (absent while down or before two samples). */
  readonly history: readonly RatePoint[];
}

/** One replica of a shard. */
export interface ReplicaView {
  readonly node: number;
  /** 'leader', 'follower', 'learner', 'candidate', or 'down' when its node did not answer. */
  readonly role: string;
  /** Log entries behind the leader (from the leader's acknowledged index), when known. */
  readonly lag?: number;
}

/** A shard (or the metadata group) as the console shows it. */
export interface ShardView {
  readonly group: number;
  /** The pool's name ('' = default pool); undefined for the metadata group. */
  readonly pool?: string;
  readonly index?: number;
  /** The leader's id (0 = none known). */
  readonly leader: number;
  /** The leader's node did not answer: the reported leader is stale and an election is due. */
  readonly leaderDown: boolean;
  readonly term: number;
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  readonly replicas: readonly ReplicaView[];
  readonly commitIndex: number;
  readonly revision: number;
  /** User keys (from the leader's report, or the best report available). */
  readonly keys: number;
}

/** A pool as the console shows it. */
export interface PoolView {
  readonly name: string;
  readonly shards: number;
  readonly replicas: number;
  readonly state: string;
  readonly affinity?: string;
  /** User keys over its shards, as far as known. */
  readonly keys: number;
  /** Its shards that have no live leader. */
  readonly leaderless: number;
}

/** An extension and its status on each node. */
export interface ExtensionView {
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  readonly nodes: readonly (ExtensionOnNode & { readonly node: number })[];
}

/** What one console update carries. */
export interface ConsoleSnapshot {
  /** When it was gathered (ms since the epoch). */
  readonly at: number;
  /** How long gathering took (ms). */
  readonly tookMs: number;
  /** The node serving the page. */
  readonly servedBy: number;
  readonly mapEpoch: number;
  readonly nodes: readonly NodeView[];
  readonly pools: readonly PoolView[];
  /** The metadata group first, then the data shards in group order. */
  readonly shards: readonly ShardView[];
  readonly extensions: readonly ExtensionView[];
}

/** Options of {@link ConsoleGatherer}. */
export interface ConsoleGathererOptions {
  /** Deadline of each remote call (default 800 ms). */
  readonly callDeadlineMs?: number;
  /** Points of history kept per node for the charts (default 60). */
  readonly historyPoints?: number;
  /** A longer time between two samples (nobody watched) starts the charts anew (default 5000 ms). */
  readonly maxGapMs?: number;
  /** The clock (tests). */
  readonly now?: () => number;
}

/** The metadata group's id. */
const META_GROUP = 0;

/** How long after a call's deadline the gatherer stops waiting for it. */
const CUT_OFF_GRACE_MS = 200;

/** Everything one member answered (or why it did not). */
interface Answer {
  readonly status?: NodeStatusInfo;
  readonly statusError?: string;
  readonly extensions?: readonly ExtensionOnNode[];
  readonly stats?: NodeStats;
}

/** The 99th percentile (ms) of the requests counted between two cumulative histograms; null when there were none. */
export function p99Between(prev: NodeStats['buckets'], cur: NodeStats['buckets']): number | null {
  const before = new Map(prev.map((b) => [b.le, b.count]));
  const deltas = cur.map((b) => ({ le: b.le, count: Math.max(0, b.count - (before.get(b.le) ?? 0)) }));
  const total = deltas.length > 0 ? deltas[deltas.length - 1]!.count : 0;
  if (total <= 0) return null;
  const target = 0.99 * total;
  let lastFinite = 0;
  for (const d of deltas) {
    if (Number.isFinite(d.le)) lastFinite = d.le;
    if (d.count >= target) return (Number.isFinite(d.le) ? d.le : lastFinite) * 1000;
  }
  return lastFinite * 1000;
}

/** A short, single-line reason for a failed call. */
function reason(e: unknown): string {
  const msg = (e as { details?: string; message?: string })?.details || (e as Error)?.message || String(e);
  return msg.split('\n')[0]!.slice(0, 200);
}

/**
 * Builds {@link ConsoleSnapshot}s. Keeps each node's previous request counters and a short
 * history of rates between calls (the charts); nothing else is remembered from one snapshot to
 * the next.
 */
export class ConsoleGatherer {
  private readonly callDeadlineMs: number;
  private readonly historyPoints: number;
  private readonly maxGapMs: number;
  private readonly now: () => number;
  private readonly lastStats = new Map<number, { t: number; stats: NodeStats }>();
  private readonly history = new Map<number, RatePoint[]>();

  constructor(
    private readonly sources: ConsoleSources,
    opts: ConsoleGathererOptions = {},
  ) {
    this.callDeadlineMs = opts.callDeadlineMs ?? 800;
    this.historyPoints = opts.historyPoints ?? 60;
    this.maxGapMs = opts.maxGapMs ?? 5000;
    this.now = opts.now ?? Date.now;
  }

  /** Asks every member at once (each call bounded by the deadline) and assembles the snapshot. */
  async gather(): Promise<ConsoleSnapshot> {
    const started = this.now();
    const deadlineMs = started + this.callDeadlineMs;
    const map = this.sources.map();
    const self = this.sources.selfId;
    const members = map.members.length > 0 ? map.members : [{ id: self, address: '', state: 'active' as const }];
    // Each call is also cut off here shortly after its deadline, so that a source that ignores
    // it cannot hold the snapshot back.
    const settle = async <T>(p: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: string }> => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const cutOff = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${this.callDeadlineMs} ms`)), this.callDeadlineMs + CUT_OFF_GRACE_MS);
      });
      try {
        return { ok: true, value: await Promise.race([p(), cutOff]) };
      } catch (e) {
        return { ok: false, error: reason(e) };
      } finally {
        clearTimeout(timer);
      }
    };
    const answers = new Map<number, Answer>();
    await Promise.all(
      members.map(async (m) => {
        const isSelf = m.id === self;
        const [st, ext, stats] = await Promise.all([
          settle(() => (isSelf ? this.sources.selfStatus() : this.sources.remoteStatus(m.address, deadlineMs))),
          settle(async () => (isSelf ? this.sources.selfExtensions() : this.sources.remoteExtensions(m.address, deadlineMs))),
          settle(() => (isSelf ? this.sources.selfStats() : this.sources.remoteStats(m.address, deadlineMs))),
        ]);
        answers.set(m.id, {
          ...(st.ok ? { status: st.value } : { statusError: st.error }),
          ...(ext.ok ? { extensions: ext.value } : {}),
          ...(stats.ok ? { stats: stats.value } : {}),
        });
      }),
    );
    const at = this.now();
    const up = (id: number): boolean => answers.get(id)?.status !== undefined;
    const shards = this.shards(map, answers, up);
    const leads = new Map<number, number>();
    const hosted = new Map<number, number>();
    for (const s of shards) {
      if (s.leader && !s.leaderDown) leads.set(s.leader, (leads.get(s.leader) ?? 0) + 1);
    }
    for (const a of answers.values()) {
      if (a.status) hosted.set(a.status.nodeId, a.status.groups.length);
    }
    const nodes = members.map((m): NodeView => {
      const a = answers.get(m.id)!;
      const history = this.record(m.id, at, a.status ? a.stats : undefined);
      return {
        id: m.id,
        address: m.address,
        memberState: m.state,
        up: a.status !== undefined,
        ...(a.statusError !== undefined ? { error: a.statusError } : {}),
        ...(a.status ? { version: a.status.version, mapEpoch: a.status.mapEpoch } : {}),
        leads: leads.get(m.id) ?? 0,
        replicas: hosted.get(m.id) ?? 0,
        self: m.id === self,
        ...(a.status && a.stats ? { rssBytes: a.stats.rssBytes, uptimeSeconds: a.stats.uptimeSeconds } : {}),
        history,
      };
    });
    // Forget nodes that left the map.
    for (const id of [...this.history.keys()]) {
      if (!members.some((m) => m.id === id)) {
        this.history.delete(id);
        this.lastStats.delete(id);
      }
    }
    return {
      at,
      tookMs: at - started,
      servedBy: self,
      mapEpoch: map.epoch,
      nodes,
      pools: this.pools(map, shards),
      shards,
      extensions: this.extensions(members.map((m) => m.id), answers),
    };
  }

  /** Adds a rate point for `id` from its new counters; returns its history (empty while down). */
  private record(id: number, at: number, stats: NodeStats | undefined): readonly RatePoint[] {
    if (!stats) {
      // Down: the next sample after it comes back starts a new series (its counters restart).
      this.lastStats.delete(id);
      this.history.delete(id);
      return [];
    }
    const prev = this.lastStats.get(id);
    this.lastStats.set(id, { t: at, stats });
    const h = this.history.get(id) ?? [];
    this.history.set(id, h);
    if (prev && at - prev.t > this.maxGapMs) {
      // Nobody watched for a while: the old points would sit next to the new ones as if recent.
      h.length = 0;
    } else if (prev && at > prev.t && stats.requests >= prev.stats.requests) {
      h.push({
        t: at,
        ops: Math.round(((stats.requests - prev.stats.requests) * 1000 * 10) / (at - prev.t)) / 10,
        p99Ms: p99Between(prev.stats.buckets, stats.buckets),
      });
      if (h.length > this.historyPoints) h.splice(0, h.length - this.historyPoints);
    } else if (prev && stats.requests < prev.stats.requests) {
      h.length = 0; // the process restarted between two samples
    }
    return [...h];
  }

  /** Every group: what its replicas on the live nodes report, and the map's placement. */
  private shards(map: ClusterMap, answers: ReadonlyMap<number, Answer>, up: (id: number) => boolean): ShardView[] {
    const reports = new Map<number, { node: number; g: GroupStatusInfo }[]>();
    for (const a of answers.values()) {
      if (!a.status) continue;
      for (const g of a.status.groups) {
        let list = reports.get(g.group);
        if (!list) reports.set(g.group, (list = []));
        list.push({ node: a.status.nodeId, g });
      }
    }
    const groups = new Set<number>([META_GROUP, ...map.shards.map((s) => s.group), ...reports.keys()]);
    const out: ShardView[] = [];
    for (const group of [...groups].sort((a, b) => a - b)) {
      const info = map.shards.find((s) => s.group === group);
      const list = reports.get(group) ?? [];
      if (group === META_GROUP && list.length === 0 && map.metaVoters.length === 0) continue;
      const term = list.reduce((t, r) => Math.max(t, r.g.term), 0);
      // The leader's own report, at the highest term; else what the others at that term say.
      const own = list.filter((r) => r.g.role === 'Leader' && r.g.leader === r.node).sort((a, b) => b.g.term - a.g.term)[0];
      const newest = list.filter((r) => r.g.term === term && r.g.leader !== 0)[0];
      const leaderReport = own && own.g.term === term ? own : undefined;
      const leader = leaderReport?.node ?? newest?.g.leader ?? 0;
      const best = leaderReport ?? list.slice().sort((a, b) => b.g.commitIndex - a.g.commitIndex)[0];
      const voters = best?.g.voters ?? (group === META_GROUP ? map.metaVoters : info?.replicas ?? []);
      const learners = best?.g.learners ?? [];
      const placement = [...new Set([...voters, ...learners, ...(info?.replicas ?? []), ...list.map((r) => r.node)])].sort((a, b) => a - b);
      const replicas = placement.map((node): ReplicaView => {
        const mine = list.find((r) => r.node === node);
        const role = !up(node) ? 'down' : node === leader && leaderReport ? 'leader' : learners.includes(node) ? 'learner' : mine ? mine.g.role.toLowerCase() : 'absent';
        const matched = leaderReport?.g.matched.get(node);
        const lag = leaderReport ? (node === leader ? 0 : matched !== undefined ? Math.max(0, leaderReport.g.lastIndex - matched) : undefined) : undefined;
        return { node, role, ...(lag !== undefined ? { lag } : {}) };
      });
      out.push({
        group,
        ...(group === META_GROUP ? {} : { pool: info?.pool ?? best?.g.pool ?? '', index: info?.index ?? best?.g.shardIndex ?? 0 }),
        leader,
        leaderDown: leader !== 0 && !up(leader),
        term,
        voters: [...voters],
        learners: [...learners],
        replicas,
        commitIndex: best?.g.commitIndex ?? 0,
        revision: best?.g.revision ?? 0,
        keys: best?.g.keys ?? 0,
      });
    }
    return out;
  }

  private pools(map: ClusterMap, shards: readonly ShardView[]): PoolView[] {
    return map.pools.map((p): PoolView => {
      const mine = shards.filter((s) => s.pool === p.name);
      return {
        name: p.name,
        shards: p.shards,
        replicas: p.replicas,
        state: p.state,
        ...(p.affinity ? { affinity: p.affinity } : {}),
        keys: mine.reduce((n, s) => n + s.keys, 0),
        leaderless: mine.filter((s) => s.leader === 0 || s.leaderDown).length,
      };
    });
  }

  private extensions(ids: readonly number[], answers: ReadonlyMap<number, Answer>): ExtensionView[] {
    const byName = new Map<string, ExtensionView & { nodes: (ExtensionOnNode & { node: number })[] }>();
    for (const id of ids) {
      const a = answers.get(id);
      if (!a?.status) continue; // a down node's extensions are unknown
      for (const e of a.extensions ?? []) {
        let v = byName.get(e.name);
        if (!v) byName.set(e.name, (v = { name: e.name, version: e.version, generation: e.generation, nodes: [] }));
        if (e.generation > v.generation) Object.assign(v, { version: e.version, generation: e.generation });
        v.nodes.push({ ...e, node: id });
      }
    }
    return [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
}
