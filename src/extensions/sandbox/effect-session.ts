/**
 * Idempotency keys of lambda writes (effectively-once effects): each write a lambda makes while
 * handling an event carries a client session derived from the triggering event (extension,
 * watch, shard, key, version) and from the write itself (its operation and keys), with a
 * sequence number counting such writes within the invocation. A redelivered event (after a
 * leader change, a crash, a retry) makes the same writes under the same sessions, and the shard
 * answers each with its first result instead of applying it again (the Raft client-session
 * de-duplication of src/statemachine/sessions.ts).
 */
import { createHash } from 'node:crypto';
import type { EffectSession } from './types.js';

/** What identifies the triggering event of an invocation. */
export interface EffectOrigin {
  readonly extension: string;
  readonly watchId: number;
  readonly shard: number;
  readonly key: string;
  readonly version: number;
}

/** Hands out the effect sessions of one invocation's writes (deterministic for a given event and sequence of writes). */
export class EffectSessions {
  private readonly counts = new Map<string, number>();
  private readonly base: string;

  constructor(origin: EffectOrigin) {
    this.base = `${origin.extension}\u0000${origin.watchId}\u0000${origin.shard}\u0000${origin.version}\u0000${origin.key}`;
  }

  /**
   * The session of the next write `op` of `keys` in this invocation: the nth such write (same
   * operation, same keys) of the invocation gets seq n, so a redelivery's writes match the first
   * delivery's even if other writes come between them in another order.
   */
  next(op: string, keys: readonly string[]): EffectSession {
    const what = `${op}\u0000${keys.join('\u0000')}`;
    const seq = (this.counts.get(what) ?? 0) + 1;
    this.counts.set(what, seq);
    const id = `fx${createHash('sha256').update(this.base).update('\u0001').update(what).digest('base64url').slice(0, 40)}`;
    return { id, seq };
  }
}
