/**
 * The extension contract, published as `kvcascade/extension`: what an extension module exports
 * (`initialize(ctx)`, optional `shutdown()`) and what its context offers (watches, the store's
 * API, a logger, its configuration, metrics).
 */

/** What fires a lambda. */
export type EventType = 'put' | 'delete' | 'trigger';

/** One change delivered to a lambda. */
export interface ExtensionEvent {
  /** `put` (see `created` for a new key vs an update), `delete`, or `trigger` (fired without storing). */
  readonly type: EventType;
  /** The key that changed. */
  readonly key: string;
  /** The value written (put and trigger); undefined for delete. */
  readonly value: Uint8Array | undefined;
  /** The revision of the change; the key's version after a put. Use it to make a lambda idempotent. */
  readonly version: number;
  /** The shard revision of the change (equal to `version`; revisions are per shard, all events of one txn share one). */
  readonly revision?: number;
  /**
   * The key's version before the change (0: the key did not exist); undefined when no longer
   * known (the shard compacted that history before the event was delivered).
   */
  readonly previousVersion?: number;
  /** A put that created the key (it did not exist before); false for updates, deletes and triggers. */
  readonly created?: boolean;
  /** The key's value before the change, with the watch option `previousValue: true` (undefined when absent or unknown). */
  readonly previousValue?: Uint8Array;
  /** Timestamp of the change (ms since the epoch). */
  readonly timestamp: number;
  /** The shard (Raft group) that holds the key. */
  readonly shard: number;
  /** How many lambda writes led to this event (0 for a client write); see `maxHops`. */
  readonly hops: number;
}

/** A lambda: may be async; throwing (or rejecting) makes the event be retried. */
export type Lambda = (event: ExtensionEvent) => void | Promise<void>;

/** How a watch delivers. Every field has a default. */
export interface WatchOptions {
  /**
   * `stateful` (default): events of one key are handled one at a time, in version order.
   * `stateless`: events are handled concurrently (up to `concurrency`), still ordered per key on retry.
   */
  readonly mode?: 'stateful' | 'stateless';
  /** Which events fire the lambda (default: puts and deletes and triggers). */
  readonly events?: readonly EventType[];
  /** Most events handled at once in stateless mode (default 16). */
  readonly concurrency?: number;
  /** Attempts before an event goes to the dead-letter keys (default 5). */
  readonly maxAttempts?: number;
  /** First retry delay in ms, doubled each attempt (default 100). */
  readonly retryBackoffMs?: number;
  /**
   * Per-invocation wall-clock limit in ms (default 10000); past it the worker is restarted (a
   * runner-killing failure, counted towards `poison`). The lambda's store calls end before it.
   */
  readonly timeoutMs?: number;
  /** Events queued for this watch before delivery pauses (back-pressure; default 10000). */
  readonly maxBacklog?: number;
  /** Give each event the key's value before the change as `previousValue` (default false: it costs a copy per event). */
  readonly previousValue?: boolean;
}

/** Result of a put made from a lambda. */
export interface PutResult {
  /** False when `expectedVersion` did not match (nothing written). */
  readonly succeeded: boolean;
  /** The key's new version (the shard revision of the write). */
  readonly version: number;
  /** On a conflict: the key's current version (0 = absent). */
  readonly currentVersion: number;
}

/** A value read from the store. */
export interface GetResult {
  /** Whether the key exists (at the version or time asked for). */
  readonly found: boolean;
  /** Its value (undefined when not found). */
  readonly value: Uint8Array | undefined;
  /** Its version (0 when not found). */
  readonly version: number;
  /** When that version was written (ms since the epoch; 0 when not found). */
  readonly timestamp: number;
}

/**
 * The store, as a lambda sees it. Writes carry the event's hop count (loop protection) and, made
 * while handling an event, an idempotency key derived from it (the event's shard, key and
 * version, the write's keys and how many such writes came before it in the invocation): when the
 * event is delivered again, the same writes in the same order are answered with their first
 * result and not applied twice (effectively once; see the README for the window this holds in).
 * Each call made while handling an event ends before the invocation times out: at most 10 s, and
 * 1 s (or a quarter of `timeoutMs`, if shorter) before `timeoutMs` runs out. A call that cannot
 * finish by then (the key's shard is changing leaders) rejects with the store's error, retryable:
 * thrown on, it fails the invocation as an ordinary error, retried with backoff.
 */
