// Covers src/sharding/validation.ts: pool names, pool specs, affinity expressions, members, and that every ShardingError code is reachable from the sharding API.
import { describe, expect, it } from 'vitest';
import {
  addMember,
  addPool,
  decodeClusterMap,
  dropMember,
  initialMap,
  markRemoving,
  removePool,
  setPoolState,
  validateAffinity,
  validateMember,
  validatePoolName,
  validatePoolSpec,
  ShardingError,
  MAX_POOL_SHARDS,
  MAX_REPLICAS,
  MAX_POOL_NAME_BYTES,
  MAX_AFFINITY_BYTES,
  type ShardingErrorCode,
} from '../../src/sharding/index.js';

function codeOf(f: () => unknown): ShardingErrorCode | 'no error' {
  try {
    f();
    return 'no error';
  } catch (e) {
    expect(e).toBeInstanceOf(ShardingError);
    expect((e as Error).message.length).toBeGreaterThan(10);
    return (e as ShardingError).code;
  }
}

describe('validatePoolName', () => {
  it('accepts well-formed names and returns them', () => {
    for (const n of ['/a', '/cameras', '/cameras/archive', '/a-b.c/d_e', '/caméras/日本', '/with space', '/' + 'x'.repeat(MAX_POOL_NAME_BYTES - 1)]) {
      expect(validatePoolName(n)).toBe(n);
    }
  });

  it.each([
    ['', 'empty (the default pool is not created by name)'],
    ['cameras', 'no leading slash'],
    ['/', 'only a slash'],
    ['/cameras/', 'trailing slash'],
    ['/a//b', 'empty segment'],
    ['/_sys', 'reserved'],
    ['/_cluster', 'reserved'],
    ['/_dlq/x', 'reserved'],
    ['/a/_private', 'underscore segment'],
    ['/a\nb', 'control character'],
    ['/a\u0000', 'NUL'],
    ['/a\u007f', 'DEL'],
    ['/a\u0085', 'C1 control'],
    ['/a\ud800', 'lone surrogate'],
    ['/' + 'x'.repeat(MAX_POOL_NAME_BYTES), 'too long'],
    ['/' + 'é'.repeat(128), 'too long in UTF-8 bytes'],
  ])('rejects %j (%s) with INVALID_POOL', (name) => {
    expect(codeOf(() => validatePoolName(name))).toBe('INVALID_POOL');
  });

  it('rejects non-strings', () => {
    expect(codeOf(() => validatePoolName(42))).toBe('INVALID_POOL');
    expect(codeOf(() => validatePoolName(undefined))).toBe('INVALID_POOL');
  });
});

describe('validatePoolSpec', () => {
  const ok = { activeMembers: 3 };

  it('returns the validated options, keeping optional fields only when given', () => {
    expect(validatePoolSpec({ shards: 4, replicas: 3 }, ok)).toEqual({ shards: 4, replicas: 3 });
    expect(validatePoolSpec({ shards: MAX_POOL_SHARDS, replicas: 1, affinity: '^(/c/[^/]+)/', retentionMs: 0 }, ok)).toEqual({
      shards: MAX_POOL_SHARDS,
      replicas: 1,
      affinity: '^(/c/[^/]+)/',
      retentionMs: 0,
    });
  });

  it.each([
    [null],
    [[1, 2]],
    ['4x3'],
    [{ replicas: 3 }],
    [{ shards: 0, replicas: 1 }],
    [{ shards: MAX_POOL_SHARDS + 1, replicas: 1 }],
    [{ shards: 1.5, replicas: 1 }],
    [{ shards: '4', replicas: 1 }],
    [{ shards: 4 }],
    [{ shards: 4, replicas: 0 }],
    [{ shards: 4, replicas: MAX_REPLICAS + 1 }],
    [{ shards: 4, replicas: 2, retentionMs: -1 }],
    [{ shards: 4, replicas: 2, retentionMs: 1.5 }],
    [{ shards: 4, replicas: 2, affinity: '(' }],
    [{ shards: 4, replicas: 2, affinity: '^/cameras/' }],
    [{ shards: 4, replicas: 2, affinity: '(?:x)' }],
    [{ shards: 4, replicas: 2, affinity: 7 }],
    [{ shards: 4, replicas: 2, affinity: '(' + 'x'.repeat(MAX_AFFINITY_BYTES) + ')' }],
    [{ shards: 4, replicas: 2, replica: 3 }],
  ])('rejects %j with INVALID_POOL', (spec) => {
    expect(codeOf(() => validatePoolSpec(spec, { activeMembers: 9 }))).toBe('INVALID_POOL');
  });

  it('replicas above the active members is NOT_ENOUGH_MEMBERS', () => {
    expect(codeOf(() => validatePoolSpec({ shards: 1, replicas: 4 }, ok))).toBe('NOT_ENOUGH_MEMBERS');
    expect(codeOf(() => validatePoolSpec({ shards: 1, replicas: 3 }, ok))).toBe('no error');
  });

  it('affinity needs a capture group (a named or optional one counts)', () => {
    expect(validateAffinity('(?<cam>/cameras/[^/]+)/')).toBe('(?<cam>/cameras/[^/]+)/');
    expect(validateAffinity('^(x)?')).toBe('^(x)?');
    expect(codeOf(() => validateAffinity('[a-z]+'))).toBe('INVALID_POOL');
    expect(codeOf(() => validateAffinity('[a-z]+', 'INVALID_MAP'))).toBe('INVALID_MAP');
  });
});

