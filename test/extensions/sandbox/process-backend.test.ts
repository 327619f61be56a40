/** Tests of process isolation: lambdas in a child process, with ctx.kv back to the node, the whole memory bounded (Buffers included), timeouts and crashes killing/restarting the process, and CPU time per invocation. */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ExtensionRunner, LambdaError, type RunnerOptions } from '../../../src/extensions/sandbox/index.js';
import { FakeHost, fixture, put, rejection, waitFor } from './helpers.js';

const MIB = 1024 * 1024;
/** The compiled sandbox (`npx tsc -p tsconfig.json`), for the test that needs a node process of its own to kill. */
const DIST_SANDBOX = fileURLToPath(new URL('../../../dist/src/extensions/sandbox/index.js', import.meta.url));
const HOG = fixture('resource-hog');
const HAVE_SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].some((p) => existsSync(p));
const HAVE_PRLIMIT = ['/usr/bin/prlimit', '/bin/prlimit'].some((p) => existsSync(p));
const runners: ExtensionRunner[] = [];
afterEach(async () => {
  await Promise.all(runners.splice(0).map((r) => r.stop()));
});

async function start(opts: Partial<RunnerOptions> = {}, module = 'esm-ext'): Promise<{ runner: ExtensionRunner; host: FakeHost }> {
  const host = new FakeHost();
  const runner = await ExtensionRunner.start({ name: module, modulePath: fixture(module), host, mode: 'process', ...opts });
  runners.push(runner);
  return { runner, host };
}

/** Whether process `pid` exists and is not a zombie (dead, waiting to be reaped). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return process.platform !== 'linux';
  }
}

/** The pid of the runner's current child process (asked through the resource-hog fixture). */
async function childPid(runner: ExtensionRunner, host: FakeHost): Promise<number> {
  await runner.invoke(1, put('/hog/pid'), 5000);
  return Number(host.value('/out/pid'));
}

describe('process runner: invocations', () => {
  it('runs lambdas in another process, with ctx.kv, log and metrics going to the node', async () => {
    const { runner, host } = await start({ config: { x: true } });
    expect(runner.mode).toBe('process');
    expect(host.value('/init')).toBe('config={"x":true}');
    expect(host.logs.some((l) => l.msg === 'initialized' && l.fields?.['name'] === 'esm-ext')).toBe(true);
    await runner.invoke(1, { ...put('/in/info', 'héllo', 2), type: 'trigger' }, 5000);
    expect(JSON.parse(host.value('/out/info')!)).toEqual({
      type: 'trigger', key: '/in/info', version: 7, shard: 3, hops: 2, isU8: true, value: 'héllo', frozen: true,
    });
    const buf = Buffer.from('xxpayloadxx').subarray(2, 9);
    await runner.invoke(1, { ...put('/in/echo', '', 3), value: buf }, 5000);
    const c = host.callsOn('/out/echo').at(-1)!;
    expect(c).toMatchObject({ op: 'put', hops: 4 });
    expect(c.args[1]).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(c.args[1] as Uint8Array).toString()).toBe('payload');
    host.set('/data', 'stored');
    await runner.invoke(1, put('/in/get'), 5000);
    expect(JSON.parse(host.value('/out/get')!)).toEqual({ found: true, isU8: true, value: 'stored', version: expect.any(Number) });
    await runner.invoke(1, put('/in/kv-error'), 5000);
    expect(host.value('/out/kv-error')).toBe('UnavailableError|shard 3 unavailable|E_SHARD|true');
    await runner.invoke(1, put('/in/async', '', 5), 5000);
    expect(host.callsOn('/out/async').at(-1)).toMatchObject({ op: 'trigger', hops: 6 });
    expect(host.metrics.some((m) => m.name === 'events_total' && m.op.inc === 1)).toBe(true);
    await runner.invoke(1, put('/in/log'), 5000);
    await waitFor(() => host.logs.some((l) => l.msg === 'from lambda'));
    const e = await rejection(runner.invoke(1, put('/in/throw'), 5000));
    expect(e).toBeInstanceOf(LambdaError);
    expect(e.kind).toBe('threw');
    expect(e.message).toContain('lambda boom');
    await Promise.all([1, 2, 3].map((i) => runner.invoke(1, put(`/in/sleep/${i}`, '100'), 5000)));
    expect(runner.stats()).toMatchObject({ workerRestarts: 0, errors: 1, inFlight: 0 });
    await runner.stop();
    expect(host.value('/shutdown')).toBe('esm'); // shutdown() ran, with ctx.kv
  });

  it('a kv call that cannot be sent (uncloneable options) rejects in the lambda; the messages batched with it still go', async () => {
    const { runner, host } = await start({}, 'resource-hog');
    await Promise.all([runner.invoke(1, put('/hog/bad-kv'), 5000), runner.invoke(1, put('/hog/pid'), 5000), runner.invoke(1, put('/hog/rss'), 5000)]);
    expect(host.value('/out/bad-kv')).toMatch(/^rejected: .*could not be cloned/);
    expect(Number(host.value('/out/pid'))).toBeGreaterThan(0);
    expect(Number(host.value('/out/rss'))).toBeGreaterThan(0);
  });

  it('the lambda runs in its own process, which stop() kills', async () => {
    const { runner, host } = await start({}, 'resource-hog');
    const pid = await childPid(runner, host);
    expect(pid).not.toBe(process.pid);
    expect(running(pid)).toBe(true);
    if (process.platform === 'linux') expect(readFileSync(`/proc/${pid}/oom_score_adj`, 'latin1').trim()).toBe('1000'); // the kernel's first pick
    await runner.stop();
    expect(running(pid)).toBe(false);
  });

  it('refuses native packages (their blocking store calls need memory shared with the node)', async () => {
    const e = await rejection(start({}, '../../../extensions/native/counter'));
    expect(e).toMatchObject({ code: 'IMPORT_FAILED' });
    expect(e.message).toContain('native extensions run in worker mode only');
  });
});

