/** Tests of KvClient against loopback servers over the in-memory backend: calls, leader discovery, failover, safe retries, self-resuming watches and pipelining. */
import { afterEach, describe, expect, it } from 'vitest';
import { CompactedError, KvClient, KvError, type KvWatchBatch, type KvWatchEvent } from '../../src/client/index.js';
import { NotLeaderError, OverloadedError, UnavailableError } from '../../src/node/backend.js';
import type { RunningKvServer } from '../../src/server/kv-service.js';
import { MemoryBackend } from '../server/memory-backend.js';
import { deferred, serve, text, utf8 } from '../server/harness.js';
import { MAX_PIPELINE_BATCH } from '../../src/wire/proto.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function server(backend = new MemoryBackend(), port = 0, opts: Parameters<typeof serve>[1] = {}): Promise<RunningKvServer> {
  const s = await serve(backend, opts, port);
  cleanups.push(() => s.close(0));
  return s;
}

function client(endpoints: string[], opts: Partial<ConstructorParameters<typeof KvClient>[0]> = {}): KvClient {
  const c = new KvClient({ endpoints, defaultDeadlineMs: 5_000, ...opts });
  cleanups.push(() => c.close());
  return c;
}

/** An address nothing listens on (a server that was started and stopped). */
async function deadAddress(): Promise<string> {
  const s = await serve(new MemoryBackend());
  await s.close(0);
  return s.address;
}

async function rejection(p: Promise<unknown>): Promise<KvError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(KvError);
    return e as KvError;
  }
  throw new Error('expected a rejection');
}

/** Reads batches until `n` events arrived (events only), returning them. */
async function takeEvents(it: AsyncIterator<KvWatchBatch>, n: number, onBatch?: (b: KvWatchBatch) => void): Promise<KvWatchEvent[]> {
  const out: KvWatchEvent[] = [];
  while (out.length < n) {
    const r = await it.next();
    if (r.done) throw new Error(`watch ended after ${out.length} events`);
    onBatch?.(r.value);
    out.push(...r.value.events);
  }
  return out;
}

const show = (e: KvWatchEvent) => `${e.type} ${e.key}=${text(e.value)}@${e.revision}`;

