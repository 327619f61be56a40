/** What the lease code needs of a node: its metadata and data groups as replicated here, key routing, a clock; and the counters it keeps. */
import type { CommandResult, RevokeLeaseKeysCommand, TxnCommand, WriteSession } from '../statemachine/index.js';

/** One Raft group as the lease manager uses it (an extensions HostShard fits). */
export interface LeaseShard {
  readonly group: number;
  isLeader(): boolean;
  get(key: string): { readonly value: Uint8Array; readonly version: number } | undefined;
  list(prefix: string, o: { readonly limit: number; readonly after?: string; readonly keysOnly?: boolean }): {
    readonly items: readonly { readonly key: string; readonly value?: Uint8Array; readonly version: number }[];
    readonly nextAfter?: string;
  };
  revision(): number;
  barrier(deadlineMs: number): Promise<void>;
  currentRevision(untilMs: number): Promise<number>;
  /** Proposes a system-origin command (a txn, or a shard's lease revoke) and resolves with its result once applied; with `session`, applied at most once per (id, seq). */
  propose(cmd: TxnCommand | RevokeLeaseKeysCommand, deadlineMs: number, session?: WriteSession): Promise<CommandResult>;
  /** Committed events under `prefix` from `fromRevision` (optional: without it the manager lists the lease records when the group's revision moves). */
  subscribe?(
    prefix: string,
    fromRevision: number,
    sink: { events(events: readonly { readonly type: string; readonly key: string }[], upTo: number): void; progress(revision: number): void; canceled(reason: string): void },
    progressIntervalMs: number,
  ): { cancel(): void };
}

/** The node as the lease manager sees it. */
export interface LeaseHost {
  /** The metadata group's replica here (undefined while none). */
  meta(): LeaseShard | undefined;
  /** The term in which this node leads the metadata group, undefined when it does not. */
  metaLeaderTerm(): number | undefined;
  /** A data shard's replica here. */
  shard(group: number): LeaseShard | undefined;
  /** The data shards this node leads. */
  ledShards(): Iterable<number>;
  /** The data shards hosted here (led or not). */
  hostedShards(): Iterable<number>;
  /** The data shard (group) of `key` in this node's map. */
  groupOfKey(key: string): number;
}

/** The clock and timer of the manager (wall clock in kvd, virtual in tests). */
export interface LeaseClock {
  now(): number;
  /** Calls `fn` every `ms`; returns a cancel function. */
  every(ms: number, fn: () => void): () => void;
}

/** Counters of one node's lease work (for metrics and the bench). */
export interface LeaseCounters {
  grants: number;
  keepAlives: number;
  revokes: number;
  expired: number;
  checkpointRecords: number;
  shardRevokes: number;
  sweptOrphans: number;
}
