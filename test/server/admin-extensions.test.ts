/**
 * The Admin service's extension load path over a backend that unpacks uploads with the real
 * unpacker: an unsafe package entry answers INVALID_ARGUMENT naming the entry; a load or unload
 * conflicting with another load of the same name answers ABORTED; the list carries where each
 * extension runs and its measured resources.
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { LoadConflictError } from '../../src/extensions/manager.js';
import { unpackPackage } from '../../src/extensions/package.js';
import { addAdminService, type AdminBackend, type AdminExtensionStatus } from '../../src/server/admin-service.js';
import { adminServiceDefinition } from '../../src/wire/admin-proto.js';
import { clusterServiceDefinition } from '../../src/wire/proto.js';

const TOKEN = 'sekret';
const dir = mkdtempSync(join(tmpdir(), 'kvcascade-admin-ext-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Loads by unpacking (the real unpacker) and refusing the name `busy` as if another load held it. */
const backend: AdminBackend = {
  nodeId: 1,
  isMetadataLeader: () => true,
  metadataLeaderAddress: () => undefined,
  createPool: () => Promise.reject(new Error('not used')),
  addMember: () => Promise.reject(new Error('not used')),
  removeMember: () => Promise.reject(new Error('not used')),
  async load(tgz, opts) {
    if (opts.name === 'busy') throw new LoadConflictError('busy', 'another load of busy is in progress (generation 2, on node 3); try again once it finished');
    const info = await unpackPackage(tgz, join(dir, 'staging'));
    return { name: info.name, version: info.version, generation: 1, state: 'running', delivering: false, shards: [], watches: [], workerRestarts: 0, invocations: 0, errors: 0, timeouts: 0 } as unknown as AdminExtensionStatus;
  },
  async unload(name) {
    throw new LoadConflictError(name, `another load of ${name} is in progress`);
  },
  records: () => records,
  statuses: () => statuses,
};
/** What the backend's `statuses()` answers. */
let statuses: AdminExtensionStatus[] = [];
/** What the backend's `records()` answers. */
let records: ReturnType<AdminBackend['records']> = [];

let server: grpc.Server | undefined;
const clients: AdminClient[] = [];
afterEach(() => {
  for (const a of clients.splice(0)) a.close();
  server?.forceShutdown();
});

