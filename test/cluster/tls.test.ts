/**
 * TLS for client and peer traffic: a 3-process cluster started with a certificate signed by a
 * test CA replicates over TLS peer streams and serves TLS clients; a plaintext client is refused.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvClient } from '../../src/client/index.js';
import { KvdCluster } from './harness.js';

const dir = mkdtempSync(join(tmpdir(), 'kvcascade-tls-'));
const file = (n: string) => join(dir, n);

/** A CA and a server certificate for 127.0.0.1 (used by every node, for serving and dialling). */
function makeCertificates(): void {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=kvcascade test CA', '-keyout', file('ca.key'), '-out', file('ca.pem'));
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', file('node.key'), '-out', file('node.csr'));
  writeFileSync(file('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  ssl('x509', '-req', '-in', file('node.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', file('ext.cnf'), '-out', file('node.pem'));
}

let cluster: KvdCluster;

beforeAll(async () => {
  makeCertificates();
  cluster = await KvdCluster.start({
    nodes: 3,
    extraArgs: ['--tls-cert', file('node.pem'), '--tls-key', file('node.key'), '--tls-ca', file('ca.pem')],
    tls: { rootCert: readFileSync(file('ca.pem')) },
  });
});

afterAll(async () => {
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('TLS', () => {
  it('replicates over TLS peer streams and serves TLS clients', async () => {
    const c = cluster.client();
    const r = await c.put('/tls/k', 'secret');
    expect(r.succeeded).toBe(true);
    // Every node has it: replication went over the TLS peer streams.
    for (const ep of cluster.endpoints) {
      const one = cluster.client([ep]);
      const deadline = Date.now() + 5000;
      let found = false;
      while (!found && Date.now() < deadline) found = (await one.get('/tls/k', { consistency: 'serializable' })).found;
      expect(found).toBe(true);
    }
  });

  it('refuses a plaintext client', async () => {
    const plain = new KvClient({ endpoints: [cluster.endpoints[0]!], defaultDeadlineMs: 1500, maxRetries: 1 });
    await expect(plain.get('/tls/k')).rejects.toMatchObject({ code: expect.stringMatching(/UNAVAILABLE|DEADLINE_EXCEEDED|INTERNAL/) });
    plain.close();
  });
});
