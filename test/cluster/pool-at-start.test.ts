/**
 * Regression (found by the console's browser test, 2026-12-03): a pool created right after a
 * cluster starts, before its first map was written, was computed against the bootstrap map and
 * stored as a diff of it — without the default pool — so every node refused the stored map as
 * malformed and the creation failed with POOL_NOT_FOUND (about one start in two). Map changes now
 * wait for the written map.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { KvdCluster } from './harness.js';

const TOKEN = 'pool-at-start-admin-token-0123456789';
let cluster: KvdCluster | undefined;

afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

describe('map changes at cluster start', () => {
  it('a pool created as soon as the cluster answers is created, and every node keeps a well-formed map', async () => {
    for (let round = 0; round < 4; round++) {
      cluster = await KvdCluster.start({ nodes: 3, extraArgs: ['--admin-token', TOKEN] });
      const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN });
      try {
        const { pool } = await admin.createPool({ name: `/early${round}`, shards: 1, affinity: '^/early[0-9]/([^/]+)' });
        expect(pool.state).toBe('active');
        const map = await cluster.client().shardMap();
        expect(map.pools.map((p) => p.name).sort()).toEqual(['', `/early${round}`].sort()); // '' is the default pool
        for (const n of cluster.nodes) expect(n.stderr.join('')).not.toMatch(/cluster map in the metadata group is malformed/);
      } finally {
        admin.close();
        await cluster.stop();
        cluster = undefined;
      }
    }
  }, 120_000);
});
