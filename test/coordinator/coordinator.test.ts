/**
 * The coordinator on its own (src/coordinator): routing to a shard's leader through one stub
 * pool, the leader cache, bounded forwarding with suspect targets and the hop limit, and the
 * lambda store over the same coordinator.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { Coordinator, type RouteContext } from '../../src/coordinator/coordinator.js';
import { OpStatus } from '../../src/coordinator/op-status.js';
import { NodeStubs } from '../../src/coordinator/node-stubs.js';
import { routedLambdaKv } from '../../src/server/lambda-kv.js';
import { MAX_FORWARD_HOPS } from '../../src/wire/metadata.js';
import { MemoryBackend } from '../server/memory-backend.js';
import { captureLog, serviceFixture, utf8 } from '../server/harness.js';

const { start, defer } = serviceFixture();

const ctx = (over: Partial<RouteContext> = {}): RouteContext => ({ hops: 0, lambdaHops: 0, deadlineMs: Date.now() + 5000, admin: false, ...over });

async function statusOf(p: Promise<unknown>): Promise<OpStatus> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(OpStatus);
    return e as OpStatus;
  }
  throw new Error('expected a failure');
}

describe('Coordinator', () => {
  it('serves locally when it leads, forwards to the leader otherwise, and caches that leader per shard', async () => {
    const leaderBackend = new MemoryBackend({ nodeId: 1 });
    const leader = await start(leaderBackend);
    const local = new MemoryBackend({ nodeId: 2 });
    const stubs = new NodeStubs();
    defer(() => stubs.close());
    const coord = new Coordinator(local, { selfAddress: '127.0.0.1:1', stubs, log: captureLog() });
    defer(() => coord.close());

    const here = await coord.run('put', { key: '/c/a', value: utf8('1') }, ctx());
    expect(here.response.succeeded).toBe(true);
    expect(local.sm.revision).toBe(1);
    expect(coord.leaderHintOf(here.group)).toBe('127.0.0.1:1');

    local.setNotLeader(leader.srv.address, 1);
    const there = await coord.run('put', { key: '/c/b', value: utf8('2') }, ctx());
    expect(there.response.succeeded).toBe(true);
    expect(there.leader).toBe(leader.srv.address);
    expect(leaderBackend.sm.revision).toBe(1);
    expect(coord.leaderHintOf(there.group)).toBe(leader.srv.address);

    // The lambda store over the same coordinator routes the same way; closing it leaves the coordinator open.
    const kv = routedLambdaKv(coord);
    await kv.put('/c/c', utf8('3'), {}, 1, Date.now() + 5000);
    expect(leaderBackend.sm.get('/c/c')?.version).toBeGreaterThan(0);
    expect((await kv.list('/c/', {}, Date.now() + 5000)).items.map((i) => i.key)).toEqual(['/c/b', '/c/c']);
    kv.close();
    expect(coord.closed).toBe(false);
    expect(stubs.isClosed).toBe(false);
  });

  it('stops forwarding at the hop limit (retry-safe, naming the leader)', async () => {
    const local = new MemoryBackend({ nodeId: 2 });
    local.setNotLeader('127.0.0.1:9', 1);
    const coord = new Coordinator(local, { selfAddress: '127.0.0.1:1', log: captureLog() });
    defer(() => coord.close());
    const s = await statusOf(coord.run('get', { key: '/h/a' }, ctx({ hops: MAX_FORWARD_HOPS })));
    expect(s.code).toBe(grpc.status.UNAVAILABLE);
    expect(s.fields).toMatchObject({ retrySafe: true, leader: '127.0.0.1:9' });
    expect(s.message).toMatch(/forwarded request \(2 hops\) reached a non-leader/);
  });

  it('a target that lets a forwarded attempt time out is suspect: later calls are answered at once, retry-safe', async () => {
    const leaderBackend = new MemoryBackend({ nodeId: 1 });
    const leader = await start(leaderBackend);
    leaderBackend.before = () => new Promise((r) => setTimeout(r, 1000));
    const local = new MemoryBackend({ nodeId: 2 });
    local.setNotLeader(leader.srv.address, 1);
    const coord = new Coordinator(local, { selfAddress: '127.0.0.1:1', forwardAttemptMs: 100, log: captureLog() });
    defer(() => coord.close());
    const first = await statusOf(coord.run('put', { key: '/s/a', value: utf8('1') }, ctx()));
    expect(first.code).toBe(grpc.status.UNAVAILABLE);
    expect(first.fields.retrySafe).toBeFalsy(); // it may have reached the leader
    const t0 = Date.now();
    const second = await statusOf(coord.run('put', { key: '/s/b', value: utf8('2') }, ctx()));
    expect(Date.now() - t0).toBeLessThan(100);
    expect(second.code).toBe(grpc.status.UNAVAILABLE);
    expect(second.fields.retrySafe).toBe(true);
    expect(second.message).toMatch(/is not answering/);
  });

  it('classifies the store errors by type, keeping the error as the cause', async () => {
    const backend = new MemoryBackend();
    const coord = new Coordinator(backend, { log: captureLog() });
    defer(() => coord.close());
    const s = await statusOf(coord.run('put', { key: '/_sys/x', value: utf8('1') }, ctx()));
    expect(s.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(s.cause).toBeInstanceOf(Error);
    coord.close();
    const closed = await statusOf(coord.run('get', { key: '/a' }, ctx()));
    expect(closed.fields.retrySafe).toBe(true);
  });
});
