/** Test helpers for native extensions: building the C code, an in-memory fake ExtensionContext, and worker transpilation. */

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import type { ExtensionContext, ExtensionEvent, ExtensionKv, GetResult, Lambda, PutResult, WatchOptions } from '../../../src/extensions/api.js';
import type { SyncKv } from '../../../src/extensions/native/sync-kv-bridge.js';

/** The repository root. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
/** Directory of the C header and the example extensions. */
export const NATIVE_DIR = join(ROOT, 'extensions/native');
/** Directory of the C test fixtures. */
export const FIXTURES_DIR = join(ROOT, 'test/extensions/native/fixtures');

/** Whether gcc and make are on PATH (the native tests skip, saying so, without them). */
export const HAVE_GCC = spawnSync('gcc', ['--version']).status === 0 && spawnSync('make', ['--version']).status === 0;
/** Why native tests are skipped, for the skip message. */
export const NO_GCC_REASON = 'gcc/make not found on PATH: skipping the native extension tests (install gcc and make to run them)';

/** A fresh temporary directory. */
export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `kvc-native-${prefix}-`));
}

/** Builds the counter example with its Makefile into `buildDir`; returns the library path. */
export function buildCounter(buildDir: string): string {
  execFileSync('make', ['-s', '-C', join(NATIVE_DIR, 'counter'), `BUILD_DIR=${buildDir}`], { stdio: 'pipe' });
  return join(buildDir, 'libcounter.so');
}

/** The counter example's package folder (its package.json declares `build/libcounter.so`). */
export const COUNTER_DIR = join(NATIVE_DIR, 'counter');

/**
 * Builds the counter example in place (`make` in its folder, so `build/libcounter.so` is what its
 * package.json declares) and returns the library path. Does nothing when make says it is up to
 * date; otherwise builds into a temporary folder under `build/` and renames the library into `build/`, so test
 * files running in parallel never see (or dlopen) a half-written library.
 */
