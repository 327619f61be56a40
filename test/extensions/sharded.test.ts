/**
 * Extensions on a sharded in-process cluster (3 nodes, a default pool of 4 shards): every event
 * of every shard is delivered at least once, in per-key order, by that shard's leader; a
 * leadership transfer of one shard resumes from its replicated cursor with nothing missed; a
 * pool created after the load is delivered from its shards' start; and dead letters stay in the
 * shard of their event.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KvNode } from '../../src/node/kv-node.js';
import { ExtCluster } from './cluster-harness.js';

const EXT = 'it-shards';
const FIX = `test/extensions/fixtures/${EXT}`;
const SHARDS = 4;
let c: ExtCluster;

interface Acked {
  readonly key: string;
  readonly version: number;
  readonly group: number;
}

const recKey = (a: { key: string; version: number }) => `/shrec${a.key}/${String(a.version).padStart(10, '0')}`;

beforeAll(async () => {
  c = await ExtCluster.start(3, { shards: SHARDS });
  // Let the shards' leaderships settle on their preferred leaders (the reconciler moves them there).
  const map = c.nodes[0]!.shardMap();
  await c.until(async () => (map.shards.every((s) => leaderId(s.group) === s.preferredLeader) ? true : undefined), 30_000);
});

afterAll(async () => {
  await c?.stop();
});

function leaderId(group: number): number | undefined {
  return c.nodes.find((n) => n.replica(group)?.isLeader)?.id;
}

/** The shards each node's manager delivers `EXT` for, by node id. */
function delivered(): Map<number, readonly number[]> {
  return new Map(c.nodes.map((n) => [n.id, c.managerOf(n).statuses().find((s) => s.name === EXT)?.shards ?? []]));
}

/** Resolves once each of `groups` is delivered by exactly one node, its current leader. */
async function deliveredByLeaders(groups: readonly number[]): Promise<void> {
  await c.until(async () => {
    const by = delivered();
    return groups.every((g) => {
      const holders = [...by].filter(([, gs]) => gs.includes(g)).map(([id]) => id);
      return holders.length === 1 && holders[0] === leaderId(g);
    })
      ? true
      : undefined;
  }, 20_000);
}

/** Resolves with every record once each acknowledged put has one. */
async function allRecorded(acked: readonly Acked[]): Promise<Map<string, string>> {
  return c.until(async () => {
    const recs = new Map((await c.list('/shrec/')).map((r) => [r.key, r.value]));
    return acked.every((a) => recs.has(recKey(a))) ? recs : undefined;
  }, 30_000);
}

/** Keys under /sh/ spread so that every shard holds at least `perShard` of them. */
function spreadKeys(groups: readonly number[], perShard: number): string[] {
  const keys: string[] = [];
  const count = new Map<number, number>(groups.map((g) => [g, 0]));
  for (let i = 0; [...count.values()].some((n) => n < perShard); i++) {
    const key = `/sh/k${i}`;
    const g = c.groupOf(key);
    if ((count.get(g) ?? perShard) >= perShard) continue;
    count.set(g, count.get(g)! + 1);
    keys.push(key);
  }
  return keys;
}

