/** Measures the cost per invocation of each extension isolation mode (worker thread, child process, in-process): invocations/s and latency of a trivial lambda, with and without one ctx.kv call (`node dist/bench/extension-isolation.js [--seconds S] [--concurrency N] [--modes worker,process,in-process]`). */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { ExtensionEvent } from '../src/extensions/api.js';
import { ExtensionRunner, type HostServices, type IsolationMode } from '../src/extensions/sandbox/index.js';

const USAGE = `usage: node dist/bench/extension-isolation.js [--seconds S] [--concurrency N] [--modes worker,process,in-process]
  --seconds S       measured seconds per mode and workload (default 3, after 1 s of warm-up)
  --concurrency N   invocations in flight in the concurrent workload (default 32)
  --modes LIST      which isolation modes (default worker,process,in-process)`;

/** The lambdas: `/noop/` returns at once; `/get/` makes one ctx.kv.get (a round trip to the node and back). */
const MODULE = `
export function initialize(ctx) {
  ctx.watch('/noop/', () => {}, { mode: 'stateless', concurrency: 1024 });
  ctx.watch('/get/', async (e) => { await ctx.kv.get(e.key); }, { mode: 'stateless', concurrency: 1024 });
}
`;

const host: HostServices = {
  kv: async () => ({ found: true, value: new Uint8Array(16), version: 1, timestamp: 1 }),
  log: () => {},
  metric: () => {},
};

function event(key: string): ExtensionEvent {
  return { type: 'put', key, value: new Uint8Array(64), version: 1, timestamp: Date.now(), shard: 1, hops: 0 };
}

interface Result {
  mode: IsolationMode;
  workload: string;
  serialPerS: number;
  p50Us: number;
  p99Us: number;
  concurrentPerS: number;
  /** CPU time per invocation in the concurrent workload: the node process (its worker threads included) plus the extension's child process. */
  cpuUsPerInvocation: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? 0;
}

/** One invocation at a time for `ms`: invocations/s and latency percentiles (µs). */
async function serial(r: ExtensionRunner, watch: number, key: string, ms: number): Promise<{ perS: number; p50: number; p99: number }> {
  const lat: number[] = [];
  const end = performance.now() + ms;
  const ev = event(key);
  while (performance.now() < end) {
    const t = performance.now();
    await r.invoke(watch, ev, 10_000);
    lat.push((performance.now() - t) * 1000);
  }
  lat.sort((a, b) => a - b);
  return { perS: lat.length / (ms / 1000), p50: percentile(lat, 50), p99: percentile(lat, 99) };
}

/** `n` closed-loop callers for `ms`: invocations/s, and CPU µs per invocation (this process, threads included, + the child's). */
async function concurrent(r: ExtensionRunner, watch: number, key: string, n: number, ms: number): Promise<{ perS: number; cpuUs: number }> {
  let done = 0;
  const cpu0 = process.cpuUsage();
  // The child's CPU time comes from /proc samples (every 100 ms): let one pass on each side.
  await new Promise((res) => setTimeout(res, 150));
  const child0 = r.stats().cpuMs;
  const t0 = performance.now();
  const end = performance.now() + ms;
  const ev = event(key);
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (performance.now() < end) {
        await r.invoke(watch, ev, 10_000);
        done++;
      }
    }),
  );
  const wall = performance.now() - t0;
  await new Promise((res) => setTimeout(res, 150));
  const childMs = r.stats().cpuMs - child0;
  const own = process.cpuUsage(cpu0);
  return { perS: done / (wall / 1000), cpuUs: (own.user + own.system + childMs * 1000) / done };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { seconds: { type: 'string' }, concurrency: { type: 'string' }, modes: { type: 'string' }, help: { type: 'boolean' } } });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const ms = Number(values.seconds ?? '3') * 1000;
  const n = Number(values.concurrency ?? '32');
  const modes = (values.modes ?? 'worker,process,in-process').split(',') as IsolationMode[];
  const dir = await mkdtemp(join(tmpdir(), 'kvc-iso-bench-'));
  const results: Result[] = [];
  try {
    await writeFile(join(dir, 'package.json'), '{ "name": "iso-bench", "version": "1.0.0", "type": "module", "main": "index.js" }\n');
    await writeFile(join(dir, 'index.js'), MODULE);
    for (const mode of modes) {
      const t0 = performance.now();
      const r = await ExtensionRunner.start({ name: 'iso-bench', modulePath: dir, host, mode });
      const startMs = performance.now() - t0;
      try {
        for (const [workload, watch, key] of [['noop', 1, '/noop/k'], ['kv.get', 2, '/get/k']] as const) {
          await concurrent(r, watch, key, n, 1000); // warm-up
          const s = await serial(r, watch, key, ms);
          const c = await concurrent(r, watch, key, n, ms);
          results.push({ mode, workload, serialPerS: s.perS, p50Us: s.p50, p99Us: s.p99, concurrentPerS: c.perS, cpuUsPerInvocation: c.cpuUs });
        }
        const st = r.stats();
        console.error(`${mode}: started in ${startMs.toFixed(0)} ms; ${st.invocations} invocations, cpuMs ${st.cpuMs}, rss ${(st.rssBytes / 2 ** 20).toFixed(0)} MiB`);
      } finally {
        await r.stop();
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  console.log(`mode        workload  serial inv/s  p50 µs  p99 µs  concurrent(${n}) inv/s  CPU µs/inv`);
  for (const x of results) {
    console.log(
      `${x.mode.padEnd(11)} ${x.workload.padEnd(9)} ${x.serialPerS.toFixed(0).padStart(12)} ${x.p50Us.toFixed(0).padStart(7)} ${x.p99Us.toFixed(0).padStart(7)} ${x.concurrentPerS.toFixed(0).padStart(18)} ${x.cpuUsPerInvocation.toFixed(1).padStart(11)}`,
    );
  }
  const by = (m: IsolationMode, w: string) => results.find((x) => x.mode === m && x.workload === w);
  for (const w of ['noop', 'kv.get']) {
    const a = by('worker', w);
    const b = by('process', w);
    if (a && b) {
      console.log(
        `process/worker ${w}: p50 latency ×${(b.p50Us / a.p50Us).toFixed(2)}, serial throughput ×${(b.serialPerS / a.serialPerS).toFixed(2)}, ` +
          `concurrent throughput ×${(b.concurrentPerS / a.concurrentPerS).toFixed(2)}, CPU per invocation ×${(b.cpuUsPerInvocation / a.cpuUsPerInvocation).toFixed(2)}`,
      );
    }
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
