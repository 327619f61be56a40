/** The conformance suite of the `KvBackend` seam: the API semantics every implementation (a KvNode, the in-memory twin) must give, as one function run against each. */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it as vit } from 'vitest';
import { CrossShardError, DeadlineError, type CallOptions, type KvBackend, type WatchSink } from '../../src/node/backend.js';
import { MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES } from '../../src/statemachine/limits.js';
import { ValidationError, type KvEvent } from '../../src/statemachine/index.js';

/** A running backend (with one shard holding every key) and how to release it. */
export interface BackendUnderTest {
  readonly backend: KvBackend;
  close(): Promise<void>;
}

/** Starts a backend ready to serve (its shards have a leader). */
export type BackendFactory = () => Promise<BackendUnderTest>;

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined): string | undefined => (b ? new TextDecoder().decode(b) : undefined);
const call = (): CallOptions => ({ deadlineMs: Date.now() + 5000 });

/** Polls `cond` until it holds, failing after `ms`. */
async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** The ValidationError code a call rejects with (fails the test when it resolves or throws anything else). */
async function validationCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ValidationError);
    return (e as ValidationError).code;
  }
  throw new Error('expected a ValidationError, but the call succeeded');
}

/** Runs the KvBackend conformance suite against the implementation `factory` starts. */
export function backendConformance(
  name: string,
  factory: BackendFactory,
  opts: {
    /** Cases this implementation is known to fail (title -> the divergence): they run as `it.fails`, so a fix shows up. */
    divergences?: Readonly<Record<string, string>>;
  } = {},
): void {
  const it = (title: string, fn: () => Promise<void>): void => {
    const known = opts.divergences?.[title];
    (known !== undefined ? vit.fails : vit)(known !== undefined ? `${title} [known divergence: ${known}]` : title, fn);
  };
  describe(`KvBackend conformance: ${name}`, () => {
    let under: BackendUnderTest;
    let b: KvBackend;
    beforeAll(async () => {
      under = await factory();
      b = under.backend;
    });
    afterAll(async () => {
      await under?.close();
    });

    it('put: a success returns version = its revision, revisions increase, and get reads the value at that version', async () => {
      const r1 = await b.put({ key: '/p/a', value: enc('1') }, call());
      const r2 = await b.put({ key: '/p/a', value: enc('2') }, call());
      const r3 = await b.put({ key: '/p/b', value: enc('3') }, call());
      for (const r of [r1, r2, r3]) {
        expect(r.succeeded).toBe(true);
        expect(r.version).toBe(r.revision);
      }
      expect(r2.revision).toBeGreaterThan(r1.revision);
      expect(r3.revision).toBeGreaterThan(r2.revision);
      const g = await b.get({ key: '/p/a', consistency: 'linearizable' }, call());
      expect({ found: g.found, value: dec(g.value), version: g.version }).toEqual({ found: true, value: '2', version: r2.version });
      expect(g.revision).toBeGreaterThanOrEqual(r3.revision);
      const s = await b.get({ key: '/p/a', consistency: 'serializable' }, call());
      expect(dec(s.value)).toBe('2');
      const missing = await b.get({ key: '/p/none', consistency: 'linearizable' }, call());
      expect(missing.found).toBe(false);
      expect(missing.version).toBe(0);
    });

    it('put with expectedVersion: 0 means only if absent; a mismatch changes nothing and reports the current version (and value when asked)', async () => {
      const created = await b.put({ key: '/cas/k', value: enc('a'), expectedVersion: 0 }, call());
      expect(created.succeeded).toBe(true);
      const again = await b.put({ key: '/cas/k', value: enc('b'), expectedVersion: 0 }, call());
      expect(again.succeeded).toBe(false);
      expect(again.version).toBe(created.version);
      expect(again.current?.version).toBe(created.version);
      const wrong = await b.put({ key: '/cas/k', value: enc('c'), expectedVersion: created.version + 1000, returnCurrentValue: true }, call());
      expect(wrong.succeeded).toBe(false);
      expect(wrong.current?.version).toBe(created.version);
      expect(dec(wrong.current?.value)).toBe('a');
      const right = await b.put({ key: '/cas/k', value: enc('d'), expectedVersion: created.version, returnCurrentValue: true }, call());
      expect(right.succeeded).toBe(true);
      // The current value is for conflicts only: a success carries no previous value (nor reads one).
      expect(right.previous).toBeUndefined();
      expect(right.current).toBeUndefined();
      expect(dec((await b.get({ key: '/cas/k', consistency: 'linearizable' }, call())).value)).toBe('d');
      const absent = await b.put({ key: '/cas/absent', value: enc('x'), expectedVersion: 5 }, call());
      expect(absent.succeeded).toBe(false);
      expect(absent.version).toBe(0);
    });

    it('get at a version reads the value as of that revision', async () => {
      const before = await b.put({ key: '/at/other', value: enc('o') }, call());
      const v1 = await b.put({ key: '/at/k', value: enc('v1') }, call());
      const v2 = await b.put({ key: '/at/k', value: enc('v2') }, call());
      await b.delete({ key: '/at/k' }, call());
      const at = (atVersion: number) => b.get({ key: '/at/k', atVersion, consistency: 'linearizable' }, call());
      expect((await at(before.revision)).found).toBe(false);
      expect(dec((await at(v1.revision)).value)).toBe('v1');
      expect((await at(v1.revision)).version).toBe(v1.version);
      expect(dec((await at(v2.revision - 1)).value)).toBe('v1');
      expect(dec((await at(v2.revision)).value)).toBe('v2');
      expect((await b.get({ key: '/at/k', consistency: 'linearizable' }, call())).found).toBe(false);
    });

    it('delete: removes a live key at a new revision, is a successful no-op on an absent key, and honours expectedVersion', async () => {
      const p = await b.put({ key: '/del/k', value: enc('x') }, call());
      const conflict = await b.delete({ key: '/del/k', expectedVersion: p.version + 7 }, call());
      expect(conflict.succeeded).toBe(false);
      expect(conflict.deleted).toBe(false);
      expect(conflict.current?.version).toBe(p.version);
      const d = await b.delete({ key: '/del/k', expectedVersion: p.version }, call());
      expect(d.succeeded).toBe(true);
      expect(d.deleted).toBe(true);
      expect(d.revision).toBeGreaterThan(p.revision);
      expect((await b.get({ key: '/del/k', consistency: 'linearizable' }, call())).found).toBe(false);
      const none = await b.delete({ key: '/del/k' }, call());
      expect(none.succeeded).toBe(true);
      expect(none.deleted).toBe(false);
      // The shard revision is unchanged by this no-op (other writers, such as the cluster's own records, may have moved it on).
      expect(none.revision).toBeGreaterThanOrEqual(d.revision);
    });

    it('trigger: takes its own revision and stores nothing', async () => {
      const p = await b.put({ key: '/trg/k', value: enc('stored') }, call());
      const t = await b.trigger({ key: '/trg/k', value: enc('fired') }, call());
      expect(t.revision).toBeGreaterThan(p.revision);
      const g = await b.get({ key: '/trg/k', consistency: 'linearizable' }, call());
      expect(dec(g.value)).toBe('stored');
      expect(g.version).toBe(p.version);
      const t2 = await b.trigger({ key: '/trg/absent', value: enc('fired') }, call());
      expect(t2.revision).toBeGreaterThan(t.revision);
      expect((await b.get({ key: '/trg/absent', consistency: 'linearizable' }, call())).found).toBe(false);
    });

    it('txn: all writes apply at one revision when every compare holds; otherwise nothing changes and the failed compares are named', async () => {
      const a = await b.put({ key: '/txn/a', value: enc('a0') }, call());
      const ok = await b.txn(
        {
          compares: [{ key: '/txn/a', version: a.version }, { key: '/txn/b', version: 0 }],
          writes: [{ type: 'put', key: '/txn/b', value: enc('b1') }, { type: 'delete', key: '/txn/a' }, { type: 'put', key: '/txn/c', value: enc('c1') }],
        },
        call(),
      );
      expect(ok.succeeded).toBe(true);
      expect(ok.failedCompares).toEqual([]);
      const gb = await b.get({ key: '/txn/b', consistency: 'linearizable' }, call());
      const gc = await b.get({ key: '/txn/c', consistency: 'linearizable' }, call());
      expect([gb.version, gc.version]).toEqual([ok.revision, ok.revision]);
      expect((await b.get({ key: '/txn/a', consistency: 'linearizable' }, call())).found).toBe(false);
      const failed = await b.txn(
        {
          compares: [{ key: '/txn/b', version: ok.revision }, { key: '/txn/c', version: 1 }, { key: '/txn/a', version: 3 }],
          writes: [{ type: 'put', key: '/txn/b', value: enc('b2') }, { type: 'delete', key: '/txn/c' }],
        },
        call(),
      );
      expect(failed.succeeded).toBe(false);
      expect(failed.failedCompares).toEqual([1, 2]);
      expect(failed.revision).toBeGreaterThanOrEqual(ok.revision); // unchanged by this txn; the cluster's own records may move it
      expect(dec((await b.get({ key: '/txn/b', consistency: 'linearizable' }, call())).value)).toBe('b1');
      expect((await b.get({ key: '/txn/c', consistency: 'linearizable' }, call())).found).toBe(true);
      expect(await validationCode(b.txn({ compares: [], writes: [{ type: 'put', key: '/txn/d', value: enc('1') }, { type: 'delete', key: '/txn/d' }] }, call()))).toBe('DUPLICATE_TXN_KEY');
    });

    it('list: keys under the prefix in ascending order, values unless keysOnly, pages that cover every key once', async () => {
      const keys = ['/ls/b', '/ls/a', '/ls/c/1', '/ls/ä', '/ls/B', '/ls/a0', '/lsx', '/ls/c'];
      const versions = new Map<string, number>();
      for (const k of keys) versions.set(k, (await b.put({ key: k, value: enc(`v:${k}`) }, call())).version);
      const under = keys.filter((k) => k.startsWith('/ls/'));
      const sorted = [...under].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
      const all = await b.list({ prefix: '/ls/', keysOnly: false, consistency: 'linearizable' }, call());
      expect(all.items.map((i) => i.key)).toEqual(sorted);
      expect(all.nextAfter).toBeUndefined();
      for (const i of all.items) {
        expect(dec(i.value)).toBe(`v:${i.key}`);
        expect(i.version).toBe(versions.get(i.key));
      }
      const ko = await b.list({ prefix: '/ls/', keysOnly: true, consistency: 'serializable' }, call());
      expect(ko.items.map((i) => i.key)).toEqual(sorted);
      for (const i of ko.items) expect(i.value).toBeUndefined();
      for (const limit of [1, 2, 3, sorted.length]) {
        const seen: string[] = [];
        let after: string | undefined;
        for (let pages = 0; pages < 20; pages++) {
          const page = await b.list({ prefix: '/ls/', limit, keysOnly: true, consistency: 'linearizable', ...(after !== undefined ? { after } : {}) }, call());
          expect(page.items.length).toBeLessThanOrEqual(limit);
          seen.push(...page.items.map((i) => i.key));
          if (page.nextAfter === undefined) break;
          expect(page.nextAfter).toBe(page.items[page.items.length - 1]!.key);
          after = page.nextAfter;
        }
        expect(seen).toEqual(sorted);
      }
    });

    it('bad keys and arguments fail with the same ValidationError code', async () => {
      const long = '/' + 'k'.repeat(MAX_KEY_BYTES);
      const codes = {
        putEmpty: await validationCode(b.put({ key: '', value: enc('x') }, call())),
        putSurrogate: await validationCode(b.put({ key: '/bad\ud800', value: enc('x') }, call())),
        putLong: await validationCode(b.put({ key: long, value: enc('x') }, call())),
        putVersion: await validationCode(b.put({ key: '/v/ok', value: enc('x'), expectedVersion: -1 }, call())),
        getEmpty: await validationCode(b.get({ key: '', consistency: 'linearizable' }, call())),
        getAt: await validationCode(b.get({ key: '/v/ok', atVersion: -1, consistency: 'linearizable' }, call())),
        deleteEmpty: await validationCode(b.delete({ key: '' }, call())),
        triggerEmpty: await validationCode(b.trigger({ key: '', value: enc('x') }, call())),
        txnEmptyKey: await validationCode(b.txn({ compares: [], writes: [{ type: 'put', key: '', value: enc('x') }] }, call())),
      };
      expect(codes).toEqual({
        putEmpty: 'INVALID_KEY',
        putSurrogate: 'INVALID_KEY',
        putLong: 'KEY_TOO_LONG',
        putVersion: 'INVALID_NUMBER',
        getEmpty: 'INVALID_KEY',
        getAt: 'INVALID_NUMBER',
        deleteEmpty: 'INVALID_KEY',
        triggerEmpty: 'INVALID_KEY',
        txnEmptyKey: 'INVALID_KEY',
      });
      expect(await validationCode(b.list({ prefix: long, keysOnly: true, consistency: 'linearizable' }, call()))).toBe('KEY_TOO_LONG');
      expect(await validationCode(b.put({ key: '/v/big', value: new Uint8Array(MAX_VALUE_BYTES + 1) }, call()))).toBe('VALUE_TOO_LARGE');
      const many = Array.from({ length: MAX_TXN_OPS + 1 }, (_, i) => ({ type: 'put' as const, key: `/v/t${i}`, value: enc('x') }));
      expect(await validationCode(b.txn({ compares: [], writes: many }, call()))).toBe('TOO_MANY_TXN_OPS');
      expect((await b.get({ key: '/v/big', consistency: 'linearizable' }, call())).found).toBe(false);
    });

    it('watch from a revision delivers every later event under the prefix, in revision order, history then live', async () => {
      const first = await b.put({ key: '/w/a', value: enc('1') }, call());
      await b.put({ key: '/w-not/x', value: enc('no') }, call());
      await b.put({ key: '/w/b', value: enc('2') }, call());
      await b.delete({ key: '/w/a' }, call());
      const seen: KvEvent[] = [];
      let highest = 0;
      const sink: WatchSink = {
        events: (evs, revision) => {
          seen.push(...evs);
          highest = revision;
        },
        progress: () => {},
        canceled: () => {},
      };
      const h = b.watch({ prefix: '/w/', fromRevision: first.revision, progressIntervalMs: 50 }, sink);
      try {
        await until(() => seen.length >= 3, 5000, 'history');
        await b.trigger({ key: '/w/t', value: enc('t') }, call());
        const tx = await b.txn({ compares: [], writes: [{ type: 'put', key: '/w/c', value: enc('3') }, { type: 'put', key: '/w/d', value: enc('4') }] }, call());
        await until(() => seen.length >= 6, 5000, 'live events');
        expect(seen.map((e) => [e.type, e.key, dec(e.value)])).toEqual([
          ['put', '/w/a', '1'],
          ['put', '/w/b', '2'],
          ['delete', '/w/a', undefined],
          ['trigger', '/w/t', 't'],
          ['put', '/w/c', '3'],
          ['put', '/w/d', '4'],
        ]);
        expect(seen[0]!.revision).toBe(first.revision);
        for (let i = 1; i < seen.length; i++) expect(seen[i]!.revision).toBeGreaterThanOrEqual(seen[i - 1]!.revision);
        expect(seen[4]!.revision).toBe(tx.revision);
        expect(seen[5]!.revision).toBe(tx.revision);
        expect(highest).toBeGreaterThanOrEqual(tx.revision);
      } finally {
        h.cancel();
      }
    });

    it('timestamps: a read reports the write\'s timestamp, and timestamps never decrease', async () => {
      const r1 = await b.put({ key: '/ts/a', value: enc('1') }, call());
      const r2 = await b.put({ key: '/ts/b', value: enc('2') }, call());
      expect(r2.timestampMs).toBeGreaterThanOrEqual(r1.timestampMs);
      expect((await b.get({ key: '/ts/a', consistency: 'linearizable' }, call())).timestampMs).toBe(r1.timestampMs);
      const listed = await b.list({ prefix: '/ts/', keysOnly: true, consistency: 'linearizable' }, call());
      expect(listed.items.map((i) => i.timestampMs)).toEqual([r1.timestampMs, r2.timestampMs]);
    });

    it('a txn naming no key fails with CrossShardError', async () => {
      await expect(b.txn({ compares: [], writes: [] }, call())).rejects.toBeInstanceOf(CrossShardError);
    });

    it('client writes to the reserved keyspace (/_..., /ext/) fail with ValidationError RESERVED and change nothing', async () => {
      expect(await validationCode(b.put({ key: '/_sys/x', value: enc('x') }, call()))).toBe('RESERVED');
      expect(await validationCode(b.put({ key: '/ext/x', value: enc('x') }, call()))).toBe('RESERVED');
      expect(await validationCode(b.delete({ key: '/_sys/x' }, call()))).toBe('RESERVED');
      expect(await validationCode(b.trigger({ key: '/_sys/x', value: enc('x') }, call()))).toBe('RESERVED');
      expect(await validationCode(b.txn({ compares: [{ key: '/_sys/x', version: 0 }], writes: [{ type: 'put', key: '/rsv/ok', value: enc('x') }] }, call()))).toBe('RESERVED');
      expect((await b.get({ key: '/rsv/ok', consistency: 'linearizable' }, call())).found).toBe(false);
    });

    it('a write retried with the same session and seq gets the first result and applies once; a bad session is INVALID_ARGUMENT', async () => {
      const session = { id: 'conformance-session-1', seq: 1, ackedBelow: 0 };
      const first = await b.put({ key: '/sess/k', value: enc('a') }, { ...call(), session });
      const retry = await b.put({ key: '/sess/k', value: enc('a') }, { ...call(), session });
      expect(retry.revision).toBe(first.revision);
      expect(retry.version).toBe(first.version);
      const g = await b.get({ key: '/sess/k', consistency: 'linearizable' }, call());
      expect(g.version).toBe(first.version);
      const next = await b.put({ key: '/sess/k', value: enc('b') }, { ...call(), session: { ...session, seq: 2, ackedBelow: 2 } });
      expect(next.revision).toBeGreaterThan(first.revision);
      expect(await validationCode(b.put({ key: '/sess/k', value: enc('c') }, { ...call(), session: { ...session, seq: 1, ackedBelow: 1 } }))).toBe('SESSION_EXPIRED');
      expect(await validationCode(b.put({ key: '/sess/k', value: enc('c') }, { ...call(), session: { id: 'conformance-session-1', seq: 0, ackedBelow: 0 } }))).toBe('INVALID_ARGUMENT');
    });

    it('a linearizable read whose deadline has passed fails with DeadlineError', async () => {
      await b.put({ key: '/dl/k', value: enc('x') }, call());
      await expect(b.get({ key: '/dl/k', consistency: 'linearizable' }, { deadlineMs: Date.now() - 1 })).rejects.toBeInstanceOf(DeadlineError);
    });

    it('watch from revision 0 delivers only what happens after it starts', async () => {
      await b.put({ key: '/w0/old', value: enc('old') }, call());
      const seen: KvEvent[] = [];
      const h = b.watch({ prefix: '/w0/', fromRevision: 0, progressIntervalMs: 50 }, { events: (evs) => seen.push(...evs), progress: () => {}, canceled: () => {} });
      try {
        const p = await b.put({ key: '/w0/new', value: enc('new') }, call());
        await until(() => seen.length >= 1, 5000, 'live event');
        expect(seen.map((e) => [e.key, e.revision])).toEqual([['/w0/new', p.revision]]);
      } finally {
        h.cancel();
      }
    });

    it('watch: one delivery carries whole revisions (a txn\'s events together), cancel stops delivery', async () => {
      const calls: KvEvent[][] = [];
      const start = await b.put({ key: '/wb/start', value: enc('s') }, call());
      const h = b.watch({ prefix: '/wb/', fromRevision: start.revision + 1, progressIntervalMs: 50 }, { events: (evs) => calls.push([...evs]), progress: () => {}, canceled: () => {} });
      const tx = await b.txn({ compares: [], writes: ['a', 'b', 'c'].map((k) => ({ type: 'put' as const, key: `/wb/${k}`, value: enc(k) })) }, call());
      await until(() => calls.flat().length >= 3, 5000, 'txn events');
      const withTx = calls.filter((c) => c.some((e) => e.revision === tx.revision));
      expect(withTx.length).toBe(1);
      expect(withTx[0]!.filter((e) => e.revision === tx.revision).map((e) => e.key)).toEqual(['/wb/a', '/wb/b', '/wb/c']);
      h.cancel();
      const seen = calls.flat().length;
      await b.put({ key: '/wb/after', value: enc('x') }, call());
      await new Promise((r) => setTimeout(r, 50));
      expect(calls.flat().length).toBe(seen);
    });

    it('a lambda write (opts.hops) gives its events that hop count, in history and live; client writes carry none', async () => {
      const client = await b.put({ key: '/wh/client', value: enc('c') }, call());
      const lambda = await b.put({ key: '/wh/lambda', value: enc('l') }, { ...call(), hops: 3 });
      const deep = await b.trigger({ key: '/wh/trigger', value: enc('t') }, { ...call(), hops: 9 });
      const seen: KvEvent[] = [];
      const h = b.watch({ prefix: '/wh/', fromRevision: client.revision, progressIntervalMs: 50 }, { events: (evs) => seen.push(...evs), progress: () => {}, canceled: () => {} });
      try {
        await until(() => seen.length >= 3, 5000, 'history events');
        const live = await b.delete({ key: '/wh/lambda' }, { ...call(), hops: 1 });
        await until(() => seen.length >= 4, 5000, 'live event');
        expect(seen.map((e) => [e.revision, e.type, e.hops ?? 0])).toEqual([
          [client.revision, 'put', 0],
          [lambda.revision, 'put', 3],
          [deep.revision, 'trigger', 9],
          [live.revision, 'delete', 1],
        ]);
      } finally {
        h.cancel();
      }
    });

    it('watch from a future revision starts delivering at that revision', async () => {
      const now = await b.put({ key: '/wf/0', value: enc('0') }, call());
      const seen: KvEvent[] = [];
      const h = b.watch({ prefix: '/wf/', fromRevision: now.revision + 2, progressIntervalMs: 50 }, { events: (evs) => seen.push(...evs), progress: () => {}, canceled: () => {} });
      try {
        await b.put({ key: '/wf/1', value: enc('1') }, call());
        const r2 = await b.put({ key: '/wf/2', value: enc('2') }, call());
        const r3 = await b.put({ key: '/wf/3', value: enc('3') }, call());
        await until(() => seen.length >= 2, 5000, 'events');
        expect(seen.map((e) => e.revision)).toEqual([r2.revision, r3.revision]);
      } finally {
        h.cancel();
      }
    });

    it('watch progress: a quiet prefix is told, within a few intervals, that nothing happened up to a later revision', async () => {
      const progress: number[] = [];
      const h = b.watch({ prefix: '/wq/', fromRevision: 0, progressIntervalMs: 20 }, { events: () => {}, progress: (rev) => progress.push(rev), canceled: () => {} });
      try {
        const elsewhere = await b.put({ key: '/wq-elsewhere', value: enc('x') }, call());
        await until(() => progress.some((r) => r >= elsewhere.revision), 5000, 'progress past the unrelated write');
        for (let i = 1; i < progress.length; i++) expect(progress[i]!).toBeGreaterThanOrEqual(progress[i - 1]!);
      } finally {
        h.cancel();
      }
    });

    it('random puts, conditional puts, txns and deletes agree with a model where version = revision of the last write', async () => {
      let round = 0;
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.record({ op: fc.constantFrom('put', 'cas', 'casStale', 'delete', 'get', 'txn', 'txnStale'), key: fc.integer({ min: 0, max: 3 }), other: fc.integer({ min: 0, max: 3 }) }),
            { minLength: 1, maxLength: 15 },
          ),
          async (ops) => {
            round++;
            const model = new Map<string, { value: string; version: number }>();
            let lastRevision = 0;
            for (const [i, o] of ops.entries()) {
              const key = `/model/${round}/${o.key}`;
              const cur = model.get(key);
              const value = `${round}.${i}`;
              if (o.op === 'put' || o.op === 'cas' || o.op === 'casStale') {
                const expectedVersion = o.op === 'put' ? undefined : o.op === 'cas' ? (cur?.version ?? 0) : (cur?.version ?? 0) + 1;
                const r = await b.put({ key, value: enc(value), ...(expectedVersion !== undefined ? { expectedVersion } : {}) }, call());
                expect(r.succeeded).toBe(o.op !== 'casStale');
                if (r.succeeded) {
                  expect(r.revision).toBeGreaterThan(lastRevision);
                  lastRevision = r.revision;
                  model.set(key, { value, version: r.version });
                } else expect(r.version).toBe(cur?.version ?? 0);
              } else if (o.op === 'txn' || o.op === 'txnStale') {
                // Compares `key` (its current version, or one off when stale), then puts `key` and deletes `other` (just the put when they coincide).
                const other = `/model/${round}/${o.other}`;
                const version = (cur?.version ?? 0) + (o.op === 'txnStale' ? 1 : 0);
                const writes =
                  other === key
                    ? [{ type: 'put' as const, key, value: enc(value) }]
                    : [{ type: 'put' as const, key, value: enc(value) }, { type: 'delete' as const, key: other }];
                const r = await b.txn({ compares: [{ key, version }], writes }, call());
                expect(r.succeeded).toBe(o.op === 'txn');
                expect(r.failedCompares).toEqual(o.op === 'txn' ? [] : [0]);
                if (r.succeeded) {
                  expect(r.revision).toBeGreaterThan(lastRevision);
                  lastRevision = r.revision;
                  model.set(key, { value, version: r.revision });
                  if (other !== key) model.delete(other);
                } else expect(r.revision).toBeGreaterThanOrEqual(lastRevision); // no new revision of ours (the shard's system records may add some)
              } else if (o.op === 'delete') {
                const r = await b.delete({ key }, call());
                expect(r.succeeded).toBe(true);
                expect(r.deleted).toBe(cur !== undefined);
                if (r.deleted) {
                  expect(r.revision).toBeGreaterThan(lastRevision);
                  lastRevision = r.revision;
                }
                model.delete(key);
              } else {
                const g = await b.get({ key, consistency: 'linearizable' }, call());
                expect({ found: g.found, value: dec(g.value), version: g.version }).toEqual(
                  cur ? { found: true, value: cur.value, version: cur.version } : { found: false, value: undefined, version: 0 },
                );
              }
            }
            const page = await b.list({ prefix: `/model/${round}/`, keysOnly: false, consistency: 'linearizable' }, call());
            expect(page.items.map((it) => [it.key, dec(it.value), it.version])).toEqual(
              [...model.entries()].sort(([x], [y]) => (x < y ? -1 : 1)).map(([k, v]) => [k, v.value, v.version]),
            );
          },
        ),
        { numRuns: 20 },
      );
    });
  });
}
