/**
 * The metadata leader's expiry table of leases: pure and deterministic (every time is passed in
 * from an injected clock), so the expiry rule below is unit-tested on virtual time.
 *
 * The rule (docs/leases.md, "Expiry across leader changes"):
 * - Every lease has a durable deadline `expiresAtMs` in the metadata group (written at grant and
 *   by checkpoints), and on the leader an in-memory deadline that each keep-alive moves to
 *   `now + ttl`. Keep-alives are not logged; a checkpoint writes a lease's in-memory deadline once
 *   its durable one has passed, so a lease kept alive costs about one logged record per TTL,
 *   however often it is kept alive. The durable deadline of a live lease thus lags the leader's
 *   clock by at most one expiry check (plus a commit), well within the grace below.
 * - A leader that takes over (or that finds its own expiry loop stalled) does not revoke a lease
 *   before `graceUntil = min(now + grace, durableExpiresAt + grace)`: clients get a grace period to
 *   reach the new leader (etcd issue 15247), but never beyond one grace past the lease's durable
 *   deadline, so no number of elections keeps a lease that nobody renews alive for ever (etcd issue
 *   9888): a lease that receives no keep-alive is revoked by `durableExpiresAt + grace` at the latest.
 * - A lease is revoked once `now >= max(expiresAt, graceUntil)`.
 */

/** A lease as the metadata group stores it (see records.ts). */
export interface DurableLease {
  readonly id: number;
  readonly ttlMs: number;
  /** The deadline last written to the log (grant or checkpoint), in the leaders' clock (ms since the epoch). */
  readonly expiresAtMs: number;
  /** Who granted it (a user name; '' with access control off). */
  readonly owner: string;
}

/** Options of {@link LeaseKeeper}. */
export interface KeeperOptions {
  /** The grace period a new (or stalled) leader gives every lease before revoking it (ms). */
  readonly graceMs: number;
  /** An expiry check later than this after the previous one means the leader stalled (ms). */
  readonly stallMs: number;
}

interface Live {
  readonly id: number;
  readonly ttlMs: number;
  readonly owner: string;
  /** The deadline as keep-alives set it. */
  expiresAtMs: number;
  /** The deadline last committed to the log. */
  durableMs: number;
  /** Not revoked before this (a grace after a takeover or a stall). */
  graceUntilMs: number;
  /** A revoke is being proposed. */
  revoking: boolean;
}

/** The leader-side table: keep-alives, what is due for revocation, what needs checkpointing. */
export class LeaseKeeper {
  private readonly leases = new Map<number, Live>();
  private lastCheckMs: number | undefined;

  constructor(private readonly opts: KeeperOptions) {
    if (!(opts.graceMs >= 0) || !(opts.stallMs > 0)) throw new Error('LeaseKeeper: graceMs >= 0 and stallMs > 0 required');
  }

  /** How many leases the table holds. */
  get size(): number {
    return this.leases.size;
  }

  /** Starts leading at `nowMs` with the leases the log holds: every lease gets the takeover grace. */
  takeOver(leases: Iterable<DurableLease>, nowMs: number): void {
    this.leases.clear();
    for (const l of leases) {
      this.leases.set(l.id, {
        id: l.id,
        ttlMs: l.ttlMs,
        owner: l.owner,
        expiresAtMs: l.expiresAtMs,
        durableMs: l.expiresAtMs,
        graceUntilMs: this.graceUntil(l.expiresAtMs, nowMs),
        revoking: false,
      });
    }
    this.lastCheckMs = nowMs;
  }

  /** The end of a grace given at `nowMs` to a lease whose durable deadline is `durableMs`. */
  private graceUntil(durableMs: number, nowMs: number): number {
    return Math.min(nowMs + this.opts.graceMs, durableMs + this.opts.graceMs);
  }

  /** Records a lease just granted (its record committed with `expiresAtMs`). */
  granted(l: DurableLease): void {
    this.leases.set(l.id, { id: l.id, ttlMs: l.ttlMs, owner: l.owner, expiresAtMs: l.expiresAtMs, durableMs: l.expiresAtMs, graceUntilMs: 0, revoking: false });
  }

