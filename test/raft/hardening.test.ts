/**
 * The Raft core under input no correct peer sends: terms past MAX_RAFT_TERM, local-only types
 * from the network, malformed appends and snapshot chunks, acknowledgements of entries that do
 * not exist, votes and responses from strangers. Each is ignored (and counted) without a throw;
 * a replica never campaigns past the term bound.
 */
import { describe, expect, it } from 'vitest';
import {
  ConfChangeType,
  encodeConfChange,
  EntryType,
  MAX_RAFT_TERM,
  MessageType,
  Role,
  type Message,
  type NodeId,
} from '../../src/raft/index.js';
import { ScenarioNetwork } from '../sim/scenario.js';

const GROUP = 1; // the scenario network's group id

function msg(type: MessageType, from: NodeId, to: NodeId, term: number, rest: Partial<Message> = {}): Message {
  return { type, group: GROUP, from, to, term, ...rest };
}

/** A three-node group with node 1 leading and one entry committed everywhere. */
function running(): ScenarioNetwork {
  const net = new ScenarioNetwork([1, 2, 3]);
  net.stabilize();
  net.campaign(1);
  net.propose(1, 'k', 'v');
  expect(net.leaders()).toEqual([1]);
  return net;
}

function raft(net: ScenarioNetwork, id: NodeId) {
  return net.host(id).node.raft;
}

describe('terms past the bound', () => {
  it('ignores a heartbeat whose term passes MAX_RAFT_TERM (the 2^53-1 attack), and counts it', () => {
    const net = running();
    const before = raft(net, 2).term;
    for (const term of [2 ** 53 - 1, MAX_RAFT_TERM + 1, Number.NaN, -3, 1.5]) {
      net.host(2).node.step(msg(MessageType.Heartbeat, 1, 2, term, { commit: 0 }));
    }
    expect(raft(net, 2).term).toBe(before);
    expect(raft(net, 2).lead).toBe(1);
    expect(net.host(2).node.status().droppedMessages).toBe(5);
  });

  it('never campaigns past the bound: a group pushed to MAX_RAFT_TERM stays leaderless, without a throw', () => {
    const net = running();
    // A member with a term at the bound (only a faulty or hostile one gets there) deposes the leader.
    for (const id of [2, 3]) net.host(id).node.step(msg(MessageType.Heartbeat, 1, id, MAX_RAFT_TERM, { commit: 0 }));
    net.stabilize();
    net.tickAll(100);
    for (const id of [1, 2, 3]) {
      expect(raft(net, id).term).toBe(MAX_RAFT_TERM);
      expect(raft(net, id).role).toBe(Role.Follower);
      expect(net.host(id).disk.initialState().hardState.term).toBeLessThanOrEqual(MAX_RAFT_TERM);
    }
    net.host(2).node.campaign();
    net.stabilize();
    expect(raft(net, 2).role).toBe(Role.Follower);
    expect(raft(net, 2).term).toBe(MAX_RAFT_TERM);
  });

  it('still elects a leader at the bound itself, and commits there', () => {
    const net = running();
    for (const id of [2, 3]) net.host(id).node.step(msg(MessageType.Heartbeat, 1, id, MAX_RAFT_TERM - 1, { commit: 0 }));
    net.stabilize();
    net.tickAll(60);
    expect(net.leaders()).toHaveLength(1);
    const leader = net.leaders()[0]!;
    expect(raft(net, leader).term).toBe(MAX_RAFT_TERM);
    net.propose(leader, 'k', 'at-the-bound');
    for (const id of [1, 2, 3]) expect(net.value(id, 'k')).toBe('at-the-bound');
  });

  it('recovers from a huge in-bound term (10^12): the group re-elects and keeps committing', () => {
    const net = running();
    net.host(3).node.step(msg(MessageType.Heartbeat, 2, 3, 10 ** 12, { commit: 0 }));
    net.stabilize();
    net.tickAll(60);
    expect(net.leaders()).toHaveLength(1);
    const leader = net.leaders()[0]!;
    expect(raft(net, leader).term).toBeGreaterThan(10 ** 12);
    net.propose(leader, 'k', 'later');
    for (const id of [1, 2, 3]) expect(net.value(id, 'k')).toBe('later');
  });
});

