/** The gRPC implementation of the node's ClusterProbe: other members' status, and key counts of one shard read through the cluster's own routing. */
import * as grpc from '@grpc/grpc-js';
import type { ClusterProbe } from '../node/cluster-admin.js';
import type { NodeStatusInfo } from '../node/backend.js';
import type { ClusterMap } from '../sharding/index.js';
import { ClusterStubClient, KvStubClient, type ClusterStub, type KvStub, type ListResponseMsg } from '../wire/proto.js';
import { statusFromMsg } from '../wire/status-codec.js';

/** Options of {@link GrpcClusterProbe}. */
export interface GrpcClusterProbeOptions {
  readonly selfId: number;
  /** This node's own status (not fetched over the network). */
  readonly selfStatus: () => Promise<NodeStatusInfo>;
  /** This node's client address: key counts go through it (it forwards to the shard's leader). */
  readonly selfAddress: string;
  readonly credentials?: grpc.ChannelCredentials;
}

/** Pages of keys scanned when checking a prefix is empty. */
const MAX_PAGES = 20;

/** Probes members over gRPC; channels are cached per address. */
export class GrpcClusterProbe implements ClusterProbe {
  private readonly clusterStubs = new Map<string, ClusterStub>();
  private kvStub: KvStub | undefined;

  constructor(private readonly opts: GrpcClusterProbeOptions) {}

  private cluster(address: string): ClusterStub {
    let s = this.clusterStubs.get(address);
    if (!s) {
      s = new ClusterStubClient(address, this.opts.credentials ?? grpc.credentials.createInsecure(), {
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
      });
      this.clusterStubs.set(address, s);
    }
    return s;
  }

  private kv(): KvStub {
    this.kvStub ??= new KvStubClient(this.opts.selfAddress, this.opts.credentials ?? grpc.credentials.createInsecure(), {});
    return this.kvStub;
  }

  async statuses(map: ClusterMap, deadlineMs: number): Promise<NodeStatusInfo[]> {
    const calls = map.members.map(async (m): Promise<NodeStatusInfo | undefined> => {
      if (m.id === this.opts.selfId) return this.opts.selfStatus();
      return new Promise((resolve) => {
        this.cluster(m.address).status({}, new grpc.Metadata(), { deadline: new Date(deadlineMs) }, (err, res) => {
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
      const res = await new Promise<ListResponseMsg>((resolve, reject) => {
        this.kv().list({ prefix, shard: group, limit: 1000, keysOnly: true, pageToken }, new grpc.Metadata(), { deadline: new Date(deadlineMs) }, (err, r) =>
          err ? reject(err) : resolve(r!),
        );
      });
      for (const it of res.items ?? []) {
        if (it.key === prefix || it.key?.startsWith(`${prefix}/`)) n++;
        if (n >= limit) return n;
      }
      if (!res.nextPageToken) return n;
      pageToken = res.nextPageToken;
    }
    throw new Error(`too many keys share the characters of ${prefix} in shard ${group} to check it is empty`);
  }

  /** Closes the cached channels. */
  close(): void {
    for (const s of this.clusterStubs.values()) s.close();
    this.kvStub?.close();
  }
}