  /** A keep-alive at `nowMs`: the lease's remaining TTL afterwards (ms), or undefined when it is unknown or being revoked. */
  keepAlive(id: number, nowMs: number): number | undefined {
    const l = this.leases.get(id);
    if (!l || l.revoking) return undefined;
    l.expiresAtMs = Math.max(l.expiresAtMs, nowMs + l.ttlMs);
    return l.ttlMs;
  }

  /** The remaining TTL of a lease at `nowMs` (ms, 0 when due), or undefined when unknown. */
  remaining(id: number, nowMs: number): number | undefined {
    const l = this.leases.get(id);
    if (!l || l.revoking) return undefined;
    return Math.max(0, l.expiresAtMs - nowMs);
  }

  /** A lease as the table holds it (undefined when unknown). */
  get(id: number): { readonly ttlMs: number; readonly owner: string; readonly expiresAtMs: number; readonly revoking: boolean } | undefined {
    return this.leases.get(id);
  }

  /** Every lease id, ascending. */
  ids(): number[] {
    return [...this.leases.keys()].sort((a, b) => a - b);
  }

  /**
   * The expiry check at `nowMs`: the leases now due for revocation (marked as being revoked; call
   * {@link revoked} or {@link revokeFailed} for each). A check more than `stallMs` after the
   * previous one means the leader's loop stalled (a pause, a slow disk): keep-alives may be queued
   * behind it, so every lease first gets the grace, as after an election.
   */
  due(nowMs: number): number[] {
    if (this.lastCheckMs !== undefined && nowMs - this.lastCheckMs > this.opts.stallMs) {
      for (const l of this.leases.values()) l.graceUntilMs = Math.max(l.graceUntilMs, this.graceUntil(l.durableMs, nowMs));
    }
    this.lastCheckMs = nowMs;
    const out: number[] = [];
    for (const l of this.leases.values()) {
      if (!l.revoking && nowMs >= Math.max(l.expiresAtMs, l.graceUntilMs)) {
        l.revoking = true;
        out.push(l.id);
      }
    }
    return out.sort((a, b) => a - b);
  }

  /** Marks a lease as being revoked (an explicit revoke); false when it is unknown or already being revoked. */
  startRevoke(id: number): boolean {
    const l = this.leases.get(id);
    if (!l || l.revoking) return false;
    l.revoking = true;
    return true;
  }

  /** The lease's revoke committed: forget it. */
  revoked(id: number): void {
    this.leases.delete(id);
  }

  /** The lease's revoke did not commit: it is live again (due again at the next check if still expired). */
  revokeFailed(id: number): void {
    const l = this.leases.get(id);
    if (l) l.revoking = false;
  }

  /**
   * The leases whose durable deadline should move to their in-memory one at `nowMs`: those kept
   * alive whose durable deadline has passed. At most `max`.
   */
  checkpointDue(nowMs: number, max: number): { id: number; expiresAtMs: number }[] {
    const out: { id: number; expiresAtMs: number }[] = [];
    for (const l of this.leases.values()) {
      if (out.length >= max) break;
      if (l.revoking || l.expiresAtMs <= l.durableMs) continue;
      if (l.durableMs <= nowMs) out.push({ id: l.id, expiresAtMs: l.expiresAtMs });
    }
    return out;
  }

  /** A checkpoint committed: the lease's durable deadline is now `expiresAtMs`. */
  checkpointed(id: number, expiresAtMs: number): void {
    const l = this.leases.get(id);
    if (l) l.durableMs = Math.max(l.durableMs, expiresAtMs);
  }

  /** The durable form of a lease with a new deadline (what a checkpoint writes). */
  durable(id: number, expiresAtMs: number): DurableLease | undefined {
    const l = this.leases.get(id);
    return l ? { id, ttlMs: l.ttlMs, owner: l.owner, expiresAtMs } : undefined;
  }
}