describe('process runner: memory bounds', () => {
  it("a lambda growing Buffers without bound is killed past memoryLimitMb with 'out-of-memory'; the node's RSS stays flat", async () => {
    const { runner, host } = await start({ memoryLimitMb: 192 }, 'resource-hog');
    const pid = await childPid(runner, host);
    const base = process.memoryUsage.rss();
    let parentMax = base;
    const watch = setInterval(() => (parentMax = Math.max(parentMax, process.memoryUsage.rss())), 10);
    const t0 = Date.now();
    const e = await rejection(runner.invoke(1, put('/hog/buffers', '4'), 30_000)); // 4 MiB every 5 ms
    clearInterval(watch);
    expect(e).toBeInstanceOf(LambdaError);
    expect(e.kind).toBe('out-of-memory');
    expect(e.message).toMatch(/used \d+ MiB of memory \(RSS\), over its budget of 192 MiB/);
    const rss = (e as LambdaError).rssBytes!;
    expect(rss).toBeGreaterThan(192 * MIB);
    expect(rss).toBeLessThan(512 * MIB); // sampled every 100 ms: the overshoot is what 100 ms of growth allocates
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(parentMax - base, `parent grew by ${((parentMax - base) / MIB).toFixed(0)} MiB`).toBeLessThan(100 * MIB);
    await waitFor(() => !running(pid), 2000); // SIGKILLed (and reaped)
    expect(runner.stats()).toMatchObject({ outOfMemory: 1, errors: 1 });
    expect(runner.stats().peakRssBytes).toBeGreaterThan(192 * MIB);
    expect(host.logs.some((l) => l.level === 'warn' && l.msg.includes('over its memory budget'))).toBe(true);
    // The next invocation runs in a fresh process.
    const pid2 = await childPid(runner, host);
    expect(pid2).not.toBe(pid);
    expect(runner.stats().workerRestarts).toBe(1);
  });

  it('a lambda filling memory as fast as it can is killed too', async () => {
    const { runner, host } = await start({ memoryLimitMb: 128 }, 'resource-hog');
    const base = process.memoryUsage.rss();
    const e = await rejection(runner.invoke(1, put('/hog/buffers-sync', '16'), 30_000));
    expect(e.kind).toBe('out-of-memory');
    expect(process.memoryUsage.rss() - base).toBeLessThan(100 * MIB);
    await runner.invoke(1, put('/hog/rss'), 5000);
    expect(Number(host.value('/out/rss'))).toBeLessThan(128 * MIB);
  });

  it.skipIf(process.platform !== 'linux' || !HAVE_PRLIMIT)('addressSpaceLimitMb (RLIMIT_AS) makes allocations past it fail inside the lambda, however fast', async () => {
    // V8 reserves ~750 MiB of address space at start: 1536 MiB leaves the lambda ~700 MiB.
    const { runner } = await start({ addressSpaceLimitMb: 1536, memoryLimitMb: 4096 }, 'resource-hog');
    const e = await rejection(runner.invoke(1, put('/hog/buffers-sync', '16'), 30_000));
    expect(e.kind).toBe('threw');
    expect(e.message).toContain('Array buffer allocation failed');
    expect(runner.stats().peakRssBytes).toBeLessThan(1536 * MIB);
    await runner.invoke(1, put('/hog/burn', '0'), 5000); // the same process goes on
    expect(runner.stats().workerRestarts).toBe(0);
  });

  it("a lambda exhausting the V8 heap fails with 'out-of-memory' and the process restarts", async () => {
    const { runner, host } = await start({ resourceLimits: { maxOldGenerationSizeMb: 48 }, memoryLimitMb: 1024 });
    const e = await rejection(runner.invoke(1, put('/in/oom'), 30_000));
    expect(e.kind).toBe('out-of-memory');
    expect(e.message).toContain('V8 heap');
    await runner.invoke(1, put('/in/echo', 'recovered'), 5000);
    expect(host.value('/out/echo')).toBe('recovered');
  });
});

