/**
 * The node-level deterministic simulation: real `KvNode`s (3 or 5) over in-memory engines with
 * their crash model (unsynced batches are lost), a simulated network (sim-network.ts) and a
 * virtual clock (virtual-scheduler.ts), all drawn from one seed. Clients call the nodes'
 * coordinators as the gRPC handlers do (sim-rpc.ts) — puts, deletes, linearizable gets and
 * conditional puts — with bounded attempts and a write session;
 * watchers follow the data prefix (one through the coordinator's MergedWatch, as the gRPC Watch
 * handler does, one on the node's own watch), resuming on another node from the last revision
 * they saw; a lambda runs in-process behind the real delivery layer
 * (extensions/delivery.ts ShardDelivery → WatchDispatcher over the kvNodeHost seam), with a
 * runner whose lambda writes a key per event through the node's coordinator (routedLambdaKv, as
 * kvd gives lambdas) and records what it handled. One schedule: start, wait for leaders, run clients,
 * watchers and a random fault schedule for a while, heal and restart everything, let it settle,
 * then check (checks.ts).
 *
 * Fault mix (drawn per schedule): crash + restart of a node or of the data leader, losing its
 * unsynced writes (sometimes keeping a prefix of them, a torn log; disks take 0-5 ms per batch,
 * so writes stay unsynced for a while); a power loss of a majority or of every node at once; a partition (a minority cut
 * off, or an even split); one-way link cuts; message loss and duplication; slow links (large
 * random delays reorder messages); a pause (frozen process) of the data leader or another node;
 * and, in one schedule in three, node clocks that disagree by up to ±500 ms.
 *
 * Determinism: the same seed gives the same run (`runDigest`). The node's driver takes the run's
 * virtual scheduler (NodeOptions.scheduler, a view owned by the incarnation: `viewFor`) and its
 * replicas' election seeds come from the schedule's seed (NodeOptions.seed). The coordinator
 * (CoordinatorOptions.clock, with its MergedWatches) and the extension layer (delivery,
 * dispatchers, registry writes, lambda services: ExtensionHost.clock, which kvNodeHost takes from
 * KvNode.scheduler) run on that same view by injection. What still reads the global clock and
 * timers: the storage layer (MemoryEngine's latency, the state store's and LevelEngine's
 * yielding), value release and the loopback transport's setImmediate, server/lambda-kv.ts's
 * retry sleep, performance.now latency metrics, and this file's own lambda and reload; the run
 * installs the virtual scheduler as those globals while it runs (VirtualScheduler.install), so
 * they are virtual and reproducible too.
 *
 * Size: one class (about 800 lines) for one schedule's cluster, clients, watchers, lambda and
 * faults, because they all draw from the run's one random sequence in one order (that order is
 * what makes a seed replay); the network, the gRPC edge, the clock and the checks are modules of
 * their own.
 */
import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { pino, type Logger } from 'pino';
import { Coordinator } from '../../../src/coordinator/coordinator.js';
import { MergedWatch, type WatchOutput } from '../../../src/coordinator/merged-watch.js';
import type { RequestOf, ResponseOf, UnaryOp } from '../../../src/coordinator/messages.js';
import { ShardDelivery } from '../../../src/extensions/delivery.js';
import { ExtensionMetrics } from '../../../src/extensions/extension-metrics.js';
import { WriteSessionSource } from '../../../src/extensions/write-session.js';
import { routedLambdaKv } from '../../../src/server/lambda-kv.js';
import type { ExtensionEvent } from '../../../src/extensions/api.js';
import type { DispatchWatch } from '../../../src/extensions/dispatcher.js';
import { kvNodeHost } from '../../../src/extensions/kv-node-host.js';
import type { Loaded } from '../../../src/extensions/loaded.js';
import type { ExtensionRecord } from '../../../src/extensions/registry.js';
import type { ExtensionRunner } from '../../../src/extensions/sandbox/runner.js';
import type { WatchHandle } from '../../../src/node/backend.js';
import { DATA_GROUP, KvNode, META_GROUP, type NodeOptions } from '../../../src/node/kv-node.js';
import { NODE_DEFAULTS } from '../../../src/node/node-options.js';
import { SeededRandom, type NodeId } from '../../../src/raft/index.js';
import type { KvEvent, ListResult } from '../../../src/statemachine/index.js';
import { MemoryEngine } from '../../../src/storage/kv-engine.js';
import { readKvMetadata } from '../../../src/wire/metadata.js';
import type { DeleteResponseMsg, EventMsg, GetResponseMsg, PutResponseMsg } from '../../../src/wire/proto.js';
import type { KvOperation } from '../linearizability.js';
import { CLIENT_HOST, SimNetwork } from './sim-network.js';
import { serveUnary, serviceError, simNodeStubs, type UnaryOutcome } from './sim-rpc.js';
import { SIM_OWNER, VirtualScheduler, type Owner } from './virtual-scheduler.js';

/** The prefix clients write under, watchers follow and the lambda watches. */
export const DATA_PREFIX = '/k/';

/** Where the lambda writes what it saw: one key per event it handled. */
export const DERIVED_PREFIX = '/d/';

/** The key the lambda writes for the event of `key` at `revision`. */
export const derivedKey = (key: string, revision: number): string => `${DERIVED_PREFIX}${key.slice(DATA_PREFIX.length)}@${revision}`;

/** Virtual epoch of every run (a fixed date; the seed moves it a little so replicas' seeds differ per run). */
const EPOCH_MS = Date.UTC(2026, 0, 1);

/** What one schedule does; everything not given is drawn from the seed. */
export interface NodeSimOptions {
  readonly seed: number;
  /** Nodes (default: 3, or 5 for one seed in four). */
  readonly nodes?: number;
  /** Virtual ms of clients and faults after the cluster is up (default 1500). */
  readonly activeMs?: number;
  /** Virtual ms after the final heal for deliveries and watches to catch up (default 2000). */
  readonly settleMs?: number;
  /** Inject faults (default true). */
  readonly faults?: boolean;
  /** One line per fault and per notable event (debugging a seed). */
  readonly trace?: (line: string) => void;
  /** Compact the log every this many applied entries (default: 40 in one schedule in three, else 20 000). */
  readonly snapshotEvery?: number;
  /** Bytes of one snapshot chunk (default: the node's, 1 MiB: a simulated shard's snapshot is then one chunk). */
  readonly snapshotChunkBytes?: number;
}

