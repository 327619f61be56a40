/** Auth tokens: HMAC-SHA256-signed, expiring claims any node verifies locally with the cluster secret (kept in the metadata group), so no request needs a Raft round trip to authenticate. */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** Prefix of every token: tells tokens apart from the admin token. */
export const TOKEN_PREFIX = 'kvc1.';

/**
 * Who a token speaks for: a user (its roles read at each request, so role changes apply at once),
 * an extension's role (lambda writes forwarded between nodes), or root.
 */
export type TokenSubject = { readonly kind: 'user'; readonly name: string } | { readonly kind: 'role'; readonly name: string } | { readonly kind: 'root' };

/** The claims of a token. */
export interface TokenClaims {
  readonly subject: TokenSubject;
  /** Expiry, ms since the epoch. */
  readonly expiresAtMs: number;
}

interface Wire {
  k: 'u' | 'r' | 'root';
  n?: string;
  e: number;
}

function sign(secret: Uint8Array, payload: string): Buffer {
  return createHmac('sha256', secret).update(payload).digest();
}

/** Signs `claims` with `secret`: `kvc1.<payload base64url>.<signature base64url>`. */
export function signToken(secret: Uint8Array, claims: TokenClaims): string {
  const s = claims.subject;
  const w: Wire = s.kind === 'root' ? { k: 'root', e: claims.expiresAtMs } : { k: s.kind === 'user' ? 'u' : 'r', n: s.name, e: claims.expiresAtMs };
  const payload = Buffer.from(JSON.stringify(w)).toString('base64url');
  return `${TOKEN_PREFIX}${payload}.${sign(secret, payload).toString('base64url')}`;
}

/** Why a token was refused. */
export type TokenProblem = 'malformed' | 'bad-signature' | 'expired';

/** Verifies `token` with `secret` at `nowMs`: its claims, or why it is refused. */
export function verifyToken(secret: Uint8Array, token: string, nowMs: number = Date.now()): TokenClaims | TokenProblem {
  if (!token.startsWith(TOKEN_PREFIX)) return 'malformed';
  const rest = token.slice(TOKEN_PREFIX.length);
  const dot = rest.indexOf('.');
  if (dot <= 0) return 'malformed';
  const payload = rest.slice(0, dot);
  const sig = Buffer.from(rest.slice(dot + 1), 'base64url');
  const want = sign(secret, payload);
  if (sig.length !== want.length || !timingSafeEqual(sig, want)) return 'bad-signature';
  let w: Wire;
  try {
    w = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Wire;
  } catch {
    return 'malformed';
  }
  if (typeof w.e !== 'number') return 'malformed';
  if (w.e <= nowMs) return 'expired';
  if (w.k === 'root') return { subject: { kind: 'root' }, expiresAtMs: w.e };
  if ((w.k !== 'u' && w.k !== 'r') || typeof w.n !== 'string') return 'malformed';
  return { subject: { kind: w.k === 'u' ? 'user' : 'role', name: w.n }, expiresAtMs: w.e };
}
