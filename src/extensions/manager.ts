/**
 * The extension manager of one node: keeps the locally running extensions in line with the
 * replicated registry (metadata group), gives their lambdas the store (routed to each key's
 * shard leader), runs their watch dispatchers for every data shard this node leads (one per
 * watch and shard, from that shard's replicated cursor), and serves the admin operations
 * (load, unload, status). It sees the node only through the {@link ExtensionHost} seam (host.ts):
 * leadership is pushed to it, reads are local, cursors and the registry are written by proposals.
 *
 * Size: this file still holds registry sync, delivery on shard leaders, load/unload with its
 * claims, statuses and metrics. Splitting it along those lines is the open part of issue 10's
 * item 3; until then, sections are marked.
 */
import { rmSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '../log.js';
import { UnavailableError } from '../node/backend.js';
import type { CommandResult } from '../statemachine/types.js';
import { isReservedKey, isShardLocalKey, META_GROUP, prefixInReserved, shardsForPrefix, type ClusterMap } from '../sharding/index.js';
import { reservedKeyError, reservedPrefixError } from '../statemachine/index.js';
import { DEFAULT_MAX_HOPS, type ExtensionEvent } from './api.js';
import { attemptKey, cursorKey, decodeAttemptRecord, FAULT_DEFAULTS, SYSTEM_PREFIX, WatchDispatcher, type DispatchHost, type DispatchStats, type DispatchWatch } from './dispatcher.js';
import type { ExtensionHost, HostShard, LeadershipChange, SystemCommand } from './host.js';
import { packageDigest, PackageError, removeTree, unpackPackage, MAX_PACKAGE_BYTES, type PackageInfo } from './package.js';
import {
  chunkGeneration,
  chunkKey,
  chunkPrefix,
  claimHeld,
  claimKey,
  decodeClaim,
  decodeRecord,
  encodeClaim,
  encodeRecord,
  LEGACY_DATA_GROUP,
  metaKey,
  nameFromPackage,
  packagePrefix,
  parseRegistryKey,
  REGISTRY_PREFIX,
  resumeKey,
  splitPackage,
  startRevisionOf,
  startRevisionsOf,
  validateExtensionName,
  isolationOf,
  type ExtensionRecord,
  type LoadClaim,
} from './registry.js';
import { ExtensionRunner, ISOLATION_MODES, type IsolationMode } from './sandbox/runner.js';
import type { HostServices, KvOp, LogLevel, MetricOp } from './sandbox/types.js';
import type { LambdaKv, ShardRevisions } from './store-access.js';

/** How an extension is doing on this node. */
export interface ExtensionStatus {
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  /** `paused`: its circuit breaker is open (`error` says why and when it retries; events wait); `half-open`: one trial invocation runs. */
  readonly state: 'loading' | 'running' | 'paused' | 'half-open' | 'failed' | 'unloaded';
  readonly error?: string;
  /** When a paused extension tries again (ms since the epoch). */
  readonly retryAtMs?: number;
  /** Where its lambdas run on this node now (an in-process extension moved to process isolation says `process`). */
  readonly runsIn?: IsolationMode;
  /** Whether this node currently delivers any of its events (it leads a shard its watches span). */
  readonly delivering: boolean;
  /** The data shards (groups) this node delivers its events for, ascending. */
  readonly shards: readonly number[];
  /**
   * Each watch; `stats` sums its dispatchers on this node (one per shard delivered here; `cursor`
   * is the lowest of theirs, `lastLatencyMs` the highest), `byShard` has each one's own.
   */
  readonly watches: readonly { prefix: string; mode: string; stats: DispatchStats | undefined; byShard: readonly { shard: number; stats: DispatchStats }[] }[];
  /** This node's counters since it started (kept across leader changes and reloads of the extension). */
  readonly workerRestarts: number;
  readonly invocations: number;
  readonly errors: number;
  readonly timeouts: number;
  readonly deadLettered?: number;
}

/** How to load an extension. */
export interface LoadOptions {
  name?: string;
  config?: Record<string, unknown>;
  inProcess?: boolean;
  /** Where the lambdas run; absent: the node's default (`inProcess` set: in-process). */
  isolation?: IsolationMode;
  /** Worker restarts within a minute before it pauses (circuit breaker); default: the node's (30). */
  maxRestartsPerMinute?: number;
  /** The circuit breaker's first pause in ms; default: the node's (30 s). */
  pauseMs?: number;
}

/** An extension's counters on this node. */
interface ExtTotals {
  invocations: number;
  errors: number;
  timeouts: number;
  workerRestarts: number;
  deadLettered: number;
}

/** A watch's counters on this node. */
type WatchTotals = Pick<DispatchStats, 'invocations' | 'errors' | 'retries' | 'deadLettered' | 'delivered'>;

/**
 * The shard-local marker that an in-process lambda of `extension` may have taken a node down in
 * this shard: every node that leads the shard then runs the extension in process isolation. It is
 * `provisional` while the events that node left unfinished are retried in isolation (the node may
 * only have lost the shard), removed when they all complete, and made permanent when one of them
 * proves to be poison. Under the attempt records' prefix, so unloading the extension removes it.
 */
function demotedKey(extension: string): string {
  return `${SYSTEM_PREFIX}attempt/${extension}/!in-process-killed-a-node`;
}

/** A write attempted deeper in a lambda chain than the hop limit allows. */
export class HopLimitError extends Error {
  constructor(hops: number, max: number) {
    super(`hop limit exceeded: this write would be hop ${hops} of a lambda chain (limit ${max})`);
    this.name = 'HopLimitError';
  }
}

/**
 * A load or unload refused because another load of the same extension is in progress (on
 * another node), or changed its registration meanwhile: nothing was registered or removed; try
 * again. The admin service answers it with ABORTED.
 */
export class LoadConflictError extends Error {
  constructor(
    /** The extension. */
    readonly extension: string,
    message: string,
  ) {
    super(message);
    this.name = 'LoadConflictError';
  }
}

/** The LoadConflictError for a claim `c` held by another load of `name`. */
function inProgress(name: string, c: LoadClaim): LoadConflictError {
  const left = Math.max(1, Math.ceil((c.expiresAtMs - Date.now()) / 1000));
  return new LoadConflictError(
    name,
    `another load of ${name} is in progress (generation ${c.generation}, on node ${c.node}); try again once it finished (its claim expires within ${left} s if that load died)`,
  );
}

/** How long a load may hold its claim on a name before another load may take it over. */
const LOAD_CLAIM_MS = 120_000;

/** Options of the manager. */
export interface ExtensionManagerOptions {
  readonly dataDir: string;
  readonly log: Logger;
  readonly registry?: Registry;
  readonly maxHops?: number;
  /** Heap limit of each extension's worker or process (MiB). */
  readonly workerHeapMb?: number;
  /**
   * Where extensions loaded without an `isolation` run (default: the runner's default,
   * `RUNNER_DEFAULTS.mode`; native packages always run in a worker).
   */
  readonly defaultIsolation?: IsolationMode;
  /** Process isolation: the budget for each extension process's whole resident memory (MiB; default `RUNNER_DEFAULTS.memoryLimitMb`). */
  readonly extensionMemoryMb?: number;
  /**
   * The store as lambdas see it, routed to each key's shard leader wherever it is (its writes
   * are client-origin: no reserved key); in-process tests of one node give it `localLambdaKv`
   * of that node. Dead letters and cursors are not written through it but into their own shard.
   */
  readonly lambdaKv: LambdaKv;
  /**
   * Every data shard's current revision (where a newly loaded extension starts). Default: the
   * revisions of this node's own replicas (every shard must be hosted here).
   */
  readonly shardRevisions?: ShardRevisions;
  /** Runner-killing failures of one event before it is dead-lettered as `poison` (default 3). */
  readonly poisonAttempts?: number;
  /** Distinct nodes it may fail that way on before `poison` (default 2). */
  readonly poisonNodes?: number;
  /** Worker restarts of one extension within a minute before it pauses (default 30; see the runner's circuit breaker). */
  readonly maxRestartsPerMinute?: number;
  /** First pause of the circuit breaker (ms, default 30 s; doubled after each failed half-open trial, up to `maxPauseMs`). */
  readonly pauseMs?: number;
  /** Longest pause of the circuit breaker (ms, default 10 min). */
  readonly maxPauseMs?: number;
}

/** One running dispatcher: one watch of one extension in one shard led here. */
interface Delivery {
  readonly group: number;
  readonly dispatcher: WatchDispatcher;
}

interface Loaded {
  record: ExtensionRecord;
  state: ExtensionStatus['state'];
  error?: string;
  runner?: ExtensionRunner;
  /** Its dispatchers here, by `<group>/<watch id>`. */
  readonly deliveries: Map<string, Delivery>;
  /** Being replaced or stopped: no dispatcher may start for it any more. */
  stopping?: boolean;
}

/** A data shard this node leads, as the host last reported it. */
interface LedShard {
  readonly shard: HostShard;
  /** The term it is led in: a new term (even led here again) restarts delivery from the cursor. */
  readonly term: number;
}

/** Deadline of a write the manager or a dispatcher makes into a data shard, and of a lambda's store call. */
const CALL_MS = 10_000;
/** How long `load` tries to learn every shard's current revision. */
const START_REVISIONS_MS = 10_000;
/** Deadline of one ask of the `shardRevisions` provider. */
const REVISIONS_ASK_MS = 5_000;
/** Pause between asks of the `shardRevisions` provider while shards are missing. */
const REVISIONS_RETRY_MS = 100;
/** Deadline of a write into the metadata group by a load, unload or resume. */
const META_WRITE_MS = 30_000;
/** How long `load` waits for its generation to load (or fail) on this node before answering with the status so far. */
const LOAD_WAIT_MS = 30_000;
/** Registry keys read in one local listing (records; the registry holds far fewer). */
const REGISTRY_PAGE = 10_000;
/** Package chunk keys read (and deleted) per local listing of one extension's chunks. */
const CHUNK_KEYS_PAGE = 10_000;
/** Cursor and attempt-record keys of one extension deleted per shard after an unload. */
const DELIVERY_KEYS_PAGE = 10_000;
/** Progress interval of the registry subscription (its progress reports are ignored). */
const REGISTRY_PROGRESS_MS = 60_000;
/** Progress interval of a dispatcher's event subscription (an idle watch's cursor follows the shard's revision). */
const DELIVERY_PROGRESS_MS = 500;
/** Heap limit of each extension's worker or process (MiB) when the options name none. */
const DEFAULT_WORKER_HEAP_MB = 256;
/** Largest `maxRestartsPerMinute` or `pauseMs` a load may give (a timer's largest delay, 2^31 - 1 ms). */
const MAX_LOAD_OPTION = 2 ** 31 - 1;
/** Buckets of the lambda run-time histogram (seconds): half a millisecond to ten seconds. */
const LAMBDA_DURATION_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 10];
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Runs a node's extensions. */
export class ExtensionManager {
  private readonly loaded = new Map<string, Loaded>();
  /** In-process extensions this node runs in process isolation instead, since one of their lambdas took a node down. */
  private readonly demoted = new Set<string>();
  /** `load` calls waiting for a generation to load (or fail) on this node. */
  private readonly loadWaiters = new Map<string, { generation: number; resolve: (s: ExtensionStatus) => void }[]>();
  /** The data shards this node leads (and delivers for), by group. */
  private readonly led = new Map<number, LedShard>();
  private readonly kv: LambdaKv;
  /** Ends the host subscriptions taken by `start` (leadership, map, registry). */
  private readonly unsubscribe: (() => void)[] = [];
  private stopped = false;
  private readonly maxHops: number;
  private readonly metrics: {
    invocations: Counter<'extension' | 'prefix' | 'outcome'>;
    errors: Counter<'extension' | 'prefix' | 'kind'>;
    timeouts: Counter<'extension' | 'prefix'>;
    deadLetters: Counter<'extension' | 'prefix' | 'kind'>;
    deadLetterFailures: Counter<'extension' | 'prefix' | 'kind'>;
    latency: Histogram<'extension' | 'prefix'>;
    deadLettered: Gauge<'extension' | 'prefix'>;
    backlog: Gauge<'extension' | 'prefix'>;
    restarts: Gauge<'extension'>;
    restartsTotal: Counter<'extension'>;
    paused: Gauge<'extension'>;
    cpuSeconds: Gauge<'extension'>;
    rssBytes: Gauge<'extension'>;
    peakRssBytes: Gauge<'extension'>;
    maxInvocationCpuSeconds: Gauge<'extension'>;
  };
  private readonly extMetrics = new Map<string, { ext: string; metric: Counter | Histogram }>();
  /**
   * This node's counters per extension, kept across leader changes and reloads (dispatchers come
   * and go with shard leadership; these do not), forgotten on unload: per watch (by
   * `<id><prefix>`) and for the whole extension.
   */
  private readonly totals = new Map<string, { ext: ExtTotals; watches: Map<string, WatchTotals> }>();
  private reconciling = Promise.resolve();
  /** The last load or unload of each name on this node (they run one at a time). */
  private readonly adminOps = new Map<string, Promise<void>>();
  /** Names this manager in load claims (see {@link LoadClaim.loader}). */
  private readonly loaderId = randomBytes(8).toString('hex');
  /** This process (a restarted node is another boot): tells a start that died with its node from one that lost the shard. */
  private readonly bootId = randomBytes(8).toString('hex');

