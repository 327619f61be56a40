/** The closed-loop load generator: N workers each issue one op at a time (or Pipeline streams keep a fixed number in flight) over a warm-up plus a measured window, spread over forked client processes, with latencies in an HDR histogram. */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import * as hdr from 'hdr-histogram-js';
import type * as grpc from '@grpc/grpc-js';
import { KvDriver, makeDriver, type Driver, type KvPipelineReq, type KvPipelineRes, type SystemName } from './clients.js';
import { writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';
import { LibDriver } from './lib-driver.js';
import { KeyRouter, type RoutingSpec } from './shards.js';
import { machineBusySeconds, processCpuSeconds } from './util.js';
import { perOp, perOpNote, readNodeCounters, type NodeCounters } from './node-counters.js';

/**
 * The workloads: `pipelined-put`, `put-shards`, `pipelined-put-shards`, `lib-put-shards`, `lambda` and
 * `lambda-throughput` exist only for kvd. `lambda`, `lambda-throughput` and `watch` (the reaction
 * workloads) are implemented in reactions.ts. `put-shards` and `pipelined-put-shards` (the shard
 * scaling workloads) run `put` / `pipelined-put` with every key sent to its shard's leader (`lib-put-shards`: `put`
 * through KvClient, which routes each key itself), once
 * per shard count on a fresh cluster (see run.ts).
 */
export const WORKLOADS = ['put', 'get', 'rmw', 'pipelined-put', 'put-shards', 'pipelined-put-shards', 'lib-put-shards', 'lambda', 'lambda-throughput', 'watch', 'h2load'] as const;
/** One workload's name. */
export type WorkloadName = (typeof WORKLOADS)[number];
/** What runs when --workloads is not given (the reaction workloads and pipelined-put-shards are opt-in; h2load runs only where installed). */
export const DEFAULT_WORKLOADS: readonly WorkloadName[] = ['put', 'get', 'rmw', 'pipelined-put', 'put-shards', 'h2load'];
/** Workloads that measure reacting to writes (extension lambdas, client watches); see reactions.ts. */
export const REACTION_WORKLOADS: readonly WorkloadName[] = ['lambda', 'lambda-throughput', 'watch'];
/** Shard scaling workloads: run once per `--shards` count, each on a fresh kvd cluster, keys routed to their shard leaders. */
export const SHARD_WORKLOADS: readonly WorkloadName[] = ['put-shards', 'pipelined-put-shards', 'lib-put-shards'];

/** Whether `system` can run `workload`. */
export function supports(system: SystemName, workload: WorkloadName): boolean {
  switch (workload) {
    case 'pipelined-put':
    case 'put-shards':
    case 'pipelined-put-shards':
    case 'lib-put-shards':
    case 'lambda':
    case 'lambda-throughput':
      return system === 'kvd';
    case 'h2load':
      return system === 'etcd';
    default:
      return true;
  }
}

/** How kvd's put/get/rmw are driven: `stub` = plain grpc-js unary stubs (as etcd's), `lib` = the client library's default KvClient API, `lib-unary` = KvClient with `batching: false` (every call unary). */
export const KVD_CLIENT_MODES = ['stub', 'lib', 'lib-unary'] as const;
/** One of {@link KVD_CLIENT_MODES}. */
export type KvdClientMode = (typeof KVD_CLIENT_MODES)[number];

/** Whether `workload` keeps ops in flight on Pipeline streams (its clients column is streams x depth). */
export function isPipelined(workload: WorkloadName): boolean {
  return workload === 'pipelined-put' || workload === 'pipelined-put-shards';
}

/** Parameters shared by every client process of one workload run. */
export interface LoadParams {
  readonly system: SystemName;
  readonly workload: WorkloadName;
  /** Keys are `bench/k00000000` … `bench/k{keys-1}`; put and get draw uniformly from all of them. */
  readonly keys: number;
  /** rmw draws uniformly from the first `rmwKeys` keys (smaller = more contention). */
  readonly rmwKeys: number;
  /** Size of every put value in bytes. */
  readonly valueBytes: number;
  /** Ops in flight per Pipeline stream (pipelined-put). */
  readonly pipelineDepth: number;
  /** Per-call deadline in ms. */
  readonly opTimeoutMs: number;
  /** Conditional-write attempts per rmw before it is abandoned. */
  readonly rmwMaxAttempts: number;
  /** Key prefix instead of `bench/` (keys are `<keyPrefix>k00000042`); lambda-throughput writes under the watched prefix. */
  readonly keyPrefix?: string;
  /** The shard map and leaders, for the shard-routed workloads (put-shards, pipelined-put-shards). */
  readonly routing?: RoutingSpec;
  /** Save a CPU profile of each client process over the measured window here. */
  readonly profileDir?: string;
  /** kvd put/get/rmw through KvClient (`lib`) instead of stubs (default `stub`). */
  readonly kvdClient?: KvdClientMode;
  /** Every node of the cluster (the `lib` driver's endpoints). */
  readonly clusterEndpoints?: readonly string[];
}

/** One client connection of a process: where it goes and how many closed-loop workers share it. */
export interface ChannelPlan {
  readonly address: string;
  readonly workers: number;
}

/** What one client process runs. */
export interface LoadPartSpec extends LoadParams {
  readonly channels: readonly ChannelPlan[];
}

/** Counters and histogram of one client process over the measured window. */
export interface LoadPartResult {
  /** Ops completed inside the measured window. */
  readonly ops: number;
  /** Ops completed successfully at any time (warm-up, window and drain): every write that was acknowledged. */
  readonly opsTotal: number;
  /** Failed calls inside the measured window, by gRPC status code name (or "stream"/"pipeline-N"). */
  readonly errors: Record<string, number>;
  /** rmw: conditional writes rejected by a concurrent change. */
  readonly conflicts: number;
  /** rmw: ops that needed at least one retry. */
  readonly retriedOps: number;
  /** rmw: ops given up after rmwMaxAttempts conflicts (not counted in ops). */
  readonly abandoned: number;
  /** get: reads that found no value (should be 0: keys are pre-populated). */
  readonly misses: number;
  /**
   * put-shards: window ops whose response's `kv-leader` named a node other than the one they were
   * sent to (forwarded, or a wrong hint: the routing itself follows Cluster.Status).
   */
  readonly misrouted: number;
  /** put-shards: times response metadata moved a shard's leader in the routing table. */
  readonly leaderUpdates: number;
  /** Latency histogram in microseconds, hdr-histogram-js compressed base64. */
  readonly histogram: string;
  /** CPU seconds this client process used during the measured window. */
  readonly cpuSeconds: number;
}

/** One client process's connected workers, ready to run; {@link prepareLoadPart} returns one. */
export interface LoadPart {
  /** Runs `warmupMs` unmeasured then `durationMs` measured, and resolves after in-flight ops drained. */
  run(warmupMs: number, durationMs: number): Promise<LoadPartResult>;
  /** Closes every connection. */
  close(): void;
}

/** A new latency histogram (microseconds, 3 significant digits). */
export function newHistogram(): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
}

