/**
 * Extension lambdas' writes under a client session (src/server/lambda-kv.ts, src/extensions/local-lambda-kv.ts,
 * src/extensions/write-session.ts): each logical write gets its own seq under the store's random session, and a write
 * whose attempt failed with an unknown outcome (here: applied, then the answer lost) is retried within its deadline
 * under the same seq, locally or over gRPC, and applied once.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { DeadlineError, UnavailableError, type CallOptions } from '../../src/node/backend.js';
import { localLambdaKv, type LocalStore } from '../../src/extensions/local-lambda-kv.js';
import { randomSessionId, WriteSessionSource } from '../../src/extensions/write-session.js';
import { isRetriableWriteFailure, routedLambdaKv } from '../../src/server/lambda-kv.js';
import { SESSION_ID_PATTERN, ValidationError } from '../../src/statemachine/index.js';
import { MemoryBackend } from './memory-backend.js';
import { serviceFixture, utf8 } from './harness.js';

const { start, defer } = serviceFixture();

/** Makes `backend`'s next `n` writes apply and then fail as if their answer was lost on the way back. */
function loseAnswers(backend: MemoryBackend, n: number, error: () => Error = () => new UnavailableError('connection reset after the write')): { sessions: CallOptions['session'][] } {
  const seen: { sessions: CallOptions['session'][] } = { sessions: [] };
  for (const op of ['put', 'delete', 'trigger'] as const) {
    const orig = (backend[op] as (req: never, o: CallOptions) => Promise<unknown>).bind(backend);
    (backend as unknown as Record<string, unknown>)[op] = async (req: never, o: CallOptions) => {
      seen.sessions.push(o.session);
      const r = await orig(req, o);
      if (n > 0) {
        n--;
        throw error();
      }
      return r;
    };
  }
  return seen;
}

