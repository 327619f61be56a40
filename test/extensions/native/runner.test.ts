/** Tests of native (C ABI) packages run by ExtensionRunner in worker mode: the counter example against an async host kv, hop counts, store timeouts, restarts, and load errors. */

import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ExtensionEvent } from '../../../src/extensions/api.js';
import {
  ExtensionLoadError,
  ExtensionRunner,
  LambdaError,
  resolveExtension,
  RUNNER_DEFAULTS,
  WATCH_DEFAULTS,
  type KvOp,
  type RunnerOptions,
} from '../../../src/extensions/sandbox/index.js';
import type { EffectSession } from '../../../src/extensions/sandbox/types.js';
import { FakeHost, rejection, waitFor } from '../sandbox/helpers.js';
import { buildCounterInPlace, buildFixture, COUNTER_DIR, HAVE_GCC, NO_GCC_REASON, tempDir } from './helpers.js';

if (!HAVE_GCC) console.warn(NO_GCC_REASON);

const runners: ExtensionRunner[] = [];
afterEach(async () => {
  await Promise.all(runners.splice(0).map((r) => r.stop()));
});

async function start(opts: Partial<RunnerOptions> & { modulePath: string }): Promise<ExtensionRunner> {
  const r = await ExtensionRunner.start({ name: 'native', host: new FakeHost(), mode: 'worker', ...opts });
  runners.push(r);
  return r;
}

const enc = new TextEncoder();

/** A put event at `version` with `hops`. */
function putAt(key: string, version: number, hops = 0, value = 'x'): ExtensionEvent {
  return { type: 'put', key, value: enc.encode(value), version, timestamp: 1_700_000_000_000, shard: 0, hops };
}

/** A native package folder holding a copy of `soPath` (a fresh file: one dlopen'ed library per test). */
function nativePackage(soPath: string | undefined, lib = 'lib/ext.so'): string {
  const dir = tempDir('pkg');
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'native-fixture', version: '1.0.0', kvcascade: { native: lib } }));
  if (soPath) {
    mkdirSync(join(dir, 'lib'), { recursive: true });
    copyFileSync(soPath, join(dir, lib));
  }
  return dir;
}

/**
 * A FakeHost (in-memory Map, async) whose kv calls can be held: while `hold(key)` is set, calls
 * on that key wait until `release()`. Puts with hops above `maxHops` are refused, like the node.
 */
class HoldingHost extends FakeHost {
  maxHops = 10;
  private held: string | undefined;
  private waiting: (() => void)[] = [];

  hold(key: string): void {
    this.held = key;
  }

  release(): void {
    this.held = undefined;
    for (const w of this.waiting.splice(0)) w();
  }

  /** Calls currently waiting. */
  get blocked(): number {
    return this.waiting.length;
  }

  override async kv(op: KvOp, args: unknown[], hops: number): Promise<unknown> {
    if (this.held !== undefined && args[0] === this.held) await new Promise<void>((r) => this.waiting.push(r));
    if (op === 'put' && hops > this.maxHops) {
      this.calls.push({ op, args, hops });
      throw Object.assign(new Error(`hop limit ${this.maxHops} exceeded (hops ${hops})`), { name: 'HopLimitError' });
    }
    return super.kv(op, args, hops);
  }
}

describe('resolveExtension', () => {
  it('tells a native package (package.json "kvcascade.native") from a JS one', async () => {
    const r = await resolveExtension(COUNTER_DIR);
    expect(r).toEqual({ kind: 'native', packageDir: COUNTER_DIR, library: join(COUNTER_DIR, 'build/libcounter.so') });
    const js = await resolveExtension(join(COUNTER_DIR, '../../../test/extensions/fixtures/esm-ext'));
    expect(js.kind).toBe('module');
  });

  it('rejects a "kvcascade.native" that is not a path', async () => {
    const dir = tempDir('badpkg');
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'x', kvcascade: { native: 42 } }));
    await expect(resolveExtension(dir)).rejects.toThrow(/"kvcascade.native" must be the path of the shared library/);
  });
});

