/**
 * Tests of client sessions in the shard state machine (src/statemachine/sessions.ts): a write
 * retried with the same (session, seq) applies at most once and every attempt gets the first
 * result; acknowledgements forget results; expiry by entry timestamps; the session and result
 * bounds; snapshots carry the table (and old snapshots still load); a model-based property over
 * random interleavings of duplicates, retries, acknowledgements and snapshot/restore.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_SESSION_RESULTS,
  DEFAULT_MAX_SESSIONS,
  DEFAULT_SESSION_TTL_MS,
  decodeSessionResult,
  encodeSessionResult,
  KvStateMachine,
  SNAPSHOT_FORMAT_VERSION,
  SNAPSHOT_SESSIONS_FORMAT_VERSION,
  ValidationError,
  validateWriteSession,
  type ApplyOutput,
  type Command,
  type CommandResult,
  type KvStateMachineOptions,
  type WriteSession,
} from '../../src/statemachine/index.js';
import { b, s } from './helpers.js';

const A = 'session-aaaaaaaaaaaa';
const B = 'session-bbbbbbbbbbbb';
const ws = (id: string, seq: number, ackedBelow = 0): WriteSession => ({ id, seq, ackedBelow });
const put = (key: string, value: string, extra: Partial<{ expectedVersion: number; returnPrevious: true }> = {}): Command => ({
  type: 'put',
  key,
  value: b(value),
  ...extra,
});

/** A machine with a log index and clock of its own, for short scripts. */
class Driver {
  index = 0;
  ts = 1_000_000;
  constructor(public sm = new KvStateMachine()) {}
  apply(cmd: Command, session?: WriteSession, dt = 1): ApplyOutput {
    this.ts += dt;
    return this.sm.apply(++this.index, this.ts, cmd, 'client', session);
  }
}

function rejectedCode(r: CommandResult): string | undefined {
  return r.type === 'rejected' ? r.error.code : undefined;
}