describe('messages no correct peer sends', () => {
  it('drops Hup and Beat from the network (any term), which would otherwise start an election or a heartbeat round', () => {
    const net = running();
    const t = raft(net, 2).term;
    net.host(2).node.step(msg(MessageType.Hup, 3, 2, 0));
    net.host(2).node.step(msg(MessageType.Hup, 3, 2, t));
    // Raft.step itself (behind RawNode) refuses a Hup that is not its own, too
    raft(net, 2).step(msg(MessageType.Hup, 3, 2, t));
    net.host(1).node.step(msg(MessageType.Beat, 2, 1, t));
    net.stabilize();
    expect(raft(net, 2).role).toBe(Role.Follower);
    expect(raft(net, 2).term).toBe(t);
    expect(net.host(2).node.status().droppedMessages).toBe(3);
    expect(net.host(1).node.status().droppedMessages).toBe(1);
  });

  it('drops messages claiming to come from the replica itself, or addressed to another', () => {
    const net = running();
    const t = raft(net, 1).term;
    const last = raft(net, 1).log.lastIndex();
    net.host(1).node.step(msg(MessageType.AppResp, 1, 1, t, { index: last + 5 }));
    net.host(1).node.step(msg(MessageType.AppResp, 2, 3, t, { index: last }));
    expect(net.host(1).node.status().droppedMessages).toBe(2);
  });

  it('drops a forwarded request that carries a term (it would otherwise depose the leader)', () => {
    const net = running();
    const t = raft(net, 1).term;
    net.host(1).node.step(msg(MessageType.Prop, 2, 1, t + 5, { entries: [{ term: 0, index: 0, type: EntryType.Normal, data: new Uint8Array([1]) }] }));
    net.host(1).node.step(msg(MessageType.TransferLeader, 2, 1, t + 5));
    expect(raft(net, 1).role).toBe(Role.Leader);
    expect(raft(net, 1).term).toBe(t);
  });

  it('drops a forwarded proposal carrying a membership change (only the leader proposes those, validated)', () => {
    const net = running();
    const last = raft(net, 1).log.lastIndex();
    const change = { term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange({ type: ConfChangeType.RemoveNode, nodeId: 3 }) };
    net.host(1).node.step(msg(MessageType.Prop, 2, 1, 0, { entries: [change] }));
    net.stabilize();
    expect(raft(net, 1).log.lastIndex()).toBe(last);
    expect(raft(net, 1).confState().voters).toEqual([1, 2, 3]);
  });

  it('ignores an acknowledgement of entries the leader does not have', () => {
    const net = running();
    const r1 = raft(net, 1);
    const t = r1.term;
    const last = r1.log.lastIndex();
    const matchBefore = r1.progress(2)!.match;
    net.host(1).node.step(msg(MessageType.AppResp, 2, 1, t, { index: last + 1000 }));
    net.stabilize();
    expect(r1.progress(2)!.match).toBe(matchBefore);
    expect(r1.log.committed).toBe(last);
    // and replication continues normally
    net.propose(1, 'k', 'next');
    expect(net.value(2, 'k')).toBe('next');
  });

  it('ignores votes and responses from nodes outside the group', () => {
    const net = running();
    const t = raft(net, 1).term;
    net.host(1).node.step(msg(MessageType.AppResp, 9, 1, t, { index: 1 }));
    net.host(1).node.step(msg(MessageType.HeartbeatResp, 9, 1, t, { context: 'x' }));
    net.host(1).node.step(msg(MessageType.SnapChunkResp, 9, 1, t, { snapshot: { index: 1, term: 1, conf: { voters: [], learners: [] } }, offset: 7 }));
    // Node 2 campaigns; two "grants" from strangers must not make it leader.
    net.isolate(2);
    net.electionTimeoutElapses(2);
    net.host(2).node.campaign();
    net.host(2).node.step(msg(MessageType.PreVoteResp, 8, 2, raft(net, 2).term + 1));
    net.host(2).node.step(msg(MessageType.PreVoteResp, 9, 2, raft(net, 2).term + 1));
    expect(raft(net, 2).role).toBe(Role.PreCandidate);
    net.heal();
  });

  it('a follower forwards only its own reads (a read forwarded to it would come back attributed to it)', () => {
    const net = running();
    net.host(2).node.step(msg(MessageType.ReadIndex, 3, 2, 0, { context: 'from-3' }));
    net.flushReadies();
    expect(net.queue.filter((m) => m.type === MessageType.ReadIndex)).toEqual([]);
    net.host(2).node.readIndex('mine');
    net.flushReadies();
    expect(net.queue.filter((m) => m.type === MessageType.ReadIndex)).toMatchObject([{ from: 2, to: 1, context: 'mine' }]);
    net.stabilize();
    expect(net.readStates(2).map((r) => r.requestId)).toEqual(['mine']);
  });
});

