/** When a store call a lambda makes must end: before the invocation making it times out. */

/**
 * How long before its invocation times out a store call the lambda makes must end, ms: this, or a
 * quarter of the invocation's `timeoutMs` when that is shorter. The call's error then reaches the
 * lambda in time: a call that waited out a leader change fails the invocation as an ordinary error
 * (`threw`, retried), not as a timeout (a hung runner, counted towards `poison`).
 */
export const KV_CALL_MARGIN_MS = 1000;

/** The deadline of a store call made by an invocation that times out at `invocationDeadlineMs` after `timeoutMs` (see {@link KV_CALL_MARGIN_MS}). */
export function kvCallDeadline(invocationDeadlineMs: number, timeoutMs: number): number {
  return invocationDeadlineMs - Math.min(KV_CALL_MARGIN_MS, timeoutMs / 4);
}
