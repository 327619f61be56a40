/** The `revokeLeaseKeys` command: a lease's keys (still at their attached version) and all its attachments deleted in a shard at one revision, system origin only. */
import { describe, expect, it } from 'vitest';
import {
  KvStateMachine,
  MAX_LEASE_REVOKE_ATTACHMENTS,
  encodeCommand,
  leaseAttachmentPrefix,
  type ApplyOutput,
  type Command,
  type CommandOrigin,
} from '../../src/statemachine/index.js';
import { b } from './helpers.js';

const EMPTY = new Uint8Array(0);

class Driver {
  index = 0;
  constructor(readonly m = new KvStateMachine()) {}
  run(cmd: Command, origin: CommandOrigin = 'system', hops = 0): ApplyOutput {
    return this.m.apply(++this.index, 1000 + this.index, cmd, origin, undefined, hops);
  }
  /** A put with a lease as src/lease/attachments.ts writes it: the key and its attachment in one txn. */
  attach(lease: number, key: string, value = 'v'): void {
    const out = this.run({ type: 'txn', compares: [], writes: [{ type: 'put', key, value: b(value) }, { type: 'put', key: leaseAttachmentPrefix(lease) + key, value: EMPTY }] });
    expect(out.result.type === 'txn' && out.result.succeeded).toBe(true);
  }
}

