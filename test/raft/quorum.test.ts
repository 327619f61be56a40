// Covers src/raft/quorum.ts: majority sizes, committedIndex and voteResult (examples plus fast-check properties vs brute force).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { committedIndex, majority, voteResult, VoteResult } from '../../src/raft/quorum.js';
import type { NodeId } from '../../src/raft/types.js';

/** Brute force: the largest c such that at least a majority of voters have match >= c. */
function bruteCommitted(voters: readonly NodeId[], matchOf: (id: NodeId) => number): number {
  if (voters.length === 0) return 0;
  const need = Math.floor(voters.length / 2) + 1;
  const candidates = new Set<number>([0, ...voters.map(matchOf)]);
  let best = 0;
  for (const c of candidates) {
    const count = voters.filter((v) => matchOf(v) >= c).length;
    if (count >= need && c > best) best = c;
  }
  return best;
}

/** Brute force: enumerate every way the missing voters could still vote. */
function bruteVote(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  if (voters.length === 0) return VoteResult.Lost;
  const need = Math.floor(voters.length / 2) + 1;
  const missing = voters.filter((v) => !votes.has(v));
  const grantedNow = voters.filter((v) => votes.get(v) === true).length;
  let canWin = false;
  let canLose = false;
  for (let mask = 0; mask < 1 << missing.length; mask++) {
    let granted = grantedNow;
    for (let b = 0; b < missing.length; b++) if (mask & (1 << b)) granted++;
    if (granted >= need) canWin = true;
    else canLose = true;
  }
  if (canWin && !canLose) return VoteResult.Won;
  if (canLose && !canWin) return VoteResult.Lost;
  return VoteResult.Pending;
}

const votersArb = fc.uniqueArray(fc.integer({ min: 1, max: 20 }), { minLength: 0, maxLength: 9 });

describe('majority', () => {
  it('matches the table for small groups', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7].map(majority)).toEqual([1, 1, 2, 2, 3, 3, 4, 4]);
  });

  it('is the smallest count strictly greater than half', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 10_000 }), (n) => {
        const m = majority(n);
        expect(2 * m).toBeGreaterThan(n);
        expect(2 * (m - 1)).toBeLessThanOrEqual(n);
      }),
    );
  });
});

describe('committedIndex', () => {
  it('is 0 for an empty voter set', () => {
    expect(committedIndex([], () => 100)).toBe(0);
  });

  it('returns the single voter match', () => {
    expect(committedIndex([1], () => 7)).toBe(7);
  });

  it('picks the median-ish value a majority has reached', () => {
    const m = new Map<NodeId, number>([
      [1, 5],
      [2, 3],
      [3, 9],
    ]);
    expect(committedIndex([1, 2, 3], (id) => m.get(id) ?? 0)).toBe(5);
    const m4 = new Map<NodeId, number>([
      [1, 10],
      [2, 8],
      [3, 6],
      [4, 4],
    ]);
    // Majority of 4 is 3: 3 voters have >= 6.
    expect(committedIndex([1, 2, 3, 4], (id) => m4.get(id) ?? 0)).toBe(6);
  });

  it('counts missing voters as 0', () => {
    const m = new Map<NodeId, number>([[1, 10]]);
    expect(committedIndex([1, 2, 3], (id) => m.get(id) ?? 0)).toBe(0);
    m.set(2, 4);
    expect(committedIndex([1, 2, 3], (id) => m.get(id) ?? 0)).toBe(4);
  });

  it('does not depend on the order of voters', () => {
    const m = new Map<NodeId, number>([
      [1, 1],
      [2, 2],
      [3, 3],
      [4, 4],
      [5, 5],
    ]);
    const f = (id: NodeId): number => m.get(id) ?? 0;
    expect(committedIndex([5, 1, 4, 2, 3], f)).toBe(3);
    expect(committedIndex([1, 2, 3, 4, 5], f)).toBe(3);
  });

  it('equals the brute-force max index matched by a majority', () => {
    fc.assert(
      fc.property(votersArb, fc.array(fc.integer({ min: 0, max: 50 }), { minLength: 9, maxLength: 9 }), (voters, ms) => {
        const matchOf = (id: NodeId): number => ms[id % ms.length]!;
        const got = committedIndex(voters, matchOf);
        expect(got).toBe(bruteCommitted(voters, matchOf));
        if (voters.length > 0) {
          const need = majority(voters.length);
          // A majority has reached it...
          expect(voters.filter((v) => matchOf(v) >= got).length).toBeGreaterThanOrEqual(need);
          // ...and no majority has reached anything higher.
          expect(voters.filter((v) => matchOf(v) >= got + 1).length).toBeLessThan(need);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('voteResult', () => {
  const votes = (entries: [NodeId, boolean][]): Map<NodeId, boolean> => new Map(entries);

  it('an empty voter set never wins', () => {
    expect(voteResult([], votes([]))).toBe(VoteResult.Lost);
    expect(voteResult([], votes([[1, true]]))).toBe(VoteResult.Lost);
  });

  it('single voter', () => {
    expect(voteResult([1], votes([]))).toBe(VoteResult.Pending);
    expect(voteResult([1], votes([[1, true]]))).toBe(VoteResult.Won);
    expect(voteResult([1], votes([[1, false]]))).toBe(VoteResult.Lost);
  });

  it('three voters: won, lost, pending', () => {
    const v = [1, 2, 3];
    expect(voteResult(v, votes([[1, true]]))).toBe(VoteResult.Pending);
    expect(voteResult(v, votes([[1, true], [2, false]]))).toBe(VoteResult.Pending);
    expect(voteResult(v, votes([[1, true], [2, true]]))).toBe(VoteResult.Won);
    expect(voteResult(v, votes([[1, false], [2, false]]))).toBe(VoteResult.Lost);
    expect(voteResult(v, votes([[1, true], [2, false], [3, false]]))).toBe(VoteResult.Lost);
    expect(voteResult(v, votes([[1, true], [2, false], [3, true]]))).toBe(VoteResult.Won);
  });

  it('four voters need three grants', () => {
    const v = [1, 2, 3, 4];
    expect(voteResult(v, votes([[1, true], [2, true]]))).toBe(VoteResult.Pending);
    expect(voteResult(v, votes([[1, true], [2, true], [3, false], [4, false]]))).toBe(VoteResult.Lost);
    expect(voteResult(v, votes([[1, false], [2, false]]))).toBe(VoteResult.Lost);
    expect(voteResult(v, votes([[1, true], [2, true], [3, true]]))).toBe(VoteResult.Won);
  });

  it('ignores votes from non-voters', () => {
    const v = [1, 2, 3];
    expect(voteResult(v, votes([[1, true], [7, true], [8, true]]))).toBe(VoteResult.Pending);
    expect(voteResult(v, votes([[1, false], [2, false], [9, true]]))).toBe(VoteResult.Lost);
  });

  it('matches a brute-force enumeration of the missing votes', () => {
    fc.assert(
      fc.property(
        votersArb,
        fc.array(fc.tuple(fc.integer({ min: 1, max: 25 }), fc.boolean()), { maxLength: 25 }),
        (voters, vs) => {
          const m = new Map<NodeId, boolean>(vs);
          expect(voteResult(voters, m)).toBe(bruteVote(voters, m));
        },
      ),
      { numRuns: 500 },
    );
  });
});
