/**
 * Extensions listed in a node's configuration: at start the node makes sure each is registered
 * cluster-wide (by loading it itself when it leads the metadata group, or through the leader's
 * Admin service when it has the admin token), unless the registry already holds that package.
 */
import { stat } from 'node:fs/promises';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { KvError } from '../client/errors.js';
import { AdminClient } from '../client/admin-client.js';
import type { ExtensionManager } from '../extensions/manager.js';
import { packageDigest, readTarball } from '../extensions/package.js';
import { packFolder } from '../extensions/pack-folder.js';
import { META_GROUP, type KvNode } from '../node/kv-node.js';
import type { KvdConfig } from './kvd-config.js';

/** Runs in the background until every configured extension is registered; `stop()` ends it. */
export function ensureConfiguredExtensions(
  cfg: KvdConfig,
  node: KvNode,
  manager: ExtensionManager,
  log: Logger,
  credentials: grpc.ChannelCredentials,
): { stop(): void } {
  let stopped = false;
  const run = async () => {
    for (const ext of cfg.extensions) {
      let tgz: Uint8Array;
      try {
        tgz = (await stat(ext.path)).isDirectory() ? await packFolder(ext.path) : await readTarball(ext.path);
      } catch (e) {
        log.error({ path: ext.path, err: (e as Error).message }, 'configured extension cannot be read');
        continue;
      }
      const digest = packageDigest(tgz);
      for (let attempt = 0; !stopped; attempt++) {
        if (manager.records().some((r) => r.sha256 === digest && (!ext.name || r.name === ext.name))) break;
        try {
          if (node.replica(META_GROUP)?.isLeader) {
            const s = await manager.load(tgz, { ...(ext.name ? { name: ext.name } : {}), config: ext.config ?? {} });
            log.info({ extension: s.name, state: s.state }, 'configured extension loaded');
            if (s.state === 'failed') log.error({ extension: s.name, err: s.error }, 'configured extension failed to load');
            break;
          }
          const leader = node.leaderAddress(META_GROUP);
          if (leader && cfg.adminToken) {
            const admin = new AdminClient({ endpoints: [leader], token: cfg.adminToken, credentials });
            try {
              await admin.load(tgz, { ...(ext.name ? { name: ext.name } : {}), config: ext.config ?? {} });
              break;
            } finally {
              admin.close();
            }
          }
        } catch (e) {
          const msg = (e as Error).message;
          const refused = e instanceof KvError && ['FAILED_PRECONDITION', 'INVALID_ARGUMENT', 'PERMISSION_DENIED', 'UNAUTHENTICATED'].includes(e.code);
          if ((e as Error).name === 'ExtensionLoadError' || (e as Error).name === 'PackageError' || refused) {
            log.error({ path: ext.path, err: msg }, 'configured extension refused');
            break;
          }
          if (attempt % 10 === 0) log.warn({ path: ext.path, err: msg }, 'configured extension not loaded yet; retrying');
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  };
  void run();
  return {
    stop: () => {
      stopped = true;
    },
  };
}
