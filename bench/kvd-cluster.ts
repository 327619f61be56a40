/** Starts, health-checks and tears down a throwaway 3-node kvd cluster on 127.0.0.1 (free ports, temp data dirs) for the benchmark. */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KVD_NODE_FLAGS } from '../src/bin/runtime-flags.js';
import { kvdAllocatorEnv } from '../src/bin/allocator.js';
import { call, kvClusterStub, type KvStatusRes } from './clients.js';
import { childEnv, freePorts, pollUntil, repoRoot, stopChild, tailFile, type RunningCluster } from './util.js';

/** Options of {@link startKvdCluster}. */
export interface KvdClusterOptions {
  /** The compiled kvd entry point (default: dist/src/bin/kvd.js in this repository). */
  readonly bin?: string;
  /** Parent of the temporary data directory (default: the OS temp dir). */
  readonly dataRoot?: string;
  /** How long to wait for a group-1 leader (default 30 s). */
  readonly startTimeoutMs?: number;
  /** Extra flags appended to every kvd command line. */
  readonly extraArgs?: readonly string[];
  /** Let the bench profile every kvd process (KVCASCADE_CPU_PROFILE_DIR: SIGUSR2 starts and stops a profile, saved here as `kvd-nN-<pid>-<k>.cpuprofile`). */
  readonly profileDir?: string;
  /** Shards of the default pool of the new cluster (`--default-shards N`; kvd's default, 1, when absent). */
  readonly defaultShards?: number;
  /** Progress messages. */
  readonly log?: (msg: string) => void;
}

/** The default kvd binary: `dist/src/bin/kvd.js` under the repository root. */
export function defaultKvdBin(): string {
  return join(repoRoot(), 'dist', 'src', 'bin', 'kvd.js');
}

/** Returns the kvd entry point if it exists, else undefined. */
export function findKvd(bin?: string): string | undefined {
  const path = bin ?? defaultKvdBin();
  return existsSync(path) ? path : undefined;
}

interface Node {
  args?: string[];
  readonly id: number;
  readonly port: number;
  readonly peerPort: number;
  readonly dir: string;
  readonly logPath: string;
  child?: ChildProcess;
}

/**
 * Starts 3 kvd processes (`node KVD_NODE_FLAGS kvd.js --id N --listen 127.0.0.1:P --peer-listen 127.0.0.1:Q
 * --insecure-peers --peers 1=P1/Q1,2=…,3=… --data-dir D (plaintext peers, as the etcd side runs)
 * --metrics-port 0 --admin-token-file DIR/admin-token`; the token is random per cluster and
 * returned as `adminToken`, for loading extensions) and resolves once every node answers
 * Cluster.Status and at least one reports a leader for group 1. A failed start is cleaned up and retried with new ports, twice.
 */
export async function startKvdCluster(opts: KvdClusterOptions = {}): Promise<RunningCluster> {
  const bin = findKvd(opts.bin);
  if (bin === undefined) throw new Error(`kvd binary not found at ${opts.bin ?? defaultKvdBin()} (run npm run build)`);
  let lastError: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      return await startOnce(bin, opts);
    } catch (err) {
      lastError = err;
      opts.log?.(`kvd start attempt ${attempt} failed: ${(err as Error).message}`);
    }
  }
  throw lastError instanceof Error ? lastError : new Error(String(lastError));
}

