/**
 * The reserved keyspace (/_..., /ext/) through the gRPC KV service: client puts, deletes,
 * triggers, txns, gets, lists, watches and pipeline ops there are PERMISSION_DENIED (the shard
 * descriptor attack among them), the metadata group (shard 0) cannot be listed or watched,
 * listings and watches that cover the keyspace leave reserved keys out, dead letters are readable
 * (never writable) with the admin token (client library, kvctl, forwarded calls), and each
 * connection's watches are capped.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { main as kvctl } from '../../src/cli/kvctl.js';
import { KvClient } from '../../src/client/index.js';
import { silentLogger } from '../../src/log.js';
import { DATA_GROUP, KvNode } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { AUTHORIZATION_METADATA, bearer } from '../../src/wire/auth.js';
import { MAX_CONCURRENT_STREAMS, createGrpcServer } from '../../src/server/kv-service.js';
import { META_FORWARDED } from '../../src/wire/metadata.js';
import type {
  GetResponseMsg,
  ListResponseMsg,
  PipelineResponseMsg,
  PutResponseMsg,
  WatchRequestMsg,
  WatchResponseMsg,
} from '../../src/wire/proto.js';
import { encodeDescriptor } from '../../src/sharding/index.js';
import { SHARD_DESCRIPTOR_KEY, type Command } from '../../src/statemachine/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { deferred, expectError, ok, serviceFixture, text, unary, utf8 } from './harness.js';
import { MemoryBackend } from './memory-backend.js';

const { start, defer } = serviceFixture();
const TOKEN = 'reserved-keys-admin-token';
const RESERVED = ['/_sys/x', '/_cluster/x', '/_dlq/x', '/ext/x'];
const LETTER = '/_dlq/ext1/000000000001/in/a';

function adminMd(token = TOKEN): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set(AUTHORIZATION_METADATA, bearer(token));
  return md;
}

/** Collects a watch stream until `until` holds (then cancels it), or its error. */
async function watchOutcome(
  stream: grpc.ClientReadableStream<WatchResponseMsg>,
  until: (all: WatchResponseMsg[]) => boolean = () => false,
): Promise<{ msgs: WatchResponseMsg[]; error?: grpc.ServiceError }> {
  const msgs: WatchResponseMsg[] = [];
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
  return { msgs, ...(error ? { error } : {}) };
}

/** Whether a watch of `req` (with `md`) fails with PERMISSION_DENIED. */
async function watchDenied(kv: grpc.Client & { watch: Function }, req: WatchRequestMsg, md = new grpc.Metadata()): Promise<boolean> {
  const r = await watchOutcome(kv.watch(req, md) as grpc.ClientReadableStream<WatchResponseMsg>, () => true);
  return r.error?.code === grpc.status.PERMISSION_DENIED;
}

/** One in-process KvNode (its own single-shard cluster) serving the KV API with the admin token. */
async function nodeService(): Promise<{ node: KvNode; kv: Awaited<ReturnType<typeof start>>['kv']; address: string }> {
  const hub = new LoopbackHub();
  const node = await KvNode.open(
    { id: 1, members: new Map([[1, '127.0.0.1:1']]), tickMs: 10, log: silentLogger(), onFatal: (e) => { throw e; } },
    new MemoryEngine(),
    hub.transport(1),
  );
  node.start();
  defer(() => node.stop());
  for (let i = 0; !(node.replica(DATA_GROUP)?.isLeader && node.replica(DATA_GROUP)!.descriptor); i++) {
    if (i > 500) throw new Error('the node did not get a descriptor');
    await new Promise((r) => setTimeout(r, 10));
  }
  const { kv, srv } = await start(node, { adminToken: TOKEN });
  return { node, kv, address: srv.address };
}

