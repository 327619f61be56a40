/**
 * An extension manager's metrics and counters on this node: the Prometheus series of every
 * extension (invocations, errors, dead letters, restarts, backlog, resources...), each
 * extension's own metrics, and the per-extension and per-watch totals that outlive leader
 * changes and reloads (forgotten on unload).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { DispatchObserver, DispatchStats, DispatchWatch } from './dispatcher.js';
import { sumStats, watchDeliveries, type Loaded } from './loaded.js';
import type { MetricOp } from './sandbox/types.js';

/** Buckets of the lambda run-time histogram (seconds): half a millisecond to ten seconds. */
const LAMBDA_DURATION_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 10];

/** An extension's counters on this node. */
export interface ExtTotals {
  invocations: number;
  errors: number;
  timeouts: number;
  workerRestarts: number;
  deadLettered: number;
}

/** A watch's counters on this node. */
export type WatchTotals = Pick<DispatchStats, 'invocations' | 'errors' | 'retries' | 'deadLettered' | 'delivered'>;

/** The metrics of the extensions `loaded` lists (read at scrape time), registered in `registry` (none: counted, not exported). */
export class ExtensionMetrics {
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

  constructor(
    private readonly registry: Registry | undefined,
    private readonly loaded: () => Iterable<Loaded>,
  ) {
    const registers = registry ? [registry] : [];
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

  /** What the dispatcher of watch `w` of extension `name` reports into these metrics. */
  dispatchObserver(name: string, w: DispatchWatch): DispatchObserver {
    const labels = { extension: name, prefix: w.prefix };
    return {
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
    };
  }

  /** The runner of extension `name` restarted a worker or process. */
  restarted(name: string): void {
    const t = this.totalsOf(name).ext;
    t.workerRestarts++;
    this.metrics.restartsTotal.inc({ extension: name });
    this.metrics.restarts.set({ extension: name }, t.workerRestarts);
  }

  /** Counts or observes `op` in extension `ext`'s own metric `metricName` (created on first use; not kept without a registry). */
  extMetric(ext: string, kind: 'counter' | 'histogram', metricName: string, help: string, op: MetricOp): void {
    if (!this.registry) return;
    const safe = `kvcascade_ext_${ext.replace(/[^a-zA-Z0-9_]/g, '_')}_${metricName.replace(/[^a-zA-Z0-9_]/g, '_')}`;
    let m = this.extMetrics.get(safe)?.metric;
    if (!m) {
      m =
        kind === 'counter'
          ? new Counter({ name: safe, help: help || metricName, registers: [this.registry] })
          : new Histogram({ name: safe, help: help || metricName, registers: [this.registry], ...(op.buckets ? { buckets: op.buckets } : {}) });
      this.extMetrics.set(safe, { ext, metric: m });
    }
    if (m instanceof Counter && op.inc !== undefined) m.inc(op.inc);
    if (m instanceof Histogram && op.observe !== undefined) m.observe(op.observe);
  }

  /** Extension `name`'s counters on this node (created at zero). */
  totalsOf(name: string): { ext: ExtTotals; watches: Map<string, WatchTotals> } {
    let t = this.totals.get(name);
    if (!t) {
      t = { ext: { invocations: 0, errors: 0, timeouts: 0, workerRestarts: 0, deadLettered: 0 }, watches: new Map() };
      this.totals.set(name, t);
    }
    return t;
  }

  /** The counters of watch `w` of extension `name` on this node (created at zero). */
  watchTotalsOf(name: string, w: DispatchWatch): WatchTotals {
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
    for (const l of this.loaded()) {
      for (const w of l.runner?.watches ?? []) {
        const live = sumStats(watchDeliveries(l, w.id).map((d) => d.dispatcher.stats));
        this.metrics.backlog.set({ extension: l.record.name, prefix: w.prefix }, live?.backlog ?? 0);
      }
    }
  }

  private collectPaused(): void {
    this.metrics.paused.reset();
    for (const l of this.loaded()) {
      const b = l.runner?.breaker();
      this.metrics.paused.set({ extension: l.record.name }, b?.state === 'open' ? 1 : b?.state === 'half-open' ? 0.5 : 0);
    }
  }

  /** The process-isolation resource figures of every loaded extension, for a scrape. */
  private collectResources(): void {
    const m = this.metrics;
    for (const g of [m.cpuSeconds, m.rssBytes, m.peakRssBytes, m.maxInvocationCpuSeconds]) g.reset();
    for (const l of this.loaded()) {
      const r = resourcesOf(l);
      if (!r) continue;
      const labels = { extension: l.record.name };
      m.cpuSeconds.set(labels, r.cpuSeconds);
      m.rssBytes.set(labels, r.rssBytes);
      m.peakRssBytes.set(labels, r.peakRssBytes);
      m.maxInvocationCpuSeconds.set(labels, r.maxInvocationCpuSeconds);
    }
  }

  /** An unloaded extension's series leave /metrics (its own metrics too), and its counters are forgotten. */
  async forget(name: string): Promise<void> {
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
      this.registry?.removeSingleMetric(safe);
      this.extMetrics.delete(safe);
    }
  }
}

/** An extension's resource use on one node (process isolation: measured by the node from /proc). */
export interface ExtensionResources {
  /** CPU time (user + system, s) of its processes on this node since it started, every restart included. */
  readonly cpuSeconds: number;
  /** Resident memory (bytes) of its current process at the last sample (0 while none runs). */
  readonly rssBytes: number;
  /** Highest resident memory (bytes) sampled, every restart included. */
  readonly peakRssBytes: number;
  /** Most CPU time (s) one completed invocation took. */
  readonly maxInvocationCpuSeconds: number;
}

/**
 * The resource figures of `l` on this node (what /metrics and `ext ls` report), or undefined
 * where they are not measured: no runner, or one that does not run in process isolation (a
 * worker's or the node's own thread has no CPU time or RSS of its own in Node 20).
 */
export function resourcesOf(l: Loaded): ExtensionResources | undefined {
  if (!l.runner || l.runner.mode !== 'process') return undefined;
  const s = l.runner.stats();
  return { cpuSeconds: s.cpuMs / 1000, rssBytes: s.rssBytes, peakRssBytes: s.peakRssBytes, maxInvocationCpuSeconds: s.maxInvocationCpuMs / 1000 };
}
