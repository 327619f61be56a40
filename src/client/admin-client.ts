/**
 * A client of the Admin and Cluster services: upload, replace, unload and inspect extensions,
 * create pools, add and remove members (these need the admin token), and read the shard map and
 * every member's status (these do not).
 *
 * Size: about 760 lines — the AdminClient class (~440, one short method per RPC, with the
 * per-node merge of extension listings, asked of every member in parallel) and the decoders of the Admin service's JSON records into
 * the types above it (~260); they change together with admin.proto. The next split: the decoders
 * to their own module.
 */
import * as grpc from '@grpc/grpc-js';
import { AdminStubClient } from '../wire/admin-proto.js';
import { AUTHORIZATION_METADATA, bearer } from '../wire/auth.js';
import { HealthStubClient, type HealthStatus, type HealthStub } from '../wire/health-proto.js';
import { ClusterStubClient, type ClusterStub, type GetShardMapResponseMsg, type StatusResponseMsg } from '../wire/proto.js';
import { emptyMap, type ClusterMap, type MemberInfo, type PoolSpec, type ShardInfo } from '../sharding/index.js';
import { KvError, serviceCallError } from './errors.js';
import { META_LEADER_METADATA } from '../wire/auth-proto.js';
import type { KvClientTlsOptions } from './transport.js';
import { nodeStatus, type KvGroupStatus, type KvNodeStatus } from './types.js';

/** A registered extension. */
export interface ExtensionRecordInfo {
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  readonly sha256: string;
  readonly size: number;
  /** The config handed to `initialize` (empty, with `configHidden`, when listed without the admin token). */
  readonly config: Record<string, unknown>;
  /** The config was withheld: the listing was made without the admin token (it may hold secrets). */
  readonly configHidden?: boolean;
  readonly native: string;
  readonly inProcess: boolean;
  /** Circuit breaker limits given at load (0 = the node's defaults). */
  readonly maxRestartsPerMinute: number;
  readonly pauseMs: number;
  /** 'worker', 'process' or 'in-process'; '' when loaded without one (the node's default, or in-process when `inProcess`). */
  readonly isolation: string;
  readonly loadedAtMs: number;
}

/** One watch of an extension, as seen by one node. */
export interface ExtensionWatchInfo {
  readonly prefix: string;
  readonly mode: string;
  readonly invocations: number;
  readonly errors: number;
  readonly retries: number;
  readonly deadLettered: number;
  readonly backlog: number;
  readonly cursor: number;
  readonly lastLatencyMs: number;
  /** Per data shard this node delivers: its cursor, the shard's revision (lag = revision - cursor) and backlog. */
  readonly shards: readonly { readonly shard: number; readonly cursor: number; readonly revision: number; readonly backlog: number }[];
}

/** How to load an extension (see `kvctl ext load`). */
export interface LoadExtensionOptions {
  name?: string;
  config?: Record<string, unknown>;
  inProcess?: boolean;
  isolation?: 'worker' | 'process' | 'in-process';
  /** Circuit breaker: worker restarts within a minute before it pauses (default: the node's). */
  maxRestartsPerMinute?: number;
  /** Circuit breaker: first pause in ms (default: the node's). */
  pauseMs?: number;
  /** Access control: the role the lambdas act with (default: root). */
  role?: string;
  /** Where delivery starts: absent, resume from the cursors; 'now', skip the backlog; a revision, from it on (every shard). */
  from?: 'now' | number;
}

/** One node's view of one extension. */
export interface ExtensionNodeInfo {
  readonly nodeId: number;
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  readonly state: string;
  readonly error: string;
  readonly delivering: boolean;
  readonly watches: readonly ExtensionWatchInfo[];
  readonly workerRestarts: number;
  readonly invocations: number;
  readonly errors: number;
  readonly timeouts: number;
  /** Circuit breaker: when the paused extension tries again (ms since the epoch; 0 = not paused). */
  readonly retryAtMs: number;
  /** Dead letters written by this node since it started (all watches). */
  readonly deadLettered: number;
  /** Where its lambdas run on this node now: 'worker', 'process' or 'in-process'; '' while no runner is up. */
  readonly runsIn: string;
  /**
   * CPU time and memory of the extension's process on this node: process isolation only
   * (undefined in worker and in-process mode, where Node measures neither per extension).
   */
  readonly resources?: ExtensionResourceInfo;
}