export interface ExtensionKv {
  /** Reads `key` (linearizable), or as of a version or a time within the shard's history. */
  get(key: string, opts?: { atVersion?: number; atTimeMs?: number }): Promise<GetResult>;
  /** Writes `key` (a string is stored as UTF-8); with `expectedVersion`, only if the key is at that version (0: absent). */
  put(key: string, value: Uint8Array | string, opts?: { expectedVersion?: number }): Promise<PutResult>;
  /** Fires lambdas watching `key` with `value` without storing anything. */
  trigger(key: string, value: Uint8Array | string): Promise<void>;
  /** Deletes `key` (`deleted`: it existed); with `expectedVersion`, only if the key is at that version. */
  delete(key: string, opts?: { expectedVersion?: number }): Promise<{ succeeded: boolean; deleted: boolean }>;
  /** Keys under `prefix` in key order, a page of at most `limit` at a time (`nextAfter`: pass it as `after` for the next page). */
  list(prefix: string, opts?: { limit?: number; after?: string; keysOnly?: boolean }): Promise<{
    items: { key: string; value: Uint8Array | undefined; version: number }[];
    nextAfter: string | undefined;
  }>;
  /**
   * All-or-nothing within one shard: if every compare holds (`version` 0: the key is absent),
   * applies every write at one revision; else changes nothing (`failedCompares` says which did
   * not hold). Keys of several shards fail with CROSS_SHARD.
   */
  txn(t: TxnInput): Promise<TxnOutcome>;
}

/** The argument of `ctx.kv.txn`. */
export interface TxnInput {
  /** Conditions: each key must be at `version` (0: absent). */
  readonly compares?: readonly { readonly key: string; readonly version: number }[];
  /** Puts and deletes applied together when every compare holds. */
  readonly writes: readonly ({ readonly type: 'put'; readonly key: string; readonly value: Uint8Array | string } | { readonly type: 'delete'; readonly key: string })[];
}

/** The outcome of `ctx.kv.txn`. */
export interface TxnOutcome {
  /** Whether every compare held (and the writes were applied). */
  readonly succeeded: boolean;
  /** The revision the writes were applied at (on failure: the shard's current revision). */
  readonly revision: number;
  /** Indices of the compares that did not hold (empty on success). */
  readonly failedCompares: readonly number[];
}

/** Structured logging to the node's log, tagged with the extension. */
export interface ExtensionLogger {
  /** Logs at debug level (hidden at the node's default level). */
  debug(msg: string, fields?: Record<string, unknown>): void;
  /** Logs at info level. */
  info(msg: string, fields?: Record<string, unknown>): void;
  /** Logs at warn level. */
  warn(msg: string, fields?: Record<string, unknown>): void;
  /** Logs at error level. */
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** Metrics that appear on the node's `/metrics`, prefixed `kvcascade_ext_<extension>_`. */
export interface ExtensionMetrics {
  /** A counter `name` (letters, digits, `_`, `:`; not starting with a digit) with its help text; `inc(by)` adds a finite number >= 0 (default 1). */
  counter(name: string, help: string): { inc(by?: number): void };
  /** A histogram `name` with its help text and bucket bounds (default: Prometheus's); `observe(value)` records a finite number. */
  histogram(name: string, help: string, buckets?: readonly number[]): { observe(value: number): void };
}

/** What `initialize` receives. */
export interface ExtensionContext {
  /** The extension's name as loaded. */
  readonly name: string;
  /** The JSON configuration given at load time (`{}` when none). */
  readonly config: Readonly<Record<string, unknown>>;
  /** The store (see {@link ExtensionKv}). */
  readonly kv: ExtensionKv;
  /** The node's log, tagged with the extension. */
  readonly log: ExtensionLogger;
  /** Metrics on the node's `/metrics`. */
  readonly metrics: ExtensionMetrics;
  /** Registers `lambda` for changes to keys under `prefix`. Call it during `initialize`. */
  watch(prefix: string, lambda: Lambda, options?: WatchOptions): void;
}

/** The module shape an extension exports. */
export interface ExtensionModule {
  /** Registers the watches (`ctx.watch`) and prepares state; a throw (or rejection) fails the load with its message. */
  initialize(ctx: ExtensionContext): void | Promise<void>;
  /** Called once when the extension is unloaded or replaced on a node (optional). */
  shutdown?(): void | Promise<void>;
}

/** Writes made by lambdas deeper than this many hops are refused (a loop guard; documented in the README). */
export const DEFAULT_MAX_HOPS = 8;
