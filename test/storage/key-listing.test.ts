/**
 * `list` served from the durable records (issue 17, the key index from the engine): pages read
 * from an engine view's latest and version records with the machine's not-yet-durable writes laid
 * over them (`KvStateMachine.listPlan` + `listFromRecords`) must equal the machine's own `list`,
 * whatever was flushed, released or compacted, on both engines.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { KvStateMachine, type Command, type ListOptions, type ListResult } from '../../src/statemachine/index.js';
import { LevelEngine, MemoryEngine, type KvEngine } from '../../src/storage/kv-engine.js';
import { EngineValueSource, listFromRecords, readStateMeta, StateRecorder } from '../../src/storage/state-store.js';
import { ValueCache } from '../../src/storage/value-cache.js';
import { commandArb, KEY_POOL } from '../statemachine/helpers.js';

const GROUP = 5;
const enc = new TextEncoder();

/** Keys with zero bytes (escaped in record keys), the shared pool, and enough keys under one prefix for pages of several engine steps. */
const KEYS: readonly string[] = [...KEY_POOL, 'a\u0000', 'a\u0000b', 'ab\u0000', ...Array.from({ length: 40 }, (_, i) => `k/${String(i).padStart(2, '0')}`)];
const PREFIXES: readonly string[] = ['', 'a', 'ab', 'a\u0000', 'b', 'k/', 'k/1', 'k/3', '\ue000', '\u{1f600}', 'zz', '\u0000'];

/** A machine writing its records to `engine`, flushing them on demand, as a node does (values released once durable). */
class Recorded {
  readonly sm = new KvStateMachine();
  private readonly recorder = new StateRecorder(GROUP);
  private index = 0;
  /** Revisions at which everything applied was flushed (durable), oldest first (none before the first flush: no `meta` yet). */
  readonly flushed: number[] = [];

  constructor(readonly engine: KvEngine) {
    this.sm.observe(this.recorder);
    this.sm.attachValues(new EngineValueSource(engine, GROUP, new ValueCache(0)));
  }

  apply(cmd: Command): void {
    this.index++;
    this.sm.apply(this.index, 1000 + this.index, cmd);
  }

  async flush(): Promise<void> {
    const ops = this.recorder.take(this.sm);
    if (ops !== undefined && ops.length > 0) await this.engine.batch(ops, { sync: true });
    if ((await readStateMeta(this.engine, GROUP)) !== undefined) this.flushed.push(this.sm.revision); // an untouched machine has written nothing yet
  }

  /** Drops from the heap the values durable at the last flush. */
  release(): void {
    if (this.flushed.length > 0) this.sm.releaseValues(this.flushed[this.flushed.length - 1]!);
  }

  /** The page from the records with the overlay since `since`, or undefined when not served. */
  async fromRecords(prefix: string, options: ListOptions, since: number): Promise<ListResult | undefined> {
    const plan = this.sm.listPlan(prefix, options, since);
    if (plan === undefined) return undefined;
    const view = this.engine.view();
    try {
      return await listFromRecords(view, GROUP, plan);
    } finally {
      await view.close();
    }
  }
}

/** Plain form of a page, values as text, for comparison. */
function plain(page: ListResult | undefined): unknown {
  if (page === undefined) return undefined;
  return { ...page, items: page.items.map((i) => ({ ...i, ...(i.value !== undefined ? { value: Buffer.from(i.value).toString('hex') } : {}) })) };
}

/** Every page of a full walk from the records equals the machine's page (same items, nextAfter, revision). */
async function expectSameWalk(r: Recorded, prefix: string, limit: number, keysOnly: boolean, since: number): Promise<number> {
  let after: string | undefined;
  let pages = 0;
  for (;;) {
    const options: ListOptions = { limit, keysOnly, ...(after !== undefined ? { after } : {}) };
    const want = r.sm.list(prefix, options);
    const got = await r.fromRecords(prefix, options, since);
    expect(plain(got), `prefix ${JSON.stringify(prefix)} after ${JSON.stringify(after)} limit ${limit} since ${since}`).toEqual(plain(want));
    pages++;
    if (want.nextAfter === undefined) return pages;
    after = want.nextAfter;
  }
}

const dirs: string[] = [];
const engines: KvEngine[] = [];
afterEach(async () => {
  for (const e of engines.splice(0)) await e.close().catch(() => {});
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

type Step = { readonly kind: 'cmd'; readonly cmd: Command } | { readonly kind: 'flush' } | { readonly kind: 'release' } | { readonly kind: 'list'; readonly prefix: string; readonly limit: number; readonly keysOnly: boolean; readonly sincePick: number; readonly after?: string };

const key = fc.constantFrom(...KEYS);
const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: commandArb(key, fc.uint8Array({ maxLength: 5 })).map((cmd) => ({ kind: 'cmd' as const, cmd })) },
  { weight: 4, arbitrary: fc.record({ type: fc.constant('put' as const), key, value: fc.uint8Array({ minLength: 1, maxLength: 5 }) }).map((cmd) => ({ kind: 'cmd' as const, cmd })) },
  { weight: 2, arbitrary: fc.constant({ kind: 'flush' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'release' as const }) },
  {
    weight: 2,
    arbitrary: fc.record(
      {
        kind: fc.constant('list' as const),
        prefix: fc.constantFrom(...PREFIXES),
        limit: fc.integer({ min: 1, max: 25 }),
        keysOnly: fc.boolean(),
        sincePick: fc.nat(),
        after: fc.constantFrom(...KEYS, ''),
      },
      { requiredKeys: ['kind', 'prefix', 'limit', 'keysOnly', 'sincePick'] },
    ),
  },
);

