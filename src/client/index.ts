/** Public surface of the kvcascade client. */

/** The client, its default call timeout and connection wait. */
export { KvClient, DEFAULT_CLIENT_DEADLINE_MS, DEFAULT_CONNECT_TIMEOUT_MS } from './kv-client.js';
/** Options of the client. */
export type { KvClientOptions } from './kv-client.js';
/** Errors thrown by the client. */
export { KvError, CompactedError } from './errors.js';
/** Error code names and details. */
export type { KvErrorCode, KvErrorInfo } from './errors.js';
/** The self-resuming watch iterator. */
export { KvWatch } from './watch.js';
/** Leases: keys that vanish when their owner stops renewing. */
export { LeaseClient } from './lease-client.js';
export type { LeaseClientOptions, LeaseStatus, LeaseLostReason, LeaseClientEvents } from './lease-client.js';
/** Many ops in flight, one stream per node. */
export { KvPipeline } from './pipeline.js';
/** The cluster map the client routes with (as `shardMap()` returns it). */
export type { ClusterMap, MemberInfo, PoolSpec, ShardInfo } from '../sharding/types.js';
/** Logging and TLS options. */
export type { KvClientLogger, KvClientTlsOptions } from './transport.js';
/** Options and results of the calls. */
export type {
  KvConsistency,
  KvPutOptions,
  KvPutResult,
  KvGetOptions,
  KvGetResult,
  KvDeleteOptions,
  KvDeleteResult,
  KvTriggerOptions,
  KvTriggerResult,
  KvListOptions,
  KvListResult,
  KvItem,
  KvTxn,
  KvTxnCompare,
  KvTxnWrite,
  KvTxnOptions,
  KvTxnResult,
  KvWatchOptions,
  KvWatchEvent,
  KvWatchBatch,
  KvGroupStatus,
  KvNodeStatus,
} from './types.js';
/** The admin API (extensions, pools, members; needs the admin token). */
export { AdminClient } from './admin-client.js';
/** Options and results of the admin calls. */
export type {
  AdminClientOptions,
  ClusterNodeReport,
  ClusterStatus,
  CreatePoolRequest,
  ExtensionNodeInfo,
  ExtensionRecordInfo,
  ExtensionResourceInfo,
  ExtensionWatchInfo,
  LoadExtensionOptions,
} from './admin-client.js';
/** Access control: logging in, users, roles and permissions. */
export { AuthClient, LoginCredentials, login } from './auth-client.js';
/** Options and listings of the auth client. */
export type { AuthClientOptions, UserInfo, RoleInfo, PermissionInfo } from './auth-client.js';
