// Tests of the client session table in the durable state records (src/storage/state-store.ts): the recorder keeps the
// sessions, their results, acknowledgements, expiry and eviction on disk, so a machine rebuilt from the records (after a
// crash, or a snapshot replacement cut short) deduplicates exactly as the one that wrote them; corrupt session records are refused.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvStateMachine, type Command, type KvStateMachineOptions, type WriteSession } from '../../src/statemachine/index.js';
import { type EngineOp, MemoryEngine, scanAll } from '../../src/storage/kv-engine.js';
import { stateKeyPrefix, StorageCorruptionError } from '../../src/storage/raft-log-store.js';
import type { JournalLimits } from '../../src/storage/session-journal.js';
import { encodeSnapshotFromRecords, loadState, readStateMeta, StateRecorder, stateKeys, STATE_FORMAT_VERSION, STATE_SESSIONS_FORMAT_VERSION } from '../../src/storage/state-store.js';

const GROUP = 5;
const enc = new TextEncoder();
const IDS = [0, 1, 2, 3].map((c) => `durable-client-${c}-xxxx`);

async function write(engine: MemoryEngine, ops: readonly EngineOp[]): Promise<void> {
  await engine.batch(ops, { sync: true });
}

/** Bounds of the session journal of the recorders the tests make (the model test draws them: small ones fold often). */
let journalLimits: JournalLimits = {};

async function load(engine: MemoryEngine): Promise<{ sm: KvStateMachine; rec: StateRecorder } | undefined> {
  const d = await loadState(engine, GROUP);
  if (!d) return undefined;
  return { sm: KvStateMachine.fromRecords(d.data), rec: new StateRecorder(GROUP, d.written, journalLimits) };
}

const recorder = (): StateRecorder => new StateRecorder(GROUP, undefined, journalLimits);

/** The key of the session journal record `n` of GROUP. */
function journalKey(n: number): Uint8Array {
  const out = new Uint8Array(13 + 8);
  out.set(enc.encode(`${stateKeyPrefix(GROUP)}j/`));
  new DataView(out.buffer).setBigUint64(13, BigInt(n));
  return out;
}

const same = (a: KvStateMachine, b: KvStateMachine): boolean => Buffer.from(a.snapshot()).equals(Buffer.from(b.snapshot()));

type Action =
  | { a: 'write'; c: number; retry: boolean; pick: number; ack: boolean; key: number; dt: number }
  | { a: 'noop'; dt: number }
  | { a: 'persist' }
  | { a: 'crash' }
  | { a: 'lag' }
  | { a: 'install'; unitBytes: number; cutAfter: number };

const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 12, arbitrary: fc.record({ a: fc.constant('write' as const), c: fc.nat(3), retry: fc.boolean(), pick: fc.nat(), ack: fc.boolean(), key: fc.nat(4), dt: fc.nat(400) }) },
  { weight: 2, arbitrary: fc.record({ a: fc.constant('noop' as const), dt: fc.nat(1500) }) },
  { weight: 4, arbitrary: fc.constant({ a: 'persist' as const }) },
  { weight: 2, arbitrary: fc.constant({ a: 'crash' as const }) },
  { weight: 1, arbitrary: fc.constant({ a: 'lag' as const }) },
  { weight: 2, arbitrary: fc.record({ a: fc.constant('install' as const), unitBytes: fc.integer({ min: 1, max: 400 }), cutAfter: fc.integer({ min: 0, max: 10 }) }) },
);
const journalArb: fc.Arbitrary<JournalLimits> = fc.oneof(
  fc.constant({}),
  fc.record({ maxRecords: fc.integer({ min: 0, max: 4 }), foldRecords: fc.integer({ min: 1, max: 3 }), foldOps: fc.integer({ min: 1, max: 12 }) }),
);
const optionsArb: fc.Arbitrary<KvStateMachineOptions> = fc.oneof(
  fc.constant({}),
  fc.record({ sessionTtlMs: fc.integer({ min: 0, max: 2000 }), maxSessions: fc.integer({ min: 1, max: 3 }), maxSessionResults: fc.integer({ min: 1, max: 4 }) }),
);

/** A write action of client `c` (a retry of its first write with `retry`). */
const w = (c: number, retry = false): Action => ({ a: 'write', c, retry, pick: 0, ack: false, key: 0, dt: 0 });

interface Entry {
  readonly index: number;
  readonly ts: number;
  readonly cmd: Command;
  readonly session: WriteSession | undefined;
}

