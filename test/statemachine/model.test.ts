/** Model-based property test: random command sequences (with compaction and snapshot/restore midway) against the reference model. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CompactedRevisionError,
  DEFAULT_MAX_HISTORY_BYTES,
  DEFAULT_MAX_HISTORY_REVISIONS,
  KvStateMachine,
  leaseAttachmentPrefix,
  ValidationError,
  type Command,
  type TxnWrite,
} from '../../src/statemachine/index.js';
import { KEY_POOL, poolKey, smallValue } from './helpers.js';
import { ReferenceModel, normalizeResult } from './reference-model.js';

/** How a generated conditional resolves its expected version against the model at run time. */
type Expect = { kind: 'none' } | { kind: 'current' } | { kind: 'fixed'; version: number };

type GenCmd =
  | { t: 'put'; key: string; value: Uint8Array; expect: Expect; returnPrevious: boolean }
  | { t: 'delete'; key: string; expect: Expect }
  | { t: 'txn'; compares: Array<{ key: string; expect: Expect }>; writes: TxnWrite[] }
  | { t: 'trigger'; key: string; value: Uint8Array }
  | { t: 'noop' }
  | { t: 'attach'; lease: number; key: string; value: Uint8Array }
  | { t: 'revoke'; lease: number };

type Action =
  | { a: 'apply'; cmd: GenCmd; dt: number; indexStep: number }
  | { a: 'reapply'; back: number }
  | { a: 'compact'; back: number; viaCommand: boolean }
  | { a: 'retention'; retentionMs: number }
  | { a: 'snapshot' }
  | { a: 'check' };

const expectArb: fc.Arbitrary<Expect> = fc.oneof(
  { weight: 2, arbitrary: fc.constant<Expect>({ kind: 'none' }) },
  { weight: 2, arbitrary: fc.constant<Expect>({ kind: 'current' }) },
  { weight: 1, arbitrary: fc.nat(12).map<Expect>((version) => ({ kind: 'fixed', version })) },
);
const writeArb: fc.Arbitrary<TxnWrite> = fc.oneof(
  fc.record({ type: fc.constant('put' as const), key: poolKey, value: smallValue }),
  fc.record({ type: fc.constant('delete' as const), key: poolKey }),
);
const genCmdArb: fc.Arbitrary<GenCmd> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ t: fc.constant('put' as const), key: poolKey, value: smallValue, expect: expectArb, returnPrevious: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('delete' as const), key: poolKey, expect: expectArb }) },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('txn' as const),
      compares: fc.array(fc.record({ key: poolKey, expect: expectArb }), { maxLength: 3 }),
      writes: fc.uniqueArray(writeArb, { maxLength: 4, selector: (w) => w.key }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('trigger' as const), key: poolKey, value: smallValue }) },
  { weight: 1, arbitrary: fc.constant({ t: 'noop' as const }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('attach' as const), lease: fc.integer({ min: 1, max: 2 }), key: poolKey, value: smallValue }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('revoke' as const), lease: fc.integer({ min: 1, max: 3 }) }) },
);
const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 12, arbitrary: fc.record({ a: fc.constant('apply' as const), cmd: genCmdArb, dt: fc.integer({ min: -30, max: 60 }), indexStep: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ a: fc.constant('reapply' as const), back: fc.nat(5) }) },
  { weight: 2, arbitrary: fc.record({ a: fc.constant('compact' as const), back: fc.integer({ min: -1, max: 6 }), viaCommand: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ a: fc.constant('retention' as const), retentionMs: fc.nat(200) }) },
  { weight: 1, arbitrary: fc.constant({ a: 'snapshot' as const }) },
  { weight: 2, arbitrary: fc.constant({ a: 'check' as const }) },
);
const optionsArb = fc.oneof(
  fc.constant({ maxHistoryRevisions: DEFAULT_MAX_HISTORY_REVISIONS, maxHistoryBytes: DEFAULT_MAX_HISTORY_BYTES }),
  fc.record({ maxHistoryRevisions: fc.integer({ min: 1, max: 8 }), maxHistoryBytes: fc.integer({ min: 1, max: 600 }) }),
);

