/**
 * The extension manager of one node: keeps the locally running extensions in line with the
 * replicated registry (metadata group) and serves the admin operations (load, unload, resume,
 * status). It sees the node only through the {@link ExtensionHost} seam (host.ts), and is
 * composed of one part per concept:
 *
 * - registry sync (here): follows the registry, (re)starts each extension's runner, statuses;
 * - registry-writes.ts: loads and unloads as writes into the registry (claims, chunks, records);
 * - delivery.ts: the dispatchers on the shards this node leads (pushed by the host), demotion;
 * - host-services.ts: what lambdas call (store, log, metrics);
 * - extension-metrics.ts: the Prometheus series and this node's counters.
 *
 * Size: just over 500 lines: the registry sync itself (the reconcile loop, runner restarts with
 * the circuit breaker, statuses) is one state machine over the same per-extension records.
 */
import { rmSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Registry } from 'prom-client';
import type { Logger } from '../log.js';
import { realScheduler, type Scheduler } from '../node/scheduler.js';
import { DEFAULT_MAX_HOPS } from './api.js';
import { ShardDelivery } from './delivery.js';
import type { DispatchStats } from './dispatcher.js';
import { ExtensionMetrics, resourcesOf, type ExtensionResources } from './extension-metrics.js';
import type { ExtensionHost } from './host.js';
import { hostServices } from './host-services.js';
import { sumStats, watchDeliveries, type ExtensionState, type Loaded } from './loaded.js';
import { packageDigest, PackageError, removeTree, unpackPackage } from './package.js';
import { chunkKey, decodeRecord, isolationOf, metaKey, parseRegistryKey, REGISTRY_PREFIX, resumeKey, validateExtensionName, type ExtensionRecord } from './registry.js';
import { RegistryWrites, type LoadOptions, type UnloadOptions } from './registry-writes.js';
import { ExtensionRunner, type IsolationMode, type RunnerOptions } from './sandbox/runner.js';
import type { LambdaKv, ShardRevisions } from './store-access.js';

export { HopLimitError } from './host-services.js';
export { LoadConflictError, type LoadOptions, type UnloadOptions } from './registry-writes.js';
export type { ExtensionState } from './loaded.js';
export type { ExtensionResources } from './extension-metrics.js';

/**
 * One watch's delivery in one shard led here: its dispatcher's counters (`stats.cursor`: every
 * event up to it handled) and the shard's revision now; `revision - stats.cursor` is the lag.
 */
export interface ShardCursor {
  readonly shard: number;
  readonly stats: DispatchStats;
  /** The shard's applied revision when the status was taken. */
  readonly revision: number;
}

/** How an extension is doing on this node. */
export interface ExtensionStatus {
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  /** `paused`: its circuit breaker is open (`error` says why and when it retries; events wait); `half-open`: one trial invocation runs. */
  readonly state: ExtensionState;
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
  readonly watches: readonly { prefix: string; mode: string; stats: DispatchStats | undefined; byShard: readonly ShardCursor[] }[];
  /**
   * CPU time and memory of its lambdas on this node, where they are measured: process isolation
   * only (read from /proc by the node). Absent in worker and in-process mode: Node gives no CPU
   * time or resident memory of one worker thread, and in-process lambdas share the node's.
   */
  readonly resources?: ExtensionResources;
  /** This node's counters since it started (kept across leader changes and reloads of the extension). */
  readonly workerRestarts: number;
  readonly invocations: number;
  readonly errors: number;
  readonly timeouts: number;
  readonly deadLettered?: number;
}

