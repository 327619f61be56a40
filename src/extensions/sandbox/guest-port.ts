/** The guest side of the sandbox protocol, shared by the worker thread entry and the child process entry: runs one extension's Guest and answers the runner's messages over a port. */
import { Guest, type GuestLink, type ModuleSource } from './guest.js';
import type { FromWorker, NativeInit, ToWorker } from './protocol.js';
import { cloneSafe, prepareTransfer, reviveError, serializeError } from './transfer.js';
import type { EffectSession, KvOp, LogLevel, MetricKind, MetricOp } from './types.js';

/** How the guest talks to the runner: a worker's parentPort, or a child process's IPC channel. */
export interface GuestPort {
  /**
   * Sends one message. When it cannot be sent (it cannot be cloned), calls `onFail`, at once or
   * later (a batching port serializes later); without `onFail`, may throw.
   */
  post(msg: FromWorker, transfer: ArrayBuffer[], onFail?: (e: unknown) => void): void;
  /** Registers the handler of the runner's messages. */
  onMessage(handler: (msg: ToWorker) => void): void;
  /**
   * Loads a native package (worker threads only); absent where native extensions cannot run
   * (a child process: the blocking kv bridge needs memory shared with the node).
   */
  native?: (n: NativeInit, g: Guest) => ModuleSource;
  /**
   * Measures the CPU time an invocation used: called when it starts, the returned function when it
   * ends, giving µs (absent: not measured). In a child process this is `process.cpuUsage()`, i.e.
   * the whole process's CPU between start and end (concurrent invocations overlap).
   */
  cpuMeter?: () => () => number;
}

/**
 * Serves the sandbox protocol (protocol.ts) on `port`: `init` loads the extension into a Guest,
 * `invoke` runs a lambda and answers `done` (with its CPU time when `port.cpuMeter` is set),
 * `kv-result` answers a pending `ctx.kv` call, `shutdown` runs the module's shutdown().
 */
export function serveGuest(port: GuestPort): void {
  let guest: Guest | undefined;
  let nextKvId = 1;
  const pendingKv = new Map<number, { resolve(v: unknown): void; reject(e: unknown): void }>();
  const post = (msg: FromWorker, transfer: ArrayBuffer[] = [], onFail?: (e: unknown) => void): void => port.post(msg, transfer, onFail);

  const link: GuestLink = {
    kv(op: KvOp, args: unknown[], hops: number, effect?: EffectSession, invocation?: number): Promise<unknown> {
      return new Promise((resolve, reject) => {
        const id = nextKvId++;
        const prepared = prepareTransfer(args);
        pendingKv.set(id, { resolve, reject });
        post({ t: 'kv', id, op, args: prepared.value, hops, ...(effect ? { effect } : {}), ...(invocation !== undefined ? { invocation } : {}) }, prepared.transfer, (e) => {
          pendingKv.delete(id);
          reject(e);
        });
      });
    },
    log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
      if (fields === undefined || fields === null || typeof fields !== 'object') {
        post({ t: 'log', level, msg });
        return;
      }
      post({ t: 'log', level, msg, fields }, [], () => post({ t: 'log', level, msg, fields: cloneSafe(fields) }));
    },
    metric(kind: MetricKind, name: string, help: string, op: MetricOp): void {
      post({ t: 'metric', kind, name, help, op });
    },
  };

  port.onMessage((msg: ToWorker) => {
    switch (msg.t) {
      case 'init': {
        const g = new Guest(msg.name, msg.config, link);
        guest = g;
        let source: ModuleSource = msg.moduleUrl;
        if (msg.native) {
          if (!port.native) {
            post({ t: 'init-failed', error: { name: 'GuestLoadError', message: 'native extensions cannot run in this sandbox (worker threads only)', loadCode: 'IMPORT_FAILED' } });
            return;
          }
          source = port.native(msg.native, g);
        }
        g.load(source, () => post({ t: 'imported' })).then(
          (watches) => post({ t: 'ready', watches }),
          (e: unknown) => {
            const cause = (e as { cause?: unknown } | null)?.cause;
            post({ t: 'init-failed', error: serializeError(e), ...(cause === undefined ? {} : { cause: serializeError(cause) }) });
          },
        );
        return;
      }
      case 'invoke': {
        const g = guest;
        if (!g) {
          post({ t: 'done', id: msg.id, error: { name: 'Error', message: 'extension not initialized' } });
          return;
        }
        const stop = port.cpuMeter?.();
        g.invoke(msg.watchId, msg.event, msg.id).then(
          () => post(stop ? { t: 'done', id: msg.id, cpuUs: stop() } : { t: 'done', id: msg.id }),
          (e: unknown) => post(stop ? { t: 'done', id: msg.id, error: serializeError(e), cpuUs: stop() } : { t: 'done', id: msg.id, error: serializeError(e) }),
        );
        return;
      }
      case 'kv-result': {
        const p = pendingKv.get(msg.id);
        if (!p) return;
        pendingKv.delete(msg.id);
        if (msg.ok) p.resolve(msg.value);
        else p.reject(reviveError(msg.error));
        return;
      }
      case 'shutdown': {
        const g = guest;
        (g ? g.shutdown() : Promise.resolve()).then(
          () => post({ t: 'shutdown-done' }),
          (e: unknown) => post({ t: 'shutdown-done', error: serializeError(e) }),
        );
        return;
      }
    }
  });
}
