/**
 * The seam between a node and its peers: send Raft messages of any group to other nodes, and
 * receive theirs. `LoopbackHub` is the in-process twin used by tests.
 */
import type { Message, NodeId } from '../raft/index.js';

/** A peer's refusal of this node's messages: its cluster map, at `mapEpoch`, does not list this node. */
export interface NonMemberRefusal {
  /** The refusing node. */
  readonly by: NodeId;
  /** The refuser's cluster-map epoch (a metadata revision; only a map newer than this node's own means it was dropped). */
  readonly mapEpoch: number;
}

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
  /**
   * Sets the handler told when a peer refused this node's messages because its cluster map does
   * not list this node as a member; the refusal names the refuser's map epoch (see
   * {@link NonMemberRefusal}). Transports that cannot tell (older peers) never call it.
   */
  onRefusedAsNonMember?(handler: (refusal: NonMemberRefusal) => void): void;
  close(): Promise<void>;
}

/** Options of a {@link LoopbackHub}. */
export interface LoopbackHubOptions {
  /**
   * Refuse non-members as the gRPC peer service does: a node whose messages reach a receiver
   * that `isMember` says does not know it as a member gets a {@link NonMemberRefusal} with the
   * receiver's `mapEpoch`, and the messages are dropped. Both callbacks ask about the receiver.
   */
  readonly refuseNonMembers?: {
    readonly isMember: (receiver: NodeId, sender: NodeId) => boolean;
    readonly mapEpoch: (receiver: NodeId) => number;
  };
}

/** Connects in-process transports; messages are delivered asynchronously, in order per pair. */
export class LoopbackHub {
  private readonly endpoints = new Map<NodeId, LoopbackTransport>();
  /** Links that drop everything (for fault tests): "from>to". */
  readonly blocked = new Set<string>();

  constructor(private readonly opts: LoopbackHubOptions = {}) {}

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
    const refuse = this.opts.refuseNonMembers;
    for (const [to, list] of byNode) {
      const t = this.endpoints.get(to);
      if (!t || t.closed) continue;
      if (refuse && !refuse.isMember(to, from)) {
        const sender = this.endpoints.get(from);
        const refusal: NonMemberRefusal = { by: to, mapEpoch: refuse.mapEpoch(to) };
        if (sender) setImmediate(() => sender.refused(refusal));
        continue;
      }
      setImmediate(() => t.receive(list));
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
  private refusedHandler: (refusal: NonMemberRefusal) => void = () => {};
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

  onRefusedAsNonMember(handler: (refusal: NonMemberRefusal) => void): void {
    this.refusedHandler = handler;
  }

  /** @internal */
  refused(refusal: NonMemberRefusal): void {
    if (!this.closed) this.refusedHandler(refusal);
  }

  /** @internal */
  receive(messages: readonly Message[]): void {
    if (!this.closed) this.handler(messages);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.hub.detach(this.id);
  }
}
