// Covers src/raft/bootstrap.ts: the bootstrap entries and hard state, rejection of empty/duplicate voter sets, and booting a RawNode from them.
import { describe, expect, it } from 'vitest';
import { bootstrapState } from '../../src/raft/bootstrap.js';
import { decodeConfChange } from '../../src/raft/raft.js';
import { SeededRandom } from '../../src/raft/rand.js';
import { RawNode } from '../../src/raft/raw-node.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { ConfChangeType, EntryType, Role, type ConfState, type NodeId } from '../../src/raft/types.js';

describe('bootstrapState', () => {
  it('writes one committed AddVoter entry per voter at term 1, sorted by id', () => {
    const b = bootstrapState([3, 1, 2]);
    expect(b.entries.map((e) => [e.index, e.term, e.type])).toEqual([
      [1, 1, EntryType.ConfChange],
      [2, 1, EntryType.ConfChange],
      [3, 1, EntryType.ConfChange],
    ]);
    expect(b.entries.map((e) => decodeConfChange(e.data))).toEqual([
      { type: ConfChangeType.AddVoter, nodeId: 1 },
      { type: ConfChangeType.AddVoter, nodeId: 2 },
      { type: ConfChangeType.AddVoter, nodeId: 3 },
    ]);
    expect(b.hardState).toEqual({ term: 1, vote: 0, commit: 3 });
  });

  it('a single voter', () => {
    const b = bootstrapState([7]);
    expect(b.entries).toHaveLength(1);
    expect(decodeConfChange(b.entries[0]!.data)).toEqual({ type: ConfChangeType.AddVoter, nodeId: 7 });
    expect(b.hardState).toEqual({ term: 1, vote: 0, commit: 1 });
  });

  it('is deterministic', () => {
    expect(bootstrapState([2, 5, 9])).toEqual(bootstrapState([9, 2, 5]));
  });

  it('rejects an empty voter set', () => {
    expect(() => bootstrapState([])).toThrow(/at least one voter/);
  });

  it('rejects duplicate voter ids', () => {
    expect(() => bootstrapState([1, 2, 1])).toThrow(/duplicate/);
    expect(() => bootstrapState([4, 4])).toThrow(/duplicate/);
  });

  it('does not mutate its input', () => {
    const voters = [3, 1, 2];
    bootstrapState(voters);
    expect(voters).toEqual([3, 1, 2]);
  });
});

describe('booting a RawNode from the bootstrap state', () => {
  const boot = (voters: NodeId[], storageConf?: ConfState): { node: RawNode; storage: MemoryStorage } => {
    const storage = new MemoryStorage(storageConf);
    const b = bootstrapState(voters);
    storage.append(b.entries);
    storage.setHardState(b.hardState);
    const node = new RawNode({ id: voters[0]!, group: 1, storage, random: new SeededRandom(1) });
    return { node, storage };
  };

  it('learns the voters by applying the bootstrap entries in its first Ready', () => {
    const { node } = boot([3, 1, 2]);
    // Nothing applied yet: the storage carried no configuration.
    expect(node.status().conf.voters).toEqual([]);
    expect(node.status().commit).toBe(3);
    expect(node.status().term).toBe(1);
    expect(node.status().role).toBe(Role.Follower);

    expect(node.hasReady()).toBe(true);
    const rd = node.ready();
    expect(rd.entries).toEqual([]); // already durable
    expect(rd.committedEntries.map((e) => e.index)).toEqual([1, 2, 3]);
    expect(rd.messages).toEqual([]);
    const conf = node.advance(rd);

    expect(conf).toEqual({ voters: [1, 2, 3], learners: [] });
    const st = node.status();
    expect(st.conf).toEqual({ voters: [1, 2, 3], learners: [] });
    expect(st.applied).toBe(3);
    expect(st.commit).toBe(3);
    expect(st.lastIndex).toBe(3);
    expect(node.raft.promotable()).toBe(true);
    expect(node.hasReady()).toBe(false);
  });

  it('works when the storage already reports the initial configuration', () => {
    const { node } = boot([5, 4], { voters: [4, 5], learners: [] });
    const rd = node.ready();
    expect(rd.committedEntries).toHaveLength(2);
    node.advance(rd);
    expect(node.status().conf).toEqual({ voters: [4, 5], learners: [] });
  });

  it('a single-voter group can elect itself after booting', () => {
    const { node, storage } = boot([1]);
    node.advance(node.ready());
    expect(node.status().conf.voters).toEqual([1]);
    node.campaign();
    // Drain readies until quiet, persisting as a host would (a single voter needs no peers).
    for (let i = 0; i < 10 && node.hasReady(); i++) {
      const rd = node.ready();
      storage.append(rd.entries);
      if (rd.hardState) storage.setHardState(rd.hardState);
      node.advance(rd);
    }
    expect(node.hasReady()).toBe(false);
    expect(node.status().role).toBe(Role.Leader);
    expect(node.status().leader).toBe(1);
    expect(node.status().term).toBeGreaterThan(1);
  });
});