/** An extension's resource use on one node (process isolation). */
export interface ExtensionResourceInfo {
  /** CPU time (user + system, s) of its processes since the node started, every restart included. */
  readonly cpuSeconds: number;
  /** Resident memory (bytes) of its current process (0 while none runs). */
  readonly rssBytes: number;
  /** Highest resident memory (bytes) sampled, every restart included. */
  readonly peakRssBytes: number;
}

/** One Raft group as one node reports it (Cluster.Status): the client's status type. */
export type GroupReport = KvGroupStatus;

/** One node's Cluster.Status: the client's status type. */
export type NodeReport = KvNodeStatus;

/** One member in a {@link ClusterStatus}: its status, or why it did not answer. */
export interface ClusterNodeReport {
  /** Member id (from the map; from the node's own status when the map has no members; 0 when unknown). */
  readonly id: number;
  readonly address: string;
  readonly status?: NodeReport;
  readonly error?: KvError;
  /** What the node's grpc.health.v1 service says for the whole server (absent when it did not answer). */
  readonly health?: HealthStatus;
}

/** The cluster map and every member's status, as {@link AdminClient.clusterStatus} collects them. */
export interface ClusterStatus {
  readonly map: ClusterMap;
  readonly nodes: readonly ClusterNodeReport[];
}

/** A pool to create (see {@link AdminClient.createPool}). */
export interface CreatePoolRequest {
  /** The key prefix, e.g. `/cameras`. */
  readonly name: string;
  readonly shards: number;
  /** Replicas per shard (default: min(3, members)). */
  readonly replicas?: number;
  /** Regular expression whose first capture group is the hashed part of a key. */
  readonly affinity?: string;
  /** How long old versions are kept (default: the nodes' setting). */
  readonly retentionMs?: number;
}

/** Options of an AdminClient. */
export interface AdminClientOptions {
  readonly endpoints: readonly string[];
  /** The admin token; needed by everything but {@link AdminClient.shardMap} and {@link AdminClient.clusterStatus}. */
  readonly token?: string;
  /** Channel credentials (overrides `tls`). */
  readonly credentials?: grpc.ChannelCredentials;
  /** TLS settings, as the KV client takes them (CA, and a client certificate when the cluster requires one). */
  readonly tls?: KvClientTlsOptions;
  /** Deadline of each call in ms (default 60 s). */
  readonly deadlineMs?: number;
}

/** Default deadline of each member's Status call in {@link AdminClient.clusterStatus}. */
export const CLUSTER_STATUS_DEADLINE_MS = 3_000;

type Stub = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

const UPLOAD_CHUNK = 512 * 1024;

function fromRecord(r: Record<string, unknown>): ExtensionRecordInfo {
  let config: Record<string, unknown> = {};
  let configHidden = false;
  try {
    const parsed = JSON.parse(String(r.configJson || '{}')) as unknown;
    // A listing without the admin token carries a note instead of the config object.
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) config = parsed as Record<string, unknown>;
    else configHidden = true;
  } catch {
    // shown as empty
  }
  return {
    name: String(r.name),
    version: String(r.version),
    generation: Number(r.generation),
    sha256: String(r.sha256),
    size: Number(r.size),
    config,
    ...(configHidden ? { configHidden: true } : {}),
    native: String(r.native ?? ''),
    maxRestartsPerMinute: Number(r.maxRestartsPerMinute ?? 0),
    pauseMs: Number(r.pauseMs ?? 0),
    inProcess: Boolean(r.inProcess),
    isolation: String(r.isolation ?? ''),
    loadedAtMs: Number(r.loadedAtMs),
  };
}

