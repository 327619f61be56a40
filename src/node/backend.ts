/** The seam between the gRPC services and whatever serves the data (a kvd node, or an in-memory twin in tests): typed requests, results and the errors the services map to statuses. */
import type { ClusterMap } from '../sharding/index.js';
import type { DeleteResult, KvEvent, PutResult, TxnCompare, TxnResult, TxnWrite } from '../statemachine/index.js';

/** How fresh a read must be. */
export type Consistency = 'linearizable' | 'serializable';

/** A put, optionally conditional on the key's current version (0 = absent). */
export interface PutRequest {
  readonly key: string;
  readonly value: Uint8Array;
  readonly expectedVersion?: number;
  readonly returnCurrentValue?: boolean;
}

/** A trigger put: fires the lambdas and watchers of `key` with `value` without storing it. */
export interface TriggerRequest {
  readonly key: string;
  readonly value: Uint8Array;
}

/** The result of a trigger put: the revision of its trigger event and its timestamp. */
export interface TriggerResponse {
  readonly revision: number;
  readonly timestampMs: number;
}

/** A point read: latest, as of a revision, or as of a time. */
export interface GetRequest {
  readonly key: string;
  readonly atVersion?: number;
  readonly atTimeMs?: number;
  readonly consistency: Consistency;
}

/** The result of a point read. */
export interface GetResponse {
  readonly found: boolean;
  readonly value?: Uint8Array;
  readonly version: number;
  readonly timestampMs: number;
  /** The shard revision the read observed. */
  readonly revision: number;
}

/** A delete, optionally conditional. */
export interface DeleteRequest {
  readonly key: string;
  readonly expectedVersion?: number;
}

/** A page of keys under a prefix. */
export interface ListRequest {
  readonly prefix: string;
  readonly limit?: number;
  /** Exclusive start key (decoded from a page token). */
  readonly after?: string;
  readonly keysOnly: boolean;
  readonly consistency: Consistency;
  /** Serve exactly this shard (group), instead of the shard of the prefix (which must then be unique). */
  readonly shard?: number;
}

/** An atomic multi-key operation inside one shard: all compares hold, then all writes apply, or nothing does. */
export interface TxnRequest {
  readonly compares: readonly TxnCompare[];
  readonly writes: readonly TxnWrite[];
}

/** One listed key. */
export interface ListedItem {
  readonly key: string;
  readonly value?: Uint8Array;
  readonly version: number;
  readonly timestampMs: number;
}

/** A page of a listing. */
export interface ListResponse {
  readonly items: readonly ListedItem[];
  /** The last key of this page when more remain (the next page starts after it). */
  readonly nextAfter?: string;
  readonly revision: number;
}

/** A watch subscription. */
export interface WatchRequest {
  readonly prefix: string;
  /** First revision to deliver (0 = from now on). */
  readonly fromRevision: number;
  readonly progressIntervalMs: number;
  /** Watch exactly this shard (group), instead of the shard of the prefix (which must then be unique). */
  readonly shard?: number;
}

/** Where a watch delivers. Each call carries whole revisions, in order. */
export interface WatchSink {
  /** Events of one or more whole revisions; `revision` is the highest revision now fully seen. */
  events(events: readonly KvEvent[], revision: number): void;
  /** Nothing new under the prefix up to `revision`. */
  progress(revision: number): void;
  /** The server ended the watch; `compactRevision` is set when the start revision was compacted. */
  canceled(reason: string, compactRevision?: number): void;
  /** Optional flow control: false while the sink is backed up (the watch then pauses, costing no memory). */
  writable?(): boolean;
  /** Optional flow control: called once when a backed-up sink can take more. */
  onDrain?(cb: () => void): void;
}

/** A running watch. */
export interface WatchHandle {
  cancel(): void;
}

/** Status of one Raft group on this node. */
export interface GroupStatusInfo {
  readonly group: number;
  readonly leader: number;
  readonly term: number;
  readonly role: string;
  readonly commitIndex: number;
  readonly appliedIndex: number;
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  readonly revision: number;
  /** The pool this shard belongs to ('' default pool; undefined for the metadata group). */
  readonly pool?: string;
  /** The shard's index in its pool. */
  readonly shardIndex?: number;
  /** Map epoch of the descriptor the shard applied (0 = none yet). */
  readonly descriptorEpoch: number;
  /** On the leader: each replica's acknowledged log index (lag = lastIndex - match). */
  readonly matched: ReadonlyMap<number, number>;
  /** Live keys users wrote in the shard (reserved keys such as extension cursors not counted). */
  readonly keys: number;
}

