// Covers src/sharding/map-codec.ts: the /_cluster/ record layout, encode/decode round trips, strict rejection of malformed records naming the key, record diffs, and shard descriptor encoding.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  addMember,
  addPool,
  CLUSTER_PREFIX,
  decodeClusterMap,
  decodeDescriptor,
  descriptorOf,
  diffClusterMaps,
  encodeClusterMap,
  encodeDescriptor,
  initialMap,
  markRemoving,
  planStep,
  removePool,
  sameMap,
  setPoolState,
  ShardingError,
  type ClusterMap,
  type GroupMembership,
} from '../../src/sharding/index.js';

const member = (id: number): { id: number; address: string } => ({ id, address: `node${id}.local:${7000 + id}` });

function sample(): ClusterMap {
  let m = initialMap([1, 2, 3].map(member), { shards: 2, replicas: 3, retentionMs: 3_600_000 });
  m = addPool(m, '/cameras', { shards: 2, replicas: 2, affinity: '^(/cameras/[^/]+)/' });
  m = addPool(m, '/caméras/été', { shards: 1, replicas: 1 });
  m = setPoolState(m, '/cameras', 'active');
  m = markRemoving(addMember(m, member(12)), 3);
  return { ...m, epoch: 17 };
}

const records = (m: ClusterMap): { key: string; value: string }[] => [...encodeClusterMap(m)].map(([key, value]) => ({ key, value }));

function invalid(recs: { key: string; value: string }[], key: string): void {
  try {
    decodeClusterMap(recs, 5);
    expect.unreachable(`decoding should fail at ${key}`);
  } catch (e) {
    expect(e).toBeInstanceOf(ShardingError);
    expect((e as ShardingError).code).toBe('INVALID_MAP');
    expect((e as Error).message).toContain(key);
  }
}

/** Replaces the value of `key` (JSON-edited by `edit`) in the sample's records. */
function edited(key: string, edit: (o: Record<string, unknown>) => unknown): { key: string; value: string }[] {
  return records(sample()).map((r) => (r.key === key ? { key, value: JSON.stringify(edit(JSON.parse(r.value) as Record<string, unknown>)) } : r));
}

describe('encodeClusterMap', () => {
  it('lays the map out as /_cluster/ records with zero-padded ids and URI-encoded pool names', () => {
    const enc = encodeClusterMap(sample());
    expect([...enc.keys()]).toEqual([
      '/_cluster/info',
      '/_cluster/members/0000000001',
      '/_cluster/members/0000000002',
      '/_cluster/members/0000000003',
      '/_cluster/members/0000000012',
      '/_cluster/pools/%2Fcam%C3%A9ras%2F%C3%A9t%C3%A9',
      '/_cluster/pools/%2Fcameras',
      '/_cluster/pools/~default',
      '/_cluster/shards/0000000001',
      '/_cluster/shards/0000000002',
      '/_cluster/shards/0000000003',
      '/_cluster/shards/0000000004',
      '/_cluster/shards/0000000005',
    ]);
    for (const k of enc.keys()) expect(k.startsWith(CLUSTER_PREFIX)).toBe(true);
    expect(JSON.parse(enc.get('/_cluster/info')!)).toEqual({ nextGroup: 6, metaVoters: [1, 2, 3] });
    expect(JSON.parse(enc.get('/_cluster/members/0000000003')!)).toEqual({ id: 3, address: 'node3.local:7003', state: 'removing' });
    expect(JSON.parse(enc.get('/_cluster/pools/~default')!)).toEqual({ name: '', shards: 2, replicas: 3, retentionMs: 3_600_000, state: 'active' });
    expect(JSON.parse(enc.get('/_cluster/pools/%2Fcameras')!)).toEqual({ name: '/cameras', shards: 2, replicas: 2, affinity: '^(/cameras/[^/]+)/', state: 'active' });
    expect(JSON.parse(enc.get('/_cluster/shards/0000000003')!)).toEqual({
      group: 3,
      pool: '/cameras',
      index: 0,
      replicas: sample().shards[2]!.replicas,
      initial: sample().shards[2]!.initial,
      preferredLeader: sample().shards[2]!.preferredLeader,
    });
  });
});

