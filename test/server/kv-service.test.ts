/** Tests of the gRPC KV and Cluster services over the in-memory backend: every RPC, every error status, limits, forwarding, deadlines, watches and pipelining. */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { DeadlineError, NotLeaderError, OverloadedError, UnavailableError, type KvBackend } from '../../src/node/backend.js';
import { MAX_FORWARD_HOPS, META_COMPACT_REVISION, META_FORWARDED, META_LEADER, META_PIPELINE_BATCH, META_PIPELINE_TXN, META_REASON, META_RETRY_SAFE, META_SHARD, metaString } from '../../src/wire/metadata.js';
import { MAX_PIPELINE_BATCH } from '../../src/wire/proto.js';
import { decodePageToken, encodePageToken } from '../../src/wire/request-validation.js';
import type {
  DeleteResponseMsg,
  GetResponseMsg,
  ListResponseMsg,
  PipelineRequestMsg,
  PipelineResponseMsg,
  PutResponseMsg,
  StatusResponseMsg,
  TriggerResponseMsg,
  WatchResponseMsg,
} from '../../src/wire/proto.js';
import { CompactedRevisionError, MAX_KEY_BYTES, MAX_VALUE_BYTES } from '../../src/statemachine/index.js';
import { MemoryBackend } from './memory-backend.js';
import { captureLog, deferred, expectError, ok, rawUnary, serve, serviceFixture, stubs, text, unary, utf8 } from './harness.js';

const { start, defer } = serviceFixture();

async function collect(stream: grpc.ClientReadableStream<WatchResponseMsg>, until: (all: WatchResponseMsg[]) => boolean) {
  const all: WatchResponseMsg[] = [];
  for await (const m of stream as AsyncIterable<WatchResponseMsg>) {
    all.push(m);
    if (until(all)) break;
  }
  return all;
}

describe('unary RPCs', () => {
  it('put, get, delete and list round-trip with versions and revisions', async () => {
    const { kv, srv } = await start();
    const p = ok(await unary<object, PutResponseMsg>(kv, 'put', { key: 'a', value: utf8('1') }));
    expect(p).toMatchObject({ succeeded: true, version: 1, revision: 1, currentVersion: 0 });
    expect(p.timestampMs).toBeGreaterThan(0);
    ok(await unary(kv, 'put', { key: 'b', value: utf8('2') }));

    const g = await unary<object, GetResponseMsg>(kv, 'get', { key: 'a' });
    expect(ok(g)).toMatchObject({ found: true, version: 1, revision: 2 });
    expect(text(ok(g).value)).toBe('1');
    // The leader (it just applied writes) advertises itself.
    expect(metaString(g.trailers, META_LEADER)).toBe(srv.address);

    const missing = ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'zz', consistency: 'SERIALIZABLE' }));
    expect(missing).toMatchObject({ found: false, version: 0, revision: 2 });
    expect(missing.value!.length).toBe(0);

    const l = ok(await unary<object, ListResponseMsg>(kv, 'list', { prefix: '' }));
    expect(l.items!.map((i) => [i.key, text(i.value)])).toEqual([['a', '1'], ['b', '2']]);
    expect(l.nextPageToken).toBe('');
    expect(l.revision).toBe(2);

    const d = ok(await unary<object, DeleteResponseMsg>(kv, 'delete', { key: 'a' }));
    expect(d).toMatchObject({ succeeded: true, deleted: true, revision: 3 });
    const d2 = ok(await unary<object, DeleteResponseMsg>(kv, 'delete', { key: 'a' }));
    expect(d2).toMatchObject({ succeeded: true, deleted: false, revision: 3 });
  });

  it('Trigger fires at its own revision without storing the value or changing the key', async () => {
    const backend = new MemoryBackend();
    const { kv, srv } = await start(backend);
    ok(await unary(kv, 'put', { key: 'k', value: utf8('stored') }));
    const t = await unary<object, TriggerResponseMsg>(kv, 'trigger', { key: 'k', value: utf8('fired') });
    expect(ok(t)).toMatchObject({ revision: 2 });
    expect(ok(t).timestampMs).toBeGreaterThan(0);
    expect(metaString(t.trailers, META_LEADER)).toBe(srv.address);
    // The key keeps its value and version; the shard revision moved on.
    const g = ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'k' }));
    expect(g).toMatchObject({ found: true, version: 1, revision: 2 });
    expect(text(g.value)).toBe('stored');
    // A trigger of an absent key does not create it (an empty value is fine).
    expect(ok(await unary<object, TriggerResponseMsg>(kv, 'trigger', { key: 'absent' }))).toMatchObject({ revision: 3 });
    expect(ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'absent' }))).toMatchObject({ found: false, revision: 3 });
    expect(ok(await unary<object, ListResponseMsg>(kv, 'list', { prefix: '' })).items!.map((i) => i.key)).toEqual(['k']);
    expect(backend.calls.trigger).toBe(2);
    expect(backend.sm.eventsSince(2, '', 10).events.map((e) => `${e.type} ${e.key}=${text(e.value)}@${e.revision}`)).toEqual([
      'trigger k=fired@2',
      'trigger absent=@3',
    ]);
  });

  it('conditional put and delete report conflicts as responses, with the current value on request', async () => {
    const { kv } = await start();
    ok(await unary(kv, 'put', { key: 'k', value: utf8('v1'), expectedVersion: 0 }));
    const conflict = ok(
      await unary<object, PutResponseMsg>(kv, 'put', { key: 'k', value: utf8('v2'), expectedVersion: 0, returnCurrentValue: true }),
    );
    expect(conflict).toMatchObject({ succeeded: false, version: 0, currentVersion: 1, revision: 1 });
    expect(text(conflict.currentValue)).toBe('v1');
    const noValue = ok(await unary<object, PutResponseMsg>(kv, 'put', { key: 'k', value: utf8('v2'), expectedVersion: 7 }));
    expect(noValue.currentValue).toBeUndefined();
    expect(ok(await unary<object, PutResponseMsg>(kv, 'put', { key: 'k', value: utf8('v2'), expectedVersion: 1 }))).toMatchObject({
      succeeded: true,
      version: 2,
    });
    expect(ok(await unary<object, DeleteResponseMsg>(kv, 'delete', { key: 'k', expectedVersion: 1 }))).toMatchObject({
      succeeded: false,
      deleted: false,
      currentVersion: 2,
    });
    expect(ok(await unary<object, DeleteResponseMsg>(kv, 'delete', { key: 'k', expectedVersion: 2 }))).toMatchObject({
      succeeded: true,
      deleted: true,
    });
  });

  it('reads as of a version and as of a time', async () => {
    let now = 1_000;
    const backend = new MemoryBackend({ now: () => now });
    const { kv } = await start(backend);
    ok(await unary(kv, 'put', { key: 'k', value: utf8('old') }));
    now = 2_000;
    ok(await unary(kv, 'put', { key: 'k', value: utf8('new') }));
    expect(text(ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'k', atVersion: 1 })).value)).toBe('old');
    expect(text(ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'k', atTimeMs: 1_500 })).value)).toBe('old');
    expect(text(ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'k', atTimeMs: 2_500 })).value)).toBe('new');
    expect(ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 'k', atVersion: 0 })).found).toBe(false);
    const both = await unary(kv, 'get', { key: 'k', atVersion: 1, atTimeMs: 1_500 });
    expect(expectError(both, grpc.status.INVALID_ARGUMENT).details).toMatch(/at most one/);
    expectError(await unary(kv, 'get', { key: 'k', atVersion: 99 }), grpc.status.INVALID_ARGUMENT);
  });

  it('paginates with opaque base64url page tokens and rejects bad ones', async () => {
    const { kv } = await start();
    for (const k of ['p/a', 'p/b', 'p/c', 'p/d', 'q']) ok(await unary(kv, 'put', { key: k, value: utf8(k) }));
    const keys: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = ok(await unary<object, ListResponseMsg>(kv, 'list', { prefix: 'p/', limit: 2, pageToken: token, keysOnly: true }));
      pages++;
      for (const it of page.items!) {
        keys.push(it.key!);
        expect(it.value!.length).toBe(0);
      }
      token = page.nextPageToken!;
    } while (token);
    expect(keys).toEqual(['p/a', 'p/b', 'p/c', 'p/d']);
    expect(pages).toBe(2);
    expect(decodePageToken(encodePageToken('p/\u{1f600}'), 'p/')).toBe('p/\u{1f600}');

    for (const bad of ['***', 'cC9', 'cC9h=', encodePageToken('q'), Buffer.from([0xff, 0xfe]).toString('base64url')]) {
      const e = expectError(await unary(kv, 'list', { prefix: 'p/', pageToken: bad }), grpc.status.INVALID_ARGUMENT);
      expect(e.details).toMatch(/page token/);
    }
  });

  it('caps List pages by response size, continuing with a page token', async () => {
    const { kv } = await start(new MemoryBackend(), { maxResponseBytes: 10_000 });
    const big = new Uint8Array(4_000);
    for (let i = 0; i < 5; i++) ok(await unary(kv, 'put', { key: `k${i}`, value: big }));
    const first = ok(await unary<object, ListResponseMsg>(kv, 'list', { prefix: 'k' }));
    expect(first.items!.length).toBe(2);
    const rest = ok(await unary<object, ListResponseMsg>(kv, 'list', { prefix: 'k', pageToken: first.nextPageToken, limit: 100_000 }));
    expect(rest.items!.map((i) => i.key)).toEqual(['k2', 'k3']);
  });

  it('reports node status', async () => {
    const { cluster } = await start();
    const s = ok(await unary<object, StatusResponseMsg>(cluster, 'status', {}));
    expect(s.nodeId).toBe(1);
    expect(s.groups![0]).toMatchObject({ group: 1, leader: 1, role: 'leader', voters: [1] });
    expect(s.members).toEqual([{ id: 1, address: 'memory' }]);
  });
});

