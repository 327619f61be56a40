/**
 * The web console under access control (real processes): with it off, anyone who reaches the
 * metrics port sees the cluster state; with it on, only root (the admin token or a root user's
 * token, as a header or the page's `?token=`), and the page's static files stay public.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthClient } from '../../src/client/index.js';
import { KvdCluster } from './harness.js';

const TOKEN = 'console-auth-admin-token-0123456789';
let cluster: KvdCluster;
let root: AuthClient;

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3, extraArgs: ['--admin-token', TOKEN] });
  root = new AuthClient({ endpoints: cluster.endpoints, token: TOKEN });
}, 60_000);

afterAll(async () => {
  root?.close();
  await cluster?.stop();
});

const stateUrl = (query = '') => `http://127.0.0.1:${cluster.node(1).metricsPort}/console/state.json${query}`;

async function until(check: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('web console and access control', () => {
  it('is open while access control is off, root-only while it is on, open again when off', async () => {
    const first = await fetch(stateUrl());
    expect(first.status, await first.text()).toBe(200);
    await root.addUser('viewer', 'viewer-password-1');
    await root.enable();
    await until(async () => (await fetch(stateUrl())).status === 403);
    expect((await fetch(`http://127.0.0.1:${cluster.node(1).metricsPort}/console/console.js`)).status).toBe(200);
    expect((await fetch(stateUrl(), { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(200);
    expect((await fetch(stateUrl(`?token=${encodeURIComponent(TOKEN)}`))).status).toBe(200);
    const viewer = await root.authenticate('viewer', 'viewer-password-1');
    expect((await fetch(stateUrl(`?token=${encodeURIComponent(viewer.token)}`))).status).toBe(403); // not root
    await root.disable();
    await until(async () => (await fetch(stateUrl())).status === 200);
  }, 60_000);
});
