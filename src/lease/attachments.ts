/**
 * The data-shard side of leases on one node (docs/leases.md): a put with a lease (the key and its
 * attachment `/_sys/lease-key/<id>/<key>` in one txn, on the key's shard leader), the fan-out of a
 * revoke (when the metadata group deletes a lease record, each shard led here deletes the lease's
 * keys with one `revokeLeaseKeys` command: one revision per shard), and the periodic sweep of attachments whose lease is
 * gone (a fan-out missed during a leader change, a put racing a revoke).
 */
import type { TxnCompare, WriteSession } from '../statemachine/index.js';
import type { LeaseClock, LeaseCounters, LeaseHost, LeaseShard } from './host.js';
import {
  attachmentKey,
  attachmentPrefix,
  checkLeaseId,
  LEASE_KEY_PREFIX,
  LEASE_NEXT_ID_KEY,
  LEASE_RECORD_PREFIX,
  LeaseError,
  leaseRecordKey,
  parseAttachmentKey,
  type LeaseLimits,
} from './records.js';

/** A put with a lease, served by the key's shard leader. */
export interface LeasePut {
  readonly key: string;
  readonly value: Uint8Array;
  readonly lease: number;
  readonly expectedVersion?: number;
  /** The client's write session: the shard applies the put at most once (a retry gets the first attempt's result). */
  readonly session?: WriteSession;
}

const EMPTY = new Uint8Array(0);
/** Most remembered attachment counts (cleared beyond). */
const MAX_COUNTS = 10_000;
/** Most revokeLeaseKeys commands one shard revoke proposes (one, unless puts raced past the bound); the sweep does the rest. */
const MAX_REVOKE_STEPS = 8;
const dec = new TextDecoder();

/** The attachments, revoke fan-out and sweep of the shards led by one node. */
export class LeaseAttachments {
  /** Lease ids revoked in the metadata group, not yet cleaned from the shards led here. */
  private readonly pendingShardRevokes = new Set<number>();
  private lastMetaRevision = -1;
  private knownLeases = new Set<number>();
  private cleaning = false;
  /** Attachments of a lease in a shard (`group/id`) counted at a revision (see atBound). */
  private readonly counted = new Map<string, { n: number; revision: number }>();
  /** The subscription to lease record deletions in the metadata group (when the host offers one). */
  private metaSub: { cancel(): void } | undefined;

  constructor(
    private readonly host: LeaseHost,
    private readonly clock: LeaseClock,
    private readonly limits: LeaseLimits,
    private readonly counters: LeaseCounters,
    private readonly writeTimeoutMs: number,
    private readonly log?: { warn(obj: object, msg: string): void },
  ) {}

  /** Ends the subscription. */
  stop(): void {
    this.metaSub?.cancel();
    this.metaSub = undefined;
  }

  /** Lease `id` was revoked by this node (the metadata leader): clean the shards led here now. */
  revoked(id: number): void {
    this.pendingShardRevokes.add(id);
    void this.cleanShards();
  }

