/**
 * A follower never acknowledges entries that a later append cut from its log before they were
 * written: the acknowledgement still queued in the core is dropped (regression of the property
 * test's seed -1388734881, docs/raft.md "Bugs the simulator found").
 */
import { describe, expect, it } from 'vitest';
import { EntryType, MessageType, type Message } from '../../src/raft/index.js';
import { leaderOf3 } from '../sim/scenario.js';
import { encodePut } from '../sim/kv-fsm.js';


const acks = (ms: readonly Message[]): { to: number; term: number; index: number }[] =>
  ms.filter((m) => m.type === MessageType.AppResp && !m.reject).map((m) => ({ to: m.to, term: m.term, index: m.index ?? 0 }));

describe('acknowledgements of cut entries', () => {
  it('drops the queued acknowledgement of entries a new leader replaced before the follower wrote them', () => {
    const net = leaderOf3();
    const leader = net.host(1);
    const follower = net.host(2);
    const term = leader.node.raft.term;
    const last = leader.node.raft.log.lastIndex();
    expect(follower.node.raft.log.lastIndex()).toBe(last);
    leader.node.propose(encodePut({ c: 1, r: 1, k: 'a', v: '1' }));
    leader.node.propose(encodePut({ c: 1, r: 2, k: 'b', v: '2' }));
    const app = leader.startReady()!.earlyMessages.find((m) => m.type === MessageType.App && m.to === 2)!;
    expect(app.entries!.map((e) => e.index)).toEqual([last + 1, last + 2]);
    follower.node.step(app); // appended in memory; its acknowledgement of last+2 is queued
    // Node 3 won term+1 with a log ending at `last` and replaces last+1 before the follower wrote anything.
    const data = encodePut({ c: 2, r: 1, k: 'c', v: '3' });
    follower.node.step({
      type: MessageType.App,
      group: app.group,
      from: 3,
      to: 2,
      term: term + 1,
      index: last,
      logTerm: term,
      commit: last,
      entries: [{ term: term + 1, index: last + 1, type: EntryType.Normal, data }],
    });
    const rd = follower.startReady()!;
    expect(rd.entries.map((e) => [e.index, e.term])).toEqual([[last + 1, term + 1]]);
    // Only the acknowledgement of what this write holds leaves: none to the old leader for last+2.
    expect(acks([...rd.earlyMessages, ...rd.messages])).toEqual([{ to: 3, term: term + 1, index: last + 1 }]);
  });

  it('keeps acknowledgements of entries that were not cut', () => {
    const net = leaderOf3();
    const leader = net.host(1);
    const follower = net.host(2);
    const last = leader.node.raft.log.lastIndex();
    leader.node.propose(encodePut({ c: 1, r: 1, k: 'a', v: '1' }));
    const app = leader.startReady()!.earlyMessages.find((m) => m.type === MessageType.App && m.to === 2)!;
    follower.node.step(app);
    follower.node.step(app); // a duplicate: matches, cuts nothing
    const rd = follower.startReady()!;
    expect(acks(rd.messages).map((a) => a.index)).toEqual([last + 1, last + 1]);
  });
});