/** Status of a node. */
export interface NodeStatusInfo {
  readonly nodeId: number;
  readonly version: string;
  readonly groups: readonly GroupStatusInfo[];
  readonly members: readonly { id: number; address: string }[];
  /** Epoch of the cluster map this node routes with. */
  readonly mapEpoch: number;
}

/** Per-call options. */
export interface CallOptions {
  /** Absolute deadline (ms since epoch); the call fails with DeadlineError after it. */
  readonly deadlineMs: number;
  /** For writes made by extension lambdas: the depth of the lambda chain (0 or absent for clients). */
  readonly hops?: number;
  /**
   * For writes (put, delete, trigger, txn): the client session that makes the write safe to retry.
   * A retry with the same `id` and `seq` gets the first attempt's result instead of applying again;
   * a `seq` below what the shard still remembers fails with ValidationError SESSION_EXPIRED (its
   * earlier attempt may have applied). Ignored by reads.
   */
  readonly session?: { readonly id: string; readonly seq: number; readonly ackedBelow: number };
}

/** What the gRPC KV and Cluster services call. */
export interface KvBackend {
  /**
   * A put. `req.value` (as a trigger's) may be a view of a larger message the service received: a
   * backend that keeps it past the call copies it, so that message is not kept alive with it (a
   * node copies it into the log entry anyway).
   */
  put(req: PutRequest, opts: CallOptions): Promise<PutResult>;
  get(req: GetRequest, opts: CallOptions): Promise<GetResponse>;
  delete(req: DeleteRequest, opts: CallOptions): Promise<DeleteResult>;
  /** Trigger put: emits a `trigger` event (its own revision) and stores nothing. */
  trigger(req: TriggerRequest, opts: CallOptions): Promise<TriggerResponse>;
  list(req: ListRequest, opts: CallOptions): Promise<ListResponse>;
  /** Atomic multi-key compare-and-write inside one shard; CrossShardError (INVALID_ARGUMENT, CROSS_SHARD) when keys span shards. */
  txn(req: TxnRequest, opts: CallOptions): Promise<TxnResult>;
  watch(req: WatchRequest, sink: WatchSink): WatchHandle;
  status(): Promise<NodeStatusInfo>;
  /** The cluster map this node routes with. */
  shardMap(): ClusterMap;
  /** The shards (groups) whose keys may start with `prefix`, in group order. */
  shardsForPrefix(prefix: string): readonly number[];
}

/**
 * This node does not lead the shard; `leaderAddress` (client API) is set when a leader is known,
 * or, when this node hosts no replica of the shard, the address of a node that does.
 */
export class NotLeaderError extends Error {
  constructor(
    readonly leaderId: number,
    readonly leaderAddress: string | undefined,
    readonly group?: number,
  ) {
    super(leaderId ? `not the leader (leader is node ${leaderId})` : 'no leader elected yet');
    this.name = 'NotLeaderError';
  }
}

/** The request could not be served in time or the shard is unavailable; it is safe to retry reads. */
export class UnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnavailableError';
  }
}

/**
 * This node was removed from the cluster (a peer with a newer cluster map refused it as a
 * non-member): it serves nothing more. `retrySafe` when the call was refused before it ran (a
 * call in flight when the node left may have committed elsewhere).
 */
export class NodeRemovedError extends UnavailableError {
  /** The machine-readable reason clients see (`kv-reason`). */
  readonly reason = 'NODE_REMOVED';
  constructor(
    message: string,
    readonly retrySafe: boolean,
  ) {
    super(message);
    this.name = 'NodeRemovedError';
  }
}

/** The call's deadline passed. A write's outcome is then unknown. */
export class DeadlineError extends Error {
  constructor(message = 'deadline exceeded') {
    super(message);
    this.name = 'DeadlineError';
  }
}

/**
 * The shard that received a request does not own the key: the sender's (or this node's) shard map
 * is stale. Nothing was applied; retrying after the map catches up is safe.
 */
export class WrongShardError extends UnavailableError {
  constructor(message: string) {
    super(message);
    this.name = 'WrongShardError';
  }
}

/** The keys of one atomic operation live in different shards (not retryable: choose keys of one shard, e.g. with a pool affinity). */
export class CrossShardError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CrossShardError';
  }
}

/** Too much queued work (for example too many uncommitted proposals). */
export class OverloadedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OverloadedError';
  }
}
