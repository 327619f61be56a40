/**
 * Write sessions through the gRPC KV service (src/server/kv-service.ts over the in-memory backend):
 * the `session` field of Put, Delete, Trigger, Txn and pipeline writes reaches the backend (also
 * when a follower forwards the request), a write sent twice with one session applies once, bad
 * sessions are INVALID_ARGUMENT and a forgotten seq is FAILED_PRECONDITION.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import type {
  DeleteResponseMsg,
  GetResponseMsg,
  PipelineResponseMsg,
  PutResponseMsg,
  TriggerResponseMsg,
  TxnResponseMsg,
} from '../../src/wire/proto.js';
import { MemoryBackend } from './memory-backend.js';
import { deferred, expectError, ok, serviceFixture, unary, utf8 } from './harness.js';

const { start } = serviceFixture();
const ID = 'service-session-000001';
const session = (seq: number, ackedBelow = 0) => ({ id: ID, seq, ackedBelow });

describe('write sessions over gRPC', () => {
  it('a Put sent twice with the same session returns the same version, and the key advanced once', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const req = { key: 'k', value: utf8('v'), session: session(1) };
    const first = ok(await unary<object, PutResponseMsg>(kv, 'put', req));
    const second = ok(await unary<object, PutResponseMsg>(kv, 'put', req));
    expect(first).toMatchObject({ succeeded: true, version: 1, revision: 1 });
    expect(second).toEqual(first);
    expect(backend.calls.put).toBe(2);
    expect(backend.lastCallOptions!.session).toEqual(session(1));
    const g = ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'k' }));
    expect(g).toMatchObject({ found: true, version: 1, revision: 1 });
    // Without a session, as before: every Put applies.
    ok(await unary(kv, 'put', { key: 'k', value: utf8('v') }));
    expect(backend.lastCallOptions!.session).toBeUndefined();
    expect(ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'k' })).version).toBe(2);
  });

  it('deduplicates Delete, Trigger and Txn too', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    ok(await unary(kv, 'put', { key: 'a', value: utf8('1') }));
    const del = { key: 'a', session: session(1) };
    const d1 = ok(await unary<object, DeleteResponseMsg>(kv, 'delete', del));
    expect(ok(await unary<object, DeleteResponseMsg>(kv, 'delete', del))).toEqual(d1);
    expect(d1).toMatchObject({ deleted: true, revision: 2 });
    const trig = { key: 't', value: utf8('x'), session: session(2) };
    const t1 = ok(await unary<object, TriggerResponseMsg>(kv, 'trigger', trig));
    expect(ok(await unary<object, TriggerResponseMsg>(kv, 'trigger', trig))).toEqual(t1);
    const txn = { compares: [{ key: 'b', version: 0 }], writes: [{ put: { key: 'b', value: utf8('2') } }], session: session(3, 2) };
    const x1 = ok(await unary<object, TxnResponseMsg>(kv, 'txn', txn));
    expect(x1.succeeded).toBe(true);
    // Re-applied, the compare would now fail: the first answer comes back instead.
    expect(ok(await unary<object, TxnResponseMsg>(kv, 'txn', txn))).toEqual(x1);
    expect(backend.sm.revision).toBe(4);
  });

  it('refuses bad sessions with INVALID_ARGUMENT, and a forgotten seq with FAILED_PRECONDITION', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const bad = [
      { id: 'short', seq: 1, ackedBelow: 0 },
      { id: 'x'.repeat(65), seq: 1, ackedBelow: 0 },
      { id: 'has spaces in the id!', seq: 1, ackedBelow: 0 },
      { id: ID, seq: 0, ackedBelow: 0 },
      { id: ID, seq: 3, ackedBelow: 4 },
      { seq: 1 },
    ];
    for (const s of bad) {
      const out = await unary(kv, 'put', { key: 'k', value: utf8('v'), session: s });
      expect(expectError(out, grpc.status.INVALID_ARGUMENT).details).toMatch(/session/);
    }
    expectError(await unary(kv, 'delete', { key: 'k', session: { id: ID } }), grpc.status.INVALID_ARGUMENT);
    // Inside a txn the session belongs on the TxnRequest, not on its writes.
    const inner = await unary(kv, 'txn', { writes: [{ put: { key: 'k', value: utf8('v'), session: session(1) } }] });
    expect(expectError(inner, grpc.status.INVALID_ARGUMENT).details).toMatch(/session must be unset in a txn/);
    expect(backend.sm.revision).toBe(0);
    ok(await unary(kv, 'put', { key: 'k', value: utf8('1'), session: session(1) }));
    ok(await unary(kv, 'put', { key: 'k', value: utf8('2'), session: session(2, 2) }));
    const late = await unary(kv, 'put', { key: 'k', value: utf8('1'), session: session(1) });
    expect(expectError(late, grpc.status.FAILED_PRECONDITION).details).toMatch(/SESSION_EXPIRED.*may have applied/);
    expect(backend.sm.revision).toBe(2);
  });

  it('pipeline writes carry their session', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const pl = kv.pipeline();
    const got = new Map<number, PipelineResponseMsg>();
    const done = deferred();
    pl.on('data', (m: PipelineResponseMsg) => {
      got.set(m.id!, m);
      if (got.size === 3) done.resolve();
    });
    pl.on('error', () => undefined);
    pl.write({ id: 1, put: { key: 'p', value: utf8('v'), session: session(7) } });
    pl.write({ id: 2, put: { key: 'p', value: utf8('v'), session: session(7) } });
    pl.write({ id: 3, delete: { key: 'p', session: session(0) } });
    await done.promise;
    pl.end();
    expect(got.get(1)!.put).toEqual(got.get(2)!.put);
    expect(got.get(1)!.put).toMatchObject({ succeeded: true, version: 1 });
    expect(got.get(3)!.error).toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    expect(backend.sm.revision).toBe(1);
  });

  it('a follower forwards the session with the request: sent twice, applied once', async () => {
    const leaderBackend = new MemoryBackend({ nodeId: 1 });
    const followerBackend = new MemoryBackend({ nodeId: 2 });
    const leader = await start(leaderBackend);
    const follower = await start(followerBackend);
    followerBackend.setNotLeader(leader.srv.address, 1);
    const req = { key: 'f', value: utf8('v'), expectedVersion: 0, session: session(5, 3) };
    const a = ok(await unary<object, PutResponseMsg>(follower.kv, 'put', req));
    const b = ok(await unary<object, PutResponseMsg>(follower.kv, 'put', req));
    expect(b).toEqual(a);
    expect(a).toMatchObject({ succeeded: true, version: 1 });
    expect(leaderBackend.calls.put).toBe(2);
    expect(leaderBackend.lastCallOptions!.session).toEqual(session(5, 3));
    expect(leaderBackend.sm.revision).toBe(1);
    const t = { compares: [], writes: [{ delete: { key: 'f' } }], session: session(6, 3) };
    const x = ok(await unary<object, TxnResponseMsg>(follower.kv, 'txn', t));
    expect(ok(await unary<object, TxnResponseMsg>(follower.kv, 'txn', t))).toEqual(x);
    expect(leaderBackend.lastCallOptions!.session).toEqual(session(6, 3));
    expect(leaderBackend.sm.revision).toBe(2);
  });
});