/** One watch stream a watcher held: where it was opened, from which revision, and what it got. */
export interface WatchStream {
  readonly watcher: number;
  readonly node: NodeId;
  /** Through the coordinator's MergedWatch (the gRPC Watch path), or the node's own watch (the backend). */
  readonly via: 'coordinator' | 'backend';
  readonly from: number;
  /** Each call of the sink, in arrival order. */
  readonly batches: { readonly kind: 'events' | 'progress'; readonly events: SeenEvent[]; readonly revision: number }[];
  /** Set when the server cancelled it. */
  canceled?: string;
}

/** A watch or history event reduced to what the checks compare. */
export interface SeenEvent {
  readonly revision: number;
  readonly key: string;
  readonly type: string;
  readonly value: string | undefined;
}

/** One successful lambda invocation (its write under DERIVED_PREFIX acknowledged). */
export interface Delivery {
  readonly node: NodeId;
  /** When the invocation started (virtual ms). */
  readonly startedAt: number;
  /** When it finished (its write acknowledged). */
  readonly at: number;
  readonly key: string;
  readonly revision: number;
  readonly value: string | undefined;
}

/** Everything a schedule produced, for the checks and the report. */
export interface NodeSimRun {
  readonly seed: number;
  readonly nodes: number;
  readonly faults: readonly string[];
  readonly history: KvOperation[];
  readonly streams: WatchStream[];
  readonly deliveries: Delivery[];
  /** The data shard's committed events under DATA_PREFIX, from revision 1, per node that served a full watch of them at the end. */
  readonly finalHistories: Map<NodeId, SeenEvent[]>;
  /** The keys under DERIVED_PREFIX at the end (what the lambda's writes left), with their values. */
  readonly derived: Map<string, string>;
  /** The lambda's dead letters at the end (events it gave up on), by kind. */
  readonly deadLetters: { kind: string; key: string; revision: number }[];
  /**
   * Per live data replica at the end, the hop count of each event under DERIVED_PREFIX still in
   * its history (the lambda's writes: 1 each, recorded with the data, through crashes, restarts
   * from the records and snapshot installs).
   */
  readonly derivedHops: { node: NodeId; hops: { key: string; revision: number; hops: number }[] }[];
  /** How the lambda ran (it may have been moved to process isolation meanwhile). */
  readonly lambdaMode: 'in-process' | 'worker';
  /** Per watcher, the revision it had seen everything up to at the end. */
  readonly watcherEnds: number[];
  /** Re-watches from earlier revisions opened at the end: node, from, what they got. */
  readonly rewatches: { node: NodeId; from: number; events: SeenEvent[]; upTo: number; canceled?: string }[];
  /** Error-level logs of nodes and deliveries (not failures by themselves: e.g. a write lost to a leadership change). */
  readonly notes: string[];
  /** Problems seen while running (a fatal storage failure, an internal error, an unexpected status). */
  readonly problems: string[];
  readonly stats: {
    virtualMs: number;
    events: number;
    ops: number;
    opsOk: number;
    raftSent: number;
    raftDropped: number;
    crashes: number;
    /** Snapshots received streamed (chunks staged on disk) and installed, over every incarnation of every node. */
    streamedInstalls: number;
    /** The most chunks of one streamed snapshot installed (live incarnations at the end). */
    largestStreamedChunks: number;
    /** Live nodes at the end that still held an engine view open for sending a snapshot (kvcascade_snapshot_sending views). */
    sendViewsOpenAtEnd: number;
  };
}

interface Incarnation {
  readonly id: NodeId;
  readonly owner: Owner;
  readonly engine: MemoryEngine;
  node?: KvNode;
  coord?: Coordinator;
  delivery?: ShardDelivery;
  /** The lambda's extension as loaded on this incarnation (its dispatchers, for the report). */
  loaded?: Loaded;
  dead: boolean;
}

const dec = new TextDecoder();
const enc = new TextEncoder();
const text = (v: Uint8Array | undefined): string | undefined => (v === undefined ? undefined : dec.decode(v));

/** The client address of node `id` (no socket behind it: the directory maps it back). */
export const addressOf = (id: NodeId): string => `sim-node-${id}:7000`;

/**
 * A pino logger (no output) that keeps what is logged at fatal level in `problems` (a run with
 * one fails) and at error level in `notes` (reported, e.g. a write lost to a leadership change).
 */
function keepingLogger(problems: string[], notes: string[], prefix: string): Logger {
  return pino(
    { level: 'error', base: null, timestamp: false },
    {
      write: (line: string) => {
        const fatal = (JSON.parse(line) as { level?: number }).level! >= 60;
        (fatal ? problems : notes).push(`${prefix} ${line.trim()}`);
      },
    },
  );
}

/** Runs one schedule (see the file's top); installs and restores the virtual globals itself. */
export async function runNodeSim(opts: NodeSimOptions): Promise<NodeSimRun> {
  const sched = new VirtualScheduler(EPOCH_MS + (opts.seed % 100_000) * 1000, opts.seed);
  const restore = sched.install();
  try {
    const sim = new NodeSim(sched, opts);
    return await sim.run();
  } finally {
    sched.clear();
    restore();
  }
}

/** One schedule's cluster, clients, watchers and faults. */
class NodeSim {
  private readonly rng: SeededRandom;
  private readonly net: SimNetwork;
  private readonly n: number;
  private readonly ids: NodeId[];
  private readonly incs = new Map<NodeId, Incarnation>();
  /** Nodes that are down, with the disk their crash left. */
  private readonly down = new Map<NodeId, MemoryEngine>();
  private nextOwner = 1;
  private readonly faultLog: string[] = [];
  private readonly history: KvOperation[] = [];
  private readonly streams: WatchStream[] = [];
  private readonly deliveries: Delivery[] = [];
  private readonly problems: string[] = [];
  private readonly notes: string[] = [];
  private crashes = 0;
  /** Streamed snapshot installs counted from incarnations that are gone (see `streamedInstalls`). */
  private streamedGone = 0;
  private ops = 0;
  private opsOk = 0;
  private activeEnd = Infinity;
  private readonly members: Map<NodeId, string>;
  private readonly snapshotEvery: number;
  /** Whether the lambda runs in-process (armed invocations, demotion) or in a worker. */
  private readonly inProcess: boolean;
  /** Set once the final histories are collected: watchers stop. */
  private ended = false;
  /** Per watcher: the last revision it has seen everything up to. */
  private readonly watcherEnds: (() => number)[] = [];
  /** Each node's disk latency (ms per batch; writes are unsynced for that long, so a crash can lose them). */
  private readonly diskMs = new Map<NodeId, number>();
  /** Each node's clock skew (ms ahead of virtual time; negative: behind). */
  private readonly skewMs = new Map<NodeId, number>();
  /** Each client's attempt timeout (ms): short ones retry while the first attempt may still apply. */
  private readonly attemptMs = new Map<number, number>();

