/**
 * The gRPC Admin service (proto/kvcascade/v1/admin.proto): extension load/unload/list and cluster
 * administration (create pool, add and remove members) behind the admin token, with every change
 * sent to the metadata group's leader.
 */
import * as grpc from '@grpc/grpc-js';
import { MAX_NODE_ID, MAX_POOL_SHARDS, MAX_REPLICAS, isIntIn, type PoolSpec, type ShardingErrorCode } from '../sharding/index.js';
import { AdminTokenCheck } from '../wire/auth.js';
import { META_REASON, META_RETRY_SAFE } from '../wire/metadata.js';
import { AuthError, type AccessControl } from '../auth/access-control.js';
import { authErrorToStatus, authorizationOf, certNameOf, type CredentialCall } from './auth-service.js';
import { adminServiceDefinition } from '../wire/admin-proto.js';

/** One registered extension as the admin API reports it. */
export interface AdminExtensionRecord {
  name: string;
  version: string;
  generation: number;
  sha256: string;
  size: number;
  config: Record<string, unknown>;
  native?: string;
  inProcess?: boolean;
  maxRestartsPerMinute?: number;
  pauseMs?: number;
  /** Where the lambdas run ('worker', 'process', 'in-process'); absent: the node's default. */
  isolation?: string;
  loadedAtMs: number;
}

/** One node's view of one extension. */
export interface AdminExtensionStatus {
  name: string;
  version: string;
  generation: number;
  state: string;
  error?: string;
  delivering: boolean;
  watches: readonly {
    prefix: string;
    mode: string;
    stats?: { invocations: number; errors: number; retries: number; deadLettered: number; backlog: number; cursor: number; lastLatencyMs: number } | undefined;
    /** Per data shard delivered here: its cursor, backlog and the shard's revision. */
    byShard?: readonly { shard: number; stats: { cursor: number; backlog: number }; revision: number }[];
  }[];
  workerRestarts: number;
  invocations: number;
  errors: number;
  timeouts: number;
  retryAtMs?: number;
  deadLettered?: number;
  /** Where its lambdas run on this node now ('worker', 'process', 'in-process'); absent while no runner is up. */
  runsIn?: string;
  /** CPU and memory of its process on this node (process isolation only; absent where not measured). */
  resources?: { cpuSeconds: number; rssBytes: number; peakRssBytes: number };
}

/** A pool to create, as the CreatePool RPC hands it to the backend (shapes checked, semantics not). */
export interface CreatePoolInput {
  /** The key prefix, e.g. `/cameras`. */
  name: string;
  shards: number;
  /** Replicas per shard; absent = the backend's default (min(3, members)). */
  replicas?: number;
  /** Regular expression whose first capture group is hashed; absent = the whole key. */
  affinity?: string;
  /** Retention of old versions; absent = the node's default. */
  retentionMs?: number;
}

/** What the Admin service calls (implemented by the node's extension manager and cluster administration). */
export interface AdminBackend {
  readonly nodeId: number;
  /** Whether this node leads the metadata group (load, unload and cluster changes must run there). */
  isMetadataLeader(): boolean;
  /** Client address of the metadata group's leader, when known. */
  metadataLeaderAddress(): string | undefined;
  /** Cluster administration (pools and members); all run on the metadata leader. Throw ShardingError on invalid requests. */
  createPool(req: CreatePoolInput, deadlineMs: number): Promise<{ pool: PoolSpec; epoch: number }>;
  /**
   * Adds a member at client `address` and peer `peerAddress` (see {@link AdminBackend.createPool}
   * for errors); `deadlineMs` is absolute (ms since the epoch).
   */
  addMember(id: number, address: string, deadlineMs: number, peerAddress?: string): Promise<{ epoch: number }>;
  /** Starts removing a member (its replicas move away first). */
  removeMember(id: number, deadlineMs: number): Promise<{ epoch: number }>;
  load(tgz: Uint8Array, opts: { name?: string; config?: Record<string, unknown>; inProcess?: boolean; isolation?: 'worker' | 'process' | 'in-process'; maxRestartsPerMinute?: number; pauseMs?: number; from?: 'now' | number }): Promise<AdminExtensionStatus>;
  /** Unloads; `purge` also forgets the delivery cursors. False when it was not loaded. */
  unload(name: string, opts?: { purge?: boolean }): Promise<boolean>;
  /** Resumes a paused extension on every node; resolves whether it was paused here, undefined when not loaded. */
  resume?(name: string): Promise<boolean | undefined>;
  records(): AdminExtensionRecord[];
  statuses(): AdminExtensionStatus[];
}

