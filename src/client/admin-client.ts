/** A client of the Admin service: upload, replace, unload and inspect extensions (needs the admin token). */
import * as grpc from '@grpc/grpc-js';
import { AdminStubClient } from '../server/admin-service.js';
import { KvError } from './errors.js';

/** A registered extension. */
export interface ExtensionRecordInfo {
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  readonly sha256: string;
  readonly size: number;
  readonly config: Record<string, unknown>;
  readonly native: string;
  readonly inProcess: boolean;
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
}

/** Options of an AdminClient. */
export interface AdminClientOptions {
  readonly endpoints: readonly string[];
  readonly token: string;
  readonly credentials?: grpc.ChannelCredentials;
  readonly deadlineMs?: number;
}

type Stub = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

const UPLOAD_CHUNK = 512 * 1024;

function fromRecord(r: Record<string, unknown>): ExtensionRecordInfo {
  let config: Record<string, unknown> = {};
  try {
    config = JSON.parse(String(r.configJson || '{}')) as Record<string, unknown>;
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
    native: String(r.native ?? ''),
    inProcess: Boolean(r.inProcess),
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
    })),
    workerRestarts: Number(s.workerRestarts),
    invocations: Number(s.invocations),
    errors: Number(s.errors),
    timeouts: Number(s.timeouts),
  };
}

/** Admin operations against a cluster. */
export class AdminClient {
  private readonly stubs = new Map<string, Stub>();

  constructor(private readonly opts: AdminClientOptions) {
    if (opts.endpoints.length === 0) throw new Error('AdminClient: no endpoints');
  }

  private stub(address: string): Stub {
    let s = this.stubs.get(address);
    if (!s) {
      s = new AdminStubClient(address, this.opts.credentials ?? grpc.credentials.createInsecure(), {
        'grpc.max_send_message_length': 8 << 20,
      }) as unknown as Stub;
      this.stubs.set(address, s);
    }
    return s;
  }

  private md(): grpc.Metadata {
    const m = new grpc.Metadata();
    m.set('authorization', `Bearer ${this.opts.token}`);
    return m;
  }

  private deadline(): Date {
    return new Date(Date.now() + (this.opts.deadlineMs ?? 60_000));
  }

  private unary<T>(address: string, method: string, req: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      (this.stub(address)[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void)(
        req,
        this.md(),
        { deadline: this.deadline() },
        (e, r) => (e ? reject(toKvError(e, address)) : resolve(r as T)),
      );
    });
  }

  /** The registry and every reachable node's status of each extension. */
  async list(): Promise<{ records: ExtensionRecordInfo[]; statuses: ExtensionNodeInfo[]; metadataLeader: string; unreachable: string[] }> {
    let records: ExtensionRecordInfo[] | undefined;
    let metadataLeader = '';
    const statuses: ExtensionNodeInfo[] = [];
    const unreachable: string[] = [];
    let lastError: unknown;
    for (const ep of this.opts.endpoints) {
      try {
        const r = await this.unary<{ records?: Record<string, unknown>[]; statuses?: Record<string, unknown>[]; metadataLeader?: string }>(ep, 'listExtensions', {});
        records ??= (r.records ?? []).map(fromRecord);
        if (r.metadataLeader) metadataLeader = r.metadataLeader;
        statuses.push(...(r.statuses ?? []).map(fromStatus));
      } catch (e) {
        if (e instanceof KvError && (e.code === 'UNAUTHENTICATED' || e.code === 'PERMISSION_DENIED')) throw e;
        unreachable.push(ep);
        lastError = e;
      }
    }
    if (!records) throw lastError instanceof Error ? lastError : new KvError(grpc.status.UNAVAILABLE, 'no node answered');
    return { records, statuses, metadataLeader, unreachable };
  }

  private async metaLeader(): Promise<string> {
    const l = await this.list();
    return l.metadataLeader || this.opts.endpoints[0]!;
  }

  /** Uploads a package (.tgz bytes); resolves once the receiving node has loaded it. */
  async load(tgz: Uint8Array, o: { name?: string; config?: Record<string, unknown>; inProcess?: boolean } = {}): Promise<{ record: ExtensionRecordInfo | undefined; status: ExtensionNodeInfo }> {
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

  private upload(address: string, tgz: Uint8Array, o: { name?: string; config?: Record<string, unknown>; inProcess?: boolean }): Promise<{ record: ExtensionRecordInfo | undefined; status: ExtensionNodeInfo }> {
    return new Promise((resolve, reject) => {
      const call = (this.stub(address).loadExtension as (md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { record?: Record<string, unknown>; status?: Record<string, unknown> }) => void) => grpc.ClientWritableStream<unknown>)(
        this.md(),
        { deadline: this.deadline() },
        (e, r) => {
          if (e) return reject(toKvError(e, address));
          resolve({ record: r?.record ? fromRecord(r.record) : undefined, status: fromStatus(r?.status ?? {}) });
        },
      );
      call.write({ header: { name: o.name ?? '', configJson: JSON.stringify(o.config ?? {}), inProcess: o.inProcess ?? false, size: tgz.length } });
      for (let off = 0; off < tgz.length; off += UPLOAD_CHUNK) call.write({ chunk: Buffer.from(tgz.subarray(off, Math.min(tgz.length, off + UPLOAD_CHUNK))) });
      call.end();
    });
  }

  /** Unloads an extension everywhere; resolves false when it was not loaded. */
  async unload(name: string): Promise<boolean> {
    let target = await this.metaLeader();
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.unary<{ unloaded?: boolean }>(target, 'unloadExtension', { name });
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

  close(): void {
    for (const s of this.stubs.values()) s.close();
    this.stubs.clear();
  }
}

function toKvError(e: grpc.ServiceError, endpoint: string): KvError {
  const leader = e.metadata?.get('kv-meta-leader')[0];
  return new KvError(e.code, e.details || e.message, {
    endpoint,
    retrySafe: e.metadata?.get('kv-retry-safe')[0] === '1',
    ...(leader ? { leader: String(leader) } : {}),
  });
}
