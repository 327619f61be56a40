/**
 * The extension manager runs on the in-memory twin of its host, no Raft and no KvNode: it loads
 * an extension through the registry, delivers a led shard's events, stops when the host pushes
 * the loss of the shard and resumes from the replicated cursor when it pushes a new term.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ExtensionManager } from '../../src/extensions/manager.js';
import { packFolder } from '../../src/extensions/pack-folder.js';
import type { LambdaKv } from '../../src/extensions/store-access.js';
import { silentLogger } from '../../src/log.js';
import { DATA_GROUP } from '../../src/node/kv-node.js';
import { shardOf } from '../../src/sharding/index.js';
import { MemoryExtensionHost } from './memory-host.js';

const dir = mkdtempSync(join(tmpdir(), 'kvcascade-twin-'));
const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function until(f: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(10);
  }
}

/** The store as lambdas see it, on the twin (puts only: what the fixture calls). */
function twinKv(host: MemoryExtensionHost): LambdaKv {
  const unsupported = async (): Promise<never> => {
    throw new Error('not used by this test');
  };
  return {
    put: async (key, value, _o, hops) => {
      const r = host.shard(shardOf(host.shardMap(), key).group)!.apply({ type: 'put', key, value }, 'client', hops);
      if (r.type !== 'put') throw new Error(`put answered ${r.type}`);
      return { succeeded: r.succeeded, version: r.version, currentVersion: r.version };
    },
    get: unsupported,
    delete: unsupported,
    trigger: unsupported,
    txn: unsupported,
    list: unsupported,
  };
}

describe('the extension manager on the memory twin', () => {
  it('loads, delivers while leading, stops on a pushed loss and resumes from the cursor on a new term', async () => {
    const host = new MemoryExtensionHost(1, 1);
    const shard = host.shard(DATA_GROUP)!;
    host.lead(DATA_GROUP, 1);
    const m = new ExtensionManager(host, { dataDir: dir, log: silentLogger(), lambdaKv: twinKv(host), workerHeapMb: 64 });
    m.start();
    try {
      const status = await m.load(await packFolder('test/extensions/fixtures/it-fast'), { isolation: 'worker', config: { prefix: '/in/', out: '/out' } });
      expect(status.state).toBe('running');
      const write = (key: string) => shard.apply({ type: 'put', key, value: enc.encode('v') }, 'client', 0);
      const done = (key: string) => shard.list(`/out${key}/`, { limit: 10 }).items.length > 0;
      write('/in/a');
      await until(() => done('/in/a'));
      expect(m.statuses()[0]).toMatchObject({ delivering: true, shards: [DATA_GROUP] });
      await until(() => shard.list('/_sys/cursor/it-fast/', { limit: 10 }).items.length > 0);

      host.stepDown(DATA_GROUP);
      await until(() => !m.statuses()[0]!.delivering);
      write('/in/b');
      await sleep(300);
      expect(done('/in/b')).toBe(false);

      host.lead(DATA_GROUP, 2);
      await until(() => done('/in/b'));
      expect(m.statuses()[0]).toMatchObject({ delivering: true, shards: [DATA_GROUP] });
      // Resumed from the replicated cursor: /in/a was not delivered again.
      expect(shard.list('/out/in/a/', { limit: 10 }).items).toHaveLength(1);

      expect(await m.unload('it-fast')).toBe(true);
      await until(() => m.statuses().length === 0);
    } finally {
      await m.stop();
    }
  }, 60_000);
});
