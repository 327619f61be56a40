/** Tests of the sharding features of the gRPC services over the in-memory backend: Txn, GetShardMap, status fields, shard and map-epoch metadata, per-shard leader hints, forwarding hop counts, cross-shard List merging and cross-shard Watch merging with resume tokens. */
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { NotLeaderError, WrongShardError, type KvBackend, type WatchSink } from '../../src/node/backend.js';
import {
  MAX_FORWARD_HOPS,
  META_FORWARDED,
  META_LEADER,
  META_MAP_EPOCH,
  META_RETRY_SAFE,
  META_SHARD,
  forwardHops,
  metaString,
} from '../../src/wire/metadata.js';
import type {
  GetShardMapResponseMsg,
  ListResponseMsg,
  PutResponseMsg,
  StatusResponseMsg,
  TxnResponseMsg,
  WatchRequestMsg,
  WatchResponseMsg,
} from '../../src/wire/proto.js';
import { decodeResumeToken, encodeResumeToken } from '../../src/wire/request-validation.js';
import { MAX_TXN_OPS, MAX_VALUE_BYTES, compareKeys } from '../../src/statemachine/index.js';
import { MemoryBackend } from './memory-backend.js';
import { deferred, expectError, ok, serviceFixture, text, unary, utf8 } from './harness.js';

const { start } = serviceFixture();

/** Keys `${prefix}<n>` until one lies in each of `groups` (in that order). */
function keysInShards(backend: MemoryBackend, groups: readonly number[], prefix = 'k'): string[] {
  const out: string[] = [];
  for (const g of groups) {
    let i = 0;
    while (backend.groupOf(`${prefix}${i}`) !== g || out.includes(`${prefix}${i}`)) i++;
    out.push(`${prefix}${i}`);
  }
  return out;
}

function md(key: string, value: string): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set(key, value);
  return m;
}

/** Reads a watch stream until `until` holds (then cancels it) or the stream ends; never rejects (the error, if any, is returned). */
async function readWatch(
  stream: grpc.ClientReadableStream<WatchResponseMsg>,
  until: (all: WatchResponseMsg[]) => boolean,
): Promise<{ msgs: WatchResponseMsg[]; error?: grpc.ServiceError; headers?: grpc.Metadata }> {
  const msgs: WatchResponseMsg[] = [];
  let headers: grpc.Metadata | undefined;
  stream.on('metadata', (m: grpc.Metadata) => (headers = m));
  const done = deferred<grpc.ServiceError | undefined>();
  stream.on('data', (m: WatchResponseMsg) => {
    msgs.push(m);
    if (until(msgs)) {
      stream.cancel();
      done.resolve(undefined);
    }
  });
  stream.on('error', (e: grpc.ServiceError) => done.resolve(e.code === grpc.status.CANCELLED ? undefined : e));
  stream.on('end', () => done.resolve(undefined));
  const error = await done.promise;
  return { msgs, ...(error ? { error } : {}), ...(headers ? { headers } : {}) };
}


type Ev = string;
const evId = (e: { shard?: number; revision?: number; key?: string; type?: unknown }): Ev => `${e.shard}:${e.revision}:${String(e.type)}:${e.key}`;
const eventsOf = (msgs: readonly WatchResponseMsg[]): Ev[] => msgs.flatMap((m) => (m.events ?? []).map(evId));

