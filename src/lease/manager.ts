/**
 * The leases of one node (docs/leases.md). Two roles, both driven by an injected clock:
 *
 * - On the metadata group's leader: the {@link LeaseKeeper} table — grants (batched into one txn
 *   with the id counter), keep-alives (in memory), checkpoints of the remaining TTL and revokes
 *   (txns deleting lease records), each write guarded by the record's version so a stale leader's
 *   view never resurrects a lease.
 * - On every node, for each data shard it leads: the attachments (`/_sys/lease-key/<id>/<key>`,
 *   written in the same txn as a put with a lease), and the fan-out of a revoke: when the metadata
 *   group deletes a lease record, each shard leader deletes the lease's keys in its shard in one
 *   txn (one revision per shard); a periodic sweep catches what a leader change or a race missed
 *   (an attachment whose lease no longer exists).
 */
import type { CommandResult, TxnCompare, TxnWrite } from '../statemachine/index.js';
import { LeaseKeeper, type DurableLease } from './keeper.js';
import {
  attachmentKey,
  attachmentPrefix,
  checkLeaseId,
  checkTtl,
  decodeLease,
  DEFAULT_LEASE_LIMITS,
  encodeLease,
  LEASE_KEY_PREFIX,
  LEASE_NEXT_ID_KEY,
  LEASE_RECORD_PREFIX,
  LeaseError,
  leaseRecordKey,
  parseAttachmentKey,
  type LeaseLimits,
} from './records.js';

/** One Raft group as the lease manager uses it (an extensions HostShard fits). */
export interface LeaseShard {
  readonly group: number;
  isLeader(): boolean;
  get(key: string): { readonly value: Uint8Array; readonly version: number } | undefined;
  list(prefix: string, o: { readonly limit: number; readonly after?: string; readonly keysOnly?: boolean }): {
    readonly items: readonly { readonly key: string; readonly value?: Uint8Array; readonly version: number }[];
    readonly nextAfter?: string;
  };
  revision(): number;
  barrier(deadlineMs: number): Promise<void>;
  currentRevision(untilMs: number): Promise<number>;
  propose(cmd: { type: 'txn'; compares: readonly TxnCompare[]; writes: readonly TxnWrite[] }, deadlineMs: number): Promise<CommandResult>;
  /** Committed events under `prefix` from `fromRevision` (optional: without it the manager lists the lease records when the group's revision moves). */
  subscribe?(
    prefix: string,
    fromRevision: number,
    sink: { events(events: readonly { readonly type: string; readonly key: string }[], upTo: number): void; progress(revision: number): void; canceled(reason: string): void },
    progressIntervalMs: number,
  ): { cancel(): void };
}

/** The node as the lease manager sees it. */
export interface LeaseHost {
  /** The metadata group's replica here (undefined while none). */
  meta(): LeaseShard | undefined;
  /** The term in which this node leads the metadata group, undefined when it does not. */
  metaLeaderTerm(): number | undefined;
  /** A data shard's replica here. */
  shard(group: number): LeaseShard | undefined;
  /** The data shards this node leads. */
  ledShards(): Iterable<number>;
  /** The data shards hosted here (led or not). */
  hostedShards(): Iterable<number>;
  /** The data shard (group) of `key` in this node's map. */
  groupOfKey(key: string): number;
}

/** The clock and timer of the manager (wall clock in kvd, virtual in tests). */
export interface LeaseClock {
  now(): number;
  /** Calls `fn` every `ms`; returns a cancel function. */
  every(ms: number, fn: () => void): () => void;
}

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

/** A put with a lease, served by the key's shard leader. */
export interface LeasePut {
  readonly key: string;
  readonly value: Uint8Array;
  readonly lease: number;
  readonly expectedVersion?: number;
}

