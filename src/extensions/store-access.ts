/**
 * The seams through which extensions reach the store beyond this node: lambda reads and writes
 * routed to whichever node leads the key's shard (carrying the lambda chain's hop count), and the
 * current revision of every shard (where a newly loaded extension's watches start).
 */

/** The store as a lambda sees it; every call goes to the key's shard wherever its leader is. */
export interface LambdaKv {
  get(key: string, o: { atVersion?: number; atTimeMs?: number }, deadlineMs: number): Promise<{ found: boolean; value?: Uint8Array; version: number; timestampMs: number }>;
  /** A put made by a lambda at chain depth `hops` (the write's events carry it, for the hop limit). */
  put(key: string, value: Uint8Array, o: { expectedVersion?: number }, hops: number, deadlineMs: number): Promise<{ succeeded: boolean; version: number; currentVersion: number }>;
  delete(key: string, o: { expectedVersion?: number }, hops: number, deadlineMs: number): Promise<{ succeeded: boolean; deleted: boolean }>;
  trigger(key: string, value: Uint8Array, hops: number, deadlineMs: number): Promise<void>;
  /** One page of keys under a prefix, merged across the shards it spans. */
  list(prefix: string, o: { limit?: number; after?: string; keysOnly?: boolean }, deadlineMs: number): Promise<{ items: { key: string; value?: Uint8Array; version: number }[]; nextAfter?: string }>;
}

/** Every data shard's current revision as its leader reports it (shards without a reachable leader are absent). */
export type ShardRevisions = (deadlineMs: number) => Promise<ReadonlyMap<number, number>>;
