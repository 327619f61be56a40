/**
 * A store call a lambda makes ends before its invocation does (session ext30). The routed store
 * retries a call through a leader change until the call's deadline; that deadline used to be
 * LAMBDA_CALL_MS (10 s) from the call, never before the invocation's own timeout (default 10 s
 * from its start), so the invocation always timed out first: counted as a runner-killing failure
 * (`timeout`) towards `poison`, and on a second node (the leader changing again) dead-lettered an
 * innocent event as poison. Now the call ends KV_CALL_MARGIN_MS before the invocation would time
 * out, and the lambda fails with the store's error: an ordinary failure, retried. And a timeout
 * while a store call is overdue (the node stalled, so the call could not end in time) is not the
 * lambda's doing: not counted towards poison (culprit false); a lambda hanging on its own still is.
 * Everything runs on an injected clock: nothing waits for wall-clock time.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { WatchDispatcher, type DispatchHost, type DispatchWatch } from '../../src/extensions/dispatcher.js';
import { hostServices, LAMBDA_CALL_MS, LambdaCallDeadlineError } from '../../src/extensions/host-services.js';
import { ExtensionRunner, type IsolationMode } from '../../src/extensions/sandbox/index.js';
import { KV_CALL_MARGIN_MS } from '../../src/extensions/sandbox/call-deadline.js';
import type { LambdaKv } from '../../src/extensions/store-access.js';
import { UnavailableError } from '../../src/node/backend.js';
import { silentLogger } from '../../src/log.js';
import type { KvEvent } from '../../src/statemachine/index.js';
import { ManualScheduler } from '../support/manual-scheduler.js';
import { fixture, put } from './sandbox/helpers.js';

const TIMEOUT_MS = 10_000;

/**
 * A store whose puts of `stuckKey` wait out a leader change that outlasts them: like the routed
 * store retrying NotLeaderError, each fails with UnavailableError only at its deadline (on
 * `clock`) while `stuck` holds; every other call succeeds at once. `puts` records each put's key
 * and deadline; `called` resolves at the first put of `stuckKey`.
 */
function leaderChangeKv(clock: ManualScheduler, stuckKey: string) {
  const puts: { key: string; deadlineMs: number }[] = [];
  let onCall: () => void = () => {};
  const state = { stuck: true, called: new Promise<void>((r) => (onCall = r)) };
  const ok = { succeeded: true, version: 1, currentVersion: 1 };
  const kv: LambdaKv = {
    get: async () => ({ found: false, version: 0, timestampMs: 0 }),
    put: (key, _value, _o, _hops, deadlineMs) => {
      puts.push({ key, deadlineMs });
      if (key !== stuckKey || !state.stuck) return Promise.resolve(ok);
      onCall();
      return new Promise((_, reject) => {
        clock.setTimeout(() => reject(new UnavailableError('no leader for shard 1 before the deadline (leader change)')), deadlineMs - clock.now());
      });
    },
    delete: async () => ({ succeeded: true, deleted: true }),
    trigger: async () => {},
    txn: async () => ({ succeeded: true, revision: 1, failedCompares: [] }),
    list: async () => ({ items: [] }),
  };
  return { kv, puts, state };
}

let runner: ExtensionRunner | undefined;
afterEach(async () => {
  await runner?.stop();
  runner = undefined;
});

