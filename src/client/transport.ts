/**
 * Endpoint selection, leader discovery, channels, backoff and retried unary calls (sent along a
 * pluggable {@link CallRoute}) of the kvcascade client.
 *
 * One piece (over 500 lines) because the retry loop, the endpoint health it updates and the
 * leader hints it follows decide together whether a write may be sent again; split apart, the
 * retry-safety rule (never resend a write that may have applied) would be spread over modules.
 */
import { setMaxListeners } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { AUTHORIZATION_METADATA, bearer } from '../wire/auth.js';
import { neverReachedServer, readKvMetadata } from '../wire/metadata.js';
import { ClusterStubClient, KvStubClient, type ClusterStub, type KvStub } from '../wire/proto.js';
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
  /** How long an attempt waits for a new connection to become ready before trying elsewhere (never sent, so safe even for writes); 0 = as long as the deadline allows. */
  readonly connectTimeoutMs?: number | undefined;
  /** The admin token, sent as `authorization: Bearer <token>` with every KV call (lets an operator read dead letters). */
  readonly adminToken?: string | undefined;
  /** A user's credentials (access control): their token is sent with every KV call instead of the admin token. */
  readonly credentials?: CallCredentialSource | undefined;
  /**
   * Longest time one attempt of a retryable call (a read, or a write with a session) may take
   * before the client gives up on that node and tries another, within the call's deadline; 0 = no
   * per-attempt limit. The node is then suspect: calls avoid it until a probe finds it answering.
   */
  readonly attemptTimeoutMs?: number | undefined;
  /** Timeout of one probe of a suspect node, and the pause between probes (ms). */
  readonly probeIntervalMs?: number | undefined;
  /** Give up a call once every endpoint refused its connection {@link REFUSALS_BEFORE_GIVING_UP} times (default false). */
  readonly failFastWhenNoNodeListens?: boolean | undefined;
}

/** Where a client's `authorization` comes from when it logs in (see LoginCredentials). */
export interface CallCredentialSource {
  /** The value to send now, if any. */
  header(): string | undefined;
  /** Resolves once a fresh credential is at hand (undefined: one is). */
  ensure(deadlineAt: number): Promise<void> | undefined;
  /** The servers refused the credential: get a new one before the next call. */
  invalidate(): void;
}

/**
 * Whether a call may change data: a `read` is always safe to retry; a `write` is retried only
 * when provably not executed; a `session-write` carries a client session, so the servers apply it
 * at most once however often it is retried.
 */
export type CallKind = 'read' | 'write' | 'session-write';

interface Conn {
  kv?: KvStub;
  cluster?: ClusterStub;
}

/**
 * Where the attempts of one call go: picks each attempt's address, learns from successful
 * responses and notes failures. The transport itself is the default route (one leader hint for
 * everything); the shard router supplies per-shard routes.
 */
export interface CallRoute {
  /** The address of the next attempt. */
  pick(): string;
  /** Learns from the metadata of a response (or of a non-transient error) that `address` sent. */
  learn(md: grpc.Metadata | undefined, address: string): void;
  /** Notes a transient failure of `address` (`connectionFailed`: no connection could be made); `md` is the error's metadata. */
  failed(address: string, connectionFailed: boolean, md: grpc.Metadata | undefined): void;
  /** Awaited (with the backoff) before a retry after `err`, e.g. to let a map refresh finish. */
  beforeRetry?(err: grpc.ServiceError, deadlineAt: number): Promise<void> | undefined;
}

/** Sees the metadata and failures of every call and stream (the shard router follows map epochs with it). */
export interface TransportObserver {
  /** Metadata of a response, error or stream (headers or trailers). */
  metadata(md: grpc.Metadata | undefined): void;
  /** A call or stream failed with this status. */
  failure(err: { readonly code: grpc.status; readonly details?: string }): void;
}

/**
 * With `failFastWhenNoNodeListens`, a call gives up early, UNAVAILABLE, once every endpoint
 * refused its connection this many times (nothing listens there: a stopped cluster is reported at
 * once instead of after the deadline).
 */
