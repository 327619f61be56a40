/**
 * The leases of one node (docs/leases.md), driven by an injected clock. On the metadata group's
 * leader: the {@link LeaseKeeper} table — grants (batched txns, ids from an in-memory counter),
 * keep-alives (in memory), checkpoints of the remaining TTL and revokes (txns deleting lease
 * records), each write guarded by the record's version so a stale leader's view never resurrects
 * a lease. On every node, the data-shard side ({@link LeaseAttachments}: puts with a lease, the
 * revoke fan-out, the sweep), which this facade starts and delegates to.
 */
import type { TxnCompare, TxnWrite } from '../statemachine/index.js';
import { LeaseAttachments, type LeasePut } from './attachments.js';
import type { LeaseClock, LeaseCounters, LeaseHost } from './host.js';
import { LeaseKeeper, type DurableLease } from './keeper.js';
import { checkTtl, decodeLease, DEFAULT_LEASE_LIMITS, encodeLease, LEASE_NEXT_ID_KEY, LEASE_RECORD_PREFIX, LeaseError, leaseRecordKey, type LeaseLimits } from './records.js';

export type { LeaseClock, LeaseCounters, LeaseHost, LeaseShard } from './host.js';
export type { LeasePut } from './attachments.js';

/** Options of {@link LeaseManager}. */
export interface LeaseManagerOptions {
  readonly limits?: Partial<LeaseLimits>;
  /** How often the leader checks expiry and checkpoints (ms, default 250). */
  readonly checkMs?: number;
  /** Grace a new or stalled metadata leader gives every lease (ms, default 5000). */
  readonly graceMs?: number;
  /** How often each shard leader sweeps its attachments for leases that are gone (ms, default 5000). */
  readonly sweepMs?: number;
  /** Deadline of the manager's own proposals (ms, default 5000). */
  readonly writeTimeoutMs?: number;
  readonly log?: { warn(obj: object, msg: string): void; info?(obj: object, msg: string): void };
}

/** A lease as listed. */
export interface LeaseInfo {
  readonly id: number;
  readonly ttlSec: number;
  /** Remaining seconds (rounded up), 0 when due. */
  readonly remainingSec: number;
  readonly owner: string;
}

/** Records per txn the manager writes (checkpoints, revokes). */
const BATCH = 60;
/** Leases per grant txn (with the counter: at most MAX_TXN_OPS writes). */
const GRANT_BATCH = 120;
/** Grant txns in flight at once. */
const GRANTS_IN_FLIGHT = 8;
/** Batches of checkpoints or revokes written per check at most. */
const MAX_BATCHES_PER_CHECK = 50;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** The lease manager of one node (see the file comment). */
export class LeaseManager {
  /** Effective bounds. */
  readonly limits: LeaseLimits;
  private readonly keeper: LeaseKeeper;
  private readonly checkMs: number;
  private readonly sweepMs: number;
  private readonly writeTimeoutMs: number;
  /** The metadata term the keeper was loaded in (undefined: not leading). */
  private leadingTerm: number | undefined;
  private loading = false;
  /** Record versions, by lease id, as this leader last wrote or read them. */
  private readonly versions = new Map<number, number>();
  private nextId = 1;
  private chain: Promise<unknown> = Promise.resolve();
  private pendingGrants: { ttlMs: number; owner: string; resolve: (id: number) => void; reject: (e: unknown) => void }[] = [];
  private grantScheduled = false;
  private checking = false;
  private readonly cancels: (() => void)[] = [];
  /** The data-shard side. */
  private readonly attachments: LeaseAttachments;
  /** Counters (grants, keep-alives, revokes...). */
  readonly counters: LeaseCounters = { grants: 0, keepAlives: 0, revokes: 0, expired: 0, checkpointRecords: 0, shardRevokes: 0, sweptOrphans: 0 };

