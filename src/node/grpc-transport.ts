/**
 * The gRPC peer transport: one long-lived `Peer.Raft` stream to each peer carries batches of
 * Raft messages of every group; queues are bounded, dead streams are redialled with backoff.
 * The receiving side authenticates the sending node (its certificate's node id under mutual TLS)
 * and drops, and counts, any batch or message that claims to come from another node.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { join } from 'node:path';
import { MessageType, type Message, type NodeId } from '../raft/index.js';
import type { Logger } from '../log.js';
import { protoDir } from '../proto-files.js';
import { withPeerBatchCodec } from './peer-batch-codec.js';
import { decodePacked, encodePacked } from './peer-binary.js';
import { decodePeerMessage, forOlderPeer, toWire, withoutCommitPoint, type WireMessage } from './peer-codec.js';
import type { NonMemberRefusal, Transport } from './transport.js';
import { traceWrite, type WriteTracer } from '../write-trace.js';

/** Limits and security of the peer transport. */
export interface GrpcTransportOptions {
  /** Messages queued for one peer before the oldest are dropped. */
  readonly maxQueuedMessages?: number;
  /** Messages in one batch on the wire. */
  readonly maxBatchMessages?: number;
  /** Largest peer message accepted (snapshot chunks and appends stay below it). */
  readonly maxMessageBytes?: number;
  /**
   * Credentials to dial peer `id` with (default insecure, for local development only). Under
   * mutual TLS they present this node's certificate and check that the server's names `id`.
   */
  readonly credentials?: (id: NodeId) => grpc.ChannelCredentials;
  readonly log: Logger;
}

/**
 * How the receiving side learns who is at the other end of a peer stream: the node id bound to
 * the caller's certificate, `'unauthenticated'` when the transport runs without TLS (local
 * development: the batch's self-declared sender is then believed), or `undefined` when the caller
 * presented no usable identity (the stream is refused).
 */
export type PeerAuthenticator = (call: grpc.ServerDuplexStream<unknown, unknown>) => NodeId | 'unauthenticated' | undefined;

/** What the receiving side needs from the node: who is a member, and who the caller is. */
export interface PeerServiceOptions {
  /** Whether `id` is a current member (streams from others are refused). */
  readonly isMember: (id: NodeId) => boolean;
  /** The epoch of the cluster map `isMember` reads, sent with a non-member refusal (absent: 0, which no node takes as news). */
  readonly mapEpoch?: () => number;
  readonly authenticate: PeerAuthenticator;
}

interface RaftBatchWire {
  fromNode: number;
  seq: number;
  messages?: WireMessage[];
  /** The messages in peer-binary.ts's layout (sent to receivers that advertise {@link PACKED_HEADER}). */
  packed?: Uint8Array;
}

/** Header of a peer stream's receiver that reads `RaftBatch.packed`. */
const PACKED_HEADER = 'kv-peer-packed';
/**
 * Trailer of a peer stream refused because the sender is not a member: `not-member`, with the
 * refuser's map epoch in `kv-map-epoch` (the sender may conclude it was removed from the cluster).
 */
export const PEER_REFUSAL_HEADER = 'kv-peer-refusal';
/** Trailer of a non-member refusal: the refuser's map epoch (the same name as the client API's `kv-map-epoch`). */
const META_MAP_EPOCH = 'kv-map-epoch';
/** Header of a peer stream's receiver that takes streamed snapshot transfers (Snap without `total` until the last chunk, `crc`). */
const SNAPSTREAM_HEADER = 'kv-peer-snapstream';
/** Header of a peer stream's receiver that reads commit points on refused vote responses (`Raft.commitPoint`). */
const VOTECOMMIT_HEADER = 'kv-peer-votecommit';

type PeerClient = grpc.Client & {
  raft(): grpc.ClientDuplexStream<RaftBatchWire, { seq: number }>;
};


/** Defaults and fixed tunings of the gRPC peer transport. */
export const GRPC_TRANSPORT_DEFAULTS = {
  maxQueuedMessages: 50_000,
  maxBatchMessages: 4096,
  maxMessageBytes: 64 << 20,
  /** gRPC keepalive ping interval and its answer's timeout (ms). */
  keepaliveTimeMs: 10_000,
  keepaliveTimeoutMs: 5_000,
  /** gRPC's own reconnect backoff, first and longest (ms). */
  reconnectBackoffMs: 100,
  maxReconnectBackoffMs: 1000,
  /** Our stream re-open backoff after a peer stream fails: first (and after any sign of life) and longest (ms). */
  streamBackoffMs: 50,
  maxStreamBackoffMs: 1000,
} as const;