  constructor(
    private readonly sched: VirtualScheduler,
    private readonly opts: NodeSimOptions,
  ) {
    this.rng = new SeededRandom(opts.seed);
    this.net = new SimNetwork(sched, opts.seed);
    this.n = opts.nodes ?? (this.rng.nextInt(4) === 0 ? 5 : 3);
    this.ids = Array.from({ length: this.n }, (_, i) => i + 1);
    this.members = new Map(this.ids.map((id) => [id, addressOf(id)]));
    // Some schedules compact the log often, so followers that fall behind need snapshots.
    const every = this.rng.nextInt(3) === 0 ? 40 : 20_000; // drawn always, so seeds keep their meaning
    this.snapshotEvery = opts.snapshotEvery ?? every;
    this.inProcess = this.rng.nextInt(2) === 0;
    for (const id of this.ids) this.diskMs.set(id, this.pick([0, 1, 2, 5]));
    // One schedule in three has clocks that disagree (up to half a second either way).
    if (this.rng.nextInt(3) === 0) for (const id of this.ids) this.skewMs.set(id, this.rng.nextInt(1001) - 500);
    for (let c = 1; c <= 3; c++) this.attemptMs.set(c, this.pick([150, 300, 600]));
  }

  private trace(line: string): void {
    this.opts.trace?.(`${String(this.sched.now() - EPOCH_MS).padStart(7)} ${line}`);
  }

  private note(fault: string): void {
    this.faultLog.push(`@${this.sched.now() - this.startMs} ${fault}`);
    this.trace(`FAULT ${fault}`);
  }

  private startMs = 0;

  async run(): Promise<NodeSimRun> {
    const s = this.sched;
    this.startMs = s.now();
    for (const id of this.ids) this.boot(id, new MemoryEngine({ latencyMs: this.diskMs.get(id)! }));
    // Up: every node has the map and the data shard has a leader that applied its descriptor.
    await s.run(s.now() + 10_000, () => this.clusterUp());
    if (!this.clusterUp()) this.problems.push('the cluster did not come up within 10 s (virtual)');
    const activeMs = this.opts.activeMs ?? 1500;
    const settleMs = this.opts.settleMs ?? 2000;
    const t0 = s.now();
    this.activeEnd = t0 + activeMs;
    for (let c = 1; c <= 3; c++) s.at(SIM_OWNER, 0, () => void this.client(c));
    for (let w = 1; w <= 2; w++) s.at(SIM_OWNER, 0, () => this.watcher(w));
    if (this.opts.faults !== false) this.scheduleFaults(t0, activeMs);
    // The end of the active phase: heal the network, wake and restart every node.
    s.at(SIM_OWNER, activeMs, () => this.healAll());
    await s.run(t0 + activeMs + settleMs);
    const end = await this.finalChecksData();
    return {
      seed: this.opts.seed,
      nodes: this.n,
      faults: this.faultLog,
      history: this.history,
      streams: this.streams,
      deliveries: this.deliveries,
      finalHistories: end.finalHistories,
      watcherEnds: this.watcherEnds.map((f) => f()),
      derived: end.derived,
      deadLetters: end.deadLetters,
      derivedHops: end.derivedHops,
      lambdaMode: this.inProcess ? 'in-process' : 'worker',
      rewatches: end.rewatches,
      problems: this.problems,
      notes: this.notes,
      stats: {
        virtualMs: s.now() - this.startMs,
        events: s.events,
        ops: this.ops,
        opsOk: this.opsOk,
        raftSent: this.net.stats.raftSent,
        raftDropped: this.net.stats.raftDropped,
        crashes: this.crashes,
        streamedInstalls: this.streamedGone + [...this.incs.values()].reduce((n, inc) => n + (inc.dead ? 0 : this.streamedOf(inc)), 0),
        largestStreamedChunks: Math.max(0, ...[...this.incs.values()].flatMap((inc) => (inc.dead ? [] : (inc.node?.hostedGroups() ?? []).map((g) => inc.node?.replica(g)?.inbox?.counters.largestChunks ?? 0)))),
        sendViewsOpenAtEnd: [...this.incs.values()].reduce((n, inc) => n + (inc.dead ? 0 : (inc.node?.snapshotSending.openViews ?? 0)), 0),
      },
    };
  }

  /** Streamed snapshots an incarnation's replicas received and installed (their inboxes' completed transfers). */
  private streamedOf(inc: Incarnation): number {
    let n = 0;
    for (const g of inc.node?.hostedGroups() ?? []) n += inc.node?.replica(g)?.inbox?.counters.completed ?? 0;
    return n;
  }

  // ------------------------------------------------------------------ nodes

  private clusterUp(): boolean {
    for (const id of this.ids) {
      const node = this.incs.get(id)?.node;
      if (!node || node.shardMap().epoch === 0) return false;
    }
    const leader = this.leaderOf(DATA_GROUP);
    return leader !== undefined && leader.replica(DATA_GROUP)?.descriptor !== undefined && this.leaderOf(META_GROUP) !== undefined;
  }

  /** The live node leading `group` in the highest term, if any. */
  private leaderOf(group: number): KvNode | undefined {
    let best: KvNode | undefined;
    let term = -1;
    for (const inc of this.incs.values()) {
      const r = inc.node?.replica(group);
      if (inc.dead || !r?.isLeader) continue;
      const t = r.term;
      if (t > term) {
        term = t;
        best = inc.node;
      }
    }
    return best;
  }