describe('durable client sessions', () => {
  it('records rebuild the same session table through crashes, lag and snapshot replacement (model-based)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(actionArb, { minLength: 10, maxLength: 70 }), optionsArb, journalArb, async (actions, opts, limits) => {
        journalLimits = limits;
        let engine = new MemoryEngine();
        const log: Entry[] = [];
        const ref = new KvStateMachine(opts); // applies every entry, never touches disk
        let m = new KvStateMachine(opts); // the replica whose records are on disk
        let rec = recorder();
        m.observe(rec);
        let persisted = m.snapshot();
        let lagging = false;
        const seqs = [0, 0, 0, 0];
        const acked = [0, 0, 0, 0];
        let index = 0;
        let clock = 10_000;
        const applyTo = (sm: KvStateMachine, e: Entry) => sm.apply(e.index, e.ts, e.cmd, 'client', e.session);
        const catchUp = (): void => {
          for (const e of log) if (e.index > m.appliedIndex) applyTo(m, e);
        };
        const persist = async (): Promise<void> => {
          const unit = rec.take(m);
          if (unit) await write(engine, unit);
          persisted = m.snapshot();
          // The snapshot streamed from the records carries the sessions byte for byte as the machine encodes them.
          if (await readStateMeta(engine, GROUP)) {
            const view = engine.view();
            const streamed = await encodeSnapshotFromRecords(view, GROUP, { partBytes: 5 });
            await view.close();
            expect(Buffer.from(streamed!.data).equals(Buffer.from(persisted))).toBe(true);
          }
        };
        const adopt = (next: KvStateMachine, recorder: StateRecorder): void => {
          m.observe(undefined);
          m = next;
          rec = recorder;
          m.observe(rec);
        };
        const fresh = () => ({ sm: new KvStateMachine(opts), rec: recorder() });
        const append = (cmd: Command, session: WriteSession | undefined, dt: number): void => {
          clock += dt;
          const e = { index: ++index, ts: clock, cmd, session };
          log.push(e);
          const expected = applyTo(ref, e);
          if (!lagging) expect(applyTo(m, e)).toEqual(expected);
        };
        for (const act of actions) {
          switch (act.a) {
            case 'write': {
              const seq = act.retry && seqs[act.c]! > 0 ? 1 + (act.pick % seqs[act.c]!) : ++seqs[act.c]!;
              const cmd: Command =
                act.key === 4 ? { type: 'triggerPut', key: '/t', value: enc.encode(`${act.c}.${seq}`) } : { type: 'put', key: `/k${act.key}`, value: enc.encode(`${act.c}.${seq}`), ...(act.key === 3 ? { expectedVersion: 0, returnPrevious: true as const } : {}) };
              append(cmd, { id: IDS[act.c]!, seq, ackedBelow: Math.min(acked[act.c]!, seq) }, act.dt);
              if (act.ack) acked[act.c] = seqs[act.c]!;
              break;
            }
            case 'noop':
              append({ type: 'noop' }, undefined, act.dt);
              break;
            case 'persist':
              await persist();
              break;
            case 'crash': {
              engine = engine.crash();
              const loaded = (await load(engine)) ?? fresh();
              expect(Buffer.from(loaded.sm.snapshot()).equals(Buffer.from(persisted))).toBe(true);
              adopt(loaded.sm, loaded.rec);
              lagging = false;
              catchUp();
              break;
            }
            case 'lag':
              lagging = true;
              break;
            case 'install': {
              await persist();
              const before = m;
              before.observe(undefined);
              const target = KvStateMachine.restore(ref.snapshot());
              const units = rec.replace(before.toRecords(), target.toRecords(), { maxUnitBytes: act.unitBytes });
              if (act.cutAfter < units.length) {
                for (const u of units.slice(0, act.cutAfter)) await write(engine, u);
                engine = engine.crash();
                if (act.cutAfter > 0) expect(await readStateMeta(engine, GROUP)).toBeUndefined();
                const stale = await stateKeys(engine, GROUP);
                rec = recorder();
                for (const u of rec.replace(undefined, target.toRecords(), { deleteKeys: stale, maxUnitBytes: act.unitBytes })) await write(engine, u);
              } else {
                for (const u of units) await write(engine, u);
              }
              const loaded = (await load(engine))!;
              expect(same(loaded.sm, target)).toBe(true);
              adopt(target, rec);
              persisted = m.snapshot();
              lagging = false;
              break;
            }
          }
        }
        lagging = false;
        catchUp();
        await persist();
        expect(same(m, ref)).toBe(true);
        const final = (await load(engine)) ?? fresh();
        expect(same(final.sm, ref)).toBe(true);
        // The rebuilt machine answers retries exactly as the reference does.
        for (let c = 0; c < IDS.length; c++) {
          for (let seq = 1; seq <= seqs[c]!; seq++) {
            const e: Entry = { index: ++index, ts: clock, cmd: { type: 'put', key: '/k0', value: enc.encode('retry') }, session: { id: IDS[c]!, seq, ackedBelow: 0 } };
            expect(applyTo(final.sm, e)).toEqual(applyTo(ref, e));
          }
        }
        expect(same(final.sm, ref)).toBe(true);
      }),
      {
        numRuns: 200,
        examples: [
          // Regressions of the session journal: a replacement whose session part ended the generator without
          // flushing the journal's deletes; a base written for one life of a session id kept after a reload
          // whose journal drops it (the next life reused seq 1).
          [
            [w(0), { a: 'noop', dt: 1 }, { a: 'install', unitBytes: 1, cutAfter: 4 }, w(0), { a: 'install', unitBytes: 1, cutAfter: 9 }, w(0), w(0), { a: 'noop', dt: 0 }, w(0), w(0), w(0), w(0), { a: 'persist' }, { a: 'crash' }, w(0)],
            { sessionTtlMs: 0, maxSessions: 1, maxSessionResults: 1 },
            {},
          ],
          [
            [w(0), { a: 'crash' }, { a: 'noop', dt: 0 }, { a: 'install', unitBytes: 1, cutAfter: 0 }, w(0), w(1), { a: 'persist' }, { a: 'crash' }, w(0, true), w(0, true), { a: 'install', unitBytes: 1, cutAfter: 0 }],
            { sessionTtlMs: 0, maxSessions: 1, maxSessionResults: 1 },
            { maxRecords: 1, foldRecords: 2, foldOps: 6 },
          ],
        ],
      },
    );
    journalLimits = {};
  });

  it('a round writes one session journal record however many session writes it applies (no header or result records), and the records load back the same', async () => {
    const engine = new MemoryEngine();
    const m = new KvStateMachine();
    const rec = recorder();
    m.observe(rec);
    for (let i = 1; i <= 10; i++) {
      m.apply(i, 100 + i, { type: 'put', key: `/k${i}`, value: enc.encode('v') }, 'client', { id: IDS[i % 2]!, seq: i, ackedBelow: Math.max(1, i - 3) });
    }
    const unit = rec.take(m)!;
    const tags = unit.map((op) => `${op.type} ${Buffer.from(op.key as Uint8Array).toString('latin1').slice(11, 13)}`);
    const count = (t: string) => tags.filter((x) => x === t).length;
    // 10 puts: a version and a latest each; then the round's journal record, revision block and meta.
    expect([count('put v/'), count('put l/'), count('put j/'), count('put r/'), count('put me'), unit.length]).toEqual([10, 10, 1, 1, 1, 23]);
    await write(engine, unit);
    const back = (await load(engine))!;
    expect(same(back.sm, m)).toBe(true);
  });

  it('a restart from the records keeps deduplicating: the repeat consumes no revision', async () => {
    let engine = new MemoryEngine();
    const m = new KvStateMachine();
    const rec = recorder();
    m.observe(rec);
    const session = { id: IDS[0]!, seq: 1, ackedBelow: 0 };
    const first = m.apply(1, 100, { type: 'put', key: '/k', value: enc.encode('v') }, 'client', session);
    await write(engine, rec.take(m)!);
    const rows = async (tag: string) => (await scanAll(engine, { prefix: `${stateKeyPrefix(GROUP)}${tag}/` })).length;
    expect([await rows('c'), await rows('d'), await rows('j')]).toEqual([0, 0, 1]);
    engine = engine.crash();
    const back = (await load(engine))!;
    const again = back.sm.apply(2, 200, { type: 'put', key: '/k', value: enc.encode('v') }, 'client', session);
    expect(again.duplicate).toBe(true);
    expect(again.result).toEqual(first.result);
    expect(back.sm.revision).toBe(1);
    // Acknowledging is part of the next journal record; with default limits the meta keeps the old format.
    back.sm.observe(back.rec);
    back.sm.apply(3, 300, { type: 'put', key: '/k', value: enc.encode('w') }, 'client', { id: IDS[0]!, seq: 2, ackedBelow: 2 });
    await write(engine, back.rec.take(back.sm)!);
    expect([await rows('c'), await rows('d'), await rows('j')]).toEqual([0, 0, 2]);
    const third = (await load(engine))!;
    expect(third.sm.session(IDS[0]!)!.results.map(([q]) => q)).toEqual([2]);
    expect(third.sm.apply(4, 400, { type: 'put', key: '/k', value: enc.encode('w') }, 'client', { id: IDS[0]!, seq: 2, ackedBelow: 2 }).duplicate).toBe(true);
    expect((await engine.get(new TextEncoder().encode(`${stateKeyPrefix(GROUP)}meta`)))![0]).toBe(STATE_FORMAT_VERSION);
    const custom = new KvStateMachine({ maxSessions: 7 });
    const crec = new StateRecorder(GROUP + 1);
    custom.observe(crec);
    custom.apply(1, 1, { type: 'noop' });
    const e2 = new MemoryEngine();
    await write(e2, crec.take(custom)!);
    expect((await e2.get(new TextEncoder().encode(`${stateKeyPrefix(GROUP + 1)}meta`)))![0]).toBe(STATE_SESSIONS_FORMAT_VERSION);
    expect(KvStateMachine.fromRecords((await loadState(e2, GROUP + 1))!.data).maxSessions).toBe(7);
  });

  it('detects corrupt session records', async () => {
    const build = async (): Promise<MemoryEngine> => {
      const m = new KvStateMachine();
      const rec = new StateRecorder(GROUP, undefined, { maxRecords: 0 }); // folds every round: base records only
      m.observe(rec);
      m.apply(1, 100, { type: 'put', key: '/a', value: enc.encode('1') }, 'client', { id: IDS[0]!, seq: 1, ackedBelow: 0 });
      m.apply(2, 200, { type: 'put', key: '/b', value: enc.encode('2') }, 'client', { id: IDS[1]!, seq: 4, ackedBelow: 0 });
      const engine = new MemoryEngine();
      await write(engine, rec.take(m)!);
      return engine;
    };
    const find = (keys: Uint8Array[], part: string) => keys.find((k) => Buffer.from(k).toString('latin1').includes(part))!;
    const corruptions: Array<(e: MemoryEngine, keys: Uint8Array[]) => Promise<void>> = [
      // a result whose session header is lost
      async (e, keys) => write(e, [{ type: 'del', key: find(keys, `/c/${IDS[0]}`) }]),
      // a garbled result
      async (e, keys) => write(e, [{ type: 'put', key: find(keys, `/d/${IDS[1]}`), value: Uint8Array.of(42) }]),
      // a header claiming activity after the applied index
      async (e, keys) => write(e, [{ type: 'put', key: find(keys, `/c/${IDS[1]}`), value: Uint8Array.of(0, 9, 0xc8, 0x01) }]),
      // a result below the session's floor
      async (e, keys) => write(e, [{ type: 'put', key: find(keys, `/c/${IDS[1]}`), value: Uint8Array.of(5, 2, 0xc8, 0x01) }]),
      // an invalid session id
      async (e) => write(e, [{ type: 'put', key: `${stateKeyPrefix(GROUP)}c/bad id`, value: Uint8Array.of(0, 1, 1) }]),
      // a garbled journal record, one of an unknown format, one with a bad key
      async (e) => write(e, [{ type: 'put', key: journalKey(9), value: Uint8Array.of(1, 1, 1, 3, 0x61) }]),
      async (e) => write(e, [{ type: 'put', key: journalKey(9), value: Uint8Array.of(7, 0) }]),
      async (e) => write(e, [{ type: 'put', key: `${stateKeyPrefix(GROUP)}j/x`, value: Uint8Array.of(1, 0) }]),
      // a journal record making a session active after the applied index
      async (e) => write(e, [{ type: 'put', key: journalKey(9), value: Uint8Array.of(1, 1, 1, IDS[0]!.length, ...enc.encode(IDS[0]!), 0, 9, 0xc8, 0x01, 0) }]),
    ];
    for (const [i, corrupt] of corruptions.entries()) {
      const engine = await build();
      await corrupt(engine, await stateKeys(engine, GROUP));
      const err = await loadState(engine, GROUP).then(() => undefined, (e: unknown) => e);
      expect(err, `corruption ${i}`).toBeInstanceOf(StorageCorruptionError);
    }
    expect(await loadState(await build(), GROUP)).toBeDefined();
    // An empty journal record is well-formed.
    const ok = await build();
    await write(ok, [{ type: 'put', key: journalKey(2), value: Uint8Array.of(1, 0) }]);
    expect(await loadState(ok, GROUP)).toBeDefined();
  });
});
