/** The assert helper for internal invariants: a condition kvcascade itself guarantees (a bug when it fails), never a check of input. */

/** An internal invariant did not hold: a bug in kvcascade (or corrupted memory), never bad input from outside. */
export class InvariantError extends Error {
  constructor(message: string) {
    super(`invariant violated: ${message}`);
    this.name = 'InvariantError';
  }
}

/**
 * Throws {@link InvariantError} unless `condition` holds. For what the code itself guarantees;
 * input from clients, peers or disk is validated with its own error types instead. `message` may
 * be a function, so building it costs nothing on the (normal) path where the invariant holds.
 */
export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new InvariantError(typeof message === 'function' ? message() : message);
}