describe('Txn', () => {
  it('applies compares and writes atomically at one revision, reporting the shard', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    ok(await unary(kv, 'put', { key: 'a', value: utf8('1') }));
    const out = await unary<object, TxnResponseMsg>(kv, 'txn', {
      compares: [{ key: 'a', version: 1 }, { key: 'b', version: 0 }],
      writes: [{ put: { key: 'b', value: utf8('2') } }, { delete: { key: 'a' } }, { put: { key: 'c', value: utf8('3') } }],
    });
    expect(ok(out)).toMatchObject({ succeeded: true, revision: 2, failedCompares: [], shard: 1 });
    expect(ok(out).timestampMs).toBeGreaterThan(0);
    expect(metaString(out.trailers, META_SHARD)).toBe('1');
    expect(metaString(out.trailers, META_MAP_EPOCH)).toBe('1');
    expect(backend.sm.get('a')).toBeUndefined();
    expect(text(backend.sm.get('b')!.value)).toBe('2');
    expect(backend.sm.get('c')!.version).toBe(2);
    expect(backend.calls.txn).toBe(1);
  });

  it('reports failed compares and writes nothing', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    ok(await unary(kv, 'put', { key: 'a', value: utf8('1') }));
    const out = ok(
      await unary<object, TxnResponseMsg>(kv, 'txn', {
        compares: [{ key: 'a', version: 1 }, { key: 'a', version: 7 }, { key: 'missing', version: 3 }],
        writes: [{ put: { key: 'b', value: utf8('2') } }],
      }),
    );
    expect(out).toMatchObject({ succeeded: false, revision: 1, failedCompares: [1, 2], shard: 1 });
    expect(backend.sm.get('b')).toBeUndefined();
    expect(backend.sm.revision).toBe(1);
  });

  it('runs in the shard of its keys, and refuses keys of different shards with INVALID_ARGUMENT CROSS_SHARD', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const { kv } = await start(backend);
    const [k1, k2] = keysInShards(backend, [3, 2]);
    const same = keysInShards(backend, [3, 3], 'same');
    const good = await unary<object, TxnResponseMsg>(kv, 'txn', {
      compares: [{ key: k1!, version: 0 }],
      writes: same.map((key) => ({ put: { key, value: utf8('v') } })),
    });
    expect(ok(good)).toMatchObject({ succeeded: true, revision: 1, shard: 3 });
    expect(metaString(good.trailers, META_SHARD)).toBe('3');
    expect(backend.sms.get(3)!.revision).toBe(1);

    const cross = await unary(kv, 'txn', { writes: [{ put: { key: k1, value: utf8('x') } }, { delete: { key: k2 } }] });
    const e = expectError(cross, grpc.status.INVALID_ARGUMENT);
    expect(e.details).toMatch(/CROSS_SHARD/);
    expect(metaString(cross.trailers, META_RETRY_SAFE)).toBeUndefined();
    expect(backend.sms.get(2)!.revision).toBe(0);
    expect(backend.sms.get(3)!.revision).toBe(1);
  });

  it('rejects malformed txns with INVALID_ARGUMENT before reaching the backend', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    const bad: Array<[object, RegExp]> = [
      [{}, /at least one/],
      [{ writes: [{}] }, /no operation/],
      [{ writes: [{ put: { key: 'a', value: utf8('v'), expectedVersion: 0 } }] }, /expected_version/],
      [{ writes: [{ delete: { key: 'a', expectedVersion: 3 } }] }, /expected_version/],
      [{ writes: [{ put: { key: 'a', value: utf8('v'), returnCurrentValue: true } }] }, /return_current_value/],
      [{ writes: [{ put: { key: '', value: utf8('v') } }] }, /key/],
      [{ compares: [{ key: 'a\0b', version: 0 }] }, /NUL/],
      [{ writes: [{ put: { key: 'a', value: new Uint8Array(MAX_VALUE_BYTES + 1) } }] }, /VALUE_TOO_LARGE/],
      [{ writes: [{ put: { key: 'a', value: utf8('1') } }, { delete: { key: 'a' } }] }, /more than once/],
      [{ compares: Array.from({ length: MAX_TXN_OPS + 1 }, (_, i) => ({ key: `k${i}`, version: 0 })) }, /limit/],
    ];
    for (const [req, why] of bad) {
      const out = await unary(kv, 'txn', req);
      expect(expectError(out, grpc.status.INVALID_ARGUMENT).details).toMatch(why);
      expect(metaString(out.trailers, META_RETRY_SAFE)).toBe('1');
    }
    expect(backend.calls.txn).toBe(0);
  });

  it('is forwarded to the shard leader like other writes', async () => {
    const leaderBackend = new MemoryBackend({ shards: 2 });
    const followerBackend = new MemoryBackend({ shards: 2, nodeId: 2 });
    const leader = await start(leaderBackend);
    const follower = await start(followerBackend);
    followerBackend.setNotLeader(leader.srv.address, 1);
    const [key] = keysInShards(leaderBackend, [2]);
    const out = await unary<object, TxnResponseMsg>(follower.kv, 'txn', { writes: [{ put: { key, value: utf8('v') } }] });
    expect(ok(out)).toMatchObject({ succeeded: true, shard: 2 });
    expect(metaString(out.trailers, META_LEADER)).toBe(leader.srv.address);
    expect(metaString(out.trailers, META_SHARD)).toBe('2');
    expect(leaderBackend.sms.get(2)!.get(key!)).toBeDefined();
    expect(followerBackend.sms.get(2)!.revision).toBe(0);
  });
});