  constructor(
    private readonly host: ExtensionHost,
    private readonly opts: ExtensionManagerOptions,
  ) {
    this.maxHops = opts.maxHops ?? DEFAULT_MAX_HOPS;
    this.kv = opts.lambdaKv;
    const registers = opts.registry ? [opts.registry] : [];
    this.metrics = {
      invocations: new Counter({ name: 'kvcascade_extension_invocations_total', help: 'Lambda invocations by outcome', labelNames: ['extension', 'prefix', 'outcome'], registers }),
      latency: new Histogram({
        name: 'kvcascade_extension_lambda_duration_seconds',
        help: 'Lambda run time',
        labelNames: ['extension', 'prefix'],
        buckets: LAMBDA_DURATION_BUCKETS,
        registers,
      }),
      errors: new Counter({ name: 'kvcascade_extension_errors_total', help: 'Failed lambda invocations by kind (threw, timeout, worker-crashed, out-of-memory...)', labelNames: ['extension', 'prefix', 'kind'], registers }),
      timeouts: new Counter({ name: 'kvcascade_extension_timeouts_total', help: 'Lambda invocations that ran past their timeout', labelNames: ['extension', 'prefix'], registers }),
      deadLetters: new Counter({ name: 'kvcascade_extension_dead_letters_total', help: 'Events written to the dead-letter keys by this node, by kind', labelNames: ['extension', 'prefix', 'kind'], registers }),
      deadLetterFailures: new Counter({
        name: 'kvcascade_extension_dead_letter_write_failures_total',
        help: 'Dead-letter writes that failed on this node and are tried again, by kind (compacted: the record of a compaction gap)',
        labelNames: ['extension', 'prefix', 'kind'],
        registers,
      }),
      deadLettered: new Gauge({ name: 'kvcascade_extension_dead_lettered', help: 'Events sent to the dead-letter keys by this node since it started (updated as they are written)', labelNames: ['extension', 'prefix'], registers }),
      backlog: new Gauge({
        name: 'kvcascade_extension_backlog',
        help: 'Events received and not yet handled (read at scrape time)',
        labelNames: ['extension', 'prefix'],
        registers,
        collect: () => this.collectBacklog(),
      }),
      restarts: new Gauge({ name: 'kvcascade_extension_worker_restarts', help: 'Worker restarts (timeouts, crashes, out of memory) on this node since it started (updated as they happen)', labelNames: ['extension'], registers }),
      restartsTotal: new Counter({ name: 'kvcascade_extension_worker_restarts_total', help: 'Worker restarts (timeouts, crashes, out of memory)', labelNames: ['extension'], registers }),
      paused: new Gauge({ name: 'kvcascade_extension_paused', help: '1 while the extension is paused by its circuit breaker (0.5 half-open), else 0 (read at scrape time)', labelNames: ['extension'], registers, collect: () => this.collectPaused() }),
      cpuSeconds: new Gauge({
        name: 'kvcascade_extension_cpu_seconds_total',
        help: 'CPU time (user + system) of the extension\'s processes on this node since it started, all restarts (process isolation; read at scrape time)',
        labelNames: ['extension'],
        registers,
        collect: () => this.collectResources(),
      }),
      rssBytes: new Gauge({ name: 'kvcascade_extension_resident_memory_bytes', help: 'Resident memory of the extension\'s process on this node (process isolation; read at scrape time)', labelNames: ['extension'], registers }),
      peakRssBytes: new Gauge({ name: 'kvcascade_extension_resident_memory_peak_bytes', help: 'Highest resident memory sampled of the extension\'s processes on this node (process isolation)', labelNames: ['extension'], registers }),
      maxInvocationCpuSeconds: new Gauge({ name: 'kvcascade_extension_invocation_cpu_seconds_max', help: 'Most CPU time one invocation took (process isolation)', labelNames: ['extension'], registers }),
    };
  }