/** The gRPC status code name of an error ("other" when it has none). */
export function errorName(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'number') {
    const names = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS',
      'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED',
      'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];
    return names[code] ?? `code-${code}`;
  }
  return 'other';
}

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A pool of random bytes that values are sliced from, so generating a value costs no RNG call. */
export class ValuePool {
  private readonly pool = randomBytes(64 * 1024);
  constructor(private readonly size: number) {}
  next(): Buffer {
    const off = Math.floor(Math.random() * (this.pool.length - this.size));
    return this.pool.subarray(off, off + this.size);
  }
}

/** Connects one client process's channels and returns a part ready to {@link LoadPart.run}. */
export async function prepareLoadPart(spec: LoadPartSpec): Promise<LoadPart> {
  // lib-put-shards is the client library's default path whatever --kvd-client says (its point); lib-unary is honoured.
  const lib = spec.workload === 'lib-put-shards' || (spec.system === 'kvd' && spec.kvdClient !== undefined && spec.kvdClient !== 'stub' && ['put', 'get', 'rmw'].includes(spec.workload));
  const drivers = spec.channels.map((c) =>
    lib
      ? new LibDriver(c.address, spec.clusterEndpoints ?? [c.address], spec.opTimeoutMs, spec.keyPrefix, spec.kvdClient === 'lib-unary')
      : makeDriver(spec.system, c.address, spec.opTimeoutMs, spec.keyPrefix),
  );
  // Shard-routed workloads need a connection to every leader: add one (without workers of its own) per missing node.
  const extra: Driver[] = [];
  if (spec.routing && spec.workload !== 'lib-put-shards') {
    const have = new Set(spec.channels.map((c) => c.address));
    for (const [, addr] of spec.routing.leaders) {
      if (have.has(addr)) continue;
      have.add(addr);
      extra.push(makeDriver(spec.system, addr, spec.opTimeoutMs, spec.keyPrefix));
    }
  }
  const all = [...drivers, ...extra];
  try {
    await Promise.all(all.map((d) => d.ready(10_000)));
  } catch (err) {
    for (const d of all) d.close();
    throw err;
  }
  return {
    run: (warmupMs, durationMs) => runPart(spec, drivers, extra, warmupMs, durationMs),
    close: () => {
      for (const d of all) d.close();
    },
  };
}

interface Window {
  readonly measureFrom: number;
  readonly endAt: number;
}

interface Recorder {
  readonly hist: hdr.Histogram;
  ops: number;
  opsTotal: number;
  conflicts: number;
  retriedOps: number;
  abandoned: number;
  misses: number;
  misrouted: number;
  readonly errors: Record<string, number>;
}

