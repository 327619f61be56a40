/**
 * Multi-process tests: three real kvd processes on loopback, driven through KvClient: every
 * API call and its errors, conditional-put races, watch resume, restarts with data intact.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvError } from '../../src/client/index.js';
import { KvdCluster } from './harness.js';

const dec = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);

let cluster: KvdCluster;

beforeAll(async () => {
  cluster = await KvdCluster.start({ nodes: 3 });
});

afterAll(async () => {
  await cluster?.stop();
});

describe('the KV API on a 3-process cluster', () => {
  it('put, get (latest, by version, by time, serializable), delete, list with pages', async () => {
    const c = cluster.client();
    const v1 = await c.put('/api/a', 'one');
    expect(v1.succeeded).toBe(true);
    const between = Date.now();
    await new Promise((r) => setTimeout(r, 5));
    const v2 = await c.put('/api/a', 'two');
    expect(v2.version).toBeGreaterThan(v1.version);
    expect(dec((await c.get('/api/a')).value)).toBe('two');
    expect(dec((await c.get('/api/a', { atVersion: v1.version })).value)).toBe('one');
    expect(dec((await c.get('/api/a', { atTimeMs: between })).value)).toBe('one');
    // Any node answers a serializable read from its own replica (eventually the same value).
    for (const ep of cluster.endpoints) {
      const one = cluster.client([ep]);
      const deadline = Date.now() + 5000;
      let v: string | undefined;
      while (Date.now() < deadline && v !== 'two') v = dec((await one.get('/api/a', { consistency: 'serializable' })).value);
      expect(v).toBe('two');
    }
    const missing = await c.get('/api/missing');
    expect(missing.found).toBe(false);
    const del = await c.delete('/api/a');
    expect(del.deleted).toBe(true);
    expect((await c.get('/api/a')).found).toBe(false);
    expect(dec((await c.get('/api/a', { atVersion: v2.version })).value)).toBe('two');

    for (let i = 0; i < 25; i++) await c.put(`/api/list/${String(i).padStart(2, '0')}`, `v${i}`);
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await c.list('/api/list/', { limit: 10, pageToken: token });
      seen.push(...page.items.map((i) => i.key));
      token = page.nextPageToken;
      pages++;
    } while (token);
    expect(pages).toBe(3);
    expect(seen).toEqual(Array.from({ length: 25 }, (_, i) => `/api/list/${String(i).padStart(2, '0')}`));
    const keysOnly = await c.list('/api/list/', { limit: 2, keysOnly: true });
    expect(keysOnly.items[0]!.value.length).toBe(0);
  });

  it('conditional put: only-if-absent, version match, conflict returns the current version', async () => {
    const c = cluster.client();
    const created = await c.put('/cas/x', 'a', { expectedVersion: 0 });
    expect(created.succeeded).toBe(true);
    const again = await c.put('/cas/x', 'b', { expectedVersion: 0, returnCurrentValue: true });
    expect(again.succeeded).toBe(false);
    expect(again.currentVersion).toBe(created.version);
    expect(dec(again.currentValue)).toBe('a');
    const next = await c.put('/cas/x', 'c', { expectedVersion: created.version });
    expect(next.succeeded).toBe(true);
    const stale = await c.delete('/cas/x', { expectedVersion: created.version });
    expect(stale.succeeded).toBe(false);
    expect(stale.currentVersion).toBe(next.version);
  });

  it('concurrent conditional puts from many clients: exactly one winner per version', async () => {
    const clients = Array.from({ length: 6 }, (_, i) => cluster.client([cluster.endpoints[i % 3]!]));
    await clients[0]!.put('/race/counter', '0');
    const wins: number[] = [];
    await Promise.all(
      clients.map(async (c) => {
        for (let round = 0; round < 15; round++) {
          const cur = await c.get('/race/counter');
          const n = Number(dec(cur.value));
          const r = await c.put('/race/counter', String(n + 1), { expectedVersion: cur.version });
          if (r.succeeded) wins.push(cur.version);
          else expect(r.currentVersion).toBeGreaterThan(cur.version);
        }
      }),
    );
    // Each version was won by at most one client, and the counter counts exactly the wins.
    expect(new Set(wins).size).toBe(wins.length);
    const final = await clients[0]!.get('/race/counter');
    expect(Number(dec(final.value))).toBe(wins.length);
    expect(wins.length).toBeGreaterThan(0);
  });

  it('rejects bad input with the documented status and keeps serving', async () => {
    const c = cluster.client();
    const code = async (p: Promise<unknown>) => {
      try {
        await p;
        return 'OK';
      } catch (e) {
        expect(e).toBeInstanceOf(KvError);
        return (e as KvError).code;
      }
    };
    expect(await code(c.put('', 'x'))).toBe('INVALID_ARGUMENT');
    expect(await code(c.put('k'.repeat(5000), 'x'))).toBe('INVALID_ARGUMENT');
    expect(await code(c.put('/big', new Uint8Array(1024 * 1024 + 1)))).toMatch(/INVALID_ARGUMENT|RESOURCE_EXHAUSTED/);
    // The client refuses oversized values before sending; the server's 1.5 MiB request limit (RESOURCE_EXHAUSTED) is tested in test/server.
    expect(await code(c.put('/huge', new Uint8Array(2 * 1024 * 1024)))).toMatch(/INVALID_ARGUMENT|RESOURCE_EXHAUSTED/);
    expect(await code(c.get('/x', { atVersion: 1, atTimeMs: 1 }))).toBe('INVALID_ARGUMENT');
    expect(await code(c.list('/x', { pageToken: '%%%not-a-token' }))).toBe('INVALID_ARGUMENT');
    expect(await code(c.put('/deadline', 'x', { deadlineMs: 0.001 }))).toMatch(/DEADLINE_EXCEEDED|OK/);
    // Still serving.
    const ok = await c.put('/after-bad-input', 'fine');
    expect(ok.succeeded).toBe(true);
  });

  it('watch: ordered events from a revision, and a resumed watch has no gap and no duplicate', async () => {
    const c = cluster.client();
    const start = await c.put('/watch/0', 'x');
    const writer = (async () => {
      for (let i = 1; i <= 30; i++) await c.put(`/watch/${i}`, `v${i}`);
      await c.delete('/watch/0');
    })();
    const got: number[] = [];
    const ac = new AbortController();
    for await (const batch of c.watch('/watch/', { fromRevision: start.version, signal: ac.signal })) {
      got.push(...batch.events.map((e) => e.revision));
      if (got.length >= 10) break; // disconnect midway
    }
    const resumeFrom = got[got.length - 1]! + 1;
    for await (const batch of c.watch('/watch/', { fromRevision: resumeFrom })) {
      got.push(...batch.events.map((e) => e.revision));
      if (got.length >= 32) break;
    }
    await writer;
    expect(got.length).toBe(32);
    expect(new Set(got).size).toBe(32);
    expect([...got].sort((a, b) => a - b)).toEqual(got);
    // Contiguous: this prefix is the only writer in the run during this window.
    expect(got[31]! - got[0]!).toBe(31);
  });

  it('exposes Prometheus metrics on every node', async () => {
    const c = cluster.client();
    for (let i = 0; i < 5; i++) await c.put(`/metrics/${i}`, 'x');
    await c.get('/metrics/0');
    const leader = await cluster.waitForLeader();
    const text = await (await fetch(`http://127.0.0.1:${cluster.node(leader).metricsPort}/metrics`)).text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    expect(value(/kvcascade_requests_total\{method="put",status="OK"\} (\d+)/)).toBeGreaterThanOrEqual(5);
    expect(value(/kvcascade_raft_is_leader\{group="1"\} (\d+)/)).toBe(1);
    expect(value(/kvcascade_fsync_duration_seconds_count (\d+)/)).toBeGreaterThan(0);
    expect(value(/kvcascade_raft_commit_duration_seconds_count (\d+)/)).toBeGreaterThanOrEqual(5);
    expect(value(/kvcascade_raft_term\{group="1"\} (\d+)/)).toBeGreaterThan(0);
    // One set of engine write counters: ops by record kind and op, batches (one per fsynced round), clears.
    expect(value(/kvcascade_engine_ops_total\{record="g\/l",op="put"\} (\d+)/)).toBeGreaterThanOrEqual(5);
    expect(value(/kvcascade_engine_batches_total (\d+)/)).toBeGreaterThan(0);
    expect(value(/kvcascade_engine_clears_total (\d+)/)).toBe(0);
    expect(text).not.toContain('kvcascade_storage_engine_ops_total');
    expect(text).not.toContain('kvcascade_engine_synced_batches_total');
    for (const name of ['kvcascade_request_duration_seconds_bucket', 'kvcascade_fsync_batch_entries_bucket', 'kvcascade_raft_applied_index', 'kvcascade_raft_log_entries', 'kvcascade_raft_leader_changes_total']) {
      expect(text).toContain(name);
    }
    // A missing key is counted under the gRPC code name the client got, never an internal class name.
    await c.get('/metrics/absent');
    await c.put('/_sys/forbidden', 'x').catch(() => undefined);
    const after = await (await fetch(`http://127.0.0.1:${cluster.node(leader).metricsPort}/metrics`)).text();
    const statuses = [...after.matchAll(/kvcascade_requests_total\{method="[a-z]+",status="([^"]+)"\}/g)].map((m) => m[1]!);
    for (const st of statuses) expect(st).toMatch(/^[A-Z_]+$/);
    // Totals are counters (their TYPE says so), and process series carry the prefix once.
    expect(after).toMatch(/# TYPE kvcascade_peer_messages_sent_total counter/);
    expect(after).toContain('kvcascade_process_cpu_seconds_total');
    expect(after).not.toContain('kvcascade_process_process_');
  });

  it('survives a restart of every node with its data intact', async () => {
    const c = cluster.client();
    const keys = Array.from({ length: 20 }, (_, i) => `/persist/${i}`);
    for (const k of keys) await c.put(k, k);
    for (const n of cluster.nodes) await cluster.kill(n.id, 'SIGTERM');
    for (const n of cluster.nodes) await cluster.startNode(n.id);
    await cluster.waitForLeader();
    const c2 = cluster.client();
    for (const k of keys) expect(dec((await c2.get(k)).value)).toBe(k);
  });
});
