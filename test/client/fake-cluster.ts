/** Fake kvcascade nodes for client routing tests: gRPC servers over one shared in-memory store that route by a cluster map, count calls per node and report the shard, its leader and the map epoch like real nodes. */
import * as grpc from '@grpc/grpc-js';
import { META_PIPELINE_BATCH, META_PIPELINE_TXN, kvMetadata } from '../../src/wire/metadata.js';
import {
  clusterServiceDefinition,
  kvServiceDefinition,
  type DeleteRequestMsg,
  type GetRequestMsg,
  type ListRequestMsg,
  type PipelineRequestMsg,
  type PipelineResponseMsg,
  type PutRequestMsg,
  type TriggerRequestMsg,
  type TxnRequestMsg,
} from '../../src/wire/proto.js';
import { initialMap, shardOf, type ClusterMap } from '../../src/sharding/index.js';

/** The calls a fake node counts (`pipelineOp`: one per op received on a Pipeline stream; `streamed` counts those by op). */
export type FakeMethod = 'put' | 'get' | 'delete' | 'trigger' | 'txn' | 'list' | 'pipeline' | 'pipelineOp' | 'getShardMap' | 'status';

/** One fake node. */
export interface FakeNode {
  readonly id: number;
  readonly address: string;
  /** Calls received, by method. */
  readonly calls: Record<FakeMethod, number>;
  /** Ops received on Pipeline streams, by op. */
  readonly streamed: Record<StreamOp, number>;
  /** Key-addressed ops this node received for a shard it does not lead (a real node would have forwarded them). */
  forwarded: number;
  /** The map this node routes with and reports (default: the cluster's). */
  map: ClusterMap | undefined;
}

/** The ops a Pipeline stream carries. */
export type StreamOp = 'put' | 'get' | 'delete' | 'trigger' | 'txn';

/** A failure a {@link FakeCluster.before} hook makes a call (or a pipelined op) fail with. */
export interface FakeFailure {
  readonly code: grpc.status;
  readonly details: string;
  readonly retrySafe?: boolean;
  /** Sent as `kv-reason` (a pipelined op's error `reason`). */
  readonly reason?: string;
  /** Sent as `kv-leader` (a pipelined op's error `leader`): a redirect. */
  readonly leader?: string;
}

/** Options of {@link FakeCluster.start}. */
export interface FakeClusterOptions {
  readonly nodes: number;
  /** Shards of the default pool. */
  readonly shards: number;
  /** Replicas per shard (default min(2, nodes)). */
  readonly replicas?: number;
  /** Map epoch (default 1). */
  readonly epoch?: number;
  /** Whether the nodes implement Cluster.GetShardMap and send kv-shard / kv-map-epoch (default true: false plays pre-sharding servers). */
  readonly sharded?: boolean;
  /** Whether the nodes implement KV.Pipeline (default true: false plays servers from before it, answering UNIMPLEMENTED). */
  readonly pipeline?: boolean;
}

interface Entry {
  value: Uint8Array;
  version: number;
  timestampMs: number;
}

const ZERO_STREAMED = (): Record<StreamOp, number> => ({ put: 0, get: 0, delete: 0, trigger: 0, txn: 0 });

const ZERO_CALLS = (): Record<FakeMethod, number> => ({
  put: 0,
  get: 0,
  delete: 0,
  trigger: 0,
  txn: 0,
  list: 0,
  pipeline: 0,
  pipelineOp: 0,
  getShardMap: 0,
  status: 0,
});

function statusError(f: FakeFailure, md: grpc.Metadata): grpc.ServerErrorResponse {
  if (f.retrySafe) md.set('kv-retry-safe', '1');
  if (f.reason) md.set('kv-reason', f.reason);
  if (f.leader) md.set('kv-leader', f.leader);
  return Object.assign(new Error(f.details), { code: f.code, details: f.details, metadata: md });
}

/**
 * N fake nodes serving one shared store. Every node serves every key (counting ops for shards it
 * does not lead as `forwarded`), answering with `kv-leader` = the address of the shard's leader
 * (see `leaders`), `kv-shard` and `kv-map-epoch` (only `kv-leader` when not `sharded`).
 */