/** Options of the Admin service. */
export interface AdminServiceOptions {
  /** The admin token; when unset, every admin call is refused. */
  readonly adminToken?: string;
  /** Largest package accepted. */
  readonly maxPackageBytes?: number;
  /** Deadline of a cluster change when the caller sets none (default 60 s). */
  readonly defaultDeadlineMs?: number;
  readonly log?: { warn(obj: object, msg: string): void; error(obj: object, msg: string): void };
  /**
   * The node's access control: with it on, every admin call needs root (the admin token, or a
   * user holding the root role); LoadExtension records the role its lambdas act with.
   */
  readonly access?: AccessControl;
}


function statusError(code: grpc.status, details: string, md?: Record<string, string>): grpc.ServiceError {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md ?? {})) metadata.set(k, v);
  return Object.assign(new Error(details), { code, details, metadata }) as grpc.ServiceError;
}

/** Wire form of a record. */
/** The config an extension listing shows a caller without the admin token. */
export const REDACTED_CONFIG = '"(config shown with the admin token)"';

function recordToWire(r: AdminExtensionRecord): Record<string, unknown> {
  return {
    name: r.name,
    version: r.version,
    generation: r.generation,
    sha256: r.sha256,
    size: r.size,
    configJson: JSON.stringify(r.config ?? {}),
    native: r.native ?? '',
    inProcess: r.inProcess ?? false,
    maxRestartsPerMinute: r.maxRestartsPerMinute ?? 0,
    pauseMs: r.pauseMs ?? 0,
    isolation: r.isolation ?? '',
    loadedAtMs: r.loadedAtMs,
  };
}

/** Wire form of a status. */
function statusToWire(nodeId: number, s: AdminExtensionStatus): Record<string, unknown> {
  return {
    nodeId,
    name: s.name,
    version: s.version,
    generation: s.generation,
    state: s.state,
    error: s.error ?? '',
    delivering: s.delivering,
    watches: s.watches.map((w) => ({
      prefix: w.prefix,
      mode: w.mode,
      invocations: w.stats?.invocations ?? 0,
      errors: w.stats?.errors ?? 0,
      retries: w.stats?.retries ?? 0,
      deadLettered: w.stats?.deadLettered ?? 0,
      backlog: w.stats?.backlog ?? 0,
      cursor: w.stats?.cursor ?? 0,
      lastLatencyMs: w.stats?.lastLatencyMs ?? 0,
      shards: (w.byShard ?? []).map((b) => ({ shard: b.shard, cursor: b.stats.cursor, revision: b.revision, backlog: b.stats.backlog })),
    })),
    workerRestarts: s.workerRestarts,
    invocations: s.invocations,
    errors: s.errors,
    timeouts: s.timeouts,
    retryAtMs: s.retryAtMs ?? 0,
    deadLettered: s.deadLettered ?? 0,
    runsIn: s.runsIn ?? '',
    resourcesMeasured: s.resources !== undefined,
    cpuSeconds: s.resources?.cpuSeconds ?? 0,
    rssBytes: s.resources?.rssBytes ?? 0,
    peakRssBytes: s.resources?.peakRssBytes ?? 0,
  };
}

/** The status code of each sharding error, and what the caller should do about it (appended to the message). */
const SHARDING_STATUS: Record<ShardingErrorCode, { readonly code: grpc.status; readonly hint: string }> = {
  INVALID_POOL: { code: grpc.status.INVALID_ARGUMENT, hint: 'check the pool name (a key prefix such as /cameras) and its settings, then retry' },
  POOL_EXISTS: { code: grpc.status.ALREADY_EXISTS, hint: 'choose another name (kvctl pool ls lists the pools)' },
  POOL_NOT_FOUND: { code: grpc.status.NOT_FOUND, hint: 'check the name with kvctl pool ls' },
  POOL_NOT_EMPTY: { code: grpc.status.FAILED_PRECONDITION, hint: 'delete the keys under that prefix first, or choose another prefix' },
  NOT_ENOUGH_MEMBERS: { code: grpc.status.FAILED_PRECONDITION, hint: 'add members first (kvctl member add) or ask for fewer replicas' },
  MEMBER_EXISTS: { code: grpc.status.ALREADY_EXISTS, hint: 'choose an unused id and address (kvctl member ls lists the members)' },
  MEMBER_NOT_FOUND: { code: grpc.status.NOT_FOUND, hint: 'check the id with kvctl member ls' },
  INVALID_MEMBER: { code: grpc.status.INVALID_ARGUMENT, hint: `check the member id (1 to ${MAX_NODE_ID}), its host:port address and its state (kvctl member ls), then retry` },
  BUSY: { code: grpc.status.UNAVAILABLE, hint: 'retry once the change in progress has finished (kvctl status shows progress)' },
  INVALID_MAP: { code: grpc.status.INTERNAL, hint: "the stored cluster map is inconsistent: check the metadata leader's log" },
};