interface PeerConn {
  readonly id: NodeId;
  address: string;
  client: PeerClient | undefined;
  stream: grpc.ClientDuplexStream<RaftBatchWire, { seq: number }> | undefined;
  queue: Message[];
  flushScheduled: boolean;
  blockedUntilDrain: boolean;
  /** No dialing before this time (backoff after a failure). */
  retryAtMs: number;
  backoffMs: number;
  seq: number;
  /** The receiver of the current stream reads packed batches (its headers said so). */
  packed: boolean;
  /** The receiver of the current stream takes streamed snapshot transfers (its headers said so); undefined until they arrived. */
  snapStream: boolean | undefined;
  /** The receiver of the current stream reads commit points on vote responses (its headers said so). */
  voteCommit: boolean;
  /** Whether refusing a streamed transfer to this (older) peer was logged. */
  warnedSnapStream: boolean;
}

let peerPackage: grpc.GrpcObject | undefined;

/** The loaded `kvcascade.v1.peer` package. */
export function loadPeerProto(): grpc.GrpcObject {
  if (!peerPackage) {
    const def = protoLoader.loadSync(join(protoDir(), 'kvcascade', 'v1', 'peer.proto'), {
      keepCase: false,
      longs: Number,
      enums: String,
      defaults: false,
      oneofs: true,
    });
    peerPackage = grpc.loadPackageDefinition(def);
  }
  return peerPackage;
}

let peerCtor: grpc.ServiceClientConstructor | undefined;

/** The Peer service's client constructor (and, as its `service`, the definition to serve), its `Raft` batches through the direct codec (peer-batch-codec.ts). */
function peerService(): grpc.ServiceClientConstructor {
  if (peerCtor === undefined) {
    const pkg = loadPeerProto() as unknown as { kvcascade: { v1: { peer: { Peer: grpc.ServiceClientConstructor } } } };
    const def = pkg.kvcascade.v1.peer.Peer.service;
    const raft = def['Raft'] as grpc.MethodDefinition<object, object>;
    peerCtor = grpc.makeClientConstructor({ ...def, Raft: withPeerBatchCodec(raft) }, 'Peer');
  }
  return peerCtor;
}

/** Peer traffic over gRPC streams. */
export class GrpcPeerTransport implements Transport {
  private readonly conns = new Map<NodeId, PeerConn>();
  private handler: (messages: readonly Message[]) => void = () => {};
  private unreachable: (peer: NodeId) => void = () => {};
  private refusedAsNonMember: (refusal: NonMemberRefusal) => void = () => {};
  private closed = false;
  private blockedTo: ReadonlySet<NodeId> = new Set();
  private readonly maxQueued: number;
  private readonly maxBatch: number;
  private readonly maxMessageBytes: number;
  private readonly log: Logger;
  /** Messages dropped because a queue was full or a peer was down (for metrics). */
  dropped = 0;
  /** Batches (or whole streams) refused: unauthenticated caller, sender not a member, or a sender other than the caller. */
  rejectedBatches = 0;
  /** Messages dropped on arrival: malformed, or claiming to be from a node other than the batch's sender. */
  rejectedMessages = 0;
  /** Raft messages handed to peer streams (all groups). */
  sentMessages = 0;
  /** Batches written to peer streams (one per peer per flush: every group's messages together). */
  sentBatches = 0;
  /** Raft messages received from peers. */
  receivedMessages = 0;

  constructor(
    private readonly selfId: NodeId,
    peers: ReadonlyMap<NodeId, string>,
    private readonly opts: GrpcTransportOptions,
  ) {
    this.maxQueued = opts.maxQueuedMessages ?? GRPC_TRANSPORT_DEFAULTS.maxQueuedMessages;
    this.maxBatch = opts.maxBatchMessages ?? GRPC_TRANSPORT_DEFAULTS.maxBatchMessages;
    this.maxMessageBytes = opts.maxMessageBytes ?? GRPC_TRANSPORT_DEFAULTS.maxMessageBytes;
    this.log = opts.log;
    for (const [id, address] of peers) if (id !== selfId) this.setPeer(id, address);
  }

  /** Adds or re-addresses a peer. */
  setPeer(id: NodeId, address: string): void {
    const c = this.conns.get(id);
    if (c) {
      if (c.address === address) return;
      this.hangUp(c);
      c.address = address;
      return;
    }
    this.conns.set(id, {
      id,
      address,
      client: undefined,
      stream: undefined,
      queue: [],
      flushScheduled: false,
      blockedUntilDrain: false,
      retryAtMs: 0,
      backoffMs: GRPC_TRANSPORT_DEFAULTS.streamBackoffMs,
      seq: 0,
      packed: false,
      snapStream: undefined,
      voteCommit: false,
      warnedSnapStream: false,
    });
  }

