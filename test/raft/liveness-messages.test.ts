/**
 * RawNode.takeLivenessMessages: what a host may send while a Ready's write is still being
 * synced. A leader's heartbeats and the heartbeat responses at a durable term go; appends'
 * acknowledgements, votes and anything at a term not yet on disk wait for the next Ready. And
 * RawNode.takeReadStates: reads a quorum confirmed meanwhile may be released then.
 */
import { describe, expect, it } from 'vitest';
import { MessageType, type Message } from '../../src/raft/index.js';
import { leaderOf3 } from '../sim/scenario.js';
import { encodePut } from '../sim/kv-fsm.js';

const kinds = (ms: readonly Message[]): string[] => ms.map((m) => `${m.type}>${m.to}@${m.term}`);


describe('messages a host may send while a write is syncing', () => {
  it("hands out a leader's heartbeats while its Ready is outstanding, once each, and nothing else", () => {
    const net = leaderOf3();
    const leader = net.host(1);
    const term = leader.node.raft.term;
    leader.node.propose(encodePut({ c: 1, r: 1, k: 'a', v: '1' }));
    const rd = leader.startReady()!;
    expect(rd.entries.length).toBe(1); // its write is now "in flight"
    leader.applyReady();
    leader.node.tick();
    leader.node.tick(); // heartbeatTicks: a heartbeat round is due
    leader.node.propose(encodePut({ c: 1, r: 2, k: 'b', v: '2' })); // appends wait (batched at the next Ready)
    expect(leader.node.hasReady()).toBe(false); // a Ready is outstanding: no other one
    const free = leader.node.takeLivenessMessages();
    expect(kinds(free)).toEqual([`${MessageType.Heartbeat}>2@${term}`, `${MessageType.Heartbeat}>3@${term}`]);
    expect(leader.node.takeLivenessMessages()).toEqual([]);
    // The write completes; the next Ready carries the new entry's appends but not the heartbeats again.
    leader.completeReady();
    const next = leader.startReady()!;
    const all = [...next.earlyMessages, ...next.messages];
    expect(all.some((m) => m.type === MessageType.App)).toBe(true);
    expect(all.some((m) => m.type === MessageType.Heartbeat)).toBe(false);
  });

  it("hands out a follower's heartbeat response at its durable term, but keeps its append acknowledgements for the next Ready", () => {
    const net = leaderOf3();
    const leader = net.host(1);
    const follower = net.host(2);
    const term = leader.node.raft.term;
    leader.node.propose(encodePut({ c: 1, r: 1, k: 'a', v: '1' }));
    const lrd = leader.startReady()!;
    const apps = lrd.earlyMessages.filter((m) => m.type === MessageType.App && m.to === 2);
    expect(apps.length).toBe(1);
    follower.node.step(apps[0]!);
    const frd = follower.startReady()!;
    expect(frd.entries.length).toBe(1); // the follower's write is in flight
    expect(frd.messages.map((m) => m.type)).toEqual([MessageType.AppResp]); // its acknowledgement waits for it
    expect(follower.node.takeLivenessMessages()).toEqual([]);
    // A second append and a heartbeat arrive while the follower's write is in flight.
    leader.completeReady();
    leader.node.propose(encodePut({ c: 1, r: 2, k: 'b', v: '2' }));
    const lrd2 = leader.startReady()!;
    const app2 = lrd2.earlyMessages.find((m) => m.type === MessageType.App && m.to === 2)!;
    follower.node.step(app2);
    leader.node.tick();
    leader.node.tick();
    const hb = leader.node.takeLivenessMessages().find((m) => m.to === 2)!;
    expect(hb.type).toBe(MessageType.Heartbeat);
    follower.node.step(hb);
    const free = follower.node.takeLivenessMessages();
    expect(kinds(free)).toEqual([`${MessageType.HeartbeatResp}>1@${term}`]);
    // The second append's acknowledgement is the next Ready's, after this write and the next one.
    follower.completeReady();
    const frd2 = follower.startReady()!;
    expect(frd2.entries.length).toBe(1);
    expect(frd2.earlyMessages).toEqual([]);
    expect(frd2.messages.map((m) => m.type)).toEqual([MessageType.AppResp]);
  });

  it('keeps a heartbeat response whose term is not yet on disk for the next Ready, behind the hard state', () => {
    const net = leaderOf3();
    const follower = net.host(3);
    const term = follower.node.raft.term;
    follower.node.propose(encodePut({ c: 1, r: 1, k: 'a', v: '1' })); // forwarded to the leader: something to take
    const rd = follower.startReady()!;
    // While that Ready is outstanding, node 2 (as if it had won term+1) sends a heartbeat.
    follower.node.step({ type: MessageType.Heartbeat, group: 1, from: 2, to: 3, term: term + 1, commit: 0 });
    expect(follower.node.raft.term).toBe(term + 1);
    expect(follower.node.takeLivenessMessages()).toEqual([]);
    expect(rd.hardState).toBeUndefined();
    follower.applyReady();
    follower.completeReady();
    const next = follower.startReady()!;
    expect(next.hardState?.term).toBe(term + 1); // to be synced first
    expect(kinds(next.messages)).toEqual([`${MessageType.HeartbeatResp}>2@${term + 1}`]);
    expect(next.earlyMessages).toEqual([]);
    // Once that term is durable, later responses go out early again.
    follower.applyReady();
    follower.completeReady();
    follower.node.propose(encodePut({ c: 1, r: 2, k: 'b', v: '2' }));
    follower.startReady();
    follower.node.step({ type: MessageType.Heartbeat, group: 1, from: 2, to: 3, term: term + 1, commit: 0 });
    expect(kinds(follower.node.takeLivenessMessages())).toEqual([`${MessageType.HeartbeatResp}>2@${term + 1}`]);
  });

  it('looks only at what was queued since its last call, yet hands out every heartbeat response once, and keeps the rest in order', () => {
    // A host calls takeLivenessMessages after each message it steps during a round; appends'
    // acknowledgements pile up meanwhile and must not be rescanned each time (nor lost).
    const net = leaderOf3();
    const leader = net.host(1);
    const follower = net.host(2);
    const term = leader.node.raft.term;
    leader.node.propose(encodePut({ c: 1, r: 1, k: 'a', v: '1' }));
    follower.node.step(leader.startReady()!.earlyMessages.find((m) => m.type === MessageType.App && m.to === 2)!);
    leader.completeReady();
    expect(follower.startReady()!.entries.length).toBe(1); // the follower's write is in flight from here on
    const acks: string[] = [];
    for (let r = 2; r <= 6; r++) {
      leader.node.propose(encodePut({ c: 1, r, k: `k${r}`, v: String(r) }));
      const app = leader.startReady()!.earlyMessages.find((m) => m.type === MessageType.App && m.to === 2)!;
      leader.completeReady();
      follower.node.step(app);
      acks.push(`${MessageType.AppResp}>1@${term}`);
      expect(follower.node.takeLivenessMessages()).toEqual([]); // only an acknowledgement was queued
      follower.node.step({ type: MessageType.Heartbeat, group: 1, from: 1, to: 2, term, commit: 0 });
      expect(kinds(follower.node.takeLivenessMessages())).toEqual([`${MessageType.HeartbeatResp}>1@${term}`]);
      expect(follower.node.takeLivenessMessages()).toEqual([]);
    }
    follower.completeReady();
    const next = follower.startReady()!;
    expect(next.entries.length).toBe(5);
    expect(kinds(next.messages)).toEqual(acks);
  });

  it('hands out a heartbeat response it kept once the Ready that makes its term durable is advanced', () => {
    const net = leaderOf3();
    const follower = net.host(3);
    const term = follower.node.raft.term;
    follower.node.step({ type: MessageType.Heartbeat, group: 1, from: 2, to: 3, term: term + 1, commit: 0 });
    const rd = follower.startReady()!;
    expect(rd.hardState?.term).toBe(term + 1); // being synced
    // Another heartbeat of the new term while that Ready is outstanding: its response waits...
    follower.node.step({ type: MessageType.Heartbeat, group: 1, from: 2, to: 3, term: term + 1, commit: 0 });
    expect(follower.node.takeLivenessMessages()).toEqual([]);
    follower.applyReady();
    follower.completeReady();
    // ...and goes once the term is durable, though it was looked at before.
    expect(kinds(follower.node.takeLivenessMessages())).toEqual([`${MessageType.HeartbeatResp}>2@${term + 1}`]);
    expect(follower.node.takeLivenessMessages()).toEqual([]);
  });

  it('never hands out a vote', () => {
    const net = leaderOf3({ checkQuorum: false });
    const voter = net.host(3);
    const term = voter.node.raft.term;
    const last = voter.node.raft.log.lastIndex();
    const lastTerm = voter.node.raft.log.term(last)!;
    voter.node.propose(encodePut({ c: 1, r: 1, k: 'a', v: '1' }));
    voter.startReady();
    voter.node.step({ type: MessageType.Vote, group: 1, from: 2, to: 3, term: term + 1, index: last, logTerm: lastTerm });
    expect(voter.node.raft.vote).toBe(2); // granted in memory...
    expect(voter.node.takeLivenessMessages()).toEqual([]); // ...but not said before it is on disk
    voter.applyReady();
    voter.completeReady();
    const next = voter.startReady()!;
    expect(next.hardState).toMatchObject({ term: term + 1, vote: 2 });
    expect(next.messages.map((m) => [m.type, m.reject ?? false])).toEqual([[MessageType.VoteResp, false]]);
  });

  it('a ReadIndex round started while a Ready is outstanding is confirmed and handed out then (takeReadStates), and not again with the next Ready', () => {
    const net = leaderOf3();
    const leader = net.host(1);
    const term = leader.node.raft.term;
    // campaign() stabilised the network: the leader's no-op of its term is committed (a read needs it).
    leader.node.propose(encodePut({ c: 1, r: 1, k: 'a', v: '1' }));
    const rd = leader.startReady()!;
    expect(rd.entries.length).toBe(1); // its write is in flight
    leader.applyReady();
    const commit = leader.node.raft.log.committed;
    leader.node.readIndex('read-1');
    const hbs = leader.node.takeLivenessMessages();
    expect(kinds(hbs)).toEqual([`${MessageType.Heartbeat}>2@${term}`, `${MessageType.Heartbeat}>3@${term}`]);
    expect(leader.node.takeReadStates()).toEqual([]); // not confirmed yet
    const follower = net.host(2);
    follower.node.step(hbs.find((m) => m.to === 2)!);
    const resp = follower.node.takeLivenessMessages();
    expect(resp.map((m) => m.type)).toEqual([MessageType.HeartbeatResp]);
    leader.node.step(resp[0]!);
    // A quorum (leader and node 2) confirmed it at the commit index of when it was asked.
    expect(leader.node.takeReadStates()).toEqual([{ index: commit, requestId: 'read-1' }]);
    expect(leader.node.takeReadStates()).toEqual([]);
    leader.completeReady();
    const next = leader.startReady();
    expect(next?.readStates ?? []).toEqual([]);
  });
});

