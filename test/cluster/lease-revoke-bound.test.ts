/**
 * A lease revoke at its bound, on real kvd processes (3 nodes, 2 shards): one lease holding
 * 10,000 keys in each shard (the per-shard limit, docs/leases.md) is revoked, and each shard
 * deletes its 10,000 keys at one revision. A client watch over both shards receives every DELETE
 * (no drop, no duplicate, the stream stays open and goes on past them), and a lambda on DELETE
 * (at-least-once delivery) records every one of them.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvClient, LeaseClient, type KvWatchBatch } from '../../src/client/index.js';
import { AdminClient } from '../../src/client/admin-client.js';
import { packFolder } from '../../src/extensions/pack-folder.js';
import { KvdCluster } from './harness.js';

const TOKEN = 'lease-bound-admin-token-0123456789';
const PER_SHARD = 10_000;
const dir = mkdtempSync(join(tmpdir(), 'kvcascade-lease-bound-'));
const tokenFile = join(dir, 'token');
writeFileSync(tokenFile, TOKEN, { mode: 0o600 });

let cluster: KvdCluster;
let kv: KvClient;
let lc: LeaseClient;

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3, defaultShards: 2, extraArgs: ['--admin-token-file', tokenFile] });
  kv = cluster.client();
  await kv.shardMap();
  lc = new LeaseClient({ endpoints: cluster.endpoints });
}, 120_000);

afterAll(async () => {
  lc?.close();
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** `n` keys under `/fleet/` in each of the two shards. */
function keysPerShard(n: number): Map<number, string[]> {
  const byShard = new Map<number, string[]>();
  for (let i = 0; [...byShard.values()].filter((ks) => ks.length >= n).length < 2; i++) {
    const k = `/fleet/${String(i).padStart(6, '0')}`;
    const s = kv.routeOf(k).shard!;
    const ks = byShard.get(s) ?? [];
    if (ks.length < n) ks.push(k);
    byShard.set(s, ks);
  }
  return byShard;
}

/** Runs `fn` over `items` with `width` in flight. */
async function pool<T>(items: readonly T[], width: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

/** Every key under `prefix` (pages of 10,000). */
async function listAll(prefix: string): Promise<{ key: string; value: string }[]> {
  const out: { key: string; value: string }[] = [];
  let pageToken: string | undefined;
  do {
    const page = await kv.list(prefix, { limit: 10_000, ...(pageToken ? { pageToken } : {}) });
    for (const it of page.items) out.push({ key: it.key, value: new TextDecoder().decode(it.value) });
    pageToken = page.nextPageToken || undefined;
  } while (pageToken);
  return out;
}

describe('a lease revoke at the bound (10,000 keys in each of two shards)', () => {
  it('deletes each shard\'s keys at one revision; a watch gets every DELETE and goes on; a lambda records every one', async () => {
    const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN });
    try {
      await admin.load(await packFolder('test/extensions/fixtures/it-revoke-witness'));
    } finally {
      admin.close();
    }
    const byShard = keysPerShard(PER_SHARD);
    const keys = [...byShard.values()].flat();
    expect(byShard.size).toBe(2);
    const id = await lc.grant(600);
    const t0 = Date.now();
    await pool(keys, 64, async (k) => {
      const r = await kv.put(k, 'on', { lease: id });
      expect(r.succeeded).toBe(true);
    });
    const fillMs = Date.now() - t0;
    // One more key in each shard would pass the bound.
    const over = keysPerShard(PER_SHARD + 1);
    for (const ks of over.values()) await expect(kv.put(ks[PER_SHARD]!, 'on', { lease: id })).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });

    // Watch both shards from now on, then revoke.
    const w = kv.watch('/fleet/');
    const batches: KvWatchBatch[] = [];
    let deletes = 0;
    const after = '/fleet/zz-after-the-revoke';
    const watched = (async () => {
      for await (const b of w) {
        batches.push(b);
        for (const e of b.events) if (e.type === 'delete') deletes++;
        if (b.events.some((e) => e.key === after)) break;
      }
    })();
    // The watch is open (its first response, a progress notification) before the revoke.
    for (let i = 0; i < 100 && batches.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(batches.length).toBeGreaterThan(0);
    const t1 = Date.now();
    await lc.revoke(id);
    const revokeMs = Date.now() - t1;
    // The stream goes on past the revoke: a put after it arrives too.
    await kv.put(after, 'x');
    const timeout = setTimeout(() => w.close(), 120_000);
    await watched;
    clearTimeout(timeout);
    w.close();

    const events = batches.flatMap((b) => b.events);
    const dels = events.filter((e) => e.type === 'delete');
    expect(dels.length).toBe(keys.length);
    expect(new Set(dels.map((e) => e.key)).size).toBe(keys.length);
    expect(new Set(dels.map((e) => e.key))).toEqual(new Set(keys));
    for (const [shard, ks] of byShard) {
      const mine = dels.filter((e) => e.shard === shard);
      expect(mine.length).toBe(ks.length);
      expect(new Set(mine.map((e) => e.revision)).size).toBe(1); // one revision per shard
    }
    expect(events.some((e) => e.key === after && e.type === 'put')).toBe(true);
    const largest = Math.max(...batches.map((b) => b.events.length));
    const largestBytes = Math.max(...batches.map((b) => b.events.reduce((n, e) => n + e.key.length + e.value.length, 0)));
    expect(largest).toBeLessThanOrEqual(PER_SHARD);

    // The keys are gone everywhere.
    expect((await kv.list('/fleet/', { limit: 10, keysOnly: true })).items.map((i) => i.key)).toEqual([after]);

    // The lambda (at least once) saw every DELETE, each at its shard's revoke revision.
    const revisionOf = new Map(dels.map((e) => [e.key, e.revision]));
    let seen: { key: string; value: string }[] = [];
    const deadline = Date.now() + 180_000;
    while (Date.now() < deadline) {
      seen = await listAll('/seen/');
      if (seen.length >= keys.length) break;
      await new Promise((r) => setTimeout(r, 1_000));
    }
    expect(seen.length).toBe(keys.length);
    for (const s of seen) expect(Number(s.value)).toBe(revisionOf.get(`/fleet/${s.key.slice('/seen/'.length)}`));
    const lambdaMs = Date.now() - t1;
    console.log(
      `lease revoke at the bound: ${keys.length} puts with a lease in ${fillMs} ms; revoke answered in ${revokeMs} ms; ` +
        `watch: ${dels.length} DELETEs in ${batches.length} responses, largest ${largest} events (${largestBytes} key bytes); lambda recorded all ${seen.length} within ${lambdaMs} ms of the revoke`,
    );
  }, 600_000);
});