describe('validation', () => {
  it('rejects empty, oversized and NUL keys with INVALID_ARGUMENT and kv-retry-safe', async () => {
    const { kv } = await start();
    for (const key of ['', 'x'.repeat(MAX_KEY_BYTES + 1), 'a\0b', '\u00e9'.repeat(MAX_KEY_BYTES / 2 + 1)]) {
      const out = await unary(kv, 'put', { key, value: utf8('v') });
      expectError(out, grpc.status.INVALID_ARGUMENT);
      expect(metaString(out.trailers, META_RETRY_SAFE)).toBe('1');
    }
    ok(await unary(kv, 'put', { key: 'x'.repeat(MAX_KEY_BYTES), value: utf8('v') }));
    for (const key of ['', 'x'.repeat(MAX_KEY_BYTES + 1), 'a\0b']) {
      const out = await unary(kv, 'trigger', { key, value: utf8('v') });
      expectError(out, grpc.status.INVALID_ARGUMENT);
      expect(metaString(out.trailers, META_RETRY_SAFE)).toBe('1');
    }
    ok(await unary(kv, 'trigger', { key: 'x'.repeat(MAX_KEY_BYTES), value: utf8('v') }));
    expectError(await unary(kv, 'get', { key: '' }), grpc.status.INVALID_ARGUMENT);
    expectError(await unary(kv, 'delete', { key: 'a\0' }), grpc.status.INVALID_ARGUMENT);
    expectError(await unary(kv, 'list', { prefix: 'a\0' }), grpc.status.INVALID_ARGUMENT);
  });

  it('rejects keys that are not valid UTF-8 on the wire', async () => {
    const { srv } = await start();
    // GetRequest{key: 0xff 'a'}; PipelineRequest is tested below.
    const err = await rawUnary(srv.address, '/kvcascade.v1.KV/Get', Buffer.from([0x0a, 0x02, 0xff, 0x61]));
    expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err?.details).toMatch(/key is not valid UTF-8/);
    // TriggerRequest{key: 0xff 'a'}.
    const trig = await rawUnary(srv.address, '/kvcascade.v1.KV/Trigger', Buffer.from([0x0a, 0x02, 0xff, 0x61]));
    expect(trig?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(trig?.details).toMatch(/key is not valid UTF-8/);
    // A legitimately encoded U+FFFD is fine.
    const fine = await rawUnary(srv.address, '/kvcascade.v1.KV/Get', Buffer.from([0x0a, 0x03, 0xef, 0xbf, 0xbd]));
    expect(fine).toBeNull();
    // An unknown consistency enum value.
    const enumErr = await rawUnary(srv.address, '/kvcascade.v1.KV/Get', Buffer.from([0x0a, 0x01, 0x61, 0x20, 0x07]));
    expect(enumErr?.code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it('rejects a value over MAX_VALUE_BYTES with INVALID_ARGUMENT and a request over 1.5 MiB with RESOURCE_EXHAUSTED', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const tooBig = await unary(kv, 'put', { key: 'k', value: new Uint8Array(MAX_VALUE_BYTES + 1) });
    expect(expectError(tooBig, grpc.status.INVALID_ARGUMENT).details).toMatch(/VALUE_TOO_LARGE/);
    ok(await unary(kv, 'put', { key: 'k', value: new Uint8Array(MAX_VALUE_BYTES) }));
    const huge = await unary(kv, 'put', { key: 'k', value: new Uint8Array(2 * 1024 * 1024) });
    expectError(huge, grpc.status.RESOURCE_EXHAUSTED);
    expect(backend.calls.put).toBe(1);
    const tooBigTrigger = await unary(kv, 'trigger', { key: 'k', value: new Uint8Array(MAX_VALUE_BYTES + 1) });
    expect(expectError(tooBigTrigger, grpc.status.INVALID_ARGUMENT).details).toMatch(/VALUE_TOO_LARGE/);
    expectError(await unary(kv, 'trigger', { key: 'k', value: new Uint8Array(2 * 1024 * 1024) }), grpc.status.RESOURCE_EXHAUSTED);
    ok(await unary(kv, 'trigger', { key: 'k', value: new Uint8Array(MAX_VALUE_BYTES) }));
    expect(backend.calls.trigger).toBe(1);
  });
});

describe('error mapping', () => {
  const cases: Array<[string, () => Error, grpc.status, boolean]> = [
    ['UnavailableError', () => new UnavailableError('shard unavailable'), grpc.status.UNAVAILABLE, false],
    ['DeadlineError', () => new DeadlineError(), grpc.status.DEADLINE_EXCEEDED, false],
    ['OverloadedError', () => new OverloadedError('too many proposals'), grpc.status.RESOURCE_EXHAUSTED, true],
    ['NotLeaderError without a leader', () => new NotLeaderError(0, undefined), grpc.status.UNAVAILABLE, true],
  ];
  for (const [name, make, code, retrySafe] of cases) {
    it(`maps ${name} to ${grpc.status[code]}${retrySafe ? ' with kv-retry-safe' : ''}`, async () => {
      const backend = new MemoryBackend();
      const { kv } = await start(backend);
      backend.before = () => {
        throw make();
      };
      for (const m of ['put', 'delete', 'trigger']) {
        const out = await unary(kv, m, { key: 'k', value: utf8('v') });
        expectError(out, code);
        expect(metaString(out.trailers, META_RETRY_SAFE)).toBe(retrySafe ? '1' : undefined);
      }
      expectError(await unary(kv, 'get', { key: 'k' }), code);
      expectError(await unary(kv, 'list', { prefix: '' }), code);
    });
  }

  it('gives a pipelined op\'s error the unary trailers\' fields: retry safety, kv-reason, leader and shard', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const group = backend.shardMap().shards[0]!.group;
    const failures: Array<() => Error> = [
      () => new OverloadedError('too many proposals'),
      () => new NotLeaderError(0, undefined, group),
      () => new UnavailableError('shard unavailable'),
    ];
    for (const make of failures) {
      backend.before = () => {
        throw make();
      };
      const out = await unary(kv, 'put', { key: 'k', value: utf8('v') });
      if (out.ok) throw new Error('expected the put to fail');
      const st = out.error;
      const stream = kv.pipeline();
      const res = deferred<PipelineResponseMsg>();
      stream.on('data', (m: PipelineResponseMsg) => res.resolve(m));
      stream.on('error', () => undefined);
      stream.write({ id: 1, put: { key: 'k', value: utf8('v') } });
      const e = (await res.promise).error!;
      stream.end();
      expect(e.code).toBe(st.code);
      expect(e.retrySafe).toBe(metaString(out.trailers, META_RETRY_SAFE) === '1');
      expect(e.reason).toBe(metaString(out.trailers, META_REASON) ?? '');
      expect(e.leader).toBe(metaString(out.trailers, META_LEADER) ?? '');
      expect(e.shard).toBe(Number(metaString(out.trailers, META_SHARD) ?? 0));
    }
    // At least the classified ones name their reason on the stream too.
    backend.before = () => {
      throw new OverloadedError('busy');
    };
    const stream = kv.pipeline();
    const res = deferred<PipelineResponseMsg>();
    stream.on('data', (m: PipelineResponseMsg) => res.resolve(m));
    stream.on('error', () => undefined);
    stream.write({ id: 7, put: { key: 'k', value: utf8('v') } });
    expect((await res.promise).error).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, retrySafe: true, reason: 'OVERLOADED' });
    stream.end();
  });

  it('maps a compacted read to OUT_OF_RANGE with kv-compact-revision', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    for (let i = 0; i < 5; i++) ok(await unary(kv, 'put', { key: 'k', value: utf8(String(i)) }));
    backend.compact(4);
    const out = await unary(kv, 'get', { key: 'k', atVersion: 2 });
    expectError(out, grpc.status.OUT_OF_RANGE);
    expect(metaString(out.trailers, META_COMPACT_REVISION)).toBe('4');
  });

  it('maps unexpected errors (async or thrown synchronously) to INTERNAL, logs them and keeps serving', async () => {
    const log = captureLog();
    const backend = new MemoryBackend();
    const broken: KvBackend = {
      put: () => Promise.reject(new TypeError('boom')),
      get: () => {
        throw new RangeError('sync boom');
      },
      delete: (r, o) => backend.delete(r, o),
      trigger: (r, o) => backend.trigger(r, o),
      list: (r, o) => backend.list(r, o),
      txn: (r, o) => backend.txn(r, o),
      watch: () => {
        throw new Error('watch boom');
      },
      status: () => Promise.reject(new Error('status boom')),
      shardMap: () => backend.shardMap(),
      shardsForPrefix: (p) => backend.shardsForPrefix(p),
    };
    const { kv, cluster } = await start(broken, { log });
    const out = await unary(kv, 'put', { key: 'k', value: utf8('v') });
    expect(expectError(out, grpc.status.INTERNAL).details).toBe('internal server error');
    expectError(await unary(kv, 'get', { key: 'k' }), grpc.status.INTERNAL);
    expectError(await unary(cluster, 'status', {}), grpc.status.INTERNAL);
    await expect(collect(kv.watch({ prefix: '' }), () => false)).rejects.toMatchObject({ code: grpc.status.INTERNAL });
    expect(log.lines.filter((l) => l.level === 'error').map((l) => (l.obj as { err: Error }).err.message)).toEqual([
      'boom',
      'sync boom',
      'status boom',
      'watch boom',
    ]);
    expect(ok(await unary<object, DeleteResponseMsg>(kv, 'delete', { key: 'k' })).succeeded).toBe(true);
  });
});

