/**
 * Starts real `kvd` processes (the compiled dist/src/bin/kvd.js) on loopback ephemeral ports for
 * multi-process tests, and injects process faults: kill -9, SIGSTOP/SIGCONT pauses, restarts.
 * The nodes log at `warn`; `KVD_TEST_LOG_LEVEL=info` logs more, and `KVD_TEST_LOG_DIR=<dir>`
 * also appends each node's log to `<dir>/node-<id>.log`, kept after the test (evidence of a
 * flaky run: the data directories are deleted).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { KvClient, type KvClientTlsOptions } from '../../src/client/index.js';
import { leasePorts, releasePorts } from './ports.js';
import { kvdAllocatorEnv } from '../../src/bin/allocator.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The compiled kvd entry point (built by `npm test` before the tests run). */
export const KVD = join(root, 'dist', 'src', 'bin', 'kvd.js');

/** Leases `n` loopback ports no other test process holds (see ports.ts); release them with `releasePorts`. */
export { leasePorts as freePorts, releasePorts } from './ports.js';

/** One kvd process of a test cluster. */
export interface ClusterNode {
  readonly id: number;
  readonly address: string;
  /** The node's peer (Raft) listener. */
  readonly peerAddress: string;
  readonly dataDir: string;
  proc: ChildProcess | undefined;
  metricsPort: number;
  stderr: string[];
  /** Joined a running cluster (`--join`) instead of being one of the initial members. */
  joined?: boolean;
  /** The JSON event lines (`{"event":...}`) the current process printed on stdout, in order, each with `receivedAtMs` (this process's clock). */
  events?: { event?: string; [field: string]: unknown }[];
}

/** Options of a test cluster. */
export interface ClusterOptions {
  readonly nodes?: number;
  readonly tickMs?: number;
  readonly electionTicks?: number;
  readonly snapshotEvery?: number;
  readonly extraArgs?: readonly string[];
  /**
   * Arguments for one node (its own certificate, say). Unless some node's arguments give a peer CA
   * (`--tls-ca` or `--peer-tls-ca`), the harness passes `--insecure-peers`.
   */
  readonly nodeArgs?: (id: number) => readonly string[];
  /** Shards of the default pool (`--default-shards`). */
  readonly defaultShards?: number;
  /** TLS settings for the test's clients (when the nodes serve TLS). */
  readonly tls?: KvClientTlsOptions;
  /**
   * Advertise every address under this host name (e.g. `localhost`) while binding 127.0.0.1, as
   * nodes behind DNS names do (`--advertise`, `--advertise-peer`, `--peers` by name).
   */
  readonly advertiseHost?: string;
}

/** Longest wait for a kvd process's readiness line (a joining node waits for its member add too). */
const READY_TIMEOUT_MS = 90_000;

/** A cluster of real kvd processes. */
export class KvdCluster {
  readonly nodes: ClusterNode[] = [];
  private readonly baseDir: string;
  private readonly peers: string;
  private clients: KvClient[] = [];
  /** Ports leased for this cluster's nodes (released by `stop`). */
  private readonly leased: number[] = [];
  /** Woken at each event line of any node (see {@link waitForEvent}). */
  private eventWaiters: (() => void)[] = [];

  private constructor(
    addresses: { address: string; peerAddress: string }[],
    private readonly opts: ClusterOptions,
  ) {
    if (!existsSync(KVD)) throw new Error(`${KVD} is missing: run \`npm run build\` (npm test does it)`);
    this.baseDir = mkdtempSync(join(tmpdir(), 'kvcascade-cluster-'));
    this.peers = addresses.map((a, i) => `${i + 1}=${a.address}/${a.peerAddress}`).join(',');
    addresses.forEach((a, i) =>
      this.nodes.push({ id: i + 1, ...a, dataDir: join(this.baseDir, `node-${i + 1}`), proc: undefined, metricsPort: 0, stderr: [] }),
    );
  }

