/**
 * In-process extensions on real kvd processes: a lambda that spins forever blocks its node's
 * thread; the event-loop watchdog kills that node, the other two keep every group led and the
 * cluster serving; the next leader finds the event armed in the replicated attempt record (it was
 * never finished), does not run it in its own thread but moves the extension to process isolation
 * and retries it there, where it only kills the child process and is dead-lettered as `poison`
 * (it failed on two nodes); a second spinning event takes no other node; the killed node,
 * restarted, does not run the first event again.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { KvClient } from '../../src/client/index.js';
import { packFolder } from '../../src/extensions/pack-folder.js';
import { main as kvctl } from '../../src/cli/kvctl.js';
import { KvdCluster } from '../cluster/harness.js';

const TOKEN = 'test-admin-token-0123456789';
const dir = mkdtempSync(join(tmpdir(), 'kvcascade-inproc-'));
const tokenFile = join(dir, 'token');
writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: KvdCluster;

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3, tickMs: 50, electionTicks: 10, extraArgs: ['--admin-token-file', tokenFile, '--loop-block-kill-ms', '3000', '--ext-max-restarts-per-minute', '2', '--ext-poison-attempts', '10'] });
});

afterAll(async () => {
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function until<T>(f: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(100);
  }
}

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await kvctl(['--endpoints', cluster.endpoints.join(','), ...args], {
    stdout: { write: (x: string) => (out += x) },
    stderr: { write: (x: string) => (err += x) },
    env: { KVCASCADE_ADMIN_TOKEN: TOKEN },
  });
  return { code, out, err };
}

describe('in-process lambda that never returns', () => {
  it('the watchdog ends the stuck node; the rest keep every group led and serving; the event is retried only in isolation and dead-lettered as poison', async () => {
    const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN });
    const loaded = await admin.load(await packFolder('test/extensions/fixtures/it-spinner'), { inProcess: true });
    expect(loaded.status.state).toBe('running');
    const c = cluster.client();
    const reader = new KvClient({ endpoints: cluster.endpoints, adminToken: TOKEN, defaultDeadlineMs: 5000 });
    try {
      await c.put('/spin/ok1', 'x');
      await until(async () => ((await c.get('/spin-done/spin/ok1')).found ? true : undefined));
      const stuck = await cluster.waitForLeader();
      const exited = new Promise<string | null>((res) => cluster.node(stuck).proc!.once('exit', (_code, signal) => res(signal)));
      const t0 = Date.now();
      await c.put('/spin/forever', 'x');
      // The stuck node is killed by its own watchdog (3 s blocked).
      expect(await exited).toBe('SIGKILL');
      const killedAfter = Date.now() - t0;
      cluster.node(stuck).proc = undefined;
      expect(cluster.node(stuck).stderr.join('')).toContain('loop-watchdog-kill');
      // The two others lead every group (metadata and data) and serve.
      const others = cluster.nodes.filter((n) => n.id !== stuck);
      await until(async () => {
        const s = await c.status(others[0]!.address);
        return s.groups.every((g) => g.leader !== 0 && g.leader !== stuck) ? true : undefined;
      });
      await c.put('/spin/ok2', 'x');
      await until(async () => ((await c.get('/spin-done/spin/ok2')).found ? true : undefined));
      // Poison, from the next leader, which ran it again only in a child process.
      const letters = await until(async () => {
        const items = (await reader.list('/_dlq/it-spinner/')).items;
        return items.length > 0 ? items : undefined;
      });
      const letter = JSON.parse(new TextDecoder().decode(letters[0]!.value)) as { kind: string; error: string; event: { key: string } };
      expect(letter).toMatchObject({ kind: 'poison', event: { key: '/spin/forever' } });
      expect(letter.error).toMatch(/on 2 nodes \(/);
      expect(letter.error).toMatch(new RegExp(`node ${stuck} died or lost the shard|timeout on node`));
      const runs = async () => (await c.list('/spin-runs/spin/forever/')).items.length;
      expect(await runs()).toBe(2); // in the stuck node's thread, then in isolation on the next leader
      console.log(`stuck node ${stuck} killed by its watchdog after ${killedAfter} ms; ${letter.error}`);
      // The stuck node restarts: it does not run the event again, and the cluster keeps serving.
      await cluster.startNode(stuck);
      // It read its predecessor's death note: it knows the watchdog ended it (a blocked loop).
      expect(cluster.node(stuck).stderr.join('')).toContain('killed by its event-loop watchdog');
      await c.put('/spin/ok3', 'x');
      await until(async () => ((await c.get('/spin-done/spin/ok3')).found ? true : undefined));
      await sleep(1500);
      expect(await runs()).toBe(2);
      expect(cluster.node(stuck).proc?.exitCode).toBeNull();
      for (let i = 0; i < 20; i++) expect((await c.put(`/after/${i}`, 'v')).succeeded).toBe(true);
      // A second, distinct spinning event must not take another node: the shard now carries a
      // replicated marker, so whichever node leads it runs the extension in a child process, where
      // the lambda only kills that process.
      const survivors = cluster.nodes; // the restarted node too
      const died = survivors.map((n) => new Promise<number>((res) => n.proc!.once('exit', () => res(n.id))));
      await c.put('/spin/forever-2', 'x');
      const second = await Promise.race([...died, sleep(8_000).then(() => 0)]);
      expect(second).toBe(0);
      expect(survivors.some((n) => n.stderr.join('').includes('in process isolation on this node'))).toBe(true);
      for (let i = 0; i < 5; i++) expect((await c.put(`/mid/${i}`, 'v')).succeeded).toBe(true);
    } finally {
      reader.close();
      admin.close();
    }
  });

  it('a crashing worker-mode extension pauses (kvctl ext ls says why and when), events wait, kvctl ext resume resumes it; /metrics counted it live', async () => {
    const load = await run(['ext', 'load', 'test/extensions/fixtures/it-breaker']);
    expect(load.code, load.err).toBe(0);
    const c = cluster.client();
    await c.put('/brk/x', '1');
    const ls = await until(async () => {
      const r = await run(['ext', 'ls']);
      return /it-breaker.*paused: more than 2 worker restarts within a minute, retry at \d{4}-/.test(r.out) ? r.out : undefined;
    });
    expect(ls).toMatch(/\ball\b/); // the row summing the nodes
    const leader = await cluster.waitForLeader();
    const metrics = await (await fetch(`http://127.0.0.1:${cluster.node(leader).metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/kvcascade_extension_worker_restarts_total\{extension="it-breaker"\} [1-9]/);
    expect(metrics).toMatch(/kvcascade_extension_paused\{extension="it-breaker"\} 1/);
    expect(metrics).toMatch(/kvcascade_extension_errors_total\{[^}]*extension="it-breaker"[^}]*kind="(worker-crashed|process-exited)"[^}]*\} [1-9]/);
    const reader = new KvClient({ endpoints: cluster.endpoints, adminToken: TOKEN, defaultDeadlineMs: 5000 });
    try {
      expect((await reader.list('/_dlq/it-breaker/')).items).toEqual([]);
    } finally {
      reader.close();
    }
    await c.put('/brk-fixed', '1');
    const t0 = Date.now();
    const r = await run(['ext', 'resume', 'it-breaker']);
    expect(r.code, r.err).toBe(0);
    await until(async () => ((await c.get('/brk-done/brk/x')).found ? true : undefined));
    expect(Date.now() - t0).toBeLessThan(15_000); // the pause was 30 s
    const after = await until(async () => {
      const x = await run(['--json', 'ext', 'ls']);
      const doc = JSON.parse(x.out) as { statuses: { name: string; state: string }[] };
      const mine = doc.statuses.filter((s) => s.name === 'it-breaker');
      return mine.length === 3 && mine.every((s) => s.state === 'running') ? mine : undefined;
    });
    expect(after).toHaveLength(3);
    expect((await run(['ext', 'resume', 'no-such-ext'])).code).not.toBe(0);
  });
});