async function runPart(
  spec: LoadPartSpec, drivers: readonly Driver[], extra: readonly Driver[], warmupMs: number, durationMs: number,
): Promise<LoadPartResult> {
  const router = spec.routing ? new KeyRouter(spec.routing, spec.keys, spec.keyPrefix) : undefined;
  const start = performance.now();
  const win: Window = { measureFrom: start + warmupMs, endAt: start + warmupMs + durationMs };
  const rec: Recorder = {
    hist: newHistogram(), ops: 0, opsTotal: 0, conflicts: 0, retriedOps: 0, abandoned: 0, misses: 0, misrouted: 0, errors: {},
  };
  let cpuStart: NodeJS.CpuUsage | undefined;
  let cpuSeconds = 0;
  const profiler = spec.profileDir === undefined ? undefined : new Session();
  let profiled: Promise<void> | undefined;
  const t1 = setTimeout(() => {
    cpuStart = process.cpuUsage();
    if (profiler) {
      profiler.connect();
      profiled = profiler.post('Profiler.enable').then(() => profiler.post('Profiler.start'));
    }
  }, warmupMs);
  let windowClosed = false;
  const closeWindow = (): void => {
    if (windowClosed) return;
    windowClosed = true;
    const d = process.cpuUsage(cpuStart);
    cpuSeconds = (d.user + d.system) / 1e6;
    if (profiler && profiled) {
      const file = join(spec.profileDir!, `client-${spec.system}-${spec.workload}-${process.pid}.cpuprofile`);
      profiled = profiled
        .then(() => profiler.post('Profiler.stop'))
        .then(({ profile }) => writeFile(file, JSON.stringify(profile)))
        .finally(() => profiler.disconnect());
    }
  };
  const t2 = setTimeout(closeWindow, warmupMs + durationMs);

  const loops: Promise<void>[] = [];
  if (spec.workload === 'pipelined-put') {
    for (const d of drivers) loops.push(pipelineLoop(d as KvDriver, spec, win, rec));
  } else if (spec.workload === 'put-shards' || spec.workload === 'pipelined-put-shards') {
    if (!router) throw new Error(`${spec.workload} needs a routing spec`);
    const pool = new DriverPool([...drivers, ...extra] as KvDriver[]);
    if (spec.workload === 'pipelined-put-shards') {
      loops.push(routedPipelineLoop(pool, drivers.length * spec.pipelineDepth, router, spec, win, rec));
    } else {
      spec.channels.forEach((c, i) => {
        for (let w = 0; w < c.workers; w++) loops.push(routedUnaryLoop(drivers[i] as KvDriver, pool, router, spec, win, rec));
      });
    }
  } else {
    spec.channels.forEach((c, i) => {
      for (let w = 0; w < c.workers; w++) loops.push(unaryLoop(drivers[i]!, spec, win, rec));
    });
  }
  await Promise.all(loops);
  clearTimeout(t1);
  clearTimeout(t2);
  // The workers may stop at the window's end just before its timer fires: the CPU is counted either way.
  closeWindow();
  await profiled;
  const result: LoadPartResult = {
    ops: rec.ops,
    opsTotal: rec.opsTotal,
    errors: rec.errors,
    conflicts: rec.conflicts,
    retriedOps: rec.retriedOps,
    abandoned: rec.abandoned,
    misses: rec.misses,
    misrouted: rec.misrouted,
    leaderUpdates: router?.leaderUpdates ?? 0,
    histogram: hdr.encodeIntoCompressedBase64(rec.hist),
    cpuSeconds,
  };
  rec.hist.destroy();
  return result;
}

/** One closed-loop worker: one op at a time until the window closes. */
async function unaryLoop(d: Driver, spec: LoadPartSpec, win: Window, rec: Recorder): Promise<void> {
  const values = new ValuePool(spec.valueBytes);
  for (;;) {
    const t0 = performance.now();
    if (t0 >= win.endAt) return;
    try {
      let miss = false;
      let conflicts = 0;
      let abandoned = false;
      switch (spec.workload) {
        case 'put':
        case 'lib-put-shards': // KvClient routes each key to its shard's leader itself
          await d.put(Math.floor(Math.random() * spec.keys), values.next());
          break;
        case 'get':
          miss = !(await d.get(Math.floor(Math.random() * spec.keys)));
          break;
        case 'rmw': {
          const out = await d.rmw(Math.floor(Math.random() * spec.rmwKeys), spec.rmwMaxAttempts);
          conflicts = out.conflicts;
          abandoned = out.abandoned;
          break;
        }
        default:
          throw new Error(`unary loop cannot run ${spec.workload}`);
      }
      const t1 = performance.now();
      if (!abandoned) rec.opsTotal++;
      if (t1 >= win.measureFrom && t1 <= win.endAt) {
        rec.conflicts += conflicts;
        if (conflicts > 0) rec.retriedOps++;
        if (miss) rec.misses++;
        if (abandoned) {
          rec.abandoned++;
        } else {
          rec.ops++;
          rec.hist.recordValue(Math.max(1, Math.round((t1 - t0) * 1000)));
        }
      }
    } catch (err) {
      const t1 = performance.now();
      if (t1 >= win.measureFrom && t1 <= win.endAt) {
        const name = errorName(err);
        rec.errors[name] = (rec.errors[name] ?? 0) + 1;
      }
      await sleep(10); // do not spin on a failing server
    }
  }
}