describe('cluster map, status and metadata', () => {
  it('GetShardMap returns the epoch and the map as JSON', async () => {
    const backend = new MemoryBackend({ shards: 4, mapEpoch: 7 });
    const { cluster, srv } = await start(backend);
    const out = await unary<object, GetShardMapResponseMsg>(cluster, 'getShardMap', {});
    expect(ok(out).epoch).toBe(7);
    const map = JSON.parse(ok(out).mapJson!) as { epoch: number; shards: { group: number }[]; members: { address: string }[] };
    expect(Object.keys(map)).toEqual(['epoch', 'members', 'metaVoters', 'pools', 'shards', 'nextGroup']);
    expect(map).toEqual(JSON.parse(JSON.stringify(backend.map)));
    expect(map.shards.map((s) => s.group)).toEqual([1, 2, 3, 4]);
    expect(map.members[0]!.address).toBe(srv.address);
    expect(metaString(out.trailers, META_MAP_EPOCH)).toBe('7');
    // Several shards: node-level responses name no shard and no leader.
    expect(metaString(out.trailers, META_SHARD)).toBeUndefined();
    expect(metaString(out.trailers, META_LEADER)).toBeUndefined();
  });

  it('Status reports the map epoch and each shard: pool, index, descriptor epoch, matched indexes and keys', async () => {
    const backend = new MemoryBackend({ shards: 2, mapEpoch: 3 });
    const { cluster } = await start(backend);
    const [a, b] = keysInShards(backend, [1, 2]);
    backend.apply({ type: 'put', key: a!, value: utf8('1') });
    backend.apply({ type: 'put', key: b!, value: utf8('1') });
    backend.apply({ type: 'put', key: b!, value: utf8('2') });
    backend.setNotLeader('127.0.0.1:9', 2, [2]);
    const out = await unary<object, StatusResponseMsg>(cluster, 'status', {});
    const s = ok(out);
    expect(s.mapEpoch).toBe(3);
    expect(s.groups).toHaveLength(2);
    expect(s.groups![0]).toMatchObject({ group: 1, pool: '', shardIndex: 0, descriptorEpoch: 3, keys: 1, revision: 1 });
    expect(s.groups![1]).toMatchObject({ group: 2, pool: '', shardIndex: 1, descriptorEpoch: 3, matched: {}, keys: 1, revision: 2, role: 'follower' });
    expect(Object.entries(s.groups![0]!.matched!).map(([k, v]) => [Number(k), v])).toEqual([[1, 1]]);
    expect(metaString(out.trailers, META_MAP_EPOCH)).toBe('3');
  });

  it('sends kv-shard and kv-map-epoch with results and errors, and kv-leader only for the shard that served', async () => {
    const backend = new MemoryBackend({ shards: 4, mapEpoch: 5 });
    const { kv, srv } = await start(backend);
    const [k1, k2] = keysInShards(backend, [1, 4]);
    const p = await unary<object, PutResponseMsg>(kv, 'put', { key: k2, value: utf8('v') });
    expect(metaString(p.trailers, META_SHARD)).toBe('4');
    expect(metaString(p.trailers, META_LEADER)).toBe(srv.address);
    expect(metaString(p.trailers, META_MAP_EPOCH)).toBe('5');
    // Shard 1 has served no write here: no leader is known for it.
    const g = await unary(kv, 'get', { key: k1, consistency: 'SERIALIZABLE' });
    expect(metaString(g.trailers, META_SHARD)).toBe('1');
    expect(metaString(g.trailers, META_LEADER)).toBeUndefined();
    const bad = await unary(kv, 'put', { key: k1, value: new Uint8Array(MAX_VALUE_BYTES + 1) });
    expectError(bad, grpc.status.INVALID_ARGUMENT);
    expect(metaString(bad.trailers, META_SHARD)).toBe('1');
    expect(metaString(bad.trailers, META_MAP_EPOCH)).toBe('5');
  });

  it('maps WrongShardError to UNAVAILABLE, retry-safe', async () => {
    const backend = new MemoryBackend();
    const { kv } = await start(backend);
    backend.before = () => {
      throw new WrongShardError('key "k" is not owned by shard 1; the cluster map changed');
    };
    for (const m of ['put', 'get', 'txn']) {
      const out = await unary(kv, m, m === 'txn' ? { writes: [{ put: { key: 'k', value: utf8('v') } }] } : { key: 'k', value: utf8('v') });
      expectError(out, grpc.status.UNAVAILABLE);
      expect(metaString(out.trailers, META_RETRY_SAFE)).toBe('1');
      expect(metaString(out.trailers, META_MAP_EPOCH)).toBe('1');
    }
  });
});

