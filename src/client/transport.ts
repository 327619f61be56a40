/** Endpoint selection, leader discovery, channels, backoff and retried unary calls of the kvcascade client. */
import { setMaxListeners } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { neverReachedServer, readKvMetadata } from '../server/metadata.js';
import { ClusterStubClient, KvStubClient, type ClusterStub, type KvStub } from '../server/proto.js';
import { KvError, fromServiceError } from './errors.js';

/** Where the client logs retries and watch resumptions (a pino logger fits). */
export interface KvClientLogger {
  debug(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** TLS material of the client: PEM buffers. */
export interface KvClientTlsOptions {
  /** CA certificate(s) to verify servers with (default: the system roots). */
  readonly rootCert?: Buffer;
  /** Client certificate chain, for mutual TLS. */
  readonly certChain?: Buffer;
  /** Client private key, for mutual TLS. */
  readonly privateKey?: Buffer;
  /** Expected server name when it differs from the endpoint host (tests). */
  readonly serverNameOverride?: string;
}

/** Options of the transport (a subset of the client's). */
export interface TransportOptions {
  readonly endpoints: readonly string[];
  readonly tls?: KvClientTlsOptions | undefined;
  readonly maxRetries: number;
  readonly log: KvClientLogger;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly channelOptions?: grpc.ChannelOptions | undefined;
}

/** Whether a call may change data (retried only when provably not executed). */
export type CallKind = 'read' | 'write';

interface Conn {
  kv?: KvStub;
  cluster?: ClusterStub;
}

/** The outcome of one attempt of a unary call. */
interface Attempt<Res> {
  readonly response?: Res;
  readonly error?: grpc.ServiceError;
  readonly trailers?: grpc.Metadata;
  readonly headers: boolean;
}

/** A logger that drops everything. */
export const NOOP_LOGGER: KvClientLogger = { debug: () => undefined, warn: () => undefined };

/** Keeps the endpoints, the leader hint and one channel per address; runs unary calls with retries. */
export class Transport {
  private readonly endpoints: readonly string[];
  private readonly conns = new Map<string, Conn>();
  private readonly creds: grpc.ChannelCredentials;
  private readonly channelOptions: grpc.ChannelOptions;
  private readonly downUntil = new Map<string, number>();
  private readonly closeController = new AbortController();
  private cursor = 0;
  private leaderHint: string | undefined;

  constructor(readonly opts: TransportOptions) {
    if (opts.endpoints.length === 0) throw new KvError(grpc.status.INVALID_ARGUMENT, 'no endpoints given');
    setMaxListeners(0, this.closeController.signal); // one listener per call, watch and pipeline in flight
    this.endpoints = [...opts.endpoints];
    const tls = opts.tls;
    this.creds = tls
      ? grpc.credentials.createSsl(tls.rootCert ?? null, tls.privateKey ?? null, tls.certChain ?? null)
      : grpc.credentials.createInsecure();
    this.channelOptions = {
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      // The client retries by itself (knowing which calls are safe to repeat); grpc-js's retry
      // layer would only buffer every sent message of long-lived streams.
      'grpc.enable_retries': 0,
      // Detect frozen or partitioned nodes under long-lived calls (watches, pipelines).
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      ...(tls?.serverNameOverride ? { 'grpc.ssl_target_name_override': tls.serverNameOverride } : {}),
      ...opts.channelOptions,
    };
  }

  /** Aborted when the client is closed. */
  get closeSignal(): AbortSignal {
    return this.closeController.signal;
  }

  get closed(): boolean {
    return this.closeController.signal.aborted;
  }

  /** The leader address learned from `kv-leader` metadata, if any. */
  get leader(): string | undefined {
    return this.leaderHint;
  }

  /** Throws KvError CANCELLED if the client was closed. */
  checkOpen(): void {
    if (this.closed) throw new KvError(grpc.status.CANCELLED, 'client closed');
  }

  /** The KV stub of an address (channels are created on first use and kept). */
  kv(address: string): KvStub {
    const c = this.conn(address);
    return (c.kv ??= new KvStubClient(address, this.creds, this.channelOptions));
  }

  /** The Cluster stub of an address. */
  cluster(address: string): ClusterStub {
    const c = this.conn(address);
    return (c.cluster ??= new ClusterStubClient(address, this.creds, this.channelOptions));
  }

  private conn(address: string): Conn {
    this.checkOpen();
    let c = this.conns.get(address);
    if (!c) {
      c = {};
      this.conns.set(address, c);
    }
    return c;
  }

  private isDown(address: string, now = Date.now()): boolean {
    return (this.downUntil.get(address) ?? 0) > now;
  }

  /** The address to send the next call to: the known leader, else the current endpoint (skipping ones that just failed to connect). */
  pick(): string {
    const now = Date.now();
    if (this.leaderHint !== undefined && !this.isDown(this.leaderHint, now)) return this.leaderHint;
    const n = this.endpoints.length;
    for (let i = 0; i < n; i++) {
      const idx = (this.cursor + i) % n;
      if (!this.isDown(this.endpoints[idx]!, now)) {
        this.cursor = idx;
        return this.endpoints[idx]!;
      }
    }
    // Everything failed recently: keep rotating.
    const e = this.endpoints[this.cursor % n]!;
    this.cursor = (this.cursor + 1) % n;
    return e;
  }

  /** Remembers the leader a response's metadata names. */
  learn(md: grpc.Metadata | undefined): void {
    const leader = readKvMetadata(md).leader;
    if (leader !== undefined && !this.isDown(leader)) {
      if (leader !== this.leaderHint) this.opts.log.debug({ leader }, 'learned leader');
      this.leaderHint = leader;
    }
  }

  /**
   * Notes a transient failure of `address`: follows a redirect to `leader` if the server named
   * another one, forgets `address` as leader, moves to the next endpoint, and when no connection
   * could be made, avoids the address for a while.
   */
  failed(address: string, connectionFailed: boolean, leader?: string): void {
    if (connectionFailed) this.downUntil.set(address, Date.now() + this.opts.maxBackoffMs);
    if (leader !== undefined && leader !== address && !this.isDown(leader)) this.leaderHint = leader;
    else if (this.leaderHint === address) this.leaderHint = undefined;
    const n = this.endpoints.length;
    if (this.endpoints[this.cursor % n] === address) this.cursor = (this.cursor + 1) % n;
  }

  /** Backoff before retry number `attempt` (0-based): initial doubling up to the maximum, with jitter in [d/2, d]. */
  backoffMs(attempt: number): number {
    const d = Math.min(this.opts.maxBackoffMs, this.opts.initialBackoffMs * 2 ** Math.min(attempt, 30));
    return d / 2 + Math.random() * (d / 2);
  }

  /** Waits `ms`, or less if the client closes or `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const signals = [this.closeSignal, ...(signal ? [signal] : [])];
      const done = (): void => {
        clearTimeout(timer);
        for (const s of signals) s.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      for (const s of signals) {
        if (s.aborted) return done();
        s.addEventListener('abort', done, { once: true });
      }
    });
  }

  private attempt<Req, Res>(
    service: 'kv' | 'cluster',
    method: string,
    address: string,
    req: Req,
    deadlineAt: number,
  ): Promise<Attempt<Res>> {
    return new Promise((resolve) => {
      const stub = (service === 'kv' ? this.kv(address) : this.cluster(address)) as unknown as Record<
        string,
        (
          req: Req,
          md: grpc.Metadata,
          o: Partial<grpc.CallOptions>,
          cb: (e: grpc.ServiceError | null, r?: Res) => void,
        ) => grpc.ClientUnaryCall
      >;
      let response: Res | undefined;
      let error: grpc.ServiceError | undefined;
      let headers = false;
      const call = stub[method]!.call(stub, req, new grpc.Metadata(), { deadline: new Date(deadlineAt) }, (e, r) => {
        if (e) error = e;
        else response = r;
      });
      const onClose = (): void => call.cancel();
      this.closeSignal.addEventListener('abort', onClose, { once: true });
      call.on('metadata', () => {
        headers = true;
      });
      call.on('status', (s: grpc.StatusObject) => {
        this.closeSignal.removeEventListener('abort', onClose);
        resolve({ ...(response !== undefined ? { response } : {}), ...(error ? { error } : {}), trailers: s.metadata, headers });
      });
    });
  }

  /**
   * Runs a unary call until it succeeds, fails permanently, runs out of retries or passes
   * `deadlineAt`. Transient failures (UNAVAILABLE; RESOURCE_EXHAUSTED marked retry-safe, i.e.
   * overload; CANCELLED for reads) move on to the next endpoint with backoff. Writes are retried
   * only when the server marked the failure `kv-retry-safe` or the call never reached a server.
   * With `endpoint`, only that address is tried, once.
   */
  async unary<Req, Res>(
    service: 'kv' | 'cluster',
    method: string,
    req: Req,
    kind: CallKind,
    deadlineAt: number,
    endpoint?: string,
  ): Promise<Res> {
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      const address = endpoint ?? this.pick();
      const r = await this.attempt<Req, Res>(service, method, address, req, deadlineAt);
      if (!r.error) {
        this.learn(r.trailers);
        return r.response as Res;
      }
      const err = r.error;
      if (this.closed) throw new KvError(grpc.status.CANCELLED, 'client closed', { endpoint: address });
      const f = readKvMetadata(err.metadata);
      const connectionFailed = !r.headers && neverReachedServer(err);
      const safe = connectionFailed || f.retrySafe === true;
      const transient =
        err.code === grpc.status.UNAVAILABLE ||
        (err.code === grpc.status.RESOURCE_EXHAUSTED && f.retrySafe === true) ||
        (kind === 'read' && err.code === grpc.status.CANCELLED);
      if (transient) this.failed(address, connectionFailed, f.leader);
      else this.learn(err.metadata);
      const retry = transient && (kind === 'read' || safe) && endpoint === undefined && attempt < this.opts.maxRetries;
      if (!retry) throw fromServiceError(err, address, safe);
      const delay = this.backoffMs(attempt);
      if (Date.now() + delay >= deadlineAt) throw fromServiceError(err, address, safe);
      this.opts.log.debug({ method, address, code: grpc.status[err.code], details: err.details, attempt, delay }, 'retrying');
      await this.sleep(delay);
    }
  }

  /** Closes every channel; pending and later calls fail with CANCELLED. */
  close(): void {
    if (this.closed) return;
    this.closeController.abort();
    for (const c of this.conns.values()) {
      c.kv?.close();
      c.cluster?.close();
    }
    this.conns.clear();
  }
}
