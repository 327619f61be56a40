/**
 * Seeded schedules of a WatchDispatcher against a model shard whose event history holds only its
 * last few revisions (every write, the dispatcher's own cursor and dead-letter writes included,
 * pushes the oldest out), with back-pressure, slow and failing lambdas, and failing system writes.
 * After the writes stop and everything settles, every change is either delivered or inside exactly
 * one dead-lettered compaction gap, none is both, gaps do not overlap, per-key order holds, no
 * more gaps once the writes stopped (no chase of the window's tail: a load after a long unload
 * used to write one 1-revision gap letter after another forever) and the replicated cursor
 * passes the last change. Virtual time (fake timers),
 * so a seed replays exactly: a failing seed is printed by fast-check and pinned below.
 */
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { WatchDispatcher, type DispatchHost, type DispatchWatch } from '../../src/extensions/dispatcher.js';
import type { ExtensionEvent } from '../../src/extensions/api.js';
import type { KvEvent } from '../../src/statemachine/index.js';
import { mulberry32 } from '../support/mulberry32.js';

type Sink = Parameters<DispatchHost['subscribe']>[2];


/** One schedule's knobs. */
interface Scenario {
  readonly seed: number;
  /** Revisions the shard's history holds. */
  readonly window: number;
  /** Client writes before the dispatcher starts (an unload's backlog), and after. */
  readonly before: number;
  readonly after: number;
  readonly keys: number;
  readonly maxBacklog: number;
  readonly mode: 'stateful' | 'stateless';
  /** Longest lambda run (virtual ms) and the chance a run throws. */
  readonly lambdaMs: number;
  readonly lambdaFails: number;
  /** Chance a system write (cursor, dead letter) fails while writes go on. */
  readonly writeFails: number;
}

interface Watcher {
  next: number;
  readonly sink: Sink;
  waiting: boolean;
  closed: boolean;
}

/**
 * A shard of one key space: revision r holds one write; history keeps the last `window`
 * revisions. Watches behave as the node's watch hub does: history is paged out synchronously
 * (a start already compacted is cancelled from inside subscribe), live writes are published, a
 * sink that is not writable waits for its drain, and a waiting watch that fell out of the window
 * is cancelled (compacted) when it drains.
 */
class ModelShard {
  revision = 0;
  readonly log: { revision: number; key: string; system: boolean; value: string }[] = [];
  readonly values = new Map<string, string>();
  private readonly watchers = new Set<Watcher>();
  failRate = 0;

  constructor(
    readonly window: number,
    private readonly rand: () => number,
  ) {}

  get oldest(): number {
    return Math.max(1, this.revision - this.window + 1);
  }

  write(key: string, value: string, system: boolean): void {
    this.revision++;
    this.log.push({ revision: this.revision, key, system, value });
    this.values.set(key, value);
    for (const w of [...this.watchers]) if (!w.waiting) this.pump(w);
  }

  private event(revision: number): KvEvent {
    const e = this.log[revision - 1]!;
    return { type: 'put', key: e.key, value: new Uint8Array([1]), revision, timestampMs: revision };
  }

  private pump(w: Watcher): void {
    while (!w.closed && !w.waiting && w.next <= this.revision) {
      if (w.next < this.oldest) {
        w.closed = true;
        this.watchers.delete(w);
        w.sink.canceled(`revision ${w.next} is compacted`, this.oldest);
        return;
      }
      const upTo = Math.min(this.revision, w.next + 3); // pages of a few revisions
      const events: KvEvent[] = [];
      for (let r = w.next; r <= upTo; r++) if (this.log[r - 1]!.key.startsWith('/p/')) events.push(this.event(r));
      w.next = upTo + 1;
      if (events.length > 0) {
        w.sink.events(events, upTo);
        if (!w.sink.writable()) {
          w.waiting = true;
          w.sink.onDrain(() => {
            if (w.closed) return;
            w.waiting = false;
            this.pump(w);
          });
        }
      } else w.sink.progress(upTo);
    }
  }

  subscribe(from: number, sink: Sink): { cancel(): void } {
    const w: Watcher = { next: from, sink, waiting: false, closed: false };
    this.watchers.add(w);
    this.pump(w);
    return {
      cancel: () => {
        w.closed = true;
        this.watchers.delete(w);
      },
    };
  }

