/** Starts, health-checks and tears down a throwaway 3-member etcd cluster on 127.0.0.1 (free ports, temp data dir) for the comparison runs. */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { call, etcdStub } from './clients.js';
import { childEnv, freePorts, pollUntil, stopChild, tailFile, whichSync, type RunningCluster } from './util.js';

/** The message printed when no etcd binary is found. */
export const ETCD_MISSING_MESSAGE = 'etcd not installed (apt-get install etcd-server); skipping etcd comparison';

/** Options of {@link startEtcdCluster}. */
export interface EtcdClusterOptions {
  /** The etcd binary (default: `etcd` on PATH). */
  readonly bin?: string;
  /** Parent of the temporary data directory (default: the OS temp dir). */
  readonly dataRoot?: string;
  /** etcd's --quota-backend-bytes (default 4 GiB: far above what a benchmark writes, below etcd's 8 GiB ceiling). */
  readonly quotaBackendBytes?: number;
  /** How long to wait for the cluster to serve linearizable reads on every member (default 30 s). */
  readonly startTimeoutMs?: number;
  /** Progress messages. */
  readonly log?: (msg: string) => void;
  /** More flags for every member (for example `--auto-compaction-mode=periodic --auto-compaction-retention=1h`). */
  readonly extraArgs?: readonly string[];
}

/** Returns the path of the etcd binary, or undefined if it is not installed. */
export function findEtcd(bin?: string): string | undefined {
  return whichSync(bin ?? 'etcd');
}

/** The version reported by `etcd --version` (for example "3.4.23"), or "unknown". */
export async function etcdVersion(bin: string): Promise<string> {
  try {
    const { stdout } = await promisify(execFile)(bin, ['--version'], { timeout: 10_000 });
    return /etcd Version:\s*(\S+)/.exec(stdout)?.[1] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

interface Member {
  args?: string[];
  readonly name: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly dir: string;
  readonly logPath: string;
  child?: ChildProcess;
}

/**
 * Starts a 3-member etcd cluster on 127.0.0.1 and resolves once every member answers a
 * linearizable Range (so a leader exists and each member can reach it). A start that fails (for
 * example because a just-released port was taken) is cleaned up and retried with new ports, twice.
 */
export async function startEtcdCluster(opts: EtcdClusterOptions = {}): Promise<RunningCluster> {
  const bin = findEtcd(opts.bin);
  if (bin === undefined) throw new Error(ETCD_MISSING_MESSAGE);
  const version = await etcdVersion(bin);
  let lastError: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      return await startOnce(bin, version, opts);
    } catch (err) {
      lastError = err;
      opts.log?.(`etcd start attempt ${attempt} failed: ${(err as Error).message}`);
    }
  }
  throw lastError instanceof Error ? lastError : new Error(String(lastError));
}

async function startOnce(bin: string, version: string, opts: EtcdClusterOptions): Promise<RunningCluster> {
  const dataDir = await mkdtemp(join(opts.dataRoot ?? tmpdir(), 'kvcascade-bench-etcd-'));
  const ports = await freePorts(6);
  const members: Member[] = [0, 1, 2].map((i) => ({
    name: `m${i + 1}`,
    clientPort: ports[2 * i]!,
    peerPort: ports[2 * i + 1]!,
    dir: join(dataDir, `m${i + 1}`),
    logPath: join(dataDir, `m${i + 1}.log`),
  }));
  const initialCluster = members.map((m) => `${m.name}=http://127.0.0.1:${m.peerPort}`).join(',');
  const token = `kvcascade-bench-${process.pid}-${Date.now()}`;
  const quota = opts.quotaBackendBytes ?? 4 * 1024 ** 3;
  const env = childEnv('ETCD_');

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all(members.map((m) => (m.child ? stopChild(m.child) : Promise.resolve())));
    await rm(dataDir, { recursive: true, force: true });
  };

  try {
    for (const m of members) {
      await mkdir(m.dir, { recursive: true });
      const args = [
        `--name=${m.name}`,
        `--data-dir=${m.dir}`,
        `--listen-client-urls=http://127.0.0.1:${m.clientPort}`,
        `--advertise-client-urls=http://127.0.0.1:${m.clientPort}`,
        `--listen-peer-urls=http://127.0.0.1:${m.peerPort}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${m.peerPort}`,
        `--initial-cluster=${initialCluster}`,
        `--initial-cluster-token=${token}`,
        '--initial-cluster-state=new',
        `--quota-backend-bytes=${quota}`,
        '--logger=zap',
        '--log-outputs=stderr',
        '--log-level=warn',
        ...(opts.extraArgs ?? []),
      ];
      m.args = args;
      spawnMember(bin, m, env);
    }

    const abortIf = (): void => {
      for (const m of members) {
        if (m.child && (m.child.exitCode !== null || m.child.signalCode !== null)) {
          throw new Error(`etcd member ${m.name} exited (${m.child.exitCode ?? m.child.signalCode}) during startup`);
        }
      }
    };
    const probes = members.map((m) => etcdStub(`127.0.0.1:${m.clientPort}`));
    try {
      await pollUntil(
        async () => {
          // A linearizable Range needs a leader and a ReadIndex round trip from each member.
          await Promise.all(probes.map((p) => call(p, p.range, { key: Buffer.from('bench/ready') }, 1_000)));
          return true;
        },
        { timeoutMs: opts.startTimeoutMs ?? 30_000, what: 'etcd cluster to serve', abortIf },
      );
    } finally {
      for (const p of probes) p.close();
    }
  } catch (err) {
    const tails = await Promise.all(members.map(async (m) => `--- ${m.name} log tail ---\n${await tailFile(m.logPath)}`));
    await stop();
    throw new Error(`${(err as Error).message}\n${tails.join('\n')}`);
  }

  return {
    system: 'etcd',
    endpoints: members.map((m) => `127.0.0.1:${m.clientPort}`),
    version,
    dataDir,
    pids: () => members.flatMap((m) => (m.child?.pid === undefined ? [] : [m.child.pid])),
    nodePids: () => members.map((m) => (m.child && m.child.exitCode === null && m.child.signalCode === null ? m.child.pid : undefined)),
    nodeDirs: members.map((m) => m.dir),
    restartNode: async (index: number) => {
      const m = members[index];
      if (!m) throw new RangeError(`no member ${index}`);
      if (m.child) await stopChild(m.child);
      spawnMember(bin, m, env); // --initial-cluster* are ignored on an existing data dir
    },
    stopNode: async (index: number) => {
      const m = members[index];
      if (m?.child) await stopChild(m.child);
    },
    startNode: (index: number) => {
      const m = members[index];
      if (!m) throw new RangeError(`no member ${index}`);
      spawnMember(bin, m, env);
    },
    stop,
  };
}

/** Starts member `m`'s etcd process with its command line, output appended to its log. */
function spawnMember(bin: string, m: Member, env: NodeJS.ProcessEnv): void {
  const fd = openSync(m.logPath, 'a');
  try {
    m.child = spawn(bin, m.args!, { stdio: ['ignore', fd, fd], env });
  } finally {
    closeSync(fd);
  }
  m.child.on('error', () => undefined); // reported through exitCode/abortIf
}