describe('client sessions: deduplication', () => {
  it('a put sent twice with the same session applies once; the repeat gets the same result and consumes no revision', () => {
    const d = new Driver();
    const first = d.apply(put('/k', 'v1'), ws(A, 1));
    expect(first.result).toMatchObject({ type: 'put', succeeded: true, version: 1, revision: 1 });
    expect(first.events).toHaveLength(1);
    expect(first.duplicate).toBeUndefined();
    const again = d.apply(put('/k', 'v1'), ws(A, 1));
    expect(again.duplicate).toBe(true);
    expect(again.result).toEqual(first.result);
    expect(again.events).toEqual([]);
    expect(d.sm.revision).toBe(1);
    expect(d.sm.appliedIndex).toBe(2); // the entry still consumed its index
    expect(d.sm.get('/k')!.version).toBe(1);
    expect(d.sm.eventsSince(1).events).toHaveLength(1);
    // The same seq in another session is another write.
    expect(d.apply(put('/k', 'v1'), ws(B, 1)).result).toMatchObject({ succeeded: true, version: 2 });
    // Without a session nothing is deduplicated (as before sessions).
    d.apply(put('/k', 'v2'));
    d.apply(put('/k', 'v2'));
    expect(d.sm.revision).toBe(4);
  });

  it('replays the first outcome even when the state has changed since: conditional puts, deletes, txns, triggers', () => {
    const d = new Driver();
    // "only if absent" succeeded; re-applying now would conflict.
    const created = d.apply(put('/c', 'x', { expectedVersion: 0 }), ws(A, 1)).result;
    expect(created).toMatchObject({ succeeded: true, version: 1 });
    expect(d.apply(put('/c', 'x', { expectedVersion: 0 }), ws(A, 1)).result).toEqual(created);
    // A conflict that returned the current value: the replay carries that value, not today's.
    const conflict = d.apply(put('/c', 'y', { expectedVersion: 7, returnPrevious: true }), ws(A, 2)).result;
    expect(conflict).toMatchObject({ succeeded: false, current: { version: 1 } });
    d.apply(put('/c', 'changed'));
    const replay = d.apply(put('/c', 'y', { expectedVersion: 7, returnPrevious: true }), ws(A, 2)).result;
    expect(replay).toEqual(conflict);
    expect(replay.type === 'put' && s(replay.current!.value)).toBe('x');
    // Delete, txn and trigger.
    const del = d.apply({ type: 'delete', key: '/c' }, ws(A, 3)).result;
    expect(del).toMatchObject({ type: 'delete', deleted: true });
    expect(d.apply({ type: 'delete', key: '/c' }, ws(A, 3)).result).toEqual(del);
    const txn: Command = { type: 'txn', compares: [{ key: '/c', version: 0 }], writes: [{ type: 'put', key: '/d', value: b('1') }] };
    const t = d.apply(txn, ws(A, 4)).result;
    expect(t).toMatchObject({ type: 'txn', succeeded: true });
    const rev = d.sm.revision;
    expect(d.apply(txn, ws(A, 4)).result).toEqual(t);
    const trig = d.apply({ type: 'triggerPut', key: '/t', value: b('fire') }, ws(A, 5));
    expect(trig.events).toHaveLength(1);
    const trig2 = d.apply({ type: 'triggerPut', key: '/t', value: b('fire') }, ws(A, 5));
    expect(trig2.result).toEqual(trig.result);
    expect(trig2.events).toEqual([]);
    expect(d.sm.revision).toBe(rev + 1);
  });

  it('replays a rejection too (the command is never applied on a later attempt)', () => {
    const d = new Driver();
    const first = d.apply(put('/_sys/x', 'v'), ws(A, 1)).result;
    expect(rejectedCode(first)).toBe('RESERVED');
    const again = d.apply(put('/_sys/x', 'v'), ws(A, 1));
    expect(again.duplicate).toBe(true);
    expect(again.result).toEqual(first);
    // A WRONG_SHARD rejection is not kept: nothing was executed here, and the write may come back
    // once the shard owns the key.
    const descriptor = '{"group":1,"pool":"","index":0,"shards":2,"excluded":[],"epoch":1}';
    d.sm.apply(++d.index, d.ts, { type: 'put', key: '/_sys/shard', value: b(descriptor) }, 'system');
    const wrong = ['/k0', '/k1', '/k2', '/k3', '/k4', '/k5'].find((k) => !d.sm.owns(k))!;
    expect(rejectedCode(d.apply(put(wrong, 'v'), ws(A, 2)).result)).toBe('WRONG_SHARD');
    expect(d.sm.session(A)!.results.map(([q]) => q)).toEqual([1]);
  });

  it('an invalid session is rejected as INVALID_ARGUMENT and changes nothing', () => {
    const d = new Driver();
    for (const bad of [ws('short', 1), ws(A, 0), ws(A, 2, 3), ws('x'.repeat(65), 1), ws('bad id with spaces!!', 1)]) {
      expect(rejectedCode(d.apply(put('/k', 'v'), bad).result)).toBe('INVALID_ARGUMENT');
    }
    expect(d.sm.revision).toBe(0);
    expect(d.sm.sessionCount).toBe(0);
    expect(() => validateWriteSession({ id: A, seq: 1.5, ackedBelow: 0 })).toThrow(ValidationError);
    expect(validateWriteSession(ws(A, 3, 3))).toEqual(ws(A, 3, 3));
  });
});

