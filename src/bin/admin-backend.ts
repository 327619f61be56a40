/** Adapts a node's extension manager to the Admin gRPC service's backend interface. */
import { META_GROUP, type KvNode } from '../node/kv-node.js';
import type { ExtensionManager } from '../extensions/manager.js';
import type { AdminBackend } from '../server/admin-service.js';
import type { ClusterAdmin } from '../node/cluster-admin.js';

/** The Admin service's view of `node`, its extensions and the cluster administration. */
export function adminBackend(node: KvNode, manager: ExtensionManager, cluster: ClusterAdmin): AdminBackend {
  return {
    nodeId: node.id,
    isMetadataLeader: () => node.replica(META_GROUP)?.isLeader ?? false,
    metadataLeaderAddress: () => node.leaderAddress(META_GROUP),
    load: (tgz, opts) => manager.load(tgz, opts),
    unload: (name, opts) => manager.unload(name, opts),
    resume: (name) => manager.resume(name),
    records: () => manager.records(),
    statuses: () => manager.statuses(),
    createPool: (req, deadlineMs) => cluster.createPool(req, deadlineMs),
    addMember: (id, address, deadlineMs, peerAddress) => cluster.addMember(id, address, deadlineMs, peerAddress),
    removeMember: (id, deadlineMs) => cluster.removeMember(id, deadlineMs),
  };
}