export class FakeCluster {
  /** The cluster map served by GetShardMap. */
  map!: ClusterMap;
  /** The leader (node id) of each group (default: each shard's preferred leader). */
  readonly leaders = new Map<number, number>();
  /** Nodes that accept calls but never answer them (a SIGSTOPped process): ids. */
  readonly frozen = new Set<number>();
  /** Runs before every counted call: return a failure to fail it. */
  before: ((node: FakeNode, method: FakeMethod, req: unknown) => FakeFailure | undefined) | undefined;
  private readonly data = new Map<string, Entry>();
  private readonly revisions = new Map<number, number>();
  private readonly servers: grpc.Server[] = [];

  private constructor(
    readonly nodes: FakeNode[],
    readonly sharded: boolean,
    private readonly pipelines = true,
  ) {}

  /** Starts the nodes on ephemeral loopback ports and builds the map over their addresses. */
  static async start(opts: FakeClusterOptions): Promise<FakeCluster> {
    const nodes: FakeNode[] = [];
    const c = new FakeCluster(nodes, opts.sharded !== false, opts.pipeline !== false);
    for (let i = 1; i <= opts.nodes; i++) {
      const server = new grpc.Server();
      const node: { -readonly [K in keyof FakeNode]: FakeNode[K] } = { id: i, address: '', calls: ZERO_CALLS(), streamed: ZERO_STREAMED(), forwarded: 0, map: undefined };
      c.register(server, node);
      const port = await new Promise<number>((resolve, reject) =>
        server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
      );
      node.address = `127.0.0.1:${port}`;
      nodes.push(node);
      c.servers.push(server);
    }
    const map = initialMap(
      nodes.map((n) => ({ id: n.id, address: n.address })),
      { shards: opts.shards, replicas: opts.replicas ?? Math.min(2, opts.nodes) },
    );
    c.setMap({ ...map, epoch: opts.epoch ?? 1 });
    return c;
  }

  /** Replaces the map (every node without its own map reports the new epoch); groups without a leader get their preferred one. */
  setMap(map: ClusterMap): void {
    this.map = map;
    for (const s of map.shards) if (!this.leaders.has(s.group)) this.leaders.set(s.group, s.preferredLeader || s.replicas[0]!);
  }

  /** The node with id `id`. */
  node(id: number): FakeNode {
    return this.nodes.find((n) => n.id === id)!;
  }

  /** The group of `key` under the cluster's map. */
  groupOf(key: string): number {
    return shardOf(this.map, key).group;
  }

  /** The node leading `key`'s shard. */
  leaderOf(key: string): FakeNode {
    return this.node(this.leaders.get(this.groupOf(key))!);
  }

  /** Total calls of `method` over all nodes. */
  total(method: FakeMethod): number {
    return this.nodes.reduce((n, x) => n + x.calls[method], 0);
  }

  /** Ops of `method` received over all nodes, as unary calls or on Pipeline streams. */
  sent(method: StreamOp): number {
    return this.nodes.reduce((n, x) => n + x.calls[method] + x.streamed[method], 0);
  }

  /** Total forwarded ops over all nodes. */
  get forwarded(): number {
    return this.nodes.reduce((n, x) => n + x.forwarded, 0);
  }

  /** Zeroes every counter. */
  resetCalls(): void {
    for (const n of this.nodes) {
      Object.assign(n.calls, ZERO_CALLS());
      Object.assign(n.streamed, ZERO_STREAMED());
      n.forwarded = 0;
    }
  }