describe('revokeLeaseKeys', () => {
  it('deletes the keys still at their attached version and every attachment, at one revision, with delete events', () => {
    const d = new Driver();
    d.attach(1, '/a');
    d.attach(1, '/b');
    d.attach(1, '/rewritten');
    d.attach(1, '/gone');
    d.attach(2, '/other-lease');
    d.run({ type: 'put', key: '/rewritten', value: b('without the lease') }, 'client');
    d.run({ type: 'delete', key: '/gone' }, 'client');
    d.run({ type: 'put', key: '/plain', value: b('p') }, 'client');
    const before = d.m.revision;
    const out = d.run({ type: 'revokeLeaseKeys', lease: 1 }, 'system', 3);
    expect(out.result).toEqual({ type: 'revokeLeaseKeys', revision: before + 1, timestampMs: 1000 + d.index, deletedKeys: 2, deletedAttachments: 4, more: false });
    expect(d.m.revision).toBe(before + 1);
    const p = leaseAttachmentPrefix(1);
    expect(out.events.map((e) => [e.type, e.key])).toEqual([
      ['delete', '/a'],
      ['delete', '/b'],
      ['delete', `${p}/a`],
      ['delete', `${p}/b`],
      ['delete', `${p}/gone`],
      ['delete', `${p}/rewritten`],
    ]);
    for (const e of out.events) {
      expect(e.revision).toBe(before + 1);
      expect(e.value).toBeUndefined();
      expect(e.hops).toBe(3);
    }
    expect(d.m.get('/a')).toBeUndefined();
    expect(d.m.get('/b')).toBeUndefined();
    expect(d.m.get('/rewritten')?.value).toEqual(b('without the lease'));
    expect(d.m.get('/plain')).toBeDefined();
    expect(d.m.get('/other-lease')).toBeDefined();
    expect(d.m.list(p).items).toEqual([]);
    expect(d.m.list(leaseAttachmentPrefix(2)).items.length).toBe(1);
    // Watches see them as ordinary deletes at that revision.
    expect(d.m.eventsSince(before + 1, '/').events.filter((e) => !e.key.startsWith('/_')).map((e) => [e.type, e.key, e.revision])).toEqual([
      ['delete', '/a', before + 1],
      ['delete', '/b', before + 1],
    ]);
    // The previous versions are still readable at the revision before.
    expect(d.m.get('/a', { atRevision: before })?.value).toEqual(b('v'));
  });

  it('a lease with no attachments here changes nothing (no revision)', () => {
    const d = new Driver();
    d.run({ type: 'put', key: '/x', value: b('1') });
    const out = d.run({ type: 'revokeLeaseKeys', lease: 7 });
    expect(out.result).toMatchObject({ type: 'revokeLeaseKeys', revision: 1, deletedKeys: 0, deletedAttachments: 0, more: false });
    expect(out.events).toEqual([]);
    expect(d.m.revision).toBe(1);
  });

  it('a client (or lambda) cannot send it: PERMISSION_DENIED on every replica, nothing changes', () => {
    const d = new Driver();
    d.attach(1, '/a');
    const snap = d.m.snapshot();
    const out = d.run({ type: 'revokeLeaseKeys', lease: 1 }, 'client');
    expect(out.result.type).toBe('rejected');
    if (out.result.type === 'rejected') {
      expect(out.result.error.code).toBe('RESERVED');
      expect(out.result.error.message).toContain('/_sys/lease-key/');
    }
    const viaEntry = d.m.applyEntry(++d.index, 5000, encodeCommand({ type: 'revokeLeaseKeys', lease: 1 }), 'client');
    expect(viaEntry.result.type).toBe('rejected');
    expect(d.m.get('/a')).toBeDefined();
    expect(d.m.list(leaseAttachmentPrefix(1)).items.length).toBe(1);
    // Only the applied index and clock moved.
    expect(KvStateMachine.restore(snap).list('').items).toEqual(d.m.list('').items);
  });

  it('is deterministic and needs no record format change: a replica restored from a snapshot applies it to the same state', () => {
    const a = new Driver();
    for (let i = 0; i < 50; i++) a.attach(1 + (i % 3), `/k/${i}`);
    a.run({ type: 'put', key: '/k/4', value: b('rewritten') });
    const b2 = new Driver(KvStateMachine.restore(a.m.snapshot()));
    b2.index = a.index;
    const outA = a.run({ type: 'revokeLeaseKeys', lease: 2 });
    const outB = b2.run({ type: 'revokeLeaseKeys', lease: 2 });
    expect(outB.result).toEqual(outA.result);
    expect(outB.events).toEqual(outA.events);
    expect(b2.m.snapshot()).toEqual(a.m.snapshot());
    // The tombstones it wrote survive a snapshot round trip and the records export like any delete.
    const c = KvStateMachine.restore(a.m.snapshot());
    expect(c.snapshot()).toEqual(a.m.snapshot());
    expect(KvStateMachine.fromRecords(a.m.toRecords()).snapshot()).toEqual(a.m.snapshot());
    expect(c.list('/k/').items.length).toBe(50 - 16);
  });

  it('deletes 10,000 keys at one revision in one short apply step (prints the time)', () => {
    const d = new Driver();
    const n = 10_000;
    for (let i = 0; i < n; i++) d.attach(9, `/dev/${String(i).padStart(5, '0')}`);
    const before = d.m.revision;
    const t0 = process.hrtime.bigint();
    const out = d.run({ type: 'revokeLeaseKeys', lease: 9 });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(`revokeLeaseKeys apply of ${n} keys + ${n} attachments: ${ms.toFixed(1)} ms`);
    expect(out.result).toMatchObject({ deletedKeys: n, deletedAttachments: n, more: false, revision: before + 1 });
    expect(out.events.length).toBe(2 * n);
    expect(d.m.list('/dev/').items.length).toBe(0);
    expect(ms).toBeLessThan(2000); // generous on a busy machine; typically tens of ms
  });

  it(`deletes at most ${MAX_LEASE_REVOKE_ATTACHMENTS} attachments per step and says more remain`, () => {
    const d = new Driver();
    const n = MAX_LEASE_REVOKE_ATTACHMENTS + 5;
    for (let i = 0; i < n; i++) d.attach(3, `/m/${String(i).padStart(6, '0')}`);
    const first = d.run({ type: 'revokeLeaseKeys', lease: 3 });
    expect(first.result).toMatchObject({ deletedKeys: MAX_LEASE_REVOKE_ATTACHMENTS, deletedAttachments: MAX_LEASE_REVOKE_ATTACHMENTS, more: true });
    const second = d.run({ type: 'revokeLeaseKeys', lease: 3 });
    expect(second.result).toMatchObject({ deletedKeys: 5, deletedAttachments: 5, more: false });
    expect(d.m.list('/m/').items.length).toBe(0);
  });
});