  /** A system write a dispatcher makes: after a virtual moment, fails with `failRate`. */
  async system(apply: () => void): Promise<void> {
    await new Promise((r) => setTimeout(r, Math.floor(this.rand() * 3)));
    if (this.rand() < this.failRate) throw new Error('not the leader');
    apply();
  }
}

/** Runs one schedule; returns the problems found (empty: it held). */
async function runScenario(s: Scenario): Promise<string[]> {
  const rand = mulberry32(s.seed);
  const shard = new ModelShard(s.window, rand);
  const keyOf = () => `/p/k${Math.floor(rand() * s.keys)}`;
  for (let i = 0; i < s.before; i++) shard.write(keyOf(), `v${i}`, false);
  const delivered = new Map<number, string>();
  const firstRuns: { key: string; revision: number }[] = [];
  const host: DispatchHost = {
    subscribe: (_prefix, from, sink) => shard.subscribe(from, sink),
    put: (key, value) => shard.system(() => shard.write(key, new TextDecoder().decode(value), true)),
    write: (writes) =>
      shard.system(() => {
        for (const w of writes) shard.write(w.key, w.value ? new TextDecoder().decode(w.value) : '', true);
      }),
    shard: 1,
    maxHops: 8,
  };
  const watch: DispatchWatch = {
    id: 1,
    prefix: '/p/',
    options: { mode: s.mode, events: ['put', 'delete', 'trigger'], concurrency: 4, maxAttempts: 1000, retryBackoffMs: 5, timeoutMs: 10_000, maxBacklog: s.maxBacklog, previousValue: false },
  };
  const d = new WatchDispatcher(
    'x',
    watch,
    async (_id, e: ExtensionEvent) => {
      if (!firstRuns.some((f) => f.revision === e.version)) firstRuns.push({ key: e.key, revision: e.version });
      await new Promise((r) => setTimeout(r, Math.floor(rand() * s.lambdaMs)));
      if (rand() < s.lambdaFails) throw Object.assign(new Error('flaky'), { kind: 'threw' });
      delivered.set(e.version, e.key);
    },
    host,
  );
  shard.failRate = s.writeFails;
  d.start(0);
  for (let i = 0; i < s.after; i++) {
    await vi.advanceTimersByTimeAsync(Math.floor(rand() * 4));
    shard.write(keyOf(), `w${i}`, false);
  }
  const lastClient = Math.max(0, ...shard.log.filter((e) => !e.system).map((e) => e.revision));
  const gapsBefore = [...shard.values.keys()].filter((k) => k.startsWith('/_dlq/x/gap-')).length;
  // Writes stop failing; everything settles (virtual minutes at most).
  shard.failRate = 0;
  const gaps = () =>
    [...shard.values]
      .filter(([k]) => k.startsWith('/_dlq/x/gap-'))
      .map(([, v]) => JSON.parse(v) as { lostFrom: number; lostTo: number });
  const covered = (r: number) => delivered.has(r) || gaps().some((g) => g.lostFrom <= r && r <= g.lostTo);
  const clientRevs = () => shard.log.filter((e) => !e.system && e.key.startsWith('/p/')).map((e) => e.revision);
  for (let t = 0; t < 600 && !(clientRevs().every(covered) && d.stats.cursor >= lastClient); t++) await vi.advanceTimersByTimeAsync(100);
  // stop waits (on timers) for a write in flight: virtual time goes on meanwhile.
  let stopped = false;
  void d.stop(true).then(() => (stopped = true));
  for (let t = 0; t < 1000 && !stopped; t++) await vi.advanceTimersByTimeAsync(10);
  if (!stopped) return ['stop(true) never finished'];

  const problems: string[] = [];
  const g = gaps();
  const missing = clientRevs().filter((r) => !covered(r));
  if (missing.length > 0) problems.push(`${missing.length} change(s) neither delivered nor in a gap, first @${missing[0]} (cursor ${d.stats.cursor}, last ${lastClient})`);
  const both = [...delivered.keys()].filter((r) => g.some((x) => x.lostFrom <= r && r <= x.lostTo));
  if (both.length > 0) problems.push(`delivered and dead-lettered as lost: @${both.join(', @')}`);
  for (let i = 0; i < g.length; i++) for (let j = i + 1; j < g.length; j++) if (g[i]!.lostFrom <= g[j]!.lostTo && g[j]!.lostFrom <= g[i]!.lostTo) problems.push(`gaps overlap: ${JSON.stringify([g[i], g[j]])}`);
  // Once the client stops writing, only the dispatcher's own writes move the window: it may still
  // find itself out of it once (it was behind), never again and again.
  if (g.length - gapsBefore > 2) problems.push(`${g.length - gapsBefore} gap letters after the writes stopped (${g.length} in all, window ${s.window}): chasing the window`);
  if (s.mode === 'stateful') {
    const last = new Map<string, number>();
    for (const f of firstRuns) {
      if ((last.get(f.key) ?? 0) > f.revision) problems.push(`${f.key}@${f.revision} first ran after @${last.get(f.key)}: per-key order`);
      last.set(f.key, Math.max(last.get(f.key) ?? 0, f.revision));
    }
  }
  // The replicated cursor never passed a gap before its letter was written (a next leader would not know it).
  for (const letter of shard.log.filter((e) => e.key.startsWith('/_dlq/x/gap-'))) {
    const { lostFrom } = JSON.parse(letter.value) as { lostFrom: number };
    const early = shard.log.find((e) => e.key === '/_sys/cursor/x/1/p/' && e.revision < letter.revision && Number(e.value) >= lostFrom);
    if (early) problems.push(`cursor ${early.value} replicated @${early.revision} before the letter of the gap from ${lostFrom} @${letter.revision}`);
  }
  const cursor = Number(shard.values.get('/_sys/cursor/x/1/p/') ?? 0);
  if (cursor < lastClient) problems.push(`the replicated cursor ${cursor} is before the last change @${lastClient}`);
  return problems;
}

