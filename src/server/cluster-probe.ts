/** The gRPC implementation of the node's ClusterProbe: other members' status over the node's stub pool, and key counts of one shard read through the node's coordinator. */
import * as grpc from '@grpc/grpc-js';
import type { ClusterProbe } from '../node/cluster-admin.js';
import type { NodeStatusInfo } from '../node/backend.js';
import type { ClusterMap } from '../sharding/index.js';
import type { Coordinator } from '../coordinator/coordinator.js';
import type { NodeStubs } from '../coordinator/node-stubs.js';
import { statusFromMsg } from '../wire/status-codec.js';

/** Options of {@link GrpcClusterProbe}. */
export interface GrpcClusterProbeOptions {
  readonly selfId: number;
  /** This node's own status (not fetched over the network). */
  readonly selfStatus: () => Promise<NodeStatusInfo>;
  /** The node's stub pool (its owner closes it). */
  readonly stubs: NodeStubs;
  /** The node's coordinator: key counts go through it (it forwards to the shard's leader). */
  readonly coordinator: Coordinator;
}

/** Pages of keys scanned when checking a prefix is empty. */
const MAX_PAGES = 20;

/** Probes members over gRPC through the node's stub pool. */
export class GrpcClusterProbe implements ClusterProbe {
  constructor(private readonly opts: GrpcClusterProbeOptions) {}

  async statuses(map: ClusterMap, deadlineMs: number): Promise<NodeStatusInfo[]> {
    const calls = map.members.map(async (m): Promise<NodeStatusInfo | undefined> => {
      if (m.id === this.opts.selfId) return this.opts.selfStatus();
      return new Promise((resolve) => {
        this.opts.stubs.cluster(m.address).status({}, new grpc.Metadata(), { deadline: new Date(deadlineMs) }, (err, res) => {
          resolve(err || !res ? undefined : statusFromMsg(res));
        });
      });
    });
    const out = await Promise.all(calls);
    return out.filter((s): s is NodeStatusInfo => s !== undefined && s.nodeId !== 0);
  }

  async countKeys(group: number, prefix: string, limit: number, deadlineMs: number): Promise<number> {
    // List `prefix` itself (not `prefix/`) so the key equal to the prefix counts too; keys that
    // merely share the characters (`/camerasX`) are skipped. Bounded: at most MAX_PAGES pages.
    let n = 0;
    let pageToken = '';
    for (let page = 0; page < MAX_PAGES; page++) {
      const req = { prefix, shard: group, limit: 1000, keysOnly: true, pageToken };
      const res = (await this.opts.coordinator.run('list', req, { hops: 0, lambdaHops: 0, deadlineMs, admin: false })).response;
      for (const it of res.items ?? []) {
        if (it.key === prefix || it.key?.startsWith(`${prefix}/`)) n++;
        if (n >= limit) return n;
      }
      if (!res.nextPageToken) return n;
      pageToken = res.nextPageToken;
    }
    throw new Error(`too many keys share the characters of ${prefix} in shard ${group} to check it is empty`);
  }

  /** Nothing of its own to close: the stub pool's owner closes it. */
  close(): void {}
}