describe('list from the records with the overlay of writes not yet durable', () => {
  it('answers exactly what the machine lists, at any durable point at or after the compaction point (model-based, MemoryEngine)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 120 }), async (steps) => {
        const r = new Recorded(new MemoryEngine());
        for (const step of steps) {
          if (step.kind === 'cmd') r.apply(step.cmd);
          else if (step.kind === 'flush') await r.flush();
          else if (step.kind === 'release') r.release();
          else {
            const usable = r.flushed.filter((x) => x >= r.sm.compactRevision);
            const options: ListOptions = { limit: step.limit, keysOnly: step.keysOnly, ...(step.after !== undefined && step.after !== '' ? { after: step.after } : {}) };
            if (usable.length === 0) {
              // Everything flushed is older than the compaction point: the overlay cannot cover it.
              if (r.flushed.length > 0) expect(r.sm.listPlan(step.prefix, options, r.flushed[r.flushed.length - 1]!)).toBeUndefined();
              continue;
            }
            const since = usable[step.sincePick % usable.length]!;
            expect(plain(await r.fromRecords(step.prefix, options, since))).toEqual(plain(r.sm.list(step.prefix, options)));
          }
        }
        r.apply({ type: 'put', key: 'k/00', value: enc.encode('last') }); // something to flush (an empty machine writes no meta)
        await r.flush();
        r.release();
        const since = r.flushed[r.flushed.length - 1]!;
        for (const prefix of ['', 'k/', 'a']) await expectSameWalk(r, prefix, 7, false, since);
      }),
      { numRuns: 150, seed: 1703 },
    );
  });

  it('walks a prefix over several engine steps with deletions, zero-byte keys and writes not flushed, on LevelDB', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kvcascade-listing-'));
    dirs.push(dir);
    const engine = await LevelEngine.open(dir);
    engines.push(engine);
    const r = new Recorded(engine);
    for (const k of KEYS) r.apply({ type: 'put', key: k, value: enc.encode(`v-${k}`) });
    for (let i = 0; i < 40; i += 3) r.apply({ type: 'delete', key: `k/${String(i).padStart(2, '0')}` });
    await r.flush();
    r.release();
    const durable = r.sm.revision;
    // Not flushed: a new key, an overwrite, a deletion and a resurrection.
    r.apply({ type: 'put', key: 'k/05x', value: enc.encode('new') });
    r.apply({ type: 'put', key: 'k/07', value: enc.encode('again') });
    r.apply({ type: 'delete', key: 'a\u0000b' });
    r.apply({ type: 'put', key: 'k/03', value: enc.encode('back') });
    expect(r.sm.heapValueBytes()).toBeGreaterThan(0); // the overlay's values are in the heap only
    for (const limit of [1, 5, 16, 17, 100]) {
      for (const keysOnly of [false, true]) {
        for (const prefix of ['', 'k/', 'a', 'a\u0000']) await expectSameWalk(r, prefix, limit, keysOnly, durable);
      }
    }
    const first = await r.fromRecords('k/', { limit: 3 }, durable);
    expect(first?.items.map((i) => [i.key, new TextDecoder().decode(i.value)])).toEqual([
      ['k/01', 'v-k/01'],
      ['k/02', 'v-k/02'],
      ['k/03', 'back'],
    ]);
    expect(first?.nextAfter).toBe('k/03');
    expect(await expectSameWalk(r, 'k/', 4, false, durable)).toBe(Math.ceil((40 - 14 + 2) / 4));
  });

  it('is not served from records older than the overlay covers, nor without a meta record', async () => {
    const engine = new MemoryEngine();
    const r = new Recorded(engine);
    r.apply({ type: 'put', key: 'a', value: enc.encode('1') });
    const plan = r.sm.listPlan('', {}, 0)!;
    expect(plan.overlay.map(([k]) => k)).toEqual(['a']);
    expect(await listFromRecords(engine.view(), GROUP, plan)).toBeUndefined(); // nothing flushed: no meta
    await r.flush();
    r.apply({ type: 'put', key: 'b', value: enc.encode('2') });
    await r.flush();
    r.apply({ type: 'put', key: 'c', value: enc.encode('3') });
    // An overlay from revision 2 on, against records at revision 2: served; a plan made before the
    // last flush (revision 1 at most), against those records: the records are newer than the plan.
    const fresh = r.sm.listPlan('', {}, 2)!;
    expect((await listFromRecords(engine.view(), GROUP, fresh))?.items.map((i) => i.key)).toEqual(['a', 'b', 'c']);
    const stale = { ...fresh, revision: 1, appliedIndex: 1, sinceRevision: 0 };
    expect(await listFromRecords(engine.view(), GROUP, stale)).toBeUndefined();
    // Records older than the overlay's start cannot be completed by it.
    expect(await listFromRecords(engine.view(), GROUP, { ...fresh, sinceRevision: 3 })).toBeUndefined();
    expect(r.sm.listPlan('', {}, r.sm.revision + 1)).toBeUndefined();
    expect(() => r.sm.listPlan('', { limit: 0 }, 0)).toThrow(/limit/);
  });
});
