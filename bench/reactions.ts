/**
 * The reaction workloads: how soon, and how fast, something reacts to a committed write.
 *
 * - `lambda` (kvd): a kvcascade extension lambda (bench/extensions/lambda-probe) sends a UDP
 *   datagram to this process the moment it starts; unary puts of unique keys from this process;
 *   latency put acknowledged → lambda started (and put sent → lambda started).
 * - `lambda-throughput` (kvd): the same probe under sustained pipelined puts from the forked
 *   client processes; lambda events/s, the backlog when the puts stop and how long it takes to drain.
 * - `watch` (kvd and etcd): a client watch stream on the prefix (kvcascade KV.Watch, etcd
 *   Watch.Watch), both to the leader; unary puts of unique keys; latency put acknowledged → event
 *   received, and events/s.
 *
 * In `lambda` and `watch` the puts, the datagrams / watch events and every timestamp are in this
 * process (performance.now()), so "ack" and "reaction" times share one monotonic clock.
 */
import dgram from 'node:dgram';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { AdminClient, type ExtensionNodeInfo } from '../src/client/admin-client.js';
import { packFolder } from '../src/extensions/pack-folder.js';
import {
  call,
  etcdMaintenanceStub,
  etcdStub,
  etcdWatchStub,
  kvClusterStub,
  kvStub,
  type EtcdWatchRes,
  type KvWatchRes,
  type SystemName,
} from './clients.js';
import { errorName, planChannels, runWorkload, sleep, ValuePool, type WorkloadName, type WorkloadResult } from './load.js';
import { machineBusySeconds, pollUntil, processCpuSeconds, repoRoot } from './util.js';

/** Parameters of one reaction workload run. */
export interface ReactionOptions {
  readonly system: SystemName;
  readonly workload: WorkloadName;
  readonly endpoints: readonly string[];
  /** Closed-loop put workers (lambda, watch); sizes the Pipeline streams for lambda-throughput. */
  readonly clients: number;
  readonly perChannel: number;
  /** Forked client processes for lambda-throughput's pipelined puts (lambda and watch always run in this process). */
  readonly procs: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** lambda-throughput's keyspace (keys are rewritten; every put is an event). */
  readonly keys: number;
  readonly valueBytes: number;
  readonly pipelineDepth: number;
  readonly opTimeoutMs: number;
  readonly serverPids: readonly number[];
  /** kvd's admin token (lambda workloads). */
  readonly adminToken?: string;
  /** Progress messages. */
  readonly log?: (msg: string) => void;
}

/** A reaction that has not come within this long after the put was acknowledged counts as missing. */
export const REACTION_TIMEOUT_MS = 5_000;
/** The data shard (Raft group) of kvd, whose leader runs the lambdas. */
const KVD_DATA_GROUP = 1;

/** Runs `lambda`, `lambda-throughput` or `watch` against one system. */
export async function runReactionWorkload(o: ReactionOptions): Promise<WorkloadResult> {
  switch (o.workload) {
    case 'lambda':
      return runLambdaLatency(o);
    case 'lambda-throughput':
      return runLambdaThroughput(o);
    case 'watch':
      return runWatch(o);
    default:
      throw new Error(`${o.workload} is not a reaction workload`);
  }
}

// ------------------------------------------------------------------ small helpers

/** Nearest-rank percentile of an ascending array (NaN when empty). */
function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** p50/p99/p99.9/mean/min/max of `values` in ms, rounded to µs. */
function summarize(values: readonly number[]): { n: number; p50: number; p99: number; p999: number; mean: number; min: number; max: number } {
  const a = Float64Array.from(values).sort();
  const r = (x: number): number => Math.round(x * 1000) / 1000;
  let sum = 0;
  for (const v of a) sum += v;
  return {
    n: a.length,
    p50: r(percentile(a, 50)),
    p99: r(percentile(a, 99)),
    p999: r(percentile(a, 99.9)),
    mean: a.length === 0 ? NaN : r(sum / a.length),
    min: a.length === 0 ? NaN : r(a[0]!),
    max: a.length === 0 ? NaN : r(a[a.length - 1]!),
  };
}

function ms(n: number, digits = 2): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '?';
}

