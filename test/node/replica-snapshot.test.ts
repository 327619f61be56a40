/**
 * A replica checks a snapshot received from its leader before Raft installs it: data its state
 * machine cannot restore (or restores at another index) is refused, instead of being installed
 * and then stopping the node when applied. A large snapshot is decoded in steps, not in the turn
 * that accepts it.
 */
import { describe, expect, it } from 'vitest';
import { ShardReplica } from '../../src/node/replica.js';
import { MessageType, MemoryStorage, SeededRandom, type Message } from '../../src/raft/index.js';
import { KvStateMachine } from '../../src/statemachine/index.js';
import { RESTORE_STEP_KEYS } from '../../src/statemachine/snapshot-codec.js';

function follower(stepwiseInstall = false): ShardReplica {
  return new ShardReplica({
    stepwiseInstall,
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

  it('installs a large snapshot stepwise: decoded a few thousand keys per step, then its records replaced, never in one long turn', () => {
    const n = 3 * RESTORE_STEP_KEYS + 100;
    const sm = new KvStateMachine();
    for (let i = 1; i <= n; i++) sm.apply(i, 1000 + i, { type: 'put', key: `/k/${String(i).padStart(6, '0')}`, value: new Uint8Array([i & 0xff]) });
    const r = follower(true);
    r.step(snapMessage(n, sm.snapshot()));
    const rd = r.ready();
    r.apply(rd);
    // Accepted, but nothing decoded yet: the old (empty) machine serves until the install ends.
    expect(r.installing).toBe(true);
    expect(r.appliedIndex).toBe(0);
    let decodeSteps = 0;
    let units = 0;
    for (;;) {
      const unit = r.nextReplacementUnit();
      if (unit === undefined) break;
      if (unit.length === 0 && units === 0) decodeSteps++;
      else units++;
    }
    // One step per RESTORE_STEP_KEYS keys decoded and again per keys rebuilt, plus the checksum and copy.
    expect(decodeSteps).toBeGreaterThanOrEqual(6);
    expect(units).toBeGreaterThan(0);
    expect(r.installing).toBe(false);
    r.advance(rd);
    expect(r.appliedIndex).toBe(n);
    expect(r.userKeyCount).toBe(n);
    expect(r.readValue(`/k/${String(n).padStart(6, '0')}`)?.value).toEqual(new Uint8Array([n & 0xff]));
  });
});