  /** Starts a new incarnation of node `id` over `engine`. */
  private boot(id: NodeId, engine: MemoryEngine): void {
    const owner = this.nextOwner++;
    const inc: Incarnation = { id, owner, engine, dead: false };
    this.sched.setSkew(owner, this.skewMs.get(id) ?? 0);
    this.incs.set(id, inc);
    const transport = this.net.attach(id, owner);
    const nodeOpts: NodeOptions = {
      id,
      members: this.members,
      tickMs: 10,
      electionTicks: 10,
      heartbeatTicks: 2,
      snapshotEveryEntries: this.snapshotEvery,
      ...(this.opts.snapshotChunkBytes !== undefined ? { snapshotChunkBytes: this.opts.snapshotChunkBytes } : {}),
      // The node's own clock and timers: virtual, its timers this incarnation's (see VirtualScheduler.viewFor).
      scheduler: this.sched.viewFor(owner),
      // Election randomness from the schedule's seed (each replica mixes in its node and group).
      seed: (this.opts.seed * 1_000_003 + owner * 7919) >>> 0,
      keepEntriesAfterSnapshot: Math.min(this.snapshotEvery, 20),
      // One seed in four runs with a sync pace (NodeOptions.syncPaceMs); from the seed, not the rng, so other draws keep their meaning.
      ...(this.opts.seed % 4 === 1 ? { syncPaceMs: 5 } : {}),
      // One seed in four runs the other setting of NodeOptions.gatherTurn than the default (from the seed too).
      ...(this.opts.seed % 4 === 3 ? { gatherTurn: !NODE_DEFAULTS.gatherTurn } : {}),
      // One seed in four (others than the pace's) holds a gathering round up to 4 turns (NodeOptions.gatherTurns).
      ...(this.opts.seed % 4 === 2 ? { gatherTurns: 4 } : {}),
      log: keepingLogger(this.problems, this.notes, `node ${id}#${owner}:`),
      onFatal: (err) => {
        if (!inc.dead) this.problems.push(`node ${id}#${owner}: fatal: ${String(err)}`);
      },
    };
    this.sched.at(owner, 0, () => {
      KvNode.open(nodeOpts, engine, transport).then(
        (node) => {
          if (inc.dead) return;
          node.start();
          inc.node = node;
          inc.coord = new Coordinator(node, {
            // The node's virtual clock and timers, by injection (deadlines, suspicion periods; MergedWatch reads it too).
            clock: node.scheduler,
            selfAddress: addressOf(id),
            leaderAddress: (g) => node.leaderAddress(g),
            stubs: simNodeStubs(this.net, id, { idOf: (a) => this.idOf(a), coordinatorOf: (x) => this.coordinatorOf(x) }),
            log: {
              error: (o, msg) => void this.problems.push(`coordinator ${id}: ${msg} ${JSON.stringify(o, errReplacer)}`),
              warn: () => {},
              debug: () => {},
            },
          });
          inc.delivery = this.startLambda(inc, node, inc.coord);
          this.trace(`node ${id}#${owner} up`);
        },
        (e: unknown) => {
          if (!inc.dead) this.problems.push(`node ${id}#${owner}: open failed: ${String(e)}`);
        },
      );
    });
  }

  private idOf(address: string): NodeId | undefined {
    const m = /^sim-node-(\d+):/.exec(address);
    return m ? Number(m[1]) : undefined;
  }

  private coordinatorOf(id: NodeId): Coordinator | undefined {
    const inc = this.incs.get(id);
    return inc && !inc.dead ? inc.coord : undefined;
  }

  /** Crashes node `id`: its process stops dead, and its disk keeps only what was synced (plus `keepUnsynced` whole batches). */
  private crash(id: NodeId, keepUnsynced: number): MemoryEngine | undefined {
    const inc = this.incs.get(id);
    if (!inc || inc.dead) return undefined;
    inc.dead = true;
    this.crashes++;
    this.streamedGone += this.streamedOf(inc);
    this.sched.kill(inc.owner);
    this.net.detach(id);
    inc.delivery?.stop();
    const survivor = inc.engine.crash(keepUnsynced);
    this.down.set(id, survivor);
    return survivor;
  }

  /** Boots node `id` again over what its disk kept, if it is down. */
  private restart(id: NodeId): void {
    const engine = this.down.get(id);
    if (!engine) return;
    this.down.delete(id);
    this.note(`restart node ${id}`);
    this.boot(id, engine);
  }

  // ------------------------------------------------------------------ faults

  private scheduleFaults(t0: number, activeMs: number): void {
    const steps = 1 + this.rng.nextInt(6);
    for (let i = 0; i < steps; i++) {
      const at = this.rng.nextInt(Math.max(1, activeMs - 300));
      const kind = this.rng.nextInt(8);
      this.sched.at(SIM_OWNER, t0 + at - this.sched.now(), () => this.fault(kind));
    }
  }

  private pick<T>(xs: readonly T[]): T {
    return xs[this.rng.nextInt(xs.length)]!;
  }