describe('forwarding', () => {
  it('parses kv-forwarded as a hop count (old "1" = one hop, garbage = no more forwarding)', () => {
    expect(forwardHops(new grpc.Metadata())).toBe(0);
    expect(forwardHops(md(META_FORWARDED, '1'))).toBe(1);
    expect(forwardHops(md(META_FORWARDED, '2'))).toBe(2);
    expect(forwardHops(md(META_FORWARDED, '9'))).toBe(MAX_FORWARD_HOPS);
    expect(forwardHops(md(META_FORWARDED, 'yes'))).toBe(MAX_FORWARD_HOPS);
  });

  async function chain(n: number) {
    const backends = Array.from({ length: n }, (_, i) => new MemoryBackend({ nodeId: i + 1, shards: 2 }));
    const nodes = [];
    for (const b of backends) nodes.push(await start(b));
    return { backends, nodes };
  }

  it('forwards client → node not hosting the shard → follower replica → leader', async () => {
    const { backends: [a, b, c], nodes: [na, nb, nc] } = await chain(3);
    a!.setNotLeader(nb!.srv.address, 0); // does not host: points at a replica, leader unknown
    b!.setNotLeader(nc!.srv.address, 3); // a follower that knows the leader
    const [key] = keysInShards(c!, [2]);
    const out = await unary<object, PutResponseMsg>(na!.kv, 'put', { key, value: utf8('v') });
    expect(ok(out).succeeded).toBe(true);
    expect(metaString(out.trailers, META_LEADER)).toBe(nc!.srv.address);
    expect(metaString(out.trailers, META_SHARD)).toBe('2');
    expect([a!.calls.put, b!.calls.put, c!.calls.put]).toEqual([1, 1, 1]);
    expect(c!.sms.get(2)!.get(key!)).toBeDefined();
    // The hop to a replica did not make it the leader hint; the leader's answer did.
    expect(metaString((await unary(na!.kv, 'get', { key })).trailers, META_LEADER)).toBe(nc!.srv.address);
  });

  it('stops after MAX_FORWARD_HOPS hops with UNAVAILABLE, retry-safe, naming the next leader', async () => {
    const { backends: [a, b, c, d], nodes: [na, nb, nc, nd] } = await chain(4);
    a!.setNotLeader(nb!.srv.address, 2);
    b!.setNotLeader(nc!.srv.address, 3);
    c!.setNotLeader(nd!.srv.address, 4);
    const out = await unary(na!.kv, 'put', { key: 'k', value: utf8('v') });
    expect(expectError(out, grpc.status.UNAVAILABLE).details).toMatch(/forwarded/);
    expect(metaString(out.trailers, META_RETRY_SAFE)).toBe('1');
    expect(metaString(out.trailers, META_LEADER)).toBe(nd!.srv.address);
    expect([a!.calls.put, b!.calls.put, c!.calls.put, d!.calls.put]).toEqual([1, 1, 1, 0]);
    // The old one-hop flag still allows one more hop.
    const old = await unary<object, PutResponseMsg>(nc!.kv, 'put', { key: 'k', value: utf8('v') }, { metadata: md(META_FORWARDED, '1') });
    expect(ok(old).succeeded).toBe(true);
    expect(d!.calls.put).toBe(1);
    // An unparsable hop count is never forwarded.
    expectError(await unary(nc!.kv, 'put', { key: 'k', value: utf8('v') }, { metadata: md(META_FORWARDED, 'x') }), grpc.status.UNAVAILABLE);
    expect(d!.calls.put).toBe(1);
  });

  it('keeps leader hints per shard', async () => {
    const leaderBackend = new MemoryBackend({ shards: 2 });
    const backend = new MemoryBackend({ shards: 2, nodeId: 2 });
    const leader = await start(leaderBackend);
    const node = await start(backend);
    backend.setNotLeader(leader.srv.address, 1, [1]); // shard 1 is led elsewhere, shard 2 here
    const [k1, k2] = keysInShards(backend, [1, 2]);
    const p1 = await unary(node.kv, 'put', { key: k1, value: utf8('v') });
    expect(metaString(p1.trailers, META_LEADER)).toBe(leader.srv.address);
    expect(metaString(p1.trailers, META_SHARD)).toBe('1');
    const p2 = await unary(node.kv, 'put', { key: k2, value: utf8('v') });
    expect(metaString(p2.trailers, META_LEADER)).toBe(node.srv.address);
    expect(metaString(p2.trailers, META_SHARD)).toBe('2');
    // A later read of shard 1 still reports shard 1's leader, not the last writer's.
    const g1 = await unary(node.kv, 'get', { key: k1, consistency: 'SERIALIZABLE' });
    expect(metaString(g1.trailers, META_LEADER)).toBe(leader.srv.address);
    expect(node.srv.service.leaderHintOf(1)).toBe(leader.srv.address);
    expect(node.srv.service.leaderHintOf(2)).toBe(node.srv.address);
    expect(node.srv.service.leaderHint).toBeUndefined(); // two shards: no single hint
  });
});

