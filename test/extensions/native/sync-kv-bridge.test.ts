/** Tests of the SharedArrayBuffer sync-kv bridge and of a native extension running inside a worker thread against a main-thread store. */

import { setTimeout as sleep } from 'node:timers/promises';
import { MessageChannel, Worker } from 'node:worker_threads';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KvcStatus } from '../../../src/extensions/native/abi.js';
import {
  createSyncKvClient,
  serveSyncKv,
  serveSyncKvCalls,
  type SyncKvCall,
  type SyncKvClientOptions,
  type SyncKvServer,
} from '../../../src/extensions/native/sync-kv-bridge.js';
import type { NativeWorkerCommand, NativeWorkerData, NativeWorkerReply } from './fixtures/native-worker.js';
import { buildCounter, HAVE_GCC, MemoryKv, NO_GCC_REASON, putEvent, tempDir, transpileWorker } from './helpers.js';

type Command = NativeWorkerCommand extends infer C ? (C extends { id: number } ? Omit<C, 'id'> : never) : never;

/** A worker running the fixture, with its kv bridge served by `kv` on this (the main) thread. */
interface TestWorker {
  call(command: Command): Promise<NativeWorkerReply>;
  /** call(), expecting success; returns the result. */
  ok(command: Command): Promise<unknown>;
  readonly server: SyncKvServer;
  readonly worker: Worker;
}

let workerEntry: string;
const workers: Worker[] = [];

beforeAll(() => {
  workerEntry = transpileWorker();
});
afterEach(async () => {
  for (const w of workers.splice(0)) await w.terminate();
});

/** Resolves once `cond()` holds (polling every 5 ms); rejects after 5 s. */
async function waitUntil(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('waitUntil: condition not met in time');
    await sleep(5);
  }
}

function startWorker(kv: MemoryKv, options: SyncKvClientOptions = {}): TestWorker {
  const { port1, port2 } = new MessageChannel();
  const data: NativeWorkerData = { kvPort: port2, ...options };
  const worker = new Worker(workerEntry, { workerData: data, transferList: [port2] });
  workers.push(worker);
  const server = serveSyncKv(port1, kv);
  const pending = new Map<number, (r: NativeWorkerReply) => void>();
  let nextId = 0;
  worker.on('message', (r: NativeWorkerReply) => pending.get(r.id)?.(r));
  worker.on('exit', () => port1.close());
  const call = (command: Command) =>
    new Promise<NativeWorkerReply>((resolve, reject) => {
      const id = ++nextId;
      pending.set(id, resolve);
      worker.once('error', reject);
      worker.postMessage({ ...command, id });
    });
  const ok = async (command: Command) => {
    const r = await call(command);
    if (!r.ok) throw new Error(`worker command ${command.cmd} failed: ${r.error.name}: ${r.error.message}`);
    return r.result;
  };
  return { call, ok, server, worker };
}

const bytes = (s: string) => new TextEncoder().encode(s);

