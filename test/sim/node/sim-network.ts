/**
 * The node-level simulator's network: one {@link Transport} per node incarnation for Raft traffic,
 * and one request/response path (for the coordinator's forwarded calls and the simulated
 * clients' calls), all under the run's seeded random and virtual clock. Every message waits a
 * random delay (so messages between two nodes can overtake each other), may be dropped or
 * duplicated while the network is lossy, and is dropped on a cut link (a partition). Raft
 * messages of one send to one node travel as one frame. A message reaches the incarnation that was current when it was sent; one
 * that crashed meanwhile never sees it.
 */
import type { Message, NodeId } from '../../../src/raft/index.js';
import { SeededRandom } from '../../../src/raft/index.js';
import type { Transport } from '../../../src/node/transport.js';
import { SIM_OWNER, type Owner, type VirtualScheduler } from './virtual-scheduler.js';

/** The simulated client machines' id on the network (never a node id). */
export const CLIENT_HOST = 0;

/** How the network behaves now (changed by faults). */
export interface NetworkConditions {
  /** Shortest and longest one-way delay (virtual ms). */
  minDelayMs: number;
  maxDelayMs: number;
  /** Chance that a message is lost. */
  dropRate: number;
  /** Chance that a Raft message is delivered twice. */
  duplicateRate: number;
}

/** The default conditions: a healthy LAN. */
export const HEALTHY: NetworkConditions = { minDelayMs: 1, maxDelayMs: 4, dropRate: 0, duplicateRate: 0 };

/** Counters of what the network did (for the run's summary). */
export interface NetworkStats {
  raftSent: number;
  raftDropped: number;
  rpcSent: number;
  rpcDropped: number;
}

/** The network of one run (see the file's top). */
export class SimNetwork {
  conditions: NetworkConditions = { ...HEALTHY };
  readonly stats: NetworkStats = { raftSent: 0, raftDropped: 0, rpcSent: 0, rpcDropped: 0 };
  /** Cut links, "from>to" (one way). Clients (host 0) are never cut off. */
  private readonly cut = new Set<string>();
  /** The current incarnation of each node: its owner and its Raft endpoint. */
  private readonly endpoints = new Map<NodeId, { owner: Owner; transport: SimTransport }>();
  private readonly random: SeededRandom;

  constructor(
    private readonly sched: VirtualScheduler,
    seed: number,
  ) {
    this.random = new SeededRandom(seed ^ 0x2545f491);
  }

  /** A Raft transport for incarnation `owner` of node `id` (replaces any earlier one). */
  attach(id: NodeId, owner: Owner): SimTransport {
    const t = new SimTransport(id, this);
    this.endpoints.set(id, { owner, transport: t });
    return t;
  }

  /** Node `id` is down: nothing reaches it until it is attached again. */
  detach(id: NodeId): void {
    this.endpoints.delete(id);
  }

  /** The owner of node `id`'s current incarnation (undefined while it is down). */
  ownerOf(id: NodeId): Owner | undefined {
    return this.endpoints.get(id)?.owner;
  }

  /** Splits the nodes into sides that cannot reach each other (both ways). */
  partition(sides: readonly (readonly NodeId[])[]): void {
    this.cut.clear();
    for (const a of sides) for (const b of sides) if (a !== b) for (const x of a) for (const y of b) this.cut.add(`${x}>${y}`);
  }

  /** Cuts one direction of one link. */
  cutOneWay(from: NodeId, to: NodeId): void {
    this.cut.add(`${from}>${to}`);
  }

  /** Restores every link and the healthy conditions. */
  heal(): void {
    this.cut.clear();
    this.conditions = { ...HEALTHY };
  }

  /** Whether `from` can reach `to` now (clients reach every node that is up). */
  reachable(from: NodeId, to: NodeId): boolean {
    return !this.cut.has(`${from}>${to}`) && this.endpoints.has(to);
  }

