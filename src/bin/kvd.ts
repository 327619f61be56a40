#!/usr/bin/env -S node --max-semi-space-size=32
/** `kvd`: starts one kvcascade node from flags or a JSON config file. (The shebang passes runtime-flags.ts's KVD_NODE_FLAGS; run as `node kvd.js`, pass them yourself.) One file (~640 lines) because it is the composition root: it only wires the parts (each in its own module) in start order and stops them in reverse. */
import * as grpc from '@grpc/grpc-js';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { getHeapStatistics } from 'node:v8';
import { createLogger } from '../log.js';
import { KvNode } from '../node/kv-node.js';
import { parseConfig, type KvdConfig } from './kvd-config.js';
import { kvNodeHost } from '../extensions/kv-node-host.js';
import { ExtensionManager } from '../extensions/manager.js';
import { adminBackend } from './admin-backend.js';
import { addAdminService } from '../server/admin-service.js';
import { ensureConfiguredExtensions } from './configured-extensions.js';
import { GrpcPeerTransport } from '../node/grpc-transport.js';
import { kvdCredentials } from './kvd-tls.js';
import { addHealthService } from '../server/health.js';
import { startNodeLeases } from './lease-wiring.js';
import { NodeMetrics } from '../node/metrics.js';
import { DEFAULT_MALLOC_TRIM_MIB, DEFAULT_TRIM_POLICY, loadNativeMalloc, MallocTrimmer } from '../node/malloc-trim.js';
import { runningAllocator } from './allocator.js';
import { DEFAULT_HEAP_RELEASE_POLICY, HeapRelease, loadForcedGc } from '../node/heap-release.js';
import { budgetShortfall, type FixedMemoryParts } from '../node/memory-budget.js';
import { NODE_DEFAULTS } from '../node/node-options.js';
import { DEFAULT_MAX_HISTORY_BYTES } from '../statemachine/limits.js';
import { LevelEngine } from '../storage/kv-engine.js';
import { addKvServices, createGrpcServer } from '../server/kv-service.js';
import { ClusterAdmin } from '../node/cluster-admin.js';
import { GrpcClusterProbe } from '../server/cluster-probe.js';
import { routedLambdaKv } from '../server/lambda-kv.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { classify } from '../coordinator/op-status.js';
import { NodeStubs } from '../coordinator/node-stubs.js';
import { ClusterStubClient } from '../wire/proto.js';
import { AdminClient } from '../client/admin-client.js';
import { AdminTokenCheck, AUTHORIZATION_METADATA } from '../wire/auth.js';
import type { ClusterMap } from '../sharding/index.js';
import type { Logger } from '../log.js';
import { Counter, Gauge } from 'prom-client';
import { LoopWatchdog, takeDeathNote } from '../node/loop-watchdog.js';
import { installCpuProfileSignal } from './cpu-profile-signal.js';
import { createNodeConsole } from '../console/index.js';
import { AccessControl } from '../auth/access-control.js';
import { addAuthService } from '../server/auth-service.js';
import type { LambdaKv } from '../extensions/store-access.js';
import { META_GROUP, type RemovalInfo } from '../node/kv-node.js';
import { RemovalGate } from '../server/removal-gate.js';

/** How often a joining node with `--join-auto-add` asks the cluster to add it, while it is not a member yet. */
const AUTO_ADD_RETRY_MS = 5_000;

/**
 * A joining node's first view of the cluster: the map served by `address`, once it lists this
 * node as a member. The operator adds it with `kvctl member add`, or (`autoAdd`, from
 * `--join-auto-add`) the node asks for it itself with the admin token. Polls until then.
 */