  private fault(kind: number): void {
    const s = this.sched;
    const lead = this.leaderOf(DATA_GROUP)?.id;
    const victim = lead !== undefined && this.rng.nextInt(2) === 0 ? lead : this.pick(this.ids);
    switch (kind) {
      case 0: {
        // Crash and restart, losing unsynced writes (sometimes a torn prefix of them survives).
        const keep = this.rng.nextInt(3) === 0 ? 1 + this.rng.nextInt(3) : 0;
        if (!this.crash(victim, keep)) return;
        const downMs = 50 + this.rng.nextInt(600);
        this.note(`crash node ${victim}${victim === lead ? ' (data leader)' : ''}, keep ${keep} unsynced batches, restart in ${downMs} ms`);
        s.at(SIM_OWNER, downMs, () => this.restart(victim));
        return;
      }
      case 1: {
        // A partition: a minority (or one node) cut off, or an even split.
        const shuffled = [...this.ids].sort(() => this.rng.nextFloat() - 0.5);
        const cut = 1 + this.rng.nextInt(Math.floor(this.n / 2));
        const sides = [shuffled.slice(0, cut), shuffled.slice(cut)];
        this.net.partition(sides);
        const ms = 150 + this.rng.nextInt(800);
        this.note(`partition ${JSON.stringify(sides)} for ${ms} ms`);
        s.at(SIM_OWNER, ms, () => {
          this.net.partition([]);
          this.note('partition healed');
        });
        return;
      }
      case 2: {
        const from = victim;
        const to = this.pick(this.ids.filter((x) => x !== from));
        this.net.cutOneWay(from, to);
        const ms = 150 + this.rng.nextInt(800);
        this.note(`one-way cut ${from}>${to} for ${ms} ms`);
        s.at(SIM_OWNER, ms, () => {
          this.net.partition([]);
          this.note('links healed');
        });
        return;
      }
      case 3: {
        const dropRate = 0.05 + this.rng.nextFloat() * 0.3;
        const duplicateRate = this.rng.nextFloat() * 0.1;
        this.net.conditions = { ...this.net.conditions, dropRate, duplicateRate };
        const ms = 200 + this.rng.nextInt(800);
        this.note(`lossy network (drop ${dropRate.toFixed(2)}, duplicate ${duplicateRate.toFixed(2)}) for ${ms} ms`);
        s.at(SIM_OWNER, ms, () => {
          this.net.conditions = { ...this.net.conditions, dropRate: 0, duplicateRate: 0 };
        });
        return;
      }
      case 4: {
        const maxDelayMs = 20 + this.rng.nextInt(120);
        this.net.conditions = { ...this.net.conditions, minDelayMs: 1, maxDelayMs };
        const ms = 200 + this.rng.nextInt(800);
        this.note(`slow links (1..${maxDelayMs} ms, reordering) for ${ms} ms`);
        s.at(SIM_OWNER, ms, () => {
          this.net.conditions = { ...this.net.conditions, minDelayMs: 1, maxDelayMs: 4 };
        });
        return;
      }
      case 5: {
        // A power loss of a majority (or of every node) at once; each comes back on its own.
        const all = this.rng.nextInt(3) === 0;
        const count = all ? this.n : Math.floor(this.n / 2) + 1;
        const victims = [...this.ids].sort(() => this.rng.nextFloat() - 0.5).slice(0, count);
        this.note(`power loss of nodes ${victims.join(',')}`);
        for (const v of victims) {
          if (!this.crash(v, 0)) continue;
          s.at(SIM_OWNER, 50 + this.rng.nextInt(400), () => this.restart(v));
        }
        return;
      }
      default: {
        // A frozen process (GC pause, SIGSTOP): the data leader more often than not.
        const target = lead !== undefined && this.rng.nextInt(3) > 0 ? lead : victim;
        const inc = this.incs.get(target);
        if (!inc || inc.dead) return;
        const ms = 100 + this.rng.nextInt(900);
        s.pause(inc.owner, s.now() + ms);
        this.note(`pause node ${target}${target === lead ? ' (data leader)' : ''} for ${ms} ms`);
        return;
      }
    }
  }

  private healAll(): void {
    this.net.heal();
    this.note('heal all');
    for (const id of this.ids) this.restart(id);
  }

  // ------------------------------------------------------------------ clients

  /** One unary call attempt from a client to node `to`: its outcome, or 'timeout' (no answer within `attemptMs`). */
  private attempt<O extends UnaryOp>(op: O, req: RequestOf<O>, to: NodeId, attemptMs: number): Promise<UnaryOutcome<ResponseOf<O>> | 'timeout'> {
    return new Promise((resolve) => {
      let done = false;
      const settle = (v: UnaryOutcome<ResponseOf<O>> | 'timeout'): void => {
        if (done) return;
        done = true;
        timer.cancel();
        resolve(v);
      };
      const timer = this.sched.at(SIM_OWNER, attemptMs, () => settle('timeout'));
      if (this.net.ownerOf(to) === undefined) {
        // Connection refused: the node is down.
        this.sched.at(SIM_OWNER, this.net.delay(), () => settle({ ok: false, error: serviceError(grpc.status.UNAVAILABLE, 'No connection established (simulated: node down)') }));
        return;
      }
      this.net.request(
        CLIENT_HOST,
        to,
        () => {
          const c = this.coordinatorOf(to);
          if (!c) return Promise.resolve<UnaryOutcome<ResponseOf<O>>>({ ok: false, error: serviceError(grpc.status.UNAVAILABLE, 'Stream refused by server (simulated: node starting)') });
          // The client's attempt timeout, on the serving node's clock.
          return serveUnary(c, op, req, new grpc.Metadata(), Date.now() + attemptMs);
        },
        (outcome) => {
          if (outcome.ok) settle(outcome.value);
        },
      );
    });
  }

  /**
   * One logical operation with bounded attempts (at most 6, within 1.5 s): retried on the leader
   * the answer names, else on another node; writes carry the client's session, so a retry never
   * applies twice. Resolves with the response, or undefined when the outcome stays unknown.
   */
  private async call<O extends UnaryOp>(client: number, op: O, req: RequestOf<O>): Promise<ResponseOf<O> | undefined> {
    const deadline = this.sched.now() + 1500;
    let target = this.pick(this.ids);
    for (let i = 0; i < 6 && this.sched.now() < deadline; i++) {
      const out = await this.attempt(op, req, target, Math.min(this.attemptMs.get(client)!, Math.max(1, deadline - this.sched.now())));
      if (out !== 'timeout' && out.ok) return out.response;
      if (out !== 'timeout') {
        const e = out.error;
        const f = readKvMetadata(e.metadata);
        const definite = [grpc.status.INVALID_ARGUMENT, grpc.status.PERMISSION_DENIED, grpc.status.INTERNAL, grpc.status.NOT_FOUND, grpc.status.UNIMPLEMENTED];
        if (definite.includes(e.code)) {
          this.problems.push(`client ${client}: ${op} ${JSON.stringify(req, errReplacer)} failed: ${e.details}`);
          return undefined;
        }
        if (e.code === grpc.status.FAILED_PRECONDITION) return undefined; // session expired: outcome unknown
        const hinted = f.leader !== undefined ? this.idOf(f.leader) : undefined;
        target = hinted !== undefined && hinted !== target ? hinted : this.pick(this.ids.filter((x) => x !== target));
      } else {
        target = this.pick(this.ids.filter((x) => x !== target));
      }
      await this.sleep(5 + this.rng.nextInt(30));
    }
    return undefined;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((r) => this.sched.at(SIM_OWNER, ms, r));
  }

