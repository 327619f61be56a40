/** A fake sharded cluster for the kvctl tests: loopback nodes serving scripted Cluster.Status / GetShardMap answers and the Admin service over a recording backend. */
import * as grpc from '@grpc/grpc-js';
import { addAdminService, type AdminBackend, type CreatePoolInput } from '../../src/server/admin-service.js';
import { clusterServiceDefinition, type GroupStatusMsg, type StatusResponseMsg } from '../../src/wire/proto.js';
import type { ClusterMap, PoolSpec } from '../../src/sharding/index.js';

/** The admin token the fake nodes accept. */
export const FAKE_TOKEN = 'fake-admin-token';

/** A cluster change a fake node received. */
export interface RecordedCall {
  readonly node: number;
  readonly method: 'createPool' | 'addMember' | 'removeMember';
  readonly args: readonly unknown[];
}

/** One fake node: its address, and the status it reports (null: answers UNAVAILABLE). */
export interface FakeNode {
  readonly id: number;
  readonly address: string;
  status: Omit<StatusResponseMsg, 'nodeId'> | null;
}

/** Loopback nodes sharing one map, one metadata leader and one call log. */
export class FakeCluster {
  readonly nodes: FakeNode[] = [];
  readonly calls: RecordedCall[] = [];
  /** The map every node serves (members' addresses are filled in by {@link FakeCluster.start}). */
  map: ClusterMap = { epoch: 0, members: [], metaVoters: [], pools: [], shards: [], nextGroup: 1 };
  /** Id of the metadata leader. */
  metaLeader = 1;
  /** Makes the next cluster changes fail (undefined: succeed). */
  failWith: ((method: string) => Error | undefined) | undefined;
  private readonly servers: grpc.Server[] = [];

  /** Starts `count` nodes with ids 1..count. */
  static async start(count: number): Promise<FakeCluster> {
    const c = new FakeCluster();
    for (let id = 1; id <= count; id++) await c.startNode(id);
    return c;
  }

  /** The node with `id`. */
  node(id: number): FakeNode {
    const n = this.nodes.find((x) => x.id === id);
    if (!n) throw new Error(`no fake node ${id}`);
    return n;
  }

  /** The endpoints list of every node. */
  endpoints(): string {
    return this.nodes.map((n) => n.address).join(',');
  }

  private backend(id: number): AdminBackend {
    const record = <T>(method: RecordedCall['method'], args: unknown[], ok: T): Promise<T> => {
      this.calls.push({ node: id, method, args });
      const e = this.failWith?.(method);
      return e ? Promise.reject(e) : Promise.resolve(ok);
    };
    return {
      nodeId: id,
      isMetadataLeader: () => this.metaLeader === id,
      metadataLeaderAddress: () => this.nodes.find((n) => n.id === this.metaLeader)?.address,
      createPool: (req: CreatePoolInput) => {
        const pool: PoolSpec = {
          name: req.name,
          shards: req.shards,
          replicas: req.replicas ?? 3,
          ...(req.affinity !== undefined ? { affinity: req.affinity } : {}),
          ...(req.retentionMs !== undefined ? { retentionMs: req.retentionMs } : {}),
          state: 'active',
        };
        return record('createPool', [req], { pool, epoch: this.map.epoch + 1 });
      },
      addMember: (mid: number, address: string, _deadlineMs: number, peerAddress?: string) => record('addMember', [mid, address, ...(peerAddress !== undefined ? [peerAddress] : [])], { epoch: this.map.epoch + 1 }),
      removeMember: (mid: number) => record('removeMember', [mid], { epoch: this.map.epoch + 1 }),
      load: () => Promise.reject(new Error('not supported by the fake')),
      unload: () => Promise.resolve(false),
      records: () => [],
      statuses: () => [],
    };
  }

  private async startNode(id: number): Promise<void> {
    const server = new grpc.Server();
    const node: { id: number; address: string; status: FakeNode['status'] } = { id, address: '', status: { version: 'fake', groups: [], members: [], mapEpoch: 0 } };
    server.addService(clusterServiceDefinition, {
      status: (_call: grpc.ServerUnaryCall<object, StatusResponseMsg>, cb: grpc.sendUnaryData<StatusResponseMsg>) => {
        if (node.status === null) return cb(Object.assign(new Error('node is down'), { code: grpc.status.UNAVAILABLE, details: 'node is down' }));
        cb(null, { nodeId: id, ...node.status });
      },
      getShardMap: (_call: grpc.ServerUnaryCall<object, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(null, { epoch: this.map.epoch, mapJson: JSON.stringify(this.map) }),
    });
    addAdminService(server, this.backend(id), { adminToken: FAKE_TOKEN });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    node.address = `127.0.0.1:${port}`;
    this.nodes.push(node);
    this.servers.push(server);
  }

  /** Stops every node. */
  close(): void {
    for (const s of this.servers) s.forceShutdown();
  }
}

/** A GroupStatus with defaults for the fields a test does not care about. */
export function group(g: GroupStatusMsg & { group: number }): GroupStatusMsg {
  return { leader: 0, term: 1, role: 'follower', commitIndex: 0, appliedIndex: 0, firstIndex: 1, lastIndex: 0, voters: [], learners: [], revision: 0, shardIndex: 0, descriptorEpoch: 0, matched: {}, keys: 0, ...g };
}

/** An address nothing listens on (a port that was just closed). */
export async function deadAddress(): Promise<string> {
  const s = new grpc.Server();
  const port = await new Promise<number>((resolve, reject) => s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  s.forceShutdown();
  return `127.0.0.1:${port}`;
}