/** A unique, sortable tag for this run's prefixes (so a workload never sees another's keys or delivery cursor). */
function runTag(): string {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36).padStart(2, '0')}`;
}

/** The key after every key starting with `prefix` (etcd's range_end for a prefix watch). */
function prefixRangeEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i]! < 0xff) {
      const end = Buffer.from(b.subarray(0, i + 1));
      end[i]! += 1;
      return end;
    }
  }
  return Buffer.from([0]);
}

/** The kernel's count of UDP datagrams dropped because a receive buffer was full (machine-wide), or undefined. */
async function udpRcvbufErrors(): Promise<number | undefined> {
  try {
    const lines = (await readFile('/proc/net/snmp', 'utf8')).split('\n').filter((l) => l.startsWith('Udp:'));
    const names = lines[0]!.trim().split(/\s+/);
    const values = lines[1]!.trim().split(/\s+/);
    const i = names.indexOf('RcvbufErrors');
    return i < 0 ? undefined : Number(values[i]);
  } catch {
    return undefined;
  }
}

interface CpuFigures {
  readonly srvCores: number | null;
  readonly cliCores: number;
  readonly otherCores: number | null;
}

/**
 * Samples server-process, this-process and machine-wide CPU at `warmupMs` and at
 * `warmupMs + durationMs` from now (the measured window), like runWorkload does for forked clients.
 */
function cpuOverWindow(serverPids: readonly number[], warmupMs: number, durationMs: number): { result(): Promise<CpuFigures> } {
  type Sample = { srv: (number | undefined)[]; busy: number | undefined; self: NodeJS.CpuUsage };
  const sample = async (): Promise<Sample> => {
    const self = process.cpuUsage();
    const [srv, busy] = await Promise.all([Promise.all(serverPids.map((p) => processCpuSeconds(p))), machineBusySeconds()]);
    return { srv, busy, self };
  };
  const at = (delayMs: number): Promise<Sample> => new Promise((resolve) => setTimeout(() => resolve(sample()), delayMs));
  const start = at(warmupMs);
  const end = at(warmupMs + durationMs);
  return {
    /** Resolves once the window has ended (call it after the load stopped). */
    result: async () => {
      const secs = durationMs / 1000;
      const [a, b] = await Promise.all([start, end]);
      let srv = 0;
      let ok = b.srv.length > 0;
      b.srv.forEach((e, i) => {
        const s = a.srv[i];
        if (e === undefined || s === undefined) ok = false;
        else srv += e - s;
      });
      const cli = (b.self.user - a.self.user + b.self.system - a.self.system) / 1e6 / secs;
      const srvCores = ok ? srv / secs : null;
      const busy = a.busy === undefined || b.busy === undefined ? null : (b.busy - a.busy) / secs;
      return { srvCores, cliCores: cli, otherCores: busy === null || srvCores === null ? null : Math.max(0, busy - srvCores - cli) };
    },
  };
}

// ------------------------------------------------------------------ the lambda probe

/** The UDP socket the probe's lambdas report to. */
class ProbeReceiver {
  private constructor(
    private readonly socket: dgram.Socket,
    readonly port: number,
    readonly recvBufferBytes: number,
  ) {}

  /** Binds 127.0.0.1:0 with a receive buffer as large as the kernel allows (up to 32 MiB), so bursts are not dropped. */
  static async open(onDatagram: (version: number, timestampMs: number, key: string, at: number) => void): Promise<ProbeReceiver> {
    const socket = dgram.createSocket({ type: 'udp4', recvBufferSize: 32 << 20 });
    socket.on('message', (msg) => {
      const at = performance.now();
      const text = msg.toString('utf8');
      const a = text.indexOf(' ');
      const b = text.indexOf(' ', a + 1);
      if (a < 0 || b < 0) return;
      onDatagram(Number(text.slice(0, a)), Number(text.slice(a + 1, b)), text.slice(b + 1), at);
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, '127.0.0.1', () => {
        socket.off('error', reject);
        resolve();
      });
    });
    socket.on('error', () => undefined);
    let size = 0;
    try {
      size = socket.getRecvBufferSize();
    } catch {
      // unknown
    }
    return new ProbeReceiver(socket, socket.address().port, size);
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

/** The probe, loaded into a running kvd cluster; `unload()` removes it. */
interface LoadedProbe {
  readonly name: string;
  readonly generation: number;
  /** Every node's status of the probe (the leader's watch counters: invocations, errors, retries, dead-lettered, backlog). */
  statuses(): Promise<ExtensionNodeInfo[]>;
  unload(): Promise<void>;
}

/**
 * Loads bench/extensions/lambda-probe with `{port, prefix}` through the Admin service and waits
 * until the data shard's leader delivers its events.
 */
async function loadProbe(o: ReactionOptions, port: number, prefix: string): Promise<LoadedProbe> {
  if (!o.adminToken) throw new Error('the kvd cluster has no admin token (bench/kvd-cluster.ts must start kvd with --admin-token-file)');
  const admin = new AdminClient({ endpoints: o.endpoints, token: o.adminToken, deadlineMs: 60_000 });
  try {
    const dir = join(repoRoot(), 'bench', 'extensions', 'lambda-probe');
    const loaded = await admin.load(await packFolder(dir), { config: { port, prefix } });
    if (loaded.status.state !== 'running') {
      throw new Error(`lambda-probe did not start: state ${loaded.status.state}${loaded.status.error ? `: ${loaded.status.error}` : ''}`);
    }
    const name = loaded.record?.name ?? loaded.status.name;
    const generation = loaded.record?.generation ?? loaded.status.generation;
    await pollUntil(
      async () => {
        const l = await admin.list();
        const mine = l.statuses.filter((s) => s.name === name && s.generation === generation);
        const failed = mine.find((s) => s.state === 'failed');
        if (failed) throw new Error(`lambda-probe failed on node ${failed.nodeId}: ${failed.error}`);
        return mine.some((s) => s.delivering) ? true : undefined;
      },
      { timeoutMs: 30_000, what: 'the data shard leader to deliver lambda-probe events' },
    );
    return {
      name,
      generation,
      statuses: async () => (await admin.list()).statuses.filter((s) => s.name === name && s.generation === generation),
      unload: async () => {
        try {
          await admin.unload(name);
        } finally {
          admin.close();
        }
      },
    };
  } catch (err) {
    admin.close();
    throw err;
  }
}

/** The delivering node's watch counters of the probe, summed (there is one watch). */
function probeCounters(statuses: readonly ExtensionNodeInfo[]): Record<string, number> {
  const out = { invocations: 0, errors: 0, retries: 0, deadLettered: 0, backlog: 0, workerRestarts: 0, timeouts: 0 };
  for (const s of statuses) {
    out.workerRestarts += s.workerRestarts;
    out.timeouts += s.timeouts;
    if (!s.delivering) continue;
    for (const w of s.watches) {
      out.invocations += w.invocations;
      out.errors += w.errors;
      out.retries += w.retries;
      out.deadLettered += w.deadLettered;
      out.backlog += w.backlog;
    }
  }
  return out;
}

// ------------------------------------------------------------------ unique-key unary puts with a reaction per put

/** One put of a unique key and the moment its reaction (datagram or watch event) arrived; NaN = not yet. */
interface PutRecord {
  readonly sent: number;
  ack: number;
  recv: number;
  failed: boolean;
}

/** The put records of one run, keyed by key, and the reactions matched to them. */
class ReactionBook {
  readonly records = new Map<string, PutRecord>();
  /** Acknowledged puts whose reaction has not arrived. */
  pendingAcked = 0;
  duplicates = 0;
  /** Reactions for keys this run did not write (should be 0). */
  unmatched = 0;
  /** Last acknowledgement time. */
  lastAck = 0;

  sent(key: string, at: number): PutRecord {
    const r: PutRecord = { sent: at, ack: NaN, recv: NaN, failed: false };
    this.records.set(key, r);
    return r;
  }

  acked(r: PutRecord, at: number): void {
    r.ack = at;
    if (at > this.lastAck) this.lastAck = at;
    if (Number.isNaN(r.recv)) this.pendingAcked++;
  }

  reaction(key: string, at: number): void {
    const r = this.records.get(key);
    if (!r) {
      if (!key.includes('/prime-')) this.unmatched++; // a late reaction to a priming write is not a surprise
      return;
    }
    if (!Number.isNaN(r.recv)) {
      this.duplicates++;
      return;
    }
    r.recv = at;
    if (!Number.isNaN(r.ack)) this.pendingAcked--;
  }

  /** `put`, recording the write (for the priming writes). */
  tracked(put: PutFn): PutFn {
    return async (key, value) => {
      const r = this.sent(key, performance.now());
      await put(key, value);
      this.acked(r, performance.now());
    };
  }

  /** Whether `key`'s reaction has arrived. */
  has(key: string): boolean {
    const r = this.records.get(key);
    return r !== undefined && !Number.isNaN(r.recv);
  }

  /** Forgets everything (after priming). */
  reset(): void {
    this.records.clear();
    this.pendingAcked = 0;
    this.duplicates = 0;
    this.unmatched = 0;
    this.lastAck = 0;
  }

  /** Resolves when every acknowledged put has its reaction, or `REACTION_TIMEOUT_MS` after the last acknowledgement. */
  async settle(): Promise<void> {
    while (this.pendingAcked > 0 && performance.now() < this.lastAck + REACTION_TIMEOUT_MS) await sleep(10);
  }
}

interface Window {
  readonly measureFrom: number;
  readonly endAt: number;
}

type PutFn = (key: string, value: Uint8Array) => Promise<unknown>;

/**
 * The measured part shared by the reaction workloads: prime (one write must produce a reaction
 * of `what`), reset the book, then run the unique-key put load through the warm-up and the
 * measured window, wait for the stragglers, and read the server CPU over the window.
 */
async function measureReactions(
  o: ReactionOptions,
  channels: readonly { put: PutFn; workers: number }[],
  prefix: string,
  book: ReactionBook,
  what: string,
): Promise<{ win: Window; errors: Record<string, number>; cpuFig: CpuFigures }> {
  await prime(book.tracked(channels[0]!.put), prefix, (k) => book.has(k), what);
  book.reset();
  const t0 = performance.now();
  const win: Window = { measureFrom: t0 + o.warmupMs, endAt: t0 + o.warmupMs + o.durationMs };
  const cpu = cpuOverWindow(o.serverPids, o.warmupMs, o.durationMs);
  const errors: Record<string, number> = {};
  await uniquePutLoad(channels, prefix, o.valueBytes, win, book, errors);
  await book.settle();
  return { win, errors, cpuFig: await cpu.result() };
}

/**
 * `workers` closed-loop writers of unique keys `<prefix>wNNN-NNNNNNNN`, over the given put
 * functions (one per connection, workers dealt like planChannels), until the window closes.
 */
async function uniquePutLoad(
  channels: readonly { put: PutFn; workers: number }[],
  prefix: string,
  valueBytes: number,
  win: Window,
  book: ReactionBook,
  errors: Record<string, number>,
): Promise<void> {
  const loops: Promise<void>[] = [];
  let w = 0;
  for (const c of channels) {
    for (let i = 0; i < c.workers; i++, w++) {
      const tag = `${prefix}w${String(w).padStart(3, '0')}-`;
      loops.push(
        (async () => {
          const values = new ValuePool(valueBytes);
          for (let seq = 0; ; seq++) {
            if (performance.now() >= win.endAt) return;
            const key = tag + String(seq).padStart(8, '0');
            const value = values.next();
            const rec = book.sent(key, performance.now());
            try {
              await c.put(key, value);
              book.acked(rec, performance.now());
            } catch (err) {
              rec.failed = true;
              const t = performance.now();
              if (t >= win.measureFrom && t <= win.endAt) {
                const name = errorName(err);
                errors[name] = (errors[name] ?? 0) + 1;
              }
              await sleep(10);
            }
          }
        })(),
      );
    }
  }
  await Promise.all(loops);
}

/** Latency and delivery figures of a unique-put run. */
interface BookStats {
  readonly acked: number;
  readonly ackedInWindow: number;
  readonly reactionsInWindow: number;
  /** Acknowledged puts with no reaction at all after the wait. */
  readonly missing: number;
  /** Acknowledged puts whose reaction came more than REACTION_TIMEOUT_MS after the ack. */
  readonly late: number;
  /** Failed puts (error status) that nevertheless got a reaction (they had committed). */
  readonly failedWithReaction: number;
  readonly ackToReaction: ReturnType<typeof summarize>;
  readonly sentToReaction: ReturnType<typeof summarize>;
  readonly put: ReturnType<typeof summarize>;
  /** Share of ack → reaction samples below 0 (the reaction came before the client saw the ack). */
  readonly negativeShare: number;
}

function bookStats(book: ReactionBook, win: Window): BookStats {
  const ackLat: number[] = [];
  const sentLat: number[] = [];
  const putLat: number[] = [];
  let acked = 0, ackedInWindow = 0, reactionsInWindow = 0, missing = 0, late = 0, failedWithReaction = 0, negative = 0;
  for (const r of book.records.values()) {
    const got = !Number.isNaN(r.recv);
    if (got && r.recv >= win.measureFrom && r.recv <= win.endAt) reactionsInWindow++;
    if (r.failed) {
      if (got) failedWithReaction++;
      continue;
    }
    if (Number.isNaN(r.ack)) continue;
    acked++;
    if (!got) missing++;
    else if (r.recv - r.ack > REACTION_TIMEOUT_MS) late++;
    if (r.ack < win.measureFrom || r.ack > win.endAt) continue;
    ackedInWindow++;
    putLat.push(r.ack - r.sent);
    if (got) {
      ackLat.push(r.recv - r.ack);
      sentLat.push(r.recv - r.sent);
      if (r.recv < r.ack) negative++;
    }
  }
  return {
    acked,
    ackedInWindow,
    reactionsInWindow,
    missing,
    late,
    failedWithReaction,
    ackToReaction: summarize(ackLat),
    sentToReaction: summarize(sentLat),
    put: summarize(putLat),
    negativeShare: ackLat.length === 0 ? 0 : negative / ackLat.length,
  };
}

/** The put connections of a unary reaction run: planChannels over all nodes, in this process. */
function putChannels(o: ReactionOptions): { channels: { put: PutFn; workers: number }[]; clients: grpc.Client[] } {
  const plan = planChannels(o.endpoints, o.clients, o.perChannel, 1)[0]!;
  const clients: grpc.Client[] = [];
  const channels = plan.map((c) => {
    if (o.system === 'kvd') {
      const stub = kvStub(c.address);
      clients.push(stub);
      return { workers: c.workers, put: (key: string, value: Uint8Array) => call(stub, stub.put, { key, value }, o.opTimeoutMs) };
    }
    const stub = etcdStub(c.address);
    clients.push(stub);
    return { workers: c.workers, put: (key: string, value: Uint8Array) => call(stub, stub.put, { key: Buffer.from(key), value }, o.opTimeoutMs) };
  });
  return { channels, clients };
}

async function waitConnected(clients: readonly grpc.Client[]): Promise<void> {
  await Promise.all(
    clients.map(
      (c) => new Promise<void>((resolve, reject) => c.waitForReady(Date.now() + 10_000, (err) => (err ? reject(err) : resolve()))),
    ),
  );
}

/**
 * Writes `<prefix>prime-N` until one write's reaction arrives (up to 30 s): proves the reaction
 * path works end to end before the clock starts, and warms it.
 */
async function prime(put: PutFn, prefix: string, seen: (key: string) => boolean, what: string): Promise<void> {
  const deadline = performance.now() + 30_000;
  for (let n = 0; performance.now() < deadline; n++) {
    const key = `${prefix}prime-${n}`;
    try {
      await put(key, Buffer.from('prime'));
    } catch {
      await sleep(200);
      continue;
    }
    const until = Math.min(deadline, performance.now() + 2_000);
    while (performance.now() < until) {
      if (seen(key)) return;
      await sleep(10);
    }
  }
  throw new Error(`no ${what} arrived for priming writes within 30 s`);
}

/** The notes shared by the unary reaction workloads. */
function deliveryNotes(s: BookStats, reaction: string, durationS: number): string[] {
  const out = [
    `sent→${reaction} p50 ${ms(s.sentToReaction.p50)} p99 ${ms(s.sentToReaction.p99)}`,
    `put p50 ${ms(s.put.p50)} p99 ${ms(s.put.p99)} (${(s.ackedInWindow / durationS).toFixed(0)} puts/s)`,
  ];
  if (s.negativeShare > 0) out.push(`${(s.negativeShare * 100).toFixed(1)}% of ack→${reaction} < 0`);
  out.push(`missing ${s.missing + s.late}/${s.acked}${s.late > 0 ? ` (${s.late} late)` : ''}`);
  return out;
}

function result(
  o: ReactionOptions,
  fields: {
    clientsLabel: string;
    clients: number;
    connections: number;
    procs: number;
    ops: number;
    opsTotal: number;
    lat: { p50: number; p99: number; p999: number; mean: number; max: number };
    errors: Record<string, number>;
    cpu: CpuFigures;
    notes: string[];
    extra: Record<string, unknown>;
  },
): WorkloadResult {
  const secs = o.durationMs / 1000;
  return {
    system: o.system,
    workload: o.workload,
    clients: fields.clients,
    clientsLabel: fields.clientsLabel,
    connections: fields.connections,
    procs: fields.procs,
    durationS: secs,
    ops: fields.ops,
    opsTotal: fields.opsTotal,
    opsPerSec: fields.ops / secs,
    p50Ms: fields.lat.p50,
    p99Ms: fields.lat.p99,
    p999Ms: fields.lat.p999,
    meanMs: fields.lat.mean,
    maxMs: fields.lat.max,
    errors: fields.errors,
    conflicts: 0,
    retriedOps: 0,
    abandoned: 0,
    misses: 0,
    clientCpuCores: fields.cpu.cliCores,
    serverCpuCores: fields.cpu.srvCores,
    serverCpuUsPerOp: fields.cpu.srvCores === null || fields.ops === 0 ? null : Math.round((fields.cpu.srvCores * secs * 1e6) / fields.ops),
    otherCpuCores: fields.cpu.otherCores,
    notes: fields.notes,
    extra: fields.extra,
  };
}

// ------------------------------------------------------------------ lambda: latency

async function runLambdaLatency(o: ReactionOptions): Promise<WorkloadResult> {
  if (o.system !== 'kvd') throw new Error('lambda runs on kvd only');
  const prefix = `/bench/lambda/lat-${runTag()}/`;
  const book = new ReactionBook();
  const receiver = await ProbeReceiver.open((_version, _ts, key, at) => book.reaction(key, at));
  const { channels, clients } = putChannels(o);
  let probe: LoadedProbe | undefined;
  try {
    const udpDropsBefore = await udpRcvbufErrors();
    probe = await loadProbe(o, receiver.port, prefix);
    await waitConnected(clients);
    const { win, errors, cpuFig } = await measureReactions(o, channels, prefix, book, 'lambda datagram');
    const udpDrops = await udpRcvbufErrors();
    const counters = probeCounters(await probe.statuses().catch(() => []));
    const s = bookStats(book, win);
    const drops = udpDropsBefore === undefined || udpDrops === undefined ? undefined : udpDrops - udpDropsBefore;
    const notes = ['lat = put ack→lambda start', ...deliveryNotes(s, 'start', o.durationMs / 1000)];
    if (drops !== undefined && drops > 0) notes.push(`udp drops ${drops}`);
    if (book.duplicates > 0) notes.push(`dup ${book.duplicates}`);
    if (counters.errors + counters.retries + counters.deadLettered > 0) {
      notes.push(`lambda errors ${counters.errors} retries ${counters.retries} dead-lettered ${counters.deadLettered}`);
    }
    return result(o, {
      clientsLabel: String(o.clients),
      clients: o.clients,
      connections: channels.length,
      procs: 0,
      ops: s.reactionsInWindow,
      opsTotal: s.acked,
      lat: { p50: s.ackToReaction.p50, p99: s.ackToReaction.p99, p999: s.ackToReaction.p999, mean: s.ackToReaction.mean, max: s.ackToReaction.max },
      errors,
      cpu: cpuFig,
      notes,
      extra: {
        prefix,
        meaning: 'ops = lambda starts (first datagram per put) in the window; latency = put acknowledged → lambda started (reaction = lambda start)',
        ackToReactionMs: s.ackToReaction,
        sentToReactionMs: s.sentToReaction,
        putLatencyMs: s.put,
        negativeShare: s.negativeShare,
        putsAcked: s.acked,
        putsAckedInWindow: s.ackedInWindow,
        missingWithin5s: s.missing + s.late,
        neverArrived: s.missing,
        late: s.late,
        failedPutsWithLambda: s.failedWithReaction,
        duplicates: book.duplicates,
        unmatched: book.unmatched,
        udpRcvbufErrors: drops ?? null,
        udpRecvBufferBytes: receiver.recvBufferBytes,
        probeCounters: counters,
      },
    });
  } finally {
    for (const c of clients) c.close();
    await probe?.unload().catch((err: unknown) => o.log?.(`lambda: unloading the probe failed: ${(err as Error).message}`));
    receiver.close();
  }
}

// ------------------------------------------------------------------ lambda-throughput

async function runLambdaThroughput(o: ReactionOptions): Promise<WorkloadResult> {
  if (o.system !== 'kvd') throw new Error('lambda-throughput runs on kvd only');
  const prefix = `/bench/lambda/tput-${runTag()}/`;
  const loadKeys = `${prefix}k`;
  const seen = new Set<number>();
  const primed = new Set<string>();
  let duplicates = 0;
  let inWindow = 0;
  const lags: number[] = [];
  let win: Window = { measureFrom: Infinity, endAt: -Infinity };
  const receiver = await ProbeReceiver.open((version, ts, key, at) => {
    if (!key.startsWith(loadKeys)) {
      primed.add(key);
      return;
    }
    if (seen.has(version)) {
      duplicates++;
      return;
    }
    seen.add(version);
    if (at >= win.measureFrom && at <= win.endAt) {
      inWindow++;
      // The proposal's timestamp is the leader's Date.now() (1 ms resolution), the same machine's wall clock.
      lags.push(performance.timeOrigin + at - ts);
    }
  });
  let probe: LoadedProbe | undefined;
  const primer = kvStub(o.endpoints[0]!);
  try {
    const udpDropsBefore = await udpRcvbufErrors();
    probe = await loadProbe(o, receiver.port, prefix);
    await prime((key, value) => call(primer, primer.put, { key, value }, o.opTimeoutMs), prefix, (k) => primed.has(k), 'lambda datagram');

    const r = await runWorkload({
      system: 'kvd',
      workload: 'pipelined-put',
      endpoints: o.endpoints,
      clients: o.clients,
      perChannel: o.perChannel,
      procs: o.procs,
      warmupMs: o.warmupMs,
      durationMs: o.durationMs,
      keys: o.keys,
      rmwKeys: 1,
      valueBytes: o.valueBytes,
      pipelineDepth: o.pipelineDepth,
      opTimeoutMs: o.opTimeoutMs,
      rmwMaxAttempts: 1,
      keyPrefix: prefix,
      serverPids: o.serverPids,
      onStart: () => {
        const t0 = performance.now();
        win = { measureFrom: t0 + o.warmupMs, endAt: t0 + o.warmupMs + o.durationMs };
      },
    });
    // Every put is acknowledged (the client processes drained their streams): what is not seen yet is backlog.
    const stoppedAt = performance.now();
    const seenAtStop = seen.size;
    const backlog = Math.max(0, r.opsTotal - seenAtStop);
    let lastProgress = stoppedAt;
    let lastSeen = seenAtStop;
    while (seen.size < r.opsTotal) {
      const now = performance.now();
      if (seen.size !== lastSeen) {
        lastSeen = seen.size;
        lastProgress = now;
      }
      if (now - lastProgress > 10_000 || now - stoppedAt > 120_000) break;
      await sleep(10);
    }
    const drainedAt = performance.now();
    const drained = seen.size >= r.opsTotal;
    const drainS = (drainedAt - stoppedAt) / 1000;
    const missing = Math.max(0, r.opsTotal - seen.size);
    const udpDrops = await udpRcvbufErrors();
    const drops = udpDropsBefore === undefined || udpDrops === undefined ? undefined : udpDrops - udpDropsBefore;
    const counters = probeCounters(await probe.statuses().catch(() => []));
    const lag = summarize(lags);
    const secs = o.durationMs / 1000;
    const notes = [
      'lat = put proposed (leader clock, 1 ms res.)→lambda start',
      `puts ${r.opsPerSec.toFixed(0)}/s (p50 ${ms(r.p50Ms)} ms)`,
      !drained
        ? `backlog at stop ${backlog}, ${missing} still missing after ${drainS.toFixed(1)} s`
        : backlog === 0
          ? 'backlog at stop 0 (lambdas kept up)'
          : `backlog at stop ${backlog} drained in ${drainS.toFixed(1)} s (${(backlog / Math.max(drainS, 0.001)).toFixed(0)} ev/s)`,
    ];
    if (drained) notes.push(`missing 0/${r.opsTotal}`);
    if (drops !== undefined && drops > 0) notes.push(`udp drops ${drops}`);
    if (duplicates > 0) notes.push(`dup ${duplicates}`);
    if (counters.errors + counters.retries + counters.deadLettered > 0) {
      notes.push(`lambda errors ${counters.errors} retries ${counters.retries} dead-lettered ${counters.deadLettered}`);
    }
    return {
      ...r,
      workload: 'lambda-throughput',
      ops: inWindow,
      opsTotal: r.opsTotal,
      opsPerSec: inWindow / secs,
      p50Ms: lag.p50,
      p99Ms: lag.p99,
      p999Ms: lag.p999,
      meanMs: lag.mean,
      maxMs: lag.max,
      serverCpuUsPerOp: r.serverCpuCores === null || inWindow === 0 ? null : Math.round((r.serverCpuCores * secs * 1e6) / inWindow),
      notes,
      extra: {
        prefix,
        meaning: 'ops = lambda starts (distinct events) in the window; latency = put proposed on the leader (Date.now()) → lambda started',
        putsPerSec: r.opsPerSec,
        putLatencyMs: { p50: r.p50Ms, p99: r.p99Ms, p999: r.p999Ms },
        putsAcked: r.opsTotal,
        eventsSeenAtStop: seenAtStop,
        backlogAtStop: backlog,
        drained,
        drainSeconds: drainS,
        drainEventsPerSec: backlog > 0 && drainS > 0 ? backlog / drainS : null,
        missingAfterDrain: missing,
        duplicates,
        lagMs: lag,
        udpRcvbufErrors: drops ?? null,
        udpRecvBufferBytes: receiver.recvBufferBytes,
        probeCounters: counters,
      },
    };
  } finally {
    primer.close();
    await probe?.unload().catch((err: unknown) => o.log?.(`lambda-throughput: unloading the probe failed: ${(err as Error).message}`));
    receiver.close();
  }
}

// ------------------------------------------------------------------ watch

/** The client address of the node leading kvd's data shard, or of etcd's leader (the first endpoint if it cannot be told). */
export async function leaderEndpoint(system: SystemName, endpoints: readonly string[], timeoutMs: number): Promise<string> {
  if (system === 'kvd') {
    const stub = kvClusterStub(endpoints[0]!);
    try {
      const st = await call(stub, stub.status, {}, timeoutMs);
      const leader = st.groups?.find((g) => (g.group ?? 0) === KVD_DATA_GROUP)?.leader;
      const addr = st.members?.find((m) => m.id === leader)?.address;
      return addr !== undefined && endpoints.includes(addr) ? addr : endpoints[0]!;
    } finally {
      stub.close();
    }
  }
  for (const e of endpoints) {
    const stub = etcdMaintenanceStub(e);
    try {
      const st = await call(stub, stub.status, {}, timeoutMs);
      if (st.leader !== undefined && st.header?.memberId === st.leader) return e;
    } catch {
      // try the next member
    } finally {
      stub.close();
    }
  }
  return endpoints[0]!;
}

/** A watch stream on `prefix` at `address` that reports every event's key; `close()` cancels it. */
function openWatch(
  system: SystemName,
  address: string,
  prefix: string,
  onEvent: (key: string, at: number) => void,
  onFailure: (why: string) => void,
): { client: grpc.Client; close(): void } {
  let closing = false;
  if (system === 'kvd') {
    const stub = kvStub(address);
    const stream = stub.watch({ prefix, fromRevision: 0, progressIntervalMs: 0 });
    stream.on('data', (res: KvWatchRes) => {
      const at = performance.now();
      if (res.canceled) onFailure(`kvd cancelled the watch: ${res.cancelReason ?? '?'}`);
      for (const e of res.events ?? []) if (e.key !== undefined) onEvent(e.key, at);
    });
    stream.on('error', (err: grpc.ServiceError) => {
      if (!closing) onFailure(`kvd watch stream failed: ${errorName(err)} ${err.details ?? err.message}`);
    });
    return {
      client: stub,
      close: () => {
        closing = true;
        stream.cancel();
        stub.close();
      },
    };
  }
  const stub = etcdWatchStub(address);
  const stream = stub.watch();
  stream.on('data', (res: EtcdWatchRes) => {
    const at = performance.now();
    if (res.canceled) onFailure(`etcd cancelled the watch: ${res.cancelReason ?? '?'}`);
    for (const e of res.events ?? []) if (e.kv?.key !== undefined) onEvent(Buffer.from(e.kv.key).toString('utf8'), at);
  });
  stream.on('error', (err: grpc.ServiceError) => {
    if (!closing) onFailure(`etcd watch stream failed: ${errorName(err)} ${err.details ?? err.message}`);
  });
  stream.write({ createRequest: { key: Buffer.from(prefix), rangeEnd: prefixRangeEnd(prefix) } });
  return {
    client: stub,
    close: () => {
      closing = true;
      stream.cancel();
      stub.close();
    },
  };
}

async function runWatch(o: ReactionOptions): Promise<WorkloadResult> {
  const prefix = `/bench/watch/${runTag()}/`;
  const book = new ReactionBook();
  const failures: string[] = [];
  const address = await leaderEndpoint(o.system, o.endpoints, o.opTimeoutMs);
  const { channels, clients } = putChannels(o);
  const watch = openWatch(o.system, address, prefix, (key, at) => book.reaction(key, at), (why) => failures.push(why));
  try {
    await waitConnected([...clients, watch.client]);
    const { win, errors, cpuFig } = await measureReactions(o, channels, prefix, book, 'watch event');
    if (failures.length > 0) errors['watch'] = failures.length;
    const s = bookStats(book, win);
    const leaderIdx = o.endpoints.indexOf(address);
    const notes = ['lat = put ack→watch event', ...deliveryNotes(s, 'event', o.durationMs / 1000)];
    if (book.duplicates > 0) notes.push(`dup ${book.duplicates}`);
    if (failures.length > 0) notes.push(`watch failed: ${failures[0]}`);
    return result(o, {
      clientsLabel: `${o.clients}+1w`,
      clients: o.clients,
      connections: channels.length + 1,
      procs: 0,
      ops: s.reactionsInWindow,
      opsTotal: s.acked,
      lat: { p50: s.ackToReaction.p50, p99: s.ackToReaction.p99, p999: s.ackToReaction.p999, mean: s.ackToReaction.mean, max: s.ackToReaction.max },
      errors,
      cpu: cpuFig,
      notes,
      extra: {
        prefix,
        meaning: 'ops = watch events received in the window; latency = put acknowledged → watch event received (reaction = watch event)',
        watcherNode: leaderIdx >= 0 ? `endpoint ${leaderIdx} (${address}, the leader)` : address,
        ackToReactionMs: s.ackToReaction,
        sentToReactionMs: s.sentToReaction,
        putLatencyMs: s.put,
        negativeShare: s.negativeShare,
        putsAcked: s.acked,
        putsAckedInWindow: s.ackedInWindow,
        missingWithin5s: s.missing + s.late,
        neverArrived: s.missing,
        late: s.late,
        failedPutsWithEvent: s.failedWithReaction,
        duplicates: book.duplicates,
        unmatched: book.unmatched,
        watchFailures: failures,
      },
    });
  } finally {
    watch.close();
    for (const c of clients) c.close();
  }
}