const scenario: fc.Arbitrary<Scenario> = fc.record({
  seed: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
  window: fc.integer({ min: 3, max: 30 }),
  before: fc.integer({ min: 0, max: 80 }),
  after: fc.integer({ min: 0, max: 80 }),
  keys: fc.integer({ min: 1, max: 6 }),
  maxBacklog: fc.integer({ min: 1, max: 12 }),
  mode: fc.constantFrom('stateful' as const, 'stateless' as const),
  lambdaMs: fc.integer({ min: 1, max: 20 }),
  lambdaFails: fc.constantFrom(0, 0.1, 0.3),
  writeFails: fc.constantFrom(0, 0.1, 0.4),
});

describe('WatchDispatcher over a shard with a short history window (seeded schedules)', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('every change is delivered or in exactly one gap letter; gaps are few; the cursor passes the last change', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        const problems = await runScenario(s);
        expect(problems, JSON.stringify(s)).toEqual([]);
      }),
      // KVC_WINDOW_RUNS=3000 for a longer hunt; KVC_WINDOW_SEED=<n> replays fast-check's seed.
      { numRuns: Number(process.env.KVC_WINDOW_RUNS ?? 60), ...(process.env.KVC_WINDOW_SEED ? { seed: Number(process.env.KVC_WINDOW_SEED) } : {}) },
    );
  });

  it('regression: the smallest schedule the dispatcher used to fail (4 changes before the start, a 3-revision window: 79 one-revision gap letters, cursor never moved)', async () => {
    expect(await runScenario({ seed: 1, window: 3, before: 4, after: 0, keys: 1, maxBacklog: 1, mode: 'stateful', lambdaMs: 1, lambdaFails: 0, writeFails: 0 })).toEqual([]);
  });

  it('regression: stop (unload, replacement) while a periodic cursor write was in flight left that older cursor replicated (68, last change 73)', async () => {
    expect(await runScenario({ seed: 1870867721, window: 29, before: 71, after: 1, keys: 3, maxBacklog: 5, mode: 'stateless', lambdaMs: 17, lambdaFails: 0.1, writeFails: 0 })).toEqual([]);
  });

  it('the schedule that outruns the window before the start and keeps writing (the reload after a long unload)', async () => {
    expect(await runScenario({ seed: 7, window: 5, before: 60, after: 40, keys: 3, maxBacklog: 2, mode: 'stateful', lambdaMs: 10, lambdaFails: 0.1, writeFails: 0.1 })).toEqual([]);
  });
});