  /**
   * Loads what the registry holds and follows its changes; delivers for every data shard it
   * leads. Removes staging folders a crashed node left behind.
   */
  start(): void {
    try {
      rmSync(this.stagingRoot(), { recursive: true, force: true, maxRetries: 5 });
    } catch (e) {
      this.opts.log.warn({ dir: this.stagingRoot(), err: (e as Error).message }, 'could not remove old extension staging folders');
    }
    const meta = this.host.meta();
    for (const item of meta.list(REGISTRY_PREFIX, { limit: REGISTRY_PAGE }).items) {
      const parsed = parseRegistryKey(item.key);
      if (parsed?.isMeta && item.value) this.enqueue(() => this.reconcile(parsed.name));
    }
    const registry = meta.subscribe(
      REGISTRY_PREFIX,
      meta.revision() + 1,
      {
        events: (events) => {
          for (const e of events) {
            const parsed = parseRegistryKey(e.key);
            if (parsed?.isMeta) this.enqueue(() => this.reconcile(parsed.name));
            else if (parsed && e.key === resumeKey(parsed.name) && e.type === 'put') this.resumeLocal(parsed.name);
          }
        },
        progress: () => {},
        canceled: (reason) => this.opts.log.error({ reason }, 'extension registry watch cancelled'),
      },
      REGISTRY_PROGRESS_MS,
    );
    this.unsubscribe.push(() => registry.cancel());
    // Leadership is pushed by the host: the shards led now, then every change.
    this.unsubscribe.push(this.host.onLeadershipChanged((c) => this.leadershipChanged(c)));
    // A new map can make a shard led here hold keys of a watch (a pool created, a split...).
    this.unsubscribe.push(this.host.onShardMapChanged(() => this.startAllDispatch()));
    for (const [group, term] of this.host.ledShards()) this.leadershipChanged({ group, term, leader: true });
  }