/** Validated input of one cluster change, or the INVALID_ARGUMENT to answer. */
type Parsed<T> = { ok: true; value: T } | { ok: false; error: grpc.ServiceError };

function invalid<T>(message: string): Parsed<T> {
  return { ok: false, error: statusError(grpc.status.INVALID_ARGUMENT, message) };
}

/** Shape checks of a CreatePool request (the backend validates the rest: name syntax, affinity, member count). */
function parseCreatePool(r: Record<string, unknown>): Parsed<CreatePoolInput> {
  const { name, shards, replicas, affinity, retentionMs } = r;
  if (typeof name !== 'string' || name === '') return invalid('pool name required: a key prefix such as /cameras');
  if (!isIntIn(shards, 1, MAX_POOL_SHARDS)) return invalid(`shards must be an integer from 1 to ${MAX_POOL_SHARDS}, got ${String(shards)}`);
  if (replicas !== undefined && !isIntIn(replicas, 0, MAX_REPLICAS)) {
    return invalid(`replicas must be an integer from 1 to ${MAX_REPLICAS} (0 = min(3, members)), got ${String(replicas)}`);
  }
  if (affinity !== undefined && typeof affinity !== 'string') return invalid('affinity must be a string (a regular expression with a capture group)');
  if (retentionMs !== undefined && !isIntIn(retentionMs, 0, Number.MAX_SAFE_INTEGER)) {
    return invalid(`retention_ms must be an integer from 0 to ${Number.MAX_SAFE_INTEGER} (0 = the node's default), got ${String(retentionMs)}`);
  }
  return {
    ok: true,
    value: {
      name,
      shards,
      ...(replicas ? { replicas } : {}),
      ...(affinity ? { affinity } : {}),
      ...(retentionMs ? { retentionMs } : {}),
    },
  };
}

function parseMemberId(id: unknown): Parsed<number> {
  return isIntIn(id, 1, MAX_NODE_ID) ? { ok: true, value: id } : invalid(`member id must be an integer from 1 to ${MAX_NODE_ID}, got ${String(id)}`);
}

function parseAddMember(r: Record<string, unknown>): Parsed<{ id: number; address: string; peerAddress?: string }> {
  const id = parseMemberId(r.id);
  if (!id.ok) return id;
  if (typeof r.address !== 'string' || r.address === '') return invalid("member address required: the node's client host:port");
  const peer = typeof r.peerAddress === 'string' && r.peerAddress !== '' ? { peerAddress: r.peerAddress } : {};
  return { ok: true, value: { id: id.value, address: r.address, ...peer } };
}

