/** Public surface of the kvcascade client. */

/** The client and its default call timeout. */
export { KvClient, DEFAULT_CLIENT_DEADLINE_MS } from './kv-client.js';
/** Options of the client. */
export type { KvClientOptions } from './kv-client.js';
/** Errors thrown by the client. */
export { KvError, CompactedError } from './errors.js';
/** Error code names and details. */
export type { KvErrorCode, KvErrorInfo } from './errors.js';
/** The self-resuming watch iterator. */
export { KvWatch } from './watch.js';
/** Many ops in flight on one stream. */
export { KvPipeline } from './pipeline.js';
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
  KvWatchOptions,
  KvWatchEvent,
  KvWatchBatch,
  KvGroupStatus,
  KvNodeStatus,
} from './types.js';