export const REFUSALS_BEFORE_GIVING_UP = 2;

/** The outcome of one attempt of a call (a unary call, or one op on a Pipeline stream). */
export interface Attempt<Res> {
  readonly response?: Res;
  /** The failure, with the kvcascade fields (kv-retry-safe, kv-leader, kv-reason, kv-shard) as its metadata. */
  readonly error?: grpc.ServiceError;
  readonly trailers?: grpc.Metadata;
  /**
   * The node answered something: a unary call's response headers; for an op on a stream, that
   * the stream reached the node (on a failure of the stream) or that the node sent anything on
   * it since the op was written (on a timeout). False on a timeout makes the node suspect.
   */
  readonly headers: boolean;
  /** The request was never handed to a connection (it did not become ready in time). */
  readonly notSent?: boolean;
}

/**
 * Carries single attempts of a call on another channel than a unary call (the client's
 * Pipeline streams): {@link Transport.unary} hands it each attempt, keeping its own retry rules
 * (attempt bound, attempt timeout and suspicion, redirects, retry safety) for whatever carries it.
 */
export interface AttemptCarrier {
  /**
   * Runs one attempt of `method` on `address`, answered by `deadlineAt` (the attempt's
   * deadline); undefined (or a promise of it): this attempt goes as a unary call instead.
   */
  attempt<Res>(method: string, address: string, req: unknown, deadlineAt: number): Promise<Attempt<Res> | undefined> | undefined;
}

/**
 * True when a failed call or stream provably never reached a server: no connection could be
 * made (see neverReachedServer), or the target's name did not resolve.
 */
export function neverSent(err: { code?: number; details?: string } | undefined): boolean {
  if (neverReachedServer(err)) return true;
  return err?.code === grpc.status.UNAVAILABLE && (err.details ?? '').startsWith('Name resolution failed');
}

/** A grpc-js-like error made by the client itself (e.g. for a connection that never became ready). */
export function statusError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata: new grpc.Metadata() });
}

/** A logger that drops everything. */
export const NOOP_LOGGER: KvClientLogger = { debug: () => undefined, warn: () => undefined };

