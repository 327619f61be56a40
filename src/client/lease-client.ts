/**
 * The client side of leases (kvcascade.v1.Lease): grant, revoke, time-to-live, list and put with
 * a lease, and keep-alives the client sends for the application over one stream to the metadata
 * leader (many leases on one stream, as etcd's LeaseKeepAlive), telling it when a lease is lost.
 */
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { META_LEADER_METADATA } from '../wire/auth-proto.js';
import { AUTHORIZATION_METADATA, bearer } from '../wire/auth.js';
import { LeaseStubClient, SHARD_LEADER_METADATA } from '../wire/lease-proto.js';
import { channelCredentials, LoginCredentials, login } from './auth-client.js';
import { KvError, serviceCallError } from './errors.js';
import type { ClientSession } from './session.js';
import type { KvClientTlsOptions } from './transport.js';
import type { KvPutResult } from './types.js';

/** How a {@link LeaseClient} connects and authenticates. */
export interface LeaseClientOptions {
  readonly endpoints: readonly string[];
  readonly tls?: KvClientTlsOptions;
  /** The admin token or a login token. */
  readonly token?: string;
  /** A user and password (the client logs in first). */
  readonly user?: string;
  readonly password?: string;
  /** Deadline of each unary call in ms (default 10 s). */
  readonly deadlineMs?: number;
  /**
   * The client's write session (a KvClient passes its own): a put with a lease then carries
   * (session id, seq), the key's shard applies it at most once, and the client retries it after
   * any failure that leaves its outcome unknown (a timeout, a dropped connection), as other
   * writes. Without one, a put with a lease is retried only when it surely did not apply.
   */
  readonly session?: ClientSession;
  /** With a session: longest attempt of a put with a lease before trying again (default 1.5 s, as KvClient's). */
  readonly attemptTimeoutMs?: number;
}

/** A lease as listed or looked up. */
export interface LeaseStatus {
  readonly id: number;
  /** Remaining seconds. */
  readonly ttl: number;
  /** The TTL it was granted with (s). */
  readonly grantedTtl: number;
  readonly owner: string;
  /** Its keys (timeToLive with `keys`). */
  readonly keys?: readonly string[];
}

/** Why the client stopped keeping a lease alive. */
export type LeaseLostReason = 'expired' | 'unconfirmed' | 'refused';

/** Events of a {@link LeaseClient}: `lost` (id, reason) when a kept-alive lease ends or cannot be confirmed within its TTL. */
export interface LeaseClientEvents {
  lost: [id: number, reason: LeaseLostReason, detail: string];
}

/** A keep-alive stream with a keep-alive unanswered this long is given up for the next node (ms). */
const STALL_MS = 1_500;
/** Backoff of a lease call between attempts that follow no fresh leader hint: jittered, doubling from this (ms)... */
const FIRST_BACKOFF_MS = 25;
/** ...up to this (ms). */
const MAX_BACKOFF_MS = 1_000;
/** Attempts of one lease call at most (its deadline usually ends it first). */
const MAX_CALL_ATTEMPTS = 64;

type Stub = grpc.Client & Record<string, (...args: unknown[]) => unknown>;


interface Kept {
  readonly id: number;
  ttlMs: number;
  /** Until when the lease is known alive (last confirmation + TTL). */
  confirmedUntil: number;
  nextSendAt: number;
}

/** The Lease API client. Close it to stop its keep-alives. */
export class LeaseClient extends EventEmitter<LeaseClientEvents> {
  private readonly stubs = new Map<string, Stub>();
  private readonly creds: grpc.ChannelCredentials;
  private readonly login: LoginCredentials | undefined;
  private readonly kept = new Map<number, Kept>();
  private stream: grpc.ClientDuplexStream<{ id: number }, { id?: number | string; ttl?: number | string; error?: string }> | undefined;
  private streamTarget: string;
  private endpointIndex = 0;
  private timer: NodeJS.Timeout | undefined;
  private reconnectAt = 0;
  private closed = false;
  /** When the oldest unanswered keep-alive on the current stream was sent (0: none outstanding). */
  private awaitingSince = 0;
  private pumpQueued = false;
  /** Keep-alive messages sent and answered (for the bench). */
  readonly stats = { sent: 0, received: 0, reconnects: 0 };

