/**
 * etcd's ceiling with a native load generator: h2load (Debian's `nghttp2-client`) drives etcd's
 * gRPC `KV.Put` on its leader with a fixed number of requests in flight, so the table can show
 * kvd's put against the best etcd does on this machine, not only against etcd driven by the same
 * Node.js client as kvd. Optional: without `h2load` on PATH the workload is skipped with a message.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { call, etcdStub, keyName } from './clients.js';
import type { WorkloadResult } from './load.js';
import { leaderEndpoint } from './reactions.js';
import { machineBusySeconds, processCpuSeconds, whichSync } from './util.js';

/** Printed when the workload is asked for but h2load is missing. */
export const H2LOAD_MISSING_MESSAGE = 'h2load not installed (apt-get install nghttp2-client); skipping etcd\'s native-client ceiling';

/** Requests in flight of the two h2load rows (the bench's 64 clients, and 4x that). */
export const H2LOAD_IN_FLIGHT: readonly number[] = [64, 256];

/** HTTP/2 connections h2load spreads the in-flight requests over (each carries in-flight / connections streams). */
const H2LOAD_CONNECTIONS = 4;

/** The h2load binary on PATH, or undefined. */
export function findH2load(): string | undefined {
  return whichSync('h2load');
}

/** Appends a protobuf varint. */
function varint(out: number[], n: number): void {
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
}

/**
 * One gRPC request message as it goes on the wire (a length-prefixed message: 1 byte
 * compressed flag = 0, 4 bytes big-endian length, then the protobuf) holding an
 * `etcdserverpb.PutRequest{key = 1, value = 2}`.
 */
export function grpcPutBody(key: Uint8Array, value: Uint8Array): Uint8Array {
  const pb: number[] = [];
  pb.push(0x0a); // field 1 (key), length-delimited
  varint(pb, key.length);
  pb.push(...key);
  pb.push(0x12); // field 2 (value), length-delimited
  varint(pb, value.length);
  const head = Uint8Array.from(pb);
  const out = new Uint8Array(5 + head.length + value.length);
  new DataView(out.buffer).setUint32(1, head.length + value.length);
  out.set(head, 5);
  out.set(value, 5 + head.length);
  return out;
}

/** What h2load printed that the bench uses. */
export interface H2loadReport {
  /** Requests completed with an HTTP 2xx in the measured duration. */
  readonly succeeded: number;
  /** Requests that failed (non-2xx, errors, timeouts). */
  readonly failed: number;
  /** Requests per second over the measured duration. */
  readonly reqPerSec: number;
  /** Mean and max time for a request, ms. */
  readonly meanMs: number;
  readonly maxMs: number;
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000 };

/** Parses h2load's summary (nghttp2 1.52 format); throws when a line it needs is missing. */
export function parseH2load(text: string): H2loadReport {
  const rps = /finished in [^,]+, ([0-9.]+) req\/s/.exec(text);
  const reqs = /requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(text);
  const time = /time for request:\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)/.exec(text);
  if (!rps || !reqs || !time) throw new Error(`unexpected h2load output:\n${text.slice(-1500)}`);
  return {
    succeeded: Number(reqs[2]),
    failed: Number(reqs[3]) + Number(reqs[4]) + Number(reqs[5]),
    reqPerSec: Number(rps[1]),
    meanMs: Number(time[5]) * UNIT_MS[time[6]!]!,
    maxMs: Number(time[3]) * UNIT_MS[time[4]!]!,
  };
}

/** Options of {@link runH2loadPut}. */
export interface H2loadOptions {
  readonly endpoints: readonly string[];
  readonly inFlight: number;
  readonly warmupS: number;
  readonly durationS: number;
  readonly valueBytes: number;
  readonly opTimeoutMs: number;
  readonly serverPids: readonly number[];
  readonly h2load?: string;
}

/** etcd's store revision (one more per applied Put), read from a Range's response header. */
async function etcdRevision(endpoint: string, timeoutMs: number): Promise<number> {
  const stub = etcdStub(endpoint);
  try {
    const res = await call(stub, stub.range, { key: new TextEncoder().encode(keyName(0)) }, timeoutMs);
    return Number(res.header?.revision ?? NaN);
  } finally {
    stub.close();
  }
}

/** Runs `bin`, resolving with its output and the CPU seconds it used (last /proc sample, every 250 ms). */
function runProcess(bin: string, args: readonly string[]): Promise<{ out: string; cpuS: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let cpuS = 0;
    const sample = setInterval(() => {
      void processCpuSeconds(child.pid).then((s) => {
        if (s !== undefined) cpuS = Math.max(cpuS, s);
      });
    }, 250);
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', (e) => {
      clearInterval(sample);
      reject(e);
    });
    child.on('close', (code) => {
      clearInterval(sample);
      if (code === 0) resolve({ out, cpuS });
      else reject(new Error(`h2load exited with ${code}:\n${out.slice(-1500)}`));
    });
  });
}