describe('client sessions: forgetting', () => {
  it('ackedBelow drops the results below it; a retry of a forgotten seq is refused with SESSION_EXPIRED, never applied', () => {
    const d = new Driver();
    for (let q = 1; q <= 3; q++) d.apply(put('/k', `v${q}`), ws(A, q));
    expect(d.sm.session(A)!.results.map(([q]) => q)).toEqual([1, 2, 3]);
    d.apply(put('/k', 'v4'), ws(A, 4, 3));
    expect(d.sm.session(A)).toMatchObject({ forgottenBelow: 3 });
    expect(d.sm.session(A)!.results.map(([q]) => q)).toEqual([3, 4]);
    const rev = d.sm.revision;
    const late = d.apply(put('/k', 'v1'), ws(A, 1));
    expect(rejectedCode(late.result)).toBe('SESSION_EXPIRED');
    expect(late.result.type === 'rejected' && late.result.error.message).toMatch(/may have applied; its result is no longer kept/);
    expect(d.sm.revision).toBe(rev);
    expect(s(d.sm.get('/k')!.value)).toBe('v4');
    // Seq 3 is still remembered; ackedBelow never moves back.
    expect(d.apply(put('/k', 'v3'), ws(A, 3, 0)).duplicate).toBe(true);
    d.apply(put('/k', 'v5'), ws(A, 5, 1));
    expect(d.sm.session(A)!.forgottenBelow).toBe(3);
  });

  it('a session idle for longer than the TTL, by entry timestamps, is dropped at the next applied entry', () => {
    const d = new Driver(new KvStateMachine({ sessionTtlMs: 1000 }));
    d.apply(put('/k', 'a'), ws(A, 1));
    d.apply(put('/k', 'b'), ws(B, 1), 500);
    // Exactly the TTL idle: kept.
    d.apply({ type: 'noop' }, undefined, 500);
    expect(d.sm.session(A)).toBeDefined();
    // One more millisecond (any entry, even a no-op): A goes, B (active 500 ms later) stays.
    d.apply({ type: 'noop' }, undefined, 1);
    expect(d.sm.session(A)).toBeUndefined();
    expect(d.sm.session(B)).toBeDefined();
    expect(d.sm.sessionCount).toBe(1);
    // A forgotten session is unknown: its retry cannot be told from a first attempt (documented).
    expect(d.apply(put('/k', 'a'), ws(A, 1)).duplicate).toBeUndefined();
    // Only log timestamps count: an entry whose timestamp goes backwards expires nothing.
    const m = new KvStateMachine({ sessionTtlMs: 1000 });
    m.apply(1, 10_000, put('/k', 'a'), 'client', ws(A, 1));
    m.apply(2, 5_000, { type: 'noop' });
    expect(m.session(A)).toBeDefined();
    m.apply(3, 11_001, { type: 'noop' });
    expect(m.session(A)).toBeUndefined();
    expect(new KvStateMachine().sessionTtlMs).toBe(DEFAULT_SESSION_TTL_MS);
  });

  it('a new session beyond the bound evicts the least recently active one', () => {
    const d = new Driver(new KvStateMachine({ maxSessions: 3 }));
    const ids = ['s0', 's1', 's2', 's3'].map((x) => `${x}-xxxxxxxxxxxxxxxxx`);
    d.apply(put('/k', '0'), ws(ids[0]!, 1));
    d.apply(put('/k', '1'), ws(ids[1]!, 1));
    d.apply(put('/k', '2'), ws(ids[2]!, 1));
    d.apply(put('/k', '0b'), ws(ids[0]!, 2)); // s0 active again: s1 is now the least recently active
    d.apply(put('/k', '3'), ws(ids[3]!, 1));
    expect(d.sm.sessionCount).toBe(3);
    expect(d.sm.session(ids[1]!)).toBeUndefined();
    expect(ids.filter((id) => d.sm.session(id) !== undefined)).toEqual([ids[0], ids[2], ids[3]]);
    // A repeat counts as activity too.
    d.apply(put('/k', '2'), ws(ids[2]!, 1));
    d.apply(put('/k', '1'), ws(ids[1]!, 1));
    expect(d.sm.session(ids[0]!)).toBeUndefined();
  });

  it('the default bound: 50,000 sessions per shard', () => {
    const d = new Driver();
    expect(d.sm.maxSessions).toBe(DEFAULT_MAX_SESSIONS);
    const id = (i: number) => `bound-${String(i).padStart(12, '0')}`;
    for (let i = 0; i <= DEFAULT_MAX_SESSIONS; i++) d.apply({ type: 'triggerPut', key: '/t', value: b('') }, ws(id(i), 1));
    expect(d.sm.sessionCount).toBe(DEFAULT_MAX_SESSIONS);
    expect(d.sm.session(id(0))).toBeUndefined();
    expect(d.sm.session(id(1))).toBeDefined();
    expect(d.sm.session(id(DEFAULT_MAX_SESSIONS))).toBeDefined();
  });

  it('beyond the results bound the lowest seqs are forgotten (their retries get SESSION_EXPIRED)', () => {
    const d = new Driver(new KvStateMachine({ maxSessionResults: 3 }));
    // Out of order, as a pipelining client's writes may commit.
    for (const q of [2, 1, 4, 3]) d.apply(put('/k', `v${q}`), ws(A, q));
    expect(d.sm.session(A)).toMatchObject({ forgottenBelow: 2 });
    expect(d.sm.session(A)!.results.map(([q]) => q)).toEqual([2, 3, 4]);
    expect(rejectedCode(d.apply(put('/k', 'v1'), ws(A, 1)).result)).toBe('SESSION_EXPIRED');
    expect(d.apply(put('/k', 'v2'), ws(A, 2)).duplicate).toBe(true);
    // A write below every stored seq, arriving when the session is full, is applied and then
    // forgotten at once: its retry is refused rather than applied again.
    const e = new Driver(new KvStateMachine({ maxSessionResults: 2 }));
    e.apply(put('/k', 'a'), ws(A, 5));
    e.apply(put('/k', 'b'), ws(A, 6));
    expect(e.apply(put('/k', 'c'), ws(A, 4)).result).toMatchObject({ succeeded: true });
    expect(rejectedCode(e.apply(put('/k', 'c'), ws(A, 4)).result)).toBe('SESSION_EXPIRED');
    expect(e.sm.session(A)!.results.map(([q]) => q)).toEqual([5, 6]);
  });

  it('the default results bound: 10,000 per session', () => {
    const d = new Driver();
    for (let q = 1; q <= DEFAULT_MAX_SESSION_RESULTS + 1; q++) d.apply({ type: 'triggerPut', key: '/t', value: b('') }, ws(A, q));
    const rec = d.sm.session(A)!;
    expect(rec.results).toHaveLength(DEFAULT_MAX_SESSION_RESULTS);
    expect(rec.forgottenBelow).toBe(2);
  });
});

