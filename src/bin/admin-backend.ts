/** Adapts a node's extension manager to the Admin gRPC service's backend interface. */
import { META_GROUP, type KvNode } from '../node/kv-node.js';
import type { ExtensionManager } from '../extensions/manager.js';
import type { AdminBackend } from '../server/admin-service.js';


/** The Admin service's view of `node` and its extensions. */
export function adminBackend(node: KvNode, manager: ExtensionManager): AdminBackend {
  return {
    nodeId: node.id,
    isMetadataLeader: () => node.replica(META_GROUP)?.isLeader ?? false,
    metadataLeaderAddress: () => node.leaderAddress(META_GROUP),
    load: (tgz, opts) => manager.load(tgz, opts),
    unload: (name) => manager.unload(name),
    records: () => manager.records(),
    statuses: () => manager.statuses(),
  };
}
