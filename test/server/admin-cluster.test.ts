/** Tests of the Admin service's cluster RPCs (CreatePool, AddMember, RemoveMember) over a fake backend: the admin token, input checks, the metadata-leader redirect, error mapping, deadlines, and the AdminClient that follows the redirect. */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { KvError } from '../../src/client/errors.js';
import { addAdminService, type AdminBackend, type CreatePoolInput } from '../../src/server/admin-service.js';
import { AdminStubClient } from '../../src/wire/admin-proto.js';
import { MAX_POOL_SHARDS, MAX_REPLICAS, ShardingError, type PoolSpec, type ShardingErrorCode } from '../../src/sharding/index.js';

const TOKEN = 'sekret';

/** A scriptable AdminBackend recording the cluster calls it receives. */
class FakeAdmin implements AdminBackend {
  readonly nodeId: number;
  leader = true;
  leaderAddress: string | undefined;
  readonly calls: Array<{ method: string; args: unknown[] }> = [];
  /** What the next cluster call does (default: succeed). */
  behaviour: (method: string) => Promise<unknown> | undefined = () => undefined;

  constructor(nodeId = 1) {
    this.nodeId = nodeId;
  }
  isMetadataLeader(): boolean {
    return this.leader;
  }
  metadataLeaderAddress(): string | undefined {
    return this.leaderAddress;
  }
  private run<T>(method: string, args: unknown[], ok: T): Promise<T> {
    this.calls.push({ method, args });
    return (this.behaviour(method) as Promise<T> | undefined) ?? Promise.resolve(ok);
  }
  createPool(req: CreatePoolInput, deadlineMs: number): Promise<{ pool: PoolSpec; epoch: number }> {
    const pool: PoolSpec = { name: req.name, shards: req.shards, replicas: req.replicas ?? 3, ...(req.affinity ? { affinity: req.affinity } : {}), state: 'active' };
    return this.run('createPool', [req, deadlineMs], { pool, epoch: 42 });
  }
  addMember(id: number, address: string, deadlineMs: number): Promise<{ epoch: number }> {
    return this.run('addMember', [id, address, deadlineMs], { epoch: 43 });
  }
  removeMember(id: number, deadlineMs: number): Promise<{ epoch: number }> {
    return this.run('removeMember', [id, deadlineMs], { epoch: 44 });
  }
  async load(): Promise<never> {
    throw new Error('not used');
  }
  async unload(): Promise<boolean> {
    return false;
  }
  records() {
    return [];
  }
  statuses() {
    return [];
  }
}

interface Running {
  address: string;
  server: grpc.Server;
}

const running: Running[] = [];
const clients: grpc.Client[] = [];

async function start(backend: AdminBackend, opts: { adminToken?: string; defaultDeadlineMs?: number } = { adminToken: TOKEN }): Promise<Running> {
  const server = new grpc.Server();
  addAdminService(server, backend, opts);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const r = { address: `127.0.0.1:${port}`, server };
  running.push(r);
  return r;
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const r of running.splice(0)) r.server.forceShutdown();
});

/** Metadata with the admin token (`null`: without any). */
function auth(token: string | null = TOKEN): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token !== null) md.set('authorization', `Bearer ${token}`);
  return md;
}

type Outcome = { ok: true; res: Record<string, unknown> } | { ok: false; code: grpc.status; details: string; md: grpc.Metadata };

function call(address: string, method: string, req: object, md: grpc.Metadata = auth(), deadlineMs = 5_000): Promise<Outcome> {
  const stub = new AdminStubClient(address, grpc.credentials.createInsecure());
  clients.push(stub);
  return new Promise((resolve) => {
    (stub as unknown as Record<string, Function>)[method]!.call(stub, req, md, { deadline: new Date(Date.now() + deadlineMs) }, (e: grpc.ServiceError | null, res?: Record<string, unknown>) =>
      resolve(e ? { ok: false, code: e.code, details: e.details, md: e.metadata } : { ok: true, res: res! }),
    );
  });
}

function failed(o: Outcome): { code: grpc.status; details: string; md: grpc.Metadata } {
  if (o.ok) throw new Error(`expected a failure, got ${JSON.stringify(o.res)}`);
  return o;
}