  /** One random one-way delay under the current conditions. */
  delay(): number {
    const { minDelayMs, maxDelayMs } = this.conditions;
    return minDelayMs + this.random.nextInt(Math.max(1, maxDelayMs - minDelayMs + 1));
  }

  /** Whether this message is lost (the current drop rate). */
  private lost(): boolean {
    return this.conditions.dropRate > 0 && this.random.nextFloat() < this.conditions.dropRate;
  }

  /**
   * @internal Sends Raft messages from `from`: the messages of one call to each node travel
   * together (as one frame of a peer stream), each frame on its own delay, per the links and
   * conditions. Messages are shared, not copied (as LoopbackHub does): nodes never mutate them.
   */
  sendRaft(from: NodeId, messages: readonly Message[]): void {
    const byNode = new Map<NodeId, Message[]>();
    for (const m of messages) {
      this.stats.raftSent++;
      let list = byNode.get(m.to);
      if (!list) byNode.set(m.to, (list = []));
      list.push(m);
    }
    for (const [toId, list] of byNode) {
      const to = this.endpoints.get(toId);
      if (!to || !this.reachable(from, toId) || this.lost()) {
        this.stats.raftDropped += list.length;
        continue;
      }
      const copies = this.conditions.duplicateRate > 0 && this.random.nextFloat() < this.conditions.duplicateRate ? 2 : 1;
      for (let i = 0; i < copies; i++) {
        this.sched.at(to.owner, this.delay(), () => {
          // A link cut while the frame was in flight loses it too.
          if (this.cut.has(`${from}>${toId}`)) return;
          to.transport.receive(list);
        });
      }
    }
  }

  /**
   * A request from `from` (a node, or CLIENT_HOST) to node `to`: `serve` runs as `to`'s current
   * incarnation after a delay, and its answer travels back (to `from`'s incarnation of the time of
   * the call). A lost request or answer is simply never answered: callers keep their own deadline.
   */
  request<R>(from: NodeId, to: NodeId, serve: () => Promise<R>, answer: (outcome: { ok: true; value: R } | { ok: false; error: unknown }) => void): void {
    this.stats.rpcSent++;
    const target = this.endpoints.get(to);
    const back = from === CLIENT_HOST ? SIM_OWNER : this.endpoints.get(from)?.owner;
    if (!target || back === undefined || !this.reachable(from, to) || this.lost()) {
      this.stats.rpcDropped++;
      return;
    }
    this.sched.at(target.owner, this.delay(), () => {
      if (this.cut.has(`${from}>${to}`)) return;
      const reply = (outcome: { ok: true; value: R } | { ok: false; error: unknown }): void => {
        // A node that crashed meanwhile sends nothing; a cut link or a lossy network loses the answer.
        const down = this.endpoints.get(to)?.owner !== target.owner;
        if (down || (from !== CLIENT_HOST && !this.reachable(to, from)) || this.lost()) {
          this.stats.rpcDropped++;
          return;
        }
        this.sched.at(back, this.delay(), () => answer(outcome));
      };
      let p: Promise<R>;
      try {
        p = serve();
      } catch (e) {
        p = Promise.reject(e);
      }
      p.then(
        (value) => reply({ ok: true, value }),
        (error: unknown) => reply({ ok: false, error }),
      );
    });
  }
}

/** One node incarnation's Raft endpoint on a {@link SimNetwork}. */
export class SimTransport implements Transport {
  private handler: (messages: readonly Message[]) => void = () => {};
  private closed = false;

  constructor(
    readonly id: NodeId,
    private readonly net: SimNetwork,
  ) {}

  send(messages: readonly Message[]): void {
    if (!this.closed && messages.length > 0) this.net.sendRaft(this.id, messages);
  }

  onMessages(handler: (messages: readonly Message[]) => void): void {
    this.handler = handler;
  }

  onUnreachable(): void {}

  /** @internal */
  receive(messages: readonly Message[]): void {
    if (!this.closed) this.handler(messages);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
