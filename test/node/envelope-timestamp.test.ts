/**
 * Proposal envelope timestamps: a payload whose timestamp is not a non-negative integer is
 * refused at decode time, where the replica skips it, rather than reach the state machine,
 * which would stop the node.
 */
import { describe, expect, it } from 'vitest';
import { decodeProposal, encodeProposal, UnknownEnvelopeVersionError } from '../../src/node/envelope.js';
import { ShardReplica } from '../../src/node/replica.js';
import { EntryType, MemoryStorage, SeededRandom, type Ready } from '../../src/raft/index.js';
import type { Command } from '../../src/statemachine/index.js';

const noop: Command = { type: 'noop' };

/** A replica of a one-voter group that reports the entries it skips. */
function singleReplica(onBadEntry: (index: number) => void): ShardReplica {
  return new ShardReplica({
    nodeId: 1,
    group: 3,
    storage: new MemoryStorage({ voters: [1], learners: [] }),
    random: new SeededRandom(1),
    electionTicks: 10,
    heartbeatTicks: 1,
    snapshotEveryEntries: 1000,
    maxPendingProposals: 10,
    nowMs: () => 0,
    onBadEntry,
  });
}

describe('proposal envelope timestamps', () => {
  it('refuses a timestamp that is not a non-negative integer', () => {
    for (const t of [Number.NaN, -1, 1.5, Number.POSITIVE_INFINITY, 2 ** 53]) {
      expect(() => decodeProposal(encodeProposal(t, noop, 'client'))).toThrow(/timestamp/);
    }
  });

  it('a committed proposal with a bad timestamp (which any member can forward to the leader) is skipped, not thrown', () => {
    const bad: number[] = [];
    const r = singleReplica((index) => bad.push(index));
    const rd: Ready = {
      entries: [],
      committedEntries: [{ term: 1, index: 1, type: EntryType.Normal, data: encodeProposal(Number.NaN, noop, 'client') }],
      earlyMessages: [],
      messages: [],
      readStates: [],
    };
    expect(() => r.apply(rd)).not.toThrow();
    expect(bad).toEqual([1]);
    expect(r.appliedIndex).toBe(1);
  });

  it('an entry in an envelope version this code does not know stops the replica instead of being skipped', () => {
    const bad: number[] = [];
    const r = singleReplica((index) => bad.push(index));
    const future = new Uint8Array([99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const rd: Ready = { entries: [], committedEntries: [{ term: 1, index: 1, type: EntryType.Normal, data: future }], earlyMessages: [], messages: [], readStates: [] };
    expect(() => r.apply(rd)).toThrow(UnknownEnvelopeVersionError);
    expect(bad).toEqual([]);
    expect(r.appliedIndex).toBe(0);
  });
});
