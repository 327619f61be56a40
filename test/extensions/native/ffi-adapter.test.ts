/** Tests of the koffi adapter on the test's own thread: the counter example, load errors, lambda failures and every host function. */

import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ExtensionModule } from '../../../src/extensions/api.js';
import { KVC_ABI_VERSION, KvcEventFlag, KvcEventType, KvcLogLevel, KvcStatus } from '../../../src/extensions/native/abi.js';
import {
  loadNativeExtension,
  loadNativeExtensionPackage,
  NativeExtensionError,
  NativeLambdaError,
  resolveNativeLibrary,
} from '../../../src/extensions/native/ffi-adapter.js';
import { SyncKvError, type SyncKv } from '../../../src/extensions/native/sync-kv-bridge.js';
import {
  buildCounter,
  buildFixture,
  fakeContext,
  HAVE_GCC,
  MemoryKv,
  memorySyncKv,
  NATIVE_DIR,
  NO_GCC_REASON,
  putEvent,
  tempDir,
} from './helpers.js';

if (!HAVE_GCC) console.warn(NO_GCC_REASON);

const text = (s: string) => new TextEncoder().encode(s);

/** Modules initialized by a test, shut down after it (the libraries keep global state). */
const live: ExtensionModule[] = [];
afterEach(async () => {
  for (const m of live.splice(0)) await m.shutdown?.();
});

describe.skipIf(!HAVE_GCC)(HAVE_GCC ? 'the counter example (built with make)' : NO_GCC_REASON, () => {
  let soPath: string;
  beforeAll(() => {
    soPath = buildCounter(tempDir('counter'));
  });

  async function counter(syncKv?: SyncKv) {
    const kv = new MemoryKv();
    const ctx = fakeContext(kv);
    const mod = loadNativeExtension(soPath, { syncKv: syncKv ?? memorySyncKv(kv) });
    await mod.initialize(ctx);
    live.push(mod);
    return { kv, ctx, mod };
  }

  it('watches /counter/events/ and counts every put into /counter/total', async () => {
    const { kv, ctx } = await counter();
    expect(ctx.watches.map((w) => w.prefix)).toEqual(['/counter/events/']);
    expect(ctx.logs).toContainEqual({ level: 'info', msg: `counter: watching /counter/events/ (abi ${KVC_ABI_VERSION})` });
    for (let i = 1; i <= 5; i++) await ctx.deliver(putEvent(`/counter/events/e${i % 2}`, `hit ${i}`, 10 + i));
    expect(kv.text('/counter/total')).toBe('5');
    expect(kv.text('/counter/last-version/e1')).toBe('15');
    expect(kv.text('/counter/last-version/e0')).toBe('14');
  });

  it('is idempotent per event: a redelivered put is not counted twice', async () => {
    const { kv, ctx } = await counter();
    await ctx.deliver(putEvent('/counter/events/a', 'x', 7));
    await ctx.deliver(putEvent('/counter/events/a', 'x', 7));
    await ctx.deliver(putEvent('/counter/events/a', 'x', 3)); // older than what was counted for this key
    expect(kv.text('/counter/total')).toBe('1');
    expect(ctx.logs.filter((l) => l.level === 'debug' && l.msg.includes('already counted'))).toHaveLength(2);
    // The marker is per key: a smaller version of another key (another shard, say) still counts.
    await ctx.deliver(putEvent('/counter/events/b', 'x', 2));
    expect(kv.text('/counter/total')).toBe('2');
  });

  it('ignores deletes and triggers', async () => {
    const { kv, ctx } = await counter();
    await ctx.deliver({ type: 'delete', key: '/counter/events/a', value: undefined, version: 4, timestamp: 0, shard: 0, hops: 0 });
    await ctx.deliver({ ...putEvent('/counter/events/a', 'x', 5), type: 'trigger' });
    expect(kv.text('/counter/total')).toBeUndefined();
  });

  it('continues from an existing total', async () => {
    const { kv, ctx } = await counter();
    kv.data.set('/counter/total', { value: text('41'), version: 1 });
    await ctx.deliver(putEvent('/counter/events/a', 'x', 9));
    expect(kv.text('/counter/total')).toBe('42');
  });

  it('fails the event (so the host retries) when /counter/total is not a number', async () => {
    const { kv, ctx } = await counter();
    kv.data.set('/counter/total', { value: text('forty'), version: 1 });
    const err = await ctx.deliver(putEvent('/counter/events/a', 'x', 9)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NativeLambdaError);
    expect((err as NativeLambdaError).code).toBe(KvcStatus.ERR_INVALID);
    expect(ctx.logs).toContainEqual({ level: 'error', msg: 'counter: /counter/total does not hold a decimal number' });
  });

  it('without syncKv, host->get returns KVC_ERR_UNSUPPORTED and the lambda fails', async () => {
    const kv = new MemoryKv();
    const ctx = fakeContext(kv);
    const mod = loadNativeExtension(soPath);
    await mod.initialize(ctx);
    live.push(mod);
    await expect(ctx.deliver(putEvent('/counter/events/a', 'x', 1))).rejects.toMatchObject({ code: KvcStatus.ERR_UNSUPPORTED });
    expect(ctx.logs.some((l) => l.level === 'warn' && l.msg.includes('without syncKv'))).toBe(true);
    expect(kv.data.size).toBe(0);
  });

  it('passes store failures to C as error codes', async () => {
    const failing: SyncKv = {
      get: () => {
        throw new SyncKvError(KvcStatus.ERR_TIMEOUT, 'no answer');
      },
      put: () => ({ version: 1 }),
    };
    const { ctx } = await counter(failing);
    await expect(ctx.deliver(putEvent('/counter/events/a', 'x', 1))).rejects.toMatchObject({ code: KvcStatus.ERR_TIMEOUT });
    expect(ctx.logs.some((l) => l.level === 'warn' && l.msg.includes('KVC_ERR_TIMEOUT: no answer'))).toBe(true);
  });

  it('finds the library through the package.json "kvcascade.native" field', () => {
    const dir = join(NATIVE_DIR, 'counter');
    expect(resolveNativeLibrary(dir)).toBe(join(dir, 'build/libcounter.so'));
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { kvcascade: { native: string } };
    expect(manifest.kvcascade.native).toBe('build/libcounter.so');
    expect(() => loadNativeExtensionPackage(NATIVE_DIR)).toThrow(/cannot read .*package\.json/);
  });
});

