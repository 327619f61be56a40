/** Wires leases into a kvd node: the {@link LeaseManager} over the node's replicas (wall clock) and the gRPC Lease service on the client port. */
import type * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, type Registry } from 'prom-client';
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
  o: {
    access?: AccessControl;
    log: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void; error(obj: object, msg: string): void };
    options?: LeaseManagerOptions;
    /** Where the lease metrics are registered (kvcascade_leases, kvcascade_lease_*_total). */
    registry?: Registry;
  },
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
  if (o.registry) registerLeaseMetrics(manager, o.registry);
  manager.start();
  return {
    manager,
    stop: () => {
      service.close();
      manager.stop();
    },
  };
}

/** Prometheus metrics of the node's lease work, read from the manager's counters at each scrape. */
function registerLeaseMetrics(manager: LeaseManager, registry: Registry): void {
  new Gauge({
    name: 'kvcascade_leases',
    help: 'Leases in the lease table of this node (the metadata leader holds every lease; 0 elsewhere)',
    registers: [registry],
    collect() {
      this.set(manager.leading ? manager.size : 0);
    },
  });
  const totals: [keyof LeaseManager['counters'], string, string][] = [
    ['grants', 'kvcascade_lease_grants_total', 'Leases granted by this node as metadata leader'],
    ['keepAlives', 'kvcascade_lease_keepalives_total', 'Keep-alives answered by this node'],
    ['revokes', 'kvcascade_lease_revokes_total', 'Leases revoked on request by this node as metadata leader'],
    ['expired', 'kvcascade_lease_expired_total', 'Leases that expired (revoked by this node as metadata leader)'],
    ['checkpointRecords', 'kvcascade_lease_checkpoint_records_total', 'Lease deadlines checkpointed through the metadata log by this node'],
    ['shardRevokes', 'kvcascade_lease_shard_revokes_total', 'revokeLeaseKeys commands deleting a lease\'s keys in a shard led by this node'],
    ['sweptOrphans', 'kvcascade_lease_swept_total', 'Leases whose leftover keys the sweep deleted in shards led by this node'],
  ];
  for (const [field, name, help] of totals) {
    let seen = 0;
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const now = manager.counters[field];
        if (now > seen) this.inc(now - seen);
        seen = now;
      },
    });
  }
}