/** One Pipeline stream kept `pipelineDepth` puts deep until the window closes; reopened if it fails early. */
async function pipelineLoop(d: KvDriver, spec: LoadPartSpec, win: Window, rec: Recorder): Promise<void> {
  const values = new ValuePool(spec.valueBytes);
  let nextId = 1;
  while (performance.now() < win.endAt) {
    const failed = await new Promise<boolean>((resolve) => {
      const stream = d.stub.pipeline(undefined, { deadline: win.endAt - performance.now() + Date.now() + spec.opTimeoutMs });
      const started = new Map<number, number>();
      let ending = false;
      let sawError = false;
      const send = (): void => {
        const id = nextId++;
        const req: KvPipelineReq = { id, put: { key: d.key(Math.floor(Math.random() * spec.keys)), value: values.next() } };
        started.set(id, performance.now());
        stream.write(req);
      };
      const maybeEnd = (): void => {
        if (!ending && started.size === 0) {
          ending = true;
          stream.end();
        }
      };
      stream.on('data', (res: KvPipelineRes) => {
        const t1 = performance.now();
        const id = Number(res.id ?? 0);
        const t0 = started.get(id);
        started.delete(id);
        if (t0 !== undefined && res.result !== 'error' && res.error === undefined) rec.opsTotal++;
        if (t0 !== undefined && t1 >= win.measureFrom && t1 <= win.endAt) {
          if (res.result === 'error' || res.error !== undefined) {
            const name = `pipeline-${res.error?.code ?? '?'}`;
            rec.errors[name] = (rec.errors[name] ?? 0) + 1;
          } else {
            rec.ops++;
            rec.hist.recordValue(Math.max(1, Math.round((t1 - t0) * 1000)));
          }
        }
        if (t1 < win.endAt && !ending) send();
        else maybeEnd();
      });
      stream.on('error', (err) => {
        sawError = true;
        if (performance.now() <= win.endAt) {
          const name = `stream-${errorName(err)}`;
          rec.errors[name] = (rec.errors[name] ?? 0) + 1;
        }
      });
      stream.on('status', () => resolve(sawError));
      for (let i = 0; i < spec.pipelineDepth; i++) send();
    });
    if (failed) await sleep(10);
    else return;
  }
}

/** A process's kvd connections by address, handed out round-robin per address. */
class DriverPool {
  private readonly byAddress = new Map<string, { drivers: KvDriver[]; next: number }>();
  /** Every address with at least one connection, in first-seen order. */
  readonly addresses: string[] = [];

  constructor(drivers: readonly KvDriver[]) {
    for (const d of drivers) {
      let e = this.byAddress.get(d.address);
      if (!e) {
        this.byAddress.set(d.address, (e = { drivers: [], next: 0 }));
        this.addresses.push(d.address);
      }
      e.drivers.push(d);
    }
  }

  /** The next connection to `address`, or undefined if this process has none. */
  pick(address: string): KvDriver | undefined {
    const e = this.byAddress.get(address);
    if (!e) return undefined;
    const d = e.drivers[e.next]!;
    e.next = (e.next + 1) % e.drivers.length;
    return d;
  }

  /** The first connection to `address`, or undefined. */
  first(address: string): KvDriver | undefined {
    return this.byAddress.get(address)?.drivers[0];
  }
}

/**
 * One closed-loop put worker that sends each key to its shard leader's connection (its own
 * connection while the leader is unknown), learning leaders from `kv-leader`/`kv-shard` metadata.
 */
async function routedUnaryLoop(own: KvDriver, pool: DriverPool, router: KeyRouter, spec: LoadPartSpec, win: Window, rec: Recorder): Promise<void> {
  const values = new ValuePool(spec.valueBytes);
  for (;;) {
    const t0 = performance.now();
    if (t0 >= win.endAt) return;
    const i = Math.floor(Math.random() * spec.keys);
    const target = router.leaderOf(i);
    const d = (target === undefined ? undefined : pool.pick(target)) ?? own;
    try {
      const leader = router.learn(await d.putWithTrailers(i, values.next()), false);
      const t1 = performance.now();
      rec.opsTotal++;
      if (t1 >= win.measureFrom && t1 <= win.endAt) {
        rec.ops++;
        rec.hist.recordValue(Math.max(1, Math.round((t1 - t0) * 1000)));
        if (leader !== undefined && leader !== d.address) rec.misrouted++;
      }
    } catch (err) {
      router.learn((err as { metadata?: grpc.Metadata }).metadata, true);
      const t1 = performance.now();
      if (t1 >= win.measureFrom && t1 <= win.endAt) {
        const name = errorName(err);
        rec.errors[name] = (rec.errors[name] ?? 0) + 1;
      }
      await sleep(10); // do not spin on a failing server
    }
  }
}