describe('the sync kv bridge (worker <-> main thread)', () => {
  it('refuses to run on the main thread, where blocking would stall the node', () => {
    expect(() => createSyncKvClient({ postMessage: () => undefined })).toThrow(/must run in a worker thread/);
  });

  it('get and put are synchronous in the worker and served by the async store on the main thread', async () => {
    const kv = new MemoryKv();
    kv.beforeCall = () => sleep(5); // a genuinely async store
    const w = startWorker(kv);
    const bin = new Uint8Array([0, 7, 0, 255]);
    expect(await w.ok({ cmd: 'put', key: '/a', value: bin })).toEqual({ version: 1 });
    expect(kv.data.get('/a')).toEqual({ value: bin, version: 1 });
    expect(await w.ok({ cmd: 'get', key: '/a' })).toEqual({ found: true, value: bin, version: 1 });
    expect(await w.ok({ cmd: 'get', key: '/absent' })).toEqual({ found: false, value: undefined, version: 0 });
    expect(await w.ok({ cmd: 'put', key: '/empty', value: new Uint8Array() })).toEqual({ version: 2 });
    expect(await w.ok({ cmd: 'get', key: '/empty' })).toEqual({ found: true, value: new Uint8Array(), version: 2 });
  });

  it('carries the hop count of the client\'s `hops` option to serveSyncKvCalls (undefined without it)', async () => {
    const seen: [string, string, number | undefined][] = [];
    let release = () => {};
    const held = new Promise<void>((r) => (release = r));
    const serveWith = (data: Omit<NativeWorkerData, 'kvPort'>) => {
      const { port1, port2 } = new MessageChannel();
      const worker = new Worker(workerEntry, { workerData: { ...data, kvPort: port2 }, transferList: [port2] });
      workers.push(worker);
      worker.on('exit', () => port1.close());
      const server = serveSyncKvCalls(port1, {
        get: async (call: SyncKvCall) => {
          seen.push(['get', call.key, call.hops]);
          if (call.key === '/held') await held;
          return { found: true, value: bytes('v'), version: 4 };
        },
        put: async (call: SyncKvCall, value) => {
          seen.push(['put', `${call.key}=${new TextDecoder().decode(value)}`, call.hops]);
          return { succeeded: true, version: 5, currentVersion: 5 };
        },
      });
      const call = (command: Command) =>
        new Promise<NativeWorkerReply>((resolve) => {
          worker.once('message', resolve);
          worker.postMessage({ ...command, id: 1 });
        });
      return { call, server };
    };
    const withHops = serveWith({ fixedHops: 3 });
    expect(await withHops.call({ cmd: 'get', key: '/h' })).toMatchObject({ ok: true, result: { found: true, value: bytes('v'), version: 4 } });
    expect(await withHops.call({ cmd: 'put', key: '/h', value: bytes('x') })).toMatchObject({ ok: true, result: { version: 5 } });
    const without = serveWith({});
    expect(await without.call({ cmd: 'get', key: '/n' })).toMatchObject({ ok: true });
    expect(seen).toEqual([
      ['get', '/h', 3],
      ['put', '/h=x', 3],
      ['get', '/n', undefined],
    ]);
    // After close(), a request still being handled is never answered: the worker times out.
    const timed = serveWith({ fixedHops: 1, timeoutMs: 300 });
    const pending = timed.call({ cmd: 'get', key: '/held' });
    await waitUntil(() => seen.length === 4);
    timed.server.close();
    release();
    expect(await pending).toMatchObject({ ok: false, error: { code: KvcStatus.ERR_TIMEOUT } });
    withHops.server.close();
    without.server.close();
  });

  it('values larger than the bounded buffer fail with KVC_ERR_TOO_LARGE, both ways', async () => {
    const kv = new MemoryKv();
    kv.data.set('/big', { value: new Uint8Array(2000), version: 1 });
    kv.data.set('/fits', { value: new Uint8Array(1024).fill(9), version: 2 });
    const w = startWorker(kv, { maxValueBytes: 1024 });
    const get = await w.call({ cmd: 'get', key: '/big' });
    expect(get).toMatchObject({ ok: false, error: { name: 'SyncKvError', code: KvcStatus.ERR_TOO_LARGE } });
    expect(!get.ok && get.error.message).toMatch(/KVC_ERR_TOO_LARGE: value of \/big is 2000 bytes; the bridge buffer holds 1024/);
    expect(await w.call({ cmd: 'put', key: '/p', value: new Uint8Array(1025) })).toMatchObject({ ok: false, error: { code: KvcStatus.ERR_TOO_LARGE } });
    expect(kv.data.has('/p')).toBe(false);
    expect(await w.ok({ cmd: 'get', key: '/fits' })).toEqual({ found: true, value: new Uint8Array(1024).fill(9), version: 2 });
  });

  it('store errors become KVC_ERR_IO with the message; refused puts KVC_ERR_CONFLICT', async () => {
    const kv = new MemoryKv();
    kv.beforeCall = (_op, key) => {
      if (key === '/broken') throw new Error('shard unavailable');
    };
    const w = startWorker(kv);
    expect(await w.call({ cmd: 'get', key: '/broken' })).toMatchObject({
      ok: false,
      error: { code: KvcStatus.ERR_IO, message: 'KVC_ERR_IO: shard unavailable' },
    });
    kv.put = () => Promise.resolve({ succeeded: false, version: 0, currentVersion: 12 });
    expect(await w.call({ cmd: 'put', key: '/k', value: bytes('v') })).toMatchObject({
      ok: false,
      error: { code: KvcStatus.ERR_CONFLICT, message: 'KVC_ERR_CONFLICT: put /k refused (current version 12)' },
    });
  });

  it('times out, and a late answer to the timed-out request is never taken for the next one', async () => {
    const kv = new MemoryKv();
    kv.data.set('/slow', { value: bytes('slow value'), version: 1 });
    kv.data.set('/next', { value: bytes('next value'), version: 2 });
    let slowAnsweredAt = 0;
    kv.beforeCall = async (_op, key) => {
      if (key === '/slow') {
        await sleep(700);
        slowAnsweredAt = performance.now();
      } else if (key === '/next') {
        await sleep(300);
      }
    };
    const w = startWorker(kv, { timeoutMs: 500 });
    const timedOut = await w.call({ cmd: 'get', key: '/slow' });
    expect(timedOut).toMatchObject({ ok: false, error: { code: KvcStatus.ERR_TIMEOUT } });
    expect(timedOut.ms).toBeGreaterThanOrEqual(495);
    expect(timedOut.ms).toBeLessThan(700);
    // /slow's answer lands (at ~700 ms) while the worker waits for /next (answered at ~800 ms):
    // it must be dropped, not read as /next's answer.
    const next = await w.call({ cmd: 'get', key: '/next' });
    const nextDoneAt = performance.now();
    expect(slowAnsweredAt).toBeGreaterThan(0);
    expect(slowAnsweredAt).toBeLessThan(nextDoneAt);
    expect(next).toMatchObject({ ok: true, result: { found: true, value: bytes('next value'), version: 2 } });
  });

  it('close() stops serving: the worker times out instead of hanging', async () => {
    const kv = new MemoryKv();
    const w = startWorker(kv, { timeoutMs: 150 });
    w.server.close();
    expect(await w.call({ cmd: 'get', key: '/x' })).toMatchObject({ ok: false, error: { code: KvcStatus.ERR_TIMEOUT } });
  });
});

