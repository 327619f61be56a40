/**
 * A synchronous, step-by-step network of replicas for scenario tests that read like a story:
 * add nodes, campaign, deliver with drops, partition, stabilize, then look at the state.
 * Disk writes complete immediately here; the timed simulator models slow and lost writes.
 */
import { expect } from 'vitest';
import { MessageType, Role, type Message, type NodeId, type Entry, type ReadState } from '../../src/raft/index.js';
import { SimHost, type HostOptions } from './host.js';
import { encodePut } from './kv-fsm.js';

/** A scripted cluster whose messages move only when the test says so. */
export class ScenarioNetwork {
  readonly hosts = new Map<NodeId, SimHost>();
  /** Messages sent and not yet delivered, in send order. */
  queue: Message[] = [];
  private readonly blocked = new Set<string>();
  private readonly down = new Set<NodeId>();
  private readonly paused = new Map<NodeId, Message[]>();
  /** Messages dropped by the test's `dropIf` rule. */
  private dropRule: ((m: Message) => boolean) | undefined;
  private seq = 0;
  /** Read states each node released (safe linearizable reads), in order. */
  private readonly released = new Map<NodeId, ReadState[]>();
  /** Every message ever delivered, for assertions. */
  readonly delivered: Message[] = [];

  constructor(
    ids: readonly NodeId[],
    private readonly opts: HostOptions = {},
    seed = 1,
  ) {
    for (const id of ids) this.hosts.set(id, new SimHost(id, seed, ids, opts));
  }

  /** Adds a node that starts with an empty log (to be added by a configuration change). */
  addEmptyNode(id: NodeId): SimHost {
    const h = new SimHost(id, 99, undefined, this.opts);
    this.hosts.set(id, h);
    return h;
  }

  host(id: NodeId): SimHost {
    const h = this.hosts.get(id);
    if (!h) throw new Error(`no node ${id}`);
    return h;
  }

  // ------------------------------------------------------------ topology

  /** Cuts traffic both ways between a and b. */
  cut(a: NodeId, b: NodeId): this {
    this.blocked.add(`${a}>${b}`);
    this.blocked.add(`${b}>${a}`);
    return this;
  }

  /** Cuts traffic from a to b only. */
  cutOneWay(from: NodeId, to: NodeId): this {
    this.blocked.add(`${from}>${to}`);
    return this;
  }

  /** Cuts a node off from everyone. */
  isolate(id: NodeId): this {
    for (const other of this.hosts.keys()) if (other !== id) this.cut(id, other);
    return this;
  }

  /** Splits the cluster into the given sides; nodes on different sides cannot talk. */
  partition(...sides: NodeId[][]): this {
    for (const a of sides) for (const b of sides) if (a !== b) for (const x of a) for (const y of b) this.cutOneWay(x, y);
    return this;
  }

  /** Restores all links (and clears any drop rule). */
  heal(): this {
    this.blocked.clear();
    this.dropRule = undefined;
    return this;
  }

  /** Drops every message matching the rule until `heal()`. */
  dropIf(rule: (m: Message) => boolean): this {
    this.dropRule = rule;
    return this;
  }

  // ------------------------------------------------------------ node faults

  /** Crashes a node: it loses everything volatile (the disk keeps what was written). */
  crash(id: NodeId): this {
    this.host(id).crash(false);
    this.down.add(id);
    return this;
  }

  /** Restarts a crashed node from its disk. */
  restart(id: NodeId): this {
    this.down.delete(id);
    this.host(id).restart();
    return this;
  }

  /** Freezes a node: no ticks, and messages to it wait until it resumes. */
  pause(id: NodeId): this {
    if (!this.paused.has(id)) this.paused.set(id, []);
    return this;
  }

  /** Resumes a paused node with its old view; held messages are delivered on the next stabilize. */
  resume(id: NodeId): this {
    const held = this.paused.get(id) ?? [];
    this.paused.delete(id);
    this.queue.push(...held);
    return this;
  }

  // ------------------------------------------------------------ driving

  /** Processes every pending Ready of live nodes; sent messages join the queue. */
  flushReadies(): void {
    for (const [id, h] of this.hosts) {
      if (this.down.has(id) || this.paused.has(id)) continue;
      for (let rd = h.startReady(); rd; rd = h.startReady()) {
        const out = h.applyReady();
        this.queue.push(...out.messages);
        if (out.readStates.length > 0) this.released.set(id, [...(this.released.get(id) ?? []), ...out.readStates]);
        this.queue.push(...h.completeReady());
      }
    }
  }

  /** Delivers queued messages (and everything they cause) until the network is quiet. */
  stabilize(maxSteps = 100_000): this {
    this.flushReadies();
    let steps = 0;
    while (this.queue.length > 0) {
      if (++steps > maxSteps) throw new Error('network did not stabilize');
      const m = this.queue.shift()!;
      this.deliver(m);
      this.flushReadies();
    }
    return this;
  }

