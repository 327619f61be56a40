/** Permission matching (prefix ranges), permission edits, tokens and the failed-login limiter. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { addPermission, anyPermitsKey, anyPermitsPrefix, permitsKey, permitsPrefix, removePermission, type Permission, type PermissionType } from '../../src/auth/permissions.js';
import { signToken, verifyToken } from '../../src/auth/token.js';
import { FailureLimiter } from '../../src/auth/rate-limit.js';
import { AuthState, encodeRecord, roleKey, userKey, AUTH_ENABLED_KEY } from '../../src/auth/state.js';

const types: PermissionType[] = ['read', 'write', 'readwrite'];
/** Keys over a tiny alphabet, so prefixes and keys often overlap. */
const key = fc.string({ unit: fc.constantFrom('/', 'a', 'b', 'é', '\u{1F600}'), maxLength: 8 });
const type = fc.constantFrom(...types);

describe('permission matching', () => {
  it('a permission grants exactly the keys under its prefix, for the accesses its type names', () => {
    fc.assert(
      fc.property(key, type, key, fc.constantFrom('read' as const, 'write' as const), (prefix, t, k, access) => {
        const expected = k.startsWith(prefix) && (t === 'readwrite' || t === access);
        expect(permitsKey({ prefix, type: t }, k, access)).toBe(expected);
      }),
      { numRuns: 2000 },
    );
  });

  it('a prefix is covered (list/watch) exactly when every key under it is granted', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ prefix: key, type }), { maxLength: 4 }), key, fc.array(key, { maxLength: 6 }), (perms: Permission[], prefix, suffixes) => {
        const covered = anyPermitsPrefix(perms, prefix, 'read');
        // Covered: every key under the prefix is readable (the prefix itself and extensions of it).
        if (covered) for (const s of ['', ...suffixes]) expect(anyPermitsKey(perms, prefix + s, 'read')).toBe(true);
        // Not covered: the key equal to the prefix itself is a witness (or it is readable only by longer grants).
        else expect(anyPermitsKey(perms, prefix, 'read')).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  it('examples: prefix ranges, the empty prefix, read vs write', () => {
    const p: Permission = { prefix: '/app/', type: 'read' };
    expect(permitsKey(p, '/app/x', 'read')).toBe(true);
    expect(permitsKey(p, '/app', 'read')).toBe(false);
    expect(permitsKey(p, '/apple', 'read')).toBe(false);
    expect(permitsKey(p, '/app/x', 'write')).toBe(false);
    expect(permitsPrefix(p, '/app/sub/', 'read')).toBe(true);
    expect(permitsPrefix(p, '/ap', 'read')).toBe(false);
    expect(permitsKey({ prefix: '', type: 'readwrite' }, '/anything', 'write')).toBe(true);
  });

  it('grants merge per prefix and revokes take away exactly what they name', () => {
    let perms = addPermission([], '/a/', 'read');
    perms = addPermission(perms, '/a/', 'write');
    expect(perms).toEqual([{ prefix: '/a/', type: 'readwrite' }]);
    perms = addPermission(perms, '/b/', 'read');
    expect(removePermission(perms, '/a/', 'write')).toEqual([{ prefix: '/a/', type: 'read' }, { prefix: '/b/', type: 'read' }]);
    expect(removePermission(perms, '/b/')).toEqual([{ prefix: '/a/', type: 'readwrite' }]);
    expect(removePermission(perms, '/c/')).toBeUndefined();
  });
});

describe('tokens', () => {
  const secret = new Uint8Array(32).fill(7);
  it('verify with the secret that signed them, until they expire', () => {
    const t = signToken(secret, { subject: { kind: 'user', name: 'alice' }, expiresAtMs: 2_000 });
    expect(verifyToken(secret, t, 1_000)).toEqual({ subject: { kind: 'user', name: 'alice' }, expiresAtMs: 2_000 });
    expect(verifyToken(secret, t, 2_000)).toBe('expired');
    expect(verifyToken(new Uint8Array(32).fill(8), t, 1_000)).toBe('bad-signature');
    expect(verifyToken(secret, t.replace('kvc1.', 'kvc1.x'), 1_000)).not.toHaveProperty('subject');
    expect(verifyToken(secret, 'garbage', 1_000)).toBe('malformed');
  });
  it('cannot be altered: another subject under the same signature is refused', () => {
    const t = signToken(secret, { subject: { kind: 'user', name: 'bob' }, expiresAtMs: 5_000 });
    const [, payload, sig] = t.split('.');
    const forged = Buffer.from(JSON.stringify({ k: 'root', e: 5_000 })).toString('base64url');
    expect(payload).not.toBe(forged);
    expect(verifyToken(secret, `kvc1.${forged}.${sig}`, 1_000)).toBe('bad-signature');
  });
});

describe('failed-login limiter', () => {
  it('locks a name out after the allowed failures, doubling, and forgets it after a success', () => {
    const l = new FailureLimiter({ maxFailures: 3, lockMs: 1000, maxLockMs: 4000 });
    for (let i = 0; i < 2; i++) l.failed('u', 0);
    expect(l.lockedFor('u', 0)).toBe(0);
    l.failed('u', 0);
    expect(l.lockedFor('u', 0)).toBe(1000);
    l.failed('u', 10);
    expect(l.lockedFor('u', 10)).toBe(2000);
    l.failed('u', 20);
    l.failed('u', 20);
    expect(l.lockedFor('u', 20)).toBe(4000); // capped
    l.succeeded('u');
    expect(l.lockedFor('u', 20)).toBe(0);
  });
});

describe('auth state', () => {
  it('reads users, roles and the flag from the stored records', () => {
    const s = AuthState.fromItems(9, [
      { key: AUTH_ENABLED_KEY, value: encodeRecord({ enabled: true }), version: 3 },
      { key: userKey('alice'), value: encodeRecord({ roles: ['app', 'gone'], passwordHash: 'x' }), version: 4 },
      { key: roleKey('app'), value: encodeRecord({ permissions: [{ prefix: '/app/', type: 'read' }, { prefix: 1, type: 'read' }] }), version: 5 },
    ]);
    expect(s.enabled).toBe(true);
    expect(s.versionOf(userKey('alice'))).toBe(4);
    expect(s.grantsOf(s.users.get('alice')!.roles)).toEqual({ root: false, permissions: [{ prefix: '/app/', type: 'read' }] });
    expect(s.grantsOf(['root']).root).toBe(true);
    expect(s.hasRootUser()).toBe(false);
  });
});