describe.skipIf(!HAVE_GCC)(HAVE_GCC ? 'load errors' : NO_GCC_REASON, () => {
  let dir: string;
  beforeAll(() => {
    dir = tempDir('fixtures');
  });

  it('refuses a library built for another ABI version, saying which', () => {
    const so = buildFixture('bad-abi', dir);
    const err = (() => {
      try {
        loadNativeExtension(so);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(NativeExtensionError);
    expect((err as Error).message).toMatch(
      new RegExp(`built for kvcascade native ABI version ${KVC_ABI_VERSION + 998}, but this host speaks versions 1 to ${KVC_ABI_VERSION}: rebuild`),
    );
  });

  it('loads a library built for ABI version 1 and speaks version 1 to it (host->abi_version 1; the appended fields unread)', async () => {
    const so = buildFixture('abi1', dir);
    const kv = new MemoryKv();
    const ctx = fakeContext(kv);
    const mod = loadNativeExtension(so, { syncKv: memorySyncKv(kv) });
    await mod.initialize(ctx); // kvc_initialize fails unless host->abi_version is 1
    live.push(mod);
    await ctx.deliver(putEvent('/abi1/in/x', 'v', 3, { revision: 3, previousVersion: 0, created: true }));
    expect(kv.text('/abi1/seen')).toBe('/abi1/in/x');
  });

  it('refuses a library without kvc_initialize', () => {
    const so = buildFixture('no-init', dir);
    expect(() => loadNativeExtension(so)).toThrow(/does not export int kvc_initialize\(const kvc_host \*host\)/);
  });

  it('refuses a library without kvc_abi_version', () => {
    const so = buildFixture('no-abi', dir);
    expect(() => loadNativeExtension(so)).toThrow(/is not a kvcascade native extension: it does not export kvc_abi_version\(\)/);
  });

  it('refuses a missing file and a file that is not a shared library', () => {
    expect(() => loadNativeExtension(join(dir, 'nope.so'))).toThrow(/nope\.so does not exist/);
    const notALib = join(dir, 'not-a-lib.so');
    copyFileSync(join(NATIVE_DIR, 'kvcascade.h'), notALib);
    expect(() => loadNativeExtension(notALib)).toThrow(NativeExtensionError);
    expect(() => loadNativeExtension(notALib)).toThrow(/cannot load native extension/);
  });

  it('reports a failing kvc_initialize with its code, and disables what it registered', async () => {
    const so = buildFixture('init-fail', dir);
    const ctx = fakeContext(new MemoryKv());
    const mod = loadNativeExtension(so);
    await expect(async () => mod.initialize(ctx)).rejects.toThrow(/kvc_initialize of .*init-fail\.so failed with KVC_ERR_IO/);
    expect(ctx.watches).toHaveLength(1);
    await expect(ctx.deliver(putEvent('/init-fail/x', 'v', 1))).rejects.toThrow(/is not initialized/);
  });
});

describe.skipIf(!HAVE_GCC)(HAVE_GCC ? 'the host functions (probe fixture)' : NO_GCC_REASON, () => {
  let so: string;
  beforeAll(() => {
    so = buildFixture('probe', tempDir('probe'));
  });

  async function probe(syncKv?: SyncKv | 'none', watchOptions?: { mode: 'stateful' | 'stateless' }) {
    const kv = new MemoryKv();
    const ctx = fakeContext(kv);
    const mod = loadNativeExtension(so, { syncKv: syncKv === 'none' ? undefined : (syncKv ?? memorySyncKv(kv)), watchOptions });
    await mod.initialize(ctx);
    live.push(mod);
    return { kv, ctx, mod };
  }

  it('a C lambda returning non-zero makes the JS lambda throw NativeLambdaError', async () => {
    const { ctx } = await probe();
    const ev = putEvent('/probe/fail', 'v', 12);
    const err = await ctx.deliver(ev).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NativeLambdaError);
    expect(err).toMatchObject({ code: 7, prefix: '/probe/', event: ev });
    expect((err as Error).message).toBe('native lambda for "/probe/" failed with code 7 on put "/probe/fail"@12');
  });

  it('converts every ExtensionEvent field into kvc_event, and passes user_data back', async () => {
    const { kv, ctx } = await probe();
    const value = text('xhéllo!!').subarray(1, 7); // a view into a larger buffer: "héllo" (6 bytes)
    await ctx.deliver({ type: 'trigger', key: '/probe/event', value, version: 2 ** 40, revision: 2 ** 40, previousVersion: 17, created: false, timestamp: 1_700_000_123_456, shard: 3, hops: 2 });
    expect(kv.text('/probe/seen')).toBe(
      `type=${KvcEventType.trigger} key=/probe/event key_len=12 value_len=6 value=héllo version=${2 ** 40} ts=1700000123456 shard=3 hops=2 user_data=42` +
        ` revision=${2 ** 40} previous_version=17 flags=${KvcEventFlag.PREVIOUS_KNOWN} previous_value_len=0 previous_value=`,
    );
    await ctx.deliver({ type: 'delete', key: '/probe/event', value: undefined, version: 5, timestamp: 1, shard: 0, hops: 0 });
    // No revision given (an older host): the version; no previous version: not known.
    expect(kv.text('/probe/seen')).toBe('type=2 key=/probe/event key_len=12 value_len=0 value= version=5 ts=1 shard=0 hops=0 user_data=42 revision=5 previous_version=0 flags=0 previous_value_len=0 previous_value=');
    // A created key, and an update with its previous value.
    await ctx.deliver({ type: 'put', key: '/probe/event', value: text('v'), version: 9, revision: 9, previousVersion: 0, created: true, timestamp: 1, shard: 0, hops: 0 });
    expect(kv.text('/probe/seen')).toMatch(new RegExp(`revision=9 previous_version=0 flags=${KvcEventFlag.CREATED | KvcEventFlag.PREVIOUS_KNOWN} previous_value_len=0 previous_value=$`));
    await ctx.deliver({ type: 'put', key: '/probe/event', value: text('v2'), version: 11, revision: 11, previousVersion: 9, created: false, previousValue: text('old\u0000!'), timestamp: 1, shard: 0, hops: 0 });
    expect(kv.text('/probe/seen')).toMatch(new RegExp(`revision=11 previous_version=9 flags=${KvcEventFlag.PREVIOUS_KNOWN | KvcEventFlag.HAS_PREVIOUS_VALUE} previous_value_len=5 previous_value=old$`));
  });

  it('host->watch_with registers a watch with the previous value (KVC_WATCH_PREVIOUS_VALUE) and refuses unknown flags', async () => {
    const { kv, ctx } = await probe();
    expect(ctx.watches.map((w) => [w.prefix, w.options?.previousValue ?? false])).toEqual([
      ['/probe/', false],
      ['/probe-prev/', true],
    ]);
    expect(ctx.logs.some((l) => l.level === 'error' && l.msg.includes('"/probe-bad/" refused: unknown flags 0x80'))).toBe(true);
    await ctx.deliver({ type: 'put', key: '/probe-prev/a', value: text('new'), version: 4, revision: 4, previousVersion: 2, created: false, previousValue: text('before'), timestamp: 1, shard: 0, hops: 0 });
    expect(kv.text('/probe/prev-seen')).toBe('created=0 known=1 has_prev=1 previous_version=2 previous_value=before');
    await ctx.deliver({ type: 'put', key: '/probe-prev/b', value: text('new'), version: 5, revision: 5, previousVersion: 0, created: true, timestamp: 1, shard: 0, hops: 0 });
    expect(kv.text('/probe/prev-seen')).toBe('created=1 known=1 has_prev=0 previous_version=0 previous_value=');
  });

  it('host->get and host->put move binary values (NULs included) and versions', async () => {
    const { kv, ctx } = await probe();
    const bin = new Uint8Array([0, 1, 2, 0, 255, 0]);
    kv.data.set('/probe/src', { value: bin, version: 33 });
    kv.revision = 40;
    await ctx.deliver(putEvent('/probe/copy', '', 1));
    expect(kv.data.get('/probe/dst')?.value).toEqual(bin);
    expect(kv.text('/probe/versions')).toBe('src_version=33 dst_version=41');
    await ctx.deliver(putEvent('/probe/missing', '', 1)); // NOT_FOUND clears the outputs
  });

  it('host->get reports the SyncKv failure codes', async () => {
    let failure: Error = new Error('boom');
    const { ctx } = await probe({
      get: () => {
        throw failure;
      },
      put: () => ({ version: 1 }),
    });
    const status = async () => ((await ctx.deliver(putEvent('/probe/get-status', 'k', 1)).catch((e: unknown) => e)) as NativeLambdaError).code - 1000;
    expect(-(await status())).toBe(KvcStatus.ERR_IO);
    failure = new SyncKvError(KvcStatus.ERR_TOO_LARGE, 'too big');
    expect(-(await status())).toBe(KvcStatus.ERR_TOO_LARGE);
    expect(ctx.logs.filter((l) => l.level === 'warn').map((l) => l.msg)).toEqual([
      'native get "k" failed: boom',
      'native get "k" failed: KVC_ERR_TOO_LARGE: too big',
    ]);
  });

  it('host->watch outside kvc_initialize returns KVC_ERR_STATE; a NULL prefix KVC_ERR_INVALID', async () => {
    const { ctx } = await probe();
    await ctx.deliver(putEvent('/probe/late-watch', '', 1)); // the fixture checks the code itself
    expect(ctx.watches.map((w) => w.prefix)).toEqual(['/probe/', '/probe-prev/']); // and initialize checked the NULL prefix
  });

  it('host->log maps levels to ctx.log', async () => {
    const { ctx } = await probe();
    await ctx.deliver(putEvent('/probe/log', '', 1));
    expect(ctx.logs).toEqual([
      { level: 'error', msg: 'native watch "/probe-bad/" refused: unknown flags 0x80' },
      { level: 'info', msg: 'probe: initialized' },
      { level: 'debug', msg: 'probe: debug' },
      { level: 'warn', msg: 'probe: warn' },
      { level: 'error', msg: 'probe: error' },
    ]);
    expect(KvcLogLevel).toEqual({ DEBUG: 0, INFO: 1, WARN: 2, ERROR: 3 });
  });

  it('forwards watchOptions to ctx.watch', async () => {
    const { ctx } = await probe(undefined, { mode: 'stateless' });
    expect(ctx.watches[0]?.options).toEqual({ mode: 'stateless' });
  });

  it('shutdown calls kvc_shutdown; the module can then be initialized again, not twice at once', async () => {
    const { ctx, mod } = await probe();
    await expect(async () => mod.initialize(fakeContext(new MemoryKv()))).rejects.toThrow(/already initialized/);
    await mod.shutdown?.();
    live.splice(live.indexOf(mod), 1);
    expect(ctx.logs.at(-1)).toEqual({ level: 'info', msg: 'probe: shutdown' });
    await expect(ctx.deliver(putEvent('/probe/log', '', 1))).rejects.toThrow(/is not initialized/);

    const ctx2 = fakeContext(new MemoryKv());
    await mod.initialize(ctx2);
    live.push(mod);
    await ctx2.deliver(putEvent('/probe/log', '', 1));
    expect(ctx2.logs).toHaveLength(5);
  });
});