  private deliver(m: Message): void {
    if (this.blocked.has(`${m.from}>${m.to}`)) return;
    if (this.dropRule?.(m)) return;
    if (this.down.has(m.to) || !this.hosts.has(m.to)) return;
    const held = this.paused.get(m.to);
    if (held) {
      held.push(m);
      return;
    }
    this.delivered.push(m);
    this.host(m.to).node.step(m);
  }

  /** Ticks one node `n` times, stabilizing after each tick. */
  tick(id: NodeId, n = 1): this {
    for (let i = 0; i < n; i++) {
      if (!this.down.has(id) && !this.paused.has(id)) this.host(id).node.tick();
      this.stabilize();
    }
    return this;
  }

  /** Ticks every live node `n` times, stabilizing after each round. */
  tickAll(n = 1): this {
    for (let i = 0; i < n; i++) {
      for (const [id, h] of this.hosts) if (!this.down.has(id) && !this.paused.has(id)) h.node.tick();
      this.stabilize();
    }
    return this;
  }

  /**
   * Time passes on every live node but `except` until their election timers fire; whatever
   * they send meanwhile is lost. Afterwards no one holds a leader lease (check-quorum), as
   * after a real leader failure.
   */
  electionTimeoutElapses(except: NodeId): this {
    const ticks = 2 * (this.opts.electionTicks ?? 10);
    for (const [id, h] of this.hosts) {
      if (id === except || this.down.has(id) || this.paused.has(id)) continue;
      if (h.node.raft.role === Role.Leader) continue;
      for (let i = 0; i < ticks && h.node.raft.lead !== 0; i++) h.node.tick();
      for (let rd = h.startReady(); rd; rd = h.startReady()) {
        h.applyReady();
        h.completeReady(); // messages lost
      }
    }
    return this;
  }

  /** Makes a node campaign now and lets the election play out. */
  campaign(id: NodeId): this {
    this.host(id).node.campaign();
    return this.stabilize();
  }

  /** Proposes a put through a node and lets replication play out. */
  propose(id: NodeId, key: string, value: string): this {
    this.host(id).node.propose(encodePut({ c: 0, r: ++this.seq, k: key, v: value }));
    return this.stabilize();
  }

  /** Proposes a put without delivering anything. */
  proposeQuietly(id: NodeId, key: string, value: string): this {
    this.host(id).node.propose(encodePut({ c: 0, r: ++this.seq, k: key, v: value }));
    this.flushReadies();
    return this;
  }

  // ------------------------------------------------------------ observation

  /** Live nodes that currently believe they lead. */
  leaders(): NodeId[] {
    return [...this.hosts].filter(([id, h]) => !this.down.has(id) && h.node.raft.role === Role.Leader).map(([id]) => id);
  }

  /** The node's whole log (snapshot-compacted entries excluded). */
  log(id: NodeId): Entry[] {
    const l = this.host(id).node.raft.log;
    return l.slice(l.firstIndex(), l.lastIndex() + 1);
  }

  /** Terms of the node's log, index by index from its first index. */
  logTerms(id: NodeId): number[] {
    return this.log(id).map((e) => e.term);
  }

  /** The value the node's state machine holds for a key. */
  value(id: NodeId, key: string): string | undefined {
    return this.host(id).fsm.data.get(key);
  }

  /** The linearizable reads a node has released so far. */
  readStates(id: NodeId): ReadState[] {
    return this.released.get(id) ?? [];
  }

  /** Count of delivered messages of a type. */
  countDelivered(type: MessageType, filter: (m: Message) => boolean = () => true): number {
    return this.delivered.filter((m) => m.type === type && filter(m)).length;
  }
}

/** Makes `id` the leader: campaigns, and lets its election timeout elapse and campaigns again (up to 5 times) until it leads; fails the test otherwise. */
export function elect(net: ScenarioNetwork, id: NodeId): void {
  net.campaign(id);
  for (let i = 0; i < 5 && net.host(id).node.raft.role !== Role.Leader; i++) {
    net.electionTimeoutElapses(id);
    net.campaign(id);
  }
  expect(net.host(id).node.raft.role).toBe(Role.Leader);
}

/**
 * Three nodes (1, 2, 3; 10 election ticks, heartbeat every 2) with node 1 elected leader: it
 * campaigns until it wins (a randomized timeout may make a first campaign early). `opts` adds to
 * or overrides those host options.
 */
export function leaderOf3(opts: HostOptions = {}): ScenarioNetwork {
  const net = new ScenarioNetwork([1, 2, 3], { electionTicks: 10, heartbeatTicks: 2, ...opts });
  net.campaign(1);
  for (let i = 0; i < 5 && net.host(1).node.raft.role !== Role.Leader; i++) {
    net.electionTimeoutElapses(1);
    net.campaign(1);
  }
  expect(net.host(1).node.raft.role).toBe(Role.Leader);
  return net;
}
