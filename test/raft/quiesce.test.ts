/**
 * Quiescence of idle groups: an idle leader stops heartbeating and its caught-up followers stop
 * their election timers; proposals, reads and peer messages wake the group, and a host that sees
 * the leader's node go silent wakes a follower so it can campaign. Quiescence only changes timing,
 * never what is committed.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MessageType, Role, type NodeId } from '../../src/raft/index.js';
import { elect, ScenarioNetwork } from '../sim/scenario.js';

const ELECTION = 10;


/** Ticks the leader until the group has been idle for 3 ticks, then quiesces it. */
function quiesce(net: ScenarioNetwork, leader: NodeId): void {
  const raft = net.host(leader).node.raft;
  for (let i = 0; i < 10 && !raft.canQuiesce(3); i++) net.tickAll(1);
  expect(raft.canQuiesce(3)).toBe(true);
  expect(raft.quiesce()).toBe(true);
  net.stabilize();
}

function quiescedGroup(ids: readonly NodeId[] = [1, 2, 3]): ScenarioNetwork {
  const net = new ScenarioNetwork(ids, { electionTicks: ELECTION });
  net.stabilize();
  elect(net, 1);
  net.propose(1, 'k', 'v1');
  quiesce(net, 1);
  return net;
}

describe('quiescence', () => {
  it('an idle group quiesces: no messages and no elections while time passes', () => {
    const net = quiescedGroup();
    for (const id of [1, 2, 3]) expect(net.host(id).node.raft.quiesced).toBe(true);
    const before = net.delivered.length;
    const term = net.host(1).node.raft.term;
    net.tickAll(20 * ELECTION);
    expect(net.delivered.length).toBe(before);
    expect(net.leaders()).toEqual([1]);
    for (const id of [1, 2, 3]) expect(net.host(id).node.raft.term).toBe(term);
  });

  it('does not quiesce while a follower lags, or with entries in flight', () => {
    const net = new ScenarioNetwork([1, 2, 3], { electionTicks: ELECTION });
    net.stabilize();
    elect(net, 1);
    net.isolate(3);
    net.propose(1, 'k', 'v1');
    net.tickAll(5);
    expect(net.host(1).node.raft.canQuiesce(3)).toBe(false);
    expect(net.host(1).node.raft.quiesce()).toBe(false);
    net.heal();
    net.tickAll(5);
    expect(net.host(1).node.raft.canQuiesce(3)).toBe(true);
    net.host(1).node.propose(new Uint8Array([1])); // appended, not yet sent or synced
    expect(net.host(1).node.raft.canQuiesce(0)).toBe(false);
  });

  it('a proposal wakes the group, commits everywhere, and the group can quiesce again', () => {
    const net = quiescedGroup();
    net.propose(1, 'k', 'v2');
    for (const id of [1, 2, 3]) {
      expect(net.value(id, 'k')).toBe('v2');
      expect(net.host(id).node.raft.quiesced).toBe(false);
    }
    quiesce(net, 1);
    for (const id of [1, 2, 3]) expect(net.host(id).node.raft.quiesced).toBe(true);
  });

  it('a linearizable read on a quiesced leader wakes it and is released', () => {
    const net = quiescedGroup();
    net.host(1).node.readIndex('r1');
    net.stabilize();
    expect(net.readStates(1).map((r) => r.requestId)).toContain('r1');
  });

  it('a follower whose leader crashed stays quiet until its host wakes it, then a new leader is elected', () => {
    const net = quiescedGroup();
    net.crash(1);
    net.tickAll(5 * ELECTION);
    expect(net.leaders()).toEqual([]); // without the host's liveness signal nobody notices
    net.host(2).node.raft.wake(true);
    net.host(3).node.raft.wake(true);
    net.tickAll(2 * ELECTION + 1);
    const leaders = net.leaders();
    expect(leaders.length).toBe(1);
    expect(leaders[0]).not.toBe(1);
    net.propose(leaders[0]!, 'k', 'after');
    expect(net.value(2, 'k')).toBe('after');
    expect(net.value(3, 'k')).toBe('after');
  });

  it('a woken follower grants votes at once (its leader lease has lapsed)', () => {
    const net = quiescedGroup();
    net.crash(1);
    net.host(2).node.raft.wake(true);
    net.host(3).node.raft.wake(true);
    net.campaign(2);
    expect(net.leaders()).toEqual([2]);
  });

  it('a follower that missed the quiesce heartbeat wakes the leader with its pre-vote; no leader change', () => {
    const net = new ScenarioNetwork([1, 2, 3], { electionTicks: ELECTION });
    net.stabilize();
    elect(net, 1);
    net.propose(1, 'k', 'v1');
    net.dropIf((m) => m.type === MessageType.Heartbeat && m.quiesce === true && m.to === 3);
    quiesce(net, 1);
    net.dropIf(() => false);
    expect(net.host(3).node.raft.quiesced).toBe(false);
    const term = net.host(1).node.raft.term;
    net.tickAll(3 * ELECTION);
    expect(net.leaders()).toEqual([1]);
    expect(net.host(1).node.raft.term).toBe(term);
    expect(net.host(1).node.raft.quiesced).toBe(false); // woken by 3's pre-vote, heartbeating again
    quiesce(net, 1);
    for (const id of [1, 2, 3]) expect(net.host(id).node.raft.quiesced).toBe(true);
  });

  it('a quiesced leader cut off from its group steps down once a request wakes it (check-quorum)', () => {
    const net = quiescedGroup();
    net.isolate(1);
    net.host(2).node.raft.wake(true);
    net.host(3).node.raft.wake(true);
    net.tickAll(2 * ELECTION + 1);
    const others = net.leaders().filter((id) => id !== 1);
    expect(others.length).toBe(1);
    expect(net.host(1).node.raft.role).toBe(Role.Leader); // quiesced: it has not noticed
    net.host(1).node.readIndex('stale?');
    net.tickAll(2 * ELECTION + 1);
    expect(net.host(1).node.raft.role).not.toBe(Role.Leader); // stepped down (and, cut off, pre-votes in vain)
    expect(net.readStates(1).map((r) => r.requestId)).not.toContain('stale?');
    net.heal();
    net.tickAll(2);
    expect(net.leaders()).toEqual(others);
  });

  it('property: random idle/busy/fault sequences with a liveness-aware host keep logs consistent and stay live', () => {
    type Op =
      | { kind: 'tick'; n: number }
      | { kind: 'propose'; value: number }
      | { kind: 'quiesce' }
      | { kind: 'crash'; node: NodeId }
      | { kind: 'isolate'; node: NodeId }
      | { kind: 'heal' };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ kind: fc.constant('tick' as const), n: fc.integer({ min: 1, max: 3 * ELECTION }) }),
      fc.record({ kind: fc.constant('propose' as const), value: fc.integer({ min: 0, max: 999 }) }),
      fc.record({ kind: fc.constant('quiesce' as const) }),
      fc.record({ kind: fc.constant('crash' as const), node: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ kind: fc.constant('isolate' as const), node: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ kind: fc.constant('heal' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 25 }), fc.integer({ min: 1, max: 1000 }), (ops, seed) => {
        const ids: NodeId[] = [1, 2, 3];
        const net = new ScenarioNetwork(ids, { electionTicks: ELECTION }, seed);
        const down = new Set<NodeId>();
        let isolated: NodeId | undefined;
        const reachable = (a: NodeId, b: NodeId): boolean =>
          !down.has(a) && !down.has(b) && (isolated === undefined || (a !== isolated && b !== isolated));
        // The host's liveness signal: a quiesced follower whose leader cannot reach it is woken.
        const wakeSilent = (): void => {
          for (const id of ids) {
            const raft = net.host(id).node.raft;
            if (down.has(id) || !raft.quiesced) continue;
            if (raft.role === Role.Leader) {
              if (ids.some((p) => p !== id && !reachable(id, p))) raft.wake();
            } else if (raft.lead === 0 || !reachable(id, raft.lead)) raft.wake(true);
          }
        };
        const tick = (n: number): void => {
          for (let i = 0; i < n; i++) {
            wakeSilent();
            net.tickAll(1);
          }
        };
        net.stabilize();
        tick(3 * ELECTION);
        for (const o of ops) {
          switch (o.kind) {
            case 'tick':
              tick(o.n);
              break;
            case 'propose': {
              const l = net.leaders().find((id) => !down.has(id));
              try {
                if (l !== undefined) net.proposeQuietly(l, 'k', String(o.value));
              } catch {
                // refused (e.g. a leader on its way out): fine
              }
              break;
            }
            case 'quiesce':
              for (const id of net.leaders()) if (!down.has(id) && net.host(id).node.raft.canQuiesce(1)) net.host(id).node.raft.quiesce();
              net.stabilize();
              break;
            case 'crash':
              if (down.size === 0) {
                net.crash(o.node);
                down.add(o.node);
              }
              break;
            case 'isolate':
              if (isolated === undefined) {
                net.isolate(o.node);
                isolated = o.node;
              }
              break;
            case 'heal':
              net.heal();
              isolated = undefined;
              for (const id of down) net.restart(id);
              down.clear();
              break;
          }
        }
        // Heal everything; a liveness-aware host must get the group going again.
        net.heal();
        for (const id of down) net.restart(id);
        down.clear();
        isolated = undefined;
        tick(6 * ELECTION);
        const leaders = net.leaders().filter((id) => net.host(id).node.raft.term === Math.max(...ids.map((i) => net.host(i).node.raft.term)));
        expect(leaders.length).toBe(1);
        net.proposeQuietly(leaders[0]!, 'k', 'final');
        tick(2);
        for (const id of ids) expect(net.value(id, 'k')).toBe('final');
        // Committed prefixes agree.
        const logs = ids.map((id) => net.log(id));
        const commits = ids.map((id) => net.host(id).node.raft.log.committed);
        const upTo = Math.min(...commits);
        for (let i = 0; i < upTo; i++) {
          const terms = new Set(logs.map((l) => l[i]?.term));
          expect(terms.size).toBe(1);
        }
      }),
      { numRuns: 150, seed: 20261203 },
    );
  });
});