describe('deadlines', () => {
  it('propagates the client deadline to the backend and answers DEADLINE_EXCEEDED', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const gate = deferred();
    backend.before = () => gate.promise;
    const t0 = Date.now();
    const out = await unary(kv, 'put', { key: 'k', value: utf8('v') }, { deadlineMs: 300 });
    expectError(out, grpc.status.DEADLINE_EXCEEDED);
    const dl = backend.lastCallOptions!.deadlineMs;
    expect(dl).toBeGreaterThanOrEqual(t0 + 250);
    expect(dl).toBeLessThanOrEqual(Date.now() + 50);
    gate.resolve();
  });

  it('applies the default deadline when the client sets none', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend, { defaultDeadlineMs: 200 });
    const gate = deferred();
    backend.before = () => gate.promise;
    const t0 = Date.now();
    const out = await unary(kv, 'get', { key: 'k' });
    expectError(out, grpc.status.DEADLINE_EXCEEDED);
    expect(backend.lastCallOptions!.deadlineMs - t0).toBeGreaterThanOrEqual(190);
    expect(backend.lastCallOptions!.deadlineMs - t0).toBeLessThan(5_000);
    gate.resolve();
  });
});

describe('forwarding to the leader', () => {
  it('bounds each forwarded attempt: a frozen leader is answered UNAVAILABLE after the attempt time, then at once (retry-safe) while suspect', async () => {
    const { leaderBackend, followerBackend, follower } = await pair({ forwardAttemptMs: 300 });
    const gate = deferred();
    leaderBackend.before = () => gate.promise; // the leader accepts calls and never answers
    const t0 = Date.now();
    const first = await unary(follower.kv, 'get', { key: 'k' }, { deadlineMs: 5_000 });
    const took = Date.now() - t0;
    expect(expectError(first, grpc.status.UNAVAILABLE).details).toMatch(/did not answer within 300 ms/);
    expect(metaString(first.trailers, META_RETRY_SAFE)).toBeUndefined(); // a write's outcome would be unknown
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(2_000);
    // While the leader is suspect, calls are not forwarded into it: answered at once, retry-safe.
    const calls = leaderBackend.calls.put;
    const t1 = Date.now();
    const second = await unary(follower.kv, 'put', { key: 'k', value: utf8('v') }, { deadlineMs: 5_000 });
    expect(expectError(second, grpc.status.UNAVAILABLE).details).toMatch(/not answering; a new leader is being elected/);
    expect(metaString(second.trailers, META_RETRY_SAFE)).toBe('1');
    expect(Date.now() - t1).toBeLessThan(200);
    expect(leaderBackend.calls.put).toBe(calls);
    expect(followerBackend.calls.put).toBe(1);
    gate.resolve();
  });


  async function pair(followerOpts: { forwardAttemptMs?: number } = {}) {
    const leaderBackend = new MemoryBackend({ nodeId: 1 });
    const followerBackend = new MemoryBackend({ nodeId: 2 });
    const leader = await start(leaderBackend);
    const follower = await start(followerBackend, followerOpts);
    followerBackend.setNotLeader(leader.srv.address, 1);
    return { leaderBackend, followerBackend, leader, follower };
  }

  it('forwards writes and linearizable reads, with the deadline, and reports kv-leader', async () => {
    const { leaderBackend, followerBackend, leader, follower } = await pair({ forwardAttemptMs: 0 });
    const t0 = Date.now();
    const put = await unary<object, PutResponseMsg>(follower.kv, 'put', { key: 'k', value: utf8('v') }, { deadlineMs: 5_000 });
    expect(ok(put).succeeded).toBe(true);
    expect(metaString(put.trailers, META_LEADER)).toBe(leader.srv.address);
    expect(leaderBackend.calls.put).toBe(1);
    expect(followerBackend.calls.put).toBe(1);
    const dl = leaderBackend.lastCallOptions!.deadlineMs;
    expect(dl).toBeGreaterThanOrEqual(t0 + 4_900);
    expect(dl).toBeLessThanOrEqual(Date.now() + 5_000);

    // Optional fields keep their presence when the request is re-encoded for the leader.
    const cas = ok(await unary<object, PutResponseMsg>(follower.kv, 'put', { key: 'k', value: utf8('x'), expectedVersion: 0, returnCurrentValue: true }));
    expect(cas).toMatchObject({ succeeded: false, currentVersion: 1 });
    expect(text(cas.currentValue)).toBe('v');
    const get = await unary<object, GetResponseMsg>(follower.kv, 'get', { key: 'k' });
    expect(text(ok(get).value)).toBe('v');
    expect(metaString(get.trailers, META_LEADER)).toBe(leader.srv.address);
    // Serializable reads are served locally (the follower's own, empty, state).
    expect(ok(await unary<object, GetResponseMsg>(follower.kv, 'get', { key: 'k', consistency: 'SERIALIZABLE' })).found).toBe(false);
    const list = ok(await unary<object, ListResponseMsg>(follower.kv, 'list', { prefix: '' }));
    expect(list.items!.map((i) => i.key)).toEqual(['k']);
    // Errors of the leader are relayed with their metadata.
    leaderBackend.before = () => {
      throw new OverloadedError('busy');
    };
    const busy = await unary(follower.kv, 'put', { key: 'k', value: utf8('v') });
    expectError(busy, grpc.status.RESOURCE_EXHAUSTED);
    expect(metaString(busy.trailers, META_RETRY_SAFE)).toBe('1');
  });

  it('forwards triggers to the leader, which applies them', async () => {
    const { leaderBackend, followerBackend, leader, follower } = await pair({ forwardAttemptMs: 0 });
    const t0 = Date.now();
    const t = await unary<object, TriggerResponseMsg>(follower.kv, 'trigger', { key: 't', value: utf8('x') }, { deadlineMs: 5_000 });
    expect(ok(t)).toMatchObject({ revision: 1 });
    expect(metaString(t.trailers, META_LEADER)).toBe(leader.srv.address);
    expect(followerBackend.calls.trigger).toBe(1);
    expect(leaderBackend.calls.trigger).toBe(1);
    expect(leaderBackend.lastCallOptions!.deadlineMs).toBeGreaterThanOrEqual(t0 + 4_900);
    expect(leaderBackend.sm.revision).toBe(1);
    expect(leaderBackend.sm.get('t')).toBeUndefined();
    expect(followerBackend.sm.revision).toBe(0);
    // Invalid triggers are refused by the follower itself.
    expectError(await unary(follower.kv, 'trigger', { key: '', value: utf8('x') }), grpc.status.INVALID_ARGUMENT);
    expect(leaderBackend.calls.trigger).toBe(1);
    // A trigger forwarded MAX_FORWARD_HOPS times that reaches a non-leader is not forwarded again.
    const md = new grpc.Metadata();
    md.set(META_FORWARDED, String(MAX_FORWARD_HOPS));
    const out = await unary(follower.kv, 'trigger', { key: 't', value: utf8('x') }, { metadata: md });
    expect(expectError(out, grpc.status.UNAVAILABLE).details).toMatch(/forwarded/);
    expect(metaString(out.trailers, META_RETRY_SAFE)).toBe('1');
    expect(leaderBackend.calls.trigger).toBe(1);
  });

  it('answers UNAVAILABLE (retry-safe, with kv-leader) when a request forwarded twice reaches a non-leader', async () => {
    const { follower, leader } = await pair();
    const md = new grpc.Metadata();
    md.set(META_FORWARDED, '2');
    const out = await unary(follower.kv, 'put', { key: 'k', value: utf8('v') }, { metadata: md });
    expect(expectError(out, grpc.status.UNAVAILABLE).details).toMatch(/forwarded/);
    expect(metaString(out.trailers, META_RETRY_SAFE)).toBe('1');
    expect(metaString(out.trailers, META_LEADER)).toBe(leader.srv.address);
  });

  it('answers UNAVAILABLE (retry-safe) when the leader is unreachable', async () => {
    const leaderBackend = new MemoryBackend();
    const dead = await serve(leaderBackend);
    await dead.close(0);
    const followerBackend = new MemoryBackend();
    followerBackend.setNotLeader(dead.address, 1);
    const follower = await start(followerBackend);
    const out = await unary(follower.kv, 'put', { key: 'k', value: utf8('v') });
    expect(expectError(out, grpc.status.UNAVAILABLE).details).toMatch(/unreachable/);
    expect(metaString(out.trailers, META_RETRY_SAFE)).toBe('1');
  });

  it('forwards pipeline ops and watches', async () => {
    const { leaderBackend, follower, leader } = await pair();
    leaderBackend.apply({ type: 'put', key: 'w/0', value: utf8('x') });
    // A backend that cannot serve watches locally.
    const followerBackend = new MemoryBackend();
    followerBackend.setNotLeader(leader.srv.address, 1);
    const noWatch: KvBackend = Object.assign(Object.create(followerBackend) as MemoryBackend, {
      watch: () => {
        throw new NotLeaderError(1, leader.srv.address);
      },
    });
    const f2 = await start(noWatch);
    const stream = f2.kv.watch({ prefix: 'w/', fromRevision: 1 });
    const got = await collect(stream, (all) => all.some((m) => m.events!.length > 0));
    stream.cancel();
    expect(got.flatMap((m) => m.events!.map((e) => e.key))).toEqual(['w/0']);

    const pl = follower.kv.pipeline();
    const res = deferred<PipelineResponseMsg>();
    pl.on('data', (m: PipelineResponseMsg) => res.resolve(m));
    pl.on('error', () => undefined);
    pl.write({ id: 9, put: { key: 'p', value: utf8('v') } });
    expect(await res.promise).toMatchObject({ id: 9, put: { succeeded: true } });
    const trig = deferred<PipelineResponseMsg>();
    pl.on('data', (m: PipelineResponseMsg) => m.id === 10 && trig.resolve(m));
    pl.write({ id: 10, trigger: { key: 'pt', value: utf8('v') } });
    expect(await trig.promise).toMatchObject({ id: 10, result: 'trigger', trigger: { revision: 3 } });
    pl.end();
    expect(leaderBackend.sm.get('p')).toBeDefined();
    expect(leaderBackend.sm.get('pt')).toBeUndefined();
    expect(leaderBackend.calls.trigger).toBe(1);
  });
});

