/** Majority arithmetic for one voter set: the committed index and the outcome of an election. */
import type { NodeId } from './types.js';

/** The outcome of counting votes. */
export enum VoteResult {
  Pending = 'Pending',
  Won = 'Won',
  Lost = 'Lost',
}

/** Size of a majority of `n` voters. */
export function majority(n: number): number {
  return Math.floor(n / 2) + 1;
}

/**
 * The largest index that a majority of `voters` has matched, given each voter's match index
 * (missing voters count as 0). An empty voter set commits nothing.
 */
export function committedIndex(voters: readonly NodeId[], matchOf: (id: NodeId) => number): number {
  if (voters.length === 0) return 0;
  const matches = voters.map((v) => matchOf(v)).sort((a, b) => b - a);
  return matches[majority(voters.length) - 1]!;
}

/** Whether the granted/rejected votes decide an election among `voters` (an empty set never wins). */
export function voteResult(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  if (voters.length === 0) return VoteResult.Lost;
  let granted = 0;
  let missing = 0;
  for (const v of voters) {
    const vote = votes.get(v);
    if (vote === undefined) missing++;
    else if (vote) granted++;
  }
  const need = majority(voters.length);
  if (granted >= need) return VoteResult.Won;
  if (granted + missing >= need) return VoteResult.Pending;
  return VoteResult.Lost;
}