  constructor(private readonly opts: LeaseClientOptions) {
    super();
    if (opts.endpoints.length === 0) throw new Error('LeaseClient: no endpoints');
    this.creds = channelCredentials(opts.tls);
    this.streamTarget = opts.endpoints[0]!;
    if (opts.user !== undefined && opts.token === undefined) {
      this.login = new LoginCredentials((deadlineAt) => login(opts.endpoints, opts.user!, opts.password ?? '', { tls: opts.tls, deadlineAt }));
    }
  }

  private stub(address: string): Stub {
    let s = this.stubs.get(address);
    if (!s) {
      s = new LeaseStubClient(address, this.creds) as unknown as Stub;
      this.stubs.set(address, s);
    }
    return s;
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    const h = this.opts.token !== undefined ? bearer(this.opts.token) : this.login?.header();
    if (h) md.set(AUTHORIZATION_METADATA, h);
    return md;
  }

  private unary<T>(address: string, method: string, req: unknown, deadlineAt = Date.now() + (this.opts.deadlineMs ?? 10_000)): Promise<T> {
    return new Promise((resolve, reject) => {
      (this.stub(address)[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void)(
        req,
        this.metadata(),
        { deadline: new Date(deadlineAt) },
        (e, r) => (e ? reject(serviceCallError(e, address, [META_LEADER_METADATA, SHARD_LEADER_METADATA])) : resolve(r as T)),
      );
    });
  }

  /**
   * Calls `method`, following leader redirects and trying the endpoints in turn while the answer is
   * UNAVAILABLE and retry-safe, until the call's deadline (`deadlineMs`). `repeatable` (a write with
   * a session, applied at most once): each attempt takes at most `attemptTimeoutMs` of the
   * deadline, and any UNAVAILABLE, CANCELLED or attempt timeout is tried again. A redirect to a
   * node not yet tried in this call is followed at once; anything else (no hint, or a hint naming
   * a node already tried: leadership is moving) waits a jittered backoff first, 25 ms doubling to
   * 1 s, as {@link KvClient}'s calls do, so two nodes pointing at each other during an election
   * cannot use the call up in a few milliseconds.
   */
  private async call<T>(method: string, req: unknown, first?: string, repeatable = false): Promise<T> {
    const deadlineMs = this.opts.deadlineMs ?? 10_000;
    const callDeadlineAt = Date.now() + deadlineMs;
    if (this.login) await this.login.ensure(callDeadlineAt);
    const eps = this.opts.endpoints;
    let next = 0;
    let target = first ?? this.streamTarget;
    const tried = new Set<string>();
    let waits = 0;
    for (let attempt = 1; ; attempt++) {
      const attemptDeadlineAt = repeatable ? Math.min(callDeadlineAt, Date.now() + (this.opts.attemptTimeoutMs ?? 1_500)) : callDeadlineAt;
      try {
        const r = await this.unary<T>(target, method, req, attemptDeadlineAt);
        if (method !== 'leasePut') this.streamTarget = target;
        return r;
      } catch (e) {
        const unknownOutcome =
          e instanceof KvError && (e.code === 'UNAVAILABLE' || e.code === 'CANCELLED' || (e.code === 'DEADLINE_EXCEEDED' && attemptDeadlineAt < callDeadlineAt));
        const retry =
          e instanceof KvError &&
          attempt < MAX_CALL_ATTEMPTS &&
          !this.closed &&
          Date.now() < callDeadlineAt &&
          ((e.code === 'UNAVAILABLE' && e.retrySafe) || (repeatable && unknownOutcome));
        if (!retry) throw e;
        tried.add(target);
        const hint = e.leader && e.leader !== target ? e.leader : undefined;
        if (hint === undefined || tried.has(hint)) {
          const d = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** Math.min(waits++, 10));
          const delay = d / 2 + Math.random() * (d / 2);
          if (Date.now() + delay >= callDeadlineAt) throw e;
          await new Promise((r) => setTimeout(r, delay));
        }
        target = hint ?? eps[++next % eps.length]!;
      }
    }
  }

