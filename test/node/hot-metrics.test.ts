// Tests of hot-metrics.ts: counters and histograms observed as plain numbers expose exactly what prom-client's own would.
import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { HotCounter, HotHistogram } from '../../src/node/hot-metrics.js';

const BOUNDS = [0.001, 0.01, 0.1, 1];

describe('hot metrics', () => {
  it('a histogram exposes the same text as prom-client\'s for the same observations, per label set', async () => {
    const hot = new Registry();
    const ref = new Registry();
    const h = new HotHistogram('t_seconds', 'test latency', ['method'], BOUNDS, hot);
    const r = new Histogram({ name: 't_seconds', help: 'test latency', labelNames: ['method'], buckets: BOUNDS, registers: [ref] });
    const put = h.series({ method: 'put' });
    const values = [0, 0.0005, 0.001, 0.002, 0.05, 0.1, 0.7, 1, 3, 250];
    for (const v of values) {
      put.observe(v);
      r.observe({ method: 'put' }, v);
    }
    h.series({ method: 'get' }).observe(0.02);
    r.observe({ method: 'get' }, 0.02);
    h.series({ method: 'get' }).observe(Number.NaN); // ignored (prom-client throws)
    expect(await hot.metrics()).toBe(await ref.metrics());
    // Readers of the registry's objects (the console) see the same samples too.
    expect(JSON.stringify((await hot.getSingleMetric('t_seconds')!.get()).values.map((v) => [v.labels, v.value, (v as { metricName?: string }).metricName]))).toBe(
      JSON.stringify((await ref.getSingleMetric('t_seconds')!.get()).values.map((v) => [v.labels, v.value, (v as { metricName?: string }).metricName])),
    );
    hot.resetMetrics();
    put.observe(0.005); // a series held across a reset keeps counting
    expect(await hot.metrics()).toContain('t_seconds_count{method="put"} 1');
    expect(await hot.metrics()).toContain('t_seconds_count{method="get"} 0');
  });

  it('a counter hands its increments to prom-client at collection time, per label set', async () => {
    const hot = new Registry();
    const ref = new Registry();
    const c = new HotCounter('t_total', 'test count', ['method', 'status'], hot);
    const r = new Counter({ name: 't_total', help: 'test count', labelNames: ['method', 'status'], registers: [ref] });
    const ok = c.series({ method: 'put', status: 'OK' });
    ok.inc();
    ok.inc(4);
    c.series({ method: 'put', status: 'UNAVAILABLE' }).inc();
    r.inc({ method: 'put', status: 'OK' }, 5);
    r.inc({ method: 'put', status: 'UNAVAILABLE' });
    expect(await hot.metrics()).toBe(await ref.metrics());
    ok.inc(2);
    r.inc({ method: 'put', status: 'OK' }, 2);
    expect(await hot.metrics()).toBe(await ref.metrics()); // a second scrape adds only what is new
    expect(c.series({ method: 'put', status: 'OK' })).toBe(ok);
  });
});