describe('KvClient calls', () => {
  it('puts, gets, deletes and lists, with string or byte values', async () => {
    const s = await server();
    const c = client([s.address]);
    const p = await c.put('a', 'one');
    expect(p).toMatchObject({ succeeded: true, version: 1, revision: 1, currentVersion: 0 });
    await c.put('b', utf8('two'));
    const g = await c.get('a');
    expect(g).toMatchObject({ found: true, version: 1, revision: 2 });
    expect(g.value).toBeInstanceOf(Uint8Array);
    expect(text(g.value)).toBe('one');
    expect(await c.get('nope', { consistency: 'serializable' })).toEqual({ found: false, value: new Uint8Array(0), version: 0, timestampMs: 0, revision: 2 });
    expect(text((await c.get('a', { atVersion: 1 })).value)).toBe('one');

    const conflict = await c.put('a', 'x', { expectedVersion: 0, returnCurrentValue: true });
    expect(conflict).toMatchObject({ succeeded: false, currentVersion: 1 });
    expect(text(conflict.currentValue)).toBe('one');

    for (let i = 0; i < 5; i++) await c.put(`l/${i}`, String(i));
    const page = await c.list('l/', { limit: 2, keysOnly: true });
    expect(page.items.map((i) => i.key)).toEqual(['l/0', 'l/1']);
    expect(page.nextPageToken).not.toBe('');
    const all: string[] = [];
    for await (const it of c.listAll('l/', { limit: 2 })) all.push(`${it.key}=${text(it.value)}`);
    expect(all).toEqual(['l/0=0', 'l/1=1', 'l/2=2', 'l/3=3', 'l/4=4']);

    expect(await c.delete('a', { expectedVersion: 99 })).toMatchObject({ succeeded: false, deleted: false, currentVersion: 1 });
    expect(await c.delete('a')).toMatchObject({ succeeded: true, deleted: true });
    expect((await c.get('a')).found).toBe(false);
    const st = await c.status();
    expect(st.groups[0]).toMatchObject({ group: 1, leader: 1, role: 'leader' });
    expect((await c.status(s.address)).nodeId).toBe(1);
  });

  it('triggers without storing, with string or byte values', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([s.address]);
    await c.put('k', 'stored');
    const t = await c.trigger('k', 'fired');
    expect(t.revision).toBe(2);
    expect(t.timestampMs).toBeGreaterThan(0);
    expect(Object.keys(t).sort()).toEqual(['revision', 'timestampMs']);
    expect(await c.trigger('absent', utf8('bytes'), { deadlineMs: 1_000 })).toMatchObject({ revision: 3 });
    expect(await c.get('k')).toMatchObject({ found: true, version: 1, revision: 3 });
    expect(text((await c.get('k')).value)).toBe('stored');
    expect((await c.get('absent')).found).toBe(false);
    expect(backend.calls.trigger).toBe(2);
    expect(c.leader).toBe(s.address);
  });

  it('rejects invalid requests locally with INVALID_ARGUMENT', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([s.address]);
    for (const p of [
      c.put('', 'v'),
      c.put('a\0', 'v'),
      c.put('k', new Uint8Array(1024 * 1024 + 1)),
      c.put('k', 'v', { expectedVersion: -1 }),
      c.get('x'.repeat(5000)),
      c.get('k', { atVersion: 1, atTimeMs: 1 }),
      c.delete('\ud800'),
      c.trigger('', 'v'),
      c.trigger('k', new Uint8Array(1024 * 1024 + 1)),
      c.trigger('k', 'v', { deadlineMs: 0 }),
      c.list('p', { pageToken: '!!' }),
    ]) {
      const e = await rejection(p);
      expect(e.code).toBe('INVALID_ARGUMENT');
    }
    expect(backend.calls.put + backend.calls.get + backend.calls.delete + backend.calls.trigger).toBe(0);
    // Page tokens are opaque: the server judges them (before reaching the backend).
    expect(backend.calls.list).toBe(0);
  });

  it('throws CompactedError for a read at a compacted version, and DEADLINE_EXCEEDED on timeout', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([s.address]);
    for (let i = 0; i < 5; i++) await c.put('k', String(i));
    backend.compact(4);
    const e = await rejection(c.get('k', { atVersion: 2 }));
    expect(e).toBeInstanceOf(CompactedError);
    expect((e as CompactedError).compactRevision).toBe(4);

    const gate = deferred();
    backend.before = () => gate.promise;
    const slow = await rejection(c.put('k', 'v', { deadlineMs: 200 }));
    expect(slow.code).toBe('DEADLINE_EXCEEDED');
    gate.resolve();
  });

  it('fails with CANCELLED after close', async () => {
    const s = await server();
    const c = client([s.address]);
    await c.put('k', 'v');
    c.close();
    expect((await rejection(c.get('k'))).code).toBe('CANCELLED');
  });
});

