/**
 * Nodes serve values from their engine (issue 17): the heap keeps the key/version index and only
 * the values whose records are not yet durable, reads of values not cached go to the engine
 * (latest, by version, by time, list), a restart loads the index without values, and a follower
 * installing a snapshot ends up with its values in the engine, not the heap.
 */
import { describe, expect, it } from 'vitest';
import { DATA_GROUP, KvNode, META_GROUP, type NodeOptions } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine, type KvEngine } from '../../src/storage/kv-engine.js';
import { encodeSnapshotFromRecords } from '../../src/storage/state-store.js';
import { replicaState } from '../support/records-state.js';
import { KvStateMachine } from '../../src/statemachine/index.js';
import { leaseAttachmentPrefix } from '../../src/statemachine/lease-keys.js';
import { converged as convergedIn, leaderOf, nodeTrio, preferredLeaderOf } from '../support/node-trio.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => (b === undefined ? undefined : new TextDecoder().decode(b));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const deadline = (ms = 5000) => ({ deadlineMs: Date.now() + ms });
const value = (i: number, v: number) => `${i}.${v}.${'v'.repeat(400)}`;


const trio = nodeTrio(7200);
const openNode = trio.open;


/** Both the metadata and the data group converged. */
const converged = (nodes: KvNode[]): Promise<void> => convergedIn(nodes, { groups: [META_GROUP, DATA_GROUP] });

/** Waits until every node's data replica holds at most `maxBytes` of value bytes in its index (released once durable). */
async function released(nodes: KvNode[], maxBytes: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const worst = Math.max(...nodes.map((n) => n.replica(DATA_GROUP)!.internalsForTests().sm.heapValueBytes()));
    if (worst <= maxBytes) return;
    if (Date.now() > until) throw new Error(`values still in the heap: ${worst} bytes`);
    // A round's records are durable with the next fsynced batch: a write makes one.
    await sleep(20);
  }
}

