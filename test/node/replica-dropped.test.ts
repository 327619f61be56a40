/**
 * A proposal Raft drops is classified by the error's kind, not its message: no leader known or a
 * leadership transfer in progress answers NotLeaderError (ask the leader), anything else
 * OverloadedError.
 */
import { describe, expect, it } from 'vitest';
import { NotLeaderError, OverloadedError } from '../../src/node/backend.js';
import { ShardReplica } from '../../src/node/replica.js';
import { MemoryStorage, ProposalDroppedError, SeededRandom, type ProposalDropKind } from '../../src/raft/index.js';

/** A replica leading a group of one voter, whose Raft drops every proposal with `kind` (and a message that says nothing of it). */
function leaderDropping(kind: ProposalDropKind): ShardReplica {
  const r = new ShardReplica({
    nodeId: 1,
    group: 1,
    storage: new MemoryStorage({ voters: [1], learners: [] }),
    random: new SeededRandom(1),
    electionTicks: 10,
    heartbeatTicks: 1,
    snapshotEveryEntries: 1000,
    maxPendingProposals: 10,
    nowMs: () => 0,
  });
  r.internalsForTests().raw.campaign();
  while (r.hasReady()) {
    const rd = r.ready();
    r.apply(rd);
    r.advance(rd);
  }
  expect(r.isLeader).toBe(true);
  r.internalsForTests().raw.propose = () => {
    throw new ProposalDroppedError('something', kind);
  };
  return r;
}

describe('dropped proposals', () => {
  it('are classified by kind', async () => {
    await expect(leaderDropping('transfer').propose({ type: 'noop' }, 'system')).rejects.toBeInstanceOf(NotLeaderError);
    await expect(leaderDropping('no-leader').propose({ type: 'noop' }, 'system')).rejects.toBeInstanceOf(NotLeaderError);
    await expect(leaderDropping('refused').propose({ type: 'noop' }, 'system')).rejects.toBeInstanceOf(OverloadedError);
  });
});