describe('leader discovery and failover', () => {
  it('learns the leader from kv-leader and then calls it directly', async () => {
    const leaderBackend = new MemoryBackend();
    const followerBackend = new MemoryBackend({ nodeId: 2 });
    const leader = await server(leaderBackend);
    const follower = await server(followerBackend);
    followerBackend.setNotLeader(leader.address, 1);
    // Only the follower is configured: the leader is found through it.
    const c = client([follower.address]);
    await c.put('k', 'v0');
    expect(c.leader).toBe(leader.address);
    expect(followerBackend.calls.put).toBe(1);
    for (let i = 1; i <= 5; i++) await c.put('k', `v${i}`);
    expect(text((await c.get('k')).value)).toBe('v5');
    expect(followerBackend.calls.put).toBe(1);
    expect(followerBackend.calls.get).toBe(0);
    expect(leaderBackend.calls.put).toBe(6);
    await c.trigger('k', 't');
    expect(followerBackend.calls.trigger).toBe(0);
    expect(leaderBackend.calls.trigger).toBe(1);
  });

  it('fails over to the next endpoint when a server stops', async () => {
    const backend = new MemoryBackend(); // two "replicas" sharing one state
    const a = await server(backend);
    const b = await server(backend);
    const c = client([a.address, b.address]);
    await c.put('k', 'v1');
    expect(c.leader).toBe(a.address);
    await a.close(0);
    // The write never reached a server (connection refused), so it is retried on b.
    await c.put('k', 'v2');
    expect(text((await c.get('k')).value)).toBe('v2');
    expect(c.leader).toBe(b.address);
    expect(backend.sm.revision).toBe(2);
  });

  it('retries a write on a dead endpoint (never reached) and on retry-safe errors, but not otherwise (without a session)', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([await deadAddress(), s.address], { sessions: false });
    await c.put('a', '1');
    expect(backend.calls.put).toBe(1);

    const failures: Error[] = [];
    backend.before = (op) => {
      const f = failures.shift();
      if (f && op !== 'status') throw f;
    };
    // Not executed (no leader / overloaded): retried, applied once.
    failures.push(new NotLeaderError(0, undefined), new OverloadedError('busy'));
    const ok = await c.put('b', '2');
    expect(ok.succeeded).toBe(true);
    expect(backend.calls.put).toBe(4);
    expect(backend.sm.revision).toBe(2);

    // Unknown outcome: a write is not retried...
    failures.push(new UnavailableError('commit not confirmed'));
    const e = await rejection(c.put('c', '3'));
    expect(e.code).toBe('UNAVAILABLE');
    expect(e.retrySafe).toBe(false);
    expect(backend.calls.put).toBe(5);
    // ...but a read is.
    failures.push(new UnavailableError('read index failed'));
    expect((await c.get('b')).found).toBe(true);
    expect(backend.calls.get).toBe(2);

    // A trigger is a write: retried when not executed, not when its outcome is unknown.
    failures.push(new NotLeaderError(0, undefined));
    expect((await c.trigger('t', 'x')).revision).toBe(3);
    expect(backend.calls.trigger).toBe(2);
    failures.push(new UnavailableError('commit not confirmed'));
    const te = await rejection(c.trigger('t', 'y'));
    expect(te.code).toBe('UNAVAILABLE');
    expect(te.retrySafe).toBe(false);
    expect(backend.calls.trigger).toBe(3);
    expect(backend.sm.revision).toBe(3);

    // maxRetries bounds retries even of safe failures.
    const strict = client([s.address], { maxRetries: 0 });
    failures.push(new NotLeaderError(0, undefined));
    const e2 = await rejection(strict.put('d', '4'));
    expect(e2.code).toBe('UNAVAILABLE');
    expect(e2.retrySafe).toBe(true);
  });

  it('gives up at the deadline when no endpoint is reachable', async () => {
    const c = client([await deadAddress(), await deadAddress()], { defaultDeadlineMs: 300 });
    const t0 = Date.now();
    const e = await rejection(c.get('k'));
    // UNAVAILABLE from the last refused connection, or DEADLINE_EXCEEDED if the deadline cut an attempt short.
    expect(['UNAVAILABLE', 'DEADLINE_EXCEEDED']).toContain(e.code);
    expect(Date.now() - t0).toBeLessThan(3_000);
  });
});

