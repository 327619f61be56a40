/** The seam between the gRPC services and whatever serves the data (a kvd node, or an in-memory twin in tests): typed requests, results and the errors the services map to statuses. */
import type { DeleteResult, KvEvent, PutResult } from '../statemachine/index.js';

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
}

/** Status of a node. */
export interface NodeStatusInfo {
  readonly nodeId: number;
  readonly version: string;
  readonly groups: readonly GroupStatusInfo[];
  readonly members: readonly { id: number; address: string }[];
}

/** Per-call options. */
export interface CallOptions {
  /** Absolute deadline (ms since epoch); the call fails with DeadlineError after it. */
  readonly deadlineMs: number;
}

/** What the gRPC KV and Cluster services call. */
export interface KvBackend {
  put(req: PutRequest, opts: CallOptions): Promise<PutResult>;
  get(req: GetRequest, opts: CallOptions): Promise<GetResponse>;
  delete(req: DeleteRequest, opts: CallOptions): Promise<DeleteResult>;
  /** Trigger put: emits a `trigger` event (its own revision) and stores nothing. */
  trigger(req: TriggerRequest, opts: CallOptions): Promise<TriggerResponse>;
  list(req: ListRequest, opts: CallOptions): Promise<ListResponse>;
  watch(req: WatchRequest, sink: WatchSink): WatchHandle;
  status(): Promise<NodeStatusInfo>;
}

/** This node does not lead the shard; `leaderAddress` (client API) is set when a leader is known. */
export class NotLeaderError extends Error {
  constructor(
    readonly leaderId: number,
    readonly leaderAddress: string | undefined,
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

/** The call's deadline passed. A write's outcome is then unknown. */
export class DeadlineError extends Error {
  constructor(message = 'deadline exceeded') {
    super(message);
    this.name = 'DeadlineError';
  }
}

/** Too much queued work (for example too many uncommitted proposals). */
export class OverloadedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OverloadedError';
  }
}
