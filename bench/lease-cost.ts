/** Measures the cost of keeping many leases alive (`node dist/bench/lease-cost.js [flags]`): on a fresh 3-node kvd cluster and a fresh 3-member etcd cluster in the same run, grants N leases, keeps them all alive over one keep-alive stream for a while, and prints server CPU, keep-alive messages per second, leases lost and (kvd) the Raft messages its nodes send each other per second; writes bench/results/lease-cost.json. */
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { LeaseClient } from '../src/client/index.js';
import { ETCD_MISSING_MESSAGE, findEtcd, startEtcdCluster } from './etcd-cluster.js';
import { findKvd, startKvdCluster } from './kvd-cluster.js';
import { flagInt, processCpuSeconds, repoRoot, type RunningCluster } from './util.js';

const USAGE = `usage: node dist/bench/lease-cost.js [flags]
  --leases N       leases granted and kept alive (default 10000)
  --ttl S          their TTL in seconds (default 10; keep-alives every TTL/3, as etcd's client)
  --seconds S      measured keep-alive window (default 30)
  --systems LIST   kvd,etcd (default both; etcd is skipped when not installed)
  --out FILE       JSON results (default bench/results/lease-cost.json)
  --profile DIR    kvd only: a CPU profile of each kvd process over the window (SIGUSR2), saved in DIR
                   (summarise with node dist/bench/profile-summary.js DIR)
  --help
Both systems are driven the same way: one client process, one keep-alive stream to one node,
each lease renewed every TTL/3. Server CPU is the sum over the 3 server processes during the
window (kvd: keep-alives answered in memory by the metadata leader, plus the checkpoints of the
remaining TTL written through the log; etcd: the same by its own rules).`;

/** One system's figures. */
interface Row {
  readonly system: 'kvd' | 'etcd';
  readonly leases: number;
  readonly ttlSec: number;
  readonly grantSeconds: number;
  readonly windowSeconds: number;
  readonly keepAlivesSentPerSec: number;
  readonly keepAlivesAnsweredPerSec: number;
  /** Server CPU seconds per second (1.0 = one core), summed over the 3 servers. */
  readonly serverCores: number;
  readonly serverCpuUsPerKeepAlive: number;
  readonly leasesLost: number;
  /** kvd only: Raft messages and peer-stream batches sent per second over the window, summed over the 3 nodes (`kvcascade_peer_messages_sent_total`, `kvcascade_peer_batches_sent_total`); undefined where /metrics was not read. */
  readonly peerMessagesPerSec?: number;
  readonly peerBatchesPerSec?: number;
}

/** The sum over `c`'s nodes of the Prometheus counter `name` (undefined when a node's /metrics cannot be read). */
async function counterSum(c: RunningCluster, name: string): Promise<number | undefined> {
  const ports = (await c.metricsPorts?.()) ?? [];
  if (ports.length === 0) return undefined;
  let total = 0;
  for (const port of ports) {
    if (port === undefined) return undefined;
    try {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5_000) });
      const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(await res.text());
      if (!m) return undefined;
      total += Number(m[1]);
    } catch {
      return undefined;
    }
  }
  return total;
}

async function cpuOf(c: RunningCluster): Promise<number> {
  let total = 0;
  for (const pid of c.pids()) total += (await processCpuSeconds(pid)) ?? 0;
  return total;
}

async function mapLimit<T>(items: readonly T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (i < items.length) await fn(items[i++]!);
    }),
  );
}