function fromStatus(s: Record<string, unknown>): ExtensionNodeInfo {
  return {
    nodeId: Number(s.nodeId),
    name: String(s.name),
    version: String(s.version),
    generation: Number(s.generation),
    state: String(s.state),
    error: String(s.error ?? ''),
    delivering: Boolean(s.delivering),
    watches: ((s.watches as Record<string, unknown>[]) ?? []).map((w) => ({
      prefix: String(w.prefix),
      mode: String(w.mode),
      invocations: Number(w.invocations),
      errors: Number(w.errors),
      retries: Number(w.retries),
      deadLettered: Number(w.deadLettered),
      backlog: Number(w.backlog),
      cursor: Number(w.cursor),
      lastLatencyMs: Number(w.lastLatencyMs),
      shards: ((w.shards as Record<string, unknown>[] | undefined) ?? []).map((x) => ({ shard: num(x.shard), cursor: num(x.cursor), revision: num(x.revision), backlog: num(x.backlog) })),
    })),
    workerRestarts: Number(s.workerRestarts),
    invocations: Number(s.invocations),
    errors: Number(s.errors),
    timeouts: Number(s.timeouts),
    retryAtMs: Number(s.retryAtMs ?? 0),
    deadLettered: Number(s.deadLettered ?? 0),
    runsIn: String(s.runsIn ?? ''),
    ...(s.resourcesMeasured ? { resources: { cpuSeconds: Number(s.cpuSeconds ?? 0), rssBytes: Number(s.rssBytes ?? 0), peakRssBytes: Number(s.peakRssBytes ?? 0) } } : {}),
  };
}

function num(v: unknown): number {
  const n = Number(v ?? 0);
  return Number.isFinite(n) ? n : 0;
}

function nums(v: unknown): number[] {
  return Array.isArray(v) ? v.map(num) : [];
}

/** Decodes a Cluster.Status response (the client library's decoder). */
export const nodeReport: (m: StatusResponseMsg) => NodeReport = nodeStatus;

function poolSpec(p: Record<string, unknown>): PoolSpec {
  return {
    name: String(p.name ?? ''),
    shards: num(p.shards),
    replicas: num(p.replicas),
    ...(typeof p.affinity === 'string' ? { affinity: p.affinity } : {}),
    ...(p.retentionMs !== undefined && p.retentionMs !== null ? { retentionMs: num(p.retentionMs) } : {}),
    state: p.state === 'creating' || p.state === 'deleting' ? p.state : 'active',
  };
}

function parseJsonObject(json: string, what: string, endpoint: string | undefined): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(json || '{}');
  } catch (e) {
    throw new KvError(grpc.status.INTERNAL, `${endpoint ?? 'the node'} sent a malformed ${what} (${(e as Error).message}); check that node's version and log`, { endpoint });
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new KvError(grpc.status.INTERNAL, `${endpoint ?? 'the node'} sent a ${what} that is not a JSON object; check that node's version and log`, { endpoint });
  }
  return raw as Record<string, unknown>;
}

/** Decodes the JSON cluster map of a GetShardMap response (`{epoch, members, metaVoters, pools, shards, nextGroup}`). */
export function parseShardMap(epoch: number, json: string, endpoint?: string): ClusterMap {
  const o = parseJsonObject(json, 'cluster map', endpoint);
  const list = (v: unknown): Record<string, unknown>[] => (Array.isArray(v) ? v.filter((x): x is Record<string, unknown> => typeof x === 'object' && x !== null) : []);
  return {
    epoch: epoch || num(o.epoch),
    members: list(o.members).map((m): MemberInfo => ({ id: num(m.id), address: String(m.address ?? ''), state: m.state === 'removing' ? 'removing' : 'active' })),
    metaVoters: nums(o.metaVoters),
    pools: list(o.pools).map(poolSpec),
    shards: list(o.shards).map(
      (x): ShardInfo => ({
        group: num(x.group),
        pool: String(x.pool ?? ''),
        index: num(x.index),
        replicas: nums(x.replicas),
        initial: nums(x.initial),
        preferredLeader: num(x.preferredLeader),
      }),
    ),
    nextGroup: num(o.nextGroup),
  };
}

/** What {@link AdminClient.list} returns: the registry, every answering node's statuses, and how complete they are. */
export interface ExtensionList {
  readonly records: ExtensionRecordInfo[];
  readonly statuses: ExtensionNodeInfo[];
  readonly metadataLeader: string;
  /** Addresses asked (members and endpoints) that did not answer: their nodes' statuses are missing. */
  readonly unreachable: string[];
  /** Members of the cluster map that did not answer, at their map address or at an endpoint, within the per-node deadline. */
  readonly missingMembers: MissingMember[];
  /** Status entries of registered extensions still `loading` on their node (its registered generation not loaded there yet). */
  readonly loading: number;
  /** No member missing, no endpoint unreachable and no registered extension still loading on an answering node. */
  readonly complete: boolean;
}

/** A member that did not answer ListExtensions, and why. */
export interface MissingMember {
  readonly id: number;
  readonly address: string;
  readonly error: string;
}

