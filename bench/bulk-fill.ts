/** Load drivers shared by the data-size and retention benches: bulk fill of keys as Txns of puts (kvd and etcd alike), a patient driver of N operations over workers (retries through elections), and per-process RSS and data-directory size. */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { call, etcdStub, keyName, type Driver, type SystemName } from './clients.js';
import { KvClient } from '../src/client/index.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The resident set size of process `pid` in bytes (Linux /proc; 0 when unknown). */
export async function rssOf(pid: number | undefined): Promise<number> {
  if (pid === undefined) return 0;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Bytes of the files under `dir`, recursively (0 when absent). */
export async function duBytes(dir: string): Promise<number> {
  let n = 0;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) n += await duBytes(p);
    else if (e.isFile()) n += (await stat(p).catch(() => ({ size: 0 }))).size;
  }
  return n;
}

/** The 99th percentile of `xs` (sorted in place), rounded to 0.1. */
export function p99(xs: number[]): number {
  if (xs.length === 0) return 0;
  xs.sort((a, b) => a - b);
  return Math.round(xs[Math.min(xs.length - 1, Math.floor(xs.length * 0.99))]! * 10) / 10;
}

/** Runs `total` operations `op(i)` over `drivers` with `concurrency` workers; returns ops/s, p99 ms and failures. */
export async function drive(drivers: Driver[], concurrency: number, from: number, to: number, op: (d: Driver, i: number) => Promise<unknown>, progress?: { every: number; scale: number }): Promise<{ rate: number; p99: number; errors: number; firstErrors: string[] }> {
  let next = from;
  let errors = 0;
  const firstErrors: string[] = [];
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      const d = drivers[w % drivers.length]!;
      for (;;) {
        const i = next++;
        if (i >= to) return;
        if (progress && i > from && (i - from) % progress.every === 0) {
          const el = (performance.now() - t0) / 1000;
          console.error(`  ${i * progress.scale} (${Math.round(((i - from) * progress.scale) / el)}/s over ${Math.round(el)} s, ${errors} failed attempts, load ${loadavg()[0]!.toFixed(1)})`);
        }
        for (let attempt = 0; ; attempt++) {
          const s = performance.now();
          try {
            await op(d, i);
            lat.push(performance.now() - s);
            break;
          } catch (e) {
            errors++;
            if (firstErrors.length < 3) firstErrors.push((e as Error).message);
            // Patient enough to ride out an election (about 30 s of attempts in all).
            if (attempt >= 20) throw new Error(`operation ${i} failed ${attempt + 1} times: ${(e as Error).message}`);
            await sleep(Math.min(2_000, 50 * 2 ** attempt));
          }
        }
      }
    }),
  );
  const s = (performance.now() - t0) / 1000;
  return { rate: Math.round((to - from) / s), p99: p99(lat), errors, firstErrors };
}

/** Puts per Txn in a bulk fill (etcd refuses more than --max-txn-ops, 128 by default; kvd MAX_TXN_OPS is 128). */
export const FILL_TXN_OPS = 64;

/** A bulk loader of keys [from, to): see the header (Txns of FILL_TXN_OPS puts; kvd through KvClient.txn). */
export interface Filler {
  fill(from: number, to: number): Promise<{ rate: number; errors: number; firstErrors: string[] }>;
  close(): void;
}

/** A bulk loader over `endpoints` (see {@link Filler}), `concurrency` Txns in flight; key i is `data/kNNNNNNNN` with `valueOf(i)`. */
export function makeFiller(system: SystemName, endpoints: readonly string[], concurrency: number, valueOf: (i: number) => Uint8Array): Filler {
  const key = (i: number): string => keyName(i, 'data/');
  let batches: Driver[];
  if (system === 'kvd') {
    batches = endpoints.map((e) => {
      const client = new KvClient({ endpoints: [e, ...endpoints.filter((x) => x !== e)], defaultDeadlineMs: 30_000 });
      return batchDriver(async (first, count) => {
        await client.txn({ writes: Array.from({ length: count }, (_, j) => ({ type: 'put' as const, key: key(first + j), value: valueOf(first + j) })) });
      }, () => client.close());
    });
  } else {
    batches = endpoints.map((e) => {
      const stub = etcdStub(e);
      return batchDriver(async (first, count) => {
        const success = Array.from({ length: count }, (_, j) => ({ requestPut: { key: Buffer.from(key(first + j)), value: valueOf(first + j) } }));
        await call(stub, stub.txn, { compare: [], success, failure: [] }, 30_000);
      }, () => stub.close());
    });
  }
  return {
    fill: async (from, to) => {
      const n = Math.ceil((to - from) / FILL_TXN_OPS);
      const r = await drive(batches, concurrency, 0, n, (d, b) => d.put(from + b * FILL_TXN_OPS, new Uint8Array(Math.min(FILL_TXN_OPS, to - from - b * FILL_TXN_OPS))), { every: 1000, scale: FILL_TXN_OPS });
      return { ...r, rate: r.rate * FILL_TXN_OPS };
    },
    close: () => batches.forEach((d) => d.close()),
  };
}

/** A driver whose `put(i, v)` writes keys i .. i + v.length - 1 with `write` (v only carries the count). */
function batchDriver(write: (first: number, count: number) => Promise<void>, close: () => void): Driver {
  const unsupported = (): never => {
    throw new Error('a fill batch driver only puts');
  };
  return { put: (first, count) => write(first, count.length), get: unsupported, rmw: unsupported, ready: async () => undefined, close };
}