/** One Pipeline stream of {@link routedPipelineLoop}: its node, the call (while open) and its ops in flight. */
interface RoutedStream {
  readonly address: string;
  readonly driver: KvDriver;
  call?: grpc.ClientDuplexStream<KvPipelineReq, KvPipelineRes>;
  /** op id → start time. */
  readonly started: Map<number, number>;
  ending: boolean;
}

/**
 * Pipelined puts routed by shard: one Pipeline stream per node, `inFlight` puts outstanding in
 * total, each sent on the stream of its key's shard leader (any open stream while that one is
 * down); every response sends the next put until the window closes. A failed stream is reopened
 * after 10 ms and its lost ops are re-sent.
 */
function routedPipelineLoop(pool: DriverPool, inFlight: number, router: KeyRouter, spec: LoadPartSpec, win: Window, rec: Recorder): Promise<void> {
  const values = new ValuePool(spec.valueBytes);
  const streams: RoutedStream[] = pool.addresses.map((a) => ({ address: a, driver: pool.first(a)!, started: new Map(), ending: false }));
  const byAddress = new Map(streams.map((s) => [s.address, s]));
  let nextId = 1;
  let owed = 0; // ops lost with a failed stream, to re-send once a stream is open
  let live = 0; // streams opened and not yet finished
  let endTimer: NodeJS.Timeout | undefined;
  return new Promise<void>((resolveAll) => {
    const finishIfDone = (): void => {
      if (live === 0 && performance.now() >= win.endAt) {
        clearTimeout(endTimer);
        resolveAll();
      }
    };
    const endIdle = (): void => {
      for (const s of streams) {
        if (s.call && !s.ending && s.started.size === 0) {
          s.ending = true;
          s.call.end();
        }
      }
      finishIfDone();
    };
    const send = (): void => {
      const i = Math.floor(Math.random() * spec.keys);
      const target = router.leaderOf(i);
      let s = target === undefined ? undefined : byAddress.get(target);
      if (!s?.call || s.ending) s = streams.find((x) => x.call && !x.ending);
      if (!s?.call) {
        owed++;
        return;
      }
      const id = nextId++;
      s.started.set(id, performance.now());
      s.call.write({ id, put: { key: s.driver.key(i), value: values.next() } } satisfies KvPipelineReq);
    };
    const open = (s: RoutedStream): void => {
      s.ending = false;
      const call = s.driver.stub.pipeline(undefined, { deadline: win.endAt - performance.now() + Date.now() + spec.opTimeoutMs });
      s.call = call;
      live++;
      call.on('data', (res: KvPipelineRes) => {
        const t1 = performance.now();
        const id = Number(res.id ?? 0);
        const t0 = s.started.get(id);
        s.started.delete(id);
        const failed = res.result === 'error' || res.error !== undefined;
        if (t0 !== undefined && !failed) rec.opsTotal++;
        if (t0 !== undefined && t1 >= win.measureFrom && t1 <= win.endAt) {
          if (failed) {
            const name = `pipeline-${res.error?.code ?? '?'}`;
            rec.errors[name] = (rec.errors[name] ?? 0) + 1;
          } else {
            rec.ops++;
            rec.hist.recordValue(Math.max(1, Math.round((t1 - t0) * 1000)));
          }
        }
        if (t1 < win.endAt) send();
        else endIdle();
      });
      call.on('error', (err) => {
        if (performance.now() <= win.endAt) {
          const name = `stream-${errorName(err)}`;
          rec.errors[name] = (rec.errors[name] ?? 0) + 1;
        }
      });
      call.on('status', () => {
        live--;
        const lost = s.started.size;
        s.started.clear();
        s.call = undefined;
        if (performance.now() < win.endAt) {
          owed += lost;
          setTimeout(() => {
            if (performance.now() >= win.endAt) return finishIfDone();
            open(s);
            const n = owed;
            owed = 0;
            for (let k = 0; k < n; k++) send();
          }, 10);
        } else {
          endIdle();
        }
      });
    };
    for (const s of streams) open(s);
    for (let k = 0; k < inFlight; k++) send();
    endTimer = setTimeout(endIdle, Math.max(0, win.endAt - performance.now()) + 1);
  });
}