describe('validateMember', () => {
  it('accepts ids 1..2^31-1 and host:port addresses', () => {
    for (const [id, a] of [
      [1, '127.0.0.1:7001'],
      [2 ** 31 - 1, 'node-3.example.com:65535'],
      [5, 'localhost:1'],
      [6, '[::1]:7000'],
      [7, '[fe80::1%eth0]:7000'],
    ] as const) {
      expect(codeOf(() => validateMember(id, a))).toBe('no error');
    }
  });

  it.each([
    [0, 'h:1'],
    [-1, 'h:1'],
    [2 ** 31, 'h:1'],
    [1.5, 'h:1'],
    ['1', 'h:1'],
    [1, 'h'],
    [1, ':7000'],
    [1, 'h:0'],
    [1, 'h:65536'],
    [1, 'h:70a'],
    [1, 'h:'],
    [1, 'bad host:7000'],
    [1, '::1:7000'],
    [1, 'h\n:7000'],
    [1, 42],
  ])('rejects id %j address %j with INVALID_MEMBER', (id, address) => {
    expect(codeOf(() => validateMember(id, address))).toBe('INVALID_MEMBER');
  });
});

describe('error codes', () => {
  it('every ShardingError code is reachable from the sharding API', () => {
    const members = [1, 2, 3].map((id) => ({ id, address: `h${id}:7000` }));
    const m = initialMap(members, { shards: 2, replicas: 3 });
    const withPool = addPool(m, '/p', { shards: 1, replicas: 1 });
    const removing = markRemoving(addMember(m, { id: 4, address: 'h4:7000' }), 1);
    const reached: Record<ShardingErrorCode, ShardingErrorCode | 'no error'> = {
      INVALID_POOL: codeOf(() => addPool(m, 'p', { shards: 1, replicas: 1 })),
      POOL_EXISTS: codeOf(() => addPool(withPool, '/p', { shards: 1, replicas: 1 })),
      POOL_NOT_FOUND: codeOf(() => setPoolState(m, '/nope', 'active')),
      POOL_NOT_EMPTY: codeOf(() => removePool(setPoolState(withPool, '/p', 'active'), '/p')),
      NOT_ENOUGH_MEMBERS: codeOf(() => markRemoving(m, 1)),
      MEMBER_EXISTS: codeOf(() => addMember(m, { id: 9, address: 'h1:7000' })),
      MEMBER_NOT_FOUND: codeOf(() => dropMember(m, 9)),
      INVALID_MEMBER: codeOf(() => addMember(m, { id: 0, address: 'h:1' })),
      BUSY: codeOf(() => dropMember(removing, 1)),
      INVALID_MAP: codeOf(() => decodeClusterMap([{ key: '/_cluster/info', value: '{' }], 1)),
    };
    for (const [code, got] of Object.entries(reached)) expect(got, code).toBe(code);
  });
});