function resolve(e: Expect, key: string, model: ReferenceModel): number | undefined {
  return e.kind === 'none' ? undefined : e.kind === 'current' ? model.version(key) : e.version;
}

function toCommand(g: GenCmd, model: ReferenceModel): Command {
  switch (g.t) {
    case 'put': {
      const expectedVersion = resolve(g.expect, g.key, model);
      return {
        type: 'put', key: g.key, value: g.value,
        ...(expectedVersion === undefined ? {} : { expectedVersion }),
        ...(g.returnPrevious ? { returnPrevious: true } : {}),
      };
    }
    case 'delete': {
      const expectedVersion = resolve(g.expect, g.key, model);
      return expectedVersion === undefined ? { type: 'delete', key: g.key } : { type: 'delete', key: g.key, expectedVersion };
    }
    case 'txn':
      return { type: 'txn', compares: g.compares.map((c) => ({ key: c.key, version: resolve(c.expect, c.key, model) ?? 0 })), writes: g.writes };
    case 'trigger':
      return { type: 'triggerPut', key: g.key, value: g.value };
    case 'noop':
      return { type: 'noop' };
    case 'attach': // a put with a lease: the key and its attachment in one txn (src/lease/attachments.ts)
      return { type: 'txn', compares: [], writes: [{ type: 'put', key: g.key, value: g.value }, { type: 'put', key: leaseAttachmentPrefix(g.lease) + g.key, value: new Uint8Array(0) }] };
    case 'revoke':
      return { type: 'revokeLeaseKeys', lease: g.lease };
  }
}

/** Runs `fn` on both sides and requires the same value or the same kind of error. */
function same<T>(impl: () => T, model: () => T): void {
  let a: { ok: T } | { err: unknown };
  let b: { ok: T } | { err: unknown };
  try { a = { ok: impl() }; } catch (e) { a = { err: e }; }
  try { b = { ok: model() }; } catch (e) { b = { err: e }; }
  if ('err' in b) {
    expect('err' in a ? a.err : a.ok).toBeInstanceOf((b.err as Error).constructor);
    if (b.err instanceof CompactedRevisionError) expect((a as { err: CompactedRevisionError }).err.oldestRevision).toBe(b.err.oldestRevision);
    if (b.err instanceof ValidationError) expect((a as { err: ValidationError }).err.code).toBe(b.err.code);
  } else {
    if ('err' in a) throw a.err;
    expect(a.ok).toEqual(b.ok);
  }
}

/** Quick invariant check after every step. */
function quickCheck(m: KvStateMachine, model: ReferenceModel): void {
  expect(m.revision).toBe(model.revision);
  expect(m.appliedIndex).toBe(model.appliedIndex);
  expect(m.lastTimestampMs).toBe(model.lastTs);
  expect(m.compactRevision).toBe(model.compactRevision);
  expect(m.oldestHistoryRevision).toBe(model.historyStart);
  expect(m.keyCount).toBe(model.liveItems('').length);
  for (const k of KEY_POOL) same(() => m.get(k), () => model.get(k));
}

/** Exhaustive comparison of every read. */
function fullCheck(m: KvStateMachine, model: ReferenceModel, limit: number): void {
  quickCheck(m, model);
  for (let rev = 0; rev <= model.revision + 1; rev++) {
    for (const k of KEY_POOL) same(() => m.get(k, { atRevision: rev }), () => model.get(k, { atRevision: rev }));
    if (rev >= 1) {
      for (const p of ['', 'a', 'b/', '\u{1f600}']) same(() => m.eventsSince(rev, p, limit), () => model.eventsSince(rev, p, limit));
    }
  }
  const times = new Set<number>();
  for (const t of model.revTs) [t - 1, t, t + 1].forEach((x) => times.add(x));
  for (const t of times) {
    for (const k of KEY_POOL) same(() => m.get(k, { atTimeMs: t }), () => model.get(k, { atTimeMs: t }));
    same(() => m.retentionCompactRevision(Math.max(0, t), 0), () => model.retentionCompactRevision(Math.max(0, t), 0));
  }
  for (const prefix of ['', 'a', 'ab', 'b', 'b/', '\ue000', '\u{1f600}', 'zz']) {
    const collected = [];
    let after: string | undefined;
    for (let pages = 0; pages < 100; pages++) {
      const page = m.list(prefix, after === undefined ? { limit } : { limit, after });
      expect(page.revision).toBe(model.revision);
      collected.push(...page.items);
      if (page.nextAfter === undefined) break;
      expect(page.items.length).toBe(limit);
      after = page.nextAfter;
    }
    expect(collected).toEqual(model.liveItems(prefix));
  }
}

