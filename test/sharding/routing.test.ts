// Covers src/sharding/routing.ts: the pinned key hash and its distribution, pool matching, longest-prefix routing with nested, creating and deleting pools, affinity, prefix fan-out, shard ownership and descriptors.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  addPool,
  affinityPart,
  descriptorOf,
  hashKey,
  initialMap,
  ownsKey,
  poolMatches,
  poolOf,
  setPoolState,
  shardOf,
  shardsForPrefix,
  emptyMap,
  utf8Length,
  ShardingError,
  type ClusterMap,
  type PoolState,
} from '../../src/sharding/index.js';

/** Reference implementation over TextEncoder bytes: FNV-1a 32 + murmur3 fmix32. */
function referenceHash(s: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(s)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

const MEMBERS = [1, 2, 3, 4, 5].map((id) => ({ id, address: `10.0.0.${id}:7000` }));

/** A map with pools '' (4 shards), /cameras (8, affinity, active), /cameras/archive (2, active), /camera (2, active), /logs (3, creating), /old (2, deleting). */
function sampleMap(): ClusterMap {
  let m = initialMap(MEMBERS, { shards: 4, replicas: 3 });
  m = addPool(m, '/cameras', { shards: 8, replicas: 3, affinity: '^(/cameras/[^/]+)/' });
  m = addPool(m, '/cameras/archive', { shards: 2, replicas: 2 });
  m = addPool(m, '/camera', { shards: 2, replicas: 1 });
  m = addPool(m, '/logs', { shards: 3, replicas: 3 });
  m = addPool(m, '/old', { shards: 2, replicas: 3 });
  for (const p of ['/cameras', '/cameras/archive', '/camera']) m = setPoolState(m, p, 'active');
  m = setPoolState(m, '/old', 'deleting');
  return { ...m, epoch: 42 };
}

const poolsOf = (m: ClusterMap, prefix: string): string[] => [...new Set(shardsForPrefix(m, prefix).map((s) => s.pool))].sort();

describe('hashKey', () => {
  it('is pinned: these values decide where stored data lives and must never change', () => {
    expect(hashKey('')).toBe(2872998923);
    expect(hashKey('a')).toBe(444641715);
    expect(hashKey('/hello')).toBe(2910043594);
    expect(hashKey('/cameras/7')).toBe(2456920651);
    expect(hashKey('héllo')).toBe(4198468525);
    expect(hashKey('😀')).toBe(855877642);
    expect(hashKey('\ud800')).toBe(1205388858); // a lone surrogate hashes as U+FFFD
    expect(hashKey('\ud800')).toBe(hashKey('\ufffd'));
  });

  it('equals FNV-1a + fmix32 over the UTF-8 bytes (TextEncoder) for any string, lone surrogates included', () => {
    const unit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit }), fc.string({ unit: 'binary' }), fc.string()), (s) => {
        expect(hashKey(s)).toBe(referenceHash(s));
        expect(utf8Length(s)).toBe(new TextEncoder().encode(s).length);
      }),
      { numRuns: 600 },
    );
  });

  it('spreads 100k keys over 8 shards within 5% of an even share (random and sequential keys)', () => {
    let seed = 12345;
    const rnd = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed;
    };
    const sets: string[][] = [
      Array.from({ length: 100_000 }, () => `/k/${rnd().toString(36)}${rnd().toString(36)}`),
      Array.from({ length: 100_000 }, (_, i) => `/user/${i}`),
    ];
    for (const keys of sets) {
      for (const shards of [8, 3]) {
        const counts = new Array<number>(shards).fill(0);
        for (const k of keys) counts[hashKey(k) % shards]!++;
        const even = keys.length / shards;
        for (const c of counts) expect(Math.abs(c - even) / even).toBeLessThan(0.05);
      }
    }
  });
});

describe('poolMatches', () => {
  it('matches the name itself and keys below it, never a sibling with the same leading characters', () => {
    expect(poolMatches('/cameras', '/cameras')).toBe(true);
    expect(poolMatches('/cameras', '/cameras/1')).toBe(true);
    expect(poolMatches('/cameras', '/cameras/')).toBe(true);
    expect(poolMatches('/cameras', '/camerasX')).toBe(false);
    expect(poolMatches('/cameras', '/camera')).toBe(false);
    expect(poolMatches('/cameras', '/')).toBe(false);
    expect(poolMatches('', 'anything')).toBe(true);
    expect(poolMatches('', '')).toBe(true);
  });
});

