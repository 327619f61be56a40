/** Small helpers shared by the benchmark harness: locating repo files, free ports, polling with backoff, child-process lifecycle, and an event-loop probe. */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import type { Transport } from '../src/node/transport.js';
import type { Message } from '../src/raft/index.js';
import { leasePorts } from '../test/cluster/ports.js';

/**
 * The repository root: the first ancestor of this module (bench/ when run from source, dist/bench/
 * when compiled) that holds both `bench/etcd-proto/rpc.proto` and `proto/kvcascade/v1/kv.proto`.
 */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'bench', 'etcd-proto', 'rpc.proto')) && existsSync(join(dir, 'proto', 'kvcascade', 'v1', 'kv.proto'))) {
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`bench: cannot find the repository root above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

/**
 * Leases `n` distinct ports free on `host` from 20000–32767 through the tests' lock files
 * (test/cluster/ports.ts), so a benchmark never races a test file or another benchmark for a
 * port; the leases end when this process exits.
 */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  return leasePorts(n, host);
}

/** Options of {@link pollUntil}. */
export interface PollOptions {
  /** Overall deadline in ms (default 30 000). */
  readonly timeoutMs?: number;
  /** First delay between attempts in ms (default 20), multiplied by 1.5 after each failure. */
  readonly initialDelayMs?: number;
  /** Largest delay between attempts in ms (default 500). */
  readonly maxDelayMs?: number;
  /** What is being waited for, for the timeout error. */
  readonly what?: string;
  /** Called before each attempt; throwing aborts the wait (for example when a process died). */
  readonly abortIf?: () => void;
}

/**
 * Calls `attempt` until it resolves to a value other than undefined, with exponential backoff
 * between failed attempts (a thrown error counts as a failure); rejects after the deadline with the last error.
 */
export async function pollUntil<T>(attempt: () => Promise<T | undefined>, opts: PollOptions = {}): Promise<T> {
  const deadline = performance.now() + (opts.timeoutMs ?? 30_000);
  let delay = opts.initialDelayMs ?? 20;
  let lastError: unknown;
  for (;;) {
    opts.abortIf?.();
    try {
      const v = await attempt();
      if (v !== undefined) return v;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (performance.now() + delay > deadline) {
      const why = lastError instanceof Error ? `: ${lastError.message}` : '';
      throw new Error(`timed out waiting for ${opts.what ?? 'condition'}${why}`);
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 1.5, opts.maxDelayMs ?? 500);
  }
}

/** Finds an executable named `name` on PATH (or returns `name` itself if it is a path that exists). */
export function whichSync(name: string): string | undefined {
  if (name.includes('/')) return existsSync(name) ? name : undefined;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** Sends SIGTERM to a child, waits up to `graceMs` for it to exit, then SIGKILLs it. */
export async function stopChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), graceMs);
  });
  const late = await Promise.race([exited.then(() => false), timedOut]);
  clearTimeout(timer);
  if (late) {
    child.kill('SIGKILL');
    await exited;
  }
}

/** The last `lines` lines of a text file, or '' if it cannot be read. */
export async function tailFile(path: string, lines = 20): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n');
  } catch {
    return '';
  }
}

/** Total user+system CPU time in seconds that process `pid` has used so far (Linux /proc), or undefined. */
export async function processCpuSeconds(pid: number | undefined): Promise<number | undefined> {
  if (pid === undefined) return undefined;
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(rest[11]) + Number(rest[12]);
    return ticks / 100; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

/** Environment for a server child: the harness's own, minus variables that would reconfigure it (for example ETCD_*). */
export function childEnv(dropPrefix?: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (dropPrefix !== undefined && k.startsWith(dropPrefix)) continue;
    env[k] = v;
  }
  return env;
}

/** A running 3-node cluster of a system under test, as the harness sees it. */
export interface RunningCluster {
  /** 'kvd' or 'etcd'. */
  readonly system: 'kvd' | 'etcd';
  /** Client gRPC addresses (host:port), one per node. */
  readonly endpoints: readonly string[];
  /** The server's version string. */
  readonly version: string;
  /** Where the nodes keep their data and logs. */
  readonly dataDir: string;
  /** PIDs of the server processes (for CPU accounting). */
  pids(): number[];
  /** The admin token the nodes were started with (kvd only: needed to load extensions). */
  readonly adminToken?: string;
  /** Each node's `/metrics` HTTP port on 127.0.0.1, in endpoint order (kvd only; undefined where unknown). */
  metricsPorts?(): Promise<(number | undefined)[]>;
  /**
   * Stops node `index` (0-based, endpoint order; SIGTERM, SIGKILL after a grace) and starts it
   * again on its data with the same command line; resolves once the new process is spawned (the
   * caller waits for it to serve). Used by the data-size bench's restart measurement.
   */
  restartNode?(index: number): Promise<void>;
  /** Stops node `index` (as restartNode does) and leaves it down. */
  stopNode?(index: number): Promise<void>;
  /** Starts node `index` again on its data (after stopNode). */
  startNode?(index: number): void;
  /** The server process ids by node, in endpoint order (undefined while a node is down). */
  nodePids?(): (number | undefined)[];
  /** Each node's data directory, in endpoint order. */
  readonly nodeDirs?: readonly string[];
  /** Stops every node and removes the data directory (idempotent). */
  stop(): Promise<void>;
}

/** Machine-wide busy CPU seconds so far (all cores, from /proc/stat: everything but idle and iowait), or undefined. */
export async function machineBusySeconds(): Promise<number | undefined> {
  try {
    const line = (await readFile('/proc/stat', 'utf8')).split('\n', 1)[0]!;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already inside user)
    const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
    return busy / 100; // USER_HZ
  } catch {
    return undefined;
  }
}

/** Copies the node logs (`n1.log`, `n2.log`, …) of a cluster's data directory into `dest` (created), so they outlive the cluster. */
export async function copyNodeLogs(dataDir: string, dest: string): Promise<void> {
  await mkdir(dest, { recursive: true });
  for (const f of await readdir(dataDir)) {
    if (/^n[0-9]+\.log$/.test(f)) await copyFile(join(dataDir, f), join(dest, f));
  }
}

/** A numeric command-line flag, at least `min` (throws a one-line message naming the flag). */
export function flagNumber(name: string, v: string, min: number): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}, got ${v}`);
  return n;
}