describe('Watch', () => {
  it('streams history then live events, never splitting a revision, then progress notifications', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend, { maxResponseBytes: 200 });
    backend.apply({ type: 'put', key: 'w/a', value: utf8('1') });
    backend.apply({ type: 'put', key: 'other', value: utf8('x') });
    backend.apply({
      type: 'txn',
      compares: [],
      writes: [
        { type: 'put', key: 'w/b', value: new Uint8Array(150) },
        { type: 'put', key: 'w/c', value: new Uint8Array(150) },
        { type: 'delete', key: 'w/a' },
      ],
    });
    backend.apply({ type: 'triggerPut', key: 'w/t', value: utf8('trigger') });
    const stream = kv.watch({ prefix: 'w/', fromRevision: 1, progressIntervalMs: 20 });
    const live = deferred();
    let applied = false;
    const all = await collect(stream, (msgs) => {
      if (!applied && msgs.some((m) => m.progressNotify)) {
        applied = true;
        backend.apply({ type: 'put', key: 'w/live', value: utf8('l') });
        live.resolve();
      }
      return msgs.some((m) => m.events!.some((e) => e.key === 'w/live')) && msgs.filter((m) => m.progressNotify).length >= 3;
    });
    stream.cancel();
    await live.promise;
    const withEvents = all.filter((m) => m.events!.length > 0);
    expect(withEvents.map((m) => m.events!.map((e) => `${e.type} ${e.key}@${e.revision}`))).toEqual([
      ['PUT w/a@1'],
      ['PUT w/b@3', 'PUT w/c@3', 'DELETE w/a@3'],
      ['TRIGGER w/t@4'],
      ['PUT w/live@5'],
    ]);
    for (const m of withEvents) expect(m.revision).toBeGreaterThanOrEqual(m.events![m.events!.length - 1]!.revision!);
    // The trigger at revision 4 carries its value but stored nothing.
    const trigger = withEvents.flatMap((m) => m.events!).find((e) => e.type === 'TRIGGER')!;
    expect(text(trigger.value)).toBe('trigger');
    expect(backend.sm.get('w/t')).toBeUndefined();
    expect(all.every((m) => !m.canceled)).toBe(true);
  });

  it('delivers live Trigger RPCs as TRIGGER events with their value, and the key is not stored', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    ok(await unary(kv, 'put', { key: 't/k', value: utf8('stored') }));
    const stream = kv.watch({ prefix: 't/' });
    const events: string[] = [];
    let fired = false;
    const all = await collect(stream, (msgs) => {
      if (!fired && msgs.some((m) => m.progressNotify)) {
        fired = true;
        void (async () => {
          ok(await unary(kv, 'trigger', { key: 't/k', value: utf8('fired') }));
          ok(await unary(kv, 'trigger', { key: 'other', value: utf8('ignored') }));
          ok(await unary(kv, 'trigger', { key: 't/new', value: new Uint8Array(0) }));
          ok(await unary(kv, 'put', { key: 't/k', value: utf8('again') }));
        })();
      }
      const last = msgs[msgs.length - 1]!;
      for (const e of last.events ?? []) events.push(`${e.type} ${e.key}=${text(e.value)}@${e.revision}`);
      return events.length >= 3;
    });
    stream.cancel();
    expect(events).toEqual(['TRIGGER t/k=fired@2', 'TRIGGER t/new=@4', 'PUT t/k=again@5']);
    expect(all.every((m) => !m.canceled)).toBe(true);
    const k = ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 't/k', atVersion: 4 }));
    expect(k).toMatchObject({ found: true, version: 1 });
    expect(text(k.value)).toBe('stored');
    expect(ok(await unary<object, GetResponseMsg>(kv, 'get', { key: 't/new' })).found).toBe(false);
  });

  it('resumes a watch at a trigger revision from history', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    backend.apply({ type: 'put', key: 'r/a', value: utf8('1') });
    backend.apply({ type: 'triggerPut', key: 'r/a', value: utf8('t') });
    backend.apply({ type: 'delete', key: 'r/a' });
    const all = await collect(kv.watch({ prefix: 'r/', fromRevision: 2 }), (msgs) => msgs.some((m) => m.progressNotify));
    expect(all.flatMap((m) => (m.events ?? []).map((e) => `${e.type} ${e.key}=${text(e.value)}@${e.revision}`))).toEqual([
      'TRIGGER r/a=t@2',
      'DELETE r/a=@3',
    ]);
  });

  it('cancels with compact_revision when from_revision was compacted', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    for (let i = 0; i < 5; i++) backend.apply({ type: 'put', key: 'k', value: utf8(String(i)) });
    backend.compact(4);
    const all = await collect(kv.watch({ prefix: '', fromRevision: 2 }), () => false);
    expect(all).toHaveLength(1);
    expect(all[0]).toMatchObject({ canceled: true, compactRevision: 4 });
    expect(all[0]!.cancelReason).toMatch(/compacted/);
  });

  it('cancels a slow watcher (backend buffer overflow) with a canceled response', async () => {
    const backend = new MemoryBackend({ maxWatchBuffer: 3 });
    const { kv } = await start(backend);
    const stream = kv.watch({ prefix: '' });
    const all = await collect(stream, (msgs) => {
      if (msgs.length === 1) for (let i = 0; i < 10; i++) backend.apply({ type: 'put', key: `k${i}`, value: utf8('v') });
      return false;
    });
    expect(all[0]).toMatchObject({ progressNotify: true, revision: 0 });
    expect(all[all.length - 1]).toMatchObject({ canceled: true, compactRevision: 0 });
    expect(all[all.length - 1]!.cancelReason).toMatch(/too slow/);
  });

  it('stops feeding a client that does not read (flow control), so the backend cancels it as slow', async () => {
    const backend = new MemoryBackend({ maxWatchBuffer: 20 });
    const { kv } = await start(backend);
    const stream = kv.watch({ prefix: '' });
    const first = deferred<WatchResponseMsg>();
    stream.once('data', (m: WatchResponseMsg) => first.resolve(m));
    await first.promise; // established
    stream.pause();
    const value = new Uint8Array(64 * 1024);
    // One revision per event-loop turn, so the backend delivers each as soon as the sink is writable.
    for (let i = 0; i < 400 && backend.watchers.size > 0; i++) {
      backend.apply({ type: 'put', key: `k${i}`, value });
      await new Promise((r) => setImmediate(r));
    }
    expect(backend.watchers.size).toBe(0);
    const rest = await collect(stream, () => false);
    const last = rest[rest.length - 1]!;
    expect(last).toMatchObject({ canceled: true, compactRevision: 0 });
    expect(last.cancelReason).toMatch(/more than 20 events buffered/); // the backend's limit, not the service's
    const revs = rest.flatMap((m) => m.events!.map((e) => e.revision!));
    expect(revs).toEqual(revs.map((_, i) => i + 1)); // in order, no gap, up to where it stopped
  });

  it('cancels a watch whose backend ignores back-pressure once too many responses are unsent', async () => {
    const backend = new MemoryBackend();
    const handleCancelled = deferred();
    const firehose: KvBackend = Object.assign(Object.create(backend) as MemoryBackend, {
      watch: (_req: unknown, sink: Parameters<KvBackend['watch']>[1]) => {
        // Synchronously, before the handle is even returned: the service must still cancel it.
        for (let r = 1; r <= 100; r++) sink.events([{ type: 'put', key: `k${r}`, value: utf8('v'), revision: r, timestampMs: 1 }], r);
        return { cancel: () => handleCancelled.resolve() };
      },
    });
    const { kv } = await start(firehose, { watchMaxPendingResponses: 8 });
    const all = await collect(kv.watch({ prefix: '' }), () => false);
    await handleCancelled.promise;
    const last = all[all.length - 1]!;
    expect(last).toMatchObject({ canceled: true, revision: 9 });
    expect(last.cancelReason).toMatch(/responses unsent/);
    expect(all.slice(0, -1).map((m) => m.revision)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('cancels the backend watch when the client cancels', async () => {
    const backend = new MemoryBackend();
    const cancelled = deferred();
    const spy: KvBackend = Object.assign(Object.create(backend) as MemoryBackend, {
      watch: (req: Parameters<KvBackend['watch']>[0], sink: Parameters<KvBackend['watch']>[1]) => {
        const h = backend.watch(req, sink);
        return { cancel: () => (h.cancel(), cancelled.resolve()) };
      },
    });
    const { kv } = await start(spy);
    const stream = kv.watch({ prefix: '' });
    stream.on('error', () => undefined);
    await new Promise((r) => stream.once('data', r));
    stream.cancel();
    await cancelled.promise;
    expect(backend.watchers.size).toBe(0);
  });

  it('rejects invalid watch requests and a synchronously compacted start', async () => {
    const { kv } = await start();
    await expect(collect(kv.watch({ prefix: 'a\0' }), () => false)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const compacted: KvBackend = Object.assign(Object.create(new MemoryBackend()) as MemoryBackend, {
      watch: () => {
        throw new CompactedRevisionError({ revision: 2 }, 7, 'watch history');
      },
    });
    const other = await start(compacted);
    const err = await collect(other.kv.watch({ prefix: '', fromRevision: 2 }), () => false).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err?.code).toBe(grpc.status.OUT_OF_RANGE);
    expect(metaString(err?.metadata, META_COMPACT_REVISION)).toBe('7');
  });
});

describe('Pipeline', () => {
  function open(kv: ReturnType<typeof stubs>['kv']) {
    const stream = kv.pipeline();
    const responses: PipelineResponseMsg[] = [];
    const waiters: Array<{ n: number; d: ReturnType<typeof deferred<void>> }> = [];
    stream.on('data', (m: PipelineResponseMsg) => {
      responses.push(m);
      for (const w of waiters) if (responses.length >= w.n) w.d.resolve(undefined);
    });
    const ended = deferred<grpc.StatusObject>();
    stream.on('status', (s: grpc.StatusObject) => ended.resolve(s));
    stream.on('error', () => undefined);
    return {
      stream,
      responses,
      ended: ended.promise,
      send: (r: PipelineRequestMsg) => stream.write(r),
      /** Every op's answer, whether it came alone or inside a batch message. */
      flat: () => responses.flatMap((r) => (r.batch && r.batch.length > 0 ? r.batch : [r])),
      waitFor: (n: number) => {
        const d = deferred<void>();
        if (responses.length >= n) d.resolve(undefined);
        else waiters.push({ n, d });
        return d.promise;
      },
    };
  }

  /**
   * A MemoryBackend whose writes wait at a gate: `fourIn` resolves once 4 are in flight, `release()`
   * opens the gate for good, `maxActive()` is the most that were in flight at once.
   */
  function gatedBackend() {
    const backend = new MemoryBackend();
    let active = 0;
    let maxActive = 0;
    const fourIn = deferred();
    let gate = deferred();
    backend.before = async () => {
      active++;
      maxActive = Math.max(maxActive, active);
      if (active === 4) fourIn.resolve();
      await gate.promise;
      active--;
    };
    return {
      backend,
      fourIn: fourIn.promise,
      maxActive: () => maxActive,
      release: () => {
        const closed = gate;
        gate = { promise: Promise.resolve(), resolve: () => undefined, reject: () => undefined };
        closed.resolve();
      },
    };
  }

  it('multiplexes ops by id, with per-op errors, and ends after the client half-closes', async () => {
    const { kv } = await start();
    const p = open(kv);
    p.send({ id: 1, put: { key: 'a', value: utf8('1') } });
    p.send({ id: 2, put: { key: '', value: utf8('1') } });
    p.send({ id: 3, get: { key: 'a' } });
    p.send({ id: 4, delete: { key: 'a' } });
    p.send({ id: 5 });
    p.send({ id: 6, trigger: { key: 'a', value: utf8('t') } });
    p.send({ id: 7, trigger: { key: 'a\0', value: utf8('t') } });
    p.stream.end();
    await p.waitFor(7);
    expect((await p.ended).code).toBe(grpc.status.OK);
    const byId = new Map(p.responses.map((r) => [r.id, r]));
    expect(byId.get(1)).toMatchObject({ result: 'put', put: { succeeded: true, version: 1 } });
    expect(byId.get(2)).toMatchObject({ result: 'error', error: { code: grpc.status.INVALID_ARGUMENT } });
    expect(byId.get(3)!.result).toBe('get');
    expect(byId.get(4)).toMatchObject({ result: 'delete', delete: { deleted: true } });
    expect(byId.get(5)).toMatchObject({ result: 'error', error: { code: grpc.status.INVALID_ARGUMENT } });
    expect(byId.get(6)).toMatchObject({ result: 'trigger', trigger: { revision: 3 } });
    expect(byId.get(6)!.trigger!.timestampMs).toBeGreaterThan(0);
    expect(byId.get(7)).toMatchObject({ result: 'error', error: { code: grpc.status.INVALID_ARGUMENT } });
  });

  it('takes txn ops (advertised by kv-pipeline-txn: 1) and answers them as the unary Txn', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const p = open(kv);
    const headers = deferred<grpc.Metadata>();
    p.stream.on('metadata', (md: grpc.Metadata) => headers.resolve(md));
    expect(metaString(await headers.promise, META_PIPELINE_TXN)).toBe('1');
    p.send({ id: 1, txn: { compares: [{ key: 'a', version: 0 }], writes: [{ put: { key: 'a', value: utf8('1') } }, { put: { key: 'b', value: utf8('2') } }] } });
    await p.waitFor(1);
    p.send({ id: 2, txn: { compares: [{ key: 'a', version: 0 }], writes: [{ delete: { key: 'a' } }] } });
    p.send({ id: 3, txn: { writes: [{ put: { key: '', value: utf8('x') } }] } });
    await p.waitFor(3);
    const byId = new Map(p.flat().map((m) => [m.id, m]));
    expect(byId.get(1)).toMatchObject({ result: 'txn', txn: { succeeded: true, revision: 1 } });
    expect(byId.get(2)).toMatchObject({ result: 'txn', txn: { succeeded: false, failedCompares: [0] } });
    expect(byId.get(3)).toMatchObject({ result: 'error', error: { code: grpc.status.INVALID_ARGUMENT } });
    expect(backend.sm.revision).toBe(1);
    expect(text(backend.sm.get('b')!.value)).toBe('2');
    p.stream.end();
  });

  it('takes a batch of ops, answers each by id, and answers in batches once the client batched', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const p = open(kv);
    const headers = deferred<grpc.Metadata>();
    p.stream.on('metadata', (md: grpc.Metadata) => headers.resolve(md));
    expect(metaString(await headers.promise, META_PIPELINE_BATCH)).toBe('1');
    // Held until the three valid ops started (the empty key is refused before the backend), so
    // their answers come in the same turn.
    let started = 0;
    const allIn = deferred();
    const gate = deferred();
    backend.before = async () => {
      if (++started === 3) allIn.resolve();
      await gate.promise;
    };
    p.send({
      batch: [
        { id: 1, put: { key: 'a', value: utf8('1') } },
        { id: 2, put: { key: '', value: utf8('1') } },
        { id: 3, put: { key: 'b', value: utf8('2') } },
        { id: 4, delete: { key: 'zz' } },
      ],
    });
    await allIn.promise;
    gate.resolve();
    await p.waitFor(1);
    p.stream.end();
    await p.ended;
    const flat = p.flat();
    expect(p.responses.length).toBeLessThan(flat.length); // coalesced
    const byId = new Map(flat.map((r) => [r.id, r]));
    expect([...byId.keys()].sort()).toEqual([1, 2, 3, 4]);
    expect(byId.get(1)).toMatchObject({ result: 'put', put: { succeeded: true } });
    expect(byId.get(2)).toMatchObject({ result: 'error', error: { code: grpc.status.INVALID_ARGUMENT } });
    expect(byId.get(3)).toMatchObject({ result: 'put', put: { succeeded: true } });
    expect(byId.get(4)).toMatchObject({ result: 'delete', delete: { deleted: false } });
    // Executed in batch order.
    expect(byId.get(3)!.put!.revision).toBe(byId.get(1)!.put!.revision! + 1);
  });

  it('refuses a batch of more than MAX_PIPELINE_BATCH ops, op by op, executing none', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const p = open(kv);
    const n = MAX_PIPELINE_BATCH + 1;
    p.send({ batch: Array.from({ length: n }, (_, i) => ({ id: i + 1, put: { key: `k${i}`, value: utf8('v') } })) });
    p.stream.end();
    await p.ended;
    const flat = p.flat();
    expect(flat).toHaveLength(n);
    expect(flat.every((r) => r.error?.code === grpc.status.INVALID_ARGUMENT && r.error.retrySafe === true)).toBe(true);
    expect(backend.calls.put ?? 0).toBe(0);
  });

  it('bounds the ops in flight of a batch too, starting the rest in order as ops finish', async () => {
    const { backend, fourIn, maxActive, release } = gatedBackend();
    const { kv } = await start(backend, { pipelineMaxInFlight: 4 });
    const p = open(kv);
    p.send({ batch: Array.from({ length: 40 }, (_, i) => ({ id: i + 1, put: { key: 'same', value: utf8(String(i)) } })) });
    p.stream.end();
    await fourIn;
    await new Promise((r) => setImmediate(r));
    expect(backend.calls.put).toBe(4);
    release();
    await p.ended;
    const flat = p.flat();
    expect(flat).toHaveLength(40);
    expect(maxActive()).toBeLessThanOrEqual(4);
    // Started in batch order: revision order follows id order.
    const revs = flat.sort((x, y) => x.id! - y.id!).map((r) => r.put!.revision!);
    expect(revs).toEqual([...revs].sort((x, y) => x - y));
    expect(backend.sm.revision).toBe(40);
  });

  it('rejects invalid UTF-8 inside a pipelined op', async () => {
    const { srv } = await start();
    const client = new grpc.Client(srv.address, grpc.credentials.createInsecure());
    defer(() => client.close());
    const stream = client.makeBidiStreamRequest('/kvcascade.v1.KV/Pipeline', (b: Buffer) => b, (b: Buffer) => b);
    const got = deferred<Buffer>();
    stream.on('data', (b: Buffer) => got.resolve(b));
    stream.on('error', () => undefined);
    const inner = Buffer.from([0x0a, 0x02, 0xc3, 0x28]); // GetRequest{key: invalid}
    stream.write(Buffer.concat([Buffer.from([0x08, 0x07, 0x1a, inner.length]), inner]));
    const res = (await import('../../src/wire/proto.js')).kvServiceDefinition.Pipeline!.responseDeserialize(await got.promise);
    stream.end();
    expect(res).toMatchObject({ id: 7, error: { code: grpc.status.INVALID_ARGUMENT } });
  });

  it('bounds the ops in flight per stream by pausing reads', async () => {
    const { backend, fourIn, maxActive, release } = gatedBackend();
    const { kv } = await start(backend, { pipelineMaxInFlight: 4 });
    const p = open(kv);
    for (let i = 1; i <= 40; i++) p.send({ id: i, put: { key: `k${i}`, value: utf8('v') } });
    p.stream.end();
    await fourIn;
    await new Promise((r) => setImmediate(r)); // let any extra (unbounded) ops arrive
    expect(backend.calls.put).toBe(4);
    release();
    await p.waitFor(40);
    await p.ended;
    expect(maxActive()).toBeLessThanOrEqual(4);
    expect(backend.sm.revision).toBe(40);
  });
});