describe("a lambda's store call ends before its invocation times out", () => {
  it('the services: the call gets the earlier of its own deadline and the one the runner gives; a call past it is not made', async () => {
    const clock = new ManualScheduler(5_000_000);
    const { kv, puts } = leaderChangeKv(clock, '/never');
    const services = hostServices('x', { kv, maxHops: 8, log: silentLogger(), metric: () => {}, clock });
    const now = clock.now();
    await services.kv('put', ['/a', 'v'], 1);
    await services.kv('put', ['/b', 'v'], 1, undefined, now + 2_000);
    await services.kv('put', ['/c', 'v'], 1, undefined, now + LAMBDA_CALL_MS + 5_000);
    await expect(services.kv('put', ['/d', 'v'], 1, undefined, now)).rejects.toBeInstanceOf(LambdaCallDeadlineError);
    expect(puts).toEqual([
      { key: '/a', deadlineMs: now + LAMBDA_CALL_MS },
      { key: '/b', deadlineMs: now + 2_000 },
      { key: '/c', deadlineMs: now + LAMBDA_CALL_MS },
    ]);
  });

  for (const mode of ['in-process', 'worker', 'process'] as IsolationMode[]) {
    it(`${mode}: a put waiting out a leader change fails the lambda (threw) before the invocation's timeout`, async () => {
      const clock = new ManualScheduler(5_000_000);
      const { kv, puts, state } = leaderChangeKv(clock, '/out/echo');
      const host = hostServices('deadline', { kv, maxHops: 8, log: silentLogger(), metric: () => {}, clock });
      runner = await ExtensionRunner.start({ name: 'deadline', modulePath: fixture('esm-ext'), host, mode, config: {}, clock });
      const started = clock.now();
      const outcome = runner.invoke(1, put('/in/echo', 'x'), TIMEOUT_MS).then(
        () => undefined,
        (e: unknown) => e as Error & { kind?: string },
      );
      await state.called;
      // The call's deadline is the invocation's less the margin (was: 10 s from the call, i.e. at or after the invocation's).
      expect(puts.find((p) => p.key === '/out/echo')?.deadlineMs).toBe(started + TIMEOUT_MS - KV_CALL_MARGIN_MS);
      // The store gives up at that deadline; the invocation's timer (1 s later) never fires meanwhile.
      await clock.advance(TIMEOUT_MS - KV_CALL_MARGIN_MS);
      const err = await outcome;
      expect(err?.kind).toBe('threw');
      expect(err?.message).toMatch(/no leader for shard 1/);
      expect(runner.stats().timeouts).toBe(0);
    });
  }

  for (const mode of ['in-process', 'worker'] as IsolationMode[]) {
    it(`${mode}: a timeout while a store call is overdue (the store ignored its deadline: the node stalled) is not counted against the event`, async () => {
      const clock = new ManualScheduler(5_000_000);
      const { kv, state } = leaderChangeKv(clock, '/out/echo');
      const stalledKv: LambdaKv = {
        ...kv,
        put: (key, value, o, hops, deadlineMs, effect) => (key === '/out/echo' ? (void kv.put(key, value, o, hops, Number.MAX_SAFE_INTEGER, effect), new Promise(() => {})) : kv.put(key, value, o, hops, deadlineMs, effect)),
      };
      const host = hostServices('stalled', { kv: stalledKv, maxHops: 8, log: silentLogger(), metric: () => {}, clock });
      runner = await ExtensionRunner.start({ name: 'stalled', modulePath: fixture('esm-ext'), host, mode, config: {}, clock });
      const outcome = runner.invoke(1, put('/in/echo', 'x'), TIMEOUT_MS).then(
        () => undefined,
        (e: unknown) => e as Error & { kind?: string; culprit?: boolean },
      );
      await state.called;
      await clock.advance(TIMEOUT_MS);
      const err = await outcome;
      expect(err?.kind).toBe('timeout');
      expect(err?.culprit).toBe(false);
      expect(err?.message).toMatch(/store call it made was overdue/);
    });
  }

  it('worker: a lambda that hangs on its own (no store call) is still the culprit of its timeout', async () => {
    const clock = new ManualScheduler(5_000_000);
    const { kv } = leaderChangeKv(clock, '/never');
    const host = hostServices('hangs', { kv, maxHops: 8, log: silentLogger(), metric: () => {}, clock });
    runner = await ExtensionRunner.start({ name: 'hangs', modulePath: fixture('esm-ext'), host, mode: 'worker', config: {}, clock });
    const outcome = runner.invoke(1, put('/in/sleep/s', '600000'), TIMEOUT_MS).then(
      () => undefined,
      (e: unknown) => e as Error & { kind?: string; culprit?: boolean },
    );
    await clock.advance(TIMEOUT_MS);
    const err = await outcome;
    expect(err?.kind).toBe('timeout');
    expect(err?.culprit).toBe(true);
  });

  it('the dispatcher: such an event is retried as an ordinary failure, never counted towards poison, and delivered', async () => {
    const clock = new ManualScheduler(5_000_000);
    const { kv, state } = leaderChangeKv(clock, '/out/echo');
    const host = hostServices('deadline', { kv, maxHops: 8, log: silentLogger(), metric: () => {}, clock });
    runner = await ExtensionRunner.start({ name: 'deadline', modulePath: fixture('esm-ext'), host, mode: 'in-process', config: {}, clock });
    const r = runner;
    let sink: Parameters<DispatchHost['subscribe']>[2] | undefined;
    const writes: { key: string; value: string | undefined }[] = [];
    const dh: DispatchHost = {
      subscribe: (_p, _from, s) => {
        sink = s;
        return { cancel: () => {} };
      },
      put: async (key, value) => void writes.push({ key, value: new TextDecoder().decode(value) }),
      write: async (ws) => {
        for (const w of ws) writes.push({ key: w.key, value: w.value && new TextDecoder().decode(w.value) });
      },
      shard: 1,
      maxHops: 8,
      clock,
    };
    const watch: DispatchWatch = {
      id: 1,
      prefix: '/in/',
      options: { mode: 'stateful', events: ['put'], concurrency: 4, maxAttempts: 5, retryBackoffMs: 5_000, timeoutMs: TIMEOUT_MS, maxBacklog: 100, previousValue: false },
    };
    const outcomes: (string | undefined)[] = [];
    const failures: string[] = [];
    const d = new WatchDispatcher('deadline', watch, (id, ev, timeoutMs) => r.invoke(id, ev, timeoutMs), dh, { invoked: (_ms, kind) => outcomes.push(kind) }, (msg) => failures.push(msg), {
      node: 1,
      boot: 'b1',
      poisonAttempts: 3,
      poisonNodes: 2,
    });
    d.start(0);
    const ev: KvEvent = { type: 'put', key: '/in/echo', value: new TextEncoder().encode('x'), revision: 1, timestampMs: 1 };
    sink!.events([ev], 1);
    await state.called;
    // A whole invocation timeout passes on the clock: the store call fails first (the old code timed the invocation out here).
    await clock.advance(TIMEOUT_MS);
    expect(outcomes).toEqual(['threw']);
    expect(failures.filter((f) => /runner-killing/.test(f))).toEqual([]);
    expect(writes.filter((w) => w.key.startsWith('/_sys/attempt/'))).toEqual([]);
    // The leader change is over: the retry (5 s after the failure) delivers it.
    state.stuck = false;
    await clock.advance(watch.options.retryBackoffMs);
    expect(outcomes).toEqual(['threw', undefined]);
    expect(d.stats.cursor).toBe(1);
    expect(d.stats.deadLettered).toBe(0);
    expect(writes.filter((w) => w.key.startsWith('/_dlq/'))).toEqual([]);
    await d.stop(false);
  });
});