async function fetchSeedMap(address: string, id: number, creds: grpc.ChannelCredentials, log: Logger, autoAdd?: () => Promise<void>): Promise<ClusterMap> {
  const stub = new ClusterStubClient(address, creds);
  let warned = false;
  let lastAddMs = 0;
  try {
    for (;;) {
      const map = await new Promise<ClusterMap | undefined>((resolve) => {
        stub.getShardMap({}, new grpc.Metadata(), { deadline: new Date(Date.now() + 3000) }, (err, res) => {
          if (err || !res?.mapJson) return resolve(undefined);
          try {
            resolve(JSON.parse(res.mapJson) as ClusterMap);
          } catch {
            resolve(undefined);
          }
        });
      });
      if (map?.members.some((m) => m.id === id)) return map;
      if (map && autoAdd && Date.now() - lastAddMs >= AUTO_ADD_RETRY_MS) {
        lastAddMs = Date.now();
        await autoAdd().then(
          () => log.info({ join: address, id }, 'asked the cluster to add this node (--join-auto-add)'),
          (e: unknown) => log.warn({ join: address, id, err: e instanceof Error ? e.message : String(e) }, 'could not add this node yet (--join-auto-add): retrying'),
        );
        continue;
      }
      if (!warned) {
        log.warn({ join: address, id }, map ? 'not a member yet: waiting for `kvctl member add`' : 'cluster not reachable yet: retrying');
        warned = true;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  } finally {
    stub.close();
  }
}

/** gRPC options of the peer listener: Raft batches and snapshot chunks, a stream per peer node. */
const PEER_SERVER_OPTIONS: grpc.ServerOptions = {
  'grpc.max_receive_message_length': 64 << 20,
  'grpc.max_send_message_length': 64 << 20,
  'grpc.max_concurrent_streams': 16,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
};

/** Default memory budget: this fraction of V8's heap limit (the rest is headroom for requests, garbage and an installing snapshot). */
const DEFAULT_BUDGET_OF_HEAP = 0.6;

/**
 * The memory budget in MiB: the flag's, or 60 % of V8's heap limit. The V8 heap the node needs is
 * its budget plus headroom (README "Memory model"); a budget above 75 % of the heap limit is
 * warned about with the `--max-old-space-size` to start node with.
 */
function memoryBudgetMib(flag: number | undefined, log: Logger, fixed: FixedMemoryParts): number {
  const heapMib = Math.floor(getHeapStatistics().heap_size_limit / 2 ** 20);
  if (flag === undefined) return Math.floor(heapMib * DEFAULT_BUDGET_OF_HEAP);
  const shortMib = budgetShortfall(flag * 2 ** 20, fixed) / 2 ** 20;
  if (flag > 0 && shortMib > 0) {
    const mib = (n: number): number => Math.round(n / 2 ** 20);
    log.warn(
      { memoryBudgetMib: flag, valueCacheMib: mib(fixed.valueCache), indexCacheMib: mib(fixed.indexCache), historyMib: mib(fixed.history), raftLogMib: mib(fixed.raftLog) },
      `the memory budget is ${Math.ceil(shortMib)} MiB short of the caches plus one shard replica's watch history and Raft log at their bounds: once they fill, writes that add data are refused whatever the data size; raise --memory-budget-mib or lower --value-cache-mib / --index-cache-mib (README "Memory model")`,
    );
  }
  if (flag > heapMib * 0.75) {
    log.warn(
      { memoryBudgetMib: flag, heapLimitMib: heapMib },
      `the memory budget is above 75 % of V8's heap limit: start node with --max-old-space-size=${Math.ceil(flag / DEFAULT_BUDGET_OF_HEAP)} (writes are refused anyway once the heap is 85 % full)`,
    );
  }
  return flag;
}

/**
 * Gives freed native memory back to the OS when the node is quiet (`--malloc-trim-mib N`, 64 by
 * default, 0 = off: a trim is a pause of a quiet node's event loop, src/node/malloc-trim.ts), or
 * undefined when off, on jemalloc, or where glibc's malloc_trim is not available (said in the log).
 */
function startMallocTrimmer(cfg: KvdConfig, metrics: NodeMetrics, log: Logger): MallocTrimmer | undefined {
  const allocator = runningAllocator();
  // Which malloc serves the node (src/bin/allocator.ts: glibc unless jemalloc is preloaded).
  new Gauge({ name: 'kvcascade_allocator_info', help: 'The malloc this kvd process runs on (label allocator: jemalloc, glibc or unknown); always 1', labelNames: ['allocator'], registers: [metrics.registry] }).set({ allocator }, 1);
  if (allocator === 'glibc') {
    log.info({ allocator, mallocTrimMib: cfg.mallocTrimMib ?? DEFAULT_MALLOC_TRIM_MIB }, 'running on glibc malloc: freed native memory stays with the allocator until the node trims it (--malloc-trim-mib; 0 = never, then RSS follows the node\'s past peak: README "What RSS to expect")');
  } else {
    log.info({ allocator }, 'malloc');
  }
  const freedMib = cfg.mallocTrimMib ?? DEFAULT_MALLOC_TRIM_MIB;
  if (freedMib === 0) return undefined;
  // Said as a warning only when the operator asked for trims; the default is silent where it cannot apply.
  const asked = cfg.mallocTrimMib !== undefined;
  if (allocator === 'jemalloc') {
    if (asked) log.warn('--malloc-trim-mib: this node runs on jemalloc, which returns freed memory by itself; malloc_trim (glibc) would find nothing to do, so it is not started');
    return undefined;
  }
  const native = loadNativeMalloc();
  if (!native) {
    (asked ? log.warn.bind(log) : log.info.bind(log))('malloc_trim is not available here (not glibc, or koffi did not load): freed native memory stays with the allocator');
    return undefined;
  }
  const trimmer = new MallocTrimmer(
    native,
    { ...DEFAULT_TRIM_POLICY, freedBytes: freedMib * 2 ** 20, minIntervalMs: cfg.mallocTrimIntervalMs ?? DEFAULT_TRIM_POLICY.minIntervalMs },
    metrics.registry,
    (fields, msg) => log.warn(fields, msg),
  );
  trimmer.start();
  return trimmer;
}

/** The forced GC after snapshot installs, or undefined (said in the log) where V8's gc cannot be reached. */
function startHeapRelease(log: Logger): HeapRelease | undefined {
  const gc = loadForcedGc();
  if (!gc) {
    log.warn('cannot force garbage collections here: a snapshot install\'s garbage stays in the heap until V8 collects it by itself');
    return undefined;
  }
  return new HeapRelease(gc, DEFAULT_HEAP_RELEASE_POLICY, (r) =>
    log.info({ reason: r.reason, heapUsedBeforeMiB: Math.round(r.heapUsedBefore / 2 ** 20), heapUsedAfterMiB: Math.round(r.heapUsedAfter / 2 ** 20), pauseMs: Math.round(r.pauseMs) }, 'forced garbage collection'),
  );
}

function bind(server: grpc.Server, address: string, creds: grpc.ServerCredentials): Promise<number> {
  return new Promise<number>((res, rej) => server.bindAsync(address, creds, (err, p) => (err ? rej(err) : res(p))));
}

/**
 * Tests only (--test-fault-injection): `POST /test/faults?drop-to=2,3` makes the node drop every
 * Raft message it sends to nodes 2 and 3 (a one-way partition); `drop-to=` heals.
 */
/**
 * HTTP probes for orchestrators on the metrics port (they work whether or not the client API
 * uses TLS): `/readyz` is 200 once the node has joined and its groups have leaders and are
 * caught up (503 with the reason otherwise, and while shutting down); `/livez` is 200 whenever
 * the event loop answers at all.
 */
function probeEndpoints(readiness: () => { ready: boolean; reason?: string }): (req: IncomingMessage, res: ServerResponse) => boolean {
  return (req, res) => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path === '/livez') {
      res.end('ok\n');
      return true;
    }
    if (path !== '/readyz') return false;
    const r = readiness();
    res.statusCode = r.ready ? 200 : 503;
    res.end(r.ready ? 'ready\n' : `not ready: ${r.reason ?? 'unknown'}\n`);
    return true;
  };
}