/** Writes `cmd` as the cluster itself would (system origin). */
async function systemWrite(node: KvNode, cmd: Command): Promise<void> {
  const r = await node.execute(DATA_GROUP, cmd, { deadlineMs: Date.now() + 5000 }, 'system');
  expect(r.type).not.toBe('rejected');
}

describe('the reserved keyspace through the KV service', () => {
  it('a client put of /_sys/shard with a huge-epoch descriptor is refused, and the shard keeps accepting puts', async () => {
    const { node, kv } = await nodeService();
    const sm = () => node.replica(DATA_GROUP)!.internalsForTests().sm;
    const before = sm().descriptor!;
    const evil = utf8(encodeDescriptor({ group: DATA_GROUP, pool: '', index: 1, shards: 2, excluded: [], epoch: Number.MAX_SAFE_INTEGER }));
    const out = await unary(kv, 'put', { key: SHARD_DESCRIPTOR_KEY, value: evil });
    expect(expectError(out, grpc.status.PERMISSION_DENIED).details).toMatch(
      /key "\/_sys\/shard" is in the reserved system keyspace \(\/_\.\.\., \/ext\/\); it is written only by the cluster itself/,
    );
    // The same write past the service (the client-origin path lambdas use) is refused by the shard itself.
    await expect(node.put({ key: SHARD_DESCRIPTOR_KEY, value: evil }, { deadlineMs: Date.now() + 5000 })).rejects.toMatchObject({ code: 'RESERVED' });
    await expect(node.txn({ compares: [], writes: [{ type: 'put', key: SHARD_DESCRIPTOR_KEY, value: evil }] }, { deadlineMs: Date.now() + 5000 })).rejects.toMatchObject({
      code: 'RESERVED',
    });
    expect(sm().descriptor).toEqual(before);
    for (const k of ['/a', '/b', '/c', '/d']) expect(ok(await unary<object, PutResponseMsg>(kv, 'put', { key: k, value: utf8('v') })).succeeded).toBe(true);
    expect(sm().descriptor).toEqual(before);
  });

  it('put, delete, trigger, txn, get, list, watch and pipeline ops on reserved keys are PERMISSION_DENIED', async () => {
    const { kv, node } = await nodeService();
    for (const key of RESERVED) {
      const denied = (out: Awaited<ReturnType<typeof unary>>, what: string) =>
        expect(grpc.status[out.ok ? grpc.status.OK : out.error.code], `${what} ${key}`).toBe('PERMISSION_DENIED');
      denied(await unary(kv, 'put', { key, value: utf8('x') }), 'put');
      denied(await unary(kv, 'delete', { key }), 'delete');
      denied(await unary(kv, 'trigger', { key, value: utf8('x') }), 'trigger');
      denied(await unary(kv, 'get', { key }), 'get');
      denied(await unary(kv, 'get', { key, consistency: 'SERIALIZABLE' }), 'serializable get');
      denied(await unary(kv, 'txn', { writes: [{ put: { key, value: utf8('x') } }] }), 'txn put');
      denied(await unary(kv, 'txn', { writes: [{ put: { key: '/fine', value: utf8('x') } }, { delete: { key } }] }), 'txn delete');
      denied(await unary(kv, 'txn', { compares: [{ key, version: 0 }], writes: [{ put: { key: '/fine', value: utf8('x') } }] }), 'txn compare');
      for (const prefix of [key, `${key}/`]) {
        denied(await unary(kv, 'list', { prefix }), 'list');
        denied(await unary(kv, 'list', { prefix, shard: DATA_GROUP }), 'list of a shard');
        expect(await watchDenied(kv, { prefix }), `watch ${prefix}`).toBe(true);
      }
    }
    for (const prefix of ['/_sys/', '/_dlq/', '/_cluster/', '/ext/', '/_s']) denied2(await unary(kv, 'list', { prefix }), prefix);
    const pl = kv.pipeline();
    pl.on('error', () => undefined);
    const got = new Map<number, PipelineResponseMsg>();
    const all = deferred();
    const ops = RESERVED.flatMap((key) => [{ put: { key, value: utf8('x') } }, { get: { key } }, { delete: { key } }, { trigger: { key, value: utf8('x') } }]);
    pl.on('data', (m: PipelineResponseMsg) => {
      got.set(m.id!, m);
      if (got.size === ops.length) all.resolve();
    });
    ops.forEach((op, i) => pl.write({ id: i + 1, ...op }));
    await all.promise;
    pl.end();
    for (const m of got.values()) expect(grpc.status[m.error?.code ?? 0], JSON.stringify(m)).toBe('PERMISSION_DENIED');
    // Nothing was written; the shard serves ordinary keys.
    const sm = node.replica(DATA_GROUP)!.internalsForTests().sm;
    for (const key of RESERVED) expect(sm.get(key)).toBeUndefined();
    expect(sm.get('/fine')).toBeUndefined();
    ok(await unary(kv, 'put', { key: '/fine', value: utf8('x') }));

    function denied2(out: Awaited<ReturnType<typeof unary>>, prefix: string): void {
      expect(expectError(out, grpc.status.PERMISSION_DENIED).details, prefix).toContain('clients cannot list or watch it');
    }
  });

  it('List and Watch of shard 0 (the metadata group) are PERMISSION_DENIED, even with the admin token', async () => {
    const { kv } = await nodeService();
    for (const md of [new grpc.Metadata(), adminMd()]) {
      for (const prefix of ['', '/ext/', '/_cluster/', '/a']) {
        const out = await unary(kv, 'list', { prefix, shard: 0 }, { metadata: md });
        expect(expectError(out, grpc.status.PERMISSION_DENIED).details).toMatch(/metadata group/);
        expect(await watchDenied(kv, { prefix, shard: 0 }, md)).toBe(true);
      }
    }
  });

  it('a listing or watch that covers the reserved keyspace (/, /_, /ext) leaves reserved keys out', async () => {
    const { kv, node } = await nodeService();
    const watch = kv.watch({ prefix: '/', fromRevision: 1 });
    await systemWrite(node, { type: 'put', key: LETTER, value: utf8('letter') });
    await systemWrite(node, { type: 'put', key: '/ext/x/meta', value: utf8('{"config":"secret"}') });
    await systemWrite(node, { type: 'put', key: '/_future/x', value: utf8('s') });
    for (const key of ['/a', '/extra', '/z']) ok(await unary(kv, 'put', { key, value: utf8('c') }));
    const keys = async (prefix: string) => (ok(await unary<object, ListResponseMsg>(kv, 'list', { prefix })).items ?? []).map((i) => i.key);
    expect(await keys('')).toEqual(['/a', '/extra', '/z']);
    expect(await keys('/')).toEqual(['/a', '/extra', '/z']);
    expect(await keys('/_')).toEqual([]);
    expect(await keys('/ext')).toEqual(['/extra']);
    const shardKeys = (ok(await unary<object, ListResponseMsg>(kv, 'list', { prefix: '', shard: DATA_GROUP })).items ?? []).map((i) => i.key);
    expect(shardKeys).toEqual(['/a', '/extra', '/z']);
    const seen = await watchOutcome(watch, (all) => all.flatMap((m) => m.events ?? []).some((e) => e.key === '/z'));
    expect(seen.msgs.flatMap((m) => m.events ?? []).map((e) => e.key)).toEqual(['/a', '/extra', '/z']);
  });

  it('dead letters are readable with the admin token (get, list, watch) and never writable; other reserved keys stay refused', async () => {
    const { kv, node } = await nodeService();
    await systemWrite(node, { type: 'put', key: LETTER, value: utf8('letter') });
    // Without the token, or with a wrong one: refused.
    for (const md of [new grpc.Metadata(), adminMd('wrong-token')]) {
      expectError(await unary(kv, 'get', { key: LETTER }, { metadata: md }), grpc.status.PERMISSION_DENIED);
      expectError(await unary(kv, 'list', { prefix: '/_dlq/ext1/' }, { metadata: md }), grpc.status.PERMISSION_DENIED);
      expect(await watchDenied(kv, { prefix: '/_dlq/' }, md)).toBe(true);
    }
    // With it: readable.
    const g = ok(await unary<object, GetResponseMsg>(kv, 'get', { key: LETTER }, { metadata: adminMd() }));
    expect(text(g.value)).toBe('letter');
    for (const prefix of ['/_dlq/', '/_dlq/ext1/']) {
      const l = ok(await unary<object, ListResponseMsg>(kv, 'list', { prefix }, { metadata: adminMd() }));
      expect(l.items!.map((i) => [i.key, text(i.value)])).toEqual([[LETTER, 'letter']]);
    }
    const w = await watchOutcome(kv.watch({ prefix: '/_dlq/', fromRevision: 1 }, adminMd()), (all) => all.some((m) => (m.events ?? []).length > 0));
    expect(w.error).toBeUndefined();
    expect(w.msgs.flatMap((m) => m.events ?? []).map((e) => e.key)).toEqual([LETTER]);
    // Never writable, and the token opens nothing else.
    expectError(await unary(kv, 'put', { key: LETTER, value: utf8('forged') }, { metadata: adminMd() }), grpc.status.PERMISSION_DENIED);
    expectError(await unary(kv, 'delete', { key: LETTER }, { metadata: adminMd() }), grpc.status.PERMISSION_DENIED);
    expectError(await unary(kv, 'get', { key: SHARD_DESCRIPTOR_KEY }, { metadata: adminMd() }), grpc.status.PERMISSION_DENIED);
    expectError(await unary(kv, 'list', { prefix: '/_sys/' }, { metadata: adminMd() }), grpc.status.PERMISSION_DENIED);
    expectError(await unary(kv, 'list', { prefix: '/ext/' }, { metadata: adminMd() }), grpc.status.PERMISSION_DENIED);
    expect(text(node.replica(DATA_GROUP)!.readValue(LETTER)!.value)).toBe('letter');
  });

  it('the client library and kvctl read dead letters with the admin token, and are refused without it', async () => {
    const { node, address } = await nodeService();
    await systemWrite(node, { type: 'put', key: LETTER, value: utf8('letter') });
    const admin = new KvClient({ endpoints: [address], adminToken: TOKEN, shardRouting: false });
    const plain = new KvClient({ endpoints: [address], shardRouting: false });
    defer(() => {
      admin.close();
      plain.close();
    });
    expect((await admin.list('/_dlq/ext1/')).items.map((i) => i.key)).toEqual([LETTER]);
    expect((await admin.get(LETTER)).found).toBe(true);
    await expect(admin.put('/_dlq/ext1/x', 'forged')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(plain.list('/_dlq/ext1/')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(plain.put('/_sys/x', 'v')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });

    const run = async (args: string[]) => {
      let out = '';
      let err = '';
      const code = await kvctl(['--endpoints', address, ...args], { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) }, env: {} });
      return { code, out, err };
    };
    const ls = await run(['--json', '--admin-token', TOKEN, 'ls', '/_dlq/ext1/']);
    expect(ls.code, ls.err).toBe(0);
    expect(JSON.parse(ls.out).items.map((i: { key: string }) => i.key)).toEqual([LETTER]);
    const denied = await run(['ls', '/_dlq/ext1/']);
    expect(denied.code).toBe(1);
    expect(denied.err).toMatch(/PERMISSION_DENIED/);
    const put = await run(['--admin-token', TOKEN, 'put', '/_dlq/ext1/x', 'v']);
    expect(put.code).toBe(1);
    expect(put.err).toMatch(/PERMISSION_DENIED/);
  });
});

