/**
 * Abusive lambdas beside a plain put/get workload, on a real 3-node kvd cluster: for each abuse
 * (off-heap Buffer growth, CPU burn, the runner process crashing itself, an in-process spin), the
 * workload's throughput and p99 against a baseline run, whether every node survived, the peak RSS
 * of the kvd processes (extension processes excluded) and what the cluster reported (restarts,
 * errors, dead letters, pause state).
 * `node dist/bench/extension-abuse.js [--seconds S] [--clients N] [--abuses buffers,burn,crash,spin]`
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { build } from 'hdr-histogram-js';
import { KvClient } from '../src/client/index.js';
import { AdminClient } from '../src/client/admin-client.js';
import { packFolder } from '../src/extensions/pack-folder.js';
import { startKvdCluster } from './kvd-cluster.js';
import { repoRoot } from './util.js';

const USAGE = `usage: node dist/bench/extension-abuse.js [--seconds S] [--clients N] [--abuses LIST]
  --seconds S    measured seconds per run (default 10)
  --clients N    concurrent put/get clients of the plain workload (default 16)
  --abuses LIST  which abuses (default buffers,burn,crash,spin)`;

/** Each abuse: the event that triggers it (2 per second into the abusive prefix) and the isolation it runs in. */
const ABUSES: Record<string, { key: (i: number) => string; value: string; isolation: 'process' | 'in-process' }> = {
  buffers: { key: (i) => `/hog/buffers/${i}`, value: '16', isolation: 'process' },
  burn: { key: (i) => `/hog/burn/${i}`, value: '400', isolation: 'process' },
  crash: { key: (i) => `/hog/signal/${i}`, value: '0', isolation: 'process' },
  spin: { key: (i) => `/spin/forever-${i}`, value: 'x', isolation: 'in-process' },
};

async function rssBytes(pid: number): Promise<number> {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

interface RunResult {
  opsPerSec: number;
  p99Ms: number;
  errors: number;
  nodesAlive: number;
  peakRssMiB: number;
}

/** Runs the plain workload for `seconds`, sampling the kvd processes' RSS; optionally fires `abuse` events meanwhile. */
async function run(endpoints: readonly string[], pids: () => number[], seconds: number, clients: number, abuse?: (i: number) => Promise<unknown>): Promise<RunResult> {
  const c = new KvClient({ endpoints, defaultDeadlineMs: 5_000 });
  const hist = build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
  let ops = 0;
  let errors = 0;
  let peak = 0;
  const startPids = pids();
  const until = Date.now() + seconds * 1000;
  const sampler = setInterval(() => {
    void Promise.all(startPids.map(rssBytes)).then((r) => (peak = Math.max(peak, ...r)));
  }, 200);
  let fired = 0;
  const abuser = abuse
    ? setInterval(() => {
        void abuse(fired++).catch(() => undefined);
      }, 500)
    : undefined;
  await Promise.all(
    Array.from({ length: clients }, async (_, w) => {
      for (let i = 0; Date.now() < until; i++) {
        const t0 = performance.now();
        try {
          if (i % 2 === 0) await c.put(`/plain/${w}/${i % 100}`, 'v'.repeat(256));
          else await c.get(`/plain/${w}/${(i - 1) % 100}`);
          hist.recordValue(Math.max(1, Math.round((performance.now() - t0) * 1000)));
          ops++;
        } catch {
          errors++;
        }
      }
    }),
  );
  clearInterval(sampler);
  if (abuser) clearInterval(abuser);
  const alive = startPids.filter((pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }).length;
  c.close();
  return { opsPerSec: Math.round(ops / seconds), p99Ms: hist.getValueAtPercentile(99) / 1000, errors, nodesAlive: alive, peakRssMiB: Math.round(peak / 2 ** 20) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { seconds: { type: 'string' }, clients: { type: 'string' }, abuses: { type: 'string' }, help: { type: 'boolean' } } });
  if (values.help) return void process.stdout.write(`${USAGE}\n`);
  const seconds = Number(values.seconds ?? 10);
  const clients = Number(values.clients ?? 16);
  const abuses = (values.abuses ?? 'buffers,burn,crash,spin').split(',').filter((a) => a in ABUSES);
  const rows: string[] = ['| run | ops/s | p99 ms | errors | nodes alive | peak kvd RSS MiB | reported |', '|---|---|---|---|---|---|---|'];
  const row = (name: string, r: RunResult, reported: string) =>
    rows.push(`| ${name} | ${r.opsPerSec} | ${r.p99Ms.toFixed(1)} | ${r.errors} | ${r.nodesAlive}/3 | ${r.peakRssMiB} | ${reported} |`);
  for (const name of ['baseline', ...abuses]) {
    // A fresh cluster per run: an abuse that took a node down must not spoil the next row.
    const cluster = await startKvdCluster({ extraArgs: ['--loop-block-kill-ms', '3000'] });
    try {
      let reported = '-';
      let fire: ((i: number) => Promise<unknown>) | undefined;
      const admin = new AdminClient({ endpoints: cluster.endpoints, token: cluster.adminToken! });
      if (name !== 'baseline') {
        const a = ABUSES[name]!;
        const folder = join(repoRoot(), 'test', 'extensions', 'fixtures', name === 'spin' ? 'it-spinner' : 'resource-hog');
        await admin.load(await packFolder(folder), { isolation: a.isolation });
        const writer = new KvClient({ endpoints: cluster.endpoints, defaultDeadlineMs: 2_000 });
        fire = (i) => writer.put(a.key(i), a.value);
      }
      const r = await run(cluster.endpoints, () => cluster.pids(), seconds, clients, fire);
      if (name !== 'baseline') {
        try {
          const l = await admin.list();
          reported = l.statuses
            .map((s) => `n${s.nodeId}: ${s.state}${s.error ? ` (${s.error.slice(0, 60)})` : ''} restarts ${s.workerRestarts} errors ${s.errors} timeouts ${s.timeouts}`)
            .join('; ');
        } catch (e) {
          reported = `status failed: ${(e as Error).message}`;
        }
      }
      admin.close();
      row(name, r, reported);
      process.stdout.write(`${rows[rows.length - 1]}\n`);
    } finally {
      await cluster.stop();
    }
  }
  process.stdout.write(`\n${rows.join('\n')}\n`);
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`extension-abuse: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
