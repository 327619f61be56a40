/** The worker thread's main module: runs one extension's Guest and speaks the protocol in protocol.ts with the runner (see guest-port.ts). */
import { parentPort } from 'node:worker_threads';
import type { Guest, ModuleSource } from './guest.js';
import { serveGuest } from './guest-port.js';
import type { FromWorker, NativeInit, ToWorker } from './protocol.js';

const port = parentPort;
if (!port) throw new Error('worker-entry must run in a worker thread');

/**
 * A native package as a Guest module source: the adapter and the bridge are imported only when
 * needed (JS extensions never load koffi). host->get/put block this thread on a sync kv client
 * posting on parentPort; each call carries `g.kvHops()`, the hop count of the event whose lambda
 * is running + 1 (1 during initialize/shutdown), for the host's loop protection; each put, the
 * idempotency key derived from that event (effectively-once writes, as for JS lambdas).
 */
function nativeSource(n: NativeInit, g: Guest): ModuleSource {
  return {
    describe: `the native extension in ${n.packageDir}`,
    load: async () => {
      const [{ loadNativeExtensionPackage }, { createSyncKvClient }] = await Promise.all([import('../native/ffi-adapter.js'), import('../native/sync-kv-bridge.js')]);
      const syncKv = createSyncKvClient(port!, { timeoutMs: n.kvTimeoutMs, hops: () => g.kvHops(), effect: (op, key) => g.kvEffect(op, [key]) });
      return loadNativeExtensionPackage(n.packageDir, { syncKv });
    },
  };
}

serveGuest({
  post: (msg: FromWorker, transfer: ArrayBuffer[], onFail?: (e: unknown) => void) => {
    if (!onFail) {
      port.postMessage(msg, transfer);
      return;
    }
    try {
      port.postMessage(msg, transfer);
    } catch (e) {
      onFail(e);
    }
  },
  onMessage: (handler: (msg: ToWorker) => void) => port.on('message', handler),
  native: nativeSource,
});