  constructor(
    private readonly host: LeaseHost,
    private readonly clock: LeaseClock,
    private readonly opts: LeaseManagerOptions = {},
  ) {
    this.limits = { ...DEFAULT_LEASE_LIMITS, ...(opts.limits ?? {}) };
    this.checkMs = opts.checkMs ?? 250;
    this.sweepMs = opts.sweepMs ?? 5000;
    this.writeTimeoutMs = opts.writeTimeoutMs ?? 5000;
    this.keeper = new LeaseKeeper({ graceMs: opts.graceMs ?? 5000, stallMs: Math.max(4 * this.checkMs, 1000) });
    this.attachments = new LeaseAttachments(host, clock, this.limits, this.counters, this.writeTimeoutMs, opts.log);
  }

  /** Starts the timers. */
  start(): void {
    this.cancels.push(this.clock.every(this.checkMs, () => this.check()));
    this.cancels.push(this.clock.every(this.sweepMs, () => void this.sweep()));
  }

  /** Stops the timers (pending calls fail as the node stops). */
  stop(): void {
    for (const c of this.cancels.splice(0)) c();
    this.attachments.stop();
  }

  /** A put with a lease, on the key's shard leader (see {@link LeaseAttachments.put}). */
  put(req: LeasePut, deadlineMs: number): ReturnType<LeaseAttachments['put']> {
    return this.attachments.put(req, deadlineMs);
  }

  /** The keys attached to lease `id` in the shards hosted here (see {@link LeaseAttachments.attachedKeys}). */
  attachedKeys(id: number, untilMs: number): Promise<string[]> {
    return this.attachments.attachedKeys(id, untilMs);
  }

  /** One sweep of the shards led here (see {@link LeaseAttachments.sweep}). */
  sweep(): Promise<number> {
    return this.attachments.sweep();
  }

  /** Leases in this node's table (the metadata leader's: every live lease). */
  get size(): number {
    return this.keeper.size;
  }

  /** Whether this node leads the metadata group and has loaded the lease table. */
  get leading(): boolean {
    return this.leadingTerm !== undefined && this.host.metaLeaderTerm() === this.leadingTerm;
  }

  private requireLeader(): void {
    if (!this.leading) throw new LeaseError('UNAVAILABLE', 'this node does not lead the metadata group (or is still loading the leases)');
  }

  // ----- the metadata leader ---------------------------------------------------------------

  /** One check: follow the metadata leadership, revoke what is due, checkpoint, clean up revoked leases' keys here. */
  check(): void {
    const term = this.host.metaLeaderTerm();
    if (term === undefined) {
      this.leadingTerm = undefined;
    } else if (term !== this.leadingTerm && !this.loading) {
      void this.takeOver(term);
    }
    this.attachments.followMeta();
    if (!this.leading || this.checking) return;
    this.checking = true;
    this.enqueue(async () => {
      try {
        await this.revokeDue();
        await this.checkpoint();
      } finally {
        this.checking = false;
      }
    }).catch((e) => this.opts.log?.warn({ err: String(e) }, 'lease check failed'));
  }

  /** Loads the lease table after winning the metadata leadership in `term`. */
  private async takeOver(term: number): Promise<void> {
    const meta = this.host.meta();
    if (!meta) return;
    this.loading = true;
    this.leadingTerm = undefined;
    try {
      await meta.barrier(this.clock.now() + this.writeTimeoutMs);
      if (this.host.metaLeaderTerm() !== term) return;
      const leases: DurableLease[] = [];
      this.versions.clear();
      let after: string | undefined;
      for (;;) {
        const page = meta.list(LEASE_RECORD_PREFIX, { limit: 5000, ...(after !== undefined ? { after } : {}) });
        for (const it of page.items) {
          const l = it.value && decodeLease(it.key, it.value);
          if (l) {
            leases.push(l);
            this.versions.set(l.id, it.version);
          }
        }
        if (page.nextAfter === undefined || page.items.length === 0) break;
        after = page.nextAfter;
      }
      const counter = meta.get(LEASE_NEXT_ID_KEY);
      this.nextId = counter ? Number(dec.decode(counter.value)) || 1 : 1;
      this.keeper.takeOver(leases, this.clock.now());
      this.leadingTerm = term;
      this.opts.log?.info?.({ leases: leases.length, term }, 'leases loaded: leading the metadata group; every lease has the grace period');
    } catch (e) {
      this.opts.log?.warn({ err: String(e) }, 'loading the leases failed; retrying at the next check');
    } finally {
      this.loading = false;
    }
  }