describe('the write session of lambda stores', () => {
  it('hands out one seq per logical write and acknowledges below the oldest unfinished one', () => {
    const src = new WriteSessionSource();
    expect(src.id).toMatch(SESSION_ID_PATTERN);
    expect(new WriteSessionSource().id).not.toBe(src.id);
    const a = src.begin();
    const b = src.begin();
    const c = src.begin();
    expect([a.seq, b.seq, c.seq]).toEqual([1, 2, 3]);
    expect([a.ackedBelow, b.ackedBelow, c.ackedBelow]).toEqual([1, 1, 1]);
    src.end(2);
    expect(src.begin().ackedBelow).toBe(1); // 1 is still in flight
    src.end(1);
    expect(src.begin().ackedBelow).toBe(3);
    src.end(3);
    src.end(4);
    src.end(5);
    expect(src.begin()).toEqual({ id: src.id, seq: 6, ackedBelow: 6 });
    for (let i = 0; i < 5000; i++) src.end(src.begin().seq);
    expect(src.begin().ackedBelow).toBe(6);
    expect(randomSessionId('x-')).toMatch(/^x-[A-Za-z0-9_-]{24}$/);
    expect(() => randomSessionId('not valid ')).toThrow(RangeError);
  });

  it('the local store carries the session: retries by the node reuse the seq, and it applies once', async () => {
    const backend = new MemoryBackend();
    const seen = loseAnswers(backend, 0);
    const kv = localLambdaKv(backend as unknown as LocalStore);
    await kv.put('/l/a', utf8('1'), {}, 1, Date.now() + 1000);
    await kv.delete('/l/a', {}, 1, Date.now() + 1000);
    await kv.trigger('/l/t', utf8('x'), 1, Date.now() + 1000);
    const ids = new Set(seen.sessions.map((s) => s!.id));
    expect(ids.size).toBe(1);
    expect(seen.sessions.map((s) => [s!.seq, s!.ackedBelow])).toEqual([[1, 1], [2, 2], [3, 3]]);
  });

  it('a lambda write whose answer was lost is retried with the same seq and applied once (local attempt)', async () => {
    const backend = new MemoryBackend();
    const seen = loseAnswers(backend, 2);
    const kv = routedLambdaKv(backend, { selfAddress: '127.0.0.1:1' });
    defer(() => kv.close());
    const p = await kv.put('/r/a', utf8('v'), { expectedVersion: 0 }, 1, Date.now() + 5000);
    // Re-applied, the "only if absent" put would have conflicted: the first result came back.
    expect(p).toEqual({ succeeded: true, version: 1, currentVersion: 1 });
    expect(seen.sessions).toHaveLength(3);
    expect(new Set(seen.sessions.map((s) => `${s!.id}/${s!.seq}`)).size).toBe(1);
    expect(backend.sm.revision).toBe(1);
    expect(backend.sm.get('/r/a')!.version).toBe(1);
  });

  it('a write forwarded over gRPC whose answer was lost is retried with the same seq and applied once', async () => {
    const leaderBackend = new MemoryBackend({ nodeId: 1 });
    const leader = await start(leaderBackend);
    const seen = loseAnswers(leaderBackend, 1);
    const local = new MemoryBackend({ nodeId: 2 });
    local.setNotLeader(leader.srv.address, 1);
    const kv = routedLambdaKv(local, { selfAddress: '127.0.0.1:1', sessions: new WriteSessionSource('lambda-test-node-2-xyz') });
    defer(() => kv.close());
    const p = await kv.put('/f/a', utf8('v'), { expectedVersion: 0 }, 2, Date.now() + 5000);
    expect(p).toEqual({ succeeded: true, version: 1, currentVersion: 1 });
    expect(seen.sessions).toEqual([
      { id: 'lambda-test-node-2-xyz', seq: 1, ackedBelow: 1 },
      { id: 'lambda-test-node-2-xyz', seq: 1, ackedBelow: 1 },
    ]);
    expect(leaderBackend.sm.revision).toBe(1);
    // Delete and trigger too; the next write acknowledges the finished ones.
    loseAnswers(leaderBackend, 1);
    expect(await kv.delete('/f/a', { expectedVersion: 1 }, 2, Date.now() + 5000)).toEqual({ succeeded: true, deleted: true });
    await kv.trigger('/f/t', utf8('x'), 2, Date.now() + 5000);
    expect(leaderBackend.sm.revision).toBe(3);
    expect(leaderBackend.lastCallOptions!.session).toEqual({ id: 'lambda-test-node-2-xyz', seq: 3, ackedBelow: 3 });
  });

  it('does not retry a definite refusal, nor past the deadline', async () => {
    expect(isRetriableWriteFailure(new UnavailableError('x'))).toBe(true);
    expect(isRetriableWriteFailure(Object.assign(new Error('x'), { code: grpc.status.UNAVAILABLE, metadata: new grpc.Metadata() }))).toBe(true);
    expect(isRetriableWriteFailure(Object.assign(new Error('x'), { code: grpc.status.FAILED_PRECONDITION }))).toBe(false);
    expect(isRetriableWriteFailure(new ValidationError('SESSION_EXPIRED', 'x'))).toBe(false);
    expect(isRetriableWriteFailure(new DeadlineError())).toBe(false);
    const backend = new MemoryBackend();
    const seen = loseAnswers(backend, 100);
    const kv = routedLambdaKv(backend, { selfAddress: '127.0.0.1:1' });
    defer(() => kv.close());
    const t0 = Date.now();
    await expect(kv.put('/d/a', utf8('v'), {}, 1, t0 + 150)).rejects.toBeInstanceOf(UnavailableError);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(seen.sessions.length).toBeGreaterThan(1);
    expect(seen.sessions.length).toBeLessThanOrEqual(8);
    expect(backend.sm.revision).toBe(1);
    const refused = new MemoryBackend();
    const refusals = loseAnswers(refused, 5, () => new ValidationError('INVALID_ARGUMENT', 'no'));
    const kv2 = routedLambdaKv(refused, { selfAddress: '127.0.0.1:1' });
    defer(() => kv2.close());
    await expect(kv2.put('/d/b', utf8('v'), {}, 1, Date.now() + 5000)).rejects.toThrow(/no/);
    expect(refusals.sessions).toHaveLength(1);
  });

  it('lists and reads through the coordinator, never over gRPC to its own node', async () => {
    const backend = new MemoryBackend();
    // Nothing listens at the self address: a call to it would fail.
    const kv = routedLambdaKv(backend, { selfAddress: '127.0.0.1:1' });
    defer(() => kv.close());
    for (const k of ['/ls/a', '/ls/b', '/ls/c']) await kv.put(k, utf8(k), {}, 1, Date.now() + 5000);
    const page = await kv.list('/ls/', { limit: 2 }, Date.now() + 5000);
    expect(page.items.map((i) => i.key)).toEqual(['/ls/a', '/ls/b']);
    expect(page.nextAfter).toBe('/ls/b');
    const rest = await kv.list('/ls/', { after: page.nextAfter!, keysOnly: true }, Date.now() + 5000);
    expect(rest.items.map((i) => [i.key, 'value' in i])).toEqual([['/ls/c', false]]);
    expect(rest.nextAfter).toBeUndefined();
    expect(await kv.get('/ls/a', {}, Date.now() + 5000)).toMatchObject({ found: true, value: utf8('/ls/a') });
  });
});
