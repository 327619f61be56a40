/**
 * The extension manager of one node: keeps the locally running extensions in line with the
 * replicated registry (metadata group), gives their lambdas the store through the node, runs
 * their watch dispatchers while this node leads the data shard, and serves the admin
 * operations (load, unload, status).
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '../log.js';
import { DATA_GROUP, META_GROUP, type KvNode } from '../node/kv-node.js';
import type { ShardReplica } from '../node/replica.js';
import type { Command, CommandResult } from '../statemachine/index.js';
import { DEFAULT_MAX_HOPS, type ExtensionEvent } from './api.js';
import { cursorKey, SYSTEM_PREFIX, WatchDispatcher, type DispatchHost, type DispatchStats } from './dispatcher.js';
import { packageDigest, PackageError, unpackPackage, MAX_PACKAGE_BYTES } from './package.js';
import {
  chunkKey,
  chunkPrefix,
  decodeRecord,
  encodeRecord,
  metaKey,
  nameFromPackage,
  parseRegistryKey,
  REGISTRY_PREFIX,
  splitPackage,
  validateExtensionName,
  type ExtensionRecord,
} from './registry.js';
import { ExtensionRunner } from './sandbox/runner.js';
import type { HostServices, KvOp, LogLevel, MetricOp } from './sandbox/types.js';

/** How an extension is doing on this node. */
export interface ExtensionStatus {
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  readonly state: 'loading' | 'running' | 'failed' | 'unloaded';
  readonly error?: string;
  /** Whether this node currently delivers its events (it leads the data shard). */
  readonly delivering: boolean;
  readonly watches: readonly { prefix: string; mode: string; stats: DispatchStats | undefined }[];
  readonly workerRestarts: number;
  readonly invocations: number;
  readonly errors: number;
  readonly timeouts: number;
}

/** A write attempted deeper in a lambda chain than the hop limit allows. */
export class HopLimitError extends Error {
  constructor(hops: number, max: number) {
    super(`hop limit exceeded: this write would be hop ${hops} of a lambda chain (limit ${max})`);
    this.name = 'HopLimitError';
  }
}

/** Options of the manager. */
export interface ExtensionManagerOptions {
  readonly dataDir: string;
  readonly log: Logger;
  readonly registry?: Registry;
  readonly maxHops?: number;
  /** Heap limit of each extension's worker (MiB). */
  readonly workerHeapMb?: number;
}

interface Loaded {
  record: ExtensionRecord;
  state: ExtensionStatus['state'];
  error?: string;
  runner?: ExtensionRunner;
  dispatchers: WatchDispatcher[];
}

const CALL_MS = 10_000;
const enc = new TextEncoder();

/** Runs a node's extensions. */
export class ExtensionManager {
  private readonly loaded = new Map<string, Loaded>();
  /** `load` calls waiting for a generation to load (or fail) on this node. */
  private readonly loadWaiters = new Map<string, { generation: number; resolve: (s: ExtensionStatus) => void }[]>();
  private leading = false;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly maxHops: number;
  private readonly metrics: {
    invocations: Counter<'extension' | 'prefix' | 'outcome'>;
    latency: Histogram<'extension' | 'prefix'>;
    deadLettered: Gauge<'extension' | 'prefix'>;
    backlog: Gauge<'extension' | 'prefix'>;
    restarts: Gauge<'extension'>;
  };
  private readonly extMetrics = new Map<string, Counter | Histogram>();
  private reconciling = Promise.resolve();