  private async client(c: number): Promise<void> {
    const keys = ['a', 'b', 'c'].map((k) => `${DATA_PREFIX}${k}`);
    const session = `simclient${String(this.opts.seed).padStart(10, '0')}x${c}`;
    let seq = 0;
    let n = 0;
    const known = new Map<string, { version: number; value: string | undefined }>();
    while (this.sched.now() < this.activeEnd) {
      const key = this.pick(keys);
      const roll = this.rng.nextInt(12);
      const call = this.sched.now();
      this.ops++;
      if (roll < 4) {
        const value = `c${c}-${++n}`;
        seq++;
        const op: KvOperation = { clientId: c, kind: 'put', key, value, call };
        this.history.push(op);
        const r = (await this.call(c, 'put', { key, value: enc.encode(value), session: { id: session, seq, ackedBelow: seq } })) as PutResponseMsg | undefined;
        if (r) {
          op.ret = this.sched.now();
          this.opsOk++;
          known.set(key, { version: r.version ?? 0, value });
        }
      } else if (roll < 7) {
        const op: KvOperation = { clientId: c, kind: 'get', key, call };
        const r = (await this.call(c, 'get', { key, consistency: 'LINEARIZABLE' })) as GetResponseMsg | undefined;
        if (r) {
          op.ret = this.sched.now();
          op.output = r.found ? text(r.value) : undefined;
          this.history.push(op);
          this.opsOk++;
          known.set(key, { version: r.found ? (r.version ?? 0) : 0, value: op.output });
        }
      } else if (roll >= 10) {
        seq++;
        const op: KvOperation = { clientId: c, kind: 'delete', key, call };
        this.history.push(op);
        const r = (await this.call(c, 'delete', { key, session: { id: session, seq, ackedBelow: seq } })) as DeleteResponseMsg | undefined;
        if (r) {
          op.ret = this.sched.now();
          this.opsOk++;
          known.set(key, { version: 0, value: undefined });
        }
      } else {
        // A conditional put on the version this client saw last (or "absent").
        const seen = known.get(key) ?? { version: 0, value: undefined };
        const value = `c${c}-${++n}`;
        seq++;
        const op: KvOperation = { clientId: c, kind: 'cas', key, value, call, ...(seen.value !== undefined ? { expected: seen.value } : {}) };
        this.history.push(op);
        const r = (await this.call(c, 'put', { key, value: enc.encode(value), expectedVersion: seen.version, session: { id: session, seq, ackedBelow: seq } })) as PutResponseMsg | undefined;
        if (r) {
          op.ret = this.sched.now();
          op.casOk = r.succeeded === true;
          this.opsOk++;
          if (op.casOk) known.set(key, { version: r.version ?? 0, value });
          else known.delete(key);
        }
      }
      await this.sleep(this.rng.nextInt(20));
    }
  }

  // ------------------------------------------------------------------ watchers

  /**
   * A watcher follows DATA_PREFIX from revision 1: on a random node's watch, resuming from the
   * revision after the last it saw on another node when its stream ends (the node crashed, the
   * server cancelled it) or goes quiet for too long.
   */
  private watcher(w: number): void {
    let next = 1;
    this.watcherEnds.push(() => next - 1);
    let current: { stream: WatchStream; handle?: WatchHandle; owner: Owner; lastHeard: number } | undefined;
    const open = (): void => {
      const up = this.ids.filter((id) => {
        const inc = this.incs.get(id);
        return inc && !inc.dead && inc.node?.replica(DATA_GROUP);
      });
      if (up.length === 0) return;
      const id = this.pick(up);
      const inc = this.incs.get(id)!;
      const stream: WatchStream = { watcher: w, node: id, via: w % 2 === 1 ? 'coordinator' : 'backend', from: next, batches: [] };
      this.streams.push(stream);
      const cur: NonNullable<typeof current> = { stream, owner: inc.owner, lastHeard: this.sched.now() };
      current = cur;
      // Responses reach the watcher in order (one stream), each after a network delay.
      let lastArrival = 0;
      const arrive = (fn: () => void): void => {
        const at = Math.max(this.sched.now() + this.net.delay(), lastArrival);
        lastArrival = at;
        this.sched.at(SIM_OWNER, at - this.sched.now(), () => {
          if (current !== cur) return;
          cur.lastHeard = this.sched.now();
          fn();
        });
      };
      const onEvents = (seen: SeenEvent[], revision: number): void =>
        arrive(() => {
          stream.batches.push({ kind: 'events', events: seen, revision });
          next = Math.max(next, revision + 1);
        });
      const onProgress = (revision: number): void =>
        arrive(() => {
          stream.batches.push({ kind: 'progress', events: [], revision });
          next = Math.max(next, revision + 1);
        });
      const onCanceled = (reason: string): void =>
        arrive(() => {
          stream.canceled = reason;
          current = undefined;
        });
      this.sched.at(inc.owner, this.net.delay(), () => {
        if (inc.dead || !inc.node || !inc.coord) return;
        try {
          if (stream.via === 'coordinator') {
            // The gRPC Watch path: the coordinator's MergedWatch, writing wire responses.
            const out: WatchOutput = {
              write: (msg) => {
                if (msg.canceled) onCanceled(msg.cancelReason ?? 'canceled');
                else if (msg.events && msg.events.length > 0) onEvents(msg.events.map(seenOfMsg), msg.revision ?? 0);
                else if (msg.progressNotify) onProgress(msg.revision ?? 0);
              },
              writableLength: 0,
              writableNeedDrain: false,
              once: () => undefined,
              close: (status) => {
                if (status) onCanceled(`closed: ${status.message}`);
              },
            };
            const mw = new MergedWatch(
              inc.coord,
              { req: { prefix: DATA_PREFIX, fromRevision: next, progressIntervalMs: 50 }, groups: [DATA_GROUP], hops: 0, hideReserved: false, maxPendingResponses: 10_000 },
              out,
            );
            cur.handle = { cancel: () => mw.finish() };
            mw.start();
          } else {
            cur.handle = inc.node.watch(
              { prefix: DATA_PREFIX, fromRevision: next, progressIntervalMs: 50, shard: DATA_GROUP },
              { events: (events, revision) => onEvents(events.map(seenOf), revision), progress: onProgress, canceled: onCanceled },
            );
          }
        } catch (e) {
          onCanceled(`watch refused: ${String(e)}`);
        }
      });
    };
    const check = (): void => {
      const now = this.sched.now();
      if (this.ended) {
        // The end: stop listening (after the final histories were collected).
        if (current) {
          const cur = current;
          const inc = [...this.incs.values()].find((i) => i.owner === cur.owner);
          if (inc && !inc.dead) this.sched.at(inc.owner, 0, () => cur.handle?.cancel());
          current = undefined;
        }
        return;
      }
      const inc = current ? [...this.incs.values()].find((i) => i.owner === current!.owner) : undefined;
      const gone = !current || !inc || inc.dead || this.incs.get(inc.id) !== inc;
      const quiet = current !== undefined && now - current.lastHeard > 400;
      if (gone || quiet || this.rng.nextInt(25) === 0) {
        // Resume elsewhere (and now and then move on purpose: resumption from any revision).
        if (current && inc && !inc.dead) {
          const cur = current;
          this.sched.at(inc.owner, 0, () => cur.handle?.cancel());
        }
        current = undefined;
        open();
      }
      this.sched.at(SIM_OWNER, 100, check);
    };
    open();
    this.sched.at(SIM_OWNER, 100, check);
  }

