/**
 * RawNode with `readiesInFlight: 2` (overlapped rounds): a second Ready is handed out while the
 * first one's write syncs, carrying only what the first did not; a leader counts its own copy
 * and a host sends heartbeat responses only at what `advance` made durable; Readies advance in
 * order; snapshots and configuration changes are never overlapped.
 */
import { describe, expect, it } from 'vitest';
import { ConfChangeType, EntryType, MessageType } from '../../src/raft/index.js';
import { leaderOf3 } from '../sim/scenario.js';
import { encodePut, KvFsm } from '../sim/kv-fsm.js';


const put = (r: number): Uint8Array => encodePut({ c: 1, r, k: 'k', v: String(r) });

describe('two Readies in flight', () => {
  it('refuses a second Ready with readiesInFlight 1 (the default)', () => {
    const net = leaderOf3({ readiesInFlight: 1 });
    const leader = net.host(1);
    leader.node.propose(put(1));
    leader.startReady();
    leader.node.propose(put(2));
    expect(leader.node.hasReady()).toBe(false);
    expect(() => leader.node.ready()).toThrow(/before advance/);
  });

  it('hands out a second Ready with only the entries the first did not carry, never a third', () => {
    const net = leaderOf3({ readiesInFlight: 2 });
    const leader = net.host(1);
    const last = leader.node.raft.log.lastIndex();
    leader.node.propose(put(1));
    const a = leader.startReady()!;
    expect(a.entries.map((e) => e.index)).toEqual([last + 1]);
    leader.node.propose(put(2), put(3));
    expect(leader.node.hasReady()).toBe(true);
    const b = leader.startReady()!;
    expect(b.entries.map((e) => e.index)).toEqual([last + 2, last + 3]);
    // The second Ready's appends go early (the leader's own write need not be durable first).
    expect(b.earlyMessages.filter((m) => m.type === MessageType.App).length).toBe(2);
    leader.node.propose(put(4));
    expect(leader.node.hasReady()).toBe(false);
    expect(() => leader.node.ready()).toThrow(/before advance/);
    expect(leader.node.readiesOutstanding).toBe(2);
  });

  it("counts the leader's own copy only as far as the Readies advanced, in order", () => {
    const net = leaderOf3({ readiesInFlight: 2 });
    const leader = net.host(1);
    const raft = leader.node.raft;
    const durable = raft.progress(1)!.match;
    leader.node.propose(put(1));
    const a = leader.startReady()!;
    leader.node.propose(put(2));
    const b = leader.startReady()!;
    expect(raft.progress(1)!.match).toBe(durable);
    expect(() => leader.node.advance(b)).toThrow(/out of order/);
    leader.completeReady(); // a
    expect(raft.progress(1)!.match).toBe(a.entries.at(-1)!.index);
    leader.completeReady(); // b
    expect(raft.progress(1)!.match).toBe(b.entries.at(-1)!.index);
  });

  it('compares a second hard state with the one handed out, and answers heartbeats only at the durable term', () => {
    const net = leaderOf3({ readiesInFlight: 2 });
    const follower = net.host(2);
    const term = follower.node.raft.term;
    // A leader of a higher term is heard: the new term goes out in a Ready that stays in flight.
    follower.node.step({ type: MessageType.Heartbeat, group: 1, from: 3, to: 2, term: term + 1, commit: 0 });
    const a = follower.startReady()!;
    expect(a.hardState?.term).toBe(term + 1);
    // A heartbeat of a higher term arrives meanwhile: the second Ready carries the newer term,
    // and no heartbeat response goes out before a Ready holding that term is advanced.
    follower.node.step({ type: MessageType.Heartbeat, group: 1, from: 3, to: 2, term: term + 2, commit: 0 });
    expect(follower.node.takeLivenessMessages()).toEqual([]);
    const b = follower.startReady()!;
    expect(b.hardState?.term).toBe(term + 2);
    expect(b.messages.some((m) => m.type === MessageType.HeartbeatResp)).toBe(true);
    expect(b.earlyMessages.some((m) => m.type === MessageType.HeartbeatResp)).toBe(false);
    follower.completeReady();
    follower.completeReady();
    follower.node.step({ type: MessageType.Heartbeat, group: 1, from: 3, to: 2, term: term + 2, commit: 0 });
    expect(follower.node.takeLivenessMessages().map((m) => m.type)).toEqual([MessageType.HeartbeatResp]);
  });

  it('hands out again entries that replaced ones in flight, and acknowledges them after both writes', () => {
    const net = leaderOf3({ readiesInFlight: 2 });
    const follower = net.host(2);
    const raft = follower.node.raft;
    const term = raft.term;
    const last = raft.log.lastIndex();
    const lastTerm = raft.log.lastTerm();
    const entry = (index: number, t: number, r: number) => ({ index, term: t, type: EntryType.Normal, data: put(r) });
    follower.node.step({ type: MessageType.App, group: 1, from: 1, to: 2, term, index: last, logTerm: lastTerm, commit: 0, entries: [entry(last + 1, term, 1), entry(last + 2, term, 2)] });
    const a = follower.startReady()!;
    expect(a.entries.map((e) => e.index)).toEqual([last + 1, last + 2]);
    // A new leader (term + 1) replaces the second entry while the first write syncs.
    follower.node.step({ type: MessageType.App, group: 1, from: 3, to: 2, term: term + 1, index: last + 1, logTerm: term, commit: 0, entries: [entry(last + 2, term + 1, 9)] });
    const b = follower.startReady()!;
    expect(b.entries.map((e) => `${e.index}/${e.term}`)).toEqual([`${last + 2}/${term + 1}`]);
    const acks = b.messages.filter((m) => m.type === MessageType.AppResp);
    expect(acks.map((m) => m.index)).toEqual([last + 2]);
    follower.completeReady();
    follower.completeReady();
    expect(follower.disk.lastIndex()).toBe(last + 2);
    expect(follower.disk.term(last + 2)).toBe(term + 1);
    expect(raft.log.stableLastIndex()).toBe(last + 2);
    expect(follower.node.hasReady()).toBe(false);
  });

  it('cuts a second Ready before a configuration change, and takes none while one is being applied', () => {
    const net = leaderOf3({ readiesInFlight: 2 });
    const leader = net.host(1);
    const follower = net.host(2);
    leader.node.propose(put(1));
    leader.node.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: 4 });
    const a = leader.startReady()!;
    expect(a.entries.map((e) => e.type)).toEqual([EntryType.Normal, EntryType.ConfChange]);
    leader.applyReady();
    leader.completeReady(); // the leader's copy is durable
    for (const m of a.earlyMessages.filter((x) => x.type === MessageType.App && x.to === 2)) follower.node.step(m);
    follower.startReady();
    follower.applyReady();
    const acks = follower.completeReady().filter((m) => m.type === MessageType.AppResp);
    expect(acks.length).toBeGreaterThan(0);
    // Another write is in flight when the acknowledgement commits the put and the change.
    leader.node.propose(put(2));
    leader.startReady();
    for (const m of acks) leader.node.step(m);
    expect(leader.node.raft.log.committed).toBe(a.entries.at(-1)!.index);
    const c = leader.startReady()!;
    expect(c.committedEntries.map((e) => e.type)).toEqual([EntryType.Normal]); // cut before the change
    leader.applyReady();
    leader.completeReady(); // b
    leader.completeReady(); // c
    const d = leader.startReady()!;
    expect(d.committedEntries.map((e) => e.type)).toEqual([EntryType.ConfChange]);
    // While the change is being applied (d in flight), no second Ready.
    leader.node.propose(put(3));
    expect(leader.node.hasReady()).toBe(false);
    leader.applyReady();
    leader.completeReady();
    expect(leader.node.raft.confState().learners).toContain(4);
    expect(leader.node.hasReady()).toBe(true);
    // What blocked a second Ready went with the change's Ready: behind a plain one, one more is handed out.
    const e = leader.startReady()!;
    expect(e.committedEntries.some((x) => x.type === EntryType.ConfChange)).toBe(false);
    leader.node.propose(put(4));
    expect(leader.node.hasReady()).toBe(true);
    expect(leader.startReady()!.entries.length).toBe(1);
    expect(leader.node.readiesOutstanding).toBe(2);
  });

  it('takes no second Ready while a snapshot is being installed, and one again after it', () => {
    const net = leaderOf3({ readiesInFlight: 2 });
    const leader = net.host(1);
    const follower = net.host(2);
    const raft = follower.node.raft;
    const term = leader.node.raft.term;
    const at = leader.node.raft.log.lastIndex() + 10;
    const data = new KvFsm().snapshot();
    follower.node.step({
      type: MessageType.Snap,
      group: 1,
      from: 1,
      to: 2,
      term,
      snapshot: { index: at, term, conf: leader.node.raft.confState() },
      offset: 0,
      chunk: data,
      total: data.length,
      done: true,
    });
    expect(follower.node.hasReady()).toBe(true);
    const s = follower.startReady()!;
    expect(s.snapshot?.meta.index).toBe(at);
    // An append past the snapshot arrives while it is being installed: no second Ready.
    follower.node.step({ type: MessageType.App, group: 1, from: 1, to: 2, term, index: at, logTerm: term, commit: at, entries: [{ type: EntryType.Normal, term, index: at + 1, data: put(9) }] });
    expect(follower.node.hasReady()).toBe(false);
    follower.applyReady();
    follower.completeReady();
    expect(raft.log.firstIndex()).toBe(at + 1);
    const next = follower.startReady()!;
    expect(next.entries.map((x) => x.index)).toEqual([at + 1]);
    // A plain Ready in flight: a second one may follow (the snapshot's block is gone).
    follower.node.step({ type: MessageType.App, group: 1, from: 1, to: 2, term, index: at + 1, logTerm: term, commit: at, entries: [{ type: EntryType.Normal, term, index: at + 2, data: put(10) }] });
    expect(follower.node.hasReady()).toBe(true);
  });
});
