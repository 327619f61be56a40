/**
 * The seams through which extensions reach the store beyond this node: lambda reads and writes
 * routed to whichever node leads the key's shard (carrying the lambda chain's hop count), and the
 * current revision of every shard (where a newly loaded extension's watches start).
 */

/**
 * The idempotency key of a lambda's write (see sandbox/effect-session.ts): a client session whose
 * every attempt, and every redelivery of the triggering event, carries the same (id, seq); the
 * shard keeps its results (ackedBelow 0), so the write applies once.
 */
export interface EffectKey {
  readonly id: string;
  readonly seq: number;
}

/** A txn of a lambda (every key in one shard). */
export interface LambdaTxn {
  readonly compares: readonly { readonly key: string; readonly version: number }[];
  readonly writes: readonly ({ readonly type: 'put'; readonly key: string; readonly value: Uint8Array } | { readonly type: 'delete'; readonly key: string })[];
}

/**
 * The store as a lambda sees it; every call goes to the key's shard wherever its leader is.
 * Writes given an `effect` carry it as their client session (else one of the store's own).
 */
export interface LambdaKv {
  get(key: string, o: { atVersion?: number; atTimeMs?: number }, deadlineMs: number): Promise<{ found: boolean; value?: Uint8Array; version: number; timestampMs: number }>;
  /** A put made by a lambda at chain depth `hops` (the write's events carry it, for the hop limit). */
  put(key: string, value: Uint8Array, o: { expectedVersion?: number }, hops: number, deadlineMs: number, effect?: EffectKey): Promise<{ succeeded: boolean; version: number; currentVersion: number }>;
  delete(key: string, o: { expectedVersion?: number }, hops: number, deadlineMs: number, effect?: EffectKey): Promise<{ succeeded: boolean; deleted: boolean }>;
  trigger(key: string, value: Uint8Array, hops: number, deadlineMs: number, effect?: EffectKey): Promise<void>;
  /** An all-or-nothing txn within one shard (CrossShardError when its keys span shards). */
  txn(t: LambdaTxn, hops: number, deadlineMs: number, effect?: EffectKey): Promise<{ succeeded: boolean; revision: number; failedCompares: number[] }>;
  /** One page of keys under a prefix, merged across the shards it spans. */
  list(prefix: string, o: { limit?: number; after?: string; keysOnly?: boolean }, deadlineMs: number): Promise<{ items: { key: string; value?: Uint8Array; version: number }[]; nextAfter?: string }>;
}

/** Every data shard's current revision as its leader reports it (shards without a reachable leader are absent). */
export type ShardRevisions = (deadlineMs: number) => Promise<ReadonlyMap<number, number>>;
