/** Runs an extension on the main thread (trusted mode): same API as a worker, but nothing can stop runaway code. */
import type { ExtensionEvent } from '../api.js';
import type { Backend, BackendEvents } from './backend.js';
import { ExtensionLoadError } from './errors.js';
import { Guest, GuestLoadError } from './guest.js';
import { copyBytes, errorMessage } from './transfer.js';
import type { RegisteredWatch, RelayedHostServices } from './types.js';

/** Everything an InProcessBackend needs. */
export interface InProcessBackendOptions {
  name: string;
  moduleUrl: string;
  config: Record<string, unknown>;
  host: RelayedHostServices;
  events: BackendEvents;
}

/**
 * The in-process incarnation of an extension. Values are copied into the lambda (so it never
 * aliases the node's buffers) but kv results and errors are passed through unchanged. `kill`
 * only stops delivering results; a lambda that loops synchronously blocks the whole node, and
 * module state is shared with any other in-process runner of the same module (Node's module cache).
 */
export class InProcessBackend implements Backend {
  readonly canKill = false;
  private dead = false;
  private readonly guest: Guest;

  constructor(private readonly o: InProcessBackendOptions) {
    const host = o.host;
    this.guest = new Guest(o.name, structuredClone(o.config), {
      kv: (op, args, hops, effect, invocation) => {
        try {
          return Promise.resolve(host.kv(op, args, hops, effect, invocation));
        } catch (e) {
          return Promise.reject(e);
        }
      },
      log: (level, msg, fields) => {
        try {
          host.log(level, msg, fields);
        } catch {
          // the host's logger failing must not fail the extension
        }
      },
      metric: (kind, name, help, op) => {
        try {
          host.metric(kind, name, help, op);
        } catch (e) {
          try {
            host.log('warn', 'metric update failed', { metric: name, error: errorMessage(e) });
          } catch {
            // ignore
          }
        }
      },
    });
  }

  get alive(): boolean {
    return !this.dead;
  }

  load(timeoutMs: number): Promise<RegisteredWatch[]> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.dead = true;
        reject(new ExtensionLoadError('INITIALIZE_TIMEOUT', this.o.name, `import + initialize() did not finish within ${timeoutMs} ms (in-process: it may still be running)`));
      }, timeoutMs);
      this.guest.load(this.o.moduleUrl).then(
        (watches) => {
          clearTimeout(timer);
          resolve(watches);
        },
        (e: unknown) => {
          clearTimeout(timer);
          this.dead = true;
          if (e instanceof GuestLoadError) reject(new ExtensionLoadError(e.loadCode, this.o.name, e.message, { cause: e.cause }));
          else reject(new ExtensionLoadError('INITIALIZE_THREW', this.o.name, errorMessage(e), { cause: e }));
        },
      );
    });
  }

  invoke(id: number, watchId: number, event: ExtensionEvent): void {
    const ev: ExtensionEvent = { ...event, value: copyBytes(event.value) };
    this.guest.invoke(watchId, ev, id).then(
      () => {
        if (!this.dead) this.o.events.done(id, undefined);
      },
      (e: unknown) => {
        if (!this.dead) this.o.events.done(id, e instanceof Error ? e : new Error(errorMessage(e)));
      },
    );
  }

  async shutdown(timeoutMs: number): Promise<Error | 'timeout' | undefined> {
    if (this.dead) return undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.guest.shutdown().then(
          () => undefined,
          (e: unknown) => (e instanceof Error ? e : new Error(errorMessage(e))),
        ),
        new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs))),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill(): Promise<void> {
    this.dead = true;
    return Promise.resolve();
  }
}
