/** The worker thread's main module: runs one extension's Guest and speaks the protocol in protocol.ts with the runner. */
import { parentPort } from 'node:worker_threads';
import { Guest, type GuestLink, type ModuleSource } from './guest.js';
import type { FromWorker, NativeInit, ToWorker } from './protocol.js';
import { cloneSafe, prepareTransfer, reviveError, serializeError } from './transfer.js';
import type { KvOp, LogLevel, MetricKind, MetricOp } from './types.js';

const port = parentPort;
if (!port) throw new Error('worker-entry must run in a worker thread');

let guest: Guest | undefined;
let nextKvId = 1;
const pendingKv = new Map<number, { resolve(v: unknown): void; reject(e: unknown): void }>();

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port!.postMessage(msg, transfer);
}

const link: GuestLink = {
  kv(op: KvOp, args: unknown[], hops: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const id = nextKvId++;
      const prepared = prepareTransfer(args);
      pendingKv.set(id, { resolve, reject });
      try {
        post({ t: 'kv', id, op, args: prepared.value, hops }, prepared.transfer);
      } catch (e) {
        pendingKv.delete(id);
        reject(e);
      }
    });
  },
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    if (fields === undefined || fields === null || typeof fields !== 'object') {
      post({ t: 'log', level, msg });
      return;
    }
    try {
      post({ t: 'log', level, msg, fields });
    } catch {
      post({ t: 'log', level, msg, fields: cloneSafe(fields) });
    }
  },
  metric(kind: MetricKind, name: string, help: string, op: MetricOp): void {
    post({ t: 'metric', kind, name, help, op });
  },
};

/**
 * A native package as a Guest module source: the adapter and the bridge are imported only when
 * needed (JS extensions never load koffi). host->get/put block this thread on a sync kv client
 * posting on parentPort; each call carries `g.kvHops()`, the hop count of the event whose lambda
 * is running + 1 (1 during initialize/shutdown), for the host's loop protection.
 */
function nativeSource(n: NativeInit, g: Guest): ModuleSource {
  return {
    describe: `the native extension in ${n.packageDir}`,
    load: async () => {
      const [{ loadNativeExtensionPackage }, { createSyncKvClient }] = await Promise.all([import('../native/ffi-adapter.js'), import('../native/sync-kv-bridge.js')]);
      const syncKv = createSyncKvClient(port!, { timeoutMs: n.kvTimeoutMs, hops: () => g.kvHops() });
      return loadNativeExtensionPackage(n.packageDir, { syncKv });
    },
  };
}

port.on('message', (msg: ToWorker) => {
  switch (msg.t) {
    case 'init': {
      const g = new Guest(msg.name, msg.config, link);
      guest = g;
      g.load(msg.native ? nativeSource(msg.native, g) : msg.moduleUrl, () => post({ t: 'imported' })).then(
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
      g.invoke(msg.watchId, msg.event).then(
        () => post({ t: 'done', id: msg.id }),
        (e: unknown) => post({ t: 'done', id: msg.id, error: serializeError(e) }),
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
