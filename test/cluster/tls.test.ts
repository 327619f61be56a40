/**
 * TLS on both planes, as the README's production setup runs it: each node has a certificate
 * naming it (CN node-<id>) signed by the cluster CA; the client API requires client
 * certificates; Raft traffic has its own mutually authenticated listener. The attacks of the
 * security review are replayed against it: plaintext and certificate-less clients, a peer
 * stream on the client port, forged peer batches from a non-member and from a member claiming
 * another node's id, and a node started with peers but no peer TLS.
 */
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvClient } from '../../src/client/index.js';
import { AdminClient } from '../../src/client/admin-client.js';
import { AuthClient } from '../../src/client/auth-client.js';
import { loadPeerProto } from '../../src/node/grpc-transport.js';
import { encodeProposal } from '../../src/node/envelope.js';
import { freePorts, KVD, KvdCluster, releasePorts } from './harness.js';
import { TestPki, type CertFiles } from './pki.js';

const TOKEN = 'tls-test-admin-token-0123456789';
let pki: TestPki;
let cluster: KvdCluster;
let clientCert: CertFiles;

function tlsFor(c: CertFiles | undefined) {
  return {
    rootCert: readFileSync(pki.ca),
    ...(c ? { certChain: readFileSync(c.cert), privateKey: readFileSync(c.key) } : {}),
  };
}

beforeAll(async () => {
  pki = new TestPki();
  clientCert = pki.issue('app', 'app-client');
  cluster = await KvdCluster.start({
    nodes: 3,
    nodeArgs: (id) => pki.nodeArgs(id),
    extraArgs: ['--admin-token', TOKEN],
    tls: tlsFor(clientCert),
  });
});

afterAll(async () => {
  await cluster?.stop();
  pki?.remove();
});