  /**
   * Serves the receiving side of the peer protocol on `server` (the node's peer listener, never
   * the client port). Each stream is bound to one sending node: the authenticated certificate's
   * node id, or without TLS the first batch's sender. A batch from anyone else, or from a
   * non-member, ends the stream; a malformed message, or one whose `from` is not the sender, is
   * dropped. Both are counted and logged.
   */
  register(server: grpc.Server, opts: PeerServiceOptions): void {
    server.addService(peerService().service, {
      raft: (call: grpc.ServerDuplexStream<RaftBatchWire, { seq: number }>) => {
        const identity = opts.authenticate(call as grpc.ServerDuplexStream<unknown, unknown>);
        if (identity === undefined) {
          this.rejectedBatches++;
          this.log.warn({ peer: call.getPeer() }, 'refusing a peer stream: the caller presented no node identity');
          endWith(call, grpc.status.UNAUTHENTICATED, 'the client certificate names no node (CN node-<id> or SAN URI urn:kvcascade:node:<id>)');
          return;
        }
        let sender: NodeId | undefined = identity === 'unauthenticated' ? undefined : identity;
        const md = new grpc.Metadata();
        md.set(PACKED_HEADER, '1');
        md.set(SNAPSTREAM_HEADER, '1');
        md.set(VOTECOMMIT_HEADER, '1');
        call.sendMetadata(md); // tells the dialer the stream is up, and that packed batches are read
        let refused = false;
        let firstBatch = true;
        const refuse = (why: string, fromNode: unknown, trailers?: grpc.Metadata) => {
          this.rejectedBatches++;
          refused = true;
          this.log.warn({ peer: call.getPeer(), fromNode, authenticatedAs: sender, why }, 'refusing a peer stream');
          endWith(call, grpc.status.PERMISSION_DENIED, why, trailers);
        };
        call.on('data', (batch: RaftBatchWire) => {
          if (this.closed || refused) return;
          const fromNode = batch.fromNode;
          if (sender === undefined) sender = fromNode; // plaintext: the first batch binds the stream
          if (fromNode !== sender) return refuse(`batch claims node ${fromNode} on a stream of node ${sender}`, fromNode);
          if (fromNode === this.selfId) return refuse(`batch claims to come from this node (${fromNode})`, fromNode);
          if (!opts.isMember(fromNode)) {
            const epoch = opts.mapEpoch?.() ?? 0;
            const trailers = new grpc.Metadata();
            trailers.set(PEER_REFUSAL_HEADER, 'not-member');
            trailers.set(META_MAP_EPOCH, String(epoch));
            return refuse(`node ${fromNode} is not a member (cluster map epoch ${epoch} of node ${this.selfId})`, fromNode, trailers);
          }
          if (firstBatch) {
            firstBatch = false;
            this.peerUp(fromNode);
          }
          let wires: unknown[] = batch.messages ?? [];
          if (batch.packed !== undefined && batch.packed.length > 0) {
            try {
              wires = wires.length > 0 ? [...wires, ...decodePacked(batch.packed)] : decodePacked(batch.packed);
            } catch (e) {
              this.rejectedMessages++;
              this.log.warn({ err: String(e), from: fromNode }, 'dropping an undecodable packed peer batch');
            }
          }
          const out: Message[] = [];
          for (const w of wires) {
            try {
              out.push(decodePeerMessage(w, { sender: fromNode, self: this.selfId }));
            } catch (e) {
              this.rejectedMessages++;
              this.log.warn({ err: String(e), from: fromNode }, 'dropping an invalid peer message');
            }
          }
          this.receivedMessages += out.length;
          if (traceWrite) traceMessages(traceWrite, 'recv', out);
          if (out.length > 0) this.handler(out);
        });
        call.on('error', () => {});
        call.on('end', () => call.end());
      },
    });
  }

  /**
   * Fault injection for tests (kvd --test-fault-injection): drop every message this node would
   * send to these peers, as a one-way network partition would; an empty set heals it.
   */
  dropOutgoingTo(peers: ReadonlySet<NodeId>): void {
    this.blockedTo = new Set(peers);
    this.log.warn({ peers: [...peers] }, peers.size > 0 ? 'fault injection: dropping outgoing peer traffic' : 'fault injection: outgoing peer traffic restored');
  }

