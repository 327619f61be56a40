/** The one pool of gRPC stubs a node uses to reach other nodes' client APIs: forwarding to shard leaders, lambda calls, cluster probes. */
import * as grpc from '@grpc/grpc-js';
import { ClusterStubClient, KvStubClient, type ClusterStub, type KvStub } from '../wire/proto.js';

/** Options of {@link NodeStubs}. */
export interface NodeStubsOptions {
  /** Credentials of the channels (default insecure). */
  readonly credentials?: grpc.ChannelCredentials;
  /** Extra channel options (override the defaults). */
  readonly channelOptions?: grpc.ChannelOptions;
}

/**
 * KV and Cluster stubs per address, created on first use and shared by every caller on this node
 * (one channel per address and service). Calls are never retried by grpc-js: the callers decide.
 */
export class NodeStubs {
  private readonly kvStubs = new Map<string, KvStub>();
  private readonly clusterStubs = new Map<string, ClusterStub>();
  private readonly credentials: grpc.ChannelCredentials;
  private readonly channelOptions: grpc.ChannelOptions;
  private closed = false;

  constructor(opts: NodeStubsOptions = {}) {
    this.credentials = opts.credentials ?? grpc.credentials.createInsecure();
    this.channelOptions = {
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      'grpc.enable_retries': 0,
      ...opts.channelOptions,
    };
  }

  /** The kvcascade.v1.KV stub of `address`. */
  kv(address: string): KvStub {
    return this.get(this.kvStubs, address, KvStubClient);
  }

  /** The kvcascade.v1.Cluster stub of `address`. */
  cluster(address: string): ClusterStub {
    return this.get(this.clusterStubs, address, ClusterStubClient);
  }

  /** Closes every channel; stubs asked for later are new ones (closed again by the next close). */
  close(): void {
    this.closed = true;
    for (const s of this.kvStubs.values()) s.close();
    for (const s of this.clusterStubs.values()) s.close();
    this.kvStubs.clear();
    this.clusterStubs.clear();
  }

  /** Whether {@link close} was called. */
  get isClosed(): boolean {
    return this.closed;
  }

  private get<S>(cache: Map<string, S>, address: string, ctor: new (address: string, creds: grpc.ChannelCredentials, o: grpc.ChannelOptions) => S): S {
    let s = cache.get(address);
    if (!s) {
      s = new ctor(address, this.credentials, this.channelOptions);
      cache.set(address, s);
    }
    return s;
  }
}