describe('poolOf / shardOf', () => {
  const m = sampleMap();

  it('routes to the routable pool with the longest matching name', () => {
    expect(poolOf(m, '/cameras/7/a').name).toBe('/cameras');
    expect(poolOf(m, '/cameras').name).toBe('/cameras');
    expect(poolOf(m, '/cameras/archive').name).toBe('/cameras/archive');
    expect(poolOf(m, '/cameras/archive/2020/x').name).toBe('/cameras/archive');
    expect(poolOf(m, '/cameras/archiveX').name).toBe('/cameras');
    expect(poolOf(m, '/camerasX').name).toBe('');
    expect(poolOf(m, '/camera/1').name).toBe('/camera');
    expect(poolOf(m, '/hello').name).toBe('');
    expect(poolOf(m, 'no-slash').name).toBe('');
  });

  it('does not route to pools being created (their keys still go to the parent) but does to pools being deleted', () => {
    expect(poolOf(m, '/logs/1').name).toBe('');
    expect(poolOf(m, '/old/1').name).toBe('/old');
    const active = setPoolState(m, '/logs', 'active');
    expect(poolOf(active, '/logs/1').name).toBe('/logs');
  });

  it('picks shard hash(affinityPart) % shards of the pool', () => {
    for (const key of ['/hello', '/cameras/7/a', '/cameras/archive/x', '/camera/q', '/old/z', '/logs/9']) {
      const pool = poolOf(m, key);
      const shard = shardOf(m, key);
      expect(shard.pool).toBe(pool.name);
      expect(shard.index).toBe(hashKey(affinityPart(pool, key)) % pool.shards);
    }
  });

  it('affinity: keys sharing the first capture group land on one shard; a non-matching key hashes whole', () => {
    const pool = poolOf(m, '/cameras/7/a');
    expect(affinityPart(pool, '/cameras/7/a')).toBe('/cameras/7');
    expect(affinityPart(pool, '/cameras/7')).toBe('/cameras/7'); // no match: the whole key
    expect(affinityPart(pool, '/cameras/seven')).toBe('/cameras/seven');
    for (let cam = 0; cam < 50; cam++) {
      const groups = new Set(['a', 'b', 'photo/1', 'state'].map((s) => shardOf(m, `/cameras/${cam}/${s}`).group));
      expect(groups.size).toBe(1);
    }
    // and cameras do spread over the pool's shards
    const used = new Set(Array.from({ length: 200 }, (_, cam) => shardOf(m, `/cameras/${cam}/a`).index));
    expect(used.size).toBe(8);
  });

  it('affinity whose first group does not take part in the match hashes the whole key', () => {
    const d = { group: 1, pool: '', index: 0, shards: 4, affinity: '^(?:(x)|y)', excluded: [], epoch: 1 };
    expect(affinityPart(d, 'x/1')).toBe('x');
    expect(affinityPart(d, 'y/1')).toBe('y/1');
  });

  it('keeps working with more distinct affinity expressions than the compiled-expression cache holds', () => {
    for (let i = 0; i < 1500; i++) {
      const d = { group: 1, pool: '', index: 0, shards: 1, affinity: `^(/p${i})/`, excluded: [], epoch: 1 };
      expect(affinityPart(d, `/p${i}/x`)).toBe(`/p${i}`);
    }
    const d = { group: 1, pool: '', index: 0, shards: 1, affinity: '^(/p0)/', excluded: [], epoch: 1 };
    expect(affinityPart(d, '/p0/y')).toBe('/p0');
  });

  it('throws INVALID_MAP on the uninitialised map', () => {
    expect(() => poolOf(emptyMap(), '/x')).toThrow(ShardingError);
    try {
      shardOf(emptyMap(), '/x');
      expect.unreachable();
    } catch (e) {
      expect((e as ShardingError).code).toBe('INVALID_MAP');
    }
  });
});

