/** Tests of running lambdas in a worker: events in, ctx.kv/log/metrics out (with hop counts), thrown errors, concurrency and stop(). */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExtensionRunner, LambdaError } from '../../../src/extensions/sandbox/index.js';
import { FakeHost, fixture, put, rejection, waitFor } from './helpers.js';

describe('worker runner: invocations', () => {
  let host: FakeHost;
  let runner: ExtensionRunner;

  beforeAll(async () => {
    host = new FakeHost();
    runner = await ExtensionRunner.start({ name: 'esm', modulePath: fixture('esm-ext'), host, mode: 'worker', config: { x: true } });
  });
  afterAll(() => runner.stop());

  it('delivers the event (Uint8Array value, frozen, all fields) to the lambda', async () => {
    await runner.invoke(1, { ...put('/in/info', 'héllo', 2), type: 'trigger' }, 2000);
    expect(JSON.parse(host.value('/out/info')!)).toEqual({
      type: 'trigger', key: '/in/info', version: 7, shard: 3, hops: 2, isU8: true, value: 'héllo', frozen: true,
    });
  });

  it('passes event.hops + 1 with every kv call, bytes intact', async () => {
    const buf = Buffer.from('xxpayloadxx').subarray(2, 9); // a view into a larger buffer
    await runner.invoke(1, { ...put('/in/echo', '', 3), value: buf }, 2000);
    const c = host.callsOn('/out/echo').at(-1)!;
    expect(c.op).toBe('put');
    expect(c.hops).toBe(4);
    expect(c.args[1]).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(c.args[1] as Uint8Array).toString()).toBe('payload');
    expect(buf.toString()).toBe('payload'); // the caller's buffer is not detached
  });

  it('keeps the hop count for kv calls made from timers inside the lambda', async () => {
    await runner.invoke(1, put('/in/async', '', 5), 2000);
    const c = host.callsOn('/out/async').at(-1)!;
    expect(c).toMatchObject({ op: 'trigger', hops: 6 });
    expect(Buffer.from(c.args[1] as Uint8Array).toString()).toBe('later');
  });

  it('returns kv results with Uint8Array values to the lambda', async () => {
    host.set('/data', 'stored');
    await runner.invoke(1, put('/in/get'), 2000);
    expect(JSON.parse(host.value('/out/get')!)).toEqual({ found: true, isU8: true, value: 'stored', version: expect.any(Number) });
  });

  it('turns host kv failures into rejections keeping name, message and code', async () => {
    await runner.invoke(1, put('/in/kv-error'), 2000);
    expect(host.value('/out/kv-error')).toBe('UnavailableError|shard 3 unavailable|E_SHARD|true');
  });

  it("rejects with kind 'threw' when the lambda throws, and keeps working", async () => {
    const e = await rejection(runner.invoke(1, put('/in/throw'), 2000));
    expect(e).toBeInstanceOf(LambdaError);
    expect(e.kind).toBe('threw');
    expect(e.message).toContain('lambda boom');
    expect((e.cause as Error).stack).toContain('main.js');
    await runner.invoke(1, put('/in/echo', 'after'), 2000);
    expect(host.value('/out/echo')).toBe('after');
    expect(runner.stats().workerRestarts).toBe(0);
  });

  it('refuses ctx.watch after initialize with a clear error', async () => {
    await runner.invoke(1, put('/in/late-watch'), 2000);
    expect(host.value('/out/late-watch')).toMatch(/only be registered during initialize\(\)/);
  });

  it('forwards logs (non-cloneable fields made safe) and metric updates', async () => {
    const before = host.metrics.length;
    await runner.invoke(1, put('/in/log', 'abc'), 2000);
    await waitFor(() => host.logs.some((l) => l.msg === 'from lambda'));
    expect(host.logs.find((l) => l.msg === 'from lambda')).toEqual({
      level: 'warn', msg: 'from lambda', fields: { fn: '[Function fn]', big: '10', nested: { ok: true } },
    });
    expect(host.metrics.slice(before)).toEqual([
      { kind: 'counter', name: 'events_total', help: 'events handled', op: { inc: 1 } },
      { kind: 'histogram', name: 'value_bytes', help: 'value sizes', op: { observe: 3 } },
    ]);
  });

  it('runs invocations concurrently', async () => {
    const t0 = Date.now();
    const delays = [300, 250, 200, 150, 100, 50];
    await Promise.all(delays.map((d, i) => runner.invoke(1, put(`/in/sleep/${i}`, String(d)), 5000)));
    expect(Date.now() - t0).toBeLessThan(900); // sequential would take 1050 ms
    delays.forEach((d, i) => expect(host.value(`/out/slept//in/sleep/${i}`)).toBe(String(d)));
    expect(runner.stats().inFlight).toBe(0);
  });

  it('rejects unknown watch ids and bad timeouts with RangeError', async () => {
    await expect(runner.invoke(9, put('/in/x'), 1000)).rejects.toThrow(RangeError);
    await expect(runner.invoke(1, put('/in/x'), 0)).rejects.toThrow(RangeError);
  });

  it('counts invocations and errors', () => {
    const s = runner.stats();
    expect(s.invocations).toBeGreaterThanOrEqual(14);
    expect(s.errors).toBe(1);
    expect(s.timeouts).toBe(0);
    expect(runner.state).toBe('ready');
  });
});

describe('worker runner: stop()', () => {
  it("calls shutdown() (which may still use ctx.kv), rejects in-flight invokes with 'stopped'", async () => {
    const host = new FakeHost();
    const runner = await ExtensionRunner.start({ name: 'esm', modulePath: fixture('esm-ext'), host, mode: 'worker' });
    const inflight = rejection(runner.invoke(1, put('/in/sleep/x', '5000'), 10_000));
    await new Promise((r) => setTimeout(r, 50));
    await runner.stop();
    const e = await inflight;
    expect(e.kind).toBe('stopped');
    expect(host.value('/shutdown')).toBe('esm');
    expect(host.callsOn('/shutdown')[0]!.hops).toBe(1);
    expect(runner.state).toBe('stopped');
    expect((await rejection(runner.invoke(1, put('/in/echo'), 1000))).kind).toBe('stopped');
    await runner.stop(); // idempotent
  });

  it('calls a CommonJS shutdown() with this = module.exports', async () => {
    const host = new FakeHost();
    const runner = await ExtensionRunner.start({ name: 'cjs', modulePath: fixture('cjs-ext'), host, mode: 'worker', config: { greeting: 'yo' } });
    await runner.stop();
    expect(host.value('/shutdown')).toBe('cjs');
  });
});
