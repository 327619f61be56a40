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