  send(messages: readonly Message[]): void {
    if (this.closed) return;
    for (const m of messages) {
      const c = this.conns.get(m.to);
      if (!c || this.blockedTo.has(m.to)) {
        this.dropped++;
        continue;
      }
      if (c.queue.length >= this.maxQueued) {
        c.queue.shift(); // Raft recovers from loss; memory stays bounded
        this.dropped++;
      }
      c.queue.push(m);
      this.scheduleFlush(c);
    }
  }

  onMessages(handler: (messages: readonly Message[]) => void): void {
    this.handler = handler;
  }

  onUnreachable(handler: (peer: NodeId) => void): void {
    this.unreachable = handler;
  }

  onRefusedAsNonMember(handler: (refusal: NonMemberRefusal) => void): void {
    this.refusedAsNonMember = handler;
  }

  private scheduleFlush(c: PeerConn): void {
    if (c.flushScheduled) return;
    c.flushScheduled = true;
    setImmediate(() => {
      c.flushScheduled = false;
      this.flush(c);
    });
  }

  private flush(c: PeerConn): void {
    if (this.closed || c.queue.length === 0 || c.blockedUntilDrain) return;
    const stream = this.streamFor(c);
    if (!stream) {
      // Peer down and in backoff: drop what is queued (Raft retransmits) and tell Raft.
      this.dropped += c.queue.length;
      c.queue = [];
      this.unreachable(c.id);
      return;
    }
    if (c.snapStream !== true) c.queue = this.forOlderPeer(c, c.queue);
    if (!c.voteCommit) c.queue = c.queue.map(withoutCommitPoint);
    while (c.queue.length > 0) {
      const batch = c.queue.splice(0, this.maxBatch);
      this.sentMessages += batch.length;
      this.sentBatches++;
      if (traceWrite) traceMessages(traceWrite, 'send', batch);
      const ok = stream.write(
        c.packed
          ? { fromNode: this.selfId, seq: ++c.seq, packed: encodePacked(batch) }
          : { fromNode: this.selfId, seq: ++c.seq, messages: batch.map(toWire) },
      );
      if (!ok) {
        c.blockedUntilDrain = true;
        stream.once('drain', () => {
          c.blockedUntilDrain = false;
          this.flush(c);
        });
        return;
      }
    }
  }

  /**
   * The queued messages as a peer that did not say it takes streamed snapshot transfers can read
   * them (`forOlderPeer`): a streamed transfer's chunks are dropped (Raft asks again later), and
   * once the peer's headers said it is an older version, that is logged once per connection.
   */
  private forOlderPeer(c: PeerConn, queue: Message[]): Message[] {
    const out: Message[] = [];
    for (const m of queue) {
      const adapted = forOlderPeer(m);
      if (adapted) {
        out.push(adapted);
        continue;
      }
      this.dropped++;
      if (c.snapStream === false && !c.warnedSnapStream) {
        c.warnedSnapStream = true;
        this.log.warn({ peer: c.id, group: m.group }, 'not sending a streamed snapshot to a peer of an older version (it reads no kv-peer-snapstream transfers): upgrade it to catch it up');
      }
    }
    return out;
  }

