/**
 * A put with a lease carries the client's write session (docs/leases.md, docs/sessions.md): every
 * attempt of one put sends the same (id, seq), so the client may retry it after a failure that
 * leaves its outcome unknown — a dropped answer, an attempt that timed out — and the shard
 * applies it once. Against a fake Lease server that applies each (id, seq) once (as a shard's
 * session table does) and fails the first attempt after applying it; without a session such a
 * failure is not retried.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { KvClient, LeaseClient } from '../../src/client/index.js';
import { ClientSession } from '../../src/client/session.js';
import { leasePutOnly } from '../support/fake-lease-service.js';
import { leaseServiceDefinition } from '../../src/wire/lease-proto.js';

type Req = Record<string, unknown> & { session?: { id: string; seq: number; ackedBelow: number } | null };

/** What the fake does with an attempt after applying it: answer, fail it as a dropped connection would, or answer too late. */
type Mode = 'answer' | 'drop' | 'stall';

interface FakeLeaseServer {
  readonly address: string;
  /** Every LeasePut received, in order. */
  readonly received: Req[];
  /** Puts applied (a repeated (id, seq) is answered from the table, not applied). */
  applied: number;
  /** Modes of the next attempts (then `answer`). */
  readonly script: Mode[];
  close(): Promise<void>;
}

let servers: FakeLeaseServer[] = [];
let clients: { close(): void }[] = [];
afterEach(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.close();
  clients = [];
  servers = [];
});

async function fakeLeaseServer(): Promise<FakeLeaseServer> {
  const server = new grpc.Server();
  const results = new Map<string, { succeeded: boolean; revision: number; version: number; timestampMs: number }>();
  let revision = 10;
  const fake: Omit<FakeLeaseServer, 'address' | 'close'> = { received: [], applied: 0, script: [] };
  server.addService(leaseServiceDefinition, leasePutOnly((call: grpc.ServerUnaryCall<Req, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const req = call.request;
      fake.received.push(req);
      const s = req.session;
      const sk = s ? `${s.id}/${s.seq}` : undefined;
      let result = sk !== undefined ? results.get(sk) : undefined;
      if (!result) {
        fake.applied++;
        revision++;
        result = { succeeded: true, revision, version: revision, timestampMs: 1 };
        if (sk !== undefined) results.set(sk, result);
      }
      const mode = fake.script.shift() ?? 'answer';
      if (mode === 'drop') cb({ code: grpc.status.UNAVAILABLE, details: 'connection dropped (fake)' } as grpc.ServiceError);
      else if (mode === 'stall') setTimeout(() => cb(null, result), 1_000);
      else cb(null, result);
    }),
  );
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  const s: FakeLeaseServer = Object.assign(fake, {
    address: `127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  });
  servers.push(s);
  return s;
}

function leaseClient(address: string, o: Partial<ConstructorParameters<typeof LeaseClient>[0]> = {}): LeaseClient {
  const c = new LeaseClient({ endpoints: [address], deadlineMs: 5_000, ...o });
  clients.push(c);
  return c;
}

describe('a put with a lease carries a client session', () => {
  it('is retried after a dropped answer with the same (id, seq), and applied once', async () => {
    const srv = await fakeLeaseServer();
    const session = new ClientSession();
    const c = leaseClient(srv.address, { session });
    srv.script.push('drop');
    const r = await c.put('/cam/7', 'on', { lease: 5 });
    expect(r.succeeded).toBe(true);
    expect(srv.received.length).toBe(2);
    expect(srv.applied).toBe(1);
    expect(srv.received.map((q) => q.session)).toEqual([
      { id: session.id, seq: 1, ackedBelow: 1 },
      { id: session.id, seq: 1, ackedBelow: 1 },
    ]);
    expect(r.revision).toBe(11); // the first (and only) application's answer
    // The next put is a new logical write: the next seq, and the first one acknowledged.
    await c.put('/cam/8', 'on', { lease: 5 });
    expect(srv.received[2]!.session).toEqual({ id: session.id, seq: 2, ackedBelow: 2 });
    expect(srv.applied).toBe(2);
  });

  it('is retried after an attempt that timed out, and the retry gets the first attempt\'s result', async () => {
    const srv = await fakeLeaseServer();
    const c = leaseClient(srv.address, { session: new ClientSession(), attemptTimeoutMs: 200 });
    srv.script.push('stall');
    const r = await c.put('/cam/7', 'on', { lease: 5 });
    expect(r.revision).toBe(11);
    expect(srv.received.length).toBe(2);
    expect(srv.received[1]!.session).toEqual(srv.received[0]!.session);
    expect(srv.applied).toBe(1);
  });

  it('without a session, a failure that leaves the outcome unknown is not retried', async () => {
    const srv = await fakeLeaseServer();
    const c = leaseClient(srv.address);
    srv.script.push('drop');
    await expect(c.put('/cam/7', 'on', { lease: 5 })).rejects.toMatchObject({ code: 'UNAVAILABLE', retrySafe: false });
    expect(srv.received.length).toBe(1);
    expect(srv.received[0]!.session ?? undefined).toBeUndefined();
  });

  it("KvClient's put with a lease uses the client's session (and none with sessions: false)", async () => {
    const srv = await fakeLeaseServer();
    const kv = new KvClient({ endpoints: [srv.address] });
    clients.push(kv);
    srv.script.push('drop');
    // Routing by the cluster map needs a real cluster: go through the client's lease client, as KvClient.put does.
    expect((await kv.leases.put('/cam/7', 'on', { lease: 5 })).succeeded).toBe(true);
    expect(srv.received.length).toBe(2);
    expect(srv.received[0]!.session?.seq).toBe(1);
    expect(srv.received[1]!.session).toEqual(srv.received[0]!.session);
    const plain = new KvClient({ endpoints: [srv.address], sessions: false });
    clients.push(plain);
    await plain.leases.put('/cam/8', 'on', { lease: 5 });
    expect(srv.received[2]!.session ?? undefined).toBeUndefined();
  });
});
