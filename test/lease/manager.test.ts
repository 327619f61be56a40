/** The node lease manager over real state machines on virtual time: grant, put with a lease, expiry and revoke deleting every attached key at one revision per shard, leader changes, the sweep. */
import { describe, expect, it } from 'vitest';
import { KvStateMachine, type CommandResult, type KvEvent, type RevokeLeaseKeysCommand, type TxnCommand } from '../../src/statemachine/index.js';
import { LeaseManager, type LeaseClock, type LeaseHost, type LeaseShard } from '../../src/lease/manager.js';
import { LeaseError } from '../../src/lease/records.js';

const enc = new TextEncoder();

/** A virtual clock whose timers run when `advance` passes them. */
class VirtualClock implements LeaseClock {
  t = 1_000_000;
  private timers: { every: number; next: number; fn: () => void; live: boolean }[] = [];
  now(): number {
    return this.t;
  }
  every(ms: number, fn: () => void): () => void {
    const timer = { every: ms, next: this.t + ms, fn, live: true };
    this.timers.push(timer);
    return () => {
      timer.live = false;
    };
  }
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      const next = this.timers.filter((x) => x.live).sort((a, b) => a.next - b.next)[0];
      if (!next || next.next > end) break;
      this.t = next.next;
      next.next += next.every;
      next.fn();
      for (let i = 0; i < 20; i++) await Promise.resolve();
    }
    this.t = end;
    for (let i = 0; i < 20; i++) await Promise.resolve();
  }
}

/** One group: a state machine applying proposals at once (a leader that always commits). */
class FakeShard implements LeaseShard {
  readonly sm = new KvStateMachine();
  leader = true;
  events: KvEvent[] = [];
  /** The types of the commands proposed here, in order. */
  proposed: string[] = [];
  private index = 0;
  constructor(
    readonly group: number,
    private readonly clock: VirtualClock,
  ) {}
  isLeader(): boolean {
    return this.leader;
  }
  get(key: string) {
    const g = this.sm.get(key);
    return g ? { value: g.value, version: g.version } : undefined;
  }
  list(prefix: string, o: { limit: number; after?: string; keysOnly?: boolean }) {
    return this.sm.list(prefix, { limit: o.limit, keysOnly: o.keysOnly ?? false, ...(o.after !== undefined ? { after: o.after } : {}) });
  }
  revision(): number {
    return this.sm.revision;
  }
  async barrier(): Promise<void> {}
  /** When set, `currentRevision` fails as a replica does that cannot confirm its state (no leader, too slow). */
  unconfirmed: Error | undefined;
  async currentRevision(): Promise<number> {
    if (this.unconfirmed) throw this.unconfirmed;
    return this.sm.revision;
  }
  async propose(cmd: TxnCommand | RevokeLeaseKeysCommand): Promise<CommandResult> {
    if (!this.leader) throw new Error('not the leader');
    this.proposed.push(cmd.type);
    const out = this.sm.apply(++this.index, this.clock.now(), cmd, 'system');
    this.events.push(...out.events);
    return out.result;
  }
  /** A client write (origin client). */
  put(key: string, value: string): void {
    const out = this.sm.apply(++this.index, this.clock.now(), { type: 'put', key, value: enc.encode(value) }, 'client');
    this.events.push(...out.events);
  }
}

/** A node with the metadata group and two data shards; keys starting with /a go to shard 1, the rest to shard 2. */
function cluster() {
  const clock = new VirtualClock();
  const meta = new FakeShard(0, clock);
  const shards = new Map([1, 2].map((g) => [g, new FakeShard(g, clock)]));
  let term: number | undefined = 1;
  const host: LeaseHost = {
    meta: () => meta,
    metaLeaderTerm: () => term,
    shard: (g) => shards.get(g),
    ledShards: () => [...shards.values()].filter((s) => s.leader).map((s) => s.group),
    hostedShards: () => [...shards.keys()],
    groupOfKey: (k) => (k.startsWith('/a') ? 1 : 2),
  };
  const mgr = new LeaseManager(host, clock, { graceMs: 5_000, checkMs: 250, sweepMs: 2_000 });
  mgr.start();
  return { clock, meta, shards, mgr, host, setTerm: (t: number | undefined) => (term = t) };
}

