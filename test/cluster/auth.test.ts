/**
 * Access control on real kvd processes: off by default; turned on with kvctl; every API (get,
 * list, watch, put, cas, delete, txn, trigger, pipeline, admin) with and without permission;
 * wrong passwords and the lock-out; role changes taking effect at once on every node; a lambda
 * that cannot write outside its role until the role grants it; turned off again.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { AuthClient, KvClient, LeaseClient, login } from '../../src/client/index.js';
import { main as kvctl } from '../../src/cli/kvctl.js';
import { KvdCluster } from './harness.js';

const TOKEN = 'auth-test-admin-token-0123456789';
const dir = mkdtempSync(join(tmpdir(), 'kvcascade-auth-'));
const tokenFile = join(dir, 'token');
writeFileSync(tokenFile, TOKEN, { mode: 0o600 });

let cluster: KvdCluster;
let root: AuthClient;

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3, tickMs: 50, electionTicks: 10, extraArgs: ['--admin-token-file', tokenFile] });
  root = new AuthClient({ endpoints: cluster.endpoints, token: TOKEN });
});

afterAll(async () => {
  root?.close();
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function run(args: string[], env: Record<string, string> = { KVCASCADE_ADMIN_TOKEN: TOKEN }, stdin?: string): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await kvctl(['--endpoints', cluster.endpoints.join(','), ...args], {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    env,
    adminTokenFiles: [],
    ...(stdin !== undefined ? { stdin: (async function* () { yield stdin; })() } : {}),
  });
  return { code, out, err };
}

/** A client logged in as `user` (a fresh one: no cached token). */
function as(user: string, password = `${user}-pw`): KvClient {
  return cluster.client(cluster.endpoints, { user, password, batching: false });
}