/** The value of a counter on node `id`'s /metrics. */
async function metric(id: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${cluster.node(id).metricsPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

type RaftStream = grpc.ClientDuplexStream<unknown, unknown>;

/** Opens a Peer.Raft stream to `address` with `creds`, writes one batch, and resolves with how the stream ended. */
function forgeBatch(address: string, creds: grpc.ChannelCredentials, batch: unknown): Promise<{ code: number; details: string }> {
  const pkg = loadPeerProto() as unknown as { kvcascade: { v1: { peer: { Peer: grpc.ServiceClientConstructor } } } };
  const client = new pkg.kvcascade.v1.peer.Peer(address, creds) as unknown as grpc.Client & { raft(): RaftStream };
  const stream = client.raft();
  return new Promise((resolve) => {
    const done = (code: number, details: string) => {
      client.close();
      resolve({ code, details });
    };
    stream.on('error', (e: grpc.ServiceError) => done(e.code, e.details ?? e.message));
    stream.on('data', () => {});
    stream.on('end', () => done(grpc.status.OK, 'ended'));
    stream.write(batch);
  });
}

/** A forged proposal to the metadata group: an extension record that, if applied, every node would import and run. */
function forgedExtensionProp(from: number, to: number) {
  const record = new TextEncoder().encode(JSON.stringify({ name: 'evil', version: '1.0.0', generation: 1, chunks: 0 }));
  const data = encodeProposal(Date.now(), { type: 'put', key: '/ext/evil/meta', value: record }, 'system');
  return { type: 'Prop', group: 0, from, to, term: 0, entries: [{ term: 0, index: 0, type: 0, data }] };
}

describe('TLS on both planes', () => {
  it('replicates over mutually authenticated peer streams and serves clients with certificates', async () => {
    const c = cluster.client();
    const r = await c.put('/tls/k', 'secret');
    expect(r.succeeded).toBe(true);
    for (const ep of cluster.endpoints) {
      const one = cluster.client([ep]);
      const deadline = Date.now() + 5000;
      let found = false;
      while (!found && Date.now() < deadline) found = (await one.get('/tls/k', { consistency: 'serializable' })).found;
      expect(found).toBe(true);
    }
  });

  it('refuses a plaintext client, a client without a certificate and one with a certificate from another CA', async () => {
    const rogue = pki.issue('rogue-app', 'rogue-app', { rogue: true });
    const clients = [
      new KvClient({ endpoints: [cluster.endpoints[0]!], defaultDeadlineMs: 1500, maxRetries: 1 }),
      new KvClient({ endpoints: [cluster.endpoints[0]!], defaultDeadlineMs: 1500, maxRetries: 1, tls: tlsFor(undefined) }),
      new KvClient({ endpoints: [cluster.endpoints[0]!], defaultDeadlineMs: 1500, maxRetries: 1, tls: tlsFor(rogue) }),
    ];
    for (const c of clients) {
      await expect(c.get('/tls/k')).rejects.toMatchObject({ code: expect.stringMatching(/UNAVAILABLE|DEADLINE_EXCEEDED|INTERNAL/) });
      c.close();
    }
  });

  it('does not serve Raft traffic on the client port', async () => {
    const node2 = pki.node(2);
    const creds = grpc.credentials.createSsl(readFileSync(pki.ca), readFileSync(node2.key), readFileSync(node2.cert));
    const end = await forgeBatch(cluster.node(1).address, creds, { fromNode: 2, seq: 1, messages: [forgedExtensionProp(2, 1)] });
    expect(end.code).toBe(grpc.status.UNIMPLEMENTED);
  });

  it('refuses forged peer batches on the peer port and applies none of them', async () => {
    const ca = readFileSync(pki.ca);
    const before = await Promise.all([1, 2, 3].map((id) => metric(id, 'kvcascade_peer_batches_rejected_total')));
    const creds = (c: CertFiles | undefined) =>
      c ? grpc.credentials.createSsl(ca, readFileSync(c.key), readFileSync(c.cert)) : grpc.credentials.createSsl(ca);
    const nonMember = pki.node(9);
    const app = clientCert;
    for (const target of [1, 2, 3]) {
      const peer = cluster.node(target).peerAddress;
      const claimed = target === 1 ? 2 : 1; // a member other than the target
      const impostor = pki.node(claimed === 1 ? 3 : 1); // a member's certificate, claiming another member's id
      // No client certificate: the TLS handshake fails.
      const noCert = await forgeBatch(peer, creds(undefined), { fromNode: claimed, seq: 1, messages: [forgedExtensionProp(claimed, target)] });
      expect(noCert.code).toBe(grpc.status.UNAVAILABLE);
      // A certificate of the cluster CA that names no node (an application's): refused.
      const noId = await forgeBatch(peer, creds(app), { fromNode: claimed, seq: 1, messages: [forgedExtensionProp(claimed, target)] });
      expect(noId.code).toBe(grpc.status.UNAUTHENTICATED);
      // A node certificate of a non-member: refused.
      const outsider = await forgeBatch(peer, creds(nonMember), { fromNode: 9, seq: 1, messages: [forgedExtensionProp(9, target)] });
      expect(outsider.code).toBe(grpc.status.PERMISSION_DENIED);
      // A member's certificate claiming another member's id: refused.
      const forged = await forgeBatch(peer, creds(impostor), { fromNode: claimed, seq: 1, messages: [forgedExtensionProp(claimed, target)] });
      expect(forged.code).toBe(grpc.status.PERMISSION_DENIED);
    }
    const after = await Promise.all([1, 2, 3].map((id) => metric(id, 'kvcascade_peer_batches_rejected_total')));
    for (let i = 0; i < 3; i++) expect(after[i]! - before[i]!).toBeGreaterThanOrEqual(3);
    // Nothing reached the metadata group: no extension was registered.
    const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN, tls: tlsFor(clientCert) });
    try {
      expect((await admin.list()).records.map((r) => r.name)).not.toContain('evil');
    } finally {
      admin.close();
    }
    // The cluster still works.
    expect((await cluster.client().put('/tls/after', 'ok')).succeeded).toBe(true);
  });

  it('a node with peers and no peer TLS refuses to start unless --insecure-peers', async () => {
    const [p1, p2, p3, p4] = await freePorts(4);
    const args = [
      KVD, '--id', '1', '--listen', `127.0.0.1:${p1}`, '--peer-listen', `127.0.0.1:${p2}`,
      '--peers', `1=127.0.0.1:${p1}/127.0.0.1:${p2},2=127.0.0.1:${p3}/127.0.0.1:${p4}`,
      '--data-dir', join(tmpdir(), `kvcascade-refuse-${process.pid}`),
    ];
    const run = () =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const p = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
        p.on('exit', (code) => resolve({ code, stderr }));
      });
    const r = await run();
    releasePorts([p1!, p2!, p3!, p4!]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/refusing to start: the peer listener would accept unauthenticated Raft traffic/);
  });

  it('with access control on, a client certificate authenticates the user its common name names, on every node', async () => {
    const root = new AuthClient({ endpoints: cluster.endpoints, token: TOKEN, tls: tlsFor(clientCert) });
    const stranger = pki.issue('stranger', 'stranger');
    try {
      await root.addRole('tls-app');
      await root.grantPermission('tls-app', '/tls-app/', 'readwrite');
      await root.addUser('app-client'); // no password: certificate only
      await root.grantRole('app-client', 'tls-app');
      await root.enable();
      // Each node, including those that forward to the shard's leader (with a token they sign).
      for (const ep of cluster.endpoints) {
        const one = cluster.client([ep], { shardRouting: false, batching: false });
        const deadline = Date.now() + 5000;
        for (;;) {
          try {
            expect((await one.put(`/tls-app/${ep}`, 'v')).succeeded).toBe(true);
            break;
          } catch (e) {
            if (Date.now() > deadline) throw e;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
        await expect(one.put('/tls/other', 'v')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
      }
      expect(await root.status()).toMatchObject({ enabled: true, principal: 'root', root: true });
      const other = new KvClient({ endpoints: cluster.endpoints, defaultDeadlineMs: 3000, tls: tlsFor(stranger) });
      await expect(other.get('/tls-app/x')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
      other.close();
    } finally {
      await root.disable();
      root.close();
    }
  });
});
