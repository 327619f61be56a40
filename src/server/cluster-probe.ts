/** The gRPC implementation of the node's ClusterProbe: other members' status over the node's stub pool, and key counts of one shard read through the node's coordinator. */
import * as grpc from '@grpc/grpc-js';
import type { ClusterProbe } from '../node/cluster-admin.js';
import type { NodeStatusInfo } from '../node/backend.js';
import type { ClusterMap } from '../sharding/index.js';
import type { Coordinator } from '../coordinator/coordinator.js';
import type { NodeStubs } from '../coordinator/node-stubs.js';
import { statusFromMsg } from '../wire/status-codec.js';
import { OpStatus } from '../coordinator/op-status.js';
import type { ListResponseMsg } from '../wire/proto.js';

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
/** First pause (ms) before retrying a page the shard could not serve (no leader yet); doubles per attempt. */
const RETRY_BASE_MS = 25;
/** Longest pause (ms) between retries of one page. */
const RETRY_MAX_MS = 400;

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
      const res = await this.listPage(req, deadlineMs);
      for (const it of res.items ?? []) {
        if (it.key === prefix || it.key?.startsWith(`${prefix}/`)) n++;
        if (n >= limit) return n;
      }
      if (!res.nextPageToken) return n;
      pageToken = res.nextPageToken;
    }
    throw new Error(`too many keys share the characters of ${prefix} in shard ${group} to check it is empty`);
  }

  /**
   * One page of a linearizable list, retried while the shard answers retry-safe UNAVAILABLE (it is
   * between leaders, or its leader is not answering) until `deadlineMs`: a cluster change should
   * wait out an election rather than fail on it.
   */
  private async listPage(req: { prefix: string; shard: number; limit: number; keysOnly: boolean; pageToken: string }, deadlineMs: number): Promise<ListResponseMsg> {
    for (let attempt = 0; ; attempt++) {
      try {
        return (await this.opts.coordinator.run('list', req, { hops: 0, lambdaHops: 0, deadlineMs, admin: false })).response;
      } catch (e) {
        const retry = e instanceof OpStatus && e.code === grpc.status.UNAVAILABLE && e.fields.retrySafe === true;
        const pause = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt);
        if (!retry || Date.now() + pause >= deadlineMs) throw e;
        await new Promise((r) => setTimeout(r, pause));
      }
    }
  }

  /** Nothing of its own to close: the stub pool's owner closes it. */
  close(): void {}
}
