/**
 * The console's per-node counters (src/console/node-stats.ts): read from a real NodeMetrics
 * registry (Status calls left out), carried over the Console gRPC service and decoded; and the
 * extension status of Admin.ListExtensions turned into the console's shape (src/console/sources.ts).
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { addConsoleService, ConsoleStubClient, nodeStatsFromMsg, nodeStatsFromRegistry } from '../../src/console/node-stats.js';
import { extensionOnNodeFromWire } from '../../src/console/sources.js';
import type { KvBackend } from '../../src/node/backend.js';
import type { KvNode } from '../../src/node/kv-node.js';
import { NodeMetrics } from '../../src/node/metrics.js';

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

/** A backend whose put succeeds, get fails and status answers (only what the meter calls). */
const backend = {
  put: async () => ({ version: 1 }),
  get: async () => {
    throw Object.assign(new Error('no such key'), { name: 'KeyNotFound' });
  },
  status: async () => ({ nodeId: 1, version: 'x', groups: [], members: [], mapEpoch: 0 }),
} as unknown as KvBackend;

describe('nodeStatsFromRegistry', () => {
  it('sums the data requests of a node and their latency buckets, without Status calls', async () => {
    const metrics = new NodeMetrics({} as KvNode);
    const b = metrics.meter(backend, () => 'NOT_FOUND');
    const o = { deadlineMs: Date.now() + 1000 };
    await b.put({ key: '/a', value: new Uint8Array() } as never, o);
    await b.get({ key: '/a' } as never, o).catch(() => {});
    await b.status();
    await b.status();
    const s = await nodeStatsFromRegistry(metrics.registry);
    expect(s.requests).toBe(2);
    expect(s.errors).toBe(1);
    expect(s.buckets.at(-1)).toEqual({ le: Infinity, count: 2 });
    expect(s.buckets.map((x) => x.le)).toEqual([...s.buckets.map((x) => x.le)].sort((x, y) => x - y));
    expect(s.rssBytes).toBeGreaterThan(0);
  });
});

describe('the Console gRPC service', () => {
  it('carries the counters, +Inf bucket included', async () => {
    const server = new grpc.Server();
    addConsoleService(server, 4, async () => ({ requests: 7, errors: 1, buckets: [{ le: 0.001, count: 5 }, { le: Infinity, count: 7 }], rssBytes: 123, uptimeSeconds: 9.5 }));
    const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    closers.push(() => server.forceShutdown());
    const stub = new ConsoleStubClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      nodeStats(req: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: Record<string, unknown>) => void): void;
    };
    closers.push(() => stub.close());
    const msg = await new Promise<Record<string, unknown>>((res, rej) => stub.nodeStats({}, { deadline: new Date(Date.now() + 2000) }, (e, r) => (e ? rej(e) : res(r!))));
    expect(msg.nodeId).toBe(4);
    expect(nodeStatsFromMsg(msg)).toEqual({ requests: 7, errors: 1, buckets: [{ le: 0.001, count: 5 }, { le: Infinity, count: 7 }], rssBytes: 123, uptimeSeconds: 9.5 });
  });
});

describe('extensionOnNodeFromWire', () => {
  it('sums the backlog and takes the largest latency over the watches', () => {
    const e = extensionOnNodeFromWire({
      nodeId: 2,
      name: 'cams',
      version: '1.2.0',
      generation: 3,
      state: 'paused',
      error: 'restarted too often',
      delivering: true,
      runsIn: 'worker',
      invocations: 10,
      errors: 2,
      timeouts: 1,
      workerRestarts: 4,
      deadLettered: 1,
      watches: [
        { prefix: '/a/', backlog: 3, lastLatencyMs: 2 },
        { prefix: '/b/', backlog: 4, lastLatencyMs: 9 },
      ],
    });
    expect(e).toEqual({
      name: 'cams',
      version: '1.2.0',
      generation: 3,
      state: 'paused',
      error: 'restarted too often',
      delivering: true,
      runsIn: 'worker',
      invocations: 10,
      errors: 2,
      timeouts: 1,
      workerRestarts: 4,
      deadLettered: 1,
      backlog: 7,
      lastLatencyMs: 9,
      prefixes: ['/a/', '/b/'],
    });
  });
});