export function buildCounterInPlace(): string {
  const lib = join(COUNTER_DIR, 'build', 'libcounter.so');
  if (spawnSync('make', ['-q', '-C', COUNTER_DIR], { stdio: 'ignore' }).status === 0) return lib;
  mkdirSync(dirname(lib), { recursive: true });
  const tmp = mkdtempSync(join(dirname(lib), '.tmp-')); // same file system as lib: rename is atomic
  try {
    renameSync(buildCounter(tmp), lib);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return lib;
}

/** Compiles test fixture `name`.c into `outDir`/`name`.so with the example's strict flags. */
export function buildFixture(name: string, outDir: string): string {
  const out = join(outDir, `${name}.so`);
  execFileSync(
    'gcc',
    ['-O2', '-Wall', '-Wextra', '-Werror', '-fPIC', '-fvisibility=hidden', '-std=c11', '-shared', `-I${NATIVE_DIR}`, '-o', out, join(FIXTURES_DIR, `${name}.c`)],
    { stdio: 'pipe' },
  );
  return out;
}

/** One stored value of the in-memory store. */
export interface StoredValue {
  value: Uint8Array;
  version: number;
}

/** An in-memory async ExtensionKv (get/put only, others unsupported) with a global revision counter. */
export class MemoryKv implements ExtensionKv {
  readonly data = new Map<string, StoredValue>();
  revision = 0;
  /** Optional hook run before every call (e.g. a delay or an injected failure). */
  beforeCall: ((op: 'get' | 'put', key: string) => Promise<void> | void) | undefined;

  async get(key: string): Promise<GetResult> {
    await this.beforeCall?.('get', key);
    const v = this.data.get(key);
    return v ? { found: true, value: v.value, version: v.version, timestamp: 0 } : { found: false, value: undefined, version: 0, timestamp: 0 };
  }

  async put(key: string, value: Uint8Array | string): Promise<PutResult> {
    await this.beforeCall?.('put', key);
    const bytes = typeof value === 'string' ? new TextEncoder().encode(value) : value.slice();
    const version = ++this.revision;
    this.data.set(key, { value: bytes, version });
    return { succeeded: true, version, currentVersion: version };
  }

  /** The value at `key` as text (undefined when absent). */
  text(key: string): string | undefined {
    const v = this.data.get(key);
    return v ? new TextDecoder().decode(v.value) : undefined;
  }

  trigger(): Promise<void> {
    return Promise.reject(new Error('not supported by MemoryKv'));
  }
  delete(): Promise<{ succeeded: boolean; deleted: boolean }> {
    return Promise.reject(new Error('not supported by MemoryKv'));
  }
  list(): ReturnType<ExtensionKv['list']> {
    return Promise.reject(new Error('not supported by MemoryKv'));
  }
  txn(): ReturnType<ExtensionKv['txn']> {
    return Promise.reject(new Error('not supported by MemoryKv'));
  }
}

/** A SyncKv over a MemoryKv's map, for running native extensions on the test's own thread. */
export function memorySyncKv(kv: MemoryKv): SyncKv {
  return {
    get(key) {
      const v = kv.data.get(key);
      return v ? { found: true, value: v.value, version: v.version } : { found: false, value: undefined, version: 0 };
    },
    put(key, value) {
      const version = ++kv.revision;
      kv.data.set(key, { value: value.slice(), version });
      return { version };
    },
  };
}

/** A registered watch of the fake context. */
export interface Watch {
  prefix: string;
  lambda: Lambda;
  options: WatchOptions | undefined;
}

/** A fake ExtensionContext recording watches and log lines, plus `deliver` to fire matching lambdas. */
export interface FakeContext extends ExtensionContext {
  readonly watches: Watch[];
  readonly logs: { level: string; msg: string }[];
  /** Calls every lambda whose prefix matches `event.key` (in registration order). */
  deliver(event: ExtensionEvent): Promise<void>;
}

/** Creates a {@link FakeContext} over `kv`. */
export function fakeContext(kv: ExtensionKv, name = 'native-test'): FakeContext {
  const watches: Watch[] = [];
  const logs: { level: string; msg: string }[] = [];
  const logger = (level: string) => (msg: string) => void logs.push({ level, msg });
  return {
    name,
    config: {},
    kv,
    log: { debug: logger('debug'), info: logger('info'), warn: logger('warn'), error: logger('error') },
    metrics: { counter: () => ({ inc: () => undefined }), histogram: () => ({ observe: () => undefined }) },
    watch(prefix, lambda, options) {
      if (prefix === '') throw new Error('empty prefix');
      watches.push({ prefix, lambda, options });
    },
    watches,
    logs,
    async deliver(event) {
      for (const w of watches) if (event.key.startsWith(w.prefix)) await w.lambda(event);
    },
  };
}

/** A put event for `key` with text `value` at `version`. */
export function putEvent(key: string, value: string, version: number, extra: Partial<ExtensionEvent> = {}): ExtensionEvent {
  return { type: 'put', key, value: new TextEncoder().encode(value), version, timestamp: 1_700_000_000_000, shard: 0, hops: 0, ...extra };
}

/** Sources the worker fixture needs, transpiled so that a plain `new Worker()` can run them. */
const WORKER_SOURCES = [
  'src/extensions/api.ts',
  'src/extensions/native/abi.ts',
  'src/extensions/native/sync-kv-bridge.ts',
  'src/extensions/native/ffi-adapter.ts',
  'test/extensions/native/fixtures/native-worker.ts',
];

/**
 * Transpiles the adapter, the bridge and the worker fixture to ESM JavaScript under a temporary
 * directory (same relative layout, a package.json with "type": "module", node_modules linked to
 * the project's), since Node 20 workers cannot load TypeScript. Returns the worker entry path.
 */
export function transpileWorker(): string {
  const out = tempDir('worker');
  writeFileSync(join(out, 'package.json'), '{ "type": "module" }\n');
  symlinkSync(join(ROOT, 'node_modules'), join(out, 'node_modules'), 'dir');
  for (const src of WORKER_SOURCES) {
    const { outputText } = ts.transpileModule(readFileSync(join(ROOT, src), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false },
      fileName: src,
    });
    const dest = join(out, src.replace(/\.ts$/, '.js'));
    mkdirSync(dirname(dest), { recursive: true });
    writeFileSync(dest, outputText);
  }
  return join(out, relative(ROOT, join(FIXTURES_DIR, 'native-worker.js')));
}