/** Records per txn the manager writes (checkpoints, revokes). */
const BATCH = 60;
/** Leases per grant txn (with the counter: at most MAX_TXN_OPS writes). */
const GRANT_BATCH = 120;
/** Grant txns in flight at once. */
const GRANTS_IN_FLIGHT = 8;
/** Batches of checkpoints or revokes written per check at most. */
const MAX_BATCHES_PER_CHECK = 50;
const EMPTY = new Uint8Array(0);
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Counters for metrics and the bench. */
export interface LeaseCounters {
  grants: number;
  keepAlives: number;
  revokes: number;
  expired: number;
  checkpointRecords: number;
  shardRevokes: number;
  sweptOrphans: number;
}

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
  /** Lease ids revoked in the metadata group, not yet cleaned from the shards led here. */
  private readonly pendingShardRevokes = new Set<number>();
  private lastMetaRevision = -1;
  /** The subscription to lease record deletions in the metadata group (when the host offers one). */
  private metaSub: { cancel(): void } | undefined;
  private knownLeases = new Set<number>();
  private cleaning = false;
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
  }

  /** Starts the timers. */
  start(): void {
    this.cancels.push(this.clock.every(this.checkMs, () => this.check()));
    this.cancels.push(this.clock.every(this.sweepMs, () => void this.sweep()));
  }

  /** Stops the timers (pending calls fail as the node stops). */
  stop(): void {
    for (const c of this.cancels.splice(0)) c();
    this.metaSub?.cancel();
    this.metaSub = undefined;
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
    this.watchMeta();
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
          this.pendingShardRevokes.add(id);
        } else {
          this.keeper.revokeFailed(id);
        }
      }
    }
    if (!ok) throw new LeaseError('UNAVAILABLE', 'the revoke did not commit (the lease table changed or leadership moved); retry');
    void this.cleanShards();
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

  /**
   * The keys attached to lease `id` in the shards hosted here, each shard read once it applied
   * what it knows committed (so a put acknowledged before the call is seen; waits until `untilMs` at most).
   */
  async attachedKeys(id: number, untilMs: number): Promise<string[]> {
    const out: string[] = [];
    for (const g of this.host.hostedShards()) {
      const s = this.host.shard(g);
      if (!s) continue;
      await s.currentRevision(untilMs).catch(() => undefined);
      out.push(...this.attachedIn(s, id).filter((a) => a.live).map((a) => a.key));
    }
    return out.sort();
  }

  // ----- the data shards -------------------------------------------------------------------

  /** The lease's attachments in shard `s` whose key still has the version it attached with (the others were overwritten). */
  private attachedIn(s: LeaseShard, id: number): { key: string; attachKey: string; version: number; live: boolean }[] {
    const out: { key: string; attachKey: string; version: number; live: boolean }[] = [];
    let after: string | undefined;
    for (;;) {
      const page = s.list(attachmentPrefix(id), { limit: 1000, keysOnly: true, ...(after !== undefined ? { after } : {}) });
      for (const it of page.items) {
        const a = parseAttachmentKey(it.key);
        if (!a) continue;
        const cur = s.get(a.key);
        out.push({ key: a.key, attachKey: it.key, version: it.version, live: cur?.version === it.version });
      }
      if (page.nextAfter === undefined || page.items.length === 0) break;
      after = page.nextAfter;
    }
    return out;
  }

  /** Whether lease `id` exists in the metadata group as applied here (waiting briefly when it may not have arrived yet). */
  private async leaseExists(id: number, deadlineMs: number): Promise<boolean> {
    const meta = this.host.meta();
    if (!meta) throw new LeaseError('UNAVAILABLE', 'this node has no replica of the metadata group yet');
    if (meta.get(leaseRecordKey(id))) return true;
    const counter = meta.get(LEASE_NEXT_ID_KEY);
    const next = counter ? Number(dec.decode(counter.value)) : 1;
    if (id < next) return false; // granted before, and gone since
    await meta.currentRevision(Math.min(deadlineMs, this.clock.now() + 2000));
    return meta.get(leaseRecordKey(id)) !== undefined;
  }

  /**
   * A put with a lease, on the key's shard leader: one txn writes the key and its attachment (so
   * the key and its lease bond at one revision). NOT_FOUND when the lease does not exist.
   */
  async put(req: LeasePut, deadlineMs: number): Promise<{ succeeded: boolean; revision: number; version: number; timestampMs: number }> {
    const id = checkLeaseId(req.lease);
    const group = this.host.groupOfKey(req.key);
    const s = this.host.shard(group);
    if (!s?.isLeader()) throw new LeaseError('UNAVAILABLE', `this node does not lead shard ${group} of ${JSON.stringify(req.key)}`);
    if (!(await this.leaseExists(id, deadlineMs))) throw new LeaseError('NOT_FOUND', `lease ${id} not found (expired or revoked)`);
    const attached = s.list(attachmentPrefix(id), { limit: this.limits.maxKeysPerShard + 1, keysOnly: true }).items;
    const aKey = attachmentKey(id, req.key);
    if (attached.length >= this.limits.maxKeysPerShard && !attached.some((a) => a.key === aKey)) {
      throw new LeaseError('RESOURCE_EXHAUSTED', `lease ${id} already holds ${this.limits.maxKeysPerShard} keys in this key's shard (the limit: its revoke there is one txn)`);
    }
    const compares: TxnCompare[] = req.expectedVersion !== undefined ? [{ key: req.key, version: req.expectedVersion }] : [];
    const res = await s.propose({ type: 'txn', compares, writes: [{ type: 'put', key: req.key, value: req.value }, { type: 'put', key: aKey, value: EMPTY }] }, deadlineMs);
    if (res.type === 'rejected') throw res.error;
    if (res.type !== 'txn') throw new Error(`unexpected result ${res.type}`);
    if (!res.succeeded) return { succeeded: false, revision: res.revision, version: s.get(req.key)?.version ?? 0, timestampMs: res.timestampMs };
    this.knownLeases.add(id); // its record's deletion, when this node applies it, cleans this shard
    // Revoked meanwhile: the fan-out may have run before this put applied; clean up now.
    const meta = this.host.meta();
    if (meta && !meta.get(leaseRecordKey(id))) await this.revokeInShard(s, id).catch(() => {});
    return { succeeded: true, revision: res.revision, version: res.revision, timestampMs: res.timestampMs };
  }

  /** Deletes lease `id`'s keys (those still at their attached version) and attachments in shard `s`: one txn, one revision. */
  async revokeInShard(s: LeaseShard, id: number): Promise<number> {
    for (let attempt = 0; attempt < 5; attempt++) {
      if (!s.isLeader()) return 0;
      const att = this.attachedIn(s, id);
      if (att.length === 0) return 0;
      const live = att.filter((a) => a.live);
      const compares: TxnCompare[] = live.map((a) => ({ key: a.key, version: a.version }));
      const writes: TxnWrite[] = [...live.map((a): TxnWrite => ({ type: 'delete', key: a.key })), ...att.map((a): TxnWrite => ({ type: 'delete', key: a.attachKey }))];
      const res = await s.propose({ type: 'txn', compares, writes: writes.slice(0, 128) }, this.clock.now() + this.writeTimeoutMs);
      if (res.type === 'txn' && res.succeeded) {
        this.counters.shardRevokes++;
        if (writes.length <= 128) return live.length;
      }
    }
    return 0;
  }

  /** Notices lease records deleted from the metadata group (as applied here) and cleans the led shards. */
  private watchMeta(): void {
    const meta = this.host.meta();
    if (!meta) return;
    if (meta.subscribe) {
      if (this.metaSub) return;
      let ended = false;
      const sub = meta.subscribe(
        LEASE_RECORD_PREFIX,
        meta.revision() + 1,
        {
          events: (events) => {
            for (const e of events) if (e.type === 'delete') this.pendingShardRevokes.add(Number(e.key.slice(LEASE_RECORD_PREFIX.length)));
            if (this.pendingShardRevokes.size > 0) void this.cleanShards();
          },
          progress: () => {},
          canceled: () => {
            // Resubscribed at the next check; the sweep covers what was missed meanwhile.
            ended = true;
            this.metaSub = undefined;
            void this.sweep();
          },
        },
        1000,
      );
      if (!ended) this.metaSub = sub;
      return;
    }
    const rev = meta.revision();
    if (rev === this.lastMetaRevision) return;
    this.lastMetaRevision = rev;
    const now = new Set<number>();
    let after: string | undefined;
    for (;;) {
      const page = meta.list(LEASE_RECORD_PREFIX, { limit: 5000, keysOnly: true, ...(after !== undefined ? { after } : {}) });
      for (const it of page.items) now.add(Number(it.key.slice(LEASE_RECORD_PREFIX.length)));
      if (page.nextAfter === undefined || page.items.length === 0) break;
      after = page.nextAfter;
    }
    for (const id of this.knownLeases) if (!now.has(id)) this.pendingShardRevokes.add(id);
    this.knownLeases = now;
    if (this.pendingShardRevokes.size > 0) void this.cleanShards();
  }

  private async cleanShards(): Promise<void> {
    if (this.cleaning) return;
    this.cleaning = true;
    try {
      while (this.pendingShardRevokes.size > 0) {
        const ids = [...this.pendingShardRevokes];
        this.pendingShardRevokes.clear();
        for (const g of this.host.ledShards()) {
          const s = this.host.shard(g);
          if (!s) continue;
          for (const id of ids) {
            if (s.list(attachmentPrefix(id), { limit: 1, keysOnly: true }).items.length === 0) continue;
            await this.revokeInShard(s, id).catch((e) => this.opts.log?.warn({ err: String(e), lease: id, group: g }, 'deleting a revoked lease\'s keys failed; the sweep retries'));
          }
        }
      }
    } finally {
      this.cleaning = false;
    }
  }

  /** The periodic sweep: in each shard led here, the attachments of leases the metadata group no longer holds are revoked. */
  async sweep(): Promise<number> {
    const meta = this.host.meta();
    if (!meta) return 0;
    const counter = meta.get(LEASE_NEXT_ID_KEY);
    const next = counter ? Number(dec.decode(counter.value)) : 1;
    let swept = 0;
    for (const g of this.host.ledShards()) {
      const s = this.host.shard(g);
      if (!s) continue;
      const orphans = new Set<number>();
      let after: string | undefined;
      for (;;) {
        const page = s.list(LEASE_KEY_PREFIX, { limit: 5000, keysOnly: true, ...(after !== undefined ? { after } : {}) });
        for (const it of page.items) {
          const a = parseAttachmentKey(it.key);
          if (a && a.id < next && !meta.get(leaseRecordKey(a.id))) orphans.add(a.id);
        }
        if (page.nextAfter === undefined || page.items.length === 0) break;
        after = page.nextAfter;
      }
      for (const id of orphans) {
        await this.revokeInShard(s, id).catch(() => 0);
        swept++;
      }
    }
    this.counters.sweptOrphans += swept;
    return swept;
  }
}
