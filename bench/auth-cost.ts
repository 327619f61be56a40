/** Measures the per-request cost of access control (`node dist/bench/auth-cost.js [flags]`): on one fresh 3-node kvd cluster, closed-loop put and get with access control off, then on (a logged-in user whose role grants readwrite on the keys), alternating rounds; prints both figures and writes bench/results/auth-cost.json. */
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { AuthClient, KvClient } from '../src/client/index.js';
import { AccessControl, type AuthMetaStore } from '../src/auth/access-control.js';
import { authorizeOp } from '../src/coordinator/coordinator.js';
import { AUTH_ENABLED_KEY, AUTH_SECRET_KEY, encodeRecord, roleKey, userKey, type StoredItem } from '../src/auth/state.js';
import { signToken } from '../src/auth/token.js';
import { defaultKvdBin, findKvd, startKvdCluster } from './kvd-cluster.js';
import { flagInt, flagNumber, repoRoot } from './util.js';

const USAGE = `usage: node dist/bench/auth-cost.js [flags]
  --seconds S      measured seconds per round and operation (default 5)
  --rounds N       off/on rounds, alternated so drift on a shared machine hits both alike (default 2)
  --clients N      calls in flight (one KvClient, default 32)
  --keys N         keyspace (default 1000)
  --value-bytes N  value size (default 256)
  --kvd-bin PATH   kvd entry point (default: dist/src/bin/kvd.js)
  --out FILE       JSON results (default bench/results/auth-cost.json)
  --help
Access control on: the client logs in once (user "bench", role "bench": readwrite on /bench/) and sends
its token with every call; each node verifies the token's HMAC (cached per token) and checks the key
against the role's prefixes. The figure to read is the relative one: off vs on on the same cluster.`;

/** One measured round of one operation. */
interface Round {
  readonly auth: 'off' | 'on';
  readonly op: 'put' | 'get';
  readonly opsPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly errors: number;
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Runs `op` closed-loop with `clients` calls in flight for `seconds`. */
async function measure(c: KvClient, op: 'put' | 'get', seconds: number, clients: number, keys: number, value: Uint8Array): Promise<Omit<Round, 'auth'>> {
  const lat: number[] = [];
  let errors = 0;
  const end = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async (_, w) => {
      let i = w;
      while (Date.now() < end) {
        const key = `/bench/k${(i++ * 7919) % keys}`;
        const t0 = performance.now();
        try {
          if (op === 'put') await c.put(key, value);
          else await c.get(key);
          lat.push(performance.now() - t0);
        } catch {
          errors++;
        }
      }
    }),
  );
  lat.sort((a, b) => a - b);
  return { op, opsPerSec: lat.length / seconds, p50Ms: pct(lat, 50), p99Ms: pct(lat, 99), errors };
}

/**
 * The CPU cost of the check itself, in this process: authenticating a request's token and
 * authorizing its key, per call (ns), for a token seen before (cached) and a new one each time
 * (HMAC verified), against an in-memory auth state.
 */