describe('client sessions: snapshots and records', () => {
  function withSessions(): Driver {
    const d = new Driver(new KvStateMachine({ maxSessionResults: 5, maxHistoryRevisions: 20 }));
    d.apply(put('/a', '1'), ws(A, 1));
    d.apply(put('/a', '2', { expectedVersion: 9, returnPrevious: true }), ws(A, 2));
    d.apply({ type: 'delete', key: '/a' }, ws(B, 7, 5));
    d.apply(put('/_sys/no', 'x'), ws(B, 8, 5));
    d.apply({ type: 'txn', compares: [{ key: '/a', version: 3 }], writes: [] }, ws(A, 3, 2));
    d.apply({ type: 'triggerPut', key: '/t', value: b('t') }, ws(B, 9, 5));
    d.apply(put('/plain', 'p'));
    return d;
  }

  it('round-trip the session table exactly; a retry after restore still gets the first result', () => {
    const d = withSessions();
    const bytes = d.sm.snapshot();
    expect(bytes[4]).toBe(SNAPSHOT_SESSIONS_FORMAT_VERSION);
    const r = KvStateMachine.restore(bytes);
    expect(Buffer.from(r.snapshot()).equals(Buffer.from(bytes))).toBe(true);
    expect(r.sessionCount).toBe(2);
    expect(r.maxSessionResults).toBe(5);
    for (const id of [A, B]) expect(r.session(id)).toEqual(d.sm.session(id));
    // Replays after restore equal the originals (values, errors and all).
    const d2 = new Driver(r);
    d2.index = d.index;
    d2.ts = d.ts;
    const originals = [
      [put('/a', '2', { expectedVersion: 9, returnPrevious: true }), ws(A, 2)],
      [{ type: 'delete', key: '/a' }, ws(B, 7, 5)],
      [put('/_sys/no', 'x'), ws(B, 8, 5)],
    ] as const;
    for (const [cmd, session] of originals) {
      const a = d.apply(cmd, session);
      const c = d2.apply(cmd, session);
      expect(c.duplicate).toBe(true);
      expect(c.result).toEqual(a.result);
    }
    expect(Buffer.from(d2.sm.snapshot()).equals(Buffer.from(d.sm.snapshot()))).toBe(true);
    // fromRecords(toRecords()) is the same machine too.
    expect(Buffer.from(KvStateMachine.fromRecords(d.sm.toRecords()).snapshot()).equals(Buffer.from(d.sm.snapshot()))).toBe(true);
  });

  it('a state without sessions is written in the old format, and a snapshot written before sessions still loads', () => {
    const m = new KvStateMachine();
    m.apply(1, 1000, put('/a', '1'));
    expect(m.snapshot()[4]).toBe(SNAPSHOT_FORMAT_VERSION);
    // Written by the code before sessions existed: puts of /a and /b, a delete of /a, a trigger of /t.
    const old = Buffer.from(
      '4b56534d010404008608904e8080802000e8070a0a0a0200022f6102010231020001016201020232040100022f610100022f620101022f610102022f7401789db7c079',
      'hex',
    );
    const r = KvStateMachine.restore(new Uint8Array(old));
    expect(r.appliedIndex).toBe(4);
    expect(r.revision).toBe(4);
    expect(s(r.get('/b')!.value)).toBe('2');
    expect(r.sessionCount).toBe(0);
    expect(r.sessionTtlMs).toBe(DEFAULT_SESSION_TTL_MS);
    expect(Buffer.from(r.snapshot()).equals(old)).toBe(true);
    // It takes session writes from then on.
    expect(r.apply(5, 1040, put('/b', '3'), 'client', ws(A, 1)).result).toMatchObject({ succeeded: true, version: 5 });
    expect(r.apply(6, 1050, put('/b', '3'), 'client', ws(A, 1)).duplicate).toBe(true);
  });

  it('non-default session limits survive a snapshot even without sessions', () => {
    const m = new KvStateMachine({ sessionTtlMs: 5, maxSessions: 2, maxSessionResults: 3 });
    const r = KvStateMachine.restore(m.snapshot());
    expect([r.sessionTtlMs, r.maxSessions, r.maxSessionResults]).toEqual([5, 2, 3]);
  });

  it('rejects corrupt session sections', () => {
    const d = withSessions();
    const rec = d.sm.toRecords();
    const restoreOf = (sessions: unknown) => () => KvStateMachine.fromRecords({ ...rec, sessions } as never).snapshot();
    // The codec checks what it decodes: corrupt sessions encoded, then decoded, are refused.
    const bad = [
      [{ ...rec.sessions![0]!, id: 'bad' }],
      [rec.sessions![1]!, rec.sessions![0]!], // activity order broken
      [{ ...rec.sessions![0]!, lastActiveIndex: 10_000 }],
      [{ ...rec.sessions![0]!, forgottenBelow: 99 }],
    ];
    for (const sessions of bad) {
      const bytes = restoreOf(sessions)();
      expect(() => KvStateMachine.restore(bytes)).toThrow(/MALFORMED_SNAPSHOT/);
    }
  });

  it('stored results encode and decode exactly', () => {
    const d = withSessions();
    for (const id of [A, B]) {
      for (const [, r] of d.sm.session(id)!.results) expect(decodeSessionResult(encodeSessionResult(r))).toEqual(r);
    }
    expect(() => decodeSessionResult(new Uint8Array([9]))).toThrow(/unknown session result kind/);
  });
});