const POOL = { name: '/cameras', shards: 4 };

describe('authorization', () => {
  it('refuses calls without the right token and never reaches the backend', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b);
    for (const [method, req] of [
      ['createPool', POOL],
      ['addMember', { id: 4, address: 'n4:7000' }],
      ['removeMember', { id: 4 }],
    ] as const) {
      expect(failed(await call(address, method, req, auth(null))).code, method).toBe(grpc.status.UNAUTHENTICATED);
      expect(failed(await call(address, method, req, auth('wrong'))).code, method).toBe(grpc.status.PERMISSION_DENIED);
    }
    expect(b.calls).toEqual([]);
  });

  it('refuses everything when the node has no admin token', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b, {});
    const f = failed(await call(address, 'createPool', POOL));
    expect(f.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(f.details).toMatch(/--admin-token/);
    expect(b.calls).toEqual([]);
  });
});

describe('metadata leader', () => {
  it('redirects to the leader with kv-meta-leader, or says none is elected', async () => {
    const b = new FakeAdmin();
    b.leader = false;
    b.leaderAddress = '10.0.0.9:7001';
    const { address } = await start(b);
    for (const [method, req] of [
      ['createPool', POOL],
      ['addMember', { id: 4, address: 'n4:7000' }],
      ['removeMember', { id: 4 }],
    ] as const) {
      const f = failed(await call(address, method, req));
      expect(f.code, method).toBe(grpc.status.UNAVAILABLE);
      expect(f.md.get('kv-meta-leader'), method).toEqual(['10.0.0.9:7001']);
      expect(f.md.get('kv-retry-safe'), method).toEqual(['1']);
      expect(f.details).toMatch(/10\.0\.0\.9:7001/);
    }
    b.leaderAddress = undefined;
    const none = failed(await call(address, 'createPool', POOL));
    expect(none.code).toBe(grpc.status.UNAVAILABLE);
    expect(none.md.get('kv-meta-leader')).toEqual([]);
    expect(none.details).toMatch(/no metadata leader/);
    expect(b.calls).toEqual([]);
  });
});

describe('successful changes', () => {
  it('CreatePool hands the backend the request (unset fields omitted) and the deadline, and returns the pool as JSON', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b);
    const before = Date.now();
    const r = await call(address, 'createPool', { name: '/cameras', shards: 8 }, auth(), 5_000);
    expect(r).toMatchObject({ ok: true, res: { epoch: 42 } });
    expect(JSON.parse(String((r as { res: Record<string, unknown> }).res.poolJson))).toEqual({ name: '/cameras', shards: 8, replicas: 3, state: 'active' });
    const [req, deadline] = b.calls[0]!.args as [CreatePoolInput, number];
    expect(req).toEqual({ name: '/cameras', shards: 8 });
    expect(deadline).toBeGreaterThanOrEqual(before + 4_000);
    expect(deadline).toBeLessThanOrEqual(Date.now() + 5_000);

    await call(address, 'createPool', { name: '/cams', shards: 2, replicas: 5, affinity: '^/cams/([^/]+)', retentionMs: 60_000 });
    expect(b.calls[1]!.args[0]).toEqual({ name: '/cams', shards: 2, replicas: 5, affinity: '^/cams/([^/]+)', retentionMs: 60_000 });
  });

  it('AddMember and RemoveMember return the map epoch', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b);
    expect(await call(address, 'addMember', { id: 4, address: 'node4:7001' })).toMatchObject({ ok: true, res: { epoch: 43 } });
    expect(await call(address, 'removeMember', { id: 4 })).toMatchObject({ ok: true, res: { epoch: 44 } });
    expect(b.calls.map((c) => [c.method, ...c.args.slice(0, -1)])).toEqual([
      ['addMember', 4, 'node4:7001'],
      ['removeMember', 4],
    ]);
  });
});

