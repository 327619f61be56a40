/**
 * The standard gRPC health service on real kvd processes: SERVING once a node has joined and
 * caught up; NOT_SERVING on a node whose groups lost their leader (both peers frozen), and
 * SERVING again once they return; `kvctl status` and AdminClient.clusterStatus show it per node.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { main as kvctl } from '../../src/cli/kvctl.js';
import { KvdCluster } from './harness.js';

type HealthClient = grpc.Client & {
  check(req: { service: string }, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void;
};

const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath, { enums: String })) as unknown as {
  grpc: { health: { v1: { Health: new (address: string, creds: grpc.ChannelCredentials) => HealthClient } } };
};

let cluster: KvdCluster;
const clients: HealthClient[] = [];

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3, tickMs: 50, electionTicks: 10 });
});

afterAll(async () => {
  for (const c of clients) c.close();
  await cluster?.stop();
});

function check(address: string, service = ''): Promise<string> {
  const c = new pkg.grpc.health.v1.Health(address, grpc.credentials.createInsecure());
  clients.push(c);
  return new Promise((resolve, reject) =>
    c.check({ service }, { deadline: new Date(Date.now() + 2000) }, (e, r) => (e ? reject(e) : resolve(r!.status))),
  );
}

async function until(address: string, want: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  let last = '';
  while (Date.now() < deadline) {
    last = await check(address).catch((e: grpc.ServiceError) => `error ${e.code}`);
    if (last === want) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${address} stayed ${last}, wanted ${want}`);
}

describe('grpc.health.v1', () => {
  it('every node reports SERVING for the server and for kvcascade.v1.KV once caught up', async () => {
    for (const n of cluster.nodes) await until(n.address, 'SERVING');
    expect(await check(cluster.nodes[0]!.address, 'kvcascade.v1.KV')).toBe('SERVING');
    await expect(check(cluster.nodes[0]!.address, 'no.such.Service')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it('a node whose groups have no leader reports NOT_SERVING, and SERVING again when they do', async () => {
    const [a, b, c] = cluster.nodes;
    cluster.pause(b!.id);
    cluster.pause(c!.id);
    try {
      await until(a!.address, 'NOT_SERVING');
    } finally {
      cluster.resume(b!.id);
      cluster.resume(c!.id);
    }
    await until(a!.address, 'SERVING');
  });

  it('kvctl status shows each node\'s health (and AdminClient.clusterStatus reports it); a frozen node has none', async () => {
    const endpoints = cluster.nodes.map((n) => n.address);
    for (const n of cluster.nodes) await until(n.address, 'SERVING');
    const status = async () => {
      let out = '';
      await kvctl(['--endpoints', endpoints.join(','), 'status'], { stdout: { write: (s: string) => (out += s) }, stderr: { write: () => {} }, env: {} });
      return out.split('\n');
    };
    const lines = await status();
    expect(lines[0]).toMatch(/^NODE\s+ADDRESS\s+STATE\s+UP\s+HEALTH\s+MAP_EPOCH/);
    for (const n of cluster.nodes) expect(lines.find((l) => l.includes(n.address))).toMatch(/\sup\s+SERVING\s/);
    const c = cluster.nodes[2]!;
    cluster.pause(c.id);
    try {
      const admin = new AdminClient({ endpoints: [cluster.nodes[0]!.address] });
      try {
        const cs = await admin.clusterStatus({ deadlineMs: 1000 });
        expect(cs.nodes.find((n) => n.address === c.address)?.health).toBeUndefined();
        expect(cs.nodes.find((n) => n.address === cluster.nodes[0]!.address)?.health).toBe('SERVING');
      } finally {
        admin.close();
      }
    } finally {
      cluster.resume(c.id);
    }
  });
});
