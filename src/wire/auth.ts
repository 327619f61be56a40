/**
 * The admin token check shared by the services: the Admin service (every call) and the KV
 * service (operators reading dead letters). A request carries the token as gRPC metadata
 * `authorization: Bearer <token>`; it is compared with the configured token by SHA-256 digest in
 * constant time (so neither the token's length nor its content leaks through timing).
 */
import type * as grpc from '@grpc/grpc-js';
import { createHash, timingSafeEqual } from 'node:crypto';

/** The request metadata key carrying the admin token. */
export const AUTHORIZATION_METADATA = 'authorization';

/** The metadata value that carries `token`: `Bearer <token>`. */
export function bearer(token: string): string {
  return `Bearer ${token}`;
}

/**
 * Whether a request is an admin's: `ok` (the right token), `disabled` (this node has no admin
 * token), `missing` (no `authorization: Bearer ...` metadata) or `wrong` (another token).
 */
export type AdminAuthResult = 'ok' | 'disabled' | 'missing' | 'wrong';

/** Checks requests' admin tokens against one configured token (or none: every request is `disabled`). */
export class AdminTokenCheck {
  private readonly expected: Buffer | undefined;

  /** `token` is the node's admin token; undefined or empty disables admin access. */
  constructor(token: string | undefined) {
    this.expected = token ? digest(token) : undefined;
  }

  /** Whether this node accepts an admin token at all. */
  get enabled(): boolean {
    return this.expected !== undefined;
  }

  /** Checks the `authorization` metadata of a request. */
  check(md: grpc.Metadata): AdminAuthResult {
    if (!this.expected) return 'disabled';
    const header = String(md.get(AUTHORIZATION_METADATA)[0] ?? '');
    const m = /^Bearer (.+)$/.exec(header);
    if (!m) return 'missing';
    return timingSafeEqual(digest(m[1]!), this.expected) ? 'ok' : 'wrong';
  }
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}