describe('input validation', () => {
  it('refuses malformed requests with INVALID_ARGUMENT before reaching the backend', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b);
    const cases: Array<[string, object, RegExp]> = [
      ['createPool', { name: '', shards: 4 }, /pool name required/],
      ['createPool', { name: '/p', shards: 0 }, new RegExp(`shards must be an integer from 1 to ${MAX_POOL_SHARDS}`)],
      ['createPool', { name: '/p', shards: MAX_POOL_SHARDS + 1 }, /shards must be/],
      ['createPool', { name: '/p', shards: 1, replicas: MAX_REPLICAS + 1 }, new RegExp(`replicas must be an integer from 1 to ${MAX_REPLICAS}`)],
      ['createPool', { name: '/p', shards: 1, retentionMs: '18446744073709551615' }, /retention_ms must be an integer/],
      ['addMember', { id: 0, address: 'h:1' }, /member id must be an integer from 1 to 2147483647/],
      ['addMember', { id: 2 ** 31, address: 'h:1' }, /member id must be/],
      ['addMember', { id: 3, address: '' }, /member address required/],
      ['removeMember', {}, /member id must be/],
    ];
    for (const [method, req, re] of cases) {
      const f = failed(await call(address, method, req));
      expect(f.code, JSON.stringify(req)).toBe(grpc.status.INVALID_ARGUMENT);
      expect(f.details, JSON.stringify(req)).toMatch(re);
    }
    expect(b.calls).toEqual([]);
  });
});

describe('error mapping', () => {
  const table: Array<[ShardingErrorCode, grpc.status, RegExp]> = [
    ['INVALID_POOL', grpc.status.INVALID_ARGUMENT, /check the pool name/],
    ['INVALID_MEMBER', grpc.status.INVALID_ARGUMENT, /check the member id/],
    ['POOL_EXISTS', grpc.status.ALREADY_EXISTS, /choose another name/],
    ['MEMBER_EXISTS', grpc.status.ALREADY_EXISTS, /choose an unused id/],
    ['POOL_NOT_FOUND', grpc.status.NOT_FOUND, /kvctl pool ls/],
    ['MEMBER_NOT_FOUND', grpc.status.NOT_FOUND, /kvctl member ls/],
    ['POOL_NOT_EMPTY', grpc.status.FAILED_PRECONDITION, /delete the keys/],
    ['NOT_ENOUGH_MEMBERS', grpc.status.FAILED_PRECONDITION, /add members first/],
    ['BUSY', grpc.status.UNAVAILABLE, /retry once/],
    ['INVALID_MAP', grpc.status.INTERNAL, /metadata leader's log/],
  ];

  it('maps each ShardingError code to a status whose message keeps the reason and says what to do', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b);
    for (const [code, status, hint] of table) {
      b.behaviour = () => Promise.reject(new ShardingError(code, `reason of ${code}`));
      const f = failed(await call(address, 'createPool', POOL));
      expect(f.code, code).toBe(status);
      expect(f.details, code).toContain(`${code}: reason of ${code}`);
      expect(f.details, code).toMatch(hint);
    }
    b.behaviour = () => Promise.reject(new ShardingError('MEMBER_NOT_FOUND', 'no member 9'));
    expect(failed(await call(address, 'removeMember', { id: 9 })).code).toBe(grpc.status.NOT_FOUND);
    b.behaviour = () => Promise.reject(new ShardingError('MEMBER_EXISTS', 'member 2 exists'));
    expect(failed(await call(address, 'addMember', { id: 2, address: 'h:1' })).code).toBe(grpc.status.ALREADY_EXISTS);
  });

  it('maps deadlines, lost leadership and unexpected failures', async () => {
    const b = new FakeAdmin();
    b.leaderAddress = '10.0.0.2:7001';
    const { address } = await start(b);
    b.behaviour = () => Promise.reject(Object.assign(new Error('deadline exceeded'), { name: 'DeadlineError' }));
    const d = failed(await call(address, 'createPool', POOL));
    expect(d.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(d.details).toMatch(/may still complete: check kvctl status/);

    b.behaviour = () => Promise.reject(Object.assign(new Error('not the leader'), { name: 'NotLeaderError' }));
    const nl = failed(await call(address, 'addMember', { id: 4, address: 'h:1' }));
    expect(nl.code).toBe(grpc.status.UNAVAILABLE);
    expect(nl.md.get('kv-meta-leader')).toEqual(['10.0.0.2:7001']);
    expect(nl.md.get('kv-retry-safe')).toEqual([]);

    b.behaviour = () => Promise.reject(new Error('disk on fire'));
    const boom = failed(await call(address, 'removeMember', { id: 4 }));
    expect(boom.code).toBe(grpc.status.INTERNAL);
    expect(boom.details).toMatch(/disk on fire/);
  });

  it('answers DEADLINE_EXCEEDED itself when the backend outlives the deadline', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b, { adminToken: TOKEN, defaultDeadlineMs: 100 });
    b.behaviour = () => new Promise(() => {});
    const stub = new AdminStubClient(address, grpc.credentials.createInsecure());
    clients.push(stub);
    const f = await new Promise<grpc.ServiceError>((resolve) =>
      (stub as unknown as Record<string, Function>).createPool!.call(stub, POOL, auth(), {}, (e: grpc.ServiceError) => resolve(e)),
    );
    expect(f.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(f.details).toMatch(/pool creation did not finish before the deadline/);
  });
});

