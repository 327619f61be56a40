/**
 * The seam between a node and its peers: send Raft messages of any group to other nodes, and
 * receive theirs. `LoopbackHub` is the in-process twin used by tests.
 */
import type { Message, NodeId } from '../raft/index.js';

/** Delivers Raft messages between nodes. Best effort: Raft tolerates loss, duplication and reordering. */
export interface Transport {
  /** Queues messages for their `to` nodes. Never blocks; drops when a peer's queue is full. */
  send(messages: readonly Message[]): void;
  /** Sets the handler for messages arriving from peers. */
  onMessages(handler: (messages: readonly Message[]) => void): void;
  /** Sets the handler told when a peer could not be reached (Raft stops pipelining to it). */
  onUnreachable(handler: (peer: NodeId) => void): void;
  /** Learns (or changes) a peer's address, when the cluster map names a new member. */
  setPeer?(id: NodeId, address: string): void;
  close(): Promise<void>;
}

/** Connects in-process transports; messages are delivered asynchronously, in order per pair. */
export class LoopbackHub {
  private readonly endpoints = new Map<NodeId, LoopbackTransport>();
  /** Links that drop everything (for fault tests): "from>to". */
  readonly blocked = new Set<string>();

  /** A transport for node `id` attached to this hub. */
  transport(id: NodeId): LoopbackTransport {
    const t = new LoopbackTransport(id, this);
    this.endpoints.set(id, t);
    return t;
  }

  /** @internal */
  deliver(from: NodeId, messages: readonly Message[]): void {
    const byNode = new Map<NodeId, Message[]>();
    for (const m of messages) {
      if (this.blocked.has(`${from}>${m.to}`)) continue;
      let list = byNode.get(m.to);
      if (!list) byNode.set(m.to, (list = []));
      list.push(m);
    }
    for (const [to, list] of byNode) {
      const t = this.endpoints.get(to);
      if (t && !t.closed) setImmediate(() => t.receive(list));
    }
  }

  /** @internal */
  detach(id: NodeId): void {
    this.endpoints.delete(id);
  }
}

/** One node's endpoint on a `LoopbackHub`. */
export class LoopbackTransport implements Transport {
  private handler: (messages: readonly Message[]) => void = () => {};
  closed = false;

  constructor(
    readonly id: NodeId,
    private readonly hub: LoopbackHub,
  ) {}

  send(messages: readonly Message[]): void {
    if (!this.closed && messages.length > 0) this.hub.deliver(this.id, messages);
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
    this.hub.detach(this.id);
  }
}