describe('forwarded reads of dead letters', () => {
  it('a follower forwards the admin token with an admin read; without it, refuses before forwarding', async () => {
    const leaderBackend = new MemoryBackend({ nodeId: 1 });
    const followerBackend = new MemoryBackend({ nodeId: 2 });
    const leader = await start(leaderBackend, { adminToken: TOKEN });
    const follower = await start(followerBackend, { adminToken: TOKEN });
    followerBackend.setNotLeader(leader.srv.address, 1);
    leaderBackend.apply({ type: 'put', key: LETTER, value: utf8('letter') });
    const l = ok(await unary<object, ListResponseMsg>(follower.kv, 'list', { prefix: '/_dlq/' }, { metadata: adminMd() }));
    expect(l.items!.map((i) => i.key)).toEqual([LETTER]);
    expect(text(ok(await unary<object, GetResponseMsg>(follower.kv, 'get', { key: LETTER }, { metadata: adminMd() })).value)).toBe('letter');
    const before = leaderBackend.calls.list;
    expectError(await unary(follower.kv, 'list', { prefix: '/_dlq/' }), grpc.status.PERMISSION_DENIED);
    expect(leaderBackend.calls.list).toBe(before);
  });

  it('a node without an admin token refuses every dead-letter read', async () => {
    const backend = new MemoryBackend();
    backend.apply({ type: 'put', key: LETTER, value: utf8('letter') });
    const { kv } = await start(backend);
    expectError(await unary(kv, 'list', { prefix: '/_dlq/' }, { metadata: adminMd() }), grpc.status.PERMISSION_DENIED);
  });
});