describe('process runner: CPU, timeouts and crashes', () => {
  it('reports the CPU time of each invocation and in total', async () => {
    const { runner } = await start({}, 'resource-hog');
    await runner.invoke(1, put('/hog/burn', '200'), 5000);
    const s = runner.stats();
    expect(s.lastInvocationCpuMs).toBeGreaterThanOrEqual(150);
    expect(s.lastInvocationCpuMs).toBeLessThan(1000);
    expect(s.maxInvocationCpuMs).toBe(s.lastInvocationCpuMs);
    await runner.invoke(1, put('/hog/burn', '0'), 5000);
    expect(runner.stats().lastInvocationCpuMs).toBeLessThan(50);
    expect(runner.stats().invocationCpuMs).toBeGreaterThanOrEqual(150);
    await waitFor(() => runner.stats().cpuMs >= 150, 2000); // read by the node from /proc at its next sample
    expect(runner.stats().rssBytes).toBeGreaterThan(10 * MIB);
  });

  it("a spinning lambda is killed at its timeout, the node keeps ticking, the process restarts", async () => {
    const { runner, host } = await start();
    let ticks = 0;
    const interval = setInterval(() => ticks++, 10);
    const t0 = Date.now();
    const hanging = rejection(runner.invoke(1, put('/in/hang'), 400));
    const bystander = rejection(runner.invoke(1, put('/in/sleep/b', '5000'), 10_000));
    const e = await hanging;
    const elapsed = Date.now() - t0;
    clearInterval(interval);
    expect(e.kind).toBe('timeout');
    expect(e.message).toContain('the process was killed');
    expect(elapsed).toBeGreaterThanOrEqual(395);
    expect(elapsed).toBeLessThan(1500);
    expect(ticks).toBeGreaterThan(8);
    expect((await bystander).kind).toBe('process-exited');
    await runner.invoke(1, put('/in/echo', 'alive'), 5000);
    expect(host.value('/out/echo')).toBe('alive');
    expect(runner.stats()).toMatchObject({ workerRestarts: 1, timeouts: 1, errors: 2, inFlight: 0 });
    expect(runner.stats().cpuMs).toBeGreaterThanOrEqual(100); // the spin's CPU time counts (400 ms of wall time, on a shared machine)
  });

  it("process.exit is reported as 'process-exited' with the code, and the next invocation works", async () => {
    const { runner, host } = await start();
    const e = await rejection(runner.invoke(1, put('/in/exit'), 5000));
    expect(e.kind).toBe('process-exited');
    expect(e.message).toContain('code 7');
    await runner.invoke(1, put('/in/echo', 'back'), 5000);
    expect(host.value('/out/echo')).toBe('back');
    expect(host.callsOn('/init')).toHaveLength(2); // initialize ran again in the new process
  });

  it("an uncaught error is reported with its message; a fatal signal with the signal", async () => {
    const { runner } = await start();
    const e = await rejection(runner.invoke(1, put('/in/uncaught'), 5000));
    expect(e.kind).toBe('process-exited');
    expect(e.message).toContain('async boom');
    await runner.invoke(1, put('/in/echo'), 5000);
    const { runner: hog } = await start({}, 'resource-hog');
    const s = await rejection(hog.invoke(1, put('/hog/signal'), 5000));
    expect(s.kind).toBe('process-exited');
    expect(s.message).toContain('SIGSEGV');
    await hog.invoke(1, put('/hog/burn', '0'), 5000);
  });

  it('beyond maxRestartsPerMinute the runner pauses (circuit breaker): invocations wait, resume() runs them', async () => {
    const { runner } = await start({ maxRestartsPerMinute: 1, pauseMs: 60_000 });
    expect((await rejection(runner.invoke(1, put('/in/exit'), 5000))).kind).toBe('process-exited');
    await runner.invoke(1, put('/in/echo'), 5000);
    expect((await rejection(runner.invoke(1, put('/in/exit'), 5000))).kind).toBe('process-exited');
    await waitFor(() => runner.state === 'paused');
    let done = false;
    const waiting = runner.invoke(1, put('/in/echo'), 5000).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(done).toBe(false);
    expect(runner.resume()).toBe(true);
    await waiting;
    expect(runner.breaker().state).toBe('closed');
  });
});

