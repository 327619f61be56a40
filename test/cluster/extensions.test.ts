/**
 * Extensions on real kvd processes: admin authentication, clear load errors, kvctl ext
 * load/ls/unload, the reserved keyspace (descriptor attack refused, dead letters read with the
 * admin token only), and at-least-once per-key-ordered delivery when the leader is killed with -9.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { KvClient } from '../../src/client/index.js';
import { main as kvctl } from '../../src/cli/kvctl.js';
import { packFolder } from '../../src/extensions/pack-folder.js';
import { KvdCluster } from './harness.js';

const TOKEN = 'test-admin-token-0123456789';
const dir = mkdtempSync(join(tmpdir(), 'kvcascade-ext-cluster-'));
const tokenFile = join(dir, 'token');
writeFileSync(tokenFile, TOKEN, { mode: 0o600 }); // kvd refuses a token file others may read

let cluster: KvdCluster;

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3, tickMs: 50, electionTicks: 10, extraArgs: ['--admin-token-file', tokenFile] });
});

afterAll(async () => {
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await kvctl(['--endpoints', cluster.endpoints.join(','), ...args], {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    env: { KVCASCADE_ADMIN_TOKEN: TOKEN },
  });
  return { code, out, err };
}

describe('extensions on real processes', () => {
  it('admin calls need the token', async () => {
    const tgz = await packFolder('test/extensions/fixtures/it-recorder');
    for (const [token, code] of [
      ['wrong-token-wrong-token', 'PERMISSION_DENIED'],
      ['', 'UNAUTHENTICATED'],
    ] as const) {
      const a = new AdminClient({ endpoints: cluster.endpoints, token });
      await expect(a.load(tgz)).rejects.toMatchObject({ code });
      a.close();
    }
  });

  it('a module without initialize is refused with a clear error, and the cluster keeps serving', async () => {
    const r = await run(['ext', 'load', 'test/extensions/fixtures/no-initialize']);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/FAILED_PRECONDITION/);
    expect(r.err).toMatch(/initialize/);
    const ls = await run(['--json', 'ext', 'ls']);
    expect(JSON.parse(ls.out).records.some((x: { name: string }) => x.name === 'no-initialize')).toBe(false);
    const c = cluster.client();
    expect((await c.put('/still/serving', 'yes')).succeeded).toBe(true);
  });

  it('kvctl ext load, ls and unload', async () => {
    // --wait: the answer once every node runs it (without it, once the metadata leader does).
    const load = await run(['ext', 'load', '--wait', 'extensions/stock-watch']);
    expect(load.code, load.err).toBe(0);
    expect(load.out.split('\n').filter((l) => /^stock-watch .* [123] +running /.test(l))).toHaveLength(3);
    const c = cluster.client();
    await c.put('/stocks/ZZZ', '50');
    const v = await c.put('/stocks/ZZZ', '40');
    const deadline = Date.now() + 10_000;
    let alert = await c.get(`/alerts/ZZZ/${v.version}`);
    while (!alert.found && Date.now() < deadline) alert = await c.get(`/alerts/ZZZ/${v.version}`);
    expect(alert.found).toBe(true);
    const ls = await run(['--json', 'ext', 'ls']);
    const doc = JSON.parse(ls.out) as { statuses: { nodeId: number; name: string; state: string; delivering: boolean }[]; loading: number; complete: boolean };
    expect(doc).toMatchObject({ loading: 0, complete: true, unreachable: [] });
    const mine = doc.statuses.filter((s) => s.name === 'stock-watch');
    expect(mine.map((s) => s.nodeId).sort()).toEqual([1, 2, 3]);
    expect(mine.every((s) => s.state === 'running')).toBe(true);
    expect(mine.filter((s) => s.delivering)).toHaveLength(1);
    // Where it runs, and its process's CPU time and memory (kvd's default: process isolation).
    const full = doc as unknown as { statuses: { name: string; runsIn: string; resources?: { cpuSeconds: number; rssBytes: number; peakRssBytes: number } }[] };
    for (const s of full.statuses.filter((x) => x.name === 'stock-watch')) {
      expect(s.runsIn).toBe('process');
      expect(s.resources?.rssBytes).toBeGreaterThan(10 * 1024 * 1024); // a Node process, measured from /proc
      expect(s.resources!.peakRssBytes).toBeGreaterThanOrEqual(s.resources!.rssBytes);
      expect(s.resources!.cpuSeconds).toBeGreaterThan(0); // it started Node and ran initialize
    }
    // A worker-mode extension beside it: runs in a worker, with no CPU or RSS figure of its own.
    const w = await run(['ext', 'load', '--isolation', 'worker', '--name', 'rec-worker', 'test/extensions/fixtures/it-recorder']);
    expect(w.code, w.err).toBe(0);
    // Right after a load without --wait every node lists it, as running or (not loaded there yet) loading, and the JSON counts the latter.
    const early = JSON.parse((await run(['--json', 'ext', 'ls'])).out) as { statuses: { nodeId: number; name: string; state: string }[]; loading: number; complete: boolean };
    const recs = early.statuses.filter((s) => s.name === 'rec-worker');
    expect(recs.map((s) => s.nodeId).sort()).toEqual([1, 2, 3]);
    expect(recs.every((s) => s.state === 'running' || s.state === 'loading')).toBe(true);
    expect(early.loading).toBe(recs.filter((s) => s.state === 'loading').length);
    expect(early.complete).toBe(early.loading === 0);
    // Every node runs it once its registry watch saw the load (the answer came from the leader's).
    let table = await run(['ext', 'ls']);
    for (let end = Date.now() + 10_000; (table.out.match(/^rec-worker .* running /gm) ?? []).length < 3 && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 100));
      table = await run(['ext', 'ls']);
    }
    expect(table.code, table.err).toBe(0);
    const lines = table.out.split('\n');
    expect(lines[0]).toMatch(/RESTARTS\s+RUNS IN\s+CPU S\s+RSS MIB$/);
    const cells = (name: string, node: string) => {
      const row = lines.map((l) => l.split(/\s+/)).find((f) => f[0] === name && f[4] === node);
      expect(row, `${name} node ${node} in\n${table.out}`).toBeDefined();
      return { runsIn: row!.at(-3), cpu: row!.at(-2), rss: row!.at(-1) };
    };
    let rssSum = 0;
    for (const node of ['1', '2', '3']) {
      const p = cells('stock-watch', node);
      expect(p.runsIn).toBe('process');
      expect(p.cpu).toMatch(/^\d+\.\d\d$/);
      expect(Number(p.rss)).toBeGreaterThan(10);
      rssSum += Number(p.rss);
      expect(cells('rec-worker', node)).toEqual({ runsIn: 'worker', cpu: '-', rss: '-' });
    }
    // The `all` row sums the nodes' CPU time and memory (rounding aside).
    const all = cells('stock-watch', 'all');
    expect(all.runsIn).toBe('process');
    expect(Math.abs(Number(all.rss) - rssSum)).toBeLessThan(0.5);
    expect(cells('rec-worker', 'all')).toEqual({ runsIn: 'worker', cpu: '-', rss: '-' });
    expect((await run(['ext', 'unload', 'rec-worker'])).code).toBe(0);
    const un = await run(['ext', 'unload', 'stock-watch']);
    expect(un.code, un.err).toBe(0);
    expect(un.out).toMatch(/cursors kept/);
    const again = await run(['ext', 'unload', 'stock-watch']);
    expect(again.code).toBe(1);
    // A price drop while it is unloaded is delivered once it is loaded again (from its cursor).
    const missed = await c.put('/stocks/ZZZ', '30');
    const re = await run(['ext', 'load', 'extensions/stock-watch']);
    expect(re.code, re.err).toBe(0);
    const reDeadline = Date.now() + 10_000;
    let late = await c.get(`/alerts/ZZZ/${missed.version}`);
    while (!late.found && Date.now() < reDeadline) late = await c.get(`/alerts/ZZZ/${missed.version}`);
    expect(late.found).toBe(true);
    // ext ls shows each shard's cursor and lag.
    let cursors = await run(['ext', 'ls']);
    for (let end = Date.now() + 5_000; !/^stock-watch\s+\/stocks\/\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+/m.test(cursors.out) && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 100));
      cursors = await run(['ext', 'ls']);
    }
    expect(cursors.out).toMatch(/SHARD\s+NODE\s+CURSOR\s+REVISION\s+LAG\s+BACKLOG/);
    expect(cursors.out).toMatch(/^stock-watch\s+\/stocks\/\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+/m);
    const purged = await run(['ext', 'unload', '--purge', 'stock-watch']);
    expect(purged.code, purged.err).toBe(0);
    expect(purged.out).toMatch(/cursors forgotten/);
  });

  it('the reserved keyspace: a descriptor put is refused and the shard keeps serving; dead letters are read with the admin token only', async () => {
    const plain = cluster.client();
    const evil = JSON.stringify({ group: 1, pool: '', index: 1, shards: 2, excluded: [], epoch: Number.MAX_SAFE_INTEGER });
    await expect(plain.put('/_sys/shard', evil)).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    for (const k of ['/after/a', '/after/b', '/after/c', '/after/d']) expect((await plain.put(k, 'v')).succeeded).toBe(true);
    await expect(plain.list('/', { shard: 0 })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    expect((await plain.list('/')).items.some((i) => i.key.startsWith('/_') || i.key.startsWith('/ext/'))).toBe(false);

    const load = await run(['ext', 'load', 'test/extensions/fixtures/it-flaky']);
    expect(load.code, load.err).toBe(0);
    await plain.put('/flaky/poison', 'x');
    let letters: { key: string }[] = [];
    for (const deadline = Date.now() + 20_000; letters.length === 0 && Date.now() < deadline; ) {
      const ls = await run(['--json', 'ls', '/_dlq/it-flaky/']);
      expect(ls.code, ls.err).toBe(0);
      letters = JSON.parse(ls.out).items;
      if (letters.length === 0) await new Promise((r) => setTimeout(r, 200));
    }
    expect(letters.map((l) => l.key)).toEqual([expect.stringMatching(/^\/_dlq\/it-flaky\/\d{12}\/flaky\/poison$/)]);
    await expect(plain.list('/_dlq/it-flaky/')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    // The admin token reads them through any node (a follower forwards the token with the read).
    for (const endpoint of cluster.endpoints) {
      const admin = new KvClient({ endpoints: [endpoint], adminToken: TOKEN, shardRouting: false });
      expect((await admin.list('/_dlq/it-flaky/')).items.map((i) => i.key)).toEqual(letters.map((l) => l.key));
      await expect(admin.delete(letters[0]!.key)).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
      admin.close();
    }
    expect((await run(['ext', 'unload', 'it-flaky'])).code).toBe(0);
  });

  it('kill -9 of the leader with events pending: every acknowledged change is delivered at least once, in per-key order', async () => {
    const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN });
    const loaded = await admin.load(await packFolder('test/extensions/fixtures/it-recorder'));
    expect(loaded.status.state).toBe('running');
    admin.close();
    const c = cluster.client();
    const acked: { key: string; version: number }[] = [];
    let stop = false;
    const writers = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        const key = `/in/w${w}k${i % 4}`;
        try {
          const r = await c.put(key, String(i), { deadlineMs: 3000 });
          acked.push({ key, version: r.version });
        } catch {
          // not acknowledged; yield to timers (a closed client rejects at once)
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    });
    while (acked.length < 150) await new Promise((r) => setTimeout(r, 10));
    const leader = await cluster.waitForLeader();
    await cluster.kill(leader, 'SIGKILL');
    await cluster.waitForLeader(10_000, [leader]);
    const before = acked.length;
    while (acked.length < before + 150) await new Promise((r) => setTimeout(r, 10));
    stop = true;
    await Promise.all(writers);
    const recorded = async (key: string, version: number) =>
      (await c.get(`/rec${key}/${String(version).padStart(10, '0')}`)).found;
    const deadline = Date.now() + 30_000;
    const missing = new Set(acked.map((a) => `${a.key}@${a.version}`));
    while (missing.size > 0 && Date.now() < deadline) {
      for (const a of acked) if (missing.has(`${a.key}@${a.version}`) && (await recorded(a.key, a.version))) missing.delete(`${a.key}@${a.version}`);
      if (missing.size > 0) await new Promise((r) => setTimeout(r, 200));
    }
    expect([...missing]).toEqual([]);
    const violations = await c.list('/violation/');
    expect(violations.items).toEqual([]);
    console.log(`lambda delivery across kill -9: ${acked.length} acknowledged puts, all recorded; leader ${leader} killed`);
    await cluster.startNode(leader);
  });
});