describe('watch', () => {
  it('delivers changes after the current revision, in order, with progress notifications', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([s.address]);
    await c.put('w/before', 'x');
    const w = c.watch('w/', { progressIntervalMs: 20 });
    const first = await w.next(); // the initial progress notification: the watch is established
    expect(first.value).toMatchObject({ progress: true, revision: 1, events: [] });
    await c.put('w/a', '1');
    await c.put('other', 'x');
    await c.delete('w/a');
    const events = await takeEvents(w, 2);
    expect(events.map(show)).toEqual(['put w/a=1@2', 'delete w/a=@4']);
    let progress: KvWatchBatch | undefined;
    while (!progress) {
      const r = await w.next();
      if (r.value?.progress && r.value.revision === 4) progress = r.value;
    }
    expect(w.revision).toBe(4);
    w.close();
    expect((await w.next()).done).toBe(true);
  });

  it('delivers trigger puts as trigger events with their value, in revision order with other changes', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([s.address]);
    await c.put('t/k', 'stored');
    const w = c.watch('t/');
    expect((await w.next()).value).toMatchObject({ progress: true, revision: 1 });
    const t = await c.trigger('t/k', 'fired');
    await c.trigger('elsewhere', 'x');
    await c.put('t/k', 'new');
    await c.trigger('t/k', utf8('again'));
    const events = await takeEvents(w, 3);
    expect(events.map(show)).toEqual([`trigger t/k=fired@${t.revision}`, 'put t/k=new@4', 'trigger t/k=again@5']);
    expect(events[0]!.timestampMs).toBe(t.timestampMs);
    expect(text((await c.get('t/k', { atVersion: t.revision })).value)).toBe('stored');
    w.close();
    // A watch resumed from history sees them too.
    const h = c.watch('t/', { fromRevision: 2 });
    expect((await takeEvents(h, 3)).map(show)).toEqual(['trigger t/k=fired@2', 'put t/k=new@4', 'trigger t/k=again@5']);
    h.close();
  });

  it('resumes after the server cancels it as slow, without gaps or duplicates', async () => {
    const backend = new MemoryBackend({ maxWatchBuffer: 3 });
    const s = await server(backend);
    const c = client([s.address]);
    const w = c.watch('', { fromRevision: 1 });
    await c.put('k0', 'v');
    const ev = await takeEvents(w, 1);
    // Ten revisions at once overflow the backend's buffer: the watch is cancelled and resumed.
    for (let i = 1; i <= 10; i++) backend.apply({ type: 'put', key: `k${i}`, value: utf8('v') });
    ev.push(...(await takeEvents(w, 10)));
    expect(ev.map((e) => e.revision)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(backend.calls.watch).toBeGreaterThanOrEqual(2);
    w.close();
  });

  it('resumes after the server restarts on the same port', async () => {
    const backend = new MemoryBackend();
    const s1 = await serve(backend);
    const c = client([s1.address]);
    const w = c.watch('r/', { fromRevision: 1 });
    backend.apply({ type: 'put', key: 'r/1', value: utf8('a') });
    const got = await takeEvents(w, 1);
    await s1.close(0);
    backend.apply({ type: 'put', key: 'r/2', value: utf8('b') });
    backend.apply({ type: 'put', key: 'r/3', value: utf8('c') });
    await server(backend, s1.port);
    got.push(...(await takeEvents(w, 2)));
    expect(got.map(show)).toEqual(['put r/1=a@1', 'put r/2=b@2', 'put r/3=c@3']);
    w.close();
  });

  it('moves to another endpoint when its node fails', async () => {
    const backend = new MemoryBackend();
    const a = await serve(backend);
    const b = await server(backend);
    const c = client([a.address, b.address]);
    const w = c.watch('f/', { fromRevision: 1 });
    backend.apply({ type: 'put', key: 'f/1', value: utf8('a') });
    const got = await takeEvents(w, 1);
    await a.close(0);
    backend.apply({ type: 'put', key: 'f/2', value: utf8('b') });
    got.push(...(await takeEvents(w, 1)));
    expect(got.map((e) => e.key)).toEqual(['f/1', 'f/2']);
    w.close();
  });

  it('throws CompactedError when the start revision was compacted', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([s.address]);
    for (let i = 0; i < 5; i++) await c.put('k', String(i));
    backend.compact(4);
    const w = c.watch('', { fromRevision: 2 });
    const e = await rejection(w.next());
    expect(e).toBeInstanceOf(CompactedError);
    expect((e as CompactedError).compactRevision).toBe(4);
    expect((await w.next()).done).toBe(true);
  });

  it('ends when its AbortSignal fires, and when the loop is left', async () => {
    const s = await server();
    const c = client([s.address]);
    const ac = new AbortController();
    const w = c.watch('', { signal: ac.signal });
    await w.next();
    const pending = w.next();
    ac.abort();
    expect((await pending).done).toBe(true);

    const w2 = c.watch('');
    for await (const b of w2) {
      expect(b.progress).toBe(true);
      break;
    }
    expect((await w2.next()).done).toBe(true);
    expect(() => c.watch('a\0')).toThrow(KvError);
  });
});

