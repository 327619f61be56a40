/**
 * A replica checks a snapshot received from its leader before Raft installs it: data its state
 * machine cannot restore (or restores at another index) is refused, instead of being installed
 * and then stopping the node when applied.
 */
import { describe, expect, it } from 'vitest';
import { ShardReplica } from '../../src/node/replica.js';
import { MessageType, MemoryStorage, SeededRandom, type Message } from '../../src/raft/index.js';
import { KvStateMachine } from '../../src/statemachine/index.js';

function follower(): ShardReplica {
  return new ShardReplica({
    nodeId: 2,
    group: 3,
    storage: new MemoryStorage({ voters: [1, 2], learners: [] }),
    random: new SeededRandom(1),
    electionTicks: 10,
    heartbeatTicks: 1,
    snapshotEveryEntries: 1000,
    maxPendingProposals: 10,
    nowMs: () => 0,
  });
}

function snapMessage(index: number, data: Uint8Array): Message {
  return {
    type: MessageType.Snap,
    group: 3,
    from: 1,
    to: 2,
    term: 1,
    snapshot: { index, term: 1, conf: { voters: [1, 2], learners: [] } },
    offset: 0,
    chunk: data,
    total: data.length,
    done: true,
  };
}

/** Runs the replica's Ready loop as the node does (without a disk). */
function drain(r: ShardReplica): void {
  while (r.hasReady()) {
    const rd = r.ready();
    r.apply(rd);
    r.advance(rd);
  }
}

function stateAt(index: number): Uint8Array {
  const sm = new KvStateMachine();
  for (let i = 1; i <= index; i++) sm.apply(i, 0, { type: 'noop' });
  return sm.snapshot();
}

describe('snapshots from the leader', () => {
  it('refuses data the state machine cannot restore, or restores at another index, without throwing', () => {
    const r = follower();
    r.step(snapMessage(5, new Uint8Array([1, 2, 3, 4])));
    r.step(snapMessage(6, stateAt(5)));
    expect(() => drain(r)).not.toThrow();
    expect(r.status().commit).toBe(0);
    expect(r.status().droppedMessages).toBe(2);
    expect(r.appliedIndex).toBe(0);
  });

  it('installs a snapshot whose data restores at its index', () => {
    const r = follower();
    r.step(snapMessage(5, stateAt(5)));
    drain(r);
    expect(r.status().commit).toBe(5);
    expect(r.appliedIndex).toBe(5);
    expect(r.status().droppedMessages).toBe(0);
  });
});