async function runKvd(n: number, ttl: number, seconds: number, log: (s: string) => void, profileDir?: string): Promise<Row> {
  if (profileDir) await mkdir(profileDir, { recursive: true });
  const c = await startKvdCluster({ log, ...(profileDir ? { profileDir } : {}) });
  const profile = (): void => {
    if (profileDir) for (const pid of c.pids()) process.kill(pid, 'SIGUSR2');
  };
  const lc = new LeaseClient({ endpoints: c.endpoints, deadlineMs: 30_000 });
  try {
    const t0 = Date.now();
    let lost = 0;
    lc.on('lost', () => lost++);
    // Each lease is kept alive from its grant on.
    await mapLimit([...Array(n).keys()], 256, async () => {
      lc.keepAlive(await lc.grant(ttl), ttl);
    });
    const grantSeconds = (Date.now() - t0) / 1000;
    log(`kvd: ${n} leases granted in ${grantSeconds.toFixed(1)} s`);
    // Warm up one keep-alive round before measuring.
    await new Promise((r) => setTimeout(r, (ttl * 1000) / 3 + 500));
    const s0 = { ...lc.stats };
    profile();
    const msgs0 = await counterSum(c, 'kvcascade_peer_messages_sent_total');
    const batches0 = await counterSum(c, 'kvcascade_peer_batches_sent_total');
    const cpu0 = await cpuOf(c);
    const w0 = Date.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const window = (Date.now() - w0) / 1000;
    const cpu = (await cpuOf(c)) - cpu0;
    const msgs1 = await counterSum(c, 'kvcascade_peer_messages_sent_total');
    const batches1 = await counterSum(c, 'kvcascade_peer_batches_sent_total');
    profile();
    await new Promise((r) => setTimeout(r, profileDir ? 2000 : 0));
    const sent = lc.stats.sent - s0.sent;
    const answered = lc.stats.received - s0.received;
    return {
      system: 'kvd',
      leases: n,
      ttlSec: ttl,
      grantSeconds,
      windowSeconds: window,
      keepAlivesSentPerSec: sent / window,
      keepAlivesAnsweredPerSec: answered / window,
      serverCores: cpu / window,
      serverCpuUsPerKeepAlive: answered > 0 ? (cpu * 1e6) / answered : 0,
      leasesLost: lost,
      ...(msgs0 !== undefined && msgs1 !== undefined ? { peerMessagesPerSec: (msgs1 - msgs0) / window } : {}),
      ...(batches0 !== undefined && batches1 !== undefined ? { peerBatchesPerSec: (batches1 - batches0) / window } : {}),
    };
  } finally {
    lc.close();
    await c.stop();
  }
}

type EtcdLeaseStub = grpc.Client & {
  leaseGrant(req: { TTL: number }, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { ID: string; TTL: string; error?: string }) => void): void;
  leaseKeepAlive(): grpc.ClientDuplexStream<{ ID: string }, { ID: string; TTL: string }>;
};

