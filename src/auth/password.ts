/** Password hashing for kvcascade users: scrypt (node:crypto) with a random salt per password, in a self-describing string so the cost can be raised later. */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

/** scrypt cost of new hashes: N = 2^14, r = 8, p = 1 (16 MiB, some tens of ms per hash on a server core). */
export const SCRYPT_PARAMS = { N: 1 << 14, r: 8, p: 1 } as const;

/** Length of the derived key and of the salt in bytes. */
const KEY_BYTES = 32;
const SALT_BYTES = 16;

/** Longest accepted password (characters). */
export const MAX_PASSWORD_LENGTH = 1024;

function derive(password: string, salt: Buffer, o: { N: number; r: number; p: number }): Promise<Buffer> {
  const opts: ScryptOptions = { N: o.N, r: o.r, p: o.p, maxmem: 256 * o.N * o.r + (1 << 20) };
  return new Promise((resolve, reject) => scrypt(password.normalize('NFC'), salt, KEY_BYTES, opts, (err, key) => (err ? reject(err) : resolve(key))));
}

/**
 * Hashes `password` with a new random salt: `scrypt$<N>$<r>$<p>$<salt b64>$<key b64>`. `params`
 * lowers the cost (tests only).
 */
export async function hashPassword(password: string, params: { N: number; r: number; p: number } = SCRYPT_PARAMS): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, params);
  return `scrypt$${params.N}$${params.r}$${params.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

/** Whether `password` matches `hash` (from {@link hashPassword}); false for a malformed hash. Constant-time comparison. */
export async function verifyPassword(password: string, hash: string): Promise<boolean> {
  const parts = hash.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [N, r, p] = parts.slice(1, 4).map(Number) as [number, number, number];
  if (![N, r, p].every((n) => Number.isSafeInteger(n) && n > 0) || N > 1 << 20 || r > 32 || p > 16) return false;
  const salt = Buffer.from(parts[4]!, 'base64');
  const expected = Buffer.from(parts[5]!, 'base64');
  if (expected.length !== KEY_BYTES) return false;
  const got = await derive(password, salt, { N, r, p });
  return timingSafeEqual(got, expected);
}