describe('AdminClient', () => {
  it('sends changes to the metadata leader, following the redirect', async () => {
    const follower = new FakeAdmin(1);
    const leader = new FakeAdmin(2);
    const l = await start(leader);
    const f = await start(follower);
    follower.leader = false;
    follower.leaderAddress = l.address;
    leader.leaderAddress = l.address;
    const c = new AdminClient({ endpoints: [f.address], token: TOKEN, deadlineMs: 5_000 });
    try {
      expect(await c.createPool({ name: '/cameras', shards: 2, replicas: 1 })).toEqual({
        pool: { name: '/cameras', shards: 2, replicas: 1, state: 'active' },
        epoch: 42,
      });
      expect(await c.addMember(5, 'n5:7001')).toEqual({ epoch: 43 });
      expect(await c.removeMember(5)).toEqual({ epoch: 44 });
    } finally {
      c.close();
    }
    expect(follower.calls).toEqual([]);
    expect(leader.calls.map((x) => x.method)).toEqual(['createPool', 'addMember', 'removeMember']);
    expect(leader.calls[0]!.args[0]).toEqual({ name: '/cameras', shards: 2, replicas: 1 });
  });

  it('moves on from a dead endpoint, and waits for a metadata leader to be elected', async () => {
    const b = new FakeAdmin();
    const live = await start(b);
    const gone = await start(new FakeAdmin(9));
    gone.server.forceShutdown();
    const c = new AdminClient({ endpoints: [gone.address, live.address], token: TOKEN, deadlineMs: 5_000 });
    try {
      expect(await c.addMember(6, 'n6:7001')).toEqual({ epoch: 43 });
      b.leader = false;
      setTimeout(() => (b.leader = true), 150);
      expect(await c.removeMember(6)).toEqual({ epoch: 44 });
    } finally {
      c.close();
    }
    expect(b.calls.map((x) => x.method)).toEqual(['addMember', 'removeMember']);
  });

  it('does not retry BUSY or other refusals', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b);
    const c = new AdminClient({ endpoints: [address], token: TOKEN, deadlineMs: 5_000 });
    try {
      b.behaviour = () => Promise.reject(new ShardingError('BUSY', 'member 3 still hosts replicas'));
      const busy = await c.removeMember(3).catch((e: unknown) => e);
      expect(busy).toBeInstanceOf(KvError);
      expect(busy).toMatchObject({ code: 'UNAVAILABLE' });
      expect((busy as Error).message).toMatch(/^BUSY: member 3 still hosts replicas; retry once/);
      b.behaviour = () => Promise.reject(new ShardingError('POOL_EXISTS', 'pool /x exists'));
      await expect(c.createPool({ name: '/x', shards: 1 })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    } finally {
      c.close();
    }
    expect(b.calls.map((x) => x.method)).toEqual(['removeMember', 'createPool']);
  });

  it('reports a missing or wrong token', async () => {
    const b = new FakeAdmin();
    const { address } = await start(b);
    const none = new AdminClient({ endpoints: [address], deadlineMs: 5_000 });
    const wrong = new AdminClient({ endpoints: [address], token: 'nope', deadlineMs: 5_000 });
    try {
      await expect(none.addMember(4, 'h:1')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
      await expect(wrong.addMember(4, 'h:1')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    } finally {
      none.close();
      wrong.close();
    }
    expect(b.calls).toEqual([]);
  });
});