/**
 * Runs h2load against etcd's leader: `KV.Put` of one key (h2load sends the same body every time)
 * with `inFlight` requests in flight over {@link H2LOAD_CONNECTIONS} connections, `warmupS` of
 * warm-up then `durationS` measured. gRPC reports errors in trailers, which h2load does not read,
 * so the rate is checked against etcd's revision (one per applied put): the notes give both.
 */
export async function runH2loadPut(o: H2loadOptions): Promise<WorkloadResult> {
  const bin = o.h2load ?? findH2load();
  if (bin === undefined) throw new Error(H2LOAD_MISSING_MESSAGE);
  const leader = await leaderEndpoint('etcd', o.endpoints, o.opTimeoutMs);
  const dir = await mkdtemp(join(tmpdir(), 'kvcascade-h2load-'));
  try {
    const bodyPath = join(dir, 'put.bin');
    const value = new Uint8Array(o.valueBytes);
    for (let i = 0; i < value.length; i++) value[i] = (i * 31 + 7) & 0xff;
    await writeFile(bodyPath, grpcPutBody(new TextEncoder().encode(keyName(0, 'bench/h2load/')), value));
    const conns = Math.min(H2LOAD_CONNECTIONS, o.inFlight);
    const streams = Math.ceil(o.inFlight / conns);
    const args = [
      `http://${leader}/etcdserverpb.KV/Put`,
      '-c', String(conns), '-m', String(streams), '-t', '1',
      '-d', bodyPath,
      '-H', 'content-type: application/grpc', '-H', 'te: trailers',
      '--warm-up-time', `${o.warmupS}s`, '-D', `${o.durationS}s`,
    ];
    // Revision and CPU are read around the whole h2load run (its warm-up included): h2load's own
    // window cannot be observed from outside, so these are per-op averages over warm-up + window.
    const rev0 = await etcdRevision(leader, o.opTimeoutMs);
    const cpu0 = await Promise.all(o.serverPids.map((p) => processCpuSeconds(p)));
    const busy0 = await machineBusySeconds();
    const t0 = performance.now();
    const { out, cpuS: clientS } = await runProcess(bin, args);
    const wallS = (performance.now() - t0) / 1000;
    const cpu1 = await Promise.all(o.serverPids.map((p) => processCpuSeconds(p)));
    const busy1 = await machineBusySeconds();
    const rev1 = await etcdRevision(leader, o.opTimeoutMs);
    const r = parseH2load(out);
    const applied = rev1 - rev0;
    const srvS = cpu0.every((c) => c !== undefined) && cpu1.every((c) => c !== undefined)
      ? cpu1.reduce((a, c, i) => a + c! - cpu0[i]!, 0)
      : undefined;
    const serverCpuCores = srvS === undefined ? null : srvS / wallS;
    const otherCpuCores = busy0 === undefined || busy1 === undefined || srvS === undefined ? null : Math.max(0, (busy1 - busy0 - srvS - clientS) / wallS);
    const appliedPerSec = applied / wallS;
    return {
      system: 'etcd',
      workload: 'h2load',
      clients: o.inFlight,
      clientsLabel: `${conns}x${streams}`,
      connections: conns,
      procs: 1,
      durationS: o.durationS,
      ops: r.succeeded,
      opsTotal: r.succeeded,
      opsPerSec: r.reqPerSec,
      p50Ms: NaN,
      p99Ms: NaN,
      p999Ms: NaN,
      meanMs: r.meanMs,
      maxMs: r.maxMs,
      errors: r.failed > 0 ? { HTTP: r.failed } : {},
      conflicts: 0,
      retriedOps: 0,
      abandoned: 0,
      misses: 0,
      clientCpuCores: clientS / wallS,
      serverCpuCores,
      otherCpuCores,
      serverCpuUsPerOp: srvS === undefined || applied <= 0 ? null : Math.round((srvS * 1e6) / applied),
      notes: [
        `h2load to the leader ${leader}, one key; mean ${r.meanMs.toFixed(2)} ms, max ${r.maxMs.toFixed(1)} ms (h2load gives no percentiles)`,
        `applied ${Math.round(appliedPerSec)}/s by revision over warm-up + window (srv us/op and cpu over the same)`,
      ],
      extra: { h2load: { args, leader, report: r, appliedPuts: applied, wallS } },
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
