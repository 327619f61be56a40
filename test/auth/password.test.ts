/** Password hashing: scrypt with a random salt per hash, verified in constant time; malformed hashes never match. */
import { describe, expect, it } from 'vitest';
import { hashPassword, verifyPassword, SCRYPT_PARAMS } from '../../src/auth/password.js';

const cheap = { N: 1 << 10, r: 8, p: 1 };

describe('password hashing', () => {
  it('verifies the right password and refuses others', async () => {
    const h = await hashPassword('correct horse', cheap);
    expect(h.startsWith('scrypt$1024$8$1$')).toBe(true);
    expect(await verifyPassword('correct horse', h)).toBe(true);
    expect(await verifyPassword('correct hors', h)).toBe(false);
    expect(await verifyPassword('', h)).toBe(false);
  });

  it('salts every hash: the same password hashes differently', async () => {
    const [a, b] = await Promise.all([hashPassword('pw', cheap), hashPassword('pw', cheap)]);
    expect(a).not.toBe(b);
    expect(await verifyPassword('pw', a)).toBe(true);
    expect(await verifyPassword('pw', b)).toBe(true);
  });

  it('is slow by default (the production cost) and unicode-normalized', async () => {
    const t0 = performance.now();
    const h = await hashPassword('caf\u00e9');
    const ms = performance.now() - t0;
    expect(h.startsWith(`scrypt$${SCRYPT_PARAMS.N}$`)).toBe(true);
    expect(ms).toBeGreaterThan(5);
    expect(await verifyPassword('cafe\u0301', h)).toBe(true); // NFC equal
  });

  it('never matches a malformed or tampered hash', async () => {
    const h = await hashPassword('pw', cheap);
    expect(await verifyPassword('pw', 'plain')).toBe(false);
    expect(await verifyPassword('pw', h.replace('scrypt$1024', 'scrypt$0'))).toBe(false);
    expect(await verifyPassword('pw', h.replace('scrypt$1024', 'scrypt$99999999'))).toBe(false);
    const parts = h.split('$');
    parts[5] = Buffer.alloc(32).toString('base64');
    expect(await verifyPassword('pw', parts.join('$'))).toBe(false);
  });
});