  /** The node that last answered a lease call or carried the keep-alive stream: the metadata leader as far as this client knows. */
  get metaLeader(): string {
    return this.streamTarget;
  }

  /** Grants a lease of `ttlSec` seconds; resolves with its id. */
  async grant(ttlSec: number): Promise<number> {
    const r = await this.call<{ id?: number | string }>('leaseGrant', { ttl: ttlSec });
    return Number(r.id ?? 0);
  }

  /** Revokes a lease (its keys are deleted); NOT_FOUND when it is gone already. Stops keeping it alive. */
  async revoke(id: number): Promise<void> {
    this.kept.delete(id);
    await this.call('leaseRevoke', { id });
  }

  /** A lease's remaining and granted TTL (and its keys with `keys`). NOT_FOUND when it is gone. */
  async timeToLive(id: number, o: { keys?: boolean } = {}): Promise<LeaseStatus> {
    const r = await this.call<{ id?: number | string; ttl?: number | string; grantedTtl?: number | string; keys?: string[]; owner?: string }>('leaseTimeToLive', { id, keys: o.keys === true });
    return { id: Number(r.id ?? id), ttl: Number(r.ttl ?? 0), grantedTtl: Number(r.grantedTtl ?? 0), owner: r.owner ?? '', ...(o.keys ? { keys: r.keys ?? [] } : {}) };
  }

  /** Live leases (yours, or all as root / with access control off). */
  async leases(): Promise<LeaseStatus[]> {
    const r = await this.call<{ leases?: { id?: number | string; ttl?: number | string; grantedTtl?: number | string; owner?: string }[] }>('leaseLeases', {});
    return (r.leases ?? []).map((l) => ({ id: Number(l.id ?? 0), ttl: Number(l.ttl ?? 0), grantedTtl: Number(l.grantedTtl ?? 0), owner: l.owner ?? '' }));
  }

