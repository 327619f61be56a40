// Counters and histograms observed once per operation (requests, commits) into plain numbers and handed to prom-client only when it collects (a scrape), so an op pays an increment instead of prom-client's label validation and hashing on every call.
import { Counter, type Registry } from 'prom-client';

/** One label set's running total of a {@link HotCounter}. */
export interface HotCounterSeries {
  /** Adds `n` (default 1). */
  inc(n?: number): void;
}

/** A counter whose label sets are looked up once ({@link series}) and then incremented as plain numbers; exposed as a prom-client counter. */
export class HotCounter<L extends string> {
  private readonly all = new Map<string, { readonly labels: Record<L, string>; value: number; seen: number; inc(n?: number): void }>();

  /** Registers the counter `name` in `registry`. */
  constructor(name: string, help: string, labelNames: readonly L[], registry: Registry) {
    const all = this.all;
    new Counter<L>({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        for (const s of all.values()) {
          if (s.value > s.seen) this.inc(s.labels as never, s.value - s.seen);
          s.seen = s.value;
        }
      },
    });
  }

  /** The series of these label values (created at first use; keep it for the hot path). */
  series(labels: Record<L, string>): HotCounterSeries {
    const id = Object.values(labels).join('\u0000');
    let s = this.all.get(id);
    if (s === undefined) {
      s = {
        labels: { ...labels },
        value: 0,
        seen: 0,
        inc(n = 1) {
          this.value += n;
        },
      };
      this.all.set(id, s);
    }
    return s;
  }
}

/** One label set's buckets of a {@link HotHistogram}. */
export class HotHistogramSeries {
  /** Per bucket (the last one is +Inf), not cumulative. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    readonly labels: Readonly<Record<string, string>>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  /** Records one value (must be a finite number; anything else is ignored). */
  observe(value: number): void {
    if (!Number.isFinite(value)) return;
    const b = this.bounds;
    let i = 0;
    while (i < b.length && value > b[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

/** A sample of {@link HotHistogram.get}, as prom-client's histograms give them. */
interface HistogramSample {
  readonly labels: Record<string, string | number>;
  readonly value: number;
  readonly metricName: string;
}

/**
 * A histogram whose label sets are looked up once ({@link series}) and observed as plain numbers.
 * It registers itself in a prom-client registry as a metric of type `histogram` whose `get()`
 * answers the same shape as prom-client's histograms (`_bucket` with cumulative counts and `le`,
 * `_sum`, `_count`), so the exposition and readers of the registry see no difference.
 */
export class HotHistogram<L extends string> {
  /** For prom-client's registry. */
  readonly type = 'histogram';
  /** For prom-client's registry (how cluster aggregation would combine it). */
  readonly aggregator = 'sum';
  private readonly all = new Map<string, HotHistogramSeries>();

  /** Registers the histogram `name` in `registry`; `buckets` are the upper bounds, ascending. */
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly L[],
    private readonly buckets: readonly number[],
    registry: Registry,
  ) {
    registry.registerMetric(this as never);
  }

  /** The series of these label values (created at first use; keep it for the hot path). */
  series(labels: Record<L, string>): HotHistogramSeries {
    const id = Object.values(labels).join('\u0000');
    let s = this.all.get(id);
    if (s === undefined) {
      s = new HotHistogramSeries({ ...labels }, this.buckets);
      this.all.set(id, s);
    }
    return s;
  }

  /** The samples, as prom-client's `Histogram.get()` gives them. */
  async get(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: HistogramSample[] }> {
    const values: HistogramSample[] = [];
    for (const s of this.all.values()) {
      let acc = 0;
      for (let i = 0; i < this.buckets.length; i++) {
        acc += s.counts[i]!;
        values.push({ labels: { le: this.buckets[i]!, ...s.labels }, value: acc, metricName: `${this.name}_bucket` });
      }
      values.push({ labels: { le: '+Inf', ...s.labels }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** Zeroes every series (prom-client's `registry.resetMetrics`; series held by callers stay valid). */
  reset(): void {
    for (const s of this.all.values()) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }
}
