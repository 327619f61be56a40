/**
 * Quiet heartbeats (`RaftConfig.quietHeartbeats`): a leader's tick skips the heartbeat to a
 * follower that an append reached since the last one. What must hold: busy followers get no
 * heartbeats, idle ones still do, reads still get their confirming heartbeat, a lost append
 * is still repaired, and a dead follower still costs the leader its check-quorum lease.
 */
import { describe, expect, it } from 'vitest';
import { MessageType, Role, type NodeId } from '../../src/raft/index.js';
import { elect, ScenarioNetwork } from '../sim/scenario.js';


const opts = { lazyCommit: true, quietHeartbeats: true } as const;
const heartbeatsSince = (net: ScenarioNetwork, mark: number, to?: NodeId): number =>
  net.delivered.slice(mark).filter((m) => m.type === MessageType.Heartbeat && (to === undefined || m.to === to)).length;

describe('quiet heartbeats', () => {
  it('a tick after appends sends no heartbeat to those followers; the next idle tick does', () => {
    const net = new ScenarioNetwork([1, 2, 3], opts);
    elect(net, 1);
    net.tickAll(1);
    net.propose(1, 'k', 'v');
    let mark = net.delivered.length;
    net.tick(1);
    expect(heartbeatsSince(net, mark)).toBe(0);
    mark = net.delivered.length;
    net.tick(1);
    expect(heartbeatsSince(net, mark)).toBe(2); // nothing was appended meanwhile
    const last = net.host(1).node.raft.log.lastIndex();
    expect(net.host(2).node.raft.log.committed).toBe(last); // ...and it carried the commit
  });

  it('under steady proposals no heartbeats go at all, and followers stay in their term with this leader', () => {
    const net = new ScenarioNetwork([1, 2, 3], opts);
    elect(net, 1);
    net.tickAll(1);
    const mark = net.delivered.length;
    for (let i = 0; i < 30; i++) {
      net.propose(1, 'k', String(i));
      net.tickAll(1);
    }
    expect(heartbeatsSince(net, mark)).toBe(0);
    expect(net.leaders()).toEqual([1]);
    expect(net.host(2).node.raft.lead).toBe(1);
    expect(net.value(3, 'k')).toBe('28'); // the last value's commit arrives with the next heartbeat or append
  });

  it('the eager default heartbeats every tick whatever was appended', () => {
    const net = new ScenarioNetwork([1, 2, 3]);
    elect(net, 1);
    net.propose(1, 'k', 'v');
    const mark = net.delivered.length;
    net.tick(1);
    expect(heartbeatsSince(net, mark)).toBe(2);
  });

  it('a read still sends its confirming heartbeat to every follower', () => {
    const net = new ScenarioNetwork([1, 2, 3], opts);
    elect(net, 1);
    net.tickAll(1);
    net.propose(1, 'k', 'v');
    const mark = net.delivered.length;
    net.host(1).node.readIndex('r1');
    net.stabilize();
    expect(heartbeatsSince(net, mark)).toBe(2);
    expect(net.readStates(1).map((r) => r.requestId)).toContain('r1');
  });

  it('a lost append is repaired: the follower that missed it is not skipped at the next idle tick', () => {
    const net = new ScenarioNetwork([1, 2, 3], opts);
    elect(net, 1);
    net.tickAll(1);
    net.dropIf((m) => m.type === MessageType.App && m.to === 3);
    net.propose(1, 'k', 'v');
    net.dropIf(() => false);
    expect(net.value(3, 'k')).toBeUndefined();
    net.tick(1); // the append to 3 counted as "sent": skipped this tick
    net.tick(1); // idle tick: heartbeat, 3 answers, the leader sees it behind and resends
    net.tick(1);
    expect(net.value(3, 'k')).toBe('v');
  });

  it('a follower that stopped answering does not keep the leader in office (check-quorum)', () => {
    const net = new ScenarioNetwork([1, 2, 3], opts);
    elect(net, 1);
    net.tickAll(1);
    net.isolate(1);
    for (let i = 0; i < 30 && net.host(1).node.raft.role === Role.Leader; i++) {
      net.proposeQuietly(1, 'k', String(i)); // appends keep "reaching" 2 and 3 as far as 1 knows
      net.tick(1);
    }
    expect(net.host(1).node.raft.role).not.toBe(Role.Leader);
  });
});
