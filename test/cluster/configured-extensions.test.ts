/** Extensions listed in kvd's configuration (--extension) are registered cluster-wide at start. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { KvdCluster } from './harness.js';

const TOKEN = 'configured-ext-token-0123456789';
const dir = mkdtempSync(join(tmpdir(), 'kvcascade-confext-'));
writeFileSync(join(dir, 'token'), TOKEN, { mode: 0o600 }); // kvd refuses a token file others may read
let cluster: KvdCluster | undefined;

afterAll(async () => {
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('configured extensions', () => {
  it('every node starts with the extension its configuration lists', async () => {
    cluster = await KvdCluster.start({
      nodes: 3,
      extraArgs: ['--admin-token-file', join(dir, 'token'), '--extension', resolve('extensions/stock-watch')],
    });
    const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN });
    const deadline = Date.now() + 20_000;
    let running = 0;
    let records = 0;
    while (Date.now() < deadline) {
      const l = await admin.list();
      records = l.records.filter((r) => r.name === 'stock-watch').length;
      running = l.statuses.filter((s) => s.name === 'stock-watch' && s.state === 'running').length;
      if (records === 1 && running === 3) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    admin.close();
    expect(records).toBe(1); // registered once, although three nodes list it
    expect(running).toBe(3);
    const c = cluster.client();
    await c.put('/stocks/CFG', '10');
    const v = await c.put('/stocks/CFG', '9');
    let found = false;
    while (!found && Date.now() < deadline + 10_000) found = (await c.get(`/alerts/CFG/${v.version}`)).found;
    expect(found).toBe(true);
  });
});