describe('extensions on a sharded cluster', () => {
  const acked: Acked[] = [];
  let keys: string[] = [];
  let groups: number[] = [];

  it('delivers the puts of every shard, on that shard\'s leader, with the event\'s shard', async () => {
    groups = c.groupsOf('/sh/');
    expect(groups).toHaveLength(SHARDS);
    const status = await c.load(FIX);
    expect(status.state).toBe('running');
    const record = (await c.metaManager()).records().find((r) => r.name === EXT)!;
    expect(Object.keys(record.startRevisions ?? {}).map(Number).sort((a, b) => a - b)).toEqual(groups);

    keys = spreadKeys(groups, 3);
    for (let i = 0; i < 96; i++) {
      const key = keys[i % keys.length]!;
      acked.push({ key, version: await c.put(key, String(i)), group: c.groupOf(key) });
    }
    expect(new Set(acked.map((a) => a.group))).toEqual(new Set(groups));
    const recs = await allRecorded(acked);
    for (const a of acked) expect(recs.get(recKey(a))!.split(':')[0]).toBe(String(a.group));
    expect(await c.list('/shviolation/')).toEqual([]);

    await deliveredByLeaders(groups);
    // The shards' leaders are spread over the nodes, and each one delivers exactly its own.
    const leaders = new Set(groups.map((g) => leaderId(g)));
    expect(leaders.size).toBeGreaterThan(1);
    for (const n of c.nodes) {
      const st = c.managerOf(n).statuses().find((s) => s.name === EXT)!;
      const mine = groups.filter((g) => leaderId(g) === n.id);
      expect(st.shards).toEqual(mine);
      expect(st.delivering).toBe(mine.length > 0);
      expect(st.watches[0]!.byShard.map((b) => b.shard)).toEqual(mine);
    }
  });

  it('a leader transfer of one shard resumes from its cursor: nothing missed, nothing before the cursor again', async () => {
    // The busiest shard; its leader has persisted a cursor past all of its events so far.
    const g = groups.map((x) => ({ x, n: acked.filter((a) => a.group === x).length })).sort((a, b) => b.n - a.n)[0]!.x;
    const old = await c.leader(g);
    const maxVersion = Math.max(...acked.filter((a) => a.group === g).map((a) => a.version));
    const cursor = await c.until(async () => {
      const item = old.replica(g)!.list(`/_sys/cursor/${EXT}/`, {}).items[0];
      const v = item ? Number(new TextDecoder().decode(item.value)) : 0;
      return v >= maxVersion ? v : undefined;
    });
    const before = await allRecorded(acked);
    const counted = acked.filter((a) => a.group === g && a.version <= cursor).map((a) => [recKey(a), before.get(recKey(a))!] as const);
    expect(counted.length).toBeGreaterThan(0);

    const target = c.nodes.find((n) => n !== old && n.replica(g))!;
    let stop = false;
    let sinceTransfer = 0;
    let transferred = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const key = keys[i % keys.length]!;
        try {
          acked.push({ key, version: await c.put(key, `w${i}`), group: c.groupOf(key) });
          if (transferred) sinceTransfer++;
        } catch {
          // leadership moving: not acknowledged
        }
      }
    })();
    while (acked.length < 96 + 20) await new Promise((r) => setTimeout(r, 5));
    old.replica(g)!.transferLeader(target.id);
    const next: KvNode = await c.leader(g, [old]);
    expect(next).toBe(target);
    transferred = true;
    while (sinceTransfer < 60) await new Promise((r) => setTimeout(r, 5));
    stop = true;
    await writer;

    const recs = await allRecorded(acked);
    expect(acked.filter((a) => a.group === g && a.version > cursor).length).toBeGreaterThan(0);
    for (const a of acked) expect(recs.get(recKey(a))!.split(':')[0]).toBe(String(a.group));
    expect(await c.list('/shviolation/')).toEqual([]);
    // Events the cursor covered were not delivered again by the new leader.
    for (const [k, v] of counted) expect(recs.get(k)).toBe(v);
    await deliveredByLeaders(groups);
  });

  it('a pool created after the load is delivered from its shards\' start', async () => {
    await c.createPool('/sh/hot', 2);
    await c.until(async () => (c.nodes.every((n) => n.shardMap().pools.some((p) => p.name === '/sh/hot' && p.state === 'active')) ? true : undefined));
    const hot = c.nodes[0]!.shardMap().shards.filter((s) => s.pool === '/sh/hot').map((s) => s.group);
    expect(hot).toHaveLength(2);
    expect(c.groupsOf('/sh/')).toEqual([...groups, ...hot]);
    const record = (await c.metaManager()).records().find((r) => r.name === EXT)!;
    for (const g of hot) expect(record.startRevisions?.[String(g)]).toBeUndefined();

    const fresh: Acked[] = [];
    for (let i = 0; fresh.length < 20; i++) {
      const key = `/sh/hot/h${i % 8}`;
      fresh.push({ key, version: await c.put(key, String(i)), group: c.groupOf(key) });
    }
    expect(new Set(fresh.map((a) => a.group))).toEqual(new Set(hot));
    const recs = await allRecorded(fresh);
    for (const a of fresh) expect(recs.get(recKey(a))!.split(':')[0]).toBe(String(a.group));
    await deliveredByLeaders([...groups, ...hot]);
  });

  it('dead letters are shard-local: each lands in the shard of its event, and listing /_dlq/ merges them all', async () => {
    await c.load('test/extensions/fixtures/it-flaky');
    const poisoned: Acked[] = [];
    for (let i = 0; new Set(poisoned.map((a) => a.group)).size < SHARDS; i++) {
      const key = `/flaky/poison-${i}`;
      poisoned.push({ key, version: await c.put(key, 'x'), group: c.groupOf(key) });
    }
    const letterKey = (a: Acked) => `/_dlq/it-flaky/${String(a.version).padStart(12, '0')}${a.key}`;
    const letters = await c.until(async () => {
      const items = await c.list('/_dlq/it-flaky/');
      return items.length >= poisoned.length ? items : undefined;
    }, 30_000);
    expect(letters.map((l) => l.key).sort()).toEqual(poisoned.map(letterKey).sort());
    for (const a of poisoned) {
      const sm = (await c.leader(a.group)).replica(a.group)!.internalsForTests().sm;
      expect(JSON.parse(new TextDecoder().decode(sm.get(letterKey(a))!.value))).toMatchObject({ shard: a.group, event: { key: a.key } });
    }
  });
});
