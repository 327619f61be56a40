/** The interface between ExtensionRunner and the place an extension runs (a worker thread, a child process or the main thread). */
import type { ExtensionEvent } from '../api.js';
import type { RegisteredWatch } from './types.js';

/**
 * How a backend died after it was ready: its worker thread crashed or exited (`worker-crashed`),
 * its child process exited or was killed by a signal it was not sent by the runner
 * (`process-exited`), or it ran out of memory (`out-of-memory`: the V8 heap limit, or a child
 * process's RSS past its memory budget).
 */
export interface DownCause {
  readonly kind: 'worker-crashed' | 'process-exited' | 'out-of-memory';
  readonly message: string;
  /** For an `out-of-memory` of a child process past its memory budget: the RSS seen (bytes). */
  readonly rssBytes?: number;
}

/** What a backend reports to its runner. */
export interface BackendEvents {
  /**
   * Invocation `id` finished; `error` is what the lambda threw (undefined on success); `cpuUs` is
   * the CPU time it used (µs, user + system), when the backend measures it (child processes).
   */
  done(id: number, error: Error | undefined, cpuUs?: number): void;
  /** The backend died after `load` succeeded (reported at most once). */
  down(cause: DownCause): void;
}

/** Resource use of one backend incarnation, as observed from the node (child processes only). */
export interface BackendUsage {
  /** CPU time (user + system, µs) of the whole process so far, read by the node (not reported by the guest). */
  readonly cpuUs: number;
  /** Resident set size (bytes) at the last sample. */
  readonly rssBytes: number;
  /** Highest resident set size (bytes) sampled. */
  readonly peakRssBytes: number;
}

/** One incarnation of an extension (one worker, one child process, or the in-process guest). */
export interface Backend {
  /** Whether `kill` really stops running code (true for workers and child processes). */
  readonly canKill: boolean;
  /** False once the backend died or was killed. */
  readonly alive: boolean;
  /** Imports the module and runs initialize; rejects with ExtensionLoadError (including INITIALIZE_TIMEOUT after `timeoutMs`). */
  load(timeoutMs: number): Promise<RegisteredWatch[]>;
  /** Starts invocation `id`; completion is reported through `BackendEvents.done`. */
  invoke(id: number, watchId: number, event: ExtensionEvent): void;
  /** Runs the module's shutdown(); resolves with its error, `'timeout'`, or undefined. Never rejects. */
  shutdown(timeoutMs: number): Promise<Error | 'timeout' | undefined>;
  /** Stops the backend (terminates the worker, kills the process); resolves once it is gone (or after a bounded wait). */
  kill(): Promise<void>;
  /** Resource use, where the backend observes it (child processes); undefined otherwise. */
  usage?(): BackendUsage | undefined;
}