  /** Stops every node. */
  async close(): Promise<void> {
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.tryShutdown(() => r()))));
  }

  private mapOf(node: FakeNode): ClusterMap {
    return node.map ?? this.map;
  }

  /** Response metadata for a call `node` served for `group`. */
  private metadata(node: FakeNode, group: number | undefined): grpc.Metadata {
    const leaderId = group === undefined ? undefined : this.leaders.get(group);
    const leader = leaderId === undefined ? undefined : this.node(leaderId).address;
    if (!this.sharded) return kvMetadata({ leader });
    return kvMetadata({ leader, shard: group, mapEpoch: this.mapOf(node).epoch });
  }

  /** Counts an op of `key` on `node`: its group, and whether `node` leads it. */
  private route(node: FakeNode, key: string): number {
    const group = shardOf(this.mapOf(node), key).group;
    if (this.leaders.get(group) !== node.id) node.forwarded++;
    return group;
  }

  private nextRevision(group: number): number {
    const r = (this.revisions.get(group) ?? 0) + 1;
    this.revisions.set(group, r);
    return r;
  }

  private put(group: number, m: PutRequestMsg): object {
    const revision = this.nextRevision(group);
    const timestampMs = Date.now();
    this.data.set(m.key!, { value: new Uint8Array(m.value ?? new Uint8Array(0)), version: revision, timestampMs });
    return { succeeded: true, version: revision, timestampMs, currentVersion: 0, revision };
  }

  private get(group: number, m: GetRequestMsg): object {
    const e = this.data.get(m.key!);
    const revision = this.revisions.get(group) ?? 0;
    return e ? { found: true, value: e.value, version: e.version, timestampMs: e.timestampMs, revision } : { found: false, revision };
  }

  private delete(group: number, m: DeleteRequestMsg): object {
    const existed = this.data.delete(m.key!);
    return { succeeded: true, deleted: existed, revision: this.nextRevision(group), currentVersion: 0 };
  }

  private trigger(group: number, _m: TriggerRequestMsg): object {
    return { revision: this.nextRevision(group), timestampMs: Date.now() };
  }

  private txn(node: FakeNode, m: TxnRequestMsg): { res: object; group: number } {
    const keys = [...(m.compares ?? []).map((c) => c.key!), ...(m.writes ?? []).map((w) => (w.put ?? w.delete)!.key!)];
    const groups = [...new Set(keys.map((k) => shardOf(this.mapOf(node), k).group))];
    if (groups.length !== 1) throw { code: grpc.status.INVALID_ARGUMENT, details: `CROSS_SHARD: keys ${JSON.stringify(keys)} span shards ${groups.join(', ')}` };
    const group = this.route(node, keys[0]!);
    const failedCompares: number[] = [];
    (m.compares ?? []).forEach((c, i) => {
      if ((this.data.get(c.key!)?.version ?? 0) !== (c.version ?? 0)) failedCompares.push(i);
    });
    if (failedCompares.length > 0) {
      return { res: { succeeded: false, revision: this.revisions.get(group) ?? 0, timestampMs: Date.now(), failedCompares, shard: group }, group };
    }
    const revision = this.nextRevision(group);
    const timestampMs = Date.now();
    for (const w of m.writes ?? []) {
      if (w.put) this.data.set(w.put.key!, { value: new Uint8Array(w.put.value ?? new Uint8Array(0)), version: revision, timestampMs });
      else if (w.delete) this.data.delete(w.delete.key!);
    }
    return { res: { succeeded: true, revision, timestampMs, failedCompares: [], shard: group }, group };
  }

  private keyed(node: FakeNode, method: 'put' | 'get' | 'delete' | 'trigger', m: { key?: string }): { res: object; group: number } {
    const group = this.route(node, m.key!);
    switch (method) {
      case 'put':
        return { res: this.put(group, m), group };
      case 'get':
        return { res: this.get(group, m), group };
      case 'delete':
        return { res: this.delete(group, m), group };
      default:
        return { res: this.trigger(group, m), group };
    }
  }

  private register(server: grpc.Server, node: FakeNode): void {
    const unary =
      (method: FakeMethod, serve: (req: never) => { res: object; group: number | undefined }) =>
      (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>): void => {
        node.calls[method]++;
        if (this.frozen.has(node.id)) return; // never answered: the caller's deadline ends it
        const fail = this.before?.(node, method, call.request);
        if (fail) return cb(statusError(fail, this.metadata(node, undefined)));
        try {
          const { res, group } = serve(call.request as never);
          cb(null, res, this.metadata(node, group));
        } catch (e) {
          const f = e as FakeFailure;
          cb(statusError({ code: f.code ?? grpc.status.INTERNAL, details: f.details ?? String(e) }, this.metadata(node, undefined)));
        }
      };
    const list = (m: ListRequestMsg): { res: object; group: number | undefined } => {
      const map = this.mapOf(node);
      const items = [...this.data.entries()]
        .filter(([k]) => k.startsWith(m.prefix ?? '') && (m.shard === undefined || m.shard === null || shardOf(map, k).group === m.shard))
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([key, e]) => ({ key, value: e.value, version: e.version, timestampMs: e.timestampMs }));
      const groups = m.shard === undefined || m.shard === null ? map.shards.map((s) => s.group) : [m.shard];
      if (m.shard !== undefined && m.shard !== null && this.leaders.get(m.shard) !== node.id) node.forwarded++;
      const shardRevisions = Object.fromEntries(groups.map((g) => [g, this.revisions.get(g) ?? 0]));
      const single = groups.length === 1 ? groups[0] : undefined;
      return { res: { items, nextPageToken: '', revision: single === undefined ? 0 : (this.revisions.get(single) ?? 0), shardRevisions }, group: single };
    };
    const pipeline = (call: grpc.ServerDuplexStream<PipelineRequestMsg, PipelineResponseMsg>): void => {
      node.calls.pipeline++;
      const md = this.sharded ? kvMetadata({ mapEpoch: this.mapOf(node).epoch }) : new grpc.Metadata();
      md.set(META_PIPELINE_BATCH, '1'); // takes batches, and answers a batch with one batch, as kvd does
      md.set(META_PIPELINE_TXN, '1'); // takes txn ops, as kvd does
      call.sendMetadata(md);
      // As kvd: per-op failures carry the unary trailers' fields; an op this node does not lead
      // (kvd would forward it) names the shard's leader (and the shard, when sharded).
      const answer = (req: PipelineRequestMsg): PipelineResponseMsg => {
        const op = req.op!;
        const fail = this.before?.(node, op, req[op]);
        if (fail) return { id: req.id, error: { code: fail.code, message: fail.details, ...(fail.retrySafe ? { retrySafe: true } : {}), ...(fail.reason ? { reason: fail.reason } : {}), ...(fail.leader ? { leader: fail.leader } : {}) } };
        try {
          const { res, group } = op === 'txn' ? this.txn(node, req.txn!) : this.keyed(node, op, req[op]!);
          const leaderId = this.leaders.get(group);
          if (leaderId === node.id || leaderId === undefined) return { id: req.id, [op]: res };
          return { id: req.id, [op]: res, leader: this.node(leaderId).address, ...(this.sharded ? { shard: group } : {}) };
        } catch (e) {
          const f = e as FakeFailure;
          if (f.code !== undefined) return { id: req.id, error: { code: f.code, message: f.details } };
          return { id: req.id, error: { code: grpc.status.INTERNAL, message: String(e) } };
        }
      };
      call.on('data', (req: PipelineRequestMsg) => {
        const reqs = req.batch !== undefined && req.batch.length > 0 ? req.batch : [req];
        node.calls.pipelineOp += reqs.length;
        for (const r of reqs) node.streamed[r.op!]++;
        if (this.frozen.has(node.id)) return; // never answered
        const out = reqs.map(answer);
        const msg: PipelineResponseMsg = out.length === 1 ? out[0]! : { batch: out };
        if (this.sharded) msg.mapEpoch = this.mapOf(node).epoch;
        call.write(msg);
      });
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    };
    const kv: grpc.UntypedServiceImplementation = {
      put: unary('put', (m: PutRequestMsg) => this.keyed(node, 'put', m)),
      get: unary('get', (m: GetRequestMsg) => this.keyed(node, 'get', m)),
      delete: unary('delete', (m: DeleteRequestMsg) => this.keyed(node, 'delete', m)),
      trigger: unary('trigger', (m: TriggerRequestMsg) => this.keyed(node, 'trigger', m)),
      txn: unary('txn', (m: TxnRequestMsg) => this.txn(node, m)),
      list: unary('list', list),
    };
    if (this.pipelines) kv.pipeline = pipeline;
    server.addService(kvServiceDefinition, kv);
    const cluster: grpc.UntypedServiceImplementation = {
      status: unary('status', () => ({ res: { nodeId: node.id, version: 'fake', groups: [], members: [], mapEpoch: this.mapOf(node).epoch }, group: undefined })),
    };
    cluster.getShardMap = unary('getShardMap', () => {
      // Pre-sharding servers have no GetShardMap (counted here all the same).
      if (!this.sharded) throw { code: grpc.status.UNIMPLEMENTED, details: 'The server does not implement the method /kvcascade.v1.Cluster/GetShardMap' };
      const map = this.mapOf(node);
      return { res: { epoch: map.epoch, mapJson: JSON.stringify(map) }, group: undefined };
    });
    server.addService(clusterServiceDefinition, cluster);
  }
}