/** How long {@link AdminClient.list} waits for each node (they are asked in parallel). */
export const EXT_LIST_NODE_DEADLINE_MS = 10_000;

/** One node's answer to ListExtensions: its id (0 when the node does not send it) and its statuses. */
export interface NodeExtensionAnswer {
  readonly nodeId: number;
  readonly statuses: readonly ExtensionNodeInfo[];
}

/**
 * Every answering node's statuses, each registered extension listed for each node that sent its
 * id: a node with no status of it, or one of an older generation (its registry has not seen the
 * record yet), gets a `loading` entry for the registered generation instead of being left out.
 */
export function withPendingNodes(records: readonly ExtensionRecordInfo[], answers: readonly NodeExtensionAnswer[]): ExtensionNodeInfo[] {
  const out: ExtensionNodeInfo[] = [];
  for (const a of answers) {
    const byName = new Map(a.statuses.map((s) => [s.name, s]));
    for (const s of a.statuses) {
      const rec = a.nodeId > 0 ? records.find((r) => r.name === s.name) : undefined;
      out.push(rec && s.generation < rec.generation ? pendingStatus(a.nodeId, rec, s) : s);
    }
    if (a.nodeId === 0) continue;
    for (const rec of records) if (!byName.has(rec.name)) out.push(pendingStatus(a.nodeId, rec, undefined));
  }
  return out;
}

/** Node `nodeId`'s entry for `rec` while it has not loaded that generation (`older`: what it runs meanwhile). */
function pendingStatus(nodeId: number, rec: ExtensionRecordInfo, older: ExtensionNodeInfo | undefined): ExtensionNodeInfo {
  const base: ExtensionNodeInfo = older ?? { nodeId, name: rec.name, version: rec.version, generation: rec.generation, state: 'loading', error: '', delivering: false, watches: [], workerRestarts: 0, invocations: 0, errors: 0, timeouts: 0, retryAtMs: 0, deadLettered: 0, runsIn: '' };
  const error = older ? `generation ${older.generation} runs on node ${nodeId} until generation ${rec.generation} has loaded there` : `node ${nodeId} has not seen generation ${rec.generation} yet (its registry lags)`;
  return { ...base, version: rec.version, generation: rec.generation, state: 'loading', error };
}

/** Admin operations against a cluster. */
export class AdminClient {
  private readonly stubs = new Map<string, Stub>();
  private readonly clusterStubs = new Map<string, ClusterStub>();

  private readonly healthStubs = new Map<string, HealthStub>();

  private readonly creds: grpc.ChannelCredentials;

  constructor(private readonly opts: AdminClientOptions) {
    if (opts.endpoints.length === 0) throw new Error('AdminClient: no endpoints');
    const tls = opts.tls;
    this.creds =
      opts.credentials ??
      (tls ? grpc.credentials.createSsl(tls.rootCert ?? null, tls.privateKey ?? null, tls.certChain ?? null) : grpc.credentials.createInsecure());
  }

  private stub(address: string): Stub {
    let s = this.stubs.get(address);
    if (!s) {
      s = new AdminStubClient(address, this.creds, {
        'grpc.max_send_message_length': 8 << 20,
      }) as unknown as Stub;
      this.stubs.set(address, s);
    }
    return s;
  }

  private clusterStub(address: string): ClusterStub {
    let s = this.clusterStubs.get(address);
    if (!s) {
      s = new ClusterStubClient(address, this.creds);
      this.clusterStubs.set(address, s);
    }
    return s;
  }

  private md(): grpc.Metadata {
    const m = new grpc.Metadata();
    if (this.opts.token !== undefined) m.set(AUTHORIZATION_METADATA, bearer(this.opts.token));
    return m;
  }

  private deadline(): Date {
    return new Date(Date.now() + (this.opts.deadlineMs ?? 60_000));
  }