  /** Runs `fn` after every write queued before it (the leader's writes are serial). */
  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async propose(compares: TxnCompare[], writes: TxnWrite[]): Promise<{ succeeded: boolean; revision: number }> {
    const meta = this.host.meta();
    if (!meta || !this.leading) throw new LeaseError('UNAVAILABLE', 'this node no longer leads the metadata group');
    const res = await meta.propose({ type: 'txn', compares, writes }, this.clock.now() + this.writeTimeoutMs);
    if (res.type === 'rejected') throw new Error(`lease write rejected: ${res.error.message}`);
    if (res.type !== 'txn') throw new Error(`unexpected result ${res.type}`);
    return { succeeded: res.succeeded, revision: res.revision };
  }

  /** A failed guarded write means the table is stale: load it again. */
  private stale(): void {
    this.leadingTerm = undefined;
  }

  /** Grants a lease of `ttlSec` seconds to `owner`; resolves with its id once committed. */
  grant(ttlSec: unknown, owner: string): Promise<number> {
    const ttl = checkTtl(ttlSec, this.limits);
    this.requireLeader();
    if (this.keeper.size + this.pendingGrants.length >= this.limits.maxLeases) {
      return Promise.reject(new LeaseError('RESOURCE_EXHAUSTED', `the cluster holds ${this.keeper.size} leases, the limit (--max-leases ${this.limits.maxLeases}); revoke some first`));
    }
    return new Promise<number>((resolve, reject) => {
      this.pendingGrants.push({ ttlMs: ttl * 1000, owner, resolve, reject });
      if (!this.grantScheduled) {
        this.grantScheduled = true;
        void this.enqueue(() => this.flushGrants());
      }
    });
  }

  /**
   * Writes the waiting grants: up to {@link GRANT_BATCH} leases per txn, several txns in flight
   * (ids come from this leader's in-memory counter, and each record is written only if absent;
   * the counter key records the next id for the next leader).
   */
  private async flushGrants(): Promise<void> {
    this.grantScheduled = false;
    while (this.pendingGrants.length > 0) {
      const batches: (typeof this.pendingGrants)[] = [];
      while (this.pendingGrants.length > 0 && batches.length < GRANTS_IN_FLIGHT) batches.push(this.pendingGrants.splice(0, GRANT_BATCH));
      await Promise.all(batches.map((b) => this.writeGrants(b)));
    }
  }

  private async writeGrants(batch: LeaseManager['pendingGrants']): Promise<void> {
    try {
      const now = this.clock.now();
      const first = this.nextId;
      this.nextId += batch.length;
      const leases = batch.map((g, i): DurableLease => ({ id: first + i, ttlMs: g.ttlMs, owner: g.owner, expiresAtMs: now + g.ttlMs }));
      const writes: TxnWrite[] = [
        { type: 'put', key: LEASE_NEXT_ID_KEY, value: enc.encode(String(first + batch.length)) },
        ...leases.map((l): TxnWrite => ({ type: 'put', key: leaseRecordKey(l.id), value: encodeLease(l) })),
      ];
      const res = await this.propose(leases.map((l) => ({ key: leaseRecordKey(l.id), version: 0 })), writes);
      if (!res.succeeded) {
        this.stale();
        throw new LeaseError('UNAVAILABLE', 'the lease table changed under this leader; retry');
      }
      leases.forEach((l, i) => {
        this.versions.set(l.id, res.revision);
        this.keeper.granted(l);
        this.counters.grants++;
        batch[i]!.resolve(l.id);
      });
    } catch (e) {
      for (const g of batch) g.reject(e);
    }
  }

  /** A keep-alive: the lease's TTL in seconds, or 0 when it does not exist (expired or revoked). */
  keepAlive(id: number): number {
    this.requireLeader();
    this.counters.keepAlives++;
    const ttl = this.keeper.keepAlive(id, this.clock.now());
    return ttl === undefined ? 0 : Math.round(ttl / 1000);
  }