describe('lone writes on the stream', () => {
  /** Two servers over one backend; the next put (after a warm-up put) waits at a gate until released. */
  async function breakingStream(sessions: boolean) {
    const backend = new MemoryBackend();
    const a = await serve(backend);
    const b = await server(backend);
    const c = client([a.address, b.address], { sessions, initialBackoffMs: 5 });
    await c.put('warm', 'x');
    expect(c.leader).toBe(a.address);
    const gate = deferred();
    const held = deferred();
    const seen: unknown[] = [];
    backend.before = async (op) => {
      if (op !== 'put') return;
      seen.push(backend.lastCallOptions?.session);
      if (backend.calls.put === 2) {
        held.resolve();
        await gate.promise;
      }
    };
    return { backend, a, b, c, gate, held, seen };
  }

  it('a session write whose stream breaks mid-op is retried elsewhere with the same session id and seq, and applied once', async () => {
    const { backend, a, b, c, gate, held, seen } = await breakingStream(true);
    const put = c.put('w', 'v');
    await held.promise;
    await a.close(0); // the node dies with the put in flight on its stream
    const r = await put;
    expect(r.succeeded).toBe(true);
    expect(c.leader).toBe(b.address);
    expect(backend.calls.put).toBe(3);
    expect(seen).toHaveLength(2);
    expect(seen[0]).toMatchObject({ seq: expect.any(Number) });
    expect(seen[1]).toEqual(seen[0]);
    gate.resolve(); // the first attempt reaches the state machine after all: answered from the session
    await new Promise((res) => setTimeout(res, 20));
    expect(backend.sm.revision).toBe(2);
    expect(text((await c.get('w')).value)).toBe('v');
  });

  it('a write without a session whose stream breaks mid-op fails UNAVAILABLE (outcome unknown) and is not sent again', async () => {
    const { backend, a, c, gate, held } = await breakingStream(false);
    const put = rejection(c.put('w', 'v'));
    await held.promise;
    await a.close(0);
    const e = await put;
    expect(e.code).toBe('UNAVAILABLE');
    expect(e.retrySafe).toBe(false);
    expect(e.message).toMatch(/ended .* before the put was answered/);
    expect(backend.calls.put).toBe(2);
    gate.resolve();
  });

  it('a per-op error carries the unary trailers: kv-reason, retry safety and the leader (KvError.reason as for a unary call)', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([s.address], { maxRetries: 2, initialBackoffMs: 5 });
    const u = client([s.address], { maxRetries: 2, initialBackoffMs: 5, batching: false });
    await c.put('warm', 'x');
    await u.put('warm', 'x');
    backend.before = (op) => {
      if (op === 'put') throw new OverloadedError('busy');
    };
    const before = backend.calls.put;
    const streamed = await rejection(c.put('k', 'v'));
    const afterStreamed = backend.calls.put;
    const unary = await rejection(u.put('k', 'v'));
    // The same classification and the same attempt bound (1 + maxRetries) on both paths.
    expect({ code: streamed.code, reason: streamed.reason, retrySafe: streamed.retrySafe }).toEqual({ code: unary.code, reason: unary.reason, retrySafe: unary.retrySafe });
    expect(streamed.reason).toBe('OVERLOADED');
    expect(streamed.retrySafe).toBe(true);
    expect(afterStreamed - before).toBe(3);
    expect(backend.calls.put - afterStreamed).toBe(3);
  });
});

describe('batched default path', () => {
  it('keeps the unary guarantees: per-call deadlines, retry of retry-safe failures, per-call errors, admin token', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend, 0, { adminToken: 'secret-token-0123456789' });
    const c = client([s.address], { defaultDeadlineMs: 5_000, initialBackoffMs: 5 });
    await c.put('warm', 'x');
    // A slow op times out on its own deadline; the others of the batch complete.
    const gate = deferred();
    backend.before = async (op, req) => {
      if (op === 'put' && (req as { key?: string }).key === 'slow') await gate.promise;
    };
    const slow = rejection(c.put('slow', 'x', { deadlineMs: 300 }));
    const t0 = Date.now();
    const fast = await Promise.all(Array.from({ length: 20 }, (_, i) => c.put(`f${i}`, 'y')));
    expect(fast.every((r) => r.succeeded)).toBe(true);
    const e = await slow;
    expect(e.code).toBe('DEADLINE_EXCEEDED');
    expect(Date.now() - t0).toBeLessThan(2_000);
    gate.resolve();
    // An overloaded server (RESOURCE_EXHAUSTED, retry-safe) is retried, as for a unary call.
    let overloads = 0;
    backend.before = (op) => {
      if (op === 'put' && overloads < 5) {
        overloads++;
        throw new OverloadedError('busy');
      }
    };
    const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => c.put(`o${i}`, 'z')));
    expect(rs.every((r) => r.succeeded)).toBe(true);
    expect(overloads).toBe(5);
    backend.before = undefined;
    // Per-call errors reject only that call.
    const mixed = await Promise.allSettled([c.put('ok1', 'v'), c.get('/_ext/x'), c.put('ok2', 'v')]);
    expect(mixed.map((m) => m.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(((mixed[1] as PromiseRejectedResult).reason as KvError).code).toBe('PERMISSION_DENIED');
    // Concurrent reads of dead letters carry the admin token on the stream.
    const admin = client([s.address], { adminToken: 'secret-token-0123456789' });
    const reads = await Promise.all([admin.get('/_dlq/e/1'), admin.get('/_dlq/e/2'), admin.get('/_dlq/e/3')]);
    expect(reads.every((r) => !r.found)).toBe(true);
    const denied = await Promise.allSettled([c.get('/_dlq/e/1'), c.get('/_dlq/e/2')]);
    expect(denied.every((d) => d.status === 'rejected' && (d.reason as KvError).code === 'PERMISSION_DENIED')).toBe(true);
  });
  it('keeps the order of concurrent calls across batch messages (more calls than one batch holds)', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([s.address], { defaultDeadlineMs: 60_000 });
    await c.put('warm', 'x'); // the stream is open and its headers (batching on) arrived
    const n = 2 * MAX_PIPELINE_BATCH + 88;
    const results = await Promise.all(Array.from({ length: n }, (_, i) => c.put('same', String(i))));
    expect(results.every((r) => r.succeeded)).toBe(true);
    // Applied in call order: revisions increase with the call index, and the last call's value is the one stored.
    const revs = results.map((r) => r.revision);
    expect(revs).toEqual([...revs].sort((a, b) => a - b));
    expect(new Set(revs).size).toBe(n);
    expect(text((await c.get('same')).value)).toBe(String(n - 1));
  });
});