  private unary<T>(address: string, method: string, req: unknown, deadlineMs?: number): Promise<T> {
    return new Promise((resolve, reject) => {
      (this.stub(address)[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void)(
        req,
        this.md(),
        { deadline: deadlineMs === undefined ? this.deadline() : new Date(Date.now() + deadlineMs) },
        (e, r) => (e ? reject(serviceCallError(e, address, [META_LEADER_METADATA])) : resolve(r as T)),
      );
    });
  }

  /**
   * The registry and every reachable node's status of each extension. Every member of the cluster
   * map (and every endpoint) is asked in parallel, each within `perNodeDeadlineMs` (default
   * {@link EXT_LIST_NODE_DEADLINE_MS}), so a dead or frozen node costs one deadline, not a hang.
   * A node that has not loaded an extension's registered generation yet is listed as `loading`
   * (by the node itself, or here when its registry has not even seen the record); `loading`
   * counts those entries, `missingMembers` names the members that did not answer and
   * `unreachable` the addresses: the list is complete when all are empty (`complete`). Nothing is
   * left out silently. Without a map (no node serves one), only the endpoints are asked.
   */
  async list(o: { perNodeDeadlineMs?: number } = {}): Promise<ExtensionList> {
    const perNodeMs = o.perNodeDeadlineMs ?? EXT_LIST_NODE_DEADLINE_MS;
    const map = await this.newestMap(perNodeMs);
    const members = map?.members ?? [];
    const addresses = [...new Set([...members.map((m) => m.address), ...this.opts.endpoints])];
    type Answer = { records: ExtensionRecordInfo[]; metadataLeader: string; answer: NodeExtensionAnswer } | { error: unknown };
    const results = await Promise.all(
      addresses.map(async (ep): Promise<Answer> => {
        try {
          const r = await this.unary<{ records?: Record<string, unknown>[]; statuses?: Record<string, unknown>[]; metadataLeader?: string; nodeId?: number }>(ep, 'listExtensions', {}, perNodeMs);
          return { records: (r.records ?? []).map(fromRecord), metadataLeader: r.metadataLeader ?? '', answer: { nodeId: num(r.nodeId), statuses: (r.statuses ?? []).map(fromStatus) } };
        } catch (error) {
          return { error };
        }
      }),
    );
    let records: ExtensionRecordInfo[] | undefined;
    let metadataLeader = '';
    const answers: NodeExtensionAnswer[] = [];
    const answeredIds = new Set<number>();
    const answeredAddresses = new Set<string>();
    const errors = new Map<string, string>();
    const unreachable: string[] = [];
    let lastError: unknown;
    results.forEach((r, i) => {
      const ep = addresses[i]!;
      if ('error' in r) {
        const e = r.error;
        if (e instanceof KvError && (e.code === 'UNAUTHENTICATED' || e.code === 'PERMISSION_DENIED')) throw e;
        unreachable.push(ep);
        errors.set(ep, e instanceof Error ? e.message : String(e));
        lastError = e;
        return;
      }
      answeredAddresses.add(ep);
      records ??= r.records;
      if (r.metadataLeader) metadataLeader = r.metadataLeader;
      // A node reached at its map address and at an endpoint answers once.
      if (r.answer.nodeId > 0 && answeredIds.has(r.answer.nodeId)) return;
      if (r.answer.nodeId > 0) answeredIds.add(r.answer.nodeId);
      answers.push(r.answer);
    });
    if (!records) throw lastError instanceof Error ? lastError : new KvError(grpc.status.UNAVAILABLE, 'no node answered');
    const missingMembers = members
      .filter((m) => !answeredIds.has(m.id) && !answeredAddresses.has(m.address))
      .map((m) => ({ id: m.id, address: m.address, error: errors.get(m.address) ?? 'did not answer' }));
    const statuses = withPendingNodes(records, answers);
    const loading = statuses.filter((s) => s.state === 'loading' && records!.some((r) => r.name === s.name)).length;
    // A member reached at an endpoint (another name for it) is not unreachable for missing its map address.
    const stillUnreachable = unreachable.filter((a) => !members.some((m) => m.address === a && answeredIds.has(m.id)));
    return { records, statuses, metadataLeader, unreachable: stillUnreachable, missingMembers, loading, complete: loading === 0 && stillUnreachable.length === 0 && missingMembers.length === 0 };
  }

  /** The newest cluster map the endpoints serve, asked in parallel within `deadlineMs`; undefined when none serves one. */
  private async newestMap(deadlineMs: number): Promise<ClusterMap | undefined> {
    const maps = await Promise.all(
      this.opts.endpoints.map((ep) =>
        this.clusterCall<GetShardMapResponseMsg>(ep, 'getShardMap', deadlineMs).then(
          (r) => parseShardMap(num(r.epoch), r.mapJson ?? '', ep),
          () => undefined,
        ),
      ),
    );
    let newest: ClusterMap | undefined;
    for (const m of maps) if (m && (!newest || m.epoch > newest.epoch)) newest = m;
    return newest;
  }

  /**
   * Waits until every reachable node has loaded generation `generation` of `name` (or a later
   * one), running or failed, or until `deadlineMs` (ms since the epoch); polls {@link list}.
   * `complete` is false when a node failed it, still loads it at the deadline, or did not answer.
   */
  async waitLoaded(name: string, generation: number, deadlineMs: number): Promise<{ statuses: ExtensionNodeInfo[]; unreachable: string[]; complete: boolean }> {
    for (;;) {
      const l = await this.list();
      const statuses = l.statuses.filter((s) => s.name === name);
      const settled = statuses.every((s) => s.generation >= generation && s.state !== 'loading');
      if ((settled && statuses.length > 0) || Date.now() >= deadlineMs) {
        return { statuses, unreachable: l.unreachable, complete: settled && statuses.length > 0 && l.unreachable.length === 0 && statuses.every((s) => s.state !== 'failed') };
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private async metaLeader(): Promise<string> {
    const l = await this.list();
    return l.metadataLeader || this.opts.endpoints[0]!;
  }

  /** Uploads a package (.tgz bytes); resolves once the receiving node has loaded it. */
  async load(tgz: Uint8Array, o: LoadExtensionOptions = {}): Promise<{ record: ExtensionRecordInfo | undefined; status: ExtensionNodeInfo }> {
    let target = await this.metaLeader();
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.upload(target, tgz, o);
      } catch (e) {
        const leader = e instanceof KvError ? e.leader : undefined;
        if (e instanceof KvError && e.code === 'UNAVAILABLE' && attempt < 5) {
          await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
          target = leader ?? (await this.metaLeader());
          continue;
        }
        throw e;
      }
    }
  }

  private upload(address: string, tgz: Uint8Array, o: LoadExtensionOptions): Promise<{ record: ExtensionRecordInfo | undefined; status: ExtensionNodeInfo }> {
    return new Promise((resolve, reject) => {
      const call = (this.stub(address).loadExtension as (md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { record?: Record<string, unknown>; status?: Record<string, unknown> }) => void) => grpc.ClientWritableStream<unknown>)(
        this.md(),
        { deadline: this.deadline() },
        (e, r) => {
          if (e) return reject(serviceCallError(e, address, [META_LEADER_METADATA]));
          resolve({ record: r?.record ? fromRecord(r.record) : undefined, status: fromStatus(r?.status ?? {}) });
        },
      );
      call.write({
        header: {
          name: o.name ?? '',
          configJson: JSON.stringify(o.config ?? {}),
          inProcess: o.inProcess ?? false,
          isolation: o.isolation ?? '',
          size: tgz.length,
          maxRestartsPerMinute: o.maxRestartsPerMinute ?? 0,
          pauseMs: o.pauseMs ?? 0,
          role: o.role ?? '',
          from: o.from === undefined ? '' : String(o.from),
        },
      });
      for (let off = 0; off < tgz.length; off += UPLOAD_CHUNK) call.write({ chunk: Buffer.from(tgz.subarray(off, Math.min(tgz.length, off + UPLOAD_CHUNK))) });
      call.end();
    });
  }

  /** Resumes a paused extension on every node at once; resolves false when it is not loaded. */
  async resume(name: string): Promise<{ loaded: boolean; wasPaused: boolean }> {
    let target = await this.metaLeader();
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.unary<{ wasPaused?: boolean }>(target, 'resumeExtension', { name });
        return { loaded: true, wasPaused: r.wasPaused === true };
      } catch (e) {
        if (e instanceof KvError && e.code === 'NOT_FOUND') return { loaded: false, wasPaused: false };
        if (e instanceof KvError && e.code === 'UNAVAILABLE' && attempt < 5) {
          await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
          target = e.leader ?? (await this.metaLeader());
          continue;
        }
        throw e;
      }
    }
  }

  /** Unloads an extension everywhere; resolves false when it was not loaded. */
  async unload(name: string, o: { purge?: boolean } = {}): Promise<boolean> {
    let target = await this.metaLeader();
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.unary<{ unloaded?: boolean }>(target, 'unloadExtension', { name, purge: o.purge === true });
        return r.unloaded === true;
      } catch (e) {
        if (e instanceof KvError && e.code === 'NOT_FOUND') return false;
        if (e instanceof KvError && e.code === 'UNAVAILABLE' && attempt < 5) {
          await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
          target = e.leader ?? (await this.metaLeader());
          continue;
        }
        throw e;
      }
    }
  }

  /**
   * Sends a cluster change to the metadata leader: to the first endpoint, then wherever its
   * `kv-meta-leader` hint points (the next endpoint when there is none). Retried only when the
   * change was certainly not applied (a redirect, no leader yet, no connection); BUSY and every
   * other error are the caller's to handle.
   */
  private async onMetaLeader<T>(method: string, req: unknown): Promise<T> {
    const eps = this.opts.endpoints;
    let next = 0;
    let target = eps[next]!;
    const attempts = Math.max(6, 2 * eps.length);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.unary<T>(target, method, req);
      } catch (e) {
        const retry = e instanceof KvError && e.code === 'UNAVAILABLE' && e.retrySafe && !isBusy(e) && attempt < attempts;
        if (!retry) throw e;
        const to = e.leader && e.leader !== target ? e.leader : eps[++next % eps.length]!;
        if (!e.leader || e.leader === target) await new Promise((r) => setTimeout(r, Math.min(1_000, 100 * attempt)));
        target = to;
      }
    }
  }

  /** Creates an object pool; resolves once it serves traffic, with the pool and the map epoch that created it. */
  async createPool(req: CreatePoolRequest): Promise<{ pool: PoolSpec; epoch: number }> {
    const r = await this.onMetaLeader<{ poolJson?: string; epoch?: number }>('createPool', {
      name: req.name,
      shards: req.shards,
      replicas: req.replicas ?? 0,
      affinity: req.affinity ?? '',
      retentionMs: req.retentionMs ?? 0,
    });
    return { pool: poolSpec(parseJsonObject(r.poolJson ?? '', 'pool', undefined)), epoch: num(r.epoch) };
  }

  /**
   * Adds member `id` with client `address` and peer `peerAddress` (its Raft listener, host:port);
   * it receives replicas as learners, then votes.
   */
  async addMember(id: number, address: string, peerAddress?: string): Promise<{ epoch: number }> {
    const r = await this.onMetaLeader<{ epoch?: number }>('addMember', { id, address, ...(peerAddress !== undefined ? { peerAddress } : {}) });
    return { epoch: num(r.epoch) };
  }

  /** Starts removing member `id`: its replicas move elsewhere, then it leaves the map. */
  async removeMember(id: number): Promise<{ epoch: number }> {
    const r = await this.onMetaLeader<{ epoch?: number }>('removeMember', { id });
    return { epoch: num(r.epoch) };
  }

  /** The node's grpc.health.v1 answer for the whole server (`service: ""`); undefined when it does not answer. */
  private async healthOf(address: string, deadlineMs: number): Promise<HealthStatus | undefined> {
    let stub = this.healthStubs.get(address);
    if (!stub) {
      stub = new HealthStubClient(address, this.creds);
      this.healthStubs.set(address, stub);
    }
    const s = stub;
    return new Promise((resolve) => {
      s.check({ service: '' }, new grpc.Metadata(), { deadline: new Date(Date.now() + deadlineMs) }, (e, r) => resolve(e ? undefined : r?.status));
    });
  }

  private clusterCall<T>(address: string, method: 'status' | 'getShardMap', deadlineMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      (this.clusterStub(address)[method] as (r: object, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void)(
        {},
        new grpc.Metadata(),
        { deadline: new Date(Date.now() + deadlineMs) },
        (e, r) => (e ? reject(serviceCallError(e, address, [META_LEADER_METADATA])) : resolve(r as T)),
      );
    });
  }

  /** The cluster map of the first endpoint that answers (Cluster.GetShardMap; no token needed). */
  async shardMap(): Promise<ClusterMap> {
    let lastError: unknown;
    for (const ep of this.opts.endpoints) {
      try {
        const r = await this.clusterCall<GetShardMapResponseMsg>(ep, 'getShardMap', this.opts.deadlineMs ?? 60_000);
        return parseShardMap(num(r.epoch), r.mapJson ?? '', ep);
      } catch (e) {
        lastError = e instanceof KvError && e.code === 'UNIMPLEMENTED' ? new KvError(e.grpcCode, `${ep} does not serve the shard map (GetShardMap): upgrade it`, { endpoint: ep }) : e;
      }
    }
    throw lastError instanceof Error ? lastError : new KvError(grpc.status.UNAVAILABLE, 'no endpoint answered');
  }

  /**
   * The cluster map and every member's Cluster.Status, asked in parallel with a short deadline
   * (`deadlineMs`, default {@link CLUSTER_STATUS_DEADLINE_MS}). The endpoints are asked too: a
   * member whose map address does not answer from here (NAT, port mapping, another name) still
   * counts as up when an endpoint answers with its node id. Nodes are the map's members in id
   * order, then endpoints that are no member (or did not answer) — all of them when the map has
   * no members yet or the nodes do not serve it.
   */
  async clusterStatus(o: { deadlineMs?: number } = {}): Promise<ClusterStatus> {
    let map: ClusterMap;
    try {
      map = await this.shardMap();
    } catch (e) {
      if (!(e instanceof KvError && e.code === 'UNIMPLEMENTED')) throw e;
      map = emptyMap();
    }
    const deadlineMs = o.deadlineMs ?? Math.min(this.opts.deadlineMs ?? CLUSTER_STATUS_DEADLINE_MS, CLUSTER_STATUS_DEADLINE_MS);
    const addresses = [...new Set([...map.members.map((m) => m.address), ...this.opts.endpoints])];
    const answers = new Map<string, { status: NodeReport } | { error: KvError }>();
    const health = new Map<string, HealthStatus>();
    await Promise.all([
      ...addresses.map(async (address) => {
        const h = await this.healthOf(address, deadlineMs);
        if (h) health.set(address, h);
      }),
      ...addresses.map(async (address) => {
        try {
          answers.set(address, { status: nodeReport(await this.clusterCall<StatusResponseMsg>(address, 'status', deadlineMs)) });
        } catch (e) {
          answers.set(address, { error: e instanceof KvError ? e : new KvError(grpc.status.UNKNOWN, String(e), { endpoint: address }) });
        }
      }),
    ]);
    const used = new Set<string>();
    const nodes: ClusterNodeReport[] = map.members.map((m) => {
      const own = answers.get(m.address);
      if (own && 'status' in own) {
        used.add(m.address);
        return { id: m.id, address: m.address, status: own.status };
      }
      const viaEndpoint = this.opts.endpoints.find((ep) => {
        const a = answers.get(ep);
        return !used.has(ep) && a !== undefined && 'status' in a && a.status.nodeId === m.id;
      });
      if (viaEndpoint) {
        used.add(viaEndpoint);
        used.add(m.address);
        const h = health.get(viaEndpoint);
        return { id: m.id, address: m.address, status: (answers.get(viaEndpoint) as { status: NodeReport }).status, ...(h ? { health: h } : {}) };
      }
      used.add(m.address);
      return { id: m.id, address: m.address, error: (own as { error: KvError } | undefined)?.error ?? new KvError(grpc.status.UNKNOWN, 'not asked', { endpoint: m.address }) };
    });
    const memberIds = new Set(map.members.map((m) => m.id));
    for (const ep of this.opts.endpoints) {
      if (used.has(ep)) continue;
      used.add(ep);
      const a = answers.get(ep)!;
      if ('status' in a) {
        if (!memberIds.has(a.status.nodeId)) nodes.push({ id: a.status.nodeId, address: ep, status: a.status });
      } else nodes.push({ id: 0, address: ep, error: a.error });
    }
    const withHealth = nodes.map((n) => {
      const h = n.health ?? health.get(n.address);
      return h ? { ...n, health: h } : n;
    });
    return { map, nodes: withHealth };
  }

  /** Closes every channel. */
  close(): void {
    for (const s of this.stubs.values()) s.close();
    this.stubs.clear();
    for (const s of this.clusterStubs.values()) s.close();
    this.clusterStubs.clear();
    for (const s of this.healthStubs.values()) s.close();
    this.healthStubs.clear();
  }
}

/** A cluster change refused because another is in progress (`kv-reason: BUSY`; older servers only say so in the message). */
function isBusy(e: KvError): boolean {
  return e.reason !== undefined ? e.reason === 'BUSY' : e.message.startsWith('BUSY');
}

