/**
 * kvd behaviours a deployment (containers, Kubernetes) relies on, with real processes: members
 * known by DNS names and bound to another address (`--advertise`, `--advertise-peer`, `--peers`
 * and `--join` by name).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { KvdCluster } from './harness.js';

const TOKEN = 'deploy-test-admin-token';
let cluster: KvdCluster | undefined;

afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

async function until<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('deployment: members known by DNS names', () => {
  it('binds 127.0.0.1, advertises localhost names, serves through them, and a new member joins by name', async () => {
    cluster = await KvdCluster.start({
      nodes: 3,
      advertiseHost: 'localhost',
      extraArgs: ['--admin-token', TOKEN],
      nodeArgs: (id) => (id === 5 ? ['--join-auto-add'] : []),
    });
    const client = cluster.client();
    expect(cluster.endpoints.every((e) => e.startsWith('localhost:'))).toBe(true);
    await client.put('/deploy/a', Buffer.from('1'));
    expect(Buffer.from((await client.get('/deploy/a'))?.value ?? []).toString()).toBe('1');
    for (const n of cluster.nodes) {
      const ready = await until(`node ${n.id} /readyz`, async () => {
        const r = await fetch(`http://127.0.0.1:${n.metricsPort}/readyz`);
        return r.status === 200 ? r : undefined;
      });
      expect(await ready.text()).toBe('ready\n');
      expect((await fetch(`http://127.0.0.1:${n.metricsPort}/livez`)).status).toBe(200);
    }
    const map = await client.shardMap();
    expect(map.members.map((m) => m.address).sort()).toEqual([...cluster.endpoints].sort());

    const { address, peerAddress } = await cluster.reserveAddresses();
    const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN });
    try {
      await admin.addMember(4, address, peerAddress);
      let timer: NodeJS.Timeout | undefined;
      const joined = cluster.join(4, address, peerAddress);
      await Promise.race([
        joined,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`node 4 not ready after 60 s: ${cluster!.node(4).stderr.join('').slice(-3000)}`)), 60_000);
        }),
      ]).finally(() => clearTimeout(timer));
      await until('node 4 to serve a linearizable read of the data', async () => {
        const only4 = cluster!.client([address]);
        return Buffer.from((await only4.get('/deploy/a'))?.value ?? []).toString() === '1';
      });
      // Node 5 adds itself (--join-auto-add with the admin token), as a new StatefulSet ordinal does.
      const five = await cluster.reserveAddresses();
      await cluster.join(5, five.address, five.peerAddress);
      const map = await client.shardMap();
      expect(map.members.find((m) => m.id === 5)?.address).toBe(five.address);
    } finally {
      admin.close();
    }
  }, 120_000);
});

describe('deployment: handing leaderships over before a stop', () => {
  const leads = async (c: KvdCluster, id: number): Promise<number[]> => {
    const client = c.client([c.node(id).address]);
    const st = await client.status(c.node(id).address);
    return st.groups.filter((g) => g.role === 'Leader').map((g) => g.group);
  };

  it('POST /drain (admin token) moves every leadership away and reports not ready; SIGTERM hands over before exiting', async () => {
    cluster = await KvdCluster.start({ nodes: 3, defaultShards: 3, extraArgs: ['--admin-token', TOKEN] });
    const client = cluster.client();
    for (let i = 0; i < 10; i++) await client.put(`/drain/${i}`, Buffer.from(String(i)));
    // The node leading the most groups (preferred leaders spread them once the cluster settles).
    const byLeads = async () => {
      const counts = await Promise.all(cluster!.nodes.map(async (n) => [n.id, (await leads(cluster!, n.id)).length] as const));
      return [...counts].sort((a, b) => b[1] - a[1]);
    };
    const [first] = await until('a node leading groups', async () => {
      const c = await byLeads();
      return c[0]![1] > 0 ? c : undefined;
    });
    const victim = cluster.node(first![0]);
    const url = `http://127.0.0.1:${victim.metricsPort}/drain`;
    expect((await fetch(url, { method: 'POST' })).status).toBe(401);
    expect((await fetch(url, { method: 'POST', headers: { authorization: 'Bearer not-the-token-at-all' } })).status).toBe(401);
    const res = await fetch(`${url}?timeout-ms=15000`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    const body = (await res.json()) as { drained: boolean; led: number; stillLeading: number[] };
    expect(res.status).toBe(200);
    expect(body).toMatchObject({ drained: true, stillLeading: [] });
    expect(body.led).toBeGreaterThan(0);
    expect(await leads(cluster, victim.id)).toEqual([]);
    const ready = await fetch(`http://127.0.0.1:${victim.metricsPort}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.text()).toMatch(/draining/);
    for (let i = 0; i < 10; i++) await client.put(`/drain/after/${i}`, Buffer.from(String(i)));

    // SIGTERM alone: another node leading groups hands them over before it exits, under a running load.
    const [next] = (await byLeads()).filter(([id]) => id !== victim.id);
    const stopping = cluster.node(next![0]);
    expect((await leads(cluster, stopping.id)).length).toBeGreaterThan(0);
    let failures = 0;
    let acks = 0;
    let running = true;
    const load = (async () => {
      for (let i = 0; running; i++) {
        try {
          await client.put(`/drain/load/${i % 50}`, Buffer.from(String(i)));
          acks++;
        } catch {
          failures++;
        }
      }
    })();
    await until('load running', () => acks > 20);
    let out = '';
    stopping.proc!.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => stopping.proc!.once('exit', (code) => resolve(code)));
    stopping.proc!.kill('SIGTERM');
    expect(await exited).toBe(0);
    stopping.proc = undefined;
    const before = acks;
    await until('writes after the stop', () => acks > before + 20);
    running = false;
    await load;
    expect(failures).toBe(0);
    const line = out.split('\n').find((l) => l.includes('"event":"stopping"'));
    expect(line).toBeDefined();
    const stopped = JSON.parse(line!) as { led: number; stillLeading: number[]; signal: string };
    expect(stopped.signal).toBe('SIGTERM');
    expect(stopped.led).toBeGreaterThan(0);
    expect(stopped.stillLeading).toEqual([]);
  }, 120_000);
});

