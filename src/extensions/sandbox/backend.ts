/** The interface between ExtensionRunner and the place an extension runs (a worker thread or the main thread). */
import type { ExtensionEvent } from '../api.js';
import type { RegisteredWatch } from './types.js';

/** How a backend died after it was ready. */
export interface DownCause {
  readonly kind: 'worker-crashed' | 'out-of-memory';
  readonly message: string;
}

/** What a backend reports to its runner. */
export interface BackendEvents {
  /** Invocation `id` finished; `error` is what the lambda threw (undefined on success). */
  done(id: number, error: Error | undefined): void;
  /** The backend died after `load` succeeded (reported at most once). */
  down(cause: DownCause): void;
}

/** One incarnation of an extension (one worker, or the in-process guest). */
export interface Backend {
  /** Whether `kill` really stops running code (true for workers). */
  readonly canKill: boolean;
  /** False once the backend died or was killed. */
  readonly alive: boolean;
  /** Imports the module and runs initialize; rejects with ExtensionLoadError (including INITIALIZE_TIMEOUT after `timeoutMs`). */
  load(timeoutMs: number): Promise<RegisteredWatch[]>;
  /** Starts invocation `id`; completion is reported through `BackendEvents.done`. */
  invoke(id: number, watchId: number, event: ExtensionEvent): void;
  /** Runs the module's shutdown(); resolves with its error, `'timeout'`, or undefined. Never rejects. */
  shutdown(timeoutMs: number): Promise<Error | 'timeout' | undefined>;
  /** Stops the backend (terminates the worker); resolves once it is gone (or after a bounded wait). */
  kill(): Promise<void>;
}
