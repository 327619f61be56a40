/** Wires leases into a kvd node: the {@link LeaseManager} over the node's replicas (wall clock) and the gRPC Lease service on the client port. */
import type * as grpc from '@grpc/grpc-js';
import type { AccessControl } from '../auth/access-control.js';
import { kvNodeHost } from '../extensions/kv-node-host.js';
import { LeaseManager, type LeaseHost, type LeaseManagerOptions } from '../lease/manager.js';
import { META_GROUP, type KvNode } from '../node/kv-node.js';
import { addLeaseService } from '../server/lease-service.js';

/** The running leases of a node. */
export interface NodeLeases {
  readonly manager: LeaseManager;
  stop(): void;
}

/** The lease host of `node`: its metadata replica, led and hosted shards, and key routing. */
export function nodeLeaseHost(node: KvNode): LeaseHost {
  const host = kvNodeHost(node);
  return {
    meta: () => (node.replica(META_GROUP) ? host.meta() : undefined),
    metaLeaderTerm: () => node.ledGroups().get(META_GROUP),
    shard: (g) => host.shard(g),
    ledShards: () => [...node.ledGroups().keys()].filter((g) => g !== META_GROUP),
    hostedShards: () => node.hostedGroups().filter((g) => g !== META_GROUP),
    groupOfKey: (key) => node.shardOfKey(key).group,
  };
}

/** Starts the lease manager of `node` and registers the Lease service on `server`. */
export function startNodeLeases(
  node: KvNode,
  server: grpc.Server,
  o: { access?: AccessControl; log: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void; error(obj: object, msg: string): void }; options?: LeaseManagerOptions },
): NodeLeases {
  const manager = new LeaseManager(
    nodeLeaseHost(node),
    {
      now: () => Date.now(),
      every: (ms, fn) => {
        const t = setInterval(fn, ms);
        t.unref();
        return () => clearInterval(t);
      },
    },
    { log: o.log, ...(o.options ?? {}) },
  );
  const service = addLeaseService(server, manager, {
    metadataLeaderAddress: () => node.leaderAddress(META_GROUP),
    shardLeaderAddress: (key) => {
      try {
        return node.leaderAddress(node.shardOfKey(key).group);
      } catch {
        return undefined;
      }
    },
    ...(o.access ? { access: o.access } : {}),
    log: o.log,
  });
  manager.start();
  return {
    manager,
    stop: () => {
      service.close();
      manager.stop();
    },
  };
}