  /** Stops every extension (node shutdown). */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const off of this.unsubscribe.splice(0)) off();
    await this.reconciling.catch(() => {});
    for (const l of this.loaded.values()) await this.stopLoaded(l, true);
  }

  private enqueue(fn: () => Promise<void>): void {
    this.reconciling = this.reconciling.then(fn).catch((e: unknown) => this.opts.log.error({ err: String(e) }, 'extension reconcile failed'));
  }

  // ------------------------------------------------------------ reconcile with the registry

  /**
   * (Re)starts extension `name` as its registry record says; with `force`, even when the same
   * generation runs already (a local change of where it runs: see demote).
   */
  private async reconcile(name: string, force = false): Promise<void> {
    if (this.stopped) return;
    const got = this.host.meta().get(metaKey(name));
    const current = this.loaded.get(name);
    if (!got) {
      if (current) {
        await this.stopLoaded(current, true);
        this.loaded.delete(name);
        await this.forgetMetrics(name);
        current.state = 'unloaded';
        this.settle(current, true);
        this.opts.log.info({ extension: name }, 'extension unloaded');
      }
      return;
    }
    let record: ExtensionRecord;
    try {
      record = decodeRecord(got.value);
    } catch (e) {
      this.opts.log.error({ extension: name, err: String(e) }, 'bad extension record');
      return;
    }
    if (!force && current && current.record.generation === record.generation && current.state !== 'loading') return;
    const next: Loaded = { record, state: 'loading', deliveries: new Map() };
    try {
      const tgz = this.readPackage(record);
      const dir = join(this.opts.dataDir, 'extensions', name, String(record.generation));
      await unpackPackage(tgz, dir);
      next.runner = await this.startRunner(record, dir);
      next.state = 'running';
    } catch (e) {
      next.state = 'failed';
      next.error = (e as Error).message;
      this.opts.log.error({ extension: name, generation: record.generation, err: next.error }, 'extension failed to load');
    }
    // Swap: the old generation's dispatchers stop (persisting their cursors), the new ones resume from them.
    if (current) await this.stopLoaded(current, true);
    this.loaded.set(name, next);
    if (next.state === 'running') {
      this.opts.log.info({ extension: name, version: record.version, generation: record.generation, watches: next.runner!.watches.length }, 'extension running');
      this.startDispatch(next);
    }
    this.settle(next);
  }

  private readPackage(record: ExtensionRecord): Uint8Array {
    const meta = this.host.meta();
    const parts: Uint8Array[] = [];
    for (let i = 0; i < record.chunks; i++) {
      const c = meta.get(chunkKey(record.name, record.generation, i));
      if (!c) throw new PackageError(`package chunk ${i} of ${record.name} is missing`);
      parts.push(c.value);
    }
    const tgz = new Uint8Array(Buffer.concat(parts));
    if (packageDigest(tgz) !== record.sha256) throw new PackageError(`package of ${record.name} does not match its digest`);
    return tgz;
  }

  /**
   * An in-process lambda of `name` left events unfinished on node `node` (it may have taken that
   * node down): from now on this node runs `name` in a child process (where the same lambda only
   * kills that process), delivering again from the replicated cursor and retrying those events
   * there. Local to this node, plus a replicated provisional marker in `group` so every later
   * leader of the shard does the same: a stream of distinct poison events cannot walk through the
   * cluster. `suspectsResolved` undoes it when those events complete in isolation.
   */
  private demote(name: string, node: number | undefined, group?: number): void {
    if (group !== undefined) this.writeDemotion(name, group, { killedNode: node, byNode: this.host.nodeId, atMs: Date.now(), provisional: true });
    if (this.demoted.has(name)) return;
    this.demoted.add(name);
    this.opts.log.warn(
      { extension: name, node },
      node !== undefined
        ? `in-process lambdas of this extension never finished on node ${node} (it died or lost the shard): running this extension in process isolation on this node until those events complete there`
        : 'running this extension in process isolation on this node: the shard is marked (an in-process lambda may have taken a node down)',
    );
    this.enqueue(() => this.reconcile(name, true));
  }

  /** Replicates the demotion marker of `name` in `group` (undefined: removes it). */
  private writeDemotion(name: string, group: number, marker: Record<string, unknown> | undefined): Promise<void> {
    const cmd: SystemCommand = marker ? { type: 'put', key: demotedKey(name), value: new TextEncoder().encode(JSON.stringify(marker)) } : { type: 'delete', key: demotedKey(name) };
    return this.proposeIn(group, cmd)
      .then(() => undefined)
      .catch((e: unknown) => this.opts.log.error({ extension: name, group, err: String(e) }, 'could not record where this extension runs (process isolation marker)'));
  }

  /**
   * The events an in-process lambda of `name` left unfinished in `group` were retried in process
   * isolation: `confirmed` (one of them was poison there too) makes the shard's marker permanent;
   * otherwise the marker goes, and once no shard led here carries one, `name` runs in-process again.
   */
  private async suspectsResolved(name: string, group: number, confirmed: boolean): Promise<void> {
    const current = this.host.shard(group)?.get(demotedKey(name));
    if (!current) return;
    let marker: Record<string, unknown> = {};
    try {
      marker = JSON.parse(dec.decode(current.value)) as Record<string, unknown>;
    } catch {
      // a malformed marker is replaced
    }
    if (confirmed) {
      if (marker.provisional === false) return;
      this.opts.log.warn({ extension: name, group }, 'an event an in-process lambda left unfinished was poison in isolation too: this extension stays in process isolation in this shard');
      await this.writeDemotion(name, group, { ...marker, provisional: false, confirmedAtMs: Date.now() });
      return;
    }
    if (marker.provisional !== true) return;
    await this.writeDemotion(name, group, undefined);
    const stillMarked = [...this.led.values()].some((s) => s.shard.get(demotedKey(name)));
    if (stillMarked || !this.demoted.delete(name)) return;
    this.opts.log.info({ extension: name, group }, 'the events left unfinished completed in process isolation: this extension runs in-process again on this node');
    this.enqueue(() => this.reconcile(name, true));
  }

  private async startRunner(record: ExtensionRecord, dir: string): Promise<ExtensionRunner> {
    const wanted = isolationOf(record) ?? (record.native ? undefined : this.opts.defaultIsolation);
    return ExtensionRunner.start({
      name: record.name,
      modulePath: dir,
      config: record.config,
      ...this.runnerPlacement(wanted === 'in-process' && this.demoted.has(record.name) && !record.native ? 'process' : wanted),
      ...((record.maxRestartsPerMinute ?? this.opts.maxRestartsPerMinute) !== undefined ? { maxRestartsPerMinute: record.maxRestartsPerMinute ?? this.opts.maxRestartsPerMinute } : {}),
      ...((record.pauseMs ?? this.opts.pauseMs) !== undefined ? { pauseMs: record.pauseMs ?? this.opts.pauseMs } : {}),
      ...(this.opts.maxPauseMs !== undefined ? { maxPauseMs: this.opts.maxPauseMs } : {}),
      observer: {
        restarted: () => {
          const t = this.totalsOf(record.name).ext;
          t.workerRestarts++;
          this.metrics.restartsTotal.inc({ extension: record.name });
          this.metrics.restarts.set({ extension: record.name }, t.workerRestarts);
        },
      },
      host: this.hostServices(record.name),
    });
  }

  /** The runner options that choose where an extension runs and its limits. */
  private runnerPlacement(mode: IsolationMode | undefined): { mode?: IsolationMode; resourceLimits: { maxOldGenerationSizeMb: number }; memoryLimitMb?: number } {
    return {
      ...(mode ? { mode } : {}),
      resourceLimits: { maxOldGenerationSizeMb: this.opts.workerHeapMb ?? DEFAULT_WORKER_HEAP_MB },
      ...(this.opts.extensionMemoryMb !== undefined ? { memoryLimitMb: this.opts.extensionMemoryMb } : {}),
    };
  }

  /** Tells `load` callers waiting for this generation (or an older one, or any, on unload) how it went. */
  private settle(l: Loaded, unloaded = false): void {
    const waiting = this.loadWaiters.get(l.record.name);
    if (!waiting) return;
    const s = this.statusOf(l);
    const still = waiting.filter((w) => {
      if (!unloaded && w.generation > l.record.generation) return true;
      w.resolve(s);
      return false;
    });
    if (still.length > 0) this.loadWaiters.set(l.record.name, still);
    else this.loadWaiters.delete(l.record.name);
  }

  /** Stops `l`'s dispatchers (persisting their cursors where this node still leads) and its runner. */
  private async stopLoaded(l: Loaded, persist: boolean): Promise<void> {
    l.stopping = true;
    const ds = [...l.deliveries.values()];
    l.deliveries.clear();
    await Promise.all(ds.map((d) => d.dispatcher.stop(persist)));
    await l.runner?.stop().catch(() => {});
  }

  // ------------------------------------------------------------ delivery on shard leaders

  /**
   * The host reported a change of leadership. A shard lost (or led in a new term: reported as
   * lost, then gained) drops its dispatchers without writing their cursors: another node (or
   * this one, in its new term) delivers from the replicated cursor. A shard gained gets the
   * dispatchers every running extension lacks there. Reports of a state already known are ignored.
   */
  private leadershipChanged(c: LeadershipChange): void {
    if (this.stopped) return;
    const was = this.led.get(c.group);
    if (!c.leader) {
      if (was?.term === c.term) this.dropLed(c.group);
      return;
    }
    if (was?.term === c.term) return;
    if (was) this.dropLed(c.group);
    const shard = this.host.shard(c.group);
    if (!shard) return;
    this.led.set(c.group, { shard, term: c.term });
    this.opts.log.info({ group: c.group, term: c.term }, 'delivering extension events of this shard (its leader)');
    this.startAllDispatch();
  }

  /** Forgets led shard `group` and drops its dispatchers (see stopGroup). */
  private dropLed(group: number): void {
    this.led.delete(group);
    for (const l of this.loaded.values()) this.stopGroup(l, group);
    this.opts.log.info({ group }, 'no longer delivering extension events of this shard');
  }

  /** Gives every running extension the dispatchers it lacks on the shards led here. */
  private startAllDispatch(): void {
    if (this.stopped) return;
    for (const l of this.loaded.values()) this.startDispatch(l);
  }

  /** Drops `l`'s dispatchers of `group` without persisting (leadership moved, or the replica went). */
  private stopGroup(l: Loaded, group: number): void {
    for (const [k, d] of l.deliveries) {
      if (d.group !== group) continue;
      l.deliveries.delete(k);
      void d.dispatcher.stop(false);
    }
  }

  /**
   * Starts the dispatchers `l` lacks: one per watch and led shard that can hold keys of the
   * watch's prefix. A dispatcher keeps running while its shard stays led here, even if the
   * prefix stops mapping to it (it finishes the backlog already there).
   */
  private startDispatch(l: Loaded): void {
    const runner = l.runner;
    if (!runner || l.state !== 'running' || l.stopping || this.stopped || this.led.size === 0) return;
    const map = this.host.shardMap();
    for (const w of runner.watches) {
      const groups = spannedGroups(map, w.prefix);
      for (const [g, led] of this.led) {
        if (!groups.has(g) || l.deliveries.has(`${g}/${w.id}`)) continue;
        this.startDelivery(l, runner, w, g, led.shard);
      }
    }
  }

  private startDelivery(l: Loaded, runner: ExtensionRunner, w: DispatchWatch, group: number, shard: HostShard): void {
    const name = l.record.name;
    // An in-process lambda of this extension took a node down in this shard before: never run it
    // in this thread here either (the marker is replicated, so every later leader sees it).
    if (runner.mode === 'in-process' && shard.get(demotedKey(name))) {
      this.demote(name, undefined);
      return;
    }
    const host: DispatchHost = {
      subscribe: (prefix, fromRevision, sink) => shard.subscribe(prefix, fromRevision, sink, DELIVERY_PROGRESS_MS),
      put: async (key, value) => {
        // A cursor or a dead letter: a shard-local system key, written (system origin: lambdas
        // cannot write reserved keys) into the shard whose events it tracks, led here.
        if (!isShardLocalKey(key)) throw new Error(`dispatcher wrote ${JSON.stringify(key)}, which is not a shard-local key`);
        const r = await shard.propose({ type: 'put', key, value }, Date.now() + CALL_MS);
        if (r.type === 'rejected') throw r.error;
      },
      write: async (writes) => {
        for (const w of writes) if (!isShardLocalKey(w.key)) throw new Error(`dispatcher wrote ${JSON.stringify(w.key)}, which is not a shard-local key`);
        const r = await shard.propose(
          { type: 'txn', compares: [], writes: writes.map((w) => (w.value ? { type: 'put' as const, key: w.key, value: w.value } : { type: 'delete' as const, key: w.key })) },
          Date.now() + CALL_MS,
        );
        if (r.type === 'rejected') throw r.error;
      },
      shard: group,
      maxHops: this.maxHops,
      // Only an in-process runner can take the node down with it: it moves to a child process.
      ...(runner.mode === 'in-process' ? { inProcessKilledANode: (node: number) => this.demote(name, node, group) } : {}),
      // In isolation, the events an in-process lambda left unfinished elsewhere decide whether it may come back.
      ...(runner.mode !== 'in-process' && !l.record.native ? { suspectsResolved: (confirmed: boolean) => void this.suspectsResolved(name, group, confirmed) } : {}),
    };
    const labels = { extension: name, prefix: w.prefix };
    const d: WatchDispatcher = new WatchDispatcher(
      name,
      w,
      (id, ev: ExtensionEvent, timeoutMs) => runner.invoke(id, ev, timeoutMs),
      host,
      {
        invoked: (ms, failure) => {
          const t = this.totalsOf(name);
          const wt = this.watchTotalsOf(name, w);
          wt.invocations++;
          t.ext.invocations++;
          this.metrics.invocations.inc({ ...labels, outcome: failure === undefined ? 'ok' : 'error' });
          this.metrics.latency.observe(labels, ms / 1000);
          if (failure !== undefined && failure !== 'stopped') {
            wt.errors++;
            t.ext.errors++;
            this.metrics.errors.inc({ ...labels, kind: failure });
            if (failure === 'timeout') {
              t.ext.timeouts++;
              this.metrics.timeouts.inc(labels);
            }
          }
        },
        retried: () => {
          this.watchTotalsOf(name, w).retries++;
        },
        deadLettered: (kind) => {
          const wt = this.watchTotalsOf(name, w);
          wt.deadLettered++;
          this.totalsOf(name).ext.deadLettered++;
          this.metrics.deadLetters.inc({ ...labels, kind });
          this.metrics.deadLettered.set(labels, wt.deadLettered);
        },
        delivered: () => {
          this.watchTotalsOf(name, w).delivered++;
        },
        deadLetterFailed: (kind) => this.metrics.deadLetterFailures.inc({ ...labels, kind }),
      },
      (msg) => this.opts.log.warn({ extension: name, prefix: w.prefix, group }, msg),
      {
        poisonAttempts: this.opts.poisonAttempts ?? FAULT_DEFAULTS.poisonAttempts,
        poisonNodes: this.opts.poisonNodes ?? FAULT_DEFAULTS.poisonNodes,
        // In-process lambdas share the node's thread, and native ones its process (a segfault in C
        // takes the node down): a fault of theirs can kill the node, so every invocation is armed first.
        armEveryInvocation: runner.mode === 'in-process' || l.record.native !== undefined,
        canIsolate: runner.mode === 'in-process',
        node: this.host.nodeId,
        boot: this.bootId,
      },
    );
    const saved = shard.get(cursorKey(name, w));
    const record = decodeAttemptRecord(shard.get(attemptKey(name, w))?.value);
    const cursor = saved ? Number(dec.decode(saved.value)) || 0 : 0;
    // A watch starts in this shard where the extension was registered (it sees every change made
    // after `load` returned, whichever node leads the shard), or further on from the shard's
    // replicated cursor. A cursor older than the registration belongs to an earlier, unloaded
    // incarnation and is ignored (a reload keeps the first registration's start points, so its
    // cursors count). A shard created after the registration has no start point: from its start.
    const start = startRevisionOf(l.record, group) ?? (hasStartPoints(l.record) ? 0 : shard.revision() + 1);
    const registeredAt = Math.max(0, start - 1);
    d.start(Math.max(cursor, registeredAt), record);
    l.deliveries.set(`${group}/${w.id}`, { group, dispatcher: d });
  }

  // ------------------------------------------------------------ what lambdas may call

  private hostServices(name: string): HostServices {
    const log = this.opts.log.child({ extension: name });
    return {
      kv: (op: KvOp, args: unknown[], hops: number) => this.kvCall(op, args, hops),
      log: (level: LogLevel, msg: string, fields?: Record<string, unknown>) => log[level](fields ?? {}, msg),
      metric: (kind, metricName, help, op: MetricOp) => this.extMetric(name, kind, metricName, help, op),
    };
  }

  private async kvCall(op: KvOp, args: unknown[], hops: number): Promise<unknown> {
    const deadlineMs = Date.now() + CALL_MS;
    // Lambdas are user code, like clients: the reserved keyspace is out of their reach (their
    // writes are client-origin anyway, so the shards would refuse them too).
    const target = args[0];
    if (typeof target === 'string') {
      if (op === 'list' ? prefixInReserved(target) : isReservedKey(target)) {
        throw op === 'list' ? reservedPrefixError(target) : reservedKeyError(target, op === 'get' ? 'read' : 'write');
      }
    }
    const bytes = (v: unknown): Uint8Array => (typeof v === 'string' ? enc.encode(v) : (v as Uint8Array));
    const writable = (): void => {
      if (hops > this.maxHops) throw new HopLimitError(hops, this.maxHops);
    };
    const expected = (o: { expectedVersion?: number } | undefined) => (o?.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {});
    switch (op) {
      case 'get': {
        const [key, o] = args as [string, { atVersion?: number; atTimeMs?: number } | undefined];
        const g = await this.kv.get(key, { ...(o?.atVersion ? { atVersion: o.atVersion } : {}), ...(o?.atTimeMs ? { atTimeMs: o.atTimeMs } : {}) }, deadlineMs);
        return { found: g.found, value: g.value, version: g.version, timestamp: g.timestampMs };
      }
      case 'put': {
        const [key, value, o] = args as [string, unknown, { expectedVersion?: number } | undefined];
        writable();
        const p = await this.kv.put(key, bytes(value), expected(o), hops, deadlineMs);
        return { succeeded: p.succeeded, version: p.version, currentVersion: p.currentVersion };
      }
      case 'trigger': {
        const [key, value] = args as [string, unknown];
        writable();
        await this.kv.trigger(key, bytes(value), hops, deadlineMs);
        return undefined;
      }
      case 'delete': {
        const [key, o] = args as [string, { expectedVersion?: number } | undefined];
        writable();
        const r = await this.kv.delete(key, expected(o), hops, deadlineMs);
        return { succeeded: r.succeeded, deleted: r.deleted };
      }
      case 'list': {
        const [prefix, o] = args as [string, { limit?: number; after?: string; keysOnly?: boolean } | undefined];
        const page = await this.kv.list(prefix, { ...(o?.limit ? { limit: o.limit } : {}), ...(o?.after ? { after: o.after } : {}), keysOnly: o?.keysOnly ?? false }, deadlineMs);
        return { items: page.items.map((i) => ({ key: i.key, value: i.value, version: i.version })), nextAfter: page.nextAfter };
      }
    }
  }

  private extMetric(ext: string, kind: 'counter' | 'histogram', metricName: string, help: string, op: MetricOp): void {
    if (!this.opts.registry) return;
    const safe = `kvcascade_ext_${ext.replace(/[^a-zA-Z0-9_]/g, '_')}_${metricName.replace(/[^a-zA-Z0-9_]/g, '_')}`;
    let m = this.extMetrics.get(safe)?.metric;
    if (!m) {
      m =
        kind === 'counter'
          ? new Counter({ name: safe, help: help || metricName, registers: [this.opts.registry] })
          : new Histogram({ name: safe, help: help || metricName, registers: [this.opts.registry], ...(op.buckets ? { buckets: op.buckets } : {}) });
      this.extMetrics.set(safe, { ext, metric: m });
    }
    if (m instanceof Counter && op.inc !== undefined) m.inc(op.inc);
    if (m instanceof Histogram && op.observe !== undefined) m.observe(op.observe);
  }

  // ------------------------------------------------------------ status and admin

  private totalsOf(name: string): { ext: ExtTotals; watches: Map<string, WatchTotals> } {
    let t = this.totals.get(name);
    if (!t) {
      t = { ext: { invocations: 0, errors: 0, timeouts: 0, workerRestarts: 0, deadLettered: 0 }, watches: new Map() };
      this.totals.set(name, t);
    }
    return t;
  }

  private watchTotalsOf(name: string, w: DispatchWatch): WatchTotals {
    const t = this.totalsOf(name);
    const k = `${w.id}${w.prefix}`;
    let wt = t.watches.get(k);
    if (!wt) {
      wt = { invocations: 0, errors: 0, retries: 0, deadLettered: 0, delivered: 0 };
      t.watches.set(k, wt);
    }
    return wt;
  }

  /** Scrape time: each watch's backlog, summed over the dispatchers running now. */
  private collectBacklog(): void {
    this.metrics.backlog.reset();
    for (const l of this.loaded.values()) {
      for (const w of l.runner?.watches ?? []) {
        const live = sumStats(watchDeliveries(l, w.id).map((d) => d.dispatcher.stats));
        this.metrics.backlog.set({ extension: l.record.name, prefix: w.prefix }, live?.backlog ?? 0);
      }
    }
  }

  private collectPaused(): void {
    this.metrics.paused.reset();
    for (const l of this.loaded.values()) {
      const b = l.runner?.breaker();
      this.metrics.paused.set({ extension: l.record.name }, b?.state === 'open' ? 1 : b?.state === 'half-open' ? 0.5 : 0);
    }
  }

  /** The process-isolation resource figures of every loaded extension, for a scrape. */
  private collectResources(): void {
    const m = this.metrics;
    for (const g of [m.cpuSeconds, m.rssBytes, m.peakRssBytes, m.maxInvocationCpuSeconds]) g.reset();
    for (const l of this.loaded.values()) {
      const s = l.runner?.stats();
      if (!s) continue;
      const labels = { extension: l.record.name };
      m.cpuSeconds.set(labels, s.cpuMs / 1000);
      m.rssBytes.set(labels, s.rssBytes);
      m.peakRssBytes.set(labels, s.peakRssBytes);
      m.maxInvocationCpuSeconds.set(labels, s.maxInvocationCpuMs / 1000);
    }
  }

  /** An unloaded extension's series leave /metrics (its own metrics too), and its counters are forgotten. */
  private async forgetMetrics(name: string): Promise<void> {
    this.totals.delete(name);
    const labelled = [this.metrics.invocations, this.metrics.errors, this.metrics.timeouts, this.metrics.deadLetters, this.metrics.deadLetterFailures, this.metrics.latency, this.metrics.deadLettered, this.metrics.restarts, this.metrics.restartsTotal] as const;
    for (const m of labelled) {
      const seen = new Set<string>();
      for (const v of (await (m as Counter).get()).values) {
        if (v.labels.extension !== name) continue;
        const { le: _le, ...labels } = v.labels as Record<string, string | number>;
        const key = JSON.stringify(labels);
        if (seen.has(key)) continue;
        seen.add(key);
        (m as Counter).remove(labels);
      }
    }
    for (const [safe, x] of this.extMetrics) {
      if (x.ext !== name) continue;
      this.opts.registry?.removeSingleMetric(safe);
      this.extMetrics.delete(safe);
    }
  }

  /** Closes `name`'s circuit breaker on this node; undefined when not loaded here. */
  private resumeLocal(name: string): boolean | undefined {
    const l = this.loaded.get(name);
    if (!l) return undefined;
    const was = l.runner?.resume() ?? false;
    if (was) this.opts.log.info({ extension: name }, 'extension resumed by an operator');
    return was;
  }

  /**
   * Resumes a paused extension at once on every node (on the metadata leader): writes its resume
   * key, which every node's registry watch acts on. Resolves whether it was paused here;
   * undefined when it is not loaded.
   */
  async resume(name: string): Promise<boolean | undefined> {
    validateExtensionName(name);
    if (!this.records().some((r) => r.name === name)) return undefined;
    const was = this.resumeLocal(name) ?? false;
    await this.metaWrite({ type: 'put', key: resumeKey(name), value: enc.encode(String(Date.now())) });
    return was;
  }

  private statusOf(l: Loaded): ExtensionStatus {
    const breaker = l.runner?.breaker();
    let state: ExtensionStatus['state'] = l.state;
    let error = l.error;
    if (l.state === 'running' && breaker && breaker.state !== 'closed') {
      state = breaker.state === 'open' ? 'paused' : 'half-open';
      const at = breaker.retryAtMs !== undefined ? `, retry at ${new Date(breaker.retryAtMs).toISOString()}` : ', one trial invocation running';
      error = `${breaker.reason ?? 'worker restarts'}${at}`;
    }
    const totals = this.totalsOf(l.record.name);
    const watches = (l.runner?.watches ?? []).map((w) => {
      const byShard = watchDeliveries(l, w.id).map((d) => ({ shard: d.group, stats: { ...d.dispatcher.stats } }));
      const live = sumStats(byShard.map((x) => x.stats));
      const wt = this.watchTotalsOf(l.record.name, w);
      // Counters: this node's since it started (kept across leader changes and reloads); backlog,
      // cursor and latency: the dispatchers running now.
      const stats: DispatchStats = { ...wt, backlog: live?.backlog ?? 0, cursor: live?.cursor ?? 0, lastLatencyMs: live?.lastLatencyMs ?? 0 };
      return { prefix: w.prefix, mode: w.options.mode, stats, byShard };
    });
    const shards = [...new Set([...l.deliveries.values()].map((d) => d.group))].sort((a, b) => a - b);
    return {
      name: l.record.name,
      version: l.record.version,
      generation: l.record.generation,
      state,
      ...(error ? { error } : {}),
      ...(breaker?.retryAtMs !== undefined && breaker.state === 'open' ? { retryAtMs: breaker.retryAtMs } : {}),
      ...(l.runner ? { runsIn: l.runner.mode } : {}),
      delivering: shards.length > 0,
      shards,
      watches,
      workerRestarts: totals.ext.workerRestarts,
      invocations: totals.ext.invocations,
      errors: totals.ext.errors,
      timeouts: totals.ext.timeouts,
      deadLettered: totals.ext.deadLettered,
    };
  }

  /** This node's view of every extension it knows. */
  statuses(): ExtensionStatus[] {
    return [...this.loaded.values()].map((l) => this.statusOf(l));
  }

  /** The registry as replicated (read locally). */
  records(): ExtensionRecord[] {
    const out: ExtensionRecord[] = [];
    for (const item of this.host.meta().list(REGISTRY_PREFIX, { limit: REGISTRY_PAGE }).items) {
      if (parseRegistryKey(item.key)?.isMeta && item.value) {
        try {
          out.push(decodeRecord(item.value));
        } catch {
          // skipped: reported by reconcile
        }
      }
    }
    return out;
  }

  /**
   * Loads (or replaces) an extension cluster-wide. Must run on the metadata group's leader.
   * The package is test-loaded here first: a module that fails to import, has no initialize
   * or throws from it is refused with the reason, and nothing is registered; so is a package
   * holding links, absolute or `..` paths, devices or FIFOs (an UnsafePackageEntryError). Its
   * staging folder is removed whatever happens.
   *
   * Loads and unloads of one name run one at a time on this node (a second load waits, then
   * registers the next generation). Each load first claims its generation in the registry (see
   * {@link LoadClaim}) and commits only if its claim still stands, so no two loads ever write the
   * same chunk keys and the registered package is always one upload's bytes. A claim held by
   * another loader on this node (its previous process) makes a load fail with a
   * {@link LoadConflictError} until released or expired; one held by another node (which lost the
   * metadata leadership mid-load) is taken over at once, and that load fails should it go on.
   */
  async load(tgz: Uint8Array, opts: LoadOptions): Promise<ExtensionStatus> {
    for (const [k, min] of [['maxRestartsPerMinute', 0], ['pauseMs', 1]] as const) {
      const v = opts[k];
      if (v !== undefined && (!Number.isSafeInteger(v) || v < min || v > MAX_LOAD_OPTION)) throw new PackageError(`${k} must be an integer >= ${min} (got ${String(v)})`);
    }
    if (tgz.length > MAX_PACKAGE_BYTES) throw new PackageError(`package is larger than ${MAX_PACKAGE_BYTES} bytes`);
    if (opts.isolation !== undefined && !ISOLATION_MODES.includes(opts.isolation)) throw new PackageError(`isolation must be one of ${ISOLATION_MODES.join(', ')} (got ${String(opts.isolation)})`);
    if (opts.inProcess && opts.isolation !== undefined && opts.isolation !== 'in-process') throw new PackageError(`inProcess contradicts isolation '${opts.isolation}'`);
    const staging = join(this.stagingRoot(), randomBytes(6).toString('hex'));
    let info: PackageInfo;
    let name: string;
    try {
      await mkdir(staging, { recursive: true });
      info = await unpackPackage(tgz, staging);
      name = validateExtensionName(opts.name ?? nameFromPackage(info.name));
      const probe = await ExtensionRunner.start({
        name,
        modulePath: staging,
        config: opts.config ?? {},
        // Tried where it will run (in-process extensions in a worker: not on this thread yet).
        ...this.runnerPlacement(opts.isolation === 'in-process' || opts.inProcess ? 'worker' : (opts.isolation ?? this.opts.defaultIsolation)),
        host: {
          kv: async () => {
            throw new Error('the store is not available while an extension is being validated');
          },
          log: () => {},
          metric: () => {},
        },
      });
      await probe.stop();
    } finally {
      // Never masks the load's own outcome: a folder that cannot be removed is logged.
      await removeTree(staging).catch((e: unknown) => this.opts.log.warn({ dir: staging, err: (e as Error).message }, 'could not remove an extension staging folder'));
    }
    return this.oneAtATime(name, () => this.register(name, info, tgz, opts));
  }

  /** Where `load` unpacks packages to test them (one folder per load, removed after). */
  private stagingRoot(): string {
    return join(this.opts.dataDir, 'extensions', '.staging');
  }

  /** Runs `fn` once every earlier load or unload of `name` on this node has finished. */
  private oneAtATime<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const before = this.adminOps.get(name) ?? Promise.resolve();
    const run = before.then(fn);
    const tail = run.then(
      () => {},
      () => {},
    );
    this.adminOps.set(name, tail);
    void tail.then(() => {
      if (this.adminOps.get(name) === tail) this.adminOps.delete(name);
    });
    return run;
  }

  /**
   * Registers a validated package as the next generation of `name`: claims the generation,
   * writes its chunks, then writes the record and releases the claim in one txn conditional on
   * the claim (the commit point). Anything failing before the commit deletes the chunks written
   * and releases the claim. Resolves with this node's status once the generation loaded here.
   */
  private async register(name: string, info: PackageInfo, tgz: Uint8Array, opts: LoadOptions): Promise<ExtensionStatus> {
    const claim = await this.claimGeneration(name);
    const generation = claim.generation;
    /** 'no': not committed (clean up); 'unknown': the commit's outcome is unknown (leave the chunks); 'yes'. */
    let committed: 'no' | 'unknown' | 'yes' = 'no';
    let waiting: { outcome: Promise<ExtensionStatus>; cancel: () => void } | undefined;
    try {
      // Read once the claim is ours: no record can be written for this name meanwhile.
      const previous = this.records().find((r) => r.name === name);
      if (previous && previous.generation >= generation) {
        throw new LoadConflictError(name, `generation ${previous.generation} of ${name} was registered while this load claimed generation ${generation}; try again`);
      }
      // A reload keeps the first registration's start points (its cursors stay valid); shards
      // created since have none and are delivered from their start, as they were so far. Read
      // before anything is written: a shard without a reachable leader refuses the load cleanly.
      const startRevisions = previous && hasStartPoints(previous) ? startRevisionsOf(previous) : await this.currentStartRevisions();
      const chunks = splitPackage(tgz);
      for (let i = 0; i < chunks.length; i++) {
        await this.metaWrite({ type: 'put', key: chunkKey(name, generation, i), value: chunks[i]! });
      }
      const legacy = startRevisions[String(LEGACY_DATA_GROUP)];
      const record: ExtensionRecord = {
        name,
        version: info.version,
        // Shard 1's start point also in the old field, for nodes that do not know startRevisions yet.
        ...(legacy !== undefined ? { startRevision: legacy } : {}),
        startRevisions,
        generation,
        sha256: packageDigest(tgz),
        size: tgz.length,
        chunks: chunks.length,
        config: opts.config ?? {},
        ...(info.native ? { native: info.native } : {}),
        ...(opts.inProcess || opts.isolation === 'in-process' ? { inProcess: true } : {}),
        ...(opts.isolation ? { isolation: opts.isolation } : {}),
        ...(opts.maxRestartsPerMinute !== undefined ? { maxRestartsPerMinute: opts.maxRestartsPerMinute } : {}),
        ...(opts.pauseMs !== undefined ? { pauseMs: opts.pauseMs } : {}),
        loadedAtMs: Date.now(),
      };
      waiting = this.waitFor(name, generation);
      committed = 'unknown';
      const res = await this.metaWrite({
        type: 'txn',
        compares: [{ key: claimKey(name), version: claim.version }],
        writes: [
          { type: 'put', key: metaKey(name), value: encodeRecord(record) },
          { type: 'put', key: claimKey(name), value: encodeClaim({ generation, node: this.host.nodeId, loader: this.loaderId, expiresAtMs: 0, released: true }) },
        ],
      });
      if (res.type !== 'txn' || !res.succeeded) {
        committed = 'no';
        throw new LoadConflictError(name, `this load of ${name} lost its claim on generation ${generation} to another load (it took longer than ${LOAD_CLAIM_MS / 1000} s); nothing was registered, try again`);
      }
      committed = 'yes';
      // Earlier generations, and chunks of loads that died before committing.
      await this.deleteChunksBelow(name, generation).catch((e: unknown) => this.opts.log.warn({ extension: name, err: (e as Error).message }, 'could not delete the previous package chunks'));
      return await waiting.outcome;
    } finally {
      if (committed !== 'yes') {
        waiting?.cancel();
        await this.abandonClaim(name, claim, committed === 'no');
      }
    }
  }

  /**
   * Claims the next generation of `name` (a put of its claim key conditional on the version
   * read). Throws a LoadConflictError while another load holds the claim, or when one took it
   * between the read and the write.
   */
  private async claimGeneration(name: string): Promise<{ generation: number; version: number }> {
    const meta = this.host.meta();
    const got = meta.get(claimKey(name));
    let last = 0;
    if (got) {
      let held: LoadClaim | undefined;
      try {
        held = decodeClaim(got.value);
      } catch (e) {
        this.opts.log.warn({ extension: name, err: String(e) }, 'malformed extension load claim: replaced');
      }
      if (held && this.blockedBy(held)) throw inProgress(name, held);
      last = held?.generation ?? 0;
    }
    const recorded = this.records().find((r) => r.name === name)?.generation ?? 0;
    const generation = Math.max(last, recorded) + 1;
    const claim: LoadClaim = { generation, node: this.host.nodeId, loader: this.loaderId, expiresAtMs: Date.now() + LOAD_CLAIM_MS, released: false };
    const res = await this.metaWrite({ type: 'put', key: claimKey(name), value: encodeClaim(claim), expectedVersion: got?.version ?? 0 });
    if (res.type !== 'put' || !res.succeeded) {
      const now = meta.get(claimKey(name));
      let other: LoadClaim | undefined;
      try {
        other = now ? decodeClaim(now.value) : undefined;
      } catch {
        // reported as a plain conflict
      }
      throw other && claimHeld(other, Date.now()) && other.loader !== this.loaderId ? inProgress(name, other) : new LoadConflictError(name, `another load or unload of ${name} changed its registration meanwhile; try again`);
    }
    return { generation, version: res.version };
  }

  /**
   * Whether claim `c` stops a load or unload here: only a claim held (unreleased, within its
   * lease) by another loader on this node (another manager, or this node's previous process).
   * A claim of another node never does: this node leads the metadata group now, so that load
   * can write nothing more (and could not commit, its claim being taken over); nor one of this
   * manager's own: its loads of a name run one at a time, so that one is a leftover.
   */
  private blockedBy(c: LoadClaim): boolean {
    return claimHeld(c, Date.now()) && c.node === this.host.nodeId && c.loader !== this.loaderId;
  }

  /**
   * After a load that did not commit: deletes its chunks (unless the commit's outcome is unknown:
   * they may be registered; a later load deletes them if not) and releases its claim if still
   * held (conditional: a load that took it over keeps it). Best effort, logged.
   */
  private async abandonClaim(name: string, claim: { generation: number; version: number }, deleteChunks: boolean): Promise<void> {
    if (deleteChunks) {
      await this.deleteChunks(name, claim.generation).catch((e: unknown) =>
        this.opts.log.warn({ extension: name, generation: claim.generation, err: (e as Error).message }, 'could not delete the chunks of a failed load'),
      );
    }
    const released: LoadClaim = { generation: claim.generation, node: this.host.nodeId, loader: this.loaderId, expiresAtMs: 0, released: true };
    await this.metaWrite({ type: 'put', key: claimKey(name), value: encodeClaim(released), expectedVersion: claim.version }).catch((e: unknown) =>
      this.opts.log.warn({ extension: name, generation: claim.generation, err: (e as Error).message }, 'could not release the load claim of a failed load (it expires by itself)'),
    );
  }

  /**
   * A write to the metadata group by a load or unload (META_WRITE_MS deadline); a command the state
   * machine rejected throws its error.
   */
  private async metaWrite(cmd: SystemCommand): Promise<CommandResult> {
    const res = await this.host.meta().propose(cmd, Date.now() + META_WRITE_MS);
    if (res.type === 'rejected') throw res.error;
    return res;
  }

  /** Proposes a system command to data shard `group` (hosted and led here) with the call deadline. */
  private proposeIn(group: number, cmd: SystemCommand): Promise<CommandResult> {
    const shard = this.host.shard(group);
    if (!shard) return Promise.reject(new UnavailableError(`shard ${group} is not hosted on node ${this.host.nodeId}`));
    return shard.propose(cmd, Date.now() + CALL_MS);
  }

  /**
   * Every routed data shard's current revision + 1 (group → start point): as the
   * `shardRevisions` provider reports it, else from this node's replica of the shard (a
   * linearizable read on a leader; a follower once it applied what it knows committed, which
   * may be a little older: the safe side), else the provider is asked again for a while. A start
   * point is never newer than a write acknowledged before it was read. Throws UnavailableError
   * naming the shards no revision could be learnt for. Shards of pools still being created hold
   * no keys yet and are left out (delivered from their start).
   */
  private async currentStartRevisions(): Promise<Record<string, number>> {
    const until = Date.now() + START_REVISIONS_MS;
    const out: Record<string, number> = {};
    const missing = (): number[] => {
      const map = this.host.shardMap();
      const creating = new Set(map.pools.filter((p) => p.state === 'creating').map((p) => p.name));
      return map.shards.filter((s) => !creating.has(s.pool) && out[String(s.group)] === undefined).map((s) => s.group);
    };
    const provider = this.opts.shardRevisions;
    const ask = async (): Promise<void> => {
      if (!provider) return;
      try {
        const got = await provider(Math.min(until, Date.now() + REVISIONS_ASK_MS));
        // The first answer for a shard is kept: an earlier revision is the safe side.
        for (const [g, rev] of got) if (g !== META_GROUP && out[String(g)] === undefined) out[String(g)] = rev + 1;
      } catch (e) {
        this.opts.log.warn({ err: (e as Error).message }, "could not read the shards' revisions");
      }
    };
    await ask();
    for (const g of missing()) {
      const local = await this.localStartRevision(g, until);
      if (local !== undefined) out[String(g)] = local;
    }
    while (provider && missing().length > 0 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, REVISIONS_RETRY_MS));
      await ask();
    }
    const left = missing();
    if (left.length > 0) {
      throw new UnavailableError(`cannot learn the current revision of shard(s) ${left.join(', ')} (no reachable leader); nothing was loaded, try again`);
    }
    return out;
  }

  /** Shard `group`'s current revision + 1 from its replica here (undefined when not hosted here). */
  private async localStartRevision(group: number, until: number): Promise<number | undefined> {
    const shard = this.host.shard(group);
    return shard ? (await shard.currentRevision(until)) + 1 : undefined;
  }

  /**
   * Unloads an extension cluster-wide (on the metadata leader). Resolves false when it was not
   * loaded. Runs after any load or unload of `name` in progress on this node; throws a
   * {@link LoadConflictError} while another loader holds its claim (see {@link load}), or when a
   * load changed its registration meanwhile: the record is deleted only if unchanged and unclaimed.
   */
  async unload(name: string): Promise<boolean> {
    validateExtensionName(name);
    return this.oneAtATime(name, async () => {
      const meta = this.host.meta();
      const got = meta.get(metaKey(name));
      const record = this.records().find((r) => r.name === name);
      if (!got || !record) return false;
      const claimed = meta.get(claimKey(name));
      if (claimed) {
        let held: LoadClaim | undefined;
        try {
          held = decodeClaim(claimed.value);
        } catch {
          // a malformed claim holds nothing
        }
        if (held && this.blockedBy(held)) throw inProgress(name, held);
      }
      const res = await this.metaWrite({
        type: 'txn',
        compares: [
          { key: metaKey(name), version: got.version },
          { key: claimKey(name), version: claimed?.version ?? 0 },
        ],
        writes: [{ type: 'delete', key: metaKey(name) }],
      });
      if (res.type !== 'txn' || !res.succeeded) throw new LoadConflictError(name, `another load or unload of ${name} changed its registration meanwhile; check with ext ls and try again`);
      // Only generations up to the unloaded one: a load that claims the next one right now keeps its chunks.
      await this.deleteChunksBelow(name, record.generation + 1);
      await this.deleteCursors(name);
      return true;
    });
  }

  /**
   * Forgets an unloaded extension's delivery cursors in the shards this node leads (best
   * effort), so that loading it again later starts from that load. Cursors left in other shards
   * are older than any later load's start points, and so ignored.
   */
  private async deleteCursors(name: string): Promise<void> {
    for (const g of this.host.ledShards().keys()) {
      const shard = this.host.shard(g);
      if (!shard) continue;
      try {
        for (const prefix of [`${SYSTEM_PREFIX}cursor/${name}/`, `${SYSTEM_PREFIX}attempt/${name}/`]) {
          await shard.barrier(Date.now() + CALL_MS);
          const page = shard.list(prefix, { keysOnly: true, limit: DELIVERY_KEYS_PAGE });
          for (const item of page.items) await shard.propose({ type: 'delete', key: item.key }, Date.now() + CALL_MS);
        }
      } catch (e) {
        this.opts.log.warn({ extension: name, group: g, err: (e as Error).message }, 'could not delete delivery cursors after unload');
      }
    }
  }

  /** Deletes one generation's chunks of `name`. */
  private async deleteChunks(name: string, generation: number): Promise<void> {
    const keys = this.host.meta().list(chunkPrefix(name, generation), { keysOnly: true, limit: CHUNK_KEYS_PAGE }).items.map((i) => i.key);
    for (const key of keys) await this.metaWrite({ type: 'delete', key });
  }

  /** Deletes the chunks of every generation of `name` below `generation` (earlier ones, and leftovers of failed loads). */
  private async deleteChunksBelow(name: string, generation: number): Promise<void> {
    for (;;) {
      const keys = this.host
        .meta()
        .list(packagePrefix(name), { keysOnly: true, limit: CHUNK_KEYS_PAGE })
        .items.map((i) => i.key)
        .filter((k) => (chunkGeneration(k) ?? Infinity) < generation);
      if (keys.length === 0) return;
      for (const key of keys) await this.metaWrite({ type: 'delete', key });
    }
  }

  /**
   * Resolves with this node's status of `name` once `generation` loaded or failed here (30 s at
   * most); `cancel` forgets the wait (its outcome then never resolves).
   */
  private waitFor(name: string, generation: number): { outcome: Promise<ExtensionStatus>; cancel: () => void } {
    let cancel = (): void => {};
    const outcome = new Promise<ExtensionStatus>((resolve) => {
      const l = this.loaded.get(name);
      if (l && l.record.generation >= generation && l.state !== 'loading') return resolve(this.statusOf(l));
      const forget = () => {
        const list = (this.loadWaiters.get(name) ?? []).filter((w) => w !== waiter);
        if (list.length > 0) this.loadWaiters.set(name, list);
        else this.loadWaiters.delete(name);
      };
      const waiter = {
        generation,
        resolve: (st: ExtensionStatus) => {
          clearTimeout(timer);
          resolve(st);
        },
      };
      const timer = setTimeout(() => {
        forget();
        const now = this.loaded.get(name);
        resolve(now ? this.statusOf(now) : { name, version: '?', generation, state: 'loading', delivering: false, shards: [], watches: [], workerRestarts: 0, invocations: 0, errors: 0, timeouts: 0 });
      }, LOAD_WAIT_MS);
      cancel = () => {
        clearTimeout(timer);
        forget();
      };
      this.loadWaiters.set(name, [...(this.loadWaiters.get(name) ?? []), waiter]);
    });
    return { outcome, cancel };
  }
}