/** Retries `fn` until it stops throwing (changes reach every node's metadata replica within moments). */
async function eventually<T>(fn: () => Promise<T>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** The first batch of a watch, or its error. */
async function firstWatchBatch(c: KvClient, prefix: string): Promise<unknown> {
  const w = c.watch(prefix, { fromRevision: 1 });
  try {
    for await (const b of w) return b;
  } finally {
    w.close?.();
  }
  return undefined;
}

describe('access control on real processes', () => {
  it('is off by default: anonymous clients read and write', async () => {
    const c = cluster.client();
    expect((await c.put('/app/open', 'v')).succeeded).toBe(true);
    expect((await root.status()).enabled).toBe(false);
  });

  it('kvctl sets up roles and users, and refuses to enable without root credentials first being possible', async () => {
    for (const args of [
      ['role', 'add', 'reader'],
      ['role', 'grant-permission', 'reader', 'read', '/app/'],
      ['role', 'add', 'writer'],
      ['role', 'grant-permission', 'writer', 'readwrite', '/app/'],
      ['user', 'add', 'alice', '--new-password', 'alice-pw'],
      ['user', 'grant-role', 'alice', 'reader'],
      ['user', 'add', 'bob', '--new-password', 'bob-pw'],
      ['user', 'grant-role', 'bob', 'writer'],
      ['user', 'add', 'carol', '--new-password', 'carol-pw'],
      ['user', 'add', 'dave', '--new-password', 'dave-pw'],
      ['user', 'grant-role', 'dave', 'root'],
    ]) {
      const r = await run(args);
      expect(r.code, `${args.join(' ')}: ${r.err}`).toBe(0);
    }
    const eve = await run(['user', 'add', 'eve', '--new-password-stdin'], { KVCASCADE_ADMIN_TOKEN: TOKEN }, 'eve-pw\n');
    expect(eve.code, eve.err).toBe(0);
    const noPw = await run(['user', 'add', 'frank']);
    expect(noPw.code).not.toBe(0);
    expect(noPw.err).toMatch(/--new-password, --new-password-stdin or --no-password/);
    const ls = await run(['--json', 'user', 'ls']);
    expect(JSON.parse(ls.out).users.map((u: { name: string }) => u.name)).toEqual(['alice', 'bob', 'carol', 'dave', 'eve']);
    const roles = await run(['role', 'ls']);
    expect(roles.out).toMatch(/reader\s+read\s+"\/app\/"/);
    // Changes need root: a wrong admin token is refused.
    const denied = await run(['role', 'add', 'x'], { KVCASCADE_ADMIN_TOKEN: 'not-the-admin-token-0000' });
    expect(denied.code).toBe(1);
    expect(denied.err).toMatch(/PERMISSION_DENIED/);
    const on = await run(['auth', 'enable']);
    expect(on.code, on.err).toBe(0);
    expect((await root.status()).enabled).toBe(true);
  });

  it('anonymous requests are refused with UNAUTHENTICATED', async () => {
    const c = cluster.client();
    await eventually(() => expect(c.get('/app/open')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' }));
    await expect(c.put('/app/x', 'v')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    const st = await run(['--json', 'auth', 'status'], {});
    expect(JSON.parse(st.out)).toMatchObject({ enabled: true, principal: '' });
  });

  it('a reader may get, list and watch its prefix, and nothing else', async () => {
    const alice = as('alice');
    expect((await alice.get('/app/open')).found).toBe(true);
    expect((await alice.list('/app/')).items.map((i) => i.key)).toContain('/app/open');
    await expect(alice.list('/')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(alice.get('/other')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    expect(await firstWatchBatch(alice, '/app/')).toBeDefined();
    for (const ep of cluster.endpoints) {
      const one = cluster.client([ep], { user: 'alice', password: 'alice-pw', shardRouting: false, batching: false });
      expect(await firstWatchBatch(one, '/app/')).toBeDefined(); // served here or forwarded with alice's token
    }
    await expect(firstWatchBatch(alice, '/')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(alice.put('/app/x', 'v')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(alice.put('/app/x', 'v', { expectedVersion: 0 })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(alice.delete('/app/open')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(alice.trigger('/app/open', 'v')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(alice.txn({ compares: [], writes: [{ type: 'put', key: '/app/t', value: 'v' }] })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    const p = alice.pipeline();
    expect((await p.get('/app/open')).found).toBe(true);
    await expect(p.put('/app/p', 'v')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await p.close();
    const kv = await run(['get', '/app/open'], { KVCASCADE_USER: 'alice', KVCASCADE_PASSWORD: 'alice-pw' });
    expect(kv.code, kv.err).toBe(0);
    const put = await run(['--user', 'alice:alice-pw', 'put', '/app/x', 'v'], {});
    expect(put.code).toBe(1);
    expect(put.err).toMatch(/PERMISSION_DENIED.*alice may not write key "\/app\/x"/);
  });

  it('a writer may put, cas, delete, trigger, txn and pipeline under its prefix only', async () => {
    const bob = as('bob');
    const p1 = await bob.put('/app/b', '1');
    expect(p1.succeeded).toBe(true);
    expect((await bob.put('/app/b', '2', { expectedVersion: p1.version })).succeeded).toBe(true);
    expect((await bob.trigger('/app/b', 't')).revision).toBeGreaterThan(0);
    expect((await bob.txn({ compares: [{ key: '/app/b', version: 0 }], writes: [{ type: 'put', key: '/app/c', value: 'x' }] })).succeeded).toBe(false);
    expect((await bob.txn({ compares: [], writes: [{ type: 'put', key: '/app/c', value: 'x' }] })).succeeded).toBe(true);
    expect((await bob.delete('/app/c')).deleted).toBe(true);
    const p = bob.pipeline();
    expect((await p.put('/app/p', 'v')).succeeded).toBe(true);
    await expect(p.put('/elsewhere', 'v')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await p.close();
    await expect(bob.put('/elsewhere', 'v')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(bob.txn({ compares: [{ key: '/elsewhere', version: 0 }], writes: [{ type: 'put', key: '/app/d', value: 'x' }] })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
  });

  it('leases: grant needs a user, a put with a lease needs write on the key, and only the owner or root may keep alive, look up, list or revoke', async () => {
    const lcs: LeaseClient[] = [];
    const lease = (o: Partial<ConstructorParameters<typeof LeaseClient>[0]> = {}): LeaseClient => {
      const c = new LeaseClient({ endpoints: cluster.endpoints, ...o });
      lcs.push(c);
      return c;
    };
    try {
      await expect(lease().grant(10)).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
      const bob = lease({ user: 'bob', password: 'bob-pw' });
      const id = await bob.grant(10);
      const bobKv = as('bob');
      expect((await bobKv.put('/app/leased', 'v', { lease: id })).succeeded).toBe(true);
      await expect(bobKv.put('/elsewhere', 'v', { lease: id })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
      await expect(as('alice').put('/app/leased2', 'v', { lease: id })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
      const alice = lease({ user: 'alice', password: 'alice-pw' });
      await expect(alice.timeToLive(id)).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
      await expect(alice.revoke(id)).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
      expect(await alice.leases()).toEqual([]);
      const refused = new Promise<string>((resolve) => alice.on('lost', (_id, reason, detail) => resolve(`${reason} ${detail}`)));
      alice.keepAlive(id, 10);
      expect(await refused).toBe('refused PERMISSION_DENIED');
      expect((await lease({ token: TOKEN }).leases()).map((l) => l.id)).toContain(id);
      expect((await bob.timeToLive(id, { keys: true })).keys).toEqual(['/app/leased']);
      expect((await bob.leases()).map((l) => l.owner)).toEqual(['bob']);
      await bob.revoke(id);
      await eventually(async () => expect((await bobKv.get('/app/leased')).found).toBe(false));
    } finally {
      for (const c of lcs) c.close();
    }
  });

  it('admin APIs need root: a root user or the admin token, never another user', async () => {
    const bobToken = (await login(cluster.endpoints, 'bob', 'bob-pw')).token;
    const bobAdmin = new AdminClient({ endpoints: cluster.endpoints, token: bobToken });
    await expect(bobAdmin.list()).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(bobAdmin.createPool({ name: '/bobs', shards: 1 })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    bobAdmin.close?.();
    const bobAuth = new AuthClient({ endpoints: cluster.endpoints, user: 'bob', password: 'bob-pw' });
    await expect(bobAuth.addRole('mine')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    bobAuth.close();
    const anon = new AdminClient({ endpoints: cluster.endpoints });
    await expect(anon.list()).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    anon.close?.();
    const daveToken = (await login(cluster.endpoints, 'dave', 'dave-pw')).token;
    const dave = new AdminClient({ endpoints: cluster.endpoints, token: daveToken });
    expect((await dave.list()).records).toBeDefined();
    dave.close?.();
    // kvctl's admin commands take a root user's token as well as the admin token.
    const ls = await run(['--json', 'ext', 'ls'], { KVCASCADE_TOKEN: daveToken });
    expect(ls.code, ls.err).toBe(0);
    const lsBob = await run(['--json', 'ext', 'ls'], { KVCASCADE_TOKEN: bobToken });
    expect(lsBob.code).toBe(1);
    expect(lsBob.err).toMatch(/PERMISSION_DENIED/);
    // A root user reads and writes everything, and administers access control.
    const daveKv = as('dave');
    expect((await daveKv.put('/anything', 'v')).succeeded).toBe(true);
    const daveAuth = new AuthClient({ endpoints: cluster.endpoints, user: 'dave', password: 'dave-pw' });
    expect((await daveAuth.status())).toMatchObject({ enabled: true, principal: 'dave', root: true });
    daveAuth.close();
  });

  it('wrong passwords fail with one clear error, and repeated failures lock the user out', async () => {
    await expect(login(cluster.endpoints, 'eve', 'nope')).rejects.toMatchObject({ code: 'UNAUTHENTICATED', message: 'wrong user name or password' });
    await expect(login(cluster.endpoints, 'nobody', 'nope')).rejects.toMatchObject({ code: 'UNAUTHENTICATED', message: 'wrong user name or password' });
    for (let i = 0; i < 4; i++) await expect(login(cluster.endpoints, 'eve', 'nope')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    // Locked out now, even with the right password.
    await expect(login(cluster.endpoints, 'eve', 'eve-pw')).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED', message: expect.stringMatching(/too many failed logins/) });
    // Other users are unaffected.
    expect((await login(cluster.endpoints, 'alice', 'alice-pw')).token).toMatch(/^kvc1\./);
    const viaKvctl = await run(['get', '/app/open'], { KVCASCADE_USER: 'alice', KVCASCADE_PASSWORD: 'wrong' });
    expect(viaKvctl.code).toBe(1);
    expect(viaKvctl.err).toMatch(/UNAUTHENTICATED: wrong user name or password/);
    // A forged token is refused.
    const forged = cluster.client(cluster.endpoints, { token: 'kvc1.eyJrIjoicm9vdCIsImUiOjk5OTk5OTk5OTk5OTl9.AAAA' });
    await expect(forged.get('/app/open')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
  });

  it('role changes take effect at once, on every node, for tokens already issued', async () => {
    const carol = as('carol');
    await expect(carol.put('/app/carol', 'v')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await root.grantRole('carol', 'writer');
    for (const ep of cluster.endpoints) {
      const one = cluster.client([ep], { user: 'carol', password: 'carol-pw', shardRouting: false, batching: false });
      await eventually(async () => expect((await one.get('/app/open')).found).toBe(true));
    }
    await eventually(async () => expect((await carol.put('/app/carol', 'v')).succeeded).toBe(true));
    await root.revokePermission('writer', '/app/', 'write');
    await eventually(() => expect(carol.put('/app/carol', 'v2')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' }));
    expect((await carol.get('/app/carol')).found).toBe(true); // read is left
    await root.grantPermission('writer', '/app/', 'write');
    await root.deleteUser('carol');
    await eventually(() => expect(carol.get('/app/carol')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' }));
  });

  it('a lambda cannot write outside the role its extension was loaded with', async () => {
    await root.addRole('watcher');
    await root.grantPermission('watcher', '/stocks/', 'readwrite');
    const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN });
    const loaded = await run(['ext', 'load', 'extensions/stock-watch', '--name', 'stock-watch', '--role', 'watcher']);
    expect(loaded.code, loaded.err).toBe(0);
    expect(loaded.out).toMatch(/stock-watch.*running/);
    const dave = as('dave');
    await dave.put('/stocks/AAA', '50');
    const v1 = await dave.put('/stocks/AAA', '40');
    // The lambda ran (it reads /stocks/, which its role allows) but its alert write was refused.
    await new Promise((r) => setTimeout(r, 3000));
    expect((await dave.get(`/alerts/AAA/${v1.version}`)).found).toBe(false);
    const errors = (await admin.list()).statuses.filter((s) => s.name === 'stock-watch').reduce((n, s) => n + s.errors, 0);
    expect(errors).toBeGreaterThan(0);
    // Granted: the lambda's writes go through (a role change applies to running lambdas too).
    await root.grantPermission('watcher', '/alerts/', 'write');
    const v2 = await dave.put('/stocks/AAA', '30');
    await eventually(async () => expect((await dave.get(`/alerts/AAA/${v2.version}`)).found).toBe(true), 20_000);
    await admin.unload('stock-watch');
    admin.close?.();
  });

  it('turned off again, anonymous clients read and write', async () => {
    const r = await run(['auth', 'disable'], { KVCASCADE_USER: 'dave', KVCASCADE_PASSWORD: 'dave-pw' });
    expect(r.code, r.err).toBe(0);
    const c = cluster.client();
    await eventually(async () => expect((await c.put('/app/open', 'again')).succeeded).toBe(true));
  });
});