describe('native packages: refused or failing loads', () => {
  it('in-process mode refuses a native package: native extensions run in worker mode only', async () => {
    const e = await rejection(start({ modulePath: COUNTER_DIR, mode: 'in-process' }));
    expect(e).toBeInstanceOf(ExtensionLoadError);
    expect(e.code).toBe('IMPORT_FAILED');
    expect(e.message).toContain('native extensions run in worker mode only');
  });

  it('IMPORT_FAILED when the declared library does not exist (not built)', async () => {
    const dir = nativePackage(undefined, 'build/libmissing.so');
    const e = await rejection(start({ modulePath: dir }));
    expect(e).toBeInstanceOf(ExtensionLoadError);
    expect(e.code).toBe('IMPORT_FAILED');
    expect(e.message).toContain(join(dir, 'build/libmissing.so'));
    expect(e.message).toMatch(/does not exist: build the package first/);
  });

  it('IMPORT_FAILED when the library is not a loadable shared library', async () => {
    const dir = nativePackage(undefined);
    mkdirSync(join(dir, 'lib'));
    writeFileSync(join(dir, 'lib/ext.so'), 'not an ELF file');
    const e = await rejection(start({ modulePath: dir }));
    expect(e.code).toBe('IMPORT_FAILED');
    expect(e.message).toMatch(/cannot load native extension .*ext\.so/);
  });
});

/**
 * A host that de-duplicates writes by their idempotency key (client session id and seq) as a shard
 * does: a write seen before is answered with its first result and not applied. `failOnce` makes the
 * next put of that key fail.
 */
class DedupingHost extends HoldingHost {
  failOnce: string | undefined;
  readonly effects: { op: KvOp; key: string; effect: EffectSession | undefined }[] = [];
  readonly deduplicated: string[] = [];
  private readonly sessions = new Map<string, unknown>();

  override async kv(op: KvOp, args: unknown[], hops: number, effect?: EffectSession): Promise<unknown> {
    const key = args[0] as string;
    if (op !== 'get') this.effects.push({ op, key, effect });
    if (op === 'put' && this.failOnce === key) {
      this.failOnce = undefined;
      throw new Error('the shard lost its leader');
    }
    const id = effect ? `${effect.id}/${effect.seq}` : undefined;
    if (id !== undefined && this.sessions.has(id)) {
      this.deduplicated.push(key);
      return this.sessions.get(id);
    }
    const result = await super.kv(op, args, hops);
    if (id !== undefined) this.sessions.set(id, result);
    return result;
  }
}