async function leading(c: ReturnType<typeof cluster>): Promise<void> {
  await c.clock.advance(300);
  expect(c.mgr.leading).toBe(true);
}

describe('LeaseManager', () => {
  it("refuses to list a lease's keys (UNAVAILABLE) when a shard cannot confirm its state, rather than answer from a replica that may miss some", async () => {
    const c = cluster();
    await leading(c);
    const id = await c.mgr.grant(30, 'alice');
    const deadline = c.clock.now() + 1000;
    await c.mgr.put({ key: '/a/1', value: enc.encode('x'), lease: id }, deadline);
    await c.mgr.put({ key: '/b/1', value: enc.encode('z'), lease: id }, deadline);
    c.shards.get(2)!.unconfirmed = new Error('read index timed out');
    const e = await c.mgr.attachedKeys(id, c.clock.now() + 1000).then(() => undefined, (err: unknown) => err);
    expect(e).toBeInstanceOf(LeaseError);
    expect((e as LeaseError).code).toBe('UNAVAILABLE');
    expect((e as Error).message).toMatch(/shard group 2 .*read index timed out/);
    c.shards.get(2)!.unconfirmed = undefined;
    expect(await c.mgr.attachedKeys(id, c.clock.now() + 1000)).toEqual(['/a/1', '/b/1']);
  });

  it('grants, attaches keys in two shards, expires after the TTL and deletes each shard\'s keys at one revision', async () => {
    const c = cluster();
    await leading(c);
    const id = await c.mgr.grant(3, 'alice');
    expect(id).toBe(1);
    const deadline = c.clock.now() + 1000;
    await c.mgr.put({ key: '/a/1', value: enc.encode('x'), lease: id }, deadline);
    await c.mgr.put({ key: '/a/2', value: enc.encode('y'), lease: id }, deadline);
    await c.mgr.put({ key: '/b/1', value: enc.encode('z'), lease: id }, deadline);
    expect(await c.mgr.attachedKeys(id, c.clock.now() + 1000)).toEqual(['/a/1', '/a/2', '/b/1']);
    await c.clock.advance(2_500);
    expect(c.shards.get(1)!.get('/a/1')).toBeDefined();
    await c.clock.advance(1_000);
    // Due at 3 s: revoked in the metadata group, then each shard deletes its keys in one txn.
    for (const k of ['/a/1', '/a/2']) expect(c.shards.get(1)!.get(k)).toBeUndefined();
    expect(c.shards.get(2)!.get('/b/1')).toBeUndefined();
    const dels = c.shards.get(1)!.events.filter((e) => e.type === 'delete' && !e.key.startsWith('/_'));
    expect(dels.map((e) => e.key)).toEqual(['/a/1', '/a/2']);
    expect(new Set(dels.map((e) => e.revision)).size).toBe(1);
    expect(c.mgr.counters.expired).toBe(1);
    expect(() => c.mgr.timeToLive(id)).toThrow(LeaseError);
  });

  it('keep-alives keep a lease and its keys; a put without the lease detaches the key', async () => {
    const c = cluster();
    await leading(c);
    const id = await c.mgr.grant(2, '');
    await c.mgr.put({ key: '/a/k', value: enc.encode('1'), lease: id }, c.clock.now() + 1000);
    await c.mgr.put({ key: '/a/kept', value: enc.encode('1'), lease: id }, c.clock.now() + 1000);
    for (let i = 0; i < 20; i++) {
      expect(c.mgr.keepAlive(id)).toBe(2);
      await c.clock.advance(500);
    }
    expect(c.shards.get(1)!.get('/a/k')).toBeDefined();
    c.shards.get(1)!.put('/a/kept', 'rewritten without the lease');
    await c.clock.advance(3_000);
    expect(c.shards.get(1)!.get('/a/k')).toBeUndefined();
    expect(c.shards.get(1)!.get('/a/kept')).toBeDefined();
    expect(c.mgr.keepAlive(id)).toBe(0);
  });

  it('revoke deletes every attached key; a put with a revoked or unknown lease is NOT_FOUND', async () => {
    const c = cluster();
    await leading(c);
    const id = await c.mgr.grant(60, '');
    for (const k of ['/a/x', '/a/y', '/a/z']) await c.mgr.put({ key: k, value: enc.encode('1'), lease: id }, c.clock.now() + 1000);
    await c.mgr.revoke(id);
    await c.clock.advance(300);
    expect(c.shards.get(1)!.get('/a/x')).toBeUndefined();
    const dels = c.shards.get(1)!.events.filter((e) => e.type === 'delete' && !e.key.startsWith('/_'));
    expect(dels.map((e) => e.key)).toEqual(['/a/x', '/a/y', '/a/z']);
    expect(new Set(dels.map((e) => e.revision)).size).toBe(1);
    expect(c.shards.get(1)!.sm.list('/_sys/lease-key/', { limit: 10 }).items).toEqual([]);
    await expect(c.mgr.put({ key: '/a/y', value: enc.encode('1'), lease: id }, c.clock.now() + 1000)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(c.mgr.revoke(id)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(() => c.mgr.grant(1, '')).toThrow(/TTL is a whole number of seconds from 2/);
    expect(() => c.mgr.grant(1.5, '')).toThrow(LeaseError);
  });

  it('revokes a lease holding 500 keys in one shard at one revision, with one command (beyond the old 63-key bound)', async () => {
    const c = cluster();
    await leading(c);
    const id = await c.mgr.grant(60, '');
    const keys = Array.from({ length: 500 }, (_, i) => `/a/dev/${String(i).padStart(3, '0')}`);
    for (const k of keys) await c.mgr.put({ key: k, value: enc.encode('on'), lease: id }, c.clock.now() + 1000);
    await c.mgr.put({ key: '/b/elsewhere', value: enc.encode('on'), lease: id }, c.clock.now() + 1000);
    c.shards.get(1)!.put('/a/dev/007', 'rewritten without the lease');
    expect((await c.mgr.attachedKeys(id, c.clock.now() + 1000)).length).toBe(500);
    const s1 = c.shards.get(1)!;
    s1.proposed = [];
    s1.events = [];
    const before = s1.sm.revision;
    await c.mgr.revoke(id);
    await c.clock.advance(300);
    expect(s1.proposed).toEqual(['revokeLeaseKeys']);
    expect(s1.sm.revision).toBe(before + 1);
    const dels = s1.events.filter((e) => !e.key.startsWith('/_'));
    expect(dels.length).toBe(499);
    expect(dels.every((e) => e.type === 'delete' && e.revision === before + 1)).toBe(true);
    expect(s1.sm.list('/a/dev/', { limit: 1000 }).items.map((it) => it.key)).toEqual(['/a/dev/007']);
    expect(s1.sm.list('/_sys/lease-key/', { limit: 10 }).items).toEqual([]);
    expect(c.shards.get(2)!.get('/b/elsewhere')).toBeUndefined();
    expect(c.mgr.counters.shardRevokes).toBe(2);
  });

  it('bounds the keys of one lease in one shard (RESOURCE_EXHAUSTED); re-putting an attached key is fine', async () => {
    const c = cluster();
    const small = new LeaseManager(c.host, c.clock, { limits: { maxKeysPerShard: 3 } });
    small.start();
    await c.clock.advance(300);
    const id = await small.grant(60, '');
    for (const k of ['/a/1', '/a/2', '/a/3', '/b/1']) await small.put({ key: k, value: enc.encode('1'), lease: id }, c.clock.now() + 1000);
    await expect(small.put({ key: '/a/4', value: enc.encode('1'), lease: id }, c.clock.now() + 1000)).rejects.toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      message: expect.stringContaining('already holds 3 keys in this key\'s shard'),
    });
    await small.put({ key: '/a/2', value: enc.encode('again'), lease: id }, c.clock.now() + 1000);
    await small.put({ key: '/b/2', value: enc.encode('1'), lease: id }, c.clock.now() + 1000);
    small.stop();
  });

  it('counts a lease\'s attachments rarely (a count plus the revisions since bounds them) and still refuses exactly at the bound', async () => {
    const c = cluster();
    const small = new LeaseManager(c.host, c.clock, { limits: { maxKeysPerShard: 100 } });
    small.start();
    await c.clock.advance(300);
    const id = await small.grant(60, '');
    const s1 = c.shards.get(1)!;
    let counts = 0;
    const list = s1.list.bind(s1);
    s1.list = (prefix, o) => {
      if (prefix.startsWith('/_sys/lease-key/') && o.limit > 1) counts++;
      return list(prefix, o);
    };
    for (let i = 0; i < 100; i++) {
      await small.put({ key: `/a/${String(i).padStart(3, '0')}`, value: enc.encode('1'), lease: id }, c.clock.now() + 1000);
      if (i % 10 === 0) s1.put(`/a/plain/${i}`, 'a write without a lease moves the revision too');
    }
    expect(counts).toBeLessThan(15);
    await expect(small.put({ key: '/a/over', value: enc.encode('1'), lease: id }, c.clock.now() + 1000)).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    expect(s1.sm.list('/_sys/lease-key/', { limit: 1000 }).items.length).toBe(100);
    small.stop();
  });

  it('a new metadata leader reloads the leases, gives the grace, and does not extend an abandoned lease for ever', async () => {
    const c = cluster();
    await leading(c);
    const id = await c.mgr.grant(2, '');
    await c.mgr.put({ key: '/b/cam7', value: enc.encode('online'), lease: id }, c.clock.now() + 1000);
    // Elections every second, for ever: a fresh term each time.
    let term = 1;
    let goneAt: number | undefined;
    const start = c.clock.now();
    for (let i = 0; i < 40 && goneAt === undefined; i++) {
      c.setTerm(++term);
      await c.clock.advance(1_000);
      if (!c.shards.get(2)!.get('/b/cam7')) goneAt = c.clock.now() - start;
    }
    expect(goneAt).toBeDefined();
    // Durable deadline 2 s after the grant, plus one grace (5 s), plus the check period.
    expect(goneAt!).toBeLessThanOrEqual(2_000 + 5_000 + 1_000);
  });

  it('the leader bounds the number of leases', async () => {
    const c = cluster();
    const small = new LeaseManager(c.host, c.clock, { limits: { maxLeases: 2 } });
    small.start();
    await c.clock.advance(300);
    await small.grant(10, '');
    await small.grant(10, '');
    await expect(small.grant(10, '')).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    small.stop();
  });

  it('the sweep revokes attachments whose lease is gone (a fan-out missed while another node led the shard)', async () => {
    const c = cluster();
    await leading(c);
    const id = await c.mgr.grant(60, '');
    await c.mgr.put({ key: '/a/x', value: enc.encode('1'), lease: id }, c.clock.now() + 1000);
    c.shards.get(1)!.leader = false;
    await c.mgr.revoke(id);
    await c.clock.advance(300);
    expect(c.shards.get(1)!.get('/a/x')).toBeDefined();
    c.shards.get(1)!.leader = true;
    await c.clock.advance(2_000);
    expect(c.shards.get(1)!.get('/a/x')).toBeUndefined();
    expect(c.mgr.counters.sweptOrphans).toBe(1);
  });

  it('followers answer UNAVAILABLE', async () => {
    const c = cluster();
    c.setTerm(undefined);
    await c.clock.advance(300);
    expect(() => c.mgr.keepAlive(1)).toThrow(/does not lead the metadata group/);
  });
});