async function admin(token: string | null = TOKEN): Promise<AdminClient> {
  server = new grpc.Server();
  addAdminService(server, backend, { adminToken: TOKEN });
  const port = await new Promise<number>((resolve, reject) => server!.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  const a = new AdminClient({ endpoints: [`127.0.0.1:${port}`], ...(token !== null ? { token } : {}) });
  clients.push(a);
  return a;
}

/** A gzipped tar of a package.json and one more entry. */
function tgzWith(entry: { path: string; type: 'File' | 'SymbolicLink' | 'Link'; linkpath?: string }): Uint8Array {
  const blocks: Buffer[] = [];
  const add = (path: string, type: string, body: string, linkpath?: string) => {
    const block = Buffer.alloc(512);
    new tar.Header({ path, type: type as 'File', size: body.length, mode: 0o644, mtime: new Date(0), ...(linkpath ? { linkpath } : {}) }).encode(block, 0);
    blocks.push(block);
    if (body) blocks.push(Buffer.from(body), Buffer.alloc((512 - (body.length % 512)) % 512));
  };
  add('package.json', 'File', JSON.stringify({ name: 'up', version: '1.0.0' }));
  add(entry.path, entry.type, entry.type === 'File' ? 'x' : '', entry.linkpath);
  blocks.push(Buffer.alloc(1024));
  return new Uint8Array(gzipSync(Buffer.concat(blocks)));
}

describe('extension load errors over the Admin service', () => {
  it('answers an unsafe package entry with INVALID_ARGUMENT naming it', async () => {
    const a = await admin();
    for (const [entry, message] of [
      [{ path: 'pw', type: 'SymbolicLink', linkpath: '/etc/passwd' }, /UNSAFE_ENTRY: refused package entry "pw": it is a symbolic link to "\/etc\/passwd", outside the package/],
      [{ path: 'h', type: 'Link', linkpath: '../x' }, /refused package entry "h"/],
      [{ path: '../evil', type: 'File' }, /refused package entry "\.\.\/evil"/],
      [{ path: '/abs', type: 'File' }, /refused package entry "\/abs": its path is absolute/],
    ] as const) {
      const err = await a.load(tgzWith(entry)).catch((e: unknown) => e);
      expect(err, entry.path).toMatchObject({ code: 'INVALID_ARGUMENT' });
      expect((err as Error).message).toMatch(message);
    }
    // A safe package still loads.
    expect((await a.load(tgzWith({ path: 'index.js', type: 'File' }))).status).toMatchObject({ name: 'up', state: 'running' });
  });

  it('lists where each extension runs and, where measured, its CPU time and memory', async () => {
    const base = { version: '1.0.0', generation: 1, state: 'running', delivering: true, watches: [], workerRestarts: 0, invocations: 0, errors: 0, timeouts: 0 };
    statuses = [
      { ...base, name: 'in-proc-isolated', runsIn: 'process', resources: { cpuSeconds: 1.25, rssBytes: 50 * 1024 * 1024, peakRssBytes: 300 * 1024 * 1024 } },
      { ...base, name: 'threaded', runsIn: 'worker' },
      { ...base, name: 'failed', state: 'failed' },
    ];
    try {
      const l = await (await admin()).list();
      const by = new Map(l.statuses.map((x) => [x.name, x]));
      expect(by.get('in-proc-isolated')).toMatchObject({ nodeId: 1, runsIn: 'process', resources: { cpuSeconds: 1.25, rssBytes: 50 * 1024 * 1024, peakRssBytes: 300 * 1024 * 1024 } });
      expect(by.get('threaded')!.runsIn).toBe('worker');
      expect(by.get('threaded')!.resources).toBeUndefined(); // not measured, not zeros
      expect(by.get('failed')!.runsIn).toBe('');
      expect(by.get('failed')!.resources).toBeUndefined();
    } finally {
      statuses = [];
    }
  });

  it('answers a load or unload conflicting with another load of the name with ABORTED', async () => {
    const a = await admin();
    await expect(a.load(tgzWith({ path: 'index.js', type: 'File' }), { name: 'busy' })).rejects.toMatchObject({ code: 'ABORTED', message: expect.stringMatching(/another load of busy is in progress/) });
    await expect(a.unload('busy')).rejects.toMatchObject({ code: 'ABORTED' });
  });
});

describe('listing extensions', () => {
  it('needs no token, but shows the configs (they may hold secrets) only with it; a wrong token is refused', async () => {
    records = [{ name: 'cam', version: '1.0.0', generation: 3, sha256: 'ab', size: 10, config: { apiKey: 'k-123' }, loadedAtMs: 1 } as unknown as ReturnType<AdminBackend['records']>[number]];
    try {
      const anon = await (await admin(null)).list();
      expect(anon.records.map((r) => [r.name, r.generation, r.configHidden, r.config])).toEqual([['cam', 3, true, {}]]);
      expect(JSON.stringify(anon)).not.toContain('k-123');
      server?.forceShutdown();
      const full = await (await admin()).list();
      expect(full.records[0]).toMatchObject({ config: { apiKey: 'k-123' } });
      expect(full.records[0]!.configHidden).toBeUndefined();
      server?.forceShutdown();
      await expect((await admin('wrong')).list()).rejects.toMatchObject({ message: expect.stringMatching(/wrong admin token/) });
    } finally {
      records = [];
    }
  });

  it('asks every member of the map in parallel and reports the members that did not answer, instead of hanging', async () => {
    const bind = (srv: grpc.Server) => new Promise<number>((resolve, reject) => srv.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    // Member 2 accepts the call and never answers (a frozen node); member 3's port has no server.
    const frozen = new grpc.Server();
    frozen.addService(adminServiceDefinition, { listExtensions: () => {} });
    const frozenAddress = `127.0.0.1:${await bind(frozen)}`;
    const gone = new grpc.Server();
    const goneAddress = `127.0.0.1:${await bind(gone)}`;
    gone.forceShutdown();
    server = new grpc.Server();
    addAdminService(server, backend, { adminToken: TOKEN });
    let selfAddress = '';
    server.addService(clusterServiceDefinition, {
      getShardMap: (_call: unknown, cb: grpc.sendUnaryData<unknown>) =>
        cb(null, { epoch: 7, mapJson: JSON.stringify({ epoch: 7, members: [{ id: 1, address: selfAddress }, { id: 2, address: frozenAddress }, { id: 3, address: goneAddress }], metaVoters: [1, 2, 3], pools: [], shards: [], nextGroup: 1 }) }),
    });
    selfAddress = `127.0.0.1:${await bind(server)}`;
    statuses = [{ name: 'cam', version: '1.0.0', generation: 1, state: 'running', delivering: true, watches: [], workerRestarts: 0, invocations: 0, errors: 0, timeouts: 0 } as unknown as AdminExtensionStatus];
    const a = new AdminClient({ endpoints: [selfAddress], token: TOKEN });
    clients.push(a);
    try {
      const started = Date.now();
      const l = await a.list({ perNodeDeadlineMs: 800 });
      // One per-node deadline (the members are asked at once), not one per member, and no hang.
      expect(Date.now() - started).toBeLessThan(2 * 800 + 500);
      expect(l.statuses.map((x) => [x.nodeId, x.name])).toEqual([[1, 'cam']]);
      expect(l.missingMembers.map((m) => [m.id, m.address])).toEqual([[2, frozenAddress], [3, goneAddress]]);
      expect(l.missingMembers[0]!.error).toMatch(/deadline/i);
      expect(l.unreachable.sort()).toEqual([frozenAddress, goneAddress].sort());
      expect(l.complete).toBe(false);
    } finally {
      statuses = [];
      frozen.forceShutdown();
    }
  });
});
