/**
 * A lease call during a leader change (src/client/lease-client.ts `call`): nodes that are between
 * leaders answer UNAVAILABLE, retry-safe, with a leader hint that may name a node which itself
 * points back. The client must keep trying until the call's deadline with a backoff between such
 * attempts, not give up after a fixed number of instant ping-pong redirects (a lease put failed
 * that way in test/cluster/lease-revoke-bound.test.ts on a loaded machine: "this node does not
 * lead shard 2"), and must still stop at the deadline.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { LeaseClient } from '../../src/client/index.js';
import { leasePutOnly } from '../support/fake-lease-service.js';
import { leaseServiceDefinition, SHARD_LEADER_METADATA } from '../../src/wire/lease-proto.js';
import { META_RETRY_SAFE } from '../../src/wire/metadata.js';

interface Node {
  address: string;
  /** Where this node's refusals point. */
  hint: string;
  server: grpc.Server;
}

/** Refusals left before a node answers (shared by both nodes: the election ends for everyone at once). */
let refusalsLeft = 0;
/** When each LeasePut arrived (ms). */
let arrivals: number[] = [];
const nodes: Node[] = [];
let clients: LeaseClient[] = [];

afterEach(async () => {
  for (const c of clients) c.close();
  clients = [];
  for (const n of nodes.splice(0)) await new Promise<void>((r) => n.server.tryShutdown(() => r()));
});

async function node(): Promise<Node> {
  const server = new grpc.Server();
  const n: Node = { address: '', hint: '', server };
  server.addService(leaseServiceDefinition, leasePutOnly((_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      arrivals.push(Date.now());
      if (refusalsLeft > 0) {
        refusalsLeft--;
        const md = new grpc.Metadata();
        md.set(SHARD_LEADER_METADATA, n.hint);
        md.set(META_RETRY_SAFE, '1');
        cb({ code: grpc.status.UNAVAILABLE, details: 'this node does not lead shard 2 (fake)', metadata: md } as grpc.ServiceError);
        return;
      }
      cb(null, { succeeded: true, revision: 7, version: 7, timestampMs: 1 });
    }),
  );
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  n.address = `127.0.0.1:${port}`;
  nodes.push(n);
  return n;
}

async function twoNodesPointingAtEachOther(): Promise<[Node, Node]> {
  const a = await node();
  const b = await node();
  a.hint = b.address;
  b.hint = a.address;
  return [a, b];
}

describe('a lease call while the leadership moves', () => {
  it('keeps following redirects that point back and forth, backing off, until a node answers', async () => {
    const [a, b] = await twoNodesPointingAtEachOther();
    arrivals = [];
    refusalsLeft = 11; // more than the 9 attempts the client used to allow
    const c = new LeaseClient({ endpoints: [a.address, b.address], deadlineMs: 10_000 });
    clients.push(c);
    const r = await c.put('/fleet/1', 'on', { lease: 3 });
    expect(r.succeeded).toBe(true);
    expect(arrivals.length).toBe(12);
    // The first redirect to a node not tried yet is followed at once; after that the client backs
    // off between attempts: the 11 refusals take a measurable time, not a few milliseconds.
    expect(arrivals[11]! - arrivals[0]!).toBeGreaterThan(11 * 10);
  });

  it('still gives up at the call deadline, with the last refusal', async () => {
    const [a, b] = await twoNodesPointingAtEachOther();
    arrivals = [];
    refusalsLeft = Number.POSITIVE_INFINITY;
    const c = new LeaseClient({ endpoints: [a.address, b.address], deadlineMs: 1_500 });
    clients.push(c);
    const t0 = Date.now();
    await expect(c.put('/fleet/1', 'on', { lease: 3 })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    const took = Date.now() - t0;
    expect(took).toBeLessThan(1_500 + 1_000);
    // Bounded attempts: backoff, not a busy loop, within the deadline.
    expect(arrivals.length).toBeLessThan(40);
    expect(arrivals.length).toBeGreaterThan(3);
  });
});
