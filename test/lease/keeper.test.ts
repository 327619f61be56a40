/** The leader's expiry rule on virtual time: expiry after the TTL, keep-alives, the takeover grace and its bound (no lease kept alive by elections). */
import { describe, expect, it } from 'vitest';
import { LeaseKeeper, type DurableLease } from '../../src/lease/keeper.js';

const GRACE = 5_000;
const keeper = () => new LeaseKeeper({ graceMs: GRACE, stallMs: 1_000 });
const lease = (id: number, ttlMs: number, expiresAtMs: number): DurableLease => ({ id, ttlMs, expiresAtMs, owner: '' });

/** Runs the expiry check every 250 ms from `from` to `to` (virtual ms); returns when each lease was found due. */
function run(k: LeaseKeeper, from: number, to: number, keepAlive?: (now: number) => void): Map<number, number> {
  const dueAt = new Map<number, number>();
  for (let t = from; t <= to; t += 250) {
    keepAlive?.(t);
    for (const id of k.due(t)) {
      dueAt.set(id, t);
      k.revoked(id);
    }
  }
  return dueAt;
}

describe('LeaseKeeper', () => {
  it('revokes a lease once its TTL passed without keep-alives, not before', () => {
    const k = keeper();
    k.takeOver([], 0);
    k.granted(lease(1, 3_000, 3_000));
    const due = run(k, 0, 10_000);
    expect(due.get(1)).toBe(3_000);
  });

  it('keep-alives extend a lease; it expires one TTL after the last one', () => {
    const k = keeper();
    k.takeOver([], 0);
    k.granted(lease(1, 3_000, 3_000));
    const due = run(k, 0, 20_000, (t) => {
      if (t <= 8_000 && t % 1_000 === 0) expect(k.keepAlive(1, t)).toBe(3_000);
    });
    expect(due.get(1)).toBe(11_000);
  });

  it('a new leader gives the grace, but never more than one grace past the durable deadline', () => {
    const k = keeper();
    // Durable deadline at 10 s; takeover at 9 s: grace until min(9+5, 10+5) = 14 s.
    k.takeOver([lease(1, 3_000, 10_000)], 9_000);
    expect(run(k, 9_000, 30_000).get(1)).toBe(14_000);
    // Takeover long after the durable deadline: grace until durable + grace = 15 s, even at 12 s.
    const k2 = keeper();
    k2.takeOver([lease(1, 3_000, 10_000)], 12_000);
    expect(run(k2, 12_000, 30_000).get(1)).toBe(15_000);
  });

  it('an election storm does not keep an abandoned lease alive (etcd 9888): revoked by durable deadline + grace', () => {
    // A new leader every 2 s (shorter than the grace), each loading the same durable record.
    const durable = lease(7, 10_000, 10_000);
    let revokedAt: number | undefined;
    for (let t = 0; t < 60_000 && revokedAt === undefined; t += 2_000) {
      const k = keeper();
      k.takeOver([durable], t);
      const due = run(k, t, t + 1_750);
      revokedAt = due.get(7);
    }
    expect(revokedAt).toBeDefined();
    expect(revokedAt!).toBeLessThanOrEqual(10_000 + GRACE);
  });

  it('a lease kept alive survives a takeover right after a checkpoint lag (etcd 15247): the client has the grace to reconnect', () => {
    const k = keeper();
    k.takeOver([], 0);
    k.granted(lease(1, 2_000, 2_000));
    // Kept alive every 600 ms; checkpointed once the durable deadline passed.
    let durable = 2_000;
    for (let t = 0; t <= 10_000; t += 250) {
      if (t % 600 < 250) k.keepAlive(1, t);
      for (const c of k.checkpointDue(t, 100)) {
        k.checkpointed(c.id, c.expiresAtMs);
        durable = c.expiresAtMs;
      }
      expect(k.due(t)).toEqual([]);
    }
    // The leader dies at 10 s; a new one takes over 1.5 s later with the durable record only.
    const k2 = keeper();
    k2.takeOver([lease(1, 2_000, durable)], 11_500);
    // The client reconnects 1 s after the election and keeps alive again: never revoked.
    const due = run(k2, 11_500, 30_000, (t) => {
      if (t >= 12_500 && t % 600 < 250) k2.keepAlive(1, t);
    });
    expect(due.size).toBe(0);
  });

  it('a stalled expiry loop gives every lease the grace before revoking (keep-alives may be queued behind the stall)', () => {
    const k = keeper();
    k.takeOver([], 0);
    k.granted(lease(1, 2_000, 2_000));
    expect(k.due(500)).toEqual([]);
    // Stalled from 0.5 s to 4 s: the lease is past its deadline, but the stall means grace.
    expect(k.due(4_000)).toEqual([]);
    expect(k.keepAlive(1, 4_100)).toBe(2_000);
    expect(k.due(4_250)).toEqual([]);
    // Bounded: without keep-alives it goes by durable deadline + grace = 7 s... or the keep-alive's 6.1 s, whichever is later.
    const due = run(k, 4_500, 20_000);
    expect(due.get(1)).toBe(7_000);
  });

  it('checkpoints a lease kept alive about once per TTL, not per keep-alive', () => {
    const k = keeper();
    k.takeOver([], 0);
    k.granted(lease(1, 10_000, 10_000));
    let records = 0;
    for (let t = 0; t <= 60_000; t += 250) {
      if (t % 1_000 === 0) k.keepAlive(1, t);
      for (const c of k.checkpointDue(t, 100)) {
        k.checkpointed(c.id, c.expiresAtMs);
        records++;
      }
    }
    // 60 keep-alives in 60 s with a 10 s TTL: one record per ~10 s.
    expect(records).toBeGreaterThanOrEqual(5);
    expect(records).toBeLessThanOrEqual(7);
  });

  it('an explicit revoke that fails leaves the lease live', () => {
    const k = keeper();
    k.takeOver([], 0);
    k.granted(lease(1, 5_000, 5_000));
    expect(k.startRevoke(1)).toBe(true);
    expect(k.startRevoke(1)).toBe(false);
    expect(k.keepAlive(1, 100)).toBeUndefined();
    k.revokeFailed(1);
    expect(k.keepAlive(1, 200)).toBe(5_000);
  });
});