  // ------------------------------------------------------------------ the lambda

  /**
   * Runs the delivery layer of the extensions on `node` with one in-process lambda watching
   * DATA_PREFIX (stateful: per-key order) that records each event it is given and fails now and
   * then (retried by the dispatcher).
   */
  private startLambda(inc: Incarnation, node: KvNode, coord: Coordinator): ShardDelivery {
    const lambdaKv = routedLambdaKv(coord, { sessions: new WriteSessionSource(`simlambda-${String(this.opts.seed).padStart(10, '0')}-${inc.owner}`) });
    const watch: DispatchWatch = {
      id: 1,
      prefix: DATA_PREFIX,
      options: { mode: 'stateful', events: ['put', 'delete'], concurrency: 4, maxAttempts: 12, retryBackoffMs: 20, timeoutMs: 1000, maxBacklog: 1000, previousValue: false },
    };
    // In-process (every invocation armed first; a node dying in one moves the extension to
    // process isolation, see ShardDelivery.demote) in half the schedules; a worker otherwise.
    const runnerIn = (mode: 'in-process' | 'process' | 'worker'): ExtensionRunner =>
      ({
        mode,
        watches: [watch],
        stop: async () => {},
        invoke: (_id: number, ev: ExtensionEvent): Promise<void> => {
          const startedAt = this.sched.now();
          return new Promise((resolve, reject) => {
            // The lambda takes a little time, and fails one time in ten.
            setTimeout(() => {
              if (this.rng.nextInt(10) === 0) {
                reject(Object.assign(new Error('simulated lambda failure'), { kind: 'threw' }));
                return;
              }
              // It writes what it saw under DERIVED_PREFIX through the node's coordinator (a lambda's store).
              const derived = derivedKey(ev.key, ev.version);
              lambdaKv.put(derived, ev.value ?? new Uint8Array(0), {}, ev.hops + 1, Date.now() + 1000).then(
                () => {
                  if (!inc.dead) this.deliveries.push({ node: inc.id, startedAt, at: this.sched.now(), key: ev.key, revision: ev.version, value: text(ev.value) });
                  resolve();
                },
                (e: unknown) => reject(Object.assign(new Error(`the lambda's write failed: ${String(e)}`), { kind: 'threw' })),
              );
            }, this.rng.nextInt(15));
          });
        },
      }) as unknown as ExtensionRunner;
    const record = { name: 'simlambda', version: '1.0.0', generation: 1, sha256: '', size: 0, chunks: 0, config: {}, startRevisions: { [String(DATA_GROUP)]: 1 } } as unknown as ExtensionRecord;
    let loaded: Loaded = { record, state: 'running', runner: runnerIn(this.inProcess ? 'in-process' : 'worker'), deliveries: new Map() };
    inc.loaded = loaded;
    const all = (): Loaded[] => [loaded];
    const log = process.env.KVC_SIM_DEBUG
      ? pino({ level: 'info' }, { write: (l: string) => this.trace(`delivery ${inc.id}#${inc.owner}: ${l.trim()}`) })
      : keepingLogger(this.problems, this.notes, `delivery ${inc.id}#${inc.owner}:`);
    let reloads = Promise.resolve();
    const delivery = new ShardDelivery(kvNodeHost(node), {
      log,
      maxHops: 8,
      metrics: new ExtensionMetrics(undefined, all),
      loaded: all,
      // As the manager does (reconcile, one at a time): start a runner where the delivery says
      // (process isolation while demoted; starting one takes a while), then stop the current
      // dispatchers persisting their cursors (stopLoaded), swap, and deliver from the new one.
      reload: (name) => {
        reloads = reloads.then(async () => {
          const mode = delivery.isDemoted(name) ? 'process' : 'in-process';
          await new Promise((r) => setTimeout(r, 20 + this.rng.nextInt(100)));
          const next: Loaded = { record, state: 'running', runner: runnerIn(mode), deliveries: new Map() };
          const current = loaded;
          current.stopping = true;
          const ds = [...current.deliveries.values()];
          current.deliveries.clear();
          await Promise.all(ds.map((d) => d.dispatcher.stop(true).catch(() => {})));
          loaded = next;
          inc.loaded = next;
          this.trace(`lambda on node ${inc.id}#${inc.owner} reloaded in ${mode} mode`);
          delivery.startDispatch(next);
        });
      },
      bootId: `boot-${inc.owner}`,
    });
    delivery.start();
    return delivery;
  }

  // ------------------------------------------------------------------ the end

  /**
   * A page of `prefix` of `inc`'s data replica listed from its records (`listFromEngine`, the path
   * production lists user keys by), virtual time running until it is served; a problem when it fails.
   */
  private async listFromRecords(inc: Incarnation, prefix: string): Promise<ListResult | undefined> {
    let page: ListResult | undefined;
    let settled = false;
    const listed = inc.node!.replica(DATA_GROUP)!
      .listFromEngine(prefix, { limit: 10_000, keysOnly: false })
      .then(
        (p) => void (page = p),
        (e: unknown) => void this.problems.push(`listing ${prefix} on node ${inc.id} from its records failed: ${String(e)}`),
      )
      .finally(() => void (settled = true));
    await this.sched.run(this.sched.now() + 1_000, () => settled);
    await listed;
    return page;
  }