// ------------------------------------------------------------------ model-based

type Step =
  /** Client `c` starts a new logical write (next seq), optionally acknowledging everything it has answers for. */
  | { t: 'new'; c: number; cmd: number; ack: boolean; dt: number }
  /** Client `c` retries one of its earlier writes (by position among them), with its current ackedBelow. */
  | { t: 'retry'; c: number; pick: number; dt: number }
  /** A write without a session, or a no-op. */
  | { t: 'plain'; cmd: number; dt: number }
  /** The machine is snapshotted and restored (a replica restarting, a follower installing a snapshot). */
  | { t: 'restore' };

const KEYS = ['/m/a', '/m/b', '/_sys/r'];
function commandOf(n: number, tag: string): Command {
  const key = KEYS[n % KEYS.length]!;
  switch (Math.floor(n / KEYS.length) % 6) {
    case 0:
      return { type: 'put', key, value: b(tag) };
    case 1:
      return { type: 'put', key, value: b(tag), expectedVersion: n % 4, returnPrevious: true };
    case 2:
      return { type: 'delete', key };
    case 3:
      return { type: 'triggerPut', key, value: b(tag) };
    case 4:
      return { type: 'txn', compares: [{ key, version: n % 3 }], writes: [{ type: 'put', key: '/m/c', value: b(tag) }] };
    default:
      return { type: 'delete', key, expectedVersion: n % 5 };
  }
}

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ t: fc.constant('new' as const), c: fc.nat(2), cmd: fc.nat(35), ack: fc.boolean(), dt: fc.nat(300) }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('retry' as const), c: fc.nat(2), pick: fc.nat(), dt: fc.nat(300) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('plain' as const), cmd: fc.nat(40), dt: fc.nat(300) }) },
  { weight: 1, arbitrary: fc.constant({ t: 'restore' as const }) },
);

