/**
 * Lazy commit notices (`RaftConfig.lazyCommit`): a leader whose commit index advances sends no
 * commit-only appends; followers learn the index with the next append carrying entries or the
 * next heartbeat. What must hold: the leader commits and applies as before, no commit-only append
 * or its acknowledgement is sent, followers catch up within one heartbeat, and a stale leader's
 * heartbeat cannot move a follower's commit.
 */
import { describe, expect, it } from 'vitest';
import { MessageType, Role, type Message, type NodeId } from '../../src/raft/index.js';
import { encodePut } from '../sim/kv-fsm.js';
import { elect, ScenarioNetwork } from '../sim/scenario.js';


const committed = (net: ScenarioNetwork, id: NodeId): number => net.host(id).node.raft.log.committed;
const commitOnlyApp = (m: Message): boolean => (m.entries ?? []).length === 0;
/** Delivered messages from `from` on, of the given type. */
const since = (net: ScenarioNetwork, from: number, type: MessageType, f: (m: Message) => boolean = () => true): Message[] =>
  net.delivered.slice(from).filter((m) => m.type === type && f(m));

describe('lazy commit notices', () => {
  it('commits and applies on the leader without commit-only appends; followers learn the index at the next heartbeat', () => {
    const net = new ScenarioNetwork([1, 2, 3], { lazyCommit: true });
    elect(net, 1);
    net.tickAll(1); // everyone knows the no-op is committed
    const mark = net.delivered.length;
    net.propose(1, 'k', 'v1');
    const last = net.host(1).node.raft.log.lastIndex();
    expect(committed(net, 1)).toBe(last);
    expect(net.value(1, 'k')).toBe('v1'); // the leader applied: what a client waits for
    expect(since(net, mark, MessageType.App, commitOnlyApp)).toHaveLength(0);
    expect(since(net, mark, MessageType.App)).toHaveLength(2); // one append with the entry per follower
    expect(since(net, mark, MessageType.AppResp)).toHaveLength(2);
    expect(committed(net, 2)).toBeLessThan(last); // not told yet
    expect(committed(net, 3)).toBeLessThan(last);
    net.tick(1); // one heartbeat interval
    expect(committed(net, 2)).toBe(last);
    expect(committed(net, 3)).toBe(last);
    expect(net.value(2, 'k')).toBe('v1');
    expect(net.value(3, 'k')).toBe('v1');
  });

  it('eager (default): the same proposal sends a commit-only append to each follower, and each acknowledges it', () => {
    const net = new ScenarioNetwork([1, 2, 3]);
    elect(net, 1);
    net.tickAll(1);
    const mark = net.delivered.length;
    net.propose(1, 'k', 'v1');
    expect(since(net, mark, MessageType.App, commitOnlyApp).length).toBeGreaterThanOrEqual(2);
    expect(since(net, mark, MessageType.AppResp).length).toBeGreaterThanOrEqual(4);
    expect(committed(net, 2)).toBe(net.host(1).node.raft.log.lastIndex());
  });

  it('the next append carries the commit index of the previous round', () => {
    const net = new ScenarioNetwork([1, 2, 3], { lazyCommit: true });
    elect(net, 1);
    net.tickAll(1);
    net.propose(1, 'a', '1');
    const first = net.host(1).node.raft.log.lastIndex();
    expect(committed(net, 2)).toBeLessThan(first);
    net.propose(1, 'b', '2'); // no tick in between
    expect(committed(net, 2)).toBeGreaterThanOrEqual(first);
    expect(net.value(2, 'a')).toBe('1');
  });

  it('a heartbeat carrying the commit is lost: the next one delivers it; reordered, an older one does not move the commit back', () => {
    const net = new ScenarioNetwork([1, 2, 3], { lazyCommit: true });
    elect(net, 1);
    net.tickAll(1);
    net.propose(1, 'k', 'v1');
    const last = net.host(1).node.raft.log.lastIndex();
    let drop = true;
    net.dropIf((m) => drop && m.type === MessageType.Heartbeat && m.to === 2);
    net.tick(1);
    expect(committed(net, 2)).toBeLessThan(last);
    expect(committed(net, 3)).toBe(last);
    drop = false;
    net.tick(1);
    expect(committed(net, 2)).toBe(last);
    // An older heartbeat (lower commit) delivered late changes nothing.
    const h2 = net.host(2).node;
    h2.step({ type: MessageType.Heartbeat, group: 1, from: 1, to: 2, term: net.host(1).node.raft.term, commit: 1 });
    expect(h2.raft.log.committed).toBe(last);
  });

  it('a heartbeat of a stale term does not advance a follower commit, and the stale leader learns the new term', () => {
    const net = new ScenarioNetwork([1, 2, 3], { lazyCommit: true });
    elect(net, 1);
    net.tickAll(1);
    const oldTerm = net.host(1).node.raft.term;
    net.isolate(1);
    net.propose(1, 'lost', 'x'); // never commits: 1 is alone
    net.heal().isolate(1);
    elect(net, 2);
    net.propose(2, 'k', 'v2');
    net.heal();
    const before3 = committed(net, 3);
    // 1 still thinks it leads; its heartbeat claims a commit index beyond 3's.
    net.host(3).node.step({ type: MessageType.Heartbeat, group: 1, from: 1, to: 3, term: oldTerm, commit: before3 + 5 });
    net.stabilize();
    expect(committed(net, 3)).toBe(before3);
    expect(net.host(1).node.raft.role).toBe(Role.Follower); // the answer carried the new term
    net.tickAll(2);
    expect(net.value(1, 'k')).toBe('v2');
    expect(net.value(1, 'lost')).toBeUndefined();
  });

  it('flushCommit (the host is idle) tells each follower the held-back commit once; eager replicas never hold one back', () => {
    const net = new ScenarioNetwork([1, 2, 3], { lazyCommit: true });
    elect(net, 1);
    net.tickAll(1);
    net.propose(1, 'k', 'v1');
    const last = net.host(1).node.raft.log.lastIndex();
    expect(committed(net, 2)).toBeLessThan(last);
    const mark = net.delivered.length;
    expect(net.host(1).node.raft.flushCommit()).toBe(true);
    net.stabilize();
    expect(committed(net, 2)).toBe(last);
    expect(committed(net, 3)).toBe(last);
    expect(since(net, mark, MessageType.App)).toHaveLength(2); // one commit-only append per follower
    expect(net.host(1).node.raft.flushCommit()).toBe(false); // nothing held back any more
    expect(net.host(2).node.raft.flushCommit()).toBe(false); // a follower has nothing to flush
    const eager = new ScenarioNetwork([1, 2, 3]);
    elect(eager, 1);
    eager.propose(1, 'k', 'v');
    expect(eager.host(1).node.raft.flushCommit()).toBe(false);
  });

  it('flushCommit after a heartbeat already carried the commit sends nothing', () => {
    const net = new ScenarioNetwork([1, 2, 3], { lazyCommit: true });
    elect(net, 1);
    net.propose(1, 'k', 'v1');
    net.tick(1);
    expect(net.host(1).node.raft.flushCommit()).toBe(false);
  });

  /**
   * The leader proposes B while 2's acknowledgement of A is on its way; stepping that
   * acknowledgement sends B to 2 at once (the pipeline is kept full), so the append owed after the
   * proposal, sent with the next Ready, has nothing left for 2. `lazy`: is the commit held back?
   */
  const appendsAfterAckRace = (lazy: boolean): { to2: Message[]; to3: Message[] } => {
    const net = new ScenarioNetwork([1, 2, 3], lazy ? { lazyCommit: true } : {});
    elect(net, 1);
    net.tickAll(1);
    const acks: Message[] = [];
    net.dropIf((m) => m.to === 1 && m.type === MessageType.AppResp && (acks.push(m), true));
    net.propose(1, 'a', '1'); // A reaches 2 and 3; their acknowledgements are held here
    const leader = net.host(1);
    leader.node.propose(encodePut({ c: 0, r: 99, k: 'b', v: '2' })); // B: an append is owed
    leader.node.step(acks.find((m) => m.from === 2)!); // sends B to 2 now
    const rd = leader.startReady()!;
    const apps = [...rd.earlyMessages, ...rd.messages].filter((m) => m.type === MessageType.App);
    return { to2: apps.filter((m) => m.to === 2), to3: apps.filter((m) => m.to === 3) };
  };

  it('the append owed after a proposal skips a follower an acknowledgement already sent the entries to (no empty append)', () => {
    const { to2, to3 } = appendsAfterAckRace(true);
    expect(to2).toHaveLength(1); // B, sent when 2's acknowledgement was stepped
    expect(to2[0]!.entries).toHaveLength(1);
    expect(to3).toHaveLength(1); // 3 still lacked B
    expect(to3[0]!.entries).toHaveLength(1);
  });

  it('eager: the same race still sends 2 an append after the proposal (it may carry a commit to broadcast)', () => {
    const { to2 } = appendsAfterAckRace(false);
    expect(to2.length).toBeGreaterThanOrEqual(2);
  });

  it('quiescing delivers the final commit index to every follower', () => {
    const net = new ScenarioNetwork([1, 2, 3], { lazyCommit: true });
    elect(net, 1);
    net.propose(1, 'k', 'v');
    const last = net.host(1).node.raft.log.lastIndex();
    for (let i = 0; i < 10 && !net.host(1).node.raft.canQuiesce(3); i++) net.tick(1);
    expect(net.host(1).node.raft.quiesce()).toBe(true);
    net.stabilize();
    for (const id of [2, 3]) {
      expect(committed(net, id)).toBe(last);
      expect(net.host(id).node.raft.quiesced).toBe(true);
    }
  });
});