/**
 * Who may view the web console's cluster state (`/console/events`, `/console/state.json`): anyone
 * who reaches the metrics port while access control is off; root only while it is on (the admin
 * token, or a root user's token), given as `authorization: Bearer <token>` or, for the browser
 * page (an EventSource cannot set headers), `?token=<token>` on the page's URL, which the page
 * passes on. The page's static files carry no cluster data and are served to anyone.
 */
function consoleViewerCheck(access: AccessControl): (req: IncomingMessage) => boolean {
  return (req) => {
    if (!access.enabled) return true;
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== '/console/events' && url.pathname !== '/console/state.json') return true;
    const token = url.searchParams.get('token');
    const header = req.headers.authorization ?? (token ? `Bearer ${token}` : undefined);
    try {
      access.requireRoot(header, undefined);
      return true;
    } catch {
      return false;
    }
  };
}

/** How long a stopping kvd (SIGTERM, SIGINT) spends handing its leaderships over before it closes. */
const DRAIN_ON_STOP_MS = 10_000;
/** The default and the longest wait of `POST /drain` (a preStop hook's budget is the pod's grace period). */
const DRAIN_DEFAULT_MS = 20_000;
const DRAIN_MAX_MS = 120_000;

/**
 * `POST /drain[?timeout-ms=N]` on the metrics port, with `authorization: Bearer <admin token>`:
 * hands every leadership this node holds to other voters and refuses new ones (a Kubernetes
 * preStop hook calls it), then answers with what moved. The node keeps serving as a follower and
 * reports not ready from then on. Refused without the admin token (403 when this node has none).
 */