/** Splits `clients` workers over connections: at most `perChannel` per connection, a multiple of the endpoint count so every node gets the same share, assigned round-robin to `procs` processes. */
export function planChannels(endpoints: readonly string[], clients: number, perChannel: number, procs: number): ChannelPlan[][] {
  const e = endpoints.length;
  let channels = Math.ceil(clients / perChannel);
  channels = Math.ceil(channels / e) * e;
  channels = Math.max(1, Math.min(channels, clients));
  const parts = Math.max(1, Math.min(procs, channels));
  const plan: ChannelPlan[][] = Array.from({ length: parts }, () => []);
  const base = Math.floor(clients / channels);
  const extra = clients % channels;
  for (let c = 0; c < channels; c++) {
    plan[c % parts]!.push({ address: endpoints[c % e]!, workers: base + (c < extra ? 1 : 0) });
  }
  return plan;
}

/** Options of {@link runWorkload}. */
export interface WorkloadOptions extends LoadParams {
  readonly endpoints: readonly string[];
  /** Closed-loop workers (unary) — for pipelined-put, this sizes the number of streams like the unary connections. */
  readonly clients: number;
  /** Workers per connection (default 16). */
  readonly perChannel: number;
  /** Client processes to fork (0 = run in this process). */
  readonly procs: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** Server PIDs, for CPU accounting over the measured window. */
  readonly serverPids: readonly number[];
  /** Called when the client processes are connected and told to start (the warm-up begins). */
  readonly onStart?: () => void;
  /** kvd: each node's `/metrics` port; its counters over the window give peer messages, fsynced rounds and engine writes per op. */
  readonly metricsPorts?: readonly (number | undefined)[];
}

/** The merged result of one workload on one system. */
export interface WorkloadResult {
  readonly system: SystemName;
  readonly workload: WorkloadName;
  /** Closed-loop workers; for pipelined-put the total ops in flight. */
  readonly clients: number;
  /** The client column as printed ("64", or "6x128" for streams x depth). */
  readonly clientsLabel: string;
  readonly connections: number;
  readonly procs: number;
  readonly durationS: number;
  readonly ops: number;
  /** Successful ops at any time, warm-up and drain included (reaction workloads: acknowledged puts). */
  readonly opsTotal: number;
  readonly opsPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly p999Ms: number;
  readonly meanMs: number;
  readonly maxMs: number;
  readonly errors: Record<string, number>;
  readonly conflicts: number;
  readonly retriedOps: number;
  readonly abandoned: number;
  readonly misses: number;
  /**
   * put-shards: ops whose response's `kv-leader` named a node other than the one they were sent to
   * (forwarded, or a wrong hint; pipelined: not observable, absent).
   */
  readonly misrouted?: number;
  /** Shard-routed workloads: leader changes the clients learned from response metadata. */
  readonly leaderUpdates?: number;
  /** Shard scaling workloads: data shards of the default pool of the cluster measured. */
  readonly shards?: number;
  /** Client processes' CPU over the window, in cores (1.0 = one core busy). */
  readonly clientCpuCores: number;
  /** Server processes' CPU over the window, in cores. */
  readonly serverCpuCores: number | null;
  /**
   * Machine-wide CPU over the window not used by the servers or the client processes, in cores
   * (the harness itself, the kernel, and anything else running): well above 0.1 means the figures are disturbed.
   */
  readonly otherCpuCores: number | null;
  /** Server CPU per op in microseconds, summed over the 3 nodes (an efficiency figure that does not depend on the client). */
  readonly serverCpuUsPerOp: number | null;
  /** kvd driven through KvClient (`--kvd-client lib`). */
  readonly kvdClient?: KvdClientMode;
  /** Workload-specific notes printed before the CPU figures (the reaction workloads say what the columns mean). */
  readonly notes?: readonly string[];
  /** Workload-specific figures, written to the JSON results only. */
  readonly extra?: Readonly<Record<string, unknown>>;
}

interface WorkerMessage {
  type: 'ready' | 'result' | 'error';
  result?: LoadPartResult;
  message?: string;
}

/** Every forked client process still running, so an interrupted harness can end them first. */
const liveWorkers = new Set<ChildProcess>();

/** Kills every forked client process still running (used when the harness is interrupted). */
export function killWorkers(): void {
  for (const c of liveWorkers) c.kill('SIGKILL');
  liveWorkers.clear();
}

/** A part running in a forked child process (bench/load-worker.ts compiled next to this file). */
class ForkedPart implements LoadPart {
  private readonly child: ChildProcess;
  private readonly messages: WorkerMessage[] = [];
  private waiter: ((m: WorkerMessage) => void) | undefined;
  private exited = false;