describe('cross-shard List', () => {
  it('merges every shard in key order with exact pagination (property)', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const small = new MemoryBackend({ shards: 4 });
    const { kv } = await start(backend);
    // A tiny response budget also cuts pages by size, inside shards and after merging.
    const tiny = await start(small, { maxResponseBytes: 200 });
    const alphabet = ['a', 'b', 'z', 'é', '\u{1F600}', '\uE000', '/', '0'];
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.array(fc.constantFrom(...alphabet), { minLength: 1, maxLength: 5 }).map((cs) => cs.join('')), { maxLength: 60 }),
        fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 8 }),
        fc.array(fc.integer({ min: 0, max: 120 }), { minLength: 1, maxLength: 8 }),
        fc.boolean(),
        async (suffixes, pageSizes, valueSizes, useTiny) => {
          const prefix = `r${run++}/`;
          const b = useTiny ? small : backend;
          const stub = useTiny ? tiny.kv : kv;
          suffixes.forEach((sfx, i) => b.apply({ type: 'put', key: prefix + sfx, value: new Uint8Array(valueSizes[i % valueSizes.length]!) }));
          b.apply({ type: 'put', key: `${prefix.slice(0, -1)}x`, value: utf8('outside') }); // same start, other prefix
          const expected = suffixes.map((s) => prefix + s).sort(compareKeys);
          const got: string[] = [];
          let token = '';
          let pages = 0;
          do {
            const limit = pageSizes[pages % pageSizes.length]!;
            const page = ok(await unary<object, ListResponseMsg>(stub, 'list', { prefix, limit, pageToken: token, keysOnly: pages % 2 === 1 }));
            expect(page.items!.length).toBeLessThanOrEqual(limit);
            expect(page.revision).toBe(0);
            expect(Object.keys(page.shardRevisions!).sort()).toEqual(['1', '2', '3', '4']);
            for (const [g, rev] of Object.entries(page.shardRevisions!)) expect(rev).toBe(b.sms.get(Number(g))!.revision);
            got.push(...page.items!.map((it) => it.key!));
            token = page.nextPageToken!;
            pages++;
            expect(pages).toBeLessThanOrEqual(expected.length + 1);
          } while (token);
          expect(got).toEqual(expected);
        },
      ),
      { numRuns: 60 },
    );
    expect(new Set(backend.groups.filter((g) => backend.sms.get(g)!.keyCount > 0)).size).toBe(4);
  });

  it('lists one shard when asked, and reports one shard revision for a one-shard listing', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const { kv } = await start(backend);
    for (let i = 0; i < 20; i++) backend.apply({ type: 'put', key: `k${i}`, value: utf8('v') });
    const out = await unary<object, ListResponseMsg>(kv, 'list', { prefix: 'k', shard: 3 });
    const page = ok(out);
    expect(page.items!.length).toBeGreaterThan(0);
    expect(page.items!.every((it) => backend.groupOf(it.key!) === 3)).toBe(true);
    expect(page.revision).toBe(backend.sms.get(3)!.revision);
    expect(page.shardRevisions).toEqual({ '3': backend.sms.get(3)!.revision });
    expect(metaString(out.trailers, META_SHARD)).toBe('3');
    const one = await start(new MemoryBackend());
    ok(await unary(one.kv, 'put', { key: 'a', value: utf8('v') }));
    const single = await unary<object, ListResponseMsg>(one.kv, 'list', { prefix: '' });
    expect(ok(single)).toMatchObject({ revision: 1, shardRevisions: { '1': 1 } });
    expect(metaString(single.trailers, META_SHARD)).toBe('1');
    expectError(await unary(kv, 'list', { prefix: 'k', shard: 9 }), grpc.status.INVALID_ARGUMENT);
  });

  it('forwards each shard of a merged listing to a node that serves it', async () => {
    const leaderBackend = new MemoryBackend({ shards: 4 });
    const backend = new MemoryBackend({ shards: 4, nodeId: 2 });
    const leader = await start(leaderBackend);
    const node = await start(backend);
    backend.setNotLeader(leader.srv.address, 1, [2]);
    const all: string[] = [];
    for (let i = 0; i < 30; i++) {
      const key = `m/${i}`;
      all.push(key);
      (backend.groupOf(key) === 2 ? leaderBackend : backend).apply({ type: 'put', key, value: utf8('v') });
    }
    const got: string[] = [];
    let token = '';
    do {
      const out = await unary<object, ListResponseMsg>(node.kv, 'list', { prefix: 'm/', limit: 7, pageToken: token });
      const page = ok(out);
      expect(metaString(out.trailers, META_SHARD)).toBeUndefined();
      expect(metaString(out.trailers, META_LEADER)).toBeUndefined();
      got.push(...page.items!.map((i) => i.key!));
      token = page.nextPageToken!;
    } while (token);
    expect(got).toEqual(all.sort(compareKeys));
    expect(leaderBackend.calls.list).toBeGreaterThan(0);
    // A failing shard fails the listing, naming the shard.
    leaderBackend.before = () => {
      throw new NotLeaderError(0, undefined);
    };
    const failed = await unary(node.kv, 'list', { prefix: 'm/' });
    expectError(failed, grpc.status.UNAVAILABLE);
    expect(metaString(failed.trailers, META_SHARD)).toBe('2');
  });
});