interface Attempt {
  readonly c: number;
  readonly seq: number;
  readonly cmd: Command;
}

/**
 * Runs `steps` on a machine with `opts`. With `exact` (bounds and TTL never reached) the outcome
 * of every attempt is predicted exactly; otherwise only the safety property is checked: a write
 * applies again only after its whole session was dropped (expired or evicted).
 */
function runModel(steps: readonly Step[], opts: KvStateMachineOptions, exact: boolean): void {
  let sm = new KvStateMachine(opts);
  let index = 0;
  let ts = 1_000_000;
  const ids = [0, 1, 2].map((c) => `model-client-${c}-xxxxxx`);
  const nextSeq = [1, 1, 1];
  const acked = [0, 0, 0]; // each client's ackedBelow (it acknowledges only answers it has)
  const floor = [0, 0, 0]; // the highest ackedBelow each session sent (exact model)
  const writes: Attempt[][] = [[], [], []];
  const first = new Map<string, CommandResult>(); // `${c}/${seq}` -> the result of its (last) application
  const droppedSince = new Map<string, boolean>(); // whether the session vanished since the first application
  const appliedTimes = new Map<string, number>();
  const markDropped = (c: number): void => {
    for (const a of writes[c]!) if (first.has(`${c}/${a.seq}`)) droppedSince.set(`${c}/${a.seq}`, true);
  };
  const observeDrops = (): void => {
    for (let c = 0; c < 3; c++) if (sm.session(ids[c]!) === undefined) markDropped(c);
  };
  const attempt = (a: Attempt, dt: number): void => {
    ts += dt;
    const key = `${a.c}/${a.seq}`;
    // Its own session may expire at this very entry, before the write recreates it.
    const mine = sm.session(ids[a.c]!);
    if (mine && ts - mine.lastActiveTs > sm.sessionTtlMs) markDropped(a.c);
    // A client acknowledges only writes below any it still awaits, so never beyond a retried seq.
    const session = { id: ids[a.c]!, seq: a.seq, ackedBelow: Math.min(acked[a.c]!, a.seq) };
    const revBefore = sm.revision;
    const out = sm.apply(++index, ts, a.cmd, 'client', session);
    floor[a.c] = Math.max(floor[a.c]!, session.ackedBelow);
    const prior = first.get(key);
    const code = rejectedCode(out.result);
    if (exact) {
      if (a.seq < floor[a.c]!) {
        expect(code).toBe('SESSION_EXPIRED');
      } else if (prior !== undefined) {
        expect(out.duplicate).toBe(true);
        expect(out.result).toEqual(prior);
      } else {
        expect(out.duplicate).toBeUndefined();
        expect(code === undefined || code === 'RESERVED').toBe(true);
      }
    }
    if (out.duplicate) {
      expect(prior).toBeDefined();
      expect(out.result).toEqual(prior);
      expect(sm.revision).toBe(revBefore);
      expect(out.events).toEqual([]);
    }
    if (code === 'SESSION_EXPIRED') expect(sm.revision).toBe(revBefore);
    if (!out.duplicate && code !== 'SESSION_EXPIRED') {
      // Applied: either the first time, or again only after its session was dropped whole.
      const n = (appliedTimes.get(key) ?? 0) + 1;
      appliedTimes.set(key, n);
      if (n > 1) expect(droppedSince.get(key), `${key} applied twice`).toBe(true);
      first.set(key, out.result); // what its session now replays
      droppedSince.set(key, false);
    }
    observeDrops();
  };
  for (const st of steps) {
    switch (st.t) {
      case 'new': {
        const seq = nextSeq[st.c]!++;
        const a: Attempt = { c: st.c, seq, cmd: commandOf(st.cmd, `${st.c}.${seq}`) };
        writes[st.c]!.push(a);
        attempt(a, st.dt);
        // The client now has this answer; with `ack` it acknowledges every write up to it whose
        // answer it has (here: all of them, once attempted).
        if (st.ack) acked[st.c] = seq;
        break;
      }
      case 'retry': {
        const mine = writes[st.c]!;
        if (mine.length === 0) break;
        attempt(mine[st.pick % mine.length]!, st.dt);
        break;
      }
      case 'plain':
        ts += st.dt;
        sm.apply(++index, ts, st.cmd % 5 === 0 ? { type: 'noop' } : commandOf(st.cmd, 'plain'), 'client');
        observeDrops();
        break;
      case 'restore': {
        const bytes = sm.snapshot();
        sm = KvStateMachine.restore(bytes);
        expect(Buffer.from(sm.snapshot()).equals(Buffer.from(bytes))).toBe(true);
        break;
      }
    }
  }
  // Each write's effects happened at most once: a put's tagged value appears in at most one event
  // (unless its session was dropped and it applied again).
  const seen = new Map<string, number>();
  for (const e of sm.eventsSince(Math.max(1, sm.oldestHistoryRevision), '', 10_000).events) {
    if (e.value === undefined || e.key === '/m/c') continue;
    const tag = s(e.value)!;
    seen.set(tag, (seen.get(tag) ?? 0) + 1);
  }
  if (exact) for (const [tag, n] of seen) if (tag !== 'plain') expect(n, tag).toBe(1);
}

describe('client sessions: model-based', () => {
  it('any interleaving of duplicates and retries applies each (session, seq) at most once and answers every attempt alike', () => {
    fc.assert(
      fc.property(fc.array(stepArb, { minLength: 1, maxLength: 120 }), (steps) => runModel(steps, { maxHistoryRevisions: 10_000 }, true)),
      { numRuns: 300 },
    );
  });

  it('with tiny bounds and TTL, a write applies again only after its whole session was dropped', () => {
    const opts = fc.record({
      sessionTtlMs: fc.integer({ min: 0, max: 900 }),
      maxSessions: fc.integer({ min: 1, max: 3 }),
      maxSessionResults: fc.integer({ min: 1, max: 4 }),
    });
    fc.assert(
      fc.property(fc.array(stepArb, { minLength: 1, maxLength: 120 }), opts, (steps, o) => runModel(steps, { ...o, maxHistoryRevisions: 10_000 }, false)),
      { numRuns: 300 },
    );
  });
});