/** Keeps the endpoints, the leader hint and one channel per address; runs unary calls with retries. It is its own default {@link CallRoute}. */
export class Transport implements CallRoute {
  private readonly endpoints: readonly string[];
  private readonly conns = new Map<string, Conn>();
  private readonly creds: grpc.ChannelCredentials;
  private readonly channelOptions: grpc.ChannelOptions;
  private readonly downUntil = new Map<string, number>();
  /** Nodes whose attempts timed out: avoided until a probe gets an answer (outlier detection). */
  private readonly suspects = new Set<string>();
  /** Attempts that timed out (a node suspected), for tests and logs. */
  attemptTimeouts = 0;
  private readonly suspectListeners = new Set<(address: string) => void>();
  private readonly closeController = new AbortController();
  private cursor = 0;
  private leaderHint: string | undefined;
  /** Sees every response's metadata and every failure (set by the client). */
  observer: TransportObserver | undefined;

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
      // Own connections: a connection another client in the process made to a node that has
      // since frozen would otherwise look ready (see whenConnected).
      'grpc.use_local_subchannel_pool': 1,
      ...(tls?.serverNameOverride ? { 'grpc.ssl_target_name_override': tls.serverNameOverride } : {}),
      ...opts.channelOptions,
    };
  }

  /** Request metadata of a KV call, watch or pipeline: the admin token when the client has one. */
  kvMetadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    const login = this.opts.credentials?.header();
    if (login) md.set(AUTHORIZATION_METADATA, login);
    else if (this.opts.adminToken) md.set(AUTHORIZATION_METADATA, bearer(this.opts.adminToken));
    return md;
  }

  /** Resolves once the client's login token is fresh (undefined when no login is needed now). */
  authReady(deadlineAt: number): Promise<void> | undefined {
    return this.opts.credentials?.ensure(deadlineAt);
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

  /** The Cluster stub of an address (on the same channel as its KV stub). */
  cluster(address: string): ClusterStub {
    const c = this.conn(address);
    return (c.cluster ??= new ClusterStubClient(address, this.creds, { ...this.channelOptions, channelOverride: this.kv(address).getChannel() }));
  }

  /**
   * Whether the connection to `address` is usable: true (synchronously) when it is ready or has
   * failed (a call then fails fast by itself, as never sent); otherwise a promise of the same,
   * false when it is still being established after `ms` (a frozen or partitioned node). Starts
   * connecting if idle.
   */
  whenConnected(address: string, ms: number): true | Promise<boolean> {
    const ch = this.kv(address).getChannel();
    const settled = (st: grpc.connectivityState): boolean =>
      st === grpc.connectivityState.READY || st === grpc.connectivityState.TRANSIENT_FAILURE || st === grpc.connectivityState.SHUTDOWN;
    const first = ch.getConnectivityState(true);
    if (settled(first) || !(ms > 0)) return true;
    const until = Date.now() + ms;
    return new Promise((resolve) => {
      const wait = (st: grpc.connectivityState): void => {
        ch.watchConnectivityState(st, until, (err) => {
          if (err) return resolve(false);
          const now = ch.getConnectivityState(true);
          if (settled(now)) resolve(true);
          else wait(now);
        });
      };
      wait(first);
    });
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

  /** Whether `address` failed to connect recently or is suspect (calls avoid it meanwhile). */
  isDown(address: string, now = Date.now()): boolean {
    return this.suspects.has(address) || (this.downUntil.get(address) ?? 0) > now;
  }

  /** Calls `listener` whenever a node becomes suspect (watch streams on it move elsewhere); returns an unsubscribe function. */
  onSuspect(listener: (address: string) => void): () => void {
    this.suspectListeners.add(listener);
    return () => this.suspectListeners.delete(listener);
  }

  /** The suspect addresses (diagnostics). */
  suspectAddresses(): string[] {
    return [...this.suspects];
  }

  /** Whether `address` is suspect: an attempt to it timed out and no probe has had an answer since. */
  isSuspect(address: string): boolean {
    return this.suspects.has(address);
  }

  /**
   * An attempt to `address` timed out: stop using it as a leader and avoid it for new calls until
   * it answers a probe (a cheap Cluster.Status call every probe interval). A frozen node (SIGSTOP,
   * a long GC pause, a one-way partition) keeps its TCP connections open, so only an answer tells
   * that it is back.
   */
  suspect(address: string): void {
    this.attemptTimeouts++;
    if (this.leaderHint === address) this.leaderHint = undefined;
    if (this.suspects.has(address)) return;
    this.suspects.add(address);
    this.opts.log.debug({ address }, 'node suspect: an attempt timed out');
    for (const l of this.suspectListeners) l(address);
    void this.probe(address);
  }

  private async probe(address: string): Promise<void> {
    const interval = this.opts.probeIntervalMs ?? 500;
    while (this.suspects.has(address) && !this.closed) {
      const answered = await new Promise<boolean>((resolve) => {
        try {
          this.cluster(address).status({}, new grpc.Metadata(), { deadline: new Date(Date.now() + interval) }, (err) => resolve(!err));
        } catch {
          resolve(false);
        }
      });
      if (answered) {
        this.suspects.delete(address);
        this.opts.log.debug({ address }, 'suspect node answered again');
        return;
      }
      await this.sleep(interval);
    }
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
  learn(md: grpc.Metadata | undefined, _address?: string): void {
    const leader = readKvMetadata(md).leader;
    if (leader !== undefined && !this.isDown(leader)) {
      if (leader !== this.leaderHint) this.opts.log.debug({ leader }, 'learned leader');
      this.leaderHint = leader;
    }
  }

  /**
   * Notes a transient failure of `address`: follows a redirect to the leader the error's metadata
   * names if it is another one, forgets `address` as leader, moves to the next endpoint, and when
   * no connection could be made, avoids the address for a while.
   */
  failed(address: string, connectionFailed: boolean, md: grpc.Metadata | undefined): void {
    this.failedAt(address, connectionFailed, readKvMetadata(md).leader);
  }

  /** {@link failed} with the redirect given as an address. */
  failedAt(address: string, connectionFailed: boolean, leader: string | undefined): void {
    this.markFailed(address, connectionFailed);
    if (leader !== undefined && leader !== address && !this.isDown(leader)) this.leaderHint = leader;
  }

  /** The route-independent part of a failure: avoid `address` for a while if it could not be reached, stop treating it as the leader, move to the next endpoint. */
  markFailed(address: string, connectionFailed: boolean): void {
    if (connectionFailed) this.downUntil.set(address, Date.now() + this.opts.maxBackoffMs);
    if (this.leaderHint === address) this.leaderHint = undefined;
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

  private async attempt<Req, Res>(
    service: 'kv' | 'cluster',
    method: string,
    address: string,
    req: Req,
    deadlineAt: number,
  ): Promise<Attempt<Res>> {
    const connectMs = this.opts.connectTimeoutMs ?? 0;
    const remaining = deadlineAt - Date.now();
    const gate = this.whenConnected(address, connectMs > 0 ? Math.min(connectMs, remaining) : 0);
    if (gate !== true && !(await gate)) {
      const cut = remaining <= connectMs;
      return {
        error: statusError(
          cut ? grpc.status.DEADLINE_EXCEEDED : grpc.status.UNAVAILABLE,
          cut ? `Deadline exceeded while connecting to ${address}` : `No connection established to ${address} within ${connectMs} ms`,
        ),
        trailers: new grpc.Metadata(),
        headers: false,
        notSent: true,
      };
    }
    if (this.closed) return { error: statusError(grpc.status.CANCELLED, 'client closed'), trailers: new grpc.Metadata(), headers: false, notSent: true };
    if (service === 'kv') {
      const login = this.authReady(deadlineAt);
      if (login) await login;
    }
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
      const md = service === 'kv' ? this.kvMetadata() : new grpc.Metadata();
      const call = stub[method]!.call(stub, req, md, { deadline: new Date(deadlineAt) }, (e, r) => {
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

  /** One attempt on `carrier` (after the login, as a unary attempt), or undefined when it does not carry this one. */
  private async carried<Res>(carrier: AttemptCarrier, method: string, address: string, req: unknown, deadlineAt: number): Promise<Attempt<Res> | undefined> {
    if (this.closed) return undefined;
    const login = this.authReady(deadlineAt);
    if (login) await login;
    return carrier.attempt<Res>(method, address, req, deadlineAt);
  }

  /**
   * Runs a unary call until it succeeds, fails permanently, runs out of retries or passes
   * `deadlineAt`. Transient failures (UNAVAILABLE; RESOURCE_EXHAUSTED marked retry-safe, i.e.
   * overload; CANCELLED for reads) move on along `target` (default: this transport's leader hint
   * and endpoints) with backoff. Writes are retried only when the server marked the failure
   * `kv-retry-safe` or the call never reached a server. With an address as `target`, only that
   * address is tried, once. With a `carrier`, each attempt it takes goes there (an op on a
   * Pipeline stream) under the same rules.
   */
  async unary<Req, Res>(
    service: 'kv' | 'cluster',
    method: string,
    req: Req,
    kind: CallKind,
    deadlineAt: number,
    target: string | CallRoute = this,
    carrier?: AttemptCarrier,
  ): Promise<Res> {
    const route = typeof target === 'string' ? undefined : target;
    const repeatable = kind !== 'write';
    const attemptMs = repeatable && route !== undefined ? (this.opts.attemptTimeoutMs ?? 0) : 0;
    /** Connections refused during this call, by address: when every endpoint refused twice, no node runs there. */
    const refused = new Map<string, number>();
    let loggedInAgain = false;
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      const address = route ? route.pick() : (target as string);
      const attemptDeadline = attemptMs > 0 ? Math.min(deadlineAt, Date.now() + attemptMs) : deadlineAt;
      const r = (carrier && (await this.carried<Res>(carrier, method, address, req, attemptDeadline))) || (await this.attempt<Req, Res>(service, method, address, req, attemptDeadline));
      this.observer?.metadata(r.trailers);
      if (!r.error) {
        this.suspects.delete(address);
        (route ?? this).learn(r.trailers, address);
        return r.response as Res;
      }
      let err = r.error;
      if (this.closed) throw new KvError(grpc.status.CANCELLED, 'client closed', { endpoint: address });
      // A login token the servers refuse (expired, or signed before a change): log in again, once.
      if (err.code === grpc.status.UNAUTHENTICATED && this.opts.credentials && !loggedInAgain && /token/.test(err.details ?? '')) {
        loggedInAgain = true;
        this.opts.credentials.invalidate();
        attempt--;
        continue;
      }
      // The attempt's own timeout (not the call's): the node is suspect, the call moves on.
      const attemptTimedOut = err.code === grpc.status.DEADLINE_EXCEEDED && attemptDeadline < deadlineAt;
      // No answer at all before a deadline (the attempt's or the call's): the node is suspect.
      if (err.code === grpc.status.DEADLINE_EXCEEDED && !r.headers && !r.notSent && route !== undefined) this.suspect(address);
      if (attemptTimedOut) {
        err = statusError(grpc.status.UNAVAILABLE, `no answer from ${address} within the attempt timeout (${attemptMs} ms)`);
      }
      this.observer?.failure(err);
      const f = readKvMetadata(err.metadata);
      const connectionFailed = !attemptTimedOut && !r.headers && (r.notSent === true || neverSent(err));
      const safe = connectionFailed || f.retrySafe === true;
      const transient =
        err.code === grpc.status.UNAVAILABLE ||
        (err.code === grpc.status.RESOURCE_EXHAUSTED && f.retrySafe === true) ||
        (repeatable && err.code === grpc.status.CANCELLED);
      if (transient) (route ?? this).failed(address, connectionFailed, err.metadata);
      else (route ?? this).learn(err.metadata, address);
      if (this.opts.failFastWhenNoNodeListens && connectionFailed && route !== undefined && /ECONNREFUSED/.test(err.details ?? '')) {
        refused.set(address, (refused.get(address) ?? 0) + 1);
        if (this.endpoints.every((e) => (refused.get(e) ?? 0) >= REFUSALS_BEFORE_GIVING_UP)) {
          throw new KvError(grpc.status.UNAVAILABLE, `no node answered at ${this.endpoints.join(', ')} (connection refused): is the cluster running?`, { retrySafe: true, endpoint: address });
        }
      }
      const retry = transient && (repeatable || safe) && route !== undefined && attempt < this.opts.maxRetries;
      // Giving up after an attempt timed out: the call's deadline is what ran out.
      const final = attemptTimedOut ? r.error : err;
      if (!retry) throw fromServiceError(final, address, safe);
      const delay = this.backoffMs(attempt);
      if (Date.now() + delay >= deadlineAt) throw fromServiceError(final, address, safe);
      this.opts.log.debug({ method, address, code: grpc.status[err.code], details: err.details, attempt, delay }, 'retrying');
      const waitFor = route.beforeRetry?.(err, deadlineAt);
      if (waitFor) await Promise.all([this.sleep(delay), waitFor]);
      else await this.sleep(delay);
    }
  }

  /** Closes every channel; pending and later calls fail with CANCELLED. */
  close(): void {
    if (this.closed) return;
    this.closeController.abort();
    for (const c of this.conns.values()) c.kv?.close(); // the cluster stub shares its channel
    this.conns.clear();
  }
}