async function startOnce(bin: string, opts: KvdClusterOptions): Promise<RunningCluster> {
  const dataDir = await mkdtemp(join(opts.dataRoot ?? tmpdir(), 'kvcascade-bench-kvd-'));
  const ports = await freePorts(6);
  const nodes: Node[] = [1, 2, 3].map((id) => ({
    id,
    port: ports[id - 1]!,
    peerPort: ports[id + 2]!,
    dir: join(dataDir, `n${id}`),
    logPath: join(dataDir, `n${id}.log`),
  }));
  const peers = nodes.map((n) => `${n.id}=127.0.0.1:${n.port}/127.0.0.1:${n.peerPort}`).join(',');
  // The allocator kvd's launchers give it (glibc; KVD_ALLOCATOR=jemalloc|auto|PATH for jemalloc).
  const allocator = kvdAllocatorEnv(childEnv());
  opts.log?.(`kvd malloc: ${allocator.reason}`);
  const env = { ...allocator.env, ...(opts.profileDir === undefined ? {} : { KVCASCADE_CPU_PROFILE_DIR: opts.profileDir }) };
  // The Admin service (extension load/unload) refuses every call unless kvd has a token (>= 16 chars).
  const adminToken = randomBytes(24).toString('hex');
  const tokenFile = join(dataDir, 'admin-token');
  await writeFile(tokenFile, `${adminToken}\n`, { mode: 0o600 });

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all(nodes.map((n) => (n.child ? stopChild(n.child) : Promise.resolve())));
    await rm(dataDir, { recursive: true, force: true });
  };

  let version = 'unknown';
  try {
    for (const n of nodes) {
      await mkdir(n.dir, { recursive: true });
      const args = [
        ...KVD_NODE_FLAGS,
        bin,
        '--id', String(n.id),
        '--listen', `127.0.0.1:${n.port}`,
        '--peer-listen', `127.0.0.1:${n.peerPort}`,
        '--insecure-peers',
        '--peers', peers,
        '--data-dir', n.dir,
        '--metrics-port', '0',
        '--admin-token-file', tokenFile,
        ...(opts.defaultShards === undefined ? [] : ['--default-shards', String(opts.defaultShards)]),
        ...(opts.extraArgs ?? []),
      ];
      n.args = args;
      spawnNode(n, env, opts.log);
    }

    const abortIf = (): void => {
      for (const n of nodes) {
        if (n.child && (n.child.exitCode !== null || n.child.signalCode !== null)) {
          throw new Error(`kvd node ${n.id} exited (${n.child.exitCode ?? n.child.signalCode}) during startup`);
        }
      }
    };
    const probes = nodes.map((n) => kvClusterStub(`127.0.0.1:${n.port}`));
    try {
      const statuses = await pollUntil(
        async () => {
          const all: KvStatusRes[] = await Promise.all(probes.map((p) => call(p, p.status, {}, 1_000)));
          const led = all.some((s) => (s.groups ?? []).some((g) => (g.group ?? 0) === 1 && (g.leader ?? 0) !== 0));
          return led ? all : undefined;
        },
        { timeoutMs: opts.startTimeoutMs ?? 30_000, what: 'a kvd leader for group 1', abortIf },
      );
      version = `${statuses.find((s) => s.version)?.version ?? 'unknown'} on ${allocator.allocator}`;
    } finally {
      for (const p of probes) p.close();
    }
  } catch (err) {
    const tails = await Promise.all(nodes.map(async (n) => `--- node ${n.id} log tail ---\n${await tailFile(n.logPath)}`));
    await stop();
    throw new Error(`${(err as Error).message}\n${tails.join('\n')}`);
  }

  return {
    system: 'kvd',
    endpoints: nodes.map((n) => `127.0.0.1:${n.port}`),
    version,
    dataDir,
    pids: () => nodes.flatMap((n) => (n.child?.pid === undefined ? [] : [n.child.pid])),
    nodePids: () => nodes.map((n) => (n.child && n.child.exitCode === null && n.child.signalCode === null ? n.child.pid : undefined)),
    nodeDirs: nodes.map((n) => n.dir),
    restartNode: async (index: number) => {
      const n = nodes[index];
      if (!n) throw new RangeError(`no node ${index}`);
      if (n.child) await stopChild(n.child);
      spawnNode(n, env, opts.log);
    },
    stopNode: async (index: number) => {
      const n = nodes[index];
      if (n?.child) await stopChild(n.child);
    },
    startNode: (index: number) => {
      const n = nodes[index];
      if (!n) throw new RangeError(`no node ${index}`);
      spawnNode(n, env, opts.log);
    },
    adminToken,
    metricsPorts: () => Promise.all(nodes.map((n) => readyMetricsPort(n.logPath))),
    stop,
  };
}

/**
 * Starts node `n`'s kvd process with its command line, output appended to its log. An exit that
 * is not a stop's (a crash, or the loop watchdog's SIGKILL) is reported to `log` with the tail of
 * the node's log, which the bench removes with the cluster.
 */
function spawnNode(n: Node, env: NodeJS.ProcessEnv, log?: (msg: string) => void): void {
  const fd = openSync(n.logPath, 'a');
  try {
    n.child = spawn(process.execPath, n.args!, { stdio: ['ignore', fd, fd], env });
  } finally {
    closeSync(fd);
  }
  n.child.on('error', () => undefined); // reported through exitCode/abortIf
  n.child.on('exit', (code, signal) => {
    if (log === undefined || code === 0 || signal === 'SIGTERM') return; // a stop (SIGTERM, graceful exit)
    const what = `kvd node ${n.id} exited (${code ?? signal})`;
    tailFile(n.logPath, 30).then(
      (tail) => log(`${what}; the tail of its log:\n${tail}`),
      () => log(what),
    );
  });
}

/** The `/metrics` port from kvd's last `{"event":"ready",…,"metricsPort":P}` stdout line in `logPath` (a restarted node appends a new one), if it is there. */
async function readyMetricsPort(logPath: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(logPath, 'utf8');
  } catch {
    return undefined;
  }
  let port: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.includes('"ready"')) continue;
    try {
      const o = JSON.parse(line) as { event?: unknown; metricsPort?: unknown };
      if (o.event === 'ready' && typeof o.metricsPort === 'number') port = o.metricsPort;
    } catch {
      // a log line that merely mentions "ready"
    }
  }
  return port;
}