  /** The owner of a live lease (NOT_FOUND otherwise). Leader only. */
  ownerOf(id: number): string {
    this.requireLeader();
    const l = this.keeper.get(id);
    if (!l || l.revoking) throw new LeaseError('NOT_FOUND', `lease ${id} not found (expired or revoked)`);
    return l.owner;
  }

  /** Revokes a lease: resolves once its record's deletion committed (the shards then delete its keys). */
  async revoke(id: number): Promise<void> {
    this.requireLeader();
    if (!this.keeper.startRevoke(id)) throw new LeaseError('NOT_FOUND', `lease ${id} not found (expired or revoked)`);
    await this.enqueue(() => this.writeRevokes([id], false));
  }

  private async revokeDue(): Promise<void> {
    for (let i = 0; i < MAX_BATCHES_PER_CHECK; i++) {
      const due = this.keeper.due(this.clock.now());
      if (due.length === 0) return;
      for (let j = 0; j < due.length; j += BATCH) await this.writeRevokes(due.slice(j, j + BATCH), true);
    }
  }

  private async writeRevokes(ids: number[], expired: boolean): Promise<void> {
    const compares: TxnCompare[] = ids.map((id) => ({ key: leaseRecordKey(id), version: this.versions.get(id) ?? 0 }));
    const writes: TxnWrite[] = ids.map((id) => ({ type: 'delete', key: leaseRecordKey(id) }));
    let ok = false;
    try {
      const res = await this.propose(compares, writes);
      ok = res.succeeded;
      if (!ok) this.stale();
    } finally {
      for (const id of ids) {
        if (ok) {
          this.keeper.revoked(id);
          this.versions.delete(id);
          if (expired) this.counters.expired++;
          else this.counters.revokes++;
          this.attachments.revoked(id);
        } else {
          this.keeper.revokeFailed(id);
        }
      }
    }
    if (!ok) throw new LeaseError('UNAVAILABLE', 'the revoke did not commit (the lease table changed or leadership moved); retry');
  }

  private async checkpoint(): Promise<void> {
    for (let i = 0; i < MAX_BATCHES_PER_CHECK && this.leading; i++) {
      const due = this.keeper.checkpointDue(this.clock.now(), BATCH);
      if (due.length === 0) return;
      const compares: TxnCompare[] = [];
      const writes: TxnWrite[] = [];
      for (const d of due) {
        const l = this.keeper.durable(d.id, d.expiresAtMs);
        if (!l) continue;
        compares.push({ key: leaseRecordKey(d.id), version: this.versions.get(d.id) ?? 0 });
        writes.push({ type: 'put', key: leaseRecordKey(d.id), value: encodeLease(l) });
      }
      const res = await this.propose(compares, writes);
      if (!res.succeeded) {
        this.stale();
        return;
      }
      for (const d of due) {
        this.keeper.checkpointed(d.id, d.expiresAtMs);
        this.versions.set(d.id, res.revision);
      }
      this.counters.checkpointRecords += due.length;
    }
  }

  /** Live leases as the leader holds them. */
  list(owner?: string): LeaseInfo[] {
    this.requireLeader();
    const now = this.clock.now();
    const out: LeaseInfo[] = [];
    for (const id of this.keeper.ids()) {
      const l = this.keeper.get(id)!;
      if (l.revoking || (owner !== undefined && l.owner !== owner)) continue;
      out.push({ id, ttlSec: l.ttlMs / 1000, remainingSec: Math.ceil(Math.max(0, l.expiresAtMs - now) / 1000), owner: l.owner });
    }
    return out;
  }

  /** A live lease's TTL, remaining time and (with `keys`) its attached keys in the shards hosted here. */
  timeToLive(id: number): LeaseInfo {
    this.requireLeader();
    const l = this.keeper.get(id);
    const remaining = this.keeper.remaining(id, this.clock.now());
    if (!l || remaining === undefined) throw new LeaseError('NOT_FOUND', `lease ${id} not found (expired or revoked)`);
    return { id, ttlSec: l.ttlMs / 1000, remainingSec: Math.ceil(remaining / 1000), owner: l.owner };
  }

}
