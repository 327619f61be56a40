/** The message protocol between the extension runner (main thread) and its guest: a worker thread, or a child process (over its IPC channel). */
import type { ExtensionEvent } from '../api.js';
import type { EffectSession, KvOp, LogLevel, MetricKind, MetricOp, RegisteredWatch, SerializedError } from './types.js';

/**
 * How the worker loads a native (C ABI) package instead of importing `moduleUrl`: with
 * `loadNativeExtensionPackage(packageDir, { syncKv })`, where `syncKv` is a sync kv bridge client
 * on the worker's parentPort (served by the WorkerBackend) with this timeout per call.
 */
export interface NativeInit {
  packageDir: string;
  kvTimeoutMs: number;
}

/**
 * Main thread → worker.
 * - `init`: import `moduleUrl` (or load the native package `native`) and run `initialize`
 *   (answered by `imported`, then `ready` or `init-failed`).
 * - `invoke`: run the lambda of watch `watchId` on `event` (answered by `done` with the same `id`).
 * - `kv-result`: the answer to the worker's `kv` request `id`.
 * - `shutdown`: run the module's `shutdown()` (answered by `shutdown-done`).
 */
export type ToWorker =
  | { t: 'init'; name: string; moduleUrl: string; config: Record<string, unknown>; native?: NativeInit }
  | { t: 'invoke'; id: number; watchId: number; event: ExtensionEvent }
  | { t: 'kv-result'; id: number; ok: true; value: unknown }
  | { t: 'kv-result'; id: number; ok: false; error: SerializedError }
  | { t: 'shutdown' };

/**
 * Worker → main thread.
 * - `imported`: the module was imported (a crash after this point is an initialize failure).
 * - `ready` / `init-failed`: outcome of `init`; `init-failed` carries `error.loadCode` and the extension's own error as `cause`.
 * - `done`: an invocation finished (`error` set when the lambda threw or rejected; `cpuUs`, from a
 *   child process only: the process CPU time, user + system, used while it ran).
 * - `kv`: a `ctx.kv` call to perform on the host (`hops` already incremented; `invocation`: the
 *   `id` of the `invoke` it was made in, absent in initialize and shutdown).
 * - `log` / `metric`: fire-and-forget `ctx.log` / `ctx.metrics` calls.
 * - `shutdown-done`: the module's `shutdown()` finished (`error` set when it threw).
 */
export type FromWorker =
  | { t: 'imported' }
  | { t: 'ready'; watches: RegisteredWatch[] }
  | { t: 'init-failed'; error: SerializedError; cause?: SerializedError }
  | { t: 'done'; id: number; error?: SerializedError; cpuUs?: number }
  | { t: 'kv'; id: number; op: KvOp; args: unknown[]; hops: number; effect?: EffectSession; invocation?: number }
  | { t: 'log'; level: LogLevel; msg: string; fields?: Record<string, unknown> }
  | { t: 'metric'; kind: MetricKind; name: string; help: string; op: MetricOp }
  | { t: 'shutdown-done'; error?: SerializedError };