describe.skipIf(!HAVE_GCC)(HAVE_GCC ? 'the counter example inside a worker thread' : NO_GCC_REASON, () => {
  let soPath: string;
  beforeAll(() => {
    soPath = buildCounter(tempDir('counter-worker'));
  });

  it('counts puts with synchronous C get/put across threads while the main thread stays responsive', async () => {
    const kv = new MemoryKv();
    let kvCalls = 0;
    kv.beforeCall = async () => {
      kvCalls++;
      await sleep(1); // each store call takes a main-thread timer turn
    };
    const w = startWorker(kv);
    expect(await w.ok({ cmd: 'load', soPath })).toEqual(['/counter/events/']);

    const N = 40;
    const events = Array.from({ length: N }, (_, i) => putEvent(`/counter/events/k${i % 7}`, `e${i}`, 100 + i, { shard: i % 3 }));
    // The main thread keeps ticking while the worker's lambdas block on the store.
    let ticks = 0;
    let maxGap = 0;
    let last = performance.now();
    const ticker = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
      ticks++;
    }, 2);
    const reply = await w.call({ cmd: 'deliver', events });
    clearInterval(ticker);

    expect(reply).toMatchObject({ ok: true, result: N });
    expect(kv.text('/counter/total')).toBe(String(N));
    expect(kv.text('/counter/last-version/k6')).toBe(String(100 + 34));
    expect(kvCalls).toBe(4 * N); // get marker, get total, put total, put marker per event
    expect(reply.ms).toBeGreaterThanOrEqual(4 * N * 1); // the worker was blocked on every store call
    expect(ticks).toBeGreaterThan(10);
    expect(maxGap).toBeLessThan(1000);

    // Redelivery (as after a retry) changes nothing.
    expect(await w.ok({ cmd: 'deliver', events })).toBe(N);
    expect(kv.text('/counter/total')).toBe(String(N));
    expect(kvCalls).toBe(5 * N); // only the marker reads
    await w.ok({ cmd: 'shutdown' });
  });

  it('a store that does not answer in time fails the lambda with KVC_ERR_TIMEOUT; a retry then succeeds', async () => {
    const kv = new MemoryKv();
    let hang = true;
    kv.beforeCall = (_op, key) => (hang && key === '/counter/total' ? sleep(400) : undefined);
    const w = startWorker(kv, { timeoutMs: 100 });
    await w.ok({ cmd: 'load', soPath });
    const failed = await w.call({ cmd: 'deliver', events: [putEvent('/counter/events/a', 'x', 5)] });
    expect(failed).toMatchObject({ ok: false, error: { name: 'NativeLambdaError', code: KvcStatus.ERR_TIMEOUT } });
    expect(failed.logs.some((l) => l.includes('KVC_ERR_TIMEOUT'))).toBe(true);
    expect(kv.text('/counter/total')).toBeUndefined();

    hang = false;
    await sleep(400); // let the abandoned request finish on the main thread (its answer is dropped)
    expect(await w.ok({ cmd: 'deliver', events: [putEvent('/counter/events/a', 'x', 5)] })).toBe(1);
    expect(kv.text('/counter/total')).toBe('1');
  });
});
