/**
 * The allocator kvd's launchers choose (src/bin/allocator.ts): glibc by default, jemalloc when
 * asked (`auto`: where installed), clear errors for a choice that cannot be honoured; and a real
 * process started with that environment runs on the chosen allocator.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  AllocatorChoiceError,
  DEFAULT_MALLOC_CONF,
  JEMALLOC_LIBRARY_PATHS,
  kvdAllocatorEnv,
  runningAllocator,
} from '../../src/bin/allocator.js';

const LIB = JEMALLOC_LIBRARY_PATHS[0]!;
const only = (path: string) => (p: string) => p === path;
const none = () => false;

describe('kvdAllocatorEnv', () => {
  it('keeps glibc by default, even where jemalloc is installed', () => {
    const base = { PATH: '/bin' };
    const c = kvdAllocatorEnv(base, only(LIB));
    expect(c.allocator).toBe('glibc');
    expect(c.env).toEqual(base);
    expect(c.reason).toMatch(/KVD_ALLOCATOR=jemalloc/);
  });

  it('auto preloads the first jemalloc found, with the background thread on, and changes nothing else', () => {
    const c = kvdAllocatorEnv({ PATH: '/bin', FOO: 'x', KVD_ALLOCATOR: 'auto' }, only(JEMALLOC_LIBRARY_PATHS[2]!));
    expect(c.allocator).toBe('jemalloc');
    expect(c.library).toBe(JEMALLOC_LIBRARY_PATHS[2]);
    expect(c.env).toEqual({ PATH: '/bin', FOO: 'x', KVD_ALLOCATOR: 'auto', LD_PRELOAD: JEMALLOC_LIBRARY_PATHS[2], MALLOC_CONF: DEFAULT_MALLOC_CONF });
    expect(c.reason).toContain('jemalloc');
  });

  it('auto keeps glibc (and says how to get jemalloc) where none is installed', () => {
    const base = { PATH: '/bin', KVD_ALLOCATOR: 'auto' };
    const c = kvdAllocatorEnv(base, none);
    expect(c.allocator).toBe('glibc');
    expect(c.env).toEqual(base);
    expect(c.env.LD_PRELOAD).toBeUndefined();
    expect(c.reason).toMatch(/libjemalloc2/);
  });

  it('KVD_ALLOCATOR=glibc is glibc even where jemalloc is installed', () => {
    const c = kvdAllocatorEnv({ KVD_ALLOCATOR: 'glibc' }, only(LIB));
    expect(c.allocator).toBe('glibc');
    expect(c.env.LD_PRELOAD).toBeUndefined();
    expect(c.env.MALLOC_CONF).toBeUndefined();
  });

  it('KVD_ALLOCATOR=jemalloc insists: an error naming the package when it is missing', () => {
    expect(() => kvdAllocatorEnv({ KVD_ALLOCATOR: 'jemalloc' }, none)).toThrow(AllocatorChoiceError);
    expect(() => kvdAllocatorEnv({ KVD_ALLOCATOR: 'jemalloc' }, none)).toThrow(/libjemalloc2/);
    expect(kvdAllocatorEnv({ KVD_ALLOCATOR: 'jemalloc' }, only(LIB)).env.LD_PRELOAD).toBe(LIB);
  });

  it('KVD_ALLOCATOR=<path> uses that library, and refuses a missing file or a value it does not know', () => {
    const c = kvdAllocatorEnv({ KVD_ALLOCATOR: '/opt/je/libjemalloc.so.2' }, only('/opt/je/libjemalloc.so.2'));
    expect(c.env.LD_PRELOAD).toBe('/opt/je/libjemalloc.so.2');
    expect(() => kvdAllocatorEnv({ KVD_ALLOCATOR: '/opt/je/missing.so' }, none)).toThrow(/no such file/);
    expect(() => kvdAllocatorEnv({ KVD_ALLOCATOR: 'tcmalloc' }, only(LIB))).toThrow(/must be auto, glibc, jemalloc or the path/);
  });

  it('leaves an LD_PRELOAD that already names jemalloc alone, and goes first before other preloads', () => {
    const mine = { LD_PRELOAD: '/x/libjemalloc.so.2', MALLOC_CONF: 'narenas:2' };
    const kept = kvdAllocatorEnv({ ...mine }, only(LIB));
    expect(kept.env).toEqual(mine);
    expect(kept.allocator).toBe('jemalloc');
    const other = kvdAllocatorEnv({ LD_PRELOAD: '/x/libfoo.so', MALLOC_CONF: 'narenas:2', KVD_ALLOCATOR: 'jemalloc' }, only(LIB));
    expect(other.env.LD_PRELOAD).toBe(`${LIB} /x/libfoo.so`);
    expect(other.env.MALLOC_CONF).toBe('narenas:2'); // the caller's settings win
  });

  it('does not modify the environment it is given', () => {
    const base = { PATH: '/bin', KVD_ALLOCATOR: 'auto' };
    kvdAllocatorEnv(base, only(LIB));
    expect(base).toEqual({ PATH: '/bin', KVD_ALLOCATOR: 'auto' });
  });
});

describe('runningAllocator', () => {
  it('reads the memory map', () => {
    const glibc = '7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n';
    const je = `${glibc}7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n`;
    expect(runningAllocator(glibc)).toBe('glibc');
    expect(runningAllocator(je)).toBe('jemalloc');
    expect(runningAllocator('7f00-7f01 r-xp 00000000 08:01 1 /lib/ld-musl-x86_64.so.1\n')).toBe('unknown');
  });

  const installed = JEMALLOC_LIBRARY_PATHS.some((p) => existsSync(p));
  // The compiled module (npm test compiles first, as the other process tests do).
  const moduleUrl = pathToFileURL(resolve('dist/src/bin/allocator.js')).href;
  const probe = (env: NodeJS.ProcessEnv) =>
    execFileSync(process.execPath, ['--input-type=module', '-e', `import(${JSON.stringify(moduleUrl)}).then((m) => process.stdout.write(m.runningAllocator()))`], { env, encoding: 'utf8' });

  it.skipIf(!installed)('a process started with KVD_ALLOCATOR=jemalloc runs on jemalloc; by default on glibc', () => {
    const { LD_PRELOAD: _preload, MALLOC_CONF: _conf, KVD_ALLOCATOR: _choice, ...rest } = process.env;
    expect(probe(kvdAllocatorEnv({ ...rest, KVD_ALLOCATOR: 'jemalloc' }).env)).toBe('jemalloc');
    expect(probe(kvdAllocatorEnv(rest).env)).toBe('glibc');
  });
});