/** The data groups that can hold keys under `prefix` in `map`. */
function spannedGroups(map: ClusterMap, prefix: string): Set<number> {
  return new Set(shardsForPrefix(map, prefix).map((s) => s.group));
}

/** Whether `record` says where its watches start (records from before start points say nothing). */
function hasStartPoints(record: ExtensionRecord): boolean {
  return record.startRevisions !== undefined || record.startRevision !== undefined;
}

/** `l`'s dispatchers of watch `watchId`, by shard. */
function watchDeliveries(l: Loaded, watchId: number): Delivery[] {
  return [...l.deliveries.values()].filter((d) => d.dispatcher.watch.id === watchId).sort((a, b) => a.group - b.group);
}

/** Counters summed over shards; `cursor` the lowest, `lastLatencyMs` the highest. Undefined for none. */
function sumStats(all: readonly DispatchStats[]): DispatchStats | undefined {
  if (all.length === 0) return undefined;
  if (all.length === 1) return { ...all[0]! };
  const out: DispatchStats = { invocations: 0, errors: 0, retries: 0, deadLettered: 0, delivered: 0, backlog: 0, cursor: Number.MAX_SAFE_INTEGER, lastLatencyMs: 0 };
  for (const s of all) {
    out.invocations += s.invocations;
    out.errors += s.errors;
    out.retries += s.retries;
    out.deadLettered += s.deadLettered;
    out.delivered += s.delivered;
    out.backlog += s.backlog;
    out.cursor = Math.min(out.cursor, s.cursor);
    out.lastLatencyMs = Math.max(out.lastLatencyMs, s.lastLatencyMs);
  }
  return out;
}
