/** Type-only definitions shared by the extension runner (main thread) and its guest runtime (worker or in-process). */
import type { WatchOptions } from '../api.js';

/** A store operation an extension may ask the node to perform (`ctx.kv.<op>`). */
export type KvOp = 'get' | 'put' | 'trigger' | 'delete' | 'list' | 'txn';

/** Severity of a line logged through `ctx.log`. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Kind of metric an extension registers through `ctx.metrics`. */
export type MetricKind = 'counter' | 'histogram';

/**
 * One metric call: `{}` (counter) or `{ buckets }` (histogram) when a metric is registered,
 * then `{ inc }` (counter) or `{ observe }` (histogram) for each update.
 */
export interface MetricOp {
  inc?: number;
  observe?: number;
  buckets?: number[];
}

/** Services the node (main thread) lends to one extension; every call is already tagged with the extension by the runner's creator. */
export interface HostServices {
  /**
   * Performs a store call on the extension's behalf. `args` are the `ctx.kv.<op>` arguments
   * (values as `Uint8Array`, strings already UTF-8 encoded); `hops` is the hop count of the event
   * being handled + 1 (1 for calls made during `initialize`/`shutdown` or outside any event).
   * A rejection is delivered to the extension as an `Error` keeping `name`, `message` and `code`.
   * `effect` (writes made while handling an event) is the write's idempotency key: the client
   * session derived from the triggering event (see effect-session.ts), so that the write applies
   * once however often the event is delivered. `deadlineMs` (the host's clock; set by the runner
   * for a call made while handling an event): the call must end by then, with the store's own
   * error if it could not finish: a little before the invocation itself times out, so that the
   * lambda fails with that ordinary error (retried) rather than being timed out as a hung runner
   * (which counts towards `poison`). Absent (initialize, shutdown): the services' own deadline.
   */
  kv(op: KvOp, args: unknown[], hops: number, effect?: EffectSession, deadlineMs?: number): Promise<unknown>;
  /** Writes one log line for the extension. */
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
  /**
   * Registers (`op` = `{}` / `{ buckets }`) or updates (`{ inc }` / `{ observe }`) a metric.
   * Registration is repeated after each worker restart, so it must be idempotent.
   */
  metric(kind: MetricKind, name: string, help: string, op: MetricOp): void;
}

/**
 * The host services as a backend relays its guest's calls to the runner: a store call names the
 * runner's id of the invocation it was made in (`invocation`; undefined in initialize, shutdown
 * or outside any invocation), which the runner turns into the call's deadline (HostServices.kv's
 * `deadlineMs`).
 */
export interface RelayedHostServices extends Omit<HostServices, 'kv'> {
  /** A store call (see HostServices.kv) made by invocation `invocation` of the runner. */
  kv(op: KvOp, args: unknown[], hops: number, effect?: EffectSession, invocation?: number): Promise<unknown>;
}

/** The client session (id, seq) of one write of a lambda: see effect-session.ts. */
export interface EffectSession {
  readonly id: string;
  readonly seq: number;
}

/** A watch registered by the extension during `initialize`, with every option filled in. */
export interface RegisteredWatch {
  /** Identifies the watch in `ExtensionRunner.invoke` (1, 2, … in registration order). */
  readonly id: number;
  readonly prefix: string;
  readonly options: Required<WatchOptions>;
}

/** Why an extension could not be loaded. */
export type LoadErrorCode = 'IMPORT_FAILED' | 'NO_INITIALIZE' | 'INITIALIZE_THREW' | 'INITIALIZE_TIMEOUT' | 'INVALID_WATCH';

/**
 * Why an invocation failed: the lambda threw/rejected (`threw`), ran past its timeout (`timeout`),
 * its worker died (`worker-crashed`), its child process exited, crashed or was killed by a signal
 * (`process-exited`, process isolation), it ran out of memory (`out-of-memory`: the V8 heap limit,
 * or in process isolation the process's RSS past its memory budget), the runner was stopped
 * (`stopped`) or has given up restarting its worker or process (`failed`).
 */
export type LambdaErrorKind = 'threw' | 'timeout' | 'worker-crashed' | 'process-exited' | 'out-of-memory' | 'stopped' | 'failed';

/** An error flattened to cross a thread boundary. */
export interface SerializedError {
  name: string;
  message: string;
  code?: string | number;
  stack?: string;
  /** Set on load failures reported by the guest. */
  loadCode?: LoadErrorCode;
}
