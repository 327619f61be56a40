/** Tests of loading extensions: module resolution (ESM, CommonJS, exports/main, own node_modules) and every ExtensionLoadError code, in every isolation mode. */
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ExtensionLoadError, ExtensionRunner, WATCH_DEFAULTS, type RunnerOptions } from '../../../src/extensions/sandbox/index.js';
import { FakeHost, fixture, put, rejection } from './helpers.js';

const runners: ExtensionRunner[] = [];
afterEach(async () => {
  await Promise.all(runners.splice(0).map((r) => r.stop()));
});

async function start(opts: Partial<RunnerOptions> & { modulePath: string }): Promise<ExtensionRunner> {
  const r = await ExtensionRunner.start({ name: 'test', host: new FakeHost(), ...opts });
  runners.push(r);
  return r;
}

describe.each(['worker', 'process', 'in-process'] as const)('loading (%s)', (mode) => {
  it('loads an ESM package through its "exports" and fills in watch defaults', async () => {
    const host = new FakeHost();
    const r = await start({ modulePath: fixture('esm-ext'), mode, host, config: { a: 1 } });
    expect(r.watches).toEqual([
      { id: 1, prefix: '/in/', options: { ...WATCH_DEFAULTS, mode: 'stateless', concurrency: 4, events: ['put', 'trigger'] } },
      { id: 2, prefix: '/other/', options: WATCH_DEFAULTS },
    ]);
    expect(Object.isFrozen(r.watches)).toBe(true);
    // initialize's kv call carries hop count 0 + 1; config reached ctx.config
    expect(host.callsOn('/init')).toHaveLength(1);
    expect(host.callsOn('/init')[0]!.hops).toBe(1);
    expect(host.value('/init')).toBe('config={"a":1}');
    expect(host.logs).toContainEqual({ level: 'info', msg: 'initialized', fields: { name: 'test' } });
    expect(host.metrics).toContainEqual({ kind: 'counter', name: 'events_total', help: 'events handled', op: {} });
    expect(host.metrics).toContainEqual({ kind: 'histogram', name: 'value_bytes', help: 'value sizes', op: { buckets: [1, 10, 100] } });
  });

  it('loads a CommonJS package (module.exports holds initialize, `this` is module.exports)', async () => {
    const host = new FakeHost();
    const r = await start({ modulePath: fixture('cjs-ext'), mode, host, config: { greeting: 'hi' } });
    expect(r.watches.map((w) => [w.prefix, w.options.timeoutMs])).toEqual([['/cjs/', 2000]]);
    await r.invoke(1, put('/cjs/k', 'v'), 1000);
    expect(host.value('/cjs-out/cjs/k')).toBe('seen:v:hi');
  });

  it('loads a single module file', async () => {
    const r = await start({ modulePath: join(fixture('init-throws'), '..', 'cjs-ext', 'index.js'), mode, config: { greeting: 'x' } });
    expect(r.watches).toHaveLength(1);
  });

  it('IMPORT_FAILED when the module throws at import time', async () => {
    const e = await rejection(start({ modulePath: fixture('import-fails'), mode }));
    expect(e).toBeInstanceOf(ExtensionLoadError);
    expect(e.code).toBe('IMPORT_FAILED');
    expect(e.message).toContain('kaboom at import time');
    expect(e.message).toContain('extension "test"');
  });

  // In-process under vitest, imports go through vite's transformer, which words syntax errors its own way.
  it.skipIf(mode === 'in-process')('IMPORT_FAILED for a syntax error names the file and line inside the package, and no folder of the node', async () => {
    const e = await rejection(start({ modulePath: fixture('syntax-error'), mode }));
    expect(e.code).toBe('IMPORT_FAILED');
    expect(e.message).toMatch(/cannot import index\.js: lib\/helper\.js:3: SyntaxError: Unexpected token '\*'/);
    expect(e.message).toContain('return 1 +* 2;');
    expect(e.message).not.toContain(fixture('syntax-error'));
  });

  it('IMPORT_FAILED for a throw at import time says where, relative to the package', async () => {
    const e = await rejection(start({ modulePath: fixture('import-fails'), mode }));
    expect(e.message).toMatch(/Error: kaboom at import time \(at index\.js:2:7\)/);
    expect(e.message).not.toContain(fixture('import-fails'));
  });

  it('IMPORT_FAILED when the path does not exist', async () => {
    const e = await rejection(start({ modulePath: fixture('does-not-exist'), mode }));
    expect(e.code).toBe('IMPORT_FAILED');
    expect(e.message).toContain('does not exist');
  });

  it('NO_INITIALIZE when the module has no initialize()', async () => {
    const e = await rejection(start({ modulePath: fixture('no-initialize'), mode }));
    expect(e).toBeInstanceOf(ExtensionLoadError);
    expect(e.code).toBe('NO_INITIALIZE');
    expect(e.message).toContain('initialize');
  });

  it('INITIALIZE_THREW with the underlying message', async () => {
    const e = await rejection(start({ modulePath: fixture('init-throws'), mode }));
    expect(e.code).toBe('INITIALIZE_THREW');
    expect(e.message).toContain('cannot connect to the thing');
    expect((e.cause as Error).message).toBe('cannot connect to the thing');
  });

  it('INITIALIZE_TIMEOUT when initialize() never settles', async () => {
    const t0 = Date.now();
    const e = await rejection(start({ modulePath: fixture('init-hangs'), mode, initializeTimeoutMs: 300 }));
    expect(e.code).toBe('INITIALIZE_TIMEOUT');
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it.each([
    ['no-slash', "starting with '/'"],
    ['empty', "starting with '/'"],
    ['bad-option', 'concurrency must be a positive integer'],
    ['unknown-option', 'unknown option "timeout"'],
    ['bad-event', 'unknown event type "update"'],
    ['no-lambda', 'lambda must be a function'],
  ])('INVALID_WATCH for %s', async (variant, text) => {
    const e = await rejection(start({ modulePath: fixture('invalid-watch'), mode, config: { variant } }));
    expect(e.code).toBe('INVALID_WATCH');
    expect(e.message).toContain(text);
  });

  it('INVALID_WATCH even when initialize() swallows the watch error', async () => {
    const e = await rejection(start({ modulePath: fixture('invalid-watch'), mode, config: { variant: 'no-slash', swallow: true } }));
    expect(e.code).toBe('INVALID_WATCH');
  });
});

describe.each(['worker', 'process'] as const)('loading (%s, which can kill)', (mode) => {
  it('INITIALIZE_TIMEOUT terminates an initialize() that spins', async () => {
    const t0 = Date.now();
    const e = await rejection(start({ modulePath: fixture('init-hangs'), mode, config: { spin: true }, initializeTimeoutMs: 300 }));
    expect(e.code).toBe('INITIALIZE_TIMEOUT');
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it("resolves the package's own node_modules, main without extension, and CommonJS named exports", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kvc-ext-'));
    try {
      await mkdir(join(dir, 'node_modules', 'shout'), { recursive: true });
      await mkdir(join(dir, 'src'));
      await writeFile(join(dir, 'node_modules', 'shout', 'package.json'), '{"name":"shout","main":"index.js"}');
      await writeFile(join(dir, 'node_modules', 'shout', 'index.js'), 'module.exports = (s) => s.toUpperCase() + "!";');
      await writeFile(join(dir, 'package.json'), '{"name":"uses-dep","main":"src/entry"}');
      await writeFile(
        join(dir, 'src', 'entry.js'),
        'const shout = require("shout");\nexports.initialize = (ctx) => { ctx.watch("/s/", (e) => ctx.kv.put("/shouted", shout(e.key))); };\n',
      );
      const host = new FakeHost();
      const r = await start({ modulePath: dir, host, mode });
      await r.invoke(1, put('/s/hey'), 1000);
      expect(host.value('/shouted')).toBe('/S/HEY!');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rejects bad options synchronously-ish with a TypeError/RangeError', async () => {
    await expect(ExtensionRunner.start({ name: '', modulePath: fixture('esm-ext'), host: new FakeHost() })).rejects.toThrow(TypeError);
    await expect(
      ExtensionRunner.start({ name: 'x', modulePath: fixture('esm-ext'), host: new FakeHost(), resourceLimits: { maxOldGenerationSizeMb: -1 } }),
    ).rejects.toThrow(RangeError);
  });
});