/** Registers the Admin service on `server`. */
export function addAdminService(server: grpc.Server, backend: AdminBackend, opts: AdminServiceOptions = {}): void {
  const maxBytes = opts.maxPackageBytes ?? 32 << 20;
  const tokens = new AdminTokenCheck(opts.adminToken);

  const access = opts.access;
  const authorize = (call: CredentialCall): grpc.ServiceError | undefined => {
    if (access) {
      try {
        access.requireRoot(authorizationOf(call), certNameOf(call));
        return undefined;
      } catch (e) {
        if (e instanceof AuthError) return authErrorToStatus(e);
        throw e;
      }
    }
    switch (tokens.check(call.metadata)) {
      case 'ok':
        return undefined;
      case 'disabled':
        return statusError(grpc.status.PERMISSION_DENIED, 'admin operations are disabled on this node: start kvd with --admin-token');
      case 'missing':
        return statusError(grpc.status.UNAUTHENTICATED, 'admin token required (metadata "authorization: Bearer <token>"; kvctl --admin-token)');
      case 'wrong':
        return statusError(grpc.status.PERMISSION_DENIED, 'wrong admin token');
    }
  };
  const notMetaLeader = (): grpc.ServiceError | undefined => {
    if (backend.isMetadataLeader()) return undefined;
    const leader = backend.metadataLeaderAddress();
    return statusError(
      grpc.status.UNAVAILABLE,
      leader ? `this node does not lead the metadata group; send admin changes to ${leader}` : 'no metadata leader elected yet',
      leader ? { 'kv-meta-leader': leader, 'kv-retry-safe': '1' } : { 'kv-retry-safe': '1' },
    );
  };
  const failure = (e: unknown): grpc.ServiceError => {
    const err = e as Error & { code?: string };
    const name = err.name ?? '';
    // A package holding a link, an absolute or `..` path, a device or a FIFO: the upload itself is wrong.
    if (name === 'PackageError' && err.code === 'UNSAFE_ENTRY') return statusError(grpc.status.INVALID_ARGUMENT, `${err.code}: ${err.message}`);
    // Another load of the same extension in progress (or it changed meanwhile): try again later.
    if (name === 'LoadConflictError') return statusError(grpc.status.ABORTED, err.message);
    if (name === 'ExtensionLoadError' || name === 'PackageError') {
      return statusError(grpc.status.FAILED_PRECONDITION, `${err.code ? `${err.code}: ` : ''}${err.message}`);
    }
    if (name === 'NotLeaderError') return statusError(grpc.status.UNAVAILABLE, err.message, { 'kv-retry-safe': '1' });
    if (name === 'DeadlineError') return statusError(grpc.status.DEADLINE_EXCEEDED, err.message);
    opts.log?.error({ err: String(e) }, 'admin call failed');
    return statusError(grpc.status.INTERNAL, err.message ?? String(e));
  };

  const defaultDeadlineMs = opts.defaultDeadlineMs ?? 60_000;
  /** Maps the failure of a cluster change (`what`, e.g. "pool creation") to a status whose message says what to do. */
  const clusterFailure = (e: unknown, what: string): grpc.ServiceError => {
    const err = e as Error & { code?: unknown };
    if (err?.name === 'ShardingError' && typeof err.code === 'string' && Object.hasOwn(SHARDING_STATUS, err.code)) {
      const m = SHARDING_STATUS[err.code as ShardingErrorCode];
      if (err.code === 'INVALID_MAP') opts.log?.error({ err: String(e) }, `${what} failed: the cluster map is inconsistent`);
      return statusError(m.code, `${err.code}: ${err.message}; ${m.hint}`, { [META_REASON]: err.code, ...(err.code === 'BUSY' ? { [META_RETRY_SAFE]: '1' } : {}) });
    }
    if (err?.name === 'DeadlineError') {
      return statusError(grpc.status.DEADLINE_EXCEEDED, `${what} did not finish before the deadline; it may still complete: check kvctl status before retrying`);
    }
    if (err?.name === 'NotLeaderError') {
      const leader = backend.metadataLeaderAddress();
      return statusError(
        grpc.status.UNAVAILABLE,
        `this node lost the metadata leadership during the ${what}, which may or may not have been applied: check kvctl status, then retry${leader ? ` on ${leader}` : ''}`,
        leader ? { 'kv-meta-leader': leader } : undefined,
      );
    }
    opts.log?.error({ err: String(e) }, `${what} failed`);
    return statusError(grpc.status.INTERNAL, `${what} failed: ${err?.message ?? String(e)}; check the metadata leader's log`);
  };
  /** A unary cluster-change handler: token, input shape, metadata leadership, deadline, error mapping. */
  const clusterChange =
    <T, R>(what: string, parse: (req: Record<string, unknown>) => Parsed<T>, run: (input: T, deadlineMs: number) => Promise<R>, toWire: (r: R) => unknown) =>
    (call: grpc.ServerUnaryCall<Record<string, unknown>, unknown>, cb: grpc.sendUnaryData<unknown>): void => {
      const denied = authorize(call);
      if (denied) return cb(denied);
      const parsed = parse(call.request ?? {});
      if (!parsed.ok) return cb(parsed.error);
      const redirect = notMetaLeader();
      if (redirect) return cb(redirect);
      const d = call.getDeadline();
      const clientDeadline = d instanceof Date ? d.getTime() : d;
      const deadlineMs = Number.isFinite(clientDeadline) ? clientDeadline : Date.now() + defaultDeadlineMs;
      let done = false;
      let timer: NodeJS.Timeout | undefined;
      const finish = (e: grpc.ServiceError | null, res?: unknown): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (e) cb(e);
        else cb(null, res);
      };
      timer = setTimeout(
        () => finish(clusterFailure(Object.assign(new Error('deadline exceeded'), { name: 'DeadlineError' }), what)),
        Math.max(0, Math.min(deadlineMs - Date.now(), 2 ** 31 - 1)),
      );
      timer.unref?.();
      let p: Promise<R>;
      try {
        p = run(parsed.value, deadlineMs);
      } catch (e) {
        p = Promise.reject(e);
      }
      p.then(
        (r) => finish(null, toWire(r)),
        (e: unknown) => finish(clusterFailure(e, what)),
      );
    };

  server.addService(adminServiceDefinition, {
    createPool: clusterChange(
      'pool creation',
      parseCreatePool,
      (req, deadlineMs) => backend.createPool(req, deadlineMs),
      (r) => ({ poolJson: JSON.stringify(r.pool), epoch: r.epoch }),
    ),
    addMember: clusterChange(
      'member addition',
      parseAddMember,
      (m, deadlineMs) => backend.addMember(m.id, m.address, deadlineMs, m.peerAddress),
      (r) => ({ epoch: r.epoch }),
    ),
    removeMember: clusterChange(
      'member removal',
      (r) => parseMemberId(r.id),
      (id, deadlineMs) => backend.removeMember(id, deadlineMs),
      (r) => ({ epoch: r.epoch }),
    ),
    loadExtension: (call: grpc.ServerReadableStream<Record<string, unknown>, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const denied = authorize(call) ?? notMetaLeader();
      if (denied) {
        call.on('data', () => {});
        call.on('error', () => {});
        cb(denied);
        return;
      }
      let header: { name?: string; role?: string; configJson?: string; inProcess?: boolean; size?: number; isolation?: string; maxRestartsPerMinute?: number; pauseMs?: number | string; from?: string } | undefined;
      const parts: Buffer[] = [];
      let size = 0;
      let failed = false;
      const fail = (e: grpc.ServiceError) => {
        if (failed) return;
        failed = true;
        cb(e);
      };
      call.on('data', (msg: { header?: typeof header; chunk?: Buffer; part?: string }) => {
        if (failed) return;
        if (msg.header) {
          if (header) return fail(statusError(grpc.status.INVALID_ARGUMENT, 'more than one header'));
          header = msg.header;
          if ((header.size ?? 0) > maxBytes) return fail(statusError(grpc.status.RESOURCE_EXHAUSTED, `package is larger than ${maxBytes} bytes`));
          return;
        }
        if (msg.chunk) {
          if (!header) return fail(statusError(grpc.status.INVALID_ARGUMENT, 'the header must come first'));
          size += msg.chunk.length;
          if (size > maxBytes) return fail(statusError(grpc.status.RESOURCE_EXHAUSTED, `package is larger than ${maxBytes} bytes`));
          parts.push(Buffer.from(msg.chunk));
        }
      });
      call.on('error', () => {
        failed = true;
      });
      call.on('end', () => {
        if (failed) return;
        if (!header) return fail(statusError(grpc.status.INVALID_ARGUMENT, 'missing header'));
        if (header.size && header.size !== size) return fail(statusError(grpc.status.INVALID_ARGUMENT, `expected ${header.size} bytes, got ${size}`));
        let config: Record<string, unknown> = {};
        if (header.configJson) {
          try {
            const parsed = JSON.parse(header.configJson) as unknown;
            if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('config must be a JSON object');
            config = parsed as Record<string, unknown>;
          } catch (e) {
            return fail(statusError(grpc.status.INVALID_ARGUMENT, `bad config: ${(e as Error).message}`));
          }
        }
        const isolation = header.isolation || undefined;
        if (isolation !== undefined && isolation !== 'worker' && isolation !== 'process' && isolation !== 'in-process') {
          return fail(statusError(grpc.status.INVALID_ARGUMENT, `bad isolation ${JSON.stringify(isolation)}: use worker, process or in-process`));
        }
        if (header.inProcess && isolation !== undefined && isolation !== 'in-process') {
          return fail(statusError(grpc.status.INVALID_ARGUMENT, `in_process contradicts isolation ${JSON.stringify(isolation)}`));
        }
        const h = header;
        const fromText = h.from ?? '';
        if (fromText !== '' && fromText !== 'now' && !/^(0|[1-9][0-9]{0,15})$/.test(fromText)) {
          return fail(statusError(grpc.status.INVALID_ARGUMENT, `bad from ${JSON.stringify(fromText)}: use now or a revision`));
        }
        const from = fromText === '' ? undefined : fromText === 'now' ? ('now' as const) : Number(fromText);
        const role = h.role || undefined;
        const name = h.name || undefined;
        const roleDeadline = Date.now() + 30_000;
        // The role first when the name is known, so the new lambdas never run with another one.
        const before = access && name ? access.setExtensionRole(name, role, roleDeadline) : Promise.resolve();
        before
          .then(() => backend.load(new Uint8Array(Buffer.concat(parts)), {
            ...(from !== undefined ? { from } : {}),
            ...(h.name ? { name: h.name } : {}),
            config,
            inProcess: h.inProcess ?? false,
            ...(isolation ? { isolation } : {}),
            ...(h.maxRestartsPerMinute ? { maxRestartsPerMinute: Number(h.maxRestartsPerMinute) } : {}),
            ...(h.pauseMs && Number(h.pauseMs) > 0 ? { pauseMs: Number(h.pauseMs) } : {}),
          }))
          .then(async (status) => {
            if (status.state === 'failed') return fail(statusError(grpc.status.FAILED_PRECONDITION, status.error ?? 'extension failed to load'));
            if (access && !name) await access.setExtensionRole(status.name, role, roleDeadline);
            const record = backend.records().find((r) => r.name === status.name);
            cb(null, { record: record ? recordToWire(record) : undefined, status: statusToWire(backend.nodeId, status) });
          })
          .catch((e: unknown) => fail(e instanceof AuthError ? authErrorToStatus(e) : failure(e)));
      });
    },
    unloadExtension: (call: grpc.ServerUnaryCall<{ name?: string; purge?: boolean }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const denied = authorize(call) ?? notMetaLeader();
      if (denied) return cb(denied);
      const name = call.request.name ?? '';
      if (!name) return cb(statusError(grpc.status.INVALID_ARGUMENT, 'extension name required'));
      backend.unload(name, { purge: call.request.purge === true }).then(
        (unloaded) => (unloaded ? cb(null, { unloaded }) : cb(statusError(grpc.status.NOT_FOUND, `extension ${name} is not loaded`))),
        (e: unknown) => cb(failure(e)),
      );
    },
    resumeExtension: (call: grpc.ServerUnaryCall<{ name?: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const denied = authorize(call) ?? notMetaLeader();
      if (denied) return cb(denied);
      const name = call.request.name ?? '';
      if (!name) return cb(statusError(grpc.status.INVALID_ARGUMENT, 'extension name required'));
      if (!backend.resume) return cb(statusError(grpc.status.UNIMPLEMENTED, 'this node cannot resume extensions'));
      backend.resume(name).then(
        (was) => (was === undefined ? cb(statusError(grpc.status.NOT_FOUND, `extension ${name} is not loaded`)) : cb(null, { wasPaused: was })),
        (e: unknown) => cb(failure(e)),
      );
    },
    listExtensions: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      // Listing needs no token (what runs where, and how it is doing); a wrong token is still
      // refused, and an extension's config (it may hold secrets) is shown to the admin only.
      let admin: boolean;
      if (access?.enabled) {
        // With access control on, listing needs root like every admin call.
        const denied = authorize(call as CredentialCall);
        if (denied) return cb(denied);
        admin = true;
      } else {
        const verdict = tokens.check(call.metadata);
        if (verdict === 'wrong') return cb(authorize(call as CredentialCall)!);
        admin = verdict === 'ok';
      }
      cb(null, {
        records: backend.records().map((r) => (admin ? recordToWire(r) : { ...recordToWire(r), configJson: REDACTED_CONFIG })),
        statuses: backend.statuses().map((s) => statusToWire(backend.nodeId, s)),
        metadataLeader: backend.metadataLeaderAddress() ?? '',
        nodeId: backend.nodeId,
      });
    },
  });
}