  private streamFor(c: PeerConn): grpc.ClientDuplexStream<RaftBatchWire, { seq: number }> | undefined {
    if (c.stream) return c.stream;
    const now = Date.now();
    if (now < c.retryAtMs) return undefined;
    if (!c.client) {
      const Ctor = peerService();
      c.client = new Ctor(c.address, this.opts.credentials?.(c.id) ?? grpc.credentials.createInsecure(), {
        'grpc.max_send_message_length': this.maxMessageBytes,
        'grpc.max_receive_message_length': this.maxMessageBytes,
        'grpc.keepalive_time_ms': GRPC_TRANSPORT_DEFAULTS.keepaliveTimeMs,
        'grpc.keepalive_timeout_ms': GRPC_TRANSPORT_DEFAULTS.keepaliveTimeoutMs,
        'grpc.initial_reconnect_backoff_ms': GRPC_TRANSPORT_DEFAULTS.reconnectBackoffMs,
        'grpc.max_reconnect_backoff_ms': GRPC_TRANSPORT_DEFAULTS.maxReconnectBackoffMs,
      }) as unknown as PeerClient;
    }
    const stream = c.client.raft();
    c.stream = stream;
    c.packed = false; // until this stream's receiver says it reads packed batches
    c.snapStream = undefined;
    c.voteCommit = false;
    const fail = (why: string) => {
      if (c.stream !== stream) return;
      c.stream = undefined;
      c.blockedUntilDrain = false;
      c.retryAtMs = Date.now() + c.backoffMs;
      c.backoffMs = Math.min(c.backoffMs * 2, GRPC_TRANSPORT_DEFAULTS.maxStreamBackoffMs);
      this.log.debug({ peer: c.id, why }, 'peer stream closed');
      this.unreachable(c.id);
    };
    stream.on('data', () => {
      c.backoffMs = GRPC_TRANSPORT_DEFAULTS.streamBackoffMs;
    });
    stream.on('metadata', (md: grpc.Metadata) => {
      c.backoffMs = GRPC_TRANSPORT_DEFAULTS.streamBackoffMs;
      if (c.stream === stream) {
        c.packed = md.get(PACKED_HEADER)[0] === '1';
        c.snapStream = md.get(SNAPSTREAM_HEADER)[0] === '1';
        c.voteCommit = md.get(VOTECOMMIT_HEADER)[0] === '1';
      }
    });
    stream.on('error', (e: grpc.ServiceError) => {
      const refusal = nonMemberRefusal(c.id, e);
      if (refusal) {
        this.log.debug({ peer: c.id, peerMapEpoch: refusal.mapEpoch }, 'a peer refused this node: its cluster map does not list this node as a member');
        this.refusedAsNonMember(refusal);
      }
      fail(String(e));
    });
    stream.on('end', () => fail('ended'));
    stream.on('close', () => fail('closed'));
    return stream;
  }

  /**
   * A member opened a stream to this node, so it is up: if this node's stream to it is down and
   * waiting out a backoff (ours, up to 1 s, and gRPC's channel's, up to 1 s more), the next flush
   * dials it at once on a fresh channel. Without this a restarted node heard nothing from its
   * peers for 1–1.5 s after it came back (its leader's heartbeats dropped meanwhile: it went
   * pre-candidate, and a catch-up's first snapshot chunk waited for it). Once per inbound stream,
   * so a peer that can dial us while we cannot dial it costs one redial per stream it opens.
   */
  private peerUp(id: NodeId): void {
    const c = this.conns.get(id);
    if (!c || c.stream || this.closed) return;
    c.retryAtMs = 0;
    c.backoffMs = GRPC_TRANSPORT_DEFAULTS.streamBackoffMs;
    c.client?.close();
    c.client = undefined;
    this.log.debug({ peer: id }, 'peer stream opened to this node: redialling it now');
  }

  private hangUp(c: PeerConn): void {
    const s = c.stream;
    c.stream = undefined;
    if (s) {
      s.removeAllListeners();
      s.on('error', () => {});
      s.cancel();
    }
    c.client?.close();
    c.client = undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const c of this.conns.values()) this.hangUp(c);
  }
}


/** Ends a server stream with a status the caller sees (an 'error' event makes grpc-js send it as the trailers). */
function endWith(call: grpc.ServerDuplexStream<unknown, unknown>, code: grpc.status, details: string, metadata?: grpc.Metadata): void {
  call.emit('error', { code, details, name: 'PeerRefused', message: details, ...(metadata ? { metadata } : {}) });
}

/** The non-member refusal a peer stream's error carries (PERMISSION_DENIED with {@link PEER_REFUSAL_HEADER}), if it is one. */
function nonMemberRefusal(by: NodeId, e: grpc.ServiceError): NonMemberRefusal | undefined {
  if (e.code !== grpc.status.PERMISSION_DENIED || e.metadata?.get(PEER_REFUSAL_HEADER)[0] !== 'not-member') return undefined;
  const raw = e.metadata.get(META_MAP_EPOCH)[0];
  const mapEpoch = typeof raw === 'string' && /^[0-9]{1,16}$/.test(raw) ? Number(raw) : undefined;
  return mapEpoch === undefined ? undefined : { by, mapEpoch };
}

/** Debug tracing (write-trace.ts): appends carrying entries as `app.send`/`app.recv` at their last index, their acknowledgements as `ack.send`/`ack.recv`. */
function traceMessages(trace: WriteTracer, dir: 'send' | 'recv', msgs: readonly Message[]): void {
  for (const m of msgs) {
    const n = m.entries?.length ?? 0;
    if (m.type === MessageType.App && n > 0) trace(`app.${dir}`, m.group, (m.index ?? 0) + n);
    else if (m.type === MessageType.AppResp && m.reject !== true) trace(`ack.${dir}`, m.group, m.index ?? 0);
  }
}
