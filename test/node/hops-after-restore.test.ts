/**
 * An event's hop count (how many extension lambdas led to the write) must survive a snapshot:
 * a replica that restores the state from a snapshot must still know each event's hops, or the
 * lambda loop guard restarts counting at 0 for every event it replays from history.
 *
 * The state machine records the hop count with each version and event of the write (issue 10),
 * so the snapshot carries it (test/storage/hop-counts.test.ts covers the codecs and records).
 */
import { describe, expect, it } from 'vitest';
import { ShardReplica } from '../../src/node/replica.js';
import { MessageType, MemoryStorage, SeededRandom, type Message } from '../../src/raft/index.js';
import type { KvEvent } from '../../src/statemachine/index.js';

const storages = new Map<ShardReplica, MemoryStorage>();

function replica(nodeId: number, voters: number[]): ShardReplica {
  const storage = new MemoryStorage({ voters, learners: [] });
  const r = new ShardReplica({
    nodeId,
    group: 3,
    storage,
    random: new SeededRandom(nodeId),
    electionTicks: 10,
    heartbeatTicks: 1,
    snapshotEveryEntries: 1000,
    maxPendingProposals: 10,
    nowMs: () => 0,
  });
  storages.set(r, storage);
  return r;
}

/** Runs the replica's Ready loop as the node does (its storage in memory, no peers). */
function drain(r: ShardReplica): void {
  const storage = storages.get(r)!;
  while (r.hasReady()) {
    const rd = r.ready();
    if (rd.snapshot) storage.applySnapshot(rd.snapshot);
    storage.append(rd.entries);
    if (rd.hardState) storage.setHardState(rd.hardState);
    r.apply(rd);
    r.advance(rd);
  }
}

describe('hop counts across a snapshot restore', () => {
  it('a follower restored from a snapshot still knows the hop count of each event', async () => {
    const leader = replica(1, [1]);
    leader.internalsForTests().raw.campaign();
    drain(leader);
    expect(leader.isLeader).toBe(true);
    const put = leader.propose({ type: 'put', key: '/h', value: new Uint8Array([1]) }, 'client', 3);
    drain(leader);
    const res = await put;
    if (res.type !== 'put') throw new Error(`unexpected ${res.type}`);
    expect(leader.hopsOf(res.version)).toBe(3); // known where it was applied

    const index = leader.appliedIndex;
    const data = leader.internalsForTests().sm.snapshot();
    const follower = replica(2, [1, 2]);
    const snap: Message = {
      type: MessageType.Snap,
      group: 3,
      from: 1,
      to: 2,
      term: leader.term,
      snapshot: { index, term: leader.logTerm(index)!, conf: { voters: [1, 2], learners: [] } },
      offset: 0,
      chunk: data,
      total: data.length,
      done: true,
    };
    follower.step(snap);
    drain(follower);
    expect(follower.appliedIndex).toBe(index);

    // The event replayed from history to a watcher carries its hop count ...
    const events: KvEvent[] = [];
    follower.watch({ prefix: '/h', fromRevision: res.version, progressIntervalMs: 0 }, { events: (evs) => events.push(...evs), progress: () => {}, canceled: () => {} });
    expect(events.map((e) => e.revision)).toEqual([res.version]);
    expect(events[0]!.hops).toBe(3);
    // ... and so does the replica's lookup the extension host uses.
    expect(follower.hopsOf(res.version)).toBe(3);
  });
});