describe('decodeClusterMap', () => {
  it('round-trips the sample, in any record order, with the given epoch', () => {
    const m = sample();
    const recs = records(m).reverse();
    expect(decodeClusterMap(recs, 17)).toEqual(m);
    expect(decodeClusterMap(recs, 99).epoch).toBe(99);
  });

  it('no records (or only unknown ones) is the uninitialised map; unknown subtrees are ignored', () => {
    expect(decodeClusterMap([], 3)).toEqual({ epoch: 3, members: [], metaVoters: [], pools: [], shards: [], nextGroup: 1 });
    expect(decodeClusterMap([{ key: '/_cluster/future/x', value: 'whatever' }], 3).pools).toEqual([]);
    const m = sample();
    expect(decodeClusterMap([...records(m), { key: '/_cluster/future/x', value: '?' }], 17)).toEqual(m);
  });

  it('round-trips random maps built by the placement operations', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.array(fc.record({ shards: fc.integer({ min: 1, max: 4 }), replicas: fc.integer({ min: 1, max: 3 }), aff: fc.boolean(), ret: fc.option(fc.nat()), state: fc.constantFrom('creating', 'active', 'deleting') }), { maxLength: 5 }),
        fc.nat({ max: 1000 }),
        (n, pools, epoch) => {
          let m = initialMap(Array.from({ length: n }, (_, i) => member(i + 1)), { shards: 2, replicas: Math.min(2, n) });
          pools.forEach((p, i) => {
            try {
              m = addPool(m, `/p${i}/q`, {
                shards: p.shards,
                replicas: p.replicas,
                ...(p.aff ? { affinity: '^(/p[0-9]+/q/[^/]+)' } : {}),
                ...(p.ret !== null ? { retentionMs: p.ret } : {}),
              });
              if (p.state !== 'creating') m = setPoolState(m, `/p${i}/q`, p.state as 'active' | 'deleting');
            } catch (e) {
              expect((e as ShardingError).code).toBe('NOT_ENOUGH_MEMBERS');
            }
          });
          m = { ...m, epoch };
          const decoded = decodeClusterMap(records(m), epoch);
          expect(decoded).toEqual(m);
          expect(sameMap(decoded, m)).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('rejects malformed records with INVALID_MAP naming the key', () => {
    const info = '/_cluster/info';
    const m1 = '/_cluster/members/0000000001';
    const def = '/_cluster/pools/~default';
    const cam = '/_cluster/pools/%2Fcameras';
    const s1 = '/_cluster/shards/0000000001';
    const base = records(sample());
    const replace = (key: string, value: string): { key: string; value: string }[] => base.map((r) => (r.key === key ? { key, value } : r));
    // malformed JSON, not an object
    invalid(replace(m1, '{"id":1,'), m1);
    invalid(replace(s1, '[1,2]'), s1);
    invalid(replace(info, 'null'), info);
    // wrong types and ranges
    invalid(edited(def, (o) => ({ ...o, shards: '2' })), def);
    invalid(edited(def, (o) => ({ ...o, shards: 0 })), def);
    invalid(edited(cam, (o) => ({ ...o, replicas: 8 })), cam);
    invalid(edited(cam, (o) => ({ ...o, affinity: '(' })), cam);
    invalid(edited(cam, (o) => ({ ...o, affinity: 'no-group' })), cam);
    invalid(edited(cam, (o) => ({ ...o, retentionMs: -5 })), cam);
    invalid(edited(cam, (o) => ({ ...o, state: 'gone' })), cam);
    invalid(edited(def, (o) => ({ ...o, state: 'deleting' })), def);
    invalid(edited(m1, (o) => ({ ...o, state: 'away' })), m1);
    invalid(edited(m1, (o) => ({ ...o, address: 'no-port' })), m1);
    invalid(edited(m1, (o) => ({ ...o, id: 2 })), m1);
    invalid(edited(m1, (o) => ({ ...o, extra: true })), m1);
    invalid(edited(m1, ({ id, address }) => ({ id, address })), m1);
    invalid(edited(s1, (o) => ({ ...o, group: 2 })), s1);
    invalid(edited(s1, (o) => ({ ...o, replicas: [1, 1, 2] })), s1);
    invalid(edited(s1, (o) => ({ ...o, replicas: [] })), s1);
    invalid(edited(s1, (o) => ({ ...o, replicas: [1, 2, 'x'] })), s1);
    invalid(edited(s1, (o) => ({ ...o, preferredLeader: 99 })), s1);
    invalid(edited(s1, (o) => ({ ...o, index: -1 })), s1);
    invalid(edited(info, (o) => ({ ...o, metaVoters: [1, 0] })), info);
    invalid(edited(info, (o) => ({ ...o, nextGroup: 1.5 })), info);
    // bad keys
    invalid([...base, { key: '/_cluster/members/7', value: '{}' }], '/_cluster/members/7');
    invalid([...base, { key: '/_cluster/shards/abc', value: '{}' }], '/_cluster/shards/abc');
    invalid([...base, { key: '/_cluster/pools/cameras', value: JSON.stringify({ name: '/cameras', shards: 1, replicas: 1, state: 'active' }) }], '/_cluster/pools/cameras');
    invalid([...base, { key: '/_cluster/pools/%2F_sys', value: JSON.stringify({ name: '/_sys', shards: 1, replicas: 1, state: 'active' }) }], '/_cluster/pools/%2F_sys');
    invalid([...base, base[1]!], m1);
  });

  it('rejects inconsistent maps with INVALID_MAP naming the key', () => {
    const base = records(sample());
    const without = (key: string): { key: string; value: string }[] => base.filter((r) => r.key !== key);
    invalid(without('/_cluster/info'), '/_cluster/info');
    invalid(without('/_cluster/pools/~default'), '/_cluster/pools/~default');
    invalid(without('/_cluster/shards/0000000004'), '/_cluster/pools/%2Fcameras'); // the pool misses a shard
    invalid(without('/_cluster/pools/%2Fcameras'), '/_cluster/shards/0000000003'); // a shard of no pool
    invalid(without('/_cluster/members/0000000002'), '/_cluster/'); // a replica / voter that is not a member
    invalid(edited('/_cluster/info', (o) => ({ ...o, nextGroup: 5 })), '/_cluster/info');
    invalid(edited('/_cluster/shards/0000000004', (o) => ({ ...o, index: 0 })), '/_cluster/shards/0000000004');
    invalid(edited('/_cluster/shards/0000000004', (o) => ({ ...o, index: 2 })), '/_cluster/shards/0000000004');
    invalid(edited('/_cluster/members/0000000012', (o) => ({ ...o, address: member(1).address })), '/_cluster/members/0000000012');
    invalid(edited('/_cluster/info', (o) => ({ ...o, metaVoters: [1, 2, 3, 77] })), '/_cluster/info');
    invalid(edited('/_cluster/info', (o) => ({ ...o, metaVoters: [] })), '/_cluster/info');
  });
});

describe('diffClusterMaps', () => {
  it('puts only changed records and deletes removed ones', () => {
    const a = sample();
    expect(diffClusterMaps(a, a)).toEqual({ puts: [], deletes: [] });
    const b = removePool(a, '/caméras/été');
    expect(diffClusterMaps(a, b)).toEqual({ puts: [], deletes: ['/_cluster/pools/%2Fcam%C3%A9ras%2F%C3%A9t%C3%A9', '/_cluster/shards/0000000005'] });
    const c = setPoolState(a, '/caméras/été', 'active');
    expect(diffClusterMaps(a, c).puts.map((p) => p.key)).toEqual(['/_cluster/pools/%2Fcam%C3%A9ras%2F%C3%A9t%C3%A9']);
    expect(diffClusterMaps(a, c).deletes).toEqual([]);
  });

  it('applying the diff of a plan step to the stored records yields the new map', () => {
    let m = sample();
    for (let i = 0; i < 5; i++) {
      const actual = new Map<number, GroupMembership>(m.shards.map((s) => [s.group, { voters: s.replicas, learners: [] }]));
      const next = planStep(m, new Set([1, 2, 3, 12]), actual, 1);
      const stored = new Map(encodeClusterMap(m));
      const { puts, deletes } = diffClusterMaps(m, next);
      for (const d of deletes) stored.delete(d);
      for (const p of puts) stored.set(p.key, p.value);
      expect(decodeClusterMap([...stored].map(([key, value]) => ({ key, value })), m.epoch)).toEqual(next);
      if (i === 0) expect(puts.length).toBeGreaterThan(0);
      m = next;
    }
  });
});

describe('shard descriptors', () => {
  it('round-trip for every shard of the sample', () => {
    const m = sample();
    for (const s of m.shards) {
      const d = descriptorOf(m, s.group)!;
      const text = encodeDescriptor(d);
      expect(decodeDescriptor(text)).toEqual(d);
      expect(JSON.parse(text)).toEqual(d);
    }
  });

  it('decoding sorts excluded pools', () => {
    const d = decodeDescriptor(JSON.stringify({ group: 1, pool: '', index: 0, shards: 1, excluded: ['/b', '/a'], epoch: 0 }));
    expect(d.excluded).toEqual(['/a', '/b']);
  });

  it.each([
    ['not JSON', '{'],
    ['an array', '[]'],
    ['group 0', { group: 0, pool: '', index: 0, shards: 1, excluded: [], epoch: 1 }],
    ['a bad pool', { group: 1, pool: 'x', index: 0, shards: 1, excluded: [], epoch: 1 }],
    ['index out of range', { group: 1, pool: '', index: 1, shards: 1, excluded: [], epoch: 1 }],
    ['shards 0', { group: 1, pool: '', index: 0, shards: 0, excluded: [], epoch: 1 }],
    ['too many shards', { group: 1, pool: '', index: 0, shards: 257, excluded: [], epoch: 1 }],
    ['a bad affinity', { group: 1, pool: '', index: 0, shards: 1, affinity: 'x', excluded: [], epoch: 1 }],
    ['excluded not a list', { group: 1, pool: '', index: 0, shards: 1, excluded: '/a', epoch: 1 }],
    ['excluded outside the pool', { group: 1, pool: '/a', index: 0, shards: 1, excluded: ['/b'], epoch: 1 }],
    ['excluded = the pool', { group: 1, pool: '/a', index: 0, shards: 1, excluded: ['/a'], epoch: 1 }],
    ['excluded twice', { group: 1, pool: '', index: 0, shards: 1, excluded: ['/a', '/a'], epoch: 1 }],
    ['a negative epoch', { group: 1, pool: '', index: 0, shards: 1, excluded: [], epoch: -1 }],
    ['a missing field', { group: 1, pool: '', index: 0, shards: 1, excluded: [] }],
    ['an unknown field', { group: 1, pool: '', index: 0, shards: 1, excluded: [], epoch: 1, owner: 3 }],
  ])('rejects %s with INVALID_MAP', (_what, value) => {
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    try {
      decodeDescriptor(text);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ShardingError);
      expect((e as ShardingError).code).toBe('INVALID_MAP');
      expect((e as Error).message).toContain('shard descriptor');
    }
  });
});