describe('process runner: the node dies', () => {
  it.skipIf(process.platform !== 'linux' || !HAVE_SETPRIV || !existsSync(DIST_SANDBOX))(
    'a lambda spinning in its process dies with the node when the node is SIGKILLed (setpriv --pdeathsig)',
    async () => {
      const script = `
        const { ExtensionRunner } = await import(${JSON.stringify(DIST_SANDBOX)});
        const host = { kv: async (op, args) => { if (args[0] === '/out/pid') console.log('PID ' + Buffer.from(args[1]).toString()); return { succeeded: true, version: 1 }; }, log() {}, metric() {} };
        const r = await ExtensionRunner.start({ name: 'hog', modulePath: ${JSON.stringify(HOG)}, host, mode: 'process' });
        const ev = (key, v) => ({ type: 'put', key, value: v === undefined ? undefined : new TextEncoder().encode(v), version: 1, timestamp: 0, shard: 0, hops: 0 });
        await r.invoke(1, ev('/hog/pid'), 5000);
        r.invoke(1, ev('/hog/burn', '600000'), 600000).catch(() => {});
        setInterval(() => {}, 1000);
      `;
      const node = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        const pid = await new Promise<number>((resolve, reject) => {
          let out = '';
          node.stdout.on('data', (d: Buffer) => {
            out += d.toString();
            const m = /PID (\d+)/.exec(out);
            if (m) resolve(Number(m[1]));
          });
          node.on('exit', (code) => reject(new Error(`the node script exited (code ${code})`)));
        });
        expect(running(pid)).toBe(true);
        node.kill('SIGKILL');
        await waitFor(() => !running(pid), 5000);
      } finally {
        node.kill('SIGKILL');
      }
    },
  );
});
