/** Tests of trusted (in-process) mode: same API on the main thread; timeouts are reported but cannot stop the lambda. */
import { afterEach, describe, expect, it } from 'vitest';
import { ExtensionRunner, LambdaError } from '../../../src/extensions/sandbox/index.js';
import { FakeHost, fixture, put, rejection } from './helpers.js';

const runners: ExtensionRunner[] = [];
afterEach(async () => {
  await Promise.all(runners.splice(0).map((r) => r.stop()));
});

async function start(): Promise<{ runner: ExtensionRunner; host: FakeHost }> {
  const host = new FakeHost();
  const runner = await ExtensionRunner.start({ name: 'trusted', modulePath: fixture('esm-ext'), host, mode: 'in-process', config: { t: 1 } });
  runners.push(runner);
  return { runner, host };
}

describe('in-process runner', () => {
  it('runs lambdas with hop counts, kv results and errors, on the main thread', async () => {
    const { runner, host } = await start();
    expect(runner.mode).toBe('in-process');
    expect(host.callsOn('/init')[0]!.hops).toBe(1);
    await runner.invoke(1, put('/in/echo', 'direct', 4), 1000);
    expect(host.callsOn('/out/echo').at(-1)).toMatchObject({ op: 'put', hops: 5 });
    expect(host.value('/out/echo')).toBe('direct');
    await runner.invoke(1, put('/in/async', '', 1), 1000);
    expect(host.callsOn('/out/async').at(-1)!.hops).toBe(2);
    await runner.invoke(1, put('/in/kv-error'), 1000);
    expect(host.value('/out/kv-error')).toBe('UnavailableError|shard 3 unavailable|E_SHARD|true');
    await runner.invoke(1, put('/in/info', 'v'), 1000);
    expect(JSON.parse(host.value('/out/info')!)).toMatchObject({ isU8: true, value: 'v', frozen: true });
  });

  it("rejects with 'threw' and keeps working", async () => {
    const { runner, host } = await start();
    const e = await rejection(runner.invoke(1, put('/in/throw'), 1000));
    expect(e).toBeInstanceOf(LambdaError);
    expect(e.kind).toBe('threw');
    expect((e.cause as Error).message).toBe('lambda boom');
    await runner.invoke(1, put('/in/echo', 'ok'), 1000);
    expect(host.value('/out/echo')).toBe('ok');
  });

  it("reports a timeout for a slow async lambda (which keeps running), without a restart", async () => {
    const { runner, host } = await start();
    const t0 = Date.now();
    const e = await rejection(runner.invoke(1, put('/in/sleep/s', '300'), 100));
    expect(e.kind).toBe('timeout');
    expect(e.message).toContain('keeps running');
    expect(Date.now() - t0).toBeLessThan(280);
    expect(runner.stats()).toMatchObject({ timeouts: 1, workerRestarts: 0, inFlight: 0 });
    // It finishes anyway: wait for its write (bounded), not for a fixed time.
    for (const end = Date.now() + 5000; host.value('/out/slept//in/sleep/s') === undefined && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(host.value('/out/slept//in/sleep/s')).toBe('300');
    expect(runner.state).toBe('ready');
  });

  it('stop() calls shutdown() and rejects in-flight invokes', async () => {
    const { runner, host } = await start();
    const inflight = rejection(runner.invoke(1, put('/in/sleep/z', '200'), 5000));
    await runner.stop();
    expect((await inflight).kind).toBe('stopped');
    expect(host.value('/shutdown')).toBe('esm');
  });
});
