// Covers the reserved keyspace definitions of src/sharding/types.ts (isReservedKey and the prefix helpers) and the
// shard-local dead-letter prefix in routing (ownsKey, shardsForPrefix).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  addPool,
  descriptorOf,
  hidesReservedKeys,
  initialMap,
  isReservedKey,
  isShardLocalKey,
  ownsKey,
  prefixInReserved,
  prefixTouchesReserved,
  setPoolState,
  shardsForPrefix,
} from '../../src/sharding/index.js';

describe('the reserved keyspace', () => {
  it('is every key under /_ (system keyspace) or /ext/ (extension registry)', () => {
    for (const k of ['/_sys/shard', '/_cluster/info', '/_dlq/x/1/a', '/_future', '/_', '/ext/x/meta', '/ext/']) expect(isReservedKey(k), k).toBe(true);
    for (const k of ['/', '/a', '/ext', '/extra/x', '/x/_sys/shard', '_sys/shard', 'ext/x', '/e_xt/']) expect(isReservedKey(k), k).toBe(false);
  });

  it('prefixes: inside (refused), covering (results filtered) or neither', () => {
    const cases: Array<[string, 'inside' | 'covers' | 'none']> = [
      ['', 'covers'],
      ['/', 'covers'],
      ['/_', 'covers'],
      ['/e', 'covers'],
      ['/ext', 'covers'],
      ['/_s', 'inside'],
      ['/_sys/', 'inside'],
      ['/_dlq/x/', 'inside'],
      ['/ext/', 'inside'],
      ['/ext/a', 'inside'],
      ['/a', 'none'],
      ['/extra', 'none'],
      ['a', 'none'],
    ];
    for (const [p, want] of cases) {
      const got = prefixInReserved(p) ? 'inside' : prefixTouchesReserved(p) ? 'covers' : 'none';
      expect(got, JSON.stringify(p)).toBe(want);
      expect(hidesReservedKeys(p), JSON.stringify(p)).toBe(want === 'covers');
    }
  });

  it('properties: a prefix inside the keyspace has only reserved keys; one that touches none has no reserved key', () => {
    const part = fc.constantFrom('/', '_', 'e', 'x', 't', 's', 'ext', '_sys', 'a');
    const str = fc.array(part, { maxLength: 5 }).map((a) => a.join(''));
    fc.assert(
      fc.property(str, str, (p, rest) => {
        const key = p + rest;
        if (key === '') return;
        if (prefixInReserved(p)) expect(isReservedKey(key)).toBe(true);
        if (!prefixTouchesReserved(p)) expect(isReservedKey(key)).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  it('dead letters are shard-local like system keys: every shard owns them, and their listing spans every routable shard', () => {
    expect(isShardLocalKey('/_dlq/e/1/a')).toBe(true);
    expect(isShardLocalKey('/_sys/shard')).toBe(true);
    expect(isShardLocalKey('/_cluster/info')).toBe(false);
    let m = initialMap([1, 2, 3].map((id) => ({ id, address: `h${id}:1` })), { shards: 3, replicas: 3 });
    m = setPoolState(addPool(m, '/cams', { shards: 2, replicas: 3 }), '/cams', 'active');
    m = addPool(m, '/new', { shards: 2, replicas: 3 }); // being created: not routed yet
    const routable = m.shards.filter((s) => s.pool !== '/new').map((s) => s.group);
    for (const p of ['/_dlq/', '/_dlq/e/', '/_sys/']) expect(shardsForPrefix(m, p).map((s) => s.group), p).toEqual(routable);
    for (const s of m.shards) expect(ownsKey(descriptorOf(m, s.group)!, '/_dlq/e/000000000001/cams/1')).toBe(true);
  });
});
