/** The public surface of the pure sharding model: pools, shards, routing, placement and the stored map format. */
export * from './types.js';
export * from './errors.js';
export {
  hashKey,
  utf8Length,
  affinityPart,
  poolMatches,
  poolOf,
  shardOf,
  shardsForPrefix,
  ownsKey,
  descriptorOf,
  compareStrings,
} from './routing.js';
export { validatePoolName, validatePoolSpec, validateAffinity, validateMember, isIntIn, type PoolOptions } from './validation.js';
export {
  emptyMap,
  initialMap,
  addPool,
  setPoolState,
  removePool,
  addMember,
  markRemoving,
  dropMember,
  planStep,
  sameMap,
  replicaCounts,
  leaderCounts,
  hostedGroups,
  type GroupMembership,
  type NewMember,
} from './placement.js';
export {
  CLUSTER_PREFIX,
  CLUSTER_INFO_KEY,
  CLUSTER_MEMBERS_PREFIX,
  CLUSTER_POOLS_PREFIX,
  CLUSTER_SHARDS_PREFIX,
  memberKey,
  poolKey,
  shardKey,
  encodeClusterMap,
  decodeClusterMap,
  diffClusterMaps,
  encodeDescriptor,
  decodeDescriptor,
} from './map-codec.js';
