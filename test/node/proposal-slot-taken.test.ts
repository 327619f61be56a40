/**
 * A proposal whose log slot a later term's proposal of this same replica takes is answered at
 * once as lost (session ext30): a leader that lost the shard (its uncommitted tail truncated by the
 * next leader) and leads again proposes at the same index, and overwriting the old waiter left
 * its caller (a lambda's store call, a cursor write) hanging until its deadline, then told the
 * outcome was unknown.
 */
import { describe, expect, it } from 'vitest';
import { PendingProposals, ProposalLostError } from '../../src/node/waiters.js';
import type { CommandResult } from '../../src/statemachine/index.js';

const result = { type: 'noop' } as unknown as CommandResult;

describe('a proposal slot taken by a later term', () => {
  it('fails the earlier waiter with ProposalLostError; the new one gets the applied result', async () => {
    const p = new PendingProposals();
    const outcomes: unknown[] = [];
    p.wait(5, 1).then((r) => outcomes.push(r), (e: unknown) => outcomes.push(e));
    const second = p.wait(5, 3);
    await new Promise<void>((r) => setImmediate(r)); // lets the first waiter's settlement run, if any
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]).toBeInstanceOf(ProposalLostError);
    expect(p.size).toBe(1);
    p.applied(5, 3, result);
    await expect(second).resolves.toBe(result);
    expect(p.size).toBe(0);
  });
});