  /** Starts `nodes` kvd processes and waits until group 1 has a leader. */
  static async start(opts: ClusterOptions = {}): Promise<KvdCluster> {
    const n = opts.nodes ?? 3;
    const ports = await leasePorts(2 * n);
    const c = new KvdCluster(
      Array.from({ length: n }, (_, i) => ({
        address: `${opts.advertiseHost ?? '127.0.0.1'}:${ports[2 * i]}`,
        peerAddress: `${opts.advertiseHost ?? '127.0.0.1'}:${ports[2 * i + 1]}`,
      })),
      opts,
    );
    c.leased.push(...ports);
    try {
      await Promise.all(c.nodes.map((n) => c.startNode(n.id)));
      await c.waitForLeader();
    } catch (e) {
      await c.stop(); // never leave processes behind a failed start
      throw e;
    }
    return c;
  }

  /** Every node's client address. */
  get endpoints(): string[] {
    return this.nodes.map((n) => n.address);
  }

  node(id: number): ClusterNode {
    const n = this.nodes.find((x) => x.id === id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  /** Starts (or restarts) a node's process and waits for its readiness line. */
  startNode(id: number): Promise<void> {
    const n = this.node(id);
    const own = this.opts.nodeArgs?.(id) ?? [];
    const all = [...own, ...(this.opts.extraArgs ?? [])];
    const securePeers = all.includes('--tls-ca') || all.includes('--peer-tls-ca');
    const bindAddress = (a: string): string => (this.opts.advertiseHost ? `127.0.0.1:${a.slice(a.lastIndexOf(':') + 1)}` : a);
    const args = [
      KVD,
      '--id', String(id),
      '--listen', bindAddress(n.address),
      '--peer-listen', bindAddress(n.peerAddress),
      ...(this.opts.advertiseHost ? ['--advertise', n.address, '--advertise-peer', n.peerAddress] : []),
      ...(securePeers ? [] : ['--insecure-peers']),
      ...(n.joined ? ['--join', this.nodes[0]!.address] : ['--peers', this.peers]),
      ...(this.opts.defaultShards ? ['--default-shards', String(this.opts.defaultShards)] : []),
      '--data-dir', n.dataDir,
      '--metrics-port', '0',
      '--tick-ms', String(this.opts.tickMs ?? 50),
      '--election-ticks', String(this.opts.electionTicks ?? 10),
      ...(this.opts.snapshotEvery ? ['--snapshot-every', String(this.opts.snapshotEvery)] : []),
      ...all,
    ];
    const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...kvdAllocatorEnv(process.env).env, KVCASCADE_LOG_LEVEL: process.env.KVD_TEST_LOG_LEVEL ?? 'warn' } });
    n.proc = proc;
    const events: NonNullable<ClusterNode['events']> = [];
    n.events = events;
    const logDir = process.env.KVD_TEST_LOG_DIR;
    if (logDir) mkdirSync(logDir, { recursive: true });
    proc.stderr!.on('data', (d: Buffer) => {
      if (logDir) appendFileSync(join(logDir, `node-${id}.log`), d);
      n.stderr.push(d.toString());
      if (n.stderr.length > 200) n.stderr.shift();
    });
    return new Promise((res, rej) => {
      // A node that never gets ready (it hangs) fails the start instead of hanging the test.
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        rej(new Error(`kvd ${id} not ready within ${READY_TIMEOUT_MS} ms: ${n.stderr.join('')}`));
      }, READY_TIMEOUT_MS);
      const lines = createInterface({ input: proc.stdout! });
      lines.on('line', (line) => {
        if (!line.startsWith('{')) return;
        const msg = JSON.parse(line) as { event?: string; metricsPort?: number };
        events.push({ ...msg, receivedAtMs: Date.now() });
        for (const w of this.eventWaiters.splice(0)) w();
        if (msg.event === 'ready') {
          clearTimeout(timer);
          n.metricsPort = msg.metricsPort ?? 0;
          res();
        }
      });
      proc.once('exit', (code, signal) => {
        clearTimeout(timer);
        rej(new Error(`kvd ${id} exited before ready (code ${code}, signal ${signal}): ${n.stderr.join('')}`));
      });
    });
  }

  /** Starts a new node that joins the running cluster (after `kvctl member add`); returns it. */
  async join(id: number, address: string, peerAddress: string): Promise<ClusterNode> {
    const n: ClusterNode = { id, address, peerAddress, dataDir: join(this.baseDir, `node-${id}`), proc: undefined, metricsPort: 0, stderr: [], joined: true };
    this.nodes.push(n);
    await this.startNode(id);
    return n;
  }

  /** Reserves a client and a peer address for a node to be added later (the member must be added before it starts). */
  async reserveAddresses(): Promise<{ address: string; peerAddress: string }> {
    const [port, peerPort] = await leasePorts(2);
    this.leased.push(port!, peerPort!);
    const host = this.opts.advertiseHost ?? '127.0.0.1';
    return { address: `${host}:${port}`, peerAddress: `${host}:${peerPort}` };
  }

  /** Resolves with node `id`'s first stdout event line named `event` (of its current process), failing after `timeoutMs`. */
  async waitForEvent(id: number, event: string, timeoutMs = 60_000): Promise<{ event?: string; [field: string]: unknown }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.node(id).events?.find((e) => e.event === event);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`node ${id} printed no ${event} event within ${timeoutMs} ms`);
      await new Promise<void>((res) => {
        const timer = setTimeout(res, left);
        this.eventWaiters.push(() => {
          clearTimeout(timer);
          res();
        });
      });
    }
  }

  /** Kills a node's process (default SIGKILL: no chance to flush anything). */
  async kill(id: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.node(id).proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((res) => {
      p.once('exit', () => res());
      p.kill(signal);
    });
    this.node(id).proc = undefined;
  }

  /** Freezes a node (SIGSTOP). */
  pause(id: number): void {
    this.node(id).proc?.kill('SIGSTOP');
  }

  /** Thaws a paused node (SIGCONT). */
  resume(id: number): void {
    this.node(id).proc?.kill('SIGCONT');
  }

  /**
   * One-way partition (needs `--test-fault-injection` in extraArgs): node `id` drops every Raft
   * message it sends to `to`, while still receiving theirs; `[]` heals.
   */
  async cutOutgoing(id: number, to: readonly number[]): Promise<void> {
    const res = await fetch(`http://127.0.0.1:${this.node(id).metricsPort}/test/faults?drop-to=${to.join(',')}`, { method: 'POST' });
    if (!res.ok) throw new Error(`fault injection on node ${id} failed: ${res.status} ${await res.text()}`);
  }

  /** A client over every endpoint (closed by `stop`). */
  client(endpoints: string[] = this.endpoints, opts: Partial<ConstructorParameters<typeof KvClient>[0]> = {}): KvClient {
    const c = new KvClient({ endpoints, defaultDeadlineMs: 5000, ...(this.opts.tls ? { tls: this.opts.tls } : {}), ...opts });
    this.clients.push(c);
    return c;
  }

  /** Polls Status until a live node reports a leader for group 1 that is alive; returns its id. */
  async waitForLeader(timeoutMs = 20_000, exclude: readonly number[] = []): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    const c = new KvClient({ endpoints: this.endpoints, defaultDeadlineMs: 1000, ...(this.opts.tls ? { tls: this.opts.tls } : {}) });
    try {
      while (Date.now() < deadline) {
        for (const n of this.nodes) {
          if (!n.proc) continue;
          try {
            const s = await c.status(n.address);
            const g = s.groups.find((x) => x.group === 1);
            if (g && g.leader && !exclude.includes(g.leader) && g.leader === s.nodeId) return g.leader;
          } catch {
            // down or busy
          }
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      c.close();
    }
    throw new Error(`no leader within ${timeoutMs} ms`);
  }

  /** Stops every process and deletes the data. */
  async stop(): Promise<void> {
    for (const c of this.clients) c.close();
    await Promise.all(this.nodes.map((n) => this.kill(n.id, 'SIGKILL')));
    releasePorts(this.leased.splice(0));
    rmSync(this.baseDir, { recursive: true, force: true });
  }
}