  /**
   * Collects, once everything settled, each live node's full history of DATA_PREFIX (a watch from
   * revision 1) and re-watches from random earlier revisions on random nodes.
   */
  private async finalChecksData(): Promise<{ finalHistories: Map<NodeId, SeenEvent[]>; rewatches: NodeSimRun['rewatches']; derived: Map<string, string>; deadLetters: NodeSimRun['deadLetters']; derivedHops: NodeSimRun['derivedHops'] }> {
    const finalHistories = new Map<NodeId, SeenEvent[]>();
    const rewatches: NodeSimRun['rewatches'] = [];
    const lastRevision = Math.max(0, ...[...this.incs.values()].map((i) => (i.dead ? 0 : (i.node?.replica(DATA_GROUP)?.revision ?? 0))));
    const collectors: (() => void)[] = [];
    const watchFrom = (inc: Incarnation, from: number, done: (events: SeenEvent[], upTo: number, canceled?: string) => void): void => {
      const events: SeenEvent[] = [];
      let upTo = from - 1;
      let canceled: string | undefined;
      let handle: WatchHandle | undefined;
      this.sched.at(inc.owner, 0, () => {
        try {
          handle = inc.node!.watch(
            { prefix: DATA_PREFIX, fromRevision: from, progressIntervalMs: 20, shard: DATA_GROUP },
            {
              events: (evs, revision) => {
                events.push(...evs.map(seenOf));
                upTo = Math.max(upTo, revision);
              },
              progress: (revision) => void (upTo = Math.max(upTo, revision)),
              canceled: (reason) => void (canceled = reason),
            },
          );
        } catch (e) {
          canceled = String(e);
        }
      });
      collectors.push(() => {
        handle?.cancel();
        done(events, upTo, canceled);
      });
    };
    for (const inc of this.incs.values()) {
      if (inc.dead || !inc.node?.replica(DATA_GROUP)) continue;
      watchFrom(inc, 1, (events, upTo, canceled) => {
        if (canceled === undefined && upTo >= lastRevision) finalHistories.set(inc.id, events);
        else this.problems.push(`final watch from 1 on node ${inc.id}: ${canceled ? `cancelled (${canceled})` : `reached only revision ${upTo} of ${lastRevision}`}`);
      });
      for (let i = 0; i < 2 && lastRevision > 1; i++) {
        const from = 1 + this.rng.nextInt(lastRevision);
        watchFrom(inc, from, (events, upTo, canceled) => rewatches.push({ node: inc.id, from, events, upTo, ...(canceled !== undefined ? { canceled } : {}) }));
      }
    }
    await this.sched.run(this.sched.now() + 300);
    for (const c of collectors) c();
    this.ended = true;
    // What the lambda wrote, as the most advanced live data replica holds it.
    const derived = new Map<string, string>();
    const best = [...this.incs.values()]
      .filter((i) => !i.dead && i.node?.replica(DATA_GROUP))
      .sort((a, b) => b.node!.replica(DATA_GROUP)!.appliedIndex - a.node!.replica(DATA_GROUP)!.appliedIndex)[0];
    // From the records, as a node lists user keys (its heap holds reserved keys only: indexDropCold, the default).
    const page = best && (await this.listFromRecords(best, DERIVED_PREFIX));
    for (const item of page?.items ?? []) derived.set(item.key, text(item.value) ?? '');
    // The lambda's dead letters (an event it gave up on: poison, too many failures).
    const deadLetters: NodeSimRun['deadLetters'] = [];
    const dlq = best?.node!.replica(DATA_GROUP)!.list('/_dlq/simlambda/', { limit: 10_000, keysOnly: false });
    for (const item of dlq?.items ?? []) {
      try {
        const body = JSON.parse(text(item.value) ?? '{}') as { kind?: string; event?: { key?: string; version?: number } };
        deadLetters.push({ kind: body.kind ?? '?', key: body.event?.key ?? '', revision: body.event?.version ?? 0 });
      } catch {
        deadLetters.push({ kind: `unreadable ${item.key}`, key: '', revision: 0 });
      }
    }
    for (const inc of this.incs.values()) {
      if (inc.dead || !inc.loaded) continue;
      const leads = inc.node?.replica(DATA_GROUP)?.isLeader ?? false;
      const ds = [...inc.loaded.deliveries.values()].map((d) => JSON.stringify(d.dispatcher.stats));
      this.trace(`END node ${inc.id}#${inc.owner}: ${leads ? 'leads' : 'follows'} the data shard; lambda ${(inc.loaded.runner as unknown as { mode: string }).mode}; dispatchers ${ds.join(' ') || 'none'}`);
    }
    // The hop count each replica recorded with the lambda's writes (its events still in the history).
    const derivedHops: NodeSimRun['derivedHops'] = [];
    for (const inc of this.incs.values()) {
      const r = inc.dead ? undefined : inc.node?.replica(DATA_GROUP);
      if (!r) continue;
      const sm = r.internalsForTests().sm;
      const hops: NodeSimRun['derivedHops'][number]['hops'] = [];
      for (let from = sm.oldestHistoryRevision; ; ) {
        const page = sm.eventsSince(from, DERIVED_PREFIX);
        for (const e of page.events) hops.push({ key: e.key, revision: e.revision, hops: e.hops ?? 0 });
        if (!page.more) break;
        from = page.nextRevision;
      }
      derivedHops.push({ node: inc.id, hops });
    }
    return { finalHistories, rewatches, derived, deadLetters, derivedHops };
  }
}

function seenOf(e: KvEvent): SeenEvent {
  return { revision: e.revision, key: e.key, type: e.type, value: text(e.value) };
}

/** A wire event (a Watch response's) as the checks compare it. */
function seenOfMsg(e: EventMsg): SeenEvent {
  const type = e.type === 'DELETE' || e.type === 1 ? 'delete' : e.type === 'TRIGGER' || e.type === 2 ? 'trigger' : 'put';
  return { revision: e.revision ?? 0, key: e.key ?? '', type, value: type === 'delete' ? undefined : text(e.value ?? new Uint8Array(0)) };
}

function errReplacer(_k: string, v: unknown): unknown {
  if (v instanceof Uint8Array) return dec.decode(v);
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  return v;
}

/** A digest of a run's observable outcome: history, streams, deliveries, faults (determinism check). */
export function runDigest(run: NodeSimRun): string {
  const h = createHash('sha256');
  h.update(JSON.stringify(run.history));
  h.update(JSON.stringify(run.streams));
  h.update(JSON.stringify(run.deliveries));
  h.update(JSON.stringify(run.faults));
  h.update(JSON.stringify(run.stats));
  return h.digest('hex').slice(0, 16);
}
