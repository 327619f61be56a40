/** Tests of worker failures: timeouts (terminate + restart, main thread stays responsive), out-of-memory, process.exit, uncaught errors, the restart budget and watch changes on restart. */
import { afterEach, describe, expect, it } from 'vitest';
import { ExtensionRunner, LambdaError, type RunnerOptions } from '../../../src/extensions/sandbox/index.js';
import { FakeHost, fixture, put, rejection, waitFor } from './helpers.js';

const runners: ExtensionRunner[] = [];
afterEach(async () => {
  await Promise.all(runners.splice(0).map((r) => r.stop()));
});

async function start(opts: Partial<RunnerOptions> = {}): Promise<{ runner: ExtensionRunner; host: FakeHost }> {
  const host = new FakeHost();
  const runner = await ExtensionRunner.start({ name: 'esm', modulePath: fixture('esm-ext'), host, mode: 'worker', ...opts });
  runners.push(runner);
  return { runner, host };
}

const blame = (e: unknown) => (e as LambdaError).culprit;

describe('worker runner: failures', () => {
  it("a hanging lambda times out within ~timeoutMs, the main thread keeps ticking, the worker restarts", async () => {
    const { runner, host } = await start();
    let ticks = 0;
    let last = Date.now();
    let maxGap = 0;
    const interval = setInterval(() => {
      ticks++;
      maxGap = Math.max(maxGap, Date.now() - last);
      last = Date.now();
    }, 10);
    const t0 = Date.now();
    const hanging = rejection(runner.invoke(1, put('/in/hang'), 400));
    const bystander = rejection(runner.invoke(1, put('/in/sleep/b', '5000'), 10_000));
    const e = await hanging;
    const elapsed = Date.now() - t0;
    clearInterval(interval);
    expect(e).toBeInstanceOf(LambdaError);
    expect(e.kind).toBe('timeout');
    expect(e.message).toContain('400 ms');
    expect(elapsed).toBeGreaterThanOrEqual(395);
    expect(elapsed).toBeLessThan(1500);
    // ~40 ticks expected: the event loop was never blocked by the spinning lambda (generous bounds for loaded CI machines)
    expect(ticks, `ticks=${ticks} maxGap=${maxGap}`).toBeGreaterThan(8);
    expect(maxGap, `ticks=${ticks} maxGap=${maxGap}`).toBeLessThan(300);
    expect((await bystander).kind).toBe('worker-crashed');
    // the next invoke waits for the restarted worker, then succeeds
    await runner.invoke(1, put('/in/echo', 'alive'), 5000);
    expect(host.value('/out/echo')).toBe('alive');
    expect(runner.stats()).toMatchObject({ workerRestarts: 1, timeouts: 1, errors: 2, inFlight: 0 });
    expect(host.callsOn('/init')).toHaveLength(2); // initialize ran again
    expect(host.logs.some((l) => l.level === 'warn' && l.msg.includes('restarting'))).toBe(true);
  });

  it("an out-of-memory lambda rejects with 'out-of-memory' and the worker restarts", async () => {
    const { runner, host } = await start({ resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 8 } });
    const e = await rejection(runner.invoke(1, put('/in/oom'), 15_000));
    expect(e.kind).toBe('out-of-memory');
    await runner.invoke(1, put('/in/echo', 'recovered'), 5000);
    expect(host.value('/out/echo')).toBe('recovered');
    expect(runner.stats().workerRestarts).toBe(1);
  });

  it("process.exit in a lambda rejects with 'worker-crashed' and the worker restarts", async () => {
    const { runner, host } = await start();
    const e = await rejection(runner.invoke(1, put('/in/exit'), 5000));
    expect(e.kind).toBe('worker-crashed');
    expect(e.message).toContain('code 7');
    await runner.invoke(1, put('/in/echo', 'back'), 5000);
    expect(host.value('/out/echo')).toBe('back');
  });

  it("an uncaught asynchronous error rejects in-flight invokes with 'worker-crashed'", async () => {
    const { runner } = await start();
    const e = await rejection(runner.invoke(1, put('/in/uncaught'), 5000));
    expect(e.kind).toBe('worker-crashed');
    expect(e.message).toContain('async boom');
    await runner.invoke(1, put('/in/echo'), 5000);
  });

  it('invokes made while restarting wait for the new worker', async () => {
    const { runner, host } = await start();
    const crash = rejection(runner.invoke(1, put('/in/exit'), 5000));
    await crash;
    expect(runner.state).toBe('restarting');
    const results = await Promise.all([1, 2, 3].map(() => runner.invoke(1, put('/in/count'), 5000)));
    expect(results).toEqual([undefined, undefined, undefined]);
    expect(host.value('/out/count')).toBe('3'); // counted by the fresh worker
  });

  it('beyond maxRestartsPerMinute the circuit breaker opens: invocations wait (none rejected), a half-open trial closes it', async () => {
    const paused: number[] = [];
    let resumed = 0;
    const { runner, host } = await start({ maxRestartsPerMinute: 1, pauseMs: 400, observer: { paused: (_r, at) => paused.push(at), resumed: () => resumed++ } });
    expect((await rejection(runner.invoke(1, put('/in/exit'), 5000))).kind).toBe('worker-crashed');
    await runner.invoke(1, put('/in/echo'), 5000); // one restart allowed
    expect((await rejection(runner.invoke(1, put('/in/exit'), 5000))).kind).toBe('worker-crashed');
    await waitFor(() => runner.state === 'paused');
    expect(runner.failureReason).toContain('restarts within a minute');
    const b = runner.breaker();
    expect(b.state).toBe('open');
    expect(b.retryAtMs).toBeGreaterThan(Date.now());
    expect(paused).toHaveLength(1);
    expect(host.logs.some((l) => l.level === 'error' && l.msg.includes('extension paused'))).toBe(true);
    // Waits instead of failing; runs once the half-open trial closes the breaker.
    let settled = false;
    const waiting = runner.invoke(1, put('/in/echo', 'later'), 5000).then(() => (settled = true));
    await new Promise((r) => setTimeout(r, 150));
    expect(settled).toBe(false);
    await waiting;
    expect(host.value('/out/echo')).toBe('later');
    await waitFor(() => runner.breaker().state === 'closed');
    expect(resumed).toBe(1);
    expect(runner.state).toBe('ready');
  });

  it('a failing half-open trial opens the breaker again for longer; resume() closes it at once', async () => {
    const { runner } = await start({ maxRestartsPerMinute: 0, pauseMs: 300 });
    expect((await rejection(runner.invoke(1, put('/in/exit'), 5000))).kind).toBe('worker-crashed');
    await waitFor(() => runner.state === 'paused');
    const first = runner.breaker();
    // The trial crashes the worker again: paused for twice as long.
    const trial = rejection(runner.invoke(1, put('/in/exit'), 5000));
    expect((await trial).kind).toBe('worker-crashed');
    await waitFor(() => runner.state === 'paused' && runner.breaker().opened === 2);
    const second = runner.breaker();
    expect(second.retryAtMs! - Date.now()).toBeGreaterThan(350);
    expect(second.reason).toContain('half-open trial failed');
    expect(first.opened).toBe(1);
    expect(runner.resume()).toBe(true);
    await runner.invoke(1, put('/in/echo', 'now'), 5000);
    expect(runner.breaker().state).toBe('closed');
    expect(runner.resume()).toBe(false);
  });

  it('a worker that dies with several invocations running blames none; each of them then runs alone, which tells the culprit', async () => {
    const { runner, host } = await start();
    const innocent = rejection(runner.invoke(1, put('/in/sleep/i', '400'), 5000));
    await new Promise((r) => setTimeout(r, 50));
    const bad = rejection(runner.invoke(1, put('/in/exit'), 5000));
    const [e1, e2] = await Promise.all([innocent, bad]);
    expect([e1.kind, e2.kind]).toEqual(['worker-crashed', 'worker-crashed']);
    expect([blame(e1), blame(e2)]).toEqual([undefined, undefined]);
    // Again, together: each runs alone (the innocent one first), so the crash blames the right one.
    const t0 = Date.now();
    const again = runner.invoke(1, put('/in/sleep/i', '400'), 5000);
    const badAgain = rejection(runner.invoke(1, put('/in/exit'), 5000));
    await again;
    expect(host.value('/out/slept//in/sleep/i')).toBe('400');
    const e = await badAgain;
    expect(e.kind).toBe('worker-crashed');
    expect(blame(e)).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(390);
    // A hang that times out is the culprit; what ran beside it is collateral.
    await waitFor(() => runner.state === 'ready');
    const by = rejection(runner.invoke(1, put('/in/sleep/b', '5000'), 10_000));
    const hang = rejection(runner.invoke(1, put('/in/hang'), 300));
    expect(blame(await hang)).toBe(true);
    expect(blame(await by)).toBe(false);
  });

  it('a restart that registers different watches counts as a failed restart', async () => {
    const host = new FakeHost();
    host.set('/boot', '1');
    const runner = await ExtensionRunner.start({ name: 'chg', modulePath: fixture('changing-watches'), host, mode: 'worker', maxRestartsPerMinute: 2 });
    runners.push(runner);
    expect(runner.watches.map((w) => w.prefix)).toEqual(['/v1/']);
    host.set('/boot', '2');
    expect((await rejection(runner.invoke(1, put('/v1/crash'), 5000))).kind).toBe('worker-crashed');
    await waitFor(() => runner.state === 'paused', 10_000);
    expect(host.logs.some((l) => l.msg.includes('watch 1 changed after the restart'))).toBe(true);
    expect(runner.stats().workerRestarts).toBe(2);
  });

  it('stop() during a restart terminates the new worker', async () => {
    const { runner } = await start();
    await rejection(runner.invoke(1, put('/in/exit'), 5000));
    const queued = rejection(runner.invoke(1, put('/in/echo'), 5000));
    await runner.stop();
    expect((await queued).kind).toBe('stopped');
    expect(runner.state).toBe('stopped');
  });
});