describe('cross-shard Watch', () => {
  it('merges shards, tagging events, one shard per response, with a complete token in the first progress', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const { kv } = await start(backend);
    backend.apply({ type: 'put', key: 'before', value: utf8('x') });
    const keys = Array.from({ length: 24 }, (_, i) => `w/${i}`);
    let wrote = false;
    const { msgs, headers } = await readWatch(kv.watch({ prefix: 'w/', progressIntervalMs: 20 }), (all) => {
      if (!wrote && all.some((m) => m.progressNotify)) {
        wrote = true;
        for (const key of keys) backend.apply({ type: 'put', key, value: utf8(key) });
        backend.apply({
          type: 'txn',
          compares: [],
          writes: keysInShards(backend, [2, 2], 'w/t').map((key) => ({ type: 'put' as const, key, value: utf8('t') })),
        });
      }
      return eventsOf(all).length >= keys.length + 2;
    });
    expect(metaString(headers, META_SHARD)).toBeUndefined();
    expect(metaString(headers, META_MAP_EPOCH)).toBe('1');
    const firstProgress = msgs.find((m) => m.progressNotify)!;
    expect(firstProgress.revision).toBe(0);
    expect([...decodeResumeToken(firstProgress.resumeToken!).keys()]).toEqual([1, 2, 3, 4]);
    for (const m of msgs) {
      expect(m.resumeToken).toBeTruthy();
      const shards = new Set((m.events ?? []).map((e) => e.shard));
      expect(shards.size).toBeLessThanOrEqual(1);
      for (const e of m.events ?? []) {
        expect(e.shard).toBe(backend.groupOf(e.key!));
        expect(decodeResumeToken(m.resumeToken!).get(e.shard!)).toBeGreaterThanOrEqual(e.revision!);
        expect(m.revision).toBeGreaterThanOrEqual(e.revision!);
      }
    }
    const got = msgs.flatMap((m) => m.events ?? []);
    expect(got.map((e) => e.key).filter((k) => !k!.startsWith('w/t')).sort()).toEqual([...keys].sort());
    // The txn's two events share one revision and one response.
    const txn = msgs.find((m) => (m.events ?? []).some((e) => e.key!.startsWith('w/t')))!;
    const txnEvents = txn.events!.filter((e) => e.key!.startsWith('w/t'));
    expect(txnEvents.map((e) => e.revision)).toEqual([txnEvents[0]!.revision, txnEvents[0]!.revision]);
    // Per shard, revisions only grow.
    for (const g of backend.groups) {
      const revs = got.filter((e) => e.shard === g).map((e) => e.revision!);
      expect(revs).toEqual([...revs].sort((a, b) => a - b));
    }
  });

  it('resumes from the token of the last response received with no gap and no duplicate', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const { kv } = await start(backend);
    const written: Ev[] = [];
    const put = (key: string, type: 'put' | 'delete' = 'put'): void => {
      const r = backend.apply(type === 'put' ? { type: 'put', key, value: utf8(key) } : { type: 'delete', key });
      written.push(evId({ shard: backend.groupOf(key), revision: r.revision, key, type: type === 'put' ? 'PUT' : 'DELETE' }));
    };
    for (let i = 0; i < 10; i++) put(`r/old${i}`); // history before the watch: from_revision 1 replays it
    let wrote = false;
    const first = await readWatch(kv.watch({ prefix: 'r/', fromRevision: 1, progressIntervalMs: 20 }), (all) => {
      if (!wrote && all.some((m) => m.progressNotify)) {
        wrote = true;
        for (let i = 0; i < 30; i++) put(`r/a${i}`);
      }
      return eventsOf(all).length >= 22; // disconnect mid-stream
    });
    const received = eventsOf(first.msgs);
    const token = first.msgs[first.msgs.length - 1]!.resumeToken!;
    expect(received.length).toBeLessThan(written.length);
    // Changes while disconnected.
    for (let i = 0; i < 20; i++) put(`r/b${i}`);
    put('r/a3', 'delete');
    const second = await readWatch(kv.watch({ prefix: 'r/', resumeToken: token, progressIntervalMs: 20 }), (all) => {
      return eventsOf(all).length + received.length >= written.length && all.some((m) => m.progressNotify);
    });
    const resumed = eventsOf(second.msgs);
    const all = [...received, ...resumed];
    expect(new Set(all).size).toBe(all.length); // no duplicate
    expect([...all].sort()).toEqual([...written].sort()); // no gap
  });

  it('starts shards the token does not name at revision 1, and rejects a bad token', async () => {
    const backend = new MemoryBackend({ shards: 2 });
    const { kv } = await start(backend);
    const [a, b] = keysInShards(backend, [1, 2], 't/');
    backend.apply({ type: 'put', key: a!, value: utf8('1') });
    backend.apply({ type: 'put', key: a!, value: utf8('2') });
    backend.apply({ type: 'put', key: b!, value: utf8('1') });
    const token = encodeResumeToken(new Map([[1, 1]]));
    const { msgs } = await readWatch(kv.watch({ prefix: 't/', resumeToken: token }), (all) => all.some((m) => m.progressNotify));
    expect(eventsOf(msgs).sort()).toEqual([`1:2:PUT:${a}`, `2:1:PUT:${b}`].sort());
    const progress = msgs.find((m) => m.progressNotify)!;
    expect(decodeResumeToken(progress.resumeToken!)).toEqual(new Map([[1, 2], [2, 1]]));
    for (const bad of ['***', 'e30', Buffer.from('{"v":2,"s":{}}').toString('base64url'), Buffer.from('{"v":1,"s":{"x":1}}').toString('base64url')]) {
      const r = await readWatch(kv.watch({ prefix: 't/', resumeToken: bad }), () => false);
      expect(r.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(r.error?.details).toMatch(/resume token/);
    }
  });

  it('ends the whole watch with canceled, the shard and a current token when one shard fails', async () => {
    const backend = new MemoryBackend({ shards: 3 });
    const { kv } = await start(backend);
    for (let i = 0; i < 30; i++) backend.apply({ type: 'put', key: `c/${i}`, value: utf8('v') });
    const k2 = keysInShards(backend, [2], 'c/')[0]!;
    backend.apply({ type: 'put', key: k2, value: utf8('again') });
    backend.compact(backend.sms.get(2)!.revision, 2);
    const { msgs } = await readWatch(kv.watch({ prefix: 'c/', fromRevision: 1 }), () => false);
    const last = msgs[msgs.length - 1]!;
    expect(last.canceled).toBe(true);
    expect(last.cancelReason).toMatch(/^shard 2: .*compacted/);
    expect(last.compactRevision).toBe(backend.sms.get(2)!.revision);
    expect(last.resumeToken).toBeTruthy();
    expect(last.revision).toBe(0);

    // A shard cancelled later (leader lost) ends it too, with what was seen so far.
    const stream = kv.watch({ prefix: 'c/' });
    const got = await readWatch(stream, (all) => {
      if (all.length === 1) backend.cancelWatches('leader lost');
      return false;
    });
    const end = got.msgs[got.msgs.length - 1]!;
    expect(end).toMatchObject({ canceled: true });
    expect(end.cancelReason).toMatch(/^shard \d: leader lost/);
    expect([...decodeResumeToken(end.resumeToken!).keys()]).toEqual([1, 2, 3]);
  });

  it('forwards the watch of a shard this node cannot serve, merging it with the local ones', async () => {
    const leaderBackend = new MemoryBackend({ shards: 3 });
    const local = new MemoryBackend({ shards: 3, nodeId: 2 });
    const leader = await start(leaderBackend);
    const noShard3: KvBackend = Object.assign(Object.create(local) as MemoryBackend, {
      watch: (req: Parameters<KvBackend['watch']>[0], sink: WatchSink) => {
        if (req.shard === 3) throw new NotLeaderError(0, leader.srv.address, 3);
        return local.watch(req, sink);
      },
    });
    const node = await start(noShard3);
    const expected: Ev[] = [];
    for (let i = 0; i < 30; i++) {
      const key = `f/${i}`;
      const g = local.groupOf(key);
      const r = (g === 3 ? leaderBackend : local).apply({ type: 'put', key, value: utf8('v') });
      expected.push(evId({ shard: g, revision: r.revision, key, type: 'PUT' }));
    }
    const { msgs } = await readWatch(node.kv.watch({ prefix: 'f/', fromRevision: 1 }), (all) => eventsOf(all).length >= expected.length && all.some((m) => m.progressNotify));
    expect(eventsOf(msgs).sort()).toEqual([...expected].sort());
    expect(leaderBackend.calls.watch).toBe(1);
    const token = decodeResumeToken(msgs[msgs.length - 1]!.resumeToken!);
    expect(token.get(3)).toBe(leaderBackend.sms.get(3)!.revision);
  });

  it('cancels a merged watch whose client leaves too many responses unsent, with a token', async () => {
    const backend = new MemoryBackend({ shards: 3 });
    const firehose: KvBackend = Object.assign(Object.create(backend) as MemoryBackend, {
      watch: (req: Parameters<KvBackend['watch']>[0], sink: WatchSink) => {
        // Synchronously, ignoring back-pressure: the service must still stop every sub-watch.
        for (let r = 1; r <= 50; r++) sink.events([{ type: 'put', key: `h/${req.shard}/${r}`, value: utf8('v'), revision: r, timestampMs: 1 }], r);
        return { cancel: () => undefined };
      },
    });
    const { kv } = await start(firehose, { watchMaxPendingResponses: 8 });
    const { msgs } = await readWatch(kv.watch({ prefix: 'h/' }), () => false);
    const last = msgs[msgs.length - 1]!;
    expect(last).toMatchObject({ canceled: true, revision: 0 });
    expect(last.cancelReason).toMatch(/responses unsent/);
    const delivered = msgs.slice(0, -1);
    expect(delivered.length).toBeLessThanOrEqual(10);
    // The token covers exactly what was delivered: shard 1's revisions 1..n, nothing of the others.
    expect(decodeResumeToken(last.resumeToken!)).toEqual(new Map([[1, delivered.length]]));
  });

  it('gives a single-shard watch a one-entry token and shard-tagged events', async () => {
    const backend = new MemoryBackend({ shards: 4 });
    const { kv } = await start(backend);
    const [k] = keysInShards(backend, [2], 's/');
    backend.apply({ type: 'put', key: k!, value: utf8('v') });
    const req: WatchRequestMsg = { prefix: 's/', shard: 2, fromRevision: 1 };
    const { msgs, headers } = await readWatch(kv.watch(req), (all) => all.some((m) => m.progressNotify));
    expect(metaString(headers, META_SHARD)).toBe('2');
    expect(msgs[0]!.events!.map((e) => [e.key, e.shard, e.revision])).toEqual([[k, 2, 1]]);
    expect(msgs[0]!.revision).toBe(1);
    for (const m of msgs) expect(decodeResumeToken(m.resumeToken!)).toEqual(new Map([[2, 1]]));
    const one = await start(new MemoryBackend());
    const plain = await readWatch(one.kv.watch({ prefix: '' }), (all) => all.length >= 1);
    expect(plain.msgs[0]).toMatchObject({ progressNotify: true, revision: 0 });
    expect(decodeResumeToken(plain.msgs[0]!.resumeToken!)).toEqual(new Map([[1, 0]]));
  });
});
