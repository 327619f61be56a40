/** The assert helper for internal invariants (src/invariant.ts): a held invariant costs nothing, a broken one throws InvariantError naming it. */
import { describe, expect, it } from 'vitest';
import { invariant, InvariantError } from '../../src/invariant.js';

describe('invariant', () => {
  it('passes when the condition holds, without building a lazy message', () => {
    let built = 0;
    invariant(1 + 1 === 2, () => `built ${++built}`);
    expect(built).toBe(0);
  });

  it('throws InvariantError with the message when the condition fails', () => {
    expect(() => invariant(false, 'the cursor went backwards')).toThrow(InvariantError);
    expect(() => invariant(0, () => 'lazy message')).toThrow('invariant violated: lazy message');
  });
});