  /**
   * The keys attached to lease `id` in the shards hosted here, each shard read once it applied
   * what it knows committed (so a put acknowledged before the call is seen; waits until `untilMs` at most).
   * Throws UNAVAILABLE when a shard cannot confirm that in time (no leader, a slow round): a
   * replica read without it may miss attachments just made, and a partial list would be a silent lie.
   */
  async attachedKeys(id: number, untilMs: number): Promise<string[]> {
    const out: string[] = [];
    for (const g of this.host.hostedShards()) {
      const s = this.host.shard(g);
      if (!s) continue;
      try {
        await s.currentRevision(untilMs);
      } catch (e) {
        throw new LeaseError('UNAVAILABLE', `shard group ${g} could not confirm its latest state for the lease's keys (${e instanceof Error ? e.message : String(e)}); retry`);
      }
      out.push(...this.attachedIn(s, id).filter((a) => a.live).map((a) => a.key));
    }
    return out.sort();
  }

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
    const aKey = attachmentKey(id, req.key);
    if (s.get(aKey) === undefined && this.atBound(s, id)) {
      throw new LeaseError(
        'RESOURCE_EXHAUSTED',
        `lease ${id} already holds ${this.limits.maxKeysPerShard} keys in this key's shard (the limit: its revoke there is one state machine step at one revision)`,
      );
    }
    const compares: TxnCompare[] = req.expectedVersion !== undefined ? [{ key: req.key, version: req.expectedVersion }] : [];
    const res = await s.propose({ type: 'txn', compares, writes: [{ type: 'put', key: req.key, value: req.value }, { type: 'put', key: aKey, value: EMPTY }] }, deadlineMs, req.session);
    if (res.type === 'rejected') throw res.error;
    if (res.type !== 'txn') throw new Error(`unexpected result ${res.type}`);
    if (!res.succeeded) return { succeeded: false, revision: res.revision, version: s.get(req.key)?.version ?? 0, timestampMs: res.timestampMs };
    this.knownLeases.add(id); // its record's deletion, when this node applies it, cleans this shard
    // Revoked meanwhile: the fan-out may have run before this put applied; clean up now.
    const meta = this.host.meta();
    if (meta && !meta.get(leaseRecordKey(id))) await this.revokeInShard(s, id).catch(() => {});
    return { succeeded: true, revision: res.revision, version: res.revision, timestampMs: res.timestampMs };
  }

  /**
   * Whether lease `id` holds maxKeysPerShard attachments in shard `s`. Counting them is O(keys)
   * (about 2 ms at 10,000), so a count is remembered with the revision it was made at: a put with
   * a lease adds one attachment per revision at most, so `count + revisions since` bounds the
   * number now, and only a bound reaching the limit counts again.
   */
  private atBound(s: LeaseShard, id: number): boolean {
    const max = this.limits.maxKeysPerShard;
    const k = `${s.group}/${id}`;
    const rev = s.revision();
    const c = this.counted.get(k);
    if (c !== undefined && rev >= c.revision && c.n + (rev - c.revision) < max) return false;
    const n = this.attachedCount(s, id, max);
    if (this.counted.size >= MAX_COUNTS) this.counted.clear();
    this.counted.set(k, { n, revision: rev });
    return n >= max;
  }

  /** How many attachments lease `id` has in shard `s`, counting up to `max` at most (pages of the list). */
  private attachedCount(s: LeaseShard, id: number, max: number): number {
    let n = 0;
    let after: string | undefined;
    while (n < max) {
      const page = s.list(attachmentPrefix(id), { limit: Math.min(1000, max - n), keysOnly: true, ...(after !== undefined ? { after } : {}) });
      n += page.items.length;
      if (page.nextAfter === undefined || page.items.length === 0) break;
      after = page.nextAfter;
    }
    return n;
  }

  /**
   * Deletes lease `id`'s keys (those still at their attached version) and all its attachments in
   * shard `s` with one `revokeLeaseKeys` command: one revision (the state machine decides which
   * keys go, at apply). A shard holding more than one command deletes (MAX_LEASE_REVOKE_ATTACHMENTS,
   * only reachable by puts racing past the per-shard bound) takes a few more. Returns the keys deleted.
   */
  async revokeInShard(s: LeaseShard, id: number): Promise<number> {
    let deleted = 0;
    for (let step = 0; step < MAX_REVOKE_STEPS; step++) {
      if (!s.isLeader()) return deleted;
      if (s.list(attachmentPrefix(id), { limit: 1, keysOnly: true }).items.length === 0) return deleted;
      const res = await s.propose({ type: 'revokeLeaseKeys', lease: id }, this.clock.now() + this.writeTimeoutMs);
      if (res.type === 'rejected') throw res.error;
      if (res.type !== 'revokeLeaseKeys') throw new Error(`unexpected result ${res.type} of a lease revoke`);
      if (res.deletedAttachments > 0) this.counters.shardRevokes++;
      deleted += res.deletedKeys;
      if (!res.more) return deleted;
    }
    return deleted; // the sweep finishes what is left
  }

  /** Notices lease records deleted from the metadata group (as applied here) and cleans the led shards; called at every check. */
  followMeta(): void {
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
            await this.revokeInShard(s, id).catch((e) => this.log?.warn({ err: String(e), lease: id, group: g }, 'deleting a revoked lease\'s keys failed; the sweep retries'));
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