describe.skipIf(!HAVE_GCC)(HAVE_GCC ? 'native packages in an ExtensionRunner (worker mode)' : NO_GCC_REASON, () => {
  let fixtures: string;
  beforeAll(() => {
    buildCounterInPlace();
    fixtures = tempDir('fixtures');
  });

  it('runs the counter example: watches from kvc_initialize, puts counted through the host kv, hops = event.hops + 1', async () => {
    const host = new HoldingHost();
    const r = await start({ modulePath: COUNTER_DIR, host });
    expect(r.mode).toBe('worker');
    expect(r.watches).toEqual([{ id: 1, prefix: '/counter/events/', options: WATCH_DEFAULTS }]);
    expect(host.logs).toContainEqual({ level: 'info', msg: 'counter: watching /counter/events/ (abi 2)', fields: undefined });

    await r.invoke(1, putAt('/counter/events/a', 10, 0), 5000);
    await r.invoke(1, putAt('/counter/events/b', 11, 3), 5000);
    await r.invoke(1, putAt('/counter/events/a', 12, 7), 5000);
    expect(host.value('/counter/total')).toBe('3');
    expect(host.value('/counter/last-version/a')).toBe('12');
    expect(host.value('/counter/last-version/b')).toBe('11');
    // Every store call of a lambda carried the hop count of its event + 1: 4 calls per event (2 gets, 2 puts).
    expect(host.calls.map((c) => [c.op, c.args[0], c.hops])).toEqual([
      ['get', '/counter/last-version/a', 1],
      ['get', '/counter/total', 1],
      ['put', '/counter/total', 1],
      ['put', '/counter/last-version/a', 1],
      ['get', '/counter/last-version/b', 4],
      ['get', '/counter/total', 4],
      ['put', '/counter/total', 4],
      ['put', '/counter/last-version/b', 4],
      ['get', '/counter/last-version/a', 8],
      ['get', '/counter/total', 8],
      ['put', '/counter/total', 8],
      ['put', '/counter/last-version/a', 8],
    ]);
    // A redelivered event is not counted twice (the marker is read through the bridge).
    await r.invoke(1, putAt('/counter/events/a', 12, 7), 5000);
    expect(host.value('/counter/total')).toBe('3');
    expect(r.stats()).toMatchObject({ invocations: 4, errors: 0, workerRestarts: 0, inFlight: 0 });
  });

  it('native puts carry idempotency keys derived from the event: a redelivery after a failure between two puts counts once', async () => {
    const host = new DedupingHost();
    const r = await start({ modulePath: COUNTER_DIR, host });
    // The first delivery writes the total, then its marker put fails (as if the worker died there).
    host.failOnce = '/counter/last-version/a';
    await expect(r.invoke(1, putAt('/counter/events/a', 5), 5000)).rejects.toBeInstanceOf(LambdaError);
    expect(host.value('/counter/total')).toBe('1');
    expect(host.value('/counter/last-version/a')).toBeUndefined();
    // Redelivered: it reads total 1 and puts 2, but that put is the same write of the same event: answered, not applied.
    await r.invoke(1, putAt('/counter/events/a', 5), 5000);
    expect(host.value('/counter/total')).toBe('1');
    expect(host.value('/counter/last-version/a')).toBe('5');
    expect(host.deduplicated).toEqual(['/counter/total']);
    // Every put carried a session; the same event's put of a key had the same one, another event's another.
    const totals = host.effects.filter((e) => e.key === '/counter/total');
    expect(totals).toHaveLength(2);
    expect(totals[0]!.effect).toEqual(totals[1]!.effect);
    await r.invoke(1, putAt('/counter/events/a', 6), 5000);
    expect(host.value('/counter/total')).toBe('2');
    const third = host.effects.filter((e) => e.key === '/counter/total')[2]!;
    expect(third.effect?.id).not.toBe(totals[0]!.effect?.id);
    // Gets carry none.
    expect(host.calls.filter((c) => c.op === 'get').length).toBeGreaterThan(0);
    expect(host.effects.every((e) => e.op === 'put' && e.effect !== undefined)).toBe(true);
  });

  it('a put refused by the host (hop limit) makes the C lambda fail: LambdaError threw, nothing counted', async () => {
    const host = new HoldingHost();
    host.maxHops = 4;
    const r = await start({ modulePath: COUNTER_DIR, host });
    const e = await rejection(r.invoke(1, putAt('/counter/events/loop', 5, 4), 5000));
    expect(e).toBeInstanceOf(LambdaError);
    expect(e.kind).toBe('threw');
    expect(e.message).toMatch(/native lambda for "\/counter\/events\/" failed with KVC_ERR_IO/);
    expect(host.callsOn('/counter/total').map((c) => [c.op, c.hops])).toEqual([
      ['get', 5],
      ['put', 5],
    ]);
    expect(host.value('/counter/total')).toBeUndefined();
    expect(host.logs.some((l) => l.level === 'warn' && l.msg.includes('hop limit 4 exceeded'))).toBe(true);
    // Within the limit it works, in the same worker.
    await r.invoke(1, putAt('/counter/events/ok', 6, 3), 5000);
    expect(host.value('/counter/total')).toBe('1');
    expect(r.stats().workerRestarts).toBe(0);
  });

  it('passes hop count 1 for store calls made from kvc_initialize and kvc_shutdown, event.hops + 1 from lambdas', async () => {
    const dir = nativePackage(buildFixture('init-put', fixtures));
    const host = new HoldingHost();
    const r = await start({ modulePath: dir, host });
    expect(host.callsOn('/init-put/started')).toMatchObject([{ op: 'put', hops: 1 }]);
    await r.invoke(1, putAt('/init-put/in/x', 3, 9, 'payload'), 5000);
    expect(host.callsOn('/init-put/out')).toMatchObject([{ op: 'put', hops: 10 }]);
    expect(host.value('/init-put/out')).toBe('payload');
    await r.stop();
    expect(host.callsOn('/init-put/stopped')).toMatchObject([{ op: 'put', hops: 1 }]);
  });

  it('a host that does not answer in time: the store call fails with KVC_ERR_TIMEOUT (bridge timeout), the worker lives on', async () => {
    const host = new HoldingHost();
    const r = await start({ modulePath: COUNTER_DIR, host, nativeKvTimeoutMs: 200 });
    host.hold('/counter/total');
    const t0 = Date.now();
    const e = await rejection(r.invoke(1, putAt('/counter/events/slow', 1), 10_000));
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(e.kind).toBe('threw');
    expect(e.message).toContain('KVC_ERR_TIMEOUT');
    expect(host.logs.some((l) => l.level === 'warn' && l.msg.includes('KVC_ERR_TIMEOUT'))).toBe(true);
    host.release(); // the late answer is dropped by the bridge
    await r.invoke(1, putAt('/counter/events/slow', 1), 5000);
    expect(host.value('/counter/total')).toBe('1');
    expect(r.stats()).toMatchObject({ workerRestarts: 0, errors: 1 });
  });

  it('an invocation timeout while the worker is blocked in a store call kills and restarts the worker; the main side keeps working', async () => {
    const host = new HoldingHost();
    const r = await start({ modulePath: COUNTER_DIR, host, nativeKvTimeoutMs: 60_000 });
    await r.invoke(1, putAt('/counter/events/a', 1), 5000);
    host.hold('/counter/total');
    const e = await rejection(r.invoke(1, putAt('/counter/events/a', 2), 300));
    expect(e.kind).toBe('timeout');
    expect(host.blocked).toBe(1);
    await waitFor(() => r.state === 'ready' && r.stats().workerRestarts === 1, 10_000);
    host.release(); // answers a request of the dead worker: must be harmless
    await new Promise((res) => setTimeout(res, 20));
    await r.invoke(1, putAt('/counter/events/a', 3), 5000);
    await r.invoke(1, putAt('/counter/events/b', 4), 5000);
    expect(host.value('/counter/total')).toBe('3');
    expect(r.watches.map((w) => w.prefix)).toEqual(['/counter/events/']);
    expect(r.stats()).toMatchObject({ invocations: 4, errors: 1, timeouts: 1, workerRestarts: 1, inFlight: 0 });
  });

  it('stop() runs kvc_shutdown in the worker and rejects later invocations', async () => {
    const dir = nativePackage(buildFixture('probe', fixtures));
    const host = new HoldingHost();
    const r = await start({ modulePath: dir, host });
    expect(host.logs).toContainEqual({ level: 'info', msg: 'probe: initialized', fields: undefined });
    await r.stop();
    expect(host.logs).toContainEqual({ level: 'info', msg: 'probe: shutdown', fields: undefined });
    expect(r.state).toBe('stopped');
    expect((await rejection(r.invoke(1, putAt('/probe/event', 1), 1000))).kind).toBe('stopped');
  });

  it('delivers every event field to C and reports a non-zero lambda return as LambdaError threw', async () => {
    const dir = nativePackage(buildFixture('probe', fixtures));
    const host = new HoldingHost();
    const r = await start({ modulePath: dir, host });
    expect(r.watches.map((w) => w.prefix)).toEqual(['/probe/', '/probe-prev/']);
    await r.invoke(1, { type: 'trigger', key: '/probe/event', value: enc.encode('hi'), version: 9, revision: 9, previousVersion: 4, created: false, timestamp: 1234, shard: 3, hops: 2 }, 5000);
    expect(host.value('/probe/seen')).toBe(
      'type=3 key=/probe/event key_len=12 value_len=2 value=hi version=9 ts=1234 shard=3 hops=2 user_data=42 revision=9 previous_version=4 flags=2 previous_value_len=0 previous_value=',
    );
    // A watch with the previous value (host->watch_with): the option reaches the runner, the value C.
    expect(r.watches.find((w) => w.prefix === '/probe-prev/')?.options.previousValue).toBe(true);
    await r.invoke(2, { type: 'put', key: '/probe-prev/k', value: enc.encode('b'), version: 12, revision: 12, previousVersion: 10, created: false, previousValue: enc.encode('a'), timestamp: 1, shard: 3, hops: 0 }, 5000);
    expect(host.value('/probe/prev-seen')).toBe('created=0 known=1 has_prev=1 previous_version=10 previous_value=a');
    expect(host.callsOn('/probe/seen')[0]!.hops).toBe(3);
    const e = await rejection(r.invoke(1, putAt('/probe/fail', 1), 5000));
    expect(e).toBeInstanceOf(LambdaError);
    expect(e.kind).toBe('threw');
    expect(e.message).toMatch(/native lambda for "\/probe\/" failed with code 7 on put "\/probe\/fail"@1/);
    expect((e.cause as Error).name).toBe('NativeLambdaError');
    await r.invoke(1, putAt('/probe/log', 2), 5000);
    expect(host.logs).toContainEqual({ level: 'warn', msg: 'probe: warn', fields: undefined });
    expect(host.logs).toContainEqual({ level: 'error', msg: 'probe: error', fields: undefined });
  });

  it('IMPORT_FAILED for a library built for another ABI version', async () => {
    const e = await rejection(start({ modulePath: nativePackage(buildFixture('bad-abi', fixtures)) }));
    expect(e).toBeInstanceOf(ExtensionLoadError);
    expect(e.code).toBe('IMPORT_FAILED');
    expect(e.message).toMatch(/built for kvcascade native ABI version 1000, but this host speaks versions 1 to 2/);
  });

  it('IMPORT_FAILED for a library without kvc_initialize or kvc_abi_version', async () => {
    const noInit = await rejection(start({ modulePath: nativePackage(buildFixture('no-init', fixtures)) }));
    expect(noInit.code).toBe('IMPORT_FAILED');
    expect(noInit.message).toContain('does not export int kvc_initialize(const kvc_host *host)');
    const noAbi = await rejection(start({ modulePath: nativePackage(buildFixture('no-abi', fixtures)) }));
    expect(noAbi.code).toBe('IMPORT_FAILED');
    expect(noAbi.message).toContain('does not export kvc_abi_version()');
  });

  it('INITIALIZE_THREW when kvc_initialize fails', async () => {
    const e = await rejection(start({ modulePath: nativePackage(buildFixture('init-fail', fixtures)) }));
    expect(e.code).toBe('INITIALIZE_THREW');
    expect(e.message).toContain('KVC_ERR_IO');
  });

  it('validates nativeKvTimeoutMs', async () => {
    expect(RUNNER_DEFAULTS.nativeKvTimeoutMs).toBe(5000);
    await expect(start({ modulePath: COUNTER_DIR, nativeKvTimeoutMs: 0 })).rejects.toThrow(RangeError);
  });
});