describe('bounded connections', () => {
  it('servers cap concurrent streams per connection', () => {
    expect(MAX_CONCURRENT_STREAMS).toBe(1000);
    const server = createGrpcServer();
    expect((server as unknown as { options: Record<string, unknown> }).options['grpc.max_concurrent_streams']).toBe(MAX_CONCURRENT_STREAMS);
    server.forceShutdown();
  });

  it('caps the watches of one connection (RESOURCE_EXHAUSTED), releasing a slot when a watch ends', async () => {
    const { kv } = await start(new MemoryBackend(), { maxWatchesPerConnection: 2 });
    const open = async () => {
      const s = kv.watch({ prefix: '/w/', progressIntervalMs: 20 });
      const first = deferred<grpc.ServiceError | undefined>();
      s.on('data', () => first.resolve(undefined));
      s.on('error', (e: grpc.ServiceError) => first.resolve(e));
      return { s, error: await first.promise };
    };
    const a = await open();
    const b = await open();
    expect(a.error).toBeUndefined();
    expect(b.error).toBeUndefined();
    const c = await open();
    expect(grpc.status[c.error!.code]).toBe('RESOURCE_EXHAUSTED');
    expect(c.error!.details).toMatch(/too many watches on this connection \(at most 2 at once\)/);
    // Forwarded watches (from other nodes) are not counted against the connection.
    const fmd = new grpc.Metadata();
    fmd.set(META_FORWARDED, '1');
    const fwd = kv.watch({ prefix: '/w/', progressIntervalMs: 20 }, fmd);
    const fwdFirst = deferred<grpc.ServiceError | undefined>();
    fwd.on('data', () => fwdFirst.resolve(undefined));
    fwd.on('error', (e: grpc.ServiceError) => fwdFirst.resolve(e.code === grpc.status.CANCELLED ? undefined : e));
    expect(await fwdFirst.promise).toBeUndefined();
    fwd.cancel();
    a.s.on('error', () => undefined);
    a.s.cancel();
    let d: Awaited<ReturnType<typeof open>> | undefined;
    for (let i = 0; i < 100; i++) {
      d = await open();
      if (!d.error) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(d!.error).toBeUndefined();
    for (const x of [b, d!]) {
      x.s.on('error', () => undefined);
      x.s.cancel();
    }
  });
});
