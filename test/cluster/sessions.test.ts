/**
 * Write sessions on real kvd processes: a Put with a session sent twice to a follower (which
 * forwards it to the leader) is applied once and answered alike; its retry after the leader is
 * killed with SIGKILL is answered by the new leader from the replicated session table.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvStubClient, type GetResponseMsg, type KvStub, type PutResponseMsg } from '../../src/wire/proto.js';
import { KvdCluster } from './harness.js';

let cluster: KvdCluster;
const stubs: KvStub[] = [];

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3 });
});

afterAll(async () => {
  for (const s of stubs) s.close();
  await cluster?.stop();
});

function stub(address: string): KvStub {
  const s = new KvStubClient(address, grpc.credentials.createInsecure());
  stubs.push(s);
  return s;
}

function call<Res>(s: KvStub, method: 'put' | 'get', req: object, timeoutMs = 5000): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = s[method] as unknown as (r: object, m: grpc.Metadata, o: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r?: Res) => void) => void;
    fn.call(s, req, new grpc.Metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (e, r) => (e ? reject(e) : resolve(r!)));
  });
}

/** Retries `fn` while the cluster elects a leader (UNAVAILABLE), up to `ms`. */
async function eventually<T>(fn: () => Promise<T>, ms = 15_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if ((e as grpc.ServiceError).code !== grpc.status.UNAVAILABLE || Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.split(' ').pop());
  return sum;
}

describe('write sessions on a 3-process cluster', () => {
  it('a put sent twice to a follower (forwarded) applies once; its retry after a leader kill -9 too', async () => {
    const leaderId = await cluster.waitForLeader();
    const follower = cluster.nodes.find((n) => n.id !== leaderId)!;
    const f = stub(follower.address);
    const session = (seq: number, ackedBelow = 0) => ({ id: 'cluster-test-session-01', seq, ackedBelow });

    const req = { key: '/sess/a', value: Buffer.from('v1'), expectedVersion: 0, session: session(1) };
    const first = await eventually(() => call<PutResponseMsg>(f, 'put', req));
    const second = await call<PutResponseMsg>(f, 'put', req);
    expect(first.succeeded).toBe(true);
    expect(second).toEqual(first);
    const g = await call<GetResponseMsg>(f, 'get', { key: '/sess/a' });
    expect(g.version).toBe(first.version);
    expect(g.revision).toBe(first.revision); // nothing else was applied by the repeat
    expect(await metric(cluster.node(leaderId).metricsPort, 'kvcascade_session_duplicate_writes_total')).toBeGreaterThanOrEqual(1);

    // The answer to this write is "lost" with its leader: the retry goes to whichever node leads next.
    const next = { key: '/sess/a', value: Buffer.from('v2'), expectedVersion: first.version, session: session(2, 2) };
    const applied = await call<PutResponseMsg>(f, 'put', next);
    expect(applied.succeeded).toBe(true);
    await cluster.kill(leaderId);
    await cluster.waitForLeader(20_000, [leaderId]);
    const retried = await eventually(() => call<PutResponseMsg>(f, 'put', next));
    expect(retried).toEqual(applied);
    const after = await eventually(() => call<GetResponseMsg>(f, 'get', { key: '/sess/a' }));
    expect(after.version).toBe(applied.version);
    expect(Buffer.from(after.value!).toString()).toBe('v2');
    // The acknowledged first write is forgotten: its late retry is refused, not applied.
    const late = await call(f, 'put', req).then(() => undefined, (e: grpc.ServiceError) => e);
    expect(late?.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(late?.details).toMatch(/SESSION_EXPIRED/);
  });
});