  constructor(spec: LoadPartSpec) {
    this.child = fork(fileURLToPath(new URL('./load-worker.js', import.meta.url)), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    liveWorkers.add(this.child);
    this.child.on('message', (m: WorkerMessage) => this.deliver(m));
    this.child.on('exit', (code, signal) => {
      this.exited = true;
      liveWorkers.delete(this.child);
      this.deliver({ type: 'error', message: `load worker exited (${code ?? signal})` });
    });
    this.child.send({ type: 'spec', spec });
  }

  private deliver(m: WorkerMessage): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(m);
    } else this.messages.push(m);
  }

  /** The next message from the child (an error message rejects). */
  async next(type: 'ready' | 'result'): Promise<WorkerMessage> {
    const m = this.messages.shift() ?? (await new Promise<WorkerMessage>((r) => (this.waiter = r)));
    if (m.type === 'error') throw new Error(m.message ?? 'load worker failed');
    if (m.type !== type) throw new Error(`load worker sent ${m.type}, expected ${type}`);
    return m;
  }

  async run(warmupMs: number, durationMs: number): Promise<LoadPartResult> {
    this.child.send({ type: 'go', warmupMs, durationMs });
    return (await this.next('result')).result!;
  }

  close(): void {
    if (!this.exited) this.child.kill('SIGTERM');
  }
}

/** Runs one workload against one system: forks the client processes, waits until all are connected, starts them together, merges their histograms. */
export async function runWorkload(o: WorkloadOptions): Promise<WorkloadResult> {
  const plan = planChannels(o.endpoints, o.clients, o.perChannel, o.procs === 0 ? 1 : o.procs);
  const params: LoadParams = {
    system: o.system, workload: o.workload, keys: o.keys, rmwKeys: o.rmwKeys, valueBytes: o.valueBytes,
    pipelineDepth: o.pipelineDepth, opTimeoutMs: o.opTimeoutMs, rmwMaxAttempts: o.rmwMaxAttempts,
    ...(o.keyPrefix === undefined ? {} : { keyPrefix: o.keyPrefix }),
    ...(o.routing === undefined ? {} : { routing: o.routing }),
    ...(o.profileDir === undefined ? {} : { profileDir: o.profileDir }),
    ...(o.kvdClient === undefined ? {} : { kvdClient: o.kvdClient }),
    clusterEndpoints: o.endpoints,
  };
  const parts: LoadPart[] = [];
  try {
    if (o.procs === 0) {
      parts.push(await prepareLoadPart({ ...params, channels: plan[0]! }));
    } else {
      const forked = plan.map((channels) => new ForkedPart({ ...params, channels }));
      parts.push(...forked);
      await Promise.all(forked.map((f) => f.next('ready')));
    }

    // Server and machine-wide CPU over the measured window only.
    let srvStart: (number | undefined)[] = [];
    let busyStart: number | undefined;
    const cpuWin: { srv: number | null; busy: number | null } = { srv: null, busy: null };
    const sample = (): Promise<[(number | undefined)[], number | undefined]> =>
      Promise.all([Promise.all(o.serverPids.map((p) => processCpuSeconds(p))), machineBusySeconds()]);
    // With --profile, SIGUSR2 makes each kvd start (then save) a CPU profile of the window.
    const toggleServerProfiles = (): void => {
      if (o.profileDir === undefined || o.system !== 'kvd') return;
      for (const pid of o.serverPids) {
        try {
          process.kill(pid, 'SIGUSR2');
        } catch {
          // gone
        }
      }
    };
    const ports = o.metricsPorts ?? [];
    let countersStart: Promise<NodeCounters | undefined> = Promise.resolve(undefined);
    let countersEnd: Promise<NodeCounters | undefined> = Promise.resolve(undefined);
    let startSample: Promise<void> | undefined;
    let endSample: Promise<void> | undefined;
    const t1 = setTimeout(() => {
      toggleServerProfiles();
      countersStart = readNodeCounters(ports);
      startSample = sample().then(([srv, busy]) => {
        srvStart = srv;
        busyStart = busy;
      });
    }, o.warmupMs);
    // The end of the window: taken by its timer, or when the workload returns first (its clients
    // stop at the same instant, so the timer may not have fired yet). Awaited before the results
    // are read (a fixed pause lost the sample when reading /proc and /metrics took longer).
    const endWindow = (): void => {
      if (endSample !== undefined || startSample === undefined) return;
      countersEnd = readNodeCounters(ports);
      const started = startSample;
      endSample = Promise.all([started, sample()]).then(([, [end, busy]]) => {
        toggleServerProfiles();
        let sum = 0;
        let ok = end.length > 0;
        end.forEach((e, i) => {
          const s = srvStart[i];
          if (e === undefined || s === undefined) ok = false;
          else sum += e - s;
        });
        cpuWin.srv = ok ? sum / (o.durationMs / 1000) : null;
        cpuWin.busy = busy === undefined || busyStart === undefined ? null : (busy - busyStart) / (o.durationMs / 1000);
      });
    };
    const t2 = setTimeout(endWindow, o.warmupMs + o.durationMs);
    o.onStart?.();
    const results = await Promise.all(parts.map((p) => p.run(o.warmupMs, o.durationMs)));
    clearTimeout(t1);
    clearTimeout(t2);
    endWindow();
    await endSample;
    const [cStart, cEnd] = await Promise.all([countersStart, countersEnd]);

    const hist = newHistogram();
    const errors: Record<string, number> = {};
    let ops = 0, opsTotal = 0, conflicts = 0, retriedOps = 0, abandoned = 0, misses = 0, misrouted = 0, leaderUpdates = 0, cpu = 0;
    for (const r of results) {
      const h = hdr.decodeFromCompressedBase64(r.histogram);
      hist.add(h);
      h.destroy();
      ops += r.ops;
      opsTotal += r.opsTotal;
      conflicts += r.conflicts;
      retriedOps += r.retriedOps;
      abandoned += r.abandoned;
      misses += r.misses;
      misrouted += r.misrouted;
      leaderUpdates += r.leaderUpdates;
      cpu += r.cpuSeconds;
      for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
    }
    const connections = plan.reduce((n, p) => n + p.length, 0);
    const pipelined = isPipelined(o.workload);
    const ms = (us: number): number => Math.round(us) / 1000;
    const counts = cStart !== undefined && cEnd !== undefined ? perOp(cStart, cEnd, ops, ports.length) : undefined;
    const countsNote = counts === undefined ? undefined : perOpNote(counts);
    const result: WorkloadResult = {
      system: o.system,
      workload: o.workload,
      clients: pipelined ? connections * o.pipelineDepth : o.clients,
      clientsLabel: pipelined ? `${connections}x${o.pipelineDepth}` : String(o.clients),
      connections,
      procs: o.procs === 0 ? 0 : plan.length,
      durationS: o.durationMs / 1000,
      ops,
      opsTotal,
      opsPerSec: ops / (o.durationMs / 1000),
      p50Ms: ms(hist.getValueAtPercentile(50)),
      p99Ms: ms(hist.getValueAtPercentile(99)),
      p999Ms: ms(hist.getValueAtPercentile(99.9)),
      meanMs: ms(hist.mean),
      maxMs: ms(hist.maxValue),
      errors,
      conflicts,
      retriedOps,
      abandoned,
      misses,
      ...(o.routing ? { ...(o.workload === 'put-shards' ? { misrouted } : {}), leaderUpdates } : {}),
      clientCpuCores: cpu / (o.durationMs / 1000),
      serverCpuCores: cpuWin.srv,
      serverCpuUsPerOp: cpuWin.srv === null || ops === 0 ? null : Math.round((cpuWin.srv * (o.durationMs / 1000) * 1e6) / ops),
      ...(o.workload === 'lib-put-shards' ? { kvdClient: o.kvdClient === 'lib-unary' ? 'lib-unary' : 'lib' } : {}),
      ...(o.kvdClient !== undefined && o.kvdClient !== 'stub' && o.system === 'kvd' && ['put', 'get', 'rmw'].includes(o.workload) ? { kvdClient: o.kvdClient } : {}),
      otherCpuCores: cpuWin.busy === null || cpuWin.srv === null ? null : Math.max(0, cpuWin.busy - cpuWin.srv - cpu / (o.durationMs / 1000)),
      ...(counts === undefined ? {} : { extra: { perOp: counts }, ...(countsNote === undefined ? {} : { notes: [countsNote] }) }),
    };
    hist.destroy();
    return result;
  } finally {
    for (const p of parts) p.close();
  }
}