function drainEndpoint(
  adminToken: string | undefined,
  drain: (deadlineMs: number) => Promise<{ led: number; stillLeading: number[] }>,
): (req: IncomingMessage, res: ServerResponse) => boolean {
  const tokens = new AdminTokenCheck(adminToken);
  return (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== '/drain') return false;
    const reply = (status: number, body: object): void => {
      res.statusCode = status;
      res.setHeader('Content-Type', 'application/json');
      res.end(`${JSON.stringify(body)}\n`);
    };
    if (req.method !== 'POST') {
      reply(405, { error: 'POST /drain' });
      return true;
    }
    const md = new grpc.Metadata();
    if (req.headers.authorization) md.set(AUTHORIZATION_METADATA, req.headers.authorization);
    const auth = tokens.check(md);
    if (auth !== 'ok') {
      reply(auth === 'disabled' ? 403 : 401, { error: auth === 'disabled' ? 'drain needs the admin token: this node has none (--admin-token-file)' : 'drain needs the admin token (authorization: Bearer <token>)' });
      return true;
    }
    const raw = url.searchParams.get('timeout-ms');
    const timeoutMs = raw === null ? DRAIN_DEFAULT_MS : Number(raw);
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > DRAIN_MAX_MS) {
      reply(400, { error: `timeout-ms must be an integer from 0 to ${DRAIN_MAX_MS}` });
      return true;
    }
    drain(Date.now() + timeoutMs).then(
      (r) => reply(r.stillLeading.length === 0 ? 200 : 504, { drained: r.stillLeading.length === 0, led: r.led, stillLeading: r.stillLeading }),
      (e: unknown) => reply(500, { error: e instanceof Error ? e.message : String(e) }),
    );
    return true;
  };
}

function faultInjection(transport: GrpcPeerTransport, log: Logger): (req: IncomingMessage, res: ServerResponse) => boolean {
  log.warn('test fault injection is enabled (--test-fault-injection): never in production');
  return (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== '/test/faults' || req.method !== 'POST') return false;
    const ids = (url.searchParams.get('drop-to') ?? '').split(',').filter(Boolean).map(Number);
    if (!ids.every((n) => Number.isSafeInteger(n) && n > 0)) {
      res.statusCode = 400;
      res.end('drop-to must be a comma-separated list of node ids\n');
      return true;
    }
    transport.dropOutgoingTo(new Set(ids));
    res.end(`dropping outgoing peer traffic to [${ids.join(',')}]\n`);
    return true;
  };
}

/** The file a node removed from the cluster leaves in its data folder; kvd refuses to start on a folder that has it. */
const REMOVED_MARKER_FILE = 'removed-from-cluster.json';

/** Exit code of a kvd started on the data folder of a removed member. */
const EXIT_REMOVED = 2;

/**
 * Refuses to start on the data folder of a member removed from the cluster (it left
 * {@link REMOVED_MARKER_FILE}): its replicas are stale and the cluster no longer knows it, so the
 * operator must wipe the folder and add the node again. Returns the message, or undefined.
 */
function removedDataDirMessage(dataDir: string, id: number): string | undefined {
  const path = join(dataDir, REMOVED_MARKER_FILE);
  if (!existsSync(path)) return undefined;
  let detail = '';
  try {
    const note = JSON.parse(readFileSync(path, 'utf8')) as { epoch?: unknown; at?: unknown; id?: unknown };
    detail = ` (node ${String(note.id ?? id)}, at map epoch ${String(note.epoch ?? '?')}, ${String(note.at ?? 'time unknown')})`;
  } catch {
    detail = ' (its note is unreadable)';
  }
  return (
    `this data directory (${dataDir}) belongs to a node that was removed from the cluster${detail}; see ${path}. ` +
    `Refusing to start. To re-join: wipe the directory, add the node again (kvctl member add ${id} <address>) and start kvd with --join`
  );
}

/** Leaves the removal note in the data folder (see {@link removedDataDirMessage}). */
function writeRemovedMarker(dataDir: string, id: number, info: RemovalInfo): void {
  const note = { id, epoch: info.epoch, by: info.by, ownEpoch: info.ownEpoch, at: new Date().toISOString(), message: info.message };
  writeFileSync(join(dataDir, REMOVED_MARKER_FILE), `${JSON.stringify(note, null, 2)}\n`, { mode: 0o600 });
}