  /**
   * Writes `key` attached to lease `lease` (deleted when the lease ends); with `expectedVersion`,
   * only if the key's version equals it. With the client's session (`session` option), applied at
   * most once however often it is retried.
   */
  async put(key: string, value: Uint8Array | string, o: { lease: number; expectedVersion?: number; route?: string }): Promise<KvPutResult> {
    const v = typeof value === 'string' ? new TextEncoder().encode(value) : value;
    const s = this.opts.session?.begin();
    let r: { succeeded?: boolean; revision?: number | string; version?: number | string; timestampMs?: number | string };
    try {
      r = await this.call<typeof r>(
        'leasePut',
        { key, value: v, lease: o.lease, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}), ...(s ? { session: s.wire } : {}) },
        o.route,
        s !== undefined,
      );
    } finally {
      s?.end();
    }
    const ok = r.succeeded === true;
    return { succeeded: ok, version: ok ? Number(r.version ?? 0) : 0, timestampMs: Number(r.timestampMs ?? 0), revision: Number(r.revision ?? 0), currentVersion: ok ? 0 : Number(r.version ?? 0) };
  }

  /**
   * Keeps lease `id` alive (a keep-alive every third of its TTL on the client's one stream) until
   * {@link stopKeepAlive}, {@link revoke} or {@link close}. Emits `lost` when the server says the
   * lease is gone (`expired`), refuses it (`refused`), or no keep-alive was confirmed for a whole
   * TTL (`unconfirmed`: the keys may be gone; the client stops).
   */
  keepAlive(id: number, ttlSec: number): void {
    if (this.closed) throw new Error('LeaseClient is closed');
    const now = Date.now();
    this.kept.set(id, { id, ttlMs: ttlSec * 1000, confirmedUntil: now + ttlSec * 1000, nextSendAt: now });
    this.timer ??= setInterval(() => this.pump(), 100);
    // One pump for every lease added in this turn (not one pass over all leases per lease).
    if (!this.pumpQueued) {
      this.pumpQueued = true;
      setImmediate(() => {
        this.pumpQueued = false;
        this.pump();
      });
    }
  }

  /** Stops keeping lease `id` alive (it then expires after its TTL unless revoked). */
  stopKeepAlive(id: number): void {
    this.kept.delete(id);
  }

  /** Ids of the leases being kept alive. */
  keptAlive(): number[] {
    return [...this.kept.keys()];
  }

  private lose(id: number, reason: LeaseLostReason, detail: string): void {
    if (!this.kept.delete(id)) return;
    this.emit('lost', id, reason, detail);
  }

  private openStream(): void {
    if (this.stream || this.closed || Date.now() < this.reconnectAt) return;
    const target = this.streamTarget;
    const s = (this.stub(target)['leaseKeepAlive'] as (md: grpc.Metadata) => NonNullable<LeaseClient['stream']>)(this.metadata());
    this.stream = s;
    s.on('data', (m) => {
      this.stats.received++;
      this.awaitingSince = 0;
      const id = Number(m.id ?? 0);
      const k = this.kept.get(id);
      if (!k) return;
      const ttl = Number(m.ttl ?? 0);
      if (m.error) this.lose(id, 'refused', m.error);
      else if (ttl <= 0) this.lose(id, 'expired', `lease ${id} expired or was revoked`);
      else {
        k.ttlMs = ttl * 1000;
        k.confirmedUntil = Date.now() + k.ttlMs;
      }
    });
    const ended = (e?: grpc.ServiceError): void => {
      if (this.stream !== s) return;
      this.stream = undefined;
      this.awaitingSince = 0;
      this.stats.reconnects++;
      const leader = e?.metadata?.get(META_LEADER_METADATA)[0];
      if (leader && String(leader) !== target) {
        this.streamTarget = String(leader);
      } else {
        const eps = this.opts.endpoints;
        this.endpointIndex = (this.endpointIndex + 1) % eps.length;
        this.streamTarget = eps[this.endpointIndex]!;
        this.reconnectAt = Date.now() + 200;
      }
      // Resend at once on the new stream.
      for (const k of this.kept.values()) k.nextSendAt = 0;
    };
    s.on('error', (e: grpc.ServiceError) => ended(e));
    s.on('end', () => ended());
  }

  private pump(): void {
    if (this.closed) return;
    const now = Date.now();
    for (const k of [...this.kept.values()]) {
      if (now >= k.confirmedUntil) this.lose(k.id, 'unconfirmed', `no keep-alive of lease ${k.id} was confirmed within its TTL`);
    }
    if (this.kept.size === 0) return;
    if (this.login && this.login.header() === undefined) {
      void this.login.ensure(now + 10_000)?.catch(() => {});
      return;
    }
    if (this.stream && this.awaitingSince > 0 && now - this.awaitingSince > STALL_MS) {
      // The node stopped answering (frozen, cut off): try the next one.
      const stalled = this.stream;
      stalled.emit('error', Object.assign(new Error('keep-alive stream stalled'), { code: grpc.status.UNAVAILABLE, metadata: new grpc.Metadata() }));
      stalled.cancel();
    }
    this.openStream();
    const s = this.stream;
    if (!s) return;
    for (const k of this.kept.values()) {
      if (now < k.nextSendAt) continue;
      k.nextSendAt = now + Math.max(500, k.ttlMs / 3);
      this.stats.sent++;
      if (this.awaitingSince === 0) this.awaitingSince = now;
      s.write({ id: k.id });
    }
  }

  /** Stops every keep-alive and closes the connections. */
  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.kept.clear();
    this.stream?.cancel();
    this.stream = undefined;
    for (const s of this.stubs.values()) s.close();
    this.stubs.clear();
  }
}