/** Options of the manager. */
export interface ExtensionManagerOptions {
  readonly dataDir: string;
  readonly log: Logger;
  /** This process's boot id (default: a random one); the event-loop watchdog's death note names it. */
  readonly bootId?: string;
  /**
   * The boot id of this node's previous process when its event-loop watchdog killed it (see
   * takeDeathNote): the in-process events that process left armed are dead-lettered as poison.
   */
  readonly blockedBoot?: string;
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
  /** The store of extension `name`'s lambdas when it differs per extension (access control: its role); default `lambdaKv`. */
  readonly lambdaKvFor?: (name: string) => LambdaKv;
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

/** Registry keys read in one local listing (records; the registry holds far fewer). */
const REGISTRY_PAGE = 10_000;
/** Progress interval of the registry subscription (its progress reports are ignored). */
const REGISTRY_PROGRESS_MS = 60_000;
/** Pause before following the registry again after the node cancelled its watch (ms). */
const REGISTRY_REFOLLOW_MS = 1_000;
/** How long `load` waits for its generation to load (or fail) on this node before answering with the status so far. */
const LOAD_WAIT_MS = 30_000;
/** Heap limit of each extension's worker or process (MiB) when the options name none. */
const DEFAULT_WORKER_HEAP_MB = 256;
const enc = new TextEncoder();

/** Runs a node's extensions. */
export class ExtensionManager {
  private readonly loaded = new Map<string, Loaded>();
  /** `load` calls waiting for a generation to load (or fail) on this node. */
  private readonly loadWaiters = new Map<string, { generation: number; resolve: (s: ExtensionStatus) => void }[]>();
  /** Ends the host subscriptions taken by `start` (the registry's). */
  private readonly unsubscribe: (() => void)[] = [];
  private stopped = false;
  private readonly maxHops: number;
  private readonly metrics: ExtensionMetrics;
  private readonly delivery: ShardDelivery;
  private readonly writes: RegistryWrites<ExtensionStatus>;
  private reconciling = Promise.resolve();
  /** The clock and timers of the manager (the host's: virtual under the simulator). */
  private readonly clock: Scheduler;

  constructor(
    private readonly host: ExtensionHost,
    private readonly opts: ExtensionManagerOptions,
  ) {
    this.clock = host.clock ?? realScheduler;
    this.maxHops = opts.maxHops ?? DEFAULT_MAX_HOPS;
    const loaded = () => this.loaded.values();
    this.metrics = new ExtensionMetrics(opts.registry, loaded);
    this.delivery = new ShardDelivery(host, {
      log: opts.log,
      maxHops: this.maxHops,
      ...(opts.poisonAttempts !== undefined ? { poisonAttempts: opts.poisonAttempts } : {}),
      ...(opts.poisonNodes !== undefined ? { poisonNodes: opts.poisonNodes } : {}),
      metrics: this.metrics,
      loaded,
      reload: (name) => this.enqueue(() => this.reconcile(name, true)),
      // This process (a restarted node is another boot): tells a start that died with its node from one that lost the shard.
      bootId: opts.bootId ?? randomBytes(8).toString('hex'),
      ...(opts.blockedBoot !== undefined ? { blockedBoot: opts.blockedBoot } : {}),
    });
    this.writes = new RegistryWrites<ExtensionStatus>(host, {
      dataDir: opts.dataDir,
      log: opts.log,
      ...(opts.defaultIsolation ? { defaultIsolation: opts.defaultIsolation } : {}),
      ...(opts.shardRevisions ? { shardRevisions: opts.shardRevisions } : {}),
      records: () => this.records(),
      placement: (mode) => this.runnerPlacement(mode),
      waitFor: (name, generation) => this.waitFor(name, generation),
      forgetCursors: (name) => this.delivery.forgetCursors(name),
    });
  }

  /**
   * Loads what the registry holds and follows its changes; delivers for every data shard it
   * leads. Removes staging folders a crashed node left behind.
   */
  start(): void {
    try {
      rmSync(this.writes.stagingRoot(), { recursive: true, force: true, maxRetries: 5 });
    } catch (e) {
      this.opts.log.warn({ dir: this.writes.stagingRoot(), err: (e as Error).message }, 'could not remove old extension staging folders');
    }
    this.followRegistry();
    // Leadership is pushed by the host: the shards led now, then every change.
    this.delivery.start();
  }