describe('model-based: KvStateMachine vs reference model', () => {
  it('behaves like the model over random command sequences with compaction and snapshot/restore', () => {
    fc.assert(
      fc.property(fc.array(actionArb, { minLength: 1, maxLength: 60 }), optionsArb, fc.integer({ min: 1, max: 4 }), (actions, opts, limit) => {
        let m = new KvStateMachine(opts);
        const model = new ReferenceModel(opts.maxHistoryRevisions, opts.maxHistoryBytes);
        let index = 0;
        let clock = 1000;
        for (const act of actions) {
          switch (act.a) {
            case 'apply': {
              index += act.indexStep;
              clock = Math.max(0, clock + act.dt);
              const cmd = toCommand(act.cmd, model);
              const out = m.apply(index, clock, cmd);
              const exp = model.apply(index, clock, cmd);
              expect({ applied: out.applied, result: normalizeResult(out.result), events: out.events }).toEqual(exp);
              break;
            }
            case 'reapply': {
              if (index === 0) break;
              const i = Math.max(1, index - act.back);
              const cmd: Command = { type: 'put', key: 'a', value: new Uint8Array([9]) };
              expect(normalizeResult(m.apply(i, clock, cmd).result)).toEqual(model.apply(i, clock, cmd).result);
              break;
            }
            case 'compact': {
              const rev = Math.max(0, model.revision - act.back);
              if (act.viaCommand) {
                index++;
                const cmd: Command = { type: 'compact', revision: rev };
                expect(normalizeResult(m.apply(index, clock, cmd).result)).toEqual(model.apply(index, clock, cmd).result);
              } else if (rev > model.revision) {
                expect(() => m.compact(rev)).toThrow(ValidationError);
              } else {
                model.compact(rev);
                expect(m.compact(rev)).toBe(model.compactRevision);
              }
              break;
            }
            case 'retention': {
              const rev = m.retentionCompactRevision(clock, act.retentionMs);
              expect(rev).toBe(model.retentionCompactRevision(clock, act.retentionMs));
              m.compact(rev);
              model.compact(rev);
              break;
            }
            case 'snapshot': {
              const bytes = m.snapshot();
              m = KvStateMachine.restore(bytes);
              expect(m.snapshot()).toEqual(bytes);
              break;
            }
            case 'check':
              fullCheck(m, model, limit);
              break;
          }
          quickCheck(m, model);
        }
        fullCheck(m, model, limit);
        // A restored copy is indistinguishable from the original.
        const restored = KvStateMachine.restore(m.snapshot());
        fullCheck(restored, model, limit);
        expect(restored.maxHistoryRevisions).toBe(m.maxHistoryRevisions);
        expect(restored.maxHistoryBytes).toBe(m.maxHistoryBytes);
      }),
      { numRuns: 300 },
    );
  });

  it('replicas fed the same log produce identical snapshots, and a restored replica continues identically', () => {
    fc.assert(
      fc.property(fc.array(genCmdArb, { maxLength: 40 }), fc.nat(40), (cmds, cut) => {
        const model = new ReferenceModel(DEFAULT_MAX_HISTORY_REVISIONS, DEFAULT_MAX_HISTORY_BYTES);
        const log = cmds.map((g, i) => {
          const c = toCommand(g, model);
          model.apply(i + 1, 1000 + i, c);
          return c;
        });
        const a = new KvStateMachine();
        let b = new KvStateMachine();
        log.forEach((c, i) => {
          a.apply(i + 1, 1000 + i, c);
          b.apply(i + 1, 1000 + i, c);
          if (i === cut) b = KvStateMachine.restore(b.snapshot());
        });
        expect(b.snapshot()).toEqual(a.snapshot());
      }),
      { numRuns: 200 },
    );
  });
});