/** An integer command-line flag, at least `min`. */
export function flagInt(name: string, v: string, min: number): number {
  const n = flagNumber(name, v, min);
  if (!Number.isInteger(n)) throw new Error(`--${name} must be an integer, got ${v}`);
  return n;
}

/** A comma list of distinct integers from `min` to `max` (e.g. `--shards 1,2,4,8`), in the order given. */
export function flagIntList(name: string, v: string, min: number, max: number): number[] {
  const items = v.split(',').map((x) => x.trim()).filter((x) => x !== '');
  if (items.length === 0) throw new Error(`--${name} is empty`);
  const out = items.map((x) => {
    const n = Number(x);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name}: ${x} is not an integer from ${min} to ${max}`);
    return n;
  });
  return [...new Set(out)];
}

/**
 * Watches this process's event loop: the longest gap between 1 ms timer callbacks (what a Raft tick
 * would have waited) and the peak RSS seen, sampled at each callback.
 */
export class LoopProbe {
  private last = performance.now();
  private maxGap = 0;
  /** The highest RSS seen since the probe was made. */
  peakRss = process.memoryUsage.rss();
  private timer: NodeJS.Timeout | undefined;

  /** Starts the timer chain (the gap is counted from now). */
  start(): void {
    this.last = performance.now();
    this.maxGap = 0;
    const tick = (): void => {
      const now = performance.now();
      this.maxGap = Math.max(this.maxGap, now - this.last);
      this.last = now;
      this.peakRss = Math.max(this.peakRss, process.memoryUsage.rss());
      this.timer = setTimeout(tick, 1);
    };
    this.timer = setTimeout(tick, 1);
  }

  /** The longest gap (ms, rounded) since the last call or `start`, counting the one running now; then starts over. */
  take(): number {
    const now = performance.now();
    const gap = Math.max(this.maxGap, now - this.last);
    this.maxGap = 0;
    this.last = now;
    return Math.round(gap);
  }

  /** Stops the chain; `longest` then counts a block that ran up to now. */
  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.maxGap = Math.max(this.maxGap, performance.now() - this.last);
    this.peakRss = Math.max(this.peakRss, process.memoryUsage.rss());
  }

  /** The longest gap (ms) since `start` or the last `take`. */
  get longest(): number {
    return this.maxGap;
  }
}

/** Peer messages sent, in all and by kind (`App+e`: appends carrying entries, `App`: without). */
export interface MessageCounter {
  msgs: number;
  readonly byKind: Map<string, number>;
}

/** `t`, counting into `counter` every message it sends. */
export function countingTransport(t: Transport, counter: MessageCounter): Transport {
  return new Proxy(t, {
    get(target, prop, recv) {
      if (prop === 'send') return (msgs: readonly Message[]) => {
        counter.msgs += msgs.length;
        for (const m of msgs) {
          const kind = m.type === 'App' && (m.entries?.length ?? 0) > 0 ? 'App+e' : m.type;
          counter.byKind.set(kind, (counter.byKind.get(kind) ?? 0) + 1);
        }
        return target.send(msgs);
      };
      const v = Reflect.get(target, prop, recv) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
