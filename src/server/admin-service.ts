/**
 * The gRPC Admin service (proto/kvcascade/v1/admin.proto): extension load/unload/list behind
 * the admin token, with load and unload sent to the metadata group's leader.
 */
import * as grpc from '@grpc/grpc-js';
import { timingSafeEqual, createHash } from 'node:crypto';
import { loadProtos } from './proto.js';

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
  }[];
  workerRestarts: number;
  invocations: number;
  errors: number;
  timeouts: number;
}

/** What the Admin service calls (implemented by the node's extension manager). */
export interface AdminBackend {
  readonly nodeId: number;
  /** Whether this node leads the metadata group (load and unload must run there). */
  isMetadataLeader(): boolean;
  metadataLeaderAddress(): string | undefined;
  load(tgz: Uint8Array, opts: { name?: string; config?: Record<string, unknown>; inProcess?: boolean }): Promise<AdminExtensionStatus>;
  unload(name: string): Promise<boolean>;
  records(): AdminExtensionRecord[];
  statuses(): AdminExtensionStatus[];
}

/** Options of the Admin service. */
export interface AdminServiceOptions {
  /** The admin token; when unset, every admin call is refused. */
  readonly adminToken?: string;
  /** Largest package accepted. */
  readonly maxPackageBytes?: number;
  readonly log?: { warn(obj: object, msg: string): void; error(obj: object, msg: string): void };
}

const adminPackage = loadProtos(['kvcascade/v1/admin.proto']);
/** Service definition of kvcascade.v1.Admin. */
export const adminServiceDefinition = adminPackage['kvcascade.v1.Admin'] as grpc.ServiceDefinition;
/** Client constructor of kvcascade.v1.Admin. */
export const AdminStubClient = (grpc.loadPackageDefinition(adminPackage) as unknown as {
  kvcascade: { v1: { Admin: grpc.ServiceClientConstructor } };
}).kvcascade.v1.Admin;

function statusError(code: grpc.status, details: string, md?: Record<string, string>): grpc.ServiceError {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md ?? {})) metadata.set(k, v);
  return Object.assign(new Error(details), { code, details, metadata }) as grpc.ServiceError;
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Wire form of a record. */
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
    })),
    workerRestarts: s.workerRestarts,
    invocations: s.invocations,
    errors: s.errors,
    timeouts: s.timeouts,
  };
}

/** Registers the Admin service on `server`. */
export function addAdminService(server: grpc.Server, backend: AdminBackend, opts: AdminServiceOptions = {}): void {
  const maxBytes = opts.maxPackageBytes ?? 32 << 20;
  const expected = opts.adminToken ? digest(opts.adminToken) : undefined;

  const authorize = (md: grpc.Metadata): grpc.ServiceError | undefined => {
    if (!expected) {
      return statusError(grpc.status.PERMISSION_DENIED, 'admin operations are disabled on this node: start kvd with --admin-token');
    }
    const header = String(md.get('authorization')[0] ?? '');
    const m = /^Bearer (.+)$/.exec(header);
    if (!m) return statusError(grpc.status.UNAUTHENTICATED, 'admin token required (metadata "authorization: Bearer <token>"; kvctl --admin-token)');
    if (!timingSafeEqual(digest(m[1]!), expected)) return statusError(grpc.status.PERMISSION_DENIED, 'wrong admin token');
    return undefined;
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
    if (name === 'ExtensionLoadError' || name === 'PackageError') {
      return statusError(grpc.status.FAILED_PRECONDITION, `${err.code ? `${err.code}: ` : ''}${err.message}`);
    }
    if (name === 'NotLeaderError') return statusError(grpc.status.UNAVAILABLE, err.message, { 'kv-retry-safe': '1' });
    if (name === 'DeadlineError') return statusError(grpc.status.DEADLINE_EXCEEDED, err.message);
    opts.log?.error({ err: String(e) }, 'admin call failed');
    return statusError(grpc.status.INTERNAL, err.message ?? String(e));
  };

  server.addService(adminServiceDefinition, {
    loadExtension: (call: grpc.ServerReadableStream<Record<string, unknown>, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const denied = authorize(call.metadata) ?? notMetaLeader();
      if (denied) {
        call.on('data', () => {});
        call.on('error', () => {});
        cb(denied);
        return;
      }
      let header: { name?: string; configJson?: string; inProcess?: boolean; size?: number } | undefined;
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
        backend
          .load(new Uint8Array(Buffer.concat(parts)), { ...(header.name ? { name: header.name } : {}), config, inProcess: header.inProcess ?? false })
          .then((status) => {
            if (status.state === 'failed') return fail(statusError(grpc.status.FAILED_PRECONDITION, status.error ?? 'extension failed to load'));
            const record = backend.records().find((r) => r.name === status.name);
            cb(null, { record: record ? recordToWire(record) : undefined, status: statusToWire(backend.nodeId, status) });
          })
          .catch((e: unknown) => fail(failure(e)));
      });
    },
    unloadExtension: (call: grpc.ServerUnaryCall<{ name?: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const denied = authorize(call.metadata) ?? notMetaLeader();
      if (denied) return cb(denied);
      const name = call.request.name ?? '';
      if (!name) return cb(statusError(grpc.status.INVALID_ARGUMENT, 'extension name required'));
      backend.unload(name).then(
        (unloaded) => (unloaded ? cb(null, { unloaded }) : cb(statusError(grpc.status.NOT_FOUND, `extension ${name} is not loaded`))),
        (e: unknown) => cb(failure(e)),
      );
    },
    listExtensions: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const denied = authorize(call.metadata);
      if (denied) return cb(denied);
      cb(null, {
        records: backend.records().map(recordToWire),
        statuses: backend.statuses().map((s) => statusToWire(backend.nodeId, s)),
        metadataLeader: backend.metadataLeaderAddress() ?? '',
      });
    },
  });
}