  constructor(
    private readonly node: KvNode,
    private readonly opts: ExtensionManagerOptions,
  ) {
    this.maxHops = opts.maxHops ?? DEFAULT_MAX_HOPS;
    const registers = opts.registry ? [opts.registry] : [];
    this.metrics = {
      invocations: new Counter({ name: 'kvcascade_extension_invocations_total', help: 'Lambda invocations by outcome', labelNames: ['extension', 'prefix', 'outcome'], registers }),
      latency: new Histogram({
        name: 'kvcascade_extension_lambda_duration_seconds',
        help: 'Lambda run time',
        labelNames: ['extension', 'prefix'],
        buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 10],
        registers,
      }),
      deadLettered: new Gauge({ name: 'kvcascade_extension_dead_lettered', help: 'Events sent to the dead-letter keys since this node started delivering', labelNames: ['extension', 'prefix'], registers }),
      backlog: new Gauge({ name: 'kvcascade_extension_backlog', help: 'Events received and not yet handled', labelNames: ['extension', 'prefix'], registers }),
      restarts: new Gauge({ name: 'kvcascade_extension_worker_restarts', help: 'Worker restarts (timeouts, crashes, out of memory)', labelNames: ['extension'], registers }),
    };
  }

  /** Loads what the registry holds and follows its changes; delivers while leading the data shard. */
  start(): void {
    const meta = this.metaReplica();
    for (const item of meta.sm.list(REGISTRY_PREFIX, { limit: 10_000 }).items) {
      const parsed = parseRegistryKey(item.key);
      if (parsed?.isMeta && item.value) this.enqueue(() => this.reconcile(parsed.name));
    }
    meta.watches.add(
      { prefix: REGISTRY_PREFIX, fromRevision: meta.sm.revision + 1, progressIntervalMs: 60_000 },
      {
        events: (events) => {
          for (const e of events) {
            const parsed = parseRegistryKey(e.key);
            if (parsed?.isMeta) this.enqueue(() => this.reconcile(parsed.name));
          }
        },
        progress: () => {},
        canceled: (reason) => this.opts.log.error({ reason }, 'extension registry watch cancelled'),
      },
    );
    this.timer = setInterval(() => this.checkLeadership(), 100);
    this.timer.unref?.();
  }

  /** Stops every extension (node shutdown). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.reconciling.catch(() => {});
    for (const l of this.loaded.values()) await this.stopLoaded(l, true);
  }

  private metaReplica(): ShardReplica {
    const r = this.node.replica(META_GROUP);
    if (!r) throw new Error('metadata group not hosted here');
    return r;
  }

  private dataReplica(): ShardReplica {
    const r = this.node.replica(DATA_GROUP);
    if (!r) throw new Error('data group not hosted here');
    return r;
  }

  private enqueue(fn: () => Promise<void>): void {
    this.reconciling = this.reconciling.then(fn).catch((e: unknown) => this.opts.log.error({ err: String(e) }, 'extension reconcile failed'));
  }

  // ------------------------------------------------------------ reconcile with the registry

  private async reconcile(name: string): Promise<void> {
    if (this.stopped) return;
    const meta = this.metaReplica();
    const got = meta.sm.get(metaKey(name));
    const current = this.loaded.get(name);
    if (!got) {
      if (current) {
        await this.stopLoaded(current, true);
        this.loaded.delete(name);
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
    if (current && current.record.generation === record.generation && current.state !== 'loading') return;
    const next: Loaded = { record, state: 'loading', dispatchers: [] };
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
      if (this.leading) this.startDispatch(next);
    }
    this.settle(next);
  }

  private readPackage(record: ExtensionRecord): Uint8Array {
    const meta = this.metaReplica();
    const parts: Uint8Array[] = [];
    for (let i = 0; i < record.chunks; i++) {
      const c = meta.sm.get(chunkKey(record.name, record.generation, i));
      if (!c) throw new PackageError(`package chunk ${i} of ${record.name} is missing`);
      parts.push(c.value);
    }
    const tgz = new Uint8Array(Buffer.concat(parts));
    if (packageDigest(tgz) !== record.sha256) throw new PackageError(`package of ${record.name} does not match its digest`);
    return tgz;
  }

  private async startRunner(record: ExtensionRecord, dir: string): Promise<ExtensionRunner> {
    return ExtensionRunner.start({
      name: record.name,
      modulePath: dir,
      config: record.config,
      mode: record.inProcess ? 'in-process' : 'worker',
      resourceLimits: { maxOldGenerationSizeMb: this.opts.workerHeapMb ?? 256 },
      host: this.hostServices(record.name),
    });
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

  private async stopLoaded(l: Loaded, persist: boolean): Promise<void> {
    const ds = l.dispatchers.splice(0);
    await Promise.all(ds.map((d) => d.stop(persist)));
    await l.runner?.stop().catch(() => {});
  }

  // ------------------------------------------------------------ delivery on the leader

  private checkLeadership(): void {
    if (this.stopped) return;
    const leading = this.dataReplica().isLeader;
    if (leading === this.leading) return;
    this.leading = leading;
    for (const l of this.loaded.values()) {
      if (leading && l.state === 'running') this.startDispatch(l);
      if (!leading) {
        // Another node delivers now (from the replicated cursor); drop ours without writing.
        for (const d of l.dispatchers.splice(0)) void d.stop(false);
      }
    }
    this.opts.log.info({ leading }, leading ? 'delivering extension events (data shard leader)' : 'no longer delivering extension events');
  }

  private startDispatch(l: Loaded): void {
    const runner = l.runner;
    if (!runner || l.dispatchers.length > 0) return;
    const data = this.dataReplica();
    const name = l.record.name;
    const host: DispatchHost = {
      subscribe: (prefix, fromRevision, sink) => data.watches.add({ prefix, fromRevision, progressIntervalMs: 500 }, sink),
      hopsOf: (rev) => data.hopsOf(rev),
      put: async (key, value) => {
        const r = await this.node.execute(DATA_GROUP, { type: 'put', key, value }, { deadlineMs: Date.now() + CALL_MS });
        if (r.type === 'rejected') throw r.error;
      },
      shard: DATA_GROUP,
      maxHops: this.maxHops,
    };
    for (const w of runner.watches) {
      const labels = { extension: name, prefix: w.prefix };
      const d = new WatchDispatcher(
        name,
        w,
        (id, ev: ExtensionEvent, timeoutMs) => runner.invoke(id, ev, timeoutMs),
        host,
        (ms, ok) => {
          this.metrics.invocations.inc({ ...labels, outcome: ok ? 'ok' : 'error' });
          this.metrics.latency.observe(labels, ms / 1000);
          this.metrics.backlog.set(labels, d.stats.backlog);
          this.metrics.deadLettered.set(labels, d.stats.deadLettered);
        },
        (msg) => this.opts.log.warn({ extension: name, prefix: w.prefix }, msg),
      );
      const saved = data.sm.get(cursorKey(name, w));
      const cursor = saved ? Number(new TextDecoder().decode(saved.value)) || 0 : 0;
      // A watch starts where the extension was registered (it sees every change made after
      // `load` returned, whichever node leads the shard), or further on from its replicated
      // cursor. A cursor older than the registration belongs to an earlier, unloaded incarnation
      // and is ignored (a reload keeps the first registration's start, so its cursor counts).
      const registeredAt = Math.max(0, (l.record.startRevision ?? data.sm.revision + 1) - 1);
      d.start(Math.max(saved ? cursor : 0, registeredAt));
      l.dispatchers.push(d);
    }
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
    const deadline = { deadlineMs: Date.now() + CALL_MS };
    const bytes = (v: unknown): Uint8Array => (typeof v === 'string' ? enc.encode(v) : (v as Uint8Array));
    const write = async (cmd: Command): Promise<CommandResult> => {
      if (hops > this.maxHops) throw new HopLimitError(hops, this.maxHops);
      const r = await this.node.execute(DATA_GROUP, cmd, deadline, hops);
      if (r.type === 'rejected') throw r.error;
      return r;
    };
    switch (op) {
      case 'get': {
        const [key, o] = args as [string, { atVersion?: number; atTimeMs?: number } | undefined];
        const g = await this.node.get({ key, consistency: 'linearizable', ...(o?.atVersion ? { atVersion: o.atVersion } : {}), ...(o?.atTimeMs ? { atTimeMs: o.atTimeMs } : {}) }, deadline);
        return { found: g.found, value: g.value, version: g.version, timestamp: g.timestampMs };
      }
      case 'put': {
        const [key, value, o] = args as [string, unknown, { expectedVersion?: number } | undefined];
        const r = await write({ type: 'put', key, value: bytes(value), ...(o?.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}) });
        const p = r as Extract<CommandResult, { type: 'put' }>;
        return { succeeded: p.succeeded, version: p.succeeded ? p.version : 0, currentVersion: p.succeeded ? p.version : (p.current?.version ?? p.version) };
      }
      case 'trigger': {
        const [key, value] = args as [string, unknown];
        await write({ type: 'triggerPut', key, value: bytes(value) });
        return undefined;
      }
      case 'delete': {
        const [key, o] = args as [string, { expectedVersion?: number } | undefined];
        const r = (await write({ type: 'delete', key, ...(o?.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}) })) as Extract<CommandResult, { type: 'delete' }>;
        return { succeeded: r.succeeded, deleted: r.deleted };
      }
      case 'list': {
        const [prefix, o] = args as [string, { limit?: number; after?: string; keysOnly?: boolean } | undefined];
        const page = await this.node.list({ prefix, keysOnly: o?.keysOnly ?? false, consistency: 'linearizable', ...(o?.limit ? { limit: o.limit } : {}), ...(o?.after ? { after: o.after } : {}) }, deadline);
        return { items: page.items.map((i) => ({ key: i.key, value: i.value, version: i.version })), nextAfter: page.nextAfter };
      }
    }
  }

  private extMetric(ext: string, kind: 'counter' | 'histogram', metricName: string, help: string, op: MetricOp): void {
    if (!this.opts.registry) return;
    const safe = `kvcascade_ext_${ext.replace(/[^a-zA-Z0-9_]/g, '_')}_${metricName.replace(/[^a-zA-Z0-9_]/g, '_')}`;
    let m = this.extMetrics.get(safe);
    if (!m) {
      m =
        kind === 'counter'
          ? new Counter({ name: safe, help: help || metricName, registers: [this.opts.registry] })
          : new Histogram({ name: safe, help: help || metricName, registers: [this.opts.registry], ...(op.buckets ? { buckets: op.buckets } : {}) });
      this.extMetrics.set(safe, m);
    }
    if (m instanceof Counter && op.inc !== undefined) m.inc(op.inc);
    if (m instanceof Histogram && op.observe !== undefined) m.observe(op.observe);
  }

  // ------------------------------------------------------------ status and admin

  private statusOf(l: Loaded): ExtensionStatus {
    const st = l.runner?.stats();
    const watches = (l.runner?.watches ?? []).map((w) => ({
      prefix: w.prefix,
      mode: w.options.mode,
      stats: l.dispatchers.find((d) => d.watch.id === w.id)?.stats,
    }));
    this.metrics.restarts.set({ extension: l.record.name }, st?.workerRestarts ?? 0);
    return {
      name: l.record.name,
      version: l.record.version,
      generation: l.record.generation,
      state: l.state,
      ...(l.error ? { error: l.error } : {}),
      delivering: l.dispatchers.length > 0,
      watches,
      workerRestarts: st?.workerRestarts ?? 0,
      invocations: st?.invocations ?? 0,
      errors: st?.errors ?? 0,
      timeouts: st?.timeouts ?? 0,
    };
  }

  /** This node's view of every extension it knows. */
  statuses(): ExtensionStatus[] {
    return [...this.loaded.values()].map((l) => this.statusOf(l));
  }

  /** The registry as replicated (read locally). */
  records(): ExtensionRecord[] {
    const meta = this.metaReplica();
    const out: ExtensionRecord[] = [];
    for (const item of meta.sm.list(REGISTRY_PREFIX, { limit: 10_000 }).items) {
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
   * or throws from it is refused with the reason, and nothing is registered.
   */
  async load(tgz: Uint8Array, opts: { name?: string; config?: Record<string, unknown>; inProcess?: boolean }): Promise<ExtensionStatus> {
    if (tgz.length > MAX_PACKAGE_BYTES) throw new PackageError(`package is larger than ${MAX_PACKAGE_BYTES} bytes`);
    const staging = join(this.opts.dataDir, 'extensions', '.staging', randomBytes(6).toString('hex'));
    await mkdir(staging, { recursive: true });
    let info;
    try {
      info = await unpackPackage(tgz, staging);
      const name = validateExtensionName(opts.name ?? nameFromPackage(info.name));
      const probe = await ExtensionRunner.start({
        name,
        modulePath: staging,
        config: opts.config ?? {},
        mode: 'worker',
        resourceLimits: { maxOldGenerationSizeMb: this.opts.workerHeapMb ?? 256 },
        host: {
          kv: async () => {
            throw new Error('the store is not available while an extension is being validated');
          },
          log: () => {},
          metric: () => {},
        },
      });
      await probe.stop();
      const previous = this.records().find((r) => r.name === name);
      const generation = (previous?.generation ?? 0) + 1;
      const chunks = splitPackage(tgz);
      const deadline = () => ({ deadlineMs: Date.now() + 30_000 });
      for (let i = 0; i < chunks.length; i++) {
        await this.node.execute(META_GROUP, { type: 'put', key: chunkKey(name, generation, i), value: chunks[i]! }, deadline());
      }
      // A linearizable read makes the start point no older than any write acknowledged so far.
      const startRevision = await this.dataRevision();
      const record: ExtensionRecord = {
        name,
        version: info.version,
        startRevision: previous?.startRevision ?? startRevision,
        generation,
        sha256: packageDigest(tgz),
        size: tgz.length,
        chunks: chunks.length,
        config: opts.config ?? {},
        ...(info.native ? { native: info.native } : {}),
        ...(opts.inProcess ? { inProcess: true } : {}),
        loadedAtMs: Date.now(),
      };
      const outcome = this.waitFor(name, generation);
      await this.node.execute(META_GROUP, { type: 'put', key: metaKey(name), value: encodeRecord(record) }, deadline());
      if (previous) await this.deleteChunks(name, previous.generation);
      return await outcome;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /** The data shard's current revision + 1, read through its leader when it is elsewhere. */
  private async dataRevision(): Promise<number> {
    const data = this.dataReplica();
    if (data.isLeader) {
      await this.node.readable('linearizable', { deadlineMs: Date.now() + 10_000 }, DATA_GROUP);
      return data.sm.revision + 1;
    }
    // Not the data leader: the local replica may lag a little behind; wait briefly for it to
    // catch up with the leader's commit index so the start point is close to "now".
    const target = data.raw.raft.log.committed;
    const until = Date.now() + 2000;
    while (data.sm.appliedIndex < target && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    return data.sm.revision + 1;
  }

  /** Unloads an extension cluster-wide (on the metadata leader). Resolves false when it was not loaded. */
  async unload(name: string): Promise<boolean> {
    validateExtensionName(name);
    const record = this.records().find((r) => r.name === name);
    if (!record) return false;
    const deadline = { deadlineMs: Date.now() + 30_000 };
    await this.node.execute(META_GROUP, { type: 'delete', key: metaKey(name) }, deadline);
    await this.deleteChunks(name, record.generation);
    await this.deleteCursors(name);
    return true;
  }

  /**
   * Forgets an unloaded extension's delivery cursors, so that loading it again later starts
   * from that load (not from where the old one stopped). Runs through the data leader.
   */
  private async deleteCursors(name: string): Promise<void> {
    const prefix = `${SYSTEM_PREFIX}cursor/${name}/`;
    try {
      const page = await this.node.list({ prefix, keysOnly: true, consistency: 'linearizable', limit: 10_000 }, { deadlineMs: Date.now() + 10_000 });
      for (const item of page.items) await this.node.execute(DATA_GROUP, { type: 'delete', key: item.key }, { deadlineMs: Date.now() + 10_000 });
    } catch (e) {
      // This node does not lead the data shard: the cursors stay, and a later load of the same
      // name resumes from them (delivering what happened meanwhile, at least once). Logged.
      this.opts.log.warn({ extension: name, err: (e as Error).message }, 'could not delete delivery cursors after unload');
    }
  }

  private async deleteChunks(name: string, generation: number): Promise<void> {
    const meta = this.metaReplica();
    const keys = meta.sm.list(chunkPrefix(name, generation), { keysOnly: true, limit: 10_000 }).items.map((i) => i.key);
    for (const key of keys) await this.node.execute(META_GROUP, { type: 'delete', key }, { deadlineMs: Date.now() + 30_000 });
  }

  /** Resolves with this node's status of `name` once `generation` loaded or failed here (30 s at most). */
  private waitFor(name: string, generation: number): Promise<ExtensionStatus> {
    return new Promise((resolve) => {
      const l = this.loaded.get(name);
      if (l && l.record.generation >= generation && l.state !== 'loading') return resolve(this.statusOf(l));
      const waiter = {
        generation,
        resolve: (st: ExtensionStatus) => {
          clearTimeout(timer);
          resolve(st);
        },
      };
      const timer = setTimeout(() => {
        const list = this.loadWaiters.get(name) ?? [];
        this.loadWaiters.set(name, list.filter((w) => w !== waiter));
        const now = this.loaded.get(name);
        resolve(now ? this.statusOf(now) : { name, version: '?', generation, state: 'loading', delivering: false, watches: [], workerRestarts: 0, invocations: 0, errors: 0, timeouts: 0 });
      }, 30_000);
      this.loadWaiters.set(name, [...(this.loadWaiters.get(name) ?? []), waiter]);
    });
  }

}