function etcdLeaseStub(address: string): EtcdLeaseStub {
  const def = protoLoader.loadSync(join(repoRoot(), 'bench', 'etcd-proto', 'lease.proto'), { keepCase: true, longs: String, defaults: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { etcdserverpb: { Lease: new (a: string, c: grpc.ChannelCredentials) => EtcdLeaseStub } };
  return new pkg.etcdserverpb.Lease(address, grpc.credentials.createInsecure());
}

async function runEtcd(n: number, ttl: number, seconds: number, log: (s: string) => void): Promise<Row> {
  const c = await startEtcdCluster({ log });
  const stub = etcdLeaseStub(c.endpoints[0]!);
  try {
    const ids: string[] = [];
    // One stream, every lease renewed every TTL/3 (etcd's clientv3 does the same per lease), from its grant on.
    const stream = stub.leaseKeepAlive();
    const stats = { sent: 0, received: 0 };
    const t0 = Date.now();
    const lostIds = new Set<string>();
    stream.on('data', (m: { ID: string; TTL: string }) => {
      stats.received++;
      if (Number(m.TTL) <= 0) lostIds.add(m.ID);
    });
    stream.on('error', () => {});
    const round = (): void => {
      for (const id of ids) {
        stats.sent++;
        stream.write({ ID: id });
      }
    };
    const timer = setInterval(round, (ttl * 1000) / 3);
    await mapLimit([...Array(n).keys()], 256, async () => {
      ids.push(
        await new Promise<string>((res, rej) =>
          stub.leaseGrant({ TTL: ttl }, new grpc.Metadata(), { deadline: new Date(Date.now() + 30_000) }, (e, r) => (e ? rej(e) : res(r!.ID))),
        ),
      );
    });
    const grantSeconds = (Date.now() - t0) / 1000;
    log(`etcd: ${n} leases granted in ${grantSeconds.toFixed(1)} s`);
    await new Promise((r) => setTimeout(r, (ttl * 1000) / 3 + 500));
    const s0 = { ...stats };
    const cpu0 = await cpuOf(c);
    const w0 = Date.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const window = (Date.now() - w0) / 1000;
    const cpu = (await cpuOf(c)) - cpu0;
    clearInterval(timer);
    stream.cancel();
    const answered = stats.received - s0.received;
    return {
      system: 'etcd',
      leases: n,
      ttlSec: ttl,
      grantSeconds,
      windowSeconds: window,
      keepAlivesSentPerSec: (stats.sent - s0.sent) / window,
      keepAlivesAnsweredPerSec: answered / window,
      serverCores: cpu / window,
      serverCpuUsPerKeepAlive: answered > 0 ? (cpu * 1e6) / answered : 0,
      leasesLost: lostIds.size,
    };
  } finally {
    stub.close();
    await c.stop();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      leases: { type: 'string', default: '10000' },
      ttl: { type: 'string', default: '10' },
      seconds: { type: 'string', default: '30' },
      systems: { type: 'string', default: 'kvd,etcd' },
      out: { type: 'string' },
      profile: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const n = flagInt('leases', values.leases, 1);
  const ttl = flagInt('ttl', values.ttl, 2);
  const seconds = flagInt('seconds', values.seconds, 1);
  const systems = values.systems.split(',').map((s) => s.trim());
  const log = (s: string): void => void process.stderr.write(`[lease-cost] ${s}\n`);
  const rows: Row[] = [];
  if (systems.includes('kvd')) {
    if (!findKvd()) throw new Error('kvd is not built: run npm run build');
    rows.push(await runKvd(n, ttl, seconds, log, values.profile));
  }
  if (systems.includes('etcd')) {
    if (findEtcd() === undefined) log(ETCD_MISSING_MESSAGE);
    else rows.push(await runEtcd(n, ttl, seconds, log));
  }
  const head = ['system', 'leases', 'ttl s', 'grant s', 'keep-alives/s sent', 'answered/s', 'server cores', 'server µs/keep-alive', 'lost', 'peer msgs/s', 'peer batches/s'];
  const rate = (v: number | undefined): string => (v === undefined ? 'n/a' : v.toFixed(0));
  const table = [
    head,
    ...rows.map((r) => [
      r.system,
      String(r.leases),
      String(r.ttlSec),
      r.grantSeconds.toFixed(1),
      r.keepAlivesSentPerSec.toFixed(0),
      r.keepAlivesAnsweredPerSec.toFixed(0),
      r.serverCores.toFixed(3),
      r.serverCpuUsPerKeepAlive.toFixed(1),
      String(r.leasesLost),
      rate(r.peerMessagesPerSec),
      rate(r.peerBatchesPerSec),
    ]),
  ];
  const widths = head.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) process.stdout.write(`${row.map((c, i) => c.padEnd(widths[i]!)).join('  ')}\n`);
  process.stdout.write(`machine: ${cpus().length} cores, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')} (shared: compare the rows, not the absolute figures)\n`);
  const out = values.out ?? join(repoRoot(), 'bench', 'results', 'lease-cost.json');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, `${JSON.stringify({ at: new Date().toISOString(), leases: n, ttl, seconds, rows }, null, 2)}\n`);
}

main().catch((e) => {
  process.stderr.write(`lease-cost: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
