// Data-size workload (issue 17): fills N distinct keys × 1 KiB through the client library into a fresh 3-node kvd cluster and prints, at each checkpoint, the put rate and every node's RSS, V8 heap and "external" memory (value buffers), so memory per byte of user data can be compared before and after a change.
//
// Run: npx tsc -p tsconfig.json (or npm run build), then
//   node dist/bench/data-size.js [--checkpoints 10000,100000] [--big] [--value-bytes 1024] [--concurrency 64] [--kvd-args "--value-cache-mib 64"] [--bin dist/src/bin/kvd.js]
// `--big` adds the 1 000 000-key checkpoint. Figures come from each node's Prometheus `/metrics`
// (prom-client's default process metrics: kvcascade_process_resident_memory_bytes,
// kvcascade_nodejs_heap_size_used_bytes, kvcascade_nodejs_external_memory_bytes) and, when kvd
// exports them, the value cache's (kvcascade_value_cache_*). On a shared machine the put rate is
// indicative only; RSS and heap are the figures to compare.
import { request } from 'node:http';
import { parseArgs } from 'node:util';
import { KvClient } from '../src/client/index.js';
import { startKvdCluster } from './kvd-cluster.js';
import { flagInt, flagIntList } from './util.js';

/** One node's memory figures at a checkpoint (MiB). */
export interface NodeMemory {
  readonly node: number;
  readonly rssMiB: number;
  readonly heapUsedMiB: number;
  readonly externalMiB: number;
  readonly cacheMiB?: number;
}

/** The figures at one checkpoint. */
export interface DataSizeCheckpoint {
  readonly keys: number;
  readonly putsPerSec: number;
  readonly errors: number;
  readonly nodes: readonly NodeMemory[];
}

const mib = (n: number): number => Math.round((n / 2 ** 20) * 10) / 10;

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('metrics timeout')));
    req.end();
  });
}

/** The value of an unlabelled (or first-labelled) sample `name` in a Prometheus text page. */
function sample(text: string, name: string): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) return v;
  }
  return undefined;
}

async function memoryOf(ports: readonly (number | undefined)[]): Promise<NodeMemory[]> {
  const out: NodeMemory[] = [];
  for (let i = 0; i < ports.length; i++) {
    const port = ports[i];
    if (port === undefined) continue;
    const text = await scrape(port).catch(() => '');
    const cache = sample(text, 'kvcascade_value_cache_bytes');
    out.push({
      node: i + 1,
      rssMiB: mib(sample(text, 'kvcascade_process_resident_memory_bytes') ?? 0),
      heapUsedMiB: mib(sample(text, 'kvcascade_nodejs_heap_size_used_bytes') ?? 0),
      externalMiB: mib(sample(text, 'kvcascade_nodejs_external_memory_bytes') ?? 0),
      ...(cache !== undefined ? { cacheMiB: mib(cache) } : {}),
    });
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      checkpoints: { type: 'string', default: '10000,100000' },
      big: { type: 'boolean', default: false },
      'value-bytes': { type: 'string', default: '1024' },
      concurrency: { type: 'string', default: '64' },
      'kvd-args': { type: 'string', default: '' },
      bin: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log('node dist/bench/data-size.js [--checkpoints 10000,100000] [--big] [--value-bytes 1024] [--concurrency 64] [--kvd-args "..."]');
    return;
  }
  const checkpoints = flagIntList('checkpoints', values.checkpoints, 1, 100_000_000);
  if (values.big && !checkpoints.includes(1_000_000)) checkpoints.push(1_000_000);
  checkpoints.sort((a, b) => a - b);
  const valueBytes = flagInt('value-bytes', values['value-bytes'], 1);
  const concurrency = flagInt('concurrency', values.concurrency, 1);
  const extraArgs = values['kvd-args'].split(' ').filter((s) => s.length > 0);
  const cluster = await startKvdCluster({ extraArgs, ...(values.bin !== undefined ? { bin: values.bin } : {}), log: (m) => console.error(m) });
  const client = new KvClient({ endpoints: cluster.endpoints, defaultDeadlineMs: 30_000 });
  const results: DataSizeCheckpoint[] = [];
  try {
    const ports = (await cluster.metricsPorts?.()) ?? [];
    const value = new Uint8Array(valueBytes).fill(0x61);
    let next = 0;
    let errors = 0;
    let from = 0;
    for (const target of checkpoints) {
      const t0 = performance.now();
      const errorsBefore = errors;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          for (;;) {
            const i = next++;
            if (i >= target) return;
            const key = `data/${i.toString().padStart(9, '0')}`;
            for (let attempt = 0; ; attempt++) {
              try {
                await client.put(key, value);
                break;
              } catch {
                errors++;
                if (attempt >= 5) throw new Error(`put ${key} failed 6 times`);
              }
            }
          }
        }),
      );
      const s = (performance.now() - t0) / 1000;
      next = target;
      // Let the nodes settle (apply, flush, GC) before sampling.
      await new Promise((r) => setTimeout(r, 3_000));
      const cp: DataSizeCheckpoint = { keys: target, putsPerSec: Math.round((target - from) / s), errors: errors - errorsBefore, nodes: await memoryOf(ports) };
      from = target;
      results.push(cp);
      const per = cp.nodes
        .map((n) => `n${n.node} rss ${n.rssMiB} heap ${n.heapUsedMiB} ext ${n.externalMiB}${n.cacheMiB !== undefined ? ` cache ${n.cacheMiB}` : ''}`)
        .join(' | ');
      console.log(`keys ${target}  puts/s ${cp.putsPerSec}  errors ${cp.errors}  MiB: ${per}`);
    }
    console.log(JSON.stringify({ valueBytes, concurrency, extraArgs, results }));
  } finally {
    client.close();
    await cluster.stop();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
