/**
 * Numeric bounds on what a replica accepts from its peers and on what it may reach itself.
 * They keep every counter far below 2^53 (so `term + 1` and `index + 1` stay exact) while
 * leaving room no real group can exhaust: 2^48 elections or entries at a million a second
 * last almost nine years.
 */

/**
 * The highest term a replica will adopt or campaign into. Messages with a higher term are
 * dropped (by the peer decoder, and again by `Raft.step`); a replica already at this term
 * refuses to campaign and stays a follower, so no persisted term ever exceeds it.
 */
export const MAX_RAFT_TERM = 2 ** 48;

/** The highest log index (and commit index) a replica accepts from a peer or appends itself. */
export const MAX_RAFT_INDEX = 2 ** 48;

/**
 * The largest snapshot a follower can assemble (the longest `Uint8Array` Node 20 allows):
 * bounds snapshot chunk offsets and totals.
 */
export const MAX_SNAPSHOT_BYTES = 2 ** 32;

/** Whether `n` is an integer in [0, max] (a safe integer, so arithmetic on it is exact). */
export function isBoundedUint(n: unknown, max: number): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 && n <= max;
}
