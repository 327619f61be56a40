/**
 * In-process extensions on real kvd processes: a lambda that spins forever blocks its node's
 * thread; the event-loop watchdog kills that node, the other two keep every group led and the
 * cluster serving, the next leader dead-letters the event as `poison` (it was armed in the
 * replicated attempt record before it started) instead of running it, and the killed node,
 * restarted, does not run it again.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { KvClient } from '../../src/client/index.js';
import { packFolder } from '../../src/extensions/package.js';
import { KvdCluster } from '../cluster/harness.js';

const TOKEN = 'test-admin-token-0123456789';
const dir = mkdtempSync(join(tmpdir(), 'kvcascade-inproc-'));
const tokenFile = join(dir, 'token');
writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: KvdCluster;

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3, tickMs: 50, electionTicks: 10, extraArgs: ['--admin-token-file', tokenFile, '--loop-block-kill-ms', '3000'] });
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

describe('in-process lambda that never returns', () => {
  it('the watchdog ends the stuck node; the rest keep every group led and serving; the event is dead-lettered as poison and run once', async () => {
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
      // Poison, from the next leader, without running it again.
      const letters = await until(async () => {
        const items = (await reader.list('/_dlq/it-spinner/')).items;
        return items.length > 0 ? items : undefined;
      });
      const letter = JSON.parse(new TextDecoder().decode(letters[0]!.value)) as { kind: string; error: string; event: { key: string } };
      expect(letter).toMatchObject({ kind: 'poison', event: { key: '/spin/forever' } });
      expect(letter.error).toMatch(new RegExp(`never finished on node ${stuck}`));
      const runs = async () => (await c.list('/spin-runs/')).items.length;
      expect(await runs()).toBe(1);
      console.log(`stuck node ${stuck} killed by its watchdog after ${killedAfter} ms; ${letter.error}`);
      // The stuck node restarts: it does not run the event again, and the cluster keeps serving.
      await cluster.startNode(stuck);
      await c.put('/spin/ok3', 'x');
      await until(async () => ((await c.get('/spin-done/spin/ok3')).found ? true : undefined));
      await sleep(1500);
      expect(await runs()).toBe(1);
      expect(cluster.node(stuck).proc?.exitCode).toBeNull();
      for (let i = 0; i < 20; i++) expect((await c.put(`/after/${i}`, 'v')).succeeded).toBe(true);
    } finally {
      reader.close();
      admin.close();
    }
  });
});