describe('malformed appends', () => {
  function appendTo2(net: ScenarioNetwork, entries: Message['entries'], over: Partial<Message> = {}): void {
    const r1 = raft(net, 1);
    const last = r1.log.lastIndex();
    net.host(2).node.step(
      msg(MessageType.App, 1, 2, r1.term, { index: last, logTerm: r1.log.lastTerm(), commit: r1.log.committed, entries, ...over }),
    );
  }

  it('drops appends whose entries are not contiguous, out of term order, of unknown type or undecodable', () => {
    const net = running();
    const r1 = raft(net, 1);
    const r2 = raft(net, 2);
    const t = r1.term;
    const last = r1.log.lastIndex();
    const data = new Uint8Array([1]);
    const bad: Message['entries'][] = [
      [{ term: t, index: last + 2, type: EntryType.Normal, data }], // gap
      [
        { term: t, index: last + 1, type: EntryType.Normal, data },
        { term: t, index: last + 3, type: EntryType.Normal, data },
      ],
      [{ term: t + 1, index: last + 1, type: EntryType.Normal, data }], // newer than the message
      [
        { term: t, index: last + 1, type: EntryType.Normal, data },
        { term: t - 1, index: last + 2, type: EntryType.Normal, data },
      ],
      [{ term: t, index: last + 1, type: 9 as EntryType, data }],
      [{ term: t, index: last + 1, type: EntryType.ConfChange, data: new TextEncoder().encode('{"type":0}') }],
      [{ term: t, index: last + 1, type: EntryType.ConfChange, data: new Uint8Array([0xff]) }],
    ];
    for (const entries of bad) appendTo2(net, entries);
    expect(r2.log.lastIndex()).toBe(last);
    expect(net.host(2).node.status().droppedMessages).toBe(bad.length);
    // a stale append rewriting committed entries is answered with the commit index, not applied
    const committed = r2.log.committed;
    appendTo2(net, [{ term: t, index: committed, type: EntryType.Normal, data }], { index: committed - 1, logTerm: r2.log.term(committed - 1)! });
    expect(r2.log.term(committed)).toBe(r1.log.term(committed));
    net.stabilize();
    net.propose(1, 'k', 'fine');
    expect(net.value(2, 'k')).toBe('fine');
  });
});

describe('malformed snapshot chunks', () => {
  it('drops chunks outside their snapshot and survives odd offsets, duplicates and early ends', () => {
    const net = running();
    const r2 = raft(net, 2);
    const t = r2.term;
    const meta = { index: r2.log.lastIndex() + 50, term: t, conf: { voters: [1, 2, 3], learners: [] } };
    const snap = (rest: Partial<Message>): Message => msg(MessageType.Snap, 1, 2, t, { snapshot: meta, total: 10, offset: 0, ...rest });
    const bytes = (n: number) => new Uint8Array(n).fill(1);
    // dropped outright: beyond the end, bad member ids, a snapshot newer than the message
    net.host(2).node.step(snap({ offset: 8, chunk: bytes(5) }));
    net.host(2).node.step(snap({ total: 2 ** 40 * 2 ** 10 }));
    net.host(2).node.step(snap({ snapshot: { ...meta, conf: { voters: [0, -1], learners: [] } } }));
    net.host(2).node.step(snap({ snapshot: { ...meta, term: t + 1 } }));
    expect(net.host(2).node.status().droppedMessages).toBe(4);
    // answered, never thrown: a gap, a repeat, a last chunk that arrives too early
    net.host(2).node.step(snap({ offset: 0, chunk: bytes(4) }));
    net.host(2).node.step(snap({ offset: 6, chunk: bytes(2) }));
    net.host(2).node.step(snap({ offset: 0, chunk: bytes(4) }));
    net.host(2).node.step(snap({ offset: 4, chunk: bytes(2), done: true }));
    expect(r2.log.committed).toBeLessThan(meta.index); // not installed: 6 of 10 bytes
    net.flushReadies();
    const replies = net.queue.filter((m) => m.type === MessageType.SnapChunkResp && m.from === 2);
    expect(replies.map((m) => [m.offset, m.reject ?? false])).toEqual([
      [4, false],
      [4, true],
      [4, false],
      [6, false],
    ]);
  });
});