describe('shardsForPrefix', () => {
  const m = sampleMap();

  it('examples', () => {
    expect(poolsOf(m, '/cam')).toEqual(['', '/camera', '/cameras', '/cameras/archive']);
    expect(poolsOf(m, '/cameras/x')).toEqual(['/cameras']);
    expect(poolsOf(m, '/cameras/')).toEqual(['/cameras', '/cameras/archive']);
    expect(poolsOf(m, '/cameras')).toEqual(['', '/cameras', '/cameras/archive']);
    expect(poolsOf(m, '/cameras/archive')).toEqual(['/cameras', '/cameras/archive']);
    expect(poolsOf(m, '/cameras/archive/')).toEqual(['/cameras/archive']);
    expect(poolsOf(m, '/cameras/archive/2020')).toEqual(['/cameras/archive']);
    expect(poolsOf(m, '/logs/')).toEqual(['']); // creating: still in the default pool
    expect(poolsOf(m, '/old/')).toEqual(['/old']);
    expect(poolsOf(m, '/zzz')).toEqual(['']);
    const all = ['', '/camera', '/cameras', '/cameras/archive', '/old'];
    expect(poolsOf(m, '')).toEqual(all);
    expect(poolsOf(m, '/')).toEqual(all);
  });

  it('returns every shard of the included pools, sorted by group', () => {
    const shards = shardsForPrefix(m, '/cameras/x');
    expect(shards.map((s) => s.group)).toEqual(m.shards.filter((s) => s.pool === '/cameras').map((s) => s.group));
    const all = shardsForPrefix(m, '');
    expect(all.map((s) => s.group)).toEqual([...all.map((s) => s.group)].sort((a, b) => a - b));
    expect(all.length).toBe(m.shards.filter((s) => s.pool !== '/logs').length);
  });
});

const SEGMENTS = ['a', 'b', 'ab', 'c'];
const poolNameArb = fc.array(fc.constantFrom(...SEGMENTS), { minLength: 1, maxLength: 3 }).map((segs) => '/' + segs.join('/'));
const keyArb = fc.oneof(
  fc.array(fc.constantFrom('/', 'a', 'b', 'ab', 'c', '/a', '/b', 'x', '_'), { maxLength: 8 }).map((p) => p.join('')),
  fc.tuple(poolNameArb, fc.constantFrom('', '/', '/x', 'x', '/a/b', 'b')).map(([p, s]) => p + s),
  fc.constantFrom('/_sys/shard', '/_sys/cursor/x', '/_dlq/', '/_dlq/e/000000000001/a', '/_dlq/e/gap-1-x'),
);

/** Shard-local keys (owned by every shard): system keys and dead letters. */
const shardLocal = (key: string): boolean => key.startsWith('/_sys/') || key.startsWith('/_dlq/');

/** A random map of nested pools; `states` picks each added pool's state. */
function mapArb(states: readonly PoolState[]): fc.Arbitrary<ClusterMap> {
  return fc
    .record({
      defaultShards: fc.integer({ min: 1, max: 4 }),
      pools: fc.uniqueArray(
        fc.record({
          name: poolNameArb,
          shards: fc.integer({ min: 1, max: 5 }),
          affinity: fc.constantFrom(undefined, '^(/[^/]+/[^/]+)/', '(b)'),
          state: fc.constantFrom(...states),
        }),
        { selector: (p) => p.name, maxLength: 6 },
      ),
    })
    .map(({ defaultShards, pools }) => {
      let m = initialMap(MEMBERS.slice(0, 3), { shards: defaultShards, replicas: 2 });
      for (const p of pools) {
        m = addPool(m, p.name, { shards: p.shards, replicas: 2, ...(p.affinity ? { affinity: p.affinity } : {}) });
        if (p.state !== 'creating') m = setPoolState(m, p.name, p.state);
      }
      return { ...m, epoch: 7 };
    });
}

