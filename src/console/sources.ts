/**
 * The console's data sources in a kvd process: the node's own state read in-process, the other
 * members asked over the client API with the node's own credentials (so a TLS cluster works as
 * is) — Cluster.Status, Admin.ListExtensions (no token needed) and Console.NodeStats — each call
 * with the gatherer's deadline. Nothing here retries: a member that does not answer in time is
 * shown as down until the next update.
 */
import * as grpc from '@grpc/grpc-js';
import type { NodeStatusInfo } from '../node/backend.js';
import type { NodeStubs } from '../coordinator/node-stubs.js';
import type { AdminExtensionStatus } from '../server/admin-service.js';
import type { ClusterMap } from '../sharding/index.js';
import { AdminStubClient } from '../wire/admin-proto.js';
import { statusFromMsg } from '../wire/status-codec.js';
import type { StatusResponseMsg } from '../wire/proto.js';
import type { ConsoleSources, ExtensionOnNode, NodeStats } from './gather.js';
import { ConsoleStubClient, nodeStatsFromMsg } from './node-stats.js';

/** What {@link GrpcConsoleSources} needs from its node. */
export interface GrpcConsoleSourcesOptions {
  readonly selfId: number;
  readonly map: () => ClusterMap;
  readonly selfStatus: () => Promise<NodeStatusInfo>;
  /** The node's extension statuses (its extension manager's). */
  readonly selfExtensions: () => readonly AdminExtensionStatus[];
  readonly selfStats: () => Promise<NodeStats>;
  /** The node's stub pool (Cluster stubs; its owner closes it). */
  readonly stubs: NodeStubs;
  /** How this node dials other nodes' client APIs (the Admin and Console stubs made here). */
  readonly credentials: grpc.ChannelCredentials;
}

/** An extension status as Admin.ListExtensions sends it (camelCase, uint64 as number). */
type WireExtensionStatus = Record<string, unknown> & { watches?: Record<string, unknown>[] };

function num(v: unknown): number {
  const n = Number(v ?? 0);
  return Number.isFinite(n) ? n : 0;
}

/** The console's view of one node's extension status (in-process form). */
export function extensionOnNode(s: AdminExtensionStatus): ExtensionOnNode {
  return {
    name: s.name,
    version: s.version,
    generation: s.generation,
    state: s.state,
    error: s.error ?? '',
    delivering: s.delivering,
    runsIn: s.runsIn ?? '',
    invocations: s.invocations,
    errors: s.errors,
    timeouts: s.timeouts,
    workerRestarts: s.workerRestarts,
    deadLettered: s.deadLettered ?? 0,
    backlog: s.watches.reduce((n, w) => n + (w.stats?.backlog ?? 0), 0),
    lastLatencyMs: s.watches.reduce((n, w) => Math.max(n, w.stats?.lastLatencyMs ?? 0), 0),
    prefixes: s.watches.map((w) => w.prefix),
  };
}

/** The console's view of one node's extension status (Admin.ListExtensions wire form). */
export function extensionOnNodeFromWire(s: WireExtensionStatus): ExtensionOnNode {
  const watches = Array.isArray(s.watches) ? s.watches : [];
  return {
    name: String(s.name ?? ''),
    version: String(s.version ?? ''),
    generation: num(s.generation),
    state: String(s.state ?? ''),
    error: String(s.error ?? ''),
    delivering: Boolean(s.delivering),
    runsIn: String(s.runsIn ?? ''),
    invocations: num(s.invocations),
    errors: num(s.errors),
    timeouts: num(s.timeouts),
    workerRestarts: num(s.workerRestarts),
    deadLettered: num(s.deadLettered),
    backlog: watches.reduce((n, w) => n + num(w.backlog), 0),
    lastLatencyMs: watches.reduce((n, w) => Math.max(n, num(w.lastLatencyMs)), 0),
    prefixes: watches.map((w) => String(w.prefix ?? '')),
  };
}

type Unary = (req: object, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: unknown) => void) => void;

/** {@link ConsoleSources} over gRPC, for kvd. Close it to close the Admin and Console channels it opened. */
export class GrpcConsoleSources implements ConsoleSources {
  private readonly admin = new Map<string, grpc.Client>();
  private readonly console = new Map<string, grpc.Client>();

  constructor(private readonly opts: GrpcConsoleSourcesOptions) {}

  get selfId(): number {
    return this.opts.selfId;
  }

  map(): ClusterMap {
    return this.opts.map();
  }

  selfStatus(): Promise<NodeStatusInfo> {
    return this.opts.selfStatus();
  }

  selfExtensions(): readonly ExtensionOnNode[] {
    return this.opts.selfExtensions().map(extensionOnNode);
  }

  selfStats(): Promise<NodeStats> {
    return this.opts.selfStats();
  }

  remoteStatus(address: string, deadlineMs: number): Promise<NodeStatusInfo> {
    const stub = this.opts.stubs.cluster(address) as unknown as Record<string, Unary>;
    return this.call<StatusResponseMsg>(stub, 'status', deadlineMs).then(statusFromMsg);
  }

  async remoteExtensions(address: string, deadlineMs: number): Promise<readonly ExtensionOnNode[]> {
    const r = await this.call<{ statuses?: WireExtensionStatus[] }>(this.stub(this.admin, AdminStubClient, address), 'listExtensions', deadlineMs);
    return (r.statuses ?? []).map(extensionOnNodeFromWire);
  }

  async remoteStats(address: string, deadlineMs: number): Promise<NodeStats> {
    return nodeStatsFromMsg(await this.call(this.stub(this.console, ConsoleStubClient, address), 'nodeStats', deadlineMs));
  }

  /** Closes the channels opened here (the Cluster stubs belong to the node's pool). */
  close(): void {
    for (const c of [...this.admin.values(), ...this.console.values()]) c.close();
    this.admin.clear();
    this.console.clear();
  }

  private stub(cache: Map<string, grpc.Client>, ctor: grpc.ServiceClientConstructor, address: string): Record<string, Unary> {
    let s = cache.get(address);
    if (!s) {
      s = new ctor(address, this.opts.credentials, { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000, 'grpc.enable_retries': 0 });
      cache.set(address, s);
    }
    return s as unknown as Record<string, Unary>;
  }

  private call<T>(stub: Record<string, Unary>, method: string, deadlineMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      stub[method]!.call(stub, {}, new grpc.Metadata(), { deadline: new Date(deadlineMs) }, (e, r) => (e ? reject(e) : resolve(r as T)));
    });
  }
}