describe('values served from the engine', () => {
  it('keeps no value bytes in the heap once durable, reads uncached values from the engine, and restarts without loading values', async () => {
    const hub = new LoopbackHub();
    let engines = [1, 2, 3].map(() => new MemoryEngine());
    const opts: Partial<NodeOptions> = { valueCacheBytes: 8 * 1024, snapshotEveryEntries: 1_000_000, indexDropCold: true };
    let nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, opts)));
    for (const n of nodes) n.start();
    const l = await preferredLeaderOf(nodes);
    const t0 = Date.now();
    await Promise.all(Array.from({ length: 4 }, async (_, w) => {
      for (let i = w; i < 120; i += 4) await l.put({ key: `/d/${String(i).padStart(3, '0')}`, value: enc(value(i, 0)) }, deadline());
    }));
    const firstRound = (await l.get({ key: '/d/007', consistency: 'linearizable' }, deadline())).version;
    await sleep(5);
    const between = Date.now();
    await sleep(5);
    for (let i = 0; i < 120; i += 2) await l.put({ key: `/d/${String(i).padStart(3, '0')}`, value: enc(value(i, 1)) }, deadline());
    await l.put({ key: '/d/tick', value: enc('t') }, deadline());
    await converged(nodes);
    // Written: 180 values × ~400 bytes = ~72 KB; at most the last round's values stay in the heap.
    await l.put({ key: '/d/tick', value: enc('t2') }, deadline());
    await converged(nodes);
    await released(nodes, 2 * 1024);

    const read = async (n: KvNode, key: string, o: { atVersion?: number; atTimeMs?: number } = {}) =>
      dec((await n.get({ key, consistency: 'serializable', ...o }, deadline())).value);
    for (const n of nodes) {
      const missesBefore = n.valueCache.stats.misses;
      expect(await read(n, '/d/006')).toBe(value(6, 1)); // overwritten: the second version
      expect(await read(n, '/d/007')).toBe(value(7, 0));
      expect(await read(n, '/d/006', { atTimeMs: between })).toBe(value(6, 0)); // by time
      expect(await read(n, '/d/007', { atVersion: firstRound })).toBe(value(7, 0)); // by version
      expect(await read(n, '/d/006', { atTimeMs: t0 - 1 })).toBeUndefined();
      const served = { ...n.replica(DATA_GROUP)!.listCounts };
      const page = await n.list({ prefix: '/d/0', limit: 5, keysOnly: false, consistency: 'serializable' }, deadline());
      expect(page.items.map((i) => dec(i.value))).toEqual([0, 1, 2, 3, 4].map((i) => value(i, i % 2 === 0 ? 1 : 0)));
      expect(n.replica(DATA_GROUP)!.listCounts).toEqual({ ...served, fromRecords: served.fromRecords + 1 }); // the key index from the engine
      expect(n.valueCache.stats.misses).toBeGreaterThan(missesBefore);
      expect(n.valueCache.stats.bytes).toBeLessThanOrEqual(8 * 1024);
    }

    // With --index-drop-cold the heap holds reserved keys only: the state is encoded from the records (as for a lagging follower).
    const recordsSnapshot = async (e: MemoryEngine) => Buffer.from((await encodeSnapshotFromRecords(e, DATA_GROUP))!.data);
    for (const n of nodes) expect(() => n.replica(DATA_GROUP)!.internalsForTests().sm.snapshot()).toThrow(/from the engine/);
    const revisions = nodes.map((n) => n.replica(DATA_GROUP)!.revision);
    for (const n of nodes) await n.stop();
    for (const n of nodes) trio.forget(n);
    engines = engines.map((e) => e.crash(0));
    const before = await Promise.all(engines.map(recordsSnapshot)); // what was durable
    for (const [i, b] of before.entries()) expect(KvStateMachine.restore(b).revision).toBe(revisions[i]); // all of it
    nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, opts)));
    for (const [i, n] of nodes.entries()) {
      const sm = n.replica(DATA_GROUP)!.internalsForTests().sm;
      // Rebuilt from the records: the index only, no value was loaded into the heap.
      expect(sm.heapValueBytes()).toBe(0);
      expect(sm.residentValues).toBe(0);
      expect(sm.userKeyCount).toBe(121);
      expect(sm.liveSetReservedOnly).toBe(true);
      // Loaded cold: the 60 odd keys, written once, are in no version list (never built in the heap).
      expect(sm.droppedKeys).toBeGreaterThanOrEqual(60);
      expect(sm.indexSize.keys + sm.droppedKeys).toBeLessThanOrEqual(122);
      expect(sm.revision).toBe(revisions[i]);
      expect((await recordsSnapshot(engines[i]!)).equals(before[i]!)).toBe(true); // the restart rewrote nothing
    }
    // The heap holds reserved keys only: user prefixes are listed from the records, never the heap,
    // even right after the restart (the listing waits for the machine's durable point); reserved
    // prefixes (cursors, attempts, lease attachments) still list from the heap.
    const early = nodes.map((n) => n.replica(DATA_GROUP)!.listFromEngine('/d/0', { limit: 3, keysOnly: true }));
    for (const n of nodes) {
      const r = n.replica(DATA_GROUP)!;
      expect(() => r.list('/d/')).toThrow(/listed from the records/);
      expect(r.list('/_sys/', { keysOnly: true }).items.every((x) => x.key.startsWith('/_sys/'))).toBe(true);
    }
    for (const n of nodes) n.start();
    for (const [i, p] of early.entries()) {
      expect((await p).items.map((x) => x.key)).toEqual(['/d/000', '/d/001', '/d/002']);
      expect(nodes[i]!.replica(DATA_GROUP)!.listCounts).toMatchObject({ fromRecords: 1, fromMachine: 0, unavailable: 0 });
    }
    const l2 = await leaderOf(nodes);
    expect(dec((await l2.get({ key: '/d/100', consistency: 'linearizable' }, deadline())).value)).toBe(value(100, 1));
    expect(dec((await l2.get({ key: '/d/101', consistency: 'linearizable' }, deadline())).value)).toBe(value(101, 0));
    // A compaction right after a write: when the durable point is behind it, the records cannot name
    // the keys written since (the write log starts after it) and the listing waits for the next
    // durable point (whether it is behind depends on fsync timing); never a page from the heap.
    const r2 = l2.replica(DATA_GROUP)!;
    await l2.put({ key: '/d/000', value: enc('again') }, deadline());
    await r2.propose({ type: 'compact', revision: r2.revision }, 'system');
    const counts = { ...r2.listCounts };
    const page = await r2.listFromEngine('/d/00', { limit: 2 });
    expect(page.items.map((x) => [x.key, dec(x.value)])).toEqual([['/d/000', 'again'], ['/d/001', value(1, 0)]]);
    expect(r2.listCounts).toMatchObject({ fromRecords: counts.fromRecords + 1, fromMachine: counts.fromMachine, unavailable: counts.unavailable });
  });

  it.each([false, true])('lists from the records what was just written, before its round is durable (the overlay), and deletions at once (index drop cold: %s)', async (indexDropCold) => {
    const hub = new LoopbackHub();
    // Slow disks: a round's records stay unsynced for a while after its writes are acknowledged.
    const engines = [1, 2, 3].map(() => new MemoryEngine({ latencyMs: 15 }));
    // Explicit both ways: `false` keeps the heap path (every key's version list, lists able to fall back to the heap), the default is `true`.
    const nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, { valueCacheBytes: 8 * 1024, indexDropCold })));
    for (const n of nodes) n.start();
    const l = await preferredLeaderOf(nodes);
    const r = l.replica(DATA_GROUP)!;
    const keys = (page: { items: ReadonlyArray<{ key: string }> }) => page.items.map((i) => i.key);
    const expected: string[] = [];
    let overlaid = 0;
    for (let i = 0; i < 30; i++) {
      const key = `/o/${String(i).padStart(2, '0')}`;
      await l.put({ key, value: enc(value(i, 0)) }, deadline());
      expected.push(key);
      if (i % 3 === 2) {
        const gone = `/o/${String(i - 1).padStart(2, '0')}`;
        await l.delete({ key: gone }, deadline());
        expected.splice(expected.indexOf(gone), 1);
      }
      if (engines[nodes.indexOf(l)]!.unsyncedBatches > 0 || r.internalsForTests().sm.residentValues > 0) overlaid++;
      const before = r.listCounts.fromRecords;
      const waited = r.listCounts.waitedForDurable;
      const page = await l.list({ prefix: '/o/', limit: 1000, keysOnly: false, consistency: 'linearizable' }, deadline());
      expect(keys(page)).toEqual(expected);
      expect(dec(page.items.find((x) => x.key === key)?.value)).toBe(value(i, 0));
      const paged: string[] = [];
      for (let after: string | undefined; ; ) {
        const p = await l.list({ prefix: '/o/', limit: 4, keysOnly: true, consistency: 'serializable', ...(after !== undefined ? { after } : {}) }, deadline());
        paged.push(...keys(p));
        if (p.nextAfter === undefined) break;
        after = p.nextAfter;
      }
      expect(paged).toEqual(expected);
      if (i > 0) expect(r.listCounts.fromRecords).toBeGreaterThan(before); // served from the records once the first round is durable
      // ... at once: the keys dropped from the heap (keyless write-log entries) are all at or before
      // the durable point, so the machine names every key written since (`listPlan`).
      if (i > 0) expect(r.listCounts.waitedForDurable).toBe(waited);
    }
    expect(overlaid).toBeGreaterThan(0); // some listings ran with writes not yet durable
  });

  it.each([false, true])('an idle node releases every value of a burst without another write (the apply-only rounds are written; overlapped rounds: %s)', async (overlapRounds) => {
    const hub = new LoopbackHub();
    const engines = [1, 2, 3].map(() => new MemoryEngine({ latencyMs: 1 }));
    const nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, { valueCacheBytes: 8 * 1024, overlapRounds })));
    for (const n of nodes) n.start();
    const l = await preferredLeaderOf(nodes);
    await Promise.all(Array.from({ length: 8 }, async (_, w) => {
      for (let i = w; i < 64; i += 8) await l.put({ key: `/b/${String(i).padStart(3, '0')}`, value: enc(value(i, 0)) }, deadline());
    }));
    await converged(nodes);
    // No write from here on: the last rounds applied what the burst committed (on the leader after
    // its own fsync, on the followers from a commit notice) and staged their records; those must
    // reach the engine by themselves, or their values stay in the heap until the next write.
    await released(nodes, 0, 3_000);
    for (const n of nodes) expect(n.replica(DATA_GROUP)!.internalsForTests().sm.residentValues).toBe(0);
  });

  it('a follower installing a snapshot serves the same values, and keeps them in the engine once the install is durable', async () => {
    const hub = new LoopbackHub();
    const engines = [1, 2, 3].map(() => new MemoryEngine({ latencyMs: 1 }));
    const opts: Partial<NodeOptions> = { valueCacheBytes: 16 * 1024, snapshotEveryEntries: 40, keepEntriesAfterSnapshot: 5, stateUnitBytes: 4096 };
    const nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, opts)));
    const installsOn = new Map<KvNode, number>();
    for (const n of nodes) {
      const r = n.replica(DATA_GROUP)!;
      const apply = r.apply.bind(r);
      r.apply = (rd) => {
        if (rd.snapshot) installsOn.set(n, (installsOn.get(n) ?? 0) + 1);
        apply(rd);
      };
    }
    for (const n of nodes) n.start();
    // The leader the map prefers (leadership stays there for the test), and a follower to cut off.
    const l = await preferredLeaderOf(nodes);
    const f = nodes.find((n) => n !== l)!;
    await l.put({ key: '/s/first', value: enc('1') }, deadline());
    await converged(nodes);
    for (const n of nodes) if (n !== f) { hub.blocked.add(`${n.id}>${f.id}`); hub.blocked.add(`${f.id}>${n.id}`); }
    for (let i = 0; i < 200; i++) await l.put({ key: `/s/${String(i % 150).padStart(3, '0')}`, value: enc(value(i, i >= 150 ? 1 : 0)) }, deadline());
    hub.blocked.clear();
    await converged(nodes);
    expect(installsOn.get(f) ?? 0).toBeGreaterThan(0);
    await l.put({ key: '/s/tick', value: enc('t') }, deadline());
    await converged(nodes);
    await l.put({ key: '/s/tick', value: enc('t2') }, deadline());
    await converged(nodes);
    await released([f], 2 * 1024);
    // From the records: the heap holds reserved keys only (indexDropCold, the default).
    const state = (n: KvNode) => replicaState(n, engines[nodes.indexOf(n)]!);
    expect((await state(f)).equals(await state(l))).toBe(true);
    for (const i of [0, 49, 50, 149]) {
      const got = await f.get({ key: `/s/${String(i).padStart(3, '0')}`, consistency: 'serializable' }, deadline());
      expect(dec(got.value)).toBe(value(i < 50 ? i + 150 : i, i < 50 ? 1 : 0));
    }
  });

  it('compacts the range of the latest records a mass delete removed, once it is durable (a lease revoke of 1,200 keys)', async () => {
    const hub = new LoopbackHub();
    const engines = [1, 2, 3].map(() => new MemoryEngine({ latencyMs: 1 }));
    const compactions = engines.map(() => [] as Array<[string, string]>);
    engines.forEach((e, i) => {
      // MemoryEngine has no deletion markers to compact: a spy in its place.
      (e as KvEngine).compactRange = async (start, end) => {
        compactions[i]!.push([Buffer.from(start).toString('latin1'), Buffer.from(end).toString('latin1')]);
      };
    });
    const nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, { valueCacheBytes: 8 * 1024 })));
    for (const n of nodes) n.start();
    const l = await preferredLeaderOf(nodes);
    const r = l.replica(DATA_GROUP)!;
    const lease = 77;
    const n = 1200;
    for (let i = 0; i < n; i += 100) {
      await Promise.all(
        Array.from({ length: 100 }, (_, j) => {
          const key = `/m/${String(i + j).padStart(5, '0')}`;
          // A key and its lease attachment at one revision, as the lease layer writes them.
          return r.propose({ type: 'txn', compares: [], writes: [{ type: 'put', key, value: enc('x') }, { type: 'put', key: `${leaseAttachmentPrefix(lease)}${key}`, value: enc('') }] }, 'system');
        }),
      );
    }
    await converged(nodes);
    expect(compactions.every((c) => c.length === 0)).toBe(true); // no mass delete yet
    const res = await r.propose({ type: 'revokeLeaseKeys', lease }, 'system');
    expect(res).toMatchObject({ type: 'revokeLeaseKeys', deletedKeys: n, deletedAttachments: n });
    await converged(nodes);
    const until = Date.now() + 10_000;
    while (compactions.some((c) => c.length === 0) && Date.now() < until) await sleep(20);
    for (const c of compactions) {
      // One request per replica, for the range of the deleted keys' and attachments' `l/` records.
      expect(c).toHaveLength(1);
      expect(c[0]![0]).toMatch(/^s\/[0-9a-f]{8}\/l\/\/_sys\/lease-key\/0+77\/\/m\/00000$/);
      expect(c[0]![1]).toMatch(/^s\/[0-9a-f]{8}\/l\/\/m\/01199$/);
    }
    for (const x of nodes) {
      const rx = x.replica(DATA_GROUP)!;
      const before = rx.listCounts.fromRecords;
      expect((await rx.listFromEngine('/m/', { limit: 10, keysOnly: true })).items).toEqual([]);
      expect(rx.listCounts.fromRecords).toBe(before + 1); // from the records (by default)
    }
    for (const x of nodes) await x.stop();
  });
});