function microCost(): { cachedNs: number; uncachedNs: number; offNs: number } {
  const secret = new Uint8Array(32).fill(1);
  const items: StoredItem[] = [
    { key: AUTH_ENABLED_KEY, value: encodeRecord({ enabled: true }), version: 1 },
    { key: AUTH_SECRET_KEY, value: secret, version: 2 },
    { key: userKey('bench'), value: encodeRecord({ roles: ['bench'] }), version: 3 },
    { key: roleKey('bench'), value: encodeRecord({ permissions: [{ prefix: '/bench/', type: 'readwrite' }] }), version: 4 },
  ];
  const store = (enabled: boolean): AuthMetaStore => ({
    revision: () => 5,
    list: () => ({ items: enabled ? items : items.slice(1) }),
    isLeader: () => false,
    barrier: async () => undefined,
    currentRevision: async () => 5,
    propose: async () => {
      throw new Error('read only');
    },
  });
  const on = new AccessControl({ meta: () => store(true) });
  const off = new AccessControl({ meta: () => store(false) });
  const header = `Bearer ${signToken(secret, { subject: { kind: 'user', name: 'bench' }, expiresAtMs: Date.now() + 3_600_000 })}`;
  const req = { key: '/bench/k1', value: new Uint8Array(8) };
  const time = (n: number, fn: (i: number) => void): number => {
    for (let i = 0; i < 10_000; i++) fn(i);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn(i);
    return Number(process.hrtime.bigint() - t0) / n;
  };
  const tokens = Array.from({ length: 2000 }, (_, i) => `Bearer ${signToken(secret, { subject: { kind: 'user', name: 'bench' }, expiresAtMs: Date.now() + 3_600_000 + i })}`);
  return {
    offNs: time(200_000, () => authorizeOp('put', req, off.authenticate(undefined, undefined))),
    cachedNs: time(200_000, () => authorizeOp('put', req, on.authenticate(header, undefined))),
    // 2000 distinct tokens, each seen once per 2000 calls: verified (HMAC + JSON) unless still cached.
    uncachedNs: time(20_000, (i) => {
      if (i % 2000 === 0) on.authenticate(undefined, 'bench'); // keep the state warm
      (on as unknown as { tokenCache: Map<string, unknown> }).tokenCache.clear();
      authorizeOp('put', req, on.authenticate(tokens[i % 2000], undefined));
    }),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' },
      rounds: { type: 'string', default: '2' },
      clients: { type: 'string', default: '32' },
      keys: { type: 'string', default: '1000' },
      'value-bytes': { type: 'string', default: '256' },
      'kvd-bin': { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const seconds = flagNumber('seconds', values.seconds!, 0.5);
  const rounds = flagInt('rounds', values.rounds!, 1);
  const clients = flagInt('clients', values.clients!, 1);
  const keys = flagInt('keys', values.keys!, 1);
  const value = new Uint8Array(flagInt('value-bytes', values['value-bytes']!, 0)).fill(120);
  const micro = microCost();
  process.stderr.write(`in-process check per request: off ${micro.offNs.toFixed(0)} ns, on (cached token) ${micro.cachedNs.toFixed(0)} ns, on (token verified) ${micro.uncachedNs.toFixed(0)} ns\n`);
  const bin = findKvd(values['kvd-bin'] ?? defaultKvdBin());
  if (!bin) throw new Error('kvd not built: run npm run build');
  const out = values.out ?? join(repoRoot(), 'bench', 'results', 'auth-cost.json');
  const cluster = await startKvdCluster({ bin, log: (m) => process.stderr.write(`${m}\n`) });
  const root = new AuthClient({ endpoints: cluster.endpoints, token: cluster.adminToken! });
  const results: Round[] = [];
  try {
    await root.addRole('bench');
    await root.grantPermission('bench', '/bench/', 'readwrite');
    await root.addUser('bench', 'bench-password');
    await root.grantRole('bench', 'bench');
    const anon = new KvClient({ endpoints: [...cluster.endpoints] });
    const user = new KvClient({ endpoints: [...cluster.endpoints], user: 'bench', password: 'bench-password' });
    for (let k = 0; k < keys; k++) await anon.put(`/bench/k${k}`, value);
    for (let r = 0; r < rounds; r++) {
      for (const auth of ['off', 'on'] as const) {
        if (auth === 'on') await root.enable();
        else await root.disable();
        await new Promise((res) => setTimeout(res, 500)); // every node applied the switch
        const c = auth === 'on' ? user : anon;
        await measure(c, 'get', 0.5, clients, keys, value); // warm-up (and the login)
        for (const op of ['put', 'get'] as const) {
          const m = await measure(c, op, seconds, clients, keys, value);
          results.push({ auth, ...m });
          process.stderr.write(`round ${r + 1} auth ${auth} ${op}: ${m.opsPerSec.toFixed(0)} ops/s p50 ${m.p50Ms.toFixed(2)} ms p99 ${m.p99Ms.toFixed(2)} ms errors ${m.errors}\n`);
        }
      }
    }
    anon.close();
    user.close();
  } finally {
    root.close();
    await cluster.stop();
  }
  const summary = (['put', 'get'] as const).map((op) => {
    const of = (auth: 'off' | 'on') => results.filter((x) => x.op === op && x.auth === auth);
    const mean = (xs: Round[], f: (x: Round) => number) => xs.reduce((n, x) => n + f(x), 0) / Math.max(1, xs.length);
    const off = { opsPerSec: mean(of('off'), (x) => x.opsPerSec), p50Ms: mean(of('off'), (x) => x.p50Ms), p99Ms: mean(of('off'), (x) => x.p99Ms) };
    const on = { opsPerSec: mean(of('on'), (x) => x.opsPerSec), p50Ms: mean(of('on'), (x) => x.p50Ms), p99Ms: mean(of('on'), (x) => x.p99Ms) };
    return { op, off, on, throughputChangePct: ((on.opsPerSec - off.opsPerSec) / off.opsPerSec) * 100, p50ChangePct: ((on.p50Ms - off.p50Ms) / off.p50Ms) * 100 };
  });
  const lines = [
    '| op  | auth off ops/s | auth on ops/s | change | p50 off ms | p50 on ms | p99 off ms | p99 on ms |',
    '|-----|---------------:|--------------:|-------:|-----------:|----------:|-----------:|----------:|',
    ...summary.map(
      (s) =>
        `| ${s.op} | ${s.off.opsPerSec.toFixed(0)} | ${s.on.opsPerSec.toFixed(0)} | ${s.throughputChangePct >= 0 ? '+' : ''}${s.throughputChangePct.toFixed(1)}% | ${s.off.p50Ms.toFixed(2)} | ${s.on.p50Ms.toFixed(2)} | ${s.off.p99Ms.toFixed(2)} | ${s.on.p99Ms.toFixed(2)} |`,
    ),
  ];
  process.stdout.write(`${lines.join('\n')}\nin-process check per request: off ${micro.offNs.toFixed(0)} ns, on with a cached token ${micro.cachedNs.toFixed(0)} ns, on with the token verified (HMAC) ${micro.uncachedNs.toFixed(0)} ns\n(machine: ${cpus().length} cores, load ${loadavg().map((l) => l.toFixed(2)).join(' ')}; shared machines: compare off vs on only)\n`);
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({ at: new Date().toISOString(), seconds, rounds, clients, keys, valueBytes: value.length, loadavg: loadavg(), rounds_: results, summary, microNs: micro }, null, 2));
}

main().catch((e) => {
  process.stderr.write(`auth-cost: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