  /**
   * Reconciles every registered extension, then follows the registry's changes. A watch the node
   * cancels (not this manager's own stop) is followed again after a pause, from a fresh listing.
   */
  private followRegistry(): void {
    if (this.stopped) return;
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
        canceled: (reason) => {
          if (this.stopped) return; // our own stop
          this.opts.log.warn({ reason }, 'extension registry watch cancelled by the node: following it again shortly');
          const t = this.clock.setTimeout(() => this.followRegistry(), REGISTRY_REFOLLOW_MS);
          t.unref?.();
          this.unsubscribe.push(() => t.cancel());
        },
      },
      REGISTRY_PROGRESS_MS,
    );
    this.unsubscribe.push(() => registry.cancel());
  }

  /** Stops every extension (node shutdown). */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const off of this.unsubscribe.splice(0)) off();
    this.delivery.stop();
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
        await this.metrics.forget(name);
        current.state = 'unloaded';
        this.settle(current, true);
        await this.pruneUnpacked(name, undefined);
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
    // Earlier generations' unpacked folders are not needed any more (nor is a failed one's).
    await this.pruneUnpacked(name, next.state === 'running' ? record.generation : undefined);
    if (next.state === 'running') {
      this.opts.log.info({ extension: name, version: record.version, generation: record.generation, watches: next.runner!.watches.length }, 'extension running');
      this.delivery.startDispatch(next);
    }
    this.settle(next);
  }

  /**
   * Removes the unpacked folders of `name` on this node (`extensions/<name>/<generation>`) but
   * generation `keep`'s; best effort, logged. A restarted node unpacks its generation afresh.
   */
  private async pruneUnpacked(name: string, keep: number | undefined): Promise<void> {
    const dir = join(this.opts.dataDir, 'extensions', name);
    let entries: string[];
    try {
      entries = await readdir(dir);
    } catch {
      return;
    }
    for (const e of entries) {
      if (keep !== undefined && e === String(keep)) continue;
      await removeTree(join(dir, e)).catch((err: unknown) => this.opts.log.warn({ extension: name, dir: join(dir, e), err: (err as Error).message }, 'could not remove an unpacked extension folder'));
    }
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

  private async startRunner(record: ExtensionRecord, dir: string): Promise<ExtensionRunner> {
    const wanted = isolationOf(record) ?? (record.native ? undefined : this.opts.defaultIsolation);
    return ExtensionRunner.start({
      name: record.name,
      modulePath: dir,
      config: record.config,
      clock: this.clock,
      ...this.runnerPlacement(wanted === 'in-process' && this.delivery.isDemoted(record.name) && !record.native ? 'process' : wanted),
      ...((record.maxRestartsPerMinute ?? this.opts.maxRestartsPerMinute) !== undefined ? { maxRestartsPerMinute: record.maxRestartsPerMinute ?? this.opts.maxRestartsPerMinute } : {}),
      ...((record.pauseMs ?? this.opts.pauseMs) !== undefined ? { pauseMs: record.pauseMs ?? this.opts.pauseMs } : {}),
      ...(this.opts.maxPauseMs !== undefined ? { maxPauseMs: this.opts.maxPauseMs } : {}),
      observer: {
        restarted: () => this.metrics.restarted(record.name),
      },
      host: hostServices(record.name, {
        kv: this.opts.lambdaKvFor?.(record.name) ?? this.opts.lambdaKv,
        maxHops: this.maxHops,
        log: this.opts.log,
        metric: (kind, metricName, help, op) => this.metrics.extMetric(record.name, kind, metricName, help, op),
        clock: this.clock,
        // A load with an explicit start (`from`) replays on purpose: its writes are new effects.
        ...(record.cursorEpoch ? { effectEpoch: record.cursorEpoch } : {}),
      }),
    });
  }

  /** The runner options that choose where an extension runs and its limits. */
  private runnerPlacement(mode: IsolationMode | undefined): Pick<RunnerOptions, 'mode' | 'resourceLimits' | 'memoryLimitMb'> {
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

  // ------------------------------------------------------------ status and admin

  /** Extension `name`'s counters on this node. */
  private totalsOf(name: string): ReturnType<ExtensionMetrics['totalsOf']> {
    return this.metrics.totalsOf(name);
  }

  /** The counters of watch `w` of extension `name` on this node. */
  private watchTotalsOf(name: string, w: Parameters<ExtensionMetrics['watchTotalsOf']>[1]): ReturnType<ExtensionMetrics['watchTotalsOf']> {
    return this.metrics.watchTotalsOf(name, w);
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
    await this.writes.metaWrite({ type: 'put', key: resumeKey(name), value: enc.encode(String(this.clock.now())) });
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
      const byShard = watchDeliveries(l, w.id).map((d): ShardCursor => ({ shard: d.group, stats: { ...d.dispatcher.stats }, revision: this.host.shard(d.group)?.revision() ?? d.dispatcher.stats.cursor }));
      const live = sumStats(byShard.map((x) => x.stats));
      const wt = this.watchTotalsOf(l.record.name, w);
      // Counters: this node's since it started (kept across leader changes and reloads); backlog,
      // cursor and latency: the dispatchers running now.
      const stats: DispatchStats = { ...wt, backlog: live?.backlog ?? 0, cursor: live?.cursor ?? 0, lastLatencyMs: live?.lastLatencyMs ?? 0 };
      return { prefix: w.prefix, mode: w.options.mode, stats, byShard };
    });
    const shards = [...new Set([...l.deliveries.values()].map((d) => d.group))].sort((a, b) => a - b);
    const resources = resourcesOf(l);
    return {
      name: l.record.name,
      version: l.record.version,
      generation: l.record.generation,
      state,
      ...(error ? { error } : {}),
      ...(breaker?.retryAtMs !== undefined && breaker.state === 'open' ? { retryAtMs: breaker.retryAtMs } : {}),
      ...(l.runner ? { runsIn: l.runner.mode } : {}),
      ...(resources ? { resources } : {}),
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

  /**
   * This node's view of every extension it knows: each one running (or failed, paused...) here,
   * and each one whose registered generation has not loaded here yet, as `loading` (an older
   * generation that still runs meanwhile keeps its counters and deliveries in that status, and
   * `error` names it). A node never leaves out an extension its registry holds.
   */
  statuses(): ExtensionStatus[] {
    const out = new Map<string, ExtensionStatus>();
    for (const l of this.loaded.values()) out.set(l.record.name, this.statusOf(l));
    for (const r of this.records()) {
      const here = out.get(r.name);
      if (here && here.generation >= r.generation) continue;
      const counters = this.totalsOf(r.name).ext;
      out.set(r.name, {
        ...(here ?? { delivering: false, shards: [], watches: [] }),
        name: r.name,
        version: r.version,
        generation: r.generation,
        state: 'loading',
        error: here ? `generation ${here.generation} runs here until generation ${r.generation} has loaded` : `generation ${r.generation} has not loaded here yet`,
        workerRestarts: counters.workerRestarts,
        invocations: counters.invocations,
        errors: counters.errors,
        timeouts: counters.timeouts,
        deadLettered: counters.deadLettered,
      });
    }
    return [...out.values()];
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
   * Loads (or replaces) an extension cluster-wide (on the metadata group's leader): see
   * {@link RegistryWrites.load}. Resolves with this node's status once the generation loaded here.
   */
  load(tgz: Uint8Array, opts: LoadOptions): Promise<ExtensionStatus> {
    return this.writes.load(tgz, opts);
  }

  /** Unloads an extension cluster-wide (on the metadata leader); false when it was not loaded: see {@link RegistryWrites.unload}. */
  unload(name: string, opts: UnloadOptions = {}): Promise<boolean> {
    return this.writes.unload(name, opts);
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
          timer.cancel();
          resolve(st);
        },
      };
      const timer = this.clock.setTimeout(() => {
        forget();
        const now = this.loaded.get(name);
        resolve(now ? this.statusOf(now) : { name, version: '?', generation, state: 'loading', delivering: false, shards: [], watches: [], workerRestarts: 0, invocations: 0, errors: 0, timeouts: 0 });
      }, LOAD_WAIT_MS);
      cancel = () => {
        timer.cancel();
        forget();
      };
      this.loadWaiters.set(name, [...(this.loadWaiters.get(name) ?? []), waiter]);
    });
    return { outcome, cancel };
  }
}