/** Options of {@link populate}. */
export interface PopulateOptions {
  readonly system: SystemName;
  readonly endpoints: readonly string[];
  readonly keys: number;
  readonly valueBytes: number;
  readonly concurrency: number;
  readonly opTimeoutMs: number;
}

/** Writes every key once (in this process, retrying failures) so get and rmw find values; resolves with the elapsed seconds. */
export async function populate(o: PopulateOptions): Promise<number> {
  const t0 = performance.now();
  const drivers = o.endpoints.map((e) => makeDriver(o.system, e, o.opTimeoutMs));
  try {
    await Promise.all(drivers.map((d) => d.ready(10_000)));
    const values = new ValuePool(o.valueBytes);
    let next = 0;
    const loop = async (w: number): Promise<void> => {
      const d = drivers[w % drivers.length]!;
      for (let i = next++; i < o.keys; i = next++) {
        for (let attempt = 1; ; attempt++) {
          try {
            await d.put(i, values.next());
            break;
          } catch (err) {
            if (attempt >= 20) throw new Error(`populate: put of key ${i} failed 20 times: ${(err as Error).message}`);
            await sleep(Math.min(1000, 10 * 2 ** attempt));
          }
        }
      }
    };
    await Promise.all(Array.from({ length: o.concurrency }, (_, w) => loop(w)));
  } finally {
    for (const d of drivers) d.close();
  }
  return (performance.now() - t0) / 1000;
}