describe('routing properties', () => {
  it('a key starting with a prefix routes to one of the prefix shards, and every listed pool really receives some such key', () => {
    fc.assert(
      fc.property(mapArb(['creating', 'active', 'deleting']), keyArb, keyArb, (m, a, b) => {
        const key = a + b;
        const groups = new Set(shardsForPrefix(m, a).map((s) => s.group));
        expect(groups.has(shardOf(m, key).group)).toBe(true);
        // A shard-local prefix spans every routable pool (each of their shards may hold such keys).
        if (shardLocal(a)) {
          const routable = m.pools.filter((p) => p.state !== 'creating').map((p) => p.name);
          expect(new Set(shardsForPrefix(m, a).map((s) => s.pool))).toEqual(new Set(routable));
          return;
        }
        // precision: each included pool holds some key starting with the prefix
        const pools = new Set(shardsForPrefix(m, a).map((s) => s.pool));
        for (const p of pools) {
          const witnesses = [p, a + '\u0001'];
          expect(witnesses.some((w) => w.startsWith(a) && poolOf(m, w).name === p)).toBe(true);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('with only active pools, exactly one shard descriptor owns each key: the shard it routes to', () => {
    fc.assert(
      fc.property(mapArb(['active']), fc.array(keyArb, { minLength: 1, maxLength: 20 }), (m, keys) => {
        const descriptors = m.shards.map((s) => descriptorOf(m, s.group)!);
        for (const key of keys) {
          const owners = descriptors.filter((d) => ownsKey(d, key)).map((d) => d.group);
          if (shardLocal(key)) expect(owners.length).toBe(descriptors.length);
          else expect(owners).toEqual([shardOf(m, key).group]);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('with pools in any state, the routed shard owns the key unless the key lies in a pool being created', () => {
    fc.assert(
      fc.property(mapArb(['creating', 'active', 'deleting']), keyArb, (m, key) => {
        if (shardLocal(key)) return;
        const d = descriptorOf(m, shardOf(m, key).group)!;
        const inCreating = m.pools.some((p) => p.state === 'creating' && poolMatches(p.name, key) && poolMatches(d.pool, p.name));
        expect(ownsKey(d, key)).toBe(!inCreating);
      }),
      { numRuns: 500 },
    );
  });
});

describe('ownsKey / descriptorOf', () => {
  const m = sampleMap();

  it('descriptor: pool facts, the map epoch, and every nested pool in any state as excluded, sorted', () => {
    const def = m.shards.find((s) => s.pool === '')!;
    expect(descriptorOf(m, def.group)).toEqual({
      group: def.group,
      pool: '',
      index: def.index,
      shards: 4,
      excluded: ['/camera', '/cameras', '/cameras/archive', '/logs', '/old'],
      epoch: 42,
    });
    const cam = m.shards.find((s) => s.pool === '/cameras' && s.index === 3)!;
    expect(descriptorOf(m, cam.group)).toEqual({
      group: cam.group,
      pool: '/cameras',
      index: 3,
      shards: 8,
      affinity: '^(/cameras/[^/]+)/',
      excluded: ['/cameras/archive'],
      epoch: 42,
    });
    expect(descriptorOf(m, 0)).toBeUndefined();
    expect(descriptorOf(m, 9999)).toBeUndefined();
  });

  it('keys of a pool being created are owned by nobody: the parent already excludes them', () => {
    const owners = m.shards.map((s) => descriptorOf(m, s.group)!).filter((d) => d.pool !== '/logs' && ownsKey(d, '/logs/1'));
    expect(owners).toEqual([]);
    const logShard = m.shards.find((s) => s.pool === '/logs' && s.index === hashKey('/logs/1') % 3)!;
    expect(ownsKey(descriptorOf(m, logShard.group)!, '/logs/1')).toBe(true);
  });

  it('system keys are owned by every shard; keys outside the pool or in an excluded pool are not', () => {
    const d = descriptorOf(m, m.shards.find((s) => s.pool === '/cameras')!.group)!;
    expect(ownsKey(d, '/_sys/shard')).toBe(true);
    expect(ownsKey(d, '/_dlq/ext/000000000007/hello')).toBe(true); // dead letters are shard-local too
    expect(ownsKey(d, '/hello')).toBe(false);
    expect(ownsKey(d, '/cameras/archive/x')).toBe(false);
    const key = ['/cameras/1/a', '/cameras/2/a', '/cameras/3/a', '/cameras/4/a', '/cameras/5/a', '/cameras/6/a', '/cameras/7/a', '/cameras/8/a', '/cameras/9/a']
      .find((k) => hashKey(affinityPart(d, k)) % 8 === d.index);
    if (key !== undefined) expect(ownsKey(d, key)).toBe(true);
  });
});

describe('shardOf fast paths (one routable pool, one shard)', () => {
  it('routes every key of a one-pool map as the hash rule says, and a second pool still takes its keys', () => {
    const keys = ['a', 'x/y/z', '/cameras/1/f', 'ünï/ç', '', 'k'.repeat(300)].filter((k) => k !== '');
    for (const shards of [1, 2, 5]) {
      const m = initialMap(MEMBERS, { shards, replicas: 3 });
      for (const k of keys) {
        expect(poolOf(m, k).name).toBe('');
        expect(shardOf(m, k).index).toBe(referenceHash(k) % shards);
      }
      // A pool being created does not route yet: the default pool keeps its keys.
      const creating = addPool(m, '/cameras', { shards: 2, replicas: 3 });
      expect(poolOf(creating, '/cameras/1/f').name).toBe('');
      // Once active, it takes them (the one-pool shortcut must not hide it).
      const active = setPoolState(creating, '/cameras', 'active');
      expect(poolOf(active, '/cameras/1/f').name).toBe('/cameras');
      expect(poolOf(active, 'a').name).toBe('');
    }
  });
});