describe('pipeline', () => {
  it('multiplexes 10 000 ops in flight on one stream', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    // A generous per-op deadline: this test is about multiplexing, and CI machines can be slow.
    const c = client([s.address], { defaultDeadlineMs: 120_000 });
    const p = c.pipeline();
    const puts = Array.from({ length: 10_000 }, (_, i) => p.put(`p/${String(i).padStart(5, '0')}`, String(i)));
    expect(p.inFlight).toBe(10_000);
    const results = await Promise.all(puts);
    expect(results.every((r) => r.succeeded)).toBe(true);
    expect(new Set(results.map((r) => r.revision)).size).toBe(10_000);
    expect(backend.sm.revision).toBe(10_000);
    const gets = await Promise.all(Array.from({ length: 1_000 }, (_, i) => p.get(`p/${String(i * 7).padStart(5, '0')}`)));
    expect(gets.every((g, i) => text(g.value) === String(i * 7))).toBe(true);
    const dels = await Promise.all([p.delete('p/00000'), p.delete('p/00001', { expectedVersion: 1 })]);
    expect(dels.map((d) => [d.deleted, d.currentVersion])).toEqual([[true, 0], [false, 2]]);
    const triggers = await Promise.all([p.trigger('p/00002', 'a'), p.trigger('p/new', utf8('b'))]);
    expect(triggers.map((t) => t.revision)).toEqual([10_002, 10_003]);
    expect(text((await p.get('p/00002')).value)).toBe('2');
    expect((await p.get('p/new')).found).toBe(false);
    expect((await rejection(p.trigger('', 'v'))).code).toBe('INVALID_ARGUMENT');
    // Per-op errors reject only that op: locally (bad key) or from the server (future revision).
    expect((await rejection(p.put('', 'v'))).code).toBe('INVALID_ARGUMENT');
    expect((await rejection(p.get('p/00002', { atVersion: 99_999 }))).code).toBe('INVALID_ARGUMENT');
    expect((await p.get('p/00002')).found).toBe(true);
    await p.close();
    expect((await rejection(p.get('p/00002'))).code).toBe('CANCELLED');
  });

  it('when the stream breaks, re-runs reads elsewhere and fails writes whose outcome is unknown (without a session)', async () => {
    const backend = new MemoryBackend();
    const a = await serve(backend);
    const b = await server(backend);
    const c = client([a.address, b.address], { sessions: false });
    const gate = deferred();
    const bothIn = deferred();
    backend.before = async (op) => {
      if ((op === 'put' && backend.calls.put === 1) || (op === 'get' && backend.calls.get === 1)) {
        if (backend.calls.put === 1 && backend.calls.get === 1) bothIn.resolve();
        await gate.promise;
      }
    };
    const p = c.pipeline();
    const put = p.put('w', 'v').then(
      () => undefined,
      (e: unknown) => e,
    );
    const get = p.get('r');
    await bothIn.promise;
    await a.close(0); // a's node dies with both ops in flight
    const e = (await put) as KvError;
    expect(e).toBeInstanceOf(KvError);
    expect(e.message).toMatch(/outcome is unknown/);
    expect((await get).found).toBe(false); // re-run as a unary read on b
    expect(backend.calls.get).toBe(2);
    gate.resolve();
    await p.close();
  });

  it('re-runs ops that never reached a server on the next endpoint', async () => {
    const backend = new MemoryBackend();
    const s = await server(backend);
    const c = client([await deadAddress(), s.address]);
    const p = c.pipeline();
    const r = await Promise.all([p.put('a', '1'), p.get('a'), p.put('b', '2')]);
    expect(r[0].succeeded && r[2].succeeded).toBe(true);
    expect(backend.sm.revision).toBe(2);
    await p.close();
  });
});