/** Creates the data folder readable by this user only (0700), tightening an existing one. */
function createPrivateDir(dir: string, log: Logger): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const mode = statSync(dir).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    chmodSync(dir, 0o700);
    log.warn({ dataDir: dir, was: mode.toString(8) }, 'the data folder was accessible to other users: set to 0700');
  }
}

async function main(): Promise<void> {
  let cfg: KvdConfig;
  try {
    cfg = parseConfig(process.argv.slice(2));
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'commander.helpDisplayed' || code === 'commander.version') process.exit(0);
    process.stderr.write(`kvd: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const removedMessage = removedDataDirMessage(cfg.dataDir, cfg.id);
  if (removedMessage !== undefined) {
    process.stderr.write(`kvd: ${removedMessage}\n`);
    process.exit(EXIT_REMOVED);
  }
  const log = createLogger('kvd', { node: cfg.id });
  installCpuProfileSignal(`kvd-n${cfg.id}`, (msg) => log.info(msg));
  for (const w of cfg.warnings) log.warn(w);
  createPrivateDir(cfg.dataDir, log);
  const creds = kvdCredentials(cfg);
  if (!creds.clientCertAuth) log.warn('the client API does not authenticate clients (no --tls-ca): anyone who reaches it may read and write data');

  const autoAdd = cfg.join && cfg.joinAutoAdd
    ? async (): Promise<void> => {
        const admin = new AdminClient({ endpoints: [cfg.join!], credentials: creds.clientDial, ...(cfg.adminToken !== undefined ? { token: cfg.adminToken } : {}) });
        try {
          await admin.addMember(cfg.id, cfg.advertise, cfg.advertisePeer);
        } finally {
          admin.close();
        }
      }
    : undefined;
  const seedMap = cfg.join ? await fetchSeedMap(cfg.join, cfg.id, creds.clientDial, log, autoAdd) : undefined;
  const self = seedMap?.members.find((m) => m.id === cfg.id);
  if (self && (self.address !== cfg.advertise || (self.peerAddress !== undefined && self.peerAddress !== cfg.advertisePeer))) {
    // The others would dial addresses this process does not serve.
    throw new Error(
      `the cluster knows member ${cfg.id} as client ${self.address} / peer ${self.peerAddress ?? '-'}, but this node advertises client ${cfg.advertise} / peer ${cfg.advertisePeer ?? '-'}: ` +
        'start it with those addresses (--advertise or --listen, --advertise-peer or --peer-listen), or remove and re-add the member',
    );
  }
  const members = seedMap ? new Map(seedMap.members.map((m) => [m.id, m.address] as [number, string])) : cfg.peers;
  const peerAddresses = seedMap
    ? new Map(seedMap.members.map((m) => [m.id, m.peerAddress ?? m.address] as [number, string]))
    : cfg.peerAddresses;
  const transport = new GrpcPeerTransport(cfg.id, peerAddresses, { log, credentials: creds.peerDial });
  const engineAt = performance.now();
  const engine = await LevelEngine.open(join(cfg.dataDir, 'db'), {
    ...(cfg.leveldbMaxOpenFiles !== undefined ? { maxOpenFiles: cfg.leveldbMaxOpenFiles } : {}),
    ...(cfg.leveldbCacheMib !== undefined ? { cacheBytes: cfg.leveldbCacheMib * 1024 * 1024 } : {}),
  });
  log.info({ engineOpenMs: Math.round(performance.now() - engineAt), sinceProcessStartMs: Math.round(performance.now()) }, 'storage engine opened');
  const node = await KvNode.open(
    {
      id: cfg.id,
      members,
      peerAddresses,
      ...(seedMap ? { join: true, seedMap } : {}),
      defaultPool: { shards: cfg.defaultShards },
      tickMs: cfg.tickMs,
      electionTicks: cfg.electionTicks,
      snapshotEveryEntries: cfg.snapshotEveryEntries,
      keepEntriesAfterSnapshot: cfg.snapshotKeepEntries,
      retentionMs: cfg.retentionMs,
      valueCacheBytes: cfg.valueCacheMib * 1024 * 1024,
      indexCacheBytes: cfg.indexCacheMib * 1024 * 1024,
      ...(cfg.indexDropCold !== undefined ? { indexDropCold: cfg.indexDropCold } : {}),
      ...(cfg.snapshotChunksInFlight !== undefined ? { snapshotChunksInFlight: cfg.snapshotChunksInFlight } : {}),
      ...(cfg.snapshotChunkKib !== undefined ? { snapshotChunkBytes: cfg.snapshotChunkKib * 1024 } : {}),
      snapshotChunkDir: join(cfg.dataDir, 'snapshot-chunks'),
      snapshotChunkFiles: cfg.snapshotChunkFiles,
      ...(cfg.sweepVersions ? { sweepVersions: true } : {}),
      ...(cfg.legacyConditionalPuts ? { legacyConditionalPuts: true } : {}),
      ...(cfg.overlapRounds !== undefined ? { overlapRounds: cfg.overlapRounds } : {}),
      ...(cfg.syncPaceMs !== undefined ? { syncPaceMs: cfg.syncPaceMs } : {}),
      ...(cfg.gatherTurn !== undefined ? { gatherTurn: cfg.gatherTurn } : {}),
      ...(cfg.gatherTurns !== undefined ? { gatherTurns: cfg.gatherTurns } : {}),
      ...(cfg.stateWriteDelayMs !== undefined ? { stateWriteDelayMs: cfg.stateWriteDelayMs } : {}),
      ...(cfg.syncBeforeApply !== undefined ? { syncBeforeApply: cfg.syncBeforeApply } : {}),
      memoryBudgetBytes:
        memoryBudgetMib(cfg.memoryBudgetMib, log, {
          valueCache: cfg.valueCacheMib * 1024 * 1024,
          indexCache: cfg.indexCacheMib * 1024 * 1024,
          history: DEFAULT_MAX_HISTORY_BYTES,
          raftLog: NODE_DEFAULTS.snapshotEveryBytes + NODE_DEFAULTS.keepBytesAfterSnapshot,
        }) *
        1024 *
        1024,
      log,
    },
    engine,
    transport,
  );
  const metrics = new NodeMetrics(node);
  // A follower's snapshot install leaves hundreds of MiB of garbage in V8's heap that an idle node
  // may not collect for a long time: a forced full GC 2 s after each install (src/node/heap-release.ts).
  const heapRelease = startHeapRelease(log);
  node.observer = { ...metrics.observer(), snapshotInstalled: (group, streamed) => heapRelease?.request(`snapshot install (group ${group}${streamed ? ', streamed' : ''})`) };
  const trimmer = startMallocTrimmer(cfg, metrics, log);
  metrics.watchTransport(transport);
  // Once the node learns it was removed from the cluster, every client call is refused (NODE_REMOVED).
  const gate = new RemovalGate();
  const server = createGrpcServer({ interceptors: [gate.interceptor] });
  // One stub pool and one coordinator per node: the client API, the extension lambdas and the
  // cluster probe all route through them.
  const stubs = new NodeStubs({ credentials: creds.clientDial });
  // Requests are counted by the gRPC status code name the client gets (OK, NOT_FOUND, UNAVAILABLE...).
  const statusName = (e: unknown): string => grpc.status[classify(e)?.code ?? grpc.status.INTERNAL];
  const coordinator = new Coordinator(metrics.meter(node, statusName), {
    log,
    selfAddress: cfg.advertise,
    leaderAddress: (g: number) => node.leaderAddress(g),
    stubs,
  });
  const probe = new GrpcClusterProbe({ selfId: cfg.id, selfStatus: () => node.status(), stubs, coordinator });
  const cluster = new ClusterAdmin(node, probe, log.child({ component: 'cluster' }));
  const lambdaKv = routedLambdaKv(coordinator);
  // Access control (off until `kvctl auth enable`): its state is read from this node's replica of
  // the metadata group; the admin token is root's credential.
  const authHost = kvNodeHost(node);
  const access = new AccessControl({
    meta: () => authHost.meta(),
    adminToken: cfg.adminToken,
    ...(cfg.authTokenTtlMs !== undefined ? { tokenTtlMs: cfg.authTokenTtlMs } : {}),
  });
  // Each extension's lambdas act with the role named when it was loaded (root when none was).
  const extensionKv = new Map<string, LambdaKv & { close(): void }>();
  const lambdaKvFor = (name: string): LambdaKv => {
    let kv = extensionKv.get(name);
    if (!kv) {
      kv = routedLambdaKv(coordinator, { principal: () => access.lambdaPrincipal(name) });
      extensionKv.set(name, kv);
    }
    return kv;
  };
  const loopBlocked = new Counter({ name: 'kvcascade_event_loop_blocked_total', help: `Times the event loop was blocked longer than ${cfg.loopBlockWarnMs} ms`, registers: [metrics.registry] });
  // The boot id names this process in the extensions' attempt records; the watchdog leaves a
  // death note with it when it kills the process, which the next process reads here.
  const bootId = randomBytes(8).toString('hex');
  const deathNotePath = join(cfg.dataDir, 'loop-watchdog-death.json');
  const previousDeath = takeDeathNote(deathNotePath);
  if (previousDeath) log.warn({ blockedMs: previousDeath.blockedMs, at: new Date(previousDeath.atMs).toISOString() }, 'the previous process of this node was killed by its event-loop watchdog (a blocked loop)');
  const watchdog = new LoopWatchdog({
    warnMs: cfg.loopBlockWarnMs,
    killMs: cfg.loopBlockKillMs,
    label: `kvd node ${cfg.id}`,
    deathNote: { path: deathNotePath, boot: bootId },
    onBlocked: (ms) => {
      loopBlocked.inc();
      log.warn({ blockedMs: ms }, 'the event loop was blocked (an in-process lambda?)');
    },
  });
  const extensions = new ExtensionManager(kvNodeHost(node), {
    dataDir: cfg.dataDir,
    bootId,
    ...(previousDeath ? { blockedBoot: previousDeath.boot } : {}),
    ...(cfg.extMaxRestartsPerMinute !== undefined ? { maxRestartsPerMinute: cfg.extMaxRestartsPerMinute } : {}),
    ...(cfg.extPoisonAttempts !== undefined ? { poisonAttempts: cfg.extPoisonAttempts } : {}),
    log: log.child({ component: 'extensions' }),
    registry: metrics.registry,
    ...(cfg.extensionIsolation ? { defaultIsolation: cfg.extensionIsolation } : {}),
    ...(cfg.extensionMemoryMb !== undefined ? { extensionMemoryMb: cfg.extensionMemoryMb } : {}),
    ...(cfg.extensionHeapMb !== undefined ? { workerHeapMb: cfg.extensionHeapMb } : {}),
    lambdaKv,
    lambdaKvFor,
    shardRevisions: async (deadlineMs) => {
      const out = new Map<number, number>();
      for (const st of await probe.statuses(node.shardMap(), deadlineMs)) {
        for (const g of st.groups) if (g.group !== 0 && g.role === 'Leader' && g.leader === st.nodeId) out.set(g.group, g.revision);
      }
      return out;
    },
  });
  addAdminService(server, adminBackend(node, extensions, cluster), { ...(cfg.adminToken ? { adminToken: cfg.adminToken } : {}), log, access });
  addAuthService(server, access, { metadataLeaderAddress: () => node.leaderAddress(META_GROUP), log });
  const services = addKvServices(server, coordinator.backend, {
    log,
    coordinator,
    access,
    ...(cfg.adminToken ? { adminToken: cfg.adminToken } : {}),
  });
  const leases = startNodeLeases(node, server, {
    access,
    log: log.child({ component: 'leases' }),
    registry: metrics.registry,
    options: {
      ...(cfg.leaseGraceMs !== undefined ? { graceMs: cfg.leaseGraceMs } : {}),
      limits: { ...(cfg.maxLeases !== undefined ? { maxLeases: cfg.maxLeases } : {}), ...(cfg.leaseMinTtl !== undefined ? { minTtlSec: cfg.leaseMinTtl } : {}) },
    },
  });
  let stopping = false;
  const health = addHealthService(server, () => node.readiness(), log);
  // The web console: its page on the metrics port, the Console service on the client API.
  const webConsole = createNodeConsole({
    nodeId: cfg.id,
    grpcServer: server,
    registry: metrics.registry,
    map: () => node.shardMap(),
    status: () => node.status(),
    extensions: () => extensions.statuses(),
    stubs,
    credentials: creds.clientDial,
    log: log.child({ component: 'console' }),
    mayView: consoleViewerCheck(access),
  });
  const port = await bind(server, cfg.listen, creds.clientServer);
  // The peer plane: Raft traffic only, on its own listener (mutual TLS unless --insecure-peers).
  const peerServer = cfg.peerListen !== undefined ? new grpc.Server(PEER_SERVER_OPTIONS) : undefined;
  let peerPort: number | undefined;
  if (peerServer) {
    transport.register(peerServer, { isMember: (id) => node.isMember(id), mapEpoch: () => node.shardMap().epoch, authenticate: creds.peerAuthenticator });
    peerPort = await bind(peerServer, cfg.peerListen!, creds.peerServer);
  }
  const faults = cfg.testFaultInjection ? faultInjection(transport, log) : undefined;
  const probes = probeEndpoints(() =>
    stopping ? { ready: false, reason: 'shutting down' } : node.draining ? { ready: false, reason: 'draining: leaderships handed over, the node is about to stop' } : node.readiness(),
  );
  const drainer = drainEndpoint(cfg.adminToken, async (deadlineMs) => {
    const r = await node.drain(deadlineMs);
    log.info({ led: r.led, stillLeading: r.stillLeading }, r.stillLeading.length === 0 ? 'drained: no leadership left here' : 'drain deadline passed with leaderships left');
    return r;
  });
  const m = await metrics.serve(cfg.metricsPort, cfg.metricsHost, (req, res) => probes(req, res) || drainer(req, res) || webConsole.handle(req, res) || (faults?.(req, res) ?? false));
  node.start();
  cluster.start();
  if (cfg.join) {
    log.info({ join: cfg.join }, 'waiting for the metadata leader to add this node and send the cluster map');
    await node.untilMapInitialised();
    log.info({ epoch: node.shardMap().epoch }, 'joined the cluster');
  }
  extensions.start();
  const configured = ensureConfiguredExtensions(cfg, node, extensions, log, creds.clientDial);
  log.info(
    { listen: cfg.listen, advertise: cfg.advertise, port, peerListen: cfg.peerListen, metricsPort: m.port, dataDir: cfg.dataDir, peers: Object.fromEntries(cfg.peers), peerAddresses: Object.fromEntries(cfg.peerAddresses), sinceProcessStartMs: Math.round(performance.now()) },
    'kvd started',
  );
  // A machine-readable readiness line for supervisors and tests.
  process.stdout.write(`${JSON.stringify({ event: 'ready', id: cfg.id, port, peerPort, metricsPort: m.port })}\n`);

  // Removed from the cluster (a peer with a newer map refused this node): the node has stopped its
  // groups and peer transport; refuse every client call, stop the node's services, leave a note
  // in the data folder (a later start refuses) and say so once on stdout. The process keeps
  // answering (UNAVAILABLE, NOT_SERVING) until it is stopped.
  node.onRemoved((info) => {
    gate.close(info.message);
    try {
      writeRemovedMarker(cfg.dataDir, cfg.id, info);
    } catch (e) {
      log.error({ err: String(e) }, `could not write ${REMOVED_MARKER_FILE}`);
    }
    log.error({ epoch: info.epoch, by: info.by, ownEpoch: info.ownEpoch }, info.message);
    process.stdout.write(`${JSON.stringify({ event: 'removed', id: cfg.id, epoch: info.epoch, by: info.by, ownEpoch: info.ownEpoch, message: info.message })}\n`);
    leases.stop();
    configured.stop();
    cluster.stop();
    void extensions.stop().catch(() => {});
  });

  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    // Hand the leaderships over first (bounded), so clients see a leader change, not a dead leader (a removed node leads nothing).
    const drained = node.removal ? undefined : await node.drain(Date.now() + DRAIN_ON_STOP_MS).catch(() => undefined);
    if (drained && drained.led > 0) log.info({ led: drained.led, stillLeading: drained.stillLeading }, 'leaderships handed over before stopping');
    // The counterpart of the readiness line.
    process.stdout.write(`${JSON.stringify({ event: 'stopping', id: cfg.id, signal, led: drained?.led ?? 0, stillLeading: drained?.stillLeading ?? [] })}\n`);
    health.close();
    leases.stop();
    webConsole.close();
    configured.stop();
    cluster.stop();
    services.close();
    lambdaKv.close();
    for (const kv of extensionKv.values()) kv.close();
    probe.close();
    coordinator.close();
    stubs.close();
    await extensions.stop().catch(() => {});
    await watchdog.stop().catch(() => {});
    trimmer?.stop();
    heapRelease?.stop();
    server.forceShutdown();
    peerServer?.forceShutdown();
    m.server.close();
    await node.stop();
    log.flush?.();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

main().catch((e) => {
  process.stderr.write(`kvd: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
